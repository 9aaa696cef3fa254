"""Bad input gives clear InterpError messages."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import pytest  # noqa: E402

import tinymodels  # noqa: E402
from interptest import patch_sweep  # noqa: E402
from interptest.errors import InterpError  # noqa: E402
from interptest.patching import Patcher  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return tinymodels.tiny_model("gpt2")


def test_different_token_counts_show_both_tokenizations(model):
    with pytest.raises(InterpError) as ei:
        patch_sweep(model, "When Mary and John went", "When Mary went", "resid_pre", " Mary", " John")
    msg = str(ei.value)
    assert "tokenize to different lengths (13 vs 10), so positions cannot be matched" in msg
    assert str(model.to_str_tokens("When Mary and John went")) in msg
    assert str(model.to_str_tokens("When Mary went")) in msg


def test_unknown_component_lists_valid_ones(model):
    t = model.to_tokens("the cat sat")
    p = Patcher(model, t, t, 1, 2)
    with pytest.raises(
        InterpError,
        match=r"unknown component 'resid'.*resid_pre, resid_mid, resid_post, "
        r"attn_out, mlp_out, heads",
    ):
        p.sweep("resid")


def test_unknown_direction(model):
    t = model.to_tokens("the cat sat")
    with pytest.raises(InterpError, match=r"unknown direction 'recover'.*denoise, noise"):
        Patcher(model, t, t, 1, 2).sweep("resid_pre", "recover")


def test_expect_equals_foil(model):
    with pytest.raises(InterpError, match="patch_sweep: foil: 'foil' equals 'expect'"):
        patch_sweep(model, "the dog sat", "the Bob sat", "resid_pre", " on", " on")
    t = model.to_tokens("the cat sat")
    with pytest.raises(InterpError, match="expect and foil are the same token"):
        Patcher(model, t, t, 7, 7)


def test_component_missing_on_parallel_model():
    neox = tinymodels.tiny_model("neox")
    t = neox.to_tokens("the cat sat")
    with pytest.raises(InterpError, match=r"'resid_mid' is not available on model .*parallel"):
        Patcher(neox, t, t, 1, 2).sweep("resid_mid")


def test_errors_leave_no_hooks(model):
    t = model.to_tokens("the cat sat on")
    p = Patcher(model, t, t, 1, 2)
    with pytest.raises(InterpError):
        p.joint("resid_pre", [(99, 0)])
    assert all(not getattr(h, "fwd_hooks", []) for h in model.hook_dict.values())
