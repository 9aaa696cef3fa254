"""Benchmark: interptest's patching engine against TransformerLens' own sweeps, same run, same model.

    python -m interptest.bench [--components resid_pre,heads] [--lengths 16,64] [--threads 1,2] [--quick]
                               [--family 40] [--no-generic] [--shapes gpt2-small,...] [--device cpu|cuda]
                               [--clock wall|process] [--no-tl]

Builds gpt2-small's architecture (12 layers, d_model 768, 12 heads, vocab 50257) with random weights
locally (no download), and uses ``interptest-tiny`` when it is present.  For each case it prints the
TransformerLens time, the generic hook engine's time (``engine="generic"``, the engine every
architecture falls back to), interptest's time (the fast engine where the architecture is covered),
the ratios, max |Δ| between interptest and TransformerLens, and the exact work floor in layer-token
units (one layer applied to one token; the unembedding of one token counts as d_vocab * d_model /
per-layer cost) with how many units/second each engine achieves.

``--family S`` (default 40; 0 skips it) adds a prompt family on ``interptest-tiny``: S induction
prompts ("Her name was {first} {last}. When {first}", the surname re-drawn in the corrupted prompt),
every component swept over all samples by one :class:`~interptest.patching.BatchPatcher`, against the
generic engine and against TransformerLens looping over the samples.  Times include building the
patcher (its clean and corrupted forwards); "in the pipeline" gives the engines the logits of those
forwards, as the spec pipeline does (it computes them once for the prediction claims, whatever the
engine); "sweep only" excludes the patcher's construction.

``--device cuda`` runs on the GPU (times synchronized, peak device memory printed).  Without
``--shapes`` it runs the GPU suite: gpt2-small (17 and 65 tokens, resid_pre and heads), pythia-410m
(64 tokens, resid_pre) and a Llama-3.2-1B shape (16 layers, d_model 2048, 32 query / 8 key-value heads,
129 tokens, resid_pre and heads), random weights built locally, float32.  ``--shapes`` picks shapes by
name (also the small ``gpt2-tiny``, ``pythia-tiny``, ``llama-tiny``, ``mistral-tiny``, ``qwen2-tiny``,
``qwen3-tiny``, ``gemma-tiny``, ``gemma2-tiny``, ``gemma3-tiny`` for a quick run on any device: one per
family the fast engine covers).
``--clock process`` times CPU runs by the process's CPU time, less sensitive to other processes on a
shared machine than the default wall clock.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")

_TL_FN = {
    "resid_pre": "get_act_patch_resid_pre",
    "resid_mid": "get_act_patch_resid_mid",
    "resid_post": None,  # TransformerLens has no resid_post sweep
    "attn_out": "get_act_patch_attn_out",
    "mlp_out": "get_act_patch_mlp_out",
    "heads": "get_act_patch_attn_head_out_all_pos",
}


# name -> (transformers config class, its arguments); random weights, float32
SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2-small": ("GPT2Config", dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)),
    "pythia-410m": (
        "GPTNeoXConfig",
        dict(
            vocab_size=50304,
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            rotary_pct=0.25,
            use_parallel_residual=True,
            max_position_embeddings=2048,
        ),
    ),
    "llama-1b": (
        "LlamaConfig",
        dict(
            vocab_size=128256,
            hidden_size=2048,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            intermediate_size=8192,
            max_position_embeddings=2048,
            rope_theta=500000.0,
            tie_word_embeddings=True,
        ),
    ),
    "gpt2-tiny": ("GPT2Config", dict(vocab_size=50257, n_positions=512, n_embd=128, n_layer=4, n_head=4)),
    "pythia-tiny": (
        "GPTNeoXConfig",
        dict(
            vocab_size=50304,
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=512,
            rotary_pct=0.25,
            use_parallel_residual=True,
            max_position_embeddings=512,
        ),
    ),
    "llama-tiny": (
        "LlamaConfig",
        dict(
            vocab_size=32000,
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=2,
            intermediate_size=512,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        ),
    ),
}
# one small shape per family the fast engine covers beyond GPT-2, Llama and GPT-NeoX (issue 19)
for _family, _cls, _extra in (
    ("mistral", "MistralConfig", dict(sliding_window=4096)),
    ("qwen2", "Qwen2Config", {}),
    ("qwen3", "Qwen3Config", dict(head_dim=16)),
    ("gemma", "GemmaConfig", dict(head_dim=16)),
    (
        "gemma2",
        "Gemma2Config",
        dict(head_dim=16, sliding_window=4096, final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
    ),
    (
        "gemma3",
        "Gemma3TextConfig",
        dict(head_dim=16, sliding_window=4096, layer_types=["sliding_attention"] * 3 + ["full_attention"]),
    ),
):
    SHAPES[f"{_family}-tiny"] = (_cls, {**SHAPES["llama-tiny"][1], **_extra})
# the GPU suite of issue 9.3: (shape, tokens incl. BOS, components)
GPU_SUITE = [
    ("gpt2-small", 17, ["resid_pre", "heads"]),
    ("gpt2-small", 65, ["resid_pre", "heads"]),
    ("pythia-410m", 64, ["resid_pre"]),
    ("llama-1b", 129, ["resid_pre", "heads"]),
]


def _save_tokenizer(tmp: str) -> None:
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    corpus = [
        "When Mary and John went to the store, John gave a drink to Mary.",
        "The Eiffel Tower is in Paris. The Colosseum is in Rome.",
        "one two three four five six seven eight nine ten eleven twelve",
    ] * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", tok.token_to_id("<|endoftext|>"))]
    )
    tf.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    ).save_pretrained(tmp)


def _save_gpt2_tokenizer(source: str, path: str) -> None:
    """GPT-2's fast tokenizer (byte-level BPE, as the hub's tokenizer.json) from ``encoder.json`` and
    ``vocab.bpe`` in ``source``, saved to ``path``."""
    import json

    import transformers as tf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    with open(os.path.join(source, "encoder.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(source, "vocab.bpe"), encoding="utf-8") as f:
        pairs = [line.split() for line in f.read().splitlines()[1:] if line.strip()]
    merges: list[tuple[str, str]] = [(a, b) for a, b in pairs]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    tf.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    ).save_pretrained(path)


def build_shape(name: str, tmp: str, device: str = "cpu", std: float | None = None, tokenizer: str | None = None):
    """A bridge over a random-weight model of shape ``name`` (see SHAPES), built on ``device`` in memory
    (only the config and the tokenizer are written, to ``tmp``). ``std``: the weights' standard deviation
    (default d_model^-0.5); ``tokenizer``: a directory with GPT-2's ``encoder.json`` and ``vocab.bpe``
    (default: a small BPE trained here)."""
    import torch
    import transformers as tf

    cls_name, kwargs = SHAPES[name]
    cfg = getattr(tf, cls_name)(bos_token_id=0, eos_token_id=0, **kwargs)
    cfg._attn_implementation = "eager"
    d = int(getattr(cfg, "hidden_size", None) or cfg.n_embd)
    path = os.path.join(tmp, name)
    os.makedirs(path, exist_ok=True)
    if tokenizer:
        _save_gpt2_tokenizer(tokenizer, path)
    else:
        _save_tokenizer(path)
    torch.manual_seed(0)
    with torch.device(device):
        hf = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    # the bridge picks its adapter from the saved config's ``architectures``; a bare config of a model type
    # with several causal-LM classes (gemma3_text) has none
    cfg.architectures = cfg.architectures or [type(hf).__name__]
    cfg.save_pretrained(path)
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, d**-0.5 if std is None else std)
    hf.eval()
    return _boot(path, device, hf_model=hf)


def _build_gpt2_small(tmp: str):
    return build_shape("gpt2-small", tmp)


def _boot(path: str, device: str = "cpu", hf_model=None):
    import torch

    from interptest.tl_compat import bridge_class

    m = bridge_class().boot_transformers(path, device=device, dtype=torch.float32, hf_model=hf_model)
    m.eval()
    return m


def _load_tiny(device: str = "cpu"):
    here = os.path.join(os.path.dirname(__file__), "zoo", "interptest-tiny")
    if not os.path.isdir(here):
        return None, f"interptest-tiny not found at {here} (skipped)"
    try:
        try:
            from interptest.model import load_model
        except ImportError:
            return _boot(here, device), ""
        return load_model("interptest-tiny", device=device), ""
    except Exception as e:  # the model is being trained by someone else; never fail the bench on it
        return None, f"interptest-tiny could not be loaded ({type(e).__name__}: {e}) (skipped)"


def _case_tokens(model, n: int, seed: int, repeated: bool = False):
    """n tokens (BOS first), corrupted at the 5th token.

    ``repeated``: a trained model's case — a random span followed by its own repeat, corrupted at the
    token the repeat is about to copy, so that induction makes the corruption matter (on plain random
    tokens a trained model's logit difference barely moves, and normalized values only amplify rounding)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    vocab = min(int(model.cfg.d_vocab), 300)
    clean = torch.randint(1, vocab, (1, n), generator=g)
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    if bos is not None and getattr(model.cfg, "default_prepend_bos", True):
        clean[0, 0] = bos
    where = min(4, n - 1)
    if repeated:
        span = (n - 1) - (n - 1) // 2  # the first copy; the second stops one token short
        clean[0, 1 + span :] = clean[0, 1 : n - span]
        where = span  # the token the last position will copy
    corrupt = clean.clone()
    corrupt[0, where] = (clean[0, where] + 7) % (vocab - 1) + 1
    return clean, corrupt


def _floor_units(model, component: str, n: int, fd: int) -> float:
    """Exact work floor in layer-token units: every patched cell recomputes layers >= l at positions >= p
    (K/V of earlier positions reused) plus one unembedding at the answer position."""
    cfg = model.cfg
    L, d = int(cfg.n_layers), int(cfg.d_model)
    d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * d)
    per_layer = 4 * d * d + 2 * d * d_mlp + (d * d_mlp if getattr(cfg, "gated_mlp", False) else 0)
    unembed = int(cfg.d_vocab) * d / per_layer
    total = 0.0
    if component == "heads":
        for layer in range(L):
            total += int(cfg.n_heads) * ((L - layer) * (n - fd) + unembed)
        return total
    for layer in range(L):
        for p in range(fd, n):
            if component == "resid_pre":
                total += (L - layer) * (n - p)
            else:  # the patched layer itself is done; the rest from layer+1
                total += (L - layer - 1) * (n - p)
            total += unembed
    return total


