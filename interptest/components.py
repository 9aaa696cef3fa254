"""The one table of patchable components — the node kinds of every claim: name, TransformerLens hook, axes,
what a model must expose, how one node of it is named, whether circuits take it as a node.

The claim grammar, the binding errors, the patching engines and the renderers all read this table;
a new component (q/k/v inputs, attention patterns) is a new row. Imports neither torch nor pytest.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Component:
    name: str
    hook: str  # TransformerLens hook name, with ``{layer}`` to format
    columns: str  # the second axis of a sweep map: "position", or "head" (then positions are optional)
    meaning: str  # what the activation is, for messages and documentation
    needs: str = ""  # why a model may lack it, for the "not available" error
    label: str = "{name} {layer}"  # one node of it in words, with ``{name}``, ``{layer}`` and ``{head}``
    circuit_node: bool = False  # a node of circuit claims and path senders (ablated as a whole)
    edge_label: str = ""  # one node of it in edge graphs (EAP-IG / MIB names: a{layer}.h{head}, m{layer})

    def hook_name(self, layer: int) -> str:
        return self.hook.format(layer=layer)

    @property
    def per_head(self) -> bool:
        return self.columns == "head"

    def node_label(self, layer: int, head: int | None = None) -> str:
        return self.label.format(name=self.name, layer=layer, head=head)

    def edge_node(self, layer: int, head: int | None = None) -> str:
        """One node of it as edge graphs name it (``a0.h2``, ``m1``)."""
        if not self.edge_label:
            raise KeyError(f"component {self.name!r} is not a node of edge graphs")
        return self.edge_label.format(layer=layer, head=head)


_ROWS = (
    Component("resid_pre", "blocks.{layer}.hook_resid_pre", "position", "the residual stream entering layer L"),
    Component(
        "resid_mid",
        "blocks.{layer}.hook_resid_mid",
        "position",
        "the residual stream between layer L's attention and its MLP",
        "parallel attention/MLP blocks have no residual stream between them",
    ),
    Component("resid_post", "blocks.{layer}.hook_resid_post", "position", "the residual stream leaving layer L"),
    Component("attn_out", "blocks.{layer}.hook_attn_out", "position", "layer L's attention output"),
    Component(
        "mlp_out",
        "blocks.{layer}.hook_mlp_out",
        "position",
        "layer L's MLP output",
        "",
        "MLP {layer}",
        True,
        "m{layer}",
    ),
    Component(
        "heads",
        "blocks.{layer}.attn.hook_z",
        "head",
        "one attention head's output (its z, before the output projection), at every position or at "
        "the positions given after ';'",
        label="head {layer}.{head}",
        circuit_node=True,
        edge_label="a{layer}.h{head}",
    ),
)

COMPONENTS: dict[str, Component] = {row.name: row for row in _ROWS}
NAMES: tuple[str, ...] = tuple(COMPONENTS)
# heads, mlp_out: the per-head kinds first, the order node lists are written in
CIRCUIT_NODES: tuple[str, ...] = tuple(
    row.name for row in sorted(_ROWS, key=lambda row: not row.per_head) if row.circuit_node
)


def get(name: str) -> Component:
    """The component called ``name``; ``KeyError`` with the valid names when there is none."""
    try:
        return COMPONENTS[name]
    except KeyError:
        raise KeyError(f"unknown component {name!r}; valid components: {', '.join(NAMES)}") from None


def available(hook_dict) -> tuple[str, ...]:
    """The components whose hooks a model exposes (``hook_dict``: its hook names)."""
    return tuple(row.name for row in _ROWS if row.hook_name(0) in hook_dict)


def unavailable_message(name: str, model_name: str, hook_dict) -> str:
    """Why ``name`` cannot be patched on this model, and what can."""
    row = COMPONENTS[name]
    why = f" ({row.needs})" if row.needs else ""
    return (
        f"component {name!r} is not available on model {model_name}{why}; available: {', '.join(available(hook_dict))}"
    )
