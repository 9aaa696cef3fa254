"""Edge graphs: the vocabulary of edge circuits and the graph files discovery tools write.

Nodes, named as EAP-IG and MIB name them: ``input`` (the embeddings), ``a{L}.h{H}`` (an attention head,
the ``heads`` row of :mod:`interptest.components`), ``m{L}`` (an MLP, the ``mlp_out`` row) and
``logits``. An edge is ``SENDER->RECEIVER``, with ``<q>``, ``<k>`` or ``<v>`` after a receiving head
(which of its inputs the edge enters): ``input->a0.h2<v>``, ``a0.h2->a1.h0<k>``, ``m1->logits``.

The model's edges (EAP-IG's ``Graph.from_model``): into a head of layer L from the input and every head
and MLP of the layers before; into the MLP of layer L from those and the heads of layer L (sequential
blocks; parallel attention/MLP blocks have no head → MLP edge within a layer); into the logits from
every node.

Graph files are EAP-IG's JSON (``Graph.to_json``; the MIB circuit-localization track's format):
``{"cfg": {"n_layers", "n_heads", "parallel_attn_mlp", "d_model", ...}, "nodes": {name: {"in_graph"}},
"edges": {name: {"score", "in_graph"}}}``. A circuit is its in-graph edges, or its ``top k`` edges by
|score|. Pure Python: imports neither torch nor pytest.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from interptest import components
from interptest.files import atomic_write

__all__ = [
    "Edge",
    "GraphFileError",
    "GraphFile",
    "ModelShape",
    "Receiver",
    "Sender",
    "edge_problem",
    "missing_hooks",
    "unsupported_reason",
    "model_edges",
    "parse_edge",
    "read_graph",
    "write_graph",
]


class GraphFileError(ValueError):
    """A graph file or an edge name that cannot be read; the message says what was expected."""


@dataclass(frozen=True, order=True)
class Sender:
    """``input`` (layer -1), a head ``a{L}.h{H}`` (kind ``head``) or an MLP ``m{L}`` (kind ``mlp``)."""

    kind: str  # input | head | mlp
    layer: int = -1
    head: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "input":
            return "input"
        return _node_name(self.kind, self.layer, self.head)


@dataclass(frozen=True, order=True)
class Receiver:
    """A head's ``q``/``k``/``v`` input, an MLP's input (``mlp``) or the ``logits`` (layer = n_layers)."""

    kind: str  # q | k | v | mlp | logits
    layer: int
    head: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "logits":
            return "logits"
        if self.kind == "mlp":
            return _node_name("mlp", self.layer, None)
        return f"{_node_name('head', self.layer, self.head)}<{self.kind}>"

    @property
    def node(self) -> Sender | None:
        """The node this input belongs to (None for the logits)."""
        if self.kind == "logits":
            return None
        return Sender("mlp", self.layer) if self.kind == "mlp" else Sender("head", self.layer, self.head)


@dataclass(frozen=True, order=True)
class Edge:
    sender: Sender
    receiver: Receiver

    @property
    def name(self) -> str:
        return f"{self.sender.name}->{self.receiver.name}"


# Node names come from the component table: heads -> a{layer}.h{head}, mlp_out -> m{layer}.
_KIND_COMPONENT = {"head": "heads", "mlp": "mlp_out"}


def _node_name(kind: str, layer: int, head: int | None) -> str:
    return components.get(_KIND_COMPONENT[kind]).edge_node(layer, head)


_NODE = re.compile(r"a(\d+)\.h(\d+)|m(\d+)|input|logits")
_EDGE = re.compile(r"\s*(\S+?)\s*->\s*([^<\s]+)\s*(?:<\s*(\w*)\s*>)?\s*")


def parse_node(text: str) -> tuple:
    """``input`` -> ("input",), ``a0.h2`` -> ("head", 0, 2), ``m1`` -> ("mlp", 1), ``logits`` -> ("logits",);
    :class:`GraphFileError` otherwise."""
    m = _NODE.fullmatch(text.strip())
    if not m:
        raise GraphFileError(f"{text.strip()!r} is not a node: expected input, a<L>.h<H> (e.g. a0.h2), m<L> or logits")
    if m.group(1) is not None:
        return ("head", int(m.group(1)), int(m.group(2)))
    if m.group(3) is not None:
        return ("mlp", int(m.group(3)))
    return (m.group(0),)


def parse_edge(text: str) -> Edge:
    """``a0.h2->a1.h0<k>`` as an :class:`Edge` (its layers and heads unchecked: :func:`edge_problem`)."""
    m = _EDGE.fullmatch(text)
    if not m:
        raise GraphFileError(
            f"{text.strip()!r} is not an edge: expected SENDER->RECEIVER, e.g. a0.h2->a1.h0<k> or m1->logits"
        )
    sender, receiver, qkv = parse_node(m.group(1)), parse_node(m.group(2)), m.group(3)
    if sender[0] == "logits":
        raise GraphFileError(f"in {text.strip()!r}: the logits send to nothing; a sender is input, a<L>.h<H> or m<L>")
    if receiver[0] == "input":
        raise GraphFileError(
            f"in {text.strip()!r}: the input receives nothing; a receiver is a<L>.h<H><q|k|v>, m<L> or logits"
        )
    if qkv is not None and receiver[0] != "head":
        raise GraphFileError(f"in {text.strip()!r}: only a head's input is named <q>, <k> or <v>, not {receiver[0]}'s")
    if qkv is not None and qkv not in ("q", "k", "v"):
        raise GraphFileError(f"in {text.strip()!r}: <{qkv}> is not a head input; expected <q>, <k> or <v>")
    s = Sender("input") if sender[0] == "input" else Sender(*sender)
    if receiver[0] == "logits":
        r = Receiver("logits", -1)
    elif receiver[0] == "mlp":
        r = Receiver("mlp", receiver[1])
    else:
        r = Receiver(qkv or "", receiver[1], receiver[2])
    return Edge(s, r)


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    parallel: bool = False

    @property
    def kv(self) -> int:
        return int(self.n_kv_heads or self.n_heads)

    def kv_head(self, head: int) -> int:
        return head // (self.n_heads // self.kv)


def edge_problem(edge: Edge, shape: ModelShape) -> str | None:
    """Why ``edge`` is not an edge of a model of ``shape`` (None when it is)."""
    s, r = edge.sender, edge.receiver
    for node, what in ((s, "sender"), (r, "receiver")):
        if node.kind in ("logits", "input"):
            continue
        if not 0 <= node.layer < shape.n_layers:
            return (
                f"its {what} {node.name} is at layer {node.layer}, but the model has layers 0 to {shape.n_layers - 1}"
            )
        if node.head is not None and not 0 <= node.head < shape.n_heads:
            return f"its {what} {node.name} names head {node.head}, but each layer has heads 0 to {shape.n_heads - 1}"
    if r.kind not in ("q", "k", "v", "mlp", "logits"):
        return "a head receives through its query, key or value input: write <q>, <k> or <v> after it"
    if s.kind == "input" or r.kind == "logits":
        return None
    same_layer_ok = r.kind == "mlp" and s.kind == "head" and not shape.parallel
    if s.layer < r.layer or (s.layer == r.layer and same_layer_ok):
        return None
    extra = ""
    if s.layer == r.layer and shape.parallel:
        extra = " (parallel blocks: the layer's attention and MLP read the same residual)"
    where = "at" if s.layer == r.layer else "after"
    return (
        f"its sender {s.name} is {where} its receiver's layer {r.layer}: a sender must come before its receiver{extra}"
    )


def normal(edge: Edge, shape: ModelShape) -> Edge:
    """The edge with the logits at layer n_layers (as the engine indexes them)."""
    if edge.receiver.kind == "logits" and edge.receiver.layer != shape.n_layers:
        return Edge(edge.sender, Receiver("logits", shape.n_layers))
    return edge


def model_edges(shape: ModelShape, per_query_head: bool = True) -> list[Edge]:
    """Every edge of the model, in EAP-IG's order (layer by layer: each sender's edges into every head's q,
    k, v, then the edges into the MLP; then the edges into the logits). ``per_query_head=False``: on
    grouped-query models one k and one v input per key/value head (named by its first query head), as the
    engine counts them."""
    senders = [Sender("input")]
    out: list[Edge] = []
    group = shape.n_heads // shape.kv
    for layer in range(shape.n_layers):
        heads = [Sender("head", layer, h) for h in range(shape.n_heads)]
        for s in senders:
            for h in range(shape.n_heads):
                for kind in ("q", "k", "v"):
                    if kind == "q" or per_query_head or h % group == 0:
                        out.append(Edge(s, Receiver(kind, layer, h)))
            if shape.parallel:  # EAP-IG interleaves: each sender's head edges, then its MLP edge
                out.append(Edge(s, Receiver("mlp", layer)))
        if not shape.parallel:
            out += [Edge(s, Receiver("mlp", layer)) for s in senders + heads]
        senders = senders + heads + [Sender("mlp", layer)]
    out += [Edge(s, Receiver("logits", shape.n_layers)) for s in senders]
    return out


def missing_hooks(hook_dict, n_layers: int) -> list[str]:
    """The hooks edge ablation writes (each layer's attention and MLP norm inputs, the final norm's input)
    or reads that ``hook_dict`` lacks. They are used by these names only: a look-alike (a HookedTransformer's
    ``ln_final.hook_normalized``) is after the norm, not before it."""
    names = ["blocks.0.hook_resid_pre", "ln_final.hook_in"]
    for layer in range(n_layers):
        names += [f"blocks.{layer}.{hook}" for hook in ("ln1.hook_in", "ln2.hook_in", "attn.hook_q", "attn.hook_k")]
        names += [f"blocks.{layer}.{hook}" for hook in ("attn.hook_v", "attn.hook_z", "hook_mlp_out")]
    return [name for name in names if name not in hook_dict]


def unsupported_reason(hook_dict, n_layers: int) -> str | None:
    """Why edge circuits cannot run on a model with these hooks (None when they can)."""
    missing = missing_hooks(hook_dict, n_layers)
    if not missing:
        return None
    return (
        "edge circuits rebuild each receiver's input before its own norm, through the TransformerBridge's "
        f"norm-input hooks; this model has no {', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''} (a "
        "HookedTransformer's norms have no input hooks; GPT-J-style blocks share one norm): edge claims are not "
        "supported on it"
    )


# ---------------------------------------------------------------------------------------------
# EAP-IG graph files


@dataclass(frozen=True)
class GraphFile:
    path: str
    cfg: dict
    edges: tuple[tuple[str, float | None, bool], ...]  # (name, score, in_graph), in the file's order

    def check_shape(self, shape: ModelShape) -> str | None:
        """Why the file's config does not describe a model of ``shape`` (None when it does)."""
        wanted = {"n_layers": shape.n_layers, "n_heads": shape.n_heads, "parallel_attn_mlp": shape.parallel}
        for key, value in wanted.items():
            if key not in self.cfg:
                return f"its cfg has no {key!r} (expected {value!r} for this model)"
            have = self.cfg[key]
            if (bool(have) if key == "parallel_attn_mlp" else have) != value:
                return f"its cfg has {key} = {have!r}, but the model has {value!r}"
        return None

    def in_graph(self) -> list[str]:
        return [name for name, _, on in self.edges if on]

    def top(self, k: int) -> list[str]:
        """The ``k`` edges with the largest |score| (ties in the file's order)."""
        if k < 1:
            raise GraphFileError(f"top {k}: k must be at least 1")
        if k > len(self.edges):
            raise GraphFileError(f"top {k} asks for more edges than the file has ({len(self.edges)})")
        scored = [(i, name, score) for i, (name, score, _) in enumerate(self.edges)]
        missing = [name for _, name, score in scored if score is None or math.isnan(score)]
        if missing:
            raise GraphFileError(
                f"edge {missing[0]!r} has no score ({len(missing)} edges without one): 'top k' ranks edges by |score|"
            )
        ranked = sorted(scored, key=lambda t: (-abs(t[2] or 0.0), t[0]))
        return [name for _, name, _ in ranked[:k]]


