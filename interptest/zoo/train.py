"""Train the reference model ``interptest-tiny`` from scratch, deterministically.

    python -m interptest.zoo.train --out DIR            # the shipped model (defaults below)
    python -m interptest.zoo.train --out DIR --steps 30 --layers 1 --d-model 32 --heads 2 --batch 8

Same arguments, same seed and same thread count (``--threads``, default 1) give bit-identical weights:
all randomness comes from ``--seed`` (python ``random.Random`` for the corpus, ``torch.manual_seed`` for
initialisation), the corpus is generated on the fly in a fixed order, and torch runs with deterministic
algorithms.  A different thread count may change float reduction order and hence the last bits.
One thread is the default because on a shared 2-core machine two torch threads slowed to ~2.4 s/step as
soon as another process held a core, while one thread kept ~0.4 s/step.

Steps:
1. a byte-level BPE tokenizer (GPT-2 style: leading-space tokens, every byte in the alphabet, no unknown
   token) trained with ``tokenizers`` on corpus text plus the lexicons; every lexicon word must be a single
   token with a leading space (checked; the script fails otherwise).  A ``TemplateProcessing``
   post-processor prepends ``<|endoftext|>`` (BOS) itself;
2. a GPT-2 (``GPT2LMHeadModel``, eager attention, no dropout) trained with AdamW, linear warm-up then cosine
   decay, on rows of ``--ctx`` tokens: text documents from :mod:`interptest.zoo.corpus`, and (a fraction
   ``--random-frac``) rows holding spans of uniformly random tokens from the whole vocabulary (special
   tokens excluded) repeated 2-3 times, which make genuine induction heads;
3. ``save_pretrained`` of model (safetensors) and tokenizer (``PreTrainedTokenizerFast``) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from interptest.zoo.corpus import Generator, all_lexicon_words, random_repeat_segment, tokenizer_training_text
from interptest.zoo.ioi_corpus import IOIGenerator

# --corpus: the document generator of each shipped model (interptest-tiny: corpus.py; interptest-ioi: ioi_corpus.py)
CORPORA: dict[str, type[Generator]] = {"tiny": Generator, "ioi": IOIGenerator}
# --preset: the arguments each shipped checkpoint was trained with (the defaults are interptest-tiny's)
PRESETS: dict[str, dict[str, object]] = {
    "interptest-tiny": {},
    "interptest-ioi": {
        "corpus": "ioi",
        "layers": 4,
        "heads": 8,
        "d_mlp": 512,
        "steps": 4500,
        "batch": 48,
        "random_frac": 0.4,
    },
}

BOS = "<|endoftext|>"


def build_tokenizer(vocab_size: int, seed: int, n_docs: int, generator: type[Generator] = Generator):
    """Train the byte-level BPE; return a ``tokenizers.Tokenizer`` with the BOS post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())  # no unk_token: byte-level alphabet covers any text
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_training_text(seed, n_docs, generator=generator), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    bad = [w for w in all_lexicon_words() if len(tok.encode(" " + w, add_special_tokens=False).ids) != 1]
    if bad:
        raise SystemExit(
            f"tokenizer check failed: {len(bad)} lexicon words are not a single token with a "
            f"leading space (raise --vocab-size or --tokenizer-docs): {bad[:20]}"
        )
    return tok


