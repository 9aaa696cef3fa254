"""Attention-pattern claims: how much a head attends from one position to another::

    attn[1.0] from -1 to ' Hart' >= 0.5                 each listed head
    attn[1.0, 1.3] from last to ' Hart' together >= 0.8  the mean over the listed heads
    attn[elsewhere] from -1 to ' Hart' <= 0.2           every head no other attn claim names
    attn[1.0] from -1 to ' Hart' on corrupt <= 0.1      read the corrupted run

The value is ``blocks.L.attn.hook_pattern[query, key]`` of head L.H (softmax probabilities; each
query's row sums to 1), on the clean run unless ``on corrupt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from interptest.claims.base import BindContext, Claim, Measurement
from interptest.claims.grammar import (
    ClaimBindError,
    Comparison,
    Parser,
    PositionSelection,
    resolve_heads,
    resolve_positions,
)
from interptest.heatmap import show_token

PATTERN_HOOK = "blocks.{layer}.attn.hook_pattern"


@dataclass(frozen=True)
class BoundAttention:
    heads: tuple[tuple[int, int], ...]
    query: int
    key: int


def single_position(selection: PositionSelection, tokens, variables, what: str) -> int:
    positions = resolve_positions(selection, tokens, variables)
    if len(positions) != 1:
        raise ClaimBindError(f"{what} position {selection.source} selects {len(positions)} positions; give one")
    return positions[0]


def parse_heads_or_elsewhere(p: Parser) -> tuple[tuple[tuple[int, int], ...], bool]:
    """``[1.0, 2.3]`` or ``[elsewhere]`` after a kind's keyword: (heads, elsewhere)."""
    p.expect("punct", "[", f"'[' after {p.tokens[p.i - 1].value}")
    heads: tuple[tuple[int, int], ...]
    if p.accept("ident", "elsewhere"):
        heads, elsewhere = (), True
    else:
        heads, elsewhere = p.head_list(), False
    p.expect("punct", "]", "']'")
    return heads, elsewhere


def elsewhere_heads(context: BindContext, key: str, what: str) -> tuple[tuple[int, int], ...]:
    named = context.covered.get(key)
    if named is None:
        raise ClaimBindError(
            f"{what}[elsewhere] needs another {what} claim in the same behavior to define what 'elsewhere' excludes"
        )
    heads = tuple(
        (layer, head)
        for layer in range(context.n_layers)
        for head in range(context.n_heads)
        if (layer, head) not in named
    )
    if not heads:
        raise ClaimBindError(f"{what}[elsewhere] is empty: the other claims name every head")
    return heads


@dataclass(frozen=True)
class AttentionClaim(Claim):
    text: str
    heads: tuple[tuple[int, int], ...]
    query: PositionSelection
    key: PositionSelection
    quantifier: str  # every | together
    comparison: Comparison
    elsewhere: bool = False
    on_corrupt: bool = False

    keywords: ClassVar[tuple[str, ...]] = ("attn",)
    hint: ClassVar[str] = "attn[L.H] from POS to POS"

    @property
    def bind_late(self) -> bool:
        return self.elsewhere

    @classmethod
    def parse(cls, p: Parser) -> AttentionClaim:
        p.expect("ident", "attn")
        heads, elsewhere = parse_heads_or_elsewhere(p)
        p.expect("ident", "from", "'from' and the query position, e.g. attn[1.0] from -1 to ' Hart'")
        query = p.positions()
        p.expect("ident", "to", "'to' and the key position, e.g. attn[1.0] from -1 to ' Hart'")
        key = p.positions()
        quantifier = "together" if p.accept("ident", "together") else "every"
        on_corrupt = False
        if p.accept("ident", "on"):
            p.expect("ident", "corrupt", "'corrupt' after 'on' (the clean run is the default)")
            on_corrupt = True
        comparison = p.comparison()
        p.end()
        return cls(p.text, heads, query, key, quantifier, comparison, elsewhere, on_corrupt)

    def value_range(self) -> tuple[float, float, str] | None:
        return (0.0, 1.0, "an attention weight")

    def requirement(self, behavior) -> str | None:
        if self.on_corrupt and behavior.corruption is None:
            return f"claim {self.text!r} reads the corrupted run ('on corrupt'); add a 'corrupt' prompt"
        if self.elsewhere and not any(isinstance(c, AttentionClaim) and not c.elsewhere for c in behavior.claims):
            return "attn[elsewhere] needs another attn claim in the same behavior to define what 'elsewhere' excludes"
        return None

    def template_variables(self) -> list[str]:
        return [s.values[0] for s in (self.query, self.key) if s.kind == "variable"]

    def bind(self, context: BindContext) -> BoundAttention:
        if self.elsewhere:
            heads = elsewhere_heads(context, "attn", "attn")
        else:
            heads = tuple(resolve_heads(self.heads, context.n_layers, context.n_heads))
            context.covered.setdefault("attn", set()).update(heads)

        def where(s: int) -> tuple[int, int]:
            tokens, variables = context.tokens[s], context.variables[s]
            query = single_position(self.query, tokens, variables, "query")
            key = single_position(self.key, tokens, variables, "key")
            if key > query:
                raise ClaimBindError(
                    f"key position {key} ({tokens[key]!r}) comes after query position {query} "
                    f"({tokens[query]!r}): causal attention there is always 0"
                )
            return query, key

        return BoundAttention(heads, *context.same_on_every_sample(where))

    def measure(self, bound: BoundAttention, run) -> Measurement:
        import torch

        layers = sorted({layer for layer, _ in bound.heads})
        names = [PATTERN_HOOK.format(layer=layer) for layer in layers]
        patterns = run.activations("corrupt" if self.on_corrupt else "clean", names)
        columns = [patterns[PATTERN_HOOK.format(layer=l)][:, h, bound.query, bound.key] for l, h in bound.heads]
        values = torch.stack(columns, dim=1).double()
        figure = None
        if not self.elsewhere:  # the patterns of the heads a behavior names: queries × keys, sample mean
            figure = {
                "type": "attention",
                "run": "corrupt" if self.on_corrupt else "clean",
                "query": bound.query,
                "key": bound.key,
                "tokens": list(run.tokens),
                "heads": {
                    f"{l}.{h}": patterns[PATTERN_HOOK.format(layer=l)][:, h].mean(dim=0).tolist()
                    for l, h in bound.heads[:4]
                },
            }
        if self.quantifier == "together":
            return Measurement(
                values.mean(dim=1, keepdim=True),
                quantifier="together",
                note=f"mean over {len(bound.heads)} heads",
                figure=figure,
            )
        return Measurement(values, bound.heads, [f"head {l}.{h}" for l, h in bound.heads], figure=figure)

    def render(self, check, color: bool = False) -> list[str]:
        figure = check.figure
        if not figure:
            return []
        tokens = figure["tokens"]
        lines = ["", f"  attention from position {figure['query']} for {check.text!r} ({figure['run']} run; top keys)"]
        for head, pattern in figure["heads"].items():
            row = pattern[figure["query"]]
            top = sorted(range(len(row)), key=lambda k: -row[k])[:4]
            keys = "  ".join(f"{k} {show_token(tokens[k]) if k < len(tokens) else ''} {row[k]:z.2f}" for k in top)
            lines.append(f"    head {head}: {keys}")
        return lines
