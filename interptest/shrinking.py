"""Shrinking a failing family claim to the smallest instance that fails on its own (hypothesis), ready to
paste as a single-prompt behavior."""

from __future__ import annotations

from interptest import families
from interptest.binding import BoundBehavior, bind_samples
from interptest.claims import Unjudgeable, judge
from interptest.errors import SpecError
from interptest.running import Run

SHRINK_EXAMPLES = 60


def minimal_instance(bound: BoundBehavior, index: int, batch_size) -> str:
    """Hypothesis shrinks to the smallest instance on which claim ``index`` fails on its own."""
    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis.errors import NoSuchExample

    spec = bound.spec
    claim = spec.claims[index]
    last: dict = {}

    def fails(pair) -> bool:
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
        verdict = judge(claim, measurement, None, 0)
        if not verdict.passed:
            last["value"] = verdict.value
        return not verdict.passed

    config = settings(
        max_examples=SHRINK_EXAMPLES,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    try:
        values, corrupt_values = find(families.instance_strategy(spec), fails, settings=config)
        fails((values, corrupt_values))
    except NoSuchExample:
        return (
            f"\nno single instance fails on its own within {SHRINK_EXAMPLES} tries: the claim fails on the "
            "family's mean"
        )
    sample = families.instance(spec, values, corrupt_values)
    block = families.as_yaml(spec, sample, claim.text, last.get("value"))
    return "\nminimal failing instance (shrunk by hypothesis), ready to paste:\n" + block
