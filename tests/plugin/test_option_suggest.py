"""--interp-suggest prints claims that hold, as YAML; it never writes the spec."""

import yaml

SPEC = """\
behaviors:
  - name: alex-hart
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Hart"
    corrupt: "Her name was Alex Cole. When Alex"
"""


def test_suggested_claims_hold_when_pasted(pytester, write):
    spec = write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest("--interp-suggest")
    result.assert_outcomes(passed=1)
    assert spec.read_text() == SPEC
    output = result.stdout.str()
    block = output[output.index("# --interp-suggest for 'alex-hart'"):].split("\n=")[0]
    suggested = yaml.safe_load(block)[0]["claims"]
    assert any(c.startswith("resid_pre[") for c in suggested) and "resid_pre[elsewhere]" in " ".join(suggested)
    spec.write_text(SPEC + "    claims:\n" + "".join(f'      - "{c}"\n' for c in suggested))
    pytester.runpytest().assert_outcomes(passed=1)
