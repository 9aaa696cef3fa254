"""Edge attribution (:mod:`interptest.patching.attribution`), on random GPT-2, grouped-query Llama and NeoX
(parallel) models: the hook forward under a float mask of 0/1 gives the edge engine's metrics (so the
gradients are those of the exact edge ablation); EAP equals a central finite difference of the
faithfulness along each edge's mask; integrated gradients satisfy completeness as the Riemann sum
converges (Σ scores → faithful(all) − faithful(none) = 1); scores are in ``edges()`` order and
deterministic; no gradient accumulates on the model's parameters."""

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

from interptest.patching.attribution import edge_scores, mask_metrics
from interptest.patching.edges import EdgePatcher
from interptest.patching.fast.edges import choose_engine
from interptest.patching.paths import CircuitPatcher

ARCHS = ("gpt2", "llama-gqa", "neox")


@pytest.fixture(scope="module", params=ARCHS)
def setup(request):
    torch.manual_seed(0)
    model = model_for(request.param)
    clean, corrupt, expect, foil, reference = inputs(model)
    patcher = CircuitPatcher(model, clean, corrupt, expect, foil, reference_ids=reference, batch_size=40)
    engine = EdgePatcher(patcher)
    choose_engine(engine, "hooks")
    return model, engine


def _faithful(engine, masks, ablation="resample"):
    raw = mask_metrics(engine, masks, ablation)
    clean = engine.p.metrics("clean")[:, None]
    empty = engine.all_ablated(ablation)[:, None]
    return ((raw - empty) / (clean - empty)).mean(dim=0)


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_float_mask_of_zero_and_one_is_the_edge_ablation(setup, ablation):
    _, engine = setup
    every = engine.edges()
    rng = random.Random(3)
    sets = [[], every, rng.sample(every, len(every) // 3), rng.sample(every, 5)]
    exact = engine.metrics(sets, ablation)
    masks = torch.stack([engine._mask(s).float() for s in sets])
    assert (mask_metrics(engine, masks, ablation) - exact).abs().max() <= 1e-5


def test_eap_is_the_gradient_at_the_full_graph(setup):
    """score(e) = ∂F/∂M_e at M = 1, checked by a central finite difference on a few edges (float32 forward:
    ε = 1e-2, the faithfulness is smooth in M; tolerance measured at ~1e-4 of the largest score)."""
    model, engine = setup
    every = engine.edges()
    scores = edge_scores(engine, steps=1)
    assert scores.shape == (len(every),)
    top = sorted(range(len(every)), key=lambda i: -abs(float(scores[i])))[:3]
    picks = top + random.Random(1).sample(range(len(every)), 3)
    full = torch.ones(engine.n_receivers, engine.n_senders)
    eps = 1e-2
    masks = []
    for i in picks:
        e = engine._mask([every[i]])
        masks += [full + eps * e.float(), full - eps * e.float()]
    values = _faithful(engine, torch.stack(masks))
    scale = float(scores.abs().max())
    for k, i in enumerate(picks):
        fd = float(values[2 * k] - values[2 * k + 1]) / (2 * eps)
        assert abs(fd - float(scores[i])) <= 2e-3 * scale + 1e-5, (every[i].name, fd, float(scores[i]))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("ablation", ["resample", "mean"])
def test_integrated_gradients_complete(setup, ablation):
    """Σ_e IG(e) → F(1) − F(0) = 1 − 0: the right Riemann sum converges at rate 1/steps. Measured Σ − 1 at
    5 / 50 / 200 steps: gpt2 0.451 / 0.042 / 0.0105 (resample), 0.463 / 0.028 / 0.0068 (mean); grouped-query
    Llama −0.253 / −0.022 / −0.0052, 0.117 / −0.013 / −0.0031; NeoX 0.128 / 0.0135 / 0.0034, 0.017 / 0.0004 /
    0.0001."""
    _, engine = setup
    errors = [abs(float(edge_scores(engine, ablation, steps=k).sum()) - 1.0) for k in (50, 200)]
    assert errors[1] <= 0.015, errors
    assert errors[1] <= 0.35 * errors[0] + 1e-4, errors  # four times the steps, a quarter of the error


def test_scores_in_edge_order_and_deterministic(setup):
    """Deterministic, one score per edge of ``edges()``; that score i belongs to edge i is the finite-difference
    check above (it moves edge i's own mask cell, for the largest scores and for random edges)."""
    _, engine = setup
    a, b = edge_scores(engine, steps=2), edge_scores(engine, steps=2)
    assert torch.equal(a, b)
    with torch.inference_mode():  # as --interp-suggest calls it
        assert torch.equal(edge_scores(engine, steps=2), a)
    assert a.shape == (len(engine.edges()),) and a.dtype == torch.float64


def test_steps_must_be_positive(setup):
    _, engine = setup
    with pytest.raises(ValueError):
        edge_scores(engine, steps=0)
