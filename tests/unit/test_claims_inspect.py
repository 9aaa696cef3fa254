"""Attention-pattern, head-score, direct-effect and logit-lens claims equal TransformerLens's own numbers
(hook_pattern, detect_head, stack_head_results + apply_ln_to_stack in compatibility mode,
accumulated_resid) on random GPT-2, Llama-style and NeoX-style models built here."""

import functools

import pytest
import torch
from transformer_lens import head_detector

import tinymodels
from interptest.api import check_behavior
from interptest.binding import bind_behavior
from interptest.claims import parse_claim
from interptest.claims.direct import direct_effects
from interptest.claims.scores import detection_pattern, random_repeat_tokens
from interptest.errors import SpecError
from interptest.running import Run
from interptest.spec import parse_behavior

PROMPT = "The dog sat on the dog sat on the"
BEHAVIOR = {"name": "b", "prompt": PROMPT, "expect": " the", "foil": " on"}
ARCHS = tinymodels.ARCHS + ("interptest-tiny",)  # three random architectures and the trained reference model


@functools.cache
def model_for(arch):
    if arch == "interptest-tiny":
        from interptest.model import load_model

        return load_model("interptest-tiny", device="cpu")
    return tinymodels.tiny_model(arch)


def values(model, claims, **keys):
    result = check_behavior({**BEHAVIOR, **keys, "claims": claims}, model, raise_on_failure=False)
    return [check.value for check in result.checks[1:]]


@functools.cache
def clean_cache(arch):
    model = model_for(arch)
    with torch.inference_mode():
        return model.run_with_cache(model.to_tokens(PROMPT))[1]


@functools.cache
def compatibility_model(arch):
    """The same weights as tiny_model(arch), LayerNorm folded (TransformerLens compatibility mode)."""
    if arch == "interptest-tiny":
        from interptest.zoo import tiny_model_dir

        model = tinymodels.boot(str(tiny_model_dir()))
    else:
        model = tinymodels.boot(tinymodels.build_model_dir(arch))
    model.enable_compatibility_mode()
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_values_are_hook_pattern_entries(arch):
    model = model_for(arch)
    pattern = clean_cache(arch)
    claims = [
        "attn[0.1] from -1 to ' dog'#2 > 0",
        "attn[1.2, 1.3] from 6 to 3 > 0",
        "attn[0.0, 1.1] from last to 0 together > 0",
    ]
    got = values(model, claims)
    tokens = model.to_str_tokens(PROMPT)
    n, dog2 = len(tokens), [i for i, t in enumerate(tokens) if t == " dog"][1]
    assert got[0] == pytest.approx(float(pattern["pattern", 0][0, 1, n - 1, dog2]), abs=1e-7)
    assert got[1] == pytest.approx(
        min(float(pattern["pattern", 1][0, 2, 6, 3]), float(pattern["pattern", 1][0, 3, 6, 3])), abs=1e-7
    )
    mean = (float(pattern["pattern", 0][0, 0, n - 1, 0]) + float(pattern["pattern", 1][0, 1, n - 1, 0])) / 2
    assert got[2] == pytest.approx(mean, abs=1e-7)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "score, name",
    [
        ("previous_token_score", "previous_token_head"),
        ("duplicate_token_score", "duplicate_token_head"),
        ("induction_score", "induction_head"),
    ],
)
def test_scores_equal_detect_head(arch, score, name):
    model = model_for(arch)
    expected = head_detector.detect_head(model, PROMPT, name)
    heads = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    got = values(model, [f"{score}(heads[{l}.{h}]) <= 0.5" for l, h in heads])
    assert max(abs(g - float(expected[l, h])) for g, (l, h) in zip(got, heads)) <= 1e-6


