"""The SAE loader (interptest.saes): encode/decode equal a reference written here from SAELens's
definitions (its inference classes StandardSAE, JumpReLUSAE, TopKSAE, GatedSAE and SAE.process_sae_in /
_setup_activation_normalization), and — where sae-lens is installed — SAELens's own
``SAE.load_from_disk(...).encode/decode`` on the same files (≤ 1e-6); every bad input is an error that
names the file and the option."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from interptest import saes
from interptest.saes import SAEError

D_IN, D_SAE = 8, 24


def make_weights(architecture: str, seed: int = 0, d_in: int = D_IN, d_sae: int = D_SAE) -> dict:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    w = {"W_enc": r(d_in, d_sae, scale=0.5), "W_dec": r(d_sae, d_in, scale=0.5), "b_dec": r(d_in, scale=0.3)}
    if architecture == "gated":
        w |= {"b_gate": r(d_sae, scale=0.3), "r_mag": r(d_sae, scale=0.2), "b_mag": r(d_sae, scale=0.3)}
    else:
        w["b_enc"] = r(d_sae, scale=0.3)
    if architecture == "jumprelu":
        w["threshold"] = r(d_sae, scale=0.3).abs()
    return w


def write_sae(directory: Path, arch: str = "standard", weights=None, **cfg) -> Path:
    """An SAE directory in SAELens 6's layout (what SAE.save_model writes)."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = make_weights(arch) if weights is None else weights
    d_in, d_sae = weights["W_dec"].shape[1], weights["W_dec"].shape[0]
    config = {
        "architecture": arch,
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"sae_lens_version": "6.54.12", "hook_name": "blocks.1.hook_resid_pre", "model_name": "tiny"},
    }
    if arch == "topk":
        config |= {"k": 5, "rescale_acts_by_decoder_norm": False}
    config |= cfg
    (directory / "cfg.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / "sae_weights.safetensors"))
    return directory


# ------------------------------------------------------------------------------------------------
# The reference, from SAELens's definitions, one row at a time


def reference_norm_in(x, norm, d_in):
    if norm == "constant_norm_rescale":
        c = d_in**0.5 / torch.linalg.vector_norm(x)
        return x * c, ("c", c)
    if norm == "layer_norm":
        mu = x.sum() / x.numel()
        var = ((x - mu) ** 2).sum() / (x.numel() - 1)  # torch.std: unbiased
        std = var.sqrt()
        return (x - mu) / (std + 1e-5), ("ln", mu, std)
    return x, None


def reference_encode_row(x, w, cfg):
    xin, _ = reference_norm_in(x, cfg["normalize_activations"], cfg["d_in"])
    if cfg["apply_b_dec_to_input"]:
        xin = xin - w["b_dec"]
    arch = cfg["architecture"]
    out = torch.zeros(w["W_enc"].shape[1])
    if arch == "gated":
        for i in range(out.numel()):
            gate = float(xin @ w["W_enc"][:, i] + w["b_gate"][i])
            mag = float(xin @ (w["W_enc"][:, i] * torch.exp(w["r_mag"][i])) + w["b_mag"][i])
            out[i] = max(mag, 0.0) if gate > 0 else 0.0
        return out
    pre = torch.stack([xin @ w["W_enc"][:, i] + w["b_enc"][i] for i in range(out.numel())])
    if arch == "standard":
        return pre.clamp(min=0)
    if arch == "jumprelu":
        return torch.where(pre > w["threshold"], pre.clamp(min=0), torch.zeros_like(pre))
    if cfg.get("rescale_acts_by_decoder_norm"):
        pre = pre * torch.stack([torch.linalg.vector_norm(row) for row in w["W_dec"]])
    order = sorted(range(pre.numel()), key=lambda i: -float(pre[i]))[: cfg["k"]]
    for i in order:
        out[i] = max(float(pre[i]), 0.0)
    return out


def reference_decode_row(f, x, w, cfg):
    if cfg["architecture"] == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        f = f / torch.stack([torch.linalg.vector_norm(row) for row in w["W_dec"]])
    out = w["b_dec"].clone()
    for i in range(f.numel()):
        out = out + f[i] * w["W_dec"][i]
    _, stats = reference_norm_in(x, cfg["normalize_activations"], cfg["d_in"])
    if stats is None:
        return out
    if stats[0] == "c":
        return out / stats[1]
    return out * stats[2] + stats[1]


CASES = [
    ("standard", {}),
    ("standard", {"apply_b_dec_to_input": False}),
    ("standard", {"normalize_activations": "constant_norm_rescale"}),
    ("standard", {"normalize_activations": "layer_norm"}),
    ("jumprelu", {}),
    ("jumprelu", {"apply_b_dec_to_input": False, "normalize_activations": "layer_norm"}),
    ("topk", {}),
    ("topk", {"rescale_acts_by_decoder_norm": True}),
    ("topk", {"k": 3, "normalize_activations": "constant_norm_rescale"}),
    ("gated", {}),
    ("gated", {"apply_b_dec_to_input": False}),
]


def _inputs(seed=1, rows=(2, 5)):
    return torch.randn(*rows, D_IN, generator=torch.Generator().manual_seed(seed)) * 2.0


@pytest.mark.parametrize("architecture,options", CASES)
def test_encode_decode_equal_reference(tmp_path, architecture, options):
    directory = write_sae(tmp_path / "sae", architecture, **options)
    sae = saes.load(directory)
    cfg = json.loads((directory / "cfg.json").read_text())
    w = make_weights(architecture)
    x = _inputs()
    f = sae.encode(x)
    x_hat = sae.decode(f, x)
    assert f.shape == (2, 5, D_SAE) and x_hat.shape == (2, 5, D_IN)
    for b in range(2):
        for p in range(5):
            ref_f = reference_encode_row(x[b, p], w, cfg)
            assert torch.allclose(f[b, p], ref_f, atol=1e-6), (b, p)
            assert torch.allclose(x_hat[b, p], reference_decode_row(ref_f, x[b, p], w, cfg), atol=1e-5)
    assert (f != 0).any() and (f == 0).any()  # the test exercises both sides of the activation
    if architecture == "topk":
        assert int((f != 0).sum(-1).max()) <= cfg["k"]
    feats, eps = sae.split(x)
    assert torch.allclose(sae.decode(feats, x) + eps, x, atol=1e-6)


@pytest.mark.parametrize("architecture,options", CASES)
def test_equal_to_sae_lens(tmp_path, architecture, options):
    sae_lens = pytest.importorskip("sae_lens")
    directory = write_sae(tmp_path / "sae", architecture, **options)
    ours = saes.load(directory)
    theirs = sae_lens.SAE.load_from_disk(str(directory))
    x = _inputs(seed=3)
    with torch.no_grad():
        f_theirs = theirs.encode(x)
        x_theirs = theirs.decode(f_theirs)
    f_ours = ours.encode(x)
    assert (f_ours - f_theirs).abs().max() <= 1e-6
    assert (ours.decode(f_ours, x) - x_theirs).abs().max() <= 1e-6


def test_sparsity_file_ignored_and_dtype_honoured(tmp_path):
    weights = make_weights("standard")
    directory = write_sae(tmp_path / "sae", "standard", weights, dtype="float64")
    save_file({"sparsity": torch.zeros(D_SAE)}, str(directory / "sparsity.safetensors"))
    sae = saes.load(directory)
    assert sae.weights["W_enc"].dtype == torch.float64
    x = _inputs().double()
    assert sae.encode(x).dtype == torch.float64
    assert sae.describe() == "standard SAE on blocks.1.hook_resid_pre (d_in=8, d_sae=24)"


def test_pre_6_config_hook_point_and_topk_kwargs(tmp_path):
    """SAELens < 6 wrote hook_point at the top level, and topk as activation_fn_kwargs."""
    directory = tmp_path / "old"
    write_sae(directory, "standard")
    (directory / "cfg.json").write_text(
        json.dumps(
            {
                "d_in": D_IN,
                "d_sae": D_SAE,
                "hook_point": "blocks.0.hook_resid_post",
                "activation_fn_str": "topk",
                "activation_fn_kwargs": {"k": 4},
                "dtype": "float32",
            }
        )
    )
    config = saes.read_config(directory)
    assert (config.architecture, config.k, config.hook_name) == ("topk", 4, "blocks.0.hook_resid_post")


def test_statistics():
    f = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]])
    assert saes.l0(f) == 1.5
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert saes.explained_variance(x, x) == 1.0
    assert saes.explained_variance(x, torch.zeros_like(x)) == 0.0


