"""Machine-readable records of behavior results: what results.json holds, what xdist workers send
to the controller, and what the terminal summary prints. Plain dicts of JSON types only."""

from __future__ import annotations

import math

from interptest.check import BehaviorResult

OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed", "error")


def map_key(component: str, direction: str) -> str:
    return component if direction == "denoise" else f"{component}:noise"


def _number(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def map_entries(result: BehaviorResult) -> dict:
    """The behavior's patching maps as JSON: key -> {component, direction, values, layers, positions|heads}."""
    maps = {}
    for (component, direction), patch_map in result.maps.items():
        values = [[_number(v) for v in row] for row in patch_map.values.tolist()]
        entry = {"component": component, "direction": direction, "values": values,
                 "layers": list(range(len(values)))}
        entry["heads" if component == "heads" else "positions"] = list(range(len(values[0]) if values else 0))
        maps[map_key(component, direction)] = entry
    return maps


def result_record(result: BehaviorResult, nodeid: str) -> dict:
    """Everything a report needs about one behavior's run; ``outcome`` is filled in by the caller,
    which knows about skip and xfail."""
    maps = map_entries(result)
    claims = []
    for check in result.checks:
        claim = check.claim
        on_map = check.patch_map is not None
        claims.append({
            "text": check.text, "passed": check.passed, "value": _number(check.value), "detail": check.detail,
            "map": map_key(claim.component, claim.direction) if on_map else None,
            "cells": [list(cell[:2]) for cell in check.bound.cells] if on_map else [],
            "failing_cells": [list(cell[:2]) for cell in check.failing_cells] if on_map else [],
        })
    behavior = result.behavior
    return {
        "nodeid": nodeid, "model": result.model_name, "prompt": behavior.prompt, "corrupt": behavior.corrupt,
        "tokens": list(result.tokens), "expect": result.expect, "foil": result.foil,
        "clean_metric": _number(result.clean_metric), "corrupt_metric": _number(result.corrupt_metric),
        "outcome": "passed" if result.passed else "failed",
        "clean_top": [{"token": p.token, "prob": p.prob} for p in result.clean_top],
        "corrupt_top": [{"token": p.token, "prob": p.prob} for p in result.corrupt_top],
        "claims": claims, "maps": maps, "baseline": result.baseline,
        "suggestion": result.suggestion,
    }


def skipped_record(behavior, nodeid: str, model: str, outcome: str) -> dict:
    """A behavior that did not run (skipped, or an error before it could)."""
    return {"nodeid": nodeid, "model": model, "prompt": behavior.prompt, "corrupt": behavior.corrupt, "tokens": [],
            "expect": behavior.expect, "foil": behavior.foil, "clean_metric": None, "corrupt_metric": None,
            "outcome": outcome, "clean_top": [], "corrupt_top": [],
            "claims": [{"text": c.text, "passed": None, "value": None, "detail": "", "map": None, "cells": [],
                        "failing_cells": []} for c in behavior.claims],
            "maps": {}, "baseline": None}


def summary_line(record: dict) -> str:
    def fmt(value):
        return "n/a" if value is None else f"{value:.2f}"

    claims = [c for c in record["claims"] if c["passed"] is not None]
    passed = sum(1 for c in claims if c["passed"])
    return (f"{record['outcome'].upper():8} {record['nodeid']}  [{record['model']}]  m_clean {fmt(record['clean_metric'])}"
            f"  m_corrupt {fmt(record['corrupt_metric'])}  claims {passed}/{len(claims)}")
