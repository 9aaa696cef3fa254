"""Circuit claims: how much of the behavior a set of nodes carries, with everything else ablated::

    circuit heads[0.2, 1.0, 1.3] + mlp_out[1] faithful >= 0.9            (ablate resample, the default)
    circuit heads[0.2, 1.0, 1.3] + mlp_out[1] faithful >= 0.9 ablate mean
    circuit heads[0.2, 1.0, 1.3] + mlp_out[1] minimal >= 0.05
    circuit heads[0.2, 1.0, 1.3] + mlp_out[1] faithful beats random at 0.95

Nodes are attention heads (``heads[L.H]``, their output ``attn.hook_z``) and MLP layers
(``mlp_out[L]``), each optionally at positions (``heads[1.0; -1]``). With m the logit difference
expect − foil at the last position:

* ``faithful``: m_C = the clean run with every node *outside* C ablated, m_∅ = the clean run with every
  node ablated; value (m_C − m_∅) / (m_clean − m_∅).
* ``minimal >= δ``: for every node v of C, faithful(C) − faithful(C \\ {v}) ≥ δ; one cell per node.
* ``beats random at q``: the value exceeds the q-quantile of the same quantity for random node sets
  of the same composition (same number of heads and of MLPs, at the same positions); N sets from
  ``interp_random_sets`` (all other sets when there are fewer), seeded by ``--interp-seed``.

Ablations (``ablate resample|mean|zero``): the node's value on the corrupted prompt, its mean over the
family's clean samples (or the ``reference`` prompts) at the same position, or zero. Under
``resample``, m_∅ is the corrupted run's logit difference whenever the two prompts end in the same
token: every head and MLP output then carries the corrupted run's value, so the final residual differs
from the corrupted run's only through the last token's embedding.

This module also holds what localization claims need for ``ablate`` and ``beats random``
(:func:`measure_ablated`, :func:`measure_random_control`).
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar

from interptest.claims.base import (
    BindContext,
    Claim,
    Measurement,
    Unjudgeable,
    ablation_requirement,
)
from interptest.claims.grammar import (
    ClaimBindError,
    ClaimSyntaxError,
    Comparison,
    Node,
    NodeSpec,
    Parser,
    RandomControl,
    did_you_mean,
    resolve_nodes,
)

MEASURES = ("faithful", "minimal")
DEFAULT_RANDOM_SETS = 200


@dataclass(frozen=True)
class BoundCircuit:
    claim: CircuitClaim
    nodes: tuple[Node, ...]
    random_sets: int = 0  # how many node sets of the same composition exist besides this one


@dataclass(frozen=True)
class CircuitClaim(Claim):
    text: str
    nodes: tuple[NodeSpec, ...]
    measure_name: str  # faithful | minimal
    comparison: Comparison
    ablation: str = "resample"
    random: RandomControl | None = None

    keywords: ClassVar[tuple[str, ...]] = ("circuit",)
    hint: ClassVar[str] = "circuit heads[...] + mlp_out[...] faithful|minimal ..."

    @classmethod
    def parse(cls, p: Parser) -> CircuitClaim:
        p.expect("ident", "circuit")
        nodes = p.node_list("the circuit's nodes")
        word = p.tok
        if word.kind != "ident" or word.value not in MEASURES:
            p.fail(
                "'faithful' or 'minimal' after the circuit's nodes"
                + (did_you_mean(word.value, MEASURES) if word.kind == "ident" else "")
            )
        p.i += 1
        comparison, control = p.comparison_or_random()
        if control is not None and word.value == "minimal":
            raise ClaimSyntaxError(
                "'beats random' compares a circuit's faithfulness with random node sets; "
                "write 'circuit ... faithful beats random at q'",
                p.text,
                control.column,
            )
        ablation = p.ablation()
        p.end()
        return cls(p.text, nodes, word.value, comparison, ablation or "resample", control)

    def requirement(self, behavior) -> str | None:
        problem = ablation_requirement(self.text, self.ablation, behavior)
        if problem:
            return problem
        if behavior.corruption is None and behavior.foil is None:
            return (
                f"claim {self.text!r} compares logit differences expect − foil: add 'foil' (or a 'corrupt' "
                "prompt, whose top-1 prediction is the default foil)"
            )
        return None

    def template_variables(self) -> list[str]:
        return node_variables(self.nodes)

    def bind(self, context: BindContext) -> BoundCircuit:
        nodes = bind_nodes(self.nodes, context)
        alternatives = 0
        if self.random is not None:
            alternatives = check_random_control(nodes, context.n_layers, context.n_heads)
        return BoundCircuit(self, nodes, alternatives)

    def measure(self, bound: BoundCircuit, run) -> Measurement:
        engine = run.circuits()
        kept = [edits_of(bound.nodes)]
        _check_effect(run, engine, self.ablation)
        if self.measure_name == "minimal":
            without = [edits_of(tuple(n for n in bound.nodes if n is not v)) for v in bound.nodes]
            values = engine.faithfulness(kept + without, self.ablation)
            drops = values[:, :1] - values[:, 1:]
            labels = [node.label(run.tokens) for node in bound.nodes]
            mean = drops.mean(dim=0).tolist()
            idle = [label for label, d in zip(labels, mean) if not self.comparison.holds(d)]
            note = (
                "faithfulness lost without each node: "
                + ", ".join(f"{label} {d:.3f}" for label, d in zip(labels, mean))
                + (f"; nodes that do not matter ({self.comparison} fails): {', '.join(idle)}" if idle else "")
            )
            return Measurement(drops, tuple(labels), labels, "every", note=note)
        values = engine.faithfulness(kept, self.ablation)
        if self.random is None:
            return Measurement(
                values,
                quantifier="together",
                note=f"faithfulness under {self.ablation} ablation of the {_count(bound.nodes)} outside the circuit",
            )
        sets, exhaustive = random_node_sets(
            bound.nodes, run.model.cfg.n_layers, run.model.cfg.n_heads, random_count(run), control_seed(run, self.text)
        )
        random_values = engine.faithfulness([edits_of(s) for s in sets], self.ablation)
        return control_measurement(values, random_values, self.random.quantile, exhaustive, "faithfulness")

    def record(self, check) -> dict:
        out: dict[str, Any] = {"ablation": self.ablation}
        if self.measure_name == "minimal":
            out["failing_nodes"] = list(check.failing_cells)
        if check.figure:
            out["random"] = {k: v for k, v in check.figure.items() if k != "type"}
        return out

    def render(self, check, color: bool = False) -> list[str]:
        if self.measure_name == "minimal" and check.failing_cells:
            return ["", f"nodes that do not matter: {', '.join(check.failing_cells)}"]
        return render_control(check)


def _count(nodes) -> str:
    return f"node{'s' if len(nodes) != 1 else ''}"


def _check_effect(run, engine, ablation: str) -> None:
    """Unjudgeable when ablating every node barely moves the logit difference of some sample."""
    problem = run.foil_problem()
    if problem:
        raise Unjudgeable(problem)
    delta = engine.metrics("clean") - engine.all_ablated(ablation)
    spec = run.bound.spec
    weak = delta.abs() < spec.min_effect
    if bool(weak.any()) or not bool(delta.isfinite().all()):
        worst = float(delta.abs().min())
        where = "" if delta.shape[0] == 1 else f" on {int(weak.sum())} of {delta.shape[0]} samples"
        raise Unjudgeable(
            f"ablating every node ({ablation}) barely changes the behavior{where} "
            f"(|m_clean − m_∅| = {worst:.3f}, below min_effect {spec.min_effect:g}); the claim cannot "
            "be judged"
        )


# ---------------------------------------------------------------------------------------------
# Nodes, shared with path claims


def node_variables(specs) -> list[str]:
    return [
        spec.positions.values[0] for spec in specs if spec.positions is not None and spec.positions.kind == "variable"
    ]


def bind_nodes(specs, context: BindContext) -> tuple[Node, ...]:
    """The node list resolved on every sample; positions must not move between samples."""
    return context.same_on_every_sample(
        lambda s: resolve_nodes(specs, context.tokens[s], context.variables[s], context.n_layers, context.n_heads)
    )


def edits_of(nodes) -> tuple:
    return tuple(edit for node in nodes for edit in node.edits())


# ---------------------------------------------------------------------------------------------
# Random node sets of the same composition (negative controls)


def _universe(component: str, n_layers: int, n_heads: int) -> list[tuple]:
    if component == "heads":
        return [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    return [(layer, None) for layer in range(n_layers)]


def _groups(nodes) -> dict[str, list[Node]]:
    groups: dict[str, list[Node]] = {}
    for node in sorted(nodes, key=lambda n: (n.component, n.layer, n.head or 0)):
        groups.setdefault(node.component, []).append(node)
    return groups


def count_node_sets(nodes, n_layers: int, n_heads: int) -> int:
    """How many node sets have the composition of ``nodes`` (this one included)."""
    total = 1
    for component, members in _groups(nodes).items():
        total *= math.comb(len(_universe(component, n_layers, n_heads)), len(members))
    return total


def check_random_control(nodes, n_layers: int, n_heads: int) -> int:
    """The number of other node sets of the same composition; ``ClaimBindError`` when there is none."""
    others = count_node_sets(nodes, n_layers, n_heads) - 1
    if others < 1:
        parts = ", ".join(
            f"{len(m)} of {len(_universe(c, n_layers, n_heads))} {'heads' if c == 'heads' else c + ' layers'}"
            for c, m in _groups(nodes).items()
        )
        raise ClaimBindError(
            f"'beats random' needs other node sets of the same composition, but the set takes "
            f"{parts}: it is as large as the whole model"
        )
    return others


def random_node_sets(nodes, n_layers: int, n_heads: int, count: int, seed: int) -> tuple[list[tuple[Node, ...]], bool]:
    """``count`` distinct node sets of the composition of ``nodes`` (same number of nodes of each kind,
    the same positions in the same order), none equal to ``nodes``; every other set, in a fixed order,
    when there are at most ``count``. Returns (sets, exhaustive)."""
    import itertools

    groups = _groups(nodes)
    own = frozenset(n.key for n in nodes)

    def build(choice) -> tuple[Node, ...]:
        out = []
        for (component, members), picked in zip(groups.items(), choice):
            for node, (layer, head) in zip(members, sorted(picked)):
                out.append(Node(component, layer, head, node.positions))
        return tuple(out)

    universes = [_universe(c, n_layers, n_heads) for c in groups]
    total = count_node_sets(nodes, n_layers, n_heads)
    if total - 1 <= count:
        combos = itertools.product(*(itertools.combinations(u, len(m)) for u, m in zip(universes, groups.values())))
        sets = [build(choice) for choice in combos]
        return [s for s in sets if frozenset(n.key for n in s) != own], True
    rng = random.Random(seed)
    seen, sets = {own}, []
    while len(sets) < count:
        choice = [tuple(rng.sample(u, len(m))) for u, m in zip(universes, groups.values())]
        candidate = build(choice)
        key = frozenset(n.key for n in candidate)
        if key not in seen:
            seen.add(key)
            sets.append(candidate)
    return sets, False


def random_count(run) -> int:
    value = (getattr(run.bound, "options", None) or {}).get("random_sets")
    return int(value) if value else DEFAULT_RANDOM_SETS


def control_seed(run, text: str) -> int:
    from interptest import families

    return zlib.crc32(f"{families.sample_seed(run.bound.seed, run.bound.spec)}|{text}".encode())


def control_measurement(values, random_values, quantile: float, exhaustive: bool, what: str) -> Measurement:
    """The claim's values [S, 1] against random sets' values [S, N]: the threshold is the q-quantile of
    the random sets' sample means; the figure keeps the distribution for the report."""
    import torch

    means = random_values.double().mean(dim=0)
    finite = means[means.isfinite()]
    if not finite.numel():
        raise Unjudgeable("every random node set gives an undefined value")
    threshold = float(torch.quantile(finite, quantile))
    value = float(values.double().mean())
    beaten = float((finite < value).double().mean())
    n = int(finite.numel())
    note = (
        f"{what} {value:.3f} vs {n} random node sets of the same composition"
        f"{' (every other set)' if exhaustive else ''}: {quantile:g}-quantile {threshold:.3f}, mean "
        f"{float(finite.mean()):.3f}, max {float(finite.max()):.3f}; the set beats {beaten:.1%} of them"
    )
    figure = {
        "type": "random",
        "value": value,
        "quantile": quantile,
        "threshold": threshold,
        "values": [round(float(v), 6) for v in finite.tolist()],
        "exhaustive": exhaustive,
        "note": note,
    }
    return Measurement(
        values.double(), quantifier="together", figure=figure, comparison=Comparison(">", threshold), context=note
    )


