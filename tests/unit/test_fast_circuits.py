"""Circuit node sets on the fast engine (issue 23): :meth:`CircuitPatcher.patch_sets` of head and MLP
nodes runs on :class:`interptest.patching.fast.FastEngine` where it covers the model, and equals both the
hook engine (``engine='hooks'``) and the one-forward-at-a-time reference of tests/unit/test_claims_path.py
(max |Δ| <= 1e-5) on random GPT-2, Llama (grouped-query) and NeoX (parallel and sequential) models, under
every ablation, for empty, full and random kept sets, positioned regions, a family (S > 1), sets whose first
ablated layer is the last (the layer skip) and prompts whose corrupted tokens differ late (the position
skip). Where the fast engine declines, the hook engine runs and says why."""

from __future__ import annotations

import os
import random
import sys

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, os.path.dirname(__file__))

import pytest
import torch
from test_claims_path import inputs, metric, model_for, node_names, ref_ablated, source_values

import tinymodels
from interptest.errors import InterpError
from interptest.patching import fast as _fast
from interptest.patching.paths import CircuitPatcher

TOL = 1e-5
_SEQ: dict = {}


def _model(arch):
    if arch != "neox-sequential":
        return model_for(arch)
    if "m" not in _SEQ:
        import transformers as tf

        vocab = len(tf.PreTrainedTokenizerFast.from_pretrained(tinymodels._tokenizer_dir()))
        cfg = tinymodels._hf_config("neox", vocab, n_layers=3, d_model=32, n_heads=4)
        cfg.use_parallel_residual = False
        _SEQ["m"] = tinymodels.boot(tinymodels.build_model_dir("neox", hf_config=cfg, seed=2))
    return _SEQ["m"]


def _kept_sets(L, H, seed=0):
    rng = random.Random(seed)
    every = [("heads", (l, h, None)) for l in range(L) for h in range(H)]
    mlps = [("mlp_out", (l, None)) for l in range(L)]
    sets = [[], every + mlps, every, mlps]
    for _ in range(3):  # random compositions, MLPs kept or not
        sets.append(rng.sample(every, rng.randint(1, len(every) - 1)) + rng.sample(mlps, rng.randint(0, L)))
    late = [c for c in every if c[1][0] < L - 1] + mlps  # only the last layer's heads ablated: the layer skip
    return sets + [late]


def _chunks(monkeypatch):
    """Records (l0, p0 of each row, rows) of every node-row chunk the fast engine runs."""
    seen = []
    original = _fast.FastEngine._run_node_chunk

    def spy(self, run, l0, smp, p0, *rest):
        seen.append((l0, p0.tolist(), len(smp)))
        return original(self, run, l0, smp, p0, *rest)

    monkeypatch.setattr(_fast.FastEngine, "_run_node_chunk", spy)
    return seen


