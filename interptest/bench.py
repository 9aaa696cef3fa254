"""Benchmark: interptest's patching engine against TransformerLens' own sweeps, same run, same model.

    python -m interptest.bench [--components resid_pre,heads] [--lengths 16,64] [--threads 1,2] [--quick]

Builds gpt2-small's architecture (12 layers, d_model 768, 12 heads, vocab 50257) with random weights
locally (no download), and uses ``interptest-tiny`` when it is present.  For each case it prints the
TransformerLens time, interptest's time, the ratio, max |Δ| between the two, and the exact work floor
in layer-token units (one layer applied to one token; the unembedding of one token counts as
d_vocab * d_model / per-layer cost) with how many units/second each engine achieves.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")

_TL_FN = {
    "resid_pre": "get_act_patch_resid_pre",
    "resid_mid": "get_act_patch_resid_mid",
    "resid_post": None,  # TransformerLens has no resid_post sweep
    "attn_out": "get_act_patch_attn_out",
    "mlp_out": "get_act_patch_mlp_out",
    "heads": "get_act_patch_attn_head_out_all_pos",
}


def _build_gpt2_small(tmp: str):
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    corpus = ["When Mary and John went to the store, John gave a drink to Mary.",
              "The Eiffel Tower is in Paris. The Colosseum is in Rome.",
              "one two three four five six seven eight nine ten eleven twelve"] * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", tok.token_to_id("<|endoftext|>"))])
    tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                               unk_token="<|endoftext|>").save_pretrained(tmp)
    cfg = tf.GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                        bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = tf.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 768 ** -0.5)
    model.save_pretrained(tmp, safe_serialization=True)
    return _boot(tmp)


def _boot(path: str):
    import torch
    from transformer_lens import TransformerBridge
    import transformer_lens.model_bridge.sources.transformers  # noqa: F401

    m = TransformerBridge.boot_transformers(path, device="cpu", dtype=torch.float32)
    m.eval()
    return m


def _load_tiny():
    here = os.path.join(os.path.dirname(__file__), "zoo", "interptest-tiny")
    if not os.path.isdir(here):
        return None, f"interptest-tiny not found at {here} (skipped)"
    try:
        try:
            from interptest.model import load_model
        except ImportError:
            load_model = None
        return (load_model("interptest-tiny") if load_model else _boot(here)), ""
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
        span = (n - 1) - (n - 1) // 2                # the first copy; the second stops one token short
        clean[0, 1 + span:] = clean[0, 1:n - span]
        where = span                                 # the token the last position will copy
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


def run_case(model, name, n, components, repeats, out=print):
    import torch
    from transformer_lens import patching as tlp

    from interptest.patching import Patcher

    clean, corrupt = _case_tokens(model, n, seed=n, repeated=name == "interptest-tiny")
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
            best_ours = best_tl = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                with torch.inference_mode():
                    pt = Patcher(model, clean, corrupt, expect, foil)
                    ours = pt.sweep(comp, "denoise").values
                best_ours = min(best_ours, time.perf_counter() - t0)
            mc, mx = pt.clean_metric, pt.corrupt_metric

            def metric(logits):
                return (logits[0, -1, expect] - logits[0, -1, foil] - mx) / (mc - mx)

            for _ in range(repeats):
                t0 = time.perf_counter()
                with torch.inference_mode():
                    _, cache = model.run_with_cache(clean)
                    ref = getattr(tlp, fn_name)(model, corrupt, cache, metric)
                best_tl = min(best_tl, time.perf_counter() - t0)
        except Exception as e:
            out(f"{name:<16} {n:>4} {comp:<10}  error: {type(e).__name__}: {e}")
            continue
        delta = float((ours - ref.float().cpu()).abs().max())
        cells = ref.numel()
        floor = _floor_units(model, comp, n, pt.first_diff)
        tl_units = _tl_units(model, n, cells)
        # "how close to the floor": the floor's work done at TL's units/second, vs our time.
        floor_time_at_tl_rate = floor / tl_units * best_tl
        out(f"{name:<16} {n:>4} {comp:<10} {best_tl:>8.3f} {best_ours:>8.3f} {best_tl / best_ours:>7.1f}x "
            f"{delta:>9.1e} {mc - mx:>7.2f} {tl_units:>9.0f} {floor:>8.0f} {tl_units / floor:>6.1f}x "
            f"{best_ours / floor_time_at_tl_rate:>7.2f}  [{pt.engine}]")


def _tl_faithful_reference(model, clean, corrupt, expect, foil, kept_sets):
    """Resample-ablation faithfulness the plain way: one TransformerLens forward per node set, hooks
    writing the corrupted run's head and MLP outputs outside the set."""
    import torch

    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)
    names = [f"blocks.{l}.attn.hook_z" for l in range(L)] + [f"blocks.{l}.hook_mlp_out" for l in range(L)]

    def m(hooks):
        logits = model.run_with_hooks(clean, fwd_hooks=hooks)
        return float(logits[0, -1, expect] - logits[0, -1, foil])

    _, cache = model.run_with_cache(corrupt, names_filter=lambda nm: nm in set(names))
    mc = m([])

    def run(kept):
        hooks = []
        for layer in range(L):
            heads = [h for h in range(H) if ("heads", (layer, h, None)) not in kept]
            src = cache[f"blocks.{layer}.attn.hook_z"]

            def z(act, hook=None, heads=heads, src=src):
                act[:, :, heads] = src[:, :, heads]
                return act
            hooks.append((f"blocks.{layer}.attn.hook_z", z))
            if ("mlp_out", (layer, None)) not in kept:
                hooks.append((f"blocks.{layer}.hook_mlp_out",
                              lambda act, hook=None, v=cache[f"blocks.{layer}.hook_mlp_out"]: v.clone()))
        return m(hooks)

    empty = run(set())
    return [(run(set(kept)) - empty) / (mc - empty) for kept in kept_sets]


