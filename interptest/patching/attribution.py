"""Edge attribution: gradient scores that *rank* edges (EAP, and integrated gradients over the edge mask).

Approximate by construction, and used only to order edges for a search whose every verdict and every
printed value is measured exactly by the edge engine (:mod:`interptest.patching.edges`); nothing here
decides a claim.

The edge engine's hook forward (``EdgePatcher._forward``) rebuilds every receiver's input as the fully
ablated residual A plus, per sender s, ``mask[r, s] · D_s`` with D_s = s's output in this run − its
ablated output. With a *float* mask M ∈ [0, 1]^{receivers × senders} the same forward interpolates each
edge between ablated (0) and present (1); at 0/1 it is the exact edge ablation (tested). With F(M) the
faithfulness (m(M) − m_∅) / (m_clean − m_∅), averaged over the samples:

* **EAP** (``steps=1``): score(e) = ∂F/∂M_e at M = 1 (every edge present) × (1 − 0) — the first-order
  estimate of the faithfulness lost when e alone is ablated from the full graph (edge attribution patching,
  Syed et al. 2023, with the gradient taken at the full graph, i.e. the clean run).
* **IG** (``steps=k``): score(e) = (1/k) Σ_{j=1..k} ∂F/∂M_e at M = (j/k)·1, × (1 − 0) — a right Riemann
  sum of the integrated gradient along the straight path from the empty graph (M = 0) to the full graph
  (M = 1), every edge scaled together. Completeness: Σ_e score(e) → F(1) − F(0) = 1 − 0 as k grows (the
  Riemann sum converges; tested).

Which EAP-IG this is. Hanna et al. 2024 ("Have Faith in Faithfulness", the EAP-IG of the EAP-IG
repository, ``ig_steps``) integrate over the **input embeddings** between the corrupted and the clean
prompt: every activation downstream moves along the model's own (curved) path, and an edge's score is
(its sender's clean − corrupted output) · (the gradient at its receiver's input, averaged over the
path). This is **not** that. MIB's **EAP-IG-activations** integrates over the **activations**: each
sender's output is interpolated between ablated and present while the gradient is taken at the
receivers. Interpolating the edge mask is integrated gradients on the activations in that sense, per
edge: M_e = α gives the receiver of e exactly α·(the sender's output in this run) + (1 − α)·(its ablated
output) from that sender, and the gradient with respect to M_e is D_s · ∂F/∂(receiver input), every edge
of the graph moving along the same straight path. One detail to state: D_s is recorded in the interpolated
forward itself (a sender's output already reflects the interpolated edges into it), so the score is the
exact path integral of F along M = α·1 and completeness holds; an implementation that multiplies the
averaged gradient by a fixed clean − ablated difference from two cached runs differs from this wherever
a sender's own inputs move along the path.

Cost: units (one sample at one α) carry 1 + H + 2·H_kv rows as in the edge engine's hook forward, and
``steps × samples`` units run batched within ``rows_per_batch`` rows per forward, each forward followed
by one backward; gradients are taken with ``torch.autograd.grad`` with respect to the mask only (no
``.grad`` accumulates on the model's parameters). Deterministic on CPU.
"""

from __future__ import annotations

import torch

from interptest.graphs import normal
from interptest.patching.edges import EdgePatcher

__all__ = ["edge_scores", "mask_metrics"]


def _plain(t: torch.Tensor) -> torch.Tensor:
    """A copy that autograd may save (tensors made under ``torch.inference_mode`` may not be)."""
    return t.clone() if t.is_inference() else t


def _grad_sources(e: EdgePatcher, ablation: str) -> tuple[dict, list[torch.Tensor]]:
    src = e._sources(ablation)
    with torch.inference_mode(False):
        out = {
            "input": _plain(src["input"]),
            "z": [_plain(z) for z in src["z"]],
            "mlp": [_plain(m) for m in src["mlp"]],
            "base": {k: _plain(v) for k, v in src["base"].items()},
        }
        w_o = [_plain(w) for w in e._w_o()]
    return out, w_o


def _prepare(e: EdgePatcher, ablation: str):
    e.p.metrics("clean")
    e._check_residuals()
    return _grad_sources(e, ablation)


def mask_metrics(edge_patcher: EdgePatcher, masks: torch.Tensor, ablation: str = "resample") -> torch.Tensor:
    """Raw metrics [S, sets] (float64, CPU) of the hook forward under float edge masks ``masks``
    [sets, receivers, senders] (0: the edge ablated, 1: present; in between, interpolated). At 0/1 these are
    the edge engine's metrics of those edge sets."""
    e = edge_patcher
    e.p.metrics("clean")
    e._check_residuals()
    return e.hook_metrics(masks, e._sources(ablation), e._w_o())


def edge_scores(edge_patcher: EdgePatcher, ablation: str = "resample", steps: int = 5) -> torch.Tensor:
    """Attribution scores [len(edges())] (float64, CPU), in ``edge_patcher.edges()`` order: with ``steps=1``
    EAP (the faithfulness's gradient with respect to each edge's mask at the full graph), else integrated
    gradients over the edge mask from the empty to the full graph, a right Riemann sum of ``steps`` points
    (module docstring: what this approximates, and how it relates to EAP-IG). The faithfulness is the
    mean over the samples of (m − m_∅) / (m_clean − m_∅). Approximate: use it to order edges, never as a
    measured value."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    e = edge_patcher
    p = e.p
    every = e.edges()
    src, w_o = _prepare(e, ablation)
    S = p.n_samples
    span = (p.metrics("clean") - e.all_ablated(ablation)).double()  # m_clean − m_∅ [S]
    alphas = [(j + 1) / steps for j in range(steps)]
    units = [(a, s) for a in range(steps) for s in range(S)]
    helpers = e.H + 2 * e.K
    per = max(1, p.rows_per_batch // (1 + helpers))  # units per forward, as the edge engine's hook forward
    with torch.inference_mode(False), torch.enable_grad():  # suggestions run under inference_mode
        total = torch.zeros(e.n_receivers, e.n_senders, dtype=torch.float64)
        for start in range(0, len(units), per):
            chunk = units[start : start + per]
            alpha = torch.tensor([alphas[a] for a, _ in chunk], dtype=torch.float32)
            mask = alpha[:, None, None].expand(len(chunk), e.n_receivers, e.n_senders).to(p.device).clone()
            mask.requires_grad_(True)
            samples = torch.tensor([s for _, s in chunk], dtype=torch.long, device=p.device)
            metric = e._forward(mask, samples, src, w_o, helpers)
            weight = 1.0 / (span[samples.cpu()] * S * steps)
            objective = (metric.double() * weight.to(metric.device)).sum()
            (grad,) = torch.autograd.grad(objective, mask)
            total += grad.detach().double().sum(dim=0).cpu()
    out = torch.empty(len(every), dtype=torch.float64)
    for i, edge in enumerate(every):
        edge = normal(edge, e.shape)
        out[i] = total[e.receiver_index(edge.receiver), e.sender_index(edge.sender)]
    return out
