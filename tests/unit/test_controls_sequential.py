"""'beats random' drawn sequentially: exact Clopper–Pearson bounds, and a verdict settled early is the one
the full draw reaches; when no look settles it, every set is drawn. No model: the random sets' values are
given."""

import math
import random

import pytest
import torch

from interptest.claims.controls import (
    LOOKS,
    SEQUENTIAL_ALPHA,
    clopper_pearson_lower,
    clopper_pearson_upper,
    control_measurement,
    sequential_control,
    settled,
)


def test_clopper_pearson_bounds_are_the_exact_binomial_tail_solutions():
    # no success in k trials: the upper bound solves (1 - p)^k = alpha
    assert clopper_pearson_upper(0, 100, 0.01) == pytest.approx(1 - 0.01 ** (1 / 100), abs=1e-12)
    # every trial a success: the lower bound solves p^k = alpha
    assert clopper_pearson_lower(20, 20, 0.01) == pytest.approx(0.01 ** (1 / 20), abs=1e-12)
    assert clopper_pearson_upper(20, 20, 0.01) == 1.0 and clopper_pearson_lower(0, 20, 0.01) == 0.0
    # in general: P(X <= b | upper) = alpha and P(X >= b | lower) = alpha
    for b, k in [(3, 40), (10, 80), (1, 160)]:
        up, lo = clopper_pearson_upper(b, k, 0.002), clopper_pearson_lower(b, k, 0.002)
        cdf = sum(math.comb(k, i) * up**i * (1 - up) ** (k - i) for i in range(b + 1))
        tail = sum(math.comb(k, i) * lo**i * (1 - lo) ** (k - i) for i in range(b, k + 1))
        assert cdf == pytest.approx(0.002, rel=1e-6) and tail == pytest.approx(0.002, rel=1e-6)
        assert lo < b / k < up


def _measure(table):
    calls = []

    def measure(sets):
        calls.append(len(sets))
        return table[:, [int(s) for s in sets]]

    return measure, calls


def _full_verdict(values, table, quantile):
    m = control_measurement(values, table, quantile, False, "x")
    return float(values.mean()) > m.comparison.threshold


@pytest.mark.parametrize("seed", range(40))
def test_a_settled_verdict_is_the_full_draws_and_an_unsettled_one_draws_every_set(seed):
    rng = random.Random(seed)
    n = 200
    spread = rng.choice([0.05, 0.2, 1.0])
    table = torch.randn(1, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * spread
    quantile = rng.choice([0.5, 0.9, 0.95])
    # claims from far below to far above the random sets, and right at their quantile
    value = float(torch.quantile(table[0], quantile)) + rng.choice([-3, -1, -0.05, 0.0, 0.05, 1, 3]) * spread
    values = torch.tensor([[value]], dtype=torch.float64)
    measure, calls = _measure(table)
    m = sequential_control(values, measure, list(range(n)), quantile, False, "x", seed=0)
    drawn = m.figure["drawn"]
    assert drawn == sum(calls) and m.figure["planned"] == n and drawn in [k for k in LOOKS if k < n] + [n]
    passed = value > m.comparison.threshold
    if drawn < n:  # settled early: the bound decided, and the full draw agrees
        assert passed == _full_verdict(values, table, quantile)
        assert f"settled after {drawn} of {n}" in m.context
    else:  # the full draw, its own verdict
        assert passed == _full_verdict(values, table, quantile) and "drawn sequentially" not in m.context


def test_far_from_the_threshold_it_stops_early_near_it_it_draws_all():
    n = 200
    table = torch.linspace(0, 1, n, dtype=torch.float64)[torch.randperm(n, generator=torch.Generator().manual_seed(1))]
    table = table[None]
    for value, expect_early in [(-5.0, True), (0.95, False)]:
        measure, calls = _measure(table)
        m = sequential_control(torch.tensor([[value]]), measure, list(range(n)), 0.95, False, "x", seed=0)
        assert (m.figure["drawn"] < n) == expect_early, (value, m.figure["drawn"])
    # a value above every set passes only after enough sets rule out a 5% reach at the looks' level
    measure, calls = _measure(table)
    m = sequential_control(torch.tensor([[5.0]]), measure, list(range(n)), 0.95, False, "x", seed=0)
    level = SEQUENTIAL_ALPHA / len([k for k in LOOKS if k < n])
    earliest = min(k for k in LOOKS if 1 - level ** (1 / k) < 0.05)
    assert m.figure["drawn"] == earliest and m.comparison.threshold < 5.0


def test_wrong_early_verdicts_are_rarer_than_the_documented_error_rate():
    # the fraction of sets reaching the value sits exactly at 1 - q: every settled verdict is wrong about
    # the population, and the bound keeps them below alpha
    rng = random.Random(0)
    quantile, n, trials, wrong = 0.95, 200, 400, 0
    looks = len([k for k in LOOKS if k < n])
    for _ in range(trials):
        reach = torch.tensor([1.0 if rng.random() < 1 - quantile else 0.0 for _ in range(n)], dtype=torch.float64)
        means = reach * 2 - 1  # sets reaching the value 0.5 are at 1, the others at -1
        for k in LOOKS:
            if settled(means[:k], 0.5, quantile, looks) is not None:
                wrong += 1
                break
    assert wrong / trials <= SEQUENTIAL_ALPHA


def test_exhaustive_controls_are_measured_whole():
    table = torch.randn(1, 30, dtype=torch.float64)
    measure, calls = _measure(table)
    m = sequential_control(torch.tensor([[9.0]]), measure, list(range(30)), 0.95, True, "x", seed=0)
    assert calls == [30] and m.figure["drawn"] == 30
