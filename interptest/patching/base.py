"""What every engine shares: the input checks, cell validation and batch sizing.

Devices: token ids, answer ids, first differences and metrics are bookkeeping and live on the CPU,
created there explicitly (``device="cpu"``); everything a forward touches is created on, or moved
once to, :func:`model_device`. ``tests/unit/test_patching_device.py`` runs every engine with torch's
default device set to ``meta`` to catch a tensor created without naming its device.
"""

from __future__ import annotations

from typing import Any

import torch

from interptest import components as _components
from interptest.errors import InterpError

COMPONENTS: tuple[str, ...] = _components.NAMES
DIRECTIONS = ("denoise", "noise")

# Memory budget (bytes) used to size batches when batch_size is not given: on the CPU a fixed one; on a
# CUDA device this fraction of its free memory (measured when a patcher is built), at least the CPU's.
BATCH_BUDGET = 256 * 2**20
CUDA_FREE_FRACTION = 0.5
MAX_ROWS = 128  # rows per forward of the bridge (generic engine)
MAX_ROWS_FAST = 1024  # rows per forward of the fast engine (one layer's rows share its matrix products)


def rows_within_budget(engine, per_row: int, cap: int) -> int:
    """Rows of ``per_row`` bytes that fit one forward of ``engine`` (anything with a ``model``): its
    device's :func:`batch_budget`, measured on first use and kept as ``engine._budget``; at most ``cap``."""
    budget = getattr(engine, "_budget", None)
    if budget is None:
        budget = engine._budget = batch_budget(model_device(engine.model))
    return max(1, min(cap, budget // max(per_row, 1)))


def batch_budget(device) -> int:
    """Bytes the activations of one batched forward may take on ``device``: on CUDA half of the free
    memory (``torch.cuda.mem_get_info``), at least :data:`BATCH_BUDGET`; elsewhere :data:`BATCH_BUDGET`."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _total = torch.cuda.mem_get_info(device)
        except (RuntimeError, AssertionError, ValueError):  # no usable CUDA: the fixed budget
            return BATCH_BUDGET
        return max(BATCH_BUDGET, int(free * CUDA_FREE_FRACTION))
    return BATCH_BUDGET


def hook_name(component: str, layer: int) -> str:
    """The TransformerLens hook point of ``component`` at ``layer``."""
    return _components.get(component).hook_name(layer)


def model_name(model) -> str:
    cfg = getattr(model, "cfg", None)
    return str(getattr(cfg, "model_name", None) or type(model).__name__)


def model_device(model) -> torch.device:
    """The device the model's inputs go to: ``cfg.device``, else its first parameter's device, else CPU.

    Every tensor the engines use in a forward is created on (or moved to) this device; bookkeeping
    (token ids for messages, first differences, metrics) is kept on the CPU, created there explicitly."""
    dev = getattr(getattr(model, "cfg", None), "device", None)
    if dev is not None:
        return torch.device(dev)
    try:
        return next(iter(model.parameters())).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def cpu_tensor(x: Any) -> torch.Tensor:
    """A CPU copy of a tensor (detached), or a CPU tensor built from a list."""
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(x, device="cpu")


def check_component(component: str) -> None:
    if component not in COMPONENTS:
        raise InterpError(f"unknown component {component!r}; valid components: {', '.join(COMPONENTS)}")


def check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise InterpError(
            f"unknown direction {direction!r}; valid directions: {', '.join(DIRECTIONS)} "
            "(denoise = patch clean into corrupted, 'recovers'; noise = patch corrupted into clean, 'breaks')"
        )


def str_tokens(model, tokens: torch.Tensor) -> list[str]:
    try:
        return [str(s) for s in model.to_str_tokens(tokens[0].cpu())]
    except Exception:  # a tokenizer-less model: show ids
        return [str(int(i)) for i in tokens[0]]


def check_same_length(model, clean: torch.Tensor, corrupt: torch.Tensor) -> None:
    """Positions are matched one to one, so both runs need the same token count; show both when not."""
    if clean.shape[-1] != corrupt.shape[-1]:
        raise InterpError(
            f"clean and corrupted prompts must have the same number of tokens, got "
            f"{clean.shape[-1]} vs {corrupt.shape[-1]}:\n"
            f"  clean     ({clean.shape[-1]}): {str_tokens(model, clean[:1])}\n"
            f"  corrupted ({corrupt.shape[-1]}): {str_tokens(model, corrupt[:1])}"
        )


def check_answer_ids(model, expect: torch.Tensor, foil: torch.Tensor, per_sample: bool) -> None:
    """expect/foil: one id per sample. Refuse a zero logit difference by construction, ids outside the
    vocabulary, and a model in training mode; ``per_sample`` names the offending sample."""

    def where(s: int) -> str:
        return f"sample {s}: " if per_sample else ""

    expect, foil = cpu_tensor(expect), cpu_tensor(foil)
    same = (expect == foil).nonzero()
    if same.numel():
        s = int(same[0, 0])
        tid = int(expect[s])
        raise InterpError(
            f"{where(s)}expect and foil are the same token (id {tid}"
            f"{', ' + repr(str_tokens(model, torch.tensor([[tid]], device='cpu'))[0])}); "
            "the logit difference would be 0 — pick a different foil"
        )
    if getattr(model, "training", False):
        raise InterpError("activation patching needs the model in eval mode; call model.eval() first")
    d_vocab = int(getattr(model.cfg, "d_vocab", 0) or 0)
    if d_vocab:
        for name, ids in (("expect", expect), ("foil", foil)):
            bad = ((ids < 0) | (ids >= d_vocab)).nonzero()
            if bad.numel():
                s = int(bad[0, 0])
                raise InterpError(
                    f"{where(s)}{name} token id {int(ids[s])} is outside the vocabulary (0..{d_vocab - 1})"
                )


class PatchShape:
    """What Patcher and BatchPatcher share: cell validation, batch sizing, component availability.
    Subclasses set model, batch_size, n_layers, n_positions and n_heads."""

    model: Any
    batch_size: int | None
    n_layers: int
    n_positions: int
    n_heads: int

    def _check_available(self, component: str) -> None:
        check_component(component)
        hook_dict = getattr(self.model, "hook_dict", {})
        if hook_name(component, 0) not in hook_dict:
            raise InterpError(_components.unavailable_message(component, model_name(self.model), hook_dict))

    def _norm_cell(self, component: str, cell) -> tuple:
        L, n, H = self.n_layers, self.n_positions, self.n_heads

        def idx(v, size, what):
            try:
                i = int(v)
            except (TypeError, ValueError):
                raise InterpError(f"{component} cell {cell!r}: {what} must be an integer") from None
            if not -size <= i < size:
                raise InterpError(f"{component} cell {cell!r}: {what} {i} out of range (0..{size - 1})")
            return i % size

        cell = tuple(cell)
        if component == "heads":
            if len(cell) == 2:
                cell = cell + (None,)
            if len(cell) != 3:
                raise InterpError(f"heads cell {cell!r} must be (layer, head, position_or_None)")
            pos = None if cell[2] is None else idx(cell[2], n, "position")
            return (idx(cell[0], L, "layer"), idx(cell[1], H, "head"), pos)
        if len(cell) != 2:
            raise InterpError(f"{component} cell {cell!r} must be (layer, position)")
        return (idx(cell[0], L, "layer"), idx(cell[1], n, "position"))

    def _rows_per_batch(self, generic: bool) -> int:
        """Rows per forward: ``batch_size`` when given (``--interp-batch-size``), else as many as the
        device's budget (:func:`batch_budget`) holds, at most MAX_ROWS (generic) / MAX_ROWS_FAST."""
        if self.batch_size is not None:
            return self.batch_size
        cfg = self.model.cfg
        d = int(cfg.d_model)
        d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * d)
        n = self.n_positions
        per_row = n * (8 * d + 2 * d_mlp + 2 * self.n_heads * n) * 4
        if generic:
            per_row += n * int(cfg.d_vocab) * 4
        return rows_within_budget(self, per_row, MAX_ROWS if generic else MAX_ROWS_FAST)
