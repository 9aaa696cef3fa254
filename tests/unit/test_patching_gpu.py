"""On CUDA: every engine equals transformer_lens.patching there, and the CPU's results (issue 9.3).

Marked ``gpu``: skipped, with the reason, where CUDA is absent (CI). The CPU-only guard against mixing
devices is tests/unit/test_patching_device.py; these run the real thing on a GPU machine:
``pytest -m gpu tests/unit/test_patching_gpu.py``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import pytest  # noqa: E402
import torch  # noqa: E402

import tinymodels  # noqa: E402
from interptest import patch_sweep  # noqa: E402  (the public, spec-strict sweep)
from interptest.patching import BatchPatcher, Patcher  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)"),
]

TL_FN = {
    "resid_pre": "get_act_patch_resid_pre",
    "resid_mid": "get_act_patch_resid_mid",
    "attn_out": "get_act_patch_attn_out",
    "mlp_out": "get_act_patch_mlp_out",
    "heads": "get_act_patch_attn_head_out_all_pos",
}
TOL = 1e-5
MODELS = tinymodels.ARCHS + ("interptest-tiny",)


def get_model(name, device):
    if name == "interptest-tiny":
        import interptest

        return interptest.load_model("interptest-tiny", device=device)
    return tinymodels.tiny_model(name, device)


def pair(model):
    clean = model.to_tokens("Her name was Alex Hart. When Alex")
    corrupt = model.to_tokens("Her name was Alex Cole. When Alex")
    if clean.shape != corrupt.shape or torch.equal(clean, corrupt):
        clean = model.to_tokens("When Mary and John went to the store, John gave")
        corrupt = clean.clone()
        corrupt[0, 5] = 40
    return clean, corrupt


def answer(model, clean, corrupt):
    with torch.inference_mode():
        lc, lx = model(clean)[0, -1].cpu(), model(corrupt)[0, -1].cpu()
    e = int(lc.argmax())
    lx = lx.clone()
    lx[e] = -torch.inf
    return e, int(lx.argmax())


def components(model):
    return [c for c in TL_FN if ("blocks.0.attn.hook_z" if c == "heads" else f"blocks.0.hook_{c}") in model.hook_dict]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("engine", ["auto", "generic"])
def test_patcher_on_cuda_equals_transformer_lens(name, engine):
    from transformer_lens import patching as tlp

    model = get_model(name, "cuda")
    clean, corrupt = pair(model)
    e, f = answer(model, clean, corrupt)
    p = Patcher(model, clean, corrupt, e, f, engine=engine)
    assert p.engine == ("fast" if engine == "auto" else "generic"), p.engine_note
    mc, mx = p.clean_metric, p.corrupt_metric
    tol = TOL * max(1.0, 0.5 / abs(mc - mx))
    for d in ("denoise", "noise"):
        base, src = (p.corrupt_tokens, p.clean_tokens) if d == "denoise" else (p.clean_tokens, p.corrupt_tokens)
        with torch.inference_mode():
            _, cache = model.run_with_cache(src)
            for comp in components(model):

                def metric(lg, d=d):
                    m = lg[0, -1, e] - lg[0, -1, f]
                    return (m - mx) / (mc - mx) if d == "denoise" else (mc - m) / (mc - mx)

                ref = getattr(tlp, TL_FN[comp])(model, base, cache, metric).float().cpu()
                got = p.sweep(comp, d).values
                assert got.device.type == "cpu"
                assert float((got - ref).abs().max()) <= tol, (name, engine, comp, d)


@pytest.mark.parametrize("name", MODELS)
def test_batch_patcher_with_noise_on_cuda_equals_the_cpu(name):
    """Families on CUDA: the fast engine's S samples with embedding noise, and joint patches, against the
    same computation on the CPU (itself tested against TransformerLens)."""
    results = {}
    for device in ("cpu", "cuda"):
        model = get_model(name, device)
        clean, corrupt = pair(model)
        clean, corrupt = clean.repeat(3, 1), corrupt.repeat(3, 1)
        corrupt[0] = clean[0]  # noise only
        g = torch.Generator().manual_seed(0)
        noise = torch.zeros(3, clean.shape[1], int(model.cfg.d_model))
        noise[:, 2:4] = 3.0 * torch.randn(3, 2, int(model.cfg.d_model), generator=g)
        e, f = answer(model, clean[:1], corrupt[1:2])
        bp = BatchPatcher(model, clean, corrupt, [e] * 3, [f] * 3, embed_noise=noise)
        assert bp.engine == "fast", bp.engine_note
        out = {"metrics": torch.stack([bp.clean_metrics, bp.corrupt_metrics])}
        for d in ("denoise", "noise"):
            for comp in components(model):
                out[comp, d] = bp.sweep_raw(comp, d)
            out["joint", d] = bp.joint_raw("heads", [(0, 0, None), (model.cfg.n_layers - 1, 1, -1)], d)
        results[device] = out
    for k, v in results["cpu"].items():
        got = results["cuda"][k]
        assert got.device.type == "cpu"
        assert float((got - v).abs().max()) <= 1e-4 * (1 + float(v.abs().max())), k


def test_patch_sweep_on_cuda():
    model = get_model("gpt2", "cuda")
    pm = patch_sweep(
        model,
        "When Mary and John went to the store, John gave",
        "When Mary and John went to the store, Mary gave",
        "heads",
        " the",
        " on",
    )
    ref = patch_sweep(
        get_model("gpt2", "cpu"),
        "When Mary and John went to the store, John gave",
        "When Mary and John went to the store, Mary gave",
        "heads",
        " the",
        " on",
    )
    assert pm.values.device.type == "cpu"
    assert float((pm.raw - ref.raw).abs().max()) <= 1e-4
