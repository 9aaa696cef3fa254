"""Fast activation-patching engine: the forward re-implemented from the Hugging Face weights.

Why it is exact (up to float32 rounding): patching an activation at layer ``l`` and position ``p``
cannot change anything at layers ``< l`` or at positions ``< p`` (causal attention).  So a patched
run only recomputes positions ``>= p`` of layers ``>= l``; the keys and values of positions ``< p``
are those of the unpatched run, cached once.  The metric reads two logits at the last position, so
the last layer computes keys and values at every recomputed position but queries, attention output
and MLP at the last position only, and only those two columns of the unembedding are computed.
Likewise a post-attention activation (resid_mid, attn_out, mlp_out, resid_post, a head's output) of
the last layer at any other position is never read: the caller leaves such cells out (their value
is the unpatched run's, exactly).

The engine holds S prompt pairs (the samples of a family; one for a single prompt).  A *row* is one
patched run: a sample and the cells patched together in it (one cell for a sweep, several for a
joint patch, all of one component).  Rows of every sample are stacked in each forward: row ``r``
recomputes its sample's positions ``>= pmin[r]``, packed one row after the other; a chunk whose rows
all start at the same position is a dense [rows, positions] block.

Covered, one module per architecture family: GPT-2 (:mod:`.gpt2`), Llama, Mistral, Qwen2, Qwen3, Gemma,
Gemma 2 and Gemma 3 (:mod:`.llama`: RMSNorm, rotary, gated MLP, GQA; Qwen3's q/k norms, Gemma's scaled
embeddings, Gemma 2/3's post-attention and post-MLP norms, attention and final soft caps, per-layer rotary) and
GPT-NeoX / Pythia (:mod:`.neox`: partial rotary, parallel or sequential residual), float32 weights on one
device.  Gaussian noise on the corrupted run's token embeddings
(``hook_embed``) is added where the bridge's hook adds it.  ``FastEngine.self_check`` compares this
forward's last-position logits with the bridge's own for every sample and raises
:class:`Unsupported` on disagreement, so a variant this module misreads (compatibility mode, an
attached hook, an unusual config flag) falls back to the hook engine.

Devices: every tensor of a forward lives on the weights' device; index tensors are built on the CPU
from Python lists and moved once per chunk; the patched metrics of all chunks come back to the CPU
once per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from interptest.patching.fast import gpt2, llama, neox
from interptest.patching.fast.blocks import Unsupported, linear, rotate_half

__all__ = ["FastEngine", "Unsupported"]

# per-head copies of the q/k/v projections (for node rows that replace most heads) only up to this size:
# gpt2-small's are 85 MB, pythia-410m's 300 MB; a 7B model's would double its attention weights
PER_HEAD_BYTES = 512 * 2**20

_FAMILIES = {cls: mod.build for mod in (gpt2, llama, neox) for cls in mod.HF_CLASSES}


@dataclass
class _Run:
    """Everything the engine needs from one unpatched run of all S samples (per layer, all positions)."""

    resid_pre: list = field(default_factory=list)  # [S, n, d]
    resid_mid: list = field(default_factory=list)  # [S, n, d] (None: parallel block)
    attn_out: list = field(default_factory=list)
    mlp_out: list = field(default_factory=list)
    z: list = field(default_factory=list)  # [S, n, H, dh]
    k: list = field(default_factory=list)  # [S, n, Hkv, dh] after rotary
    v: list = field(default_factory=list)
    final: torch.Tensor = field(default_factory=lambda: torch.empty(0, device="cpu"))  # resid_post, last layer

    def resid_post(self, layer: int):
        return self.resid_pre[layer + 1] if layer + 1 < len(self.resid_pre) else self.final

    def split(self, S: int) -> tuple[_Run, _Run]:
        """The first S samples and the rest, as two runs (views)."""
        a, b = _Run(), _Run()
        for name in ("resid_pre", "resid_mid", "attn_out", "mlp_out", "z", "k", "v"):
            for t in getattr(self, name):
                getattr(a, name).append(None if t is None else t[:S])
                getattr(b, name).append(None if t is None else t[S:])
        a.final, b.final = self.final[:S], self.final[S:]
        return a, b

    def act(self, component: str, layer: int) -> torch.Tensor:
        if component == "heads":
            return self.z[layer]
        if component == "resid_post":
            return self.resid_post(layer)
        return getattr(self, component)[layer]


class _Pack:
    """R rows; row r recomputes positions pmin[r]..n-1 of sample smp[r], packed row after row."""

    def __init__(self, smp: Sequence[int], pmin: Sequence[int], n: int, device):
        R = len(smp)
        self.R, self.n = R, n
        self.q0 = min(pmin)
        self.dense = all(p == self.q0 for p in pmin)
        cnt = torch.tensor([n - p for p in pmin], dtype=torch.long, device="cpu")
        self.offset = torch.cumsum(cnt, 0) - cnt  # CPU, for pack indices
        self.pmin = torch.tensor(list(pmin), dtype=torch.long, device="cpu")
        self.T = int(cnt.sum())
        rows = torch.repeat_interleave(torch.arange(R, device="cpu"), cnt)
        pos = torch.arange(self.T, device="cpu") - self.offset[rows] + self.pmin[rows]
        smp_t = torch.tensor(list(smp), dtype=torch.long, device="cpu")
        self.smp = smp_t.to(device)
        self.rows = rows.to(device)
        self.pos = pos.to(device)
        self.tok_smp = smp_t[rows].to(device)
        self.last = (self.offset + cnt - 1).to(device)

    def index(self, rows: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Pack index (CPU) of (row, position) pairs given on the CPU."""
        return self.offset[rows] + pos - self.pmin[rows]


@dataclass
class _Patch:
    """Source values written into one layer's ``component`` activation at pack indices ``idx``."""

    component: str
    idx: torch.Tensor
    val: torch.Tensor
    head: torch.Tensor | None = None


@dataclass
class _Nodes:
    """Node-set writes of one layer: head outputs where ``z_mask`` [T, H] and the MLP output where
    ``m_mask`` [T] is True take the source values ``z_src`` [T, H, dh] / ``m_src`` [T, d] (None: none)."""

    z_mask: torch.Tensor | None
    z_src: torch.Tensor | None
    m_mask: torch.Tensor | None
    m_src: torch.Tensor | None


