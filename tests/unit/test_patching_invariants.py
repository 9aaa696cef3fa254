"""Invariants of activation patching that hold for any model and any prompt pair."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, Phase, assume, given, settings  # noqa: E402
from hypothesis import strategies as st

import tinymodels  # noqa: E402
from interptest.patching import Patcher  # noqa: E402

SETTINGS = settings(
    max_examples=4,
    derandomize=True,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def one_diff_pair(data, model):
    vocab = int(model.cfg.d_vocab)
    n = data.draw(st.integers(3, 9), label="n")
    toks = data.draw(st.lists(st.integers(1, vocab - 1), min_size=n, max_size=n), label="tokens")
    clean = torch.tensor([toks])
    pos = data.draw(st.integers(1, n - 1), label="pos")
    corrupt = clean.clone()
    corrupt[0, pos] = data.draw(st.integers(1, vocab - 1).filter(lambda t: t != toks[pos]), label="tok")
    e, f = data.draw(st.lists(st.integers(0, vocab - 1), min_size=2, max_size=2, unique=True), label="ids")
    return clean, corrupt, pos, e, f


@pytest.mark.parametrize("arch", tinymodels.ARCHS)
@pytest.mark.parametrize("direction", ["denoise", "noise"])
@SETTINGS
@given(data=st.data())
def test_invariants(arch, direction, data):
    model = tinymodels.tiny_model(arch)
    clean, corrupt, pos, e, f = one_diff_pair(data, model)
    p = Patcher(model, clean, corrupt, e, f)
    dm = abs(p.clean_metric - p.corrupt_metric)
    assume(dm > 1e-3)
    tol = 1e-5 * max(1.0, 0.5 / dm)
    assert p.first_diff == pos
    pre = p.sweep("resid_pre", direction)
    # the only differing token, patched at the embedding: the run becomes the source run
    assert abs(float(pre.values[0, pos]) - 1.0) <= tol
    # before the first differing token nothing can change: exactly 0
    comps = ["resid_pre", "resid_post", "attn_out", "mlp_out"]
    if "blocks.0.hook_resid_mid" in model.hook_dict:
        comps.append("resid_mid")
    for comp in comps:
        v = p.sweep(comp, direction).values
        assert torch.equal(v[:, :pos], torch.zeros_like(v[:, :pos])), comp
    # the final residual at the answer position determines the logits
    post = p.sweep("resid_post", direction)
    assert abs(float(post.values[-1, -1]) - 1.0) <= tol
    assert float(post.values[-1, :-1].abs().max()) <= tol
    # raw and values are consistent
    m_base = p.corrupt_metric if direction == "denoise" else p.clean_metric
    assert torch.allclose(pre.raw[:, :pos], torch.full_like(pre.raw[:, :pos], m_base))


def test_degenerate_normalization_does_not_crash():
    model = tinymodels.tiny_model("gpt2")
    clean = model.to_tokens("the cat sat on the mat")
    p = Patcher(model, clean, clean.clone(), 40, 41)  # identical prompts: m_clean == m_corrupt
    pm = p.sweep("resid_pre")
    assert torch.isnan(pm.values).all() or torch.isinf(pm.values).any()
    assert torch.isfinite(pm.raw).all()


def test_engine_leaves_no_hooks_and_is_deterministic():
    model = tinymodels.tiny_model("llama")
    clean = model.to_tokens("Alice and Bob met at the park")
    corrupt = clean.clone()
    corrupt[0, 2] = 33
    before = {n: len(h.fwd_hooks) for n, h in model.hook_dict.items() if hasattr(h, "fwd_hooks")}
    a = Patcher(model, clean, corrupt, 10, 20, engine="generic").sweep("heads")
    b = Patcher(model, clean, corrupt, 10, 20, engine="generic").sweep("heads")
    c = Patcher(model, clean, corrupt, 10, 20).sweep("heads")
    d = Patcher(model, clean, corrupt, 10, 20).sweep("heads")
    after = {n: len(h.fwd_hooks) for n, h in model.hook_dict.items() if hasattr(h, "fwd_hooks")}
    assert before == after
    assert torch.equal(a.values, b.values) and torch.equal(c.values, d.values)
    assert not model.training
