"""One pipeline for every behavior: a single prompt is a family of one sample, so the checks a single
prompt gets (single-token foil, unknown words, greedy multi-token expect) hold for every sample of a
family too. Tiny random models built here; no trained model."""

import pytest
import torch
from test_bind import word_level_model

import tinymodels
from interptest.api import check_behavior
from interptest.binding import bind_behavior
from interptest.errors import SpecError
from interptest.outcomes import run_behavior
from interptest.spec import parse_behavior
from interptest.suggest import suggest

WORDS = [" dog", " sat", " the", " on", " Bob"]  # the single tokens of tinymodels' small BPE vocabulary


def bind(model, **keys):
    return bind_behavior(parse_behavior({"name": "b", **keys}), model)


def _greedy(model, prompt: str, steps: int) -> list[int]:
    ids = model.to_tokens(prompt)
    out = []
    with torch.inference_mode():
        for _ in range(steps):
            nxt = int(model(ids)[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def test_family_foil_must_be_one_token_as_for_a_single_prompt():
    model = tinymodels.tiny_model("gpt2")
    single = dict(prompt="The dog sat", corrupt="The Bob sat", expect=" on", foil=" on the")
    family = dict(
        template="The {a} sat",
        vars={"a": ["dog", "Bob"]},
        samples=2,
        corrupt="The the sat",
        expect=" on",
        foil=" on the",
    )
    for keys in (single, family):
        with pytest.raises(SpecError, match=r"key 'foil': the foil must be a single token; ' on the' is 2 tokens"):
            bind(model, **keys)


def test_family_words_unknown_to_the_tokenizer_are_named():
    model = word_level_model()
    with pytest.raises(SpecError, match=r"key 'template': the model's tokenizer maps 'zebra' to its unknown token"):
        bind(model, template="the {a} sat", vars={"a": ["cat", "zebra"]}, samples=2, expect="on")


def test_family_multi_token_expect_is_checked_token_by_token_on_every_sample():
    model = tinymodels.tiny_model("gpt2")
    # Two prompts whose greedy next token agrees: a family can then expect it.
    by_first: dict[int, list[str]] = {}
    for word in WORDS:
        if len(model.to_tokens(word, prepend_bos=False)[0]) == 1:
            by_first.setdefault(_greedy(model, f"The{word} sat", 1)[0], []).append(word.strip())
    first, words = max(by_first.items(), key=lambda kv: len(kv[1]))
    assert len(words) >= 2, "no two prompts share their top-1 token; pick other words"
    first_text = model.tokenizer.decode([first])
    second = _greedy(model, f"The {words[0]} sat", 2)[1]
    wrong = next(
        t
        for t in (" dog", " mat", " sat", " on")
        if len(model.to_tokens(first_text + t, prepend_bos=False)[0]) == 2
        and model.to_tokens(t, prepend_bos=False)[0, 0] != second
    )
    family = dict(template="The {a} sat", vars={"a": words[:2]}, samples=2)

    ok = run_behavior(bind(model, expect=first_text, **family))
    assert ok.checks[0].passed and ok.checks[0].detail == "top-1 accuracy 1.00 over 2 samples"

    bad = run_behavior(bind(model, expect=first_text + wrong, **family))
    top1 = bad.checks[0]
    assert not top1.passed and top1.value == 0.0
    assert f"after {first_text!r}" in top1.detail  # the second token is what fails
    # ... and the single prompt of each sample says the same.
    single = check_behavior(
        {"name": "s", "prompt": f"The {words[0]} sat", "expect": first_text + wrong}, model, raise_on_failure=False
    )
    assert not single.checks[0].passed and single.checks[0].detail in top1.detail


def test_a_single_prompt_and_a_family_of_one_give_the_same_numbers():
    model = tinymodels.tiny_model("gpt2")
    claims = [
        "resid_pre[:, 2] recovers >= 0.5",
        "heads[0.1, 1.2] together recovers >= 0.1",
        "any attn_out[:, -1] breaks >= 0.1",
        "logit_diff >= 0",
    ]
    single = check_behavior(
        {
            "name": "s",
            "prompt": "The dog sat on the",
            "corrupt": "The Bob sat on the",
            "expect": " the",
            "foil": " on",
            "claims": claims,
        },
        model,
        raise_on_failure=False,
    )
    family = check_behavior(
        {
            "name": "f",
            "template": "The {a} sat on the",
            "vars": {"a": ["dog"]},
            "samples": 1,
            "corrupt": "The Bob sat on the",
            "expect": " the",
            "foil": " on",
            "claims": claims,
        },
        model,
        raise_on_failure=False,
    )
    assert family.samples == 1 and family.tokens == single.tokens
    assert len(single.checks) == len(family.checks) == 5
    for a, b in zip(single.checks, family.checks):
        assert a.text == b.text and a.passed == b.passed
        assert b.detail.split("\nminimal failing instance")[0] == a.detail  # a family may add a shrunk instance
        assert a.value == pytest.approx(b.value, abs=1e-6)


def test_the_pipeline_never_mixes_devices():
    """The whole pipeline (binding, runs, every claim kind, judging) under the device-mixing harness of
    test_patching_device: a tensor created without naming its device lands on ``meta`` and raises when
    it meets the model's CPU tensors, as a CPU tensor would meet CUDA ones on a GPU machine."""
    from test_patching_device import stray_device

    model = tinymodels.tiny_model("gpt2")
    behaviors = [
        {
            "name": "single",
            "prompt": "The dog sat on the",
            "corrupt": "The Bob sat on the",
            "min_effect": 0.01,  # a random model: small effects, measured all the same
            "expect": " the",
            "foil": " on",
            "claims": [
                "resid_pre[:, 2] recovers >= 0.5",
                "heads[0.1, 1.2] together recovers >= 0.1",
                "heads[0.1; -1] breaks >= 0.1",
                "prob(' the') > 0",
                "rank(' on') <= 3",
                "logit_diff >= 0",
                # every other claim kind: attention, head scores, direct effects, lens, paths, circuits
                "attn[1.0, 1.2] from -1 to ' dog' > 0",
                "previous_token_score(heads[0.1]) on random_repeat > 0",
                "induction_score(heads[1.0, 1.2]) together > 0",
                "direct(heads[1.0, 1.2]) together >= -100",
                "direct(mlp_out[1]) >= -1 of logit_diff",
                "lens(resid_post[0], -1) rank(' the') <= 100000",
                "path heads[0.1] -> heads[1.0].k recovers >= -10",
                "path heads[0.1, 0.2] -> logits + mlp_in[1] breaks >= -10",
                "circuit heads[0.1, 1.0] + mlp_out[1] faithful >= -10",
                "circuit heads[0.1, 1.0] + mlp_out[1] minimal >= -10",
                "circuit heads[0.1, 1.0] faithful beats random at 0.05",
                "heads[0.1, 1.0] together recovers beats random at 0.05",
                "heads[0.1] breaks >= -10 ablate zero",
            ],
        },
        {
            "name": "family",
            "template": "The {a} sat on the",
            "vars": {"a": ["dog", "Bob"]},
            "samples": 2,
            "min_effect": 0.01,
            "corrupt": {"noise": {"positions": ["{a}"], "scale": 3.0}},
            "expect": " the",
            "foil": " on",
            "claims": [
                "resid_pre[:, {a}] recovers >= 0.5",
                "mlp_out[0, -1] breaks <= 0.5",
                "logit(' on') > -100",
                "heads[0.1] breaks >= -10 ablate mean",
                "circuit heads[0.1, 1.0] + mlp_out[1] faithful >= -10 ablate mean",
                "path heads[0.1] -> heads[1.0].v recovers >= -10",
                "attn[1.0] from -1 to 0 > 0",
                "direct(heads[1.0]) >= -100",
            ],
        },
    ]
    options = {"random_sets": 12}  # the negative controls' code path, not their statistics

    def check(behavior):
        return run_behavior(bind_behavior(parse_behavior(behavior), model, options=options), shrink=False)

    for behavior in behaviors:
        expected = check(behavior)
        measured = [c.text for c in expected.checks if c.value is not None]
        assert set(behavior["claims"]) <= set(measured), expected.checks  # every claim measured, none errored
        with stray_device(model):
            got = check(behavior)
        assert [(c.text, c.passed, c.value) for c in got.checks] == [
            (c.text, c.passed, c.value) for c in expected.checks
        ]
    single = parse_behavior(behaviors[0])
    suggested = suggest(bind_behavior(single, model, options=options))
    assert "circuit" in suggested  # sweeps, head and circuit suggestions ran
    with stray_device(model):
        assert suggest(bind_behavior(single, model, options=options)) == suggested


@pytest.mark.parametrize(
    "claim, moved",
    [
        ("resid_pre[0, ' dog'] recovers >= 0", "its positions differ"),
        ("attn[0.0] from -1 to ' dog' > 0", "its positions differ"),
        ("lens(resid_pre[0], ' dog') logit_diff >= 0", "its position differs"),
    ],
)
def test_a_claim_whose_positions_move_between_samples_is_an_error(claim, moved):
    model = tinymodels.tiny_model("gpt2")
    family = dict(
        template="The {a} sat on the {b}",
        vars={"a": ["dog", "Bob"], "b": ["dog", "Bob"]},
        samples=2,
        expect=" the",
        foil=" on",
        corrupt="The the sat on the the",
        claims=[claim],
    )
    with pytest.raises(
        SpecError,
        match=rf"{moved} between samples \('The .* sat on the .*'\); use template "
        r"variables such as \{last\} or numeric positions",
    ):
        bind(model, **family)


@pytest.mark.parametrize("samples", [1, 3])
def test_the_unpatched_forwards_run_once_per_behavior(samples, monkeypatch):
    """The engine reuses the logits the pipeline computed for the predictions (it used to run the clean
    and corrupted forwards a second time); the fast engine then runs no bridge forward at all, and its
    metrics are the pipeline's, exactly."""
    model = tinymodels.tiny_model("gpt2")
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    behavior = {
        "name": "f",
        "template": "The {a} sat on the",
        "vars": {"a": ["dog", "Bob", "the"][:samples]},
        "samples": samples,
        "corrupt": "The on sat on the",
        "expect": " the",
        "foil": " on",
        "claims": ["resid_pre[:, 1] recovers >= 0", "heads[0.1] recovers >= 0"],
    }
    bound = bind_behavior(parse_behavior(behavior), model)
    from interptest.running import Run

    run = Run(bound)
    assert len(calls) == 2  # clean, corrupted
    patcher = run.patcher()
    patcher.sweep("resid_pre", "denoise")
    assert len(calls) == 2
    assert torch.equal(patcher.clean_metrics.double(), run.clean_metrics.float().double())
    assert torch.equal(patcher.corrupt_metrics.double(), run.corrupt_metrics.float().double())
