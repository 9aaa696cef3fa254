"""One prompt pair: :class:`Patcher` (``interptest.patch_sweep`` builds one from prompt strings, as
strictly as a spec).

A :class:`Patcher` holds one clean/corrupted prompt pair. Every value it returns equals what
``transformer_lens.patching.get_act_patch_*`` returns for the same cell with the metric

    denoise:  (m_patched - m_corrupt) / (m_clean - m_corrupt)   (corrupted run, clean activation)
    noise:    (m_clean - m_patched) / (m_clean - m_corrupt)     (clean run, corrupted activation)

where ``m = logit[expect] - logit[foil]`` at the last position.

Two engines compute the patched metrics:

* the *fast* engine (:mod:`interptest.patching.fast`) re-implements the forward of GPT-2, Llama-style
  and GPT-NeoX-style models from the underlying Hugging Face weights; it recomputes only the layers
  at and after the patch, only the positions at and after the patched one (earlier positions' keys
  and values come from the unpatched run), and only the two logits the metric reads.  It is
  self-checked against the bridge's own logits when a Patcher is built and switched off if it
  disagrees.
* the *generic* engine (:mod:`interptest.patching.generic`) runs the bridge with hooks, many patched
  cells stacked in one batch with one hook per layer.  It covers every architecture TransformerLens supports.

Both skip positions before the first differing token (the patched activation equals the
unpatched one there, so the value is exactly 0).  A Patcher is a :class:`BatchPatcher` of one sample
seen without the sample axis.
"""

from __future__ import annotations

from typing import Any

import torch

from interptest.errors import InterpError
from interptest.maps import PatchMap
from interptest.patching.base import check_component, check_direction, cpu_tensor, str_tokens
from interptest.patching.batch import ENGINES, BatchPatcher


def _as_tokens(tokens: Any, what: str) -> torch.Tensor:
    """[1, n] int64 token ids on the CPU (bookkeeping copy; the engines move them to the device once)."""
    t = cpu_tensor(tokens)
    if t.ndim == 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 1 or t.is_floating_point() or t.numel() == 0:
        raise InterpError(
            f"{what} tokens must be a non-empty 1-D integer tensor (or [1, n]), got shape {tuple(t.shape)}"
        )
    return t.long().reshape(1, -1)


class Patcher:
    """One clean/corrupted prompt pair.

    Runs the clean and corrupted forwards once, caches only what the requested sweeps need and
    memoizes sweeps.  All claims of one behavior share one Patcher.
    """

    def __init__(
        self,
        model,
        clean_tokens,
        corrupt_tokens,
        expect_id: int,
        foil_id: int,
        *,
        batch_size: int | None = None,
        engine: str = "auto",
        _logits: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        """``engine``: "auto" (fast engine where it is supported and passes its self-check,
        else generic), "generic" (bridge hooks only) or "fast" (raise if unsupported).  ``_logits``: see
        :class:`BatchPatcher`."""
        if engine not in ENGINES:
            raise InterpError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
        clean = _as_tokens(clean_tokens, "clean")
        corrupt = _as_tokens(corrupt_tokens, "corrupted")
        expect_id, foil_id = int(expect_id), int(foil_id)
        self._b = b = BatchPatcher(
            model,
            clean,
            corrupt,
            [expect_id],
            [foil_id],
            batch_size=batch_size,
            engine=engine,
            _per_sample=False,
            _logits=_logits,
        )
        self.model = model
        self.device = b.device
        self.clean_tokens, self.corrupt_tokens = b.clean_tokens, b.corrupt_tokens
        self.expect_id, self.foil_id = expect_id, foil_id
        self.n_layers, self.n_heads, self.n_positions = b.n_layers, b.n_heads, b.n_positions
        self.first_diff = int(b.first_diff[0])
        self.batch_size = b.batch_size
        self.clean_logits, self.corrupt_logits = b.clean_logits[0], b.corrupt_logits[0]
        self.clean_metric = float(b.clean_metrics[0])
        self.corrupt_metric = float(b.corrupt_metrics[0])
        self.engine, self.engine_note = b.engine, b.engine_note
        self._sweeps: dict[tuple[str, str], PatchMap] = {}
        self._str_tokens: list[str] | None = None

    @property
    def tokens(self) -> list[str]:
        if self._str_tokens is None:
            self._str_tokens = str_tokens(self.model, self.clean_tokens)
        return self._str_tokens

    # ---- public API -------------------------------------------------------------------------

    def sweep(self, component: str, direction: str = "denoise") -> PatchMap:
        """Every (layer, position) cell — (layer, head) for ``heads`` — patched on its own."""
        check_component(component)
        check_direction(direction)
        key = (component, direction)
        if key not in self._sweeps:
            raw = self._b.sweep_raw(component, direction)[0]
            values = self._b.sweep(component, direction)[0]
            self._sweeps[key] = PatchMap(
                component=component,
                direction=direction,
                values=values,
                raw=raw,
                tokens=list(self.tokens),
                clean_metric=self.clean_metric,
                corrupt_metric=self.corrupt_metric,
            )
        return self._sweeps[key]

    def cells_value(self, component: str, cells, direction: str = "denoise") -> torch.Tensor:
        """Normalized values of individual cells (each patched on its own), batched.

        cells: (layer, position) for resid/attn_out/mlp_out; (layer, head, position_or_None) for heads."""
        return self._b.cells_value(component, cells, direction)[0]

    def joint(self, component: str, cells, direction: str = "denoise") -> float:
        """ONE forward with all ``cells`` patched together; the normalized value."""
        return float(self._b.joint(component, cells, direction)[0])
