"""--interp-random-sets / interp_random_sets: how many random node sets a 'beats random' claim is compared
with. It takes effect (the number of sets recorded in results.json), the flag beats the ini key, the
default compares with every other set when there are fewer than 200, and a bad value is a usage error."""

import json

import pytest

# heads[0.2, 1.0] on interptest-tiny (2 layers x 4 heads): 27 other sets of 2 heads.
SPEC = """\
behaviors:
  - name: kcomp
    prompt: "Their names were Iris Jones and James Dixon. When James"
    expect: " Dixon"
    corrupt: "Their names were James Jones and Iris Dixon. When James"
    claims:
      - "heads[0.2, 1.0] together recovers beats random at 0.5"
"""


def random_record(pytester, *args):
    result = pytester.runpytest("--interp-report=out", *args)
    result.assert_outcomes(passed=1)
    record = json.loads((pytester.path / "out" / "results.json").read_text())["behaviors"][0]
    control = record["claims"][1]["random"]
    html = (pytester.path / "out" / "report.html").read_text()
    assert html.count('data-figure="random"') == 1 and f"{len(control['values'])} random node sets" in html
    return control


def test_default_compares_with_every_other_set_when_there_are_fewer_than_200(pytester, write):
    write("behaviors/f.yaml", SPEC)
    control = random_record(pytester)
    assert len(control["values"]) == 27 and control["exhaustive"] is True and control["quantile"] == 0.5


def test_ini_key_and_flag_set_the_number_of_sets_the_flag_wins(pytester, write):
    write("behaviors/f.yaml", SPEC)
    pytester.makeini("[pytest]\ninterp_random_sets = 9\n")
    control = random_record(pytester)
    assert len(control["values"]) == 9 and control["exhaustive"] is False
    control = random_record(pytester, "--interp-random-sets=5")
    assert len(control["values"]) == 5 and control["exhaustive"] is False


@pytest.mark.parametrize("value", ["0", "many", "-3"])
def test_bad_value_is_a_usage_error(pytester, write, value):
    write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest(f"--interp-random-sets={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--interp-random-sets: invalid value '{value}'; expected a positive integer*"])


def test_too_few_sets_for_the_claimed_quantile_are_refused_at_collection(pytester, write):
    write("behaviors/f.yaml", SPEC.replace("at 0.5", "at 0.95"))
    result = pytester.runpytest("--interp-random-sets=1")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            "*behaviors/f.yaml:7: behavior 'kcomp', key 'claims[[]0]': claim 'heads[[]0.2, 1.0] together recovers "
            "beats random at 0.95': --interp-random-sets 1 is too few for 'beats random at 0.95': a 0.95-quantile "
            "needs at least 20 random sets (1/(1 - 0.95)); raise --interp-random-sets or lower the quantile"
        ]
    )
    enough = pytester.runpytest("--interp-random-sets=20")
    assert enough.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) and "too few" not in enough.stdout.str()
