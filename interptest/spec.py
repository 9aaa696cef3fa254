"""Behavior specs: YAML in, validated :class:`BehaviorSpec` objects out.

Everything here is checked without a model (types, keys, claim grammar); what needs the model's
tokenizer (token counts, single-token answers, positions) is checked in :mod:`interptest.check`.
Every error is a :class:`~interptest.errors.SpecError` carrying file, line, behavior and key.
Imports neither torch nor pytest.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from interptest.claims import (
    Claim,
    ClaimBindIndexError,
    ClaimSyntaxError,
    LocalizationClaim,
    PredictionClaim,
    parse_claim,
)
from interptest.errors import SpecError

DEFAULT_MIN_EFFECT = 1.0
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")

_STR, _NUM, _STR_LIST = "a string", "a number", "a list of strings"

# Every key a behavior may carry, with the type it must have. The README documents each one.
BEHAVIOR_KEYS = {
    "name": _STR,
    "description": _STR,
    "model": _STR,
    "prompt": _STR,
    "expect": _STR,
    "corrupt": _STR,
    "foil": _STR,
    "claims": _STR_LIST,
    "min_effect": _NUM,
    "marks": _STR_LIST,
    "skip": _STR,
    "xfail": _STR,
}
FILE_KEYS = {"model": _STR, "description": _STR, "defaults": "a mapping", "behaviors": "a list of behaviors"}


@dataclass(frozen=True)
class BehaviorSpec:
    name: str
    prompt: str
    expect: str
    corrupt: str | None = None
    foil: str | None = None
    claims: tuple[Claim, ...] = ()
    model: str | None = None
    min_effect: float = DEFAULT_MIN_EFFECT
    marks: tuple[str, ...] = ()
    skip: str | None = None
    xfail: str | None = None
    description: str | None = None
    path: str = "<dict>"
    line: int | None = None
    key_lines: dict = field(default_factory=dict, compare=False, hash=False)
    claim_lines: tuple[int | None, ...] = field(default=(), compare=False, hash=False)

    def error(self, message: str, key: str | None = None, claim_index: int | None = None) -> SpecError:
        """A SpecError pointing at this behavior (and, when given, at one key or one claim)."""
        line = self.line
        if claim_index is not None:
            key = f"claims[{claim_index}]"
            if claim_index < len(self.claim_lines) and self.claim_lines[claim_index]:
                line = self.claim_lines[claim_index]
        elif key is not None:
            line = self.key_lines.get(key.split("[")[0], line)
        return SpecError(message, path=self.path, line=line, behavior=self.name, key=key)

    @property
    def localization_claims(self) -> list[LocalizationClaim]:
        return [c for c in self.claims if isinstance(c, LocalizationClaim)]

    @property
    def prediction_claims(self) -> list[PredictionClaim]:
        return [c for c in self.claims if isinstance(c, PredictionClaim)]

    def claim_index(self, claim: Claim) -> int:
        return next(i for i, c in enumerate(self.claims) if c is claim)


@dataclass(frozen=True)
class SpecFile:
    path: str
    model: str | None
    behaviors: tuple[BehaviorSpec, ...]


# ---------------------------------------------------------------------------------------------
# YAML with line numbers


class _Mapping(dict):
    line: int | None = None
    key_lines: dict


class _Sequence(list):
    line: int | None = None
    item_lines: list


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key and sequence item.

    It is yaml.SafeLoader with two constructors replaced, so it builds plain Python data only,
    exactly like ``yaml.safe_load``; it also rejects duplicate keys, which safe_load would silently
    collapse to the last one.
    """


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Mapping:
    loader.flatten_mapping(node)
    mapping = _Mapping()
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise SpecError("mapping keys must be plain words", line=line)
        if key in mapping:
            raise SpecError(f"duplicate key {key!r} (first on line {mapping.key_lines[key]})",
                            line=line, key=str(key))
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = line
    return mapping


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> _Sequence:
    sequence = _Sequence(loader.construct_object(child, deep=True) for child in node.value)
    sequence.line = node.start_mark.line + 1
    sequence.item_lines = [child.start_mark.line + 1 for child in node.value]
    return sequence


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def _load_yaml(text: str, path: str):
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except SpecError as error:
        raise error.located(path=path) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        context = getattr(error, "context", None)
        detail = f"{context}, {problem}" if context else problem
        raise SpecError(f"invalid YAML: {detail}", path=path,
                        line=mark.line + 1 if mark else None) from None


