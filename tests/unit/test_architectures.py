"""The architecture matrix: random-weight two-layer models of every decoder family the bridge loads
(:mod:`archmodels`: every norm weight and bias randomized, so Gemma's ``1 + w`` and the post-attention
norms matter), each running every claim kind, with the invariants that hold on every architecture:

* the direct decomposition is complete: its parts sum to the clean logit difference (to the pre-cap
  one, ``cap · atanh(logit / cap)``, where the architecture soft-caps its logits);
* a layer's heads and its attention bias sum to its ``attn_out``; with no biases, the heads alone;
* the lens of the last residual is the model's own prediction (soft cap included);
* patching equals ``transformer_lens.patching``, and the fast engine runs where it covers the family;
* path patching and circuit faithfulness equal the one-forward-at-a-time reference of
  ``test_claims_path`` (reused, not copied);
* parallel blocks (GPT-NeoX, GPT-J, Falcon) refuse ``resid_mid`` and same-layer head → MLP paths.
"""

from __future__ import annotations

import functools
import math
import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import pytest  # noqa: E402
import torch  # noqa: E402
from test_claims_path import (  # noqa: E402  (the one-forward-at-a-time reference)
    as_ref_senders,
    cache,
    inputs,
    metric,
    node_names,
    ref_ablated,
    ref_path,
    source_values,
)

import archmodels  # noqa: E402
from interptest.api import check_behavior  # noqa: E402
from interptest.binding import bind_behavior  # noqa: E402
from interptest.claims.direct import direct_effects  # noqa: E402
from interptest.errors import SpecError  # noqa: E402
from interptest.patching import Patcher  # noqa: E402
from interptest.patching.paths import CircuitPatcher, normalize  # noqa: E402
from interptest.running import Run  # noqa: E402
from interptest.spec import parse_behavior  # noqa: E402
from interptest.tl_compat import tl_version_tuple  # noqa: E402

