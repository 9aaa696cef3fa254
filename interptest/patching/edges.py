"""Edge ablation: circuits stated as edges between nodes (ACDC, EAP / EAP-IG, MIB's interchange).

Nodes are the ``input`` (the embeddings: ``blocks.0.hook_resid_pre``), each attention head (its
output z_h · W_O[h], read at ``attn.hook_z``), each MLP (``hook_mlp_out``) and the ``logits``.
Every *receiver* input — a head's query, key or value input, an MLP's input, the final residual that
the logits read — is the embedding plus the sum of its senders' outputs (plus the attention output
biases, which belong to no node). A sender whose edge to that receiver is in the circuit contributes
its output *in this run*; one whose edge is not contributes its ablated output (``resample``: its
value on the corrupted prompt; ``mean``: its mean over the reference prompts, else over the clean
samples; ``zero``), at every position. Each receiver then applies its own normalization to its
rebuilt residual. m_C is the metric of that run, m_∅ the run with no edge at all (every receiver
reads the fully ablated residual), and the faithfulness (m_C − m_∅) / (m_clean − m_∅).

The senders of a receiver are the nodes whose output is in its residual: for a head of layer L the
input, the heads and MLPs of layers < L; for the MLP of layer L also the heads of layer L (sequential
blocks; parallel attention/MLP blocks, as NeoX, have no head → MLP edge inside a layer); for the
logits every node. On grouped-query models the key and value inputs belong to the key/value heads:
``a{L}.h{H}<k>`` names the key input of the key/value head that query head H reads, shared by the
query heads of its group.

How one forward computes many circuits exactly: a receiver's input is the *fully ablated* residual A
(the ablated input plus every sender's ablated output plus the attention biases, computed once per
ablation from the cached runs and checked to rebuild the model's own residual stream) plus, for each
sender whose edge is present, D_s = its output in this run − its ablated output, recorded at the
senders' hooks of the same forward. (Built up from A rather than down from the run's residual: a
sparse circuit under ``zero`` has receivers whose input is exactly zero, and subtracting nearly all
of a residual would leave rounding that the receiver's norm blows up.) MLP inputs (``ln2.hook_in``,
which feeds only the MLP's norm) and the final residual (``ln_final.hook_in``) are rewritten in
place. A head's q, k and v inputs differ per head, so each (circuit, sample) *unit* carries H +
2·H_kv helper rows: at layer L helper j's attention input (``ln1.hook_in``, feeding only the
attention's norm) is set to receiver j's rebuilt residual, and the unit's main row takes head h's
query (key, value) at ``attn.hook_q`` (``k``, ``v``) from its helper. A helper row is read nowhere
else. Units of several circuits and samples are stacked per forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from interptest.errors import InterpError
from interptest.graphs import (
    Edge,
    ModelShape,
    Receiver,
    Sender,
    edge_problem,
    model_edges,
    normal,
    unsupported_reason,
)
from interptest.patching.fast.edges import fast_edges
from interptest.patching.paths import ABLATIONS, CircuitPatcher

__all__ = ["Edge", "EdgePatcher", "Receiver", "Sender", "edge_engine_used", "edge_patcher"]


_KEY = ("edge-engine",)  # where a circuit engine keeps its edge engine


def edge_patcher(patcher: CircuitPatcher) -> EdgePatcher:
    """The edge engine sharing ``patcher``'s prompts and cached runs (one per circuit engine)."""
    if _KEY not in patcher._memo:
        patcher._memo[_KEY] = EdgePatcher(patcher)
    return patcher._memo[_KEY]


def edge_engine_used(patcher: CircuitPatcher) -> str | None:
    """Which forward ran the edge circuits of ``patcher``'s engine: "fast", "hooks (why)"; None where none ran."""
    edges = patcher._memo.get(_KEY)
    return None if edges is None else edges.engine_used()


