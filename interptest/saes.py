"""Sparse autoencoders (SAEs) in SAELens's on-disk layout, loaded without SAELens.

A directory holds ``cfg.json`` and ``sae_weights.safetensors`` (``sparsity.safetensors``, when present,
is not read). The encoders follow SAELens 6's inference classes field by field:

* ``standard``: f = ReLU((x' − b_dec·a) W_enc + b_enc)
* ``jumprelu``: h = (x' − b_dec·a) W_enc + b_enc; f = ReLU(h)·[h > threshold]
* ``topk``:     h = (x' − b_dec·a) W_enc + b_enc (× ‖W_dec‖ rows when ``rescale_acts_by_decoder_norm``);
                f = ReLU of the k largest h, 0 elsewhere
* ``gated``:    g = (x' − b_dec·a) W_enc + b_gate; m = (x' − b_dec·a)(W_enc·exp(r_mag)) + b_mag;
                f = [g > 0]·ReLU(m)

with a = ``apply_b_dec_to_input`` and x' = x after the input normalization, and every decoder
x̂ = norm_out(f W_dec + b_dec) (topk with ``rescale_acts_by_decoder_norm``: f / ‖W_dec‖ rows first).
``normalize_activations``: ``none``; ``constant_norm_rescale`` (x' = x·√d_in/‖x‖, x̂ divided by the same
factor); ``layer_norm`` (x' = (x − μ)/(σ + 1e-5) with σ the unbiased standard deviation, x̂·σ + μ).
``expected_average_only_in`` and ``covariance_whitening`` are refused: their factor is not stored in the
SAE's files (SAELens folds it in from its release table, or applies nothing when it loads from disk).
The out-normalization of a decode uses the statistics of the input the features were encoded from, so
:meth:`SAE.decode` takes that input.

Safetensors only: a directory with pickled weights (``.pt``, ``.pth``, ``.bin``, ``.ckpt``, ``.pkl``) and no
``sae_weights.safetensors`` is refused. torch is imported where it is used: reading a config does not
need it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interptest.errors import InterpError

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
PICKLED = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")

ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "standard": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "jumprelu": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
    "topk": ("W_enc", "b_enc", "W_dec", "b_dec"),
    "gated": ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"),
}
NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm")
REFUSED_NORMALIZATIONS = {
    "expected_average_only_in": (
        "its scaling factor is not stored in the SAE's files (SAELens folds it in from its release table, "
        "and applies nothing when it loads from disk); fold it into the weights "
        "(sae.fold_activation_norm_scaling_factor) and save with normalize_activations 'none'"
    ),
    "covariance_whitening": (
        "its whitening statistics are not stored in the SAE's files; fold them into the weights "
        "(sae.fold_activation_whitening) and save with normalize_activations 'none'"
    ),
}
DTYPES = ("float32", "float64", "float16", "bfloat16")
_DTYPE_ALIASES = {"torch.float32": "float32", "torch.float64": "float64", "torch.float16": "float16"}
_DTYPE_ALIASES |= {"torch.bfloat16": "bfloat16", "float": "float32", "double": "float64", "half": "float16"}
# SAELens's config keys that name no change to the numbers (or one this module reads above).
LAYER_NORM_EPS = 1e-5


class SAEError(InterpError):
    """An SAE cannot be loaded or does not fit: names the file and what was expected."""


@dataclass(frozen=True)
class SAEConfig:
    """What changes an SAE's numbers, read from its ``cfg.json``."""

    architecture: str
    d_in: int
    d_sae: int
    hook_name: str
    dtype: str = "float32"
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    k: int | None = None  # topk
    rescale_acts_by_decoder_norm: bool = False  # topk
    model_name: str | None = None
    source: str = ""  # where it was read from, for messages


@dataclass(frozen=True)
class SAESource:
    """One entry of a spec's ``saes:`` key: a name and where the SAE comes from (a directory, or a
    SAELens release and id), with its config when it could be read without loading weights."""

    name: str
    path: str | None = None  # resolved directory
    release: str | None = None
    sae_id: str | None = None
    config: SAEConfig | None = None  # read at spec time for a path (release: None until loaded)
    spec_path: str = "<spec>"  # the spec file and line that declared it, for messages
    line: int | None = None

    def describe(self) -> str:
        return self.path if self.path is not None else f"release {self.release!r}, id {self.sae_id!r}"

    def load(self) -> SAE:
        if self.path is not None:
            return _load_cached(self.path)
        assert self.release is not None and self.sae_id is not None, "a release source has both"
        key = ("release", self.release, self.sae_id)
        if key not in _CACHE:
            if len(_CACHE) >= CACHED_SAES:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = load_release(self.release, self.sae_id)
        return _CACHE[key]


_CACHE: dict = {}
CACHED_SAES = 8


