"""Path patching, declared ablations and node-set runs, through the bridge's hooks.

One engine, :class:`CircuitPatcher`, for S prompt pairs of one length (a single prompt is S = 1).
Every forward it runs is the model's own forward with hooks; the rows of a batch are
(sample, set) pairs, so samples × sets (senders × receivers × random sets) share forwards.

* **Node-set runs** (:meth:`CircuitPatcher.patch_sets`): a *base* run (clean or corrupted) with the
  cells of each set replaced by a *source* — the clean or corrupted run's value, the ``mean`` over the
  family's clean samples (or over reference prompts), or ``zero``. With ``complement=True`` a set is
  what is *kept*: every node outside it (every attention head's output ``attn.hook_z`` and every
  MLP's output ``hook_mlp_out``, at every position) is replaced instead. A circuit's faithfulness is
  read off these runs.
* **Path patching** (:meth:`CircuitPatcher.path`), Wang et al. 2022 (appendix) and Goldowsky-Dill et
  al. 2023. Step 1: run the base with the senders' outputs replaced by their source values and every
  *other* attention head's output frozen at its base value — MLPs and LayerNorms recompute (the IOI
  convention) — and record each receiver's input: a head's query, key or value (``attn.hook_q`` /
  ``hook_k`` / ``hook_v`` of that head; the projection of its input is a function of that input alone,
  so patching it equals patching the head's input), an MLP's input (``mlp.hook_in``), or the final
  residual (``ln_final.hook_in``). Step 2: run the base with only those receiver inputs replaced by
  the recorded values. On grouped-query models, ``k``/``v`` receivers are the key/value head that the
  named query head reads. Both steps share one forward: its rows are step 1's (sender set, sample)
  runs and step 2's (sender set, sample, receiver set) runs, going through the layers together, and
  at a receiver's hook each step-2 row takes its step-1 row's value from that same call. Where the fast
  engine covers the model, :meth:`CircuitPatcher.path` runs there instead
  (:meth:`~interptest.patching.fast.FastEngine.run_path_rows`: step 1 needs no attention, since every
  head's output is known) for receiver sets of one kind and layer; mixed sets, and q/k receivers on
  layers with q/k norms, stay here.
* **One cached forward per prompt set**: the first time a run (clean, corrupted, reference) is
  needed, every node's hook (each layer's ``attn.hook_z`` and ``hook_mlp_out``) is recorded, so the
  sources of every later set, path and ablation come from that forward; the all-ablated run is kept
  per ablation.

Values come back raw (patched logit differences m = logit[expect] − logit[foil] at the last
position, float64 on the CPU); :func:`normalize` turns them into the claims' fractions.

Devices: masks and index tensors are created on the model's device; bookkeeping (results, set
lists) on the CPU, explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from interptest import components
from interptest.errors import InterpError
from interptest.patching import fast as _fast
from interptest.patching import model_device
from interptest.patching.base import MAX_ROWS, MAX_ROWS_FAST, rows_within_budget
from interptest.tl_compat import hook_for

__all__ = ["ABLATIONS", "CIRCUIT_ENGINES", "CircuitPatcher", "RECEIVER_KINDS", "normalize"]

ABLATIONS = ("resample", "mean", "zero")
# "auto": node sets on the fast engine where it covers the model and passes its self-check, else hooks
CIRCUIT_ENGINES = ("auto", "hooks", "fast")
NODE_COMPONENTS = ("heads", "mlp_out")
RECEIVER_KINDS = ("q", "k", "v", "mlp_in", "logits")

# An edit is (component, cell): ("heads", (layer, head, position or None)) or
# (per-position component, (layer, position or None)); None = every position.
# A receiver is ("q" | "k" | "v", layer, head, position or None), ("mlp_in", layer, position or None)
# or ("logits", position or None).


def normalize(raw: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor, direction: str) -> torch.Tensor:
    """Patched metrics [S, ...] as fractions of m_clean − m_corrupt (per sample, float64):
    denoise (recovers) (m − m_corrupt) / Δ, noise (breaks) (m_clean − m) / Δ."""
    shape = (-1,) + (1,) * (raw.ndim - 1)
    mc, mx = clean.double().reshape(shape), corrupt.double().reshape(shape)
    num = raw.double() - mx if direction == "denoise" else mc - raw.double()
    return num / (mc - mx)


class CircuitPatcher:
    """S clean (and corrupted) prompts of one length; node-set runs and path patching over them.

    clean_ids, corrupt_ids: [S, n] token ids (corrupt_ids may be None: then only ``zero`` and ``mean``
    sources exist); expect_ids, foil_ids: S ids; embed_noise: optional [S, n, d_model] added at
    ``hook_embed`` to every corrupted run; reference_ids: optional [R, n] prompts whose clean mean is
    the ``mean`` source (default: the mean over the S clean samples); batch_size: rows per forward."""

    def __init__(
        self,
        model,
        clean_ids,
        corrupt_ids,
        expect_ids,
        foil_ids,
        *,
        embed_noise=None,
        reference_ids=None,
        batch_size: int | None = None,
        engine: str = "auto",
    ):
        if engine not in CIRCUIT_ENGINES:
            raise InterpError(f"unknown circuit engine {engine!r}; valid: {', '.join(CIRCUIT_ENGINES)}")
        if getattr(model, "training", False):
            raise InterpError("activation patching needs the model in eval mode; call model.eval() first")
        self.model = model
        self.device = device = model_device(model)
        cfg = model.cfg
        clean = torch.as_tensor(clean_ids, device="cpu").long()
        clean = clean.reshape(-1, clean.shape[-1])
        self.n_samples, self.n_positions = int(clean.shape[0]), int(clean.shape[1])
        self.tokens = {"clean": clean.to(device)}
        if corrupt_ids is not None:
            corrupt = torch.as_tensor(corrupt_ids, device="cpu").long().reshape(clean.shape)
            self.tokens["corrupt"] = corrupt.to(device)
        if reference_ids is not None:
            reference = torch.as_tensor(reference_ids, device="cpu").long()
            if reference.ndim != 2 or reference.shape[1] != self.n_positions:
                raise InterpError(
                    f"reference prompts must be [R, {self.n_positions}] token ids, got {tuple(reference.shape)}"
                )
            self.tokens["reference"] = reference.to(device)
        self.expect = torch.as_tensor(expect_ids, device="cpu").long().reshape(-1).to(device)
        self.foil = torch.as_tensor(foil_ids, device="cpu").long().reshape(-1).to(device)
        self.noise = None if embed_noise is None else embed_noise.to(device)
        self.n_layers, self.n_heads = int(cfg.n_layers), int(cfg.n_heads)
        self.n_kv = int(getattr(cfg, "n_key_value_heads", None) or self.n_heads)
        if self.n_heads % self.n_kv:
            raise InterpError(f"{self.n_heads} query heads cannot share {self.n_kv} key/value heads evenly")
        self.batch_size = batch_size
        self._acts: dict[tuple[str, str], torch.Tensor] = {}
        self._metrics: dict[str, torch.Tensor] = {}
        self._memo: dict = {}
        self._logits: dict[str, torch.Tensor] = {}  # the bridge's last-position logits (the fast self-check)
        self.engine = engine
        self.engine_note = "engine='hooks' requested" if engine == "hooks" else ""
        self._fast: _fast.FastEngine | None = None
        self._fast_tried = engine == "hooks"
        # what ran: "fast" / "hooks" (node sets on either engine), "fast-paths" / "paths" (paths on either)
        self._ran: set[str] = set()

    # ---- unpatched runs ---------------------------------------------------------------------

    @property
    def rows_per_batch(self) -> int:
        if self.batch_size:
            return int(self.batch_size)
        cfg = self.model.cfg
        d = int(cfg.d_model)
        d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * d)
        n = self.n_positions
        per_row = n * (10 * d + 2 * d_mlp + 2 * self.n_heads * n + int(cfg.d_vocab)) * 4
        if "unembed.hook_in" in getattr(self.model, "hook_dict", {}):  # _last_only: one position unembedded
            per_row -= (n - 1) * int(cfg.d_vocab) * 4
        return rows_within_budget(self, per_row, MAX_ROWS)

    def kv_head(self, head: int) -> int:
        """The key/value head that query head ``head`` reads (itself without grouped-query attention)."""
        return head // (self.n_heads // self.n_kv)

    def _embed_hooks(self, run: str, samples: torch.Tensor) -> list:
        if run != "corrupt" or self.noise is None:
            return []
        noise = self.noise[samples]

        def add_noise(act, hook=None):
            return act + noise.to(act.dtype)

        return [("hook_embed", add_noise)]

    def node_hooks(self) -> list[str]:
        """Every node's hook: each layer's head outputs (``attn.hook_z``) and MLP output (``hook_mlp_out``)."""
        return [self._hook(c, layer) for layer in range(self.n_layers) for c in ("heads", "mlp_out")]

    def _unpatched(self, run: str, names: Sequence[str]) -> None:
        """Cache the activations ``names`` of every prompt of ``run`` (and its metrics), on the device.

        One forward per prompt set: the first forward of a run records every node's hook
        (:meth:`node_hooks`) besides ``names``, so the sources of every node set, path and ablation a
        behavior's claims ask for later come from that one forward."""
        if run not in self.tokens:
            raise InterpError(
                f"no {run} prompts to run" + (": the behavior has no corruption" if run == "corrupt" else "")
            )
        missing = [nm for nm in names if (run, nm) not in self._acts]
        if not missing and (run == "reference" or run in self._metrics):
            return
        missing += [nm for nm in self.node_hooks() if (run, nm) not in self._acts and nm not in missing]
        tokens = self.tokens[run]
        wanted = set(missing)
        parts: dict[str, list] = {nm: [] for nm in missing}
        metrics, last = [], []
        with torch.inference_mode():
            for start in range(0, tokens.shape[0], self.rows_per_batch):
                samples = torch.arange(start, min(start + self.rows_per_batch, tokens.shape[0]), device=self.device)
                with self.model.hooks(fwd_hooks=self._embed_hooks(run, samples) + self._last_only()):
                    logits, cache = self.model.run_with_cache(tokens[samples], names_filter=lambda nm: nm in wanted)
                for nm in missing:
                    parts[nm].append(cache[nm].detach().clone())
                if run != "reference":
                    metrics.append(self._metric(logits, samples))
                    last.append(logits[:, -1].float().cpu())
        for nm in missing:
            self._acts[(run, nm)] = torch.cat(parts[nm])
        if run != "reference" and run not in self._metrics:
            self._metrics[run] = torch.cat(metrics).double().cpu()
            self._logits[run] = torch.cat(last)

    def metrics(self, run: str) -> torch.Tensor:
        """m = logit[expect] − logit[foil] at the last position of each clean or corrupted prompt [S]
        (float64, CPU)."""
        self._unpatched(run, [])
        return self._metrics[run].clone()

    def normalize(self, raw: torch.Tensor, direction: str) -> torch.Tensor:
        """Raw patched metrics [S, ...] of these samples as fractions of m_clean − m_corrupt (:func:`normalize`)."""
        return normalize(raw, self.metrics("clean"), self.metrics("corrupt"), direction)

    def _last_only(self) -> list:
        """Unembed the last position only (the metric reads nothing else): a third of a gpt2-small forward
        at 16 tokens. Bit for bit the full forward's last row."""
        if "unembed.hook_in" not in getattr(self.model, "hook_dict", {}):
            return []
        return [("unembed.hook_in", lambda act, hook=None: act[:, -1:])]

    def _metric(self, logits: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        e, f = self.expect[samples].unsqueeze(1), self.foil[samples].unsqueeze(1)
        return (last.gather(1, e).float() - last.gather(1, f).float()).squeeze(1)

    def source(self, source: str, name: str) -> torch.Tensor:
        """The activation at hook ``name`` that a source puts in place, [S, n, ...] (a view for mean
        and zero): the clean or corrupted run's own (``resample`` is the corrupted run), the mean over
        the reference prompts (else over the S clean samples) at each position, or zeros."""
        if source == "resample":
            source = "corrupt"
        if source in ("clean", "corrupt"):
            self._unpatched(source, [name])
            return self._acts[(source, name)]
        if source == "mean":
            key = ("mean", name)
            if key not in self._acts:
                run = "reference" if "reference" in self.tokens else "clean"
                self._unpatched(run, [name])
                self._acts[key] = self._acts[(run, name)].mean(dim=0, keepdim=True)
            mean = self._acts[key]
            return mean.expand(self.n_samples, *mean.shape[1:])
        if source == "zero":
            self._unpatched("clean", [name])
            like = self._acts[("clean", name)]
            return torch.zeros((1,) + tuple(like.shape[1:]), dtype=like.dtype, device=like.device).expand_as(like)
        raise InterpError(f"unknown source {source!r}; valid: clean, corrupt, {', '.join(ABLATIONS)}")

    # ---- masks ------------------------------------------------------------------------------

    def _hook(self, component: str, layer: int) -> str:
        return components.get(component).hook_name(layer)

    def _shape(self, component: str) -> tuple:
        n = self.n_positions
        return (n, self.n_heads) if component == "heads" else (n,)

    def _positions(self, pos) -> slice | int:
        if pos is None:
            return slice(None)
        pos = int(pos)
        if not -self.n_positions <= pos < self.n_positions:
            raise InterpError(f"position {pos} is out of range (0..{self.n_positions - 1})")
        return pos % self.n_positions

    def _check_layer(self, layer: int) -> int:
        if not -self.n_layers <= int(layer) < self.n_layers:
            raise InterpError(f"layer {layer} is out of range (0..{self.n_layers - 1})")
        return int(layer) % self.n_layers

    def _masks(self, sets: Sequence[Sequence[tuple]], complement: bool) -> dict[str, torch.Tensor]:
        """{hook name: bool [n_sets, n(, H)]}: True where the set's run replaces the activation (on the device)."""
        return {name: m.to(self.device) for name, m in self._cpu_masks(sets, complement).items()}

    def _cpu_masks(self, sets: Sequence[Sequence[tuple]], complement: bool) -> dict[str, torch.Tensor]:
        """:meth:`_masks` on the CPU."""
        masks: dict[str, torch.Tensor] = {}

        def mask(component: str, layer: int) -> torch.Tensor:
            name = self._hook(component, layer)
            if name not in masks:
                masks[name] = torch.full(
                    (len(sets),) + self._shape(component), complement, dtype=torch.bool, device="cpu"
                )
            return masks[name]

        if complement:
            for layer in range(self.n_layers):
                mask("heads", layer)
                mask("mlp_out", layer)
        for j, edits in enumerate(sets):
            for component, cell in edits:
                if component not in components.COMPONENTS:
                    raise InterpError(f"unknown component {component!r}; valid: {', '.join(components.NAMES)}")
                if complement and component not in ("heads", "mlp_out"):
                    raise InterpError(f"circuit nodes are heads and mlp_out, not {component!r}")
                layer = self._check_layer(cell[0])
                m = mask(component, layer)
                if component == "heads":
                    head = int(cell[1])
                    if not 0 <= head < self.n_heads:
                        raise InterpError(f"head {layer}.{head} is out of range (0..{self.n_heads - 1})")
                    m[j, self._positions(cell[2]), head] = not complement
                else:
                    m[j, self._positions(cell[1])] = not complement
        return masks

    # ---- batched forwards -------------------------------------------------------------------

    def _forward(
        self,
        base: str,
        samples: torch.Tensor,
        hooks: list,
        record: Sequence[str] = (),
        stop_at_layer: int | None = None,
    ):
        """One forward of the base prompts ``samples`` with ``hooks``; the metric per row (float32,
        device) and the recorded activations."""
        recorded: dict[str, torch.Tensor] = {}

        def keeper(name: str):  # by the name asked for: an alias (attn.hook_k) has another hook.name
            def keep(act, hook=None):
                recorded[name] = act.detach().clone()
                return act

            return keep

        fwd = self._embed_hooks(base, samples) + list(hooks) + [(name, keeper(name)) for name in record]
        if stop_at_layer is None:
            fwd += self._last_only()
        out = self.model.run_with_hooks(self.tokens[base][samples], fwd_hooks=fwd, stop_at_layer=stop_at_layer)
        metric = None if stop_at_layer is not None else self._metric(out, samples)
        return metric, recorded

    def _rows(self, n_sets: int, samples=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(samples, set indices) of each batch; rows are ordered set-major."""
        samples = list(range(self.n_samples)) if samples is None else list(samples)
        rows = [(s, j) for j in range(n_sets) for s in samples]
        out = []
        for start in range(0, len(rows), self.rows_per_batch):
            chunk = rows[start : start + self.rows_per_batch]
            out.append(
                (
                    torch.tensor([s for s, _ in chunk], dtype=torch.long, device=self.device),
                    torch.tensor([j for _, j in chunk], dtype=torch.long, device=self.device),
                )
            )
        return out

    def patch_sets(
        self, sets: Sequence[Sequence[tuple]], base: str, source: str, *, complement: bool = False
    ) -> torch.Tensor:
        """Patched metrics [S, len(sets)] (float64, CPU): for each set, the base run (``clean`` or
        ``corrupt``) with the set's cells replaced by ``source`` (clean, corrupt, resample, mean,
        zero); with ``complement``, every head and MLP output *outside* the set replaced instead."""
        sets = [tuple(edits) for edits in sets]
        if not sets:
            return torch.empty(self.n_samples, 0, dtype=torch.float64, device="cpu")
        cpu_masks = self._cpu_masks(sets, complement)  # validates every edit first
        if all(c in NODE_COMPONENTS for edits in sets for c, _ in edits) and base in ("clean", "corrupt"):
            fast = self._fast_engine()
            if fast is not None:
                return self._fast_sets(fast, cpu_masks, len(sets), base, source)
        self._ran.add("hooks")
        masks = {name: m.to(self.device) for name, m in cpu_masks.items()}
        self._unpatched(base, [])
        sources = {name: self.source(source, name) for name in masks}
        out = torch.empty(len(sets) * self.n_samples, dtype=torch.float32, device="cpu")
        done = 0
        with torch.inference_mode():
            for samples, set_index in self._rows(len(sets)):
                hooks = [(name, _where_hook(masks[name][set_index], sources[name][samples])) for name in masks]
                metric, _ = self._forward(base, samples, hooks)
                out[done : done + len(samples)] = metric.float().cpu()
                done += len(samples)
        return out.reshape(len(sets), self.n_samples).t().double()

    def path(
        self, sender_sets: Sequence[Sequence[tuple]], receiver_sets: Sequence[Sequence[tuple]], base: str, source: str
    ) -> torch.Tensor:
        """Path-patched metrics [S, len(sender_sets), len(receiver_sets)] (float64, CPU).

        Senders are edits of ``heads`` and ``mlp_out`` (replaced together); receivers are patched
        together (see the module docstring)."""
        sender_sets = [tuple(s) for s in sender_sets]
        receiver_sets = [tuple(r) for r in receiver_sets]
        S = self.n_samples
        if not sender_sets or not receiver_sets:
            return torch.empty(S, len(sender_sets), len(receiver_sets), dtype=torch.float64, device="cpu")
        for edits in sender_sets:
            for component, _ in edits:
                if component not in ("heads", "mlp_out"):
                    raise InterpError(f"path senders are heads and mlp_out, not {component!r}")
        receivers = {r for rs in receiver_sets for r in rs}
        for r in receivers:
            self._receiver_hook(r)  # an unknown receiver or a layer out of range: the same error on both engines
        fast = self._fast_engine() if self.engine != "hooks" else None
        groups = _path_groups(receiver_sets)
        if fast is not None and groups is not None and _fast_covers(fast, groups):
            return self._fast_path(fast, sender_sets, receiver_sets, groups, base, source)
        stop = None if any(r[0] == "logits" for r in receivers) else max(self._check_layer(r[1]) for r in receivers)

        # One forward per batch holds both steps: "sender" rows (step 1: the base with the senders'
        # outputs from the source and every other head's output frozen at the base run) and "receiver"
        # rows (step 2: the base run). The rows go through the layers together, so at each receiver's
        # hook a receiver row takes its sender row's value, computed in that same call. Nothing else of a
        # receiver row is touched, and a sender row is read only at the receivers' hooks.
        masks = self._masks(sender_sets, complement=False)
        self._ran.add("paths")
        self._unpatched(base, [])
        z_names = [self._hook("heads", layer) for layer in range(self.n_layers)]
        if stop is not None:  # heads after the last receiver cannot reach it
            z_names = z_names[: stop + 1]
        base_z = {name: self.source(base, name) for name in z_names}
        sources = {name: self.source(source, name) for name in masks}
        rmasks = self._receiver_masks(receiver_sets)
        n_rs = len(receiver_sets)
        out = torch.empty(len(sender_sets), n_rs, S, dtype=torch.float32, device="cpu")
        with torch.inference_mode():
            for senders, receivers_ in self._path_batches(len(sender_sets), n_rs):
                # senders: [(set i, sample s)]; receivers_: [(i, s, receiver set r, index of (i, s) in senders)]
                k = len(senders)
                send_samples = torch.tensor([s for _, s in senders], dtype=torch.long, device=self.device)
                send_set = torch.tensor([i for i, _ in senders], dtype=torch.long, device=self.device)
                recv_samples = torch.tensor([s for _, s, _, _ in receivers_], dtype=torch.long, device=self.device)
                recv_set = torch.tensor([r for _, _, r, _ in receivers_], dtype=torch.long, device=self.device)
                from_row = torch.tensor([a for _, _, _, a in receivers_], dtype=torch.long, device=self.device)
                samples = torch.cat([send_samples, recv_samples])
                hooks = []
                for name in z_names:
                    frozen = base_z[name][send_samples]
                    if name in masks:
                        frozen = torch.where(masks[name][send_set][..., None], sources[name][send_samples], frozen)
                    hooks.append((name, _rows_hook(k, frozen)))
                for name in masks:
                    if name not in base_z:  # MLP senders: the rest recomputes
                        hooks.append((name, _rows_hook(k, None, masks[name][send_set], sources[name][send_samples])))
                hooks += [(name, _receive_hook(k, rmasks[name][recv_set], from_row)) for name in rmasks]
                metric, _ = self._forward(base, samples, hooks)
                values = metric.float().cpu()[k:]
                for (i, s, r, _), v in zip(receivers_, values.tolist()):
                    out[i, r, s] = v
        return out.permute(2, 0, 1).double()

    def _fast_path(self, fast, sender_sets, receiver_sets, groups, base: str, source: str) -> torch.Tensor:
        """:meth:`path` on the fast engine (:meth:`FastEngine.run_path_rows`), receiver sets grouped by their one
        (kind, layer); a row whose receivers are not read (an empty set) is the base run: the bridge's metric."""
        S = self.n_samples
        z_sets, m_sets = self._node_sets(self._masks(sender_sets, complement=False), len(sender_sets))
        self._unpatched(base, [])
        out = torch.empty(len(sender_sets), len(receiver_sets), S, dtype=torch.float64, device="cpu")
        rows = [(s, i) for i in range(len(sender_sets)) for s in range(S)]
        smp = torch.tensor([s for s, _ in rows], dtype=torch.long, device="cpu")
        with torch.inference_mode():
            z_src, m_src = self._fast_sources(fast, source)
            rmasks = self._receiver_masks(receiver_sets)
            for (kind, layer), members in groups.items():
                name = self._receiver_hook(receiver_sets[members[0]][0])  # the group's one hook
                masks = rmasks[name][members].cpu()
                values, patched = fast.run_path_rows(
                    base, z_src, m_src, z_sets, m_sets, kind, layer, masks, rows, self.fast_rows_per_batch
                )
                values = values.double()
                for c, j in enumerate(members):
                    v = values[:, c].clone()
                    same = ~patched[:, c]
                    v[same] = self._metrics[base][smp[same]]
                    out[:, j, :] = v.reshape(len(sender_sets), S)
        self._ran.add("fast-paths")
        return out.permute(2, 0, 1).contiguous()

    def _node_sets(self, masks: dict, n_sets: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Node masks by hook name (:meth:`_masks`) as the fast engine's z_sets [sets, L, n, H] and m_sets
        [sets, L, n] (bool, CPU)."""
        L, n, H = self.n_layers, self.n_positions, self.n_heads
        z_sets = torch.zeros(n_sets, L, n, H, dtype=torch.bool, device="cpu")
        m_sets = torch.zeros(n_sets, L, n, dtype=torch.bool, device="cpu")
        for layer in range(L):
            z = masks.get(self._hook("heads", layer))
            if z is not None:
                z_sets[:, layer] = z.cpu()
            m = masks.get(self._hook("mlp_out", layer))
            if m is not None:
                m_sets[:, layer] = m.cpu()
        return z_sets, m_sets

    def _path_batches(self, n_senders: int, n_receivers: int):
        """Rows of the fused path forwards, at most :attr:`rows_per_batch` each (at least two: a step-2 row
        needs its step-1 row in the same forward, so ``batch_size=1`` gives two-row path forwards): the
        (sender set, sample) rows of step 1 and, after them, the (sender set, sample, receiver set) rows
        that read them."""
        budget = max(2, self.rows_per_batch)
        senders: list[tuple[int, int]] = []
        index: dict[tuple[int, int], int] = {}
        receivers: list[tuple[int, int, int, int]] = []
        for i in range(n_senders):
            for s in range(self.n_samples):
                for r in range(n_receivers):
                    need = 1 + (0 if (i, s) in index else 1)
                    if len(senders) + len(receivers) + need > budget and receivers:
                        yield senders, receivers
                        senders, index, receivers = [], {}, []
                    if (i, s) not in index:
                        index[(i, s)] = len(senders)
                        senders.append((i, s))
                    receivers.append((i, s, r, index[(i, s)]))
        if receivers:
            yield senders, receivers

    def _receiver_hook(self, receiver: tuple) -> str:
        kind = receiver[0]
        if kind in ("q", "k", "v"):
            return f"blocks.{self._check_layer(receiver[1])}.attn.hook_{kind}"
        if kind == "mlp_in":
            return hook_for(self.model, f"blocks.{self._check_layer(receiver[1])}.mlp.hook_in")
        if kind == "logits":
            return hook_for(self.model, "ln_final.hook_in")
        raise InterpError(f"unknown receiver {kind!r}; valid: {', '.join(RECEIVER_KINDS)}")

    def _receiver_masks(self, receiver_sets) -> dict[str, torch.Tensor]:
        n = self.n_positions
        masks: dict[str, torch.Tensor] = {}
        for j, receivers in enumerate(receiver_sets):
            for receiver in receivers:
                name = self._receiver_hook(receiver)
                kind = receiver[0]
                if kind in ("q", "k", "v"):
                    width = self.n_heads if kind == "q" else self.n_kv
                    m = masks.setdefault(
                        name, torch.zeros(len(receiver_sets), n, width, dtype=torch.bool, device="cpu")
                    )
                    head = int(receiver[2])
                    if not 0 <= head < self.n_heads:
                        raise InterpError(f"head {receiver[1]}.{head} is out of range (0..{self.n_heads - 1})")
                    m[j, self._positions(receiver[3]), head if kind == "q" else self.kv_head(head)] = True
                else:
                    m = masks.setdefault(name, torch.zeros(len(receiver_sets), n, dtype=torch.bool, device="cpu"))
                    m[j, self._positions(receiver[-1])] = True
        return {name: m.to(self.device) for name, m in masks.items()}

    # ---- node sets on the fast engine --------------------------------------------------------

    @property
    def fast_rows_per_batch(self) -> int:
        """Rows per forward of the fast engine (``batch_size`` when given): its activations of one row,
        sources and masks included, within the device's budget; at most MAX_ROWS_FAST."""
        if self.batch_size:
            return int(self.batch_size)
        cfg = self.model.cfg
        d = int(cfg.d_model)
        d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * d)
        n = self.n_positions
        per_row = n * (10 * d + 2 * d_mlp + 2 * self.n_heads * n + 2 * self.n_heads) * 4
        return rows_within_budget(self, per_row, MAX_ROWS_FAST)

    def _fast_engine(self) -> _fast.FastEngine | None:
        """The fast engine over these prompt pairs, built on first use and checked against the bridge's
        own last-position logits (:meth:`FastEngine.self_check`); None where it does not cover the model
        (``engine_note`` says why) or ``engine='hooks'``."""
        if self._fast_tried:
            return self._fast
        self._fast_tried = True
        clean = self.tokens["clean"]
        corrupt = self.tokens.get("corrupt", clean)
        runs = ["clean"] + (["corrupt"] if "corrupt" in self.tokens else [])
        for run in runs:
            self._unpatched(run, [])
        S, n = clean.shape
        differs = (clean != corrupt).cpu()
        if self.noise is not None and "corrupt" in self.tokens:
            differs |= (self.noise != 0).any(-1).cpu()
        pos = torch.arange(n, device="cpu").expand(S, n)
        first_diff = torch.where(differs, pos, torch.full_like(pos, n)).min(dim=1).values
        try:
            with torch.inference_mode():
                eng = _fast.FastEngine.build(
                    self.model,
                    clean,
                    corrupt,
                    self.expect.cpu(),
                    self.foil.cpu(),
                    first_diff=first_diff,
                    embed_noise=self.noise if "corrupt" in self.tokens else None,
                    rows_per_batch=self.fast_rows_per_batch,
                )
                eng.self_check(self._logits["clean"], self._logits[runs[-1]])
        except _fast.Unsupported as e:
            self.engine_note = str(e)
            if self.engine == "fast":
                raise InterpError(f"fast circuit engine unavailable: {e}") from None
            return None
        self._fast = eng
        return eng

    def _fast_sources(self, fast: _fast.FastEngine, source: str) -> tuple[list, list]:
        """Per layer, the head outputs [S, n, H, dh] and MLP outputs [S, n, d] that ``source`` writes, from
        the fast engine's own unpatched runs (views)."""
        S = self.n_samples
        if source == "resample":
            source = "corrupt"
        if source in ("clean", "corrupt"):
            if source not in self.tokens:
                raise InterpError("no corrupt prompts to run: the behavior has no corruption")
            run = fast.runs[source]
            return list(run.z), list(run.mlp_out)
        if source == "mean":
            if "reference" in self.tokens:
                run = fast.add_run("reference", self.tokens["reference"], self.fast_rows_per_batch)
            else:
                run = fast.runs["clean"]
            key = ("fast-mean",)
            if key not in self._memo:
                self._memo[key] = (
                    [z.mean(dim=0, keepdim=True) for z in run.z],
                    [m.mean(dim=0, keepdim=True) for m in run.mlp_out],
                )
            zs, ms = self._memo[key]
            return [z.expand(S, -1, -1, -1) for z in zs], [m.expand(S, -1, -1) for m in ms]
        if source == "zero":
            clean = fast.runs["clean"]
            return (
                [torch.zeros_like(z[:1]).expand(S, -1, -1, -1) for z in clean.z],
                [torch.zeros_like(m[:1]).expand(S, -1, -1) for m in clean.mlp_out],
            )
        raise InterpError(f"unknown source {source!r}; valid: clean, corrupt, {', '.join(ABLATIONS)}")

    def _fast_sets(self, fast: _fast.FastEngine, masks: dict, n_sets: int, base: str, source: str) -> torch.Tensor:
        """:meth:`patch_sets` on the fast engine: masks (CPU, by hook name) -> [S, n_sets] (float64, CPU)."""
        S = self.n_samples
        z_sets, m_sets = self._node_sets(masks, n_sets)
        self._unpatched(base, [])
        with torch.inference_mode():
            z_src, m_src = self._fast_sources(fast, source)
            rows = [(s, j) for j in range(n_sets) for s in range(S)]
            values, changed = fast.run_node_rows(base, z_src, m_src, z_sets, m_sets, rows, self.fast_rows_per_batch)
        # a row that changes nothing is the base run: the bridge's own metric, as the hook engine gives it
        values = values.double()
        same = ~changed
        if bool(same.any()):
            smp = torch.tensor([s for s, _ in rows], dtype=torch.long, device="cpu")
            values[same] = self._metrics[base][smp[same]]
        self._ran.add("fast")
        return values.reshape(n_sets, S).t().contiguous()

    def engine_used(self) -> str:
        """Which engines ran: "fast" (every node set and path on the fast engine), "hooks" (with why the fast
        engine declined, where it did), or "fast + hooks (paths)" / "fast + hooks" where paths (or node sets
        the fast engine does not cover) ran on hooks."""
        fast = self._ran & {"fast", "fast-paths"}
        if not fast:
            return "hooks" + (f" ({self.engine_note})" if self.engine_note and self.engine != "hooks" else "")
        hooks = self._ran - fast
        if not hooks:
            return "fast"
        return "fast + hooks (paths)" if hooks == {"paths"} else "fast + hooks"

    # ---- what the claims read ---------------------------------------------------------------

    def all_ablated(self, source: str) -> torch.Tensor:
        """m_∅ [S]: the clean run with every head and MLP output replaced by ``source``; memoized."""
        key = ("empty", source)
        if key not in self._memo:
            self._memo[key] = self.patch_sets([()], "clean", source, complement=True)[:, 0]
        return self._memo[key].clone()

    def faithfulness(self, kept_sets: Sequence[Sequence[tuple]], ablation: str) -> torch.Tensor:
        """(m_C − m_∅) / (m_clean − m_∅) [S, len(kept_sets)] for each kept node set C, everything outside
        it ablated by ``ablation`` (resample, mean or zero). The all-ablated run m_∅ is computed once per
        ablation, in the same forwards as the first sets asked for."""
        kept_sets = [tuple(edits) for edits in kept_sets]
        key = ("empty", ablation)
        if key not in self._memo:
            both = self.patch_sets([()] + kept_sets, "clean", ablation, complement=True)
            self._memo[key], m_c = both[:, 0], both[:, 1:]
        else:
            m_c = self.patch_sets(kept_sets, "clean", ablation, complement=True)
        empty = self.all_ablated(ablation)[:, None]
        clean = self.metrics("clean")[:, None]
        return (m_c - empty) / (clean - empty)


def _path_groups(receiver_sets) -> dict[tuple[str, int], list[int]] | None:
    """Receiver sets by their one (kind, layer) — ("logits", -1) for the logits — or None when a set mixes
    kinds or layers (the hook engine's fused forward then runs them)."""
    groups: dict[tuple[str, int], list[int]] = {}
    for j, receivers in enumerate(receiver_sets):
        keys = {(r[0], -1 if r[0] == "logits" else int(r[1])) for r in receivers}
        if len(keys) != 1:
            return None
        groups.setdefault(keys.pop(), []).append(j)
    return groups


def _fast_covers(fast, groups) -> bool:
    """Whether the fast engine states these receivers as the bridge's hooks do: a query or key input on a
    layer with q/k norms (whose place beside the hook is not pinned down) runs on hooks."""
    return not any(kind in ("q", "k") and fast.layers[layer].qk_norm for kind, layer in groups)


def _where_hook(mask: torch.Tensor, src: torch.Tensor):
    """Replace ``act`` by ``src`` where ``mask`` ([rows, n(, H)]) is True."""

    def hook(act, hook=None):
        return torch.where(mask[..., None], src.to(act.dtype), act)

    return hook


def _rows_hook(k: int, values, mask=None, src=None):
    """The first ``k`` rows: replaced by ``values`` (or by ``src`` where ``mask``); the rest untouched."""

    def hook(act, hook=None):
        head = act[:k]
        new = values.to(act.dtype) if values is not None else torch.where(mask[..., None], src.to(act.dtype), head)
        return torch.cat([new, act[k:]])

    return hook


def _receive_hook(k: int, mask: torch.Tensor, from_row: torch.Tensor):
    """Rows after the first ``k``: where ``mask``, the value of sender row ``from_row`` (this same call)."""

    def hook(act, hook=None):
        tail = act[k:]
        return torch.cat([act[:k], torch.where(mask[..., None], act[from_row], tail)])

    return hook
