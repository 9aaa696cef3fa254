"""load_model changes no global state nobody asked for (issue 10.6), and takes a Hugging Face device_map
(issue 9.7). The shipped interptest-tiny, loaded offline."""

from __future__ import annotations

import os

import pytest
import torch

import interptest
from interptest.errors import ModelNotAvailable
from interptest.model import available_cpus, load_model
from interptest.tl_compat import cpu_device_map_supported, tl_version

QUIET_ENV = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "TOKENIZERS_PARALLELISM", "TRANSFORMERS_VERBOSITY")


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.skipif(available_cpus() < 2, reason="needs 2 CPUs to tell a changed thread count from the default")
def test_loading_leaves_the_thread_count_alone(threads):
    torch.set_num_threads(2)  # not what the plugin's default (half the CPUs, capped) would pick on 2 CPUs
    load_model("interptest-tiny")
    assert torch.get_num_threads() == 2


def test_threads_set_only_when_asked(threads):
    torch.set_num_threads(min(2, available_cpus()))
    load_model("interptest-tiny", threads=1)
    assert torch.get_num_threads() == 1


def test_loading_restores_environment_and_logging(monkeypatch):
    import logging

    import transformers

    for name in QUIET_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    verbosity = transformers.logging.get_verbosity()
    bars = transformers.logging.is_progress_bar_enabled()
    tl_level = logging.getLogger("transformer_lens").level
    try:
        transformers.logging.set_verbosity_warning()
        transformers.logging.enable_progress_bar()
        load_model("interptest-tiny")
        assert {k: os.environ.get(k) for k in QUIET_ENV} == {
            "TQDM_DISABLE": None,
            "HF_HUB_DISABLE_PROGRESS_BARS": None,
            "TOKENIZERS_PARALLELISM": "true",
            "TRANSFORMERS_VERBOSITY": None,
        }
        assert transformers.logging.get_verbosity() == transformers.logging.WARNING
        assert transformers.logging.is_progress_bar_enabled()
        assert logging.getLogger("transformer_lens").level == tl_level
    finally:
        transformers.logging.set_verbosity(verbosity)
        (transformers.logging.enable_progress_bar if bars else transformers.logging.disable_progress_bar)()


@pytest.mark.parametrize("device_map", [{"": "cpu"}, '{"": "cpu"}'], ids=["dict", "json"])
def test_one_device_map_loads_and_patches_like_a_plain_load(device_map):
    from interptest.patching import Patcher

    if not cpu_device_map_supported():
        pytest.skip(f"TransformerLens {tl_version()} refuses a CPU device_map (test_old_transformer_lens_...)")
    mapped = load_model("interptest-tiny", device_map=device_map)
    plain = load_model("interptest-tiny")
    assert str(mapped.cfg.device) == "cpu"
    assert all(p.device.type == "cpu" for p in mapped.parameters())
    clean = plain.to_tokens("Her name was Alex Hart. When Alex")
    corrupt = plain.to_tokens("Her name was Alex Cole. When Alex")
    ids = [int(plain.to_tokens(t, prepend_bos=False)[0, 0]) for t in (" Hart", " Cole")]
    a, b = Patcher(mapped, clean, corrupt, *ids), Patcher(plain, clean, corrupt, *ids)
    assert a.engine == b.engine == "fast", a.engine_note
    for component in ("resid_pre", "heads"):
        assert torch.equal(a.sweep(component).values, b.sweep(component).values)


@pytest.mark.parametrize("device_map", [{"": "cpu"}, '{"": "cpu"}', "auto"], ids=["dict", "json", "auto"])
def test_old_transformer_lens_refuses_a_cpu_device_map_with_its_version(device_map):
    """TransformerLens before 3.8 accepts a device_map only across GPUs; the error says so, with the
    version, instead of TransformerLens's ValueError from deep inside the load."""
    if cpu_device_map_supported():
        pytest.skip(f"TransformerLens {tl_version()} loads a CPU device_map (test_one_device_map_...)")
    if device_map == "auto" and torch.cuda.is_available():
        pytest.skip("'auto' places the weights on the GPU here")
    with pytest.raises(ModelNotAvailable) as info:
        interptest.load_model("interptest-tiny", device_map=device_map)
    assert str(info.value).startswith(
        f"model 'interptest-tiny': TransformerLens {tl_version()} (installed) accepts a device_map only across "
        f"GPUs (its multi-device support is GPU-only), and this device_map places weights on the CPU"
    ), str(info.value)
    assert "TransformerLens 3.8 or newer accepts a CPU device_map" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(device="cpu", device_map="auto"),
            "model 'interptest-tiny': give either device ('cpu') or device_map, not both",
        ),
        (
            dict(device_map="everywhere"),
            "model 'interptest-tiny': unknown device_map 'everywhere'; expected auto, "
            "balanced, balanced_low_0, sequential or a JSON object of module name to device",
        ),
        (dict(device_map="{cpu"), "model 'interptest-tiny': device_map '{cpu' is not valid JSON"),
        (dict(device_map=3), "model 'interptest-tiny': device_map must be a string or a dict, got 3"),
    ],
)
def test_device_map_errors(kwargs, message):
    with pytest.raises(ModelNotAvailable) as info:
        interptest.load_model("interptest-tiny", **kwargs)
    assert str(info.value).startswith(message)
