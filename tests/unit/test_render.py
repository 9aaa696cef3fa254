"""The failure map: two decimals, claimed and failing cells marked, at most 100 columns, colour on request."""

from types import SimpleNamespace

import torch

from interptest.maps import WIDTH, render_map, show_token


def patch_map(n_layers=3, tokens=None, component="resid_pre"):
    tokens = tokens or ["<|endoftext|>", "Her", " name", " was", " Alex", " Hart"]
    values = torch.arange(n_layers * len(tokens), dtype=torch.float32).reshape(n_layers, len(tokens)) / 10 - 1
    return SimpleNamespace(values=values, tokens=tokens, component=component, direction="denoise")


def test_cells_marked_and_formatted():
    lines = render_map(patch_map(), claimed=[(2, 5), (1, 5)], failing=[(1, 5)], title="map")
    table = "\n".join(lines)
    assert "·Alex" in table and "·Hart" in table and "<|endoftext|>" in table  # 6 columns: room for every label
    layer1 = next(line for line in lines if line.strip().startswith("L1"))
    assert layer1.split()[1:] == ["-0.40", "-0.30", "-0.20", "-0.10", "0.00", "0.10!"]  # the mark after its cell
    layer2 = next(line for line in lines if line.strip().startswith("L2"))
    assert layer2.endswith(" 0.70*")
    assert "\x1b[" not in table


def test_long_prompts_wrap_within_the_terminal_width():
    tokens = [f" tok{i}" for i in range(40)]
    lines = render_map(patch_map(n_layers=12, tokens=tokens))
    assert max(len(line) for line in lines) <= WIDTH
    assert sum(1 for line in lines if line.strip().startswith("L11")) == 4  # 40 positions in 4 chunks
    assert any(line.split()[-1:] == ["39"] for line in lines)  # position numbers as headers


def test_colour_only_when_asked():
    coloured = "\n".join(render_map(patch_map(), failing=[(0, 0)], color=True))
    assert "\x1b[31;1m" in coloured and "-1.00!\x1b[0m" in coloured


def test_heads_map_labels_heads():
    lines = render_map(
        SimpleNamespace(values=torch.zeros(2, 4), tokens=["a"], component="heads", direction="noise"), claimed=[(1, 3)]
    )
    assert "layer × head" in lines[1] and "breaks" in lines[1]
    assert lines[3].split() == ["H0", "H1", "H2", "H3"]


def test_show_token_makes_spaces_and_controls_visible():
    assert show_token(" Hart") == "·Hart" and show_token("\n") == "\\n" and show_token("Her") == "Her"


def test_labels_untruncated_where_space_allows_else_shortened():
    short = render_map(patch_map(tokens=[" Campbell", " went", " home"]))
    assert "·Campbell" in "\n".join(short) and max(len(line) for line in short) <= WIDTH
    # one width for every column: the values stay under their labels
    header, first = short[4], short[5]
    assert len(header.rstrip()) == len(first.rstrip())  # the last label ends over the last value's digit
    crowded = render_map(patch_map(tokens=[f" Bartholomew{i}" for i in range(12)]))
    text = "\n".join(crowded)
    assert "·Bart…" in text and "·Bartholomew0" not in text and max(len(line) for line in crowded) <= WIDTH


def test_no_negative_zero_anywhere_in_a_map():
    pm = patch_map(tokens=["a", "b"])
    pm.values = torch.tensor([[-0.004, -0.0], [0.004, -1e-9]])
    cells = [cell for line in render_map(pm) if line.strip().startswith("L") for cell in line.split()[1:]]
    assert cells == ["0.00", "0.00", "0.00", "0.00"]
