"""load_model's error paths, name resolution, threads/device/dtype helpers (no model is loaded here)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from interptest import model as M
from interptest.errors import ModelNotAvailable


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg, msg
    return msg


def test_missing_directory_is_one_line(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelNotAvailable) as ei:
        M.load_model(str(missing))
    msg = _one_line(ei.value)
    assert str(missing) in msg and "does not exist" in msg and "save_pretrained" in msg


def test_relative_missing_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotAvailable, match=r"'\./ckpt' does not exist"):
        M.load_model("./ckpt")


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotAvailable) as ei:
        M.load_model(str(tmp_path))
    msg = _one_line(ei.value)
    assert str(tmp_path) in msg and "has no weights" in msg and "model.safetensors" in msg


def test_bin_only_checkpoint_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelNotAvailable) as ei:
        M.load_model(tmp_path)  # PathLike accepted too
    msg = _one_line(ei.value)
    assert "pytorch_model.bin" in msg and "refuses pickle checkpoints" in msg
    assert "convert it to safetensors" in msg and str(tmp_path) in msg


def test_safetensors_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotAvailable, match="has no config.json"):
        M.load_model(str(tmp_path))


def test_path_that_is_a_file(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"")
    with pytest.raises(ModelNotAvailable, match="is not a directory"):
        M.load_model(str(f))


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache; hub unreachable."""
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(M, "_hub_reachable", lambda timeout=2.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


def test_unknown_name_offline_fails_fast(empty_hf_cache):
    with pytest.raises(ModelNotAvailable) as ei:
        M.load_model("EleutherAI/pythia-70m")
    msg = _one_line(ei.value)
    assert "'EleutherAI/pythia-70m'" in msg and "not in the local Hugging Face cache" in msg
    assert "hf download EleutherAI/pythia-70m" in msg and "local save_pretrained directory" in msg


def test_hf_hub_offline_env(empty_hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(M, "_hub_reachable", lambda timeout=2.0: pytest.fail("probed the network"))
    with pytest.raises(ModelNotAvailable, match="HF_HUB_OFFLINE is set"):
        M.load_model("gpt2")


def test_alias_resolved_before_cache_lookup(empty_hf_cache):
    assert M._official_name("gpt2-small") == "gpt2"
    assert M._official_name("pythia-70m") == "EleutherAI/pythia-70m"
    assert M._official_name("gpt2") == "gpt2"
    with pytest.raises(ModelNotAvailable) as ei:
        M.load_model("gpt2-small")
    msg = _one_line(ei.value)
    assert "gpt2-small (gpt2)" in msg and "hf download gpt2" in msg


def test_pickle_only_in_cache_refused(empty_hf_cache, monkeypatch):
    cached = {"config.json", "pytorch_model.bin"}
    monkeypatch.setattr(M, "_cached", lambda repo, f: f in cached)
    with pytest.raises(ModelNotAvailable, match="cached only as a pickle checkpoint"):
        M.load_model("gpt2")


def test_bad_dtype_is_model_error(tmp_path):
    with pytest.raises(ModelNotAvailable, match="unsupported dtype"):
        M.load_model("interptest-tiny", dtype="int8")


def test_resolve_dtype_and_device():
    import torch

    assert M.resolve_dtype(None) is torch.float32
    assert M.resolve_dtype("bfloat16") is torch.bfloat16
    assert M.resolve_dtype("float16") is torch.float16
    assert M.resolve_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError):
        M.resolve_dtype("float64")
    assert M.resolve_device("cpu") == "cpu"
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert M.resolve_device(None) == M.resolve_device("auto") == expected


def test_configure_threads_respects_affinity():
    import os

    import torch

    before = torch.get_num_threads()
    try:
        cpus = len(os.sched_getaffinity(0))
        assert M.configure_threads(1) == 1 == torch.get_num_threads()
        assert M.configure_threads(10_000) == cpus
        assert 1 <= M.configure_threads(None) <= cpus
        with pytest.raises(ValueError):
            M.configure_threads(0)
    finally:
        torch.set_num_threads(before)


def test_model_context_length():
    class Cfg:
        n_ctx = 256

    class Fake:
        cfg = Cfg()

    assert M.model_context_length(Fake()) == 256


def test_import_is_cheap():
    code = (
        "import sys, interptest, interptest.model; "
        "print(any(m in sys.modules for m in ('torch', 'transformer_lens', 'transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_loaded_model_does_not_warn_that_unpadded_prompts_may_be_padded():
    """interptest-tiny's pad token is its BOS (0), which starts every prompt: transformers' padding heuristic
    ("pad token first or last: pass an attention_mask") would warn on every run though interptest never pads.
    load_model turns that heuristic off on the model it returns; the check itself still warns elsewhere."""
    import logging

    import torch
    from transformers import PreTrainedModel
    from transformers.utils import logging as tf_logging

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    verbosity = tf_logging.get_verbosity()
    try:
        model = M.load_model("interptest-tiny", device="cpu")
        tf_logging.set_verbosity_warning()  # as in a fresh process (another test may have lowered it)
        tokens = model.to_tokens("Her name was Alex Hart. When Alex")
        assert int(tokens[0, 0]) == model.original_model.config.pad_token_id  # the heuristic's trigger
        tf_logging.get_logger("transformers.modeling_utils").warning_once.cache_clear()
        with torch.inference_mode():
            model(tokens)
            model.run_with_cache(tokens)
        assert not [r for r in records if "attention_mask" in r], records
        # the same check on a module that load_model did not touch still warns: the test can fail
        inner = next(m for m in model.original_model.modules() if isinstance(m, PreTrainedModel))
        PreTrainedModel.warn_if_padding_and_no_attention_mask(inner, tokens, None)
        assert [r for r in records if "attention_mask" in r]
    finally:
        logger.removeHandler(handler)
        tf_logging.set_verbosity(verbosity)