# ---------------------------------------------------------------------------------------------
# Validation


def _type_ok(value, expected: str) -> bool:
    if expected == _STR:
        return isinstance(value, str)
    if expected == _NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected == _STR_LIST:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if expected == "a mapping":
        return isinstance(value, dict)
    if expected == "a list of behaviors":
        return isinstance(value, list)
    raise AssertionError(expected)


def _describe(value) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _check_keys(mapping: dict, allowed: dict, where: str, make_error) -> None:
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            make_error(f"unknown key {key!r} in {where}; {hint}allowed keys: {', '.join(allowed)}", str(key))
        elif not _type_ok(mapping[key], allowed[key]):
            make_error(f"expected {allowed[key]}, got {_describe(mapping[key])}", str(key))


def parse_spec(text: str, path: str = "<spec>") -> SpecFile:
    """Parse and validate a spec file's text."""
    data = _load_yaml(text, path)
    if not isinstance(data, dict):
        raise SpecError(f"the top level must be a mapping with a 'behaviors' list, got {_describe(data)}",
                        path=path, line=getattr(data, "line", 1) or 1)

    def file_error(message, key=None):
        raise SpecError(message, path=path, line=data.key_lines.get(key, data.line), key=key)

    _check_keys(data, FILE_KEYS, "the spec file", file_error)
    if "behaviors" not in data:
        file_error("missing required key 'behaviors' (a list of behaviors)")
    defaults = data.get("defaults") or _Mapping()
    if "name" in defaults:
        raise SpecError("'name' cannot have a default: every behavior names itself", path=path,
                        line=defaults.key_lines.get("name"), key="defaults.name")

    def defaults_error(message, key=None):
        raise SpecError(message, path=path, line=defaults.key_lines.get(key), key=f"defaults.{key}")

    _check_keys(defaults, BEHAVIOR_KEYS, "defaults", defaults_error)
    entries = data["behaviors"]
    if not entries:
        file_error("'behaviors' is empty", "behaviors")
    behaviors = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        line = entries.item_lines[index]
        if not isinstance(entry, dict):
            raise SpecError(f"each behavior must be a mapping, got {_describe(entry)}", path=path, line=line,
                            key=f"behaviors[{index}]")
        behavior = _parse_behavior(entry, defaults, path, file_model=data.get("model"), index=index)
        if behavior.name in seen:
            raise SpecError(f"duplicate behavior name (first on line {seen[behavior.name]})", path=path,
                            line=behavior.key_lines.get("name", line), behavior=behavior.name, key="name")
        seen[behavior.name] = behavior.line
        behaviors.append(behavior)
    return SpecFile(path, data.get("model"), tuple(behaviors))


def load_spec_file(path: str | Path) -> SpecFile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"cannot read the spec file: {error}", path=str(path)) from None
    return parse_spec(text, str(path))


def parse_behavior(spec: dict, path: str = "<dict>") -> BehaviorSpec:
    """Validate one behavior given as a Python dict (the same keys as YAML), for ``.py`` tests."""
    if not isinstance(spec, dict):
        raise SpecError(f"a behavior must be a dict, got {_describe(spec)}", path=path)
    return _parse_behavior(spec, {}, path, file_model=None, index=0)


