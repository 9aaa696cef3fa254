"""``gpt2`` from the Hugging Face cache, offline: GPT-2 small's real config and tokenizer, random weights.

``tests/gpt2cache.py`` builds, once per test process, a cache laid out as ``hf download gpt2`` leaves it
(``hub/models--gpt2/{refs/main, blobs/, snapshots/<rev>/}``) whose only difference from the real one is
the weights. Every test here goes through interptest's real hub-name path (``load_model("gpt2")`` ->
``_ensure_hub_model`` -> ``TransformerBridge.boot_transformers("gpt2")``) with ``HF_HUB_OFFLINE=1`` and
every socket connection refused. The weights are random, so nothing here asserts what GPT-2 predicts:
only tokenization, positions, loading, and patching invariants that hold for any weights.
"""

from __future__ import annotations

import json
import os
import time

import pytest

import gpt2cache

IOI_CLEAN = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture(scope="module")
def offline():
    """The random-gpt2 cache as the Hugging Face cache, hub offline, sockets refused (for this module)."""
    with pytest.MonkeyPatch.context() as mp:
        yield gpt2cache.offline_gpt2(mp)


@pytest.fixture(scope="module")
def gpt2(offline):
    from interptest import load_model

    return load_model("gpt2", device="cpu")


def test_vendored_tokenizer_files_are_gpt2s():
    data = gpt2cache.DATA
    assert gpt2cache.sha256((data / "encoder.json").read_bytes()) == gpt2cache.HUB_SHA256["vocab.json"]
    assert gpt2cache.sha256((data / "vocab.bpe").read_bytes()) == gpt2cache.HUB_SHA256["merges.txt"]
    assert "MIT License" in (data / "LICENSE").read_text()
    assert "OpenAI" in (data / "LICENSE.gpt-2").read_text()
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    assert len(vocab) == gpt2cache.D_VOCAB and vocab["<|endoftext|>"] == gpt2cache.BOS


def test_cache_has_the_hub_layout(offline):
    from huggingface_hub import try_to_load_from_cache

    repo = offline / "hub" / gpt2cache.REPO
    assert (repo / "refs" / "main").read_text() == gpt2cache.REVISION
    snapshot = repo / "snapshots" / gpt2cache.REVISION
    names = sorted(p.name for p in snapshot.iterdir())
    assert names == [
        "config.json",
        "generation_config.json",
        "merges.txt",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    for name in names:
        link = snapshot / name
        assert link.is_symlink() and link.resolve().parent == (repo / "blobs").resolve(), name
        if name != "model.safetensors":
            assert link.resolve().name == gpt2cache.sha256(link.read_bytes()), name
    for name, digest in gpt2cache.HUB_SHA256.items():  # byte-identical to the hub's files
        assert gpt2cache.sha256((snapshot / name).read_bytes()) == digest, name
    # what interptest's _ensure_hub_model asks the hub library: found in the cache, offline
    assert try_to_load_from_cache("gpt2", "config.json") == str(snapshot / "config.json")
    assert try_to_load_from_cache("gpt2", "model.safetensors") == str(snapshot / "model.safetensors")
    assert os.path.getsize(snapshot / "model.safetensors") > 450e6  # fp32, ~124M parameters


def test_gpt2_loads_by_hub_name_as_gpt2_small(gpt2):
    from interptest.tl_compat import bridge_class

    TransformerBridge = bridge_class()

    from interptest.model import model_context_length

    assert isinstance(gpt2, TransformerBridge) and not gpt2.training
    cfg = gpt2.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_vocab) == (12, 768, 12, 50257)
    assert model_context_length(gpt2) == 1024
    assert gpt2.tokenizer.name_or_path == "gpt2"  # loaded by name from the cache, not from a directory
    assert gpt2.tokenizer.bos_token_id == gpt2cache.BOS and len(gpt2.tokenizer) == 50257


def test_bridge_runs_the_cached_weights(gpt2, offline):
    """Logits equal Hugging Face's own GPT2LMHeadModel loaded from the same cache: raw weights, no folding."""
    import torch
    import transformers as tf

    hf = tf.GPT2LMHeadModel.from_pretrained("gpt2").eval()
    ids = gpt2.to_tokens(IOI_CLEAN)
    with torch.inference_mode():
        ours, theirs = gpt2(ids), hf(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0)


