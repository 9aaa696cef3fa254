"""--interp-report DIR: results.json and report.html, merged across xdist workers."""

import json

SPEC = """\
behaviors:
  - name: alex-hart
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Hart"
    corrupt: "Her name was Alex Cole. When Alex"
    claims:
      - "resid_pre[0, ' Hart'] recovers >= 0.9"
      - "heads[0.0] recovers >= 5"
  - name: france
    prompt: "The capital of France is"
    expect: " Paris"
  - name: later
    skip: "not yet"
    prompt: "The capital of France is"
    expect: " Paris"
"""


def check_report(directory):
    data = json.loads((directory / "results.json").read_text())
    assert set(data) == {"format", "interptest_version", "created", "behaviors"} and data["format"] == 1
    records = {r["nodeid"]: r for r in data["behaviors"]}
    assert set(records) == {"behaviors/f.yaml::alex-hart", "behaviors/f.yaml::france", "behaviors/f.yaml::later"}
    alex = records["behaviors/f.yaml::alex-hart"]
    assert alex["outcome"] == "failed" and alex["model"] == "interptest-tiny" and alex["foil"] == " Cole"
    assert alex["tokens"][-1] == " Alex" and len(alex["maps"]["resid_pre"]["values"]) == len(
        alex["maps"]["resid_pre"]["layers"]
    )
    assert alex["maps"]["resid_pre"]["direction"] == "denoise" and "heads" in alex["maps"]["heads"]
    assert [c["passed"] for c in alex["claims"]] == [True, True, False]
    assert records["behaviors/f.yaml::later"]["outcome"] == "skipped"
    html = (directory / "report.html").read_text()
    assert html.count('class="heatmap"') == 2 and "alex-hart" in html


def test_report_written(pytester, write):
    write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest("--interp-report=out")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*interptest report written to out*"])
    check_report(pytester.path / "out")


def test_report_from_ini_and_merged_across_xdist_workers(pytester, write):
    write("behaviors/f.yaml", SPEC)
    pytester.makeini("[pytest]\ninterp_report = merged\n")
    pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider").assert_outcomes(passed=1, failed=1, skipped=1)
    check_report(pytester.path / "merged")


def test_report_written_without_the_terminal_reporter(pytester, write):
    write("behaviors/f.yaml", SPEC)
    pytester.runpytest_subprocess("--interp-report=quiet", "-p", "no:terminal", "-p", "no:cacheprovider")
    check_report(pytester.path / "quiet")


def test_a_report_path_naming_an_existing_file_is_refused_before_any_test_runs(pytester, write, alex_hart):
    write("behaviors/f.yaml", alex_hart)
    (pytester.path / "taken").write_text("mine")
    result = pytester.runpytest("--interp-report=taken")
    assert result.ret == 4  # a usage error, at the start
    result.stderr.fnmatch_lines(
        ["*--interp-report: 'taken' is an existing file; the report is a directory (results.json and report.html*"]
    )
    assert "passed" not in result.stdout.str() and (pytester.path / "taken").read_text() == "mine"
