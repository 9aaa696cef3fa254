"""Machine-readable records of behavior results: what results.json holds, what xdist workers send
to the controller, and what the terminal summary prints. Plain dicts of JSON types only.

The schema (``FORMAT`` = 1) is documented in docs/results.md; ``engine`` was added to format 1 without
incrementing it (a new key: a reader of the earlier layout still finds every key it knew). Every
behavior — passed, failed, skipped or errored — gets a record with every key, built by
:func:`behavior_record`.
"""

from __future__ import annotations

from typing import Any, TypedDict

from interptest.maps import finite_or_none as _number
from interptest.maps import map_entry, map_key

FORMAT = 1
OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed", "error")


class ClaimRecord(TypedDict):
    text: str
    kind: str | None  # the claim kind (e.g. "localization"); None for the implicit top-1 check
    passed: bool | None  # None: the behavior did not run
    value: float | None
    detail: str
    map: str | None  # key into the record's maps, when the value was read off a map
    cells: list  # claimed cells of that map
    failing_cells: list
    figure: dict | None  # what the report draws for this claim, e.g. {"type": "attention", ...}


class BehaviorRecord(TypedDict):
    nodeid: str
    model: str
    outcome: str  # one of OUTCOMES
    prompt: str  # a family: the template
    corrupt: str | None
    samples: int
    tokens: list
    expect: str
    foil: str | None
    clean_metric: float | None
    corrupt_metric: float | None
    clean_top: list
    corrupt_top: list
    claims: list[ClaimRecord]
    maps: dict
    draw: dict  # a family's seed and sample draw (baselines)
    labels: list  # each position as a claim writes it (a family's template variables)
    baseline: dict | None
    suggestion: str | None
    engine: dict | None  # {"patching": "fast" | "generic", "why", "circuits"?, "edges"?}; None: nothing was patched


def map_entries(result) -> dict:
    """The behavior's patching maps as JSON: key -> {component, direction, values, layers, positions|heads}."""
    return {map_key(component, direction): map_entry(pm) for (component, direction), pm in result.maps.items()}


def _kind(claim: Any) -> str | None:
    if claim is None:
        return None
    return type(claim).__module__.rsplit(".", 1)[-1]


def _claim_record(check) -> ClaimRecord:
    entry: ClaimRecord = {
        "text": check.text,
        "kind": _kind(check.claim),
        "passed": check.passed,
        "value": _number(check.value),
        "detail": check.detail,
        "map": None,
        "cells": [],
        "failing_cells": [],
        "figure": check.figure,
    }
    if check.claim is not None:
        entry.update(check.claim.record(check))
    return entry


def behavior_record(behavior, nodeid: str, model: str, outcome: str | None = None, result=None) -> BehaviorRecord:
    """The record of one behavior; ``result`` is None when it did not run (skipped, or an error before it
    could). ``outcome`` defaults to passed/failed from the result."""
    if outcome is None:
        outcome = "passed" if result is not None and result.passed else "failed"
    record: BehaviorRecord = {
        "nodeid": nodeid,
        "model": model,
        "outcome": outcome,
        "prompt": behavior.prompt,
        "corrupt": behavior.corrupt,
        "samples": behavior.family.samples if behavior.family else 1,
        "tokens": [],
        "expect": behavior.expect,
        "foil": behavior.foil,
        "clean_metric": None,
        "corrupt_metric": None,
        "clean_top": [],
        "corrupt_top": [],
        "claims": [
            {
                "text": c.text,
                "kind": _kind(c),
                "passed": None,
                "value": None,
                "detail": "",
                "map": None,
                "cells": [],
                "failing_cells": [],
                "figure": None,
            }
            for c in behavior.claims
        ],
        "maps": {},
        "draw": {},
        "labels": [],
        "baseline": None,
        "suggestion": None,
        "engine": None,
    }
    if result is None:
        return record
    record.update(
        {
            "model": result.model_name or model,
            "samples": result.samples,
            "tokens": list(result.tokens),
            "expect": result.expect,
            "foil": result.foil,
            "clean_metric": _number(result.clean_metric),
            "corrupt_metric": _number(result.corrupt_metric),
            "clean_top": [{"token": p.token, "prob": p.prob} for p in result.clean_top],
            "corrupt_top": [{"token": p.token, "prob": p.prob} for p in result.corrupt_top],
            "claims": [_claim_record(check) for check in result.checks],
            "maps": map_entries(result),
            "draw": dict(getattr(result, "draw", {}) or {}),
            "labels": list(getattr(result, "labels", []) or []),
            "baseline": result.baseline,
            "suggestion": result.suggestion,
            "engine": getattr(result, "engine", None),
        }
    )
    return record


