"""Lexicons across models: paired variables drawn together (country ↔ capital) and entries that are not
single tokens dropped with a note (``single_token: drop``) instead of failing collection."""

import random

import pytest

import tinymodels
from interptest import families
from interptest.api import check_behavior
from interptest.binding import bind_behavior
from interptest.errors import SpecError
from interptest.spec import parse_behavior, parse_spec

PAIRS = {
    "name": "cap",
    "template": "The capital of {country} is",
    "expect": " {capital}",
    "corrupt": {"resample": ["country"]},
    "vars": {"country, capital": [["France", "Paris"], ["Japan", "Tokyo"], ["Spain", "Madrid"]]},
    "samples": 3,
}


def test_paired_variables_are_drawn_and_resampled_as_rows():
    behavior = parse_behavior(PAIRS)
    assert behavior.family.variables == {
        "country": ("France", "Japan", "Spain"),
        "capital": ("Paris", "Tokyo", "Madrid"),
    }
    rows = {("France", "Paris"), ("Japan", "Tokyo"), ("Spain", "Madrid")}
    for seed in range(20):
        for sample in families.expand(behavior, seed):
            assert (sample.values["country"], sample.values["capital"]) in rows
            assert sample.expect == f" {sample.values['capital']}"
            other = (sample.corrupt_values["country"], sample.corrupt_values["capital"])
            assert other in rows and other[0] != sample.values["country"]
            assert sample.corrupt == f"The capital of {other[0]} is"
    counts = {}
    for seed in range(300):
        (a,) = families.draw_assignments(behavior.family.units, 1, random.Random(seed))
        counts[a["country"]] = counts.get(a["country"], 0) + 1
    assert set(counts) == {"France", "Japan", "Spain"} and min(counts.values()) > 70


def test_paired_variables_from_the_shipped_two_column_lexicon():
    spec = parse_spec(
        'behaviors:\n  - name: c\n    template: "The capital of {country} is"\n'
        '    expect: " {capital}"\n    vars:\n      country, capital: "@country_capitals"\n'
        "    samples: 5\n",
        "behaviors/f.yaml",
    )
    family = spec.behaviors[0].family
    assert family.variables["country"][:2] == ("France", "Spain") and family.variables["capital"][:2] == (
        "Paris",
        "Madrid",
    )
    assert len(family.units) == 1 and len(family.units[0][1]) == len(family.variables["country"]) == 52


@pytest.mark.parametrize(
    "vars_, message",
    [
        ({"country, capital": ["France", "Paris"]}, "paired variables country, capital need rows"),
        (
            {"country, capital": [["France", "Paris", "Seine"]]},
            "every row of country, capital needs 2 non-empty values",
        ),
        (
            {"country, capitol": [["France", "Paris"]]},
            "variable 'capitol' in 'vars' is not used by the template, expect",
        ),
        ({"country": ["France"], "country, capital": [["France", "Paris"]]}, "a variable is given values twice"),
    ],
)
def test_bad_pairs_are_spec_errors(vars_, message):
    with pytest.raises(SpecError, match=message):
        parse_behavior({**PAIRS, "vars": vars_, "samples": 1, "corrupt": "The capital of Peru is"})


def test_pairs_run_on_the_reference_model():
    result = check_behavior({**PAIRS, "claims": ["resid_pre[0, -2] recovers >= 0.8"]}, "interptest-tiny")
    assert result.samples == 3 and result.passed


DROP = {
    "name": "d",
    "template": "The {a} sat on the",
    "expect": " the",
    "foil": " on",
    "vars": {"a": ["dog", "Bob", "cat", "mat"]},
    "samples": 2,
}


def test_multi_token_values_fail_collection_unless_dropped():
    model = tinymodels.tiny_model("gpt2")  # its small vocabulary splits ' cat' and ' mat'
    with pytest.raises(
        SpecError,
        match=r"key 'vars.a': 2 value\(s\) of \{a\} in the list are not single tokens "
        r"for this model: 'cat' → \[.*\], 'mat' → \[.*\] \(or set 'single_token: "
        r"drop' to leave them out\)",
    ):
        bind_behavior(parse_behavior(DROP), model)
    bound = bind_behavior(parse_behavior({**DROP, "single_token": "drop"}), model)
    assert {s.values["a"] for s in bound.samples} == {"dog", "Bob"}
    assert bound.notes == [
        f"dropped 2 value(s) that are not single tokens for this model: 'cat' → "
        f"{[' ', 'c', 'at']}, 'mat' → {[' ', 'm', 'at']}"
    ]
    result = check_behavior({**DROP, "single_token": "drop"}, model, raise_on_failure=False)
    assert "dropped 2 value(s)" in result.checks[0].detail
    with pytest.raises(
        SpecError,
        match=r"'samples' is 3 but the variables allow only 2 distinct combinations .* "
        r"after dropping 2 value\(s\) that are not single tokens",
    ):
        bind_behavior(parse_behavior({**DROP, "single_token": "drop", "samples": 3}), model)
    with pytest.raises(SpecError, match="key 'single_token': expected one of error, drop, got 'skip'"):
        parse_behavior({**DROP, "single_token": "skip"})
