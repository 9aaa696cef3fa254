"""Behavior specs: YAML in, validated :class:`BehaviorSpec` objects out.

Everything here is checked without a model (types, keys, claim grammar); what needs the model's
tokenizer (token counts, single-token answers, positions) is checked in :mod:`interptest.binding`.
Every error is a :class:`~interptest.errors.SpecError` carrying file, line, behavior and key.
Imports neither torch nor pytest.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import yaml

from interptest.claims import Claim, ClaimSyntaxError, parse_claim, parse_position
from interptest.claims.base import cannot_be_false
from interptest.claims.grammar import did_you_mean, template_fields
from interptest.errors import SpecError, combined
from interptest.saes import SAEError, SAESource, read_config
from interptest.zoo import shipped_sae_dir, shipped_saes

DEFAULT_MIN_EFFECT = 1.0
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")

_STR, _NUM, _STR_LIST = "a string", "a number", "a list of strings"
_INT, _MAPPING, _CORRUPT = "an integer", "a mapping", "a string or a mapping (replace, resample or noise)"
_CLAIMS = "a list of claims (strings, or mappings with 'claim' and 'min_pass_rate')"
UNAVAILABLE_POLICIES = ("error", "skip")
SINGLE_TOKEN_POLICIES = ("error", "drop")
# keys whose value is one of a few words: a value of another type is told the words, not just "a string"
_UNAVAILABLE = f"one of {', '.join(UNAVAILABLE_POLICIES)}"
_SINGLE_TOKEN = f"one of {', '.join(SINGLE_TOKEN_POLICIES)}"
_ENUMS = {_UNAVAILABLE: UNAVAILABLE_POLICIES, _SINGLE_TOKEN: SINGLE_TOKEN_POLICIES}
_SAES = "a mapping of SAE names to {path: DIR}, {zoo: NAME} or {release: RELEASE, id: ID}"
DEFAULT_SAMPLES = 20

# Every key a behavior may carry, with the type it must have. docs/spec.md documents each one.
BEHAVIOR_KEYS = {
    "name": _STR,
    "description": _STR,
    "model": _STR,
    "prompt": _STR,
    "template": _STR,
    "vars": _MAPPING,
    "samples": _INT,
    "expect": _STR,
    "corrupt": _CORRUPT,
    "foil": _STR,
    "reference": _STR_LIST,
    "claims": _CLAIMS,
    "min_effect": _NUM,
    "min_pass_rate": _NUM,
    "marks": _STR_LIST,
    "single_token": _SINGLE_TOKEN,
    "if_model_unavailable": _UNAVAILABLE,
    "skip": _STR,
    "xfail": _STR,
    "saes": _SAES,
}
_BEHAVIORS = "a list of behaviors"
FILE_KEYS = {
    "model": _STR,
    "description": _STR,
    "defaults": _MAPPING,
    "behaviors": _BEHAVIORS,
    "if_model_unavailable": _UNAVAILABLE,
    "saes": _SAES,
}
EXTENSION_PREFIX = "x-"
"""A top-level key starting with this is the user's own (anchors for merge keys, notes) and is ignored."""
MODEL_EXPECTED = "a model name (such as 'gpt2') or a save_pretrained directory"
CORRUPTION_KINDS = ("replace", "resample", "noise")

# The JSON Schema of each type above, for editors (interptest.schema builds the spec file's schema from
# these tables; the parser checks the same types in _type_ok).
TYPE_SCHEMAS: dict[str, dict] = {
    _STR: {"type": "string"},
    _NUM: {"type": "number"},
    _INT: {"type": "integer"},
    _STR_LIST: {"type": "array", "items": {"type": "string"}},
    _MAPPING: {"type": "object"},
    _CORRUPT: {
        "oneOf": [
            {"type": "string", "minLength": 1},
            {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "propertyNames": {"enum": list(CORRUPTION_KINDS)},
            },
        ]
    },
    _CLAIMS: {
        "type": "array",
        "items": {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {
                    "type": "object",
                    "required": ["claim"],
                    "additionalProperties": False,
                    "properties": {
                        "claim": {"type": "string"},
                        "min_pass_rate": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                },
            ]
        },
    },
    _BEHAVIORS: {"type": "array"},
    **{kind: {"enum": list(words)} for kind, words in _ENUMS.items()},
    _SAES: {
        "type": "object",
        "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        "additionalProperties": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["path"],
                    "additionalProperties": False,
                    "properties": {"path": {"type": "string", "minLength": 1}},
                },
                {
                    "type": "object",
                    "required": ["zoo"],
                    "additionalProperties": False,
                    "properties": {"zoo": {"type": "string", "minLength": 1}},
                },
                {
                    "type": "object",
                    "required": ["release", "id"],
                    "additionalProperties": False,
                    "properties": {"release": {"type": "string"}, "id": {"type": "string"}},
                },
            ]
        },
    },
}


