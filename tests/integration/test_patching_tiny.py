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