# "no patch": a component no layer has, so no branch writes anything
_NO_PATCH = _Patch("", torch.empty(0, dtype=torch.long, device="cpu"), torch.empty(0, device="cpu"))


def _softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """Gemma 2 / 3's soft cap, ``cap * tanh(x / cap)``, as transformers computes it (divide, tanh, multiply)."""
    return torch.tanh(x / cap) * cap


def _mlp_in(L, x: torch.Tensor, patch: _Patch) -> torch.Tensor:
    """The MLP's input (its norm's output, the bridge's ``mlp.hook_in``), path patching's ``mlp_in`` receiver
    written where ``patch`` says."""
    h = L.ln2(x)
    if patch.component == "mlp_in":
        h[patch.idx] = patch.val
    return h


def _mlp_out(L, h: torch.Tensor) -> torch.Tensor:
    """The MLP's output as the residual receives it (after Gemma 2 / 3's post-MLP norm)."""
    out = L.mlp(h)
    return out if L.post_mlp is None else L.post_mlp(out)


class FastEngine:
    # set by build(): the device, the samples' count and length, their first differences, and the two
    # unembedding rows (and biases) of each sample's expect/foil
    device: torch.device
    S: int
    n: int
    first_diff: list[int]
    w2: torch.Tensor
    b2: torch.Tensor | None

    def __init__(self, arch):
        self.arch = arch.name
        self.layers = arch.layers
        self.embed = arch.embed
        self.lnf = arch.lnf
        self.unembed_w = arch.unembed_w
        self.unembed_b = arch.unembed_b
        self.rotary = arch.rotary
        self.n_heads, self.n_kv, self.d_head = arch.n_heads, arch.n_kv, arch.d_head
        self.final_softcap = arch.final_softcap
        self.runs: dict[str, _Run] = {}
        self._masks: dict[tuple[int, int], torch.Tensor] = {}
        self._cs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._heads: dict[int, list | None] = {}  # per layer: each head's q/k/v projection (head_projections)

    # ---- construction --------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        model,
        clean_tokens,
        corrupt_tokens,
        expect_ids,
        foil_ids,
        *,
        first_diff,
        embed_noise=None,
        rows_per_batch: int = 64,
    ):
        """clean/corrupt tokens [S, n]; expect/foil ids [S]; first_diff [S] (CPU: the first position
        where the runs differ, tokens or noise); embed_noise: None or [S, n, d_model], added to the
        corrupted run's token embeddings."""
        hf = getattr(getattr(model, "_driver", None), "underlying_model", None)
        if hf is None:
            hf = getattr(model, "original_model", None)
        if hf is None:
            raise Unsupported("no underlying Hugging Face model found")
        kind = type(hf).__name__
        builder = _FAMILIES.get(kind)
        if builder is None:
            raise Unsupported(f"architecture {kind} not covered by the fast engine")
        params = list(hf.parameters())
        dtypes = {p.dtype for p in params}
        devices = {p.device for p in params}
        if dtypes != {torch.float32}:
            raise Unsupported(f"fast engine needs float32 weights, found {sorted(map(str, dtypes))}")
        if len(devices) != 1:
            raise Unsupported(f"fast engine needs the weights on one device, found {sorted(map(str, devices))}")
        if getattr(hf, "training", False):
            raise Unsupported("model is in training mode")
        arch = builder(hf)
        S, n = int(clean_tokens.shape[0]), int(clean_tokens.shape[1])
        if arch.window is not None and n >= arch.window:
            raise Unsupported(f"{n} tokens reach {kind}'s sliding attention window ({arch.window} tokens)")
        eng = cls(arch)
        eng.device = dev = next(iter(devices))
        eng.S, eng.n = S, n
        eng.first_diff = [int(x) for x in first_diff]
        ids = torch.stack([torch.as_tensor(expect_ids, device="cpu"), torch.as_tensor(foil_ids, device="cpu")], 1)
        eng.w2 = eng.unembed_w[ids.to(dev)].detach()  # [S, 2, d]
        eng.b2 = None if eng.unembed_b is None else eng.unembed_b[ids.to(dev)].detach()  # [S, 2]
        # both runs in the same forwards: the clean samples, then the corrupted ones (+ noise)
        tokens = torch.cat([clean_tokens.to(dev), corrupt_tokens.to(dev)])
        noise = None
        if embed_noise is not None:
            noise = torch.cat([torch.zeros_like(embed_noise, device=dev), embed_noise.to(dev)])
        both = eng._full_run(tokens, noise, rows_per_batch)
        eng.runs["clean"], eng.runs["corrupt"] = both.split(S)
        return eng

    # ---- the forward ---------------------------------------------------------------------

    def _cos_sin(self, n: int, like: torch.Tensor, rope=None):
        """cos/sin [n, rotary dims] of the model's rotary module, or of a layer's own (``rope``)."""
        fn = rope if rope is not None else self.rotary
        cached = self._cs.get(id(fn))
        if cached is None or cached[0].shape[0] < n:
            pos = torch.arange(n, device=like.device).unsqueeze(0)
            cos, sin = fn(like[:1].unsqueeze(0), pos)
            cached = self._cs[id(fn)] = (cos[0], sin[0])
        return cached

    def _rope(self, x, cos, sin, rd):
        """x [T, heads, dh]; cos/sin [T, rd]."""
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)
        if rd == x.shape[-1]:
            return x * c + rotate_half(x) * s
        xr, xp = x[..., :rd], x[..., rd:]
        return torch.cat((xr * c + rotate_half(xr) * s, xp), dim=-1)

    def _mask(self, q0: int, n: int, device) -> torch.Tensor:
        key = (q0, n)
        if key not in self._masks:
            qi = torch.arange(q0, n, device=device).unsqueeze(1)
            ki = torch.arange(n, device=device).unsqueeze(0)
            self._masks[key] = ki > qi
        return self._masks[key]

    def _keys(self, k, pack: _Pack, base_k):
        """All n keys (or values) of every row [R, n, H, dh]: the row's recomputed positions from ``k``
        [T, Hkv, dh], earlier ones from the base run (``base_k``: [R, q0, Hkv, dh] for a dense pack,
        [R, n, Hkv, dh] otherwise, None when nothing precedes the pack)."""
        R, n = pack.R, pack.n
        if pack.dense:
            kn = k.view(R, n - pack.q0, k.shape[-2], k.shape[-1])
            full = kn if base_k is None else torch.cat([base_k, kn], dim=1)
        else:
            full = base_k  # a fresh gathered copy: written in place
            full[pack.rows, pack.pos] = k
        if self.n_kv != self.n_heads:
            full = full.repeat_interleave(self.n_heads // self.n_kv, dim=2)
        return full

    # ---- heads' own projections (node rows that replace most heads; the edge forward) ---------

    def head_projections(self, li: int, x: torch.Tensor):
        """(W, b) of layer ``li``'s q, k and v functions — W [heads, d, dh], b [heads, dh] — read by probing
        them with zero and a scaled identity (a power of two: exact scaling), or None where that linear map
        does not reproduce the functions on ``x`` [n, d] (a residual of a real run): a q/k norm, say.
        Memoized per layer."""
        if li in self._heads:
            return self._heads[li]
        L = self.layers[li]
        d = x.shape[-1]
        c = 2.0**12
        probe = torch.cat([x.new_zeros(1, d), torch.eye(d, dtype=x.dtype, device=x.device) * c])
        out = []
        for t in L.qkv(probe):
            b = t[0]  # [heads, dh]
            w = ((t[1:] - b) / c).permute(1, 0, 2).contiguous()  # [heads, d, dh]
            out.append((w, b))
        h = L.ln1(x)
        linear_map = all(
            float((torch.einsum("nd,hde->nhe", h, w) + b - ref).abs().max()) <= 1e-5 * (1.0 + float(ref.abs().max()))
            for (w, b), ref in zip(out, L.qkv(h), strict=True)
        )
        self._heads[li] = out if linear_map else None
        return self._heads[li]

    def _heads_needed(self, li: int, pack: _Pack, final: bool, patch: _Patch, nodes: _Nodes | None):
        """[R, H] bool: the heads each node row computes (an output not replaced at some position), when
        fewer than half of them are and the layer's per-head projections exist (within PER_HEAD_BYTES; read
        on first use by a chunk that skips more than reading them costs); else None (the whole attention)."""
        if nodes is None or nodes.z_mask is None or patch.component or not pack.dense:
            return None
        R = pack.R
        need = ~nodes.z_mask.view(R, -1, self.n_heads).all(1)  # final: [R, H] (last position only)
        share = float(need.float().mean())
        if share > 0.5:
            return None
        d = int(self.unembed_w.shape[-1])
        if li not in self._heads and R * (pack.n - pack.q0) * (1 - share) < d:
            # reading a layer's per-head projections costs its q/k/v projection of d tokens: worth it only
            # where this chunk alone skips at least that much (a control's hundreds of rows, not one set)
            return None
        copies = len(self.layers) * (self.n_heads + 2 * self.n_kv) * (d + 1) * self.d_head * 4  # bytes, float32
        if copies > PER_HEAD_BYTES or "clean" not in self.runs:
            return None
        if self.head_projections(li, self.runs["clean"].resid_pre[li][0]) is None:
            return None
        return need

    def _needed_attention(self, li, h, pack: _Pack, base_k, base_v, need, final: bool) -> torch.Tensor:
        """Head outputs z [T, H, dh] (``final``: [R, H, dh] at each row's last position) of a dense pack's rows,
        computed for the (row, head) pairs ``need`` [R, H] marks — per key/value group, the rows that need one
        of its heads, each head's own projections (:meth:`head_projections`) — and zero elsewhere (outputs the
        caller replaces). The same operations as :meth:`_layer`'s attention, on fewer heads."""
        L = self.layers[li]
        projections = self._heads[li]
        assert projections is not None  # _heads_needed checked
        (wq, bq), (wk, bk), (wv, bv) = projections
        R, n, q0 = pack.R, pack.n, pack.q0
        nq, H, K, dh = n - q0, self.n_heads, self.n_kv, self.d_head
        G = H // K
        hr = h.view(R, nq, -1)
        z = h.new_zeros(R, 1 if final else nq, H, dh)
        if L.rotary_dims:
            cos, sin = self._cos_sin(n, h, L.rope)
        for g in range(K):
            heads = slice(g * G, (g + 1) * G)
            rows = torch.nonzero(need[:, heads].any(1)).flatten()
            if not rows.numel():
                continue
            Rg = int(rows.numel())
            hg = hr[rows]  # [Rg, nq, d]
            k = torch.matmul(hg, wk[g]) + bk[g]  # [Rg, nq, dh]
            v = torch.matmul(hg, wv[g]) + bv[g]
            hq = hg[:, -1:] if final else hg
            q = torch.einsum("rmd,hde->rmhe", hq, wq[heads]) + bq[heads]  # [Rg, m, G, dh]
            m = q.shape[1]
            if L.rotary_dims:
                c, s = cos[q0:n].repeat(Rg, 1), sin[q0:n].repeat(Rg, 1)
                k = self._rope(k.reshape(Rg * nq, 1, dh), c, s, L.rotary_dims).view(Rg, nq, dh)
                cq, sq = cos[n - m : n].repeat(Rg, 1), sin[n - m : n].repeat(Rg, 1)
                q = self._rope(q.reshape(Rg * m, G, dh), cq, sq, L.rotary_dims).view(Rg, m, G, dh)
            if base_k is not None:
                k = torch.cat([base_k[rows][:, :, g], k], dim=1)  # [Rg, n, dh]
                v = torch.cat([base_v[rows][:, :, g], v], dim=1)
            scores = torch.matmul(q.transpose(1, 2), k.transpose(1, 2).unsqueeze(1)).mul_(L.attn_scale)  # [Rg,G,m,n]
            if L.attn_softcap is not None:
                scores = _softcap(scores, L.attn_softcap)
            if not final:
                scores.masked_fill_(self._mask(q0, n, h.device), float("-inf"))
            pattern = torch.softmax(scores, dim=-1)
            z[rows, :, heads] = torch.matmul(pattern, v.unsqueeze(1)).transpose(1, 2)  # [Rg, m, G, dh]
        return z.reshape(R, H, dh) if final else z.reshape(pack.T, H, dh)

    def _layer(
        self,
        li,
        x,
        pack: _Pack,
        base_k,
        base_v,
        patch: _Patch | None = None,
        final: bool = False,
        store: _Run | None = None,
        nodes: _Nodes | None = None,
    ):
        """One block on packed tokens x [T, d].  ``final``: the output only at each row's last
        position [R, d] (keys and values still at every packed position).  ``nodes``: head outputs and
        the MLP output replaced where their masks say (node-set rows, :meth:`run_node_rows`)."""
        L = self.layers[li]
        H, dh = self.n_heads, self.d_head
        patch = patch if patch is not None else _NO_PATCH
        comp = patch.component or None
        if comp == "resid_pre":
            x[patch.idx] = patch.val
        h = L.ln1(x)
        need = self._heads_needed(li, pack, final, patch, nodes)
        if need is not None:  # most heads' outputs are replaced: attention for the needed ones only
            z = self._needed_attention(li, h, pack, base_k, base_v, need, final)
            xr = x[pack.last] if final else x
        else:
            if final and L.kv is not None:
                q = L.q(h[pack.last])
                k, v = L.kv(h)
            else:
                q, k, v = L.qkv(h)
                if final:
                    q = q[pack.last]
            if comp in ("q", "k", "v"):  # path patching's receivers (before rotary, as the bridge's hook_q/k/v)
                assert patch.head is not None
                {"q": q, "k": k, "v": v}[comp][patch.idx, patch.head] = patch.val
            if L.rotary_dims:
                cos, sin = self._cos_sin(pack.n, x, L.rope)
                c, s = cos[pack.pos], sin[pack.pos]
                k = self._rope(k, c, s, L.rotary_dims)
                q = (
                    self._rope(q, c[pack.last], s[pack.last], L.rotary_dims)
                    if final
                    else self._rope(q, c, s, L.rotary_dims)
                )
            kf, vf = self._keys(k, pack, base_k), self._keys(v, pack, base_v)
            R, n, q0 = pack.R, pack.n, pack.q0
            if final:  # the last position attends to every position: no mask
                scores = torch.matmul(q.unsqueeze(2), kf.permute(0, 2, 3, 1)).mul_(L.attn_scale)  # [R, H, 1, n]
                if L.attn_softcap is not None:
                    scores = _softcap(scores, L.attn_softcap)
                pattern = torch.softmax(scores, dim=-1)
                z = torch.matmul(pattern, vf.transpose(1, 2))[:, :, 0]  # [R, H, dh]
                xr = x[pack.last]
            else:
                nq = n - q0
                if pack.dense:
                    qp = q.view(R, nq, H, dh)
                else:
                    qp = x.new_zeros(R, nq, H, dh)
                    qp[pack.rows, pack.pos - q0] = q
                scores = torch.matmul(qp.transpose(1, 2), kf.permute(0, 2, 3, 1)).mul_(L.attn_scale)  # [R,H,nq,n]
                if L.attn_softcap is not None:
                    scores = _softcap(scores, L.attn_softcap)
                scores.masked_fill_(self._mask(q0, n, x.device), float("-inf"))  # in place: a fresh temporary
                pattern = torch.softmax(scores, dim=-1)
                zf = torch.matmul(pattern, vf.transpose(1, 2)).transpose(1, 2)  # [R, nq, H, dh]
                z = zf.reshape(pack.T, H, dh) if pack.dense else zf[pack.rows, pack.pos - q0]
                xr = x
        if comp == "heads":
            assert patch.head is not None  # a heads patch names its heads
            z[patch.idx, patch.head] = patch.val
        if nodes is not None and nodes.z_mask is not None and nodes.z_src is not None:
            z = torch.where(nodes.z_mask.unsqueeze(-1), nodes.z_src, z)
        attn = linear(L.o, z.reshape(z.shape[0], H * dh))
        if L.post_attn is not None:
            attn = L.post_attn(attn)
        if comp == "attn_out":
            attn[patch.idx] = patch.val
        if L.parallel:
            mlp = _mlp_out(L, _mlp_in(L, xr, patch))
            if comp == "mlp_out":
                mlp[patch.idx] = patch.val
            if nodes is not None and nodes.m_mask is not None and nodes.m_src is not None:
                mlp = torch.where(nodes.m_mask.unsqueeze(-1), nodes.m_src, mlp)
            out = mlp + attn + xr
            mid = None
        else:
            mid = attn + xr
            if comp == "resid_mid":
                mid[patch.idx] = patch.val
            mlp = _mlp_out(L, _mlp_in(L, mid, patch))
            if comp == "mlp_out":
                mlp[patch.idx] = patch.val
            if nodes is not None and nodes.m_mask is not None and nodes.m_src is not None:
                mlp = torch.where(nodes.m_mask.unsqueeze(-1), nodes.m_src, mlp)
            out = mid + mlp
        if comp == "resid_post":
            out[patch.idx] = patch.val
        if store is not None:
            store.resid_pre.append(x)
            store.k.append(k)
            store.v.append(v)
            store.z.append(z)
            store.attn_out.append(attn)
            store.mlp_out.append(mlp)
            store.resid_mid.append(mid)
        return out

    def _full_run(self, tokens, noise, rows_per_batch: int) -> _Run:
        """The unpatched run of every sample, ``rows_per_batch`` samples per forward."""
        S, n = tokens.shape
        parts = []
        for start in range(0, S, max(1, rows_per_batch)):
            stop = min(S, start + max(1, rows_per_batch))
            pack = _Pack(range(start, stop), [0] * (stop - start), n, tokens.device)
            run = _Run()
            x = self.embed(
                tokens[start:stop].reshape(-1),
                pack.pos,
                None if noise is None else noise[start:stop].reshape(pack.T, -1),
            )
            for li in range(len(self.layers)):
                x = self._layer(li, x, pack, None, None, store=run)
            run.final = x
            parts.append(run)

        def stack(ts, *shape):
            if ts[0] is None:
                return None
            return (ts[0] if len(ts) == 1 else torch.cat(ts)).reshape(S, n, *shape)

        out = _Run()
        d = parts[0].final.shape[-1]
        for li in range(len(self.layers)):
            for name, shape in (
                ("resid_pre", (d,)),
                ("resid_mid", (d,)),
                ("attn_out", (d,)),
                ("mlp_out", (d,)),
                ("z", (self.n_heads, self.d_head)),
                ("k", (self.n_kv, self.d_head)),
                ("v", (self.n_kv, self.d_head)),
            ):
                getattr(out, name).append(stack([getattr(p, name)[li] for p in parts], *shape))
        out.final = stack([p.final for p in parts], d)
        return out

    def _metric_rows(self, x_last, smp):
        """m = logit[expect] - logit[foil] of each row's sample, from last-position residuals [R, d]."""
        h = self.lnf(x_last)
        two = torch.matmul(self.w2[smp], h.unsqueeze(2)).squeeze(2)  # [R, 2]
        if self.b2 is not None:
            two = two + self.b2[smp]
        if self.final_softcap is not None:
            two = _softcap(two, self.final_softcap)
        return (two[:, 0] - two[:, 1]).float()  # on the device; run_rows moves all rows at once

    def self_check(self, clean_logits, corrupt_logits):
        """clean/corrupt_logits: the bridge's last-position logits [S, vocab] (CPU)."""
        for name, ref in (("clean", clean_logits), ("corrupt", corrupt_logits)):
            h = self.lnf(self.runs[name].final[:, -1])
            logits = torch.nn.functional.linear(h, self.unembed_w, self.unembed_b)
            if self.final_softcap is not None:
                logits = _softcap(logits, self.final_softcap)
            logits = logits.float().cpu()
            err = float((logits - ref).abs().max())
            tol = 1e-4 * (1.0 + float(ref.abs().max()))
            if not err <= tol:
                raise Unsupported(f"self-check failed on the {name} run: max |Δlogit| = {err:.3g} vs bridge")

    # ---- patched rows --------------------------------------------------------------------

    def _entries(self, component, sample, cells):
        """The (layer, position, head) writes of a row's cells; a head without a position is every
        position from the sample's first difference on (earlier ones are equal in both runs)."""
        out: list[tuple[int, int, int]] = []
        last = len(self.layers) - 1
        for c in cells:
            if component == "heads":
                l, h, p = c
                ps: Sequence[int] = range(self.first_diff[sample], self.n) if p is None else (p,)
                if l == last:  # only the last position of the last layer is read
                    ps = [q for q in ps if q == self.n - 1]
                out.extend((l, q, h) for q in ps)
            else:
                l, p = c
                if l == last and component != "resid_pre" and p != self.n - 1:
                    continue
                out.append((l, p, -1))
        return out

    def run_rows(
        self, component: str, direction: str, rows: Sequence[tuple[int, Sequence[tuple]]], rows_per_batch: int
    ) -> torch.Tensor:
        """Patched metric (float32, CPU) of each row (sample, cells), the cells patched together.

        The caller leaves out cells that provably change nothing (before the sample's first
        difference; a post-attention activation of the last layer away from the last position)."""
        base = self.runs["corrupt" if direction == "denoise" else "clean"]
        src = self.runs["clean" if direction == "denoise" else "corrupt"]
        entries = [self._entries(component, s, cells) for s, cells in rows]
        if not all(entries):
            raise ValueError("a row patches nothing; leave it out")  # the caller's contract
        l0 = [min(e[0] for e in es) for es in entries]
        pmin = [min(e[1] for e in es) for es in entries]
        order = sorted(range(len(rows)), key=lambda i: (l0[i], pmin[i], rows[i][0], i))
        parts: list[torch.Tensor] = []
        i0 = 0
        while i0 < len(order):
            i1 = i0
            while i1 < len(order) and i1 - i0 < rows_per_batch and l0[order[i1]] == l0[order[i0]]:
                i1 += 1
            chunk = order[i0:i1]
            parts.append(
                self._run_chunk(
                    component,
                    l0[chunk[0]],
                    [rows[i][0] for i in chunk],
                    [pmin[i] for i in chunk],
                    [entries[i] for i in chunk],
                    base,
                    src,
                )
            )
            i0 = i1
        out = torch.empty(len(rows), dtype=torch.float32, device="cpu")
        if parts:
            out[torch.tensor(order, dtype=torch.long, device="cpu")] = torch.cat(parts).cpu()  # one transfer
        return out

    def _run_chunk(self, component, l0, smp, pmin, entries, base: _Run, src: _Run):
        """Rows that all start at layer l0: their patched metrics [R] on the device."""
        dev, n, last = self.device, self.n, len(self.layers) - 1
        # every write as flat CPU arrays: row, layer, position, head
        flat = [(r, l, p, h) for r, es in enumerate(entries) for (l, p, h) in es]
        E = torch.tensor(flat, dtype=torch.long, device="cpu").reshape(-1, 4)
        smp_cpu = torch.tensor(smp, dtype=torch.long, device="cpu")
        at_l0 = E[E[:, 1] == l0]
        R = len(smp)
        if component == "resid_pre":
            start, x_start = l0, None
        else:
            # layer l0 changes only at the written positions: finish the layer there alone
            pairs, inv = torch.unique(at_l0[:, 0] * n + at_l0[:, 2], return_inverse=True)
            pr, pp = pairs // n, pairs % n
            out = self._finish_layer(
                component,
                l0,
                smp_cpu[pr].to(dev),
                pp.to(dev),
                inv.to(dev),
                at_l0[:, 3].to(dev),
                smp_cpu[at_l0[:, 0]].to(dev),
                at_l0[:, 2].to(dev),
                base,
                src,
            )
            if l0 == last:  # one write per row, at the last position (the caller's contract)
                x_last = torch.empty(R, out.shape[-1], dtype=out.dtype, device=dev)
                x_last[pr.to(dev)] = out
                return self._metric_rows(x_last, smp_cpu.to(dev))
            start, x_start = l0 + 1, (pr, pp, out)
        pack = _Pack(smp, pmin, n, dev)
        x = base.resid_pre[start][pack.tok_smp, pack.pos]
        if x_start is not None:
            pr, pp, out = x_start
            x[pack.index(pr, pp).to(dev)] = out
        for li in range(start, len(self.layers)):
            final = li == last
            if pack.dense:
                bk = None if pack.q0 == 0 else base.k[li][:, : pack.q0][pack.smp]
                bv = None if pack.q0 == 0 else base.v[li][:, : pack.q0][pack.smp]
            else:
                bk, bv = base.k[li][pack.smp], base.v[li][pack.smp]
            here = E[E[:, 1] == li] if (li > l0 or component == "resid_pre") else E[:0]
            patch = self._patch(component, here, pack, smp_cpu, src, li, final) if here.shape[0] else None
            x = self._layer(li, x, pack, bk, bv, patch=patch, final=final)
        return self._metric_rows(x, pack.smp)

    def _patch(self, component, here, pack: _Pack, smp_cpu, src: _Run, li, final) -> _Patch | None:
        """The writes ``here`` [(row, layer, pos, head)] of layer li as pack indices and source values."""
        if final and component != "resid_pre":  # outputs exist at the last position only
            here = here[here[:, 2] == pack.n - 1]
            if not here.shape[0]:
                return None
            idx = here[:, 0]
        else:
            idx = pack.index(here[:, 0], here[:, 2])
        dev = self.device
        s, p = smp_cpu[here[:, 0]].to(dev), here[:, 2].to(dev)
        act = src.act(component, li)
        if component == "heads":
            h = here[:, 3].to(dev)
            return _Patch(component, idx.to(dev), act[s, p, h], h)
        return _Patch(component, idx.to(dev), act[s, p])

    def _finish_layer(self, component, li, smp, pos, inv, heads, e_smp, e_pos, base: _Run, src: _Run):
        """resid_post of layer li at (sample, position) pairs whose ``component`` activation is
        replaced by the source run's (heads: the written heads only; ``inv`` maps each write to its
        pair).  Everything else comes from the base run."""
        L = self.layers[li]
        attn = mid = mlp = None
        if component == "heads":
            z = base.z[li][smp, pos]  # [U, H, dh] (a gathered copy)
            z[inv, heads] = src.z[li][e_smp, e_pos, heads]
            attn = linear(L.o, z.reshape(z.shape[0], -1))
            if L.post_attn is not None:
                attn = L.post_attn(attn)
        elif component == "attn_out":
            attn = src.attn_out[li][smp, pos]
        elif component == "resid_mid":
            mid = src.resid_mid[li][smp, pos]
        elif component == "mlp_out":
            mlp = src.mlp_out[li][smp, pos]
        elif component == "resid_post":
            return src.resid_post(li)[smp, pos]
        else:
            raise ValueError(component)
        if L.parallel:
            a = attn if attn is not None else base.attn_out[li][smp, pos]
            m = mlp if mlp is not None else base.mlp_out[li][smp, pos]
            return m + a + base.resid_pre[li][smp, pos]
        if mid is None:
            mid = (attn + base.resid_pre[li][smp, pos]) if attn is not None else base.resid_mid[li][smp, pos]
        if mlp is None:
            mlp = _mlp_out(L, L.ln2(mid))
        return mid + mlp

    # ---- node-set rows (circuits) --------------------------------------------------------

    def add_run(self, name: str, tokens: torch.Tensor, rows_per_batch: int) -> _Run:
        """The unpatched run of other prompts ``tokens`` [R, n] (a mean ablation's reference prompts),
        kept as ``runs[name]``."""
        if name not in self.runs:
            self.runs[name] = self._full_run(tokens.to(self.device), None, rows_per_batch)
        return self.runs[name]

    def run_node_rows(
        self,
        base: str,
        z_src: Sequence[torch.Tensor],
        m_src: Sequence[torch.Tensor],
        z_sets: torch.Tensor,
        m_sets: torch.Tensor,
        rows: Sequence[tuple[int, int]],
        rows_per_batch: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Node-set rows: row (s, j) is the ``base`` run ("clean" or "corrupt") of sample s with the head
        outputs where ``z_sets[j]`` [L, n, H] and the MLP outputs where ``m_sets[j]`` [L, n] (bool, CPU)
        is True replaced by the sources ``z_src[l]`` [S, n, H, dh] and ``m_src[l]`` [S, n, d] (on the
        device; expanded views are fine).

        Which work is skipped, and why it is exact: a write whose source equals the unpatched base run's
        value (bit for bit) at a place the row has not changed yet is a no-op; a row's writes change
        nothing before the first layer ``l0`` and the first position ``p0`` at which one of its writes
        differs from the base run (causal attention; computed from the source tensors, per sample), so
        the row recomputes layers ``>= l0`` at positions ``>= p0`` only, with the base run's keys and
        values before ``p0``.  Writes to the last layer away from the last position are never read.  A
        row none of whose writes differs is the base run itself: not recomputed.

        Returns (metrics [R] float32 CPU, recomputed [R] bool CPU); a row not recomputed has the base
        run's metric from this engine's forward."""
        run = self.runs[base]
        L, n, S = len(self.layers), self.n, self.S
        last = L - 1
        R = len(rows)
        out = torch.empty(R, dtype=torch.float32, device="cpu")
        changed = torch.zeros(R, dtype=torch.bool, device="cpu")
        if not R:
            return out, changed
        # where each source differs from the base run, per sample: [S, L, n, H] and [S, L, n]
        dz = torch.stack([(z_src[l].expand(S, -1, -1, -1) != run.z[l]).any(-1) for l in range(L)], 1).cpu()
        dm = torch.stack([(m_src[l].expand(S, -1, -1) != run.mlp_out[l]).any(-1) for l in range(L)], 1).cpu()
        dz[:, last, : n - 1] = False  # the last layer is read at the last position only
        dm[:, last, : n - 1] = False
        smp = torch.tensor([s for s, _ in rows], dtype=torch.long, device="cpu")
        sets = torch.tensor([j for _, j in rows], dtype=torch.long, device="cpu")
        l0 = torch.zeros(R, dtype=torch.long, device="cpu")
        p0 = torch.zeros(R, dtype=torch.long, device="cpu")
        for a in range(0, R, 4096):  # bounded bookkeeping memory: [rows, L, n, H] bools per block
            b = min(R, a + 4096)
            eff = (z_sets[sets[a:b]] & dz[smp[a:b]]).any(-1) | (m_sets[sets[a:b]] & dm[smp[a:b]])  # [r, L, n]
            by_layer, by_pos = eff.any(2), eff.any(1)
            changed[a:b] = by_layer.any(1)
            l0[a:b] = by_layer.int().argmax(1)
            p0[a:b] = by_pos.int().argmax(1)
        todo = torch.nonzero(changed).flatten().tolist()
        order = sorted(todo, key=lambda i: (int(l0[i]), int(p0[i]), int(smp[i]), i))
        parts: list[torch.Tensor] = []
        i0 = 0
        while i0 < len(order):
            i1 = i0
            while i1 < len(order) and i1 - i0 < rows_per_batch and int(l0[order[i1]]) == int(l0[order[i0]]):
                i1 += 1
            chunk = torch.tensor(order[i0:i1], dtype=torch.long, device="cpu")
            parts.append(
                self._run_node_chunk(
                    run, int(l0[order[i0]]), smp[chunk], p0[chunk], sets[chunk], z_src, m_src, z_sets, m_sets
                )
            )
            i0 = i1
        rest = torch.nonzero(~changed).flatten()
        if rest.numel():
            parts.append(self._metric_rows(run.final[smp[rest].to(self.device), -1], smp[rest].to(self.device)))
        if parts:
            where = torch.tensor(order + rest.tolist(), dtype=torch.long, device="cpu")
            out[where] = torch.cat(parts).cpu()  # one transfer
        return out, changed

    def _run_node_chunk(self, run: _Run, l0, smp, p0, sets, z_src, m_src, z_sets, m_sets):
        """Node-set rows that all start at layer l0: their metrics [R] on the device.

        Rows whose sample, first position and writes agree up to a layer have the same values up to its
        output (the same inputs through the same operations), so each layer runs once per distinct
        prefix (``gid``) and its output feeds every row that shares it: random sets of a few heads share
        most of their first layers' writes."""
        dev, n, last = self.device, self.n, len(self.layers) - 1
        R = len(smp)
        zs_c, ms_c = z_sets[sets], m_sets[sets]  # [R, L, n, H], [R, L, n] (CPU)
        gid = torch.unique(torch.stack([smp, p0], 1), dim=0, return_inverse=True)[1]
        x: torch.Tensor | None = None
        prev: _Pack | None = None
        pack: _Pack | None = None
        for li in range(l0, len(self.layers)):
            feat = torch.cat([gid[:, None], zs_c[:, li].reshape(R, -1).long(), ms_c[:, li].long()], 1)
            new_gid = torch.unique(feat, dim=0, return_inverse=True)[1]
            G = int(new_gid.max()) + 1
            rep = torch.full((G,), R, dtype=torch.long, device="cpu")
            rep.scatter_reduce_(0, new_gid, torch.arange(R, device="cpu"), reduce="amin")  # a row of each group
            parent = gid[rep]  # the group each one came from (the same sample and first position)
            pack = _Pack(smp[rep].tolist(), p0[rep].tolist(), n, dev)
            if prev is None or x is None:
                x = run.resid_pre[l0][pack.tok_smp, pack.pos]
            else:
                cnt = n - p0[rep]
                rows = torch.repeat_interleave(torch.arange(G, device="cpu"), cnt)
                local = torch.arange(int(cnt.sum()), device="cpu") - (torch.cumsum(cnt, 0) - cnt)[rows]
                x = x[(prev.offset[parent[rows]] + local).to(dev)]
            gid, prev = new_gid, pack
            final = li == last
            if pack.dense:
                bk = None if pack.q0 == 0 else run.k[li][:, : pack.q0][pack.smp]
                bv = None if pack.q0 == 0 else run.v[li][:, : pack.q0][pack.smp]
            else:
                bk, bv = run.k[li][pack.smp], run.v[li][pack.smp]
            zs, ms = zs_c[rep, li].to(dev), ms_c[rep, li].to(dev)  # [G, n, H], [G, n]
            if final:  # outputs at each row's last position only
                zm, mm = zs[:, n - 1], ms[:, n - 1]
                at_s, at_p = pack.smp, torch.full_like(pack.smp, n - 1)
            else:
                zm, mm = zs[pack.rows, pack.pos], ms[pack.rows, pack.pos]
                at_s, at_p = pack.tok_smp, pack.pos
            z_any, m_any = bool(zm.any()), bool(mm.any())
            nodes = _Nodes(
                zm if z_any else None,
                z_src[li][at_s, at_p] if z_any else None,
                mm if m_any else None,
                m_src[li][at_s, at_p] if m_any else None,
            )
            x = self._layer(li, x, pack, bk, bv, final=final, nodes=nodes)
        assert x is not None and pack is not None  # l0 <= last: at least one layer ran
        return self._metric_rows(x, pack.smp)[gid.to(dev)]

    # ---- path patching (:meth:`CircuitPatcher.path`) -------------------------------------

    def run_path_rows(
        self,
        base: str,
        z_src: Sequence[torch.Tensor],
        m_src: Sequence[torch.Tensor],
        z_sets: torch.Tensor,
        m_sets: torch.Tensor,
        kind: str,
        layer: int,
        receiver_sets: torch.Tensor,
        senders: Sequence[tuple[int, int]],
        rows_per_batch: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Path patching (Wang et al. 2022): row (s, i) is sample s with sender set i, whose heads' outputs
        where ``z_sets[i]`` [L, n, H] and MLP outputs where ``m_sets[i]`` [L, n] (bool, CPU) are True take the
        sources ``z_src[l]`` / ``m_src[l]``; for every receiver set j (``receiver_sets`` [J, n, width] for
        ``kind`` q (width H), k or v (width H_kv) of layer ``layer``, [J, n] for mlp_in or logits) the metric
        of the ``base`` run with those receiver inputs replaced by the ones step 1 computes.

        Step 1 without attention: every head's output is frozen (at the base run's, or the source's for a
        sender), so each layer's attention output is the output projection of known z's; only the norms and
        MLPs recompute, up to the receivers' layer. Step 2 is the base run from the receivers' layer and
        first position on (nothing before them changes: causal attention), the receiver input written at
        its hook's place — q/k/v before rotary, the MLP's input after its norm, the final residual.

        Returns (metrics [len(senders), J] float32 CPU, patched [len(senders), J] bool CPU); an unpatched
        row (an empty receiver set, or one that is not read) has this engine's base metric."""
        run = self.runs[base]
        L, n = len(self.layers), self.n
        dev = self.device
        J, I = len(receiver_sets), len(senders)
        out = torch.empty(I, J, dtype=torch.float32, device="cpu")
        patched = torch.zeros(I, J, dtype=torch.bool, device="cpu")
        stop = L if kind == "logits" else layer  # step 1 runs layers < stop (and layer's attention for mlp_in)
        any_write = (z_sets.any(-1) | m_sets).any(-1).any(0)  # [L]
        first = int(any_write.int().argmax()) if bool(any_write.any()) else L
        l0 = min(first, stop)
        base_metric = self._metric_rows(run.final[:, -1], torch.arange(self.S, device=dev)).cpu()
        where = receiver_sets.reshape(J, n, -1).any(-1)  # [J, n]: positions each receiver set writes
        p_first = [int(w.int().argmax()) if bool(w.any()) else n for w in where]
        for a in range(0, I, max(1, rows_per_batch)):
            chunk = list(senders[a : a + max(1, rows_per_batch)])
            R = len(chunk)
            smp_cpu = torch.tensor([s for s, _ in chunk], dtype=torch.long, device="cpu")
            sets_cpu = torch.tensor([i for _, i in chunk], dtype=torch.long, device="cpu")
            smp = smp_cpu.to(dev)
            zs, ms = z_sets[sets_cpu].to(dev), m_sets[sets_cpu].to(dev)  # [R, L, n, H], [R, L, n]
            x = (run.resid_pre[l0] if l0 < L else run.final)[smp]  # [R, n, d]
            d = x.shape[-1]

            for li in range(l0, stop):
                Lr = self.layers[li]
                attn = self._frozen_attn(li, zs, z_src, run, smp)
                mid = x if Lr.parallel else attn + x  # what the MLP reads (the block's input when parallel)
                mlp = _mlp_out(Lr, Lr.ln2(mid.reshape(R * n, d))).view(R, n, d)
                mlp = torch.where(ms[:, li, :, None], m_src[li][smp], mlp)
                x = mlp + attn + x if Lr.parallel else mid + mlp  # _layer's order of additions
            # the receivers' inputs in step 1: [R, n, width, dh] (q/k/v) or [R, n, d]
            if kind == "logits":
                got = self._metric_rows(x[:, n - 1], smp).cpu()
                for j in range(J):
                    if bool(where[j, n - 1]):
                        out[a : a + R, j], patched[a : a + R, j] = got, True
                    else:
                        out[a : a + R, j] = base_metric[smp_cpu]
                continue
            Lr = self.layers[layer]
            if kind == "mlp_in":
                resid = x if Lr.parallel else self._frozen_attn(layer, zs, z_src, run, smp) + x
                value = Lr.ln2(resid.reshape(R * n, d)).view(R, n, d)
            else:
                qkv = Lr.qkv(Lr.ln1(x.reshape(R * n, d)))
                t = qkv[("q", "k", "v").index(kind)]
                value = t.view(R, n, t.shape[-2], t.shape[-1])
            for j in range(J):
                if p_first[j] >= n:
                    out[a : a + R, j] = base_metric[smp_cpu]
                    continue
                got = self._path_receiver_rows(run, smp_cpu, kind, layer, receiver_sets[j], p_first[j], value)
                out[a : a + R, j], patched[a : a + R, j] = got.cpu(), True
        return out, patched

    def _frozen_attn(self, li: int, zs: torch.Tensor, z_src, run: _Run, smp: torch.Tensor) -> torch.Tensor:
        """Layer ``li``'s attention output [R, n, d] with every head's output frozen: the source's where ``zs``
        [R, L, n, H] says (the senders), the base run's elsewhere."""
        R, n, H, dh = zs.shape[0], self.n, self.n_heads, self.d_head
        z = torch.where(zs[:, li, :, :, None], z_src[li][smp], run.z[li][smp])
        L = self.layers[li]
        attn = linear(L.o, z.reshape(R * n, H * dh))
        return (attn if L.post_attn is None else L.post_attn(attn)).view(R, n, -1)

    def _path_receiver_rows(self, run: _Run, smp_cpu, kind: str, layer: int, mask, p0: int, value):
        """Step 2 for one receiver set (``mask`` [n, width] or [n], CPU; ``p0`` its first position): the base
        run of each row's sample from ``layer`` and ``p0`` on, the receiver input taken from ``value``
        (step 1's, one per row). Metrics [R] on the device."""
        n, L, dev = self.n, len(self.layers), self.device
        R = len(smp_cpu)
        pack = _Pack(smp_cpu.tolist(), [p0] * R, n, dev)
        final = layer == L - 1
        if kind in ("q", "k", "v"):
            pos, head = torch.nonzero(mask, as_tuple=True)  # CPU
        else:
            pos = torch.nonzero(mask).flatten()
            head = None
        at_last = final and kind in ("q", "mlp_in")  # the last layer computes these at the last position only
        if at_last:
            keep = pos == n - 1
            pos, head = pos[keep], None if head is None else head[keep]
        rows = torch.arange(R, device="cpu").repeat_interleave(len(pos))
        pos_r, head_r = pos.repeat(R), None if head is None else head.repeat(R)
        idx = rows if at_last else pack.index(rows, pos_r)  # one value per row there, else per packed token
        rows_d, pos_d = rows.to(dev), pos_r.to(dev)
        if head_r is None:
            val = value[rows_d, pos_d]
            patch = _Patch(kind, idx.to(dev), val)
        else:
            head_d = head_r.to(dev)
            patch = _Patch(kind, idx.to(dev), value[rows_d, pos_d, head_d], head_d)
        x = run.resid_pre[layer][pack.tok_smp, pack.pos]
        for li in range(layer, L):
            bk = None if p0 == 0 else run.k[li][:, :p0][pack.smp]
            bv = None if p0 == 0 else run.v[li][:, :p0][pack.smp]
            x = self._layer(li, x, pack, bk, bv, patch=patch if li == layer else None, final=li == L - 1)
        return self._metric_rows(x, pack.smp)