def test_tokenization_is_gpt2s(gpt2):
    # GPT-2's ids, as the real gpt2 gives them, BOS (<|endoftext|>) prepended exactly once
    assert gpt2.to_tokens("Her name was Alex Hart. When Alex")[0].tolist() == [
        50256,
        9360,
        1438,
        373,
        4422,
        11345,
        13,
        1649,
        4422,
    ]
    assert gpt2.to_str_tokens(IOI_CLEAN) == gpt2cache.IOI_TOKENS
    ids = gpt2.to_tokens(IOI_CLEAN)[0]
    assert int((ids == gpt2cache.BOS).sum()) == 1
    assert gpt2.tokenizer.decode(ids[1:]) == IOI_CLEAN
    assert len(gpt2.to_tokens(IOI_CORRUPT)[0]) == len(ids)


def test_alias_and_uncached_names(offline):
    """gpt2-small resolves to the cached gpt2; a name that is not cached fails at once, offline."""
    from interptest import ModelNotAvailable, load_model

    alias = load_model("gpt2-small", device="cpu")
    assert alias.tokenizer.name_or_path == "gpt2" and alias.cfg.n_layers == 12
    del alias
    t0 = time.perf_counter()
    with pytest.raises(
        ModelNotAvailable,
        match=r"'gpt2-medium' is not in the local Hugging Face cache and "
        r"HF_HUB_OFFLINE is set",
    ):
        load_model("gpt2-medium", device="cpu")
    assert time.perf_counter() - t0 < 5


def test_patching_positions_follow_gpt2_tokens(gpt2):
    """The corruption changes one token (' John'#2 -> ' Mary', position 10): at layer 0 only that
    position's residual differs, so patching it recovers exactly 1 and every other position 0."""
    from interptest import patch_sweep

    pm = patch_sweep(gpt2, IOI_CLEAN, IOI_CORRUPT, component="resid_pre", expect=" Mary", foil=" John")
    assert list(pm.tokens) == gpt2cache.IOI_TOKENS
    assert tuple(pm.values.shape) == (12, 15)
    row = pm.values[0].tolist()
    assert row[10] == pytest.approx(1.0, abs=1e-4)
    assert max(abs(v) for i, v in enumerate(row) if i != 10) < 1e-4


def test_published_ioi_binds_and_runs_on_gpt2_tokens(gpt2):
    """behaviors/gpt2/published.yaml's first behavior: ' John'#2 is position 10, the patch there at layer 0
    recovers 1, and resid_post at the last position recovers 1 -- whatever the weights."""
    from pathlib import Path

    import yaml

    from interptest import check_behavior

    shipped = yaml.safe_load((Path(__file__).parents[2] / "behaviors" / "gpt2" / "published.yaml").read_text())
    assert shipped["model"] == "gpt2"
    ioi = next(b for b in shipped["behaviors"] if b["name"] == "ioi-name-movers")
    result = check_behavior(ioi, gpt2, raise_on_failure=False)
    assert result.tokens == gpt2cache.IOI_TOKENS and result.expect == " Mary" and result.foil == " John"
    assert abs(result.clean_metric - result.corrupt_metric) >= 1.0  # min_effect: the claims are judged
    by_text = {check.text: check for check in result.checks}
    assert by_text["resid_pre[0, ' John'#2] recovers >= 0.99"].value == pytest.approx(1.0, abs=1e-4)
    assert by_text["resid_post[-1, -1] recovers >= 0.99"].value == pytest.approx(1.0, abs=1e-4)
    assert by_text["heads[9.6, 9.9, 10.0] together recovers >= 0.3"].value is not None


def test_family_with_shipped_lexicons_on_gpt2_tokens(gpt2):
    """A prompt family over @surnames (every entry one GPT-2 token): samples bind, {last} resolves to
    position 5 of GPT-2's tokens in each sample, and the batched engine's invariants hold."""
    from interptest import check_behavior

    family = {
        "name": "induction-any-surname",
        "template": "Her name was {first} {last}. When {first}",
        "expect": " {last}",
        "corrupt": {"resample": ["last"]},
        "vars": {"first": ["Alex", "Mary", "John", "Iris"], "last": "@surnames"},
        "samples": 4,
        "min_effect": 0.01,
        "claims": [
            "resid_pre[0, {last}] together recovers >= 0.99",  # the only token that differs
            "resid_pre[0, 0:5] together recovers <= 0.01",  # before it: identical residuals
            "resid_pre[0, 6:] together recovers <= 0.01",  # after it, at layer 0: identical too
            "resid_post[-1, -1] together recovers >= 0.99",  # the last residual decides the logits
        ],
    }
    result = check_behavior(family, gpt2, raise_on_failure=False)
    assert result.samples == 4
    assert len(result.tokens) == 9 and result.tokens[:4] == ["<|endoftext|>", "Her", " name", " was"]
    assert result.tokens[4] == result.tokens[8] and result.tokens[6:8] == [".", " When"]
    claims = [check for check in result.checks if check.claim is not None]
    assert [check.passed for check in claims] == [True] * 4, [(c.text, c.value, c.detail) for c in claims]
