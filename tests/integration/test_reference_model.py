"""The shipped reference model interptest-tiny: loading, tokenizer, and the behaviors it must have."""

from __future__ import annotations

import json

import pytest

from interptest.zoo import evaluate as E
from interptest.zoo import tiny_model_dir
from interptest.zoo.corpus import LEXICON_FILES, lexicon


@pytest.fixture(scope="module")
def tiny():
    from interptest.model import load_model

    return load_model("interptest-tiny", device="cpu")


def test_checkpoint_files():
    d = tiny_model_dir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "MODEL_CARD.md"):
        assert (d / name).is_file(), name
    assert not list(d.glob("*.bin"))
    total = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
    assert total <= 10 * 1024 * 1024, total
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2LMHeadModel"] and cfg["attn_implementation"] == "eager"
    assert cfg["n_positions"] >= 128


def test_tokenizer_loads_in_the_installed_transformers():
    """The shipped tokenizer_config names a class transformers 4.56+ and 5.x both have (5.x saves it as
    TokenizersBackend, which 4.x cannot load); AutoTokenizer, as TransformerLens calls it, loads it."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    d = tiny_model_dir()
    assert json.loads((d / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    tok = AutoTokenizer.from_pretrained(str(d))
    assert isinstance(tok, PreTrainedTokenizerFast)
    ids = tok("Her name was Alex Hart.")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_loads_as_bridge_in_eval_mode(tiny):
    from interptest.model import model_context_length
    from interptest.tl_compat import bridge_class

    assert isinstance(tiny, bridge_class()) and not tiny.training
    assert model_context_length(tiny) >= 128


def test_second_load_gives_an_equal_model(tiny):
    import torch

    from interptest.model import load_model

    again = load_model("interptest-tiny", device="cpu")
    assert not again.training
    theirs = dict(again.named_parameters())
    ours = dict(tiny.named_parameters())
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[name], ours[name]) for name in ours)


def test_exactly_one_bos(tiny):
    toks = tiny.to_tokens("Her name was Alex Hart. When Alex")
    bos = tiny.tokenizer.bos_token_id
    assert int(toks[0, 0]) == bos and int((toks == bos).sum()) == 1
    assert tiny.to_str_tokens("Her name was Alex Hart.")[1:] == ["Her", " name", " was", " Alex", " Hart", "."]


@pytest.mark.parametrize("lex", LEXICON_FILES)
def test_lexicon_entries_are_single_tokens(tiny, lex):
    for word in lexicon(lex):
        ids = tiny.to_tokens(" " + word, prepend_bos=False)[0]
        assert len(ids) == 1, (lex, word)


def test_long_prompts_are_accepted(tiny):
    import torch

    text = " ".join(["The capital of France is Paris."] * 25)
    toks = tiny.to_tokens(text)
    assert 128 <= toks.shape[1] <= tiny.cfg.n_ctx
    with torch.inference_mode():
        assert tiny(toks).shape[:2] == toks.shape


TASKS = {
    "induction": lambda: E.induction_prompts(100),
    "induction_two": lambda: E.induction_two_prompts(100),
    "ioi": lambda: E.ioi_prompts(100),
    "facts": lambda: E.fact_prompts(context=False),
    "facts_in_context": lambda: E.fact_prompts(context=True),
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_behavior_on_held_out_prompts(tiny, task):
    r = E.accuracy(tiny, TASKS[task]())
    assert r["top1_acc"] >= E.THRESHOLD_ACC and r["mean_prob"] >= E.THRESHOLD_PROB, r


@pytest.mark.parametrize("task", sorted(E.SHIPPED_PROMPTS))
def test_shipped_prompts(tiny, task):
    prompt, answer = E.SHIPPED_PROMPTS[task]
    r = E.accuracy(tiny, [(prompt, answer, prompt, answer)])
    assert r["top1_acc"] == 1.0 and r["mean_prob"] >= E.THRESHOLD_PROB, (prompt, r)


def test_alex_cole_corruption_flips_answer(tiny):
    r = E.accuracy(tiny, [("Her name was Alex Cole. When Alex", " Cole", "", "")])
    assert r["top1_acc"] == 1.0 and r["mean_prob"] >= E.THRESHOLD_PROB


def test_generic_induction_head(tiny):
    ih = E.induction_metrics(tiny)
    assert ih["best_score"] >= E.THRESHOLD_INDUCTION_SCORE, ih["scores"]
    assert ih["repeat_half_loss"] < E.THRESHOLD_REPEAT_LOSS, ih


def test_model_card_reports_numbers():
    text = (tiny_model_dir() / "MODEL_CARD.md").read_text()
    assert E.CARD_BEGIN in text and E.CARD_END in text
    for needle in (
        "get_act_patch_resid_pre",
        "induction_head",
        "python -m interptest.zoo.train",
        "python -m interptest.zoo.evaluate",
    ):
        assert needle in text, needle
