"""The induction circuit on the shipped model: the circuit behaviors of behaviors/induction.yaml pass with
the numbers their comments state, a false claim of every kind fails (so a broken implementation cannot
pass the suite), and m_∅ under resample is the corrupted run's logit difference, as docs/claims/circuits.md says."""

import os
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import pytest
import torch

import interptest
from interptest.api import check_behavior
from interptest.binding import bind_behavior
from interptest.running import Run
from interptest.spec import load_spec_file

SPEC = Path(__file__).parents[2] / "behaviors" / "induction.yaml"


@pytest.fixture(scope="module")
def model():
    return interptest.load_model("interptest-tiny")


def shipped(name):
    return next(b for b in load_spec_file(SPEC).behaviors if b.name == name)


def values(result):
    return {check.text: check.value for check in result.checks}


# Each shipped claim with the value measured on interptest-tiny (the comments in induction.yaml).
MEASURED = {
    "heads[0.2] recovers >= 0.9": 0.981,
    "heads[0.2] together recovers beats random at 0.95": 0.981,
    "path heads[0.2] -> heads[1.0].k recovers >= 0.5": 0.592,
    "path heads[0.2] -> heads[1.3].k recovers >= 0.15": 0.198,
    "path heads[0.2] -> heads[1.0].q recovers <= 0.05": 0.000,
    "path heads[0.2] -> heads[1.0].v recovers <= 0.05": 0.008,
    "path heads[0.2] -> logits recovers <= 0.05": 0.000,
    "path heads[0.3] -> heads[1.0].k recovers <= 0.05": 0.000,
    "path heads[0.2] -> heads[1.0].k breaks >= 0.5": 0.628,
    "path heads[1.0, 1.2, 1.3] -> logits recovers >= 0.9": 0.997,
    "path heads[1.0, 1.2, 1.3] -> mlp_in[1] recovers >= 0.7": 0.769,
    "circuit heads[0.2, 1.0, 1.2, 1.3] + mlp_out[1] faithful >= 0.95": 0.985,
    "circuit heads[0.2, 0.3, 1.0, 1.2, 1.3] + mlp_out[1] faithful >= 0.9 ablate mean": 1.063,
    "circuit heads[0.2, 1.0, 1.2, 1.3] + mlp_out[1] minimal >= 0.1": 0.148,
    "circuit heads[0.2, 1.0, 1.2, 1.3] + mlp_out[1] faithful beats random at 0.95": 0.985,
    "heads[0.2] breaks >= 0.9": 0.997,
    "heads[0.2] breaks <= 0.6 ablate mean": 0.441,
}


def test_the_shipped_circuit_behavior_passes_with_the_stated_numbers(model):
    result = check_behavior(shipped("induction-circuit"), model, raise_on_failure=False)
    assert result.passed, [(c.text, c.value, c.detail) for c in result.failures]
    got = values(result)
    assert set(MEASURED) <= set(got)
    for text, value in MEASURED.items():
        assert got[text] == pytest.approx(value, abs=2e-3), text
    control = next(c for c in result.checks if c.text.endswith("faithful beats random at 0.95"))
    assert control.figure["exhaustive"] and len(control.figure["values"]) == 139
    assert control.figure["threshold"] == pytest.approx(0.776, abs=2e-3) and max(control.figure["values"]) < 0.86


def test_the_shipped_family_circuit_passes(model):
    result = check_behavior(shipped("induction-circuit-any-name"), model, raise_on_failure=False)
    assert result.passed, [(c.text, c.value, c.detail) for c in result.failures]


# One false claim of every kind and suffix, on the same behavior, with the value that makes it false.
FALSE = {
    # 0.2 feeds the keys, not the queries
    "path heads[0.2] -> heads[1.0].q recovers >= 0.5": 0.000,
    # 0.3 is not the previous-token head
    "path heads[0.3] -> heads[1.0].k recovers >= 0.3": 0.000,
    # and 0.2 has no direct effect
    "path heads[0.2] -> logits breaks >= 0.3": 0.000,
    # without layer 1's MLP the heads carry little of it
    "circuit heads[0.2, 1.0, 1.3] faithful >= 0.5": 0.120,
    # mean ablation needs head 0.3 too
    "circuit heads[0.2, 1.0, 1.2, 1.3] + mlp_out[1] faithful >= 0.9 ablate mean": 0.490,
    # head 0.0 does not matter
    "circuit heads[0.0, 0.2, 1.0, 1.2, 1.3] + mlp_out[1] minimal >= 0.05": 0.015,
    # any three heads that include 0.2 recover as much: no better than random sets
    "heads[0.2, 1.0, 1.3] together recovers beats random at 0.95": 0.989,
    # a circuit without 0.2 is no better than random ones
    "circuit heads[1.0, 1.1, 1.2, 1.3] + mlp_out[1] faithful beats random at 0.5": None,
    # mean-ablating 0.2 does not break the behavior the way resampling does
    "heads[0.2] breaks >= 0.9 ablate mean": 0.441,
    "heads[0.2] breaks >= 0.9 ablate zero": 0.483,
}


