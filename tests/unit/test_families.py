"""Prompt families without a model: spec errors, sampling, statistics."""

import random
import textwrap

import pytest
import torch

from interptest import families
from interptest.errors import SpecError
from interptest.spec import parse_spec
from interptest.stats import bootstrap_bounds, pass_rate

FAMILY = """\
behaviors:
  - name: induction-any-name
    template: "Her name was {first} {last}. When {first}"
    expect: " {last}"
    corrupt: {resample: [last]}
    vars:
      first: [Alex, Mary, John, Iris]
      last: "@surnames"
    samples: 40
    min_pass_rate: 0.9
    claims:
      - "resid_pre[0, {last}] recovers >= 0.8"
      - claim: "resid_post[-1, -1] recovers >= 0.8"
        min_pass_rate: 0.95
"""


def spec_of(text: str, path: str = "specs/f.yaml"):
    return parse_spec(textwrap.dedent(text), path).behaviors[0]


def error_of(text: str, path: str = "specs/f.yaml") -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(textwrap.dedent(text), path)
    return str(info.value)


def test_family_parses_with_shipped_lexicon():
    behavior = spec_of(FAMILY)
    assert behavior.family.samples == 40 and behavior.family.variables["first"] == ("Alex", "Mary", "John", "Iris")
    assert "Hart" in behavior.family.variables["last"] and behavior.family.sources["last"] == "@surnames"
    assert behavior.corruption.kind == "resample" and behavior.corruption.resample == ("last",)
    assert behavior.min_pass_rate == 0.9 and behavior.claim_pass_rates == (None, 0.95)


def test_local_lexicon_beside_the_spec_wins(tmp_path):
    (tmp_path / "lexicons").mkdir()
    (tmp_path / "lexicons" / "surnames.txt").write_text("# mine\nHart\nCole\n\nWade\n")
    behavior = spec_of(FAMILY.replace("samples: 40", "samples: 12"), str(tmp_path / "f.yaml"))
    assert behavior.family.variables["last"] == ("Hart", "Cole", "Wade")


FAMILY_HEAD = 'behaviors:\n  - name: fam\n    template: "Her name was {first} {last}. When {first}"\n'


@pytest.mark.parametrize(
    "text, message",
    [
        (
            FAMILY_HEAD + '    expect: " {last}"\n    vars:\n      first: [A, B]\n',
            "specs/f.yaml:5: behavior 'fam', key 'vars': template variable {last} has no values in 'vars'",
        ),
        (
            FAMILY_HEAD + '    expect: " {last}"\n',
            "behavior 'fam', key 'vars': the template uses {first}, {last} but 'vars' is missing",
        ),
        (
            FAMILY_HEAD
            + '    expect: " {middle}"\n    samples: 2\n    vars:\n      first: [A, B]\n      last: [C, D]\n',
            "behavior 'fam', key 'expect': {middle} is used in 'expect' but is not a variable of the template",
        ),
        (
            FAMILY_HEAD + '    expect: " {last}"\n    vars:\n      first: [A, B]\n      last: "@no_such_lexicon"\n',
            "key 'vars.last': lexicon @no_such_lexicon not found: looked for specs/lexicons/no_such_lexicon.txt or ",
        ),
        (
            FAMILY_HEAD + '    expect: " {last}"\n    samples: 5\n    vars:\n      first: [A, B]\n      last: [C]\n',
            "key 'samples': 'samples' is 5 but the variables allow only 2 distinct combinations",
        ),
        (
            FAMILY_HEAD + '    expect: " {last}"\n    samples: 2\n    corrupt: {resample: [last]}\n    vars:\n'
            "      first: [A, B]\n      last: [C]\n",
            "key 'corrupt.resample': variable 'last' has a single value, so it cannot be re-drawn",
        ),
        (
            FAMILY_HEAD + '    expect: " {last}"\n    samples: 2\n    corrupt: {resample: [middle]}\n    vars:\n'
            "      first: [A, B]\n      last: [C, D]\n",
            "key 'corrupt.resample': 'middle' is not a template variable",
        ),
        (
            FAMILY_HEAD + '    expect: " {last}"\n    samples: 2\n    vars:\n      first: [A, B]\n      last: [C, D]\n'
            "      extra: [E]\n",
            "key 'vars.extra': variable 'extra' in 'vars' is not used by the template",
        ),
        (
            "behaviors:\n  - name: one\n    prompt: a b\n    expect: c\n    corrupt: {resample: [x]}\n",
            "key 'corrupt.resample': resample re-draws template variables: it needs a 'template' with 'vars'",
        ),
        (
            "behaviors:\n  - name: one\n    prompt: a b\n    expect: c\n    corrupt: {noise: {positions: []}}\n",
            "key 'corrupt.noise': 'positions' must be a non-empty list",
        ),
        (
            "behaviors:\n  - name: one\n    prompt: a b\n    expect: c\n"
            "    corrupt: {noise: {positions: [1], scale: 0}}\n",
            "key 'corrupt.noise': 'scale' must be a positive number, got a number (0)",
        ),
        (
            "behaviors:\n  - name: one\n    prompt: a b\n    expect: c\n    corrupt: {swap: 1}\n",
            "key 'corrupt': unknown key 'swap' in 'corrupt'; expected one of {replace: ...}, {resample: [...]}, "
            "{noise: ...}, got keys ['swap']",
        ),
        (
            "behaviors:\n  - name: one\n    prompt: a b\n    expect: c\n    vars: {x: [a]}\n",
            "key 'vars': 'vars' only applies to a prompt family: write 'template' instead of 'prompt'",
        ),
        (
            "behaviors:\n  - name: one\n    prompt: a b\n    expect: c\n    min_pass_rate: 2\n",
            "key 'min_pass_rate': expected a fraction between 0 and 1, got a number (2)",
        ),
    ],
)
def test_family_errors(text, message):
    assert message in error_of(text)


