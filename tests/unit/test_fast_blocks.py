"""The fast engine's elementwise building blocks compute the Hugging Face modules' own arithmetic, bit for
bit: the engine's exactness bound (1e-5 of |Δm| against TransformerLens) leaves no room for a fused
kernel's different rounding on models whose logits are small (measured: ~5e-6 on the tiny test models)."""

import pytest
import torch
from transformers.activations import NewGELUActivation

from interptest.patching.fast import blocks


@pytest.mark.parametrize("shape", [(720, 3072), (5, 7), (3, 50, 100), (0, 8), (1, 1 << 17)])
def test_gpt2_gelu_in_blocks_is_bit_identical_to_transformers(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), device="cpu") * 4
    assert torch.equal(blocks._new_gelu_inplace(x.clone()), NewGELUActivation()(x))


def test_gpt2_gelu_on_a_non_contiguous_tensor_runs_whole():
    x = torch.randn(64, 96, generator=torch.Generator().manual_seed(1), device="cpu").t()
    y = x.clone()
    assert not y.is_contiguous()
    assert torch.equal(blocks._new_gelu_inplace(y), NewGELUActivation()(x))


def test_the_activation_probe_takes_the_in_place_gelu_only_for_the_known_module():
    assert blocks.activation(NewGELUActivation()) is blocks._new_gelu_inplace
    other = torch.nn.GELU()
    assert blocks.activation(other) is other
