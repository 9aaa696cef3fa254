"""Edge circuits equal a plain reference written here from the definition (max |Δ| <= 1e-5), on random
GPT-2, Llama (and Llama with grouped-query attention) and NeoX-shaped (parallel attention/MLP) models,
for every ablation; and the invariants: all edges = 1, no edge = 0 (under resample: the corrupted run
itself), a complete edge subgraph equals the node circuit on its nodes.

The reference, per circuit and sample, one forward at a time: it builds every receiver's input
*explicitly*, from the embedding up — the input node's output (``blocks.0.hook_resid_pre``) plus each
sender's output (a head's: the attention output with only its z minus the one with none, each from a
forward — not through W_O, which TransformerLens 3.x stacks transposed for square ``Linear`` projections;
an MLP's ``hook_mlp_out``) in this run when the edge is in the
circuit, ablated otherwise, plus the attention output biases of the layers it reads — and computes
the receiver's value in a forward of its own: a head's q (k, v) by setting its layer's attention
norm input (``ln1.hook_in``) to that residual and reading ``attn.hook_q`` (``k``, ``v``) of that head;
the layer's head outputs from a forward with those q, k, v; an MLP's output from a forward with its
norm input (``ln2.hook_in``) set; the metric from a forward with ``ln_final.hook_in`` set. The engine
instead adds present senders' differences (read through W_O) to the fully ablated residual, in one
batched run (helper rows)."""

from __future__ import annotations

import os
import random
import sys

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, os.path.dirname(__file__))

import pytest
import torch
from test_claims_path import inputs, model_for  # noqa: E402  (the prompts and models of the path tests)

from interptest.errors import InterpError
from interptest.patching.edges import Edge, Receiver, Sender, edge_patcher
from interptest.patching.paths import CircuitPatcher

TOL = 1e-5
ARCHS = ("gpt2", "llama", "llama-gqa", "neox")


def run_cache(model, ids, names, hooks=()):
    with torch.inference_mode():
        with model.hooks(fwd_hooks=list(hooks)):
            logits, c = model.run_with_cache(ids, names_filter=lambda nm: nm in set(names))
    return logits, {nm: c[nm].clone() for nm in names}


