"""On the shipped model: interptest's sweeps equal transformer_lens.patching's, over drawn prompts."""

import os

os.environ.setdefault("TQDM_DISABLE", "1")

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import interptest
from interptest.patching import Patcher

TL_FUNCTIONS = {
    "resid_pre": "get_act_patch_resid_pre",
    "resid_mid": "get_act_patch_resid_mid",
    "attn_out": "get_act_patch_attn_out",
    "mlp_out": "get_act_patch_mlp_out",
    "heads": "get_act_patch_attn_head_out_all_pos",
}


def lexicon(name):
    path = Path(interptest.__file__).parent / "lexicons" / f"{name}.txt"
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


NAMES, SURNAMES = lexicon("names"), lexicon("surnames")
COUNTRIES = lexicon("countries")


@pytest.fixture(scope="module")
def model():
    return interptest.load_model("interptest-tiny")


def pairs():
    induction = (
        st.tuples(st.sampled_from(NAMES), st.sampled_from(SURNAMES), st.sampled_from(SURNAMES))
        .filter(lambda t: len(set(t)) == 3)
        .map(lambda t: (f"Her name was {t[0]} {t[1]}. When {t[0]}", f"Her name was {t[0]} {t[2]}. When {t[0]}"))
    )
    ioi = (
        st.tuples(st.sampled_from(NAMES), st.sampled_from(NAMES))
        .filter(lambda t: t[0] != t[1])
        .map(
            lambda t: (
                f"When {t[0]} and {t[1]} went to the store, {t[1]} gave a drink to",
                f"When {t[0]} and {t[1]} went to the store, {t[0]} gave a drink to",
            )
        )
    )
    facts = (
        st.tuples(st.sampled_from(COUNTRIES), st.sampled_from(COUNTRIES))
        .filter(lambda t: t[0] != t[1])
        .map(lambda t: (f"The capital of {t[0]} is", f"The capital of {t[1]} is"))
    )
    return st.one_of(induction, ioi, facts)


def reference(model, patcher, component, direction):
    from transformer_lens import patching

    e, f, mc, mx = patcher.expect_id, patcher.foil_id, patcher.clean_metric, patcher.corrupt_metric
    with torch.inference_mode():
        if direction == "denoise":
            _, cache = model.run_with_cache(patcher.clean_tokens)
            tokens = patcher.corrupt_tokens

            def metric(logits):
                return (logits[0, -1, e] - logits[0, -1, f] - mx) / (mc - mx)
        else:
            _, cache = model.run_with_cache(patcher.corrupt_tokens)
            tokens = patcher.clean_tokens

            def metric(logits):
                return (mc - (logits[0, -1, e] - logits[0, -1, f])) / (mc - mx)

        return getattr(patching, TL_FUNCTIONS[component])(model, tokens, cache, metric).float()


@settings(max_examples=6)
@given(pair=pairs(), direction=st.sampled_from(["denoise", "noise"]))
def test_every_component_equals_transformer_lens(model, pair, direction):
    clean, corrupt = pair
    with torch.inference_mode():
        clean_ids, corrupt_ids = model.to_tokens(clean), model.to_tokens(corrupt)
        expect = int(model(clean_ids)[0, -1].argmax())
        foil = int(model(corrupt_ids)[0, -1].argmax())
    patcher = Patcher(model, clean_ids, corrupt_ids, expect, foil)
    assert patcher.engine == "fast", patcher.engine_note
    assert abs(patcher.clean_metric - patcher.corrupt_metric) > 1.0  # a real behavior, well conditioned
    for component in TL_FUNCTIONS:
        ours = patcher.sweep(component, direction).values
        theirs = reference(model, patcher, component, direction)
        assert ours.shape == theirs.shape
        assert float((ours - theirs).abs().max()) <= 1e-5, (component, direction, pair)


def induction_pairs():
    return (
        st.tuples(st.sampled_from(NAMES), st.sampled_from(SURNAMES), st.sampled_from(SURNAMES))
        .filter(lambda t: len(set(t)) == 3)
        .map(lambda t: (f"Her name was {t[0]} {t[1]}. When {t[0]}", f"Her name was {t[0]} {t[2]}. When {t[0]}"))
    )


@settings(max_examples=3)
@given(family=st.lists(induction_pairs(), min_size=3, max_size=3), direction=st.sampled_from(["denoise", "noise"]))
def test_batched_fast_engine_equals_transformer_lens(model, family, direction):
    """Three samples stacked in the fast engine's forwards: every component, and a joint patch of heads,
    per sample equal to transformer_lens.patching (and its patch setters) on that sample alone."""
    from transformer_lens import patching

    from interptest.patching import BatchPatcher

    with torch.inference_mode():
        clean = [model.to_tokens(c) for c, _ in family]
        corrupt = [model.to_tokens(x) for _, x in family]
    if len({t.shape[1] for t in clean + corrupt}) != 1:
        return  # a name of several tokens: not one family
    clean, corrupt = torch.cat(clean), torch.cat(corrupt)
    with torch.inference_mode():
        expect = model(clean)[:, -1].argmax(-1).tolist()
        foil = model(corrupt)[:, -1].argmax(-1).tolist()
    bp = BatchPatcher(model, clean, corrupt, expect, foil)
    assert bp.engine == "fast", bp.engine_note
    base, src = (corrupt, clean) if direction == "denoise" else (clean, corrupt)
    joint_cells = [(0, 1, None), (1, 0, None), (1, 2, -1)]
    joint = bp.joint("heads", joint_cells, direction)
    for s in range(3):
        e, f = expect[s], foil[s]
        mc, mx = float(bp.clean_metrics[s]), float(bp.corrupt_metrics[s])
        assert abs(mc - mx) > 1.0

        # metric and heads_hook read this iteration's e, f, mc, mx and cache: both are only called
        # within it (B023 warns about closures that outlive the loop)
        def metric(logits):
            m = logits[0, -1, e] - logits[0, -1, f]  # noqa: B023
            return (m - mx) / (mc - mx) if direction == "denoise" else (mc - m) / (mc - mx)  # noqa: B023

        with torch.inference_mode():
            _, cache = model.run_with_cache(src[s : s + 1])
            for component in TL_FUNCTIONS:
                theirs = getattr(patching, TL_FUNCTIONS[component])(model, base[s : s + 1], cache, metric).float()
                ours = bp.sweep(component, direction)[s]
                assert float((ours - theirs).abs().max()) <= 1e-5, (component, direction, family[s])

            def heads_hook(act, hook=None):
                layer = int(hook.name.split(".")[1])
                for l, h, p in joint_cells:
                    if l == layer and p is None:
                        patching.layer_head_vector_patch_setter(act, (l, h), cache[hook.name])  # noqa: B023
                    elif l == layer:
                        patching.layer_pos_head_vector_patch_setter(act, (l, p, h), cache[hook.name])  # noqa: B023
                return act

            logits = model.run_with_hooks(
                base[s : s + 1], fwd_hooks=[(f"blocks.{l}.attn.hook_z", heads_hook) for l in (0, 1)]
            )
        assert abs(float(joint[s]) - float(metric(logits))) <= 1e-5
