"""Shrinking a failing family claim to the smallest instance that fails on its own (hypothesis), ready to
paste as a single-prompt behavior.

Shrinking is bounded: a :class:`ShrinkBudget` (``--interp-shrink-budget`` seconds per behavior, default
:data:`DEFAULT_BUDGET_S`; ``--interp-no-shrink`` turns it off) is shared by every failing claim of a
behavior. Claims are shrunk cheapest first (see :func:`shrink_order`: a ``beats random`` control
re-measures its random sets on every try, so it goes last), each try checks the clock, and when the
budget runs out the message says so and shows the smallest failing instance found by then, if any.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from interptest import families
from interptest.binding import BoundBehavior, bind_samples
from interptest.claims import Unjudgeable, judge
from interptest.errors import SpecError
from interptest.running import Run

SHRINK_EXAMPLES = 60
DEFAULT_BUDGET_S = 30.0


class ShrinkBudget:
    """Seconds of shrinking left for one behavior; ``clock`` is injectable (tests never wait)."""

    def __init__(self, seconds: float | None = DEFAULT_BUDGET_S, clock: Callable[[], float] = time.monotonic):
        self.seconds = DEFAULT_BUDGET_S if seconds is None else float(seconds)
        self.clock = clock
        self.start = clock()

    def left(self) -> float:
        return self.seconds - (self.clock() - self.start)

    def spent(self) -> bool:
        return self.left() <= 0


def expensive(claim) -> bool:
    """Claims whose every measurement re-runs many forwards (a ``beats random`` control)."""
    return getattr(claim, "random", None) is not None


def shrink_order(indices, claims) -> list[int]:
    """Failing claim indices, cheap claims first, controls last (stable otherwise)."""
    return sorted(indices, key=lambda i: expensive(claims[i]))


def minimal_instance(bound: BoundBehavior, index: int, batch_size, budget: ShrinkBudget | None = None) -> str:
    """Hypothesis shrinks to the smallest instance on which claim ``index`` fails on its own, within
    ``budget`` (the message says when it stopped early and what it had found by then)."""
    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis.errors import NoSuchExample

    budget = budget or ShrinkBudget()
    spec = bound.spec
    claim = spec.claims[index]
    found: dict = {}  # failing instance -> its value
    tried: dict = {}  # instance -> whether it failed (hypothesis replays its best one)
    stopped: list[bool] = []
    if budget.spent():
        return f"\nnot shrunk: the shrink budget ({budget.seconds:g} s per behavior) was spent before this claim"

    def fails(pair) -> bool:
        if repr(pair) not in tried:
            tried[repr(pair)] = measure_fails(pair)
        return tried[repr(pair)]

    def measure_fails(pair) -> bool:
        if stopped or budget.spent():  # out of time: every new try "passes", so hypothesis keeps its best
            stopped.append(True)
            return False
        values, corrupt_values = pair
        sample = families.instance(spec, values, corrupt_values)
        try:
            single = bind_samples(spec, bound.model, [sample], bound.model_name, bound.seed, bound.options)
        except SpecError:  # this instance cannot even be bound (e.g. another token count)
            return False
        run = Run(single, batch_size)
        try:
            measurement = claim.measure(single.bound_claims[index], run)
        except Unjudgeable:
            return False
        verdict = judge(claim, measurement, None, run.seed)
        if not verdict.passed:
            found[repr(pair)] = verdict.value
        return not verdict.passed

    config = settings(
        max_examples=SHRINK_EXAMPLES,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    early = f"\nshrinking stopped early: the shrink budget ({budget.seconds:g} s per behavior) ran out"
    try:
        values, corrupt_values = find(families.instance_strategy(spec), fails, settings=config)
    except NoSuchExample:
        if stopped:
            return early + " before any single instance was found to fail on its own"
        return (
            f"\nno single instance fails on its own within {SHRINK_EXAMPLES} tries: the claim fails on the "
            "family's mean"
        )
    sample = families.instance(spec, values, corrupt_values)
    block = families.as_yaml(spec, sample, claim.text, found.get(repr((values, corrupt_values))), index)
    if stopped:
        return early + "; the smallest failing instance found by then, ready to paste:\n" + block
    return "\nminimal failing instance (shrunk by hypothesis), ready to paste:\n" + block
