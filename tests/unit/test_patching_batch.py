"""BatchPatcher: S prompt pairs patched together equal S single-pair Patchers (and TransformerLens)."""

from __future__ import annotations

import functools
import math
import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import pytest  # noqa: E402
import torch  # noqa: E402

import tinymodels  # noqa: E402
from interptest.errors import InterpError  # noqa: E402
from interptest.patching import COMPONENTS, BatchPatcher, Patcher  # noqa: E402

MODELS = tinymodels.ARCHS + ("interptest-tiny",)
TOL = 1e-5
# Bound on |raw patched logit difference - Patcher's| per model.  A forward of ONE row rounds
# differently from a forward of >= 2 rows (another BLAS kernel; rows of a >= 2-row batch do not
# influence each other).  Patcher computes its metrics and source caches with one-row forwards,
# BatchPatcher with S-row ones, so the two differ by float32 rounding.  Measured with these seeds/prompts:
# 7.6e-6 (interptest-tiny), 6.4e-6 (llama), 1.7e-6 (gpt2), 0 (neox).  interptest-tiny has large activations
# (trained weights, logit differences ~40): on random-token prompts its discrepancy reached 2.8e-5, hence
# the headroom.
# llama: 2 * TOL since transformers 4.57's Llama rounds up to 1.14e-5 from the fast engine on logit differences
# of about 5 (2e-6 relative; measured on TransformerLens 3.2.1; TOL holds under transformers 5.x)
RAW_TOL = {"gpt2": TOL, "llama": 2 * TOL, "neox": TOL, "interptest-tiny": 2 * TOL}
WELL_CONDITIONED = 0.5  # |m_clean - m_corrupt| below this: normalized values amplify rounding


@functools.cache
def get_model(name):
    if name == "interptest-tiny":
        import interptest

        return interptest.load_model("interptest-tiny")
    return tinymodels.tiny_model(name)


def components(model):
    return [
        c for c in COMPONENTS if ("blocks.0.attn.hook_z" if c == "heads" else f"blocks.0.hook_{c}") in model.hook_dict
    ]


def random_pairs(model, S, n, seed, diffs=(1, 2)):
    """S equal-length clean/corrupted pairs with 1-2 differing tokens each (after BOS)."""
    g = torch.Generator().manual_seed(seed)
    vocab = int(model.cfg.d_vocab)
    clean = torch.randint(1, vocab, (S, n), generator=g)
    first = 0
    if model.cfg.default_prepend_bos:
        clean[:, 0] = int(model.tokenizer.bos_token_id)
        first = 1
    corrupt = clean.clone()
    for s in range(S):
        k = diffs[s % len(diffs)]
        for p in (first + torch.randperm(n - first, generator=g)[:k]).tolist():
            tok = int(clean[s, p])
            while tok == int(clean[s, p]):
                tok = int(torch.randint(1, vocab, (1,), generator=g))
            corrupt[s, p] = tok
    assert bool((clean != corrupt).any(1).all())
    ids = torch.stack([torch.randperm(vocab, generator=g)[:2] for _ in range(S)])
    return clean, corrupt, ids[:, 0].tolist(), ids[:, 1].tolist()


def top_ids(clean_logits, corrupt_logits):
    """expect = the clean run's top-1, foil = the corrupted run's top-1 among the others: a logit
    difference that the corruption moves a lot (random ids on random prompts often barely move)."""
    e = clean_logits.argmax(-1)
    masked = corrupt_logits.clone()
    masked[torch.arange(len(e)), e] = -torch.inf
    return e.tolist(), masked.argmax(-1).tolist()


TINY_FAMILY = [  # interptest-tiny is trained: random tokens barely move its logit differences
    ("Her name was Alex Hart. When Alex", "Her name was Alex Cole. When Alex"),
    ("Her name was Mary Park. When Mary", "Her name was Mary Lee. When Mary"),
    ("Her name was John Smith. When John", "Her name was John Smith. When Sam"),
]


def family(model, S, n, seed, text=False, **kw):
    """random_pairs (TINY_FAMILY's text prompts if ``text``) with expect/foil chosen by top_ids."""
    if text:
        clean = torch.cat([model.to_tokens(c) for c, _ in TINY_FAMILY[:S]])
        corrupt = torch.cat([model.to_tokens(x) for _, x in TINY_FAMILY[:S]])
        e, f = [0] * S, [1] * S
    else:
        clean, corrupt, e, f = random_pairs(model, S, n, seed, **kw)
    probe = BatchPatcher(model, clean, corrupt, e, f)
    return (clean, corrupt) + top_ids(probe.clean_logits, probe.corrupt_logits)


