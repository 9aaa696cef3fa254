"""The `interptest` command (and `python -m interptest`) on the shipped model: map, suggest, schema."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

import interptest
from interptest.cli import main
from interptest.schema import SCHEMA_FILE

ALEX = ["Her name was Alex Hart. When Alex", "--corrupt", "Her name was Alex Cole. When Alex", "--expect", " Hart"]


def test_map_prints_the_heatmap_and_writes_html(capsys, tmp_path):
    assert main(["map", *ALEX, "--component", "heads", "--html", str(tmp_path / "new" / "m.html")]) == 0
    out = capsys.readouterr().out
    assert "interptest-tiny: m_clean 18.881, m_corrupt -20.231, Δm 39.111" in out
    assert "heads (recovers: clean patched into corrupted run), layer × head" in out
    assert "L1    0.59   0.00   0.11   0.31" in out
    page = (tmp_path / "new" / "m.html").read_text()  # a missing folder is created
    assert page.startswith("<!DOCTYPE html>") and 'data-map="heads"' in page


def test_bad_input_is_one_line_and_exit_2(capsys):
    assert main(["map", *ALEX[:3], "--expect", "Hart"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("interptest map: patch_sweep: expect: expect must be a single token; 'Hart' is 2 tokens")


def test_suggest_prints_yaml_for_every_behavior_and_writes_nothing(capsys, tmp_path):
    spec = tmp_path / "s.yaml"
    text = (
        'behaviors:\n  - name: paris\n    prompt: "The capital of France is"\n    expect: " Paris"\n'
        '    corrupt: "The capital of Japan is"\n'
    )
    spec.write_text(text)
    assert main(["suggest", str(spec)]) == 0
    out = capsys.readouterr().out
    claims = yaml.safe_load(out[out.index("- name: paris") :])[0]["claims"]
    assert "resid_pre[0, ' France'] recovers >= 0.90" in claims and spec.read_text() == text


def test_python_dash_m_and_schema():
    done = subprocess.run(
        [sys.executable, "-m", "interptest", "schema"], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(done.stdout) == json.loads(SCHEMA_FILE.read_text())


def test_patch_map_repr_html_and_plot():
    model = interptest.load_model("interptest-tiny")
    pm = interptest.patch_sweep(model, ALEX[0], ALEX[2], "resid_pre", expect=" Hart")
    text = repr(pm)
    assert text.splitlines()[0] == "PatchMap(resid_pre, denoise: m_clean 18.881, m_corrupt -20.231, Δm 39.111)"
    # nine columns leave room for labels of 13 characters: "<|endoftext|>" is shortened by one
    assert "·Hart" in text and "<|endoft…" in text
    assert "L0       0.00      0.00      0.00      0.00      0.00      1.00" in text
    assert 'data-map="resid_pre"' in pm._repr_html_() and "<style>" in pm._repr_html_()
    assert pm.delta == pytest.approx(39.111, abs=1e-3)
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib is the 'plot' extra")
    matplotlib.use("Agg")
    ax = pm.plot()
    assert ax.get_title() == "resid_pre recovers" and [t.get_text() for t in ax.get_xticklabels()][5] == " Hart"
    image = ax.images[0].get_array()
    assert torch.allclose(torch.as_tensor(image.data), pm.values)


TWO_PEOPLE = (
    "behaviors:\n  - name: two-people\n"
    '    prompt: "Their names were Iris Jones and James Dixon. When James"\n    expect: " Dixon"\n'
    '    corrupt: "Their names were James Jones and Iris Dixon. When James"\n    foil: " Jones"\n'
)


def _edge_claims(out):
    claims = yaml.safe_load(out[out.index("- name: two-people") :])[0]["claims"]
    return [c for c in claims if c.startswith("circuit @") or c.startswith("circuit edges[")]


def test_suggest_writes_the_edge_circuit_as_a_graph_file_only_when_asked(capsys, tmp_path):
    from interptest.api import check_behavior
    from interptest.graphs import read_graph
    from interptest.spec import parse_spec

    spec = tmp_path / "s.yaml"
    spec.write_text(TWO_PEOPLE)
    assert main(["suggest", str(spec)]) == 0
    inline = _edge_claims(capsys.readouterr().out)
    assert inline and all(c.startswith("circuit edges[input->") for c in inline)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # nothing written without --graphs

    assert main(["suggest", str(spec), "--graphs", str(tmp_path / "circuits")]) == 0
    claims = _edge_claims(capsys.readouterr().out)
    assert claims[0].startswith("circuit @circuits/two-people.json faithful >= ")
    graph = read_graph(tmp_path / "circuits" / "two-people.json")
    # the file holds the edges the inline suggestion named, and the suggested claims hold when checked
    assert "edges[" + ", ".join(graph.in_graph()) + "]" == inline[0].split(" faithful")[0].removeprefix("circuit ")
    spec.write_text(TWO_PEOPLE + "    claims:\n" + "".join(f'      - "{c}"\n' for c in claims))
    result = check_behavior(parse_spec(spec.read_text(), str(spec)).behaviors[0], raise_on_failure=False)
    assert result.passed, [(c.text, c.value, c.detail) for c in result.failures]

    # an existing file is not replaced without --overwrite: the suggestion names the edges inline instead
    spec.write_text(TWO_PEOPLE)
    (tmp_path / "circuits" / "two-people.json").write_text("{}")
    assert main(["suggest", str(spec), "--graphs", str(tmp_path / "circuits")]) == 0
    assert _edge_claims(capsys.readouterr().out)[0].startswith("circuit edges[")
    assert (tmp_path / "circuits" / "two-people.json").read_text() == "{}"
    assert main(["suggest", str(spec), "--graphs", str(tmp_path / "circuits"), "--overwrite"]) == 0
    assert _edge_claims(capsys.readouterr().out)[0].startswith("circuit @circuits/two-people.json")
    assert read_graph(tmp_path / "circuits" / "two-people.json").in_graph() == graph.in_graph()


def _top(prompt: str, k: int) -> list[tuple[str, float]]:
    """The reference: one plain forward of the bridge, softmax of the last position."""
    model = interptest.load_model("interptest-tiny")
    with torch.inference_mode():
        probs = model(model.to_tokens(prompt))[0, -1].float().softmax(-1)
    values, ids = probs.topk(k)
    return [(model.to_string([int(i)]), float(v)) for v, i in zip(values, ids)]


def test_map_prints_both_prompts_top_k_and_defaults_expect_to_the_clean_top1(capsys):
    assert main(["map", ALEX[0], "--corrupt", ALEX[2], "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    clean, corrupt = _top(ALEX[0], 3), _top(ALEX[2], 3)
    assert clean[0][0] == " Hart" and corrupt[0][0] == " Cole"
    for label, top in (("clean", clean), ("corrupt", corrupt)):
        line = f"  {label:<8}top-3: " + ", ".join(f"{t!r} {p:.3f}" for t, p in top)
        assert line in out.splitlines(), out
    assert "expect ' Hart' (the clean prompt's top-1; --expect to choose)" in out
    # the same map as with --expect ' Hart'
    assert "interptest-tiny: m_clean 18.881, m_corrupt -20.231, Δm 39.111" in out


def test_map_with_expect_says_whether_it_is_the_top1(capsys):
    assert main(["map", *ALEX]) == 0
    out = capsys.readouterr().out
    assert "expect ' Hart' (the clean prompt's top-1; --expect to choose)" not in out
    assert "top-5: ' Hart'" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"interptest {interptest.__version__} (TransformerLens ")


def test_threads_default_as_the_plugin_and_explicit(capsys):
    from interptest.model import available_cpus

    torch.set_num_threads(2)
    try:
        assert main(["map", *ALEX]) == 0
        assert torch.get_num_threads() == max(1, min(available_cpus() // 2, 2))
        assert main(["map", *ALEX, "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(2)
    with pytest.raises(SystemExit) as exit_info:
        main(["suggest", "x.yaml", "--threads", "0"])
    assert exit_info.value.code == 2
    assert "--threads: invalid value '0'; expected a positive integer or 'auto'" in capsys.readouterr().err


def test_suggest_k_selects_behaviors_by_name(capsys, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        'behaviors:\n  - name: paris\n    prompt: "The capital of France is"\n    expect: " Paris"\n'
        '    corrupt: "The capital of Japan is"\n'
        '  - name: alex\n    prompt: "Her name was Alex Hart. When Alex"\n    expect: " Hart"\n'
    )
    assert main(["suggest", str(spec), "-k", "PAR"]) == 0
    out = capsys.readouterr().out
    assert "- name: paris" in out and "- name: alex" not in out
    assert main(["suggest", str(spec), "-k", "rome"]) == 2
    assert capsys.readouterr().err == (
        f"interptest suggest: -k 'rome' selects no behavior of {spec} (behaviors: paris, alex)\n"
    )
