"""Activation patching over many prompt pairs ("samples" of a prompt family) at once.

A :class:`BatchPatcher` holds S clean/corrupted pairs of equal length.  Each value it returns is,
per sample, exactly what :class:`interptest.patching.Patcher` (generic engine) returns for that
sample's pair — i.e. what ``transformer_lens.patching.get_act_patch_*`` returns with the metric

    denoise:  (m_patched - m_corrupt_s) / (m_clean_s - m_corrupt_s)   (corrupted run, clean activation)
    noise:    (m_clean_s - m_patched) / (m_clean_s - m_corrupt_s)     (clean run, corrupted activation)

where ``m = logit[expect_s] - logit[foil_s]`` at the last position — up to float32 rounding, which
depends on the batch shape.

The rows of every batched forward are (sample, cell) pairs: each row runs its sample's base
tokens and its hooks write that sample's source activation, so the work of all samples shares
forwards instead of looping over samples.  Rows are grouped by layer so one forward touches few
hook points.

``embed_noise`` ([S, n, d_model]) makes the *corrupted run* "corrupted tokens + noise added to the
token embedding (``hook_embed``)", as in ROME's causal tracing.  It applies to every forward whose
rows represent the corrupted run: the corrupted metrics, the patched rows of a denoise sweep, and
the corrupted source activations of a noise sweep (whose patched rows are clean, without noise).

Cells before a sample's first difference (first differing token, or first position with nonzero
noise) are not computed: patching an activation with an identical one is the identity, so their
value is exactly 0 (nan when m_clean_s == m_corrupt_s).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from interptest.errors import InterpError
from interptest.patching import (
    _HOOK,
    _check_component,
    _check_direction,
    _model_name,
    _PatchShape,
    check_answer_ids,
    check_same_length,
    model_device,
)

__all__ = ["BatchPatcher"]


def _as_batch(tokens: Any, what: str) -> torch.Tensor:
    """[S, n] int64 token ids on the CPU (bookkeeping copy; moved to the model's device once)."""
    t = tokens.detach().cpu() if isinstance(tokens, torch.Tensor) else torch.as_tensor(tokens, device="cpu")
    if t.ndim == 1:
        t = t.reshape(1, -1)
    if t.ndim != 2 or t.is_floating_point() or t.is_complex() or t.numel() == 0:
        raise InterpError(f"{what} tokens must be a non-empty 2-D integer tensor [n_samples, n_tokens], "
                          f"got shape {tuple(t.shape)}")
    return t.long()


def _as_ids(ids: Any, what: str, n_samples: int) -> torch.Tensor:
    try:
        t = ids.detach().cpu() if isinstance(ids, torch.Tensor) else torch.as_tensor(ids, device="cpu")
    except (TypeError, ValueError, RuntimeError):
        raise InterpError(f"{what} must be a sequence of {n_samples} token ids, got {ids!r}") from None
    if t.ndim == 0:
        t = t.reshape(1)
    if t.ndim != 1 or t.is_floating_point() or t.is_complex():
        raise InterpError(f"{what} must be a 1-D sequence of integer token ids, got shape {tuple(t.shape)}")
    if t.numel() != n_samples:
        raise InterpError(f"{what} has {t.numel()} entries but there are {n_samples} samples")
    return t.long().cpu()


class BatchPatcher(_PatchShape):
    """S clean/corrupted prompt pairs of one length, patched together.

    Runs the clean and corrupted forwards once (batched), caches only the source activations the
    requested sweeps need and memoizes sweeps.
    """

    def __init__(self, model, clean_tokens, corrupt_tokens, expect_ids: Sequence[int],
                 foil_ids: Sequence[int], *, embed_noise: torch.Tensor | None = None,
                 batch_size: int | None = None):
        """clean_tokens, corrupt_tokens: [S, n] integer tensors (a 1-D tensor is one sample).
        expect_ids, foil_ids: S token ids.  embed_noise: optional [S, n, d_model], added at
        ``hook_embed`` to every corrupted run.  batch_size: rows per forward (default: sized to a
        memory budget, as Patcher does)."""
        self.model = model
        clean = _as_batch(clean_tokens, "clean")
        corrupt = _as_batch(corrupt_tokens, "corrupted")
        check_same_length(model, clean, corrupt)
        if clean.shape[0] != corrupt.shape[0]:
            raise InterpError(
                f"clean and corrupted batches must have the same number of samples, got "
                f"{clean.shape[0]} vs {corrupt.shape[0]}")
        S, n = int(clean.shape[0]), int(clean.shape[1])
        expect = _as_ids(expect_ids, "expect_ids", S)
        foil = _as_ids(foil_ids, "foil_ids", S)
        check_answer_ids(model, expect, foil, per_sample=True)
        cfg = model.cfg
        self.device = device = model_device(model)
        noise_pos = torch.zeros(S, n, dtype=torch.bool, device="cpu")
        self.embed_noise: torch.Tensor | None = None
        if embed_noise is not None:
            noise = (embed_noise.detach() if isinstance(embed_noise, torch.Tensor)
                     else torch.as_tensor(embed_noise, device="cpu"))
            d_model = int(cfg.d_model)
            if not noise.is_floating_point():
                raise InterpError(f"embed_noise must be a floating-point tensor, got dtype {noise.dtype}")
            if tuple(noise.shape) != (S, n, d_model):
                raise InterpError(
                    f"embed_noise must have shape [n_samples, n_tokens, d_model] = [{S}, {n}, {d_model}], "
                    f"got {tuple(noise.shape)}")
            if "hook_embed" not in getattr(model, "hook_dict", {}):
                raise InterpError(f"embed_noise needs the hook point 'hook_embed', which model "
                                  f"{_model_name(model)} does not expose")
            noise_pos = (noise != 0).any(-1).cpu()
            self.embed_noise = noise.detach().to(device).clone()

        self.clean_tokens = clean.to(device)
        self.corrupt_tokens = corrupt.to(device)
        self.expect_ids, self.foil_ids = expect, foil  # CPU
        self._expect_dev, self._foil_dev = expect.to(device), foil.to(device)
        self.n_samples = S
        self.n_layers = int(cfg.n_layers)
        self.n_heads = int(cfg.n_heads)
        self.n_positions = n
        differs = (clean != corrupt) | noise_pos
        pos = torch.arange(n, device="cpu").expand(S, n)
        self.first_diff = torch.where(differs, pos, torch.full_like(pos, n)).min(dim=1).values
        self.batch_size = None if batch_size is None else max(1, int(batch_size))
        self._src_cache: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self._raw: dict[tuple[str, str], torch.Tensor] = {}
        self._values: dict[tuple[str, str], torch.Tensor] = {}

        with torch.inference_mode():
            clean_logits = self._last_logits(self.clean_tokens, noise=False)
            corrupt_logits = self._last_logits(self.corrupt_tokens, noise=self.embed_noise is not None)
        # cloned outside inference mode: ordinary tensors the caller may modify
        self.clean_logits, self.corrupt_logits = clean_logits.clone(), corrupt_logits.clone()
        self.clean_metrics = (self.clean_logits.gather(1, expect.unsqueeze(1))
                              - self.clean_logits.gather(1, foil.unsqueeze(1))).squeeze(1)
        self.corrupt_metrics = (self.corrupt_logits.gather(1, expect.unsqueeze(1))
                                - self.corrupt_logits.gather(1, foil.unsqueeze(1))).squeeze(1)

    # ---- basic runs -------------------------------------------------------------------------

    def _rows(self) -> int:
        return self._rows_per_batch(True)

    def _noise_hook(self, samples: torch.Tensor):
        """samples: row -> sample index, on the model's device."""
        noise = self.embed_noise[samples]

        def hook(act, hook=None):
            return act + noise.to(act.dtype)
        return hook

    def _last_logits(self, tokens: torch.Tensor, noise: bool) -> torch.Tensor:
        out = []
        rows = self._rows()
        for start in range(0, tokens.shape[0], rows):
            samples = torch.arange(start, min(start + rows, tokens.shape[0]), device=tokens.device)
            hooks = [("hook_embed", self._noise_hook(samples))] if noise else []
            logits = self.model.run_with_hooks(tokens[samples], fwd_hooks=hooks)
            out.append(logits[:, -1].detach().float())
        return torch.cat(out).cpu()  # one transfer

    def _metrics(self, last: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        """m per row: last[r, expect[s_r]] - last[r, foil[s_r]] (float32, on last's device).
        samples: row -> sample index, on last's device."""
        e = self._expect_dev[samples].unsqueeze(1)
        f = self._foil_dev[samples].unsqueeze(1)
        return (last.gather(1, e).float() - last.gather(1, f).float()).squeeze(1)

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

    def _source_acts(self, component: str, run: str) -> dict[str, torch.Tensor]:
        """{hook name: [S, ...]} activations of the clean or corrupted (+ noise) run, every layer."""
        key = (component, run)
        if key not in self._src_cache:
            tokens = self.clean_tokens if run == "clean" else self.corrupt_tokens
            noise = run == "corrupt" and self.embed_noise is not None
            names = [_HOOK[component].format(l) for l in range(self.n_layers)]
            wanted = set(names)
            parts: dict[str, list[torch.Tensor]] = {nm: [] for nm in names}
            rows = self._rows()
            with torch.inference_mode():
                for start in range(0, self.n_samples, rows):
                    samples = torch.arange(start, min(start + rows, self.n_samples), device=tokens.device)
                    hooks = [("hook_embed", self._noise_hook(samples))] if noise else []
                    with self.model.hooks(fwd_hooks=hooks):
                        _, cache = self.model.run_with_cache(tokens[samples],
                                                             names_filter=lambda nm: nm in wanted)
                    for nm in names:
                        parts[nm].append(cache[nm].detach().clone())
                self._src_cache[key] = {nm: torch.cat(parts[nm]) for nm in names}
        return self._src_cache[key]

    def _norm_cells(self, component: str, cells) -> list[tuple]:
        return [self._norm_cell(component, c) for c in cells]

    def _run_rows(self, component: str, direction: str, rows: Sequence[tuple[int, Sequence[tuple]]]
                  ) -> torch.Tensor:
        """Patched metric for each row (sample, cells): the sample's base run with all of ``cells``
        patched from the same sample's source run.  Batched, grouped by (first) layer."""
        if not rows:
            return torch.empty(0, dtype=torch.float32, device="cpu")
        if direction == "denoise":
            base, src_run, noise = self.corrupt_tokens, "clean", self.embed_noise is not None
        else:
            base, src_run, noise = self.clean_tokens, "corrupt", False
        src = self._source_acts(component, src_run)
        per_batch = self._rows()
        order = sorted(range(len(rows)), key=lambda i: (min(c[0] for c in rows[i][1]), rows[i][0], i))
        parts: list[torch.Tensor] = []
        with torch.inference_mode():
            for start in range(0, len(order), per_batch):
                chunk = order[start:start + per_batch]
                samples = torch.tensor([rows[i][0] for i in chunk], dtype=torch.long, device=base.device)
                by_layer: dict[int, list] = {}
                for r, i in enumerate(chunk):
                    s = rows[i][0]
                    for c in rows[i][1]:
                        by_layer.setdefault(c[0], []).append((r, s, c))
                hooks = [("hook_embed", self._noise_hook(samples))] if noise else []
                for l in sorted(by_layer):
                    name = _HOOK[component].format(l)
                    hooks.append((name, _make_batch_hook(component, by_layer[l], src[name])))
                logits = self.model.run_with_hooks(base[samples], fwd_hooks=hooks)
                parts.append(self._metrics(logits[:, -1], samples.to(logits.device)))
        out = torch.empty(len(rows), dtype=torch.float32, device="cpu")
        out[torch.tensor(order, dtype=torch.long, device="cpu")] = torch.cat(parts).cpu()  # one transfer
        return out

    def _before_diff(self, s: int, cell: tuple) -> bool:
        """The cell patches only positions before sample s's first difference (value exactly 0)."""
        pos = cell[-1] if len(cell) == 3 else cell[1]
        return pos is not None and pos < int(self.first_diff[s])

    def _check(self, component: str, direction: str) -> None:
        _check_component(component)
        _check_direction(direction)
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
            # Cells before a sample's first difference: the unpatched run, exactly.
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

    def cells_value(self, component: str, cells, direction: str = "denoise") -> torch.Tensor:
        """Normalized values [S, len(cells)], each cell patched on its own in each sample.

        cells: (layer, position) for resid/attn_out/mlp_out; (layer, head, position_or_None) for heads."""
        self._check(component, direction)
        norm = self._norm_cells(component, cells)
        S = self.n_samples
        raw = self._base_metrics(direction).reshape(S, 1).expand(S, len(norm)).clone()
        if not norm:
            return raw
        rows, where = [], []
        for s in range(S):
            for j, c in enumerate(norm):
                if not self._before_diff(s, c):
                    rows.append((s, [c]))
                    where.append((s, j))
        if rows:
            idx = torch.tensor(where, dtype=torch.long, device="cpu")
            raw[idx[:, 0], idx[:, 1]] = self._run_rows(component, direction, rows)
        return self._normalize(raw, direction)

    def joint(self, component: str, cells, direction: str = "denoise") -> torch.Tensor:
        """Normalized values [S]: per sample, ONE run with all ``cells`` patched together."""
        self._check(component, direction)
        norm = self._norm_cells(component, cells)
        if not norm:
            raise InterpError(f"joint patch of {component!r} needs at least one cell")
        S = self.n_samples
        raw = self._base_metrics(direction).clone()
        rows, where = [], []
        for s in range(S):
            cs = [c for c in norm if not self._before_diff(s, c)]
            if cs:
                rows.append((s, cs))
                where.append(s)
        if rows:
            raw[torch.tensor(where, dtype=torch.long, device="cpu")] = self._run_rows(component, direction, rows)
        return self._normalize(raw, direction)


def _make_batch_hook(component: str, entries: list, src: torch.Tensor):
    """A hook writing, into each batch row, the source activation of that row's sample.

    entries: [(row, sample, cell)]; cell = (layer, pos) or (layer, head, pos_or_None).
    src: the source run's activation at this hook point, [S, pos, ...]."""
    dev = src.device
    if component == "heads":
        whole = [(r, s, c[1]) for r, s, c in entries if c[2] is None]
        single = [(r, s, c[1], c[2]) for r, s, c in entries if c[2] is not None]
        w = torch.tensor(whole, dtype=torch.long, device=dev).reshape(-1, 3)
        o = torch.tensor(single, dtype=torch.long, device=dev).reshape(-1, 4)

        def hook(act, hook=None):  # in place, as TransformerLens' patch setters do
            if w.shape[0]:
                act[w[:, 0], :, w[:, 2]] = src[w[:, 1], :, w[:, 2]].to(act.dtype)
            if o.shape[0]:
                act[o[:, 0], o[:, 3], o[:, 2]] = src[o[:, 1], o[:, 3], o[:, 2]].to(act.dtype)
            return act
        return hook

    t = torch.tensor([(r, s, c[1]) for r, s, c in entries], dtype=torch.long, device=dev).reshape(-1, 3)
    rows, samples, poss = t[:, 0], t[:, 1], t[:, 2]

    def hook(act, hook=None):
        act[rows, poss] = src[samples, poss].to(act.dtype)
        return act
    return hook
