"""The JSON Schema of spec files: built from the parser's own key tables, shipped in the package, and
as strict as the parser about unknown, missing and mistyped keys. No model, no torch."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from interptest import schema
from interptest.errors import SpecError
from interptest.spec import parse_spec

pytestmark = pytest.mark.torchfree

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = jsonschema.Draft202012Validator(schema.build_schema())


def test_the_shipped_schema_is_the_generated_one():
    assert json.loads(schema.SCHEMA_FILE.read_text()) == schema.build_schema()
    jsonschema.Draft202012Validator.check_schema(schema.build_schema())


@pytest.mark.parametrize("path", sorted((ROOT / "behaviors").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_is_valid(path):
    VALIDATOR.validate(yaml.safe_load(path.read_text()))


GOOD = {
    "behaviors": [
        {
            "name": "b",
            "prompt": "x y",
            "expect": " z",
            "corrupt": "x w",
            "claims": ["prob(' z') > 0", {"claim": "logit_diff > 0"}],  # min_pass_rate: families only
        }
    ]
}


@pytest.mark.parametrize(
    "change, parser_message",
    [
        (lambda d: d["behaviors"][0].update(expcet=" z"), "unknown key 'expcet'"),
        (lambda d: d.update(behaviours=[]), "unknown key 'behaviours'"),
        (lambda d: d.pop("behaviors"), "missing required key 'behaviors'"),
        (lambda d: d["behaviors"][0].pop("name"), "is missing required key 'name'"),
        (lambda d: d["behaviors"][0].update(samples="many"), "expected an integer"),
        (lambda d: d["behaviors"][0].update(min_effect="big"), "expected a number"),
        (lambda d: d["behaviors"][0].update(claims="prob(' z') > 0"), "expected a list of claims"),
        (lambda d: d["behaviors"][0].update(name="a b"), "invalid name 'a b'"),
        (lambda d: d["behaviors"][0].update(template="x {v}"), "give either 'prompt'"),
        (lambda d: d["behaviors"][0].update(corrupt={"swap": {}}), "expected one of {replace"),
        (lambda d: d["behaviors"][0].update(if_model_unavailable="ignore"), "expected one of error, skip"),
        (
            lambda d: d["behaviors"][0].update(claims=[{"claim": "logit_diff > 0", "rate": 1}]),
            "a claim given as a mapping needs",
        ),
    ],
)
def test_the_schema_rejects_what_the_parser_rejects(change, parser_message):
    data = json.loads(json.dumps(GOOD))
    VALIDATOR.validate(data)
    parse_spec(yaml.safe_dump(data))
    change(data)
    assert not VALIDATOR.is_valid(data)
    with pytest.raises(SpecError, match=parser_message.replace("{", r"\{").replace("(", r"\(")):
        parse_spec(yaml.safe_dump(data))


def test_the_schema_accepts_top_level_x_keys_as_the_parser_does():
    data = {**json.loads(json.dumps(GOOD)), "x-base": {"prompt": "x y"}}
    VALIDATOR.validate(data)
    parse_spec(yaml.safe_dump(data))
    data["behaviors"][0]["x-note"] = 1
    assert not VALIDATOR.is_valid(data)
