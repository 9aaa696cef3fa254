"""--junitxml: each behavior's key numbers as JUnit user properties, for CI dashboards (issue 13,
"What must hold" 5): model, m_clean, m_corrupt, and every check's verdict and value."""

import xml.etree.ElementTree as ET

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
    claims: ["prob(' Paris') >= 0.5"]
"""


def properties(path) -> dict:
    cases = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        cases[case.get("name")] = {p.get("name"): p.get("value") for p in case.iter("property")}
    return cases


def check(cases: dict) -> None:
    alex = cases["alex-hart"]
    assert alex["interp_model"] == "interptest-tiny" and alex["interp_outcome"] == "failed"
    assert 18 < float(alex["m_clean"]) < 20 and -21 < float(alex["m_corrupt"]) < -19
    verdict, value = alex["check: top-1 prediction is ' Hart'"].split()
    assert verdict == "passed" and 0.99 < float(value) <= 1
    verdict, value = alex["claim: resid_pre[0, ' Hart'] recovers >= 0.9"].split()
    assert verdict == "passed" and abs(float(value) - 1) < 1e-3
    verdict, value = alex["claim: prob(' Cole') >= 0.5"].split()
    assert verdict == "failed" and float(value) < 0.01
    later = cases["later"]
    assert later["interp_outcome"] == "skipped" and later["m_clean"] == ""
    assert later["claim: prob(' Paris') >= 0.5"] == "not run"


def test_junit_xml_carries_the_numbers(pytester, write):
    write("behaviors/f.yaml", SPEC)
    pytester.runpytest("--junitxml=out.xml").assert_outcomes(failed=1, skipped=1)
    check(properties(pytester.path / "out.xml"))


def test_junit_xml_carries_the_numbers_under_xdist(pytester, write):
    write("behaviors/f.yaml", SPEC)
    pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", "--junitxml=out.xml").assert_outcomes(
        failed=1, skipped=1
    )
    check(properties(pytester.path / "out.xml"))
