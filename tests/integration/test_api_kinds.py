"""The Python API's value functions (issue 20 item 9) on the shipped model: each returns what the spec
route measures — the value a one-cell claim of the same kind is judged on in check_behavior — and refuses
bad input with the spec's message."""

import pytest

import interptest
from interptest.api import check_behavior

PROMPT = "Her name was Alex Hart. When Alex"
CORRUPT = "Her name was Alex Cole. When Alex"
TOL = 1e-6


@pytest.fixture(scope="module")
def model():
    return interptest.load_model("interptest-tiny")


def spec_values(model, claims: list[str], name: str = "b", **keys) -> list[float]:
    """Each claim's value by the spec route: a behavior checked like a spec item. (A random draw is seeded
    by the seed and the behavior's name: the API's behavior is named after the function.)"""
    behavior = {"name": name, "prompt": PROMPT, "expect": " Hart", "claims": claims, **keys}
    result = check_behavior(behavior, model, raise_on_failure=False)
    checks = result.checks[1:]  # after the implicit top-1 check
    assert [c.text for c in checks] == claims and all(c.value is not None for c in checks), checks
    return [c.value for c in checks]


def test_attention(model):
    got = interptest.attention(model, PROMPT, [(1, 0), (0, 2)], query=-1, key="' Hart'")
    claims = ["attn[1.0] from -1 to ' Hart' >= 0.5", "attn[0.2] from -1 to ' Hart' >= 0.5"]
    assert list(got) == [(1, 0), (0, 2)]
    assert list(got.values()) == pytest.approx(spec_values(model, claims), abs=TOL)
    on_corrupt = interptest.attention(model, PROMPT, "1.0", -1, 5, corrupt=CORRUPT, on_corrupt=True)
    assert on_corrupt[(1, 0)] == pytest.approx(
        spec_values(model, ["attn[1.0] from -1 to 5 on corrupt >= 0.5"], corrupt=CORRUPT)[0], abs=TOL
    )


@pytest.mark.parametrize("score, random_repeat", [("previous_token_score", False), ("induction_score", True)])
def test_head_scores(model, score, random_repeat):
    got = interptest.head_scores(model, PROMPT, score, on_random_repeat=random_repeat)
    assert set(got) == {(l, h) for l in range(2) for h in range(4)}
    suffix = " on random_repeat" if random_repeat else ""
    claims = [f"{score}(heads[{l}.{h}]){suffix} >= 0.5" for l, h in got]
    assert list(got.values()) == pytest.approx(spec_values(model, claims, name="head_scores"), abs=TOL)


@pytest.mark.parametrize("relative", [False, True])
def test_direct_effects(model, relative):
    got = interptest.direct_effects(model, PROMPT, corrupt=CORRUPT, relative=relative)
    of = " of logit_diff" if relative else ""
    claims = [f"direct(heads[{l}.{h}]) >= 0.5{of}" for l, h in got["heads"]]
    claims += [f"direct(attn_out[{l}]) >= 0.5{of}" for l in got["attn_out"]]
    claims += [f"direct(mlp_out[{l}]) >= 0.5{of}" for l in got["mlp_out"]]
    values = [*got["heads"].values(), *got["attn_out"].values(), *got["mlp_out"].values()]
    assert len(values) == 8 + 2 + 2
    assert values == pytest.approx(spec_values(model, claims, corrupt=CORRUPT), abs=TOL)


@pytest.mark.parametrize(
    "quantity, read",
    [("prob", "prob(' Hart') >= 0.5"), ("rank", "rank(' Hart') <= 2"), ("logit_diff", "logit_diff >= 0.5")],
)
def test_lens(model, quantity, read):
    got = interptest.lens(model, PROMPT, quantity, corrupt=CORRUPT, residual="resid_mid")
    claims = [f"lens(resid_mid[{layer}], -1) {read}" for layer in got]
    assert list(got) == [0, 1]
    assert list(got.values()) == pytest.approx(spec_values(model, claims, corrupt=CORRUPT), abs=TOL)


