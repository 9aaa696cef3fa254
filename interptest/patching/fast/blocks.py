"""Building blocks the per-architecture modules describe a model with, read from the Hugging Face
modules under the bridge (the same weights and the same activation modules the bridge runs)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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
    if (
        inner is mod
        or cfg is None
        or getattr(mod, "use_native_layernorm_autograd", True)
        or getattr(cfg, "layer_norm_folding", False)
        or not hasattr(mod, "uses_rms_norm")
    ):
        return inner
    rms = bool(mod.uses_rms_norm)
    eps = getattr(cfg, "eps", 1e-05)
    weight = (1.0 + mod.weight) if getattr(mod, "uses_weight_offset", False) else mod.weight
    bias = None if rms else getattr(inner, "bias", None)

    def norm(x):  # the bridge's arithmetic, op for op; in place on temporaries only (same bits)
        y = x - x.mean(-1, keepdim=True) if not rms else x
        scale = (y.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        y = y.div_(scale) if y is not x else y / scale
        y.mul_(weight)
        return y.add_(bias) if bias is not None else y

    return norm


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


# elements per block of an elementwise chain: the block stays in the core's L2 cache across the chain's
# passes (GPT-2's MLP, [720, 3072], one thread: 9.0 ms whole, 3.8 ms in blocks of 21 rows, same bits)
_BLOCK_ELEMENTS = 1 << 16
# the chain's constants as float32 0-dim tensors: a Python float is wrapped into a tensor on every call
# (a copy per op per block); the arithmetic and its bits are the same
_GELU_CONSTANTS = tuple(
    torch.tensor(v, dtype=torch.float32, device="cpu") for v in (0.044715, _SQRT_2_OVER_PI, 1.0, 0.5)
)


def _new_gelu_inplace(x):
    """transformers' NewGELUActivation, ``0.5 * x * (1.0 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))``,
    the same operations in the same order (so the same bits), with one temporary instead of seven; on
    the CPU over blocks of rows that stay in cache (elementwise: blocking changes no bit).  Overwrites
    ``x``, which must be a temporary of the caller."""
    if x.device.type == "cpu" and x.is_contiguous() and x.dtype == torch.float32 and x.ndim >= 1:
        cubic, sqrt_2_over_pi, one, half = _GELU_CONSTANTS
        rows = max(1, _BLOCK_ELEMENTS // max(1, x.shape[-1]))
        blocks = x.view(-1, x.shape[-1]).split(rows)
    else:
        cubic, sqrt_2_over_pi, one, half = 0.044715, _SQRT_2_OVER_PI, 1.0, 0.5  # type: ignore[assignment]
        blocks = (x,)
    for block in blocks:
        t = torch.pow(block, 3.0)
        t.mul_(cubic).add_(block)  # x + 0.044715 * x**3 (IEEE addition commutes)
        t.mul_(sqrt_2_over_pi).tanh_().add_(one)
        block.mul_(half).mul_(t)  # (0.5 * x) * (1 + tanh(...))
    return x


_PROBED: dict[type, bool] = {}


def activation(act):
    """The MLP activation as a function of a temporary the caller owns: an in-place version of a
    known module where it gives the module's own bits on a probe (checked once per class), else the
    module."""
    cls = type(act)
    if cls.__name__ != "NewGELUActivation" or cls.forward.__qualname__ != "NewGELUActivation.forward":
        return act
    if cls not in _PROBED:
        probe = torch.randn(64, 96, generator=torch.Generator().manual_seed(0), device="cpu") * 4
        _PROBED[cls] = (
            torch.equal(_new_gelu_inplace(probe.clone()), act(probe)) and next(iter(act.parameters()), None) is None
        )
    return _new_gelu_inplace if _PROBED[cls] else act


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
    parallel: bool  # attention and MLP both read the block's input (GPT-NeoX, GPT-J)
    qkv: Callable  # h [T, d] -> q [T, H, dh], k [T, Hkv, dh], v [T, Hkv, dh] (before rotary)
    o: object  # raw module: z [T, H*dh] -> [T, d]
    mlp: Callable  # h [T, d] -> [T, d]
    rotary_dims: int = 0  # 0 = no rotary
    q: Callable | None = None  # h -> q only, where the projection is separate (else qkv is used)
    kv: Callable | None = None  # h -> (k, v) only, where the projections are separate
    # Gemma 2 / 3: a norm on the attention output and on the MLP output before each residual add (the
    # bridge's hook_attn_out / hook_mlp_out read after them), and tanh soft-capping of attention scores
    post_attn: Callable | None = None
    post_mlp: Callable | None = None
    attn_softcap: float | None = None
    # this layer's rotary embedding, (x, positions) -> (cos, sin), where layers differ (Gemma 3's local and
    # global layers); None: the model's one rotary module
    rope: Callable | None = None
    # Qwen3 / Gemma 3: norms on the queries and keys inside ``qkv``; path patching reads the bridge's
    # hook_q / hook_k, whose place relative to these norms is not pinned down, so such receivers run on hooks
    qk_norm: bool = False


@dataclass
class Arch:
    """A model as the fast engine runs it."""

    name: str
    layers: list
    embed: Callable  # (tokens [T], pos [T], noise [T, d] or None) -> [T, d]; noise added where hook_embed is
    lnf: Callable
    unembed_w: torch.Tensor
    unembed_b: torch.Tensor | None
    rotary: object  # HF rotary module or None
    n_heads: int
    n_kv: int
    d_head: int
    window: int | None = None  # sliding-window attention: exact only for prompts shorter than the window
    final_softcap: float | None = None  # Gemma 2 / 3: logits = cap * tanh(logits / cap)


def add_noise(e, noise):
    """The bridge's noise hook at hook_embed: ``act + noise``."""
    return e if noise is None else e + noise.to(e.dtype)
