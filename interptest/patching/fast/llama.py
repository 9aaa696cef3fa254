"""Llama and the families that are Llama's forward with a detail changed: Mistral (a sliding window),
Qwen2 (q/k/v biases), Qwen3 (a per-head RMSNorm on queries and keys before the rotary embedding) and Gemma
(embeddings scaled by sqrt(d_model) inside their module, RMSNorm by ``1 + w``, a GELU gate), Gemma 2
(norms on the attention and MLP outputs before each residual add, tanh soft-capping of attention scores
and of the logits) and Gemma 3 (Gemma 2's block with Qwen3's q/k norms, and a rotary embedding per layer
type: local sliding-window layers and global ones differ): RMSNorm, rotary positions, gated MLP,
grouped-query attention.  Every detail is read from the Hugging Face modules themselves (the embedding
module, the norms, the activation), not re-derived from the config.

A sliding window changes nothing while every key is inside it: the engine accepts such a model for prompts
shorter than the window and declines longer ones (:class:`Unsupported`)."""

from __future__ import annotations

import functools
import inspect

import torch

from interptest.patching.fast.blocks import Arch, Layer, add_noise, linear, norm_fn, raw

HF_CLASSES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
)


def _layer_ropes(model, cfg) -> list:
    """Each layer's rotary embedding where they differ by layer type (Gemma 3), else None per layer.

    transformers 5 gives the rotary module a ``layer_type`` argument; transformers 4 has a second module,
    ``rotary_emb_local``, for the sliding-window layers."""
    types = getattr(cfg, "layer_types", None)
    rotary = raw(model.rotary_emb)
    n = cfg.num_hidden_layers
    if not types:
        return [None] * n
    if "layer_type" in inspect.signature(rotary.forward).parameters:
        ropes = {t: functools.partial(rotary, layer_type=t) for t in set(types)}
        return [ropes[t] for t in types]
    local = getattr(model, "rotary_emb_local", None)
    if local is not None:
        return [raw(local) if t == "sliding_attention" else None for t in types]
    return [None] * n


def build(hf) -> Arch:
    cfg = hf.config
    window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
    m = raw(hf.model)
    H = cfg.num_attention_heads
    Hkv = cfg.num_key_value_heads or H
    dh = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    emb = raw(m.embed_tokens)  # the module: Gemma's scales its output by sqrt(d_model)
    ropes = _layer_ropes(m, cfg)
    attn_softcap = getattr(cfg, "attn_logit_softcapping", None)
    layers = []
    for blk, rope in zip(m.layers, ropes, strict=True):
        b = raw(blk)
        # Gemma 2 / 3: post_attention_layernorm normalizes the attention output; the MLP reads
        # pre_feedforward_layernorm and its output goes through post_feedforward_layernorm
        sandwich = hasattr(b, "pre_feedforward_layernorm")
        attn, mlp = raw(b.self_attn), raw(b.mlp)
        battn = getattr(blk, "self_attn", None) or getattr(blk, "attn", None)
        qn = norm_fn(getattr(battn, "q_norm", None) or attn.q_norm) if hasattr(attn, "q_norm") else None
        kn = norm_fn(getattr(battn, "k_norm", None) or attn.k_norm) if hasattr(attn, "k_norm") else None
        qp, kp, vp, op = (raw(attn.q_proj), raw(attn.k_proj), raw(attn.v_proj), raw(attn.o_proj))
        gp, up, dp, act = raw(mlp.gate_proj), raw(mlp.up_proj), raw(mlp.down_proj), raw(mlp.act_fn)

        def q_fn(h, qp=qp, qn=qn):
            q = linear(qp, h).view(-1, H, dh)
            return qn(q) if qn is not None else q

        def kv_fn(h, kp=kp, vp=vp, kn=kn):
            k = linear(kp, h).view(-1, Hkv, dh)
            return (kn(k) if kn is not None else k), linear(vp, h).view(-1, Hkv, dh)

        def qkv(h, q_fn=q_fn, kv_fn=kv_fn):
            return (q_fn(h),) + kv_fn(h)

        def mlp_fn(h, gp=gp, up=up, dp=dp, act=act):
            return linear(dp, act(linear(gp, h)) * linear(up, h))

        layers.append(
            Layer(
                ln1=norm_fn(b.input_layernorm),
                ln2=norm_fn(b.pre_feedforward_layernorm if sandwich else b.post_attention_layernorm),
                attn_scale=float(getattr(attn, "scaling", dh**-0.5)),
                parallel=False,
                qkv=qkv,
                o=op,
                mlp=mlp_fn,
                rotary_dims=dh,
                q=q_fn,
                kv=kv_fn,
                post_attn=norm_fn(b.post_attention_layernorm) if sandwich else None,
                post_mlp=norm_fn(b.post_feedforward_layernorm) if sandwich else None,
                attn_softcap=float(attn_softcap) if attn_softcap else None,
                rope=rope,
                qk_norm=qn is not None or kn is not None,
            )
        )
    head = raw(hf.lm_head)

    # Gemma's sqrt(d_model): transformers 5 scales inside the embedding module, transformers 4 in
    # GemmaModel.forward after it; hook_embed (where noise goes) is after the scale on both (TL 4.3 and 3.2.1)
    scale = None
    if type(hf).__name__.startswith("Gemma") and not hasattr(emb, "embed_scale"):
        scale = cfg.hidden_size**0.5

    def embed(tokens, pos, noise=None):
        x = emb(tokens)
        return add_noise(x if scale is None else x * torch.tensor(scale, dtype=x.dtype), noise)

    name = type(hf).__name__.removesuffix("ForCausalLM").lower()
    arch = Arch(
        name, layers, embed, norm_fn(m.norm), head.weight, getattr(head, "bias", None), raw(m.rotary_emb), H, Hkv, dh
    )
    arch.window = int(window) if window else None
    cap = getattr(cfg, "final_logit_softcapping", None)
    arch.final_softcap = float(cap) if cap else None
    return arch
