"""What claim kinds ask the report to draw: attention patterns, direct-effect bars, the logit lens.
Pure report rendering from JSON records; no model."""

import pytest

from interptest.report import render_html

pytestmark = pytest.mark.torchfree


def record(*claims):
    return {
        "nodeid": "behaviors/f.yaml::b",
        "model": "m",
        "outcome": "passed",
        "prompt": "a b",
        "corrupt": None,
        "samples": 1,
        "tokens": ["<bos>", "a", " b"],
        "expect": " c",
        "foil": " d",
        "clean_metric": 2.0,
        "corrupt_metric": None,
        "clean_top": [],
        "corrupt_top": [],
        "claims": list(claims),
        "maps": {},
        "baseline": None,
        "suggestion": None,
    }


def claim(text, figure):
    return {
        "text": text,
        "kind": "x",
        "passed": True,
        "value": 1.0,
        "detail": "",
        "map": None,
        "cells": [],
        "failing_cells": [],
        "figure": figure,
    }


ATTENTION = {
    "type": "attention",
    "run": "clean",
    "query": 2,
    "key": 1,
    "tokens": ["<bos>", "a", " b"],
    "heads": {"1.0": [[1.0, 0.0, 0.0], [0.4, 0.6, 0.0], [0.1, 0.7, 0.2]]},
}
DIRECT = {
    "type": "direct",
    "relative": False,
    "heads": [[0.5, -0.25], [1.5, 0.0]],
    "mlp_out": [0.1, 0.2],
    "claimed": [[1, 0]],
}


def lens(claimed):
    return {
        "type": "lens",
        "position": 2,
        "rows": [
            {"stream": "resid_pre[0]", "rank": 9.0, "prob": 0.01, "logit_diff": -1.0, "claimed": claimed == 0},
            {"stream": "resid_post[1]", "rank": 1.0, "prob": 0.9, "logit_diff": 2.0, "claimed": claimed == 1},
        ],
    }


def test_attention_pattern_is_a_query_by_key_table_with_the_claimed_cell_and_masked_future():
    page = render_html([record(claim("attn[1.0] from -1 to 1 >= 0.5", ATTENTION))], version="v", created="c")
    assert 'data-figure="attention"' in page and 'data-head="1.0"' in page
    assert 'class="claimed" style="background:' in page and 'title="query 2 → key 1: 0.700">0.70</td>' in page
    assert page.count('title="after the query: masked"') == 3


def test_direct_effects_and_lens_shared_by_several_claims_are_drawn_once():
    page = render_html(
        [
            record(
                claim("direct(heads[1.0]) >= 1", DIRECT),
                claim("direct(heads[0.1]) <= 0", {**DIRECT, "claimed": [[0, 1]]}),
                claim("lens(resid_pre[0], -1) rank(' c') >= 5", lens(0)),
                claim("lens(resid_post[1], -1) rank(' c') <= 1", lens(1)),
            )
        ],
        version="v",
        created="c",
    )
    assert page.count('data-figure="direct"') == 1 and page.count('data-figure="lens"') == 1
    assert "direct(heads[1.0]) &gt;= 1; direct(heads[0.1]) &lt;= 0" in page
    assert page.count('<tr class="claimed"><th>L1H0</th>') == 1 and '<tr class="claimed"><th>L0H1</th>' in page
    assert 'class="bar neg"' in page and "width:100.0%" in page  # bars scaled to the largest |effect|
    assert page.count('<tr class="claimed"><th><code>resid_') == 2  # both claimed lens rows marked
