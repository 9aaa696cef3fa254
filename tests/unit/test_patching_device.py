"""The engines never mix devices — checked on a CPU-only machine.

Why this test exists: on a GPU machine every behavior once crashed with "Expected all tensors to be on
the same device ... cuda:0 and cpu": the engines created bookkeeping and index tensors (``torch.zeros``,
``torch.arange``, ``torch.tensor`` of a Python list) without naming a device, so they landed on the
CPU while the model's activations were on CUDA. CI has no GPU, so nothing caught it.

The harness recreates that situation on a CPU: the model and its weights stay on the CPU, and torch's
*default* device is set to ``meta`` while an engine runs. A tensor the engine creates without naming
its device then lands on ``meta`` — a second device, playing the part that the CPU plays on a GPU
machine — and the first operation that combines it with a model tensor raises "Tensor on device meta is
not on the expected device cpu!", exactly as on the GPU. (Indexing a CPU tensor with a meta index does
not raise, it reads garbage: so every result is also compared, bit for bit, with the same computation
outside the harness.) The engines must therefore put every tensor on the model's device, or keep
bookkeeping on the CPU *explicitly* (``device="cpu"``).

TransformerLens's and Hugging Face's forwards run unchanged under the harness (they name their
devices); only the tokenizer builds its id tensors with a bare ``torch.tensor``, so ``to_tokens`` and
``to_str_tokens`` — not interptest's code — run with the CPU as default device.
"""

from __future__ import annotations

import contextlib
import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import pytest  # noqa: E402
import torch  # noqa: E402

import tinymodels  # noqa: E402
from interptest import patch_sweep  # noqa: E402  (the public, spec-strict sweep)
from interptest.patching import BatchPatcher, Patcher  # noqa: E402

COMPONENTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "heads")


@contextlib.contextmanager
def stray_device(model):
    """Inside: tensors created without a device land on ``meta``, not on the model's device (CPU)."""
    assert next(iter(model.parameters())).device.type == "cpu"
    tokenizer_fns = {name: getattr(model, name) for name in ("to_tokens", "to_str_tokens")}

    def on_cpu(fn):
        def call(*args, **kwargs):
            with torch.device("cpu"):  # the tokenizer's own bare torch.tensor, not ours
                return fn(*args, **kwargs)

        return call

    for name, fn in tokenizer_fns.items():
        setattr(model, name, on_cpu(fn))
    try:
        with torch.device("meta"):
            yield
    finally:
        for name in tokenizer_fns:
            delattr(model, name)  # back to the class's methods


def available(model):
    return [
        c for c in COMPONENTS if ("blocks.0.attn.hook_z" if c == "heads" else f"blocks.0.hook_{c}") in model.hook_dict
    ]


def pair(model, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, int(model.cfg.d_vocab), (1, n), generator=g)
    clean[0, 0] = int(model.tokenizer.bos_token_id)
    corrupt = clean.clone()
    corrupt[0, 3] = (clean[0, 3] + 5) % (int(model.cfg.d_vocab) - 1) + 1
    return clean, corrupt


def test_harness_catches_a_tensor_created_without_a_device():
    """The premise: under the harness, the pattern behind the GPU crash raises on a CPU machine."""
    model = tinymodels.tiny_model("gpt2")
    act = next(iter(model.parameters()))[:4, 0]
    with stray_device(model):
        bare = torch.arange(4)  # no device named: lands on meta
        named = torch.arange(4, device=act.device)  # fine
        with pytest.raises(RuntimeError, match="meta"):
            _ = act >= bare
        assert bool((act[named] == act).all().to("cpu"))


def single_pair_results(model, engine, clean, corrupt):
    p = Patcher(model, clean, corrupt, 5, 9, engine=engine, batch_size=24)
    L, H, n = p.n_layers, p.n_heads, p.n_positions
    out = {"engine": p.engine, "metrics": (p.clean_metric, p.corrupt_metric)}
    for d in ("denoise", "noise"):
        for comp in available(model):
            pm = p.sweep(comp, d)
            out[comp, d] = (pm.values, pm.raw)
        out["cells", d] = p.cells_value("heads", [(l, h, q) for l in range(L) for h in range(H) for q in (None, -1)], d)
        out["resid cells", d] = p.cells_value("resid_post", [(0, n - 1), (L - 1, 3)], d)
        out["joint", d] = (
            p.joint("resid_pre", [(0, q) for q in range(n)], d),
            p.joint("heads", [(0, 1, None), (L - 1, 0, -1)], d),
            p.joint("mlp_out", [(0, 3), (1, n - 1)], d),
        )
    return out