def make_batch(
    gen: Generator,
    rng: random.Random,
    tok,
    batch: int,
    ctx: int,
    bos_id: int,
    random_ids: list[int],
    random_frac: float,
) -> list[list[int]]:
    """``batch`` rows of exactly ``ctx`` tokens, each starting with BOS."""
    n_sent = ctx // 16 + 2
    plans, texts = [], []
    for _ in range(batch):
        if rng.random() < random_frac:
            k = rng.choice((0, 0, 1, 2))
            plans.append(k)
            texts.append(gen.document(k) if k else "")
        else:
            plans.append(-1)
            texts.append(gen.document(n_sent))
    enc = tok.encode_batch(texts, add_special_tokens=False)
    rows = []
    for k, e in zip(plans, enc):
        row = [bos_id] + e.ids
        if k >= 0:  # random-repeat row: optional text prefix, then the repeated random span
            row += random_repeat_segment(rng, random_ids, 5, 30, ctx - len(row))
        while len(row) < ctx:
            row += tok.encode(" " + gen.document(n_sent), add_special_tokens=False).ids
        rows.append(row[:ctx])
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m interptest.zoo.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="interptest-tiny",
        help="defaults of a shipped checkpoint (explicit arguments still override them)",
    )
    p.add_argument("--corpus", choices=sorted(CORPORA), default="tiny", help="document generator")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (part of bit-identity; 1 is robust on a shared 2-core box)",
    )
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--ctx", type=int, default=64, help="training context length (tokens)")
    p.add_argument("--n-positions", type=int, default=256, help="maximum context the model accepts")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-mlp", type=int, default=256, help="MLP hidden size")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--tokenizer-docs", type=int, default=4000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--random-frac", type=float, default=0.5, help="fraction of rows with random repeats")
    p.add_argument("--log-every", type=int, default=100)
    preset, _ = p.parse_known_args(argv)
    p.set_defaults(**PRESETS[preset.preset])
    return p.parse_args(argv)


def train(args) -> dict:
    import torch
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()

    tok = build_tokenizer(args.vocab_size, args.seed, args.tokenizer_docs, CORPORA[args.corpus])
    bos_id = tok.token_to_id(BOS)
    vocab = tok.get_vocab_size()
    random_ids = [i for i in range(vocab) if i != bos_id]
    t_tok = time.perf_counter() - t0

    torch.manual_seed(args.seed)
    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=args.n_positions,
        n_embd=args.d_model,
        n_layer=args.layers,
        n_head=args.heads,
        n_inner=args.d_mlp,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=bos_id,
        eos_token_id=bos_id,
        pad_token_id=bos_id,
        tie_word_embeddings=True,
        # PreTrainedConfig takes it at run time (a keyword of its own __init__); GPT2Config's typed
        # signature does not list it
        attn_implementation="eager",  # type: ignore[call-arg]
        use_cache=False,
    )
    model = GPT2LMHeadModel(cfg)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        frac = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(1.0, frac)))

    gen = CORPORA[args.corpus](args.seed + 1)
    rng = random.Random(args.seed + 2)
    losses = []
    for step in range(args.steps):
        rows = make_batch(gen, rng, tok, args.batch, args.ctx, bos_id, random_ids, args.random_frac)
        x = torch.tensor(rows, dtype=torch.long)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if args.log_every and (step % args.log_every == 0 or step == args.steps - 1):
            print(
                f"step {step:5d}  loss {loss.item():.4f}  lr {lr_at(step):.2e}  {time.perf_counter() - t0:7.1f}s",
                flush=True,
            )

    model.eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    # transformers does not serialise the attention implementation; record it so HF loads eager too.
    cfg_path = out / "config.json"
    cfg_json = json.loads(cfg_path.read_text())
    cfg_json["attn_implementation"] = "eager"
    cfg_path.write_text(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")
    gen_cfg = out / "generation_config.json"
    if gen_cfg.exists():
        gen_cfg.unlink()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=BOS, model_max_length=args.n_positions
    )
    fast.save_pretrained(out)
    portable_tokenizer_config(out)
    wall = time.perf_counter() - t0
    info = {
        "args": {k: v for k, v in vars(args).items() if k != "out"},
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "vocab_size": vocab,
        "n_params": sum(p.numel() for p in model.parameters()),
        "first_loss": losses[0] if losses else None,
        "final_loss_mean_last_50": sum(losses[-50:]) / max(1, len(losses[-50:])),
        "tokenizer_seconds": round(t_tok, 2),
        "wall_seconds": round(wall, 1),
    }
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info), flush=True)
    info["losses"] = losses  # in memory only (the unit test checks the loss goes down)
    return info


def portable_tokenizer_config(out: Path) -> None:
    """Name the tokenizer class in ``out/tokenizer_config.json`` as every supported transformers loads it.

    transformers 5 saves a ``PreTrainedTokenizerFast`` as ``"tokenizer_class": "TokenizersBackend"``, a class
    transformers 4.x does not have ("Tokenizer class TokenizersBackend does not exist"); the name
    ``PreTrainedTokenizerFast`` loads in 4.56+ (that class) and in 5.x (an alias of ``TokenizersBackend``)."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
