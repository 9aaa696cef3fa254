"""Feature claims: a sparse autoencoder's features (an SAE named under the spec's ``saes:`` key) as
nodes::

    feature(res1, 123) at ' Hart' >= 2.0                      activation of feature 123 (clean run)
    feature(res1, 123) at -1 on corrupt <= 0.1                 ... on the corrupted run
    features(res1)[123, 456] together breaks >= 0.5 ablate zero   necessity (clean run, features replaced)
    features(res1)[123] recovers >= 0.5                        sufficiency (corrupted run, clean values)
    features(res1)[top 5; -1] together recovers >= 0.8         the 5 largest |clean − corrupt| features
    features(res1)[123, 456] together breaks beats random at 0.95   random feature sets of the same size
    any features(res1)[1, 2, 3] recovers >= 0.5                at least one feature alone
    reconstruction(res1) recovers >= 0.9                       the SAE's reconstruction in place of x

At the SAE's hook x = decode(f, x) + ε with f = encode(x): a feature intervention edits f at the
claim's positions (every position unless ``; POS``) and **keeps ε**, so an empty intervention is the
model itself (:mod:`interptest.patching.features`). ``recovers``: the corrupted run with the features'
clean values, (m − m_corrupt) / (m_clean − m_corrupt); ``breaks``: the clean run with the features
replaced (``ablate resample`` (default): their corrupted values; ``zero``; ``mean``: their mean over the
family's clean samples or the 'reference' prompts), (m_clean − m) / (m_clean − m_corrupt). Quantifiers
as for localization: ``every`` (default, each feature alone), ``any``, ``together`` (one joint edit).
``top N``: the N features with the largest mean over samples of Σ over the claim's positions of
|f_clean − f_corrupt|, chosen on the run. ``reconstruction(sae) [at POS] recovers``: the clean run with
x replaced by decode(encode(x), x) (ε dropped) at those positions, as a fraction of the clean−corrupt
effect: (m_recon − m_corrupt) / (m_clean − m_corrupt) (1: the SAE preserves the behavior exactly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from interptest.claims.base import (
    BindContext,
    Claim,
    Measurement,
    Unjudgeable,
    ablation_requirement,
    bound_at_least,
    measured_bounds,
)
from interptest.claims.controls import control_seed, random_count, render_control, sequential_control
from interptest.claims.grammar import (
    ClaimBindError,
    ClaimSyntaxError,
    Comparison,
    Parser,
    PositionSelection,
    RandomControl,
    did_you_mean,
    resolve_positions,
)

FORMS = {"feature": "activation", "features": "patch", "reconstruction": "reconstruction"}


@dataclass(frozen=True)
class BoundFeatures:
    claim: FeaturesClaim
    sae: Any  # interptest.saes.SAE
    positions: tuple[int, ...]  # resolved on every sample (equal)


@dataclass(frozen=True)
class FeaturesClaim(Claim):
    text: str
    form: str  # activation | patch | reconstruction
    sae: str  # the SAE's name under 'saes'
    comparison: Comparison
    features: tuple[int, ...] = ()  # activation: one; patch: the listed features (empty with top)
    top: int | None = None  # features[top N]
    positions: PositionSelection | None = None  # None: every position
    on_corrupt: bool = False  # activation on the corrupted run
    direction: str = "denoise"
    quantifier: str = "every"
    ablation: str | None = None
    random: RandomControl | None = None

    keywords: ClassVar[tuple[str, ...]] = tuple(FORMS)
    hint: ClassVar[str] = "feature(SAE, i) at POS, features(SAE)[...] or reconstruction(SAE)"
    takes_any: ClassVar[bool] = True

    # -- grammar
    @classmethod
    def parse(cls, p: Parser) -> FeaturesClaim:
        quantifier = "any" if p.accept("ident", "any") else "every"
        head = p.tok
        form = FORMS[head.value]
        p.i += 1
        p.expect("punct", "(", f"'(' and an SAE name after {head.value!r}")
        sae = p.expect("ident", what="an SAE name (a key of 'saes')").value
        fields: dict = {}
        if form == "activation":
            p.expect("punct", ",", "',' and a feature index, e.g. feature(res1, 123)")
            fields["features"] = (_index(p),)
            p.expect("punct", ")", "')'")
            p.expect("ident", "at", "'at' and a position, e.g. at ' Hart' or at -1")
            fields["positions"] = p.positions()
            if p.accept("ident", "on"):
                p.expect("ident", "corrupt", "'corrupt' after 'on'")
                fields["on_corrupt"] = True
            comparison = p.comparison()
            p.end()
            return cls(p.text, form, sae, comparison, quantifier=quantifier, **fields)
        p.expect("punct", ")", "')'")
        if form == "reconstruction":
            if quantifier == "any":
                raise ClaimSyntaxError("'any' applies to a list of features, not to a reconstruction", p.text, 0)
            if p.accept("ident", "at"):
                fields["positions"] = p.positions()
            p.expect("ident", "recovers", "'recovers' (or 'at' and a position)")
            comparison = p.comparison()
            p.end()
            return cls(p.text, form, sae, comparison, quantifier="together", **fields)
        p.expect("punct", "[", "'[' and feature indices, e.g. features(res1)[123, 456] or [top 5]")
        if p.accept("ident", "top"):
            tok = p.tok
            fields["top"] = p.integer("how many features, e.g. [top 5]")
            if fields["top"] < 1:
                raise ClaimSyntaxError("'top' needs at least 1 feature", p.text, tok.start)
        else:
            features = [_index(p)]
            while p.accept("punct", ","):
                features.append(_index(p))
            if len(set(features)) != len(features):
                raise ClaimSyntaxError("a feature is listed twice", p.text, head.start)
            fields["features"] = tuple(features)
        if p.accept("punct", ";"):
            fields["positions"] = p.positions()
        p.expect("punct", "]", "']'")
        quantifier, direction, comparison, fields["random"], fields["ablation"] = p.edit_tail(
            quantifier, "edit", "feature sets", "features", "their clean values"
        )
        p.end()
        return cls(p.text, form, sae, comparison, direction=direction, quantifier=quantifier, **fields)

    @property
    def verb(self) -> str:
        return "recovers" if self.direction == "denoise" else "breaks"

    # -- what the spec must give
    def requirement(self, behavior) -> str | None:
        sources = getattr(behavior, "saes", ())
        source = next((s for s in sources if s.name == self.sae), None)
        if source is None:
            defined = ", ".join(s.name for s in sources) or "none: add a 'saes' key"
            return (
                f"claim {self.text!r} names SAE {self.sae!r}, which is not defined under 'saes' (defined: {defined})"
                + did_you_mean(self.sae, [s.name for s in sources])
            )
        if source.config is not None:
            problem = self._feature_problem(source.config.d_sae)
            if problem:
                return f"claim {self.text!r}: {problem}"
        needs_corruption = self.form != "activation" or self.on_corrupt
        if needs_corruption and behavior.corruption is None:
            what = (
                "reads the corrupted run"
                if self.form == "activation"
                else "is normalized by the clean−corrupt effect (m_clean − m_corrupt)"
            )
            return f"claim {self.text!r} {what}; add a 'corrupt' prompt to the behavior"
        if self.form == "patch" and self.direction == "noise" and self.ablation is not None:
            return ablation_requirement(self.text, self.ablation, behavior)
        return None

    def _feature_problem(self, d_sae: int) -> str | None:
        for index in self.features:
            if index >= d_sae:
                return f"feature {index} does not exist: SAE {self.sae!r} has d_sae = {d_sae} (features 0..{d_sae - 1})"
        if self.top is not None and self.top >= d_sae:
            return f"[top {self.top}] needs fewer features than SAE {self.sae!r} has (d_sae = {d_sae})"
        if self.random is not None and len(self.features or ()) * 2 > d_sae:
            return f"'beats random' needs random sets outside the claimed features; SAE {self.sae!r} has {d_sae}"
        return None

    def template_variables(self) -> list[str]:
        if self.positions is not None and self.positions.kind == "variable":
            return [self.positions.values[0]]
        return []

    def value_range(self) -> tuple[float, float, str] | None:
        if self.form == "activation":
            return (0.0, math.inf, "a feature activation (never negative for the supported encoders)")
        return None

    def unit(self) -> str:
        return "exact" if self.form == "activation" else "normalized"

    # -- binding
    def bind(self, context: BindContext) -> BoundFeatures:
        sae = context.saes.get(self.sae)
        if sae is None:
            raise ClaimBindError(f"SAE {self.sae!r} is not loaded", self.sae)
        problem = self._feature_problem(sae.d_sae)
        if problem:
            raise ClaimBindError(problem)
        if self.positions is None:
            n = context.same_on_every_sample(lambda s: len(context.tokens[s]), "the prompt's token count differs")
            return BoundFeatures(self, sae, tuple(range(n)))
        selection = self.positions
        positions = context.same_on_every_sample(
            lambda s: tuple(resolve_positions(selection, context.tokens[s], context.variables[s]))
        )
        return BoundFeatures(self, sae, positions)

    # -- measuring
    def measure(self, bound: BoundFeatures, run) -> Measurement:
        if self.form == "activation":
            return self._activation(bound, run)
        problem = run.effect_problem()
        if problem:
            raise Unjudgeable(problem)
        engine = feature_engine(run, self.sae, bound.sae)
        if self.form == "reconstruction":
            raw = engine.reconstruct(bound.positions, "clean")
            return Measurement(
                _normalize(run, raw[:, None], "denoise"),
                quantifier="together",
                note=f"the SAE's reconstruction in place of {bound.sae.hook_name} at {_where(bound, run)}",
            )
        features = self.features or top_features(engine, bound.positions, self.top or 0)
        if not features:
            raise Unjudgeable(
                f"no feature of SAE {self.sae!r} differs between the clean and corrupted runs at {_where(bound, run)}"
            )
        base, source, mean_over = self._run_and_source(run)

        def measure_sets(sets):
            return _normalize(run, engine.patch(sets, bound.positions, base, source, mean_over), self.direction)

        chosen = f"features {', '.join(map(str, features))}"
        if self.top:
            fewer = f"; only {len(features)} differ" if len(features) < self.top else ""
            chosen += f" (top {self.top} by |clean − corrupt|{fewer})"
        figure = strip(engine, self.sae, features, bound, run)
        if self.quantifier == "together":
            values = measure_sets([features])
            if self.random is not None:
                control = _random_control(self, bound, run, values, measure_sets, features)
                assert control.figure is not None, "a random control draws its distribution"
                control.figure["features"] = list(features)
                return control
            return Measurement(values, quantifier="together", note=f"one joint edit of {chosen}", figure=figure)
        values = measure_sets([[f] for f in features])
        labels = [f"(feature {f})" for f in features]
        context = chosen if self.top else ""
        return Measurement(values, tuple(features), labels, self.quantifier, context=context, figure=figure)

    def _run_and_source(self, run) -> tuple[str, str, str]:
        mean_over = "clean" if run.bound.reference_ids is None else "reference"  # references win, as for nodes
        if self.direction == "denoise":
            return "corrupt", "clean", mean_over
        source = {"resample": "corrupt", None: "corrupt"}.get(self.ablation, self.ablation or "corrupt")
        return "clean", source, mean_over

    def _activation(self, bound: BoundFeatures, run) -> Measurement:
        engine = feature_engine(run, self.sae, bound.sae)
        f = engine.features("corrupt" if self.on_corrupt else "clean")
        index = self.features[0]
        values = f[:, list(bound.positions), index].double()
        tokens = run.bound.corrupt_tokens if self.on_corrupt and run.bound.corrupt_tokens else run.tokens
        labels = [f"(position {p} {tokens[p]!r})" for p in bound.positions]
        figure = strip(engine, self.sae, (index,), bound, run)
        return Measurement(values, tuple(bound.positions), labels, self.quantifier, figure=figure)

    def format_value(self, value: float) -> str:
        return f"{value:.3f}"

    def record(self, check) -> dict:
        out: dict[str, Any] = {"sae": self.sae, "form": self.form}
        if self.form == "patch":
            chosen = (check.figure or {}).get("features")
            out["features"] = list(chosen if chosen is not None else self.features)
            if self.top:
                out["top"] = self.top
            if self.direction == "noise":
                out["ablation"] = self.ablation or "resample"
        if check.figure and check.figure.get("type") == "random":
            out["random"] = {k: v for k, v in check.figure.items() if k != "type"}
        return out

    def render(self, check, color: bool = False) -> list[str]:
        return render_control(check) if self.random is not None else []

    @classmethod
    def suggest(cls, run, seed: int) -> list[str]:
        return suggest_features(run, seed)


def _index(p: Parser) -> int:
    tok = p.tok
    value = p.integer("a feature index (a non-negative integer)")
    if value < 0:
        raise ClaimSyntaxError("feature indices count from 0", p.text, tok.start)
    return value


def _where(bound: BoundFeatures, run) -> str:
    n = len(run.tokens)
    if len(bound.positions) == n:
        return "every position"
    return "positions " + ", ".join(f"{p} {run.tokens[p]!r}" for p in bound.positions)


def _normalize(run, raw, direction: str):
    from interptest.patching.paths import normalize

    return normalize(raw, run.clean_metrics, run.corrupt_metrics, direction)


def feature_engine(run, name: str, sae):
    """The run's :class:`interptest.patching.features.FeaturePatcher` for one SAE (opened once per run)."""

    def open_engine():
        from interptest.patching.features import FeaturePatcher

        bound = run.bound
        hook = sae.hook_name

        def activations(which: str):
            if which == "reference":
                return run.activations("reference", [hook], ids=bound.reference_ids)[hook]
            return run.activations(which, [hook])[hook]

        foil = run.foil_ids if run.foil_ids is not None else run.expect_first
        return FeaturePatcher(
            run.model,
            sae,
            bound.clean_ids,
            bound.corrupt_ids,
            run.expect_first,
            foil,
            run.noise,
            run.batch_size,
            activations,
        )

    return run.memo(f"features:{name}", open_engine)