@pytest.mark.parametrize("arch", ARCHS)
def test_random_repeat_scores_equal_transformer_lens_on_the_same_tokens(arch):
    model = model_for(arch)
    bound = bind_behavior(
        parse_behavior({**BEHAVIOR, "claims": ["induction_score(heads[1.0]) on random_repeat > 0"]}),
        model,
        options={"repeat_length": 7},
    )
    from interptest import families

    tokens = random_repeat_tokens(model, 1, 7, families.sample_seed(0, bound.spec) + 1)
    bos = len(model.to_tokens("x")[0]) - len(model.to_tokens("x", prepend_bos=False)[0])  # as prompts get it
    assert tokens.shape == (1, bos + 14) and torch.equal(tokens[0, -14:-7], tokens[0, -7:])
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens)
        got = check_behavior(bound.spec, model, raise_on_failure=False)  # default length: 20
    det = head_detector.get_induction_head_detection_pattern(tokens.cpu())
    assert torch.equal(detection_pattern("induction_score", tokens[0]), det)
    expected = head_detector.compute_head_attention_similarity_score(
        cache["pattern", 1][0, 0], det, exclude_bos=False, exclude_current_token=False, error_measure="mul"
    )
    from interptest.outcomes import run_behavior

    with torch.inference_mode():
        ours = run_behavior(bound).checks[1].value
    assert ours == pytest.approx(expected, abs=1e-6)
    assert got.checks[1].value != pytest.approx(expected, abs=1e-9)  # another length, other tokens


@pytest.mark.parametrize("arch", ARCHS)
def test_direct_effects_are_complete_and_equal_transformer_lens_in_compatibility_mode(arch):
    model = model_for(arch)
    with torch.inference_mode():
        run = Run(bind_behavior(parse_behavior(BEHAVIOR), model))
        effects = direct_effects(run)
    total = (
        effects["heads"].sum((1, 2))
        + effects["attn_bias"].sum(1)
        + effects["mlp_out"].sum(1)
        + effects["embed"]
        + effects["bias"]
    )
    assert float(total[0]) == pytest.approx(float(run.clean_metrics[0]), abs=1e-5)
    assert torch.allclose(effects["heads"].sum(2) + effects["attn_bias"], effects["attn_out"], atol=1e-5)

    folded = compatibility_model(arch)
    with torch.inference_mode():
        _, cache = folded.run_with_cache(folded.to_tokens(PROMPT))
        stack = cache.apply_ln_to_stack(cache.stack_head_results(layer=-1, pos_slice=-1), layer=-1, pos_slice=-1)
        e, f = folded.to_single_token(" the"), folded.to_single_token(" on")
        expected = (stack @ (folded.W_U[:, e] - folded.W_U[:, f]))[:, 0].double()
        # TransformerLens's reference is only a reference where its stacked W_O reproduces its own attention
        # output: TL 3.2.1's bridge reads a square nn.Linear output projection as Conv1D's layout (per-head W_O
        # transposed; measured 14.4 on NeoX), which direct() no longer relies on.
        z = cache["blocks.0.attn.hook_z"][0, -1]
        own = torch.einsum("hk,hkd->d", z, folded.W_O[0])
        try:
            own = own + folded.b_O[0]
        except (AttributeError, TypeError):  # a bias-free model: the bridge raises instead of giving zeros
            pass
        off = float((own - cache["blocks.0.hook_attn_out"][0, -1]).abs().max())
    if off > 1e-3:
        pytest.skip(f"this TransformerLens's stacked W_O does not reproduce its own attn_out ({off:.3g} off)")
    assert float((expected - effects["heads"][0].reshape(-1)).abs().max()) <= 1e-5
    # ... and interptest's own numbers do not depend on the folding.
    with torch.inference_mode():
        on_folded = direct_effects(Run(bind_behavior(parse_behavior(BEHAVIOR), folded)))
    for key in ("heads", "mlp_out", "attn_out"):
        assert float((on_folded[key] - effects[key]).abs().max()) <= 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_lens_equals_accumulated_resid_through_the_final_norm(arch):
    model = model_for(arch)
    cache = clean_cache(arch)
    stack = cache.accumulated_resid(apply_ln=True, pos_slice=-1)  # [layers + 1, 1, d]: resid_pre 0.., final
    logits = (stack @ model.W_U + model.b_U)[:, 0]
    e, f = model.to_single_token(" the"), model.to_single_token(" on")
    L = model.cfg.n_layers
    claims = [f"lens(resid_pre[{l}], -1) logit_diff >= 0" for l in range(L)] + [
        f"lens(resid_post[{L - 1}], last) logit(' the') > 0",
        "lens(resid_pre[1], -1) rank(' on') <= 1000",
        "lens(resid_pre[1], -1) prob(' on') > 0",
    ]
    got = values(model, claims)
    for l in range(L):
        assert got[l] == pytest.approx(float(logits[l, e] - logits[l, f]), abs=1e-4)
    assert got[L] == pytest.approx(float(logits[L, e]), abs=1e-4)
    assert got[L + 1] == float((logits[1] > logits[1, f]).sum()) + 1
    assert got[L + 2] == pytest.approx(float(torch.softmax(logits[1].double(), -1)[f]), abs=1e-6)