@pytest.mark.parametrize("direction, verb, ablation", [("denoise", "recovers", None), ("noise", "breaks", "zero")])
def test_path_effect(model, direction, verb, ablation):
    got = interptest.path_effect(
        model, PROMPT, CORRUPT, "heads[0.2] + mlp_out[0]", "heads[1.0].v", direction=direction, ablation=ablation
    )
    suffix = f" ablate {ablation}" if ablation else ""
    claim = f"path heads[0.2] + mlp_out[0] -> heads[1.0].v {verb} >= 0.5{suffix}"
    assert got == pytest.approx(spec_values(model, [claim], corrupt=CORRUPT)[0], abs=TOL)


def test_circuit_faithfulness_and_drops(model):
    nodes = "heads[0.2, 1.0, 1.2, 1.3] + mlp_out[0, 1]"
    got = interptest.circuit_faithfulness(model, PROMPT, nodes, corrupt=CORRUPT)
    assert got == pytest.approx(spec_values(model, [f"circuit {nodes} faithful >= 0.5"], corrupt=CORRUPT)[0], abs=TOL)
    drops = interptest.circuit_drops(model, PROMPT, nodes, corrupt=CORRUPT, ablation="zero")
    assert list(drops) == ["head 0.2", "head 1.0", "head 1.2", "head 1.3", "MLP 0", "MLP 1"]
    # the spec route judges a minimal claim on its smallest drop
    spec = spec_values(model, [f"circuit {nodes} minimal >= 0.05 ablate zero"], corrupt=CORRUPT)[0]
    assert min(drops.values()) == pytest.approx(spec, abs=TOL)


def test_measure_returns_every_cell(model):
    got = interptest.measure(model, "resid_pre[:, ' Hart'] recovers >= 0.9", PROMPT, corrupt=CORRUPT)
    assert list(got) == ["(layer 0, position 5 ' Hart')", "(layer 1, position 5 ' Hart')"]
    cells = [f"resid_pre[{layer}, ' Hart'] recovers >= 0.9" for layer in (0, 1)]
    assert list(got.values()) == pytest.approx(spec_values(model, cells, corrupt=CORRUPT), abs=TOL)


def test_the_default_expect_is_the_clean_top1(model):
    assert interptest.top_predictions(model, PROMPT, 1)[0][0] == " Hart"
    assert interptest.lens(model, PROMPT, "rank") == interptest.lens(model, PROMPT, "rank", expect=" Hart")


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda m: interptest.attention(m, PROMPT, "5.0"),
            "attention: claims[0]: claim 'attn[5.0] from -1 to 0 >= 0.5': layer 5 is out of range: there are 2 "
            "layers (0 to 1, or -1 to -2 from the end)",
        ),
        (
            lambda m: interptest.path_effect(m, PROMPT, PROMPT, "heads[0.2]", "logits"),
            "path_effect: corrupt: 'corrupt' is identical to 'prompt'",
        ),
        (
            lambda m: interptest.path_effect(m, PROMPT, CORRUPT, "heads[0.2]", "logits", direction="up"),
            "path_effect: unknown direction 'up'",
        ),
        (lambda m: interptest.lens(m, PROMPT, "entropy"), "lens: unknown quantity 'entropy'"),
        (
            lambda m: interptest.head_scores(m, PROMPT, "copy_score"),
            "head_scores: claims[0]: cannot parse claim at column 1: expected a claim kind",
        ),
        (
            lambda m: interptest.circuit_faithfulness(m, PROMPT, "heads[0.2]", ablation="mean"),
            "circuit_faithfulness: claims[0]: claim 'circuit heads[0.2] faithful >= 0.5 ablate mean' ablates by the "
            "mean",
        ),
    ],
)
def test_bad_input_gets_the_spec_message(model, call, message):
    with pytest.raises(interptest.InterpError) as error:
        call(model)
    assert message in str(error.value)