def test_empty_lexicon(tmp_path):
    (tmp_path / "lexicons").mkdir()
    (tmp_path / "lexicons" / "empty.txt").write_text("# nothing\n\n")
    message = error_of(
        FAMILY_HEAD + '    expect: " {last}"\n    vars:\n      first: [A, B]\n      last: "@empty"\n',
        str(tmp_path / "f.yaml"),
    )
    assert "key 'vars.last': lexicon @empty" in message and "is empty" in message


def test_samples_are_reproducible_distinct_and_change_with_the_seed():
    behavior = spec_of(FAMILY)
    first = families.expand(behavior, seed=0)
    assert [s.prompt for s in first] == [s.prompt for s in families.expand(behavior, seed=0)]
    assert [s.prompt for s in first] != [s.prompt for s in families.expand(behavior, seed=1)]
    assert len({s.prompt for s in first}) == 40
    for sample in first:
        assert sample.values["first"] != sample.values["last"]
        assert sample.corrupt_values["last"] not in (sample.values["last"], sample.values["first"])
        assert sample.expect == " " + sample.values["last"]
        assert (
            sample.corrupt == f"Her name was {sample.values['first']} {sample.corrupt_values['last']}. "
            f"When {sample.values['first']}"
        )


def test_sampling_is_uniform_over_the_combinations():
    variables = {"a": ("x", "y", "z"), "b": ("x", "y", "z")}
    counts = {}
    for seed in range(600):
        for assignment in families.draw_assignments(variables, 1, random.Random(seed)):
            key = (assignment["a"], assignment["b"])
            counts[key] = counts.get(key, 0) + 1
    assert set(counts) == {(a, b) for a in "xyz" for b in "xyz" if a != b}
    assert min(counts.values()) > 60  # 6 combinations, 100 expected each


def test_minimal_instance_yaml_is_valid_and_pasteable():
    import yaml

    behavior = spec_of(FAMILY)
    sample = families.expand(behavior)[0]
    block = families.as_yaml(behavior, sample, "resid_pre[0, {last}] recovers >= 0.8", 0.41, index=2)
    parsed = yaml.safe_load(block)[0]
    assert parsed["name"] == f"{behavior.name}-minimal-3"  # the claim's number: each failing claim's differs
    assert parsed["prompt"] == sample.prompt and parsed["corrupt"] == sample.corrupt
    assert parsed["claims"] == [f"resid_pre[0, ' {sample.values['last']}'] recovers >= 0.8"]
    assert "this instance: 0.410" in block
    # the block is itself a valid single-prompt behavior
    parse_spec("behaviors:\n" + block, "x.yaml")


def test_bootstrap_bound_brackets_the_mean_and_bonferroni_widens_it():
    torch.manual_seed(0)
    values = torch.randn(50, 1) * 0.1 + 0.8
    [one] = bootstrap_bounds(values, wants_high=True, n_cells=1)
    [many] = bootstrap_bounds(values, wants_high=True, n_cells=20)
    [upper] = bootstrap_bounds(values, wants_high=False, n_cells=1)
    assert one.bound < one.mean < upper.bound
    assert many.bound < one.bound and many.level == pytest.approx(1 - 0.05 / 20)
    assert bootstrap_bounds(values, True, 1) == bootstrap_bounds(values, True, 1)  # seeded
    se = float(values.std() / 50**0.5)
    assert one.mean - one.bound == pytest.approx(1.645 * se, rel=0.25)  # close to the normal bound


def test_pass_rate():
    assert pass_rate([True, False, True, True]) == 0.75 and pass_rate([]) == 0.0
