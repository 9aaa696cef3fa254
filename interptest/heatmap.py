"""A patching map as HTML: the report's heatmap of layer × position (or × head) cells, and the page
style the report and a notebook's map share. Pure Python, no torch: the map arrives as the JSON entry
of results.json (:func:`interptest.maps.map_entry`)."""

from __future__ import annotations

import html
import math
from typing import Any

# Diverging scale, RdBu-like: value -1 → deep blue, 0 → near-white, +1 → deep red.
_NEG = ((247, 247, 247), (146, 197, 222), (33, 102, 172))
_POS = ((247, 247, 247), (244, 165, 130), (178, 24, 43))


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


_e = escape


def number_text(value: Any, digits: int = 2) -> str | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    text = f"{number:.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.00"


def show_token(token: Any) -> str:
    """A token as a reader needs to see it: leading spaces as '·', control characters escaped."""
    text = repr(str(token))[1:-1]
    return "·" + text[1:] if text.startswith(" ") else text


def colour(value: float) -> str:
    v = max(-1.0, min(1.0, value))
    stops = _POS if v >= 0 else _NEG
    t = abs(v) * 2
    lo, hi = (stops[0], stops[1]) if t <= 1 else (stops[1], stops[2])
    t = t if t <= 1 else t - 1
    r, g, b = (round(a + (c - a) * t) for a, c in zip(lo, hi))
    return f"#{r:02x}{g:02x}{b:02x}"


def cell_set(cells: Any) -> set[tuple[int, int]]:
    found = set()
    for cell in cells or []:
        try:
            found.add((int(cell[0]), int(cell[1])))
        except (TypeError, ValueError, IndexError):
            continue
    return found


def heatmap(key: str, spec: dict, tokens: list, claims: list[dict]) -> str:
    values = spec.get("values") or []
    heads = "heads" in spec and "positions" not in spec
    layers = list(spec.get("layers") or range(len(values)))
    n_cols = max((len(row) for row in values), default=0)
    columns = list(spec.get("heads" if heads else "positions") or range(n_cols))
    claimed: set[tuple[int, int]] = set()
    failing: set[tuple[int, int]] = set()
    related = []
    for claim in claims:
        if claim.get("map") == key:
            related.append(claim)
            claimed |= cell_set(claim.get("cells"))
            failing |= cell_set(claim.get("failing_cells"))
    component = spec.get("component", key)
    direction = spec.get("direction", "")
    explain = {
        "denoise": "recovery: clean activation patched into the corrupted run",
        "noise": "damage: corrupted activation patched into the clean run",
    }.get(direction, direction)
    axis = "head" if heads else "position"

    head_cells = []
    for col in columns:
        if heads:
            head_cells.append(f'<th class="col" title="head {_e(col)}"><span class="idx">H{_e(col)}</span></th>')
        else:
            token = tokens[col] if isinstance(col, int) and 0 <= col < len(tokens) else ""
            label = show_token(token)
            head_cells.append(
                f'<th class="col" title="position {_e(col)}: {_e(label)}">'
                f'<span class="tok">{_e(label)}</span><span class="idx">{_e(col)}</span></th>'
            )
    rows = []
    for r, layer in enumerate(layers):
        row = values[r] if r < len(values) else []
        cells = []
        for c, col in enumerate(columns):
            raw = row[c] if c < len(row) else None
            text = number_text(raw)
            classes = []
            key_cell = (layer, col) if isinstance(layer, int) and isinstance(col, int) else None
            if key_cell in failing:
                classes.append("failing")
            elif key_cell in claimed:
                classes.append("claimed")
            where = f"L{layer} · {axis} {col}"
            if not heads:
                token = tokens[col] if isinstance(col, int) and 0 <= col < len(tokens) else ""
                where += f" {show_token(token)}"
            if raw is None or text is None:  # number_text(None) is None: the same test, for the type checker
                classes.append("nan")
                style = ""
                shown = "–"
            else:
                value = float(raw)
                style = f' style="background:{colour(value)}' + (';color:#fff"' if abs(value) > 0.62 else '"')
                shown = text
            tip = f"{where}: {shown}" + (
                " (claimed, failing)" if "failing" in classes else " (claimed)" if "claimed" in classes else ""
            )
            cls = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f'<td{cls}{style} title="{_e(tip)}">{shown}</td>')
        rows.append(f'<tr><th class="row">L{_e(layer)}</th>{"".join(cells)}</tr>')
    marks = f"{len(claimed | failing)} claimed cell{'s' if len(claimed | failing) != 1 else ''}" + (
        f', <b class="fail-count">{len(failing)} failing</b>' if failing else ""
    )
    by = "; ".join(_e(c.get("text", "")) for c in related)
    return (
        f'<figure class="map">'
        f'<figcaption><b>{_e(key)}</b> <span class="muted">{_e(component)} · layer × {axis} · '
        f'{_e(explain)}</span><br><span class="small">{marks}'
        + (f" — claimed by <code>{by}</code>" if by else "")
        + "</span></figcaption>"
        f'<div class="heatmap-scroll">'
        f'<table class="heatmap" data-map="{_e(key)}" data-axis="{axis}">'
        f'<thead><tr><th class="corner">layer \\ {axis}</th>{"".join(head_cells)}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        f"{legend(direction)}</figure>"
    )


