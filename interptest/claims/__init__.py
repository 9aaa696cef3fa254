"""Claims: the grammar's registry of claim kinds.

Every claim is one string; its first word picks its kind. A kind is one module of this package
(see :mod:`interptest.claims.base` for what it provides); adding a kind is that module plus one
line in :data:`KINDS`. Imports neither torch nor pytest.
"""

from __future__ import annotations

from interptest import components
from interptest.claims.attention import AttentionClaim
from interptest.claims.base import (
    BindContext,
    Claim,
    Measurement,
    Unjudgeable,
    Verdict,
    judge,
    precision_limit,
)
from interptest.claims.circuit import CircuitClaim
from interptest.claims.direct import DirectClaim
from interptest.claims.features import FeaturesClaim
from interptest.claims.grammar import (
    ClaimBindError,
    ClaimSyntaxError,
    Comparison,
    LayerSelection,
    Parser,
    PositionSelection,
    did_you_mean,
    parse_position,
    pointing,
    position_source,
    resolve_layers,
    resolve_positions,
)
from interptest.claims.lens import LensClaim
from interptest.claims.localization import BoundClaim, LocalizationClaim
from interptest.claims.path import PathClaim
from interptest.claims.prediction import PredictionClaim
from interptest.claims.scores import ScoreClaim

# The registry: each kind owns the first words listed in its ``keywords``.
KINDS: tuple[type[Claim], ...] = (
    PredictionClaim,
    LocalizationClaim,
    AttentionClaim,
    ScoreClaim,
    DirectClaim,
    LensClaim,
    PathClaim,
    CircuitClaim,
    FeaturesClaim,
)


def parse_claim(text: str) -> Claim:
    """Parse one claim string. Raises :class:`ClaimSyntaxError` pointing at the offending column."""
    if not isinstance(text, str) or not text.strip():
        raise ClaimSyntaxError("the claim is empty", str(text), 0)
    parser = Parser(text)
    head = parser.tok
    if head.kind == "ident":
        if head.value == "any":  # a quantifier before a kind's keyword: that keyword picks the kind
            after = parser.tokens[parser.i + 1]
            if after.kind == "ident" and any(k.takes_any and after.value in k.keywords for k in KINDS):
                head = after
        for kind in KINDS:
            if head.value in kind.keywords:
                return kind.parse(parser)
        words = [word for kind in KINDS for word in kind.keywords]
        parser.fail(f"a claim kind ({', '.join(words)})" + did_you_mean(head.value, words))
    parser.fail("a claim: " + ", or ".join(kind.hint for kind in KINDS))
    raise AssertionError("unreachable")


class ClaimBindIndexError(ClaimBindError):
    """A binding error on the index-th claim of a list."""

    def __init__(self, index: int, message: str, at: str | None = None):
        self.index = index
        self.errors: list[ClaimBindIndexError] = [self]  # every claim's error, when binding a list
        super().__init__(message, at)


def bind_claims(
    claims: list, tokens: list[str], n_layers: int, n_heads: int, variables: dict[str, str] | None = None
) -> list:
    """Bind claims for one prompt (``elsewhere`` last, since it depends on the others); errors carry
    the claim's index. For models, the pipeline builds a richer :class:`BindContext`."""

    def no_tokens(text, what):
        raise ClaimBindError(f"{what} needs a tokenizer to bind {text!r}")

    context = BindContext(
        [""], [list(tokens)], [dict(variables or {})], n_layers, n_heads, components.NAMES, "model", no_tokens
    )
    return bind_all(claims, context)


def bind_all(claims: list, context: BindContext) -> list:
    """Bind every claim; a failure raises the first claim's error, with every claim's in ``errors``."""
    bound: dict[int, object] = {}
    errors: list[ClaimBindIndexError] = []
    for late in (False, True):
        for index, claim in enumerate(claims):
            if claim.bind_late == late:
                try:
                    bound[index] = claim.bind(context)
                except ClaimBindError as error:
                    errors.append(ClaimBindIndexError(index, str(error), error.at))
    if errors:
        errors.sort(key=lambda e: e.index)
        errors[0].errors = errors
        raise errors[0]
    return [bound[i] for i in range(len(claims))]


__all__ = [
    "KINDS",
    "BindContext",
    "BoundClaim",
    "Claim",
    "ClaimBindError",
    "ClaimBindIndexError",
    "ClaimSyntaxError",
    "Comparison",
    "LayerSelection",
    "LocalizationClaim",
    "Measurement",
    "PositionSelection",
    "PredictionClaim",
    "Unjudgeable",
    "Verdict",
    "bind_all",
    "bind_claims",
    "judge",
    "precision_limit",
    "parse_claim",
    "parse_position",
    "pointing",
    "position_source",
    "resolve_layers",
    "resolve_positions",
]
