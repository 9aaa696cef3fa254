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
from interptest.claims.base import (
    BindContext,
    Claim,
    Measurement,
    Unjudgeable,
    ablation_requirement,
    bound_at_least,
    bound_at_most,
    measured_bounds,
)
from interptest.claims.controls import control_seed, random_count, render_control, sequential_control
from interptest.claims.grammar import (
    ClaimBindError,
    ClaimSyntaxError,
    Comparison,
    LayerSelection,
    NodeSpec,
    Parser,
    PositionSelection,
    RandomControl,
    did_you_mean,
)
from interptest.claims.nodes import (
    Node,
    bind_nodes,
    cell_label,
    cells_to_nodes,
    check_random_control,
    edits_of,
    random_node_sets,
)
from interptest.maps import map_key, render_map


@dataclass(frozen=True)
class BoundClaim:
    """A localization claim resolved to nodes (:mod:`interptest.claims.nodes`) and their cells.

    Cells are ``(layer, position)`` for residual components; ``(layer, head)`` for heads over all
    positions; ``(layer, head, position)`` for heads restricted to positions.
    """

    claim: LocalizationClaim
    nodes: tuple[Node, ...]

    @property
    def cells(self) -> tuple[tuple[int, ...], ...]:
        return tuple(cell for node in self.nodes for cell in node.cells())

    @property
    def positions(self) -> tuple[int, ...]:
        """The region's positions (empty for heads over every position and for ``elsewhere``)."""
        return self.nodes[0].positions or () if self.nodes else ()


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
        if quantifier == "any" and comp_tok.kind == "ident" and comp_tok.value not in components.COMPONENTS:
            _refuse_any(p, comp_tok)
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
        quantifier, direction, comparison, fields["random"], fields["ablation"] = p.edit_tail(
            quantifier, "patch", "sets", "activations", "clean activations"
        )
        p.end()
        return cls(p.text, component.name, direction, quantifier, comparison, **fields)

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
            raise ClaimBindError(context.not_exposed(self.component))
        if self.elsewhere:
            return self._bind_elsewhere(context)
        region = NodeSpec(self.component, self.heads, self.layers, self.positions, self.text)
        bound = BoundClaim(self, bind_nodes((region,), context, region=True))
        context.covered.setdefault(self.component, set()).update(cell[:2] for cell in bound.cells)
        if self.random is not None:
            check_random_control(bound.nodes, context.n_layers, context.n_heads)
        return bound

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
        return BoundClaim(self, cells_to_nodes(self.component, cells))

    # -- measuring
    def measure(self, bound: BoundClaim, run) -> Measurement:
        if self.ablation in ("mean", "zero"):
            measurement = _measure_ablated(self, bound, run)
        else:
            measurement = self._patched(bound, run)
        if self.random is not None:
            return _measure_random_control(self, bound, run, measurement.values)
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

    @classmethod
    def suggest(cls, run, seed: int) -> list[str]:
        return suggest_localization(run, seed)

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


def _measure_ablated(claim, bound, run) -> Measurement:
    """``breaks`` with ``ablate mean|zero``: the clean run with the cells set to the ablation value,
    normalized as breaks: (m_clean − m_patched) / (m_clean − m_corrupt)."""
    problem = run.effect_problem()
    if problem:
        raise Unjudgeable(problem)
    engine = run.circuits()
    cells = list(bound.cells)
    per_head = components.get(claim.component).per_head
    edits = edits_of(bound.nodes)  # one per cell, in the cells' order
    if claim.quantifier == "together":
        raw = engine.patch_sets([edits], "clean", claim.ablation)
        return Measurement(
            engine.normalize(raw, "noise"),
            quantifier="together",
            note=f"one joint {claim.ablation} ablation of the region",
        )
    raw = engine.patch_sets([[edit] for edit in edits], "clean", claim.ablation)
    labels = [cell_label(cell, run.tokens, per_head) for cell in cells]
    return Measurement(engine.normalize(raw, "noise"), tuple(cells), labels, claim.quantifier)


def _measure_random_control(claim, bound, run, values) -> Measurement:
    """``together ... beats random at q`` of a localization claim whose joint values [S, 1] are given."""
    engine = run.circuits()
    n_layers, n_heads = run.model.cfg.n_layers, run.model.cfg.n_heads
    sets, exhaustive = random_node_sets(
        bound.nodes, n_layers, n_heads, random_count(run), control_seed(run, claim.text)
    )
    if claim.direction == "denoise":
        base, source = "corrupt", "clean"
    else:
        base, source = "clean", claim.ablation or "resample"
    return sequential_control(
        values,
        lambda chunk: engine.normalize(engine.patch_sets([edits_of(s) for s in chunk], base, source), claim.direction),
        sets,
        claim.random.quantile,
        exhaustive,
        claim.verb,
        run.seed,
    )


# ---------------------------------------------------------------------------------------------
# --interp-suggest: residual bands with their 'elsewhere' bound, and the smallest joint head set

