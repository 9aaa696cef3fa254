"""--interp-baseline-update and comparing maps with the stored baseline."""

import json

SPEC = """\
behaviors:
  - name: alex-hart
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Hart"
    corrupt: "Her name was Alex Cole. When Alex"
    claims:
      - "resid_pre[0, ' Hart'] recovers >= 0.9"
  - name: france
    prompt: "The capital of France is"
    expect: " Paris"
    corrupt: "The capital of Spain is"
    claims:
      - "resid_pre[0, ' France'] recovers >= 0.9"
"""


def test_update_then_compare_then_detect_a_moved_cell(pytester, write):
    spec = write("behaviors/f.yaml", SPEC)
    before = spec.read_text()
    result = pytester.runpytest()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*no baselines recorded for 1 spec file(s) (--interp-baseline-update records them)*"])

    result = pytester.runpytest("--interp-baseline-update", "-k", "alex")
    result.stdout.fnmatch_lines(["*baseline updated: *behaviors/__baselines__/f.json (1 behavior(s))*"])
    path = pytester.path / "behaviors" / "__baselines__" / "f.json"
    stored = json.loads(path.read_text())["behaviors"]
    assert set(stored) == {"alex-hart"} and stored["alex-hart"]["model"] == "interptest-tiny"
    pytester.runpytest().stdout.fnmatch_lines(["*no baseline for france in *__baselines__/f.json*"])
    pytester.runpytest("--interp-baseline-update").assert_outcomes(passed=2)
    stored = json.loads(path.read_text())["behaviors"]
    assert set(stored) == {"alex-hart", "france"}
    assert spec.read_text() == before  # the spec itself is never written
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]  # no temporary files left

    pytester.runpytest().assert_outcomes(passed=2)

    stored["alex-hart"]["maps"]["resid_pre"]["values"][0][5] = 0.5  # L0, ' Hart' was 1.00
    stored["ghost"] = stored["france"]
    path.write_text(json.dumps({"format": 1, "behaviors": stored}))
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*FAILED  maps match the baseline (tolerance 0.05)*resid_pre: 1 cell(s) moved by more than 0.05: "
            "L0 pos 5 ' Hart': 0.50 → 1.00*",
            "*unused baseline entries in *f.json: ghost*",
        ]
    )
    pytester.runpytest("--interp-baseline-tolerance=0.6").assert_outcomes(passed=2)


def test_bad_tolerance_is_a_usage_error(pytester, write):
    write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest("--interp-baseline-tolerance=-1")
    result.stderr.fnmatch_lines(["*--interp-baseline-tolerance: invalid value '-1'; expected a number >= 0*"])
