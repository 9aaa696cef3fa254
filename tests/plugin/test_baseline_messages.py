"""Baseline notes that say what happened (issue 13, item 4): a deselected behavior's entry is not
"unused", a prompt whose token count changed is a changed shape to re-record, not moved cells, and a
small move is printed with the digits that show it."""

import json

from test_option_baseline import SPEC  # the same two behaviors

from interptest.baselines import compare


def _stored(pytester) -> tuple:
    path = pytester.path / "behaviors" / "__baselines__" / "f.json"
    return path, json.loads(path.read_text())["behaviors"]


def test_deselected_behaviors_are_not_unused_entries(pytester, write):
    write("behaviors/f.yaml", SPEC)
    pytester.runpytest("--interp-baseline-update").assert_outcomes(passed=2)
    for selection in (["-k", "alex"], ["behaviors/f.yaml::france"]):
        result = pytester.runpytest(*selection)
        result.assert_outcomes(passed=1)
        assert "unused baseline entries" not in result.stdout.str(), selection
    path, stored = _stored(pytester)
    stored["renamed-away"] = stored["france"]
    path.write_text(json.dumps({"format": 1, "behaviors": stored}))
    result = pytester.runpytest("-k", "alex")
    result.stdout.fnmatch_lines(
        ["*unused baseline entries in *f.json: renamed-away (no behavior of f.yaml has that name)*"]
    )
    assert "france" not in result.stdout.str().split("unused baseline entries")[1].splitlines()[0]


def test_a_prompt_of_another_length_is_a_changed_shape_to_re_record(pytester, write):
    spec = write("behaviors/f.yaml", SPEC)
    pytester.runpytest("--interp-baseline-update").assert_outcomes(passed=2)
    spec.write_text(
        SPEC.replace('"The capital of France is"', '"The capital city of France is"').replace(
            '"The capital of Spain is"', '"The capital city of Spain is"'
        )
    )
    result = pytester.runpytest("-k", "france")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*FAILED  claims and maps match the baseline*resid_pre: the map's shape changed from 2×6 to 2×7 "
            "(the prompt now has 7 token positions, the baseline 6: its token count changed), "
            "so its cells cannot be compared; re-record the baseline with "
            "--interp-baseline-update*"
        ]
    )
    assert "cell(s) moved" not in result.stdout.str()


def test_small_moves_print_the_digits_that_show_them(pytester, write):
    write("behaviors/f.yaml", SPEC)
    pytester.runpytest("--interp-baseline-update", "-k", "alex").assert_outcomes(passed=1)
    path, stored = _stored(pytester)
    cell = stored["alex-hart"]["maps"]["resid_pre"]["values"][0][1]  # L0 'Her': 0.00 on interptest-tiny
    stored["alex-hart"]["maps"]["resid_pre"]["values"][0][1] = cell + 0.004
    path.write_text(json.dumps({"format": 1, "behaviors": stored}))
    result = pytester.runpytest("-k", "alex", "--interp-baseline-tolerance=0.001")
    result.assert_outcomes(failed=1)
    # two decimals would print the same number twice ("0.00 → 0.00"); three show the move
    result.stdout.fnmatch_lines(
        [f"*resid_pre: 1 cell(s) moved by more than 0.001: L0 pos 1 'Her': {cell + 0.004:.3f} → {cell:.3f}*"]
    )


def test_compare_formats():
    old = {"component": "resid_pre", "values": [[0.5, 0.0101], [1.0, 0.2]]}
    new = {"component": "resid_pre", "values": [[0.5, 0.0149], [1.0, 0.2]]}
    passed, detail = compare({"maps": {"resid_pre": old}}, {"resid_pre": new}, ["a", "b"], 0.001)
    assert not passed and detail == "resid_pre: 1 cell(s) moved by more than 0.001: L0 pos 1 'b': 0.010 → 0.015"
    heads_old = {"component": "heads", "values": [[0.1, 0.2]]}
    heads_new = {"component": "heads", "values": [[0.1, 0.2, 0.3]]}
    passed, detail = compare({"maps": {"heads": heads_old}}, {"heads": heads_new}, [], 0.05)
    assert not passed and detail == (
        "heads: the map's shape changed from 1×2 to 1×3 (the model has 3 heads per layer, "
        "the baseline 2), so its cells cannot be compared; re-record the baseline with "
        "--interp-baseline-update"
    )
