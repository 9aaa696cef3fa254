"""The report directory: strict results.json, atomic writes, a self-contained report.html with one
heatmap per map, and (when a Chromium is installed) the page as a real browser renders it."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from interptest import report
from interptest.report import write_report

pytestmark = pytest.mark.torchfree  # no torch, no transformer_lens, no model: `pytest tests -m torchfree`

VERSION = "0.1.0"
CREATED = "2026-11-27T13:00:00Z"


# ---------------------------------------------------------------------------------------------------
# hand-built records: one passing behavior (resid_pre + heads maps), one failing (failing cells, NaN),
# one with a 64-token prompt


def _grid(n_rows, n_cols, fn):
    return [[round(fn(r, c), 4) for c in range(n_cols)] for r in range(n_rows)]


def passing_record() -> dict:
    tokens = ["<|endoftext|>", "Her", " name", " was", " Alex", " Hart", ".", " When", " Alex"]
    return {
        "nodeid": "behaviors/induction.yaml::alex-hart",
        "model": "interptest-tiny",
        "prompt": "Her name was Alex Hart. When Alex",
        "corrupt": "Her name was Alex Cole. When Alex",
        "tokens": tokens,
        "expect": " Hart",
        "foil": " Cole",
        "clean_metric": 7.2,
        "corrupt_metric": -6.1,
        "outcome": "passed",
        "clean_top": [
            {"token": " Hart", "prob": 0.97},
            {"token": " Cole", "prob": 0.01},
            {"token": ",", "prob": 0.005},
            {"token": " and", "prob": 0.004},
            {"token": "\n", "prob": 0.002},
        ],
        "corrupt_top": [
            {"token": " Cole", "prob": 0.95},
            {"token": " Hart", "prob": 0.02},
            {"token": ",", "prob": 0.01},
            {"token": " was", "prob": 0.004},
            {"token": ".", "prob": 0.001},
        ],
        "claims": [
            {
                "text": "prob(' Hart') >= 0.5",
                "passed": True,
                "value": 0.97,
                "detail": None,
                "map": None,
                "cells": [],
                "failing_cells": [],
            },
            {
                "text": "resid_pre[2:, -1] recovers >= 0.9",
                "passed": True,
                "value": 0.98,
                "detail": "worst cell L2 pos 8: 0.98",
                "map": "resid_pre",
                "cells": [[2, 8]],
                "failing_cells": [],
            },
            {
                "text": "heads[1, 0..1] recovers >= 0.4",
                "passed": True,
                "value": 0.55,
                "detail": "worst cell L1 H1: 0.55",
                "map": "heads",
                "cells": [[1, 0], [1, 1]],
                "failing_cells": [],
            },
        ],
        "maps": {
            "resid_pre": {
                "component": "resid_pre",
                "direction": "denoise",
                "values": _grid(
                    3,
                    9,
                    lambda r, c: (
                        1.0 if c == 5 and r < 2 else (r / 2 if c == 8 else (-0.3 if (r, c) == (1, 4) else 0.0))
                    ),
                ),
                "layers": [0, 1, 2],
                "positions": list(range(9)),
            },
            "heads": {
                "component": "heads",
                "direction": "denoise",
                "values": _grid(
                    3, 4, lambda r, c: 0.6 if (r, c) == (1, 0) else (0.55 if (r, c) == (1, 1) else -0.05 * c)
                ),
                "layers": [0, 1, 2],
                "heads": [0, 1, 2, 3],
            },
        },
    }


def failing_record() -> dict:
    tokens = ["<|endoftext|>", "The", " capital", " of", " France", " is"]
    return {
        "nodeid": "behaviors/facts.yaml::france",
        "model": "interptest-tiny",
        "prompt": "The capital of France is",
        "corrupt": "The capital of Spain is",
        "tokens": tokens,
        "expect": " Paris",
        "foil": " Madrid",
        "clean_metric": 1.4,
        "corrupt_metric": float("nan"),
        "outcome": "failed",
        "clean_top": [{"token": " Paris", "prob": 0.41}, {"token": " the", "prob": 0.2}],
        "corrupt_top": [],
        "claims": [
            {
                "text": "resid_pre[1:, 4] recovers >= 0.8",
                "passed": False,
                "value": 0.31,
                "detail": "2 of 2 cells below 0.8; worst cell L2 pos 4: 0.12",
                "map": "resid_pre",
                "cells": [[1, 4], [2, 4]],
                "failing_cells": [[1, 4], [2, 4]],
            },
            {
                "text": "resid_pre[0, 5] recovers >= 0.1",
                "passed": True,
                "value": 0.2,
                "detail": "",
                "map": "resid_pre",
                "cells": [[0, 5]],
                "failing_cells": [],
            },
        ],
        "maps": {
            "resid_pre": {
                "component": "resid_pre",
                "direction": "noise",
                "values": [
                    [0.0, 0.1, -0.2, 0.05, 0.5, 0.2],
                    [0.0, 0.0, -0.9, float("nan"), 0.31, 1.7],
                    [0.0, 0.0, -1.4, float("inf"), 0.12, 0.95],
                ],
                "layers": [0, 1, 2],
                "positions": list(range(6)),
            },
        },
    }


def long_record() -> dict:
    tokens = ["<|endoftext|>"] + [f" w{i}" for i in range(63)]
    return {
        "nodeid": "behaviors/long.yaml::sixty-four",
        "model": "interptest-tiny",
        "prompt": "".join(tokens[1:]),
        "corrupt": "".join(tokens[1:-1]) + " x",
        "tokens": tokens,
        "expect": " w0",
        "foil": " x",
        "clean_metric": 3.0,
        "corrupt_metric": 0.5,
        "outcome": "xfailed",
        "clean_top": [{"token": " w0", "prob": 0.5}],
        "corrupt_top": [{"token": " x", "prob": 0.4}],
        "claims": [
            {
                "text": "resid_pre[:, -1] recovers >= 0.5",
                "passed": True,
                "value": 0.9,
                "detail": "",
                "map": "resid_pre",
                "cells": [[0, 63], [1, 63], [2, 63], [3, 63]],
                "failing_cells": [],
            }
        ],
        "maps": {
            "resid_pre": {
                "component": "resid_pre",
                "direction": "denoise",
                "values": _grid(4, 64, lambda r, c: math.sin(c / 5 + r)),
                "layers": [0, 1, 2, 3],
                "positions": list(range(64)),
            }
        },
    }


def records() -> list[dict]:
    return [passing_record(), failing_record(), long_record()]


def n_maps(recs) -> int:
    return sum(len(r.get("maps") or {}) for r in recs)


def no_constants(name):
    raise AssertionError(f"results.json holds the non-standard constant {name}")


class Heatmaps(HTMLParser):
    """Collects (section id, data-map) for every element whose class list holds 'heatmap', and the
    classes of every heatmap cell."""

    def __init__(self):
        super().__init__()
        self.section = None
        self.maps: list[tuple[str | None, str | None]] = []
        self.cell_classes: list[str] = []
        self.probe: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "section" and "behavior" in classes:
            self.section = attrs.get("id")
        if "heatmap" in classes:
            self.maps.append((self.section, attrs.get("data-map")))
        if tag == "td":
            self.cell_classes.append(attrs.get("class") or "")
        if tag == "body":
            self.probe = {k: v for k, v in attrs.items() if k.startswith("data-probe-")}


def parse(page: str) -> Heatmaps:
    parser = Heatmaps()
    parser.feed(page)
    parser.close()
    return parser


# ---------------------------------------------------------------------------------------------------
# results.json


def test_results_json_round_trips_the_records(tmp_path):
    recs = [passing_record(), long_record()]
    write_report(recs, tmp_path / "out", version=VERSION, created=CREATED)
    loaded = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"), parse_constant=no_constants)
    assert loaded == {"format": 1, "interptest_version": VERSION, "created": CREATED, "behaviors": recs}


def test_non_finite_numbers_become_null_and_input_is_untouched(tmp_path):
    rec = failing_record()
    write_report([rec], tmp_path, version=VERSION, created=CREATED)
    text = (tmp_path / "results.json").read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    behavior = json.loads(text, parse_constant=no_constants)["behaviors"][0]
    assert behavior["corrupt_metric"] is None
    assert behavior["maps"]["resid_pre"]["values"][1][3] is None
    assert behavior["maps"]["resid_pre"]["values"][2][3] is None
    assert behavior["maps"]["resid_pre"]["values"][2][2] == -1.4
    assert math.isnan(rec["corrupt_metric"])  # the caller's records are not rewritten


def test_created_defaults_to_utc_now(tmp_path):
    write_report([], tmp_path, version=VERSION)
    loaded = json.loads((tmp_path / "results.json").read_text())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", loaded["created"])
    assert loaded["behaviors"] == []
    assert "0 behaviors" in (tmp_path / "report.html").read_text()


# ---------------------------------------------------------------------------------------------------
# atomic writes


def test_directory_created_and_no_temporary_files_left(tmp_path):
    out = tmp_path / "a" / "b"
    write_report(records(), out, version=VERSION, created=CREATED)
    write_report(records(), out, version=VERSION, created="2026-11-28T00:00:00Z")  # replaces
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "results.json"]
    assert json.loads((out / "results.json").read_text())["created"] == "2026-11-28T00:00:00Z"
    assert "2026-11-28T00:00:00Z" in (out / "report.html").read_text()


def test_rendering_failure_leaves_the_old_report_intact(tmp_path, monkeypatch):
    write_report(records(), tmp_path, version=VERSION, created=CREATED)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(*args, **kwargs):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(report, "render_html", boom)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_report([passing_record()], tmp_path, version="9.9.9", created="2030-01-01T00:00:00Z")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_unserialisable_record_leaves_the_old_report_intact(tmp_path):
    write_report(records(), tmp_path, version=VERSION, created=CREATED)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    bad = passing_record()
    bad["clean_metric"] = object()
    with pytest.raises(TypeError):
        write_report([bad], tmp_path, version=VERSION, created=CREATED)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_failure_while_replacing_removes_the_temporary_file(tmp_path, monkeypatch):
    write_report(records(), tmp_path, version=VERSION, created=CREATED)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_replace = os.replace
    seen = []

    def failing_replace(src, dst):
        seen.append(Path(src))
        assert Path(src).parent == Path(dst).parent == tmp_path  # same directory: a rename, not a copy
        assert Path(src).read_text(encoding="utf-8")  # the new text was fully written first
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report([passing_record()], tmp_path, version=VERSION, created="2030-01-01T00:00:00Z")
    monkeypatch.setattr(os, "replace", real_replace)
    assert seen and not seen[0].exists()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ---------------------------------------------------------------------------------------------------
# report.html


@pytest.fixture
def page(tmp_path) -> str:
    write_report(records(), tmp_path, version=VERSION, created=CREATED)
    return (tmp_path / "report.html").read_text(encoding="utf-8")


def test_html_is_self_contained(page):
    lowered = page.lower()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", lowered)
    assert "http://" not in lowered and "https://" not in lowered
    assert "<link" not in lowered and "@import" not in lowered and "url(" not in lowered
    assert "<script" not in lowered  # no JavaScript at all
    assert "<style>" in page and f"interptest {VERSION}" in page and CREATED in page


def test_one_heatmap_element_per_map(page):
    parsed = parse(page)
    assert len(parsed.maps) == n_maps(records()) == page.count('class="heatmap"')
    assert parsed.maps == [
        ("behavior-0", "resid_pre"),
        ("behavior-0", "heads"),
        ("behavior-1", "resid_pre"),
        ("behavior-2", "resid_pre"),
    ]


def test_summary_links_every_behavior(page):
    for i, rec in enumerate(records()):
        assert f'href="#behavior-{i}"' in page and f'id="behavior-{i}"' in page
        assert rec["nodeid"] in page
    assert ">3/3</td>" in page and ">1/2</td>" in page and ">1/1</td>" in page


def test_claimed_and_failing_cells_are_marked(page):
    cells = parse(page).cell_classes
    assert cells.count("failing") == 2  # failing_record's two failing cells
    # claimed: alex-hart 1 resid_pre + 2 heads, france 1 passing cell, long 4 cells
    assert cells.count("claimed") == 1 + 2 + 1 + 4
    assert cells.count("nan") == 2  # NaN and inf are shown as missing
    assert 'title="L1 · position 4 ·France: 0.31 (claimed, failing)"' in page


def test_values_printed_to_two_decimals_and_tokens_shown(page):
    assert ">-1.40<" in page and ">1.70<" in page  # printed unclamped
    assert "·Hart" in page and "·When" in page and "H3" in page


def test_user_text_is_escaped(tmp_path):
    rec = passing_record()
    rec["prompt"] = '<script>alert("prompt")</script>'
    rec["corrupt"] = "</code><img src=x onerror=alert(1)>"
    rec["nodeid"] = "behaviors/x.yaml::<b>bold</b>"
    rec["tokens"][1] = "<script>"
    rec["claims"][1]["detail"] = "<script>alert('detail')</script>"
    rec["maps"] = {'<evil">': rec["maps"]["resid_pre"]}
    rec["claims"][1]["map"] = '<evil">'
    write_report([rec], tmp_path, version="<v>", created=CREATED)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "<img" not in page and "<b>bold" not in page and "<v>" not in page
    assert "&lt;script&gt;alert(&quot;prompt&quot;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert parse(page).maps == [("behavior-0", '<evil">')]  # the attribute survives as text


def test_sparse_records_still_render(tmp_path):
    skipped = {"nodeid": "behaviors/x.yaml::skipped", "outcome": "skipped"}
    error = {"nodeid": "behaviors/x.yaml::broken", "model": None, "outcome": "error", "claims": None, "maps": {}}
    write_report([skipped, error], tmp_path, version=VERSION, created=CREATED)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "skipped" in page and "error" in page and parse(page).maps == []


# ---------------------------------------------------------------------------------------------------
# a real browser


BROWSER_TIMEOUT = 60


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture
def chromium(tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "no Chromium found (looked for chromium, chromium-browser, google-chrome on PATH); "
            "install it with `apt-get install -y chromium` to run the browser checks"
        )

    def run(*args: str) -> subprocess.CompletedProcess:
        profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
        command = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT, check=False)

    return run


def read_png(path: Path) -> tuple[int, int, int, bytes]:
    """(width, height, bytes per pixel, raw unfiltered pixel bytes) of an 8-bit RGB/RGBA PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, f"unsupported PNG layout {header}"
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    out = bytearray(height * stride)
    prev = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out[y * stride : (y + 1) * stride] = line
        prev = line
    return width, height, bpp, bytes(out)