def legend(direction: str) -> str:
    meaning = {
        "denoise": "0: stays corrupted · +1: clean behaviour fully restored",
        "noise": "0: no damage · +1: clean behaviour fully destroyed",
    }.get(direction, "normalised effect")
    return (
        '<div class="legend">'
        '<span class="scale"><span class="lab">−1</span><span class="grad"></span><span class="lab">+1</span></span>'
        f'<span class="lab muted">{_e(meaning)} (colour clamped to ±1)</span>'
        '<span class="key"><span class="sw sw-claimed"></span>claimed cell</span>'
        '<span class="key"><span class="sw sw-failing"></span>failing cell</span>'
        "</div>"
    )


STYLE = """
:root { --fg:#1f2328; --muted:#656d76; --line:#d0d7de; --bg:#f6f8fa; --card:#ffffff;
        --ok:#1a7f37; --ko:#cf222e; --mono:ui-monospace,SFMono-Regular,"DejaVu Sans Mono",Menlo,Consolas,monospace; }
* { box-sizing:border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font:15px/1.5 system-ui,-apple-system,"Segoe UI","DejaVu Sans",Roboto,"Helvetica Neue",Arial,sans-serif; }
.page { max-width:1160px; margin:0 auto; padding:24px 20px 40px; }
header h1 { margin:0 0 2px; font-size:26px; letter-spacing:-0.01em; }
.meta { margin:0 0 18px; color:var(--muted); }
.meta .pill { margin-left:4px; }
h2 { font-size:18px; margin:0 0 12px; display:flex; align-items:center; gap:10px; }
h3 { font-size:15px; margin:18px 0 8px; }
h4 { font-size:13px; margin:0 0 4px; color:var(--muted); font-weight:600; text-transform:uppercase;
     letter-spacing:0.04em; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:18px 20px; margin:0 0 18px; }
.behavior.failed, .behavior.error { border-left:4px solid var(--ko); }
.behavior.passed { border-left:4px solid var(--ok); }
.nodeid { font-family:var(--mono); font-size:0.92em; word-break:break-all; }
h2 .nodeid { font-weight:600; }
a { color:#0969da; text-decoration:none; } a:hover { text-decoration:underline; }
a.top { margin-left:auto; color:var(--muted); font-weight:400; }
.muted { color:var(--muted); font-weight:400; }
.small { font-size:12.5px; }
.scroll { overflow-x:auto; }
.pill { display:inline-block; padding:1px 9px; border-radius:999px; font-size:12px; font-weight:600;
        line-height:18px; white-space:nowrap; font-family:system-ui,sans-serif; }
table.summary { border-collapse:collapse; width:100%; font-size:14px; }
table.summary th, table.summary td { padding:6px 10px; border-bottom:1px solid var(--line); text-align:left; }
table.summary th { font-size:12.5px; color:var(--muted); font-weight:600; }
table.summary tr:hover td { background:#f6f8fa; }
.num { text-align:right !important; font-variant-numeric:tabular-nums; white-space:nowrap; }
td.bad { color:var(--ko); font-weight:600; }
dl.facts { display:grid; grid-template-columns:max-content 1fr; gap:4px 14px; margin:0 0 10px; }
dl.facts dt { color:var(--muted); font-size:13px; padding-top:2px; }
dl.facts dd { margin:0; }
code { font-family:var(--mono); font-size:13px; }
code.tok-expect, code.tok-foil { padding:0 4px; border-radius:4px; font-weight:600; }
code.tok-expect { background:#dafbe1; color:#116329; } code.tok-foil { background:#ddf4ff; color:#0550ae; }
dl.facts dd { font-size:14px; }
code.prompt { display:block; white-space:pre-wrap; word-break:break-word; background:var(--bg);
              border:1px solid var(--line); border-radius:6px; padding:4px 8px; }
.pred-row { display:flex; flex-wrap:wrap; gap:28px; margin:10px 0 4px; }
.preds table { border-collapse:collapse; font-size:13px; }
.preds td { padding:2px 8px 2px 0; }
.preds td.bar { width:140px; }
.preds td.bar span { display:block; height:8px; border-radius:4px; background:#8c959f; }
.preds tr.expect code { color:var(--ok); font-weight:700; }
.preds tr.expect td.bar span { background:var(--ok); }
.preds tr.foil code { color:#0969da; font-weight:700; }
.preds tr.foil td.bar span { background:#0969da; }
ul.claims { list-style:none; padding:0; margin:0; }
ul.claims li { display:flex; gap:10px; padding:6px 0; border-top:1px solid #eaeef2; }
ul.claims li:first-child { border-top:none; }
.ok, .ko { font-weight:700; font-size:16px; line-height:20px; width:18px; flex:none; text-align:center; }
.ok { color:var(--ok); } .ko { color:var(--ko); }
.claim-body { min-width:0; }
.claim-text { font-weight:600; margin-right:12px; }
li.fail .claim-text { color:var(--ko); }
.value { font-size:13px; color:var(--muted); } .value b { color:var(--fg); font-variant-numeric:tabular-nums; }
.detail { font-size:13px; color:var(--muted); white-space:pre-wrap; word-break:break-word; margin-top:2px; }
figure.map { margin:12px 0 20px; }
table.bars, table.lens { border-collapse:collapse; font-size:12px; font-variant-numeric:tabular-nums; }
table.bars th, table.lens th { text-align:left; padding:1px 10px 1px 0; font-weight:400; }
table.bars td.bar { width:260px; } table.bars td.bar span { display:block; height:10px; }
table.bars td.bar.pos span { background:#d6604d; } table.bars td.bar.neg span { background:#4393c3; }
table.bars tr.claimed th, table.lens tr.claimed th { font-weight:700; }
table.lens td { padding:1px 12px 1px 0; }
figcaption { font-size:14px; margin-bottom:6px; }
.fail-count { color:var(--ko); }
.heatmap-scroll { overflow-x:auto; width:fit-content; max-width:100%; border:1px solid var(--line); border-radius:6px; }
table.heatmap { border-collapse:separate; border-spacing:0; font-size:11px; font-variant-numeric:tabular-nums; }
table.heatmap th, table.heatmap td { padding:0; }
table.heatmap td { min-width:50px; width:50px; height:30px; text-align:center; position:relative;
                   border-right:1px solid #fff; border-bottom:1px solid #fff; color:#1f2328; }
table.heatmap td.nan { background:repeating-linear-gradient(45deg,#eee 0 4px,#fafafa 4px 8px); color:var(--muted); }
table.heatmap td.claimed { box-shadow:inset 0 0 0 2px #1f2328, inset 0 0 0 3px #fff; font-weight:700; }
table.heatmap td.failing { box-shadow:inset 0 0 0 3px var(--ko), inset 0 0 0 4px #fff; font-weight:700; }
table.heatmap td.failing::after, .legend .sw-failing::after { content:"✗"; position:absolute; top:1px; right:1px;
       width:12px; height:12px; border-radius:50%; background:var(--ko); color:#fff; font-size:9px;
       line-height:12px; text-align:center; font-weight:700; }
table.heatmap thead th { vertical-align:bottom; background:#fff; font-weight:400; }
table.heatmap th.col { padding:4px 0 3px; border-bottom:1px solid var(--line); }
table.heatmap th.col .tok { display:block; writing-mode:vertical-rl; transform:rotate(180deg); margin:0 auto;
       max-height:96px; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; font-family:var(--mono);
       font-size:11.5px; color:var(--fg); }
table.heatmap th.col .idx { display:block; font-size:10px; color:var(--muted); margin-top:3px; }
table.heatmap th.row, table.heatmap th.corner { position:sticky; left:0; z-index:1; background:#fff;
       padding:0 8px; text-align:right; font-weight:600; font-size:11.5px; white-space:nowrap;
       border-right:1px solid var(--line); }
table.heatmap th.corner { font-weight:400; color:var(--muted); font-size:10.5px; vertical-align:bottom;
       padding-bottom:4px; }
.legend { display:flex; flex-wrap:wrap; align-items:center; gap:6px 18px; margin-top:6px; font-size:12px; }
.legend .scale { display:inline-flex; align-items:center; gap:6px; }
.legend .grad { display:inline-block; width:160px; height:10px; border-radius:2px; border:1px solid var(--line);
       background:linear-gradient(90deg,#2166ac 0%,#92c5de 25%,#f7f7f7 50%,#f4a582 75%,#b2182b 100%); }
.legend .key { display:inline-flex; align-items:center; gap:6px; }
.legend .sw { display:inline-block; position:relative; width:30px; height:18px; background:#f7f7f7; }
.legend .sw-claimed { box-shadow:inset 0 0 0 2px #1f2328, inset 0 0 0 3px #fff; }
.legend .sw-failing { box-shadow:inset 0 0 0 3px var(--ko), inset 0 0 0 4px #fff; }
footer { color:var(--muted); font-size:12.5px; margin-top:8px; }
"""