CARRIER = 0.9  # a cell that alone recovers this much carries the behavior
SUGGESTED_COMPONENTS = ("resid_pre", "attn_out", "mlp_out")


def suggest_localization(run, seed: int) -> list[str]:
    """Per residual component, layers grouped into bands that share the same carrier positions (cells
    that alone recover ≥ 0.9 of the effect), each band one claim with the band's weakest value as its
    bound and the rest of the component the matching ``elsewhere`` bound; for heads, the smallest greedy
    set whose joint patch recovers ≥ 0.9, as one ``together`` claim."""
    claims: list[str] = []
    for component in SUGGESTED_COMPONENTS:
        values, _ = run.sweep(component, "denoise")
        n_layers, width = values.shape[1], values.shape[2]
        flat = values.reshape(values.shape[0], -1).double()
        lower = measured_bounds(flat, seed, n_layers * width, True)
        upper = measured_bounds(flat, seed, n_layers * width, False)
        claims += residual_claims(
            component,
            [lower[l * width : (l + 1) * width] for l in range(n_layers)],
            [upper[l * width : (l + 1) * width] for l in range(n_layers)],
            run.bound.position_source,
        )
    _, heads = run.sweep("heads", "denoise")
    return claims + head_claims(run.patcher(), heads.values.tolist(), seed)


def _layers(first: int, last: int, n_layers: int) -> str:
    if first == last:
        return str(first)
    if last == n_layers - 1:
        return ":" if first == 0 else f"{first}:"
    return f"{first}:{last + 1}"


def residual_claims(component: str, lower, upper, position) -> list[str]:
    """Band claims plus the ``elsewhere`` bound for one denoising map; ``lower``/``upper`` [layers][positions]
    are the measured values (one sample) or the bootstrap bounds of their mean (a family); ``position(p)``
    writes a position so that it binds on every sample (a family's template variable)."""
    n_layers = len(lower)
    carriers = [tuple(p for p, v in enumerate(row) if v is not None and v >= CARRIER) for row in lower]
    claims: list[str] = []
    covered: set[tuple[int, int]] = set()
    layer = 0
    while layer < n_layers:
        positions = carriers[layer]
        end = layer
        while end + 1 < n_layers and carriers[end + 1] == positions:
            end += 1
        if positions:
            for p in positions:
                weakest = min(lower[l][p] for l in range(layer, end + 1))
                claims.append(
                    f"{component}[{_layers(layer, end, n_layers)}, {position(p)}] recovers >= "
                    f"{bound_at_least(weakest):.2f}"
                )
                covered.update((l, p) for l in range(layer, end + 1))
        layer = end + 1
    rest = [
        max(abs(v), abs(lower[l][p]))
        for l, row in enumerate(upper)
        for p, v in enumerate(row)
        if (l, p) not in covered and v is not None
    ]
    if claims and rest:
        claims.append(f"{component}[elsewhere] recovers <= {bound_at_most(max(rest)):.2f}")
    return claims


def head_claims(patcher, head_values, seed: int = 0) -> list[str]:
    """The smallest greedy set of heads whose joint patch recovers ≥ 0.9 (on the bootstrap bound of the
    samples' mean for a family), as one ``together`` claim."""
    ranked = sorted(((v, l, h) for l, row in enumerate(head_values) for h, v in enumerate(row) if v == v), reverse=True)
    chosen = []
    for value, layer, head in ranked:
        if value <= 0:
            break
        chosen.append((layer, head, None))
        joint = measured_bounds(patcher.joint("heads", chosen, "denoise")[:, None], seed, 1, True)[0]
        if joint >= CARRIER:
            names = ", ".join(f"{l}.{h}" for l, h, _ in sorted(chosen))
            return [f"heads[{names}] together recovers >= {bound_at_least(joint):.2f}"]
    return []


# What 'any' would quantify over when another kind's word follows it.
_OTHER_KINDS = {"path": "paths", "circuit": "circuits", "attn": "attention claims", "direct": "direct effects"}


def _refuse_any(p: Parser, word) -> None:
    """``any path ...`` and kin: 'any' picks the best cell of a localization claim and nothing else."""
    noun = _OTHER_KINDS.get(word.value) or (
        "head scores"
        if word.value.endswith("_score")
        else "the logit lens"
        if word.value == "lens"
        else "prediction claims"
        if word.value in ("prob", "rank", "logit", "logit_diff")
        else None
    )
    if noun is None:
        return  # not a claim kind: the usual "expected a component" message follows
    if word.value == "path":
        reason = (
            "a path claim is one value (the senders' effect through the receivers), not a set of cells to "
            "pick the best from"
        )
    else:
        reason = "it picks the best cell of a localization claim (e.g. any resid_mid[1:, -1] recovers >= 0.5)"
    raise ClaimSyntaxError(
        f"'any' does not apply to {noun}: {reason}; write the claim without 'any'", p.text, word.start
    )
