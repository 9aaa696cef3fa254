"""Shrinking a failing family claim is bounded and optional: a budget per behavior (an injectable clock,
so no test waits or measures time), the message when it stops early, cheap claims before controls."""

import itertools

import tinymodels
from interptest.binding import bind_behavior
from interptest.claims import parse_claim
from interptest.outcomes import run_behavior
from interptest.shrinking import ShrinkBudget, shrink_order
from interptest.spec import parse_behavior

FAMILY = dict(
    name="b",
    template="The {a} sat",
    vars={"a": ["sat", "on", "dog", "Bob", "the"]},
    samples=4,
    corrupt="The on sat",
    expect=" on",
    foil=" dog",
    claims=["logit(' on') > 1.2"],  # on this random model: fails on 'dog', 'Bob' and 'the' only
)


def _shrunk(clock=None, **options):
    model = tinymodels.tiny_model("gpt2")
    result = run_behavior(bind_behavior(parse_behavior(dict(FAMILY)), model), clock=clock, **options)
    [check] = [c for c in result.checks if c.text == FAMILY["claims"][0]]
    assert not check.passed
    return check.detail


def test_a_budget_of_zero_says_the_claim_was_not_shrunk():
    detail = _shrunk(shrink_budget=0)
    assert "not shrunk: the shrink budget (0 s per behavior) was spent" in detail
    assert "ready to paste" not in detail


def test_a_budget_that_runs_out_says_so_and_shows_what_it_had_found():
    # one second per look at the clock (one look on entry, one per new instance tried): 2.5 s lasts one
    # try (a passing instance), 3.5 s two (a failing one, not yet shrunk to the smallest, 'dog')
    ticks = itertools.count()
    detail = _shrunk(clock=lambda: float(next(ticks)), shrink_budget=2.5)
    assert "shrinking stopped early: the shrink budget (2.5 s per behavior) ran out before any single instance" in (
        detail
    )
    ticks = itertools.count()
    detail = _shrunk(clock=lambda: float(next(ticks)), shrink_budget=3.5)
    assert "shrinking stopped early: the shrink budget (3.5 s per behavior) ran out; the smallest failing " in detail
    assert "found by then, ready to paste:" in detail and 'prompt: "The Bob sat"' in detail


def test_no_shrink_leaves_the_failure_as_it_is_and_an_ample_budget_shrinks():
    assert "shrink" not in _shrunk(shrink=False) and "ready to paste" not in _shrunk(shrink=False)
    ticks = itertools.count()
    detail = _shrunk(clock=lambda: float(next(ticks)), shrink_budget=10**6)
    assert "minimal failing instance (shrunk by hypothesis)" in detail and 'prompt: "The dog sat"' in detail


def test_controls_are_shrunk_last_and_the_budget_counts_down_on_its_clock():
    claims = [parse_claim(t) for t in ["heads[0.0] together recovers beats random at 0.9", "logit(' on') > 1"]]
    assert shrink_order([0, 1], claims) == [1, 0]
    now = [10.0]
    budget = ShrinkBudget(5, clock=lambda: now[0])
    assert budget.left() == 5 and not budget.spent()
    now[0] = 15.0
    assert budget.spent()