def render_control(check) -> list[str]:
    figure = getattr(check, "figure", None)
    if not figure or figure.get("type") != "random":
        return []
    values = sorted(figure["values"])
    bins = 10
    lo, hi = min(values + [figure["value"]]), max(values + [figure["value"]])
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    top = max(counts) or 1
    lines = ["", f"random control: {figure['note']}"]
    for b, c in enumerate(counts):
        start = lo + b * width
        mark = (
            " <- claim"
            if start <= figure["value"] < start + width or (b == bins - 1 and figure["value"] >= start)
            else ""
        )
        lines.append(f"  {start:8.3f} | {'#' * max(1 if c else 0, round(30 * c / top)):<30} {c}{mark}")
    return lines


# ---------------------------------------------------------------------------------------------
# What localization claims use for 'ablate' and 'beats random'


def cells_to_nodes(component: str, cells) -> tuple[Node, ...]:
    """A localization claim's cells as nodes: (layer, head[, position]) for heads, (layer, position)
    for per-position components, grouped by node."""
    grouped: dict[tuple, list] = {}
    for cell in cells:
        if component == "heads":
            key, pos = (cell[0], cell[1]), (cell[2] if len(cell) == 3 else None)
        else:
            key, pos = (cell[0], None), cell[1]
        grouped.setdefault(key, []).append(pos)
    out = []
    for (layer, head), positions in grouped.items():
        out.append(Node(component, layer, head, None if None in positions else tuple(sorted(positions))))
    return tuple(out)


