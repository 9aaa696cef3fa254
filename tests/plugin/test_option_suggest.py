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
    block = output[output.index("# --interp-suggest for 'alex-hart'") :].split("\n=")[0]
    suggested = yaml.safe_load(block)[0]["claims"]
    assert any(c.startswith("resid_pre[") for c in suggested) and "resid_pre[elsewhere]" in " ".join(suggested)
    spec.write_text(SPEC + "    claims:\n" + "".join(f'      - "{c}"\n' for c in suggested))
    pytester.runpytest().assert_outcomes(passed=1)


FAMILY = """\
behaviors:
  - name: fam
    template: "Her name was {first} {last}. When {first}"
    expect: " {last}"
    corrupt: {resample: [last]}
    vars: {first: [Alex, Mary, John], last: [Hart, Cole, Jones, Baker]}
    samples: 12
"""


def test_families_get_claims_on_their_bootstrap_bounds_that_hold_when_pasted(pytester, write):
    spec = write("behaviors/f.yaml", FAMILY)
    result = pytester.runpytest("--interp-suggest")
    result.assert_outcomes(passed=1)
    output = result.stdout.str()
    assert "# --interp-suggest for 'fam' (interptest-tiny): bounds of the mean over 12 samples" in output
    block = output[output.index("# --interp-suggest for 'fam'") :].split("\n=")[0]
    suggested = yaml.safe_load(block)[0]["claims"]
    assert "resid_pre[:, {last}] recovers >= 0.90" in suggested  # the position as a template variable
    spec.write_text(FAMILY + "    claims:\n" + "".join(f'      - "{c}"\n' for c in suggested))
    pytester.runpytest().assert_outcomes(passed=1)


def test_suggested_bounds_keep_a_margin_to_the_measured_values():
    from interptest.suggest import bound_at_least, bound_at_most

    assert [bound_at_least(v) for v in (1.0, 0.992, 0.95, 0.9)] == [0.95, 0.9, 0.9, 0.85]
    assert [bound_at_most(v) for v in (0.0, 0.008, 0.05, 0.51)] == [0.05, 0.1, 0.1, 0.6]
