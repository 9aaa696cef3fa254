"""Negative controls (``beats random at q``): how many random node sets, their seed, the measurement
that compares a claim's value with the q-quantile of theirs, and its terminal histogram. Shared by
localization (``together``) and circuit claims; the sets themselves come from
:func:`interptest.claims.nodes.random_node_sets`."""

from __future__ import annotations

import zlib

from interptest.claims.base import Measurement, Unjudgeable
from interptest.claims.grammar import Comparison

DEFAULT_RANDOM_SETS = 200


def random_count(run) -> int:
    """How many random sets a control draws: ``--interp-random-sets`` or :data:`DEFAULT_RANDOM_SETS`."""
    value = (getattr(run.bound, "options", None) or {}).get("random_sets")
    return int(value) if value else DEFAULT_RANDOM_SETS


def control_seed(run, text: str) -> int:
    """The seed of a claim's random sets: the run's sample seed and the claim's text."""
    return zlib.crc32(f"{run.seed}|{text}".encode())


def control_measurement(values, random_values, quantile: float, exhaustive: bool, what: str) -> Measurement:
    """The claim's values [S, 1] against random sets' values [S, N]: the threshold is the q-quantile of
    the random sets' sample means; the figure keeps the distribution for the report."""
    import torch

    means = random_values.double().mean(dim=0)
    finite = means[means.isfinite()]
    if not finite.numel():
        raise Unjudgeable("every random node set gives an undefined value")
    threshold = float(torch.quantile(finite, quantile))
    value = float(values.double().mean())
    beaten = float((finite < value).double().mean())
    n = int(finite.numel())
    note = (
        f"{what} {value:.3f} vs {n} random node sets of the same composition"
        f"{' (every other set)' if exhaustive else ''}: {quantile:g}-quantile {threshold:.3f}, mean "
        f"{float(finite.mean()):.3f}, max {float(finite.max()):.3f}; the set beats {beaten:.1%} of them"
    )
    figure = {
        "type": "random",
        "value": value,
        "quantile": quantile,
        "threshold": threshold,
        "values": [round(float(v), 6) for v in finite.tolist()],
        "exhaustive": exhaustive,
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
        lines.append(f"  {start:8.3f} | {'#' * max(1 if c else 0, round(30 * c / top)):<30} {c}{mark}")
    return lines