def measure_ablated(claim, bound, run) -> Measurement:
    """``breaks`` with ``ablate mean|zero``: the clean run with the cells set to the ablation value,
    normalized as breaks: (m_clean − m_patched) / (m_clean − m_corrupt)."""
    from interptest import components
    from interptest.claims.localization import cell_label
    from interptest.patching.paths import normalize

    problem = run.effect_problem()
    if problem:
        raise Unjudgeable(problem)
    engine = run.circuits()
    cells = list(bound.cells)
    per_head = components.get(claim.component).per_head
    edits = [(claim.component, tuple(c) + ((None,) if per_head and len(c) == 2 else ())) for c in cells]
    clean, corrupt = engine.metrics("clean"), engine.metrics("corrupt")
    if claim.quantifier == "together":
        raw = engine.patch_sets([edits], "clean", claim.ablation)
        return Measurement(
            normalize(raw, clean, corrupt, "noise"),
            quantifier="together",
            note=f"one joint {claim.ablation} ablation of the region",
        )
    raw = engine.patch_sets([[edit] for edit in edits], "clean", claim.ablation)
    labels = [cell_label(cell, run.tokens, per_head) for cell in cells]
    return Measurement(normalize(raw, clean, corrupt, "noise"), tuple(cells), labels, claim.quantifier)


