"""Text rendering of a behavior's result: every failed check, the predictions, and the patching
map of each failing localization claim, sized for a 100-column terminal."""

from __future__ import annotations

import dataclasses

from interptest.maps import DIM as _DIM
from interptest.maps import RED as _RED
from interptest.maps import RESET as _RESET
from interptest.maps import WIDTH, PatchMap
from interptest.maps import shorten as _shorten


def _format_value(check) -> str:
    if check.value is None:
        return "n/a"
    if check.claim is not None:
        return check.claim.format_value(check.value)
    return f"{check.value:z.3f}"


def _predictions(preds) -> str:
    return "  ".join(f"{p.token!r} {p.prob:z.2f}" for p in preds)


def render_failure(result, color: bool = False) -> str:
    failures = result.failures
    model = f" on {result.model_name}" if result.model_name else ""
    lines = [f"behavior {result.behavior.name!r}{model}: {len(failures)} of {len(result.checks)} checks failed"]
    width = max(len(check.text) for check in result.checks)
    for check in result.checks:
        status = "FAILED" if not check.passed else "passed"
        if color:
            status = f"{_RED}{status}{_RESET}" if not check.passed else f"{_DIM}{status}{_RESET}"
        line = f"  {status}  {check.text.ljust(min(width, 48))}  measured {_format_value(check)}"
        detail, _, extra = (check.detail or "").partition("\n")
        if detail and (not check.passed or check.claim is not None):
            line += f"  ({detail})"
        lines.append(line)
        if extra and not check.passed:
            lines.extend("      " + row for row in extra.splitlines())
    lines.append("")
    behavior = result.behavior
    if behavior.family is not None:
        lines.append(
            f"  template: {_shorten(repr(behavior.prompt), WIDTH - 12)}  ({result.samples} samples; "
            "numbers below are means, predictions are the first sample's)"
        )
    else:
        lines.append(f"  prompt:  {_shorten(repr(behavior.prompt), WIDTH - 11)}")
    if behavior.corrupt is not None:
        lines.append(f"  corrupt: {_shorten(repr(behavior.corrupt), WIDTH - 11)}")
    elif behavior.corruption is not None:
        lines.append(f"  corrupt: {behavior.corruption.kind} {_corruption_detail(behavior.corruption)}")
    if result.clean_metric is not None:
        label = (
            f"mean logit diff expect − foil over {result.samples} samples (first: {result.expect!r} − {result.foil!r})"
            if behavior.family is not None
            else f"logit diff {result.expect!r} − {result.foil!r}"
        )
        metrics = f"  {label}: m_clean = {result.clean_metric:z.3f}"
        if result.corrupt_metric is not None:
            delta = result.clean_metric - result.corrupt_metric
            metrics += f", m_corrupt = {result.corrupt_metric:z.3f} (Δ = {delta:z.3f})"
        lines.append(metrics)
    lines.append(f"  clean top-5:   {_predictions(result.clean_top)}")
    if result.corrupt_top:
        lines.append(f"  corrupt top-5: {_predictions(result.corrupt_top)}")
    for check in failures:
        if check.claim is not None:
            lines.extend(check.claim.render(_with_template_labels(check, result), color=color))
    return "\n".join(lines)


def _with_template_labels(check, result):
    """A family's map shows mean values, so its columns are labelled as a claim writes them where a template
    variable sits (``{last}``, ``{first}#2``) — the same on every sample — and by the first sample's token
    elsewhere (the template's own words, equal on every sample)."""
    patch_map = check.patch_map
    if result.behavior.family is None or patch_map is None or not result.labels:
        return check
    if not isinstance(patch_map, PatchMap) or len(patch_map.tokens) != len(result.labels):
        return check
    tokens = [label if label.startswith("{") else token for label, token in zip(result.labels, patch_map.tokens)]
    return dataclasses.replace(check, patch_map=dataclasses.replace(patch_map, tokens=tokens))


def _corruption_detail(corruption) -> str:
    if corruption.kind == "replace":
        return ", ".join(f"{a!r} ↔ {b!r}" for a, b in corruption.replace)
    if corruption.kind == "resample":
        return ", ".join(corruption.resample)
    return f"at {', '.join(p.source for p in corruption.positions)}, scale {corruption.scale:g}"
