"""Fast activation-patching engine: the forward re-implemented from the Hugging Face weights.

Why it is exact (up to float32 rounding): patching an activation at layer ``l`` and position ``p``
cannot change anything at layers ``< l`` or at positions ``< p`` (causal attention).  So a patched
run only recomputes positions ``>= p`` of layers ``>= l``; the keys and values of positions ``< p``
are those of the unpatched run, cached once.  The metric reads two logits at the last position, so
only those two columns of the unembedding are computed.

Covered, one module per architecture family: GPT-2 (:mod:`.gpt2`), Llama (:mod:`.llama`: RMSNorm,
rotary, gated MLP, GQA) and GPT-NeoX / Pythia (:mod:`.neox`: partial rotary, parallel or sequential
residual), float32 weights on one device.  ``FastEngine.self_check`` compares this forward's last-position logits with the
bridge's own and raises :class:`Unsupported` on disagreement, so a variant this module misreads
(compatibility mode, an attached hook, an unusual config flag) falls back to the hook engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from interptest.patching.fast import gpt2, llama, neox
from interptest.patching.fast.blocks import Unsupported, linear, rotate_half

__all__ = ["FastEngine", "Unsupported"]

_FAMILIES = {cls: mod.build for mod in (gpt2, llama, neox) for cls in mod.HF_CLASSES}


@dataclass
class _Run:
    """Everything the engine needs from one unpatched run (per layer, all positions)."""
    resid_pre: list = field(default_factory=list)  # [n, d]
    resid_mid: list = field(default_factory=list)
    attn_out: list = field(default_factory=list)
    mlp_out: list = field(default_factory=list)
    z: list = field(default_factory=list)  # [n, H, dh]
    k: list = field(default_factory=list)  # [n, Hkv, dh] after rotary
    v: list = field(default_factory=list)
    final: torch.Tensor | None = None  # resid_post of the last layer [n, d]

    def resid_post(self, layer: int):
        return self.resid_pre[layer + 1] if layer + 1 < len(self.resid_pre) else self.final


class FastEngine:
    def __init__(self, arch):
        self.arch = arch.name
        self.layers = arch.layers
        self.embed = arch.embed
        self.lnf = arch.lnf
        self.unembed_w = arch.unembed_w
        self.unembed_b = arch.unembed_b
        self.rotary = arch.rotary
        self.n_heads, self.n_kv, self.d_head = arch.n_heads, arch.n_kv, arch.d_head
        self.runs: dict[str, _Run] = {}
        self.first_diff = 0

    # ---- construction --------------------------------------------------------------------

    @classmethod
    def build(cls, model, clean_tokens, corrupt_tokens, expect_id, foil_id):
        hf = getattr(getattr(model, "_driver", None), "underlying_model", None)
        if hf is None:
            hf = getattr(model, "original_model", None)
        if hf is None:
            raise Unsupported("no underlying Hugging Face model found")
        kind = type(hf).__name__
        builder = _FAMILIES.get(kind)
        if builder is None:
            raise Unsupported(f"architecture {kind} not covered by the fast engine")
        dtypes = {p.dtype for p in hf.parameters()}
        devices = {p.device for p in hf.parameters()}
        if dtypes != {torch.float32}:
            raise Unsupported(f"fast engine needs float32 weights, found {sorted(map(str, dtypes))}")
        if len(devices) != 1:
            raise Unsupported(f"fast engine needs the weights on one device, found {sorted(map(str, devices))}")
        if getattr(hf, "training", False):
            raise Unsupported("model is in training mode")
        eng = cls(builder(hf))
        eng.device = next(iter(devices))
        eng.expect_id, eng.foil_id = int(expect_id), int(foil_id)
        two = [eng.expect_id, eng.foil_id]
        eng.w2 = eng.unembed_w[two].detach()
        eng.b2 = None if eng.unembed_b is None else eng.unembed_b[two].detach()
        diff = (clean_tokens[0].cpu() != corrupt_tokens[0].cpu()).nonzero()
        eng.n = int(clean_tokens.shape[1])
        eng.first_diff = int(diff[0, 0]) if diff.numel() else eng.n
        eng.runs["clean"] = eng._full_run(clean_tokens[0].to(eng.device))
        eng.runs["corrupt"] = eng._full_run(corrupt_tokens[0].to(eng.device))
        return eng


    # ---- the forward ---------------------------------------------------------------------

    def _cos_sin(self, n: int, like: torch.Tensor):
        if self.rotary is None:
            return None
        if getattr(self, "_cs", None) is None or self._cs[0].shape[0] < n:
            pos = torch.arange(n, device=like.device).unsqueeze(0)
            cos, sin = self.rotary(like[:1].unsqueeze(0), pos)
            self._cs = (cos[0], sin[0])
        return self._cs

    def _rope(self, x, cos, sin, rd):
        """x [T, heads, dh]; cos/sin [T, rd]."""
        c, s = cos.unsqueeze(1), sin.unsqueeze(1)
        if rd == x.shape[-1]:
            return x * c + rotate_half(x) * s
        xr, xp = x[..., :rd], x[..., rd:]
        return torch.cat((xr * c + rotate_half(xr) * s, xp), dim=-1)

    def _layer(self, li, x, rows, pos, R, q0, n, base_k, base_v, store: _Run | None = None):
        """One block on packed tokens x [T, d] (row ``rows``, position ``pos`` each).

        Keys/values of positions not in the pack come from base_k/base_v [n, Hkv, dh]."""
        L = self.layers[li]
        H, Hkv, dh = self.n_heads, self.n_kv, self.d_head
        h = L.ln1(x)
        q, k, v = L.qkv(h)
        if L.rotary_dims:
            cos, sin = self._cos_sin(n, x)
            c, s = cos[pos], sin[pos]
            q = self._rope(q, c, s, L.rotary_dims)
            k = self._rope(k, c, s, L.rotary_dims)
        kf = base_k.unsqueeze(0).repeat(R, 1, 1, 1)
        vf = base_v.unsqueeze(0).repeat(R, 1, 1, 1)
        kf[rows, pos] = k
        vf[rows, pos] = v
        if Hkv != H:
            kf = kf.repeat_interleave(H // Hkv, dim=2)
            vf = vf.repeat_interleave(H // Hkv, dim=2)
        nq = n - q0
        qp = x.new_zeros(R, nq, H, dh)
        qp[rows, pos - q0] = q
        scores = torch.matmul(qp.transpose(1, 2), kf.permute(0, 2, 3, 1)) * L.attn_scale  # [R,H,nq,n]
        qi = torch.arange(q0, n, device=x.device).unsqueeze(1)
        ki = torch.arange(n, device=x.device).unsqueeze(0)
        scores = scores.masked_fill(ki > qi, float("-inf"))
        pattern = torch.softmax(scores, dim=-1)
        zf = torch.matmul(pattern, vf.transpose(1, 2)).transpose(1, 2)  # [R, nq, H, dh]
        z = zf[rows, pos - q0]
        attn = linear(L.o, z.reshape(z.shape[0], H * dh))
        if L.parallel:
            mlp = L.mlp(L.ln2(x))
            out = mlp + attn + x
            mid = None
        else:
            mid = attn + x
            mlp = L.mlp(L.ln2(mid))
            out = mid + mlp
        if store is not None:
            store.resid_pre.append(x)
            store.k.append(k)
            store.v.append(v)
            store.z.append(z)
            store.attn_out.append(attn)
            store.mlp_out.append(mlp)
            store.resid_mid.append(mid)
        return out

    def _full_run(self, tokens):
        n = tokens.shape[0]
        run = _Run()
        x = self.embed(tokens, torch.arange(tokens.shape[0], device=tokens.device))
        rows = torch.zeros(n, dtype=torch.long, device=x.device)
        pos = torch.arange(n, device=x.device)
        zeros = x.new_zeros(n, self.n_kv, self.d_head)
        for li in range(len(self.layers)):
            x = self._layer(li, x, rows, pos, 1, 0, n, zeros, zeros, store=run)
        run.final = x
        return run

    def _metric_rows(self, x_last):
        h = self.lnf(x_last)
        two = h @ self.w2.T
        if self.b2 is not None:
            two = two + self.b2
        return (two[:, 0] - two[:, 1]).float()  # on the device; run_cells moves all rows at once

    def self_check(self, clean_logits, corrupt_logits):
        for name, ref in (("clean", clean_logits), ("corrupt", corrupt_logits)):
            h = self.lnf(self.runs[name].final[-1:])
            logits = torch.nn.functional.linear(h, self.unembed_w, self.unembed_b)[0].float().cpu()
            err = float((logits - ref).abs().max())
            tol = 1e-4 * (1.0 + float(ref.abs().max()))
            if not err <= tol:
                raise Unsupported(f"self-check failed on the {name} run: max |Δlogit| = {err:.3g} vs bridge")

    def _run_from(self, s, X, pmin, q0, base: _Run):
        """Continue patched residuals X [R, n, d] (entering layer s) to the metric.

        Row r differs from the base run only at positions >= pmin[r] (a device tensor); q0 = min(pmin)."""
        R, n, _ = X.shape
        if s >= len(self.layers):
            return self._metric_rows(X[:, -1])
        M = torch.arange(n, device=X.device).unsqueeze(0) >= pmin.unsqueeze(1)
        rows, pos = M.nonzero(as_tuple=True)
        x = X[rows, pos]
        for li in range(s, len(self.layers)):
            x = self._layer(li, x, rows, pos, R, q0, n, base.k[li], base.v[li])
        return self._metric_rows(x[pos == n - 1])

    # ---- cells ---------------------------------------------------------------------------

    def run_cells(self, component, cells, direction, rows_per_batch):
        base = self.runs["corrupt" if direction == "denoise" else "clean"]
        src = self.runs["clean" if direction == "denoise" else "corrupt"]
        n = self.n
        parts: list[torch.Tensor] = []
        start = 0 if component == "resid_pre" else 1

        def first_pos(c):
            if component == "heads":
                return c[2] if c[2] is not None else min(self.first_diff, n - 1)
            return c[1]

        order = sorted(range(len(cells)), key=lambda i: (cells[i][0], first_pos(cells[i]), i))
        i0 = 0
        while i0 < len(order):
            layer = cells[order[i0]][0]
            i1 = i0
            while i1 < len(order) and i1 - i0 < rows_per_batch and cells[order[i1]][0] == layer:
                i1 += 1
            idx = order[i0:i1]
            chunk = [cells[i] for i in idx]
            s = layer + start
            X, pmin, q0 = self._patched_start(component, layer, chunk, base, src)
            parts.append(self._run_from(s, X, pmin, q0, base))
            i0 = i1
        out = torch.empty(len(cells), dtype=torch.float32, device="cpu")
        if parts:
            out[torch.tensor(order, dtype=torch.long, device="cpu")] = torch.cat(parts).cpu()  # one transfer
        return out

    def _finish_layer(self, li, base: _Run, P, attn=None, mid=None, mlp=None):
        """resid_post of layer li at positions P (a LongTensor) given a replaced attn_out,
        resid_mid or mlp_out there (everything else from the base run)."""
        L = self.layers[li]
        if L.parallel:
            a = attn if attn is not None else base.attn_out[li][P]
            m = mlp if mlp is not None else base.mlp_out[li][P]
            return m + a + base.resid_pre[li][P]
        if mid is None:
            mid = (attn + base.resid_pre[li][P]) if attn is not None else base.resid_mid[li][P]
        if mlp is None:
            mlp = L.mlp(L.ln2(mid))
        return mid + mlp

    def _patched_start(self, component, li, chunk, base: _Run, src: _Run):
        R = len(chunk)
        n, dev = self.n, self.device
        if component == "resid_pre":
            X = base.resid_pre[li].unsqueeze(0).repeat(R, 1, 1)
        else:
            X = base.resid_post(li).unsqueeze(0).repeat(R, 1, 1)
        if component == "heads":
            H, dh = self.n_heads, self.d_head
            pieces, rows_idx, pos_idx, pmin = [], [], [], []
            for r, (_, h, p) in enumerate(chunk):
                first = self.first_diff if p is None else p
                last = n if p is None else p + 1
                if first >= last:  # no differing position: nothing changes
                    pmin.append(n - 1)
                    continue
                P = torch.arange(first, last, device=dev)
                z = base.z[li][P].clone()
                z[:, h] = src.z[li][P, h]
                pieces.append(z)
                rows_idx.append(torch.full((last - first,), r, dtype=torch.long, device=dev))
                pos_idx.append(P)
                pmin.append(first)
            if pieces:
                z = torch.cat(pieces)
                rows_t, pos_t = torch.cat(rows_idx), torch.cat(pos_idx)
                attn = linear(self.layers[li].o, z.reshape(z.shape[0], H * dh))
                X[rows_t, pos_t] = self._finish_layer(li, base, pos_t, attn=attn)
            return X, torch.tensor(pmin, dtype=torch.long, device=dev), min(pmin)
        P = torch.tensor([c[1] for c in chunk], dtype=torch.long, device=dev)
        rows_t = torch.arange(R, device=dev)
        if component == "resid_pre":
            X[rows_t, P] = src.resid_pre[li][P]
        elif component == "resid_post":
            X[rows_t, P] = src.resid_post(li)[P]
        elif component == "resid_mid":
            X[rows_t, P] = self._finish_layer(li, base, P, mid=src.resid_mid[li][P])
        elif component == "attn_out":
            X[rows_t, P] = self._finish_layer(li, base, P, attn=src.attn_out[li][P])
        elif component == "mlp_out":
            X[rows_t, P] = self._finish_layer(li, base, P, mlp=src.mlp_out[li][P])
        else:
            raise ValueError(component)
        return X, P, min(c[1] for c in chunk)
