"""GPT-NeoX / Pythia (``GPTNeoXForCausalLM``): partial rotary, fused per-head QKV, parallel or
sequential residual."""

from __future__ import annotations

from interptest.patching.fast.blocks import Arch, Layer, add_noise, linear, norm_fn, raw

HF_CLASSES = ("GPTNeoXForCausalLM",)


def build(hf) -> Arch:
    cfg = hf.config
    m = raw(hf.gpt_neox)
    H = cfg.num_attention_heads
    dh = cfg.hidden_size // H
    emb = raw(m.embed_in).weight
    layers = []
    for blk in m.layers:
        b = raw(blk)
        attn, mlp = raw(b.attention), raw(b.mlp)
        qkv_p, dense = raw(attn.query_key_value), raw(attn.dense)
        up, down, act = raw(mlp.dense_h_to_4h), raw(mlp.dense_4h_to_h), raw(mlp.act)

        def qkv(h, qkv_p=qkv_p):
            q, k, v = linear(qkv_p, h).view(-1, H, 3 * dh).chunk(3, dim=-1)
            return q, k, v

        def mlp_fn(h, up=up, down=down, act=act):
            return linear(down, act(linear(up, h)))

        layers.append(
            Layer(
                ln1=norm_fn(b.input_layernorm),
                ln2=norm_fn(b.post_attention_layernorm),
                attn_scale=float(getattr(attn, "scaling", dh**-0.5)),
                parallel=bool(getattr(b, "use_parallel_residual", cfg.use_parallel_residual)),
                qkv=qkv,
                o=dense,
                mlp=mlp_fn,
                rotary_dims=int(attn.rotary_ndims),
            )
        )
    head = raw(hf.get_output_embeddings())

    def embed(tokens, pos, noise=None):
        return add_noise(emb[tokens], noise)

    return Arch(
        "neox",
        layers,
        embed,
        norm_fn(m.final_layer_norm),
        head.weight,
        getattr(head, "bias", None),
        raw(m.rotary_emb),
        H,
        H,
        dh,
    )