def _implicit_name(text: str) -> str:
    return "top-1" if text.startswith("top-1") else "baseline" if "baseline" in text else text


def claim_counts(record: dict) -> dict:
    """The user's claims and the implicit checks (the top-1 prediction, the baseline) counted apart:
    {"ran", "passed", "total", "implicit_passed", "implicit_total", "implicit"}."""
    claims = record.get("claims") or []
    user = [c for c in claims if "kind" not in c or c["kind"] is not None]
    implicit = [c for c in claims if "kind" in c and c["kind"] is None and c.get("passed") is not None]
    ran = bool(implicit) or any(c.get("passed") is not None for c in user)
    return {
        "ran": ran,
        "passed": sum(1 for c in user if c.get("passed")),
        "total": len(user),
        "implicit_passed": sum(1 for c in implicit if c["passed"]),
        "implicit_total": len(implicit),
        "implicit": [_implicit_name(c["text"]) for c in implicit],
    }


def claims_text(record: dict) -> str:
    """ "3/4 + implicit 2/2 (top-1, baseline)", or "–/3 (skipped)" for a behavior that did not run: the
    terminal summary and the report say the same."""
    counts = claim_counts(record)
    if not counts["ran"]:
        return f"–/{counts['total']} ({record.get('outcome', 'not run')})"
    text = f"{counts['passed']}/{counts['total']}"
    if counts["implicit_total"]:
        text += f" + implicit {counts['implicit_passed']}/{counts['implicit_total']} ({', '.join(counts['implicit'])})"
    return text


def summary_line(record: dict) -> str:
    def fmt(value):
        return "n/a" if value is None else f"{value:z.2f}"

    return (
        f"{record['outcome'].upper():8} {record['nodeid']}  [{record['model']}]  m_clean {fmt(record['clean_metric'])}"
        f"  m_corrupt {fmt(record['corrupt_metric'])}  claims {claims_text(record)}"
    )


def engine_text(record: dict) -> str:
    """Which engine patched the behavior, in words ("" when nothing was patched): "fast", or "generic (why
    the fast engine declined)", "path/circuit: fast" (or "hooks (why)", ...) where path or circuit claims ran,
    "edges: fast" (or "hooks (why)") where edge circuits ran."""
    engine = record.get("engine") or {}
    parts = []
    if engine.get("patching"):
        why = engine.get("why") or ""
        parts.append(engine["patching"] + (f" ({why})" if why and engine["patching"] != "fast" else ""))
    if engine.get("circuits"):
        parts.append(f"path/circuit: {engine['circuits']}")
    if engine.get("edges"):
        parts.append(f"edges: {engine['edges']}")
    return "; ".join(parts)


def claim_lines(record: dict) -> list[str]:
    """One line per check with its verdict and measured value (the terminal summary under -v), after the
    patching engine that ran, when one did."""
    lines = []
    engine = engine_text(record)
    if engine:
        lines.append(f"    engine   {engine}")
    for claim in record.get("claims") or []:
        verdict = "not run" if claim.get("passed") is None else "passed" if claim["passed"] else "FAILED"
        value = "" if claim.get("value") is None else f"  measured {format_value(claim['value'])}"
        implicit = "  (implicit)" if "kind" in claim and claim["kind"] is None else ""
        lines.append(f"    {verdict:7}  {claim['text']}{value}{implicit}")
    return lines


def junit_properties(record: dict) -> list[tuple[str, str]]:
    """The behavior's key numbers as JUnit XML properties (name, value), for CI dashboards: the model,
    m_clean, m_corrupt, and per check "<verdict> <value>" under "claim: <text>" ("check: <text>" for the
    implicit ones)."""

    def number(value):
        return "" if value is None else repr(float(value))

    properties = [
        ("interp_model", str(record["model"])),
        ("interp_outcome", str(record["outcome"])),
        ("m_clean", number(record["clean_metric"])),
        ("m_corrupt", number(record["corrupt_metric"])),
    ]
    for claim in record.get("claims") or []:
        verdict = "not run" if claim.get("passed") is None else "passed" if claim["passed"] else "failed"
        prefix = "check" if "kind" in claim and claim["kind"] is None else "claim"
        value = number(claim.get("value"))
        properties.append((f"{prefix}: {claim['text']}", f"{verdict} {value}".strip()))
    return properties


def format_value(value: float) -> str:
    """A measured value: three decimals, or an integer (a rank) as an integer."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:z.3f}"