STRIP_FEATURES = 8  # the report's strip shows at most this many features


def strip(engine, name: str, features, bound: BoundFeatures, run) -> dict:
    """The report's feature-activation strip: the first sample's clean and corrupted activations of (at
    most :data:`STRIP_FEATURES` of) ``features`` at every token, the claim's positions marked."""
    clean = engine.features("clean")[0]
    corrupt = engine.features("corrupt")[0] if run.bound.corrupt_ids is not None else None
    rows = []
    for i in list(features)[:STRIP_FEATURES]:
        row = {"feature": int(i), "clean": [round(float(v), 4) for v in clean[:, i]]}
        if corrupt is not None:
            row["corrupt"] = [round(float(v), 4) for v in corrupt[:, i]]
        rows.append(row)
    return {
        "type": "features",
        "sae": name,
        "hook": bound.sae.hook_name,
        "tokens": list(run.tokens),
        "corrupt_tokens": list(run.bound.corrupt_tokens or []),
        "positions": list(bound.positions),
        "features": [int(i) for i in features],
        "rows": rows,
    }


def top_features(engine, positions, k: int) -> tuple[int, ...]:
    """The k features with the largest mean over samples of Σ over ``positions`` of |f_clean − f_corrupt|
    (ties: the lower index), among those whose difference is not 0 (fewer than k when fewer differ: a
    feature equal on both runs changes nothing when patched)."""
    diff = (engine.features("clean") - engine.features("corrupt"))[:, list(positions)].abs().sum(1).mean(0)
    order = sorted((i for i in range(diff.numel()) if float(diff[i]) > 0), key=lambda i: (-float(diff[i]), i))
    return tuple(sorted(order[:k]))