def _parse_behavior(entry: dict, defaults: dict, path: str, file_model: str | None, index: int) -> BehaviorSpec:
    name = entry.get("name")
    line = getattr(entry, "line", None)
    key_lines = dict(getattr(defaults, "key_lines", {}))
    key_lines.update(getattr(entry, "key_lines", {}))
    display_name = name if isinstance(name, str) else None

    def error(message, key=None):
        raise SpecError(message, path=path, line=key_lines.get(key, line), behavior=display_name, key=key)

    if "name" not in entry:
        error(f"behavior #{index + 1} is missing required key 'name'")
    _check_keys(entry, BEHAVIOR_KEYS, "a behavior", error)
    if not NAME_PATTERN.fullmatch(name):
        error(f"invalid name {name!r}: use letters, digits, '_', '.' and '-' only", "name")
    merged = {**defaults, **entry}
    for required in ("prompt", "expect"):
        if required not in merged:
            error(f"missing required key {required!r}")
    for key in ("prompt", "expect", "foil"):
        if key in merged and merged[key] == "":
            error(f"{key!r} is empty", key)
    if "corrupt" in merged and merged["corrupt"] == merged["prompt"]:
        error("'corrupt' is identical to 'prompt': a corruption must change the prompt", "corrupt")
    if "corrupt" in merged and merged["corrupt"] == "":
        error("'corrupt' is empty", "corrupt")
    if "foil" in merged and merged["foil"] == merged["expect"]:
        error(f"'foil' equals 'expect' ({merged['expect']!r}): the logit difference would always be 0", "foil")

    claim_source = merged.get("claims", [])
    claim_lines = list(getattr(claim_source, "item_lines", [None] * len(claim_source)))
    claims = []
    for i, text in enumerate(claim_source):
        try:
            claims.append(parse_claim(text))
        except ClaimSyntaxError as syntax:
            raise SpecError(syntax.render(), path=path, line=claim_lines[i] or key_lines.get("claims", line),
                            behavior=name, key=f"claims[{i}]") from None
    behavior = BehaviorSpec(
        name=name, prompt=merged["prompt"], expect=merged["expect"], corrupt=merged.get("corrupt"),
        foil=merged.get("foil"), claims=tuple(claims), model=entry.get("model") or defaults.get("model"),
        min_effect=float(merged.get("min_effect", DEFAULT_MIN_EFFECT)), marks=tuple(merged.get("marks", ())),
        skip=merged.get("skip"), xfail=merged.get("xfail"), description=merged.get("description"),
        path=path, line=line, key_lines=key_lines, claim_lines=tuple(claim_lines),
    )
    _check_claims_need(behavior)
    if behavior.model is None and file_model is not None:
        behavior = _replace(behavior, model=file_model)
    return behavior


def _replace(behavior: BehaviorSpec, **changes) -> BehaviorSpec:
    import dataclasses

    return dataclasses.replace(behavior, **changes)


def _check_claims_need(behavior: BehaviorSpec) -> None:
    """Claims that compare clean against corrupted runs need a corrupted prompt (or a foil)."""
    if behavior.min_effect < 0:
        raise behavior.error(f"'min_effect' must be >= 0, got {behavior.min_effect:g}", "min_effect")
    for i, claim in enumerate(behavior.claims):
        if isinstance(claim, LocalizationClaim) and behavior.corrupt is None:
            raise behavior.error(f"claim {claim.text!r} patches activations between a clean and a corrupted "
                                 "run; add a 'corrupt' prompt to the behavior", claim_index=i)
        if isinstance(claim, PredictionClaim) and claim.function == "logit_diff" \
                and behavior.corrupt is None and behavior.foil is None:
            raise behavior.error("'logit_diff' compares expect against a foil: add 'foil' or 'corrupt' "
                                 "(the foil defaults to the model's top-1 prediction on the corrupted prompt)",
                                 claim_index=i)
    for error in _elsewhere_errors(behavior):
        raise error


def _elsewhere_errors(behavior: BehaviorSpec):
    claims = behavior.localization_claims
    explicit = {c.component for c in claims if not c.elsewhere}
    for claim in claims:
        if claim.elsewhere and claim.component not in explicit:
            yield behavior.error(f"{claim.component}[elsewhere] needs another claim on {claim.component} in "
                                 "the same behavior to define what 'elsewhere' excludes",
                                 claim_index=behavior.claim_index(claim))


def bind_error(behavior: BehaviorSpec, error: ClaimBindIndexError, claims: list) -> SpecError:
    """Map a binding error on the behavior's n-th localization claim back to its line."""
    claim = claims[error.index]
    return behavior.error(f"claim {claim.text!r}: {error}", claim_index=behavior.claim_index(claim))