def same(a, b) -> bool:
    """Bit for bit, nan where nan (a sample whose m_clean == m_corrupt), results on the CPU."""
    if isinstance(b, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(b, torch.Tensor):
        return (
            a.device.type == b.device.type == "cpu"
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a.isnan(), b.isnan())
            and torch.equal(a.nan_to_num(), b.nan_to_num())
        )
    return a == b or (a != a and b != b)


def assert_same(got, want):
    assert got.keys() == want.keys()
    for k in want:
        assert same(got[k], want[k]), k


# The fast engine has code per architecture; the generic engine only hooks, the same code for all.
@pytest.mark.parametrize("arch, engine", [(a, "auto") for a in tinymodels.ARCHS] + [("gpt2", "generic")])
def test_patcher_creates_every_tensor_on_the_models_device(arch, engine):
    model = tinymodels.tiny_model(arch)
    clean, corrupt = pair(model)  # the caller's tensors, built outside the harness
    want = single_pair_results(model, engine, clean, corrupt)
    assert want["engine"] == ("fast" if engine == "auto" else "generic")
    with stray_device(model):
        got = single_pair_results(model, engine, clean, corrupt)
    assert_same(got, want)


def batch_inputs(model, noise, S=3, n=7):
    clean = torch.cat([pair(model, n, seed=s)[0] for s in range(S)])
    corrupt = torch.cat([pair(model, n, seed=s)[1] for s in range(S)])
    corrupt[0] = clean[0]  # sample 0: noise only
    embed_noise = None
    if noise:
        g = torch.Generator().manual_seed(1)
        embed_noise = torch.zeros(S, n, int(model.cfg.d_model))
        embed_noise[:, 2:4] = 3.0 * torch.randn(S, 2, int(model.cfg.d_model), generator=g)
    return clean, corrupt, embed_noise


def batch_results(model, clean, corrupt, embed_noise, engine="auto"):
    n = clean.shape[1]
    bp = BatchPatcher(
        model, clean, corrupt, [5, 6, 7], [9, 10, 11], embed_noise=embed_noise, batch_size=24, engine=engine
    )
    assert bp.engine == ("generic" if engine == "generic" else "fast"), bp.engine_note
    L, H = bp.n_layers, bp.n_heads
    out = {"metrics": (bp.clean_metrics, bp.corrupt_metrics, bp.first_diff)}
    for d in ("denoise", "noise"):
        for comp in available(model):
            out[comp, d] = (bp.sweep(comp, d), bp.sweep_raw(comp, d))
        out["cells", d] = bp.cells_value(
            "heads", [(l, h, q) for l in range(L) for h in range(H) for q in (None, -1, 2)], d
        )
        out["joint", d] = (
            bp.joint("resid_pre", [(0, q) for q in range(n)], d),
            bp.joint("heads", [(0, 1, None), (L - 1, 0, -1)], d),
            bp.joint("attn_out", [(0, 3), (1, n - 1)], d),
        )
    return out


@pytest.mark.parametrize(
    "arch, noise, engine",
    [("gpt2", False, "auto"), ("gpt2", True, "generic")] + [(a, True, "auto") for a in tinymodels.ARCHS],
)
def test_batch_patcher_creates_every_tensor_on_the_models_device(arch, noise, engine):
    model = tinymodels.tiny_model(arch)
    inputs = batch_inputs(model, noise)  # the caller's tensors, built outside the harness
    want = batch_results(model, *inputs, engine=engine)
    with stray_device(model):
        got = batch_results(model, *inputs, engine=engine)
    assert_same(got, want)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_patch_sweep_creates_every_tensor_on_the_models_device(arch):
    model = tinymodels.tiny_model(arch)
    args = (model, "When Mary and John went to the store, John gave", "When Mary and John went to the store, Mary gave")
    want = {c: patch_sweep(*args, c, " the", " on").values for c in ("resid_pre", "heads")}
    with stray_device(model):
        got = {c: patch_sweep(*args, c, " the", " on").values for c in ("resid_pre", "heads")}
    for c in want:
        assert got[c].device.type == "cpu" and torch.equal(got[c], want[c]), c
