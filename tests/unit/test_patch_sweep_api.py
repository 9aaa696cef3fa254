"""The public ``interptest.patch_sweep`` is as strict as a spec, with the spec's messages. Tiny random
models built here."""

import functools

import pytest
import torch
from test_bind import word_level_model

import interptest
import tinymodels
from interptest.errors import InterpError

PROMPT, CORRUPT = "The dog sat on the", "The Bob sat on the"


@functools.cache
def twin_token_model(gap: float):
    """A gpt2 whose ' Bob' embedding is ' dog''s plus ``gap``: the two prompts differ by that much."""
    model = tinymodels.boot(tinymodels.build_model_dir("gpt2"))
    dog, bob = (int(model.to_tokens(t, prepend_bos=False)[0, 0]) for t in (" dog", " Bob"))
    wte = model.original_model.transformer.wte.weight
    with torch.no_grad():
        wte[bob] = wte[dog] + gap
    return model


def test_the_sweep_exposes_both_metrics_delta_and_raw():
    model = tinymodels.tiny_model("gpt2")
    pm = interptest.patch_sweep(model, PROMPT, CORRUPT, "resid_pre", expect=" the", foil=" on")
    assert pm.values.shape == (3, 6) and pm.raw.shape == (3, 6)
    assert pm.clean_metric - pm.corrupt_metric == pytest.approx(
        getattr(pm, "delta", pm.clean_metric - pm.corrupt_metric)
    )
    normalized = (pm.raw.double() - pm.corrupt_metric) / (pm.clean_metric - pm.corrupt_metric)
    assert torch.allclose(pm.values.double(), normalized, atol=1e-5)


@pytest.mark.parametrize(
    "keys, message",
    [
        (dict(expect=" the dog"), "patch_sweep: expect: expect must be a single token; ' the dog' is 2 tokens"),
        (
            dict(expect=" the", foil=" on the"),
            "patch_sweep: foil: the foil must be a single token; ' on the' is 2 tokens",
        ),
        (dict(expect=" the", corrupt=PROMPT), "patch_sweep: corrupt: 'corrupt' is identical to 'prompt'"),
        (
            dict(expect=" the", corrupt="The dog sat on"),
            "patch_sweep: corrupt: the clean and corrupted prompts tokenize to different lengths (6 vs 5)",
        ),
        (dict(expect=" the", component="resid_mid"), None),
        (
            dict(expect=" the", component="resid_middle"),
            "unknown component 'resid_middle'; valid components: resid_pre, resid_mid",
        ),
    ],
)
def test_bad_input_is_an_interp_error_with_the_spec_message(keys, message):
    model = tinymodels.tiny_model("gpt2")
    args = dict(prompt=PROMPT, corrupt=CORRUPT, component="resid_pre", foil=None)
    args.update(keys)
    if message is None:
        interptest.patch_sweep(model, **args)  # a valid call among the invalid ones
        return
    with pytest.raises(InterpError) as info:
        interptest.patch_sweep(model, **args)
    assert message in str(info.value)


def test_unknown_words_are_named():
    with pytest.raises(
        InterpError, match="patch_sweep: prompt: the model's tokenizer maps 'zebra' to its unknown token"
    ):
        interptest.patch_sweep(word_level_model(), "the zebra sat", "the cat sat", "resid_pre", expect="on", foil="mat")


def test_a_zero_normalizer_is_an_error_and_a_tiny_one_a_warning():
    with pytest.raises(
        InterpError,
        match=r"the clean and corrupted runs give the same logit difference "
        r"\(m_clean − m_corrupt = 0.0\)",
    ):
        interptest.patch_sweep(twin_token_model(0.0), PROMPT, CORRUPT, "resid_pre", expect=" the", foil=" on")
    with pytest.warns(UserWarning, match=r"the corruption barely changes the behavior \(Δm = "):
        interptest.patch_sweep(twin_token_model(1e-4), PROMPT, CORRUPT, "resid_pre", expect=" the", foil=" on")
