"""Localization claims, verified by activation patching::

    resid_pre[0:2, ' Hart'] recovers >= 0.9      every cell of the region
    any resid_mid[1:, last] recovers >= 0.5      at least one cell
    heads[1.0, 2.3] together recovers >= 0.6     all cells patched jointly, one value
    heads[2.3; -1] breaks >= 0.2                 a head at given positions
    resid_pre[elsewhere] recovers <= 0.1         every cell no other claim on the component covers

``recovers`` patches clean activations into the corrupted run (denoising), ``breaks`` corrupted
activations into the clean run (noising); values are normalized logit differences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from interptest import components
from interptest.claims.base import BindContext, Claim, Measurement, Unjudgeable, ablation_requirement
from interptest.claims.grammar import (
    ClaimBindError,
    ClaimSyntaxError,
    Comparison,
    LayerSelection,
    Parser,
    PositionSelection,
    RandomControl,
    did_you_mean,
    resolve_heads,
    resolve_layers,
    resolve_positions,
)
from interptest.maps import map_key, render_map

VERBS = {"recovers": "denoise", "breaks": "noise"}


@dataclass(frozen=True)
class BoundClaim:
    """A localization claim resolved to concrete cells.

    Cells are ``(layer, position)`` for residual components; ``(layer, head)`` for heads over all
    positions; ``(layer, head, position)`` for heads restricted to positions.
    """

    claim: LocalizationClaim
    cells: tuple[tuple[int, ...], ...]
    positions: tuple[int, ...] = ()


@dataclass(frozen=True)
class LocalizationClaim(Claim):
    text: str
    component: str
    direction: str  # denoise (recovers) | noise (breaks)
    quantifier: str  # every | any | together
    comparison: Comparison
    elsewhere: bool = False
    layers: LayerSelection | None = None  # per-position components
    positions: PositionSelection | None = None  # per-position components, or heads[...; POS]
    heads: tuple[tuple[int, int], ...] = ()  # heads[L.H, ...]
    ablation: str | None = None  # breaks ... ablate resample|mean|zero (None: resample)
    random: RandomControl | None = None  # together ... beats random at q

    keywords: ClassVar[tuple[str, ...]] = ("any",) + components.NAMES
    hint: ClassVar[str] = "a component such as resid_pre[...]"

    @property
    def verb(self) -> str:
        return "recovers" if self.direction == "denoise" else "breaks"

    @property
    def bind_late(self) -> bool:
        return self.elsewhere

    # -- grammar
    @classmethod
    def parse(cls, p: Parser) -> LocalizationClaim:
        quantifier = "any" if p.accept("ident", "any") else "every"
        comp_tok = p.tok
        if comp_tok.kind != "ident" or comp_tok.value not in components.COMPONENTS:
            p.fail(
                f"a component ({', '.join(components.NAMES)})"
                + (did_you_mean(comp_tok.value, components.NAMES) if comp_tok.kind == "ident" else "")
            )
        p.i += 1
        component = components.get(comp_tok.value)
        p.expect("punct", "[", f"'[' after {component.name}")
        fields: dict = {}
        if p.tok.kind == "ident" and p.tok.value == "elsewhere":
            p.i += 1
            fields["elsewhere"] = True
        elif component.per_head:
            fields["heads"] = p.head_list()
            if p.accept("punct", ";"):
                fields["positions"] = p.positions()
        else:
            fields["layers"] = p.layers()
            if not p.accept("punct", ","):
                p.fail(f"',' and a position part, e.g. {component.name}[2, -1] (use ':' for every position)")
            fields["positions"] = p.positions()
        p.expect("punct", "]", "']'")
        together = p.tok
        if p.accept("ident", "together"):
            if quantifier == "any":
                raise ClaimSyntaxError("'any' and 'together' cannot be combined", p.text, together.start)
            quantifier = "together"
        verb = p.tok
        if verb.kind != "ident" or verb.value not in VERBS:
            p.fail(
                "'recovers' or 'breaks'"
                + (did_you_mean(verb.value, tuple(VERBS) + ("together",)) if verb.kind == "ident" else "")
            )
        p.i += 1
        comparison, fields["random"] = p.comparison_or_random()
        if fields["random"] is not None and quantifier != "together":
            raise ClaimSyntaxError(
                "'beats random' compares one joint patch with random sets of the same size: "
                "write 'together' before the verb",
                p.text,
                fields["random"].column,
            )
        ablation = p.tok
        fields["ablation"] = p.ablation()
        if fields["ablation"] is not None and verb.value != "breaks":
            raise ClaimSyntaxError(
                "'ablate' names what replaces the activations of a 'breaks' claim; 'recovers' "
                "patches clean activations into the corrupted run",
                p.text,
                ablation.start,
            )
        p.end()
        return cls(p.text, component.name, VERBS[verb.value], quantifier, comparison, **fields)

    # -- what the spec must give
    def requirement(self, behavior) -> str | None:
        if behavior.corruption is None:
            return (
                f"claim {self.text!r} patches activations between a clean and a corrupted run; add a "
                "'corrupt' prompt to the behavior"
            )
        if self.elsewhere and not any(
            isinstance(c, LocalizationClaim) and c.component == self.component and not c.elsewhere
            for c in behavior.claims
        ):
            return (
                f"{self.component}[elsewhere] needs another claim on {self.component} in the same behavior "
                "to define what 'elsewhere' excludes"
            )
        if self.ablation is not None:
            return ablation_requirement(self.text, self.ablation, behavior)
        return None

    def template_variables(self) -> list[str]:
        if self.positions is not None and self.positions.kind == "variable":
            return [self.positions.values[0]]
        return []

    # -- binding
    def bind(self, context: BindContext) -> BoundClaim:
        if self.component not in context.components:
            raise ClaimBindError(
                f"this model does not expose {self.component!r} (available: {', '.join(context.components)})"
            )
        if self.elsewhere:
            return self._bind_elsewhere(context)
        bound = context.same_on_every_sample(
            lambda s: self._bind_cells(context.tokens[s], context.variables[s], context.n_layers, context.n_heads)
        )
        context.covered.setdefault(self.component, set()).update(cell[:2] for cell in bound.cells)
        if self.random is not None:
            from interptest.claims.circuit import cells_to_nodes, check_random_control

            check_random_control(cells_to_nodes(self.component, bound.cells), context.n_layers, context.n_heads)
        return bound

    def _bind_cells(self, tokens, variables, n_layers: int, n_heads: int) -> BoundClaim:
        if components.get(self.component).per_head:
            heads = resolve_heads(self.heads, n_layers, n_heads)
            if self.positions is None:
                return BoundClaim(self, tuple(heads))
            positions = resolve_positions(self.positions, tokens, variables)
            return BoundClaim(self, tuple((l, h, p) for l, h in heads for p in positions), tuple(positions))
        # the grammar requires both for a per-layer component: comp[LAYERS, POSITIONS]
        assert self.layers is not None and self.positions is not None, self.text
        layers = resolve_layers(self.layers, n_layers)
        positions = resolve_positions(self.positions, tokens, variables)
        return BoundClaim(self, tuple((l, p) for l in layers for p in positions), tuple(positions))

    def _bind_elsewhere(self, context: BindContext) -> BoundClaim:
        covered = context.covered.get(self.component)
        if covered is None:
            raise ClaimBindError(
                f"{self.component}[elsewhere] needs another claim on {self.component} in the "
                "same behavior to define what 'elsewhere' excludes"
            )
        width = context.n_heads if components.get(self.component).per_head else len(context.tokens[0])
        cells = tuple(
            (layer, j) for layer in range(context.n_layers) for j in range(width) if (layer, j) not in covered
        )
        if not cells:
            raise ClaimBindError(f"{self.component}[elsewhere] is empty: the other claims cover every cell")
        return BoundClaim(self, cells)

    # -- measuring
    def measure(self, bound: BoundClaim, run) -> Measurement:
        from interptest.claims import circuit

        if self.ablation in ("mean", "zero"):
            measurement = circuit.measure_ablated(self, bound, run)
        else:
            measurement = self._patched(bound, run)
        if self.random is not None:
            return circuit.measure_random_control(self, bound, run, measurement.values)
        return measurement

    def _patched(self, bound: BoundClaim, run) -> Measurement:
        problem = run.effect_problem()
        if problem:
            raise Unjudgeable(problem)
        patcher = run.patcher()
        cells = list(bound.cells)
        if self.quantifier == "together":
            values = patcher.joint(self.component, cells, self.direction)[:, None]
            return Measurement(values, quantifier="together", note="one joint patch of the region")
        labels = [cell_label(cell, run.tokens, components.get(self.component).per_head) for cell in cells]
        if components.get(self.component).per_head and bound.positions:
            values = patcher.cells_value(self.component, cells, self.direction)
            return Measurement(values, tuple(cells), labels, self.quantifier)
        sweep, patch_map = run.sweep(self.component, self.direction)
        values = sweep[:, [c[0] for c in cells], [c[1] for c in cells]]
        return Measurement(values, tuple(cells), labels, self.quantifier, patch_map=patch_map)

    # -- reporting
    def record(self, check) -> dict:
        on_map = check.patch_map is not None
        out: dict[str, Any] = {
            "map": map_key(self.component, self.direction) if on_map else None,
            "cells": [list(cell[:2]) for cell in check.bound.cells] if on_map else [],
            "failing_cells": [list(cell[:2]) for cell in check.failing_cells] if on_map else [],
        }
        if self.direction == "noise":
            out["ablation"] = self.ablation or "resample"
        if check.figure and check.figure.get("type") == "random":
            out["random"] = {k: v for k, v in check.figure.items() if k != "type"}
        return out

    def render(self, check, color: bool = False) -> list[str]:
        if self.random is not None:
            from interptest.claims.circuit import render_control

            return render_control(check)
        if check.patch_map is None:
            return []
        return [""] + render_map(
            check.patch_map,
            claimed=check.bound.cells,
            failing=check.failing_cells,
            title=f"map for {check.text!r}",
            color=color,
        )


def cell_label(cell, tokens, per_head: bool = False) -> str:
    if per_head and len(cell) == 2:
        return f"head {cell[0]}.{cell[1]}"
    if len(cell) == 3:
        return f"head {cell[0]}.{cell[1]} at position {cell[2]} {tokens[cell[2]]!r}"
    return f"(layer {cell[0]}, position {cell[1]} {tokens[cell[1]]!r})"
