"""A patching map — the values of one component's sweep over layers × positions (or × heads) — as
data, as the terminal's table and as the report's HTML heatmap, with the key results.json files it
under. The engines produce maps, claims draw them, the report and baselines read their entries; this
module depends on none of them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from interptest import components
from interptest.errors import InterpError
from interptest.heatmap import STYLE, escape, heatmap, show_token

if TYPE_CHECKING:
    import torch

WIDTH = 100  # the terminal width maps and failure reports are sized for
CELL = 6  # a value such as "-0.12" + one marker character after it
ROW_LABEL = 5  # "L11  "
RED, BOLD, DIM, RESET = "\x1b[31;1m", "\x1b[1m", "\x1b[2m", "\x1b[0m"


@dataclass(frozen=True)
class PatchMap:
    component: str
    direction: str
    values: torch.Tensor  # normalized, float32, CPU; [n_layers, n_positions] (heads: [n_layers, n_heads])
    raw: torch.Tensor  # patched logit differences, same shape
    tokens: list[str]
    clean_metric: float
    corrupt_metric: float

    @property
    def delta(self) -> float:
        """Δm = m_clean − m_corrupt, the normalizer of every value."""
        return self.clean_metric - self.corrupt_metric

    def __repr__(self) -> str:
        head = (
            f"PatchMap({self.component}, {self.direction}: m_clean {self.clean_metric:z.3f}, m_corrupt "
            f"{self.corrupt_metric:z.3f}, Δm {self.delta:z.3f})"
        )
        table = [line[2:] for line in render_map(self)[1:] if "claimed cell" not in line]  # no claims here
        return "\n".join([head] + table)

    def _repr_html_(self) -> str:
        """The report's heatmap, for notebooks."""
        return patch_map_html(self)

    def plot(self, ax=None):
        """A matplotlib heatmap (``pip install "interptest[plot]"``); returns the axes."""
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise InterpError('PatchMap.plot needs matplotlib: pip install "interptest[plot]"') from None
        per_head = components.get(self.component).per_head
        if ax is None:
            _, ax = plt.subplots(figsize=(max(4.0, 0.6 * self.values.shape[1] + 2), 0.5 * self.values.shape[0] + 1.5))
        limit = max(1.0, float(self.values.abs().nan_to_num().max()))
        image = ax.imshow(self.values.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        columns = [f"H{h}" for h in range(self.values.shape[1])] if per_head else list(self.tokens)
        ax.set_xticks(range(len(columns)), columns, rotation=90)
        ax.set_yticks(range(self.values.shape[0]), [f"L{layer}" for layer in range(self.values.shape[0])])
        ax.set_xlabel("head" if per_head else "position")
        ax.set_ylabel("layer")
        verb = "recovers" if self.direction == "denoise" else "breaks"
        ax.set_title(f"{self.component} {verb}")
        ax.figure.colorbar(image, ax=ax)
        return ax


def map_key(component: str, direction: str) -> str:
    """The name a map is filed under in results.json and baselines."""
    return component if direction == "denoise" else f"{component}:noise"


def finite_or_none(value):
    """A float, or None for None, NaN and infinities (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def map_entry(patch_map) -> dict:
    """One map as JSON: {component, direction, values, layers, positions|heads}."""
    component, direction = patch_map.component, patch_map.direction
    values = [[finite_or_none(v) for v in row] for row in patch_map.values.tolist()]
    entry: dict[str, Any] = {
        "component": component,
        "direction": direction,
        "values": values,
        "layers": list(range(len(values))),
    }
    columns = "heads" if components.get(component).per_head else "positions"
    entry[columns] = list(range(len(values[0]) if values else 0))
    return entry


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _header(label: str, cell: int = CELL) -> str:
    """A column label right-aligned over the value (the last character is the mark's column, which a
    label that needs it may take)."""
    label = shorten(label, cell)
    return label.rjust(cell - 1).ljust(cell) if len(label) < cell else label


def _cell_width(labels: list[str], n_cols: int) -> int:
    """The columns' width: wide enough for the longest label when every column then fits one row of
    ``WIDTH`` (labels untruncated where space allows), else :data:`CELL` (long prompts wrap, labels
    shortened)."""
    longest = max((len(label) for label in labels), default=0)
    fits = (WIDTH - ROW_LABEL - 2) // max(1, n_cols) - 1  # one space between columns
    return max(CELL, min(longest, fits))


def render_map(patch_map, claimed=(), failing=(), title: str = "", color: bool = False) -> list[str]:
    """A layer × position (or layer × head) table, two decimals, wrapped to ``WIDTH`` columns."""
    values = patch_map.values
    n_layers, n_cols = values.shape
    heads = components.get(patch_map.component).per_head
    direction = (
        "recovers: clean patched into corrupted run"
        if patch_map.direction == "denoise"
        else "breaks: corrupted patched into clean run"
    )
    lines = [
        f"  {title}" if title else "",
        f"  {patch_map.component} ({direction}), layer × {'head' if heads else 'position'}",
        "  0.93* claimed cell   0.12! failing cell (the mark follows its value)",
    ]
    claimed, failing = {tuple(c[:2]) for c in claimed}, {tuple(c[:2]) for c in failing}
    labels = [f"H{h}" for h in range(n_cols)] if heads else [show_token(t) for t in patch_map.tokens]
    cell = _cell_width(labels, n_cols)
    per_chunk = max(1, (WIDTH - ROW_LABEL - 2) // (cell + 1))
    for start in range(0, n_cols, per_chunk):
        cols = range(start, min(n_cols, start + per_chunk))
        if not heads:
            lines.append("  " + " " * ROW_LABEL + " ".join(_header(str(c), cell) for c in cols))
        lines.append("  " + " " * ROW_LABEL + " ".join(_header(labels[c], cell) for c in cols))
        for layer in range(n_layers):
            cells = []
            for c in cols:
                marker = "!" if (layer, c) in failing else "*" if (layer, c) in claimed else " "
                value = float(values[layer, c])
                text = f"{value:z{cell - 1}.2f}{marker}"  # no "-0.00"; the mark after
                if color and marker == "!":
                    text = f"{RED}{text}{RESET}"
                elif color and marker == "*":
                    text = f"{BOLD}{text}{RESET}"
                cells.append(text)
            lines.append("  " + f"L{layer}".ljust(ROW_LABEL) + " ".join(cells))
    return lines


def patch_map_html(patch_map) -> str:
    """One patching map as a self-contained HTML fragment (the report's heatmap, with its styles)."""
    key = map_key(patch_map.component, patch_map.direction)
    entry = map_entry(patch_map)
    return f'<div class="interptest-map"><style>{STYLE}</style>{heatmap(key, entry, list(patch_map.tokens), [])}</div>'


def map_page(patch_map, title: str) -> str:
    """A whole HTML page with one map (``interptest map --html FILE``)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{escape(title)}</title></head><body><main class="page"><h1>{escape(title)}</h1>'
        f"{patch_map_html(patch_map)}</main></body></html>\n"
    )
