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
            "*FAILED  claims and maps match the baseline (tolerance 0.05)*resid_pre: 1 cell(s) moved by more than "
            "0.05: "
            "L0 pos 5 ' Hart': 0.50 → 1.00*",
            "*unused baseline entries in *f.json: ghost*",
        ]
    )
    pytester.runpytest("--interp-baseline-tolerance=0.6").assert_outcomes(passed=2)


def test_bad_tolerance_is_a_usage_error(pytester, write):
    write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest("--interp-baseline-tolerance=-1")
    result.stderr.fnmatch_lines(["*--interp-baseline-tolerance: invalid value '-1'; expected a number >= 0*"])


FAMILY = """\
behaviors:
  - name: fam
    template: "Her name was {first} {last}. When {first}"
    expect: " {last}"
    corrupt: {resample: [last]}
    vars: {first: [Alex, Mary, John], last: [Hart, Cole, Jones, Baker]}
    samples: 6
    claims:
      - "heads[1.0, 1.2, 1.3] together recovers >= 0.5"
      - "resid_pre[:, {last}] recovers >= 0.5"
"""


def test_every_claim_value_is_guarded_and_another_seed_is_named_as_such(pytester, write):
    write("behaviors/f.yaml", FAMILY)
    pytester.runpytest("--interp-baseline-update").assert_outcomes(passed=1)
    path = pytester.path / "behaviors" / "__baselines__" / "f.json"
    stored = json.loads(path.read_text())["behaviors"]
    entry = stored["fam"]
    assert entry["seed"] == 0 and len(entry["draw"]) == 16 and entry["labels"][5] == "{last}"
    value = entry["claims"]["heads[1.0, 1.2, 1.3] together recovers >= 0.5"]  # the family's bound
    pytester.runpytest().assert_outcomes(passed=1)

    # the claim still passes its threshold, but its value fell: the baseline says so
    entry["claims"]["heads[1.0, 1.2, 1.3] together recovers >= 0.5"] = value + 0.08
    entry["maps"]["resid_pre"]["values"][0][5] += 0.3
    path.write_text(json.dumps({"format": 1, "behaviors": stored}))
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*FAILED  claims and maps match the baseline (tolerance 0.05)*claims: 1 measured value(s) moved by more "
            f"than 0.05: 'heads[[]1.0, 1.2, 1.3] together recovers >= 0.5': {value + 0.08:.2f} → {value:.2f}"
            " | resid_pre: 1 cell(s) moved by more than 0.05: L0 pos 5 {last}: *"
        ]
    )
    # another seed draws other samples: reported as that, not as the mechanism moving
    result = pytester.runpytest("--interp-seed=3")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*this run draws the family's samples with --interp-seed 3, the baseline was recorded with seed 0: "
            "other samples, so values are not compared (rerun with --interp-seed 0, or re-record with "
            "--interp-baseline-update)*"
        ]
    )


def test_a_move_is_shown_with_the_decimals_it_takes_and_never_as_minus_zero():
    from interptest.baselines import _pair

    assert _pair(0.001, -0.001) == "0.001 → -0.001"
    assert _pair(0.0001, -0.0001) == "0.0001 → -0.0001"
    assert _pair(-0.0000001, 0.5) == "0.00 → 0.50"
    assert _pair(0.99, 0.91) == "0.99 → 0.91"