def _tl_path_reference(model, clean, corrupt, expect, foil, sender, receiver):
    """Path patching the plain way (denoise): one forward to record the receiver's key input with the sender
    clean and every other head frozen corrupted, one to patch it; TransformerLens hooks, batch 1."""
    import torch

    L = int(model.cfg.n_layers)
    z_names = [f"blocks.{l}.attn.hook_z" for l in range(L)]
    _, base = model.run_with_cache(corrupt, names_filter=lambda nm: nm in set(z_names))
    _, src = model.run_with_cache(clean, names_filter=lambda nm: nm in set(z_names))
    layer, head = sender
    hooks = []
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
    kept_sets = [[("heads", (l, h, None)) for l, h in rng.sample(heads, min(4, len(heads)))]
                 + [("mlp_out", (rng.randrange(L), None))] for _ in range(sets)]
    with torch.inference_mode():
        t0 = time.perf_counter()
        ref = _tl_faithful_reference(model, clean, corrupt, expect, foil, kept_sets)
        t_tl = time.perf_counter() - t0
        t0 = time.perf_counter()
        engine = CircuitPatcher(model, clean, corrupt, [expect], [foil])
        ours = engine.faithfulness(kept_sets, "resample")[0]
        t_ours = time.perf_counter() - t0
    delta = float((ours - torch.tensor(ref, dtype=torch.float64)).abs().max())
    out(f"{name:<16} {n:>4} {f'control {sets} sets':<22} {t_tl:>8.3f} {t_ours:>8.3f} {t_tl / t_ours:>7.1f}x "
        f"{delta:>9.1e}")
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
        raw = engine.path([[("heads", (l, h, None))] for l, h in senders], [[("k", L - 1, 0, None)]], "corrupt",
                          "clean")
        ours = normalize(raw, engine.metrics("clean"), engine.metrics("corrupt"), "denoise")[0, :, 0]
        t_ours = time.perf_counter() - t0
    delta = float((ours - torch.tensor(ref, dtype=torch.float64)).abs().max())
    out(f"{name:<16} {n:>4} {f'path {len(senders)} senders -> k':<22} {t_tl:>8.3f} {t_ours:>8.3f} "
        f"{t_tl / t_ours:>7.1f}x {delta:>9.1e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m interptest.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--components", default="resid_pre,resid_mid,attn_out,mlp_out,heads")
    ap.add_argument("--lengths", default="16,64")
    ap.add_argument("--threads", default=None,
                    help="comma-separated torch intra-op thread counts to compare (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="resid_pre only, 16 tokens, one repeat")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-tiny", action="store_true")
    ap.add_argument("--circuits", action="store_true",
                    help="instead of the node sweeps: a 200-set negative control and a path-patching sender sweep")
    args = ap.parse_args(argv)

    import torch

    comps = [c.strip() for c in args.components.split(",") if c.strip()]
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    repeats = args.repeats
    if args.quick:
        comps, lengths, repeats = (["resid_pre"] if args.components == ap.get_default("components") else comps,
                                   [16] if args.lengths == ap.get_default("lengths") else lengths, 1)
    from interptest.patching import COMPONENTS
    bad = [c for c in comps if c not in COMPONENTS]
    if bad:
        print(f"unknown component(s) {bad}; valid: {', '.join(COMPONENTS)}", file=sys.stderr)
        return 2
    threads = [int(x) for x in args.threads.split(",")] if args.threads else [torch.get_num_threads()]

    tmp = tempfile.mkdtemp(prefix="interptest-bench-")
    try:
        t0 = time.perf_counter()
        models = [("gpt2-small-arch", _build_gpt2_small(tmp))]
        print(f"# built gpt2-small architecture (random weights) in {time.perf_counter() - t0:.1f}s")
        if not args.no_tiny:
            tiny, msg = _load_tiny()
            if tiny is None:
                print(f"# {msg}")
            else:
                models.append(("interptest-tiny", tiny))
        hdr = (f"{'model':<16} {'tok':>4} {'component':<10} {'TL s':>8} {'ours s':>8} {'ratio':>8} "
               f"{'max|Δ|':>9} {'Δm':>7} {'TL units':>9} {'floor':>8} {'TL/fl':>7} {'vs floor':>7}")
        if args.circuits:
            print(f"{'model':<16} {'tok':>4} {'case':<22} {'TL s':>8} {'ours s':>8} {'ratio':>8} {'max|Δ|':>9}")
            for name, model in models:
                for n in ([16] if args.lengths == ap.get_default("lengths") else lengths):
                    run_circuit_cases(model, name, n)
                    sys.stdout.flush()
            return 0
        for nt in threads:
            torch.set_num_threads(nt)
            print(f"\n## torch threads = {nt}")
            print(hdr)
            for name, model in models:
                for n in lengths:
                    run_case(model, name, n, comps, repeats)
                    sys.stdout.flush()
        print("\nΔm = m_clean - m_corrupt, the normalizer: float32 rounding of the logits (~1e-6) is divided by it, so max|Δ| grows on random-token prompts whose corruption barely matters.  units = layer-token units (one layer on one token; unembedding of one token = d_vocab*d_model/"
              "per-layer flops).  'vs floor' = our time / (time TL would need for the floor's units at TL's "
              "units/s); < 1 means faster than the exact floor at TL's efficiency (only 2 logits are computed).")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
