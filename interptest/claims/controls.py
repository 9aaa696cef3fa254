"""Negative controls (``beats random at q``): how many random node sets, their seed, the measurement
that compares a claim's value with the q-quantile of theirs, and its terminal histogram. Shared by
localization (``together``) and circuit claims; the sets themselves come from
:func:`interptest.claims.nodes.random_node_sets`.

**Sequential draws** (:func:`sequential_control`). The N sets (``--interp-random-sets``, default 200)
are drawn in a fixed seeded order and measured in chunks; after 20, 40, 80, 120 and 160 of them (the
looks below N) the rule asks whether the draw so far already settles the verdict. With v the value
the verdict compares (the claim's value on one sample, its one-sided bootstrap bound on a family:
what :func:`interptest.claims.judge` compares), b of the k sets drawn reaching v (mean ≥ v) and p the
fraction of *all* sets of the composition that reach v, the claim beats the q-quantile exactly when
p < 1 − q. An exact one-sided Clopper–Pearson bound at level α/L (α = :data:`SEQUENTIAL_ALPHA` = 0.01,
L the number of looks) decides:

* upper bound on p < 1 − q, and v above the q-quantile of the k sets drawn: **passes**, stop;
* lower bound on p > 1 − q, and v not above the q-quantile of the k sets drawn: **fails**, stop;
* otherwise draw on; the full N are used, and the verdict is the full draw's, whenever no look settles.

Error rate: Clopper–Pearson bounds are exact (never below their level for any p), so the
probability that some look settles the verdict the wrong way for the population of sets is at most
α = 0.01 (a union over the L looks); with sets drawn without replacement it is smaller still. It is
a bound on the population, not on the full N-set draw, whose own empirical quantile is a sample: at
q = 0.95 a passing claim settles at the earliest after ~120 sets with none reaching it, a failing
claim often after 20. The figure records how many sets were drawn (``drawn`` of ``planned``).
Exhaustive controls (every other set, when there are at most N) are measured whole.
"""

from __future__ import annotations

import math
import zlib

from interptest.claims.base import Measurement, Unjudgeable, measured_bounds
from interptest.claims.grammar import Comparison

DEFAULT_RANDOM_SETS = 200
SEQUENTIAL_ALPHA = 0.01  # the chance that an early stop settles the verdict the wrong way (all looks)
LOOKS = (20, 40, 80, 120, 160)  # how many sets are drawn when the rule looks (those below N)


def random_count(run) -> int:
    """How many random sets a control draws: ``--interp-random-sets`` or :data:`DEFAULT_RANDOM_SETS`."""
    value = (getattr(run.bound, "options", None) or {}).get("random_sets")
    return int(value) if value else DEFAULT_RANDOM_SETS


def control_seed(run, text: str) -> int:
    """The seed of a claim's random sets: the run's sample seed and the claim's text."""
    return zlib.crc32(f"{run.seed}|{text}".encode())


def _log_binom_pmf(i: int, k: int, p: float) -> float:
    return math.lgamma(k + 1) - math.lgamma(i + 1) - math.lgamma(k - i + 1) + i * math.log(p) + (k - i) * math.log1p(-p)


def _binom_cdf(b: int, k: int, p: float) -> float:
    """P(X <= b) for X ~ Binomial(k, p), summed exactly (k is a few hundred at most)."""
    if b < 0:
        return 0.0
    if b >= k or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    return min(1.0, sum(math.exp(_log_binom_pmf(i, k, p)) for i in range(b + 1)))


def _solve(f, target: float) -> float:
    """p in [0, 1] with f(p) = target for f decreasing in p (bisection to float precision)."""
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson_upper(b: int, k: int, alpha: float) -> float:
    """Exact one-sided upper (1 − alpha) bound on p after b successes in k trials:
    the p with P(X <= b) = alpha (1 when b = k)."""
    if b >= k:
        return 1.0
    return _solve(lambda p: _binom_cdf(b, k, p), alpha)


def clopper_pearson_lower(b: int, k: int, alpha: float) -> float:
    """Exact one-sided lower (1 − alpha) bound on p after b successes in k trials:
    the p with P(X >= b) = alpha (0 when b = 0)."""
    if b <= 0:
        return 0.0
    return _solve(lambda p: _binom_cdf(b - 1, k, p), 1.0 - alpha)