def _load_cached(directory: str) -> SAE:
    """:func:`load`, once per directory and modification time of its files."""
    root = Path(directory)
    stamp = (
        tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.iterdir()) if p.is_file())
        if root.is_dir()
        else ()
    )
    key = (str(root.resolve()), stamp)
    if key not in _CACHE:
        if len(_CACHE) >= CACHED_SAES:  # the oldest goes first
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = load(root)
    return _CACHE[key]


def _flat_config(raw: dict) -> dict:
    """SAELens 6 keeps model/hook fields under ``metadata``; earlier versions at the top level (with
    ``hook_point`` for ``hook_name``, and topk as ``activation_fn: topk`` with ``activation_fn_kwargs.k``)."""
    out = dict(raw)
    metadata = raw.get("metadata")
    if isinstance(metadata, dict):
        for key, value in metadata.items():
            out.setdefault(key, value)
    if "hook_name" not in out and "hook_point" in out:
        out["hook_name"] = out["hook_point"]
    if "hook_head_index" not in out and "hook_point_head_index" in out:
        out["hook_head_index"] = out["hook_point_head_index"]
    if "activation_fn" not in out and "activation_fn_str" in out:
        out["activation_fn"] = out["activation_fn_str"]
    kwargs = out.get("activation_fn_kwargs")
    if out.get("activation_fn") == "topk" and isinstance(kwargs, dict) and kwargs.get("k") is not None:
        out.setdefault("architecture", "topk")
        if out["architecture"] == "topk":
            out["k"] = kwargs["k"]
    out.setdefault("architecture", "standard")
    if isinstance(out.get("normalize_activations"), bool):  # SAELens's backwards compatibility
        out["normalize_activations"] = "expected_average_only_in" if out["normalize_activations"] else "none"
    if out.get("normalize_activations") is None:
        out["normalize_activations"] = "none"
    return out


