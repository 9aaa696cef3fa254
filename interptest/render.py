"""Text rendering of a behavior's result: every failed check, the predictions, and the patching
map of each failing localization claim, sized for a 100-column terminal."""

from __future__ import annotations

from interptest import components

WIDTH = 100
CELL = 6  # a value such as "-0.12" + one marker character after it
ROW_LABEL = 5  # "L11  "
_RED, _BOLD, _DIM, _RESET = "\x1b[31;1m", "\x1b[1m", "\x1b[2m", "\x1b[0m"


def show_token(token: str) -> str:
    """A token as a reader needs to see it: leading spaces visible, control characters escaped."""
    text = repr(token)[1:-1]
    return "·" + text[1:] if text.startswith(" ") else text


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _format_value(check) -> str:
    if check.value is None:
        return "n/a"
    if check.claim is not None:
        return check.claim.format_value(check.value)
    return f"{check.value:.3f}"


def _predictions(preds) -> str:
    return "  ".join(f"{p.token!r} {p.prob:.2f}" for p in preds)


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
        metrics = f"  {label}: m_clean = {result.clean_metric:.3f}"
        if result.corrupt_metric is not None:
            delta = result.clean_metric - result.corrupt_metric
            metrics += f", m_corrupt = {result.corrupt_metric:.3f} (Δ = {delta:.3f})"
        lines.append(metrics)
    lines.append(f"  clean top-5:   {_predictions(result.clean_top)}")
    if result.corrupt_top:
        lines.append(f"  corrupt top-5: {_predictions(result.corrupt_top)}")
    for check in failures:
        if check.claim is not None:
            lines.extend(check.claim.render(check, color=color))
    return "\n".join(lines)


def _corruption_detail(corruption) -> str:
    if corruption.kind == "replace":
        return ", ".join(f"{a!r} ↔ {b!r}" for a, b in corruption.replace)
    if corruption.kind == "resample":
        return ", ".join(corruption.resample)
    return f"at {', '.join(p.source for p in corruption.positions)}, scale {corruption.scale:g}"


def _header(label: str) -> str:
    """A column label right-aligned over the value (the last character is the mark's column)."""
    label = _shorten(label, CELL)
    return label.rjust(CELL - 1).ljust(CELL)


def render_map(patch_map, claimed=(), failing=(), title: str = "", color: bool = False) -> list[str]:
    """A layer × position (or layer × head) table, two decimals, wrapped to ``WIDTH`` columns."""
    values = patch_map.values
    n_layers, n_cols = values.shape
    heads = components.get(patch_map.component).per_head
    direction = (
        "recovers: clean patched into corrupted run"
        if patch_map.direction == "denoise"
        else "breaks: corrupted patched into clean run"
    )
    lines = [
        f"  {title}" if title else "",
        f"  {patch_map.component} ({direction}), layer × {'head' if heads else 'position'}",
        "  0.93* claimed cell   0.12! failing cell (the mark follows its value)",
    ]
    claimed, failing = {tuple(c[:2]) for c in claimed}, {tuple(c[:2]) for c in failing}
    labels = [f"H{h}" for h in range(n_cols)] if heads else [show_token(t) for t in patch_map.tokens]
    per_chunk = max(1, (WIDTH - ROW_LABEL - 2) // (CELL + 1))
    for start in range(0, n_cols, per_chunk):
        cols = range(start, min(n_cols, start + per_chunk))
        if not heads:
            lines.append("  " + " " * ROW_LABEL + " ".join(_header(str(c)) for c in cols))
        lines.append("  " + " " * ROW_LABEL + " ".join(_header(labels[c]) for c in cols))
        for layer in range(n_layers):
            cells = []
            for c in cols:
                marker = "!" if (layer, c) in failing else "*" if (layer, c) in claimed else " "
                value = float(values[layer, c])
                text = f"{0.0 if abs(value) < 0.005 else value:5.2f}{marker}"  # no "-0.00"; the mark after
                if color and marker == "!":
                    text = f"{_RED}{text}{_RESET}"
                elif color and marker == "*":
                    text = f"{_BOLD}{text}{_RESET}"
                cells.append(text)
            lines.append("  " + f"L{layer}".ljust(ROW_LABEL) + " ".join(cells))
    return lines