@pytest.mark.parametrize("arch", ["gpt2", "llama-gqa", "neox", "neox-sequential"])
def test_node_sets_on_the_fast_engine_equal_the_hook_engine_and_the_one_forward_reference(arch):
    model = _model(arch)
    clean, corrupt, expect, foil, reference = inputs(model, S=3)  # a family of three
    L, H = model.cfg.n_layers, model.cfg.n_heads
    fast = CircuitPatcher(model, clean, corrupt, expect, foil, reference_ids=reference)
    hooks = CircuitPatcher(model, clean, corrupt, expect, foil, reference_ids=reference, engine="hooks")
    kept_sets = _kept_sets(L, H)
    regions = [[("heads", (0, 2, 4)), ("mlp_out", (L - 1, 6)), ("heads", (L - 1, 0, None))], [("mlp_out", (1, 3))]]
    names = node_names(model)
    for ablation in ("resample", "mean", "zero"):
        ours = fast.patch_sets(kept_sets, "clean", ablation, complement=True)
        theirs = hooks.patch_sets(kept_sets, "clean", ablation, complement=True)
        assert (ours - theirs).abs().max() <= TOL, ablation
        f_ours, f_theirs = fast.faithfulness(kept_sets, ablation), hooks.faithfulness(kept_sets, ablation)
        den = (fast.metrics("clean") - fast.all_ablated(ablation)).abs().min()
        assert (f_ours - f_theirs).abs().max() <= 2 * TOL * (1 + f_theirs.abs().max()) / den, ablation
        assert torch.equal(ours[:, 1], fast.metrics("clean"))  # nothing ablated: the clean run itself
        region_ours = fast.patch_sets(regions, "clean", ablation)
        assert (region_ours - hooks.patch_sets(regions, "clean", ablation)).abs().max() <= TOL
        for s in range(clean.shape[0]):
            e, f = int(expect[s]), int(foil[s])
            values = source_values(model, ablation, s, clean, corrupt, reference, names)
            for k in (0, 4, len(kept_sets) - 1):
                m = ref_ablated(model, clean[s : s + 1], values, kept_sets[k], e, f, complement=True)
                assert abs(float(ours[s, k]) - m) <= TOL * max(1.0, abs(m) / 10), (ablation, s, k)
            m = ref_ablated(model, clean[s : s + 1], values, regions[0], e, f)
            assert abs(float(region_ours[s, 0]) - m) <= TOL * max(1.0, abs(m) / 10), (ablation, s)
    # the denoising direction of a localization control: the corrupted run with a set's nodes clean
    sets = [[("heads", (l, h, None)) for l, h in [(0, 1), (L - 1, 2)]], [("mlp_out", (0, None))]]
    ours = fast.patch_sets(sets, "corrupt", "clean")
    assert (ours - hooks.patch_sets(sets, "corrupt", "clean")).abs().max() <= TOL
    for s in range(clean.shape[0]):
        values = source_values(model, "clean", s, clean, corrupt, reference, names)
        m = ref_ablated(model, corrupt[s : s + 1], values, sets[0], int(expect[s]), int(foil[s]))
        assert abs(float(ours[s, 0]) - m) <= TOL * max(1.0, abs(m) / 10)
    assert fast.engine_used() == "fast" and hooks.engine_used() == "hooks"


def test_rows_start_at_the_first_layer_and_position_where_a_write_differs(monkeypatch):
    model = _model("gpt2")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    clean, corrupt, expect, foil, reference = inputs(model, S=2)
    n = clean.shape[1]
    late = clean.clone()
    late[:, n - 2] = corrupt[:, 2]  # the corrupted tokens differ at the second-to-last position only
    late[:, n - 2] = torch.where(late[:, n - 2] == clean[:, n - 2], late[:, n - 2] % 50 + 1, late[:, n - 2])
    fast = CircuitPatcher(model, clean, late, expect, foil)
    hooks = CircuitPatcher(model, clean, late, expect, foil, engine="hooks")
    seen = _chunks(monkeypatch)
    sets = _kept_sets(L, H, seed=1)
    ours = fast.patch_sets(sets, "clean", "resample", complement=True)
    assert (ours - hooks.patch_sets(sets, "clean", "resample", complement=True)).abs().max() <= TOL
    # the position skip: every row starts at the corrupted position (the last one where only the last
    # layer, read at the last position alone, is ablated)
    assert seen and all(p == (n - 1 if l0 == L - 1 else n - 2) for l0, p0, _ in seen for p in p0)
    assert any(l0 < L - 1 for l0, _, _ in seen)
    names = node_names(model)
    for s in range(2):
        values = source_values(model, "resample", s, clean, late, None, names)
        for k in (0, len(sets) - 1):
            m = ref_ablated(model, clean[s : s + 1], values, sets[k], int(expect[s]), int(foil[s]), complement=True)
            assert abs(float(ours[s, k]) - m) <= TOL * max(1.0, abs(m) / 10)
    # only the last layer's heads ablated: the row starts at the last layer, at the last position
    seen.clear()
    fast.patch_sets([sets[-1]], "clean", "mean", complement=True)
    assert [(l0, p0) for l0, p0, _ in seen] == [(L - 1, [n - 1, n - 1])]


def test_no_fast_forward_exceeds_the_row_budget_and_the_values_do_not_depend_on_it(monkeypatch):
    model = _model("llama-gqa")
    clean, corrupt, expect, foil, reference = inputs(model, S=3)
    sets = _kept_sets(model.cfg.n_layers, model.cfg.n_heads)
    seen = _chunks(monkeypatch)
    results = []
    for budget in (None, 1, 4):
        engine = CircuitPatcher(model, clean, corrupt, expect, foil, reference_ids=reference, batch_size=budget)
        results.append(engine.patch_sets(sets, "clean", "mean", complement=True))
        assert max(rows for _, _, rows in seen) <= engine.fast_rows_per_batch
        seen.clear()
    for values in results[1:]:
        assert (values - results[0]).abs().max() <= TOL


