"""The node vocabulary every claim kind speaks: a node is one row of the component table
(:mod:`interptest.components`) at a layer (and head), optionally at positions.

One parser (:meth:`interptest.claims.grammar.Parser.node_list` and the localization region), one
binder (:func:`resolve_nodes`, :func:`bind_nodes`), one engine representation (:meth:`Node.edits`:
the cells the patching engines replace), one way to name nodes in messages (:meth:`Node.label`) and
in claims (:func:`node_list`), and one universe of nodes for random controls
(:func:`random_node_sets`). Localization regions, path senders, circuits and random controls all go
through here; a new node kind is a row of the component table plus its engine support.
Pure Python: imports neither torch nor pytest.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

from interptest import components
from interptest.claims.grammar import (
    ClaimBindError,
    resolve_heads,
    resolve_index,
    resolve_layers,
    resolve_positions,
)


@dataclass(frozen=True)
class Node:
    """A resolved node: a component's activation at ``layer`` (and ``head`` for per-head components),
    at ``positions`` (None: every position)."""

    component: str
    layer: int
    head: int | None
    positions: tuple[int, ...] | None = None

    @property
    def key(self) -> tuple:
        return (self.component, self.layer, self.head)

    def edits(self) -> list[tuple]:
        """The node as cells of the patching engines: ("heads", (L, H, pos)) / (component, (L, pos))."""
        positions = self.positions if self.positions is not None else (None,)
        if components.get(self.component).per_head:
            return [(self.component, (self.layer, self.head, p)) for p in positions]
        return [(self.component, (self.layer, p)) for p in positions]

    def cells(self) -> list[tuple]:
        """The node as a localization claim's cells: (L, H), (L, H, pos) or (L, pos)."""
        return [tuple(x for x in cell if x is not None) for _, cell in self.edits()]

    def label(self, tokens=None) -> str:
        name = components.get(self.component).node_label(self.layer, self.head)
        if self.positions is None:
            return name
        shown = [f"{p} {tokens[p]!r}" if tokens else str(p) for p in self.positions]
        return f"{name} at position{'s' if len(shown) > 1 else ''} {', '.join(shown)}"


def resolve_nodes(
    specs, tokens: list[str], variables: dict | None, n_layers: int, n_heads: int, region: bool = False
) -> tuple[Node, ...]:
    """Node specs (:class:`interptest.claims.grammar.NodeSpec`) resolved for one prompt and model: every
    node in range and named once. ``region``: the one region of a localization claim, whose messages
    speak of its head list and layer list rather than of a node list's entries."""
    nodes: list[Node] = []
    for spec in specs:
        positions = None if spec.positions is None else tuple(resolve_positions(spec.positions, tokens, variables))
        if not components.get(spec.component).per_head:
            nodes += [Node(spec.component, layer, None, positions) for layer in resolve_layers(spec.layers, n_layers)]
        elif region:
            nodes += [Node(spec.component, l, h, positions) for l, h in resolve_heads(spec.heads, n_layers, n_heads)]
        else:
            for layer, head in spec.heads:
                layer = resolve_index(layer, n_layers, "layer", "layers")
                if not 0 <= head < n_heads:
                    raise ClaimBindError(
                        f"head {layer}.{head} in {spec.source} is out of range: each layer has "
                        f"{n_heads} heads (0 to {n_heads - 1})"
                    )
                nodes.append(Node(spec.component, layer, head, positions))
    seen: set = set()
    for node in nodes:
        if node.key in seen:
            raise ClaimBindError(f"the node list names {node.label()} twice")
        seen.add(node.key)
    return tuple(nodes)


def bind_nodes(specs, context, region: bool = False) -> tuple[Node, ...]:
    """The nodes resolved on every sample of a :class:`~interptest.claims.base.BindContext`; positions
    must not move between samples."""
    return context.same_on_every_sample(
        lambda s: resolve_nodes(
            specs, context.tokens[s], context.variables[s], context.n_layers, context.n_heads, region
        )
    )


def node_variables(specs) -> list[str]:
    """The template variables that node specs' positions name."""
    return [
        spec.positions.values[0] for spec in specs if spec.positions is not None and spec.positions.kind == "variable"
    ]


def edits_of(nodes) -> tuple:
    return tuple(edit for node in nodes for edit in node.edits())


def cells_to_nodes(component: str, cells) -> tuple[Node, ...]:
    """Cells of one component (as :meth:`Node.cells` gives them) grouped back into nodes."""
    per_head = components.get(component).per_head
    grouped: dict[tuple, list] = {}
    for cell in cells:
        if per_head:
            key, pos = (cell[0], cell[1]), (cell[2] if len(cell) == 3 else None)
        else:
            key, pos = (cell[0], None), cell[1]
        grouped.setdefault(key, []).append(pos)
    return tuple(
        Node(component, layer, head, None if None in positions else tuple(sorted(positions)))
        for (layer, head), positions in grouped.items()
    )


def cell_label(cell, tokens, per_head: bool = False) -> str:
    if per_head and len(cell) == 2:
        return f"head {cell[0]}.{cell[1]}"
    if len(cell) == 3:
        return f"head {cell[0]}.{cell[1]} at position {cell[2]} {tokens[cell[2]]!r}"
    return f"(layer {cell[0]}, position {cell[1]} {tokens[cell[1]]!r})"


def node_list(nodes) -> str:
    """Node-list syntax for whole nodes: ``heads[0.2, 1.0] + mlp_out[0, 1]``."""
    parts = []
    for component in components.CIRCUIT_NODES:
        members = sorted((n.layer, n.head) for n in nodes if n.component == component)
        if not members:
            continue
        if components.get(component).per_head:
            parts.append(f"{component}[{', '.join(f'{l}.{h}' for l, h in members)}]")
        else:
            parts.append(f"{component}[{', '.join(str(l) for l, _ in members)}]")
    return " + ".join(parts)


# ---------------------------------------------------------------------------------------------
# Random node sets of the same composition (negative controls)


def _universe(component: str, n_layers: int, n_heads: int) -> list[tuple]:
    if components.get(component).per_head:
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