@dataclass(frozen=True)
class Corruption:
    """How the corrupted run is made: ``text`` (an explicit prompt, a template for families),
    ``replace`` (symmetric token swaps), ``resample`` (re-draw template variables) or ``noise``
    (Gaussian noise on the token embeddings at some positions, ROME-style)."""

    kind: str
    text: str | None = None
    replace: tuple[tuple[str, str], ...] = ()
    resample: tuple[str, ...] = ()
    positions: tuple = ()  # PositionSelection, for noise
    scale: float = 3.0


@dataclass(frozen=True)
class Family:
    """A prompt family: the template's variables, each with its values, and how many samples to draw.

    ``units`` are what a sample draws from: one variable with its values, or paired variables
    (``country, capital: "@country_capitals"``) with their rows, drawn together."""

    variables: dict  # variable -> its values (a paired variable: its column)
    samples: int
    sources: dict  # variable -> where its values came from (for messages)
    units: tuple = ()  # ((variable, ...), ((value, ...), ...)) per unit
    single_token: str = "error"  # what a value that is not one token for the model does: error | drop

    @staticmethod
    def from_units(units, samples: int, sources: dict, single_token: str = "error") -> Family:
        variables = {var: tuple(row[i] for row in rows) for names, rows in units for i, var in enumerate(names)}
        return Family(variables, samples, sources, tuple(units), single_token)


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
    family: Family | None = None
    corruption: Corruption | None = None
    min_pass_rate: float | None = None
    if_model_unavailable: str = "error"
    reference: tuple[str, ...] = ()  # prompts whose clean mean is 'ablate mean' of a single prompt
    claim_pass_rates: tuple[float | None, ...] = ()
    path: str = "<dict>"
    line: int | None = None
    key_lines: dict = field(default_factory=dict, compare=False, hash=False)
    claim_lines: tuple[int | None, ...] = field(default=(), compare=False, hash=False)
    saes: tuple[SAESource, ...] = ()  # the SAEs its claims may name (file's, then defaults', then its own)

    def sae(self, name: str) -> SAESource | None:
        return next((s for s in self.saes if s.name == name), None)

    def error(self, message: str, key: str | None = None, claim_index: int | None = None) -> SpecError:
        """A SpecError pointing at this behavior (and, when given, at one key or one claim)."""
        line = self.line
        if claim_index is not None:
            key = f"claims[{claim_index}]"
            if claim_index < len(self.claim_lines) and self.claim_lines[claim_index]:
                line = self.claim_lines[claim_index]
        elif key is not None:
            line = self.key_lines.get(re.split(r"[.\[]", key)[0], line)
        return SpecError(message, path=self.path, line=line, behavior=self.name, key=key)

    def claim_pass_rate(self, index: int) -> float | None:
        """The pass rate the index-th claim requires of a family's samples (its own, else the behavior's)."""
        own = self.claim_pass_rates[index] if index < len(self.claim_pass_rates) else None
        return own if own is not None else self.min_pass_rate

    def claim_index(self, claim: Claim) -> int:
        return next(i for i, c in enumerate(self.claims) if c is claim)