def test_the_hook_engine_runs_where_the_fast_engine_declines(monkeypatch):
    model = _model("gpt2")
    clean, corrupt, expect, foil, reference = inputs(model)
    sets = _kept_sets(model.cfg.n_layers, model.cfg.n_heads)
    want = CircuitPatcher(model, clean, corrupt, expect, foil, engine="hooks").faithfulness(sets, "resample")

    def refuse(self, clean_logits, corrupt_logits):
        raise _fast.Unsupported("self-check failed on the clean run: max |Δlogit| = 1 vs bridge")

    monkeypatch.setattr(_fast.FastEngine, "self_check", refuse)
    engine = CircuitPatcher(model, clean, corrupt, expect, foil)
    assert torch.equal(engine.faithfulness(sets, "resample"), want)
    assert engine.engine_used() == "hooks (self-check failed on the clean run: max |Δlogit| = 1 vs bridge)"
    forced = CircuitPatcher(model, clean, corrupt, expect, foil, engine="fast")
    with pytest.raises(InterpError, match="fast circuit engine unavailable: self-check failed"):
        forced.faithfulness(sets, "resample")
    with pytest.raises(InterpError, match="unknown circuit engine 'quick'; valid: auto, hooks, fast"):
        CircuitPatcher(model, clean, corrupt, expect, foil, engine="quick")


def test_other_components_and_mixed_path_receivers_run_on_hooks_and_say_so():
    model = _model("gpt2")
    clean, corrupt, expect, foil, reference = inputs(model)
    engine = CircuitPatcher(model, clean, corrupt, expect, foil)
    engine.faithfulness([[("heads", (0, 1, None))]], "zero")
    assert engine.engine_used() == "fast"
    engine.path([[("heads", (0, 2, None))]], [[("logits", None)]], "corrupt", "clean")
    assert engine.engine_used() == "fast"
    # one receiver set of two kinds (the grammar's `heads[1.0].k + mlp_in[1]`): the hook engine's fused forward
    engine.path([[("heads", (0, 2, None))]], [[("k", 1, 0, None), ("mlp_in", 1, None)]], "corrupt", "clean")
    assert engine.engine_used() == "fast + hooks (paths)"
    engine.patch_sets([[("resid_pre", (1, 3))]], "clean", "zero")
    assert engine.engine_used() == "fast + hooks"
    mc = metric(model, clean[:1], int(expect[0]), int(foil[0]))
    assert abs(float(engine.metrics("clean")[0]) - mc) <= TOL


def _path_cases(L, H):
    """Sender sets (heads, MLPs, positioned cells, a sender after every receiver, none) and receiver sets of
    one kind and layer each: every layer, several heads, positions, the last layer, an empty set's twin."""
    senders = [
        [("heads", (0, 1, None))],
        [("heads", (0, 0, None)), ("mlp_out", (0, None))],
        [("heads", (0, 2, 3)), ("heads", (1 % L, 3 % H, None)), ("mlp_out", (1 % L, 5))],
        [("heads", (L - 1, 1, None))],  # reaches only the logits and the last layer's MLP
        [],
    ]
    receivers = []
    for layer in range(1, L):
        receivers += [
            [("q", layer, 0, None)],
            [("k", layer, 1, None), ("k", layer, H - 1, 6)],  # grouped-query: maybe one key/value head, twice
            [("v", layer, 2, 4)],
            [("q", layer, 1, 7), ("q", layer, 3, None)],
            [("mlp_in", layer, None)],
            [("mlp_in", layer, 5)],
        ]
    receivers += [[("mlp_in", 0, None)], [("logits", None)], [("logits", 3)]]  # logits at 3: not read
    return senders, receivers


