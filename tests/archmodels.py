"""Random-weight two-layer models of every decoder architecture family interptest is tested on, built
locally from configs (no hub), with every norm weight and bias randomized (Hugging Face initialises
them to 0/1, which hides conventions such as Gemma's ``1 + w``), cached per test session.

The tokenizer is the tiny one of :mod:`tinymodels` (a 300-token byte-level BPE with a BOS
post-processor); the models are the architectures, not their sizes: d_model 32, 4 heads (2 key/value
heads where the architecture has grouped-query attention), 2 layers.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile

import tinymodels

D, H, KV, L = 32, 4, 2, 2


def _configs(vocab: int) -> dict:
    """name -> (transformers config class name, its arguments)."""
    common = dict(vocab_size=vocab, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False)
    llama_like = dict(
        hidden_size=D,
        intermediate_size=2 * D,
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=KV,
        max_position_embeddings=128,
        **common,
    )
    return {
        "gpt2": ("GPT2Config", dict(n_embd=D, n_layer=L, n_head=H, n_positions=128, **common)),
        "neox": (
            "GPTNeoXConfig",
            dict(
                hidden_size=D,
                intermediate_size=4 * D,
                num_hidden_layers=L,
                num_attention_heads=H,
                max_position_embeddings=128,
                rotary_pct=0.25,
                use_parallel_residual=True,
                **common,
            ),
        ),
        "llama": ("LlamaConfig", dict(llama_like)),
        "llama-bias": ("LlamaConfig", dict(llama_like, attention_bias=True, mlp_bias=True)),
        "mistral": ("MistralConfig", dict(llama_like, sliding_window=64)),
        "qwen2": ("Qwen2Config", dict(llama_like)),
        "qwen3": ("Qwen3Config", dict(llama_like, head_dim=8)),
        "gemma": ("GemmaConfig", dict(llama_like, head_dim=8)),
        "gemma2": (
            "Gemma2Config",
            dict(
                llama_like,
                head_dim=8,
                sliding_window=64,
                final_logit_softcapping=5.0,
                attn_logit_softcapping=10.0,
                query_pre_attn_scalar=8,
            ),
        ),
        "gemma3": (
            "Gemma3TextConfig",
            dict(
                llama_like,
                head_dim=8,
                sliding_window=64,
                query_pre_attn_scalar=8,
                final_logit_softcapping=5.0,
                # one local (sliding-window) and one global layer: their rotary embeddings differ
                layer_types=["sliding_attention", "full_attention"],
            ),
        ),
        "phi3": ("Phi3Config", dict(llama_like, pad_token_id=0)),
        "opt": (
            "OPTConfig",
            dict(
                hidden_size=D,
                ffn_dim=4 * D,
                num_hidden_layers=L,
                num_attention_heads=H,
                max_position_embeddings=128,
                word_embed_proj_dim=D,
                pad_token_id=1,
                **common,
            ),
        ),
        "gptj": ("GPTJConfig", dict(n_embd=D, n_layer=L, n_head=H, n_positions=128, rotary_dim=4, **common)),
        "bloom": ("BloomConfig", dict(hidden_size=D, n_layer=L, n_head=H, **common)),
        "falcon": (
            "FalconConfig",
            dict(
                hidden_size=D,
                num_hidden_layers=L,
                num_attention_heads=H,
                new_decoder_architecture=False,
                multi_query=True,
                parallel_attn=True,
                bias=False,
                alibi=False,
                **common,
            ),
        ),
        "stablelm": (
            "StableLmConfig",
            dict(llama_like, partial_rotary_factor=0.25, use_qkv_bias=True),
        ),
        "olmo": ("OlmoConfig", dict(llama_like)),
        "olmo2": ("Olmo2Config", dict(llama_like)),
        "gpt-neo": (
            "GPTNeoConfig",
            dict(
                hidden_size=D,
                num_layers=L,
                num_heads=H,
                attention_types=[[["global", "local"], 1]],
                window_size=64,
                max_position_embeddings=128,
                **common,
            ),
        ),
    }


ARCHITECTURES = tuple(_configs(0))


@functools.cache
def missing(name: str) -> str | None:
    """Why this transformers cannot build ``name`` (None: it can)."""
    import transformers as tf

    cls = _configs(0)[name][0]
    if not hasattr(tf, cls):
        return f"transformers {tf.__version__} has no {cls}"
    return None


@functools.cache
def model_dir(name: str, seed: int = 0) -> str:
    import torch
    import transformers as tf

    tok_dir = tinymodels._tokenizer_dir()
    vocab = len(tf.PreTrainedTokenizerFast.from_pretrained(tok_dir))
    cls, kwargs = _configs(vocab)[name]
    cfg = getattr(tf, cls)(**kwargs)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim >= 2:  # big enough that patching effects are visible
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.shape[0] < 1000 else 0.05))
            elif "norm" in pname or "ln" in pname.split(".")[-2] or "layernorm" in pname:
                # norm weights and biases far from HF's 0 / 1 (a weight of 1 + w or w: both matter)
                base = 1.0 if pname.endswith("weight") else 0.0
                p.copy_(base + 0.5 * torch.randn(p.shape, generator=g))
            else:  # other biases
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    d = tempfile.mkdtemp(prefix=f"interptest-arch-{name}-")
    model.save_pretrained(d, safe_serialization=True)
    for f in os.listdir(tok_dir):
        shutil.copy(os.path.join(tok_dir, f), d)
    return d


@functools.cache
def model(name: str):
    """The bridge over ``name``'s random model (eval mode, float32, CPU)."""
    return tinymodels.boot(model_dir(name))