# ------------------------------------------------------------------------------------------------
# Bad input: the message names the file and what was expected


def _error(directory) -> str:
    with pytest.raises(SAEError) as info:
        saes.load(directory)
    return str(info.value)


def test_missing_directory_and_files(tmp_path):
    assert "no such SAE directory" in _error(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    message = _error(tmp_path / "empty")
    assert "cfg.json: missing" in message and "sae_weights.safetensors" in message
    directory = write_sae(tmp_path / "noweights")
    (directory / "sae_weights.safetensors").unlink()
    assert _error(directory).endswith(
        "sae_weights.safetensors: missing; an SAE directory holds cfg.json and sae_weights.safetensors"
    )


def test_pickled_weights_refused(tmp_path):
    directory = write_sae(tmp_path / "pickled")
    (directory / "sae_weights.safetensors").unlink()
    torch.save(make_weights("standard"), directory / "sae_weights.pt")
    message = _error(directory)
    assert "pickled weights (sae_weights.pt) are refused: safetensors only" in message


def test_malformed_cfg_and_weights(tmp_path):
    directory = write_sae(tmp_path / "bad")
    (directory / "cfg.json").write_text("{not json")
    assert "cfg.json: not valid JSON" in _error(directory)
    (directory / "cfg.json").write_text("[1, 2]")
    assert "cfg.json: expected a JSON object, got list" in _error(directory)
    directory = write_sae(tmp_path / "bad2")
    (directory / "sae_weights.safetensors").write_bytes(b"\x80\x04 this is a pickle")
    assert "sae_weights.safetensors: not a readable safetensors file" in _error(directory)


@pytest.mark.parametrize(
    "options,expected",
    [
        ({"architecture": "matryoshka"}, "architecture 'matryoshka' is not supported (supported: standard, jumprelu"),
        ({"d_in": 0}, "'d_in' must be a positive integer, got 0"),
        ({"d_sae": "many"}, "'d_sae' must be a positive integer, got 'many'"),
        ({"metadata": {"sae_lens_version": "6.0.0"}}, "'hook_name' (the TransformerLens hook the SAE reads)"),
        (
            {"normalize_activations": "expected_average_only_in"},
            "normalize_activations 'expected_average_only_in' is not supported: its scaling factor is not stored",
        ),
        ({"normalize_activations": "covariance_whitening"}, "'covariance_whitening' is not supported"),
        ({"normalize_activations": "sphere"}, "normalize_activations 'sphere' is not supported (supported: none"),
        ({"reshape_activations": "hook_z"}, "reshape_activations 'hook_z' is not supported"),
        ({"dtype": "int8"}, "dtype 'int8' is not supported"),
        ({"activation_fn": "tanh-relu"}, "activation_fn 'tanh-relu' is not supported"),
        ({"apply_b_dec_to_input": "yes"}, "'apply_b_dec_to_input' must be true or false"),
    ],
)
def test_unsupported_options_named(tmp_path, options, expected):
    directory = write_sae(tmp_path / "sae", "standard", **options)
    message = _error(directory)
    assert expected in message and str(directory / "cfg.json") in message


def test_topk_k_checked(tmp_path):
    assert "k = 99 exceeds d_sae = 24" in _error(write_sae(tmp_path / "a", "topk", k=99))


def test_weights_must_fit_the_config(tmp_path):
    weights = make_weights("standard")
    directory = write_sae(tmp_path / "shape", "standard", weights, d_sae=D_SAE + 1)
    assert "tensor W_enc has shape (8, 24), expected (8, 25)" in _error(directory)
    directory = write_sae(tmp_path / "arch", "jumprelu", weights)
    assert "a 'jumprelu' SAE has the tensors W_enc, b_enc, W_dec, b_dec, threshold; missing threshold" in _error(
        directory
    )
    directory = write_sae(tmp_path / "extra", "standard", weights | {"bonus": torch.zeros(3)})
    assert "unexpected bonus" in _error(directory)


def test_release_without_sae_lens(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sae_lens(name, *args, **kwargs):
        if name == "sae_lens" or name.startswith("sae_lens."):
            raise ImportError("no sae_lens")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sae_lens)
    with pytest.raises(SAEError) as info:
        saes.load_release("gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82")
    assert "needs the 'sae-lens' package, which is not installed" in str(info.value)
    assert "'gemma-scope-2b-pt-res'" in str(info.value)


@pytest.mark.parametrize("architecture,options", CASES[::2])
def test_release_form_converts_sae_lens_objects_exactly(tmp_path, monkeypatch, architecture, options):
    """``release:`` goes through sae_lens.SAE.from_pretrained (local cache only); its SAE object is converted
    field by field. Here from_pretrained returns an SAE loaded from a directory (no hub access)."""
    sae_lens = pytest.importorskip("sae_lens")
    directory = write_sae(tmp_path / "sae", architecture, **options)
    calls = []

    def from_pretrained(release, sae_id, device="cpu", **kwargs):
        import os

        from huggingface_hub import constants

        calls.append((release, sae_id, os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE))
        return sae_lens.SAE.load_from_disk(str(directory))

    monkeypatch.setattr(sae_lens.SAE, "from_pretrained", from_pretrained)
    ours = saes.load_release("some-release", "some/id")
    assert calls == [("some-release", "some/id", "1", True)]  # offline: nothing is downloaded
    theirs = sae_lens.SAE.load_from_disk(str(directory))
    x = _inputs(seed=4)
    with torch.no_grad():
        f = theirs.encode(x)
        assert (ours.encode(x) - f).abs().max() <= 1e-6
        assert (ours.decode(ours.encode(x), x) - theirs.decode(f)).abs().max() <= 1e-6
    assert ours.hook_name == "blocks.1.hook_resid_pre" and ours.config.architecture == architecture


def test_release_not_in_the_cache_is_an_error():
    pytest.importorskip("sae_lens")
    with pytest.raises(SAEError) as info:
        saes.load_release("no-such-release", "x")
    assert "release 'no-such-release', id 'x': sae-lens could not load it from the local cache" in str(info.value)
