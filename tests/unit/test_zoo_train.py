"""The training script on a tiny config: tokenizer guarantees, loss goes down, bit-identical reruns,
the output loads with load_model."""

from __future__ import annotations

import pytest

from interptest.zoo import corpus, train

TINY = [
    "--steps",
    "30",
    "--layers",
    "1",
    "--d-model",
    "32",
    "--heads",
    "2",
    "--d-mlp",
    "64",
    "--batch",
    "8",
    "--ctx",
    "32",
    "--n-positions",
    "128",
    "--threads",
    "1",
    "--warmup",
    "3",
    "--lr",
    "1e-2",
    "--tokenizer-docs",
    "1500",
    "--log-every",
    "0",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "a"
    info = train.train(train.parse_args(["--out", str(out), *TINY]))
    return out, info


def test_loss_goes_down(tiny_run):
    _, info = tiny_run
    losses = info["losses"]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < losses[0] - 0.5, losses


def test_bit_identical_rerun(tiny_run, tmp_path):
    out, _ = tiny_run
    again = tmp_path / "b"
    train.train(train.parse_args(["--out", str(again), *TINY]))
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (out / name).read_bytes() == (again / name).read_bytes(), name


def test_output_files(tiny_run):
    import json

    out, _ = tiny_run
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2LMHeadModel"] and cfg["attn_implementation"] == "eager"
    assert cfg["n_positions"] == 128
    # a tokenizer class both transformers 4.56+ and 5.x load (5.x would write TokenizersBackend)
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_tokenizer_properties(tiny_run):
    from transformers import PreTrainedTokenizerFast

    out, _ = tiny_run
    tok = PreTrainedTokenizerFast.from_pretrained(str(out))
    assert tok.unk_token is None
    bos = tok.bos_token_id
    ids = tok("Her name was Alex Hart.")["input_ids"]
    assert ids[0] == bos and ids.count(bos) == 1
    for word in corpus.all_lexicon_words():
        assert len(tok(" " + word, add_special_tokens=False)["input_ids"]) == 1, word
    weird = "zqx 123 \u00e9\u00e8 \u65e5\u672c \U0001f600\t!"
    assert tok.decode(tok(weird, add_special_tokens=False)["input_ids"]) == weird


def test_output_loads_with_load_model(tiny_run):
    from interptest.model import load_model, model_context_length

    out, _ = tiny_run
    model = load_model(str(out), device="cpu")
    assert not model.training
    toks = model.to_tokens("When Mary and John went to the store")
    assert int(toks[0, 0]) == model.tokenizer.bos_token_id
    assert int((toks == model.tokenizer.bos_token_id).sum()) == 1
    assert model_context_length(model) == 128


def test_held_out_sets_are_disjoint_from_training():
    g = corpus.Generator(123)
    for _ in range(300):
        used: set[str] = set()
        a, b = g._person(used)
        assert not corpus.induction_pair_held_out(a, b)
    assert corpus.induction_pair_held_out("Alex", "Hart")
    assert corpus.ioi_pair_held_out("John", "Mary")
    s = " ".join(g.ioi(set()) for _ in range(300))
    assert "When Mary and John" not in s and "When John and Mary" not in s


def test_tokenizer_fails_loudly_when_lexicon_not_single(monkeypatch):
    with pytest.raises(SystemExit, match="not a single token"):
        train.build_tokenizer(300, 0, 50)


def test_ioi_corpus_never_trains_a_held_out_template_or_name():
    """interptest-ioi's held-out accuracy means something only if training never shows the held-out IOI."""
    import re

    from interptest.zoo import ioi_corpus

    assert ioi_corpus.HELD_OUT_TEMPLATES and ioi_corpus.TRAIN_TEMPLATES
    held_names = set(ioi_corpus.held_out_ioi_names())
    assert 20 <= len(held_names) <= 60 and "Mary" not in held_names and "John" not in held_names

    def frame(text: str) -> str:  # a sentence with its names, places and objects abstracted
        for word in sorted(set(corpus.person_pool()) | set(corpus.lexicon("places")) | set(corpus.lexicon("objects"))):
            text = re.sub(rf"\b{re.escape(word)}\b", "X", text)
        return text

    held_frames = {
        frame(ioi_corpus.IOI_TEMPLATES[t].format(A="X", B="X", S="X", P="X", O="X"))
        for t in ioi_corpus.HELD_OUT_TEMPLATES
    }
    g = ioi_corpus.IOIGenerator(7)
    seen_names: set[str] = set()
    for _ in range(400):
        sentence = g.ioi(set())
        assert not any(frame(sentence).startswith(h) for h in held_frames), sentence
        seen_names.update(w for w in re.findall(r"[A-Z][a-z]+", sentence) if w in corpus.person_pool())
        assert "Mary" not in sentence or "John" not in sentence, sentence
    assert not seen_names & held_names
    # held-out names are still trained in other sentences (their embeddings are not left at initialisation)
    docs = " ".join(g.document(6) for _ in range(400))
    assert len({n for n in held_names if re.search(rf"\b{n}\b", docs)}) >= len(held_names) - 2


def test_ioi_preset_sets_the_shipped_arguments_and_explicit_ones_win():
    args = train.parse_args(["--out", "x", "--preset", "interptest-ioi"])
    assert (args.corpus, args.layers, args.heads) == ("ioi", 4, 8)
    args = train.parse_args(["--out", "x", "--preset", "interptest-ioi", "--heads", "4"])
    assert (args.corpus, args.heads) == ("ioi", 4)
    assert train.parse_args(["--out", "x"]).corpus == "tiny"