def close_norm(a, b, dm, raw_tol=TOL):
    """Normalized values of one well-conditioned sample agree.

    v = (m - m_x) / (m_c - m_x): rounding δ (<= raw_tol) in m, m_x and m_c moves v by up to
    (2 + 2|v|) δ / |Δm|; held to TOL where that is smaller."""
    assert abs(dm) >= WELL_CONDITIONED
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    bound = torch.clamp(raw_tol * (2 + 2 * b.abs()) / abs(dm), min=TOL)
    return bool(((a - b).abs() <= bound).all())


def hooks_left(model):
    return [n for n, h in model.hook_dict.items() if getattr(h, "fwd_hooks", [])]


# ---- equality with Patcher (generic engine), per sample -------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_equals_patcher_per_sample(name):
    model = get_model(name)
    S = 3
    clean, corrupt, e, f = family(model, S, 8, seed=11, text=name == "interptest-tiny")
    bp = BatchPatcher(model, clean, corrupt, e, f)
    rtol = RAW_TOL[name]
    comps = components(model)
    assert bp.n_samples == S and bp.n_positions == clean.shape[1]
    assert bp.clean_logits.shape == (S, model.cfg.d_vocab) and bp.clean_logits.dtype == torch.float32
    conditioned = 0
    for s in range(S):
        p = Patcher(model, clean[s], corrupt[s], e[s], f[s], engine="generic")
        assert int(bp.first_diff[s]) == p.first_diff
        assert abs(float(bp.clean_metrics[s]) - p.clean_metric) <= rtol
        assert abs(float(bp.corrupt_metrics[s]) - p.corrupt_metric) <= rtol
        dm = p.clean_metric - p.corrupt_metric
        good = abs(dm) >= WELL_CONDITIONED
        conditioned += good
        for comp in comps:
            for d in ("denoise", "noise"):
                ref = p.sweep(comp, d)
                raw, val = bp.sweep_raw(comp, d), bp.sweep(comp, d)
                assert raw.shape == (S,) + tuple(ref.raw.shape) and val.dtype == torch.float32
                assert float((raw[s] - ref.raw).abs().max()) <= rtol, (s, comp, d)
                mc, mx = float(bp.clean_metrics[s]), float(bp.corrupt_metrics[s])
                num = raw[s].double() - mx if d == "denoise" else mc - raw[s].double()
                assert torch.equal(val[s], (num / (mc - mx)).float())  # values = normalized raw, per sample
                if good:
                    assert close_norm(val[s], ref.values, dm, rtol), (s, comp, d)
        if not good:
            continue
        for d in ("denoise", "noise"):
            L, n, H = bp.n_layers, bp.n_positions, bp.n_heads
            cells = [(l, q) for l in range(L) for q in (0, n // 2, n - 1)]
            assert close_norm(
                bp.cells_value("resid_post", cells, d)[s], p.cells_value("resid_post", cells, d), dm, rtol
            )
            hcells = [(l, h, q) for l in range(L) for h in range(H) for q in (None, -1, 1)]
            assert close_norm(bp.cells_value("heads", hcells, d)[s], p.cells_value("heads", hcells, d), dm, rtol)
            for comp, cs in (
                ("resid_pre", [(0, q) for q in range(n)]),
                ("attn_out", [(1, n - 1), (0, 2)]),
                ("heads", [(0, 1, None), (L - 1, 0, -1), (1, 2, 3)]),
            ):
                assert close_norm(bp.joint(comp, cs, d)[s], p.joint(comp, cs, d), dm, rtol), (comp, d)
    assert conditioned >= 1  # the normalized comparison ran for at least one sample


# ---- embed_noise: ROME-style causal tracing equals TransformerLens inside a noise hook ------------


def _tl(model, fn, toks, cache, e, f):
    from transformer_lens import patching as tlp

    return getattr(tlp, fn)(model, toks, cache, lambda lg: lg[0, -1, e] - lg[0, -1, f]).float().cpu()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_embed_noise_equals_transformer_lens(arch):
    model = tinymodels.tiny_model(arch)
    S, n, d = 3, 7, int(model.cfg.d_model)
    clean, corrupt, e, f = random_pairs(model, S, n, seed=5)
    corrupt[:2] = clean[:2]  # samples 0, 1: noise only (causal tracing); sample 2: tokens and noise
    g = torch.Generator().manual_seed(1)
    noise = torch.zeros(S, n, d)
    noised = [(2, 4), (3, 4), (5, 6)]  # [start, stop) per sample
    for s, (a, b) in enumerate(noised):
        noise[s, a:b] = 3.0 * torch.randn(b - a, d, generator=g)
    probe = BatchPatcher(model, clean, corrupt, e, f, embed_noise=noise)
    e, f = top_ids(probe.clean_logits, probe.corrupt_logits)
    bp = BatchPatcher(model, clean, corrupt, e, f, embed_noise=noise, batch_size=10)
    first_tok = int((clean[2] != corrupt[2]).nonzero()[0, 0])
    assert bp.first_diff.tolist() == [2, 3, min(5, first_tok)]

    conditioned = 0
    fns = {
        "resid_pre": "get_act_patch_resid_pre",
        "attn_out": "get_act_patch_attn_out",
        "heads": "get_act_patch_attn_head_out_all_pos",
    }
    for s in range(S):

        def add_noise(act, hook=None, s=s):
            return act + noise[s].to(act.dtype)

        with torch.inference_mode():
            _, clean_cache = model.run_with_cache(clean[s : s + 1])
            mc = float(model(clean[s : s + 1])[0, -1, e[s]] - model(clean[s : s + 1])[0, -1, f[s]])
            with model.hooks(fwd_hooks=[("hook_embed", add_noise)]):
                lg = model(corrupt[s : s + 1])
                mx = float(lg[0, -1, e[s]] - lg[0, -1, f[s]])
                denoise = {c: _tl(model, fn, corrupt[s : s + 1], clean_cache, e[s], f[s]) for c, fn in fns.items()}
                # last in the context: TransformerLens 3.0-3.8's run_with_cache removes the context's hooks
                # when it returns, so the sweeps above would otherwise run without the noise
                _, noisy_cache = model.run_with_cache(corrupt[s : s + 1])
            # noise direction: the clean run (no noise) with the noised corrupted activations
            noise_dir = {c: _tl(model, fn, clean[s : s + 1], noisy_cache, e[s], f[s]) for c, fn in fns.items()}
        assert not hooks_left(model)
        assert abs(float(bp.clean_metrics[s]) - mc) <= TOL and abs(float(bp.corrupt_metrics[s]) - mx) <= TOL
        conditioned += abs(mc - mx) >= WELL_CONDITIONED
        tol = RAW_TOL[arch]
        for d, refs in (("denoise", denoise), ("noise", noise_dir)):
            for comp, raw_ref in refs.items():
                assert float((bp.sweep_raw(comp, d)[s] - raw_ref).abs().max()) <= tol, (s, comp, d)
                val_ref = (raw_ref.double() - mx) / (mc - mx) if d == "denoise" else (mc - raw_ref.double()) / (mc - mx)
                assert float((bp.sweep(comp, d)[s] - val_ref).abs().max()) <= TOL * max(1.0, 0.5 / abs(mc - mx))
    assert conditioned >= 2
    # noise positions count as differences: before them the value is exactly 0
    v = bp.sweep("resid_pre", "denoise")
    for s, fd in enumerate(bp.first_diff.tolist()):
        assert torch.equal(v[s, :, :fd], torch.zeros_like(v[s, :, :fd]))


# ---- invariants -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "neox"])
def test_invariants(arch):
    model = tinymodels.tiny_model(arch)
    S, n = 4, 8
    clean, corrupt, e, f = family(model, S, n, seed=3, diffs=(1,))
    bp = BatchPatcher(model, clean, corrupt, e, f)
    pos = [int((clean[s] != corrupt[s]).nonzero()[0, 0]) for s in range(S)]
    assert bp.first_diff.tolist() == pos
    assert bp.first_diff.dtype in (torch.int64, torch.int32)
    dm = (bp.clean_metrics - bp.corrupt_metrics).abs()
    for d in ("denoise", "noise"):
        for comp in components(model):
            if comp == "heads":
                continue
            v = bp.sweep(comp, d)
            for s in range(S):
                assert torch.equal(v[s, :, : pos[s]], torch.zeros_like(v[s, :, : pos[s]])), (comp, d, s)
        pre = bp.sweep("resid_pre", d)
        whole = bp.joint("resid_pre", [(0, q) for q in range(n)], d)
        for s in range(S):
            tol = TOL * max(1.0, 0.5 / float(dm[s]))
            # the only differing token, patched at the embedding: the run becomes the source run
            assert abs(float(pre[s, 0, pos[s]]) - 1.0) <= tol, (d, s)
            assert abs(float(whole[s]) - 1.0) <= tol
    # memoized, deterministic, and the same whatever the batch size
    assert torch.equal(bp.sweep("resid_pre"), bp.sweep("resid_pre"))
    again = BatchPatcher(model, clean, corrupt, e, f)
    assert torch.equal(again.sweep("heads", "noise"), bp.sweep("heads", "noise"))
    small = BatchPatcher(model, clean, corrupt, e, f, batch_size=3)
    assert float((small.sweep_raw("heads") - bp.sweep_raw("heads")).abs().max()) <= TOL
    assert not hooks_left(model)


def test_undefined_normalization_gives_nan_not_crash():
    model = tinymodels.tiny_model("gpt2")
    clean, corrupt, e, f = random_pairs(model, 2, 6, seed=2)
    corrupt[1] = clean[1]  # sample 1: m_clean == m_corrupt
    bp = BatchPatcher(model, clean, corrupt, e, f)
    assert int(bp.first_diff[1]) == 6
    for comp in ("resid_pre", "heads"):
        v = bp.sweep(comp)
        assert torch.isnan(v[1]).all()
        assert torch.isfinite(v[0]).all()
    assert torch.isnan(bp.joint("resid_pre", [(0, 1)])[1])
    assert torch.isnan(bp.cells_value("heads", [(0, 0, None)], "noise")[1]).all()


# ---- batching ---------------------------------------------------------------------------------


def test_samples_share_forwards():
    """The generic engine: S × cells rows per forward of the bridge."""
    model = tinymodels.tiny_model("gpt2")
    S, n, batch = 8, 8, 16
    clean, corrupt, e, f = random_pairs(model, S, n, seed=7)
    bp = BatchPatcher(model, clean, corrupt, e, f, batch_size=batch, engine="generic")
    L, H = bp.n_layers, bp.n_heads
    sizes: list[int] = []

    def count(act, hook=None):
        sizes.append(int(act.shape[0]))

    with model.hooks(fwd_hooks=[("hook_embed", count)]):
        bp.sweep("resid_pre")
        rows = sum(L * (n - fd) for fd in bp.first_diff.tolist())
        # one source-cache forward (8 clean rows) + ceil(rows / batch) patched forwards
        assert len(sizes) == 1 + math.ceil(rows / batch)
        assert sum(sizes) == S + rows and max(sizes) <= batch
        assert len(sizes) < S * L * (n - 1) / 4  # vs one forward per (sample, cell)
        sizes.clear()
        bp.sweep("resid_pre")  # memoized
        assert sizes == []
        bp.sweep("heads", "noise")  # corrupted source cache + S * L * H rows
        assert len(sizes) == 1 + math.ceil(S * L * H / batch)
        sizes.clear()
        bp.joint("mlp_out", [(0, -1), (1, -1)])  # one row per sample
        assert len(sizes) == 1 + math.ceil(S / batch)
    assert not hooks_left(model)


def test_fast_engine_stacks_samples_and_cells(monkeypatch):
    """The fast engine: rows of every sample in each chunk, at most batch_size rows, one chunk per
    (first layer, batch_size rows); no forward of the bridge at all after construction."""
    from interptest.patching.fast import FastEngine

    model = tinymodels.tiny_model("gpt2")
    S, n, batch = 8, 8, 16
    clean, corrupt, e, f = random_pairs(model, S, n, seed=7)
    bp = BatchPatcher(model, clean, corrupt, e, f, batch_size=batch)
    assert bp.engine == "fast", bp.engine_note
    L, H = bp.n_layers, bp.n_heads
    chunks: list[tuple[int, list[int]]] = []
    inner = FastEngine._run_chunk

    def spy(self, component, l0, smp, *args):
        chunks.append((l0, list(smp)))
        return inner(self, component, l0, smp, *args)

    monkeypatch.setattr(FastEngine, "_run_chunk", spy)
    bridge: list[int] = []
    with model.hooks(fwd_hooks=[("hook_embed", lambda act, hook=None: bridge.append(1))]):
        bp.sweep("heads")
        assert len(chunks) == L * math.ceil(S * H / batch)
        assert all(len(smp) <= batch for _, smp in chunks)
        assert any(len(set(smp)) > 1 for _, smp in chunks)  # samples share a forward
        chunks.clear()
        bp.sweep("resid_pre", "noise")
        rows = [sum(1 for fd in bp.first_diff.tolist() for _ in range(fd, n))] * L
        assert len(chunks) == sum(math.ceil(r / batch) for r in rows)
        chunks.clear()
        bp.joint("mlp_out", [(0, -1), (1, -1)])  # one row per sample, all in one chunk
        assert [sorted(smp) for _, smp in chunks] == [list(range(S))]
    assert bridge == []


# ---- errors -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2():
    return tinymodels.tiny_model("gpt2")


def _pairs(model, S=2, n=5):
    return random_pairs(model, S, n, seed=1)


def test_error_messages(gpt2):
    clean, corrupt, e, f = _pairs(gpt2)
    with pytest.raises(InterpError) as ei:
        BatchPatcher(gpt2, clean, corrupt[:, :4], e, f)
    msg = str(ei.value)
    assert "same number of tokens, got 5 vs 4" in msg
    assert str(gpt2.to_str_tokens(clean[0])) in msg and str(gpt2.to_str_tokens(corrupt[0, :4])) in msg
    with pytest.raises(InterpError, match=r"same number of samples, got 2 vs 1"):
        BatchPatcher(gpt2, clean, corrupt[:1], e, f)
    with pytest.raises(InterpError, match=r"expect_ids has 1 entries but there are 2 samples"):
        BatchPatcher(gpt2, clean, corrupt, e[:1], f)
    with pytest.raises(InterpError, match=r"foil_ids has 3 entries but there are 2 samples"):
        BatchPatcher(gpt2, clean, corrupt, e, f + [1])
    with pytest.raises(InterpError, match=r"sample 1: expect and foil are the same token \(id 7"):
        BatchPatcher(gpt2, clean, corrupt, [e[0], 7], [f[0], 7])
    with pytest.raises(InterpError, match=r"sample 0: foil token id 300 is outside the vocabulary \(0\.\.299\)"):
        BatchPatcher(gpt2, clean, corrupt, e, [300, f[1]])
    with pytest.raises(InterpError, match=r"clean tokens must be a non-empty 2-D integer tensor .* \(2, 5, 1\)"):
        BatchPatcher(gpt2, clean[..., None], corrupt, e, f)
    with pytest.raises(InterpError, match=r"corrupted tokens must be .*integer"):
        BatchPatcher(gpt2, clean, corrupt.float(), e, f)
    with pytest.raises(
        InterpError,
        match=r"embed_noise must have shape \[n_samples, n_tokens, d_model\] = "
        r"\[2, 5, 32\], got \(2, 5, 16\)",
    ):
        BatchPatcher(gpt2, clean, corrupt, e, f, embed_noise=torch.zeros(2, 5, 16))
    with pytest.raises(InterpError, match=r"embed_noise must be a floating-point tensor"):
        BatchPatcher(gpt2, clean, corrupt, e, f, embed_noise=torch.zeros(2, 5, 32, dtype=torch.long))
    bp = BatchPatcher(gpt2, clean, corrupt, e, f)
    with pytest.raises(
        InterpError,
        match=r"unknown component 'resid'.*resid_pre, resid_mid, resid_post, "
        r"attn_out, mlp_out, heads",
    ):
        bp.sweep("resid")
    with pytest.raises(InterpError, match=r"unknown direction 'recover'.*denoise, noise"):
        bp.sweep("resid_pre", "recover")
    with pytest.raises(InterpError, match=r"unknown direction 'recover'"):
        bp.cells_value("resid_pre", [(0, 1)], "recover")
    with pytest.raises(InterpError, match=r"resid_pre cell \(9, 0\): layer 9 out of range \(0\.\.2\)"):
        bp.cells_value("resid_pre", [(9, 0)])
    with pytest.raises(InterpError, match=r"heads cell \(0,\) must be \(layer, head, position_or_None\)"):
        bp.joint("heads", [(0,)])
    with pytest.raises(InterpError, match=r"joint patch of 'mlp_out' needs at least one cell"):
        bp.joint("mlp_out", [])
    assert bp.cells_value("mlp_out", []).shape == (2, 0)
    assert not hooks_left(gpt2)


def test_component_missing_on_parallel_model():
    neox = tinymodels.tiny_model("neox")
    clean, corrupt, e, f = _pairs(neox)
    bp = BatchPatcher(neox, clean, corrupt, e, f)
    with pytest.raises(
        InterpError,
        match=r"'resid_mid' is not available on model .*parallel.*available: "
        r"resid_pre, resid_post, attn_out, mlp_out, heads",
    ):
        bp.sweep("resid_mid")


def test_training_mode_refused(gpt2):
    clean, corrupt, e, f = _pairs(gpt2)
    gpt2.train()
    try:
        with pytest.raises(InterpError, match="eval mode"):
            BatchPatcher(gpt2, clean, corrupt, e, f)
    finally:
        gpt2.eval()
