"""A ``HookedTransformer`` is a model too (issue 18.4): under TransformerLens 3.x a user's notebook model is
one, and ``patch_sweep``, ``check_behavior`` and the ``interp_model`` fixture take it as they take a bridge.

Two HookedTransformers, neither from the hub:

* ``folded()``: a random-weight model built from a ``HookedTransformerConfig``, its weights processed as
  ``HookedTransformer.from_pretrained`` processes them (LayerNorm folded, writing weights and the
  unembedding centred, value biases folded) -- the form of a notebook model;
* ``tiny_hooked()``: interptest-tiny's own weights, converted by TransformerLens's GPT-2 weight conversion and
  processed the same way, so that every claim of the shipped induction behavior can be compared with what
  the bridge of the same checkpoint measures.

TransformerLens 4.0 removed ``HookedTransformer``: there every test here skips, saying so.
"""

from __future__ import annotations

import functools
import os
import sys
import textwrap

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import pytest
import torch

import interptest
from interptest.tl_compat import hooked_transformer_class, is_bridge, is_hooked_transformer, tl_version
from interptest.zoo import tiny_model_dir

pytestmark = pytest.mark.skipif(
    hooked_transformer_class() is None,
    reason=f"HookedTransformer does not exist in TransformerLens {tl_version()} (removed in 4.0); "
    f"these tests run under TransformerLens 3.x (CI environment b)",
)

PROMPT, CORRUPT = "Her name was Alex Hart. When Alex", "Her name was Alex Cole. When Alex"
TOL = 1e-5


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir()))


def _process(model, state_dict):
    """What ``from_pretrained`` does to the weights by default (its fold_ln, center_writing_weights,
    center_unembed, fold_value_biases), then eval mode."""
    model.load_and_process_state_dict(
        state_dict, fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True
    )
    model.eval()
    return model


@functools.cache
def folded():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = _tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=64, n_ctx=128, d_head=16, n_heads=4, d_mlp=256, d_vocab=len(tok),
        act_fn="gelu_new", normalization_type="LN", default_prepend_bos=True, seed=0,
    )  # fmt: skip
    model = HookedTransformer(cfg, tokenizer=tok)
    g = torch.Generator().manual_seed(0)
    state = {
        k: (torch.randn(v.shape, generator=g) * 0.3 if v.ndim >= 2 and v.is_floating_point() else v)
        for k, v in model.state_dict().items()
    }
    for k in state:  # LayerNorm gains and biases that folding has to move into the next weights
        if (".ln" in k or k.startswith("ln_final")) and k.endswith((".w", ".b")):
            state[k] = 1.0 + 0.2 * torch.randn(state[k].shape, generator=g) if k.endswith(".w") else 0.1 * state[k]
    return _process(model, state)


@functools.cache
def tiny_hooked():
    import transformers as tf
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    hf = tf.GPT2LMHeadModel.from_pretrained(str(tiny_model_dir()), attn_implementation="eager")
    c = hf.config  # the fields TransformerLens's GPT-2 config conversion reads (it would ask the hub for gpt2's)
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd, n_ctx=c.n_positions, d_vocab=c.vocab_size, act_fn=c.activation_function,
        eps=c.layer_norm_epsilon, normalization_type="LN", original_architecture="GPT2LMHeadModel",
        default_prepend_bos=True, model_name="interptest-tiny (HookedTransformer)",
    )  # fmt: skip
    model = HookedTransformer(cfg, tokenizer=_tokenizer())
    return _process(model, convert_gpt2_weights(hf, cfg))


def test_the_models_are_hooked_transformers_with_folded_weights():
    for model in (folded(), tiny_hooked()):
        assert is_hooked_transformer(model) and not is_bridge(model)
        assert model.cfg.normalization_type == "LNPre"  # LayerNorm folded into the next weights
        assert not model.training
        toks = model.to_tokens(PROMPT)
        assert int((toks == model.tokenizer.bos_token_id).sum()) == 1 and int(toks[0, 0]) == 0


