"""Edge circuit claims: grammar, binding (inline edges, EAP-IG graph files, top k), their collection errors,
and their values through the pipeline against the edge engine and the one-forward-at-a-time reference of
``test_edges.py``.

``tests/data/graphs/eapig_3x4*.json`` were written by EAP-IG's own ``Graph.to_json`` (github.com/hannamw/
EAP-IG, commit 795f560, ``Graph.from_model({'n_layers': 3, 'n_heads': 4, 'parallel_attn_mlp': False|True,
'd_model': 32})``, scores ``torch.randn`` under ``torch.manual_seed(0)`` times the real-edge mask, and
the edges input->a0.h2<v>, a0.h2->a1.h0<k>, a1.h0->logits, m1->logits, input->m0, m0->a2.h1<q>,
a2.h1->logits set in the graph), so reading them checks the format against the tool that writes it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, os.path.dirname(__file__))

import pytest
import yaml

from interptest import components
from interptest.claims import BindContext, ClaimBindError, bind_all, parse_claim
from interptest.claims.grammar import ClaimSyntaxError
from interptest.graphs import GraphFileError, ModelShape, model_edges, parse_edge, read_graph, write_graph

DATA = Path(__file__).resolve().parents[1] / "data" / "graphs"
FILE_EDGES = [
    "input->a0.h2<v>",
    "a0.h2->a1.h0<k>",
    "a1.h0->logits",
    "m1->logits",
    "input->m0",
    "m0->a2.h1<q>",
    "a2.h1->logits",
]


def context(tmp_path, n_layers=3, n_heads=4, n_kv=None, parallel=False):
    return BindContext(
        [""],
        [["<bos>", "a", "b"]],
        [{}],
        n_layers,
        n_heads,
        components.NAMES,
        "tiny",
        None,
        n_kv_heads=n_kv,
        spec_dir=str(tmp_path),
        parallel=parallel,
    )


def bind(text, tmp_path, **kw):
    return bind_all([parse_claim(text)], context(tmp_path, **kw))[0]


# ---------------------------------------------------------------------------------------------
# The graph files and the model's edges


@pytest.mark.torchfree
def test_the_model_edges_are_eapigs_in_its_order():
    for name, parallel in (("eapig_3x4.json", False), ("eapig_3x4_parallel.json", True)):
        data = json.loads((DATA / name).read_text())
        assert [e.name for e in model_edges(ModelShape(3, 4, parallel=parallel))] == list(data["edges"])
    assert len(model_edges(ModelShape(12, 12))) == 32491  # gpt2-small, as MIB counts its edges


@pytest.mark.torchfree
def test_reading_an_eapig_file_gives_its_in_graph_edges_and_top_k_by_abs_score():
    graph = read_graph(DATA / "eapig_3x4.json")
    assert sorted(graph.in_graph()) == sorted(FILE_EDGES)
    data = json.loads((DATA / "eapig_3x4.json").read_text())["edges"]
    by_abs = sorted(data, key=lambda n: -abs(data[n]["score"]))
    assert graph.top(10) == by_abs[:10]
    assert any(data[n]["score"] < 0 for n in graph.top(10))  # |score|, not score


@pytest.mark.torchfree
def test_written_graphs_read_back(tmp_path):
    shape = ModelShape(3, 4)
    kept = [parse_edge(t) for t in FILE_EDGES]
    path = tmp_path / "out.json"
    write_graph(path, kept, shape, 32, scores={"a1.h0->logits": -2.0})
    back = read_graph(path)
    assert sorted(back.in_graph()) == sorted(FILE_EDGES)
    assert back.top(1) == ["a1.h0->logits"]
    data = json.loads(path.read_text())
    assert data["cfg"] == {"n_layers": 3, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 32}
    assert data["nodes"]["a0.h2"] == {"in_graph": True} and data["nodes"]["a0.h0"] == {"in_graph": False}
    with pytest.raises(GraphFileError, match="exists; not overwriting it"):
        write_graph(path, kept, shape, 32)
    write_graph(path, kept[:1], shape, 32, overwrite=True)
    assert read_graph(path).in_graph() == ["input->a0.h2<v>"]
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left


# ---------------------------------------------------------------------------------------------
# Grammar


@pytest.mark.torchfree
def test_edge_claims_parse():
    claim = parse_claim(
        "circuit edges[input->a0.h2<v>, a0.h2->a1.h0<k>, a1.h0->logits, m1->logits] faithful >= 0.8 ablate mean"
    )
    assert [e.text for e in claim.edges] == ["input->a0.h2<v>", "a0.h2->a1.h0<k>", "a1.h0->logits", "m1->logits"]
    assert claim.ablation == "mean" and claim.is_edges and not claim.nodes
    claim = parse_claim("circuit top 50 edges of @circuits/scores.json faithful >= 0.7")
    assert (claim.graph.path, claim.graph.top) == ("circuits/scores.json", 50)
    claim = parse_claim("circuit @'my circuits/induction.json' faithful beats random at 0.95")
    assert (claim.graph.path, claim.graph.top) == ("my circuits/induction.json", None)
    assert parse_claim("circuit @c.json minimal >= 0.01").measure_name == "minimal"


@pytest.mark.torchfree
@pytest.mark.parametrize(
    "text, message",
    [
        ("circuit edges[] faithful >= 0.8", "expected an edge SENDER->RECEIVER"),
        (
            "circuit edges[a0.h2 a1.h0] faithful >= 0.8",
            "expected '->' and the edge's receiver, e.g. a0.h2->a1.h0<k>, found 'a1'",
        ),
        ("circuit edges[a0.h2->] faithful >= 0.8", "expected the edge's receiver: a<L>.h<H><q|k|v>, m<L> or logits"),
        ("circuit edges[a0.x2->logits] faithful >= 0.8", "'a0.x2' is not a node: expected input, a<L>.h<H>"),
        ("circuit edges[logits->m0] faithful >= 0.8", "the logits send to nothing"),
        ("circuit edges[m0->input] faithful >= 0.8", "the input receives nothing"),
        ("circuit edges[m0->a1.h0<x>] faithful >= 0.8", "<x> is not a head input; expected <q>, <k> or <v>"),
        ("circuit edges[a0.h0->m1<k>] faithful >= 0.8", "only a head's input is named <q>, <k> or <v>"),
        ("circuit edges[a0.h0->m1 faithful >= 0.8", "expected ',' or ']' after an edge"),
        ("circuit edges[a0.h0->m1] fathful >= 0.8", "'faithful' or 'minimal' after the circuit's edges"),
        ("circuit top 0 edges of @f.json faithful >= 0.5", "top 0: K must be at least 1"),
        ("circuit top 5 of @f.json faithful >= 0.5", "expected 'edges' after 'top K'"),
        ("circuit top 5 edges @f.json faithful >= 0.5", "expected 'of' and a graph file"),
        ("circuit top 5 edges of f.json faithful >= 0.5", "expected a graph file: @path"),
        ("circuit @ faithful >= 0.5", "unexpected character '@'"),
        ("circuit @'c.json faithful >= 0.5", "unterminated file name: missing closing '"),
        ("circuit @c.json minimal beats random at 0.9", "'beats random' compares a circuit's faithfulness"),
    ],
)
def test_edge_grammar_errors_name_the_offending_part(text, message):
    with pytest.raises(ClaimSyntaxError) as error:
        parse_claim(text)
    assert message in str(error.value), str(error.value)


# ---------------------------------------------------------------------------------------------
# Binding: the model's edges, the files


@pytest.mark.torchfree
@pytest.mark.parametrize(
    "text, message, kw",
    [
        (
            "circuit edges[a1.h0->a0.h2<q>] faithful >= 0.5",
            "edge 'a1.h0->a0.h2<q>' is not an edge of this model: its sender a1.h0 is after its receiver's "
            "layer 0: a sender must come before its receiver",
            {},
        ),
        (
            "circuit edges[a1.h0->a1.h2<k>] faithful >= 0.5",
            "its sender a1.h0 is at its receiver's layer 1: a sender must come before its receiver",
            {},
        ),
        (
            "circuit edges[a0.h0->m0] faithful >= 0.5",
            "its sender a0.h0 is at its receiver's layer 0: a sender must come before its receiver (parallel "
            "blocks: the layer's attention and MLP read the same residual)",
            {"parallel": True},
        ),
        (
            "circuit edges[a5.h0->logits] faithful >= 0.5",
            "edge 'a5.h0->logits' is not an edge of this model: its sender a5.h0 is at layer 5, but the model "
            "has layers 0 to 2",
            {},
        ),
        (
            "circuit edges[a0.h9->logits] faithful >= 0.5",
            "its sender a0.h9 names head 9, but each layer has heads 0 to 3",
            {},
        ),
        (
            "circuit edges[input->a1.h0] faithful >= 0.5",
            "edge 'input->a1.h0' is not an edge of this model: a head receives through its query, key or value "
            "input: write <q>, <k> or <v> after it",
            {},
        ),
        ("circuit edges[m0->logits, m0->logits] faithful >= 0.5", "the edge list names m0->logits twice", {}),
        (
            "circuit edges[m0->a1.h1<k>, m0->a1.h0<k>] faithful >= 0.5",
            "the edge list names m0->a1.h0<k> twice ('m0->a1.h1<k>': query heads of one key/value group share it)",
            {"n_kv": 2},
        ),
    ],
)
def test_edges_the_model_does_not_have_are_refused_naming_the_edge(tmp_path, text, message, kw):
    with pytest.raises(ClaimBindError) as error:
        bind(text, tmp_path, **kw)
    assert message in str(error.value), str(error.value)


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.torchfree
def test_graph_files_bind_next_to_the_spec_file(tmp_path):
    (tmp_path / "circuits").mkdir()
    _write(tmp_path, "circuits/g.json", (DATA / "eapig_3x4.json").read_text())
    bound = bind("circuit @circuits/g.json faithful >= 0.8", tmp_path)
    assert sorted(e.name for e in bound.edges) == sorted(FILE_EDGES)
    top = bind("circuit top 50 edges of @circuits/g.json faithful >= 0.7", tmp_path)
    assert [e.name for e in top.edges] == read_graph(tmp_path / "circuits/g.json").top(50)
    assert len(top.universe) == 262


@pytest.mark.torchfree
def test_graph_file_errors_name_the_file_and_what_was_expected(tmp_path):
    good = json.loads((DATA / "eapig_3x4.json").read_text())
    none_in = json.loads(json.dumps(good))
    for info in none_in["edges"].values():
        info["in_graph"] = False
    bad_edge = json.loads(json.dumps(good))
    bad_edge["edges"]["a5.h0->logits"] = {"score": 1.0, "in_graph": True}
    cases = [
        ("circuit @nope.json faithful >= 0.5", None, "graph file '{dir}/nope.json' does not exist"),
        ("circuit @g.json faithful >= 0.5", "{not json", "graph file '{dir}/g.json' is not JSON (line 1, column 2"),
        (
            "circuit @g.json faithful >= 0.5",
            {"edges": []},
            "graph file '{dir}/g.json' is not an EAP-IG graph: expected a JSON object with 'cfg'",
        ),
        (
            "circuit @g.json faithful >= 0.5",
            {"cfg": good["cfg"], "edges": {"m0->logits": {"score": 1.0}}},
            "graph file '{dir}/g.json': edge 'm0->logits' needs {'score': number, 'in_graph': true|false}",
        ),
        (
            "circuit @g.json faithful >= 0.5",
            {"cfg": good["cfg"], "edges": {"m0->logits": {"score": "high", "in_graph": True}}},
            "edge 'm0->logits' has score 'high'; expected a number",
        ),
        (
            "circuit @g.json faithful >= 0.5",
            {"cfg": good["cfg"], "edges": {"m0-logits": {"score": 1.0, "in_graph": True}}},
            "graph file '{dir}/g.json': 'm0-logits' is not an edge",
        ),
        (
            "circuit @g.json faithful >= 0.5",
            dict(good, cfg=dict(good["cfg"], n_layers=12)),
            "graph file '{dir}/g.json' was made for another model: its cfg has n_layers = 12, but the model has 3 "
            "(tiny: 3 layers, 4 heads)",
        ),
        (
            "circuit @g.json faithful >= 0.5",
            dict(good, cfg=dict(good["cfg"], parallel_attn_mlp=True)),
            "its cfg has parallel_attn_mlp = True, but the model has False",
        ),
        (
            "circuit @g.json faithful >= 0.5",
            dict(good, cfg={"n_heads": 4}),
            "its cfg has no 'n_layers' (expected 3 for this model)",
        ),
        (
            "circuit top 263 edges of @g.json faithful >= 0.5",
            good,
            "graph file '{dir}/g.json': top 263 asks for more edges than the file has (262)",
        ),
        (
            "circuit @g.json minimal >= 0.01",
            none_in,
            "the circuit has no edges (graph file 'g.json' has no edge with in_graph true): 'minimal' asks that "
            "every edge matter",
        ),
        (
            "circuit @g.json faithful >= 0.5",
            bad_edge,
            "graph file '{dir}/g.json': edge 'a5.h0->logits' is not an edge of this model: its sender a5.h0 is at "
            "layer 5",
        ),
    ]
    for text, content, message in cases:
        if content is not None:
            _write(tmp_path, "g.json", content)
        with pytest.raises(ClaimBindError) as error:
            bind(text, tmp_path)
        assert message.replace("{dir}", str(tmp_path)) in str(error.value), (text, str(error.value))
    # a file without scores: its in-graph edges bind, 'top k' cannot rank them
    unscored = {"cfg": good["cfg"], "edges": {"m0->logits": {"score": None, "in_graph": True}}}
    _write(tmp_path, "g.json", unscored)
    assert [e.name for e in bind("circuit @g.json faithful >= 0.5", tmp_path).edges] == ["m0->logits"]
    with pytest.raises(ClaimBindError, match="edge 'm0->logits' has no score .*'top k' ranks edges by |score|"):
        bind("circuit top 1 edges of @g.json faithful >= 0.5", tmp_path)


@pytest.mark.torchfree
def test_beats_random_needs_other_edge_sets(tmp_path):
    every = [e.name for e in model_edges(ModelShape(1, 1))]
    assert len(every) == 8
    with pytest.raises(ClaimBindError) as error:
        bind(f"circuit edges[{', '.join(every)}] faithful beats random at 0.9", tmp_path, n_layers=1, n_heads=1)
    assert "'beats random' needs other edge sets of the same size, but the circuit has 8 of the model's 8 edges" in str(
        error.value
    )
    assert bind(f"circuit edges[{', '.join(every[:7])}] faithful beats random at 0.9", tmp_path, n_layers=1, n_heads=1)


# ---------------------------------------------------------------------------------------------
# Through the pipeline: values equal the engine's and the one-forward-at-a-time reference's


def _tiny_behavior():
    from test_claims_circuit import behavior

    import tinymodels

    model = tinymodels.tiny_model("gpt2")
    return model, behavior(model)


def _reference_faithfulness(model, spec, edge_names, ablation="resample"):
    """(m_C − m_∅) / (m_clean − m_∅) from test_edges' reference, one forward at a time."""
    import torch
    from test_edges import ablated_values, reference_metric

    from interptest.graphs import Receiver

    L = model.cfg.n_layers
    ids = model.to_tokens(spec["prompt"])
    corrupt = model.to_tokens(spec["corrupt"])
    reference = torch.cat([model.to_tokens(t) for t in spec["reference"]])
    e = int(model.to_tokens(spec["expect"], prepend_bos=False)[0, 0])
    f = int(model.to_tokens(spec["foil"], prepend_bos=False)[0, 0])
    abl = ablated_values(model, ablation, 0, ids, corrupt, reference)
    edges = []
    for name in edge_names:
        edge = parse_edge(name)
        if edge.receiver.kind == "logits":
            edge = type(edge)(edge.sender, Receiver("logits", L))
        edges.append(edge)
    m_c = reference_metric(model, ids, e, f, edges, abl)
    m_empty = reference_metric(model, ids, e, f, [], abl)
    with torch.inference_mode():
        logits = model(ids)[0, -1]
    m_clean = float(logits[e] - logits[f])
    return (m_c - m_empty) / (m_clean - m_empty)


