"""Building blocks the per-architecture modules describe a model with, read from the Hugging Face
modules under the bridge (the same weights and the same activation modules the bridge runs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


class Unsupported(Exception):
    """The fast engine does not cover this model; use the generic hook engine."""


def raw(mod):
    """Strip TransformerLens bridge wrappers down to the Hugging Face module."""
    seen = 0
    while seen < 8:
        inner = getattr(mod, "original_component", None)
        if inner is None or inner is mod:
            return mod
        mod = inner
        seen += 1
    return mod


def norm_fn(mod):
    """The normalization exactly as the bridge computes it.

    TransformerLens' NormalizationBridge re-implements LayerNorm in Python (different rounding
    from ``F.layer_norm``) unless it is set to use the native module; mirror whichever it does."""
    inner = raw(mod)
    cfg = getattr(mod, "config", None)
    if (inner is mod or cfg is None or getattr(mod, "use_native_layernorm_autograd", True)
            or getattr(cfg, "layer_norm_folding", False) or not hasattr(mod, "uses_rms_norm")):
        return inner
    rms = bool(mod.uses_rms_norm)
    eps = getattr(cfg, "eps", 1e-05)
    weight = (1.0 + mod.weight) if getattr(mod, "uses_weight_offset", False) else mod.weight
    bias = None if rms else getattr(inner, "bias", None)

    def norm(x):
        if not rms:
            x = x - x.mean(-1, keepdim=True)
        x = x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        x = x * weight
        return x + bias if bias is not None else x
    return norm


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def linear(mod, x):
    """Apply an nn.Linear or a GPT-2 Conv1D given as raw module."""
    if type(mod).__name__ == "Conv1D":  # as HF computes it
        if mod.bias is None:
            return x @ mod.weight
        return torch.addmm(mod.bias, x.reshape(-1, x.shape[-1]), mod.weight).view(*x.shape[:-1], -1)
    return torch.nn.functional.linear(x, mod.weight, mod.bias)


@dataclass
class Layer:
    """One transformer block. Tensors are packed tokens [T, ...]."""
    ln1: Callable
    ln2: Callable
    attn_scale: float
    parallel: bool   # attention and MLP both read the block's input (GPT-NeoX, GPT-J)
    qkv: Callable    # h [T, d] -> q [T, H, dh], k [T, Hkv, dh], v [T, Hkv, dh] (before rotary)
    o: object        # raw module: z [T, H*dh] -> [T, d]
    mlp: Callable    # h [T, d] -> [T, d]
    rotary_dims: int = 0           # 0 = no rotary
    q: Callable | None = None      # h -> q only, where the projection is separate (else qkv is used)
    kv: Callable | None = None     # h -> (k, v) only, where the projections are separate


@dataclass
class Arch:
    """A model as the fast engine runs it."""
    name: str
    layers: list
    embed: Callable      # (tokens [T], pos [T], noise [T, d] or None) -> [T, d]; noise added where hook_embed is
    lnf: Callable
    unembed_w: torch.Tensor
    unembed_b: torch.Tensor | None
    rotary: object       # HF rotary module or None
    n_heads: int
    n_kv: int
    d_head: int


def add_noise(e, noise):
    """The bridge's noise hook at hook_embed: ``act + noise``."""
    return e if noise is None else e + noise.to(e.dtype)
