"""Llama (``LlamaForCausalLM``): RMSNorm, rotary positions, gated MLP, grouped-query attention."""

from __future__ import annotations

from interptest.patching.fast.blocks import Arch, Layer, Unsupported, add_noise, linear, norm_fn, raw

HF_CLASSES = ("LlamaForCausalLM",)


def build(hf) -> Arch:
    cfg = hf.config
    if getattr(cfg, "sliding_window", None):
        raise Unsupported("sliding-window attention")
    m = raw(hf.model)
    H = cfg.num_attention_heads
    Hkv = cfg.num_key_value_heads or H
    dh = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    emb = raw(m.embed_tokens).weight
    layers = []
    for blk in m.layers:
        b = raw(blk)
        attn, mlp = raw(b.self_attn), raw(b.mlp)
        qp, kp, vp, op = (raw(attn.q_proj), raw(attn.k_proj), raw(attn.v_proj), raw(attn.o_proj))
        gp, up, dp, act = raw(mlp.gate_proj), raw(mlp.up_proj), raw(mlp.down_proj), raw(mlp.act_fn)

        def q_fn(h, qp=qp):
            return linear(qp, h).view(-1, H, dh)

        def kv_fn(h, kp=kp, vp=vp):
            return linear(kp, h).view(-1, Hkv, dh), linear(vp, h).view(-1, Hkv, dh)

        def qkv(h, q_fn=q_fn, kv_fn=kv_fn):
            return (q_fn(h),) + kv_fn(h)

        def mlp_fn(h, gp=gp, up=up, dp=dp, act=act):
            return linear(dp, act(linear(gp, h)) * linear(up, h))

        layers.append(
            Layer(
                ln1=norm_fn(b.input_layernorm),
                ln2=norm_fn(b.post_attention_layernorm),
                attn_scale=float(getattr(attn, "scaling", dh**-0.5)),
                parallel=False,
                qkv=qkv,
                o=op,
                mlp=mlp_fn,
                rotary_dims=dh,
                q=q_fn,
                kv=kv_fn,
            )
        )
    head = raw(hf.lm_head)

    def embed(tokens, pos, noise=None):
        return add_noise(emb[tokens], noise)

    return Arch(
        "llama", layers, embed, norm_fn(m.norm), head.weight, getattr(head, "bias", None), raw(m.rotary_emb), H, Hkv, dh
    )
