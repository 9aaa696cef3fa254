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
