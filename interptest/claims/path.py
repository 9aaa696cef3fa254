"""Path claims, verified by path patching (Wang et al. 2022, appendix; Goldowsky-Dill et al. 2023)::

    path heads[0.2] -> heads[1.0].k recovers >= 0.5          K-composition
    path heads[0.2] -> heads[1.0].q recovers <= 0.05         no Q-composition
    path heads[1.0, 1.3] -> logits recovers >= 0.8           direct effect
    path mlp_out[0] -> heads[1.0].v breaks >= 0.2 ablate mean

Senders are attention heads and MLP layers (a node list, as in circuit claims), replaced together.
Receivers are a head's query, key or value input (``heads[L.H].q|k|v``, every position or the
positions after ';'), an MLP's input (``mlp_in[L]``) or the final residual stream (``logits``);
several receivers joined by ``+`` are patched together.

``recovers``: base run = corrupted, source = clean. (1) Run the base with the senders' outputs
replaced by their source values and every *other* attention head's output frozen at its base value
(MLPs and LayerNorms recompute: the IOI convention); record the receivers' inputs. (2) Run the base
with only those inputs replaced by the recorded values; value (m − m_corrupt) / (m_clean − m_corrupt).
``breaks`` swaps base and source — value (m_clean − m) / (m_clean − m_corrupt) — and may name the
senders' ablation (``ablate resample|mean|zero``). On grouped-query models ``.k`` and ``.v`` are the
key/value head that the named query head reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from interptest.claims.base import BindContext, Claim, Measurement, Unjudgeable, ablation_requirement
from interptest.claims.grammar import (
    EDIT_VERBS,
    ClaimBindError,
    ClaimSyntaxError,
    Comparison,
    NodeSpec,
    Parser,
    ReceiverSpec,
    did_you_mean,
    resolve_index,
    resolve_layers,
    resolve_positions,
)
from interptest.claims.nodes import Node, bind_nodes, edits_of, node_variables

RECEIVER_WORDS = {"q": "query input", "k": "key input", "v": "value input", "mlp_in": "input", "logits": ""}


@dataclass(frozen=True)
class BoundPath:
    claim: PathClaim
    senders: tuple[Node, ...]
    receivers: tuple[tuple, ...]  # the engine's receivers: (q|k|v, L, H, pos), (mlp_in, L, pos), (logits, None)
    description: str


@dataclass(frozen=True)
class PathClaim(Claim):
    text: str
    senders: tuple[NodeSpec, ...]
    receivers: tuple[ReceiverSpec, ...]
    direction: str  # denoise (recovers) | noise (breaks)
    comparison: Comparison
    ablation: str | None = None  # breaks only; None = resample

    keywords: ClassVar[tuple[str, ...]] = ("path",)
    hint: ClassVar[str] = "path SENDERS -> RECEIVER ..."

    @property
    def verb(self) -> str:
        return "recovers" if self.direction == "denoise" else "breaks"

    @classmethod
    def parse(cls, p: Parser) -> PathClaim:
        p.expect("ident", "path")
        senders = p.node_list("the path's senders")
        p.expect("punct", "->", "'->' and the receiver, e.g. path heads[0.3] -> heads[1.0].k")
        receivers = p.receivers()
        verb = p.tok
        if verb.kind != "ident" or verb.value not in EDIT_VERBS:
            p.fail(
                "'recovers' or 'breaks'" + (did_you_mean(verb.value, tuple(EDIT_VERBS)) if verb.kind == "ident" else "")
            )
        p.i += 1
        if p.tok.kind == "ident" and p.tok.value == "beats":
            raise ClaimSyntaxError(
                "'beats random' compares node sets; it applies to together and circuit claims, not to paths",
                p.text,
                p.tok.start,
            )
        comparison = p.comparison()
        ablation_tok = p.tok
        ablation = p.ablation()
        if ablation is not None and verb.value == "recovers":
            raise ClaimSyntaxError(
                "'ablate' names what replaces the senders in a 'breaks' claim; 'recovers' "
                "patches clean values into the corrupted run",
                p.text,
                ablation_tok.start,
            )
        p.end()
        return cls(p.text, senders, receivers, EDIT_VERBS[verb.value], comparison, ablation)

    def requirement(self, behavior) -> str | None:
        if behavior.corruption is None:
            return (
                f"claim {self.text!r} patches paths between a clean and a corrupted run; add a 'corrupt' "
                "prompt to the behavior"
            )
        if self.ablation is not None:
            return ablation_requirement(self.text, self.ablation, behavior)
        return None

    def template_variables(self) -> list[str]:
        names = node_variables(self.senders)
        names += [
            r.positions.values[0] for r in self.receivers if r.positions is not None and r.positions.kind == "variable"
        ]
        return names

    def bind(self, context: BindContext) -> BoundPath:
        senders = bind_nodes(self.senders, context)
        receivers = context.same_on_every_sample(
            lambda s: _bind_receivers(self.receivers, context, s), "its receiver positions differ"
        )
        sequential = "resid_mid" in context.components
        for spec in self.receivers:
            for receiver in _bind_receivers((spec,), context, 0):
                for node in senders:
                    _check_order(node, receiver, spec, sequential)
        _check_kv_groups(receivers, context)
        words = []
        for spec in self.receivers:
            word = RECEIVER_WORDS[spec.kind]
            words.append(f"{spec.source}" + (f" ({word})" if word else ""))
        description = f"{' + '.join(n.label(context.tokens[0]) for n in senders)} -> {' + '.join(words)}"
        return BoundPath(self, senders, receivers, description)

    def measure(self, bound: BoundPath, run) -> Measurement:
        problem = run.effect_problem()
        if problem:
            raise Unjudgeable(problem)
        engine = run.circuits()
        if self.direction == "denoise":
            base, source = "corrupt", "clean"
        else:
            base, source = "clean", self.ablation or "resample"
        raw = engine.path([edits_of(bound.senders)], [bound.receivers], base, source)[:, 0, :]
        values = engine.normalize(raw, self.direction)
        how = {
            "clean": "clean values into the corrupted run",
            "resample": "corrupted values into the clean run",
            "mean": "mean-ablated in the clean run",
            "zero": "zero-ablated in the clean run",
        }[source]
        return Measurement(
            values,
            quantifier="together",
            note=f"path {bound.description}: senders {how}, other heads frozen, MLPs and LayerNorms recompute",
        )

    def record(self, check) -> dict:
        bound = check.bound
        return {
            "ablation": (self.ablation or "resample") if self.direction == "noise" else None,
            "path": None if bound is None else bound.description,
        }


def _bind_receivers(specs, context: BindContext, sample: int) -> tuple[tuple, ...]:
    tokens, variables = context.tokens[sample], context.variables[sample]
    out: list[tuple] = []
    for spec in specs:
        positions = (None,) if spec.positions is None else tuple(resolve_positions(spec.positions, tokens, variables))
        if spec.kind == "logits":
            out.append(("logits", None))
        elif spec.kind == "mlp_in":
            for layer in resolve_layers(spec.layers, context.n_layers):
                out.extend(("mlp_in", layer, p) for p in positions)
        else:
            for layer, head in spec.heads:
                layer = resolve_index(layer, context.n_layers, "layer", "layers")
                if not 0 <= head < context.n_heads:
                    raise ClaimBindError(
                        f"receiver head {layer}.{head} is out of range: each layer has "
                        f"{context.n_heads} heads (0 to {context.n_heads - 1})"
                    )
                out.extend((spec.kind, layer, head, p) for p in positions)
    if len(set(out)) != len(out):
        raise ClaimBindError("the receivers name the same input twice")
    return tuple(out)


def _check_order(node: Node, receiver: tuple, spec: ReceiverSpec, sequential: bool) -> None:
    """A sender must come before its receiver: heads and MLPs of earlier layers feed a head's q/k/v;
    an MLP's input also reads the same layer's heads on sequential (not parallel) blocks."""
    kind = receiver[0]
    if kind == "logits":
        return
    layer = receiver[1]
    allowed = layer - 1
    if kind == "mlp_in" and node.component == "heads" and sequential:
        allowed = layer
    if node.layer > allowed:
        raise ClaimBindError(
            f"sender {node.label()} is at or after the receiver {spec.source} (layer {layer}): a path runs "
            "from an earlier node to a later one"
            + (
                " (on this model's parallel blocks, a layer's heads do not feed its MLP)"
                if kind == "mlp_in" and node.component == "heads" and node.layer == layer
                else ""
            )
        )


def _check_kv_groups(receivers, context: BindContext) -> None:
    """On grouped-query models, .k/.v of query heads that share a key/value head are one input."""
    n_kv = context.n_kv_heads or context.n_heads
    if n_kv == context.n_heads:
        return
    group = context.n_heads // n_kv
    seen: dict[tuple, int] = {}
    for receiver in receivers:
        if receiver[0] in ("k", "v"):
            kind, layer, head, pos = receiver
            key = (kind, layer, head // group, pos)
            if key in seen and seen[key] != head:
                other = seen[key]
                raise ClaimBindError(
                    f"receivers heads[{layer}.{other}].{kind} and heads[{layer}.{head}].{kind} are the same input: on "
                    f"this model {context.n_heads} query heads share {n_kv} key/value heads, and query heads "
                    f"{layer}.{head // group * group} to {layer}.{head // group * group + group - 1} read key/value "
                    f"head {head // group}; name one of them (the claim is about that key/value head)"
                )
            seen[key] = head
