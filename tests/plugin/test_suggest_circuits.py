"""--interp-suggest proposes the smallest faithful node set (greedy pruning) and the strongest paths into
the heads it keeps; pasted into the spec, they hold."""

import yaml

SPEC = """\
behaviors:
  - name: kc
    prompt: "Their names were Iris Jones and James Dixon. When James"
    expect: " Dixon"
    corrupt: "Their names were James Jones and Iris Dixon. When James"
"""


def test_suggested_circuit_and_paths_hold_when_pasted(pytester, write):
    spec = write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest("--interp-suggest")
    result.assert_outcomes(passed=1)
    output = result.stdout.str()
    block = output[output.index("# --interp-suggest for 'kc'") :].split("\n=")[0]
    suggested = yaml.safe_load(block)[0]["claims"]
    circuit = "circuit heads[0.2, 1.0, 1.2, 1.3] + mlp_out[1]"
    assert f"{circuit} faithful >= 0.90" in suggested
    assert f"{circuit} minimal >= 0.05" in suggested
    assert f"{circuit} faithful beats random at 0.95" in suggested
    assert "path heads[0.2] -> heads[1.0].k recovers >= 0.50" in suggested  # K-composition, found
    assert not any(c.startswith("path heads[0.2] -> heads[1.0].q") for c in suggested)
    spec.write_text(SPEC + "    claims:\n" + "".join(f'      - "{c}"\n' for c in suggested))
    pytester.runpytest().assert_outcomes(passed=1)


def test_suggested_edge_circuit_is_written_as_a_graph_file_and_holds_when_pasted(pytester, write):
    import json

    spec = write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest("--interp-suggest", "--interp-suggest-graphs", "behaviors/circuits")
    result.assert_outcomes(passed=1)
    output = result.stdout.str()
    suggested = yaml.safe_load(output[output.index("# --interp-suggest for 'kc'") :].split("\n=")[0])[0]["claims"]
    edges = [c for c in suggested if c.startswith("circuit @circuits/kc.json")]
    assert edges[0].startswith("circuit @circuits/kc.json faithful >= 0.")  # next to the spec file
    assert "circuit @circuits/kc.json faithful beats random at 0.95" in edges
    graph = json.loads((pytester.path / "behaviors" / "circuits" / "kc.json").read_text())
    kept = [name for name, edge in graph["edges"].items() if edge["in_graph"]]
    assert "a0.h2->a1.h0<k>" in kept and "m1->logits" in kept  # K-composition into the induction head
    spec.write_text(SPEC + "    claims:\n" + "".join(f'      - "{c}"\n' for c in edges))
    pytester.runpytest().assert_outcomes(passed=1)
    # kept without --interp-suggest-overwrite: the suggestion then names the edges inline
    (pytester.path / "behaviors" / "circuits" / "kc.json").write_text(json.dumps(graph) + "\n")
    spec.write_text(SPEC)
    output = pytester.runpytest("--interp-suggest", "--interp-suggest-graphs", "behaviors/circuits").stdout.str()
    assert "circuit edges[input->a0.h2<v>, " in output and "circuit @circuits/kc.json" not in output
    assert (pytester.path / "behaviors" / "circuits" / "kc.json").read_text() == json.dumps(graph) + "\n"