def test_a_false_claim_of_every_kind_fails(model):
    spec = shipped("induction-circuit")
    entry = {
        "name": "false-claims",
        "prompt": spec.prompt,
        "expect": spec.expect,
        "corrupt": spec.corrupt,
        "foil": spec.foil,
        "reference": list(spec.reference),
        "claims": list(FALSE),
    }
    result = check_behavior(entry, model, raise_on_failure=False)
    checks = {c.text: c for c in result.checks}
    for text, value in FALSE.items():
        assert not checks[text].passed, (text, checks[text].value, checks[text].detail)
        if value is not None:
            assert checks[text].value == pytest.approx(value, abs=2e-3), text
    assert (
        "nodes that do not matter (>= 0.05 fails): head 0.0"
        in checks["circuit heads[0.0, 0.2, 1.0, 1.2, 1.3] + mlp_out[1] minimal >= 0.05"].detail
    )


def test_under_resample_m_empty_is_m_corrupt_on_the_shipped_prompt(model):
    bound = bind_behavior(shipped("induction-circuit"), model, "interptest-tiny")
    with torch.inference_mode():
        engine = Run(bound).circuits()
        assert float(engine.all_ablated("resample")[0]) == pytest.approx(float(engine.metrics("corrupt")[0]), abs=1e-5)


# ---------------------------------------------------------------------------------------------
# The same circuit as edges: behaviors/circuits/induction.json (an EAP-IG graph file) and inline edges

MEASURED_EDGES = {
    "circuit @circuits/induction.json faithful >= 0.9": 0.951,
    "circuit @circuits/induction.json minimal >= 0.01": 0.019,
    "circuit @circuits/induction.json faithful beats random at 0.95": 0.951,
    "circuit top 20 edges of @circuits/induction.json faithful >= 0.95": 0.969,
    "circuit edges[input->a0.h2<v>, a0.h2->a1.h0<k>, a1.h0->m1, a1.h0->logits, m1->logits] faithful >= 0.5": 0.544,
}

FALSE_EDGES = {
    # the edges were found under resampling; mean-ablating every other edge leaves little
    "circuit @circuits/induction.json faithful >= 0.9 ablate mean": 0.134,
    "circuit @circuits/induction.json faithful >= 0.9 ablate zero": 0.206,
    # not every edge matters by 0.05 (a1.h2->logits: 0.019)
    "circuit @circuits/induction.json minimal >= 0.05": 0.019,
    # the five highest-scored edges are not enough
    "circuit top 5 edges of @circuits/induction.json faithful >= 0.9": 0.391,
    # head 0.2 reaches the induction head 1.0 through its key, not its query
    "circuit edges[input->a0.h2<v>, a0.h2->a1.h0<q>, a1.h0->m1, a1.h0->logits, m1->logits] faithful >= 0.5": None,
    # an edge set without the previous-token head is no better than random ones
    "circuit edges[input->a1.h0<k>, a1.h0->logits, m1->logits] faithful beats random at 0.95": None,
}


def test_the_shipped_edge_circuit_passes_with_the_stated_numbers(model):
    result = check_behavior(shipped("induction-circuit-edges"), model, raise_on_failure=False)
    assert result.passed, [(c.text, c.value, c.detail) for c in result.failures]
    got = values(result)
    for text, value in MEASURED_EDGES.items():
        assert got[text] == pytest.approx(value, abs=2e-3), text


def test_a_false_edge_claim_of_every_kind_fails(model, tmp_path):
    spec = shipped("induction-circuit-edges")
    (tmp_path / "circuits").mkdir()
    (tmp_path / "circuits" / "induction.json").write_text((SPEC.parent / "circuits" / "induction.json").read_text())
    entry = {
        "name": "false-edge-claims",
        "prompt": spec.prompt,
        "expect": spec.expect,
        "corrupt": spec.corrupt,
        "foil": spec.foil,
        "reference": list(shipped("induction-circuit").reference),
        "claims": list(FALSE_EDGES),
    }
    import yaml

    from interptest.spec import parse_spec

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"behaviors": [entry]}, sort_keys=False))
    result = check_behavior(parse_spec(path.read_text(), str(path)).behaviors[0], model, raise_on_failure=False)
    checks = {c.text: c for c in result.checks}
    for text, value in FALSE_EDGES.items():
        assert not checks[text].passed, (text, checks[text].value, checks[text].detail)
        if value is not None:
            assert checks[text].value == pytest.approx(value, abs=2e-3), text


def test_the_shipped_edge_circuit_equals_the_one_forward_reference(model):
    """The graph file's faithfulness on interptest-tiny, from test_edges' reference (one forward at a time)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
    from test_edges import ablated_values, reference_metric

    from interptest.graphs import Edge, Receiver, parse_edge, read_graph

    spec = shipped("induction-circuit-edges")
    names = read_graph(SPEC.parent / "circuits" / "induction.json").in_graph()
    L = model.cfg.n_layers
    edges = []
    for name in names:
        edge = parse_edge(name)
        edges.append(Edge(edge.sender, Receiver("logits", L)) if edge.receiver.kind == "logits" else edge)
    ids, corrupt = model.to_tokens(spec.prompt), model.to_tokens(spec.corrupt)
    e = int(model.to_tokens(" Dixon", prepend_bos=False)[0, 0])
    f = int(model.to_tokens(" Jones", prepend_bos=False)[0, 0])
    abl = ablated_values(model, "resample", 0, ids, corrupt, None)
    m_c, m_empty = reference_metric(model, ids, e, f, edges, abl), reference_metric(model, ids, e, f, [], abl)
    with torch.inference_mode():
        logits = model(ids)[0, -1]
    want = (m_c - m_empty) / (float(logits[e] - logits[f]) - m_empty)
    got = values(check_behavior(shipped("induction-circuit-edges"), model, raise_on_failure=False))
    assert got["circuit @circuits/induction.json faithful >= 0.9"] == pytest.approx(want, abs=1e-5)