def _random_control(claim, bound, run, values, measure_sets, features) -> Measurement:
    """``together ... beats random at q``: random sets of as many features, outside the claimed ones."""
    import torch

    d_sae, size, claimed = bound.sae.d_sae, len(features), set(features)
    others = [i for i in range(d_sae) if i not in claimed]
    wanted = random_count(run)
    exhaustive = math.comb(len(others), size) <= wanted
    if exhaustive:
        import itertools

        sets = [list(c) for c in itertools.combinations(others, size)]
    else:
        generator = torch.Generator().manual_seed(control_seed(run, claim.text))
        seen: set = set()
        sets = []
        while len(sets) < wanted:
            pick = tuple(sorted(others[i] for i in torch.randperm(len(others), generator=generator)[:size].tolist()))
            if pick not in seen:
                seen.add(pick)
                sets.append(list(pick))
    return sequential_control(
        values,
        measure_sets,
        sets,
        claim.random.quantile,
        exhaustive,
        claim.verb,
        run.seed,
        sets_are=f"sets of {size} other features of SAE {claim.sae!r}",
    )


# ---------------------------------------------------------------------------------------------
# --interp-suggest: per SAE, the reconstruction, the strongest single features, the smallest top set

CARRIER = 0.9  # a feature set whose joint clean values recover this much carries the behavior
CANDIDATES = 16  # single features tried: the most different ones
STRONGEST = 3  # single features suggested at most
MIN_SUGGESTED = 0.1  # a measured value below this suggests nothing (its bound would be about 0)
TOP_SIZES = (1, 2, 4, 8, 16, 32)