def test_edge_claims_through_the_pipeline_equal_the_reference(tmp_path):
    from interptest.api import check_behavior
    from interptest.spec import parse_spec

    model, spec = _tiny_behavior()
    (tmp_path / "circuits").mkdir()
    (tmp_path / "circuits" / "g.json").write_text((DATA / "eapig_3x4.json").read_text())
    top = read_graph(DATA / "eapig_3x4.json").top(40)
    inline = ", ".join(FILE_EDGES)
    spec["claims"] = [
        f"circuit edges[{inline}] faithful >= -100",
        "circuit @circuits/g.json faithful >= -100",
        "circuit top 40 edges of @circuits/g.json faithful >= -100",
        f"circuit edges[{inline}] faithful >= -100 ablate mean",
        f"circuit edges[{inline}] minimal >= -100 ablate zero",
        f"circuit edges[{inline}] faithful beats random at 0.01",
    ]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"behaviors": [spec]}, sort_keys=False))
    behavior = parse_spec(path.read_text(), str(path)).behaviors[0]
    result = check_behavior(behavior, model, raise_on_failure=False)
    values = [c.value for c in result.checks if c.text.startswith("circuit")]
    assert all(c.passed for c in result.checks), [(c.text, c.detail) for c in result.checks if not c.passed]
    want = _reference_faithfulness(model, spec, FILE_EDGES)
    assert abs(values[0] - want) <= 1e-5 and values[1] == values[0]
    assert abs(values[2] - _reference_faithfulness(model, spec, top)) <= 1e-5
    assert abs(values[3] - _reference_faithfulness(model, spec, FILE_EDGES, "mean")) <= 1e-5
    # minimal: the worst drop faithful(C) − faithful(C \ e), each from the reference
    full = _reference_faithfulness(model, spec, FILE_EDGES, "zero")
    drops = [full - _reference_faithfulness(model, spec, [x for x in FILE_EDGES if x != e], "zero") for e in FILE_EDGES]
    assert abs(values[4] - min(drops)) <= 1e-5
    assert "random edge sets of the same size" in result.checks[-1].detail


