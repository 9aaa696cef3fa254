"""Edge circuits on the fast engine's description of the model (:class:`~interptest.patching.fast.FastEngine`).

The edge engine (:mod:`interptest.patching.edges`, whose docstring states the definition) runs each
(circuit, sample) unit as 1 + H + 2·H_kv rows of the bridge's forward: the helper rows carry each head's
query, key and value input through the whole model although they are read inside one layer only. Here a
unit is one row of a forward written from the fast engine's :class:`~interptest.patching.fast.blocks.Arch`,
layer by layer, with no residual stream of its own: every receiver input is rebuilt exactly as the edge
engine rebuilds it — the fully ablated residual A of its group (the edge engine's ``base``) plus, for each
sender whose edge is present, D_s = the sender's output in this run minus its ablated output (the edge
engine's sources), recorded as the forward goes:

* layer L: each query head's, each key/value head's key and value input [U, H + 2·H_kv, n, d] →
  the layer's attention norm → the projections, each head taking its own output (per-head slices of the
  projection weights, read off the layer's own q/k/v function by probing it with the identity and used
  only where they reproduce its output on the clean run; else the whole projection applied to every
  per-head input, its head's slice kept) → q/k norms, rotary and soft caps as the fast engine computes
  attention → z; D of each head z·W_O[h] (the edge engine's ``_w_o``) minus the ablated z's;
* the MLP's input (A + the present senders' D) → its norm and MLP → D of the MLP;
* the final residual (A + every present D) at the last position → the final norm → the two unembedding
  rows of the sample's expect/foil: m = logit[expect] − logit[foil].

The last layer computes its keys and values at every position and the rest at the last one only (nothing
else is read). A model the fast engine does not cover, or where the run with every edge present does not
give the clean metrics (checked once per ablation, its |Δ| ≤ 1e-4·(1 + max |m_clean|)), runs on the edge
engine's hook forward; :func:`fast_edges` says which and why.
"""

from __future__ import annotations

import torch

from interptest.errors import InterpError
from interptest.patching.fast import FastEngine, Unsupported, _mlp_out, _softcap

__all__ = ["FastEdges", "ENGINES", "choose_engine", "fast_edges"]

ENGINES = ("auto", "fast", "hooks")
_KEY = ("fast-edges",)


def choose_engine(edges, engine: str) -> None:
    """Which forward an edge engine (:class:`~interptest.patching.edges.EdgePatcher`) runs: ``auto`` (the
    fast one where it covers the model and passes its check), ``fast`` (an error where it does not) or
    ``hooks`` (the bridge's forward with helper rows)."""
    if engine not in ENGINES:
        raise InterpError(f"unknown edge engine {engine!r}; valid: {', '.join(ENGINES)}")
    edges._memo[("fast-edges-choice",)] = engine


def fast_edges(edges, ablation: str) -> FastEdges | None:
    """The fast edge forward for ``edges`` (an EdgePatcher) under ``ablation``, or None: the hook forward
    (then ``edges._memo[("fast-edges-why",)]`` says why)."""
    choice = edges._memo.get(("fast-edges-choice",), "auto")
    if choice == "hooks":
        edges._memo[("fast-edges-why",)] = "engine='hooks' requested"
        return None
    if _KEY not in edges._memo:
        try:
            edges._memo[_KEY] = FastEdges(edges)
        except Unsupported as e:
            edges._memo[_KEY] = str(e)
    fast = edges._memo[_KEY]
    if isinstance(fast, FastEdges):
        why = fast.check(ablation)
        if why is None:
            return fast
    else:
        why = fast
    edges._memo[("fast-edges-why",)] = why
    if choice == "fast":
        raise InterpError(f"fast edge engine unavailable: {why}")
    return None


def _diagonal(x: torch.Tensor, U: int, width: int) -> torch.Tensor:
    """Every per-head input projected to every head, [U·width·m, width, dh] → each input's own head
    [U, m, width, dh]."""
    per = x.view(U, width, -1, width, x.shape[-1])  # [U, input j, m, head h, dh]
    return torch.diagonal(per, dim1=1, dim2=3).permute(0, 1, 3, 2)