def suggest_features(run, seed: int) -> list[str]:
    """For every SAE the behavior declares (at every position): the reconstruction's recovery; the (at most 3)
    single features among the 16 most different whose clean value alone recovers most; and the smallest
    ``top N`` (N = 1, 2, 4, … 32) whose joint clean values recover ≥ 0.9 — else the largest with its
    bound. Bounds: the measured value (one sample) or its bootstrap bound (a family), ``MARGIN`` below."""
    claims: list[str] = []
    positions = tuple(range(len(run.tokens)))
    for name, sae in (getattr(run.bound, "saes", None) or {}).items():
        engine = feature_engine(run, name, sae)

        def lower(raw):
            return measured_bounds(_normalize(run, raw, "denoise").double(), seed, raw.shape[1], True)

        recon = lower(engine.reconstruct(positions, "clean")[:, None])[0]
        if recon >= MIN_SUGGESTED:
            claims.append(f"reconstruction({name}) recovers >= {bound_at_least(recon):.2f}")
        candidates = top_features(engine, positions, CANDIDATES)
        if not candidates:
            continue
        single = lower(engine.patch([[f] for f in candidates], positions, "corrupt", "clean"))
        ranked = sorted(zip(single, candidates), key=lambda vf: (-vf[0], vf[1]))[:STRONGEST]
        claims += [
            f"features({name})[{f}] recovers >= {bound_at_least(v):.2f}" for v, f in ranked if v >= MIN_SUGGESTED
        ]
        best = None
        for k in TOP_SIZES:
            if (
                k > len(candidates)
                and k > 1
                and best is not None
                and best[0] == len(top_features(engine, positions, k))
            ):
                break
            features = top_features(engine, positions, k)
            value = lower(engine.patch([features], positions, "corrupt", "clean"))[0]
            best = (len(features), k, value)
            if value >= CARRIER:
                break
        if best is not None and best[2] >= MIN_SUGGESTED:
            claims.append(f"features({name})[top {best[1]}] together recovers >= {bound_at_least(best[2]):.2f}")
    return claims
