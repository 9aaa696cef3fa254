"""Circuit claims, ablations and random controls: grammar, binding, and the invariants that tie them to
node patching, property-tested on tiny random models built here (no trained model).

Invariants:

* a path from last-layer senders to ``logits`` equals node patching of those senders (nothing after them
  but the last MLP, which recomputes in both);
* a path whose receiver does not come after its sender is rejected at binding;
* ``circuit <every node> faithful`` = 1 and ``circuit <no node> faithful`` = 0, under every ablation;
* resample-faithfulness of a set C that keeps every MLP equals 1 − ``breaks`` of the heads outside C,
  patched together, whenever the two prompts end in the same token. Derivation: the nodes outside C are
  exactly those heads, so m_C is the clean run with them set to their corrupted values — the patched run
  of ``heads[outside] together breaks``. And m_∅ (every head and MLP output corrupted) is the corrupted
  run's m: the final residual is the last token's embedding plus the (all corrupted) outputs, and the last
  token is the same. So faithful(C) = (m_C − m_corrupt) / (m_clean − m_corrupt) = 1 − breaks(outside C).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, os.path.dirname(__file__))

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tinymodels
from interptest.api import check_behavior
from interptest.claims import ClaimBindError, bind_claims, parse_claim
from interptest.claims.grammar import ClaimSyntaxError
from interptest.claims.nodes import Node, count_node_sets, random_node_sets
from interptest.patching import BatchPatcher
from interptest.patching.paths import CircuitPatcher, normalize

EXAMPLES = settings(max_examples=8)
TOL = 1e-5


def pairs(model, S=2, n=8, seed=3, same_last=True):
    """S random prompt pairs that differ at two positions (never the last); answers with Δm != 0."""
    vocab = int(model.cfg.d_vocab)
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, vocab, (S, n), generator=g)
    clean[:, 0] = int(model.tokenizer.bos_token_id)
    corrupt = clean.clone()
    corrupt[:, 2] = torch.randint(1, vocab, (S,), generator=g)
    corrupt[:, n - 3] = torch.randint(1, vocab, (S,), generator=g)
    if not same_last:
        corrupt[:, -1] = (clean[:, -1] + 7) % (vocab - 1) + 1
    with torch.inference_mode():
        lc, lx = model(clean)[:, -1], model(corrupt)[:, -1]
    expect, foil = lc.argmax(-1), lx.argmax(-1)
    same = foil == expect
    foil[same] = lc[same].topk(2).indices[:, 1]
    return clean, corrupt, expect, foil


@pytest.fixture(scope="module")
def gpt2():
    model = tinymodels.tiny_model("gpt2")
    clean, corrupt, expect, foil = pairs(model)
    return model, CircuitPatcher(model, clean, corrupt, expect, foil), BatchPatcher(model, clean, corrupt, expect, foil)


def all_nodes(L, H):
    return [("heads", (l, h, None)) for l in range(L) for h in range(H)] + [("mlp_out", (l, None)) for l in range(L)]


# ---------------------------------------------------------------------------------------------
# Invariants


@EXAMPLES
@given(heads=st.sets(st.integers(0, 3), min_size=1), mlp=st.booleans(), direction=st.sampled_from(["denoise", "noise"]))
def test_a_path_from_last_layer_senders_to_the_logits_is_node_patching(gpt2, heads, mlp, direction):
    model, engine, patcher = gpt2
    last = model.cfg.n_layers - 1
    senders = [("heads", (last, h, None)) for h in sorted(heads)]
    base, source = ("corrupt", "clean") if direction == "denoise" else ("clean", "corrupt")
    path = engine.path([senders], [[("logits", None)]], base, source)[:, 0, 0]
    values = normalize(path, engine.metrics("clean"), engine.metrics("corrupt"), direction)
    node = patcher.joint("heads", [c for _, c in senders], direction).double()
    assert (values - node).abs().max() <= TOL * max(
        1.0, float(1 / (patcher.clean_metrics - patcher.corrupt_metrics).abs().min())
    )
    if mlp:
        mlp_cells = [(last, p) for p in range(engine.n_positions)]
        path = engine.path([[("mlp_out", (last, None))]], [[("logits", None)]], base, source)[:, 0, 0]
        values = normalize(path, engine.metrics("clean"), engine.metrics("corrupt"), direction)
        assert torch.allclose(values, patcher.joint("mlp_out", mlp_cells, direction).double(), atol=1e-4)


@pytest.mark.torchfree
@settings(max_examples=40)
@given(
    sender=st.integers(0, 2),
    receiver=st.integers(0, 2),
    kind=st.sampled_from(["q", "k", "v", "mlp_in"]),
    mlp_sender=st.booleans(),
)
def test_a_path_whose_receiver_does_not_follow_its_sender_is_rejected(sender, receiver, kind, mlp_sender):
    senders = f"mlp_out[{sender}]" if mlp_sender else f"heads[{sender}.1]"
    target = f"mlp_in[{receiver}]" if kind == "mlp_in" else f"heads[{receiver}.0].{kind}"
    claim = parse_claim(f"path {senders} -> {target} recovers >= 0.5")
    # a layer's heads feed its own MLP (sequential blocks); everything else needs an earlier layer
    allowed = sender <= receiver if (kind == "mlp_in" and not mlp_sender) else sender < receiver
    tokens = ["<bos>", "a", "b", "c"]
    if allowed:
        bind_claims([claim], tokens, 3, 4)
    else:
        with pytest.raises(ClaimBindError, match="is at or after the receiver"):
            bind_claims([claim], tokens, 3, 4)


@pytest.mark.parametrize("ablation", ["resample", "mean", "zero"])
def test_faithfulness_of_every_node_is_1_and_of_no_node_is_0(gpt2, ablation):
    model, engine, _ = gpt2
    L, H = model.cfg.n_layers, model.cfg.n_heads
    values = engine.faithfulness([all_nodes(L, H), []], ablation)
    assert torch.allclose(values[:, 0], torch.ones(values.shape[0], dtype=torch.float64), atol=TOL)
    assert torch.allclose(values[:, 1], torch.zeros(values.shape[0], dtype=torch.float64), atol=TOL)


def test_under_resample_m_empty_is_the_corrupted_runs_m_when_the_prompts_end_alike(gpt2):
    model, engine, _ = gpt2
    assert torch.allclose(engine.all_ablated("resample"), engine.metrics("corrupt"), atol=1e-5)
    other = tinymodels.tiny_model("gpt2")
    clean, corrupt, expect, foil = pairs(other, same_last=False)
    differs = CircuitPatcher(other, clean, corrupt, expect, foil)
    assert not torch.allclose(differs.all_ablated("resample"), differs.metrics("corrupt"), atol=1e-3)


@EXAMPLES
@given(kept=st.sets(st.tuples(st.integers(0, 2), st.integers(0, 3)), max_size=11))
def test_resample_faithfulness_is_one_minus_breaks_of_the_heads_outside(gpt2, kept):
    model, engine, patcher = gpt2
    L, H = model.cfg.n_layers, model.cfg.n_heads
    circuit = [("heads", (l, h, None)) for l, h in sorted(kept)] + [("mlp_out", (l, None)) for l in range(L)]
    outside = [(l, h, None) for l in range(L) for h in range(H) if (l, h) not in kept]
    faithful = engine.faithfulness([circuit], "resample")[:, 0]
    breaks = patcher.joint("heads", outside, "noise").double()
    assert (faithful - (1 - breaks)).abs().max() <= 1e-4


# ---------------------------------------------------------------------------------------------
# Random node sets


def test_random_sets_have_the_composition_and_positions_and_exclude_the_claimed_set():
    nodes = (Node("heads", 0, 2, None), Node("heads", 1, 0, (5,)), Node("mlp_out", 1, None, None))
    assert count_node_sets(nodes, 2, 4) == 28 * 2
    sets, exhaustive = random_node_sets(nodes, 2, 4, 200, seed=0)
    assert exhaustive and len(sets) == 55 and len({frozenset(n.key for n in s) for s in sets}) == 55
    assert frozenset(n.key for n in nodes) not in {frozenset(n.key for n in s) for s in sets}
    for s in sets:
        assert [n.component for n in s] == ["heads", "heads", "mlp_out"]
        assert sorted([n.positions for n in s[:2]], key=str) == sorted([None, (5,)], key=str)
    sampled, exhaustive = random_node_sets(nodes, 12, 12, 50, seed=1)
    assert not exhaustive and len({frozenset(n.key for n in s) for s in sampled}) == 50
    assert sampled == random_node_sets(nodes, 12, 12, 50, seed=1)[0]  # seeded
    assert sampled != random_node_sets(nodes, 12, 12, 50, seed=2)[0]


# ---------------------------------------------------------------------------------------------
# Grammar and binding


@pytest.mark.torchfree
@pytest.mark.parametrize(
    "text, measure, ablation, quantile, nodes",
    [
        ("circuit heads[0.3, 1.0, 1.3] faithful >= 0.9", "faithful", "resample", None, "heads[0.3, 1.0, 1.3]"),
        (
            "circuit heads[0.3, 1.0, 1.3] + mlp_out[0, 1] faithful >= 0.95 ablate mean",
            "faithful",
            "mean",
            None,
            "heads[0.3, 1.0, 1.3] + mlp_out[0, 1]",
        ),
        ("circuit heads[0.3, 1.0, 1.3] minimal >= 0.05", "minimal", "resample", None, "heads[0.3, 1.0, 1.3]"),
        (
            "circuit heads[1.0; -1] + mlp_out[0:2; ' Hart'] faithful beats random at 0.95 ablate zero",
            "faithful",
            "zero",
            0.95,
            "heads[1.0; -1] + mlp_out[0:2; ' Hart']",
        ),
    ],
)
def test_circuit_grammar(text, measure, ablation, quantile, nodes):
    claim = parse_claim(text)
    assert (claim.measure_name, claim.ablation) == (measure, ablation)
    assert (claim.random.quantile if claim.random else None) == quantile
    assert " + ".join(n.source for n in claim.nodes) == nodes


@pytest.mark.torchfree
def test_beats_random_and_ablate_extend_localization_claims():
    claim = parse_claim("heads[0.3, 1.0, 1.3] together recovers beats random at 0.95")
    assert claim.quantifier == "together" and claim.random.quantile == 0.95 and claim.ablation is None
    claim = parse_claim("mlp_out[0, ' France'] breaks >= 0.5 ablate zero")
    assert claim.ablation == "zero" and claim.comparison.threshold == 0.5


@pytest.mark.torchfree
@pytest.mark.parametrize(
    "text, message",
    [
        (
            "circuit heads[0.3] faithfull >= 0.9",
            "expected 'faithful' or 'minimal' after the circuit's nodes (did you mean 'faithful'?), found 'faithfull'",
        ),
        (
            "circuit attn_out[0] faithful >= 0.9",
            "expected the circuit's nodes: attention heads heads[L.H, ...] or MLP layers mlp_out[L, ...]",
        ),
        (
            "circuit heads[0.3] faithful >= 0.9 ablate average",
            "expected an ablation after 'ablate' (resample, mean, zero), found 'average'",
        ),
        ("circuit heads[0.3] minimal beats random at 0.9", "'beats random' compares a circuit's faithfulness"),
        ("circuit heads[0.3] faithful beats random at 1.5", "the quantile must be between 0 and 1"),
        ("heads[0.3, 1.0] recovers beats random at 0.95", "write 'together' before the verb"),
        ("heads[0.3] recovers >= 0.5 ablate mean", "'ablate' names what replaces the activations of a 'breaks' claim"),
        ("circuit heads[0.3] + faithful >= 0.9", "expected a node after '+'"),
    ],
)
def test_circuit_grammar_errors_name_the_offending_part(text, message):
    with pytest.raises(ClaimSyntaxError) as error:
        parse_claim(text)
    assert message in str(error.value)


@pytest.mark.torchfree
@pytest.mark.parametrize(
    "text, message",
    [
        ("circuit heads[0.3, 0.3] faithful >= 0.9", "the node list names head 0.3 twice"),
        ("circuit heads[2.0] faithful >= 0.9", "layer 2 is out of range"),
        ("circuit heads[0.7] faithful >= 0.9", "head 0.7 in heads[0.7] is out of range: each layer has 4 heads"),
        ("circuit heads[0.1; 9] faithful >= 0.9", "position 9 is out of range"),
        (
            "circuit heads[0.0, 0.1, 0.2, 0.3, 1.0, 1.1, 1.2, 1.3] + mlp_out[0, 1] faithful beats random at 0.9",
            "'beats random' needs other node sets of the same composition, but the set takes 8 of 8 heads, "
            "2 of 2 mlp_out layers: it is as large as the whole model",
        ),
        (
            "heads[0.0, 0.1, 0.2, 0.3, 1.0, 1.1, 1.2, 1.3] together recovers beats random at 0.9",
            "it is as large as the whole model",
        ),
        ("path heads[1.0] -> heads[1.2].k recovers >= 0.5", "sender head 1.0 is at or after the receiver heads[1.2].k"),
        ("path heads[0.0] -> heads[1.0, 1.0].k recovers >= 0.5", "the receivers name the same input twice"),
    ],
)
def test_binding_errors_name_the_claims_offending_part(text, message):
    with pytest.raises(ClaimBindError) as error:
        bind_claims([parse_claim(text)], ["<bos>", "a", "b", "c"], 2, 4)
    assert message in str(error.value)


def test_grouped_query_receivers_sharing_a_key_value_head_are_ambiguous():
    from interptest import components
    from interptest.claims import BindContext, bind_all

    context = BindContext([""], [["<bos>", "a", "b"]], [{}], 2, 4, components.NAMES, "m", None, n_kv_heads=2)
    bind_all([parse_claim("path heads[0.1] -> heads[1.0].k + heads[1.2].k recovers >= 0.5")], context)
    with pytest.raises(
        ClaimBindError,
        match=r"receivers heads\[1.0\].k and heads\[1.1\].k are the same input: on this "
        r"model 4 query heads share 2 key/value heads",
    ):
        bind_all([parse_claim("path heads[0.1] -> heads[1.0, 1.1].k recovers >= 0.5")], context)
    bind_all([parse_claim("path heads[0.1] -> heads[1.0, 1.1].q recovers >= 0.5")], context)


# ---------------------------------------------------------------------------------------------
# Through the pipeline, and the device harness


def behavior(model):
    # a pair whose top-1 tokens differ and can be produced on the tiny random GPT-2 (found by search)
    clean, corrupt = "When dog dog dog the the the", "When dog dog sat the the the"
    with torch.inference_mode():
        top = [int(model(model.to_tokens(p))[0, -1].argmax()) for p in (clean, corrupt)]
    expect, foil = (model.tokenizer.decode([t]) for t in top)
    assert expect != foil
    L, H = model.cfg.n_layers, model.cfg.n_heads
    every = ", ".join(f"{l}.{h}" for l in range(L) for h in range(H))
    return {
        "name": "c",
        "prompt": clean,
        "expect": expect,
        "corrupt": corrupt,
        "foil": foil,
        "min_effect": 0.0,
        "reference": ["When Bob sat on the the the", "When the dog sat on Bob to"],
        "claims": [
            f"circuit heads[{every}] + mlp_out[:] faithful == 1",
            "circuit heads[0.1, 1.2] + mlp_out[0] faithful >= -100 ablate mean",
            "circuit heads[0.1, 1.2] minimal >= -100 ablate zero",
            "circuit heads[0.1, 1.2] faithful beats random at 0.01",
            "path heads[0.1] + mlp_out[0] -> heads[2.0].k + mlp_in[1] recovers >= -100",
            "path heads[1.3] -> logits breaks >= -100 ablate mean",
            "heads[0.1, 2.3] together breaks >= -100 ablate zero",
            "heads[0.1; -1] breaks >= -100 ablate mean",
            "heads[0.1, 2.3] together recovers beats random at 0.01",
            "mlp_out[0:2, -1] together breaks beats random at 0.01 ablate mean",
        ],
    }


def test_every_kind_runs_through_the_pipeline():
    model = tinymodels.tiny_model("gpt2")
    spec = behavior(model)
    for text in spec["reference"]:
        assert model.to_tokens(text).shape == model.to_tokens(spec["prompt"]).shape
    result = check_behavior(spec, model, raise_on_failure=False)
    failed = [(c.text, c.value, c.detail) for c in result.checks if not c.passed]
    assert not failed, failed


def test_circuit_claims_create_every_tensor_on_the_models_device():
    """The engine under test_patching_device's harness: results bit for bit equal to a run outside it."""
    from test_patching_device import stray_device

    model = tinymodels.tiny_model("gpt2")
    spec = behavior(model)
    want = check_behavior(spec, model, raise_on_failure=False)
    with stray_device(model):
        got = check_behavior(spec, model, raise_on_failure=False)
    assert [(c.text, c.value) for c in got.checks] == [(c.text, c.value) for c in want.checks]