class FastEdges:
    """The edge forward of an EdgePatcher ``edges`` on the fast engine's architecture description."""

    def __init__(self, edges):
        self.p = p = edges.p
        self.edges = edges
        S, n = p.n_samples, p.n_positions
        clean = p.tokens["clean"][:1]
        with torch.inference_mode():
            # the architecture, its checks (float32, one device, eval mode, sliding window) and one clean run
            eng = FastEngine.build(
                p.model, clean, clean, p.expect[:1].cpu(), p.foil[:1].cpu(), first_diff=[n], rows_per_batch=1
            )
        if torch.device(eng.device).type != torch.device(p.device).type:
            raise Unsupported(f"the weights are on {eng.device}, the circuit engine on {p.device}")
        if (eng.n_heads, eng.n_kv) != (edges.H, edges.K) or len(eng.layers) != edges.n_layers:
            raise Unsupported("the fast engine reads another head layout than the bridge's config")
        self.eng = eng
        self.arch = eng.arch
        self.S, self.n = S, n
        ids = torch.stack([p.expect, p.foil], 1).to(eng.device)
        self.w2 = eng.unembed_w[ids].detach()  # [S, 2, d]
        self.b2 = None if eng.unembed_b is None else eng.unembed_b[ids].detach()
        with torch.inference_mode():
            run = eng.runs["clean"]
            self.heads = [eng.head_projections(li, run.resid_pre[li].reshape(n, -1)) for li in range(len(eng.layers))]
        eng.runs.clear()  # only the description is kept
        self.per_head_layers = sum(w is not None for w in self.heads)
        self._checked: dict[str, str | None] = {}

    def _project(self, li: int, hq: torch.Tensor, hk: torch.Tensor, hv: torch.Tensor):
        """Each head's own projection of its own input: hq [U, H, m, d] → q [U, m, H, dh]; hk, hv [U, K, n, d]
        → k, v [U, n, K, dh] (before rotary)."""
        U, H, K = hq.shape[0], hq.shape[1], hk.shape[1]
        ws = self.heads[li]
        if ws is not None:
            return tuple(torch.einsum("uhmd,hde->umhe", h, w) + b for h, (w, b) in zip((hq, hk, hv), ws, strict=True))
        L = self.eng.layers[li]
        d = hq.shape[-1]
        if L.q is not None and L.kv is not None:
            q = L.q(hq.reshape(-1, d))
            k = L.kv(hk.reshape(-1, d))[0]
            v = L.kv(hv.reshape(-1, d))[1]
        else:
            q = L.qkv(hq.reshape(-1, d))[0]
            k = L.qkv(hk.reshape(-1, d))[1]
            v = L.qkv(hv.reshape(-1, d))[2]
        return _diagonal(q, U, H), _diagonal(k, U, K), _diagonal(v, U, K)

    # ---- the forward ------------------------------------------------------------------------

    def check(self, ablation: str) -> str | None:
        """None when the run with every edge present gives the clean metrics under ``ablation``, else why not."""
        if ablation not in self._checked:
            ep = self.edges
            clean = self.p.metrics("clean")
            got = self.run([ep._mask(ep.edges())], ep._sources(ablation), ep._w_o())[:, 0]
            err = float((got - clean).abs().max())
            ok = err <= 1e-4 * (1.0 + float(clean.abs().max()))
            self._checked[ablation] = None if ok else f"self-check failed: every edge present gives |Δm| = {err:.3g}"
        return self._checked[ablation]

    def run(self, masks, src: dict, w_o) -> torch.Tensor:
        """Raw metrics m_C [S, len(masks)] (float64, CPU) of the masks (bool [receivers, senders] each)."""
        p, ep = self.p, self.edges
        S = self.S
        present = torch.stack(list(masks)).to(p.device)
        units = [(j, s) for j in range(len(masks)) for s in range(S)]
        # the hook forward's memory bound: a unit here holds less than its 1 + H + 2·H_kv rows there
        per_forward = max(1, p.rows_per_batch // (1 + ep.H + 2 * ep.K))
        parts = []
        with torch.inference_mode():
            for start in range(0, len(units), per_forward):
                chunk = units[start : start + per_forward]
                sets = torch.tensor([j for j, _ in chunk], dtype=torch.long, device="cpu").to(p.device)
                samples = torch.tensor([s for _, s in chunk], dtype=torch.long, device="cpu").to(p.device)
                parts.append(self._forward(present[sets], samples, src, w_o))
        out = torch.cat(parts).float().cpu().reshape(len(masks), S)
        return out.t().double()

    def _forward(self, present: torch.Tensor, samples: torch.Tensor, src: dict, w_o) -> torch.Tensor:
        """Metrics [U] of U units: present [U, receivers, senders] bool, samples [U]."""
        ep, eng = self.edges, self.eng
        U, H, K, n = len(samples), ep.H, ep.K, self.n
        base = src["base"]
        dtype = src["input"].dtype
        d = src["input"].shape[-1]
        last = ep.n_layers - 1
        kept = present.to(dtype)  # [U, R, senders]
        D = torch.zeros(U, ep.n_senders, n, d, dtype=dtype, device=src["input"].device)
        D[:, 0] = self.p.source("clean", "blocks.0.hook_resid_pre")[samples] - src["input"][samples]

        def rebuilt(a: torch.Tensor, receivers: slice, prefix: int, pos: slice) -> torch.Tensor:
            """A [U, m, d] + Σ present D: [U, receivers, m, d]."""
            Dp = D[:, :prefix, pos]
            m = Dp.shape[2]
            s = torch.matmul(kept[:, receivers, :prefix], Dp.reshape(U, prefix, m * d))
            return a[:, None] + s.view(U, -1, m, d)

        for li in range(ep.n_layers):
            L = eng.layers[li]
            first = li * ep.per_layer
            prefix = 1 + li * (H + 1)
            qpos = slice(n - 1, n) if li == last else slice(0, n)
            a = base[("attn", li)][samples]
            hq = L.ln1(rebuilt(a[:, qpos], slice(first, first + H), prefix, qpos))
            hkv = L.ln1(rebuilt(a, slice(first + H, first + H + 2 * K), prefix, slice(0, n)))
            q, k, v = self._project(li, hq, hkv[:, :K], hkv[:, K:])
            m = q.shape[1]
            if L.rotary_dims:
                cos, sin = eng._cos_sin(n, a, L.rope)
                k = eng._rope(k, cos, sin, L.rotary_dims)
                q = eng._rope(q, cos[n - m :], sin[n - m :], L.rotary_dims)
            if K != H:
                k, v = k.repeat_interleave(H // K, dim=2), v.repeat_interleave(H // K, dim=2)
            scores = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1)).mul_(L.attn_scale)  # [U, H, m, n]
            if L.attn_softcap is not None:
                scores = _softcap(scores, L.attn_softcap)
            if m > 1:
                scores.masked_fill_(eng._mask(0, n, scores.device), float("-inf"))
            z = torch.matmul(torch.softmax(scores, dim=-1), v.transpose(1, 2)).transpose(1, 2)  # [U, m, H, dh]
            heads = 1 + li * (H + 1)
            diff = z - src["z"][li][samples][:, qpos]
            D[:, heads : heads + H, qpos] = torch.einsum("umhe,hed->uhmd", diff, w_o[li].to(dtype))
            r = first + H + 2 * K
            mlp_prefix = heads + (0 if L.parallel else H)
            x = rebuilt(base[("mlp", li)][samples][:, qpos], slice(r, r + 1), mlp_prefix, qpos)[:, 0]
            D[:, heads + H, qpos] = _mlp_out(L, L.ln2(x)) - src["mlp"][li][samples][:, qpos]
        final = ep.n_receivers - 1
        x_last = rebuilt(base["final"][samples][:, n - 1 :], slice(final, final + 1), ep.n_senders, slice(n - 1, n))
        h = eng.lnf(x_last[:, 0, 0])
        two = torch.matmul(self.w2[samples], h.unsqueeze(2)).squeeze(2)  # [U, 2]
        if self.b2 is not None:
            two = two + self.b2[samples]
        if eng.final_softcap is not None:
            two = _softcap(two, eng.final_softcap)
        return two[:, 0] - two[:, 1]
