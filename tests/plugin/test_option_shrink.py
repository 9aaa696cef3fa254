"""--interp-shrink-budget / interp_shrink_budget and --interp-no-shrink / interp_no_shrink: shrinking a
failing family claim is bounded per behavior and can be turned off; the flag beats the ini key, and a bad
value is a usage error. (A budget of 0 exercises the stop path without timing anything.)"""

import pytest

FAMILY = """\
behaviors:
  - name: induction-any-name
    template: "Her name was {first} {last}. When {first}"
    expect: " {last}"
    corrupt: {resample: [last]}
    vars:
      first: "@names"
      last: "@surnames"
    samples: 8
    claims:
      - "heads[1.0] recovers >= 0.75"
"""


def test_no_shrink_flag_and_ini_key_leave_the_failure_unshrunk(pytester, write):
    write("behaviors/f.yaml", FAMILY)
    for args, ini in [(("--interp-no-shrink",), None), ((), "[pytest]\ninterp_no_shrink = true\n")]:
        if ini:
            pytester.makeini(ini)
        result = pytester.runpytest(*args)
        result.assert_outcomes(failed=1)
        output = result.stdout.str()
        assert "FAILED  heads[1.0] recovers >= 0.75" in output
        assert "minimal failing instance" not in output and "not shrunk" not in output


def test_a_spent_budget_says_the_claim_was_not_shrunk_the_flag_beats_the_ini_key(pytester, write):
    write("behaviors/f.yaml", FAMILY)
    pytester.makeini("[pytest]\ninterp_shrink_budget = 0\n")
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    assert "not shrunk: the shrink budget (0 s per behavior) was spent" in result.stdout.str()
    result = pytester.runpytest("--interp-shrink-budget=600")
    result.assert_outcomes(failed=1)
    assert "minimal failing instance (shrunk by hypothesis), ready to paste:" in result.stdout.str()


@pytest.mark.parametrize("value", ["soon", "-3"])
def test_bad_budget_is_a_usage_error(pytester, write, value):
    write("behaviors/f.yaml", FAMILY)
    result = pytester.runpytest(f"--interp-shrink-budget={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--interp-shrink-budget: invalid value" in result.stderr.str()
