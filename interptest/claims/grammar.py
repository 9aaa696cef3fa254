"""The shared grammar of claims: lexer, parser helpers, comparisons, layer/position selections,
and their binding to a prompt's tokens and a model's dimensions.

Each claim kind (one module beside this one) parses its own syntax with these helpers; the
registry in :mod:`interptest.claims` dispatches on a claim's first word. Pure Python: imports
neither torch nor pytest.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass
from typing import NoReturn

from interptest import components
from interptest.graphs import GraphFileError, parse_edge

OPERATORS = (">=", "<=", "==", ">", "<")


class ClaimSyntaxError(ValueError):
    """A claim string does not follow the grammar; ``column`` is 0-based."""

    def __init__(self, message: str, text: str, column: int):
        self.message = message
        self.text = text
        self.column = column
        super().__init__(self.render())

    def render(self) -> str:
        return (
            f"cannot parse claim at column {self.column + 1}: {self.message}\n    {self.text}\n    {' ' * self.column}^"
        )


class ClaimBindError(ValueError):
    """A well-formed claim names something the prompt or the model does not have; ``at`` is the part of
    the claim's text at fault, when known (the message points at it)."""

    def __init__(self, message: str, at: str | None = None):
        self.at = at
        super().__init__(message)


def pointing(text: str, at: str | None) -> str:
    """``text`` on a line of its own with carets under ``at`` (under all of it when ``at`` is not in it),
    as a parse error points at its column."""
    start = text.find(at) if at else -1
    width = len(at) if at and start >= 0 else len(text)
    return f"    {text}\n    {' ' * max(start, 0)}{'^' * max(width, 1)}"


# ---------------------------------------------------------------------------------------------
# Claim objects


@dataclass(frozen=True)
class Comparison:
    op: str
    threshold: float

    def holds(self, value: float) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return {
            ">=": value >= self.threshold,
            "<=": value <= self.threshold,
            ">": value > self.threshold,
            "<": value < self.threshold,
            "==": math.isclose(value, self.threshold, rel_tol=1e-6, abs_tol=1e-6),
        }[self.op]

    @property
    def wants_high(self) -> bool:
        """True when larger values are better (the worst cell is then the smallest)."""
        return self.op in (">=", ">")

    def __str__(self) -> str:
        return f"{self.op} {self.threshold:g}"


@dataclass(frozen=True)
class LayerSelection:
    """``2`` / ``a:b`` / ``[0, 2]``; ``kind`` is index, slice or list."""

    kind: str
    values: tuple
    source: str


@dataclass(frozen=True)
class PositionSelection:
    """``-1`` / ``last`` / ``a:b`` / ``' Alex'#2`` / ``{last}``; ``kind`` is index, last, slice,
    token or variable."""

    kind: str
    values: tuple
    source: str


ABLATIONS = ("resample", "mean", "zero")
# the verbs of an edit: recovers patches clean values into the corrupted run (denoise), breaks the reverse
EDIT_VERBS = {"recovers": "denoise", "breaks": "noise"}
NODE_COMPONENTS = components.CIRCUIT_NODES


@dataclass(frozen=True)
class NodeSpec:
    """One entry of a node list: ``heads[L.H, ...]`` or ``mlp_out[LAYERS]``, optionally ``; POSITIONS``."""

    component: str  # heads | mlp_out
    heads: tuple[tuple[int, int], ...]
    layers: LayerSelection | None
    positions: PositionSelection | None
    source: str


@dataclass(frozen=True)
class ReceiverSpec:
    """The receiving end of a path: ``heads[...].q|k|v``, ``mlp_in[LAYERS]`` or ``logits``."""

    kind: str  # q | k | v | mlp_in | logits
    heads: tuple[tuple[int, int], ...]
    layers: LayerSelection | None
    positions: PositionSelection | None
    source: str


@dataclass(frozen=True)
class EdgeSpec:
    """One edge of an edge list, as written (``a0.h2->a1.h0<k>``); resolved against the model at binding."""

    text: str
    column: int


