"""Regression baselines: a behavior's measured claim values and patching maps, stored beside its spec,
so that a run can say which values and cells *moved* — not only which thresholds broke — after a model,
prompt or code change (a circuit's faithfulness falling from 0.99 to 0.91 still passes ``>= 0.9``).

``__baselines__/<spec-file-stem>.json`` beside each spec file holds, per behavior name, of its last
``--interp-baseline-update`` run: every claim's measured value (a family's: the bound it is gated on),
the maps, and for a family the seed and a fingerprint of the samples it drew, so that a different
``--interp-seed`` is reported as such rather than as the mechanism moving. Entries written before claims
were recorded (maps only) are still read: their maps are compared. Pure Python: maps arrive as nested lists.
"""

from __future__ import annotations

import hashlib
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


def draw(seed: int, prompts: list[str]) -> dict:
    """A family's sample draw: the seed and a fingerprint of the prompts it drew."""
    return {"seed": seed, "draw": hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]}


def claim_values(checks) -> dict[str, float]:
    """The measured value of each of a result's claims (not the implicit checks), by claim text."""
    return {c.text: float(c.value) for c in checks if c.claim is not None and c.value is not None}


def entry(record: dict) -> dict:
    """What the baseline stores of one behavior's results.json record."""
    claims = {
        c["text"]: c["value"]
        for c in record.get("claims") or []
        if c.get("kind") is not None and c.get("value") is not None
    }
    out = {"model": record["model"], "tokens": record["tokens"], "claims": claims, "maps": record["maps"]}
    if record.get("draw"):
        out.update(record["draw"])
    if record.get("labels") and record["labels"] != record["tokens"]:
        out["labels"] = record["labels"]
    return out


def draw_change(stored: dict, current: dict) -> str | None:
    """Why this run's samples are not the baseline's (another seed, or another draw), or None."""
    if "seed" not in stored or not current:
        return None
    if stored["seed"] != current["seed"]:
        return (
            f"this run draws the family's samples with --interp-seed {current['seed']}, the baseline was recorded "
            f"with seed {stored['seed']}: other samples, so values are not compared (rerun with --interp-seed "
            f"{stored['seed']}, or re-record with --interp-baseline-update)"
        )
    if stored.get("draw") != current["draw"]:
        return (
            "the family draws other samples than when the baseline was recorded (same seed: the template, a "
            "lexicon or 'samples' changed), so values are not compared; re-record with --interp-baseline-update"
        )
    return None


def moved_claims(old: dict, new: dict[str, float], tolerance: float) -> list[str]:
    """The claims (by text) whose measured value moved by more than ``tolerance``."""
    return [
        f"{text!r}: {_pair(old[text], value)}"
        for text, value in new.items()
        if text in old and not _close(old[text], value, tolerance)
    ]


def moved_cells(old: dict, new: dict, tolerance: float, tokens: list[str]) -> list[str]:
    """Human-readable descriptions of the cells of one map (of the same shape) that moved by more than
    ``tolerance``; ``tokens`` labels the positions (a family's: template variables such as ``{b}#2``)."""
    old_values, new_values = old["values"], new["values"]
    heads = new.get("component") == "heads"
    moved = []
    for layer, (row_old, row_new) in enumerate(zip(old_values, new_values)):
        for col, (a, b) in enumerate(zip(row_old, row_new)):
            if not _close(a, b, tolerance):
                where = (
                    f"head {layer}.{col}"
                    if heads
                    else f"L{layer} pos {col} {_label(tokens[col])}"
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


def _label(token: str) -> str:
    """A position's label: a template variable or index as written in a claim, a token quoted."""
    return token if token.startswith(("{", "'", '"')) or token.lstrip("-").isdigit() else repr(token)


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    text = f"{float(value):.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # never "-0.00"


def compare(
    stored: dict | None,
    maps: dict,
    tokens: list[str],
    tolerance: float,
    claims: dict[str, float] | None = None,
    draw: dict | None = None,
) -> tuple[bool, str]:
    """Compare this run's claim values (text -> value) and ``maps`` (key -> {"values", ...}) with one
    stored behavior entry; a family drawn differently (another seed) is reported as that."""
    if stored is None:
        return True, "no baseline stored for this behavior (run with --interp-baseline-update to record one)"
    other_draw = draw_change(stored, draw or {})
    if other_draw:
        return False, other_draw
    problems = []
    moved = moved_claims(stored.get("claims") or {}, claims or {}, tolerance)
    if moved:
        problems.append(f"claims: {len(moved)} measured value(s) moved by more than {tolerance:g}: {'; '.join(moved)}")
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
    values = [t for t in claims or {} if t in (stored.get("claims") or {})]
    if problems:
        return False, " | ".join(problems)
    if not compared and not values:
        return True, "the baseline holds none of this run's claims or maps"
    return True, f"{len(values)} claim value(s) and {len(compared)} map(s) within {tolerance:g} of the baseline"


def update(spec_path: str | Path, entries: dict[str, dict]) -> Path:
    """Store ``entries`` (behavior name -> :func:`entry`) for one spec file, keeping the
    stored entries of behaviors that did not run this time."""
    path = baseline_path(spec_path)
    stored = load(spec_path)
    stored.update(entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": 1, "behaviors": dict(sorted(stored.items()))}, indent=1, allow_nan=False)
    atomic_write(path, text + "\n")
    return path