def settled(means, value: float, quantile: float, looks: int, alpha: float = SEQUENTIAL_ALPHA) -> bool | None:
    """The verdict that random sets' means ``means`` (the k drawn so far, a 1-d tensor) settle for
    ``value`` at the q-quantile, with ``looks`` looks sharing ``alpha``: True (passes), False (fails)
    or None (draw on). See the module docstring."""
    import torch

    finite = means[means.isfinite()].double()
    k = int(finite.numel())
    if not k:
        return None
    reached = int((finite >= value).sum())
    beats = value > float(torch.quantile(finite, quantile))
    level = alpha / max(1, looks)
    if beats and clopper_pearson_upper(reached, k, level) < 1.0 - quantile:
        return True
    if not beats and clopper_pearson_lower(reached, k, level) > 1.0 - quantile:
        return False
    return None


def sequential_control(
    values,
    measure,
    sets,
    quantile: float,
    exhaustive: bool,
    what: str,
    seed: int,
    wants_high: bool = True,
    sets_are: str = "node sets of the same composition",
) -> Measurement:
    """``beats random`` with sets drawn in :data:`LOOKS` chunks until the verdict is settled (module
    docstring). ``values`` [S, 1]: the claim's; ``measure(sets)`` → [S, len(sets)] values of random
    sets; ``seed``: the run's (the judged value is its bootstrap bound on a family)."""
    import torch

    sets = list(sets)
    if exhaustive:
        return control_measurement(values, measure(sets), quantile, exhaustive, what, sets_are=sets_are)
    value = measured_bounds(values.double(), seed, 1, wants_high)[0]
    looks = [k for k in LOOKS if k < len(sets)]
    parts, drawn = [], 0
    for stop in looks + [len(sets)]:
        parts.append(measure(sets[drawn:stop]))
        drawn = stop
        means = torch.cat(parts, dim=1).double().mean(dim=0)
        if drawn < len(sets) and settled(means, value, quantile, len(looks)) is not None:
            break
    return control_measurement(
        values, torch.cat(parts, dim=1), quantile, exhaustive, what, planned=len(sets), sets_are=sets_are
    )


def control_measurement(
    values,
    random_values,
    quantile: float,
    exhaustive: bool,
    what: str,
    planned: int | None = None,
    sets_are: str = "node sets of the same composition",
) -> Measurement:
    """The claim's values [S, 1] against random sets' values [S, N]: the threshold is the q-quantile of
    the random sets' sample means; the figure keeps the distribution for the report. ``planned``: how
    many sets a sequential draw would have drawn at most (it stopped at N)."""
    import torch

    means = random_values.double().mean(dim=0)
    finite = means[means.isfinite()]
    if not finite.numel():
        raise Unjudgeable(f"every random {sets_are.split()[0]} set gives an undefined value")
    threshold = float(torch.quantile(finite, quantile))
    value = float(values.double().mean())
    beaten = float((finite < value).double().mean())
    n = int(finite.numel())
    drawn = int(random_values.shape[1])
    early = (
        f" (drawn sequentially: the verdict was settled after {drawn} of {planned}, exact Clopper–Pearson bound, "
        f"error rate ≤ {SEQUENTIAL_ALPHA:g})"
        if planned is not None and drawn < planned
        else ""
    )
    note = (
        f"{what} {value:z.3f} vs {n} random {sets_are}"
        f"{' (every other set)' if exhaustive else ''}{early}: {quantile:g}-quantile {threshold:z.3f}, mean "
        f"{float(finite.mean()):z.3f}, max {float(finite.max()):z.3f}; the set beats {beaten:.1%} of them"
    )
    figure = {
        "type": "random",
        "value": value,
        "quantile": quantile,
        "threshold": threshold,
        "values": [round(float(v), 6) for v in finite.tolist()],
        "exhaustive": exhaustive,
        "drawn": drawn,
        "planned": drawn if planned is None else planned,
        "note": note,
    }
    return Measurement(
        values.double(), quantifier="together", figure=figure, comparison=Comparison(">", threshold), context=note
    )


def render_control(check) -> list[str]:
    figure = getattr(check, "figure", None)
    if not figure or figure.get("type") != "random":
        return []
    values = sorted(figure["values"])
    bins = 10
    lo, hi = min(values + [figure["value"]]), max(values + [figure["value"]])
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    top = max(counts) or 1
    lines = ["", f"random control: {figure['note']}"]
    for b, c in enumerate(counts):
        start = lo + b * width
        mark = (
            " <- claim"
            if start <= figure["value"] < start + width or (b == bins - 1 and figure["value"] >= start)
            else ""
        )
        lines.append(f"  {start:z8.3f} | {'#' * max(1 if c else 0, round(30 * c / top)):<30} {c}{mark}")
    return lines