def _positive_int(cfg: dict, key: str, where: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SAEError(f"{where}: '{key}' must be a positive integer, got {value!r}")
    return value


def parse_config(raw: Any, where: str) -> SAEConfig:
    """Validate a ``cfg.json`` dictionary (``where`` names it in messages)."""
    if not isinstance(raw, dict):
        raise SAEError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    cfg = _flat_config(raw)
    architecture = cfg["architecture"]
    if architecture not in ARCHITECTURES:
        raise SAEError(
            f"{where}: architecture {architecture!r} is not supported (supported: {', '.join(ARCHITECTURES)})"
        )
    d_in, d_sae = _positive_int(cfg, "d_in", where), _positive_int(cfg, "d_sae", where)
    hook = cfg.get("hook_name")
    if not isinstance(hook, str) or not hook:
        raise SAEError(f"{where}: 'hook_name' (the TransformerLens hook the SAE reads) is missing")
    norm = cfg["normalize_activations"]
    if norm in REFUSED_NORMALIZATIONS:
        raise SAEError(f"{where}: normalize_activations {norm!r} is not supported: {REFUSED_NORMALIZATIONS[norm]}")
    if norm not in NORMALIZATIONS:
        raise SAEError(
            f"{where}: normalize_activations {norm!r} is not supported (supported: {', '.join(NORMALIZATIONS)})"
        )
    dtype = _DTYPE_ALIASES.get(str(cfg.get("dtype", "float32")), str(cfg.get("dtype", "float32")))
    if dtype not in DTYPES:
        raise SAEError(f"{where}: dtype {cfg.get('dtype')!r} is not supported (supported: {', '.join(DTYPES)})")
    reshape = cfg.get("reshape_activations", "none")
    if reshape not in (None, "none"):
        raise SAEError(
            f"{where}: reshape_activations {reshape!r} is not supported (SAEs on per-head hook_z "
            "activations): only SAEs on a whole activation ('none')"
        )
    if cfg.get("hook_head_index") is not None:
        raise SAEError(f"{where}: hook_head_index {cfg['hook_head_index']!r} is not supported (one head's SAE)")
    activation = cfg.get("activation_fn", "relu")
    if activation not in (None, "relu", "topk"):
        raise SAEError(f"{where}: activation_fn {activation!r} is not supported (SAELens 6 applies ReLU)")
    if cfg.get("finetuning_scaling_factor"):
        raise SAEError(f"{where}: finetuning_scaling_factor is not supported (SAELens 6 no longer applies it)")
    apply_b_dec = cfg.get("apply_b_dec_to_input", True)
    if not isinstance(apply_b_dec, bool):
        raise SAEError(f"{where}: 'apply_b_dec_to_input' must be true or false, got {apply_b_dec!r}")
    k = None
    rescale = False
    if architecture == "topk":
        k = _positive_int(cfg | {"k": cfg.get("k", 100)}, "k", where)  # SAELens's default k
        if k > d_sae:
            raise SAEError(f"{where}: k = {k} exceeds d_sae = {d_sae}")
        rescale = cfg.get("rescale_acts_by_decoder_norm", False)
        if not isinstance(rescale, bool):
            raise SAEError(f"{where}: 'rescale_acts_by_decoder_norm' must be true or false, got {rescale!r}")
    model_name = cfg.get("model_name")
    return SAEConfig(
        architecture,
        d_in,
        d_sae,
        hook,
        dtype,
        apply_b_dec,
        norm,
        k,
        rescale,
        model_name if isinstance(model_name, str) else None,
        where,
    )


def read_config(directory: Path | str) -> SAEConfig:
    """An SAE directory's validated ``cfg.json``, its weights file checked present and not pickled (no
    torch needed: the weights are read by :func:`load`)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SAEError(f"{directory}: no such SAE directory (expected {CFG_FILENAME} and {WEIGHTS_FILENAME})")
    path = directory / CFG_FILENAME
    if not path.is_file():
        raise SAEError(f"{path}: missing; an SAE directory holds {CFG_FILENAME} and {WEIGHTS_FILENAME}")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SAEError(f"{path}: not valid JSON ({error})") from None
    config = parse_config(raw, str(path))
    _weights_path(directory)
    return config


def _weights_path(directory: Path) -> Path:
    path = directory / WEIGHTS_FILENAME
    if path.is_file():
        return path
    pickled = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLED)
    if pickled:
        raise SAEError(
            f"{directory}: pickled weights ({', '.join(pickled)}) are refused: safetensors only (unpickling can run "
            f"code); convert them to {WEIGHTS_FILENAME}"
        )
    raise SAEError(f"{path}: missing; an SAE directory holds {CFG_FILENAME} and {WEIGHTS_FILENAME}")


def load(directory: Path | str) -> SAE:
    """The SAE in ``directory`` (SAELens's layout), its weights in the config's dtype."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config = read_config(directory)
    path = _weights_path(directory)
    try:
        weights = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise SAEError(f"{path}: not a readable safetensors file ({error})") from None
    return SAE(config, weights, str(path))


def load_release(release: str, sae_id: str) -> SAE:
    """An SAE of a SAELens release, through ``sae-lens`` from the local Hugging Face cache only (nothing is
    downloaded); its normalization factor, where the release has one, is folded in as SAELens does."""
    import os

    try:
        import sae_lens  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        raise SAEError(
            f"release {release!r}: loading an SAE by release needs the 'sae-lens' package, which is not installed "
            "(it cannot be installed beside TransformerLens 4); save the SAE in SAELens's layout "
            "(sae.save_model(dir)) and name it with 'path:'"
        ) from None
    from huggingface_hub import constants as hub  # huggingface_hub reads HF_HUB_OFFLINE once, at import

    previous, previous_flag = os.environ.get("HF_HUB_OFFLINE"), hub.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub.HF_HUB_OFFLINE = True
    try:
        from sae_lens import SAE as LensSAE  # type: ignore[import-not-found,unused-ignore]

        lens = LensSAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as error:  # sae-lens raises many kinds; all mean the same to the spec
        raise SAEError(
            f"release {release!r}, id {sae_id!r}: sae-lens could not load it from the local cache "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); nothing is downloaded "
            "at run time: fetch it once beforehand"
        ) from None
    finally:
        hub.HF_HUB_OFFLINE = previous_flag
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
    where = f"release {release!r}, id {sae_id!r}"
    raw = lens.cfg.to_dict()
    config = parse_config(raw, where)
    weights = {name: tensor.detach().cpu() for name, tensor in lens.state_dict().items()}
    return SAE(config, weights, where)


class SAE:
    """An SAE's config and weights; :meth:`encode` / :meth:`decode` as SAELens computes them."""

    def __init__(self, config: SAEConfig, weights: dict, where: str = ""):
        import torch

        self.config = config
        where = where or config.source
        names = ARCHITECTURES[config.architecture]
        weights = dict(weights)
        scaling = weights.pop("scaling_factor", None)  # older SAELens files: all ones, which SAELens drops
        if scaling is not None and not bool(torch.all(scaling == 1)):
            raise SAEError(f"{where}: a 'scaling_factor' other than ones is not supported (finetuning scaling)")
        missing = [n for n in names if n not in weights]
        extra = sorted(set(weights) - set(names))
        if missing or extra:
            raise SAEError(
                f"{where}: a {config.architecture!r} SAE has the tensors {', '.join(names)}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unexpected {', '.join(extra)}" if extra else "")
            )
        d_in, d_sae = config.d_in, config.d_sae
        shapes = {
            "W_enc": (d_in, d_sae),
            "W_dec": (d_sae, d_in),
            "b_dec": (d_in,),
            "b_enc": (d_sae,),
            "threshold": (d_sae,),
            "b_gate": (d_sae,),
            "r_mag": (d_sae,),
            "b_mag": (d_sae,),
        }
        dtype = getattr(torch, config.dtype)
        self.weights: dict = {}
        for name in names:
            tensor = weights[name]
            if tuple(tensor.shape) != shapes[name]:
                raise SAEError(
                    f"{where}: tensor {name} has shape {tuple(tensor.shape)}, expected {shapes[name]} "
                    f"(d_in = {d_in}, d_sae = {d_sae} in cfg.json)"
                )
            if not tensor.is_floating_point():
                raise SAEError(f"{where}: tensor {name} is {tensor.dtype}, expected floating point")
            self.weights[name] = tensor.to(dtype)
        self.dtype = dtype

    @property
    def d_in(self) -> int:
        return self.config.d_in

    @property
    def d_sae(self) -> int:
        return self.config.d_sae

    @property
    def hook_name(self) -> str:
        return self.config.hook_name

    def to(self, device) -> SAE:
        """Move the weights to ``device`` (in place); returns self."""
        self.weights = {name: tensor.to(device) for name, tensor in self.weights.items()}
        return self

    def _norm_in(self, x):
        """x' and the statistics the out-normalization needs (None for 'none')."""
        norm = self.config.normalize_activations
        if norm == "constant_norm_rescale":
            coeff = (self.config.d_in**0.5) / x.norm(dim=-1, keepdim=True)
            return x * coeff, coeff
        if norm == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            centered = x - mu
            std = centered.std(dim=-1, keepdim=True)
            return centered / (std + LAYER_NORM_EPS), (mu, std)
        return x, None

    def _norm_out(self, y, stats):
        norm = self.config.normalize_activations
        if norm == "constant_norm_rescale":
            return y / stats
        if norm == "layer_norm":
            mu, std = stats
            return y * std + mu
        return y

    def encode(self, x):
        """Feature activations [..., d_sae] of activations ``x`` [..., d_in] (in the SAE's dtype)."""
        import torch

        w = self.weights
        sae_in, _ = self._norm_in(x.to(self.dtype))
        if self.config.apply_b_dec_to_input:
            sae_in = sae_in - w["b_dec"]
        arch = self.config.architecture
        if arch == "gated":
            gate = sae_in @ w["W_enc"] + w["b_gate"]
            magnitude = sae_in @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"]
            return (gate > 0).to(self.dtype) * torch.relu(magnitude)
        hidden = sae_in @ w["W_enc"] + w["b_enc"]
        if arch == "standard":
            return torch.relu(hidden)
        if arch == "jumprelu":
            return torch.relu(hidden) * (hidden > w["threshold"]).to(self.dtype)
        if self.config.rescale_acts_by_decoder_norm:
            hidden = hidden * w["W_dec"].norm(dim=-1)
        assert self.config.k is not None, "a topk config has k"
        values, indices = torch.topk(hidden, k=self.config.k, dim=-1, sorted=False)
        return torch.zeros_like(hidden).scatter(-1, indices, values.relu())

    def decode(self, f, x=None):
        """The reconstruction [..., d_in] of features ``f``; ``x``, the activations they were encoded from,
        is needed when the SAE normalizes its input (the out-normalization reuses x's statistics)."""
        w = self.weights
        f = f.to(self.dtype)
        if self.config.architecture == "topk" and self.config.rescale_acts_by_decoder_norm:
            f = f * (1 / w["W_dec"].norm(dim=-1))
        out = f @ w["W_dec"] + w["b_dec"]
        if self.config.normalize_activations == "none":
            return out
        if x is None:
            raise ValueError(
                f"decoding with normalize_activations {self.config.normalize_activations!r} needs the input"
            )
        return self._norm_out(out, self._norm_in(x.to(self.dtype))[1])

    def split(self, x):
        """(f, ε): the features of ``x`` and the error term ε = x − decode(encode(x)), both in the SAE's
        dtype, so that decode(f, x) + ε == x up to rounding."""
        f = self.encode(x)
        return f, x.to(self.dtype) - self.decode(f, x)

    def describe(self) -> str:
        c = self.config
        extra = f", k={c.k}" if c.k is not None else ""
        return f"{c.architecture} SAE on {c.hook_name} (d_in={c.d_in}, d_sae={c.d_sae}{extra})"


def l0(f) -> float:
    """Mean number of active features per row of ``f`` [..., d_sae]."""
    return float((f != 0).float().sum(-1).mean())


def explained_variance(x, reconstruction) -> float:
    """1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over rows of ``x`` [..., d_in]."""
    x, r = x.reshape(-1, x.shape[-1]).double(), reconstruction.reshape(-1, x.shape[-1]).double()
    total = float(((x - x.mean(0)) ** 2).sum())
    return 1.0 - float(((x - r) ** 2).sum()) / total if total > 0 else math.nan
