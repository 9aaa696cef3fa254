"""--interp-repeat-length / interp_repeat_length: the length of the random sequence that head scores
'on random_repeat' repeat twice; the flag beats the ini key, which beats the default (20)."""

import json

SPEC = """\
behaviors:
  - name: heads
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Hart"
    claims:
      - "induction_score(heads[1.0]) on random_repeat > 0"
"""


def measured(pytester, *args) -> float:
    pytester.runpytest("--interp-report=out", *args).assert_outcomes(passed=1)
    record = json.loads((pytester.path / "out" / "results.json").read_text())["behaviors"][0]
    return record["claims"][1]["value"]


def test_flag_beats_ini_beats_default(pytester, write):
    write("behaviors/f.yaml", SPEC)
    default, twenty = measured(pytester), measured(pytester, "--interp-repeat-length=20")
    assert default == twenty
    five = measured(pytester, "--interp-repeat-length=5")
    assert five != default
    pytester.makeini("[pytest]\ninterp_repeat_length = 5\n")
    assert measured(pytester) == five
    assert measured(pytester, "--interp-repeat-length=20") == default


def test_a_bad_value_is_a_usage_error(pytester, write):
    write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest("--interp-repeat-length=0")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--interp-repeat-length: invalid value '0'; expected a positive integer*"])


def test_a_length_beyond_the_context_is_refused_naming_the_option(pytester, write):
    write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest("--interp-repeat-length=100000")
    output = result.stdout.str()
    assert "Traceback" not in output and "IndexError" not in output
    result.stdout.fnmatch_lines(
        [
            "*behaviors/f.yaml:6: behavior 'heads', key 'claims[[]0]': claim 'induction_score(heads[[]1.0]) on "
            "random_repeat > 0': --interp-repeat-length 100000 is too long for this model: 'on random_repeat' reads "
            "BOS + the sequence twice (200001 tokens) and the model's context holds *; use --interp-repeat-length * "
            "or less"
        ]
    )