@pytest.mark.parametrize("arch", ["gpt2", "llama-gqa", "neox", "neox-sequential"])
def test_paths_on_the_fast_engine_equal_the_hook_engine(arch):
    """Every receiver kind at every layer, positioned and grouped, from every kind of sender set, under each
    source, on a family of three; the one-forward reference is test_claims_path's (checked there on the fast
    engine too)."""
    model = _model(arch)
    clean, corrupt, expect, foil, reference = inputs(model, S=3)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    fast = CircuitPatcher(model, clean, corrupt, expect, foil, reference_ids=reference)
    hooks = CircuitPatcher(model, clean, corrupt, expect, foil, reference_ids=reference, engine="hooks")
    senders, receivers = _path_cases(L, H)
    for base, source in [("corrupt", "clean"), ("clean", "resample"), ("clean", "mean"), ("clean", "zero")]:
        ours = fast.path(senders, receivers, base, source)
        want = hooks.path(senders, receivers, base, source)
        assert ours.shape == want.shape == (3, len(senders), len(receivers))
        worst = float((ours - want).abs().max())
        assert worst <= TOL, (base, source, worst)
        # the empty sender set and the unread receiver (logits at position 3) are the base run, exactly
        assert torch.equal(ours[:, -1, -1], hooks.metrics(base))
    assert fast.engine_used() == "fast"
    assert hooks.engine_used() == "hooks"


def test_paths_into_query_and_key_norms_run_on_hooks():
    """Qwen3 / Gemma 3 normalize queries and keys inside the projection; the bridge's hook_q/hook_k may sit on
    either side of that norm, so those receivers take the hook engine (values and mlp inputs stay fast)."""
    model = _model("gpt2")
    clean, corrupt, expect, foil, reference = inputs(model)
    engine = CircuitPatcher(model, clean, corrupt, expect, foil)
    fast = engine._fast_engine()
    assert fast is not None
    for layer in fast.layers:
        layer.qk_norm = True
    try:
        engine.path([[("heads", (0, 2, None))]], [[("v", 1, 0, None)]], "corrupt", "clean")
        assert engine.engine_used() == "fast"
        got = engine.path([[("heads", (0, 2, None))]], [[("k", 1, 0, None)]], "corrupt", "clean")
        assert engine.engine_used() == "fast + hooks (paths)"
    finally:
        for layer in fast.layers:
            layer.qk_norm = False
    want = CircuitPatcher(model, clean, corrupt, expect, foil, engine="hooks").path(
        [[("heads", (0, 2, None))]], [[("k", 1, 0, None)]], "corrupt", "clean"
    )
    assert float((got - want).abs().max()) <= TOL


@pytest.mark.parametrize("arch", ["gpt2", "llama-gqa", "neox"])
def test_attention_of_the_needed_heads_only_equals_the_whole_attention(arch, monkeypatch):
    """Where a node row replaces most heads' outputs, only the heads it keeps are computed (their own q/k/v
    projections, per key/value group): the same values as the whole attention (PER_HEAD_BYTES = 0 turns it
    off), on rotary, grouped-query and parallel models, in middle and last layers."""
    model = _model(arch)
    clean, corrupt, expect, foil, reference = inputs(model, S=2)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    rng = random.Random(3)
    every = [("heads", (l, h, None)) for l in range(L) for h in range(H)]
    mlps = [("mlp_out", (l, None)) for l in range(L)]
    sets = [rng.sample(every, 2) + mlps for _ in range(6)] + [[("heads", (L - 1, 1, None))], every[:1]]
    calls = []
    original = _fast.FastEngine._needed_attention

    def spy(self, li, *args):
        calls.append(li)
        return original(self, li, *args)

    monkeypatch.setattr(_fast.FastEngine, "_needed_attention", spy)
    for ablation in ("resample", "mean"):
        fast = CircuitPatcher(model, clean, corrupt, expect, foil, reference_ids=reference)
        got = fast.faithfulness(sets, ablation)
        assert fast.engine_used() == "fast"
        assert set(calls) == set(range(L)), calls  # every layer, the last one included
        with monkeypatch.context() as m:
            m.setattr(_fast, "PER_HEAD_BYTES", 0)
            calls.clear()
            whole = CircuitPatcher(model, clean, corrupt, expect, foil, reference_ids=reference)
            want = whole.faithfulness(sets, ablation)
            assert not calls
        assert float((got - want).abs().max()) <= TOL
        calls.clear()
