"""Memory-bounded batching (issue 9.5): the default rows per forward follow the device's free memory on
CUDA (torch.cuda.mem_get_info) and a fixed budget on the CPU; an explicit batch size (--interp-batch-size)
wins. CUDA is simulated: these tests run on a CPU machine."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import pytest  # noqa: E402
import torch  # noqa: E402

import tinymodels  # noqa: E402
from interptest.patching import BatchPatcher, base  # noqa: E402

GiB = 2**30


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda.mem_get_info answering ``free[0]`` bytes free of 80 GiB."""
    free = [8 * GiB]

    def mem_get_info(device=None):
        if free[0] is None:
            raise RuntimeError("No CUDA GPUs are available")
        return free[0], 80 * GiB

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    return free


def test_budget_is_half_the_free_cuda_memory(fake_cuda):
    assert base.batch_budget("cuda") == 4 * GiB
    assert base.batch_budget(torch.device("cuda", 1)) == 4 * GiB
    fake_cuda[0] = 64 * 2**20  # nearly full: never below the CPU's fixed budget
    assert base.batch_budget("cuda:0") == base.BATCH_BUDGET
    fake_cuda[0] = None  # CUDA unusable: the fixed budget
    assert base.batch_budget("cuda") == base.BATCH_BUDGET


def test_cpu_budget_is_fixed(fake_cuda):
    assert base.batch_budget("cpu") == base.BATCH_BUDGET == 256 * 2**20


def rows(bp, monkeypatch, device):
    """Rows per forward (generic, fast) of a BatchPatcher built on the CPU, as if its model sat on ``device``."""
    monkeypatch.setattr(base, "model_device", lambda m: torch.device(device))
    bp._budget = None
    try:
        return bp._rows_per_batch(True), bp._rows_per_batch(False)
    finally:
        monkeypatch.setattr(base, "model_device", MODEL_DEVICE)


MODEL_DEVICE = base.model_device


def patcher(**kw):
    model = tinymodels.tiny_model("gpt2")
    clean = torch.randint(1, 299, (2, 40), generator=torch.Generator().manual_seed(0))
    corrupt = clean.clone()
    corrupt[:, 5] = 7
    return BatchPatcher(model, clean, corrupt, [1, 2], [3, 4], **kw)


def test_rows_per_forward_follow_the_free_memory(fake_cuda, monkeypatch):
    bp, fixed = patcher(), patcher(batch_size=3)
    monkeypatch.setattr(base, "BATCH_BUDGET", 2 * 2**20)  # small enough that the budget, not the cap, bounds
    cpu = rows(bp, monkeypatch, "cpu")
    fake_cuda[0] = 1 * 2**20
    cuda_full = rows(bp, monkeypatch, "cuda")
    fake_cuda[0] = 8 * GiB
    cuda_free = rows(bp, monkeypatch, "cuda")
    assert cuda_full == cpu  # never below the fixed budget
    assert 1 < cpu[0] < cuda_free[0] == base.MAX_ROWS  # more free memory, more rows, up to the caps
    assert 1 < cpu[1] < cuda_free[1] == base.MAX_ROWS_FAST
    fake_cuda[0] = 64 * GiB
    assert rows(fixed, monkeypatch, "cuda") == (3, 3)  # an explicit batch size wins
    assert rows(fixed, monkeypatch, "cpu") == (3, 3)


def test_the_circuit_engine_follows_the_same_budget(fake_cuda, monkeypatch):
    """Path patching, ablations and random-set controls size their forwards by the device's budget too (they
    kept a fixed CPU budget of their own before: on a GPU they never used its free memory)."""
    from interptest.patching import paths

    model = tinymodels.tiny_model("gpt2")
    clean = torch.randint(1, 299, (2, 40), generator=torch.Generator().manual_seed(0))
    corrupt = clean.clone()
    corrupt[:, 5] = 7

    cp, fixed = (paths.CircuitPatcher(model, clean, corrupt, [1, 2], [3, 4], batch_size=b) for b in (None, 3))

    def rows_on(device, patcher=cp):
        monkeypatch.setattr(base, "model_device", lambda m: torch.device(device))
        patcher._budget = None
        return patcher.rows_per_batch

    monkeypatch.setattr(base, "BATCH_BUDGET", 2 * 2**20)
    cpu = rows_on("cpu")
    fake_cuda[0] = 8 * GiB
    assert 1 < cpu < rows_on("cuda") == base.MAX_ROWS
    assert rows_on("cuda", fixed) == 3
