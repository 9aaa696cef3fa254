"""Prompt families: draw the samples of a templated behavior, reproducibly.

Samples are drawn uniformly without replacement from every assignment that gives each template
variable a different value (a bootstrap over the samples is only honest if they are an i.i.d.-like
draw from the stated distribution — hypothesis's generator deliberately is not, it favours simple
and boundary values). Hypothesis does what it is best at instead: shrinking a failure to the
smallest failing instance (see :func:`instance_strategy`). Pure Python; no torch.
"""

from __future__ import annotations

import itertools
import random
import zlib
from dataclasses import dataclass

from interptest.spec import BehaviorSpec, Family

ENUMERATION_LIMIT = 200_000


@dataclass(frozen=True)
class Sample:
    values: dict  # variable -> value of the clean prompt
    corrupt_values: dict | None  # variable -> value after resampling (resample corruption only)
    prompt: str
    corrupt: str | None  # the corrupted prompt text (text and resample corruptions)
    expect: str
    foil: str | None


def sample_seed(seed: int, behavior: BehaviorSpec) -> int:
    """Stable across processes, machines and xdist workers: depends on the seed and the name only."""
    return zlib.crc32(f"{seed}|{behavior.name}".encode())


def family_of(behavior: BehaviorSpec) -> Family:
    """The behavior's prompt family; for the code paths only a template behavior reaches."""
    assert behavior.family is not None, f"{behavior.name!r} is not a template behavior"
    return behavior.family


def _distinct(values) -> bool:
    values = list(values)
    return len(set(values)) == len(values)


def _units(variables) -> list:
    """[(names, rows)] from Family.units, or from a plain {variable: values} mapping."""
    if isinstance(variables, dict):
        return [((var,), tuple((v,) for v in values)) for var, values in variables.items()]
    return list(variables)


def _assignment(units, combo) -> dict:
    return {var: value for (names, _), row in zip(units, combo) for var, value in zip(names, row)}


def draw_assignments(variables, count: int, rng: random.Random) -> list[dict]:
    """``count`` distinct assignments, uniformly among those that give every variable a different value;
    ``variables``: Family.units (paired variables drawn together) or {variable: values}."""
    units = _units(variables)
    total = 1
    for _, rows in units:
        total *= len(rows)
    if total <= ENUMERATION_LIMIT:
        combos = [c for c in itertools.product(*(rows for _, rows in units)) if _distinct(v for row in c for v in row)]
        return [_assignment(units, c) for c in rng.sample(combos, count)]
    seen: set[tuple] = set()
    out: list[dict] = []
    while len(out) < count:
        combo = tuple(rng.choice(rows) for _, rows in units)
        if _distinct(v for row in combo for v in row) and combo not in seen:
            seen.add(combo)
            out.append(_assignment(units, combo))
    return out


def _unit_of(behavior: BehaviorSpec, var: str):
    return next(unit for unit in family_of(behavior).units if var in unit[0])


def resampled(behavior: BehaviorSpec, values: dict, rng: random.Random) -> dict:
    """The corrupted assignment: each resampled variable (with the variables paired with it) re-drawn to
    values different from its clean ones and from every other variable's value."""
    assert behavior.corruption is not None, "only a resample corruption re-draws variables"
    new = dict(values)
    done = set()
    for var in behavior.corruption.resample:
        names, rows = _unit_of(behavior, var)
        if names in done:
            continue
        done.add(names)
        others = {v for k, v in new.items() if k not in names}
        clean = {values[n] for n in names}
        choices = [row for row in rows if not (set(row) & (others | clean))]
        if not choices:
            raise ValueError(f"no value left to resample {var!r} to")
        new.update(zip(names, rng.choice(choices)))
    return new


def instance(behavior: BehaviorSpec, values: dict, corrupt_values: dict | None = None) -> Sample:
    corruption = behavior.corruption
    corrupt = None
    if corruption is not None and corruption.kind == "text":
        assert corruption.text is not None, "a text corruption has its text"
        corrupt = corruption.text.format(**values)
    elif corruption is not None and corruption.kind == "resample":
        assert corrupt_values is not None, "a resample corruption's instance has its corrupted values"
        corrupt = behavior.prompt.format(**corrupt_values)
    return Sample(
        values,
        corrupt_values,
        behavior.prompt.format(**values),
        corrupt,
        behavior.expect.format(**values),
        behavior.foil.format(**values) if behavior.foil else None,
    )


