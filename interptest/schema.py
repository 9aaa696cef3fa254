"""The JSON Schema of a spec file, for editors (``# yaml-language-server: $schema=...``).

Built from the parser's own tables (:data:`interptest.spec.FILE_KEYS`, ``BEHAVIOR_KEYS`` and
``TYPE_SCHEMAS``), so the keys and types an editor checks are the ones collection checks. Model-free
checks that need more than types (claim grammar, token counts, template variables) stay with the
parser. ``python -m interptest schema`` prints it; the package ships it as ``spec.schema.json``.
Imports neither torch nor pytest.
"""

from __future__ import annotations

import json
from pathlib import Path

from interptest import spec

SCHEMA_FILE = Path(__file__).with_name("spec.schema.json")
SCHEMA_ID = "https://interptest.invalid/spec.schema.json"


def _properties(keys: dict) -> dict:
    return {key: {**spec.TYPE_SCHEMAS[kind], "description": kind} for key, kind in keys.items()}


def build_schema() -> dict:
    behavior_keys = _properties(spec.BEHAVIOR_KEYS)
    behavior_keys["name"] = {**behavior_keys["name"], "pattern": f"^{spec.NAME_PATTERN.pattern}$"}
    behavior_keys["if_model_unavailable"] = {"enum": list(spec.UNAVAILABLE_POLICIES)}
    behavior_keys["samples"] = {**behavior_keys["samples"], "minimum": 1}
    behavior_keys["min_pass_rate"] = {**behavior_keys["min_pass_rate"], "minimum": 0, "maximum": 1}
    behavior_keys["min_effect"] = {**behavior_keys["min_effect"], "minimum": 0}
    behavior = {
        "type": "object",
        "additionalProperties": False,
        "properties": behavior_keys,
        "required": ["name"],
        # expect and a prompt may come from the file's defaults, so they are not required here
        "not": {"required": ["prompt", "template"]},
    }
    file_keys = _properties(spec.FILE_KEYS)
    file_keys["behaviors"] = {"type": "array", "items": {"$ref": "#/$defs/behavior"}}
    file_keys["if_model_unavailable"] = {"enum": list(spec.UNAVAILABLE_POLICIES)}
    defaults = {k: v for k, v in behavior_keys.items() if k != "name"}
    file_keys["defaults"] = {"type": "object", "additionalProperties": False, "properties": defaults}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "interptest behavior spec",
        "description": "A YAML file of behaviors that interptest collects as pytest items; see the README.",
        "type": "object",
        "additionalProperties": False,
        "required": ["behaviors"],
        "properties": file_keys,
        "patternProperties": {f"^{spec.EXTENSION_PREFIX}": {}},  # the user's own keys (anchors), ignored
        "$defs": {"behavior": behavior},
    }


def schema_text() -> str:
    return json.dumps(build_schema(), indent=2, ensure_ascii=False) + "\n"