class EdgePatcher:
    """Edge circuits over a :class:`CircuitPatcher`'s S prompt pairs (its sources, metrics and rows)."""

    def __init__(self, patcher: CircuitPatcher):
        self.p = patcher
        model = patcher.model
        cfg = model.cfg
        self.n_layers, self.H, self.K = patcher.n_layers, patcher.n_heads, patcher.n_kv
        self.parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
        self.n_senders = 1 + self.n_layers * (self.H + 1)
        self.per_layer = self.H + 2 * self.K + 1  # receivers of one layer: q heads, k and v heads, the MLP
        self.n_receivers = self.n_layers * self.per_layer + 1
        self.shape = ModelShape(self.n_layers, self.H, self.K, self.parallel)
        self._W_O: list[torch.Tensor] | None = None
        self.engine: str | None = None  # the forward the last edge sets ran on: "fast" | "hooks"
        self._memo: dict = {}
        why = unsupported_reason(getattr(model, "hook_dict", {}), self.n_layers)
        if why:
            raise InterpError(why)

    # ---- the vocabulary ----------------------------------------------------------------------

    def sender_index(self, s: Sender) -> int:
        if s.kind == "input":
            return 0
        base = 1 + s.layer * (self.H + 1)
        return base + (int(s.head or 0) if s.kind == "head" else self.H)

    def receiver_index(self, r: Receiver) -> int:
        if r.kind == "logits":
            return self.n_layers * self.per_layer
        base = r.layer * self.per_layer
        head = int(r.head or 0)
        if r.kind == "q":
            return base + head
        if r.kind == "k":
            return base + self.H + self.p.kv_head(head)
        if r.kind == "v":
            return base + self.H + self.K + self.p.kv_head(head)
        return base + self.H + 2 * self.K

    def problem(self, edge: Edge) -> str | None:
        """Why ``edge`` is not an edge of this model (None when it is)."""
        return edge_problem(edge, self.shape)

    def check(self, edge: Edge) -> None:
        problem = self.problem(edge)
        if problem:
            raise InterpError(f"{edge.name} is not an edge of this model: {problem}")

    def edges(self) -> list[Edge]:
        """Every edge of the model, k and v inputs once per key/value head (named by its first query head)."""
        return model_edges(self.shape, per_query_head=False)

    # ---- masks ------------------------------------------------------------------------------

    def _mask(self, edges: Sequence[Edge]) -> torch.Tensor:
        """bool [receivers, senders]: True where the edge is in the circuit."""
        m = torch.zeros(self.n_receivers, self.n_senders, dtype=torch.bool, device="cpu")
        for e in edges:
            self.check(e)
            e = normal(e, self.shape)
            m[self.receiver_index(e.receiver), self.sender_index(e.sender)] = True
        return m

    # ---- sources ----------------------------------------------------------------------------

    def _w_o(self) -> list[torch.Tensor]:
        """W_O per layer [H, d_head, d_model], checked against the model's own attention output: read from
        the output projection module in its own layout (a ``Linear`` stores [out, in], GPT-2's ``Conv1D``
        [in, out]) — TransformerLens 3.x's stacked ``W_O`` reads every square weight as [in, out], so a
        ``Linear`` model's came back transposed within each head — else the bridge's ``W_O``; the first that
        rebuilds the attention output is used."""
        if self._W_O is None:
            ws = []
            for layer in range(self.n_layers):
                attn = self.p.model.blocks[layer].attn
                z = self.p.source("clean", f"blocks.{layer}.attn.hook_z")
                out = self.p.source("clean", f"blocks.{layer}.hook_attn_out")
                b = getattr(attn, "b_O", None)
                bias = 0 if b is None else b.detach().to(z)
                errors = []
                for w in self._w_o_candidates(attn):
                    w = w.detach().to(device=z.device, dtype=z.dtype)
                    err = float((torch.einsum("snhe,hed->snd", z, w) + bias - out).abs().max())
                    if err <= 1e-4 * (float(out.abs().max()) + 1.0):
                        ws.append(w)
                        break
                    errors.append(err)
                else:
                    raise InterpError(
                        f"edge circuits need each head's output z·W_O: layer {layer}'s output projection does not "
                        "rebuild its attention output on this model (max |Δ| "
                        f"{min(errors, default=float('nan')):.3g}); edge claims are not supported here"
                    )
            self._W_O = ws
        return self._W_O

    def _w_o_candidates(self, attn) -> list[torch.Tensor]:
        d_model = int(self.p.model.cfg.d_model)
        out = []
        module = getattr(getattr(attn, "o", None), "original_component", None)
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.ndim == 2:
            if hasattr(module, "in_features"):  # torch Linear: [out, in]
                weight = weight.T
            if hasattr(module, "in_features") or hasattr(module, "nf"):  # Linear or GPT-2's Conv1D [in, out]
                if weight.shape[1] == d_model and weight.shape[0] % self.H == 0:
                    out.append(weight.reshape(self.H, -1, d_model))
        try:
            w_o = attn.W_O
        except (AttributeError, TypeError, KeyError):
            w_o = None
        if isinstance(w_o, torch.Tensor):
            out.append(w_o)
        return out

    def _sources(self, ablation: str) -> dict:
        if ablation not in ABLATIONS:
            raise InterpError(f"unknown ablation {ablation!r}; valid: {', '.join(ABLATIONS)}")
        key = ("sources", ablation)
        if key not in self._memo:
            p = self.p
            src = {
                "input": p.source(ablation, "blocks.0.hook_resid_pre"),
                "z": [p.source(ablation, f"blocks.{layer}.attn.hook_z") for layer in range(self.n_layers)],
                "mlp": [p.source(ablation, f"blocks.{layer}.hook_mlp_out") for layer in range(self.n_layers)],
            }
            src["base"] = self._residuals(src)
            self._memo[key] = src
        return self._memo[key]

    def _residuals(self, values: dict) -> dict:
        """The residual each receiver group reads when every sender contributes ``values`` (the input's
        value, each head's z, each MLP's output): {("attn", L) | ("mlp", L) | "final": [S, n, d]}."""
        w_o = self._w_o()
        out: dict = {}
        resid = values["input"]
        for layer in range(self.n_layers):
            out[("attn", layer)] = resid
            b = getattr(self.p.model.blocks[layer].attn, "b_O", None)
            z = values["z"][layer]
            attn = torch.einsum("snhe,hed->snd", z, w_o[layer].to(z.dtype))
            if b is not None:
                attn = attn + b.detach().to(attn)
            out[("mlp", layer)] = resid if self.parallel else resid + attn
            resid = resid + attn + values["mlp"][layer]
        out["final"] = resid
        return out

    def _check_residuals(self) -> None:
        """The clean run's residual stream is its embedding plus its heads' z·W_O, biases and MLP outputs
        (else edge ablation cannot be stated on this model)."""
        if "checked" in self._memo:
            return
        p = self.p
        clean = {
            "input": p.source("clean", "blocks.0.hook_resid_pre"),
            "z": [p.source("clean", f"blocks.{layer}.attn.hook_z") for layer in range(self.n_layers)],
            "mlp": [p.source("clean", f"blocks.{layer}.hook_mlp_out") for layer in range(self.n_layers)],
        }
        built = self._residuals(clean)
        for layer in range(1, self.n_layers):
            have = p.source("clean", f"blocks.{layer}.hook_resid_pre")
            err = float((built[("attn", layer)] - have).abs().max())
            if not err <= 1e-4 * (float(have.abs().max()) + 1.0):
                raise InterpError(
                    f"edge circuits need a residual stream that is the sum of its nodes' outputs; on this model "
                    f"layer {layer}'s input differs from that sum by {err:.3g}: edge claims are not supported here"
                )
        self._memo["checked"] = True

    # ---- the batched forward ----------------------------------------------------------------

    def metrics(self, edge_sets: Sequence[Sequence[Edge]], ablation: str) -> torch.Tensor:
        """Raw metrics m_C [S, len(edge_sets)] (float64, CPU): the clean run with each edge set kept and
        every other edge ablated by ``ablation``."""
        masks = [self._mask(edges) for edges in edge_sets]
        S = self.p.n_samples
        if not masks:
            return torch.empty(S, 0, dtype=torch.float64, device="cpu")
        self.p.metrics("clean")
        self._check_residuals()
        src = self._sources(ablation)
        w_o = self._w_o()
        fast = fast_edges(self, ablation)  # the fast engine's forward where it covers the model, else hooks
        self.engine = "hooks" if fast is None else "fast"
        if fast is not None:
            return fast.run(masks, src, w_o)
        return self.hook_metrics(torch.stack(masks), src, w_o)

    def hook_metrics(self, present: torch.Tensor, src: dict, w_o) -> torch.Tensor:
        """Raw metrics [S, sets] (float64, CPU) of the hook forward under masks ``present`` [sets, receivers,
        senders]: bool (the edge sets), or float in [0, 1] (each edge interpolated between ablated and present,
        :mod:`interptest.patching.attribution`); ``src`` and ``w_o`` are :meth:`_sources` and :meth:`_w_o`."""
        present = present.to(self.p.device)
        S = self.p.n_samples
        helpers = self.H + 2 * self.K
        units = [(j, s) for j in range(present.shape[0]) for s in range(S)]
        per_forward = max(1, self.p.rows_per_batch // (1 + helpers))
        out = torch.empty(present.shape[0], S, dtype=torch.float32, device="cpu")
        with torch.inference_mode():
            for start in range(0, len(units), per_forward):
                chunk = units[start : start + per_forward]
                sets = torch.tensor([j for j, _ in chunk], dtype=torch.long, device=self.p.device)
                samples = torch.tensor([s for _, s in chunk], dtype=torch.long, device=self.p.device)
                metric = self._forward(present[sets], samples, src, w_o, helpers)
                for (j, s), v in zip(chunk, metric.float().cpu().tolist()):
                    out[j, s] = v
        return out.t().double()

    def _forward(self, present, samples, src, w_o, helpers: int) -> torch.Tensor:
        p = self.p
        U, H, K = len(samples), self.H, self.K
        n = p.n_positions
        tokens = p.tokens["clean"][samples]
        rows = torch.cat([tokens, tokens.repeat_interleave(helpers, dim=0)])
        dtype = src["input"].dtype
        d_model = src["input"].shape[-1]
        D = torch.zeros(U, self.n_senders, n, d_model, dtype=dtype, device=p.device)
        kept_mask = present.to(dtype)  # [U, R, senders]: bool, or float (0 ablated … 1 present) for gradients
        base = src["base"]

        grad = kept_mask.requires_grad  # a float mask differentiated by interptest.patching.attribution

        def kept(receivers: slice | int, prefix: int) -> torch.Tensor:
            a = kept_mask[:, receivers, :prefix]
            # later hooks write D in place: a product saved for backward needs its own copy of the slice
            d = D[:, :prefix].clone() if grad else D[:, :prefix]
            if a.ndim == 2:
                return torch.einsum("us,usnd->und", a, d)
            return torch.einsum("ujs,usnd->ujnd", a, d)

        def record_input(act, hook=None):
            D[:, 0] = act[:U] - src["input"][samples].to(act.dtype)
            return act

        def record_z(layer: int):
            base = 1 + layer * (H + 1)

            def hook(act, hook=None):
                diff = act[:U] - src["z"][layer][samples].to(act.dtype)
                D[:, base : base + H] = torch.einsum("unhe,hed->uhnd", diff, w_o[layer].to(act.dtype))
                return act

            return hook

        def record_mlp(layer: int):
            index = 1 + layer * (H + 1) + H

            def hook(act, hook=None):
                D[:, index] = act[:U] - src["mlp"][layer][samples].to(act.dtype)
                return act

            return hook

        def attn_inputs(layer: int):
            first = layer * self.per_layer
            prefix = 1 + layer * (H + 1)

            def hook(act, hook=None):
                resid = act[:U]
                a = base[("attn", layer)][samples][:, None]
                rebuilt = (a + kept(slice(first, first + helpers), prefix)).to(act.dtype)
                return torch.cat([resid, rebuilt.reshape(U * helpers, *resid.shape[1:])])

            return hook

        def take(offset: int, width: int):
            def hook(act, hook=None):
                helper = act[U:].reshape(U, helpers, *act.shape[1:])[:, offset : offset + width]
                # helper j's own head j: [U, width(j), n, width(h), d_head] -> diagonal over j == h
                mine = torch.diagonal(helper, dim1=1, dim2=3).permute(0, 1, 3, 2)
                return torch.cat([mine.to(act.dtype), act[U:]])

            return hook

        def mlp_input(layer: int):
            r = layer * self.per_layer + H + 2 * K
            prefix = 1 + layer * (H + 1) + (0 if self.parallel else H)

            def hook(act, hook=None):
                rebuilt = base[("mlp", layer)][samples] + kept(r, prefix)
                return torch.cat([rebuilt.to(act.dtype), act[U:]])

            return hook

        def final_input(act, hook=None):
            r = self.n_layers * self.per_layer
            rebuilt = base["final"][samples] + kept(r, self.n_senders)
            return torch.cat([rebuilt.to(act.dtype), act[U:]])

        hooks: list = [("blocks.0.hook_resid_pre", record_input)]
        for layer in range(self.n_layers):
            hooks += [
                (f"blocks.{layer}.ln1.hook_in", attn_inputs(layer)),
                (f"blocks.{layer}.attn.hook_q", take(0, H)),
                (f"blocks.{layer}.attn.hook_k", take(H, K)),
                (f"blocks.{layer}.attn.hook_v", take(H + K, K)),
                (f"blocks.{layer}.attn.hook_z", record_z(layer)),
                (f"blocks.{layer}.ln2.hook_in", mlp_input(layer)),
                (f"blocks.{layer}.hook_mlp_out", record_mlp(layer)),
            ]
        hooks.append(("ln_final.hook_in", final_input))
        logits = p.model.run_with_hooks(rows, fwd_hooks=hooks + p._last_only())
        return p._metric(logits[:U], samples)

    def engine_used(self) -> str | None:
        """ "fast", "hooks (why the fast forward declined)", or None where no edge set ran yet."""
        if self.engine != "hooks":
            return self.engine
        why = self._memo.get(("fast-edges-why",))
        return f"hooks ({why})" if why else "hooks"

    # ---- what the claims read ---------------------------------------------------------------

    def all_ablated(self, ablation: str) -> torch.Tensor:
        """m_∅ [S]: no edge at all; memoized per ablation."""
        key = ("empty", ablation)
        if key not in self._memo:
            self._memo[key] = self.metrics([()], ablation)[:, 0]
        return self._memo[key].clone()

    def faithfulness(self, edge_sets: Sequence[Sequence[Edge]], ablation: str) -> torch.Tensor:
        """(m_C − m_∅) / (m_clean − m_∅) [S, len(edge_sets)]."""
        key = ("empty", ablation)
        sets: list[tuple[Edge, ...]] = [tuple(e) for e in edge_sets]
        if key not in self._memo:
            both = self.metrics([(), *sets], ablation)
            self._memo[key], m_c = both[:, 0], both[:, 1:]
        else:
            m_c = self.metrics(sets, ablation)
        empty = self._memo[key][:, None]
        clean = self.p.metrics("clean")[:, None]
        return (m_c - empty) / (clean - empty)