@dataclass(frozen=True)
class SpecFile:
    path: str
    model: str | None
    behaviors: tuple[BehaviorSpec, ...]
    errors: tuple[SpecError, ...] = ()  # behaviors refused (parse_spec(keep_going=True) only), each located


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
    exactly like ``yaml.safe_load``, merge keys included (``<<: *base``, then keys that override it);
    it also rejects a key written twice in one mapping, which safe_load would silently collapse to
    the last one.
    """

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # SafeLoader puts the merged pairs first, then the mapping's own; remember how many were merged,
        # as a merged key is overridden by the mapping's own, not duplicated (yaml.safe_load's reading).
        # Nested merges call back here, so every flattened node knows its count; flattening twice is a no-op.
        if hasattr(node, "merged_pairs"):
            return
        own = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
        super().flatten_mapping(node)
        node.merged_pairs = len(node.value) - own


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Mapping:
    loader.flatten_mapping(node)
    merged_pairs = getattr(node, "merged_pairs", 0)
    mapping = _Mapping()
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {}
    own: set = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            raise SpecError("mapping keys must be plain words", line=line)
        if index >= merged_pairs:  # the mapping's own key: it overrides a merged one, once
            if key in own:
                raise SpecError(
                    f"duplicate key {key!r} (first on line {mapping.key_lines[key]})", line=line, key=str(key)
                )
            own.add(key)
        # among merged pairs the later wins, as SafeLoader orders them so that the first mapping of
        # '<<: [*a, *b]' comes last
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
        tab = _tab_line(text, mark.line + 1 if mark else None, "'\\t'" in detail)
        if tab is not None:
            raise SpecError(
                "invalid YAML: this line is indented with a tab character; YAML indentation must use "
                "spaces, not tabs (replace the tab with spaces)",
                path=path,
                line=tab,
            ) from None
        raise SpecError(f"invalid YAML: {detail}", path=path, line=mark.line + 1 if mark else None) from None


def _tab_line(text: str, line: int | None, about_tabs: bool) -> int | None:
    """The line (1-based) of a YAML error caused by a tab in the indentation: the error's own line when
    it is indented with a tab, else the first such line when PyYAML complains about a tab; or None."""
    lines = text.splitlines()
    tabbed = [i + 1 for i, row in enumerate(lines) if "\t" in row[: len(row) - len(row.lstrip(" \t"))]]
    if line in tabbed:
        return line
    return tabbed[0] if tabbed and about_tabs else None


# ---------------------------------------------------------------------------------------------
# Validation

ErrorFn = Callable[..., NoReturn]
"""How the parsing helpers report a problem: ``error(message, key=None)`` raises a located SpecError."""


def _type_ok(value, expected: str) -> bool:
    if expected == _STR:
        return isinstance(value, str)
    if expected == _NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected == _STR_LIST:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if expected in (_MAPPING, _SAES):
        return isinstance(value, dict)
    if expected == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == _CORRUPT:
        return isinstance(value, (str, dict))
    if expected == _CLAIMS:  # each item's type is checked with the item, which then names its index
        return isinstance(value, list)
    if expected in _ENUMS:  # the word itself is checked where the key is read
        return isinstance(value, str)
    if expected == _BEHAVIORS:
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


def _check_keys(mapping: dict, allowed: dict, where: str, make_error: ErrorFn, extension_hint: bool = False) -> None:
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            extension = f" (and any key starting with '{EXTENSION_PREFIX}', ignored)" if extension_hint else ""
            make_error(f"unknown key {key!r} in {where}; {hint}allowed keys: {', '.join(allowed)}{extension}", str(key))
        elif not _type_ok(mapping[key], allowed[key]):
            make_error(f"expected {allowed[key]}, got {_describe(mapping[key])}", str(key))


def _check_model(mapping: dict, make_error: ErrorFn) -> None:
    """A blank ``model`` (file, defaults or behavior) is as malformed as ``model: 3``: reported here, at the
    key's own line, instead of an empty one silently meaning the next model down the chain and a
    whitespace one failing only when the model loads, at the line of the first behavior using it."""
    value = mapping.get("model")
    if isinstance(value, str) and not value.strip():
        got = "an empty string" if not value else f"a blank string ({value!r})"
        make_error(f"expected {MODEL_EXPECTED}, got {got}", "model")


def parse_spec(text: str, path: str = "<spec>", keep_going: bool = False) -> SpecFile:
    """Parse and validate a spec file's text. A malformed behavior raises (every behavior's errors
    together); with ``keep_going`` the valid behaviors are returned and the others' errors listed in
    ``errors`` (an error of the file itself still raises)."""
    data = _load_yaml(text, path)
    if not isinstance(data, dict):
        raise SpecError(
            f"the top level must be a mapping with a 'behaviors' list, got {_describe(data)}",
            path=path,
            line=getattr(data, "line", 1) or 1,
        )
    assert isinstance(data, _Mapping), "_LineLoader builds every mapping as a _Mapping"

    def file_error(message, key=None) -> NoReturn:
        raise SpecError(message, path=path, line=data.key_lines.get(key, data.line), key=key)

    # a top-level 'x-…' key is the user's own (e.g. anchors for merge keys): not data, not checked
    own_keys = {key: value for key, value in data.items() if not str(key).startswith(EXTENSION_PREFIX)}
    _check_keys(own_keys, FILE_KEYS, "the spec file", file_error, extension_hint=True)
    _check_model(data, file_error)
    file_saes = parse_saes(data.get("saes"), path, "saes", data.key_lines.get("saes"), None)
    if "behaviors" not in data:
        file_error("missing required key 'behaviors' (a list of behaviors)")
    defaults = data.get("defaults") or _Mapping()
    if "name" in defaults:
        raise SpecError(
            "'name' cannot have a default: every behavior names itself",
            path=path,
            line=defaults.key_lines.get("name"),
            key="defaults.name",
        )

    def defaults_error(message, key=None) -> NoReturn:
        raise SpecError(message, path=path, line=defaults.key_lines.get(key), key=f"defaults.{key}")

    _check_keys(defaults, BEHAVIOR_KEYS, "defaults", defaults_error)
    _check_model(defaults, defaults_error)
    entries = data["behaviors"]
    if not entries:
        file_error("'behaviors' is empty", "behaviors")
    behaviors = []
    seen: dict[str, int | None] = {}  # name -> line
    errors: list[SpecError] = []
    for index, entry in enumerate(entries):
        line = entries.item_lines[index]
        if not isinstance(entry, dict):
            raise SpecError(
                f"each behavior must be a mapping, got {_describe(entry)}",
                path=path,
                line=line,
                key=f"behaviors[{index}]",
            )
        try:
            behavior = _parse_behavior(
                entry,
                defaults,
                path,
                file_model=data.get("model"),
                index=index,
                file_policy=data.get("if_model_unavailable"),
                file_model_line=data.key_lines.get("model"),
                file_saes=file_saes,
            )
        except SpecError as problem:
            errors.append(problem)
            if isinstance(entry.get("name"), str):
                seen.setdefault(entry["name"], line)
            continue
        if behavior.name in seen:
            raise SpecError(
                f"duplicate behavior name (first on line {seen[behavior.name]})",
                path=path,
                line=behavior.key_lines.get("name", line),
                behavior=behavior.name,
                key="name",
            )
        seen[behavior.name] = behavior.line
        behaviors.append(behavior)
    if errors and (not keep_going or not behaviors):
        raise combined(errors)
    return SpecFile(path, data.get("model"), tuple(behaviors), tuple(errors))


def load_spec_file(path: str | Path, keep_going: bool = False) -> SpecFile:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"cannot read the spec file: {error}", path=str(path)) from None
    return parse_spec(text, str(path), keep_going)


def parse_behavior(spec: dict, path: str = "<dict>") -> BehaviorSpec:
    """Validate one behavior given as a Python dict (the same keys as YAML), for ``.py`` tests."""
    if not isinstance(spec, dict):
        raise SpecError(f"a behavior must be a dict, got {_describe(spec)}", path=path)
    return _parse_behavior(spec, {}, path, file_model=None, index=0)


def _parse_behavior(
    entry: dict,
    defaults: dict,
    path: str,
    file_model: str | None,
    index: int,
    file_policy: str | None = None,
    file_model_line: int | None = None,
    file_saes: tuple[SAESource, ...] = (),
) -> BehaviorSpec:
    name = entry.get("name")
    line = getattr(entry, "line", None)
    # a key the behavior inherits is blamed where it is written: the file's 'model', then 'defaults'
    key_lines = {} if file_model_line is None else {"model": file_model_line}
    key_lines.update(getattr(defaults, "key_lines", {}))
    key_lines.update(getattr(entry, "key_lines", {}))
    display_name = name if isinstance(name, str) else None

    def error(message, key=None) -> NoReturn:
        raise SpecError(
            message,
            path=path,
            line=key_lines.get(key.split(".")[0] if key else key, line),
            behavior=display_name,
            key=key,
        )

    if "name" not in entry:
        error(f"behavior #{index + 1} is missing required key 'name'")
    _check_keys(entry, BEHAVIOR_KEYS, "a behavior", error)
    _check_model(entry, error)
    assert isinstance(name, str), "present (checked above) and a string (_check_keys)"
    if not NAME_PATTERN.fullmatch(name):
        error(f"invalid name {name!r}: use letters, digits, '_', '.' and '-' only", "name")
    merged = {**defaults, **entry}
    if "prompt" in merged and "template" in merged:
        error("give either 'prompt' (one prompt) or 'template' (a prompt family), not both", "template")
    prompt_key = "template" if "template" in merged else "prompt"
    for required in (prompt_key, "expect"):
        if required not in merged:
            error(
                f"missing required key {required!r}"
                + (" (or 'template' for a prompt family)" if required == "prompt" else "")
            )
    for key in (prompt_key, "expect", "foil"):
        if key in merged and merged[key] == "":
            error(f"{key!r} is empty", key)
    if "foil" in merged and merged["foil"] == merged["expect"]:
        error(f"'foil' equals 'expect' ({merged['expect']!r}): the logit difference would always be 0", "foil")
    policy = merged.get("if_model_unavailable", file_policy or "error")
    if policy not in UNAVAILABLE_POLICIES:
        error(f"expected one of {', '.join(UNAVAILABLE_POLICIES)}, got {policy!r}", "if_model_unavailable")
    prompt = merged[prompt_key]
    family = _parse_family(merged, path, error) if prompt_key == "template" else None
    _pass_rate(merged.get("min_pass_rate"), error)  # a bad value is named before where it applies
    if family is None:
        for key in ("vars", "samples", "single_token", "min_pass_rate"):
            if key in merged:
                error(f"{key!r} only applies to a prompt family: write 'template' instead of 'prompt'", key)
    corruption = _parse_corruption(merged.get("corrupt"), prompt, family, error)
    if family is not None and corruption is not None and corruption.kind == "noise" and "foil" not in merged:
        error(
            "a family's noise corruption needs a 'foil': without one, each sample's foil would be its top-1 "
            "prediction under random noise, which differs from sample to sample and is often the expected "
            "token itself (then nothing can be measured); name the competing token, e.g. foil: ' Cole'",
            "corrupt",
        )
    reference = merged.get("reference", [])
    if "reference" in merged and (not reference or "" in reference):
        error("expected a non-empty list of non-empty prompts (each with the prompt's token count)", "reference")

    sae_sources = _merge_saes(
        file_saes,
        parse_saes(defaults.get("saes"), path, "defaults.saes", key_lines.get("saes"), display_name),
        parse_saes(entry.get("saes"), path, "saes", key_lines.get("saes"), display_name),
    )
    claim_source = merged.get("claims", [])
    claim_lines = list(getattr(claim_source, "item_lines", [None] * len(claim_source)))
    claims, pass_rates, claim_errors = [], [], []
    for i, item in enumerate(claim_source):  # every claim's error, not only the first
        claim_line = claim_lines[i] or key_lines.get("claims", line)
        try:
            claim, rate = _parse_claim_item(item, i, error, family is not None)
            claims.append(claim)
            pass_rates.append(rate)
        except ClaimSyntaxError as syntax:
            claim_errors.append(
                SpecError(syntax.render(), path=path, line=claim_line, behavior=name, key=f"claims[{i}]")
            )
        except SpecError as problem:
            claim_errors.append(SpecError(problem.message, path=path, line=claim_line, behavior=name, key=problem.key))
    if claim_errors:
        raise combined(claim_errors)
    behavior = BehaviorSpec(
        name=name,
        prompt=prompt,
        expect=merged["expect"],
        corrupt=corruption.text if corruption is not None and corruption.kind == "text" else None,
        foil=merged.get("foil"),
        claims=tuple(claims),
        model=entry.get("model") or defaults.get("model"),
        min_effect=float(merged.get("min_effect", DEFAULT_MIN_EFFECT)),
        marks=tuple(merged.get("marks", ())),
        skip=merged.get("skip"),
        xfail=merged.get("xfail"),
        description=merged.get("description"),
        family=family,
        corruption=corruption,
        min_pass_rate=_pass_rate(merged.get("min_pass_rate"), error),
        if_model_unavailable=policy,
        reference=tuple(reference),
        claim_pass_rates=tuple(pass_rates),
        path=path,
        line=line,
        key_lines=key_lines,
        claim_lines=tuple(claim_lines),
        saes=sae_sources,
    )
    _check_claims_need(behavior)
    if family is not None:
        _check_family_references(behavior, error)
    if behavior.model is None and file_model is not None:
        behavior = _replace(behavior, model=file_model)
    return behavior


def _parse_claim_item(item, i: int, error: ErrorFn, family: bool) -> tuple[Claim, float | None]:
    """One entry of 'claims': a claim's text, or a mapping with 'claim' and 'min_pass_rate'."""
    text, rate = item, None
    if not isinstance(item, (str, dict)):
        error(
            f'expected a string, got {_describe(item)}: each claim is one string, e.g. "logit_diff >= 2.0" '
            "(or a mapping with 'claim' and 'min_pass_rate')",
            f"claims[{i}]",
        )
    if isinstance(item, dict):
        unknown = set(item) - {"claim", "min_pass_rate"}
        if unknown or not isinstance(item.get("claim"), str):
            error(
                "a claim given as a mapping needs 'claim' (the claim text) and may have "
                f"'min_pass_rate'; got keys {sorted(item)}",
                f"claims[{i}]",
            )
        text, rate = item["claim"], _pass_rate(item.get("min_pass_rate"), error, f"claims[{i}].min_pass_rate")
        if rate is not None and not family:
            error(
                "'min_pass_rate' only applies to a prompt family: write 'template' instead of 'prompt'",
                f"claims[{i}].min_pass_rate",
            )
    return parse_claim(text), rate


