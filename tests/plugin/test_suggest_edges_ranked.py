"""--interp-suggest on a model above SUGGEST_MAX_EDGES (made small here, so that interptest-tiny's 110 edges
take the ranked path of gpt2-small's shape): edges ranked by EAP-IG, the smallest holding top-k, bounded exact
pruning. The suggested claims hold when pasted, a YAML comment says how the circuit was found, and a
deliberately reversed ranking still suggests only claims that hold: the ranking never decides a verdict."""

import yaml

import interptest.claims.circuit as circuit

SPEC = """\
behaviors:
  - name: kc
    prompt: "Their names were Iris Jones and James Dixon. When James"
    expect: " Dixon"
    corrupt: "Their names were James Jones and Iris Dixon. When James"
"""


def _suggest(pytester, write):
    spec = write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest("--interp-suggest", "--interp-threads", "1")
    result.assert_outcomes(passed=1)
    output = result.stdout.str()
    block = output[output.index("# --interp-suggest for 'kc'") :].split("\n=")[0]
    suggested = yaml.safe_load(block)[0]["claims"]
    return spec, block, [c for c in suggested if c.startswith("circuit edges[")]


def _pasted_pass(pytester, spec, claims):
    spec.write_text(SPEC + "    claims:\n" + "".join(f'      - "{c}"\n' for c in claims))
    pytester.runpytest("--interp-threads", "1").assert_outcomes(passed=1)


def test_ranked_edge_circuit_holds_when_pasted(pytester, write, monkeypatch):
    monkeypatch.setattr(circuit, "SUGGEST_MAX_EDGES", 10)
    spec, block, edges = _suggest(pytester, write)
    comment = [line.strip() for line in block.splitlines() if line.strip().startswith("# edge circuit of")]
    assert len(comment) == 1 and "of 110 edges: edges ranked by |EAP-IG|" in comment[0], block
    assert "then exact pruning (" in comment[0]
    assert edges and edges[0].startswith("circuit edges[") and " faithful >= 0." in edges[0]
    assert any(c.endswith("faithful beats random at 0.95") for c in edges)
    _pasted_pass(pytester, spec, edges)


def test_a_reversed_ranking_suggests_only_claims_that_hold(pytester, write, monkeypatch):
    monkeypatch.setattr(circuit, "SUGGEST_MAX_EDGES", 10)
    honest = circuit.edge_ranking

    def reversed_ranking(engine):  # the least attributed edges first
        return [1.0 / (abs(s) + 1e-12) for s in honest(engine)]

    monkeypatch.setattr(circuit, "edge_ranking", reversed_ranking)
    spec, block, edges = _suggest(pytester, write)
    assert "# edge circuit of" in block
    if edges:
        _pasted_pass(pytester, spec, edges)


FAMILY = """\
model: interptest-tiny
behaviors:
  - name: fam
    template: "Her name was {first} {last}. When {first}"
    expect: " {last}"
    corrupt: {resample: [last]}
    vars: {first: [Alex, Mary, John], last: [Hart, Cole, Jones, Baker]}
    samples: 12
    min_pass_rate: 0.5
"""


def test_a_family_with_min_pass_rate_prints_the_comment_and_rejudges_only_claims(pytester, write, monkeypatch):
    """min_pass_rate re-judges every suggestion on the samples; the '#' line is a YAML comment, not a claim."""
    monkeypatch.setattr(circuit, "SUGGEST_MAX_EDGES", 10)
    spec = write("behaviors/f.yaml", FAMILY)
    result = pytester.runpytest("--interp-suggest", "--interp-threads", "1")
    result.assert_outcomes(passed=1)
    output = result.stdout.str()
    block = output[output.index("# --interp-suggest for 'fam'") :].split("\n=")[0]
    assert "\n    # edge circuit of " in block, block
    suggested = yaml.safe_load(block)[0]["claims"]
    assert not any(c.startswith("#") for c in suggested)
    spec.write_text(FAMILY + "    claims:\n" + "".join(f'      - "{c}"\n' for c in suggested))
    pytester.runpytest("--interp-threads", "1").assert_outcomes(passed=1)


def test_the_graph_file_carries_the_attribution_scores(pytester, write, monkeypatch):
    """--interp-suggest-graphs on the ranked path: the file's scores are the EAP-IG scores (the ranking), its
    in-graph edges the circuit, and the claims naming it hold."""
    import json

    monkeypatch.setattr(circuit, "SUGGEST_MAX_EDGES", 10)
    scores = {}
    honest = circuit.edge_ranking

    def recorded(engine):
        values = honest(engine)
        scores.update({e.name: v for e, v in zip(engine.edges(), values)})
        return values

    monkeypatch.setattr(circuit, "edge_ranking", recorded)
    spec = write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest("--interp-suggest", "--interp-suggest-graphs", "behaviors/circuits")
    result.assert_outcomes(passed=1)
    output = result.stdout.str()
    block = output[output.index("# --interp-suggest for 'kc'") :].split("\n=")[0]
    claims = [c for c in yaml.safe_load(block)[0]["claims"] if c.startswith("circuit @circuits/kc.json")]
    graph = json.loads((pytester.path / "behaviors" / "circuits" / "kc.json").read_text())
    assert len(graph["edges"]) == 110 == len(scores)
    for name, value in scores.items():
        assert abs(graph["edges"][name]["score"] - value) <= 1e-6 * max(1.0, abs(value)), name
    kept = sum(edge["in_graph"] for edge in graph["edges"].values())
    assert f"# edge circuit of {kept} of 110 edges" in block
    spec.write_text(SPEC + "    claims:\n" + "".join(f'      - "{c}"\n' for c in claims))
    pytester.runpytest().assert_outcomes(passed=1)