ARCHS = archmodels.ARCHITECTURES
# no attention, value or norm biases anywhere before the residual add: the heads alone sum to attn_out
BIAS_FREE = {"llama", "mistral", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "olmo", "olmo2"}
PARALLEL = {"neox", "gptj", "falcon"}
PARALLEL_NAMES = {"neox": "GPTNeoXForCausalLM", "gptj": "GPTJForCausalLM", "falcon": "FalconForCausalLM"}
# the families the fast patching engine covers (interptest.patching.fast); the others take the generic one
FAST = {"gpt2", "neox", "llama", "llama-bias", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3"}
CLEAN, CORRUPT = "When dog dog dog the the the", "When dog dog sat the the the"
REFERENCE = ["When Bob sat on the the the", "When the dog sat on Bob to"]
TL_FN = {
    "resid_pre": "get_act_patch_resid_pre",
    "resid_mid": "get_act_patch_resid_mid",
    "attn_out": "get_act_patch_attn_out",
    "mlp_out": "get_act_patch_mlp_out",
    "heads": "get_act_patch_attn_head_out_all_pos",
}


# What TransformerLens 3.x's bridge (3.2.1, with transformers 4.57) gets wrong on these families, measured:
# the test that would fail for the bridge's reason, not interptest's, is skipped with it (on 4.x all run).
_OLMO2 = (
    "TransformerLens 3.x maps OLMo 2's post-attention/post-MLP norms to ln1/ln2 and hooks attn_out before its "
    "norm: resid_post - (resid_pre + attn_out + mlp_out) is 21.3 on layer 0, so direct() refuses"
)
TL3_GAPS = {
    ("stablelm", "*"): "TransformerLens 3.x's StableLM bridge fails in the forward with transformers 4.57 "
    "(TypeError: '>' not supported between instances of 'Dropout' and 'float')",
    ("bloom", "direct"): "TransformerLens 3.x hooks Bloom's attn_out/mlp_out after Bloom's in-module residual "
    "add: resid_post - (resid_pre + attn_out + mlp_out) is 12.4 on layer 0, so direct() refuses",
    ("olmo2", "direct"): _OLMO2,
    ("olmo2", "path"): _OLMO2,
    ("opt", "direct"): "TransformerLens 3.x's OPT bridge exposes no hook_mlp_out (direct() is refused at binding)",
    ("opt", "path"): "TransformerLens 3.x's OPT bridge exposes no hook_mlp_out (an MLP node)",
    ("opt", "patching"): "TransformerLens 3.x's OPT hook_resid_mid is not the residual between attention and "
    "MLP (patching it with transformer_lens.patching and with interptest's hooks disagree by 2.6)",
}


def model_for(name: str, uses: str = ""):
    why = archmodels.missing(name)
    if why:
        pytest.skip(why)
    if tl_version_tuple() < (4,):
        gap = TL3_GAPS.get((name, "*")) or TL3_GAPS.get((name, uses))
        if gap:
            pytest.skip(gap)
    return archmodels.model(name)


# answers the tiny tokenizer produces as single tokens (a random model's top-1 is often a raw byte)
WORDS = [" the", " dog", " sat", " on", " and", " to", " Bob", " in", " is"]


@functools.cache
def behavior(name: str) -> dict:
    """expect: the clean prompt's most likely word; foil: the word the corruption moves most against it."""
    model = archmodels.model(name)
    ids = torch.tensor([model.to_single_token(w) for w in WORDS])
    with torch.inference_mode():
        clean, corrupt = (model(model.to_tokens(p))[0, -1, ids] for p in (CLEAN, CORRUPT))
    e = int(clean.argmax())
    gain = (corrupt - corrupt[e]) - (clean - clean[e])
    gain[e] = -math.inf
    f = int(gain.argmax())
    return {
        "name": name,
        "prompt": CLEAN,
        "corrupt": CORRUPT,
        "expect": WORDS[e],
        "foil": WORDS[f],
        "min_effect": 0.0,
        "reference": REFERENCE,
    }


def soft_cap(model) -> float | None:
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    return float(cap) if cap is not None and float(cap) > 0 else None


@pytest.mark.parametrize("arch", ARCHS)
def test_every_claim_kind_runs(arch):
    model = model_for(arch, "direct")
    # Loose bounds that can still fail (issue 20 refuses claims that cannot be false): every kind must run and
    # measure a finite value here; the verdicts are not the point.
    claims = [
        "logit_diff >= -1000",
        "heads[0.1, 1.2] together breaks >= -100",
        "resid_pre[1, -1] recovers >= -100",
        "attn[1.2] from -1 to 0 <= 0.999",
        "previous_token_score(heads[0.0]) <= 0.999",
        "direct(heads[0.1]) >= -1000",
        "direct(attn_out[0:2]) together >= -1000 of logit_diff",
        "direct(mlp_out[elsewhere]) <= 1000",
        "direct(mlp_out[0]) <= 1000",
        "lens(resid_pre[1], -1) rank(' the') <= 1000000",
        "path heads[0.1] + mlp_out[0] -> heads[1.0].k + mlp_in[1] recovers >= -100",
        "circuit heads[0.1, 1.2] + mlp_out[0] faithful >= -100 ablate mean",
    ]
    if arch not in PARALLEL:  # a head feeds its own layer's MLP on sequential blocks only
        claims.append("path heads[1.1] -> mlp_in[1] breaks >= -100 ablate zero")
    result = check_behavior({**behavior(arch), "claims": claims}, model, raise_on_failure=False)
    ran = result.checks[1:]  # after the implicit top-1 check
    assert [c.text for c in ran] == claims
    bad = [(c.text, c.value, c.detail) for c in ran if not c.passed or c.value is None or not math.isfinite(c.value)]
    assert not bad, bad


@pytest.mark.parametrize("arch", ARCHS)
def test_direct_decomposition_is_complete_and_heads_sum_to_attn_out(arch):
    model = model_for(arch, "direct")
    with torch.inference_mode():
        run = Run(bind_behavior(parse_behavior({**behavior(arch), "claims": []}), model))
        effects = direct_effects(run)
    total = (
        effects["heads"].sum((1, 2))
        + effects["attn_bias"].sum(1)
        + effects["mlp_out"].sum(1)
        + effects["embed"]
        + effects["bias"]
    )
    m_clean = run.clean_metrics.double()
    cap = soft_cap(model)
    if cap is None:
        want = m_clean
    else:  # the logit difference before the cap, from the model's own (capped) logits
        e, f = run.expect_first, run.foil_ids
        pre = cap * torch.atanh(run.clean_logits.double() / cap)
        want = pre[0, e] - pre[0, f]
        assert float((want - m_clean).abs().max()) > 1e-3  # the cap matters on this model
    tol = 1e-4 * (1 + float(want.abs().max()))
    assert float((total - want).abs().max()) <= tol, (total, want)
    assert float((effects["m"] - want).abs().max()) <= tol
    heads = effects["heads"].sum(2)
    assert float((heads + effects["attn_bias"] - effects["attn_out"]).abs().max()) <= 1e-5
    if arch in BIAS_FREE:
        assert float((heads - effects["attn_out"]).abs().max()) <= 1e-5
        assert float(effects["attn_bias"].abs().max()) == 0.0
    # through the pipeline, 'of logit_diff' is a fraction of what the parts sum to
    every = ", ".join(f"{layer}.{head}" for layer in range(heads.shape[1]) for head in range(model.cfg.n_heads))
    claims = [f"direct(heads[{every}]) together >= -1000 of logit_diff", "direct(attn_out[0:2]) together >= -1000"]
    got = check_behavior({**behavior(arch), "claims": claims}, model, raise_on_failure=False).checks[1:]
    assert got[0].value == pytest.approx(float(heads.sum() / want[0]), abs=1e-5)
    assert got[1].value == pytest.approx(float(effects["attn_out"].sum()), abs=1e-5)
    assert ("pre-cap" in got[1].detail) == (cap is not None)


@pytest.mark.parametrize("arch", ARCHS)
def test_lens_of_the_last_residual_is_the_models_prediction(arch):
    model = model_for(arch)
    spec = behavior(arch)
    last = model.cfg.n_layers - 1
    claims = [
        f"lens(resid_post[{last}], -1) logit_diff >= -1000",
        f"lens(resid_post[{last}], -1) prob({spec['expect']!r}) <= 0.999",
    ]
    result = check_behavior({**spec, "claims": claims}, model, raise_on_failure=False)
    with torch.inference_mode():
        logits = model(model.to_tokens(CLEAN))[0, -1].double()
    e, f = (model.to_single_token(spec[k]) for k in ("expect", "foil"))
    assert result.checks[1].value == pytest.approx(float(logits[e] - logits[f]), abs=1e-4)
    assert result.checks[2].value == pytest.approx(float(torch.softmax(logits, -1)[e]), abs=1e-6)


@pytest.mark.parametrize("arch", ARCHS)
def test_patching_equals_transformer_lens(arch):
    from transformer_lens import patching as tlp

    model = model_for(arch, "patching")
    spec = behavior(arch)
    clean, corrupt = model.to_tokens(CLEAN), model.to_tokens(CORRUPT)
    e, f = (model.to_single_token(spec[k]) for k in ("expect", "foil"))
    patcher = Patcher(model, clean, corrupt, e, f)
    assert patcher.engine == ("fast" if arch in FAST else "generic"), patcher.engine_note
    mc, mx = patcher.clean_metric, patcher.corrupt_metric
    tol = 1e-5 * max(1.0, 0.5 / abs(mc - mx))
    with torch.inference_mode():
        _, clean_cache = model.run_with_cache(clean)
    worst = 0.0
    for component, fn in TL_FN.items():
        if component != "heads" and f"blocks.0.hook_{component}" not in model.hook_dict:
            assert arch in PARALLEL and component == "resid_mid"
            continue
        with torch.inference_mode():
            want = getattr(tlp, fn)(
                model, corrupt, clean_cache, lambda lg: (lg[0, -1, e] - lg[0, -1, f] - mx) / (mc - mx)
            ).float()
        got = patcher.sweep(component).values
        worst = max(worst, float((got - want).abs().max()))
        assert float((got - want).abs().max()) <= tol, component
    print(f"{arch}: patching ({patcher.engine}) max |Δ| vs transformer_lens.patching = {worst:.1e}")


@pytest.mark.parametrize("arch", ARCHS)
def test_path_and_circuit_values_equal_the_one_forward_reference(arch):
    model = model_for(arch, "path")
    clean, corrupt, expect, foil, reference = inputs(model, S=1, n=7)
    engine = CircuitPatcher(model, clean, corrupt, expect, foil, reference_ids=reference)
    senders = [[("heads", (0, 1, None))], [("heads", (0, 0, None)), ("mlp_out", (0, None))]]
    receivers = [[("k", 1, 1, None)], [("v", 1, 3, None)], [("mlp_in", 1, None)], [("logits", None)]]
    if arch not in PARALLEL:
        senders.append([("heads", (1, 2, None))])  # a head feeding its own layer's MLP
        receivers = receivers[2:]
    e, f = int(expect[0]), int(foil[0])
    mc, mx = metric(model, clean, e, f), metric(model, corrupt, e, f)
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    names = node_names(model)
    raw = engine.path(senders, receivers, "corrupt", "clean")
    values = normalize(raw, engine.metrics("clean"), engine.metrics("corrupt"), "denoise")
    src = source_values(model, "clean", 0, clean, corrupt, reference, names)
    base_z = cache(model, corrupt, z_names)
    worst = 0.0
    for i, sender in enumerate(senders):
        for j, receiver in enumerate(receivers):
            if receiver[0][0] == "mlp_in" and sender[0][1][0] == 1 and arch in PARALLEL:
                continue
            if sender[0][1][0] == 1 and receiver[0][0] in ("k", "v"):
                continue  # a path runs forward
            m = ref_path(model, corrupt, src, base_z, as_ref_senders(sender), receiver[0], e, f)
            delta = abs(float(values[0, i, j]) - (m - mx) / (mc - mx))
            worst = max(worst, delta)
            assert delta <= 1e-5, (sender, receiver)
    kept = [("heads", (0, 1, None)), ("heads", (1, 2, None)), ("mlp_out", (0, None))]
    values_mean = source_values(model, "mean", 0, clean, corrupt, reference, names)
    want = [ref_ablated(model, clean, values_mean, s, e, f, complement=True) for s in (kept, [])]
    got = engine.patch_sets([kept, []], "clean", "mean", complement=True)[0]
    delta = max(abs(float(g) - w) for g, w in zip(got, want))
    assert delta <= 1e-5 * (1 + max(map(abs, want)))  # float32 rounding of the logits
    print(f"{arch}: path max |Δ| = {worst:.1e}, faithfulness |Δ| = {delta:.1e}")


@pytest.mark.parametrize("arch", sorted(PARALLEL))
@pytest.mark.parametrize(
    "claim, message",
    [
        (
            "resid_mid[0, -1] recovers >= 0",
            "this model does not expose 'resid_mid' (available: resid_pre, resid_post, attn_out, mlp_out, heads); "
            "on {architecture}, parallel attention/MLP blocks have no residual stream between them",
        ),
        (
            "lens(resid_mid[0], -1) logit_diff >= 0",
            "this model does not expose 'resid_mid' (available: resid_pre, resid_post, attn_out, mlp_out, heads); "
            "on {architecture}, parallel attention/MLP blocks have no residual stream between them",
        ),
        (
            "path heads[1.1] -> mlp_in[1] recovers >= 0",
            "(on this model's parallel blocks, a layer's heads do not feed its MLP)",
        ),
    ],
)
def test_parallel_blocks_refuse_what_they_do_not_have(arch, claim, message):
    model = model_for(arch)
    with pytest.raises(SpecError) as info:
        bind_behavior(parse_behavior({**behavior(arch), "claims": [claim]}), model)
    assert message.format(architecture=PARALLEL_NAMES[arch]) in str(info.value)


def test_direct_is_refused_at_binding_where_the_bridge_lacks_a_hook_it_reads(monkeypatch):
    """TransformerLens 3.2.1's OPT bridge has no hook_mlp_out: direct() is a collection error naming the
    architecture and the version, not a KeyError at run time (simulated here by hiding the hook)."""
    from interptest.tl_compat import tl_version

    model = model_for("gpt2")
    hooks = type(model).hook_dict
    monkeypatch.setattr(
        type(model),
        "hook_dict",
        property(lambda self: {k: v for k, v in hooks.fget(self).items() if not k.endswith("hook_mlp_out")}),
    )
    with pytest.raises(SpecError) as info:
        bind_behavior(parse_behavior({**behavior("gpt2"), "claims": ["direct(heads[0.1]) >= 0"]}), model)
    assert (
        "claim 'direct(heads[0.1]) >= 0': direct() is not supported on GPT2LMHeadModel: its TransformerBridge "
        f"(TransformerLens {tl_version()}) exposes no blocks.0.hook_mlp_out, blocks.1.hook_mlp_out, which the "
        "direct decomposition reads"
    ) in str(info.value)


def test_an_architecture_the_bridge_does_not_support_names_itself_and_the_version(tmp_path):
    import transformers as tf

    from interptest.errors import ModelNotAvailable
    from interptest.model import load_model
    from interptest.tl_compat import tl_version

    cfg = tf.BioGptConfig(
        vocab_size=64, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    )
    tf.BioGptForCausalLM(cfg).save_pretrained(tmp_path, safe_serialization=True)
    with pytest.raises(ModelNotAvailable) as info:
        load_model(tmp_path, device="cpu")
    assert str(info.value) == (
        f"model {str(tmp_path)!r}: its architecture BioGptForCausalLM is not supported by TransformerBridge in the "
        f"installed TransformerLens {tl_version()}; interptest loads every model through the bridge"
    )


@pytest.mark.parametrize("arch", sorted(FAST))
def test_fast_engine_with_embedding_noise_equals_the_generic_engine(arch):
    """The corrupted run's noise is added where the bridge's hook_embed adds it (Gemma: after its scale)."""
    from interptest.patching import BatchPatcher

    model = model_for(arch)
    spec = behavior(arch)
    clean = model.to_tokens(CLEAN)
    e, f = (model.to_single_token(spec[k]) for k in ("expect", "foil"))
    noise = torch.zeros(1, clean.shape[1], model.cfg.d_model)
    noise[0, 1:3] = torch.randn(2, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    fast, generic = (
        BatchPatcher(model, clean, clean, [e], [f], embed_noise=noise, engine=engine) for engine in ("fast", "generic")
    )
    assert fast.engine == "fast" and generic.engine == "generic"
    for component in ("resid_pre", "heads"):
        got, want = fast.sweep_raw(component), generic.sweep_raw(component)
        assert float((got - want).abs().max()) <= 1e-5 * (1 + float(want.abs().max())), component


def test_the_fast_engine_declines_prompts_that_reach_a_sliding_window():
    model = model_for("mistral")
    ids = torch.randint(1, int(model.cfg.d_vocab), (1, 64), generator=torch.Generator().manual_seed(0))
    corrupt = ids.clone()
    corrupt[0, 5] = (ids[0, 5] + 1) % int(model.cfg.d_vocab)
    patcher = Patcher(model, ids, corrupt, 1, 2)
    assert patcher.engine == "generic"
    assert patcher.engine_note == "64 tokens reach MistralForCausalLM's sliding attention window (64 tokens)"


@pytest.mark.parametrize("arch, engine", [("gemma", "fast"), ("opt", "generic")])
def test_results_say_which_engine_ran_and_why_the_fast_one_declined(arch, engine, tmp_path):
    from interptest.report import write_report
    from interptest.results import behavior_record, claim_lines

    spec = {**behavior(arch), "claims": ["heads[0.1] breaks >= -100", "path heads[0.1] -> logits recovers >= -100"]}
    result = check_behavior(spec, model_for(arch, "path"), raise_on_failure=False)
    record = behavior_record(parse_behavior(spec), "test::b", arch, result=result)
    why = "" if engine == "fast" else "architecture OPTForCausalLM not covered by the fast engine"
    circuits = "fast" if engine == "fast" else f"hooks ({why})"
    assert record["engine"] == {"patching": engine, "why": why, "circuits": circuits}
    line = f"    engine   {engine}{f' ({why})' if why else ''}; path/circuit: {circuits}"
    assert claim_lines(record)[0] == line
    write_report([record], str(tmp_path), version="test")
    assert f"<dt>engine</dt><dd>{line.split('engine   ')[1]}</dd>" in (tmp_path / "report.html").read_text()
    unpatched = check_behavior(
        {**spec, "claims": ["direct(heads[0.1]) >= -1000"]}, model_for(arch, "path"), raise_on_failure=False
    )
    assert unpatched.engine is None
