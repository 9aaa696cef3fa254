"""pytest -n 2 gives the same outcomes as a serial run."""

SPEC = """\
behaviors:
  - name: alex
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Hart"
  - name: wrong
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Cole"
  - name: france
    prompt: "The capital of France is"
    expect: " Paris"
  - name: skipped
    skip: "not today"
    prompt: "The capital of France is"
    expect: " Paris"
"""


def test_parallel_outcomes_equal_serial(pytester, write):
    write("behaviors/f.yaml", SPEC)
    serial = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    serial.assert_outcomes(passed=2, failed=1, skipped=1)
    parallel = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    parallel.assert_outcomes(passed=2, failed=1, skipped=1)
    parallel.stdout.fnmatch_lines(["*FAILED behaviors/f.yaml::wrong*"])