def _tl_units(model, n: int, cells: int) -> float:
    cfg = model.cfg
    L, d = int(cfg.n_layers), int(cfg.d_model)
    d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * d)
    per_layer = 4 * d * d + 2 * d * d_mlp
    return cells * n * (L + int(cfg.d_vocab) * d / per_layer)


class _Clock:
    """Seconds of wall time (or of this process's CPU time), the device synchronized first."""

    def __init__(self, kind: str = "wall", device: str = "cpu"):
        self.kind, self.cuda = kind, str(device).startswith("cuda")

    def __call__(self) -> float:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        return time.process_time() if self.kind == "process" else time.perf_counter()


def _timed(fn, repeats: int, clock: _Clock):
    """(best time over ``repeats`` calls, the last result, peak device memory in MiB or None)."""
    import torch

    best, result, peak = float("inf"), None, None
    for _ in range(repeats):
        if clock.cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = clock()
        with torch.inference_mode():
            result = fn()
        best = min(best, clock() - t0)
        if clock.cuda:
            peak = max(peak or 0.0, torch.cuda.max_memory_allocated() / 2**20)
    return best, result, peak


def _fmt_mib(peak) -> str:
    return "-" if peak is None else f"{peak:.0f}"


HEADER = (
    f"{'model':<16} {'tok':>4} {'component':<10} {'TL s':>8} {'generic s':>9} {'ours s':>8} {'vs TL':>7} "
    f"{'vs gen':>7} {'max|Δ|':>9} {'Δm':>7} {'TL/fl':>6} {'vs floor':>8} {'MiB TL':>7} {'MiB ours':>8}"
)


def run_case(model, name, n, components, repeats, out=print, generic=True, clock=None, tl=True):
    import torch
    from transformer_lens import patching as tlp

    from interptest.patching import Patcher

    clock = clock or _Clock()
    dev = str(getattr(model.cfg, "device", "cpu") or "cpu")
    clean, corrupt = _case_tokens(model, n, seed=n, repeated=name == "interptest-tiny")
    clean, corrupt = clean.to(dev), corrupt.to(dev)
    with torch.inference_mode():
        lc = model(clean)[0, -1]
        expect = int(lc.argmax())
        foil = int(model(corrupt)[0, -1].argmax())
        if foil == expect:
            foil = int(lc.topk(2).indices[1])
    for comp in components:
        fn_name = _TL_FN.get(comp)
        if fn_name is None:
            out(f"{name:<16} {n:>4} {comp:<10}  (no TransformerLens reference for {comp}; skipped)")
            continue
        try:

            def ours_fn(engine="auto", comp=comp):
                pt = Patcher(model, clean, corrupt, expect, foil, engine=engine)
                return pt, pt.sweep(comp, "denoise").values

            t_ours, (pt, ours), peak_ours = _timed(ours_fn, repeats, clock)
            t_gen = None
            if generic and pt.engine != "generic":
                t_gen, _, _ = _timed(lambda: ours_fn("generic"), repeats, clock)
            elif generic:
                t_gen = t_ours
            mc, mx = pt.clean_metric, pt.corrupt_metric

            def metric(logits, mc=mc, mx=mx):
                return (logits[0, -1, expect] - logits[0, -1, foil] - mx) / (mc - mx)

            def tl_fn(fn_name=fn_name, metric=metric):
                _, cache = model.run_with_cache(clean)
                return getattr(tlp, fn_name)(model, corrupt, cache, metric)

            t_tl, ref, peak_tl = _timed(tl_fn, repeats, clock) if tl else (None, None, None)
        except Exception as e:
            out(f"{name:<16} {n:>4} {comp:<10}  error: {type(e).__name__}: {e}")
            continue
        cells = ours.numel()
        floor = _floor_units(model, comp, n, pt.first_diff)
        tl_units = _tl_units(model, n, cells)
        gen = f"{t_gen:>9.3f}" if t_gen is not None else f"{'-':>9}"
        vs_gen = f"{t_gen / t_ours:>6.1f}x" if t_gen is not None else f"{'-':>7}"
        if t_tl is not None and ref is not None:
            delta = float((ours - ref.float().cpu()).abs().max())
            # "how close to the floor": the floor's work done at TL's units/second, vs our time.
            floor_time_at_tl_rate = floor / tl_units * t_tl
            tl_cols = f"{t_tl:>8.3f} {gen} {t_ours:>8.3f} {t_tl / t_ours:>6.1f}x {vs_gen} {delta:>9.1e}"
            vs_floor = f"{t_ours / floor_time_at_tl_rate:>8.2f}"
        else:  # --no-tl: ours (and the generic engine) only
            tl_cols = f"{'-':>8} {gen} {t_ours:>8.3f} {'-':>7} {vs_gen} {'-':>9}"
            vs_floor = f"{'-':>8}"
        out(
            f"{name:<16} {n:>4} {comp:<10} {tl_cols} {mc - mx:>7.2f} {tl_units / floor:>5.1f}x {vs_floor} "
            f"{_fmt_mib(peak_tl):>7} {_fmt_mib(peak_ours):>8}  [{pt.engine}]"
        )


def family_tokens(model, samples: int, seed: int = 0):
    """``samples`` induction prompts of one token length on ``model`` ("Her name was {first} {last}. When
    {first}", the surname re-drawn in the corrupted prompt), expect = the clean top-1, foil = the corrupted
    top-1 (the runner-up where they agree)."""
    import random
    from pathlib import Path

    import torch

    here = Path(__file__).parent / "lexicons"

    def lexicon(name):
        return [
            w.strip() for w in (here / f"{name}.txt").read_text().splitlines() if w.strip() and not w.startswith("#")
        ]

    names, surnames = lexicon("names"), lexicon("surnames")
    rng = random.Random(seed)
    clean_rows: list[torch.Tensor] = []
    corrupt_rows: list[torch.Tensor] = []
    length = None
    for _ in range(100 * samples):
        if len(clean_rows) == samples:
            break
        first = rng.choice(names)
        last, other = rng.sample(surnames, 2)
        c = model.to_tokens(f"Her name was {first} {last}. When {first}")
        x = model.to_tokens(f"Her name was {first} {other}. When {first}")
        length = length or c.shape[1]
        if c.shape[1] == x.shape[1] == length:
            clean_rows.append(c)
            corrupt_rows.append(x)
    clean, corrupt = torch.cat(clean_rows), torch.cat(corrupt_rows)
    with torch.inference_mode():
        lc, lx = model(clean)[:, -1].cpu(), model(corrupt)[:, -1].cpu()
    expect = lc.argmax(-1)
    masked = lx.clone()
    masked[torch.arange(len(expect)), expect] = -torch.inf
    return clean, corrupt, expect.tolist(), masked.argmax(-1).tolist()


FAMILY_HEADER = (
    f"{'model':<16} {'S':>4} {'component':<10} {'TL s':>8} {'generic s':>9} {'ours s':>8} {'vs TL':>7} "
    f"{'vs gen':>7} {'max|Δ|':>9} {'min Δm':>7}  in the pipeline: generic s, ours s, vs gen;"
    f"  sweep only: generic s, ours s, vs gen"
)