def _pass_rate(value, error: ErrorFn, key="min_pass_rate"):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        error(f"expected a fraction between 0 and 1, got {_describe(value)}", key)
    return float(value)


def _parse_family(merged: dict, path: str, error: ErrorFn) -> Family:
    template = merged["template"]
    try:
        used = template_fields(template)
    except ValueError as problem:
        error(str(problem), "template")
    if not used:
        error("the template has no {variables}; use 'prompt' for a single prompt", "template")
    if "vars" not in merged:
        error(f"the template uses {', '.join('{' + v + '}' for v in used)} but 'vars' is missing", "vars")
    elsewhere = set()  # variables expect, foil or a corrupted template may use besides
    for key in ("expect", "foil", "corrupt"):
        if isinstance(merged.get(key), str):
            try:
                elsewhere.update(template_fields(merged[key]))
            except ValueError:
                pass  # reported with its key by the reference check
    units, sources, named = [], {}, []
    for key, values in merged["vars"].items():
        names = [n.strip() for n in str(key).split(",")]
        for var in names:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
                error(f"invalid variable name {var!r} in 'vars' (paired variables: 'country, capital')", f"vars.{key}")
            if var not in used and (len(names) == 1 or var not in elsewhere):
                where = "the template" if len(names) == 1 else "the template, expect, foil or corrupt"
                error(f"variable {var!r} in 'vars' is not used by {where}", f"vars.{key}")
        rows = _rows(names, values, path, error, f"vars.{key}")
        units.append((tuple(names), rows))
        for var in names:
            sources[var] = values if isinstance(values, str) else "list"
        named += names
    for var in used:
        if var not in named:
            error(f"template variable {{{var}}} has no values in 'vars'", "vars")
    if len(set(named)) != len(named):
        error("a variable is given values twice in 'vars'", "vars")
    samples = merged.get("samples", DEFAULT_SAMPLES)
    if samples < 1:
        error(f"'samples' must be at least 1, got {samples}", "samples")
    policy = merged.get("single_token", "error")
    if policy not in SINGLE_TOKEN_POLICIES:
        error(f"expected one of {', '.join(SINGLE_TOKEN_POLICIES)}, got {policy!r}", "single_token")
    family = Family.from_units(units, samples, sources, policy)
    check_sample_count(family, error)
    return family


