"""Spec parsing: no model, no torch. Every error names file, line, behavior and key."""

import subprocess
import sys
import textwrap

import pytest

from interptest.errors import SpecError
from interptest.spec import parse_behavior, parse_spec

pytestmark = pytest.mark.torchfree  # no torch, no transformer_lens, no model: `pytest tests -m torchfree`

GOOD = """\
model: interptest-tiny
defaults:
  min_effect: 0.5
behaviors:
  - name: alex-hart
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Hart"
    corrupt: "Her name was Alex Cole. When Alex"
    foil: " Cole"
    marks: [slow]
    claims:
      - "prob(' Hart') >= 0.5"
      - "resid_pre[2:, -1] recovers >= 0.9"
  - name: other
    model: gpt2
    prompt: "The capital of France is"
    expect: " Paris"
    min_effect: 2
"""


def error_of(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(textwrap.dedent(text), "specs/f.yaml")
    return str(info.value)


def test_good_spec_parses_with_lines_and_defaults():
    spec = parse_spec(GOOD, "b.yaml")
    first, second = spec.behaviors
    assert spec.model == "interptest-tiny"
    assert first.name == "alex-hart" and first.line == 5
    assert first.model == "interptest-tiny" and second.model == "gpt2"
    assert first.min_effect == 0.5 and second.min_effect == 2.0
    assert first.marks == ("slow",)
    assert first.claim_lines == (12, 13)
    assert [c.text for c in first.claims] == ["prob(' Hart') >= 0.5", "resid_pre[2:, -1] recovers >= 0.9"]


def test_parse_behavior_from_dict():
    behavior = parse_behavior({"name": "x", "prompt": "a b", "expect": " c"})
    assert behavior.path == "<dict>" and behavior.claims == ()
    with pytest.raises(SpecError, match=r"<dict>: behavior 'x', key 'prompt': expected a string, got a number \(1\)"):
        parse_behavior({"name": "x", "prompt": 1, "expect": " c"})


@pytest.mark.parametrize(
    "text, message",
    [
        ("a: [\n", "specs/f.yaml:2: invalid YAML: while parsing a flow"),
        ("- 1\n", "specs/f.yaml:1: the top level must be a mapping with a 'behaviors' list, got a list"),
        ("model: x\n", "specs/f.yaml:1: missing required key 'behaviors' (a list of behaviors)"),
        ("behaviors: []\n", "specs/f.yaml:1: key 'behaviors': 'behaviors' is empty"),
        ("behaviors: 3\n", "specs/f.yaml:1: key 'behaviors': expected a list of behaviors, got a number (3)"),
        ("behaviours: []\n", "key 'behaviours': unknown key 'behaviours' in the spec file; did you mean 'behaviors'?"),
        ("behaviors:\n  - prompt: x\n", "specs/f.yaml:2: behavior #1 is missing required key 'name'"),
        ("behaviors:\n  - name: a\n    expect: y\n", "specs/f.yaml:2: behavior 'a': missing required key 'prompt'"),
        (
            "behaviors:\n  - name: a\n    promt: x\n",
            "specs/f.yaml:3: behavior 'a', key 'promt': unknown key 'promt' in a behavior; did you mean 'prompt'?",
        ),
        (
            "behaviors:\n  - name: a\n    prompt: 3\n    expect: y\n",
            "specs/f.yaml:3: behavior 'a', key 'prompt': expected a string, got a number (3)",
        ),
        (
            "behaviors:\n  - name: a\n    prompt: x\n    expect: y\n    claims: \"prob(' y') > 0\"\n",
            "specs/f.yaml:5: behavior 'a', key 'claims': expected a list of claims (strings, or mappings with 'claim' "
            "and 'min_pass_rate'), got a string",
        ),
        (
            "behaviors:\n  - name: a b\n    prompt: x\n    expect: y\n",
            "specs/f.yaml:2: behavior 'a b', key 'name': invalid name 'a b': use letters, digits",
        ),
        (
            "behaviors:\n  - name: a\n    prompt: x\n    expect: y\n  - name: a\n    prompt: z\n    expect: y\n",
            "specs/f.yaml:5: behavior 'a', key 'name': duplicate behavior name (first on line 2)",
        ),
        (
            "behaviors:\n  - name: a\n    prompt: x\n    prompt: y\n",
            "specs/f.yaml:4: key 'prompt': duplicate key 'prompt' (first on line 3)",
        ),
        (
            "behaviors:\n  - name: a\n    prompt: ''\n    expect: y\n",
            "specs/f.yaml:3: behavior 'a', key 'prompt': 'prompt' is empty",
        ),
        (
            "behaviors:\n  - name: a\n    prompt: x\n    expect: ''\n",
            "specs/f.yaml:4: behavior 'a', key 'expect': 'expect' is empty",
        ),
        (
            "behaviors:\n  - name: a\n    prompt: x\n    expect: y\n    corrupt: x\n",
            "specs/f.yaml:5: behavior 'a', key 'corrupt': 'corrupt' is identical to 'prompt'",
        ),
        (
            "behaviors:\n  - name: a\n    prompt: x\n    expect: y\n    foil: y\n",
            "specs/f.yaml:5: behavior 'a', key 'foil': 'foil' equals 'expect' ('y')",
        ),
        ("behaviors:\n  - name: a\n    prompt: x\n    expect: y\n    foil: ''\n", "key 'foil': 'foil' is empty"),
        (
            "behaviors:\n  - name: a\n    prompt: x\n    expect: y\n    min_effect: -1\n",
            "specs/f.yaml:5: behavior 'a', key 'min_effect': 'min_effect' must be >= 0, got -1",
        ),
        (
            "defaults:\n  name: a\nbehaviors:\n  - name: a\n    prompt: x\n    expect: y\n",
            "specs/f.yaml:2: key 'defaults.name': 'name' cannot have a default",
        ),
        (
            "defaults:\n  corupt: a\nbehaviors:\n  - name: a\n    prompt: x\n    expect: y\n",
            "key 'defaults.corupt': unknown key 'corupt' in defaults; did you mean 'corrupt'?",
        ),
    ],
)
def test_malformed_spec_messages(text, message):
    assert message in error_of(text)


# A file whose 'model' key comes last (line 7), after the defaults and a behavior (line 3): a malformed
# file-level model must point at its own line, not at a behavior's.
MODEL_LAST = """\
defaults:
  min_effect: 0.5
behaviors:
  - name: a
    prompt: x
    expect: y
model: {model}
"""
MODEL_EXPECTED = "expected a model name (such as 'gpt2') or a save_pretrained directory"


@pytest.mark.parametrize(
    "model, expected",
    [
        ("3", "expected a string, got a number (3)"),
        ("[a]", "expected a string, got a list"),
        ("{a: 1}", "expected a string, got a mapping"),
        ("null", "expected a string, got nothing (null)"),
        ("''", f"{MODEL_EXPECTED}, got an empty string"),
        ("'  '", f"{MODEL_EXPECTED}, got a blank string ('  ')"),
    ],
)
def test_malformed_file_model_names_the_file_line_and_key(model, expected):
    assert error_of(MODEL_LAST.format(model=model)) == f"specs/f.yaml:7: key 'model': {expected}"


def test_blank_model_in_defaults_or_a_behavior_points_at_that_key():
    defaults = "defaults:\n  min_effect: 0.5\n  model: ''\nbehaviors:\n  - name: a\n    prompt: x\n    expect: y\n"
    assert error_of(defaults) == f"specs/f.yaml:3: key 'defaults.model': {MODEL_EXPECTED}, got an empty string"
    behavior = "model: gpt2\nbehaviors:\n  - name: a\n    prompt: x\n    expect: y\n    model: ' '\n"
    assert (
        error_of(behavior) == f"specs/f.yaml:6: behavior 'a', key 'model': {MODEL_EXPECTED}, got a blank string (' ')"
    )
    with pytest.raises(SpecError, match=r"<dict>: behavior 'x', key 'model': expected a model name"):
        parse_behavior({"name": "x", "prompt": "a b", "expect": " c", "model": ""})


def claim_error(claim: str, corrupt: bool = True) -> str:
    extra = "    corrupt: z\n" if corrupt else ""
    return error_of(f'behaviors:\n  - name: a\n    prompt: x\n    expect: y\n{extra}    claims:\n      - "{claim}"\n')


def test_unparsable_claim_points_at_the_character():
    message = claim_error("resid_pre[0:2 ' Hart'] recovers >= 0.9")
    assert message.startswith(
        "specs/f.yaml:7: behavior 'a', key 'claims[0]': cannot parse claim at column 15: "
        "expected ',' and a position part"
    )
    assert message.splitlines()[1:] == ["    resid_pre[0:2 ' Hart'] recovers >= 0.9", "                  ^"]


def test_claim_needing_corrupt_without_one():
    assert "add a 'corrupt' prompt" in claim_error("resid_pre[0, 1] recovers >= 0.9", corrupt=False)
    assert "'logit_diff' compares expect against a foil" in claim_error("logit_diff >= 1", corrupt=False)


def test_elsewhere_needs_another_claim():
    assert "resid_pre[elsewhere] needs another claim on resid_pre" in claim_error(
        "resid_pre[elsewhere] recovers <= 0.1"
    )


def test_spec_module_imports_neither_torch_nor_pytest():
    code = (
        "import sys, interptest.spec, interptest.claims, interptest.session\n"
        "print(sorted(m for m in ('torch', 'pytest', 'transformer_lens') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


VACUOUS_HEADER = """\
behaviors:
  - name: b
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Hart"
    corrupt: "Her name was Alex Cole. When Alex"
    claims:
      - "logit_diff >= 1.0"
"""


@pytest.mark.parametrize(
    "claim, message",
    [
        ("prob(' Hart') <= 1.0", "cannot be false: the value is a probability, always in [0, 1], so '<= 1' holds"),
        ("prob(' Hart') > -0.5", "cannot be false: the value is a probability, always in [0, 1], so '> -0.5' holds"),
        ("rank(' Hart') >= 1", "cannot be false: the value is a rank (1 = top), always in [1, ∞], so '>= 1' holds"),
        ("induction_score(heads[1.0]) >= 0.0", "cannot be false: the value is a share of attention, always in [0, 1]"),
        ("attn[0.2] from -1 to ' Hart' <= 1.5", "cannot be false: the value is an attention weight, always in [0, 1]"),
        ("lens(resid_post[0], -1) prob(' Hart') <= 1", "cannot be false: the value is a probability"),
        ("lens(resid_post[0], -1) rank(' Hart') >= 1", "cannot be false: the value is a rank (1 = top)"),
    ],
)
def test_a_claim_that_cannot_be_false_is_refused_with_the_reason(claim, message):
    with pytest.raises(SpecError) as info:
        parse_spec(VACUOUS_HEADER + f'      - "{claim}"\n', "f.yaml")
    text = str(info.value)
    assert text.startswith("f.yaml:8: behavior 'b', key 'claims[1]': claim ") and message in text, text
    assert text.endswith("whatever the model does; claim a bound inside that range")


@pytest.mark.parametrize(
    "claim", ["prob(' Hart') <= 0.99", "rank(' Hart') >= 2", "attn[0.2] from -1 to 1 <= 0.5", "prob(' Hart') > 1"]
)
def test_a_claim_inside_its_range_is_accepted(claim):
    parse_spec(VACUOUS_HEADER + f'      - "{claim}"\n', "f.yaml")


def test_min_pass_rate_on_a_single_prompt_is_refused_like_samples():
    with pytest.raises(SpecError, match=r"f.yaml:6: behavior 'b', key 'min_pass_rate': 'min_pass_rate' only applies"):
        parse_spec(VACUOUS_HEADER.replace("    claims:", "    min_pass_rate: 0.9\n    claims:"), "f.yaml")
    with pytest.raises(
        SpecError, match=r"f.yaml:8: behavior 'b', key 'claims\[1\].min_pass_rate': 'min_pass_rate' only applies to a"
    ):
        parse_spec(VACUOUS_HEADER + '      - {claim: "logit_diff >= 2", min_pass_rate: 0.9}\n', "f.yaml")


MERGE_KEYS = """\
x-base: &base
  prompt: "Her name was Alex Hart. When Alex"
  expect: " Hart"
  corrupt: "Her name was Alex Cole. When Alex"
  claims: ["logit_diff >= 2.0"]
x-more: &more
  foil: " Cole"
  expect: " Alex"
behaviors:
  - <<: *base
    name: plain
  - <<: *base
    name: overridden
    expect: " Alex"
    claims: ["prob(' Alex') >= 0.5"]
  - <<: [*base, *more]
    name: listed
"""


def test_merge_keys_and_their_overrides_read_as_yaml_safe_load_does():
    import yaml

    spec = parse_spec(MERGE_KEYS, "b.yaml")
    plain, overridden, listed = spec.behaviors
    loaded = yaml.safe_load(MERGE_KEYS)["behaviors"]
    for behavior, data in zip(spec.behaviors, loaded, strict=True):
        assert (behavior.name, behavior.prompt, behavior.expect, behavior.foil) == (
            data["name"],
            data["prompt"],
            data["expect"],
            data.get("foil"),
        )
        assert [c.text for c in behavior.claims] == data["claims"]
    assert overridden.expect == " Alex" and [c.text for c in overridden.claims] == ["prob(' Alex') >= 0.5"]
    assert listed.foil == " Cole"  # which mapping of a list wins where both have a key: as safe_load (by version)
    # an inherited key is blamed where it is written (the anchor), an override at its own line
    assert plain.key_lines["expect"] == 3 and overridden.key_lines["expect"] == 14


def test_a_key_written_twice_is_still_a_duplicate_beside_a_merge():
    text = MERGE_KEYS.replace("    name: plain\n", "    name: plain\n    expect: ' A'\n    expect: ' B'\n")
    assert "b.yaml:13: key 'expect': duplicate key 'expect' (first on line 12)" in str(
        pytest.raises(SpecError, parse_spec, text, "b.yaml").value
    )


def test_top_level_x_keys_hold_anchors_and_are_not_data():
    spec = parse_spec("x-shared: {a: 1}\nx-notes: free text\n" + GOOD, "b.yaml")
    assert [b.name for b in spec.behaviors] == ["alex-hart", "other"]
    # elsewhere an x- key is as unknown as any other key
    assert "unknown key 'x-note' in a behavior" in error_of(
        "behaviors:\n  - name: a\n    prompt: x\n    expect: y\n    x-note: 1\n"
    )


def test_a_behavior_list_replaces_the_default_list():
    spec = parse_spec(
        "defaults:\n  claims: [\"rank(' y') <= 2\"]\n  marks: [slow]\nbehaviors:\n"
        "  - {name: a, prompt: x, expect: y, claims: [\"prob(' y') > 0.1\"]}\n"
        "  - {name: b, prompt: x, expect: y}\n",
        "b.yaml",
    )
    a, b = spec.behaviors
    assert [c.text for c in a.claims] == ["prob(' y') > 0.1"] and a.marks == ("slow",)
    assert [c.text for c in b.claims] == ["rank(' y') <= 2"]


FAMILY = "behaviors:\n  - name: a\n    template: 'x {v}'\n    vars: {v: [a, b]}\n    samples: 2\n    expect: y\n"
ONE = "behaviors:\n  - name: a\n    prompt: x y\n    expect: y\n    corrupt: x z\n"
ORDER = (
    "the words of a claim go in this order: any, the quantity, together, on corrupt or on random_repeat, "
    "the verb (recovers, breaks, faithful, minimal), the comparison or beats random at Q, then ablate or of "
    "logit_diff"
)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "behaviors:\n  - name: a\n    prompt: x\n    expect: y\n    claims: [0.9]\n",
            "specs/f.yaml:5: behavior 'a', key 'claims[0]': expected a string, got a number (0.9): each claim is "
            "one string, e.g. \"logit_diff >= 2.0\" (or a mapping with 'claim' and 'min_pass_rate')",
        ),
        (
            "behaviors:\n  - name: a\n    prompt: x\n    expect: y\n"
            "    claims:\n      - logit_diff >= 0\n      - true\n",
            "specs/f.yaml:7: behavior 'a', key 'claims[1]': expected a string, got a boolean (True)",
        ),
        (
            FAMILY + "    single_token: true\n",
            "specs/f.yaml:7: behavior 'a', key 'single_token': expected one of error, drop, got a boolean (True)",
        ),
        (
            FAMILY + "    corrupt: {replace: {' a': ' b'}, seed: 3}\n",
            "specs/f.yaml:7: behavior 'a', key 'corrupt': unknown key 'seed' in 'corrupt'; expected one of "
            "{replace: ...}, {resample: [...]}, {noise: ...}, got keys ['replace', 'seed']",
        ),
        (
            FAMILY + "    corrupt: {resample: [v], replace: {' a': ' b'}}\n",
            "key 'corrupt': give one corruption, got 2 (replace, resample)",
        ),
        (
            FAMILY + "    foil: z\n    corrupt: {noise: {positions: [-1], sigma: 2}}\n",
            "specs/f.yaml:8: behavior 'a', key 'corrupt.noise': unknown key 'sigma' in corrupt.noise; "
            "allowed keys: positions, scale",
        ),
        (
            FAMILY + "    foil: z\n    corrupt: {noise: {scale: 2}}\n",
            "key 'corrupt.noise': missing key 'positions' (the positions whose embeddings get noise, e.g. "
            'positions: ["{first}", -2])',
        ),
        (
            FAMILY + "    corrupt: {noise: {positions: [-1]}}\n",
            "specs/f.yaml:7: behavior 'a', key 'corrupt': a family's noise corruption needs a 'foil'",
        ),
        (
            ONE + "    claims: ['any path heads[0.1] -> logits recovers >= 0.5']\n",
            "cannot parse claim at column 5: 'any' does not apply to paths: a path claim is one value (the "
            "senders' effect through the receivers), not a set of cells to pick the best from; write the claim "
            "without 'any'",
        ),
        (
            ONE + "    claims: ['any circuit heads[0.1] faithful >= 0.5']\n",
            "'any' does not apply to circuits: it picks the best cell of a localization claim",
        ),
        (
            ONE + "    claims: ['previous_token_score(heads[0.1]) >= 0.5 on random_repeat']\n",
            "cannot parse claim at column 41: expected the end of the claim, found 'on'; " + ORDER,
        ),
        (
            ONE + "    claims: ['heads[0.1, 0.2] recovers together >= 0.5']\n",
            "expected a comparison (>=, <=, >, <, ==), found 'together'; " + ORDER,
        ),
        (
            ONE + "    claims: ['heads[0.1] ablate mean breaks >= 0.5']\n",
            "found 'ablate'; " + ORDER,
        ),
        (
            ONE + "    claims: ['attn[0.1] from -1 to 0 on corrupt together >= 0.5']\n",
            "found 'together'; " + ORDER,
        ),
    ],
)
def test_item_messages_name_the_right_cause(text, message):
    assert message in error_of(text)


def test_a_family_noise_corruption_with_a_foil_is_accepted():
    behavior = parse_spec(FAMILY + "    foil: z\n    corrupt: {noise: {positions: [-1]}}\n", "b.yaml").behaviors[0]
    assert behavior.corruption.kind == "noise" and behavior.foil == "z"
