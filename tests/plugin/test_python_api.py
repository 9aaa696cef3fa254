"""Mixing YAML and Python: the interp_model fixture and interptest.check_behavior."""


def test_fixture_and_check_behavior_in_a_py_test(pytester, write):
    write(
        "test_api.py",
        """\
        import pytest
        import interptest

        ALEX = {
            "name": "alex-hart",
            "prompt": "Her name was Alex Hart. When Alex",
            "expect": " Hart",
            "corrupt": "Her name was Alex Cole. When Alex",
            "claims": ["resid_pre[0, ' Hart'] recovers >= 0.9", "prob(' Hart') >= 0.5"],
        }

        def test_passes(interp_model):
            result = interptest.check_behavior(ALEX, interp_model)
            assert result.passed and len(result.checks) == 3

        def test_fails_with_the_report(interp_model):
            interptest.check_behavior({**ALEX, "claims": ["prob(' Hart') <= 0.01"]}, interp_model)

        def test_bad_dict(interp_model):
            with pytest.raises(interptest.SpecError, match="behavior 'x', key 'promt': unknown key 'promt'"):
                interptest.check_behavior({"name": "x", "promt": "a", "expect": "b"}, interp_model)
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["*BehaviorFailed: behavior 'alex-hart'*1 of 2 checks failed*", "*FAILED  prob(' Hart') <= 0.01*"]
    )