def check_sample_count(family: Family, error: ErrorFn, why: str = "") -> None:
    available = count_assignments(family.units, limit=family.samples)
    if available < family.samples:
        error(
            f"'samples' is {family.samples} but the variables allow only {available} distinct combinations "
            f"(all variables of one sample take different values){why}",
            "samples",
        )


def _rows(names: list[str], values, path: str, error: ErrorFn, key: str) -> tuple[tuple[str, ...], ...]:
    """The rows of one unit: a single variable's values as 1-tuples, or paired variables' rows (a list of
    lists, or a lexicon whose lines hold the columns separated by '|' or a tab)."""
    if len(names) == 1:
        return tuple((v,) for v in _values(names[0], values, path, error, key))
    if isinstance(values, str) and values.startswith("@"):
        lines = load_lexicon(values[1:], path, error, key)
        rows = tuple(tuple(c.strip() for c in re.split(r"\t|\|", line)) for line in lines)
    elif isinstance(values, list) and values and all(isinstance(r, list) for r in values):
        rows = tuple(tuple(r) for r in values)
    else:
        error(
            f"paired variables {', '.join(names)} need rows: a list of lists such as [[France, Paris]] or a "
            f"'@lexicon' whose lines hold {len(names)} columns separated by '|', got {_describe(values)}",
            key,
        )
    for row in rows:
        if len(row) != len(names) or not all(isinstance(v, str) and v for v in row):
            error(f"every row of {', '.join(names)} needs {len(names)} non-empty values, got {list(row)}", key)
    if len(set(rows)) != len(rows):
        error("a row is given twice", key)
    return rows


