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

from dataclasses import dataclass
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
    ClaimSyntaxError,
    Comparison,
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

MEASURES = ("faithful", "minimal")


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
        return sequential_control(
            values,
            lambda chunk: engine.faithfulness([edits_of(s) for s in chunk], self.ablation),
            sets,
            self.random.quantile,
            exhaustive,
            "faithfulness",
            run.seed,
        )

    def record(self, check) -> dict:
        out: dict[str, Any] = {"ablation": self.ablation}
        if self.measure_name == "minimal":
            out["failing_nodes"] = list(check.failing_cells)
        if check.figure:
            out["random"] = {k: v for k, v in check.figure.items() if k != "type"}
        return out

    @classmethod
    def suggest(cls, run, seed: int) -> list[str]:
        return suggest_claims(run, seed)

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