def run_family_case(model, name, samples, components, repeats, out=print, generic=True, clock=None):
    """S samples through one BatchPatcher per component (built, then swept), against the generic engine and
    TransformerLens looping over the samples."""
    import torch
    from transformer_lens import patching as tlp

    from interptest.patching import BatchPatcher

    clock = clock or _Clock()
    clean, corrupt, expect, foil = family_tokens(model, samples)
    S, n = clean.shape
    # the spec pipeline computes these for the prediction claims whatever the engine, and hands them over
    bridge = BatchPatcher(model, clean, corrupt, expect, foil, engine="generic")
    logits = (bridge.clean_logits, bridge.corrupt_logits)
    for comp in components:
        fn_name = _TL_FN.get(comp)
        try:
            times: dict[tuple[str, bool], tuple] = {}
            for engine in ["auto", "generic"] if generic else ["auto"]:
                for given in (False, True):
                    built: dict[str, Any] = {}

                    def run(engine=engine, built=built, comp=comp, given=given):
                        built["bp"] = bp = BatchPatcher(
                            model, clean, corrupt, expect, foil, engine=engine, _logits=logits if given else None
                        )
                        t0 = clock()
                        values = bp.sweep(comp)
                        built["sweep"] = min(built.get("sweep", float("inf")), clock() - t0)
                        return values

                    t, values, _ = _timed(run, repeats, clock)
                    times[engine, given] = (t, built["sweep"], values, built["bp"])
            t_ours, s_ours, ours, bp = times["auto", False]
            t_ours_given = times["auto", True][0]
            t_tl, ref = None, None
            if fn_name is not None:
                mc, mx = bp.clean_metrics.tolist(), bp.corrupt_metrics.tolist()

                def tl_fn(fn_name=fn_name, mc=mc, mx=mx):
                    refs = []
                    for s in range(S):
                        _, cache = model.run_with_cache(clean[s : s + 1])
                        e, f, c, x = expect[s], foil[s], mc[s], mx[s]
                        refs.append(
                            getattr(tlp, fn_name)(
                                model,
                                corrupt[s : s + 1],
                                cache,
                                lambda lg, e=e, f=f, c=c, x=x: (lg[0, -1, e] - lg[0, -1, f] - x) / (c - x),
                            )
                        )
                    return torch.stack(refs)

                t_tl, ref, _ = _timed(tl_fn, 1, clock)
        except Exception as e:
            out(f"{name:<16} {S:>4} {comp:<10}  error: {type(e).__name__}: {e}")
            continue
        dm = float((bp.clean_metrics - bp.corrupt_metrics).abs().min())
        delta = f"{float((ours - ref.float().cpu()).abs().max()):>9.1e}" if ref is not None else f"{'-':>9}"
        tl = f"{t_tl:>8.3f}" if t_tl is not None else f"{'-':>8}"
        vs_tl = f"{t_tl / t_ours:>6.1f}x" if t_tl is not None else f"{'-':>7}"
        if ("generic", False) in times:
            t_gen, s_gen = times["generic", False][:2]
            t_gen_given = times["generic", True][0]
            gen, vs_gen, piped, only = (
                f"{t_gen:>9.3f}",
                f"{t_gen / t_ours:>6.1f}x",
                f"{t_gen_given:>9.3f} {t_ours_given:>8.3f} {t_gen_given / t_ours_given:>6.1f}x",
                f"{s_gen:>9.3f} {s_ours:>8.3f} {s_gen / s_ours:>6.1f}x",
            )
        else:
            gen, vs_gen = f"{'-':>9}", f"{'-':>7}"
            piped, only = f"{'-':>9} {t_ours_given:>8.3f} {'-':>7}", f"{'-':>9} {s_ours:>8.3f} {'-':>7}"
        out(
            f"{name:<16} {S:>4} {comp:<10} {tl} {gen} {t_ours:>8.3f} {vs_tl} {vs_gen} {delta} {dm:>7.2f}  {piped};"
            f"  {only}  [{bp.engine}]"
        )


def _tl_faithful_reference(model, clean, corrupt, expect, foil, kept_sets):
    """Resample-ablation faithfulness the plain way: one TransformerLens forward per node set, hooks
    writing the corrupted run's head and MLP outputs outside the set."""

    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)
    names = [f"blocks.{l}.attn.hook_z" for l in range(L)] + [f"blocks.{l}.hook_mlp_out" for l in range(L)]

    def m(hooks):
        logits = model.run_with_hooks(clean, fwd_hooks=hooks)
        return float(logits[0, -1, expect] - logits[0, -1, foil])

    _, cache = model.run_with_cache(corrupt, names_filter=lambda nm: nm in set(names))
    mc = m([])

    def run(kept):
        hooks: list[tuple[str, Any]] = []
        for layer in range(L):
            heads = [h for h in range(H) if ("heads", (layer, h, None)) not in kept]
            src = cache[f"blocks.{layer}.attn.hook_z"]

            def z(act, hook=None, heads=heads, src=src):
                act[:, :, heads] = src[:, :, heads]
                return act

            hooks.append((f"blocks.{layer}.attn.hook_z", z))
            if ("mlp_out", (layer, None)) not in kept:
                hooks.append(
                    (
                        f"blocks.{layer}.hook_mlp_out",
                        lambda act, hook=None, v=cache[f"blocks.{layer}.hook_mlp_out"]: v.clone(),
                    )
                )
        return m(hooks)

    empty = run(set())
    return [(run(set(kept)) - empty) / (mc - empty) for kept in kept_sets]


def _tl_path_reference(model, clean, corrupt, expect, foil, sender, receiver):
    """Path patching the plain way (denoise): one forward to record the receiver's key input with the sender
    clean and every other head frozen corrupted, one to patch it; TransformerLens hooks, batch 1."""

    L = int(model.cfg.n_layers)
    z_names = [f"blocks.{l}.attn.hook_z" for l in range(L)]
    _, base = model.run_with_cache(corrupt, names_filter=lambda nm: nm in set(z_names))
    _, src = model.run_with_cache(clean, names_filter=lambda nm: nm in set(z_names))
    layer, head = sender
    hooks: list[tuple[str, Any]] = []
    for name in z_names:
        frozen = base[name].clone()
        if name == f"blocks.{layer}.attn.hook_z":
            frozen[:, :, head] = src[name][:, :, head]
        hooks.append((name, lambda act, hook=None, v=frozen: v))
    rl, rh = receiver
    kname = f"blocks.{rl}.attn.hook_k"
    recorded = {}

    def keep(act, hook=None):
        recorded["k"] = act[:, :, rh].clone()
        return act

    model.run_with_hooks(corrupt, fwd_hooks=hooks + [(kname, keep)], stop_at_layer=rl + 1)

    def patch(act, hook=None):
        act[:, :, rh] = recorded["k"]
        return act

    logits = model.run_with_hooks(corrupt, fwd_hooks=[(kname, patch)])
    return float(logits[0, -1, expect] - logits[0, -1, foil])


def run_circuit_cases(model, name, n, sets=200, out=print):
    """A 200-set negative control (faithfulness of random node sets of 4 heads and 1 MLP, resample
    ablation) and a sender sweep (path patching from every head before the last layer into one head's
    key): the plain TransformerLens-hook way, one forward at a time, against interptest's batched engine."""
    import random

    import torch

    from interptest.patching.paths import CircuitPatcher, normalize

    clean, corrupt = _case_tokens(model, n, seed=n, repeated=name == "interptest-tiny")
    with torch.inference_mode():
        lc = model(clean)[0, -1]
        expect = int(lc.argmax())
        foil = int(model(corrupt)[0, -1].argmax())
        if foil == expect:
            foil = int(lc.topk(2).indices[1])
    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)
    rng = random.Random(0)
    heads = [(l, h) for l in range(L) for h in range(H)]
    kept_sets = [
        [("heads", (l, h, None)) for l, h in rng.sample(heads, min(4, len(heads)))]
        + [("mlp_out", (rng.randrange(L), None))]
        for _ in range(sets)
    ]
    with torch.inference_mode():
        t0 = time.perf_counter()
        ref = _tl_faithful_reference(model, clean, corrupt, expect, foil, kept_sets)
        t_tl = time.perf_counter() - t0
        t0 = time.perf_counter()
        engine = CircuitPatcher(model, clean, corrupt, [expect], [foil])
        ours = engine.faithfulness(kept_sets, "resample")[0]
        t_ours = time.perf_counter() - t0
    delta = float((ours - torch.tensor(ref, dtype=torch.float64)).abs().max())
    out(
        f"{name:<16} {n:>4} {f'control {sets} sets':<22} {t_tl:>8.3f} {t_ours:>8.3f} {t_tl / t_ours:>7.1f}x "
        f"{delta:>9.1e}"
    )
    receiver = (L - 1, 0)
    senders = [(l, h) for l in range(L - 1) for h in range(H)]
    with torch.inference_mode():
        t0 = time.perf_counter()
        mc = float(lc[expect] - lc[foil])
        lx = model(corrupt)[0, -1]
        mx = float(lx[expect] - lx[foil])
        ref = [(_tl_path_reference(model, clean, corrupt, expect, foil, s, receiver) - mx) / (mc - mx) for s in senders]
        t_tl = time.perf_counter() - t0
        t0 = time.perf_counter()
        engine = CircuitPatcher(model, clean, corrupt, [expect], [foil])
        raw = engine.path(
            [[("heads", (l, h, None))] for l, h in senders], [[("k", L - 1, 0, None)]], "corrupt", "clean"
        )
        ours = normalize(raw, engine.metrics("clean"), engine.metrics("corrupt"), "denoise")[0, :, 0]
        t_ours = time.perf_counter() - t0
    delta = float((ours - torch.tensor(ref, dtype=torch.float64)).abs().max())
    out(
        f"{name:<16} {n:>4} {f'path {len(senders)} senders -> k':<22} {t_tl:>8.3f} {t_ours:>8.3f} "
        f"{t_tl / t_ours:>7.1f}x {delta:>9.1e}"
    )


# ---------------------------------------------------------------------------------------------
# --suite ioi (issue 23): circuit claims at GPT-2 scale, against the hand-written TransformerLens-hooks loop