def _values(var: str, values, path: str, error: ErrorFn, key: str) -> tuple[str, ...]:
    if isinstance(values, str) and values.startswith("@"):
        return load_lexicon(values[1:], path, error, key)
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        error(f"expected a non-empty list of strings or '@lexicon', got {_describe(values)}", key)
    if len(set(values)) != len(values):
        error("the list names a value twice", key)
    return tuple(values)


def lexicon_paths(name: str, spec_path: str) -> list[Path]:
    """Where ``@name`` is looked up: lexicons/ beside the spec file, then interptest's own lexicons."""
    return [Path(spec_path).parent / "lexicons" / f"{name}.txt", Path(__file__).parent / "lexicons" / f"{name}.txt"]


def load_lexicon(name: str, spec_path: str, error: ErrorFn, key: str) -> tuple[str, ...]:
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        error(f"invalid lexicon name {name!r}", key)
    for candidate in lexicon_paths(name, spec_path):
        if candidate.is_file():
            lines = [ln.strip() for ln in candidate.read_text(encoding="utf-8").splitlines()]
            entries = tuple(dict.fromkeys(e for e in lines if e and not e.startswith("#")))
            if not entries:
                error(f"lexicon @{name} ({candidate}) is empty", key)
            return entries
    searched = " or ".join(str(p) for p in lexicon_paths(name, spec_path))
    beside, shipped = (sorted(p.stem for p in path.parent.glob("*.txt")) for path in lexicon_paths(name, spec_path))
    close = difflib.get_close_matches(name, beside + shipped, n=1, cutoff=0.6)
    hint = f"did you mean @{close[0]}? " if close else ""
    listing = (
        f"lexicons beside the spec: {', '.join('@' + n for n in beside) or 'none'}; shipped with interptest: "
        f"{', '.join('@' + n for n in shipped)}"
    )
    error(f"lexicon @{name} not found: looked for {searched}; {hint}{listing}", key)


