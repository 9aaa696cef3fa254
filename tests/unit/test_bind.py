"""Binding a spec to a model's tokenizer and architecture, on tiny random models built here."""

import functools
import tempfile

import pytest

import tinymodels
from interptest.api import check_behavior
from interptest.binding import bind_behavior
from interptest.errors import SpecError
from interptest.render import render_failure
from interptest.spec import parse_behavior


@functools.cache
def word_level_model():
    """A GPT-2 with a word-level tokenizer that has an unknown token, as some user models do."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["<bos>", "<unk>", "the", "cat", "dog", "sat", "on", "mat"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    directory = tempfile.mkdtemp(prefix="interptest-wordlevel-")
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>", eos_token="<bos>"
    ).save_pretrained(directory)
    return tinymodels.boot(tinymodels.build_model_dir("gpt2", tokenizer_dir=directory))


def bind(model, **keys):
    return bind_behavior(parse_behavior({"name": "b", **keys}), model)


def test_unknown_word_is_named():
    model = word_level_model()
    with pytest.raises(
        SpecError,
        match=r"<dict>: behavior 'b', key 'prompt': the model's tokenizer maps 'zebra' "
        r"to its unknown token",
    ):
        bind(model, prompt="the zebra sat", expect=" mat")
    with pytest.raises(SpecError, match=r"key 'expect': the model's tokenizer maps 'zebra' to its unknown token"):
        bind(model, prompt="the cat sat", expect=" zebra")


def test_component_the_architecture_lacks():
    model = tinymodels.tiny_model("neox")  # parallel attention: no resid_mid
    with pytest.raises(
        SpecError,
        match=r"claims\[0\]': claim 'resid_mid\[0, -1\] recovers >= 0.5': this model does "
        r"not expose 'resid_mid' \(available: resid_pre, resid_post, attn_out, "
        r"mlp_out, heads\)",
    ):
        bind(
            model,
            prompt="The dog sat",
            corrupt="The the sat",
            expect=" on",
            claims=["resid_mid[0, -1] recovers >= 0.5"],
        )


def test_expect_not_producible():
    model = word_level_model()  # splits on whitespace: no token carries a leading space
    with pytest.raises(
        SpecError,
        match=r"key 'expect': ' cat' cannot be produced by the model's tokenizer \(it "
        r"encodes to \['cat'\]\)",
    ):
        bind(model, prompt="the cat sat", expect=" cat")
    with pytest.raises(SpecError, match=r"key 'foil': ' mat' cannot be produced"):
        bind(model, prompt="the cat sat", expect="on", foil=" mat")


def test_prompt_longer_than_context():
    model = tinymodels.tiny_model("gpt2")  # n_ctx 128
    with pytest.raises(
        SpecError,
        match=r"key 'prompt': the prompt is 201 tokens long but the model's context "
        r"holds 128",
    ):
        bind(model, prompt=" sat" * 200, expect=" on")


def test_min_effect_makes_claims_unjudgeable_and_says_so():
    model = tinymodels.tiny_model("gpt2")
    result = check_behavior(
        {
            "name": "b",
            "prompt": "The dog sat on the",
            "corrupt": "The the sat on the",
            "expect": " the",
            "foil": " on",
            "min_effect": 1e6,
            "claims": ["resid_pre[0, 2] recovers >= 0.9"],
        },
        model,
        raise_on_failure=False,
    )
    claim = result.checks[-1]
    assert not claim.passed and claim.value is None
    assert claim.detail.startswith("the corruption barely changes the behavior (Δ = ")
    assert "min_effect 1e+06" in claim.detail
    assert "the corruption barely changes the behavior" in render_failure(result)
