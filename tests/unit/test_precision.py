"""Reduced precision: a claim whose value lies within the dtype's error of its threshold is reported as
undecided (a failure that says so), never silently passed or failed. A tiny random model in bfloat16."""

import functools

import pytest
import torch

import tinymodels
from interptest.api import check_behavior
from interptest.claims.base import DTYPE_ERROR

BEHAVIOR = {
    "name": "b",
    "prompt": "The dog sat on the",
    "corrupt": "The Bob sat on the",
    "expect": " the",
    "foil": " on",
    "min_effect": 0.1,
}


@functools.cache
def bf16_model():
    from interptest.tl_compat import bridge_class

    model = bridge_class().boot_transformers(tinymodels.build_model_dir("gpt2"), device="cpu", dtype=torch.bfloat16)
    model.eval()
    return model


def measure(model, claims):
    return check_behavior({**BEHAVIOR, "claims": claims}, model, raise_on_failure=False).checks[1:]


def test_near_threshold_is_undecided_far_is_judged():
    model = bf16_model()
    value, m_clean, rank = (
        c.value
        for c in measure(model, ["resid_pre[1, 2] recovers >= -9", "logit_diff > -99", "rank(' the') <= 100000"])
    )
    near, far, logit_near, rank_exact = measure(
        model,
        [
            f"resid_pre[1, 2] recovers >= {value - 0.005}",
            f"resid_pre[1, 2] recovers >= {value - 0.5}",
            f"logit_diff >= {m_clean - 0.001}",
            f"rank(' the') <= {rank:g}",
        ],
    )
    assert (
        not near.passed
        and "undecided at bfloat16: the value is 0.005 from the threshold, within this "
        f"precision's error (±{DTYPE_ERROR['bfloat16']:.3g})"
        in near.detail
    )
    assert "run with --interp-dtype float32 to decide it" in near.detail
    assert far.passed and "undecided" not in far.detail
    assert not logit_near.passed and "undecided at bfloat16" in logit_near.detail
    assert rank_exact.passed  # ranks are exact: no tolerance


def test_float32_is_never_undecided():
    model = tinymodels.tiny_model("gpt2")
    value = measure(model, ["resid_pre[1, 2] recovers >= -9"])[0].value
    check = measure(model, [f"resid_pre[1, 2] recovers >= {value - 1e-6}"])[0]
    assert check.passed and "undecided" not in check.detail


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_every_reduced_dtype_has_a_measured_error(dtype):
    assert 0 < DTYPE_ERROR[dtype] < 0.1


def test_a_random_control_is_judged_against_the_random_quantile_at_reduced_precision():
    # a 'beats random' claim has no threshold of its own (NaN): the margin is to the random sets' quantile,
    # so a control far from it is judged, not "undecided: the value is nan from the threshold"
    model = bf16_model()
    (check,) = measure(model, ["heads[0.0, 1.1] together recovers beats random at 0.5"])
    assert "nan" not in check.detail
    assert "undecided" not in check.detail or "from the threshold" in check.detail
    assert "quantile" in check.detail