@dataclass(frozen=True)
class GraphRef:
    """``@path`` (a graph file's in-graph edges) or ``top K edges of @path`` (its K highest-|score| edges)."""

    path: str
    top: int | None
    source: str  # as written, for messages


@dataclass(frozen=True)
class RandomControl:
    """``beats random at q``: a negative control against random node sets of the same composition."""

    quantile: float
    column: int = 0


# ---------------------------------------------------------------------------------------------
# Lexer


@dataclass(frozen=True)
class _Token:
    kind: str  # ident, number, string, op, punct, file (@path), end
    value: str  # the token's text (a string's contents, unquoted); "" for the end
    start: int
    end: int


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PUNCT = "[](),:;#{}.+"
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"'}


def _lex(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch in "'\"":
            j, chars = i + 1, []
            while j < len(text) and text[j] != ch:
                if text[j] == "\\" and j + 1 < len(text):
                    chars.append(_ESCAPES.get(text[j + 1], "\\" + text[j + 1]))
                    j += 2
                else:
                    chars.append(text[j])
                    j += 1
            if j >= len(text):
                raise ClaimSyntaxError(f"unterminated string: missing closing {ch}", text, i)
            tokens.append(_Token("string", "".join(chars), i, j + 1))
            i = j + 1
            continue
        if ch == "@" and i + 1 < len(text) and not text[i + 1].isspace():  # a file: @path or @'quoted path'
            if i + 1 < len(text) and text[i + 1] in "'\"":
                close = text.find(text[i + 1], i + 2)
                if close < 0:
                    raise ClaimSyntaxError(f"unterminated file name: missing closing {text[i + 1]}", text, i + 1)
                tokens.append(_Token("file", text[i + 2 : close], i, close + 1))
                i = close + 1
                continue
            j = i + 1
            while j < len(text) and not text[j].isspace():
                j += 1
            tokens.append(_Token("file", text[i + 1 : j], i, j))
            i = j
            continue
        two = text[i : i + 2]
        if two == "->":
            tokens.append(_Token("punct", "->", i, i + 2))
            i += 2
            continue
        if two in (">=", "<=", "=="):
            tokens.append(_Token("op", two, i, i + 2))
            i += 2
            continue
        if ch in "<>":
            tokens.append(_Token("op", ch, i, i + 1))
            i += 1
            continue
        if ch == "=":
            raise ClaimSyntaxError("'=' is not a comparison; use '==', '>=' or '<='", text, i)
        if ch == "!":
            raise ClaimSyntaxError("'!=' is not supported; use '<', '>', '<=' or '>='", text, i)
        number = _NUMBER.match(text, i)
        if number and (ch.isdigit() or ch == "." or (ch in "+-" and number.end() > i + 1)):
            tokens.append(_Token("number", number.group(), i, number.end()))
            i = number.end()
            continue
        ident = _IDENT.match(text, i)
        if ident:
            tokens.append(_Token("ident", ident.group(), i, ident.end()))
            i = ident.end()
            continue
        if ch in _PUNCT:
            tokens.append(_Token("punct", ch, i, i + 1))
            i += 1
            continue
        raise ClaimSyntaxError(f"unexpected character {ch!r}", text, i)
    tokens.append(_Token("end", "", len(text), len(text)))
    return tokens


# ---------------------------------------------------------------------------------------------
# Parser


# The words that modify a claim, and the one order every kind reads them in (docs/claims/index.md).
MODIFIERS = ("any", "together", "on", "beats", "ablate", "of")
MODIFIER_ORDER = (
    "the words of a claim go in this order: any, the quantity, together, on corrupt or on random_repeat, "
    "the verb (recovers, breaks, faithful, minimal), the comparison or beats random at Q, then ablate or of "
    "logit_diff"
)


class Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _lex(text)
        self.i = 0

    # -- helpers
    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def fail(self, expected: str, tok: _Token | None = None) -> NoReturn:
        tok = tok or self.tok
        found = "the end of the claim" if tok.kind == "end" else repr(self.text[tok.start : tok.end])
        order = ""
        if tok.kind == "ident" and tok.value in MODIFIERS and f"'{tok.value}'" not in expected:
            order = f"; {MODIFIER_ORDER}"  # a modifier in the wrong place: say where it goes
        raise ClaimSyntaxError(f"expected {expected}, found {found}{order}", self.text, tok.start)

    def accept(self, kind: str, value=None) -> _Token | None:
        tok = self.tok
        if tok.kind == kind and (value is None or tok.value == value):
            self.i += 1
            return tok
        return None

    def expect(self, kind: str, value=None, what: str | None = None) -> _Token:
        tok = self.accept(kind, value)
        if tok is None:
            self.fail(what or (repr(value) if value else kind))
        return tok

    def integer(self, what: str) -> int:
        tok = self.tok
        if tok.kind != "number" or not re.fullmatch(r"[+-]?\d+", tok.value):
            self.fail(what)
        self.i += 1
        return int(tok.value)

    # -- pieces every kind shares
    def comparison(self) -> Comparison:
        op = self.accept("op")
        if op is None:
            self.fail("a comparison (>=, <=, >, <, ==)")
        tok = self.tok
        if tok.kind != "number":
            self.fail("a number")
        self.i += 1
        return Comparison(op.value, float(tok.value))

    def end(self) -> None:
        if self.tok.kind != "end":
            self.fail("the end of the claim")

    def head_list(self) -> tuple[tuple[int, int], ...]:
        heads = []
        while True:
            tok = self.tok
            match = re.fullmatch(r"([+-]?\d+)\.(\d+)", tok.value) if tok.kind == "number" else None
            if match is None:
                self.fail("a head as LAYER.HEAD, e.g. heads[1.0, 2.3]")
            self.i += 1
            heads.append((int(match.group(1)), int(match.group(2))))
            if not self.accept("punct", ","):
                return tuple(heads)

    def _slice_or_index(self, what: str):
        """Parses ``a``, ``a:b``, ``a:``, ``:b`` or ``:``; returns ('index', (a,)) or ('slice', (a, b))."""
        start_tok = self.tok
        start = self.integer(what) if self.tok.kind == "number" else None
        if self.accept("punct", ":"):
            stop = self.integer(what) if self.tok.kind == "number" else None
            return "slice", (start, stop), self.text[start_tok.start : self.tokens[self.i - 1].end]
        if start is None:
            self.fail(what)
        return "index", (start,), self.text[start_tok.start : self.tokens[self.i - 1].end]

    def layers(self) -> LayerSelection:
        start = self.tok
        if self.accept("punct", "["):
            values = [self.integer("a layer number")]
            while self.accept("punct", ","):
                values.append(self.integer("a layer number"))
            self.expect("punct", "]", "']' closing the layer list")
            return LayerSelection("list", tuple(values), self.text[start.start : self.tokens[self.i - 1].end])
        kind, values, source = self._slice_or_index(
            "a layer: an integer, a slice such as 2: or 0:2, or a list such as [0, 2]"
        )
        return LayerSelection(kind, values, source)

    def positions(self) -> PositionSelection:
        start = self.tok
        if self.accept("ident", "last"):
            return PositionSelection("last", (), "last")
        if start.kind == "string":
            self.i += 1
            if start.value == "":
                raise ClaimSyntaxError("the position token text is empty", self.text, start.start)
            occurrence = self.occurrence()
            return PositionSelection(
                "token", (start.value, occurrence), self.text[start.start : self.tokens[self.i - 1].end]
            )
        if self.accept("punct", "{"):
            name = self.expect("ident", what="a template variable name").value
            self.expect("punct", "}", "'}'")
            occurrence = self.occurrence()
            return PositionSelection(
                "variable", (name, occurrence), self.text[start.start : self.tokens[self.i - 1].end]
            )
        kind, values, source = self._slice_or_index(
            "a position: an integer, last, a slice, a quoted token such as ' Alex' or ' Alex'#2"
        )
        return PositionSelection(kind, values, source)

    def occurrence(self) -> int | None:
        if not self.accept("punct", "#"):
            return None
        tok = self.tok
        n = self.integer("an occurrence number after '#', e.g. ' Alex'#2")
        if n < 1:
            raise ClaimSyntaxError("occurrences count from 1", self.text, tok.start)
        return n

    # -- node lists, receivers, ablations and random controls (circuit and path claims)
    def node_list(self, what: str = "a node list") -> tuple[NodeSpec, ...]:
        """``heads[0.3, 1.0] + mlp_out[0, 1]``: attention heads and MLP layers, each optionally at
        positions after ';' (``heads[1.0; -1]``, ``mlp_out[0; ' Hart']``)."""
        nodes = [self.node(what)]
        while self.accept("punct", "+"):
            nodes.append(self.node("a node after '+'"))
        return tuple(nodes)

    def node(self, what: str) -> NodeSpec:
        start = self.tok
        if start.kind != "ident" or start.value not in NODE_COMPONENTS:
            self.fail(
                f"{what}: attention heads heads[L.H, ...] or MLP layers mlp_out[L, ...]"
                + (did_you_mean(start.value, NODE_COMPONENTS) if start.kind == "ident" else "")
            )
        self.i += 1
        heads, layers, positions = self.heads_or_layers(start.value, "';' and positions, or ']'")
        return NodeSpec(start.value, heads, layers, positions, self.text[start.start : self.tokens[self.i - 1].end])

    def heads_or_layers(
        self, name: str, unclosed: str = "']'"
    ) -> tuple[tuple[tuple[int, int], ...], LayerSelection | None, PositionSelection | None]:
        """``[L.H, ...; POS]`` after ``heads``, ``[LAYERS; POS]`` after an MLP name; ``unclosed`` is what
        is expected when no positions follow."""
        self.expect("punct", "[", f"'[' after {name}")
        heads: tuple[tuple[int, int], ...] = ()
        layers: LayerSelection | None = None
        positions: PositionSelection | None = None
        if name == "heads":
            heads = self.head_list()
        else:
            layers = self.node_layers()
        if self.accept("punct", ";"):
            positions = self.positions()
        self.expect("punct", "]", "']'" if positions is not None else unclosed)
        return heads, layers, positions

    def node_layers(self) -> LayerSelection:
        """``0``, ``0, 1``, ``0:2`` or ``:`` inside ``mlp_out[...]`` of a node list."""
        start = self.tok
        kind, values, _ = self._slice_or_index("an MLP layer: an integer, a list such as 0, 1, or a slice such as 0:2")
        if kind == "index":
            values = list(values)
            while self.accept("punct", ","):
                if self.tok.kind != "number":
                    self.fail("another layer number (in a node list, positions follow ';', e.g. mlp_out[0; -1])")
                values.append(self.integer("a layer number"))
            if len(values) > 1:
                return LayerSelection("list", tuple(values), self.text[start.start : self.tokens[self.i - 1].end])
            values = tuple(values)
        return LayerSelection(kind, values, self.text[start.start : self.tokens[self.i - 1].end])

    def edge_list(self) -> tuple[EdgeSpec, ...]:
        """``edges[input->a0.h2<v>, a0.h2->a1.h0<k>, m1->logits]``: each edge's text, checked against the
        edge syntax of :func:`interptest.graphs.parse_edge` (its layers and heads are checked at binding)."""
        self.expect("ident", "edges")
        self.expect("punct", "[", "'[' after edges")
        out: list[EdgeSpec] = []
        while True:
            first = self.tok
            self._edge_node("an edge SENDER->RECEIVER, e.g. a0.h2->a1.h0<k>, input->m0 or m1->logits")
            self.expect("punct", "->", "'->' and the edge's receiver, e.g. a0.h2->a1.h0<k>")
            self._edge_node("the edge's receiver: a<L>.h<H><q|k|v>, m<L> or logits")
            if self.accept("op", "<"):
                self.expect("ident", None, "q, k or v: which input of the receiving head")
                self.expect("op", ">", "'>' closing <q>, <k> or <v>")
            text = self.text[first.start : self.tokens[self.i - 1].end]
            try:
                parse_edge(text)
            except GraphFileError as error:
                raise ClaimSyntaxError(str(error), self.text, first.start) from None
            out.append(EdgeSpec(text, first.start))
            if self.accept("punct", "]"):
                return tuple(out)
            self.expect("punct", ",", "',' or ']' after an edge")

    def _edge_node(self, what: str) -> None:
        """A node name's tokens: ``input``, ``logits``, ``m1`` or ``a0`` '.' ``h2`` (checked by parse_edge)."""
        if not self.accept("ident"):
            self.fail(what)
        if self.accept("punct", "."):
            self.expect("ident", None, "h<H> after '.', e.g. a0.h2")

    def graph_ref(self) -> GraphRef:
        """``@path`` or ``top K edges of @path``."""
        start = self.tok
        top = None
        if self.accept("ident", "top"):
            top = self.integer("how many edges: top K edges of @file")
            if top < 1:
                raise ClaimSyntaxError(f"top {top}: K must be at least 1", self.text, start.start)
            self.expect("ident", "edges", "'edges' after 'top K'")
            self.expect("ident", "of", "'of' and a graph file, e.g. top 50 edges of @circuits/scores.json")
        tok = self.tok
        if tok.kind != "file":
            self.fail("a graph file: @path (EAP-IG's graph JSON, relative to the spec file)")
        self.i += 1
        return GraphRef(tok.value, top, self.text[start.start : tok.end])

    def receivers(self) -> tuple[ReceiverSpec, ...]:
        """``heads[1.0].k``, ``heads[1.0, 1.3; -1].q``, ``mlp_in[1]``, ``logits``, joined by '+'."""
        out = [self.receiver()]
        while self.accept("punct", "+"):
            out.append(self.receiver())
        return tuple(out)

    def receiver(self) -> ReceiverSpec:
        start = self.tok
        if self.accept("ident", "logits"):
            return ReceiverSpec("logits", (), None, None, "logits")
        if start.kind == "ident" and start.value in ("heads", "mlp_in"):
            self.i += 1
            heads, layers, positions = self.heads_or_layers(start.value)
            kind = "mlp_in"
            if start.value == "heads":
                if not self.accept("punct", "."):
                    self.fail("'.q', '.k' or '.v' after the receiving heads, e.g. heads[1.0].k")
                which = self.tok
                if which.kind != "ident" or which.value not in ("q", "k", "v"):
                    self.fail(
                        "q, k or v: the head's query, key or value input"
                        + (did_you_mean(which.value, ("q", "k", "v")) if which.kind == "ident" else "")
                    )
                self.i += 1
                kind = which.value
            return ReceiverSpec(kind, heads, layers, positions, self.text[start.start : self.tokens[self.i - 1].end])
        self.fail(
            "a receiver: heads[L.H].q, heads[L.H].k, heads[L.H].v, mlp_in[L] or logits"
            + (did_you_mean(start.value, ("heads", "mlp_in", "logits")) if start.kind == "ident" else "")
        )
        raise AssertionError("unreachable")

    def comparison_or_random(self) -> tuple[Comparison, RandomControl | None]:
        """A comparison, or ``beats random at q``: the value must exceed the q-quantile of the same
        quantity for random node sets of the same composition."""
        start = self.tok
        if not self.accept("ident", "beats"):
            return self.comparison(), None
        self.expect("ident", "random", "'random' after 'beats'")
        self.expect("ident", "at", "'at' and a quantile, e.g. beats random at 0.95")
        tok = self.tok
        if tok.kind != "number":
            self.fail("a quantile between 0 and 1, e.g. 0.95")
        self.i += 1
        q = float(tok.value)
        if not 0 < q < 1:
            raise ClaimSyntaxError(
                f"the quantile must be between 0 and 1 (exclusive), got {tok.value}", self.text, tok.start
            )
        return Comparison(">", math.nan), RandomControl(q, start.start)

    def edit_tail(
        self, quantifier: str, edit: str, sets: str, replaced: str, clean: str
    ) -> tuple[str, str, Comparison, RandomControl | None, str | None]:
        """What follows the ``]`` of an edit of activations (localization) or features: ``[together]
        recovers|breaks COMPARISON [ablate A]``, or ``together ... beats random at q``. Returns the
        quantifier, the direction (``denoise`` for recovers, ``noise`` for breaks), the comparison, the
        random control and the ablation. ``edit``, ``sets``, ``replaced`` and ``clean`` word the errors
        (one joint *patch* with random *sets*; what replaces the *activations*; 'recovers' patches *clean
        activations*)."""
        together = self.tok
        if self.accept("ident", "together"):
            if quantifier == "any":
                raise ClaimSyntaxError("'any' and 'together' cannot be combined", self.text, together.start)
            quantifier = "together"
        verb = self.tok
        if verb.kind != "ident" or verb.value not in EDIT_VERBS:
            self.fail(
                "'recovers' or 'breaks'"
                + (did_you_mean(verb.value, tuple(EDIT_VERBS) + ("together",)) if verb.kind == "ident" else "")
            )
        self.i += 1
        comparison, random = self.comparison_or_random()
        if random is not None and quantifier != "together":
            raise ClaimSyntaxError(
                f"'beats random' compares one joint {edit} with random {sets} of the same size: "
                "write 'together' before the verb",
                self.text,
                random.column,
            )
        at = self.tok
        ablation = self.ablation()
        if ablation is not None and verb.value != "breaks":
            raise ClaimSyntaxError(
                f"'ablate' names what replaces the {replaced} of a 'breaks' claim; 'recovers' "
                f"patches {clean} into the corrupted run",
                self.text,
                at.start,
            )
        return quantifier, EDIT_VERBS[verb.value], comparison, random, ablation

    def ablation(self) -> str | None:
        """An optional ``ablate resample|mean|zero`` suffix."""
        if not self.accept("ident", "ablate"):
            return None
        tok = self.tok
        if tok.kind != "ident" or tok.value not in ABLATIONS:
            self.fail(
                f"an ablation after 'ablate' ({', '.join(ABLATIONS)})"
                + (did_you_mean(tok.value, ABLATIONS) if tok.kind == "ident" else "")
            )
        self.i += 1
        return tok.value


def parse_position(text: str) -> PositionSelection:
    """One position reference, as written inside a claim: ``-1``, ``last``, ``' Alex'#2``, ``{first}``."""
    parser = Parser(str(text))
    selection = parser.positions()
    if parser.tok.kind != "end":
        parser.fail("the end of the position")
    return selection


def did_you_mean(word: str, choices) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------------------------------
# Binding: concrete layers, positions and heads for one prompt and one model


def resolve_index(value: int, size: int, noun: str, plural: str) -> int:
    if not -size <= value < size:
        raise ClaimBindError(
            f"{noun} {value} is out of range: there are {size} {plural} "
            f"(0 to {size - 1}, or -1 to -{size} from the end)"
        )
    return value % size


def _resolve_slice(start, stop, size: int, noun: str, plural: str, source: str) -> list[int]:
    for bound in (start, stop):
        if bound is not None and not -size <= bound <= size:
            raise ClaimBindError(f"{noun} slice {source} reaches past the end: there are {size} {plural}", source)
    selected = list(range(size))[slice(start, stop)]
    if not selected:
        raise ClaimBindError(f"{noun} slice {source} selects no {noun}", source)
    return selected


def resolve_layers(selection: LayerSelection, n_layers: int) -> list[int]:
    try:
        return _resolve_layers(selection, n_layers)
    except ClaimBindError as error:
        raise ClaimBindError(str(error), error.at or selection.source) from None


def _resolve_layers(selection: LayerSelection, n_layers: int) -> list[int]:
    if selection.kind == "index":
        return [resolve_index(selection.values[0], n_layers, "layer", "layers")]
    if selection.kind == "slice":
        start, stop = selection.values
        return _resolve_slice(start, stop, n_layers, "layer", "layers", selection.source)
    layers = [resolve_index(v, n_layers, "layer", "layers") for v in selection.values]
    if len(set(layers)) != len(layers):
        raise ClaimBindError(f"layer list {selection.source} names a layer twice")
    return layers


def resolve_heads(heads, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """``heads[L.H, ...]`` as (layer, head) pairs, each in range and named once."""
    resolved = []
    for layer, head in heads:
        layer = resolve_index(layer, n_layers, "layer", "layers")
        if not 0 <= head < n_heads:
            raise ClaimBindError(
                f"head {layer}.{head} is out of range: each layer has {n_heads} heads (0 to {n_heads - 1})",
                f"{layer}.{head}",
            )
        resolved.append((layer, head))
    if len(set(resolved)) != len(resolved):
        raise ClaimBindError("the head list names a head twice")
    return resolved


def resolve_positions(
    selection: PositionSelection, tokens: list[str], variables: dict[str, str] | None = None
) -> list[int]:
    try:
        return _resolve_positions(selection, tokens, variables)
    except ClaimBindError as error:
        raise ClaimBindError(str(error), error.at or selection.source) from None


def _resolve_positions(selection: PositionSelection, tokens: list[str], variables: dict[str, str] | None) -> list[int]:
    n = len(tokens)
    if selection.kind == "last":
        return [n - 1]
    if selection.kind == "index":
        return [resolve_index(selection.values[0], n, "position", "positions")]
    if selection.kind == "slice":
        start, stop = selection.values
        return _resolve_slice(start, stop, n, "position", "positions", selection.source)
    text, occurrence = selection.values
    if selection.kind == "variable":
        if variables is None or text not in variables:
            known = ", ".join(sorted(variables)) if variables else "none: this is not a template behavior"
            raise ClaimBindError(f"position {selection.source} names an unknown template variable (variables: {known})")
        text = variables[text]
    matches = [i for i, tok in enumerate(tokens) if tok == text]
    if not matches:
        stripped = [i for i, tok in enumerate(tokens) if tok.strip() == text.strip()]
        hint = f"; did you mean {tokens[stripped[0]]!r} (mind the leading space)?" if stripped else ""
        raise ClaimBindError(f"position token {text!r} does not occur in the prompt's tokens {tokens}{hint}")
    if occurrence is None:
        if len(matches) > 1:
            options = " or ".join(f"{text!r}#{k + 1}" for k in range(len(matches)))
            raise ClaimBindError(
                f"position token {text!r} is ambiguous: it occurs {len(matches)} times "
                f"(positions {', '.join(map(str, matches))}); write {options}"
            )
        return matches
    if occurrence > len(matches):
        raise ClaimBindError(
            f"position {selection.source} asks for occurrence {occurrence} but "
            f"{text!r} occurs {len(matches)} time(s) in the prompt"
        )
    return [matches[occurrence - 1]]


def position_source(p: int, tokens: list[list[str]], variables: list[dict] | None = None) -> str:
    """How a claim writes position ``p`` so that it binds to ``p`` on every sample (each sample's
    ``tokens`` and template ``variables``): a template variable first (``{b}#2``: a family's tokens
    change from sample to sample), then the quoted token (``' Hart'``, ``' to'#2``), then ``-1`` for the
    last position, then the index itself."""
    variables = variables or [{} for _ in tokens]
    first = tokens[0]
    candidates = []
    for name, text in variables[0].items():
        count = first.count(text)
        candidates += [f"{{{name}}}"] if count == 1 else [f"{{{name}}}#{k}" for k in range(1, count + 1)]
    count = first.count(first[p])
    candidates += [repr(first[p])] if count == 1 else []
    candidates += ["-1"] if p == len(first) - 1 else []
    candidates += [f"{first[p]!r}#{k}" for k in range(1, count + 1)] if count > 1 else []
    for candidate in candidates:
        try:
            selection = parse_position(candidate)
            if all(resolve_positions(selection, t, v) == [p] for t, v in zip(tokens, variables)):
                return candidate
        except (ClaimSyntaxError, ClaimBindError):
            continue
    return str(p)


def template_fields(text: str) -> list[str]:
    """The ``{variable}`` names a template uses, in order of first use."""
    try:
        names = [field for _, field, _, _ in string.Formatter().parse(text) if field is not None]
    except ValueError as problem:
        raise ValueError(f"malformed template {text!r}: {problem} (write '{{{{' for a literal brace)") from None
    return list(dict.fromkeys(names))