def measure_random_control(claim, bound, run, values) -> Measurement:
    """``together ... beats random at q`` of a localization claim whose joint values [S, 1] are given."""
    from interptest.patching.paths import normalize

    nodes = cells_to_nodes(claim.component, bound.cells)
    engine = run.circuits()
    n_layers, n_heads = run.model.cfg.n_layers, run.model.cfg.n_heads
    sets, exhaustive = random_node_sets(nodes, n_layers, n_heads, random_count(run), control_seed(run, claim.text))
    if claim.direction == "denoise":
        base, source = "corrupt", "clean"
    else:
        base, source = "clean", claim.ablation or "resample"
    raw = engine.patch_sets([edits_of(s) for s in sets], base, source)
    random_values = normalize(raw, engine.metrics("clean"), engine.metrics("corrupt"), claim.direction)
    return control_measurement(values, random_values, claim.random.quantile, exhaustive, claim.verb)


# ---------------------------------------------------------------------------------------------
# --interp-suggest: the smallest faithful node set, and the strongest paths into its heads

SUGGEST_FAITHFUL = 0.9
SUGGEST_PATH = 0.15


def node_list(nodes) -> str:
    """Node-list syntax for whole nodes: ``heads[0.2, 1.0] + mlp_out[0, 1]``."""
    heads = sorted((n.layer, n.head) for n in nodes if n.component == "heads")
    mlps = sorted(n.layer for n in nodes if n.component == "mlp_out")
    parts = []
    if heads:
        parts.append(f"heads[{', '.join(f'{l}.{h}' for l, h in heads)}]")
    if mlps:
        parts.append(f"mlp_out[{', '.join(map(str, mlps))}]")
    return " + ".join(parts)


