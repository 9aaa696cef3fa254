"""Regression baselines: a behavior's patching maps, stored beside its spec, so that a run can say
which cells *moved* — not only which thresholds broke — after a model, prompt or code change.

``__baselines__/<spec-file-stem>.json`` beside each spec file holds, per behavior name, the maps of
its last ``--interp-baseline-update`` run. Pure Python: maps arrive as nested lists.
"""

from __future__ import annotations

import json
from pathlib import Path

from interptest.files import atomic_write

DIRECTORY = "__baselines__"
DEFAULT_TOLERANCE = 0.05
_MAX_LISTED = 12


def baseline_path(spec_path: str | Path) -> Path:
    spec_path = Path(spec_path)
    return spec_path.parent / DIRECTORY / f"{spec_path.stem}.json"


def load(spec_path: str | Path) -> dict:
    """The behaviors stored for one spec file ({} when there is no baseline file)."""
    path = baseline_path(spec_path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return dict(data["behaviors"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: not a readable interptest baseline ({error}); delete it or rerun with --interp-baseline-update"
        ) from None


def _close(old, new, tolerance: float) -> bool:
    if old is None or new is None:
        return old is None and new is None
    return abs(float(new) - float(old)) <= tolerance


def _shape(values) -> tuple[int, int]:
    return len(values), len(values[0]) if values else 0


def shape_change(old: dict, new: dict) -> str | None:
    """Why the cells of two maps cannot be compared one to one (their shapes differ), or None."""
    (layers_old, cols_old), (layers_new, cols_new) = _shape(old["values"]), _shape(new["values"])
    if (layers_old, cols_old) == (layers_new, cols_new):
        return None
    what = "heads" if new.get("component") == "heads" else "positions"
    causes = []
    if layers_old != layers_new:
        causes.append(f"the model has {layers_new} layers, the baseline {layers_old}")
    if cols_old != cols_new:
        causes.append(
            f"the prompt now has {cols_new} token positions, the baseline {cols_old}: its token count changed"
            if what == "positions"
            else f"the model has {cols_new} heads per layer, the baseline {cols_old}"
        )
    return (
        f"the map's shape changed from {layers_old}×{cols_old} to {layers_new}×{cols_new} ({'; '.join(causes)}), "
        "so its cells cannot be compared; re-record the baseline with --interp-baseline-update"
    )


def moved_cells(old: dict, new: dict, tolerance: float, tokens: list[str]) -> list[str]:
    """Human-readable descriptions of the cells of one map (of the same shape) that moved by more than
    ``tolerance``."""
    old_values, new_values = old["values"], new["values"]
    heads = new.get("component") == "heads"
    moved = []
    for layer, (row_old, row_new) in enumerate(zip(old_values, new_values)):
        for col, (a, b) in enumerate(zip(row_old, row_new)):
            if not _close(a, b, tolerance):
                where = (
                    f"head {layer}.{col}"
                    if heads
                    else f"L{layer} pos {col} {tokens[col]!r}"
                    if col < len(tokens)
                    else f"L{layer} pos {col}"
                )
                moved.append(f"{where}: {_pair(a, b)}")
    return moved


def _pair(old, new) -> str:
    """'0.50 → 1.00': two decimals, or as many more as it takes for the two values to differ (at most 6)."""
    if old is None or new is None:
        return f"{_fmt(old, 2)} → {_fmt(new, 2)}"
    digits = 2
    while digits < 6 and _fmt(old, digits) == _fmt(new, digits):
        digits += 1
    return f"{_fmt(old, digits)} → {_fmt(new, digits)}"


def _fmt(value, digits: int = 2) -> str:
    return "n/a" if value is None else f"{float(value):.{digits}f}"


def compare(stored: dict | None, maps: dict, tokens: list[str], tolerance: float) -> tuple[bool, str]:
    """Compare this run's ``maps`` (key -> {"values", ...}) with one stored behavior entry."""
    if stored is None:
        return True, "no baseline stored for this behavior (run with --interp-baseline-update to record one)"
    problems = []
    for key, new in maps.items():
        if key not in stored.get("maps", {}):
            continue
        changed = shape_change(stored["maps"][key], new)
        if changed:
            problems.append(f"{key}: {changed}")
            continue
        moved = moved_cells(stored["maps"][key], new, tolerance, tokens)
        if moved:
            shown = "; ".join(moved[:_MAX_LISTED]) + (
                f"; … {len(moved) - _MAX_LISTED} more" if len(moved) > _MAX_LISTED else ""
            )
            problems.append(f"{key}: {len(moved)} cell(s) moved by more than {tolerance:g}: {shown}")
    compared = [k for k in maps if k in stored.get("maps", {})]
    if problems:
        return False, " | ".join(problems)
    if not compared:
        return True, "the baseline holds none of this run's maps"
    return True, f"{len(compared)} map(s) within {tolerance:g} of the baseline"


def update(spec_path: str | Path, entries: dict[str, dict]) -> Path:
    """Store ``entries`` (behavior name -> {"model", "tokens", "maps"}) for one spec file, keeping the
    stored entries of behaviors that did not run this time."""
    path = baseline_path(spec_path)
    stored = load(spec_path)
    stored.update(entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": 1, "behaviors": dict(sorted(stored.items()))}, indent=1, allow_nan=False)
    atomic_write(path, text + "\n")
    return path