def read_graph(path: str | Path) -> GraphFile:
    """An EAP-IG graph JSON file; :class:`GraphFileError` naming what is wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GraphFileError(f"graph file {str(path)!r} does not exist") from None
    except OSError as error:
        raise GraphFileError(f"cannot read graph file {str(path)!r}: {error.strerror or error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise GraphFileError(
            f"graph file {str(path)!r} is not JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from None
    where = f"graph file {str(path)!r}"
    if not isinstance(data, dict) or not isinstance(data.get("edges"), dict) or not isinstance(data.get("cfg"), dict):
        raise GraphFileError(
            f"{where} is not an EAP-IG graph: expected a JSON object with 'cfg' (n_layers, n_heads, ...) and "
            "'edges' ({name: {'score', 'in_graph'}}), as Graph.to_json writes"
        )
    edges: list[tuple[str, float | None, bool]] = []
    for name, info in data["edges"].items():
        if not isinstance(info, dict) or not isinstance(info.get("in_graph"), bool):
            raise GraphFileError(
                f"{where}: edge {name!r} needs {{'score': number, 'in_graph': true|false}}, got {info!r}"
            )
        score = info.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            raise GraphFileError(f"{where}: edge {name!r} has score {score!r}; expected a number")
        try:
            parse_edge(name)
        except GraphFileError as error:
            raise GraphFileError(f"{where}: {error}") from None
        edges.append((name, None if score is None else float(score), info["in_graph"]))
    if not edges:
        raise GraphFileError(f"{where} has no edges")
    return GraphFile(str(path), dict(data["cfg"]), tuple(edges))


def write_graph(
    path: str | Path, kept: list[Edge], shape: ModelShape, d_model: int, scores: dict | None = None, overwrite=False
) -> None:
    """Write ``kept`` as an EAP-IG graph JSON over every edge of the model (atomically; an existing file
    only with ``overwrite``). ``scores``: {edge name: score} (0 where absent)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise GraphFileError(f"graph file {str(path)!r} exists; not overwriting it")
    keep = {e.name for e in kept}
    scores = scores or {}
    edges = {e.name: {"score": float(scores.get(e.name, 0.0)), "in_graph": e.name in keep} for e in model_edges(shape)}
    used = {"logits"} | {e.sender.name for e in kept} | {e.receiver.node.name for e in kept if e.receiver.node}
    names = (
        ["input"]
        + [
            n
            for layer in range(shape.n_layers)
            for n in [Sender("head", layer, h).name for h in range(shape.n_heads)] + [Sender("mlp", layer).name]
        ]
        + ["logits"]
    )
    data = {
        "cfg": {
            "n_layers": shape.n_layers,
            "n_heads": shape.n_heads,
            "parallel_attn_mlp": shape.parallel,
            "d_model": int(d_model),
        },
        "nodes": {n: {"in_graph": n in used} for n in names},
        "edges": edges,
    }
    atomic_write(path, json.dumps(data))