def expand(behavior: BehaviorSpec, seed: int = 0) -> list[Sample]:
    """The family's samples for this seed."""
    rng = random.Random(sample_seed(seed, behavior))
    family = family_of(behavior)
    assignments = draw_assignments(family.units, family.samples, rng)
    resample = behavior.corruption is not None and behavior.corruption.kind == "resample"
    return [instance(behavior, a, resampled(behavior, a, rng) if resample else None) for a in assignments]


def instance_strategy(behavior: BehaviorSpec):
    """A hypothesis strategy over single instances (clean values, corrupted values), for shrinking."""
    from hypothesis import strategies as st

    units = family_of(behavior).units
    clean = (
        st.tuples(*(st.sampled_from(rows) for _, rows in units))
        .filter(lambda combo: _distinct(v for row in combo for v in row))
        .map(lambda combo: _assignment(units, combo))
    )
    if behavior.corruption is None or behavior.corruption.kind != "resample":
        return clean.map(lambda d: (d, None))
    redrawn = list(dict.fromkeys(_unit_of(behavior, var) for var in behavior.corruption.resample))

    def corrupt_for(values):
        fields = []
        for names, rows in redrawn:
            taken = {v for k, v in values.items() if k not in names} | {values[n] for n in names}
            fields.append(st.sampled_from([row for row in rows if not set(row) & taken]))
        return (
            st.tuples(*fields)
            .filter(lambda combo: _distinct(v for row in combo for v in row))
            .map(lambda combo: (values, {**values, **_assignment(redrawn, combo)}))
        )

    return clean.flatmap(corrupt_for)


def variable_token_texts(behavior: BehaviorSpec, values: dict) -> dict:
    """The token text each variable becomes: with the leading space the template gives it (a variable
    only expect or foil use: the space they give it)."""
    out = {}
    for var, value in values.items():
        out[var] = value
        for text in (behavior.prompt, behavior.expect, behavior.foil or ""):
            at = text.find("{" + var + "}")
            if at >= 0:
                out[var] = (" " + value) if at > 0 and text[at - 1] == " " else value
                break
    return out


def as_yaml(behavior: BehaviorSpec, sample: Sample, claim_text: str, value: float | None, index: int = 0) -> str:
    """A ready-to-paste single-behavior YAML block for one instance of the ``index``-th claim, named after
    the behavior and the claim's number (each failing claim's block can be pasted beside the others)."""
    import json

    def q(text):
        return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid YAML double-quoted scalar

    lines = [
        f"- name: {behavior.name}-minimal-{index + 1}",
        f"  prompt: {q(sample.prompt)}",
        f"  expect: {q(sample.expect)}",
    ]
    if sample.corrupt is not None:
        lines.append(f"  corrupt: {q(sample.corrupt)}")
    elif behavior.corruption is not None and behavior.corruption.kind == "replace":
        lines.append(
            "  corrupt: {replace: {" + ", ".join(f"{q(a)}: {q(b)}" for a, b in behavior.corruption.replace) + "}}"
        )
    elif behavior.corruption is not None and behavior.corruption.kind == "noise":
        positions = ", ".join(q(p.source) for p in behavior.corruption.positions)
        lines.append(f"  corrupt: {{noise: {{positions: [{positions}], scale: {behavior.corruption.scale:g}}}}}")
    if sample.foil is not None:
        lines.append(f"  foil: {q(sample.foil)}")
    text = claim_text
    for var, token in variable_token_texts(behavior, sample.values).items():
        text = text.replace("{" + var + "}", repr(token))
    comment = f"   # this instance: {value:z.3f}" if value is not None else ""
    lines += ["  claims:", f"    - {q(text)}{comment}"]
    return "\n".join(lines)