# 18 heads of Wang et al.'s IOI circuit (duplicate, previous-token, induction, S-inhibition, name movers)
IOI_HEADS = "0.1, 2.2, 3.0, 4.11, 5.5, 5.8, 5.9, 6.9, 7.3, 7.9, 8.6, 8.10, 9.6, 9.9, 10.0, 10.7, 10.10, 11.10"
IOI_CLAIMS = [
    "resid_pre[:, {io}] recovers >= 0.5",
    "resid_pre[elsewhere] recovers <= 0.1",
    "heads[9.9, 9.6, 10.0] together recovers beats random at 0.95",
    "path heads[7.3, 7.9, 8.6, 8.10] -> heads[9.9].q recovers >= 0.1",
    "path heads[9.9, 9.6, 10.0] -> logits recovers >= 0.1",
    f"circuit heads[{IOI_HEADS}] + mlp_out[:] faithful >= 0.8 ablate mean",
    f"circuit heads[{IOI_HEADS}] + mlp_out[:] minimal >= 0.01 ablate mean",
    f"circuit heads[{IOI_HEADS}] + mlp_out[:] faithful beats random at 0.95",
]


def ioi_behavior(samples: int, claims=None) -> dict:
    """The IOI family of the suite: GPT-2's single-token names, the indirect object re-drawn."""
    return {
        "name": "ioi",
        "template": "When {io} and {s} went to the store, {s} gave a drink to",
        "expect": " {io}",
        "corrupt": {"resample": ["io"]},
        "vars": {"io": "@names", "s": "@names"},
        "samples": samples,
        "single_token": "drop",
        "min_effect": 0.001,  # random weights: keep every sample judgeable (no claim skipped as too weak)
        "claims": list(IOI_CLAIMS if claims is None else claims),
    }


def _peak_rss_mib() -> float:
    """Peak memory so far: the process's resident set on the CPU, allocated device memory on CUDA."""
    import resource

    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _hand_metric(model, tokens, expect, foil, hooks=()) -> float:
    logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks))
    return float(logits[0, -1, expect] - logits[0, -1, foil])


def _hand_faithful(model, clean, values, expect, foil, kept_sets):
    """Faithfulness the plain way, one prompt, one forward per set: hooks writing ``values`` (hook name ->
    [1, n, ...]) into every head and MLP output outside the set; m_clean and m_∅ each one forward."""
    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)

    def run(kept):
        hooks: list[tuple[str, Any]] = []
        for layer in range(L):
            heads = [h for h in range(H) if ("heads", (layer, h, None)) not in kept]

            def z(act, hook=None, heads=heads, src=values[f"blocks.{layer}.attn.hook_z"]):
                act[:, :, heads] = src[:, :, heads]
                return act

            hooks.append((f"blocks.{layer}.attn.hook_z", z))
            if ("mlp_out", (layer, None)) not in kept:
                hooks.append(
                    (f"blocks.{layer}.hook_mlp_out", lambda act, hook=None, v=values[f"blocks.{layer}.hook_mlp_out"]: v)
                )
        return _hand_metric(model, clean, expect, foil, hooks)

    mc, empty = _hand_metric(model, clean, expect, foil), run(set())
    return [(run(set(kept)) - empty) / (mc - empty) for kept in kept_sets]


def _node_names(model) -> list[str]:
    L = int(model.cfg.n_layers)
    return [f"blocks.{l}.attn.hook_z" for l in range(L)] + [f"blocks.{l}.hook_mlp_out" for l in range(L)]


def _hand_sources(model, ablation, corrupt, references):
    """The values an ablation writes, the plain way: the corrupted run's cache, the mean of the reference
    prompts' caches (one forward each), or zeros."""
    import torch

    names = set(_node_names(model))
    if ablation == "resample":
        _, cache = model.run_with_cache(corrupt, names_filter=lambda nm: nm in names)
        return {nm: cache[nm] for nm in names}
    caches = [model.run_with_cache(r[None], names_filter=lambda nm: nm in names)[1] for r in references]
    mean = {nm: torch.stack([c[nm][0] for c in caches]).mean(0, keepdim=True) for nm in names}
    return mean if ablation == "mean" else {nm: torch.zeros_like(v) for nm, v in mean.items()}


def _hand_path(model, clean, corrupt, expect, foil, senders, receiver):
    """Path patching the plain way (recovers): caches of both runs, one forward recording the receiver's
    input with the senders clean and every other head frozen corrupted, one patching it."""
    L = int(model.cfg.n_layers)
    z_names = [f"blocks.{l}.attn.hook_z" for l in range(L)]
    wanted = set(z_names)
    lx, base = model.run_with_cache(corrupt, names_filter=lambda nm: nm in wanted)
    lc, src = model.run_with_cache(clean, names_filter=lambda nm: nm in wanted)
    mc, mx = float(lc[0, -1, expect] - lc[0, -1, foil]), float(lx[0, -1, expect] - lx[0, -1, foil])
    hooks: list[tuple[str, Any]] = []
    for layer, name in enumerate(z_names):
        frozen = base[name].clone()
        for sl, sh in senders:
            if sl == layer:
                frozen[:, :, sh] = src[name][:, :, sh]
        hooks.append((name, lambda act, hook=None, v=frozen: v))
    kind, rl, rh = receiver
    name = "ln_final.hook_in" if kind == "logits" else f"blocks.{rl}.attn.hook_{kind}"
    recorded = {}

    def keep(act, hook=None):
        recorded["v"] = act.clone()
        return act

    model.run_with_hooks(corrupt, fwd_hooks=hooks + [(name, keep)], stop_at_layer=None if kind == "logits" else rl + 1)

    def patch(act, hook=None):
        if kind == "logits":
            return recorded["v"]
        act[:, :, rh] = recorded["v"][:, :, rh]
        return act

    m = _hand_metric(model, corrupt, expect, foil, [(name, patch)])
    return (m - mx) / (mc - mx)


