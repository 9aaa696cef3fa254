"""Activation patching engine: exact TransformerLens semantics, skipping only provably-redundant work.

A :class:`Patcher` holds one clean/corrupted prompt pair. Every value it returns equals what
``transformer_lens.patching.get_act_patch_*`` returns for the same cell with the metric

    denoise:  (m_patched - m_corrupt) / (m_clean - m_corrupt)   (corrupted run, clean activation)
    noise:    (m_clean - m_patched) / (m_clean - m_corrupt)     (clean run, corrupted activation)

where ``m = logit[expect] - logit[foil]`` at the last position.

Two engines compute the patched metrics:

* the *fast* engine (:mod:`interptest._patch_fast`) re-implements the forward of GPT-2, Llama-style
  and GPT-NeoX-style models from the underlying Hugging Face weights; it recomputes only the layers
  at and after the patch, only the positions at and after the patched one (earlier positions' keys
  and values come from the unpatched run), and only the two logits the metric reads.  It is
  self-checked against the bridge's own logits when a Patcher is built and switched off if it
  disagrees.
* the *generic* engine runs the bridge with hooks, many patched cells stacked in one batch with
  one hook per layer.  It covers every architecture TransformerLens supports.

Both skip positions before the first differing token (the patched activation equals the
unpatched one there, so the value is exactly 0).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from interptest.errors import InterpError

COMPONENTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "heads")
DIRECTIONS = ("denoise", "noise")

# TransformerLens hook name of each component (layer formatted in).
_HOOK = {
    "resid_pre": "blocks.{}.hook_resid_pre",
    "resid_mid": "blocks.{}.hook_resid_mid",
    "resid_post": "blocks.{}.hook_resid_post",
    "attn_out": "blocks.{}.hook_attn_out",
    "mlp_out": "blocks.{}.hook_mlp_out",
    "heads": "blocks.{}.attn.hook_z",
}

# Memory budget (bytes) used to size batches when batch_size is not given.
_BATCH_BUDGET = 256 * 2**20
_MAX_ROWS = 128


@dataclass(frozen=True)
class PatchMap:
    component: str
    direction: str
    values: torch.Tensor  # normalized, float32, CPU; [n_layers, n_positions] (heads: [n_layers, n_heads])
    raw: torch.Tensor  # patched logit differences, same shape
    tokens: list[str]
    clean_metric: float
    corrupt_metric: float


def _model_name(model) -> str:
    cfg = getattr(model, "cfg", None)
    return str(getattr(cfg, "model_name", None) or type(model).__name__)


def _check_component(component: str) -> None:
    if component not in COMPONENTS:
        raise InterpError(
            f"unknown component {component!r}; valid components: {', '.join(COMPONENTS)}")


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise InterpError(
            f"unknown direction {direction!r}; valid directions: {', '.join(DIRECTIONS)} "
            "(denoise = patch clean into corrupted, 'recovers'; noise = patch corrupted into clean, 'breaks')")


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


def _as_tokens(tokens: Any, what: str) -> torch.Tensor:
    """[1, n] int64 token ids on the CPU (bookkeeping copy; the engines move them to the device once)."""
    t = torch.as_tensor(tokens, device="cpu") if not isinstance(tokens, torch.Tensor) else tokens.detach().cpu()
    if t.ndim == 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 1 or t.is_floating_point() or t.numel() == 0:
        raise InterpError(f"{what} tokens must be a non-empty 1-D integer tensor (or [1, n]), "
                          f"got shape {tuple(t.shape)}")
    return t.long().reshape(1, -1)


def _str_tokens(model, tokens: torch.Tensor) -> list[str]:
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
            f"  clean     ({clean.shape[-1]}): {_str_tokens(model, clean[:1])}\n"
            f"  corrupted ({corrupt.shape[-1]}): {_str_tokens(model, corrupt[:1])}")


def check_answer_ids(model, expect: torch.Tensor, foil: torch.Tensor, per_sample: bool) -> None:
    """expect/foil: one id per sample. Refuse a zero logit difference by construction, ids outside the
    vocabulary, and a model in training mode; ``per_sample`` names the offending sample."""
    def where(s: int) -> str:
        return f"sample {s}: " if per_sample else ""

    same = (expect == foil).nonzero()
    if same.numel():
        s = int(same[0, 0])
        tid = int(expect[s])
        raise InterpError(
            f"{where(s)}expect and foil are the same token (id {tid}"
            f"{', ' + repr(_str_tokens(model, torch.tensor([[tid]], device='cpu'))[0])}); "
            "the logit difference would be 0 — pick a different foil")
    if getattr(model, "training", False):
        raise InterpError("activation patching needs the model in eval mode; call model.eval() first")
    d_vocab = int(getattr(model.cfg, "d_vocab", 0) or 0)
    if d_vocab:
        for name, ids in (("expect", expect), ("foil", foil)):
            bad = ((ids < 0) | (ids >= d_vocab)).nonzero()
            if bad.numel():
                s = int(bad[0, 0])
                raise InterpError(f"{where(s)}{name} token id {int(ids[s])} is outside the vocabulary "
                                  f"(0..{d_vocab - 1})")


class _PatchShape:
    """What Patcher and BatchPatcher share: cell validation, batch sizing, component availability.
    Subclasses set model, batch_size, n_layers, n_positions and n_heads."""

    def _check_available(self, component: str) -> None:
        _check_component(component)
        name = _HOOK[component].format(0)
        hook_dict = getattr(self.model, "hook_dict", {})
        if name not in hook_dict:
            extra = ""
            if component == "resid_mid" and getattr(self.model.cfg, "parallel_attn_mlp", False):
                extra = " (parallel attention/MLP blocks have no residual stream between them)"
            avail = [c for c in COMPONENTS if _HOOK[c].format(0) in hook_dict]
            raise InterpError(
                f"component {component!r} is not available on model {_model_name(self.model)}{extra}; "
                f"available: {', '.join(avail)}")

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
        if self.batch_size is not None:
            return self.batch_size
        cfg = self.model.cfg
        d = int(cfg.d_model)
        d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * d)
        n = self.n_positions
        per_row = n * (8 * d + 2 * d_mlp + 2 * self.n_heads * n) * 4
        if generic:
            per_row += n * int(cfg.d_vocab) * 4
        return max(1, min(_MAX_ROWS, _BATCH_BUDGET // max(per_row, 1)))


class Patcher(_PatchShape):
    """One clean/corrupted prompt pair.

    Runs the clean and corrupted forwards once, caches only what the requested sweeps need and
    memoizes sweeps.  All claims of one behavior share one Patcher.
    """

    def __init__(self, model, clean_tokens, corrupt_tokens, expect_id: int, foil_id: int, *,
                 batch_size: int | None = None, engine: str = "auto"):
        """``engine``: "auto" (fast engine where it is supported and passes its self-check,
        else generic), "generic" (bridge hooks only) or "fast" (raise if unsupported)."""
        if engine not in ("auto", "generic", "fast"):
            raise InterpError(f"unknown engine {engine!r}; valid: auto, generic, fast")
        self.model = model
        clean = _as_tokens(clean_tokens, "clean")
        corrupt = _as_tokens(corrupt_tokens, "corrupted")
        check_same_length(model, clean, corrupt)
        expect_id, foil_id = int(expect_id), int(foil_id)
        check_answer_ids(model, torch.tensor([expect_id], device="cpu"), torch.tensor([foil_id], device="cpu"),
                         per_sample=False)
        cfg = model.cfg
        self.device = device = model_device(model)
        self.clean_tokens = clean.to(device)
        self.corrupt_tokens = corrupt.to(device)
        self.expect_id, self.foil_id = expect_id, foil_id
        self.n_layers = int(cfg.n_layers)
        self.n_heads = int(cfg.n_heads)
        self.n_positions = int(clean.shape[1])
        diff = (clean[0] != corrupt[0]).nonzero()
        self.first_diff = int(diff[0, 0]) if diff.numel() else self.n_positions
        self.batch_size = None if batch_size is None else max(1, int(batch_size))
        self._src_cache: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        self._sweeps: dict[tuple[str, str], PatchMap] = {}
        self._str_tokens: list[str] | None = None

        with torch.inference_mode():
            self.clean_logits = self._last_logits(self.clean_tokens)
            self.corrupt_logits = self._last_logits(self.corrupt_tokens)
        self.clean_metric = self._metric(self.clean_logits)
        self.corrupt_metric = self._metric(self.corrupt_logits)

        self._fast = None
        self.engine = "generic"
        self.engine_note = "engine='generic' requested" if engine == "generic" else ""
        if engine != "generic":
            from interptest import _patch_fast

            try:
                with torch.inference_mode():
                    fast = _patch_fast.FastEngine.build(model, self.clean_tokens, self.corrupt_tokens,
                                                        expect_id, foil_id)
                    fast.self_check(self.clean_logits, self.corrupt_logits)
                self._fast = fast
                self.engine = "fast"
            except _patch_fast.Unsupported as e:
                self.engine_note = str(e)
                if engine == "fast":
                    raise InterpError(f"fast patching engine unavailable for {_model_name(model)}: {e}") from None

    # ---- basic runs -------------------------------------------------------------------------

    def _last_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.model(tokens)
        return logits[0, -1].detach().float().cpu().clone()

    def _metric(self, last_logits: torch.Tensor) -> float:
        return float(last_logits[self.expect_id] - last_logits[self.foil_id])

    @property
    def tokens(self) -> list[str]:
        if self._str_tokens is None:
            self._str_tokens = _str_tokens(self.model, self.clean_tokens)
        return self._str_tokens

    def _runs(self, direction: str):
        """(base tokens, source tokens, base name, source name) for a direction."""
        if direction == "denoise":
            return self.corrupt_tokens, self.clean_tokens, "corrupt", "clean"
        return self.clean_tokens, self.corrupt_tokens, "clean", "corrupt"

    def _normalize(self, raw: torch.Tensor, direction: str) -> torch.Tensor:
        mc, mx = self.clean_metric, self.corrupt_metric
        raw64 = raw.double()
        den = torch.tensor(mc - mx, dtype=torch.float64, device="cpu")
        num = raw64 - mx if direction == "denoise" else mc - raw64
        return (num / den).float()  # den == 0 -> inf / nan, by design

    # ---- public API -------------------------------------------------------------------------

    def sweep(self, component: str, direction: str = "denoise") -> PatchMap:
        _check_component(component)
        _check_direction(direction)
        key = (component, direction)
        if key in self._sweeps:
            return self._sweeps[key]
        self._check_available(component)
        L, n, fd = self.n_layers, self.n_positions, self.first_diff
        base_metric = self.corrupt_metric if direction == "denoise" else self.clean_metric
        if component == "heads":
            cells = [(l, h, None) for l in range(L) for h in range(self.n_heads)]
            shape = (L, self.n_heads)
            raw = torch.full(shape, base_metric, dtype=torch.float32, device="cpu")
            if fd < n:
                raw.view(-1)[:] = self._raw_cells(component, cells, direction)
        else:
            shape = (L, n)
            raw = torch.full(shape, base_metric, dtype=torch.float32, device="cpu")  # before first_diff: unchanged
            cells = [(l, p) for l in range(L) for p in range(fd, n)]
            if cells:
                raw[:, fd:] = self._raw_cells(component, cells, direction).view(L, n - fd)
        values = self._normalize(raw, direction)
        if component != "heads" and fd > 0:
            # Patching identical activations is the identity: the value is exactly 0 (nan when undefined).
            values[:, :fd] = self._normalize(torch.tensor([base_metric], device="cpu"), direction)
        pm = PatchMap(component=component, direction=direction, values=values, raw=raw,
                      tokens=list(self.tokens), clean_metric=self.clean_metric,
                      corrupt_metric=self.corrupt_metric)
        self._sweeps[key] = pm
        return pm

    def cells_value(self, component: str, cells, direction: str = "denoise") -> torch.Tensor:
        """Normalized values of individual cells (each patched on its own), batched.

        cells: (layer, position) for resid/attn_out/mlp_out; (layer, head, position_or_None) for heads."""
        _check_component(component)
        _check_direction(direction)
        self._check_available(component)
        norm = [self._norm_cell(component, c) for c in cells]
        if not norm:
            return torch.zeros(0, device="cpu")
        raw = self._raw_cells(component, norm, direction)
        return self._normalize(raw, direction)

    def joint(self, component: str, cells, direction: str = "denoise") -> float:
        """ONE forward with all ``cells`` patched together; the normalized value."""
        _check_component(component)
        _check_direction(direction)
        self._check_available(component)
        norm = [self._norm_cell(component, c) for c in cells]
        if not norm:
            raise InterpError(f"joint patch of {component!r} needs at least one cell")
        base, _src, _bn, sn = self._runs(direction)
        src = self._source_acts(component, sn)
        with torch.inference_mode():
            by_layer: dict[int, list] = {}
            for c in norm:
                by_layer.setdefault(c[0], []).append(c)
            hooks = [(_HOOK[component].format(l), _make_hook(component, [(0, c) for c in cs],
                                                             src[_HOOK[component].format(l)]))
                     for l, cs in sorted(by_layer.items())]
            logits = self.model.run_with_hooks(base, fwd_hooks=hooks)
            last = logits[0, -1].float().cpu()
        raw = torch.tensor([self._metric(last)], device="cpu")
        return float(self._normalize(raw, direction)[0])

    # ---- internals --------------------------------------------------------------------------

    def _raw_cells(self, component: str, cells: Sequence[tuple], direction: str) -> torch.Tensor:
        """Patched metric m for each cell, patched individually."""
        with torch.inference_mode():
            if self._fast is not None:
                return self._fast.run_cells(component, cells, direction, self._rows_per_batch(False))
            return self._generic_cells(component, cells, direction)

    def _source_acts(self, component: str, run: str) -> dict[str, torch.Tensor]:
        key = (component, run)
        if key not in self._src_cache:
            tokens = self.clean_tokens if run == "clean" else self.corrupt_tokens
            names = {_HOOK[component].format(l) for l in range(self.n_layers)}
            with torch.inference_mode():
                _, cache = self.model.run_with_cache(tokens, names_filter=lambda nm: nm in names)
                self._src_cache[key] = {nm: cache[nm].detach().clone() for nm in names}
        return self._src_cache[key]

    def _generic_cells(self, component: str, cells: Sequence[tuple], direction: str) -> torch.Tensor:
        base, _src, _bn, sn = self._runs(direction)
        src = self._source_acts(component, sn)
        rows = self._rows_per_batch(True)
        parts: list[torch.Tensor] = []
        # Group by layer so one batch touches few hook points; keep the caller's order in `out`.
        order = sorted(range(len(cells)), key=lambda i: (cells[i][0], i))
        for start in range(0, len(order), rows):
            chunk = order[start:start + rows]
            by_layer: dict[int, list] = {}
            for r, i in enumerate(chunk):
                by_layer.setdefault(cells[i][0], []).append((r, cells[i]))
            hooks = [(_HOOK[component].format(l), _make_hook(component, rc, src[_HOOK[component].format(l)]))
                     for l, rc in by_layer.items()]
            tokens = base.expand(len(chunk), -1)
            logits = self.model.run_with_hooks(tokens, fwd_hooks=hooks)
            last = logits[:, -1].float()
            parts.append(last[:, self.expect_id] - last[:, self.foil_id])
        out = torch.empty(len(cells), dtype=torch.float32, device="cpu")
        out[torch.tensor(order, dtype=torch.long, device="cpu")] = torch.cat(parts).cpu()  # one transfer
        return out


def _make_hook(component: str, row_cells: list, src: torch.Tensor):
    """A hook that writes the source activation into the given batch rows.

    row_cells: [(row, cell)]; cell = (layer, pos) or (layer, head, pos_or_None)."""
    if component == "heads":
        rows = [r for r, _ in row_cells]
        heads = [c[1] for _, c in row_cells]
        poss = [c[2] for _, c in row_cells]

        def hook(act, hook=None):  # in place, as TransformerLens' patch setters do
            for r, h, p in zip(rows, heads, poss):
                if p is None:
                    act[r, :, h] = src[0, :, h].to(act.dtype)
                else:
                    act[r, p, h] = src[0, p, h].to(act.dtype)
            return act
        return hook

    rows = torch.tensor([r for r, _ in row_cells], dtype=torch.long, device=src.device)
    poss = torch.tensor([c[1] for _, c in row_cells], dtype=torch.long, device=src.device)

    def hook(act, hook=None):
        act[rows, poss] = src[0, poss].to(act.dtype)
        return act
    return hook


def _first_token(model, s: str, what: str) -> int:
    toks = model.to_tokens(s, prepend_bos=False)
    if toks.numel() == 0:
        raise InterpError(f"{what} {s!r} tokenizes to nothing")
    return int(toks[0, 0])


def patch_sweep(model, prompt: str, corrupt: str, component: str, expect: str, foil: str | None = None,
                direction: str = "denoise", batch_size: int | None = None) -> PatchMap:
    """Sweep one component over (layer, position) — or (layer, head) for ``heads``."""
    _check_component(component)
    _check_direction(direction)
    os.environ.setdefault("TQDM_DISABLE", "1")
    with torch.inference_mode():
        clean = model.to_tokens(prompt)
        corr = model.to_tokens(corrupt)
        expect_id = _first_token(model, expect, "expect")
        if foil is None:
            if clean.shape[-1] != corr.shape[-1]:
                foil_id = -1  # the length error below is the one to report
            else:
                foil_id = int(model(corr)[0, -1].argmax())
        else:
            foil_id = _first_token(model, foil, "foil")
    if foil is None and foil_id == expect_id:
        raise InterpError(
            f"expect {expect!r} is already the corrupted prompt's top-1 token, so it cannot be the foil; "
            "pass foil= explicitly")
    if foil_id < 0:
        foil_id = expect_id + 1
    return Patcher(model, clean, corr, expect_id, foil_id, batch_size=batch_size).sweep(component, direction)
