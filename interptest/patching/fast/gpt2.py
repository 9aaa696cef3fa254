"""GPT-2 (``GPT2LMHeadModel``): LayerNorm, learned positions, Conv1D projections, GELU MLP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from interptest.patching.fast.blocks import Arch, Layer, Unsupported, activation, add_noise, linear, norm_fn, raw

HF_CLASSES = ("GPT2LMHeadModel",)


def build(hf) -> Arch:
    cfg = hf.config
    if getattr(cfg, "add_cross_attention", False):
        raise Unsupported("GPT-2 with cross attention")
    tr = raw(hf.transformer)
    H = cfg.n_head
    d = cfg.n_embd
    dh = d // H
    wte, wpe = raw(tr.wte).weight, raw(tr.wpe).weight
    layers = []
    for i, blk in enumerate(tr.h):
        b = raw(blk)
        attn, mlp = raw(b.attn), raw(b.mlp)
        c_attn, c_proj = raw(attn.c_attn), raw(attn.c_proj)
        c_fc, m_proj, act = raw(mlp.c_fc), raw(mlp.c_proj), activation(raw(mlp.act))
        scale = dh**-0.5 if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= float(i + 1)

        q_fn = kv_fn = None
        qkv: Callable[..., Any]
        battn = getattr(blk, "attn", None)  # the bridge splits c_attn into q/k/v linears: use them
        split = [getattr(battn, nm, None) for nm in ("q", "k", "v")] if battn is not None else []
        if len(split) == 3 and all(sp is not None and isinstance(raw(sp), torch.nn.Linear) for sp in split):
            ql, kl, vl = (raw(sp) for sp in split)

            def q_fn(h, ql=ql):
                return linear(ql, h).view(-1, H, dh)

            def kv_fn(h, kl=kl, vl=vl):
                return linear(kl, h).view(-1, H, dh), linear(vl, h).view(-1, H, dh)

            def split_qkv(h, q_fn=q_fn, kv_fn=kv_fn):
                return (q_fn(h),) + kv_fn(h)

            qkv = split_qkv
        else:

            def fused_qkv(h, c_attn=c_attn):
                q, k, v = linear(c_attn, h).split(d, dim=-1)
                return q.view(-1, H, dh), k.view(-1, H, dh), v.view(-1, H, dh)

            qkv = fused_qkv

        def mlp_fn(h, c_fc=c_fc, m_proj=m_proj, act=act):
            return linear(m_proj, act(linear(c_fc, h)))

        layers.append(
            Layer(
                ln1=norm_fn(b.ln_1),
                ln2=norm_fn(b.ln_2),
                attn_scale=scale,
                parallel=False,
                qkv=qkv,
                o=c_proj,
                mlp=mlp_fn,
                q=q_fn,
                kv=kv_fn,
            )
        )

    def embed(tokens, pos, noise=None):  # hook_embed is the token embedding, before the positions are added
        return add_noise(wte[tokens], noise) + wpe[pos]

    head = raw(hf.lm_head)
    return Arch("gpt2", layers, embed, norm_fn(tr.ln_f), head.weight, getattr(head, "bias", None), None, H, H, dh)
