"""Activation patching over many prompt pairs ("samples" of a prompt family) at once.

A :class:`BatchPatcher` holds S clean/corrupted pairs of equal length.  Each value it returns is,
per sample, what ``transformer_lens.patching.get_act_patch_*`` returns for that sample's pair with
the metric

    denoise:  (m_patched - m_corrupt_s) / (m_clean_s - m_corrupt_s)   (corrupted run, clean activation)
    noise:    (m_clean_s - m_patched) / (m_clean_s - m_corrupt_s)     (clean run, corrupted activation)

where ``m = logit[expect_s] - logit[foil_s]`` at the last position — up to float32 rounding, which
depends on the batch shape.

The rows of every batched forward are (sample, cells) pairs: each row runs its sample's base run
patched with that sample's source activation, so the work of all samples shares forwards instead
of looping over samples.  Two engines run the rows: the fast engine
(:mod:`interptest.patching.fast`) where the architecture is covered and its self-check passes, else
the generic hook engine (:mod:`interptest.patching.generic`).

``embed_noise`` ([S, n, d_model]) makes the *corrupted run* "corrupted tokens + noise added to the
token embedding (``hook_embed``)", as in ROME's causal tracing.  It applies to every forward whose
rows represent the corrupted run: the corrupted metrics, the patched rows of a denoise sweep, and
the corrupted source activations of a noise sweep (whose patched rows are clean, without noise).

Cells that provably change nothing are not computed, by either engine: cells before a sample's first
difference (first differing token, or first position with nonzero noise) — patching an activation
with an identical one is the identity — and post-attention activations of the last layer (resid_mid,
attn_out, mlp_out, resid_post, a head's output at a given position) away from the last position,
which no later computation reads.  Their value is exactly 0 (nan when m_clean_s == m_corrupt_s).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from interptest.errors import InterpError
from interptest.patching import fast as _fast
from interptest.patching.base import (
    PatchShape,
    check_answer_ids,
    check_component,
    check_direction,
    check_same_length,
    cpu_tensor,
    model_device,
    model_name,
)
from interptest.patching.generic import HookEngine

__all__ = ["BatchPatcher"]

ENGINES = ("auto", "generic", "fast")


def _as_batch(tokens: Any, what: str) -> torch.Tensor:
    """[S, n] int64 token ids on the CPU (bookkeeping copy; moved to the model's device once)."""
    t = cpu_tensor(tokens)
    if t.ndim == 1:
        t = t.reshape(1, -1)
    if t.ndim != 2 or t.is_floating_point() or t.is_complex() or t.numel() == 0:
        raise InterpError(
            f"{what} tokens must be a non-empty 2-D integer tensor [n_samples, n_tokens], got shape {tuple(t.shape)}"
        )
    return t.long()


def _as_ids(ids: Any, what: str, n_samples: int) -> torch.Tensor:
    try:
        t = cpu_tensor(ids)
    except (TypeError, ValueError, RuntimeError):
        raise InterpError(f"{what} must be a sequence of {n_samples} token ids, got {ids!r}") from None
    if t.ndim == 0:
        t = t.reshape(1)
    if t.ndim != 1 or t.is_floating_point() or t.is_complex():
        raise InterpError(f"{what} must be a 1-D sequence of integer token ids, got shape {tuple(t.shape)}")
    if t.numel() != n_samples:
        raise InterpError(f"{what} has {t.numel()} entries but there are {n_samples} samples")
    return t.long()


class BatchPatcher(PatchShape):
    """S clean/corrupted prompt pairs of one length, patched together.

    Runs the clean and corrupted forwards once (batched), caches only what the requested sweeps
    need and memoizes sweeps.
    """

    def __init__(
        self,
        model,
        clean_tokens,
        corrupt_tokens,
        expect_ids: Sequence[int],
        foil_ids: Sequence[int],
        *,
        embed_noise: torch.Tensor | None = None,
        batch_size: int | None = None,
        engine: str = "auto",
        _per_sample: bool = True,
        _logits: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        """clean_tokens, corrupt_tokens: [S, n] integer tensors (a 1-D tensor is one sample).
        expect_ids, foil_ids: S token ids.  embed_noise: optional [S, n, d_model], added at
        ``hook_embed`` to every corrupted run.  batch_size: rows per forward (default: sized to a
        memory budget).  engine: "auto" (fast engine where it is supported and passes its
        self-check, else generic), "generic" (bridge hooks only) or "fast" (raise if unsupported).
        ``_logits``: the bridge's last-position logits [S, vocab] of these clean and corrupted (+ noise)
        runs, where the caller (the spec pipeline) computed them already: the unpatched forwards are not
        run twice."""
        if engine not in ENGINES:
            raise InterpError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
        self.model = model
        clean = _as_batch(clean_tokens, "clean")
        corrupt = _as_batch(corrupt_tokens, "corrupted")
        check_same_length(model, clean, corrupt)
        if clean.shape[0] != corrupt.shape[0]:
            raise InterpError(
                f"clean and corrupted batches must have the same number of samples, got "
                f"{clean.shape[0]} vs {corrupt.shape[0]}"
            )
        S, n = int(clean.shape[0]), int(clean.shape[1])
        expect = _as_ids(expect_ids, "expect_ids", S)
        foil = _as_ids(foil_ids, "foil_ids", S)
        check_answer_ids(model, expect, foil, per_sample=_per_sample)
        cfg = model.cfg
        self.device = device = model_device(model)
        noise_pos = torch.zeros(S, n, dtype=torch.bool, device="cpu")
        self.embed_noise: torch.Tensor | None = None
        if embed_noise is not None:
            noise = cpu_tensor(embed_noise) if not isinstance(embed_noise, torch.Tensor) else embed_noise.detach()
            d_model = int(cfg.d_model)
            if not noise.is_floating_point():
                raise InterpError(f"embed_noise must be a floating-point tensor, got dtype {noise.dtype}")
            if tuple(noise.shape) != (S, n, d_model):
                raise InterpError(
                    f"embed_noise must have shape [n_samples, n_tokens, d_model] = [{S}, {n}, {d_model}], "
                    f"got {tuple(noise.shape)}"
                )
            if "hook_embed" not in getattr(model, "hook_dict", {}):
                raise InterpError(
                    f"embed_noise needs the hook point 'hook_embed', which model {model_name(model)} does not expose"
                )
            noise_pos = (noise != 0).any(-1).cpu()
            self.embed_noise = noise.to(device).clone()

        self.clean_tokens = clean.to(device)
        self.corrupt_tokens = corrupt.to(device)
        self.expect_ids, self.foil_ids = expect, foil  # CPU
        self.n_samples = S
        self.n_layers = int(cfg.n_layers)
        self.n_heads = int(cfg.n_heads)
        self.n_positions = n
        differs = (clean != corrupt) | noise_pos
        pos = torch.arange(n, device="cpu").expand(S, n)
        self.first_diff = torch.where(differs, pos, torch.full_like(pos, n)).min(dim=1).values
        self.batch_size = None if batch_size is None else max(1, int(batch_size))
        self._raw: dict[tuple[str, str], torch.Tensor] = {}
        self._values: dict[tuple[str, str], torch.Tensor] = {}

        self._hooks = HookEngine(
            model,
            {"clean": self.clean_tokens, "corrupt": self.corrupt_tokens},
            expect.to(device),
            foil.to(device),
            self.embed_noise,
            self._rows_per_batch(True),
        )
        if _logits is None:
            clean_logits, corrupt_logits = self._hooks.last_logits()
        else:
            clean_logits, corrupt_logits = (cpu_tensor(t).float() for t in _logits)
            if clean_logits.shape != corrupt_logits.shape or clean_logits.shape[0] != S:
                raise ValueError(f"_logits must be two [{S}, vocab] tensors")  # an internal caller's contract
        # cloned outside inference mode: ordinary tensors the caller may modify
        self.clean_logits, self.corrupt_logits = clean_logits.clone(), corrupt_logits.clone()
        self.clean_metrics = (
            self.clean_logits.gather(1, expect.unsqueeze(1)) - self.clean_logits.gather(1, foil.unsqueeze(1))
        ).squeeze(1)
        self.corrupt_metrics = (
            self.corrupt_logits.gather(1, expect.unsqueeze(1)) - self.corrupt_logits.gather(1, foil.unsqueeze(1))
        ).squeeze(1)

        self._fast = None
        self.engine = "generic"
        self.engine_note = "engine='generic' requested" if engine == "generic" else ""
        if engine != "generic":
            try:
                with torch.inference_mode():
                    eng = _fast.FastEngine.build(
                        model,
                        self.clean_tokens,
                        self.corrupt_tokens,
                        expect,
                        foil,
                        first_diff=self.first_diff,
                        embed_noise=self.embed_noise,
                        rows_per_batch=self._rows_per_batch(False),
                    )
                    eng.self_check(self.clean_logits, self.corrupt_logits)
                self._fast = eng
                self.engine = "fast"
            except _fast.Unsupported as e:
                self.engine_note = str(e)
                if engine == "fast":
                    raise InterpError(f"fast patching engine unavailable for {model_name(model)}: {e}") from None

    # ---- internals --------------------------------------------------------------------------

    def _normalize(self, raw: torch.Tensor, direction: str) -> torch.Tensor:
        """raw: [S, ...] patched metrics -> normalized values, per sample (float64 arithmetic)."""
        shape = (-1,) + (1,) * (raw.ndim - 1)
        mc = self.clean_metrics.double().reshape(shape)
        mx = self.corrupt_metrics.double().reshape(shape)
        raw64 = raw.double()
        num = raw64 - mx if direction == "denoise" else mc - raw64
        return (num / (mc - mx)).float()  # m_clean == m_corrupt -> inf / nan, by design

    def _base_metrics(self, direction: str) -> torch.Tensor:
        return self.corrupt_metrics if direction == "denoise" else self.clean_metrics

    def _run_rows(self, component: str, direction: str, rows: Sequence[tuple[int, Sequence[tuple]]]) -> torch.Tensor:
        """Patched metric (CPU float32) for each row (sample, cells), all cells patched together."""
        if not rows:
            return torch.empty(0, dtype=torch.float32, device="cpu")
        if self._fast is not None:
            with torch.inference_mode():
                return self._fast.run_rows(component, direction, rows, self._rows_per_batch(False))
        return self._hooks.run_rows(component, direction, rows)

    def _unchanged(self, s: int, component: str, cell: tuple) -> bool:
        """Patching the cell in sample s provably leaves the metric at the unpatched run's value:
        it writes only positions before the sample's first difference (equal activations), or a
        post-attention activation of the last layer away from the last position (never read)."""
        pos = cell[-1] if len(cell) == 3 else cell[1]
        fd = int(self.first_diff[s])
        if pos is None:
            return fd >= self.n_positions
        if pos < fd:
            return True
        return component != "resid_pre" and cell[0] == self.n_layers - 1 and pos != self.n_positions - 1

    def _check(self, component: str, direction: str) -> None:
        check_component(component)
        check_direction(direction)
        self._check_available(component)

    # ---- public API -------------------------------------------------------------------------

    def sweep_raw(self, component: str, direction: str = "denoise") -> torch.Tensor:
        """Patched metrics [S, n_layers, n_positions] ([S, n_layers, n_heads] for heads); memoized."""
        self._check(component, direction)
        key = (component, direction)
        if key not in self._raw:
            S, L, n, H = self.n_samples, self.n_layers, self.n_positions, self.n_heads
            fd = [int(x) for x in self.first_diff]
            width = H if component == "heads" else n
            # Cells that change nothing (see the module docstring): the unpatched run, exactly.
            raw = self._base_metrics(direction).reshape(S, 1, 1).expand(S, L, width).clone()
            rows: list[tuple[int, list[tuple]]] = []
            where: list[tuple[int, int, int]] = []
            for s in range(S):
                if fd[s] >= n:
                    continue
                for l in range(L):
                    if component == "heads":
                        for h in range(H):
                            rows.append((s, [(l, h, None)]))
                            where.append((s, l, h))
                    else:
                        for p in range(fd[s], n):
                            if not self._unchanged(s, component, (l, p)):
                                rows.append((s, [(l, p)]))
                                where.append((s, l, p))
            if rows:
                idx = torch.tensor(where, dtype=torch.long, device="cpu")
                raw[idx[:, 0], idx[:, 1], idx[:, 2]] = self._run_rows(component, direction, rows)
            self._raw[key] = raw
            self._values[key] = self._normalize(raw, direction)
        return self._raw[key].clone()

    def sweep(self, component: str, direction: str = "denoise") -> torch.Tensor:
        """Normalized values [S, n_layers, n_positions] ([S, n_layers, n_heads] for heads); memoized."""
        self.sweep_raw(component, direction)
        return self._values[(component, direction)].clone()

    def cells_raw(self, component: str, cells, direction: str = "denoise") -> torch.Tensor:
        """Patched metrics [S, len(cells)], each cell patched on its own in each sample."""
        self._check(component, direction)
        norm = [self._norm_cell(component, c) for c in cells]
        S = self.n_samples
        raw = self._base_metrics(direction).reshape(S, 1).expand(S, len(norm)).clone()
        rows, where = [], []
        for s in range(S):
            for j, c in enumerate(norm):
                if not self._unchanged(s, component, c):
                    rows.append((s, [c]))
                    where.append((s, j))
        if rows:
            idx = torch.tensor(where, dtype=torch.long, device="cpu")
            raw[idx[:, 0], idx[:, 1]] = self._run_rows(component, direction, rows)
        return raw

    def cells_value(self, component: str, cells, direction: str = "denoise") -> torch.Tensor:
        """Normalized values [S, len(cells)], each cell patched on its own in each sample.

        cells: (layer, position) for resid/attn_out/mlp_out; (layer, head, position_or_None) for heads."""
        return self._normalize(self.cells_raw(component, cells, direction), direction)

    def joint_raw(self, component: str, cells, direction: str = "denoise") -> torch.Tensor:
        """Patched metrics [S]: per sample, ONE run with all ``cells`` patched together."""
        self._check(component, direction)
        norm = [self._norm_cell(component, c) for c in cells]
        if not norm:
            raise InterpError(f"joint patch of {component!r} needs at least one cell")
        raw = self._base_metrics(direction).clone()
        rows, where = [], []
        for s in range(self.n_samples):
            cs = [c for c in norm if not self._unchanged(s, component, c)]
            if cs:
                rows.append((s, cs))
                where.append(s)
        if rows:
            raw[torch.tensor(where, dtype=torch.long, device="cpu")] = self._run_rows(component, direction, rows)
        return raw

    def joint(self, component: str, cells, direction: str = "denoise") -> torch.Tensor:
        """Normalized values [S]: per sample, ONE run with all ``cells`` patched together."""
        return self._normalize(self.joint_raw(component, cells, direction), direction)
