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
  ``interp_random_sets`` (all other sets when there are fewer), seeded by ``--interp-seed``, drawn
  until an exact bound settles the verdict (:func:`interptest.claims.controls.sequential_control`).

Every value comes from the behavior's one circuit engine (``run.circuits()``): one cached forward per
prompt set, the all-ablated run once per ablation, node sets batched samples × sets per forward.

Ablations (``ablate resample|mean|zero``): the node's value on the corrupted prompt, its mean over the
family's clean samples (or the ``reference`` prompts) at the same position, or zero. Under
``resample``, m_∅ is the corrupted run's logit difference whenever the two prompts end in the same
token: every head and MLP output then carries the corrupted run's value, so the final residual differs
from the corrupted run's only through the last token's embedding.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from interptest.claims.base import (
    BindContext,
    Claim,
    Measurement,
    Unjudgeable,
    ablation_requirement,
    bound_at_least,
    measured_bounds,
)
from interptest.claims.controls import (
    control_measurement,
    control_seed,
    random_count,
    render_control,
    sequential_control,
)
from interptest.claims.grammar import (
    ClaimBindError,
    ClaimSyntaxError,
    Comparison,
    EdgeSpec,
    GraphRef,
    NodeSpec,
    Parser,
    RandomControl,
    did_you_mean,
)
from interptest.claims.nodes import (
    Node,
    bind_nodes,
    check_random_control,
    count_node_sets,
    edits_of,
    node_list,
    node_variables,
    random_node_sets,
)
from interptest.graphs import (
    Edge,
    GraphFileError,
    ModelShape,
    Receiver,
    edge_problem,
    model_edges,
    parse_edge,
    read_graph,
    write_graph,
)

MEASURES = ("faithful", "minimal")


@dataclass(frozen=True)
class BoundCircuit:
    claim: CircuitClaim
    nodes: tuple[Node, ...]
    random_sets: int = 0  # how many node (edge) sets of the same composition (size) exist besides this one
    edges: tuple[Edge, ...] = ()  # an edge circuit's edges (nodes is then empty)
    universe: tuple[Edge, ...] = ()  # every edge of the model (an edge circuit's random control draws from it)