def test_browser_renders_the_report(tmp_path, chromium):
    out = tmp_path / "report"
    write_report(records(), out, version=VERSION, created=CREATED)
    page = out / "report.html"

    shot = tmp_path / "shot.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri())
    assert shot.exists(), f"no screenshot; chromium said:\n{result.stderr[-2000:]}"
    width, height, bpp, pixels = read_png(shot)
    assert (width, height) == (1200, 2000)
    colours = {pixels[i : i + 3] for i in range(0, len(pixels), bpp * 7)}  # a sample of the pixels
    assert len(colours) > 50, "screenshot is (nearly) blank"
    reds = sum(1 for r, g, b in colours if r > 150 and g < 90 and b < 90)
    blues = sum(1 for r, g, b in colours if b > 150 and r < 90)
    assert reds and blues, "no diverging heatmap colours on screen"

    # The DOM as Chromium built it: one heatmap per map, and the 64-token map scrolls inside its own
    # container instead of widening the page (a test-only probe script reports the widths).
    probe = out / "probe.html"
    probe.write_text(
        page.read_text(encoding="utf-8").replace(
            "</body>",
            """<script>
      const boxes = [...document.querySelectorAll('.heatmap-scroll')];
      document.body.dataset.probePage = document.documentElement.scrollWidth;
      document.body.dataset.probeOverflow = boxes.map(b => b.scrollWidth > b.clientWidth ? 1 : 0).join('');
    </script></body>""",
        ),
        encoding="utf-8",
    )
    result = chromium("--dump-dom", "--window-size=1200,2000", probe.as_uri())
    dom = parse(result.stdout)
    assert dom.maps == [
        ("behavior-0", "resid_pre"),
        ("behavior-0", "heads"),
        ("behavior-1", "resid_pre"),
        ("behavior-2", "resid_pre"),
    ], result.stderr[-2000:]
    assert int(dom.probe["data-probe-page"]) <= 1200
    assert dom.probe["data-probe-overflow"] == "0001"
