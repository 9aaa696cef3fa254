"""The terminal summary and the report count claims alike (issue 13, item 5): the user's claims apart
from the implicit checks, a behavior that did not run as "–/N"; -v shows each check's measured value;
a bad spec given to check_behavior shows the user's own line, not interptest's source."""

import json

SPEC = """\
behaviors:
  - name: alex-hart
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Hart"
    corrupt: "Her name was Alex Cole. When Alex"
    claims:
      - "resid_pre[0, ' Hart'] recovers >= 0.9"
      - "prob(' Cole') >= 0.5"
  - name: later
    skip: "not yet"
    prompt: "The capital of France is"
    expect: " Paris"
    claims: ["prob(' Paris') >= 0.5", "rank(' Paris') <= 1", "logit(' Paris') >= 1"]
"""


def test_terminal_and_report_agree_and_implicit_checks_are_counted_apart(pytester, write):
    write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest("--interp-report=out")
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "FAILED   behaviors/f.yaml::alex-hart  *  claims 1/2 + implicit 1/1 (top-1)",
            "SKIPPED  behaviors/f.yaml::later  *  claims –/3 (skipped)",
        ]
    )
    html = (pytester.path / "out" / "report.html").read_text()
    assert ">1/2 + implicit 1/1 (top-1)</td>" in html and ">–/3 (skipped)</td>" in html
    assert "0/3" not in html and "0/0" not in result.stdout.str()


def test_baseline_check_is_implicit_too(pytester, write):
    write("behaviors/f.yaml", SPEC)
    pytester.runpytest("--interp-baseline-update")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        ["FAILED   behaviors/f.yaml::alex-hart  *  claims 1/2 + implicit 2/2 (top-1, baseline)"]
    )


def test_verbose_shows_every_measured_value(pytester, write):
    write("behaviors/f.yaml", SPEC)
    quiet = pytester.runpytest()
    # the interptest section only (with CI=true pytest's short summary repeats whole failure reports)
    assert "measured" not in quiet.stdout.str().split("- interptest -")[1].split("\n=")[0]
    result = pytester.runpytest("-v")
    result.stdout.fnmatch_lines(
        [
            "FAILED   behaviors/f.yaml::alex-hart  *",
            "    passed   top-1 prediction is ' Hart'  measured 0.996  (implicit)",
            # exactly 1.0 prints as '1' (results.format_value's integer rule)
            "    passed   resid_pre[[]0, ' Hart'] recovers >= 0.9  measured 1*",
            "    FAILED   prob(' Cole') >= 0.5  measured 0.00*",
            "SKIPPED  behaviors/f.yaml::later  *",
            "    not run  prob(' Paris') >= 0.5",
        ]
    )


def test_spec_error_in_check_behavior_shows_the_users_line_not_interptest_source(pytester, write):
    write(
        "test_api.py",
        """\
        import interptest

        def test_bad(interp_model):
            interptest.check_behavior({"name": "x", "promt": "a", "expect": "b"}, interp_model)
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            ">       interptest.check_behavior(*",
            "E       interptest.errors.SpecError: <dict>: behavior 'x', key 'promt': unknown key 'promt'*",
            "test_api.py:4: SpecError",
        ]
    )
    failure = output.split("test_bad _")[1].split("short test summary")[0]
    assert "interptest/" not in failure and "def check_behavior" not in failure and "raise" not in failure
    assert len(failure.splitlines()) < 20


def test_results_json_keeps_every_claim(pytester, write):
    write("behaviors/f.yaml", SPEC)
    pytester.runpytest("--interp-report=out")
    records = {r["nodeid"]: r for r in json.loads((pytester.path / "out" / "results.json").read_text())["behaviors"]}
    assert [c["kind"] is None for c in records["behaviors/f.yaml::alex-hart"]["claims"]] == [True, False, False]
    assert [c["passed"] for c in records["behaviors/f.yaml::later"]["claims"]] == [None, None, None]
