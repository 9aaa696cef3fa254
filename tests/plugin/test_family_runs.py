"""Prompt families in real pytest runs: statistics, shrinking to a pasteable instance, --interp-seed."""

FAMILY = """\
behaviors:
  - name: induction-any-name
    template: "Her name was {first} {last}. When {first}"
    expect: " {last}"
    corrupt: {resample: [last]}
    vars:
      first: "@names"
      last: "@surnames"
    samples: 24
    claims:
      - "prob(' {last}') >= 0.9"
      - "resid_pre[:, {last}] recovers >= 0.8"
      - "resid_pre[elsewhere] recovers <= 0.1"
      - "heads[1.0] recovers >= 0.75"
"""


def test_family_failure_shows_bound_pass_rate_and_minimal_instance(pytester, write):
    write("behaviors/f.yaml", FAMILY)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "passed  resid_pre[:, {last}] recovers >= 0.8" in output
    assert "FAILED  heads[1.0] recovers >= 0.75" in output
    assert "95% lower bound" in output and "pass rate" in output and "over 24 samples" in output
    assert "minimal failing instance (shrunk by hypothesis), ready to paste:" in output
    import textwrap

    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if "- name: induction-any-name-minimal-4" in line)
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    block = "\n".join(lines[start:end])

    import yaml

    instance = yaml.safe_load(textwrap.dedent(block))[0]
    assert instance["claims"] == ["heads[1.0] recovers >= 0.75"]
    write("behaviors/minimal.yaml", "behaviors:\n" + textwrap.dedent(block) + "\n")
    pytester.runpytest("behaviors/minimal.yaml").assert_outcomes(failed=1)  # the instance fails on its own


def test_same_seed_same_numbers_other_seed_other_samples(pytester, write):
    write("behaviors/f.yaml", FAMILY.replace('      - "heads[1.0] recovers >= 0.75"\n', ""))
    first = pytester.runpytest("--interp-report=a")
    first.assert_outcomes(passed=1)
    pytester.runpytest("--interp-report=b").assert_outcomes(passed=1)
    pytester.runpytest("--interp-report=c", "--interp-seed=7").assert_outcomes(passed=1)
    import json

    def numbers(d):
        record = json.loads((pytester.path / d / "results.json").read_text())["behaviors"][0]
        return record["clean_metric"], [c["value"] for c in record["claims"]]

    assert numbers("a") == numbers("b") and numbers("a") != numbers("c")


def test_lexicon_entries_that_are_not_single_tokens_are_reported(pytester, write):
    write("behaviors/lexicons/people.txt", "Alex\nBartholomewzz\nMary\n")
    write(
        "behaviors/f.yaml", FAMILY.replace('first: "@names"', 'first: "@people"').replace("samples: 24", "samples: 3")
    )
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        [
            "*behavior 'induction-any-name', key 'vars.first': 1 value(s) of {first} in "
            "lexicon @people are not single tokens for this model: 'Bartholomewzz' → *"
        ]
    )