@pytest.mark.parametrize("component", ["resid_pre", "resid_mid", "attn_out", "mlp_out", "heads"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_patch_sweep_equals_transformer_lens_patching(component, direction):
    """On the folded random model: every cell equals ``transformer_lens.patching`` on the same model."""
    from transformer_lens import patching as tlp

    fn = {
        "resid_pre": tlp.get_act_patch_resid_pre,
        "resid_mid": tlp.get_act_patch_resid_mid,
        "attn_out": tlp.get_act_patch_attn_out,
        "mlp_out": tlp.get_act_patch_mlp_out,
        "heads": tlp.get_act_patch_attn_head_out_all_pos,
    }[component]
    model = folded()
    pm = interptest.patch_sweep(model, PROMPT, CORRUPT, component=component, expect=" Hart", foil=" Cole",
                                direction=direction)  # fmt: skip
    e, f = (int(model.to_tokens(t, prepend_bos=False)[0, 0]) for t in (" Hart", " Cole"))
    mc, mx = pm.clean_metric, pm.corrupt_metric
    assert abs(mc - mx) >= 1.0  # normalized values do not amplify rounding
    clean, corrupt = model.to_tokens(PROMPT), model.to_tokens(CORRUPT)
    source, base = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
    with torch.inference_mode():
        _, cache = model.run_with_cache(source)

        def metric(lg):
            m = lg[0, -1, e] - lg[0, -1, f]
            return (m - mx) / (mc - mx) if direction == "denoise" else (mc - m) / (mc - mx)

        want = fn(model, base, cache, metric).float().cpu()
    assert pm.values.shape == want.shape
    assert (pm.values.float().cpu() - want).abs().max() <= TOL, (pm.values, want)


def _behavior():
    """The shipped induction behavior's first spec, with one claim of every kind (the YAML's, plus paths to
    each receiver, circuits under every ablation, attention, head scores, direct effects and the lens)."""
    return {
        "name": "alex-hart",
        "prompt": PROMPT,
        "expect": " Hart",
        "corrupt": CORRUPT,
        "foil": " Cole",
        "reference": ["Her name was Mary Hill. When Mary", "His name was Tom Baker. When Tom"],
        "claims": [
            "prob(' Hart') >= 0.9",
            "rank(' Hart') <= 1",
            "logit_diff >= 5.0",
            "resid_pre[:, ' Hart'] recovers >= 0.9",
            "resid_pre[elsewhere] recovers <= 0.1",
            "attn_out[1, -1] recovers >= 0.9",
            "mlp_out[1, -1] recovers >= 0.0",
            "heads[1.0, 1.2, 1.3] together recovers >= 0.9",
            "heads[0.3; ' Hart'] recovers >= 0.3",
            "path heads[0.2] -> heads[1.0].k recovers >= -1.0",
            "path heads[0.1] -> heads[1.3].q recovers >= -1.0",
            "path heads[0.3] -> heads[1.0].v recovers >= -1.0",
            "path heads[1.0, 1.2, 1.3] -> logits recovers >= 0.0",
            "path heads[1.0, 1.2, 1.3] -> mlp_in[1] recovers >= 0.0",
            "circuit heads[0.2, 0.3, 1.0, 1.2, 1.3] + mlp_out[1] faithful >= 0.5",
            "circuit heads[0.2, 0.3, 1.0, 1.2, 1.3] + mlp_out[0, 1] faithful >= 0.5 ablate mean",
            "circuit heads[0.2, 0.3, 1.0, 1.2, 1.3] + mlp_out[0, 1] faithful >= -10 ablate zero",
            "circuit heads[0.2, 0.3, 1.0, 1.2, 1.3] + mlp_out[1] minimal >= -10",
            "attn[1.0] from -1 to ' Hart' >= 0.5",
            "attn[0.2] from ' Hart' to ' Alex'#1 >= 0.5",
            "previous_token_score(heads[0.2]) >= 0.5",
            "induction_score(heads[1.0, 1.2, 1.3]) on random_repeat >= 0.3",
            "direct(heads[1.0]) >= 1.0",
            "direct(mlp_out[1]) >= 0.3 of logit_diff",
            "lens(resid_mid[1], -1) rank(' Hart') <= 1",
            "lens(resid_pre[1], -1) logit_diff >= -100",
        ],
    }


def test_check_behavior_measures_what_the_bridge_measures():
    """Every claim kind runs on the HookedTransformer of interptest-tiny's weights and measures what the bridge
    of the checkpoint measures (folding and centring change raw logits, not differences of them)."""
    bridge = interptest.load_model("interptest-tiny", device="cpu")
    hooked = tiny_hooked()
    on_bridge = interptest.check_behavior(_behavior(), bridge, raise_on_failure=False)
    on_hooked = interptest.check_behavior(_behavior(), hooked, raise_on_failure=False)
    assert [c.text for c in on_hooked.checks] == [c.text for c in on_bridge.checks]
    differ = [
        (h.text, h.value, b.value)
        for h, b in zip(on_hooked.checks, on_bridge.checks)
        if h.value != pytest.approx(b.value, rel=1e-3, abs=1e-3) or h.passed != b.passed
    ]
    # Zero ablation is the one measurement that depends on how the weights are written: from_pretrained's
    # fold_value_biases moves b_V into b_O, so a zeroed hook_z keeps what the bridge's zeroed hook_z removes,
    # and center_writing_weights changes what a zeroed hook_mlp_out leaves. Resample and mean ablation,
    # patching, attention, scores, direct effects and the lens do not depend on it.
    assert [d[0] for d in differ] == [c for c in _behavior()["claims"] if c.endswith("ablate zero")], differ
    assert on_hooked.passed, [c.text for c in on_hooked.checks if not c.passed]


def test_interp_model_fixture_can_be_a_hooked_transformer(pytester):
    """A conftest that overrides ``interp_model`` with a notebook's HookedTransformer: check_behavior runs
    on it (and says which model it used)."""
    pytester.makeconftest(
        textwrap.dedent(
            f"""
            import sys
            import pytest
            sys.path.insert(0, {os.path.dirname(__file__)!r})
            import test_hooked_transformer as t

            @pytest.fixture(scope="session")
            def interp_model():
                return t.tiny_hooked()
            """
        )
    )
    pytester.makepyfile(
        textwrap.dedent(
            f"""
            import interptest
            from interptest.tl_compat import is_hooked_transformer

            def test_alex_hart(interp_model):
                assert is_hooked_transformer(interp_model)
                interptest.check_behavior({{
                    "name": "alex-hart", "prompt": {PROMPT!r}, "expect": " Hart", "corrupt": {CORRUPT!r},
                    "claims": ["heads[1.0, 1.2, 1.3] together recovers >= 0.9",
                               "resid_pre[:, ' Hart'] recovers >= 0.9"],
                }}, interp_model)

            def test_a_false_claim_fails_with_the_report(interp_model):
                interptest.check_behavior({{
                    "name": "alex-hart", "prompt": {PROMPT!r}, "expect": " Hart", "corrupt": {CORRUPT!r},
                    "claims": ["heads[0.0] recovers >= 0.9"],
                }}, interp_model)
            """
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "behavior 'alex-hart' on interptest-tiny (HookedTransformer): 1 of 2 checks failed" in out
    assert "FAILED  heads[0.0] recovers >= 0.9" in out


def test_edge_claims_are_refused_on_a_hooked_transformer_whose_norms_have_no_input_hooks():
    """Its ``ln_final.hook_normalized`` (what path patching uses for ``ln_final.hook_in``) is after the norm:
    rebuilding a receiver's residual there would be wrong, so edge circuits refuse, naming the hooks."""
    from interptest.errors import InterpError
    from interptest.patching.edges import EdgePatcher
    from interptest.patching.paths import CircuitPatcher

    model = folded()
    clean, corrupt = model.to_tokens(PROMPT), model.to_tokens(CORRUPT)
    patcher = CircuitPatcher(model, clean, corrupt, [1], [2])
    with pytest.raises(InterpError, match=r"this model has no ln_final.hook_in, blocks.0.ln1.hook_in, "):
        EdgePatcher(patcher)


def test_an_edge_claim_on_a_hooked_transformer_is_a_collection_error():
    from interptest.binding import bind_behavior
    from interptest.errors import SpecError
    from interptest.spec import parse_behavior

    spec = dict(_behavior(), claims=["circuit edges[a0.h2->a1.h0<k>, a1.h0->logits] faithful >= 0.5"])
    with pytest.raises(SpecError) as error:
        bind_behavior(parse_behavior(spec), folded(), "folded")
    assert "key 'claims[0]': claim 'circuit edges[a0.h2->a1.h0<k>, a1.h0->logits] faithful >= 0.5': edge circuits " in (
        str(error.value)
    )
    assert "this model has no ln_final.hook_in, blocks.0.ln1.hook_in" in str(error.value)