def test_a_true_and_a_false_claim_of_each_kind():
    model = tinymodels.tiny_model("gpt2")
    cache = clean_cache("gpt2")
    a = float(cache["pattern", 1][0, 2, -1, 0])
    claims = [
        f"attn[1.2] from -1 to 0 >= {a - 0.01}",
        f"attn[1.2] from -1 to 0 >= {a + 0.01}",
        "previous_token_score(heads[0.0]) > 0",
        "previous_token_score(heads[0.0]) > 1",
        "direct(heads[elsewhere]) <= 1000",
        "direct(heads[0.0]) > 1000",
        "lens(resid_pre[0], -1) rank(' the') <= 100000",
        "lens(resid_pre[0], -1) rank(' the') < 1",
    ]
    claims.insert(4, "direct(heads[2.3]) <= 1000")
    result = check_behavior({**BEHAVIOR, "claims": claims}, model, raise_on_failure=False)
    assert [c.passed for c in result.checks[1:]] == [True, False, True, False, True, True, False, True, False]


@pytest.mark.parametrize(
    "claim, message",
    [
        ("attn[3.0] from -1 to 0 > 0", "layer 3 is out of range: there are 3 layers"),
        ("attn[0.4] from -1 to 0 > 0", "head 0.4 is out of range: each layer has 4 heads"),
        (
            "attn[0.0] from 2 to 5 > 0",
            "key position 5 (' the') comes after query position 2 (' dog'): causal attention there is always 0",
        ),
        ("attn[0.0] from -1 to ' cat' > 0", "position token ' cat' does not occur"),
        ("attn[0.0] from 1:3 to 0 > 0", "query position 1:3 selects 2 positions; give one"),
        ("attn[0.0] from -1 to 0 on corrupt > 0", "reads the corrupted run ('on corrupt'); add a 'corrupt' prompt"),
        ("attn[elsewhere] from -1 to 0 <= 1", "attn[elsewhere] needs another attn claim"),
        ("inductoin_score(heads[1.0]) > 0", "did you mean 'induction_score'?"),
        ("induction_score(heads[1.0]) on random > 0", "expected 'random_repeat' after 'on'"),
        ("direct(resid_pre[1]) >= 0", "resid_pre has no direct path of its own to the logits"),
        ("lens(mlp_out[1], -1) rank(' the') <= 5", "lens reads the residual stream; mlp_out is not one"),
        (
            "lens(resid_post[1], -1) resid_pre[0, 0] recovers >= 0",
            "expected what to read off the lens: prob(...), rank(...), logit(...) or logit_diff",
        ),
        ("lens(resid_post[0:2], -1) logit_diff >= 0", "lens reads one layer"),
    ],
)
def test_bad_claims_name_the_offending_part(claim, message):
    model = tinymodels.tiny_model("gpt2")
    with pytest.raises(SpecError) as info:
        bind_behavior(parse_behavior({**BEHAVIOR, "claims": [claim]}), model)
    assert message in str(info.value) and claim.split(" ")[0][:6] in str(info.value)


def test_parsed_forms():
    claim = parse_claim("attn[1.0, 1.3] from last to ' Hart' together on corrupt >= 0.8")
    assert claim.heads == ((1, 0), (1, 3)) and claim.quantifier == "together" and claim.on_corrupt
    score = parse_claim("induction_score(heads[1.0]) together on random_repeat >= 0.3")
    assert score.score == "induction_score" and score.on_random_repeat and score.quantifier == "together"
    direct = parse_claim("direct(heads[1.0, 1.3]) together >= 0.6 of logit_diff")
    assert direct.relative and direct.quantifier == "together" and direct.heads == ((1, 0), (1, 3))
    assert parse_claim("direct(mlp_out[1]) <= 0.5").layers.values == (1,)
    lens = parse_claim("lens(resid_post[0], -1) rank(' Hart') <= 5")
    assert (lens.component, lens.prediction.function, lens.prediction.token) == ("resid_post", "rank", " Hart")