@dataclass(frozen=True)
class CircuitClaim(Claim):
    text: str
    nodes: tuple[NodeSpec, ...]
    measure_name: str  # faithful | minimal
    comparison: Comparison
    ablation: str = "resample"
    random: RandomControl | None = None
    edges: tuple[EdgeSpec, ...] = ()  # an edge circuit written inline: edges[...]
    graph: GraphRef | None = None  # an edge circuit read from a graph file: @path, top K edges of @path

    keywords: ClassVar[tuple[str, ...]] = ("circuit",)
    hint: ClassVar[str] = (
        "circuit heads[...] + mlp_out[...] | edges[a0.h2->a1.h0<k>, ...] | @graph.json | top K edges of @graph.json "
        "faithful|minimal ..."
    )

    @property
    def is_edges(self) -> bool:
        return bool(self.edges) or self.graph is not None

    @classmethod
    def parse(cls, p: Parser) -> CircuitClaim:
        p.expect("ident", "circuit")
        nodes: tuple[NodeSpec, ...] = ()
        edges: tuple[EdgeSpec, ...] = ()
        graph = None
        if p.tok.kind == "ident" and p.tok.value == "edges":
            edges = p.edge_list()
        elif p.tok.kind == "file" or (p.tok.kind == "ident" and p.tok.value == "top"):
            graph = p.graph_ref()
        else:
            nodes = p.node_list("the circuit's nodes")
        what = "nodes" if nodes else "edges"
        word = p.tok
        if word.kind != "ident" or word.value not in MEASURES:
            p.fail(
                f"'faithful' or 'minimal' after the circuit's {what}"
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
        return cls(p.text, nodes, word.value, comparison, ablation or "resample", control, edges, graph)

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
        if self.is_edges:
            return self._bind_edges(context)
        nodes = bind_nodes(self.nodes, context)
        alternatives = 0
        if self.random is not None:
            alternatives = check_random_control(nodes, context.n_layers, context.n_heads)
        return BoundCircuit(self, nodes, alternatives)

    def _bind_edges(self, context: BindContext) -> BoundCircuit:
        if context.unsupported.get("edges"):
            raise ClaimBindError(context.unsupported["edges"])
        shape = ModelShape(context.n_layers, context.n_heads, context.n_kv_heads, context.parallel)
        if self.graph is not None:
            edges = bind_graph(self.graph, shape, context)
        else:
            edges = bind_edge_list(self.edges, shape)
        if self.measure_name == "minimal" and not edges:
            raise ClaimBindError(
                f"the circuit has no edges ({_graph_words(self.graph)}): 'minimal' asks that every edge matter",
                self.graph.source if self.graph else None,
            )
        universe = tuple(model_edges(shape, per_query_head=False))
        alternatives = 0
        if self.random is not None:
            alternatives = check_random_edges(edges, universe)
        return BoundCircuit(self, (), alternatives, edges, universe)

    def measure(self, bound: BoundCircuit, run) -> Measurement:
        if self.is_edges:
            return self._measure_edges(bound, run)
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
        return sequential_control(
            values,
            lambda chunk: engine.faithfulness([edits_of(s) for s in chunk], self.ablation),
            sets,
            self.random.quantile,
            exhaustive,
            "faithfulness",
            run.seed,
        )

    def _measure_edges(self, bound: BoundCircuit, run) -> Measurement:
        from interptest.patching.edges import edge_patcher  # defers torch

        engine = edge_patcher(run.circuits())
        _check_effect(run, engine, self.ablation, "edge")
        kept = list(bound.edges)
        if self.measure_name == "minimal":
            without = [[e for e in kept if e is not v] for v in kept]
            values = engine.faithfulness([kept, *without], self.ablation)
            drops = values[:, :1] - values[:, 1:]
            labels = [e.name for e in kept]
            mean = drops.mean(dim=0).tolist()
            idle = [label for label, d in zip(labels, mean) if not self.comparison.holds(d)]
            note = (
                "faithfulness lost without each edge: "
                + ", ".join(f"{label} {d:.3f}" for label, d in zip(labels, mean))
                + (f"; edges that do not matter ({self.comparison} fails): {', '.join(idle)}" if idle else "")
            )
            return Measurement(drops, tuple(labels), labels, "every", note=note)
        values = engine.faithfulness([kept], self.ablation)
        if self.random is None:
            n = len(kept)
            return Measurement(
                values,
                quantifier="together",
                note=(
                    f"faithfulness of {n} edge{'s' if n != 1 else ''} of {len(bound.universe)}, the others "
                    f"ablated ({self.ablation})"
                ),
            )
        sets, exhaustive = random_edge_sets(kept, bound.universe, random_count(run), control_seed(run, self.text))
        return sequential_control(
            values,
            lambda chunk: engine.faithfulness(chunk, self.ablation),
            sets,
            self.random.quantile,
            exhaustive,
            "faithfulness",
            run.seed,
            sets_are="edge sets of the same size (among the model's edges)",
        )

    def record(self, check) -> dict:
        out: dict[str, Any] = {"ablation": self.ablation}
        if self.measure_name == "minimal" and self.is_edges:
            out["failing_edges"] = list(check.failing_cells)
        elif self.measure_name == "minimal":
            out["failing_nodes"] = list(check.failing_cells)
        if check.figure:
            out["random"] = {k: v for k, v in check.figure.items() if k != "type"}
        return out

    @classmethod
    def suggest(cls, run, seed: int) -> list[str]:
        return suggest_claims(run, seed) + suggest_edge_claims(run, seed)

    def render(self, check, color: bool = False) -> list[str]:
        if self.measure_name == "minimal" and check.failing_cells:
            what = "edges" if self.is_edges else "nodes"
            return ["", f"{what} that do not matter: {', '.join(check.failing_cells)}"]
        return render_control(check)


def _count(nodes) -> str:
    return f"node{'s' if len(nodes) != 1 else ''}"


def _check_effect(run, engine, ablation: str, what: str = "node") -> None:
    """Unjudgeable when ablating every node (edge) barely moves the logit difference of some sample.
    ``engine``: the circuit engine, or the edge engine (whose ``p`` is the circuit engine)."""
    problem = run.foil_problem()
    if problem:
        raise Unjudgeable(problem)
    delta = getattr(engine, "p", engine).metrics("clean") - engine.all_ablated(ablation)
    spec = run.bound.spec
    weak = delta.abs() < spec.min_effect
    if bool(weak.any()) or not bool(delta.isfinite().all()):
        worst = float(delta.abs().min())
        where = "" if delta.shape[0] == 1 else f" on {int(weak.sum())} of {delta.shape[0]} samples"
        raise Unjudgeable(
            f"ablating every {what} ({ablation}) barely changes the behavior{where} "
            f"(|m_clean − m_∅| = {worst:.3f}, below min_effect {spec.min_effect:g}); the claim cannot "
            "be judged"
        )


# ---------------------------------------------------------------------------------------------
# Edge circuits: inline edge lists and graph files, resolved against the model


def _canonical(edge: Edge, shape: ModelShape) -> Edge:
    """One name per edge the model has: the logits at layer n_layers; on grouped-query models a k/v input
    named by the first query head of its key/value group (the query heads of a group share that input)."""
    r = edge.receiver
    if r.kind == "logits":
        return Edge(edge.sender, Receiver("logits", shape.n_layers))
    if r.kind in ("k", "v") and r.head is not None and shape.kv != shape.n_heads:
        group = shape.n_heads // shape.kv
        return Edge(edge.sender, Receiver(r.kind, r.layer, (r.head // group) * group))
    return edge


def bind_edge_list(specs, shape: ModelShape) -> tuple[Edge, ...]:
    """An inline edge list: every edge one the model has, named once."""
    out: list[Edge] = []
    seen: dict[Edge, str] = {}
    for spec in specs:
        edge = parse_edge(spec.text)
        problem = edge_problem(edge, shape)
        if problem:
            raise ClaimBindError(f"edge {spec.text!r} is not an edge of this model: {problem}", spec.text)
        edge = _canonical(edge, shape)
        if edge in seen:
            same = "" if seen[edge] == spec.text else f" ({seen[edge]!r}: query heads of one key/value group share it)"
            raise ClaimBindError(f"the edge list names {edge.name} twice{same}", spec.text)
        seen[edge] = spec.text
        out.append(edge)
    return tuple(out)


def _graph_words(graph: GraphRef | None) -> str:
    if graph is None:
        return "an empty edge list"
    if graph.top is None:
        return f"graph file {graph.path!r} has no edge with in_graph true"
    return f"the top {graph.top} edges of {graph.path!r}"


def bind_graph(graph: GraphRef, shape: ModelShape, context: BindContext) -> tuple[Edge, ...]:
    """A graph file's in-graph edges (or its top K by |score|), its config checked against the model."""
    path = graph.path if os.path.isabs(graph.path) else os.path.join(context.spec_dir or ".", graph.path)
    try:
        data = read_graph(path)
        problem = data.check_shape(shape)
        if problem:
            raise GraphFileError(
                f"graph file {path!r} was made for another model: {problem} "
                f"({context.model_name or 'this model'}: {shape.n_layers} layers, {shape.n_heads} heads"
                f"{', parallel blocks' if shape.parallel else ''})"
            )
        names = data.in_graph() if graph.top is None else data.top(graph.top)
    except GraphFileError as error:
        message = str(error)
        if graph.top is not None and "top" in message and "graph file" not in message:
            message = f"graph file {path!r}: {message}"
        raise ClaimBindError(message, graph.source) from None
    out: list[Edge] = []
    seen: set[Edge] = set()
    for name in names:
        edge = parse_edge(name)
        problem = edge_problem(edge, shape)
        if problem:
            raise ClaimBindError(
                f"graph file {path!r}: edge {name!r} is not an edge of this model: {problem}", graph.source
            )
        edge = _canonical(edge, shape)
        if edge not in seen:  # on grouped-query models the k/v edges of a group's query heads are one edge
            seen.add(edge)
            out.append(edge)
    return tuple(out)


def check_random_edges(edges, universe) -> int:
    """The number of other edge sets of the same size; ``ClaimBindError`` when there is none."""
    others = math.comb(len(universe), len(edges)) - 1
    if others < 1:
        raise ClaimBindError(
            f"'beats random' needs other edge sets of the same size, but the circuit has {len(edges)} of the "
            f"model's {len(universe)} edges"
        )
    return others


def random_edge_sets(edges, universe, count: int, seed: int) -> tuple[list[list[Edge]], bool]:
    """``count`` distinct edge sets of the size of ``edges`` drawn from ``universe`` (the model's edges),
    none equal to ``edges``; every other set, in a fixed order, when there are at most ``count``."""
    k, own = len(edges), frozenset(edges)
    universe = list(universe)
    if math.comb(len(universe), k) - 1 <= count:
        sets = [list(c) for c in itertools.combinations(universe, k) if frozenset(c) != own]
        return sets, True
    rng = random.Random(seed)
    position = {e: i for i, e in enumerate(universe)}  # (universe.index: minutes for 200 sets on gpt2-small)
    seen, sets = {own}, []
    while len(sets) < count:
        chosen = frozenset(rng.sample(universe, k))
        if chosen not in seen:
            seen.add(chosen)
            sets.append(sorted(chosen, key=position.__getitem__))
    return sets, False


# ---------------------------------------------------------------------------------------------
# --interp-suggest: the smallest faithful node set, and the strongest paths into its heads

SUGGEST_FAITHFUL = 0.9
SUGGEST_PATH = 0.15


def suggest_claims(run, seed: int = 0) -> list[str]:
    """The smallest node set (greedy pruning on nodes, ACDC-style) whose resample-faithfulness stays
    >= 0.9, as faithful / minimal / beats-random claims, and the strongest path into each query, key
    and value input of the heads it keeps. On a family the measured values are the lower bootstrap
    bounds of the samples' mean, as the claims will be judged."""
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
    heads = [n for n in kept if n.component == "heads" and n.layer > 0]
    senders = [n for n in kept if n.layer < max((h.layer for h in heads), default=0)]
    if not heads or not senders:
        return []
    receivers = [(kind, h.layer, h.head, None) for h in heads for kind in ("q", "k", "v")]
    raw = engine.path([edits_of([s]) for s in senders], [[r] for r in receivers], "corrupt", "clean")
    values = engine.normalize(raw, "denoise")  # [S, senders, receivers]
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


# ---------------------------------------------------------------------------------------------
# --interp-suggest on edges: the smallest edge set found by exact pruning, as inline edges or a graph file

SUGGEST_MAX_EDGES = 2000  # above this many edges, edges are ranked by attribution (every edge's loss alone otherwise)
SUGGEST_IG_STEPS = 5  # integrated-gradient steps of that ranking (interptest.patching.attribution)
SUGGEST_FIRST_K = 16  # the top-k search starts here and doubles
SUGGEST_SEARCH_EVALUATIONS = 48  # exact evaluations the pruning of a ranked top-k may spend
SUGGEST_MINIMAL_EDGES = 64  # a `minimal` claim only for circuits this small (one set per edge removed)


def edge_ranking(engine) -> list[float]:
    """Attribution scores that order the edges of a model above :data:`SUGGEST_MAX_EDGES` (EAP-IG over the edge
    mask, :func:`interptest.patching.attribution.edge_scores`); larger |score| first. Approximate: it orders
    the search, never decides what is claimed. A module attribute, so that tests can hand in another order."""
    from interptest.patching.attribution import edge_scores  # defers torch

    return edge_scores(engine, "resample", SUGGEST_IG_STEPS).tolist()


def suggest_edge_claims(run, seed: int = 0) -> list[str]:
    """An edge circuit whose resample-faithfulness stays >= 0.9, as faithful / minimal / beats-random claims.

    Models with at most :data:`SUGGEST_MAX_EDGES` edges, ACDC-style with the exact edge ablation: edges ranked
    by the faithfulness lost when each is removed alone from the full graph (one batched unit per edge; no
    gradient approximation), then removed greedily, least important first (in chunks, :func:`_prune`), while
    the (lower bootstrap bound of the) faithfulness stays >= 0.9.

    Larger models (gpt2-small's shape: 32,491 edges): edges ranked by |EAP-IG| (:func:`edge_ranking`; gradients,
    approximate, used only to order), then the smallest top-k whose *exact* faithfulness bound is >= 0.9 (k
    doubling from :data:`SUGGEST_FIRST_K`, then a binary search between the last failing and the first holding
    k), then exact pruning of those k, least |score| first, stopped after :data:`SUGGEST_SEARCH_EVALUATIONS`
    evaluations. A comment line (``# ...``) says how the circuit was found.

    Every value a claim prints is measured exactly on the circuit found; ``minimal`` only when the circuit has
    at most :data:`SUGGEST_MINIMAL_EDGES` edges, ``beats random`` drawn sequentially as the claim is judged.
    With the run's ``suggest_graphs`` option (a folder: ``interptest suggest --graphs DIR``,
    ``--interp-suggest-graphs DIR``) the circuit is written there as an EAP-IG graph file ``<behavior>.json``
    (scores: each edge's loss alone, or its attribution score above the limit) and the claims name it; an
    existing file is overwritten only with ``suggest_overwrite`` (else the claims name the edges inline)."""
    from interptest.patching.edges import edge_patcher  # defers torch

    cfg = run.model.cfg
    parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
    shape = ModelShape(int(cfg.n_layers), int(cfg.n_heads), getattr(cfg, "n_key_value_heads", None), parallel)
    every = model_edges(shape, per_query_head=False)
    engine = edge_patcher(run.circuits())
    delta = engine.p.metrics("clean") - engine.all_ablated("resample")
    if bool((delta.abs() < run.bound.spec.min_effect).any()):
        return []

    def lower(values) -> float:
        return measured_bounds(values[:, :1], seed, 1, True)[0]

    comment = []
    if len(every) <= SUGGEST_MAX_EDGES:
        full = engine.faithfulness([every], "resample")
        alone = engine.faithfulness([[e for e in every if e is not v] for v in every], "resample")
        scores = (full - alone).mean(dim=0).tolist()
        kept, _ = _prune(every, sorted(range(len(every)), key=lambda i: (scores[i], i)), engine, lower)
    else:
        scores = edge_ranking(engine)
        ranked = sorted(range(len(every)), key=lambda i: (-abs(scores[i]), i))
        k, searched = _smallest_top_k(every, ranked, engine, lower)
        top = sorted(ranked[:k])  # the model's edge order
        order = sorted(range(len(top)), key=lambda j: (abs(scores[top[j]]), top[j]))  # least |score| first
        kept, complete = _prune([every[i] for i in top], order, engine, lower, SUGGEST_SEARCH_EVALUATIONS)
        pruned = "complete" if complete else f"stopped after {SUGGEST_SEARCH_EVALUATIONS} evaluations"
        comment = [
            f"# edge circuit of {len(kept)} of {len(every)} edges: edges ranked by |EAP-IG| ({SUGGEST_IG_STEPS} "
            f"steps over the edge mask; approximate, it only orders the search), the smallest holding top-k "
            f"k = {k} ({searched} exact evaluations), then exact pruning ({pruned}); every value below is "
            "measured exactly"
        ]
    small = len(kept) <= SUGGEST_MINIMAL_EDGES
    without = [[e for e in kept if e is not v] for v in kept] if small else []
    values = engine.faithfulness([kept, *without], "resample")
    value = lower(values)
    if value < SUGGEST_FAITHFUL:
        return []
    target = _edge_target(run, kept, shape, {e.name: scores[i] for i, e in enumerate(every)})
    claims = [*comment, f"circuit {target} faithful >= {bound_at_least(value):.2f}"]
    if small:
        drops = values[:, :1] - values[:, 1:]
        weakest = min(measured_bounds(drops.double(), seed, len(kept), True))
        if bound_at_least(weakest) > 0:
            claims.append(f"circuit {target} minimal >= {bound_at_least(weakest):.2f}")
    if math.comb(len(every), len(kept)) > 1:
        text = f"circuit {target} faithful beats random at 0.95"
        sets, exhaustive = random_edge_sets(kept, every, random_count(run), control_seed(run, text))
        control = sequential_control(
            values[:, :1],
            lambda chunk: engine.faithfulness(chunk, "resample"),
            sets,
            0.95,
            exhaustive,
            "faithfulness",
            run.seed,
            sets_are="edge sets of the same size (among the model's edges)",
        )
        if value > control.comparison.threshold:
            claims.append(text)
    return claims


def _smallest_top_k(every, ranked, engine, lower) -> tuple[int, int]:
    """(k, exact evaluations): the smallest k whose top-k edges (``ranked``: indices, best first) hold the
    faithfulness bound >= SUGGEST_FAITHFUL, k doubling from SUGGEST_FIRST_K and then bisected between the last
    failing and the first holding k (the full graph holds: its faithfulness is 1)."""
    evaluations = 0

    def holds(k: int) -> bool:
        nonlocal evaluations
        evaluations += 1
        top = [every[i] for i in sorted(ranked[:k])]
        return lower(engine.faithfulness([top], "resample")) >= SUGGEST_FAITHFUL

    n = len(ranked)
    failing, k = 0, min(SUGGEST_FIRST_K, n)
    while k < n and not holds(k):
        failing, k = k, min(2 * k, n)
    while k - failing > 1:
        middle = (failing + k) // 2
        if holds(middle):
            k = middle
        else:
            failing = middle
    return k, evaluations


def _prune(every, order, engine, lower, evaluations: int | None = None) -> tuple[list, bool]:
    """Remove edges in ``order`` while the faithfulness's bound stays >= SUGGEST_FAITHFUL, several at a time:
    a chunk of the next edges is removed together when the circuit without all of them still holds (the
    chunk doubles), else the chunk halves down to one edge, which is then kept. Every removal is verified
    exactly; with chunks of one this is the one-at-a-time greedy pruning. At most ``evaluations`` exact
    evaluations (None: no limit); returns (the edges kept, whether every edge in ``order`` was tried)."""
    removed: set[int] = set()
    position, chunk, spent = 0, 8, 0
    while position < len(order):
        if evaluations is not None and spent >= evaluations:
            return [e for i, e in enumerate(every) if i not in removed], False
        take = order[position : position + chunk]
        taken = set(take)
        trial = [e for i, e in enumerate(every) if i not in removed and i not in taken]
        spent += 1 if trial else 0
        if trial and lower(engine.faithfulness([trial], "resample")) >= SUGGEST_FAITHFUL:
            removed.update(take)
            position += len(take)
            chunk *= 2
        elif chunk > 1:
            chunk //= 2
        else:
            position += 1  # this edge stays
    return [e for i, e in enumerate(every) if i not in removed], True


def _edge_target(run, kept, shape: ModelShape, scores: dict) -> str:
    """``@path`` of the graph file written for the circuit, or the inline ``edges[...]``."""
    options = getattr(run.bound, "options", None) or {}
    folder = options.get("suggest_graphs")
    inline = "edges[" + ", ".join(e.name for e in kept) + "]"
    if not folder:
        return inline
    spec = run.bound.spec
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", spec.name).strip("-.") or "circuit"
    path = Path(folder) / f"{name}.json"
    if path.exists() and not options.get("suggest_overwrite"):
        return inline
    path.parent.mkdir(parents=True, exist_ok=True)
    write_graph(path, kept, shape, int(run.model.cfg.d_model), scores, overwrite=True)
    base = Path(spec.path).resolve().parent if spec.path and not spec.path.startswith("<") else Path.cwd()
    try:
        shown = os.path.relpath(path.resolve(), base)
    except ValueError:  # another drive
        shown = str(path.resolve())
    return f"@{shown}" if not re.search(r"\s", shown) else f"@'{shown}'"