def ablated_values(model, ablation, s, clean, corrupt, reference):
    """{"input": [n, d], "z": [L][n, H, dh], "mlp": [L][n, d]}: the ablated output of every node."""
    L = model.cfg.n_layers
    names = ["blocks.0.hook_resid_pre"]
    names += [f"blocks.{l}.attn.hook_z" for l in range(L)] + [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    if ablation == "resample":
        vals = run_cache(model, corrupt[s : s + 1], names)[1]
        vals = {k: v[0] for k, v in vals.items()}
    elif ablation == "mean":
        per = [run_cache(model, reference[r : r + 1], names)[1] for r in range(reference.shape[0])]
        vals = {k: torch.stack([p[k][0] for p in per]).mean(0) for k in names}
    else:
        like = run_cache(model, clean[s : s + 1], names)[1]
        vals = {k: torch.zeros_like(v[0]) for k, v in like.items()}
    return {
        "input": vals["blocks.0.hook_resid_pre"],
        "z": [vals[f"blocks.{l}.attn.hook_z"] for l in range(L)],
        "mlp": [vals[f"blocks.{l}.hook_mlp_out"] for l in range(L)],
    }


def senders_of(model, receiver):
    """The nodes whose output is in a receiver's residual (written out from the definition)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    parallel = bool(getattr(model.cfg, "parallel_attn_mlp", False))
    if receiver.kind == "logits":
        top_heads, top_mlp = L, L
    elif receiver.kind == "mlp":
        top_heads, top_mlp = receiver.layer + (0 if parallel else 1), receiver.layer
    else:
        top_heads, top_mlp = receiver.layer, receiver.layer
    out = [Sender("input")]
    out += [Sender("head", l, h) for l in range(top_heads) for h in range(H)]
    out += [Sender("mlp", l) for l in range(top_mlp)]
    return out, top_heads


def kv_group(model, head):
    H = model.cfg.n_heads
    K = int(getattr(model.cfg, "n_key_value_heads", None) or H)
    return head // (H // K)


def same_receiver(model, a: Receiver, b: Receiver) -> bool:
    """k/v inputs of query heads of one key/value group are one input."""
    if a.kind != b.kind or a.layer != b.layer:
        return False
    if a.kind in ("k", "v"):
        return kv_group(model, a.head) == kv_group(model, b.head)
    return a.head == b.head


def reference_metric(model, ids, expect, foil, edges, abl):
    """m_C for one sample (ids [1, n]) and one edge set, from the definition."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    K = int(getattr(model.cfg, "n_key_value_heads", None) or H)
    edges = list(edges)
    _, clean = run_cache(model, ids, ["blocks.0.hook_resid_pre"])
    embed = clean["blocks.0.hook_resid_pre"][0]

    def set_to(value):
        return lambda act, hook=None: value.to(act.dtype).clone()

    z_run: list = [None] * L
    zero_z = run_cache(model, ids, ["blocks.0.attn.hook_z"])[1]["blocks.0.attn.hook_z"][0] * 0
    outs: dict = {}

    def attn_out(layer, z):
        """Layer ``layer``'s attention output when its head outputs are ``z`` [n, H, dh] (a forward)."""
        name = f"blocks.{layer}.hook_attn_out"
        if z is zero_z:
            if ("bias", layer) not in outs:
                outs[("bias", layer)] = run_cache(
                    model, ids, [name], [(f"blocks.{layer}.attn.hook_z", set_to(z[None]))]
                )[1][name][0]
            return outs[("bias", layer)]
        return run_cache(model, ids, [name], [(f"blocks.{layer}.attn.hook_z", set_to(z[None]))])[1][name][0]

    def head_out(layer, head, z):
        """A head's output in the residual: the attention output with only its z, minus the one with none
        (the output bias) — by forwards, not through W_O."""
        key = (layer, head, z.data_ptr())
        if key not in outs:
            alone = zero_z.clone()
            alone[:, head] = z[:, head]
            outs[key] = attn_out(layer, alone) - attn_out(layer, zero_z)
        return outs[key]

    mlp_run: list = [None] * L

    def present(sender, receiver):
        return any(e.sender == sender and same_receiver(model, e.receiver, receiver) for e in edges)

    def residual(receiver):
        senders, bias_layers = senders_of(model, receiver)
        total = torch.zeros_like(embed)
        for layer in range(bias_layers):  # the attention output biases (every z zero)
            total = total + attn_out(layer, zero_z)
        for s in senders:
            here = present(s, receiver)
            if s.kind == "input":
                total = total + (embed if here else abl["input"])
            elif s.kind == "head":
                total = total + head_out(s.layer, s.head, z_run[s.layer] if here else abl["z"][s.layer])
            else:
                total = total + (mlp_run[s.layer] if here else abl["mlp"][s.layer])
        return total[None]

    for layer in range(L):
        qkv = {}
        for kind, width in (("q", H), ("k", K), ("v", K)):
            name = f"blocks.{layer}.attn.hook_{kind}"
            parts = []
            for j in range(width):
                head = j if kind == "q" else j * (H // K)
                r = residual(Receiver(kind, layer, head))
                _, c = run_cache(model, ids, [name], [(f"blocks.{layer}.ln1.hook_in", set_to(r))])
                parts.append(c[name][:, :, j])
            qkv[name] = torch.stack(parts, dim=2)
        hooks = [(name, set_to(v)) for name, v in qkv.items()]
        z = f"blocks.{layer}.attn.hook_z"
        z_run[layer] = run_cache(model, ids, [z], hooks)[1][z][0]
        r = residual(Receiver("mlp", layer))
        m = f"blocks.{layer}.hook_mlp_out"
        mlp_run[layer] = run_cache(model, ids, [m], [(f"blocks.{layer}.ln2.hook_in", set_to(r))])[1][m][0]
    r = residual(Receiver("logits", L))
    logits, _ = run_cache(model, ids, [], [("ln_final.hook_in", set_to(r))])
    return float(logits[0, -1, expect] - logits[0, -1, foil])


def random_edge_sets(all_edges, count, seed):
    rng = random.Random(seed)
    sets = []
    for frac in (0.2, 0.5, 0.8)[:count]:
        sets.append([e for e in all_edges if rng.random() < frac])
    return sets


@pytest.fixture(scope="module", params=ARCHS)
def setup(request):
    model = model_for(request.param)
    clean, corrupt, expect, foil, reference = inputs(model)
    patcher = CircuitPatcher(model, clean, corrupt, expect, foil, reference_ids=reference, batch_size=40)
    return model, (clean, corrupt, expect, foil, reference), edge_patcher(patcher), patcher


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_edge_metrics_equal_reference(setup, ablation):
    model, (clean, corrupt, expect, foil, reference), edges, _ = setup
    every = edges.edges()
    # (no edge and every edge are checked against the corrupted and clean runs in the invariants below)
    sets = random_edge_sets(every, 2, seed=7)
    sets.append(every[1:])  # one edge removed
    got = edges.metrics(sets, ablation)
    worst = 0.0
    for s in range(clean.shape[0]):
        abl = ablated_values(model, ablation, s, clean, corrupt, reference)
        for j, edge_set in enumerate(sets):
            want = reference_metric(model, clean[s : s + 1], int(expect[s]), int(foil[s]), edge_set, abl)
            worst = max(worst, abs(want - float(got[s, j])))
    assert worst <= TOL, worst


def test_all_edges_one_no_edges_zero_and_resample_empty_is_corrupt(setup):
    model, _, edges, patcher = setup
    every = edges.edges()
    clean = patcher.metrics("clean")
    for ablation in ("resample", "mean", "zero"):
        values = edges.faithfulness([every, []], ablation)
        delta = (clean - edges.all_ablated(ablation)).abs()
        # all edges: the clean run (its raw metric within TOL, so the fraction within TOL / |m_clean − m_∅|)
        assert ((values[:, 0] - 1).abs() * delta).max() <= TOL
        assert (edges.metrics([every], ablation)[:, 0] - clean).abs().max() <= TOL
        assert values[:, 1].abs().max() <= TOL
    # no edge under resample: every receiver reads the corrupted run's residual, the logits included
    assert (edges.all_ablated("resample") - patcher.metrics("corrupt")).abs().max() <= TOL


def complete_subgraph(edges, nodes):
    """Every edge of the model between members of C ∪ {input, logits} (nodes: set of Sender)."""
    keep = set(nodes) | {Sender("input")}

    def receiver_node(r):
        if r.kind == "logits":
            return "logits"
        return Sender("mlp", r.layer) if r.kind == "mlp" else Sender("head", r.layer, r.head)

    def kept(r):
        if r.kind == "logits":
            return True
        if r.kind in ("k", "v"):  # a key/value head is in C when a query head reading it is
            model = edges.p.model
            return any(
                Sender("head", r.layer, h) in keep and kv_group(model, h) == kv_group(model, r.head)
                for h in range(model.cfg.n_heads)
            )
        return receiver_node(r) in keep

    return [e for e in edges.edges() if e.sender in keep and kept(e.receiver)]


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_complete_subgraph_equals_node_circuit(setup, ablation):
    """m_C of the complete edge subgraph over C ∪ {input, logits} is the node circuit's m_C (every node
    outside C ablated), for every ablation at all positions: both give each node of C and the logits
    the clean embedding + C's outputs in this run + the ablated outputs of the rest. (A node outside C
    has no edge, so its own input does not matter; on grouped-query models a key/value head is in C when
    one of its query heads is.) The faithfulness fractions differ only in m_∅: the
    node circuit's m_∅ keeps the clean embedding, i.e. it is the edge circuit {input->logits}'s m_C."""
    model, _, edges, patcher = setup
    H = model.cfg.n_heads
    rng = random.Random(3)
    for _ in range(2):
        nodes = {Sender("head", l, h) for l in range(model.cfg.n_layers) for h in range(H) if rng.random() < 0.5}
        nodes |= {Sender("mlp", l) for l in range(model.cfg.n_layers) if rng.random() < 0.5}
        node_edits = [("heads", (n.layer, n.head, None)) for n in nodes if n.kind == "head"]
        node_edits += [("mlp_out", (n.layer, None)) for n in nodes if n.kind == "mlp"]
        node_m = patcher.patch_sets([node_edits], "clean", ablation, complement=True)[:, 0]
        edge_m = edges.metrics([complete_subgraph(edges, nodes)], ablation)[:, 0]
        assert (node_m - edge_m).abs().max() <= TOL
    node_empty = patcher.all_ablated(ablation)
    input_logits = [Edge(Sender("input"), Receiver("logits", model.cfg.n_layers))]
    assert (edges.metrics([input_logits], ablation)[:, 0] - node_empty).abs().max() <= TOL


def test_edges_the_model_does_not_have(setup):
    model, _, edges, _ = setup
    L, H = model.cfg.n_layers, model.cfg.n_heads
    bad = {
        Edge(Sender("head", 1, 0), Receiver("q", 0, 1)): "its sender a1.h0 is after its receiver's layer 0",
        Edge(Sender("head", 1, 0), Receiver("k", 1, 1)): "its sender a1.h0 is at its receiver's layer 1",
        Edge(Sender("mlp", 1), Receiver("mlp", 1)): "its sender m1 is at its receiver's layer 1",
        Edge(Sender("head", L, 0), Receiver("logits", L)): f"its sender a{L}.h0 is at layer {L}, but the model has",
        Edge(Sender("head", 0, H), Receiver("logits", L)): f"names head {H}, but each layer has heads 0 to {H - 1}",
        Edge(Sender("input"), Receiver("", 1, 0)): "write <q>, <k> or <v> after it",
    }
    for edge, text in bad.items():
        with pytest.raises(InterpError) as err:
            edges.metrics([[edge]], "resample")
        assert text in str(err.value), str(err.value)
    parallel = bool(getattr(model.cfg, "parallel_attn_mlp", False))
    same_layer = Edge(Sender("head", 0, 0), Receiver("mlp", 0))
    assert (edges.problem(same_layer) is None) != parallel


def test_one_forward_holds_many_circuits(setup):
    """Stacked circuits × samples give what each circuit alone gives (bit for bit up to rounding)."""
    model, _, edges, _ = setup
    every = edges.edges()
    sets = random_edge_sets(every, 3, seed=11)
    together = edges.metrics(sets, "mean")
    alone = torch.cat([edges.metrics([s], "mean") for s in sets], dim=1)
    assert (together - alone).abs().max() <= TOL