def suggest_claims(run, seed: int = 0) -> list[str]:
    """The smallest node set (greedy pruning on nodes, ACDC-style) whose resample-faithfulness stays
    >= 0.9, as faithful / minimal / beats-random claims, and the strongest path into each query, key
    and value input of the heads it keeps. On a family the measured values are the lower bootstrap
    bounds of the samples' mean, as the claims will be judged."""
    from interptest.suggest import bound_at_least, measured_bounds

    engine = run.circuits()
    n_layers, n_heads = int(run.model.cfg.n_layers), int(run.model.cfg.n_heads)
    nodes = [Node("heads", l, h) for l in range(n_layers) for h in range(n_heads)] + [
        Node("mlp_out", l, None) for l in range(n_layers)
    ]
    delta = engine.metrics("clean") - engine.all_ablated("resample")
    if bool((delta.abs() < run.bound.spec.min_effect).any()):
        return []

    def faithful(sets):
        return engine.faithfulness([edits_of(s) for s in sets], "resample")

    def lower(values) -> float:
        return measured_bounds(values[:, :1], seed, 1, True)[0]

    # least important first: the node whose removal alone keeps the most faithfulness
    alone = faithful([[m for m in nodes if m is not v] for v in nodes]).mean(dim=0).tolist()
    kept = list(nodes)
    for i in sorted(range(len(nodes)), key=lambda i: -alone[i]):
        trial = [m for m in kept if m is not nodes[i]]
        if trial and lower(faithful([trial])) >= SUGGEST_FAITHFUL:
            kept = trial
    value = lower(faithful([kept]))
    if value < SUGGEST_FAITHFUL:
        return []
    text = node_list(kept)
    claims = [f"circuit {text} faithful >= {bound_at_least(value):.2f}"]
    values = faithful([kept] + [[m for m in kept if m is not v] for v in kept])
    drops = values[:, :1] - values[:, 1:]
    weakest = min(measured_bounds(drops.double(), seed, len(kept), True))
    if bound_at_least(weakest) > 0:
        claims.append(f"circuit {text} minimal >= {bound_at_least(weakest):.2f}")
    if count_node_sets(kept, n_layers, n_heads) > 1:
        sets, exhaustive = random_node_sets(kept, n_layers, n_heads, random_count(run), control_seed(run, text))
        control = control_measurement(values[:, :1], faithful(sets), 0.95, exhaustive, "faithfulness")
        if value > control.comparison.threshold:
            claims.append(f"circuit {text} faithful beats random at 0.95")
    claims += _path_suggestions(run, engine, kept, seed)
    return claims


def _path_suggestions(run, engine, kept, seed: int) -> list[str]:
    from interptest.patching.paths import normalize
    from interptest.suggest import bound_at_least, measured_bounds

    heads = [n for n in kept if n.component == "heads" and n.layer > 0]
    senders = [n for n in kept if n.layer < max((h.layer for h in heads), default=0)]
    if not heads or not senders:
        return []
    receivers = [(kind, h.layer, h.head, None) for h in heads for kind in ("q", "k", "v")]
    raw = engine.path([edits_of([s]) for s in senders], [[r] for r in receivers], "corrupt", "clean")
    values = normalize(raw, engine.metrics("clean"), engine.metrics("corrupt"), "denoise")  # [S, senders, receivers]
    claims = []
    for j, (kind, layer, head, _) in enumerate(receivers):
        best, best_value = None, SUGGEST_PATH
        for i, sender in enumerate(senders):
            if sender.layer >= layer:
                continue
            bound = measured_bounds(values[:, i, j][:, None].double(), seed, 1, True)[0]
            if bound >= best_value:
                best, best_value = sender, bound
        if best is not None:
            claims.append(
                f"path {node_list([best])} -> heads[{layer}.{head}].{kind} recovers >= {bound_at_least(best_value):.2f}"
            )
    return claims