def count_assignments(units, limit: int) -> int:
    """How many assignments give every variable a different value (exact up to ``limit``); ``units`` as in
    :class:`Family` (a plain {variable: values} mapping counts each variable as its own unit)."""
    import itertools

    if isinstance(units, dict):
        units = [((var,), tuple((v,) for v in values)) for var, values in units.items()]
    total = 1
    for _, rows in units:
        total *= len(rows)
    if total > 200_000:  # far more than any sample size; no need to count exactly
        return max(total, limit)
    count = 0
    for combo in itertools.product(*(rows for _, rows in units)):
        flat = [v for row in combo for v in row]
        count += len(set(flat)) == len(flat)
    return count


def _parse_corruption(value, prompt: str, family: Family | None, error: ErrorFn) -> Corruption | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value == "":
            error("'corrupt' is empty", "corrupt")
        if value == prompt:
            error(
                f"'corrupt' is identical to '{'template' if family else 'prompt'}': a corruption must change "
                "the prompt",
                "corrupt",
            )
        return Corruption("text", text=value)
    unknown = [key for key in value if key not in CORRUPTION_KINDS]
    if unknown or len(value) != 1:
        kinds = "{replace: ...}, {resample: [...]}, {noise: ...}"
        if not unknown:
            error(
                f"give one corruption, got {len(value)} ({', '.join(sorted(value))}); expected one of {kinds}",
                "corrupt",
            )
        named = f"unknown key {unknown[0]!r} in 'corrupt'" + did_you_mean(str(unknown[0]), CORRUPTION_KINDS)
        error(f"{named}; expected one of {kinds}, got keys {sorted(map(str, value))}", "corrupt")
    kind, spec = next(iter(value.items()))
    key = f"corrupt.{kind}"
    if kind == "replace":
        if (
            not isinstance(spec, dict)
            or not spec
            or not all(isinstance(a, str) and isinstance(b, str) and a and b for a, b in spec.items())
        ):
            error('expected a mapping of token texts, e.g. {" Hart": " Cole"}', key)
        for a, b in spec.items():
            if a == b:
                error(f"{a!r} is replaced by itself", key)
        return Corruption("replace", replace=tuple(spec.items()))
    if kind == "resample":
        if family is None:
            error("resample re-draws template variables: it needs a 'template' with 'vars'", key)
        if not isinstance(spec, list) or not spec or not all(isinstance(v, str) for v in spec):
            error("expected a list of template variables, e.g. [last]", key)
        for var in spec:
            if var not in family.variables:
                error(f"{var!r} is not a template variable (variables: {', '.join(family.variables)})", key)
            if len(family.variables[var]) < 2:
                error(f"variable {var!r} has a single value, so it cannot be re-drawn to a different one", key)
        return Corruption("resample", resample=tuple(spec))
    if not isinstance(spec, dict):
        error("expected {positions: [...], scale: 3.0}", key)
    for name in spec:
        if name not in ("positions", "scale"):
            error(
                f"unknown key {name!r} in corrupt.noise{did_you_mean(str(name), ('positions', 'scale'))}; "
                "allowed keys: positions, scale",
                key,
            )
    if "positions" not in spec:
        error(
            "missing key 'positions' (the positions whose embeddings get noise, e.g. positions: [\"{first}\", -2])",
            key,
        )
    positions = spec["positions"]
    if not isinstance(positions, list) or not positions:
        error("'positions' must be a non-empty list of positions, e.g. [\"{first}\", -2]", key)
    parsed = []
    for item in positions:
        try:
            parsed.append(parse_position(str(item)))
        except ClaimSyntaxError as syntax:
            error(f"bad position {item!r}: {syntax.message}{_quote_hint(item)}", key)
    scale = spec.get("scale", 3.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
        error(f"'scale' must be a positive number, got {_describe(scale)}", key)
    return Corruption("noise", positions=tuple(parsed), scale=float(scale))


def _quote_hint(item) -> str:
    """For a token text written without its own quotes, e.g. [" Peru"]: how to quote it."""
    if not isinstance(item, str) or "'" in item:
        return ""
    try:
        parse_position(f"'{item}'")
    except ClaimSyntaxError:
        return ""
    return (
        f"; a token position needs its own quotes inside the YAML string (the YAML quotes only delimit the "
        f"string): write positions: [\"'{item}'\"]"
    )


def _check_family_references(behavior: BehaviorSpec, error: ErrorFn) -> None:
    """Variables used by expect, foil, a corrupted template or a claim must exist in the template."""
    assert behavior.family is not None, "called for template behaviors only"
    used = set(behavior.family.variables)
    texts = [("expect", behavior.expect), ("foil", behavior.foil)]
    if behavior.corruption.kind == "text" if behavior.corruption else False:
        texts.append(("corrupt", behavior.corrupt))
    for key, text in texts:
        if text is None:
            continue
        try:
            fields = template_fields(text)
        except ValueError as problem:
            error(str(problem), key)
        for var in fields:
            if var not in used:
                error(f"{{{var}}} is used in {key!r} but is not a variable of the template", key)
    for i, claim in enumerate(behavior.claims):
        names = claim.template_variables()
        for var in names:
            if var not in used:
                raise behavior.error(
                    f"{{{var}}} is not a variable of the template (variables: {', '.join(sorted(used))})", claim_index=i
                )
    if behavior.corruption and behavior.corruption.kind == "noise":
        for position in behavior.corruption.positions:
            if position.kind == "variable" and position.values[0] not in used:
                error(f"{{{position.values[0]}}} is not a variable of the template", "corrupt")


def _replace(behavior: BehaviorSpec, **changes) -> BehaviorSpec:
    import dataclasses

    return dataclasses.replace(behavior, **changes)


def _check_claims_need(behavior: BehaviorSpec) -> None:
    """What each claim kind needs of the spec (e.g. a corruption), checked before any model loads."""
    if behavior.min_effect < 0:
        raise behavior.error(f"'min_effect' must be >= 0, got {behavior.min_effect:g}", "min_effect")
    problems = [(i, claim.requirement(behavior) or cannot_be_false(claim)) for i, claim in enumerate(behavior.claims)]
    errors = [behavior.error(problem, claim_index=i) for i, problem in problems if problem]
    if errors:
        raise combined(errors)


# ---------------------------------------------------------------------------------------------
# saes: named sparse autoencoders (interptest.saes)

SAE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_saes(value, path: str, key: str, key_line: int | None, behavior: str | None) -> tuple[SAESource, ...]:
    """A ``saes:`` mapping (file, defaults or behavior level): each name with ``{path: DIR}`` (SAELens's
    layout, resolved next to the spec file; its cfg.json is read and checked here), ``{zoo: NAME}`` (an SAE
    shipped with interptest, interptest/zoo/saes/NAME) or ``{release: R, id: I}`` (through sae-lens, which
    must be installed). Errors point at the entry's line."""
    if value is None:
        return ()
    lines = getattr(value, "key_lines", {})
    sources = []
    for name, entry in value.items():
        line = lines.get(name, key_line)

        def error(message: str, name=name, line=line) -> NoReturn:
            raise SpecError(message, path=path, line=line, behavior=behavior, key=f"{key}.{name}")

        if not isinstance(name, str) or not SAE_NAME.fullmatch(name):
            error(f"invalid SAE name {name!r}: claims name it, so use letters, digits and '_' (not first a digit)")
        if not isinstance(entry, dict) or set(entry) not in ({"path"}, {"zoo"}, {"release", "id"}):
            error(
                "expected {path: DIR} (a directory with cfg.json and sae_weights.safetensors, relative to the spec "
                "file), {zoo: NAME} (an SAE shipped with interptest) or {release: RELEASE, id: ID} (through "
                f"sae-lens), got {_describe(entry)}"
                + (f" with keys {sorted(map(str, entry))}" if isinstance(entry, dict) else "")
            )
        if not all(isinstance(v, str) and v for v in entry.values()):
            error(f"expected non-empty strings, got {entry!r}")
        if "zoo" in entry:
            if entry["zoo"] not in shipped_saes():
                error(f"no shipped SAE {entry['zoo']!r} (shipped: {', '.join(shipped_saes()) or 'none'})")
            entry = {"path": str(shipped_sae_dir(entry["zoo"]))}
        if "path" in entry:
            directory = Path(entry["path"]).expanduser()
            if not directory.is_absolute() and path not in ("<spec>", "<dict>"):
                directory = Path(path).parent / directory
            try:
                config = read_config(directory)
            except SAEError as problem:
                error(str(problem))
            sources.append(SAESource(name, str(directory), config=config, spec_path=path, line=line))
        else:
            import importlib.util

            if importlib.util.find_spec("sae_lens") is None:
                error(
                    f"release {entry['release']!r}: loading an SAE by release needs the 'sae-lens' package, which "
                    "is not installed (it cannot be installed beside TransformerLens 4); save the SAE in SAELens's "
                    "layout (sae.save_model(dir)) and name it with 'path:'"
                )
            sources.append(SAESource(name, release=entry["release"], sae_id=entry["id"], spec_path=path, line=line))
    return tuple(sources)


def _merge_saes(*levels: tuple[SAESource, ...]) -> tuple[SAESource, ...]:
    """Later levels replace earlier ones' SAEs of the same name."""
    merged: dict[str, SAESource] = {}
    for level in levels:
        for source in level:
            merged[source.name] = source
    return tuple(merged.values())
