"""Tiny random models built locally (no hub access), cached per test session.

Each builder saves an HF config + random weights (safetensors, via ``save_pretrained``) and a small
byte-level BPE tokenizer trained in-process (with a BOS post-processor) into a temporary directory,
then boots it with ``TransformerBridge.boot_transformers``.
"""

from __future__ import annotations

import functools
import os
import tempfile

os.environ.setdefault("TQDM_DISABLE", "1")

_CORPUS = [
    "When Mary and John went to the store, John gave a drink to Mary.",
    "The Eiffel Tower is in Paris. The Colosseum is in Rome.",
    "The cat sat on the mat and the dog sat on the log.",
    "Alice and Bob met at the park; Bob handed the ball to Alice.",
    "one two three four five six seven eight nine ten",
    "the quick brown fox jumps over the lazy dog",
] * 4

ARCHS = ("gpt2", "llama", "neox")


@functools.cache
def _tokenizer_dir(vocab_size: int = 300) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    bos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A <|endoftext|> $B", special_tokens=[("<|endoftext|>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    d = tempfile.mkdtemp(prefix="interptest-tok-")
    fast.save_pretrained(d)
    return d


def _hf_config(arch: str, vocab: int, *, n_layers: int, d_model: int, n_heads: int):
    import transformers as tf

    if arch == "gpt2":
        return tf.GPT2Config(
            vocab_size=vocab,
            n_positions=128,
            n_embd=d_model,
            n_layer=n_layers,
            n_head=n_heads,
            bos_token_id=0,
            eos_token_id=0,
        )
    if arch == "llama":
        return tf.LlamaConfig(
            vocab_size=vocab,
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=n_heads,
            max_position_embeddings=128,
            bos_token_id=0,
            eos_token_id=0,
            tie_word_embeddings=False,
        )
    if arch == "neox":
        return tf.GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=d_model,
            intermediate_size=4 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            max_position_embeddings=128,
            rotary_pct=0.25,
            use_parallel_residual=True,
            bos_token_id=0,
            eos_token_id=0,
        )
    raise ValueError(arch)


def build_model_dir(
    arch: str,
    *,
    n_layers: int = 3,
    d_model: int = 32,
    n_heads: int = 4,
    seed: int = 0,
    hf_config=None,
    tokenizer_dir: str | None = None,
) -> str:
    """Save a random-weight HF model of ``arch`` plus the tiny tokenizer into a fresh directory."""
    import shutil

    import torch
    import transformers as tf

    tok_dir = tokenizer_dir or _tokenizer_dir()
    if hf_config is None:
        vocab = len(tf.PreTrainedTokenizerFast.from_pretrained(tok_dir))
        hf_config = _hf_config(arch, vocab, n_layers=n_layers, d_model=d_model, n_heads=n_heads)
    hf_config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")
    with torch.no_grad():  # random weights big enough that patching effects are visible
        for _name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.3 if p.shape[0] < 1000 else 0.05)
    d = tempfile.mkdtemp(prefix=f"interptest-{arch}-")
    model.save_pretrained(d, safe_serialization=True)
    for f in os.listdir(tok_dir):
        shutil.copy(os.path.join(tok_dir, f), d)
    return d


def boot(model_dir: str, device: str = "cpu"):
    import torch

    from interptest.tl_compat import bridge_class

    model = bridge_class().boot_transformers(model_dir, device=device, dtype=torch.float32)
    model.eval()
    return model


@functools.cache
def model_dir(arch: str) -> str:
    return build_model_dir(arch)


@functools.cache
def tiny_model(arch: str, device: str = "cpu"):
    """A session-cached tiny random model: 'gpt2', 'llama' (rotary, RMSNorm, gated MLP) or 'neox'
    (Pythia-style parallel attention); the same weights on every device."""
    return boot(model_dir(arch), device)


@functools.cache
def gpt2_small_arch(seed: int = 0):
    """gpt2-small's architecture (12 layers, d_model 768, 12 heads, vocab 50257) with random weights.

    The tokenizer is the tiny one (ids < 300 only); the vocabulary size is the real one."""
    import transformers as tf

    cfg = tf.GPT2Config(
        vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, bos_token_id=0, eos_token_id=0
    )
    return boot(build_model_dir("gpt2", hf_config=cfg, seed=seed))