def test_false_edge_claims_fail(tmp_path):
    """A false claim of each kind fails (the numbers are measured here, on the tiny random GPT-2)."""
    from interptest.api import check_behavior

    model, spec = _tiny_behavior()
    _write(tmp_path, "g.json", (DATA / "eapig_3x4.json").read_text())
    inline = ", ".join(FILE_EDGES)
    spec["claims"] = [
        f"circuit edges[{inline}] faithful >= 0.99",
        f"circuit edges[{inline}] minimal >= 0.01",
        "circuit edges[input->logits] faithful beats random at 0.95",
        "circuit top 5 edges of @g.json faithful >= 0.99",
    ]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"behaviors": [spec]}, sort_keys=False))
    from interptest.spec import parse_spec

    result = check_behavior(parse_spec(path.read_text(), str(path)).behaviors[0], model, raise_on_failure=False)
    checks = [c for c in result.checks if c.text.startswith("circuit")]
    assert [c.passed for c in checks] == [False, False, False, False], [(c.text, c.value, c.detail) for c in checks]
    assert "edges that do not matter" in checks[1].detail


def test_bad_edge_claims_are_collection_errors_at_their_line(tmp_path):
    from interptest.binding import bind_behavior
    from interptest.errors import SpecError
    from interptest.spec import parse_spec

    model, spec = _tiny_behavior()
    spec["claims"] = [
        "circuit edges[a2.h0->a1.h0<k>, a1.h0->logits] faithful >= 0.5",
        "circuit @gone.json faithful >= 0.5",
    ]
    path = tmp_path / "spec.yaml"
    text = yaml.safe_dump({"behaviors": [spec]}, sort_keys=False)
    path.write_text(text)
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines, 1) if "a2.h0->a1.h0" in line)
    second = next(i for i, line in enumerate(lines, 1) if "gone.json" in line)
    with pytest.raises(SpecError) as error:
        bind_behavior(parse_spec(text, str(path)).behaviors[0], model, "tiny")
    message = str(error.value)
    assert (
        f"{path}:{first}: behavior 'c', key 'claims[0]': claim 'circuit edges[a2.h0->a1.h0<k>, a1.h0->logits] "
        "faithful >= 0.5': edge 'a2.h0->a1.h0<k>' is not an edge of this model: its sender a2.h0 is after its "
        "receiver's layer 1" in message
    ), message
    assert f"{path}:{second}: behavior 'c', key 'claims[1]'" in message
    assert f"graph file '{tmp_path}/gone.json' does not exist" in message
