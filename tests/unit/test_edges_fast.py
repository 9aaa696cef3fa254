"""The fast edge forward (:mod:`interptest.patching.fast.edges`) equals the edge engine's hook forward and the
one-forward-at-a-time reference of ``test_edges.py`` (max |Δ| <= 1e-5) on random GPT-2, Llama with
grouped-query attention and NeoX (parallel attention/MLP) models, for every ablation, on the empty, the full
and random edge sets, two samples stacked per forward; its per-head projection slices equal the whole
projection applied per head (the path a model with q/k norms takes, also run here on Qwen3); and a model the
fast engine does not cover (Phi-3), or one whose check fails, gives the hook forward's values."""

from __future__ import annotations

import os
import random
import sys

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, os.path.dirname(__file__))

import pytest
import torch
from test_claims_path import inputs, model_for  # noqa: E402
from test_edges import ablated_values, random_edge_sets, reference_metric  # noqa: E402  (the reference)

import archmodels  # noqa: E402
from interptest.errors import InterpError
from interptest.patching.edges import EdgePatcher, edge_engine_used, edge_patcher
from interptest.patching.fast.edges import FastEdges, choose_engine
from interptest.patching.paths import CircuitPatcher
from interptest.results import engine_text

TOL = 1e-5
ARCHS = ("gpt2", "llama-gqa", "neox")


def engines(model, data, batch_size=40):
    """Two edge engines over the same prompts: the auto one (fast where covered) and the hook forward."""
    clean, corrupt, expect, foil, reference = data
    out = []
    for choice in ("auto", "hooks"):
        patcher = CircuitPatcher(model, clean, corrupt, expect, foil, reference_ids=reference, batch_size=batch_size)
        edges = EdgePatcher(patcher)
        choose_engine(edges, choice)
        out.append(edges)
    return out


def edge_sets(every):
    return [[], every, *random_edge_sets(every, 3, seed=5), every[1:], random.Random(1).sample(every, 3)]


@pytest.fixture(scope="module", params=ARCHS)
def setup(request):
    model = model_for(request.param)
    data = inputs(model)
    fast, hooks = engines(model, data)
    return model, data, fast, hooks


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_fast_equals_hooks_and_reference(setup, ablation):
    model, (clean, corrupt, expect, foil, reference), fast, hooks = setup
    every = fast.edges()
    sets = edge_sets(every)
    got = fast.metrics(sets, ablation)
    want = hooks.metrics(sets, ablation)
    assert fast.engine == "fast" and hooks.engine == "hooks"
    # every layer's projections as per-head slices (checked against the layer's own q/k/v function)
    assert fast._memo[("fast-edges",)].per_head_layers == model.cfg.n_layers
    assert got.shape == want.shape == (clean.shape[0], len(sets))
    assert (got - want).abs().max() <= TOL
    worst = 0.0
    for s in range(clean.shape[0]):
        abl = ablated_values(model, ablation, s, clean, corrupt, reference)
        for j in (0, 1, 2):  # no edge, every edge, a random fifth of them
            ref = reference_metric(model, clean[s : s + 1], int(expect[s]), int(foil[s]), sets[j], abl)
            worst = max(worst, abs(ref - float(got[s, j])))
    assert worst <= TOL, worst


def test_units_stacked_or_alone(setup):
    """One unit per forward (batch_size 1) gives what many stacked units give."""
    model, data, fast, _ = setup
    one, _ = engines(model, data, batch_size=1)
    sets = edge_sets(fast.edges())
    assert (one.metrics(sets, "mean") - fast.metrics(sets, "mean")).abs().max() <= TOL
    assert one.engine == "fast"


def test_whole_projection_per_head_equals_slices(setup):
    """The fallback for q/k/v functions that are not one linear map (a q/k norm): every per-head input through
    the whole projection, each head's own output kept."""
    model, data, fast, _ = setup
    sets = edge_sets(fast.edges())
    want = fast.metrics(sets, "resample")
    other, _ = engines(model, data)
    other.metrics([[]], "resample")
    engine = other._memo[("fast-edges",)]
    engine.heads = [None] * len(engine.heads)
    assert (other.metrics(sets, "resample") - want).abs().max() <= TOL


@pytest.mark.parametrize("name", ["qwen3", "phi3"])
def test_qk_norms_and_a_model_the_fast_engine_does_not_cover(name):
    """Qwen3 (q/k norms: no per-head slices) runs fast; Phi-3 (not covered) runs the hook forward; both equal it."""
    model = archmodels.model(name)
    fast, hooks = engines(model, inputs(model))
    sets = edge_sets(fast.edges())
    for ablation in ("resample", "zero"):
        assert (fast.metrics(sets, ablation) - hooks.metrics(sets, ablation)).abs().max() <= TOL
    if name == "qwen3":
        assert fast.engine == "fast" and fast._memo[("fast-edges",)].per_head_layers == 0
    else:
        assert fast.engine == "hooks"
        assert "not covered by the fast engine" in fast._memo[("fast-edges-why",)]
        with pytest.raises(InterpError, match="fast edge engine unavailable: architecture Phi3ForCausalLM"):
            choose_engine(fast, "fast")
            fast.metrics(sets, "resample")


def test_a_failed_self_check_falls_back(monkeypatch):
    """A forward that misreads the model (here: a perturbed unembedding row) fails the all-edges check and the
    hook forward runs instead."""
    model = model_for("gpt2")
    data = inputs(model)
    fast, hooks = engines(model, data)
    original = FastEdges.__init__

    def broken(self, edges):
        original(self, edges)
        # (not a constant shift: a LayerNorm's output sums to zero, so that would change no metric)
        g = torch.Generator().manual_seed(0)
        self.w2 = self.w2 + 0.5 * torch.randn(self.w2.shape[1:], generator=g, dtype=self.w2.dtype)

    monkeypatch.setattr(FastEdges, "__init__", broken)
    sets = edge_sets(fast.edges())
    assert (fast.metrics(sets, "mean") - hooks.metrics(sets, "mean")).abs().max() == 0
    assert fast.engine == "hooks"
    assert fast._memo[("fast-edges-why",)].startswith("self-check failed: every edge present gives |Δm| =")
    # what results.json and the report say
    assert fast.engine_used().startswith("hooks (self-check failed: every edge present gives |Δm| =")
    assert hooks.engine_used() == "hooks (engine='hooks' requested)"
    assert engine_text({"engine": {"circuits": "fast", "edges": fast.engine_used()}}).startswith(
        "path/circuit: fast; edges: hooks (self-check failed"
    )


def test_results_name_the_edge_forward():
    model = model_for("gpt2")
    clean, corrupt, expect, foil, reference = inputs(model)
    patcher = CircuitPatcher(model, clean, corrupt, expect, foil, reference_ids=reference)
    assert edge_engine_used(patcher) is None  # no edge set ran
    edges = edge_patcher(patcher)
    assert edges.engine_used() is None
    edges.faithfulness([edges.edges()[:3]], "resample")
    assert edge_engine_used(patcher) == "fast"


def test_unknown_engine_choice():
    model = model_for("gpt2")
    fast, _ = engines(model, inputs(model))
    with pytest.raises(InterpError, match="unknown edge engine 'quick'; valid: auto, fast, hooks"):
        choose_engine(fast, "quick")