def run_suite_rows(model, name, n=15, sets=200, hand=True, out=print):
    """One prompt of ``n`` tokens: path claims, circuit faithfulness under every ablation and a ``sets``-set
    control, interptest's circuit engine ("cold": a new engine, its cached forwards included; "in a
    behavior": the behavior's forwards and all-ablated runs already shared) against the plain loop."""
    import random

    import torch

    from interptest.patching.paths import CircuitPatcher, normalize

    dev = str(getattr(model.cfg, "device", "cpu") or "cpu")
    clean, corrupt = _case_tokens(model, n, seed=n)
    g = torch.Generator().manual_seed(1)
    references = torch.randint(1, min(int(model.cfg.d_vocab), 300), (8, n), generator=g)
    references[:, 0] = clean[0, 0]
    clean, corrupt, references = clean.to(dev), corrupt.to(dev), references.to(dev)
    with torch.inference_mode():
        lc = model(clean)[0, -1]
        expect = int(lc.argmax())
        foil = int(model(corrupt)[0, -1].argmax())
        if foil == expect:
            foil = int(lc.topk(2).indices[1])
    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)
    rng = random.Random(0)
    size = min(18, L * H // 2)
    heads = rng.sample([(l, h) for l in range(L) for h in range(H)], size)
    kept = [("heads", (l, h, None)) for l, h in heads] + [("mlp_out", (l, None)) for l in range(L)]
    pl = max(2, L - 3)  # receiver layer: 9 on gpt2-small
    senders = [(pl - 2, 3), (pl - 2, 5 % H), (pl - 1, 6 % H), (pl - 1, 10 % H)]

    def engine():
        return CircuitPatcher(model, clean, corrupt, [expect], [foil], reference_ids=references)

    clock = _Clock("wall" if dev.startswith("cuda") else "process", dev)  # CPU: this process's CPU seconds

    def timed(fn):
        t0 = clock()
        with torch.inference_mode():
            result = fn()
        return clock() - t0, result

    rows = []

    def path_case(receiver, edits_r):
        edits_s = [("heads", (l, h, None)) for l, h in senders]

        def ours(e):
            raw = e.path([edits_s], [[edits_r]], "corrupt", "clean")
            return float(normalize(raw, e.metrics("clean"), e.metrics("corrupt"), "denoise")[0, 0, 0])

        return ours, lambda: _hand_path(model, clean, corrupt, expect, foil, senders, receiver)

    cases: list[tuple[str, Any, Any, str | None]] = []
    for label, receiver, edits_r in [
        (f"path -> heads[{pl}.9].q", ("q", pl, 9 % H), ("q", pl, 9 % H, None)),
        ("path -> logits", ("logits", None, None), ("logits", None)),
    ]:
        ours_fn, hand_fn = path_case(receiver, edits_r)
        cases.append((label, ours_fn, hand_fn, None))
    for ablation in ("resample", "mean", "zero"):
        cases.append(
            (
                f"faithful ablate {ablation}",
                lambda e, a=ablation: float(e.faithfulness([kept], a)[0, 0]),
                lambda a=ablation: _hand_faithful(
                    model, clean, _hand_sources(model, a, corrupt, references), expect, foil, [kept]
                )[0],
                ablation,
            )
        )
    for label, ours_fn, hand_fn, case_ablation in cases:
        t_cold, value = timed(lambda ours_fn=ours_fn: ours_fn(engine()))
        warm = engine()
        with torch.inference_mode():  # what the behavior's other claims already computed
            warm.metrics("clean"), warm.metrics("corrupt"), warm.source("mean", "blocks.0.attn.hook_z")
            warm._fast_engine()  # the fast engine's own cached runs of both prompts (None where it declines)
            if case_ablation:
                warm.all_ablated(case_ablation)
        t_warm, value = timed(lambda ours_fn=ours_fn, warm=warm: ours_fn(warm))
        t_hand, ref = timed(hand_fn) if hand else (None, None)
        note = ""
        if case_ablation and ref is not None:
            # a faithfulness value is a logit difference over m_clean − m_∅: where that normalizer is small
            # (zero ablation of a random model), float32 rounding of the logits is divided by it
            with torch.inference_mode():
                scale = float((warm.metrics("clean") - warm.all_ablated(case_ablation)).abs().min())
            note = f"|m_clean − m_∅| {scale:.3g}, |Δ| × it {abs(value - ref) * scale:.1e} logits"
        rows.append((label, t_hand, t_cold, t_warm, None if ref is None else abs(value - ref), note))
    # the control: the claimed set's faithfulness against random sets of its composition
    from interptest.claims.controls import sequential_control

    random_sets: list[list[tuple]] = []
    while len(random_sets) < sets:
        chosen = rng.sample([(l, h) for l in range(L) for h in range(H)], size)
        random_sets.append([("heads", (l, h, None)) for l, h in chosen] + [("mlp_out", (l, None)) for l in range(L)])
    values_holder = {}

    def ours_control(e, sequential=True):
        values = e.faithfulness([kept], "resample")
        if not sequential:
            values_holder["all"] = e.faithfulness(random_sets, "resample")[0]
            return values_holder["all"]
        m = sequential_control(values, lambda c: e.faithfulness(c, "resample"), random_sets, 0.95, False, "f", 0)
        values_holder["drawn"] = (m.figure or {})["drawn"]
        return m

    t_cold, _ = timed(lambda: ours_control(engine()))
    warm = engine()
    with torch.inference_mode():
        warm.all_ablated("resample")
    t_warm, _ = timed(lambda: ours_control(warm))
    t_all, all_values = timed(lambda: ours_control(engine(), sequential=False))
    t_hand, ref = None, None
    if hand:
        t_hand, ref = timed(
            lambda: _hand_faithful(
                model, clean, _hand_sources(model, "resample", corrupt, references), expect, foil, [kept] + random_sets
            )[1:]
        )
    delta = None if ref is None else float((all_values - torch.tensor(ref, dtype=torch.float64)).abs().max())
    drawn = values_holder["drawn"]
    rows.append((f"control {sets} sets, all drawn", t_hand, t_all, None, delta, ""))
    rows.append((f"control {sets} sets, sequential", t_hand, t_cold, t_warm, None, f"drew {drawn} of {sets}"))
    for label, t_hand, t_cold, t_warm, delta, note in rows:
        hand_s = f"{t_hand:>8.2f}" if t_hand is not None else f"{'-':>8}"
        warm_s = f"{t_warm:>8.2f}" if t_warm is not None else f"{'-':>8}"
        r_cold = f"{t_hand / t_cold:>7.1f}x" if t_hand else f"{'-':>8}"
        r_warm = f"{t_hand / t_warm:>7.1f}x" if t_hand and t_warm else f"{'-':>8}"
        d = f"{delta:>9.1e}" if delta is not None else f"{'-':>9}"
        out(f"{name:<16} {n:>4} {label:<32} {hand_s} {t_cold:>8.2f} {warm_s} {r_cold} {r_warm} {d}  {note}")


SUITE_HEADER = (
    f"{'model':<16} {'tok':>4} {'case':<32} {'hand s':>8} {'cold s':>8} {'in beh s':>8} {'vs cold':>8} "
    f"{'vs beh':>8} {'max|Δ|':>9}"
)


# --suite ioi / edges (issue 21): edge circuits at GPT-2 scale, against a plain one-forward-at-a-time loop


def _hand_edge_metric(model, clean, expect, foil, embed, ablated, edges) -> float:
    """m_C of one edge set on one prompt, the plain way, from the definition (``interptest/patching/edges.py``):
    every receiver's input is the input node's output plus each sender's output (a head's z_h · W_O[h], an
    MLP's ``hook_mlp_out``) — in this run where its edge is in ``edges``, ``ablated`` otherwise — plus the
    attention output biases of the layers before it; one forward per receiver (stopped after its layer) sets
    the receiver's norm input to it and reads its head's q, k or v; one forward per layer runs its heads on
    those and one its MLP on its input; a last one sets the final residual and reads the logits.
    ``embed``: the prompt's ``blocks.0.hook_resid_pre``; ``ablated``: {"input", "z": [L], "mlp": [L]}."""
    import torch

    from interptest.graphs import Sender

    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)
    K = int(getattr(model.cfg, "n_key_value_heads", None) or H)
    parallel = bool(getattr(model.cfg, "parallel_attn_mlp", False))
    w_o = [model.blocks[layer].attn.W_O for layer in range(L)]
    b_o = [model.blocks[layer].attn.b_O for layer in range(L)]

    def receiver_key(r):
        if r.kind == "logits":
            return ("logits",)
        if r.kind in ("k", "v"):
            return (r.kind, r.layer, int(r.head) // (H // K))
        return (r.kind, r.layer, r.head)

    present = {(e.sender, receiver_key(e.receiver)) for e in edges}
    z_run: list = [None] * L
    mlp_run: list = [None] * L

    def residual(key, heads_below: int, mlps_below: int):
        total = embed if (Sender("input"), key) in present else ablated["input"]
        for layer in range(heads_below):
            total = total + b_o[layer]
            for h in range(H):
                z = z_run[layer] if (Sender("head", layer, h), key) in present else ablated["z"][layer]
                total = total + z[:, :, h] @ w_o[layer][h]
        for layer in range(mlps_below):
            total = total + (mlp_run[layer] if (Sender("mlp", layer), key) in present else ablated["mlp"][layer])
        return total

    def setter(value):
        return lambda act, hook=None: value.to(act.dtype)

    def read(name, hooks, stop):
        got = {}

        def keep(act, hook=None):
            got["v"] = act.clone()
            return act

        model.run_with_hooks(clean, fwd_hooks=list(hooks) + [(name, keep)], stop_at_layer=stop)
        return got["v"]

    for layer in range(L):
        qkv = {}
        for kind, width in (("q", H), ("k", K), ("v", K)):
            name = f"blocks.{layer}.attn.hook_{kind}"
            parts = []
            for j in range(width):
                r = residual((kind, layer, j), layer, layer)
                parts.append(read(name, [(f"blocks.{layer}.ln1.hook_in", setter(r))], layer + 1)[:, :, j])
            qkv[name] = torch.stack(parts, dim=2)
        z_run[layer] = read(f"blocks.{layer}.attn.hook_z", [(nm, setter(v)) for nm, v in qkv.items()], layer + 1)
        r = residual(("mlp", layer, None), layer + (0 if parallel else 1), layer)
        mlp_run[layer] = read(f"blocks.{layer}.hook_mlp_out", [(f"blocks.{layer}.ln2.hook_in", setter(r))], layer + 1)
    r = residual(("logits",), L, L)
    logits = model.run_with_hooks(clean, fwd_hooks=[("ln_final.hook_in", setter(r))])
    return float(logits[0, -1, expect] - logits[0, -1, foil])


def run_edge_rows(model, name, n=15, sets=200, hand=True, compare=None, out=print):
    """Edge circuits on one prompt of ``n`` tokens under ``resample``: a negative control (a 200-edge circuit —
    every edge into the logits and random others — and ``sets`` random edge sets of its size among the model's
    edges) and a ``minimal`` sweep (the circuit with each of its first ``sets`` edges removed). Raw metrics m_C
    of each set from interptest's fast edge forward (``fast``), its hook forward (``hooks``: 1 + H + 2·H_kv
    rows per set) and the plain loop (``hand``, :func:`_hand_edge_metric`); seconds per set (``fast cold``: a
    new engine; the others warm: its cached runs already paid) and max |Δ|. ``compare``: the hook forward and
    the plain loop run the circuit and the first ``compare`` sets only (all by default)."""
    import random

    import torch

    from interptest.patching.edges import EdgePatcher
    from interptest.patching.fast.edges import choose_engine
    from interptest.patching.paths import CircuitPatcher

    dev = str(getattr(model.cfg, "device", "cpu") or "cpu")
    clean, corrupt = _case_tokens(model, n, seed=n)
    clean, corrupt = clean.to(dev), corrupt.to(dev)
    with torch.inference_mode():
        lc = model(clean)[0, -1]
        expect = int(lc.argmax())
        foil = int(model(corrupt)[0, -1].argmax())
        if foil == expect:
            foil = int(lc.topk(2).indices[1])
    clock = _Clock("wall" if dev.startswith("cuda") else "process", dev)

    def engine(choice):
        edges = EdgePatcher(CircuitPatcher(model, clean, corrupt, [expect], [foil]))
        choose_engine(edges, choice)
        return edges

    every = engine("hooks").edges()
    rng = random.Random(0)
    logits_edges = [e for e in every if e.receiver.kind == "logits"]
    others = [e for e in every if e.receiver.kind != "logits"]
    size = min(200, len(every) // 2)
    circuit = logits_edges[:size] + rng.sample(others, max(0, size - len(logits_edges)))
    control = [rng.sample(every, len(circuit)) for _ in range(sets)]
    minimal = [[e for e in circuit if e != drop] for drop in circuit[:sets]]
    L = int(model.cfg.n_layers)
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.attn.hook_z" for l in range(L)]
    names += [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    with torch.inference_mode():
        _, cc = model.run_with_cache(clean, names_filter=lambda nm: nm in set(names))
        _, cx = model.run_with_cache(corrupt, names_filter=lambda nm: nm in set(names))
    embed = cc["blocks.0.hook_resid_pre"]
    with torch.inference_mode():  # the plain loop reads heads' outputs through TransformerLens' W_O: checked here
        z, attn = cc["blocks.0.attn.hook_z"], model.run_with_cache(clean)[1]["blocks.0.hook_attn_out"]
        rebuilt = torch.einsum("bnhe,hed->bnd", z, model.blocks[0].attn.W_O) + model.blocks[0].attn.b_O
        w_o_err = float((rebuilt - attn).abs().max())
    ablated = {
        "input": cx["blocks.0.hook_resid_pre"],
        "z": [cx[f"blocks.{l}.attn.hook_z"] for l in range(L)],
        "mlp": [cx[f"blocks.{l}.hook_mlp_out"] for l in range(L)],
    }
    out(
        f"# edges: {len(every)} in the model; the circuit: {len(circuit)} edges ({len(logits_edges)} into the "
        f"logits); W_O rebuilds layer 0's attention output to {w_o_err:.1e}"
    )
    out(
        f"{'model':<16} {'tok':>4} {'case (resample, seconds per set)':<40} {'cmp':>4} {'hand':>8} {'hooks':>8} "
        f"{'fast cold':>9} {'fast':>8} {'hand/fast':>9} {'hooks/fast':>10} {'|Δ| hand':>9} {'|Δ| hooks':>9}"
    )
    for label, edge_sets in (
        (f"control: circuit + {sets} random sets", [circuit] + control),
        (f"minimal: circuit − each of {len(minimal)} edges", [circuit] + minimal),
    ):
        k = len(edge_sets)
        m = k if compare is None else min(k, compare + 1)  # the sets the slower loops run: the circuit + compare
        times, values = {}, {}
        t0 = clock()
        with torch.inference_mode():  # cold: a new engine, its cached runs and the fast forward's set-up included
            values["fast"] = engine("fast").metrics(edge_sets, "resample")[0]
        times["cold"] = (clock() - t0) / k
        for choice, count in (("fast", k), ("hooks", m)):
            warm = engine(choice)
            with torch.inference_mode():
                warm.metrics([[]], "resample")  # warm: the cached runs (and the fast set-up) already paid
                t0 = clock()
                values[choice + " warm"] = warm.metrics(edge_sets[:count], "resample")[0]
                times[choice] = (clock() - t0) / count
        ref = None
        if hand:
            t0 = clock()
            with torch.inference_mode():
                ref = torch.tensor(
                    [_hand_edge_metric(model, clean, expect, foil, embed, ablated, s) for s in edge_sets[:m]],
                    dtype=torch.float64,
                )
            times["hand"] = (clock() - t0) / m
        d_hooks = float((values["fast"][:m] - values["hooks warm"]).abs().max())
        d_warm = float((values["fast"] - values["fast warm"]).abs().max())
        hand_s = f"{times['hand']:>8.3f}" if ref is not None else f"{'-':>8}"
        ratio = f"{times['hand'] / times['fast']:>8.0f}x" if ref is not None else f"{'-':>9}"
        d_hand = f"{float((values['fast'][:m] - ref).abs().max()):>9.1e}" if ref is not None else f"{'-':>9}"
        out(
            f"{name:<16} {n:>4} {label:<40} {m - 1:>4} {hand_s} {times['hooks']:>8.3f} {times['cold']:>8.3f} "
            f"{times['fast']:>8.3f} {ratio} {times['hooks'] / times['fast']:>9.1f}x {d_hand} {d_hooks:>9.1e}"
            + ("" if d_warm == 0 else f"  (cold vs warm {d_warm:.1e})")
        )


def run_ioi_family(
    model, samples: int, hand: bool = True, shrink: bool = False, out=print, random_sets=None, claims=None
):
    """The IOI family through the real pipeline (bind, run_behavior): seconds per claim (its measure, the
    behavior's shared forwards paid by the first claim that needs them) and, for the path and faithfulness
    claims, the plain loop over the samples. Runs on older interptest too (claims timed by wrapping the
    kinds' ``measure``)."""
    import torch

    from interptest import claims as claim_kinds
    from interptest.binding import bind_behavior
    from interptest.outcomes import run_behavior
    from interptest.spec import parse_behavior

    times: dict[str, float] = {}
    kinds = {type(k) if not isinstance(k, type) else k for k in getattr(claim_kinds, "KINDS", ())}
    wrapped = []
    for kind in kinds:
        if "measure" in vars(kind):
            original = vars(kind)["measure"]

            def measure(self, bound, run, original=original):
                t0 = time.process_time()
                try:
                    return original(self, bound, run)
                finally:
                    times[self.text] = times.get(self.text, 0.0) + time.process_time() - t0
                    out(f"#   measured in {times[self.text]:8.2f} CPU s: {self.text}")
                    sys.stdout.flush()

            setattr(kind, "measure", measure)  # noqa: B010 (a class attribute mypy cannot see)
            wrapped.append((kind, original))
    try:
        rss0 = _peak_rss_mib()
        t0 = time.perf_counter()
        options = {"random_sets": random_sets} if random_sets else None
        bound = bind_behavior(parse_behavior(ioi_behavior(samples, claims)), model, "gpt2-small-arch", 0, options)
        t_bind = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = run_behavior(bound, shrink=shrink)
        t_run = time.perf_counter() - t0
    finally:
        for kind, original in wrapped:
            setattr(kind, "measure", original)  # noqa: B010
    hand_times: dict[str, tuple[float, float]] = {}
    if hand:
        clean, corrupt = bound.clean_ids, bound.corrupt_ids
        expect = [ids[0] for ids in bound.expect_ids]
        foil = [int(f) for f in result_foils(model, bound)]
        nodes = [tuple(int(x) for x in h.split(".")) for h in IOI_HEADS.split(", ")]
        kept = {("heads", (l, h, None)) for l, h in nodes} | {("mlp_out", (l, None)) for l in range(12)}
        with torch.inference_mode():
            t0 = time.process_time()
            mean = _hand_sources(model, "mean", None, clean)
            ref_f = [
                _hand_faithful(model, clean[s : s + 1], mean, expect[s], foil[s], [kept])[0] for s in range(samples)
            ]
            hand_times[IOI_CLAIMS[5]] = (time.process_time() - t0, sum(ref_f) / samples)
            t0 = time.process_time()
            senders = [(7, 3), (7, 9), (8, 6), (8, 10)]
            ref_p = [
                _hand_path(model, clean[s : s + 1], corrupt[s : s + 1], expect[s], foil[s], senders, ("q", 9, 9))
                for s in range(samples)
            ]
            hand_times[IOI_CLAIMS[3]] = (time.process_time() - t0, sum(ref_p) / samples)
    peak = _peak_rss_mib()
    out(f"# {samples} samples, {bound.clean_ids.shape[1]} tokens: bind {t_bind:.1f} s, run_behavior {t_run:.1f} s")
    out(
        f"{'claim (CPU seconds, one thread)':<72} {'s':>8} {'hand s':>8} {'vs hand':>8} {'mean':>8} "
        f"{'hand mean':>10}  verdict"
    )
    for check in result.checks[1:]:
        t = times.get(check.text, 0.0)
        hand_t, hand_v = hand_times.get(check.text, (None, None))
        mean = check.detail.split(",")[0].removeprefix("mean ") if check.detail.startswith("mean ") else None
        value = "-" if mean is None else mean
        detail = check.detail.split(";")[0][:60] if check.value is None else ("pass" if check.passed else "fail")
        out(
            f"{check.text[:72]:<72} {t:>8.2f} "
            + (f"{hand_t:>8.2f} {hand_t / t:>7.1f}x" if hand_t else f"{'-':>8} {'-':>8}")
            + f" {value:>8} "
            + (f"{hand_v:>10.4f}" if hand_v is not None else f"{'-':>10}")
            + f"  {detail}"
        )
    out(
        f"# claims total {sum(times.values()):.1f} s; peak memory (RSS on CPU, allocated on CUDA) {peak:.0f} MiB, "
        f"{peak - rss0:.0f} MiB above the model's"
    )
    return sum(times.values())


def run_edge_suggestion(model, samples: int, out=print) -> float:
    """``suggest_edge_claims`` on the IOI family (``samples`` prompts) through the real binding, timed per phase
    (CPU seconds, this process): the cached runs and m_∅, the EAP-IG ranking, the top-k search, the pruning,
    the beats-random control; the circuit's size and the claims' measured values."""
    import torch

    import interptest.claims.circuit as circuit
    from interptest.binding import bind_behavior
    from interptest.patching.edges import edge_patcher
    from interptest.running import Run
    from interptest.spec import parse_behavior

    bound = bind_behavior(parse_behavior(ioi_behavior(samples, claims=[])), model, "gpt2-small-arch", 0, None)
    times: dict[str, float] = {}
    phases = {
        "edge_ranking": "EAP-IG ranking (5 steps)",
        "_smallest_top_k": "top-k search",
        "_prune": "exact pruning",
        "sequential_control": "beats-random control",
    }
    originals = {name: getattr(circuit, name) for name in phases}

    found: dict[str, Any] = {}

    def timed(name):
        def wrapper(*args, **kwargs):
            t0 = time.process_time()
            try:
                found[name] = originals[name](*args, **kwargs)
                return found[name]
            finally:
                times[phases[name]] = times.get(phases[name], 0.0) + time.process_time() - t0

        return wrapper

    try:
        for name in phases:
            setattr(circuit, name, timed(name))
        with torch.inference_mode():
            run = Run(bound, None)
            t0 = time.process_time()
            engine = edge_patcher(run.circuits())
            span = (engine.p.metrics("clean") - engine.all_ablated("resample")).tolist()
            cached = time.process_time() - t0
            t0 = time.process_time()
            claims = circuit.suggest_edge_claims(run, run.seed)
            total = time.process_time() - t0
    finally:
        for name, original in originals.items():
            setattr(circuit, name, original)
    out(
        f"# edge suggestion, gpt2-small shape, {samples} samples x {bound.clean_ids.shape[1]} tokens, "
        f"{torch.get_num_threads()} thread(s), edge engine {getattr(engine, 'engine', '?')}: cached runs and m_∅ "
        f"{cached:.1f} CPU s (m_clean − m_∅ per sample: {', '.join(f'{d:.3f}' for d in span)}), then"
    )
    for phase, t in times.items():
        out(f"#   {phase:<28} {t:8.1f} CPU s")
    out(f"#   {'suggest_edge_claims total':<28} {total:8.1f} CPU s")
    if "_prune" in found:
        kept = found["_prune"][0]
        with torch.inference_mode():
            value = engine.faithfulness([kept], "resample").mean(dim=0)
        out(f"#   the circuit: {len(kept)} edges, faithfulness (samples' mean, exact) {float(value[0]):.3f}")
    for claim in claims:
        shown = re.sub(r"edges\[([^\]]*)\]", lambda m: f"edges[<{m.group(1).count(',') + 1} edges>]", claim)
        out(f"#   {shown}")
    return total


# --suite discovery (issue 31): the edge-discovery tools on interptest-ioi's real circuit

DISCOVERY_BEHAVIOR = "behaviors/ioi/circuit.yaml"  # the shipped IOI circuit spec: its family and graph file
DISCOVERY_FAMILY = "ioi-edge-circuit"  # the behavior whose graph file is the circuit found


def run_discovery(model, spec: dict, circuit_edges, steps=(1, 5, 20), out=print) -> list[dict]:
    """Each ranking of the edges — EAP (IG with 1 step), EAP-IG with more steps, and the exact loss of each edge
    removed alone from the full graph — then, for each, the smallest top-k whose exact faithfulness bound (the
    lower bootstrap bound of the samples' mean, as a claim is judged) is >= 0.9, and that top-k pruned exactly
    (complete, least |score| first): edges kept, overlap with ``circuit_edges`` (the circuit found), CPU time."""
    import torch

    import interptest.claims.circuit as circuit
    from interptest.binding import bind_behavior
    from interptest.patching.attribution import edge_scores
    from interptest.patching.edges import edge_patcher
    from interptest.running import Run
    from interptest.spec import parse_behavior

    bound = bind_behavior(parse_behavior(spec), model, "interptest-ioi", 0, None)
    rows: list[dict] = []
    with torch.inference_mode():
        run = Run(bound, None)
        engine = edge_patcher(run.circuits())
        every = engine.edges()
        reference = set(circuit_edges)

        def lower(values) -> float:
            return circuit.measured_bounds(values[:, :1], run.seed, 1, True)[0]

        def exact_alone():
            full = engine.faithfulness([every], "resample")
            alone = engine.faithfulness([[e for e in every if e is not v] for v in every], "resample")
            return (full - alone).mean(dim=0).tolist()

        def attribution(k: int):
            return lambda: edge_scores(engine, "resample", k).tolist()

        rankings = [(f"EAP-IG, {k} steps" if k > 1 else "EAP (1 gradient)", attribution(k)) for k in steps]
        rankings.append(("exact: each edge removed alone", exact_alone))
        engine.faithfulness([every], "resample")  # the edge forward is chosen (fast or hooks) on first use
        out(
            f"# {len(every)} edges, {bound.n_samples} samples x {bound.clean_ids.shape[1]} tokens, resample, the "
            f"circuit found: {len(reference)} edges; edge engine {getattr(engine, 'engine', '?')}; CPU s, "
            f"{torch.get_num_threads()} thread(s)"
        )
        out(
            "| ranking | scoring s | top-k at 0.9 | top-k ∩ circuit | pruned | pruned ∩ circuit | faithful "
            "| search + prune s |"
        )
        out("|---|---|---|---|---|---|---|---|")
        for name, score in rankings:
            t0 = time.process_time()
            scores = score()
            t_score = time.process_time() - t0
            t0 = time.process_time()
            ranked = sorted(range(len(every)), key=lambda i: (-abs(scores[i]), i))
            k, _ = circuit._smallest_top_k(every, ranked, engine, lower)
            top = sorted(ranked[:k])
            order = sorted(range(len(top)), key=lambda j: (abs(scores[top[j]]), top[j]))
            kept, _ = circuit._prune([every[i] for i in top], order, engine, lower)
            t_search = time.process_time() - t0
            value = lower(engine.faithfulness([kept], "resample"))
            top_edges = {every[i] for i in top}
            row = {
                "ranking": name,
                "scoring_s": t_score,
                "top_k": k,
                "top_k_in_circuit": len(top_edges & reference),
                "pruned": len(kept),
                "pruned_in_circuit": len(set(kept) & reference),
                "faithful": value,
                "search_s": t_search,
            }
            rows.append(row)
            out(
                f"| {name} | {t_score:.1f} | {k} | {row['top_k_in_circuit']} of {len(reference)} | {len(kept)} "
                f"| {row['pruned_in_circuit']} | {value:.3f} | {t_search:.1f} |"
            )
    return rows


def _main_discovery(args, torch) -> int:
    import yaml

    from interptest.graphs import parse_edge, read_graph
    from interptest.model import load_model

    if args.threads:
        torch.set_num_threads(int(args.threads.split(",")[0]))
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec_path = os.path.join(here, DISCOVERY_BEHAVIOR)
    if not os.path.isfile(spec_path):
        print(
            f"--suite discovery reads {DISCOVERY_BEHAVIOR} of a source checkout; not found at {spec_path}",
            file=sys.stderr,
        )
        return 2
    with open(spec_path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    spec = next(b for b in doc["behaviors"] if b["name"] == DISCOVERY_FAMILY)
    graph = next(c for c in spec["claims"] if "@" in c).split("@")[1].split()[0]
    edges = read_graph(os.path.join(os.path.dirname(spec_path), graph)).edges
    circuit_edges = [parse_edge(name) for name, _, in_graph in edges if in_graph]
    spec = {**spec, "claims": [], "samples": args.discovery_samples or spec.get("samples", 20)}
    model = load_model(doc.get("model", "interptest-ioi"), device=args.device)
    steps = tuple(int(x) for x in args.ig_steps.split(","))
    run_discovery(model, spec, circuit_edges, steps)
    return 0


def result_foils(model, bound):
    """Each sample's foil as the pipeline picks it: the corrupted prompt's top-1."""
    import torch

    with torch.inference_mode():
        return model(bound.corrupt_ids)[:, -1].argmax(-1).tolist()


def _main_ioi(args, torch) -> int:
    if args.threads:
        torch.set_num_threads(int(args.threads.split(",")[0]))
    shapes = [x.strip() for x in args.shapes.split(",")] if args.shapes else ["gpt2-small"]
    tmp = tempfile.mkdtemp(prefix="interptest-bench-")
    print(
        f"# torch threads = {torch.get_num_threads()}, device {args.device}; times are this process's CPU seconds "
        "on the CPU (a shared machine), wall seconds on CUDA"
    )
    try:
        if args.suite == "edges":
            args.no_rows = args.no_family = True
        if not args.no_rows:
            print(SUITE_HEADER)
            for shape in shapes:
                model = build_shape(shape, tmp, args.device)
                run_suite_rows(
                    model, shape, n=15 if args.lengths == "16,64" else int(args.lengths), hand=not args.no_hand
                )
                sys.stdout.flush()
                del model
        if args.suite == "edges" or not args.no_edges:
            for shape in shapes:
                model = build_shape(shape, tmp, args.device)
                n = 15 if args.lengths == "16,64" else int(args.lengths)
                run_edge_rows(model, shape, n=n, sets=args.edge_sets, hand=not args.no_hand, compare=args.edge_compare)
                sys.stdout.flush()
                del model
        if not args.no_family:
            if not os.path.isfile(os.path.join(args.tokenizer, "encoder.json")):
                print(f"# no GPT-2 tokenizer at {args.tokenizer} (--tokenizer): the IOI family is skipped")
                return 0
            model = build_shape("gpt2-small", tmp, args.device, std=0.1, tokenizer=args.tokenizer)
            for samples in [int(x) for x in args.samples.split(",") if x.strip()]:
                print()
                claims = [IOI_CLAIMS[i] for i in (3, 5, 7)] if args.circuit_claims else None
                run_ioi_family(model, samples, hand=not args.no_hand, random_sets=args.random_sets, claims=claims)
                sys.stdout.flush()
        print(
            "\nhand = the plain TransformerLens-hooks loop, one forward at a time; cold = a new circuit engine (its "
            "cached forwards included); in beh = inside a behavior, whose one cached forward per prompt set and "
            "all-ablated runs other claims already paid for; vs = hand / ours."
            if args.suite == "ioi"
            else ""
        )
        if args.suite == "edges" or not args.no_edges:
            print(
                "edges: hand = the plain loop (one forward per receiver, stopped after its layer); hooks = "
                "interptest's edge engine on the bridge's forward (1 + H + 2·H_kv rows per set); fast = its forward "
                "on the fast engine's description of the model (cold: a new engine, its cached runs and set-up "
                "included; the others warm); cmp = the sets hand and hooks ran (besides the circuit); |Δ| = max "
                "|Δm_C| of fast against hand and hooks on those."
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m interptest.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--components", default="resid_pre,resid_mid,attn_out,mlp_out,heads")
    ap.add_argument("--lengths", default="16,64")
    ap.add_argument(
        "--threads", default=None, help="comma-separated torch intra-op thread counts to compare (default: torch's)"
    )
    ap.add_argument("--quick", action="store_true", help="resid_pre only, 16 tokens, one repeat")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-tiny", action="store_true")
    ap.add_argument(
        "--family",
        type=int,
        default=40,
        metavar="S",
        help="samples of the interptest-tiny prompt-family case (0: skip it)",
    )
    ap.add_argument("--no-generic", action="store_true", help="do not time the generic hook engine")
    ap.add_argument(
        "--no-tl",
        action="store_true",
        help="do not run TransformerLens (ours only: time and peak memory of a size TL would take minutes on)",
    )
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument(
        "--shapes",
        default=None,
        help=f"comma-separated model shapes: {', '.join(SHAPES)} (default: gpt2-small; on cuda the GPU suite)",
    )
    ap.add_argument(
        "--clock",
        choices=["wall", "process"],
        default="wall",
        help="wall-clock time (default) or this process's CPU time (CPU runs on a shared machine)",
    )
    ap.add_argument(
        "--circuits",
        action="store_true",
        help="instead of the node sweeps: a 200-set negative control and a path-patching sender sweep",
    )
    ap.add_argument(
        "--suite",
        choices=["ioi", "edges", "suggest-edges", "discovery"],
        default=None,
        help="ioi: circuit claims at GPT-2 scale (issue 23): one-prompt rows against the hand-written loop on "
        "--shapes (default gpt2-small), then the edge rows, then the IOI family through the pipeline; edges: only "
        "the edge rows (issue 21: an edge negative control and an edge minimal sweep); suggest-edges: the edge "
        "circuit suggestion on gpt2-small's shape (the IOI family of --samples), each phase timed; discovery: "
        "EAP vs EAP-IG (--ig-steps) vs exact pruning on interptest-ioi's IOI circuit (behaviors/ioi/circuit.yaml)",
    )
    ap.add_argument(
        "--edge-sets",
        type=int,
        default=200,
        help="--suite ioi|edges: random edge sets of the control and edges removed in the minimal sweep (default 200)",
    )
    ap.add_argument(
        "--edge-compare",
        type=int,
        default=None,
        help="--suite ioi|edges: the hook edge forward and the plain loop run only this many of the sets (default all)",
    )
    ap.add_argument("--no-edges", action="store_true", help="--suite ioi: skip the edge rows")
    ap.add_argument("--ig-steps", default="1,5,20", help="--suite discovery: the attribution's step counts (1: EAP)")
    ap.add_argument(
        "--discovery-samples",
        type=int,
        default=None,
        help="--suite discovery: the family's samples (default: the spec's)",
    )
    ap.add_argument("--samples", default="20", help="--suite ioi: comma-separated family sizes (e.g. 20,80)")
    ap.add_argument("--no-hand", action="store_true", help="--suite ioi: skip the hand-written loops")
    ap.add_argument("--random-sets", type=int, default=None, help="--suite ioi: the family's random sets (default 200)")
    ap.add_argument("--no-family", action="store_true", help="--suite ioi: only the one-prompt rows")
    ap.add_argument(
        "--circuit-claims",
        action="store_true",
        help="--suite ioi: the family with its path, faithfulness and circuit-control claims only (e.g. for memory)",
    )
    ap.add_argument("--no-rows", action="store_true", help="--suite ioi: only the IOI family")
    ap.add_argument(
        "--tokenizer",
        default=os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "gpt2-tokenizer"
        ),
        help="--suite ioi: GPT-2's encoder.json and vocab.bpe (the family needs its single-token names)",
    )
    args = ap.parse_args(argv)

    import torch

    if args.suite in ("ioi", "edges"):
        return _main_ioi(args, torch)
    if args.suite == "discovery":
        return _main_discovery(args, torch)
    if args.suite == "suggest-edges":
        if args.threads:
            torch.set_num_threads(int(args.threads.split(",")[0]))
        model = build_shape(
            "gpt2-small", tempfile.mkdtemp(prefix="interptest-bench-"), args.device, std=0.1, tokenizer=args.tokenizer
        )
        for samples in [int(x) for x in args.samples.split(",") if x.strip()]:
            run_edge_suggestion(model, samples)
        return 0

    comps = [c.strip() for c in args.components.split(",") if c.strip()]
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    repeats = args.repeats
    if args.quick:
        comps, lengths, repeats = (
            ["resid_pre"] if args.components == ap.get_default("components") else comps,
            [16] if args.lengths == ap.get_default("lengths") else lengths,
            1,
        )
    from interptest.patching import COMPONENTS

    bad = [c for c in comps if c not in COMPONENTS]
    if bad:
        print(f"unknown component(s) {bad}; valid: {', '.join(COMPONENTS)}", file=sys.stderr)
        return 2
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {device}: CUDA is not available on this machine", file=sys.stderr)
        return 2
    shapes = [x.strip() for x in args.shapes.split(",") if x.strip()] if args.shapes else None
    unknown = [x for x in shapes or [] if x not in SHAPES]
    if unknown:
        print(f"unknown shape(s) {unknown}; valid: {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    if shapes is None and device.startswith("cuda") and not args.circuits:
        cases = [c for c in GPU_SUITE]  # the GPU suite, its own lengths and components
    else:
        cases = [(shape, n, comps) for shape in (shapes or ["gpt2-small"]) for n in lengths]
    threads = [int(x) for x in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
    clock = _Clock(args.clock, device)

    tmp = tempfile.mkdtemp(prefix="interptest-bench-")
    try:
        built: dict = {}

        def model_for(shape):
            if shape not in built:
                built.clear()  # one large model at a time
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                t0 = time.perf_counter()
                built[shape] = build_shape(shape, tmp, device)
                print(f"# built {shape} (random weights, float32, {device}) in {time.perf_counter() - t0:.1f}s")
            return built[shape]

        tiny = None
        if not args.no_tiny:
            tiny, msg = _load_tiny(device)
            if tiny is None:
                print(f"# {msg}")
        if args.circuits:
            models = [("gpt2-small-arch", model_for("gpt2-small"))] + ([("interptest-tiny", tiny)] if tiny else [])
            print(f"{'model':<16} {'tok':>4} {'case':<22} {'TL s':>8} {'ours s':>8} {'ratio':>8} {'max|Δ|':>9}")
            for name, model in models:
                for n in [16] if args.lengths == ap.get_default("lengths") else lengths:
                    run_circuit_cases(model, name, n)
                    sys.stdout.flush()
            return 0
        for nt in threads:
            torch.set_num_threads(nt)
            print(f"\n## torch threads = {nt}, device {device}, clock {args.clock}")
            print(HEADER)
            for shape, n, cs in cases:
                run_case(
                    model_for(shape),
                    shape if shape != "gpt2-small" else "gpt2-small-arch",
                    n,
                    cs,
                    repeats,
                    generic=not args.no_generic,
                    clock=clock,
                    tl=not args.no_tl,
                )
                sys.stdout.flush()
            if tiny is not None:
                for n in lengths:
                    run_case(tiny, "interptest-tiny", n, comps, repeats, generic=not args.no_generic, clock=clock)
                    sys.stdout.flush()
                if args.family > 0:
                    print()
                    print(FAMILY_HEADER)
                    run_family_case(
                        tiny, "interptest-tiny", args.family, comps, repeats, generic=not args.no_generic, clock=clock
                    )
                    sys.stdout.flush()
        print(
            "\nvs TL, vs gen = TransformerLens's / the generic engine's time over ours.  Δm = m_clean - m_corrupt, "
            "the normalizer: float32 rounding of the logits (~1e-6) is divided by it, so max|Δ| grows on random-token "
            "prompts whose corruption barely matters.  TL/fl = TransformerLens's work over the exact floor, in "
            "layer-token units (one layer on one token; unembedding of one token = d_vocab*d_model/per-layer "
            "flops).  'vs floor' = our time / (time TL would need for the floor's units at TL's units/s); < 1 means "
            "faster than the exact floor at TL's efficiency (only 2 logits are computed).  MiB = peak device memory "
            "(CUDA only)."
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
