"""Loading models for interptest: one path, ``TransformerBridge.boot_transformers``, for every source.

* ``"interptest-tiny"``, ``"interptest-ioi"`` -- the reference checkpoints shipped inside the package
  (``interptest/zoo``);
* a local directory in Hugging Face ``save_pretrained`` format (``config.json`` + ``model.safetensors``);
* a Hugging Face / TransformerLens model name (``gpt2``, ``EleutherAI/pythia-70m``, aliases such as
  ``gpt2-small``), served from the local Hugging Face cache, or downloaded when the hub is reachable.

Everything a user can get wrong raises a one-line :class:`interptest.errors.ModelNotAvailable`.
Weights load from safetensors only (pickle checkpoints are refused) and ``trust_remote_code`` is never
enabled.  torch and transformer_lens are imported lazily, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interptest.errors import ModelNotAvailable
from interptest.tl_compat import bridge_class, device_map_refusal, model_aliases, tl_version
from interptest.zoo import SHIPPED_MODELS, shipped_model_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformer_lens.model_bridge import TransformerBridge  # where 3.x and 4.x both have it

__all__ = [
    "TINY_MODEL_NAME",
    "available_cpus",
    "configure_threads",
    "resolve_device",
    "resolve_dtype",
    "model_context_length",
    "load_model",
]

TINY_MODEL_NAME = "interptest-tiny"

_SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.bin", "model.pt", "model.pth", "model.ckpt")
_HOW_TO_GET = (
    "there is no local directory of that name either; {hint}pre-download it on a machine with network "
    "(e.g. `hf download {name}` or `huggingface-cli download {name}`) into the Hugging Face cache, or name a "
    "local save_pretrained directory instead"
)
# A hub id: "name" or "org/name" (letters, digits, '-', '_', '.'); anything else is taken as a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")

# ------------------------------------------------------------------ threads, device, dtype


def available_cpus() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``), falling back to ``os.cpu_count``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count and return it.

    ``None`` picks half the CPUs available to the process (at least one, at most torch's current
    setting): measured on a 2-core machine, 2 intra-op threads made a sweep 5-8x *slower* whenever
    another process held a core (a trainer, an xdist worker), while 1 thread lost little on an idle
    machine for models of this size. An explicit ``n`` is capped at the CPUs available to the process.
    (The plugin calls this for ``--interp-threads``.)
    """
    import torch

    cpus = available_cpus()
    if n is None:
        n = max(1, min(cpus // 2, torch.get_num_threads()))
    else:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"thread count must be a positive integer, got {n!r}")
        n = min(n, cpus)
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


def resolve_device(device: Any = None) -> str:
    """``None``/``"auto"`` -> ``"cuda"`` if available, else ``"mps"`` if available, else ``"cpu"``."""
    import torch

    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    return str(device)


def device_problem(device: str) -> str | None:
    """Why torch cannot use ``device`` here (a message naming the cause and the fix), or None."""
    import torch

    kind = str(device).split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        if torch.version.cuda is None:
            why = f"CUDA is not available in this torch build (torch {torch.__version__} is a CPU-only build)"
        else:
            why = (
                f"torch {torch.__version__} has CUDA support but no CUDA device is visible "
                f"(torch.cuda.is_available() is False; CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!s})"
            )
        return f"device {device!r}: {why}; use device 'cpu' or 'auto' (pytest: --interp-device cpu or auto)"
    if kind == "cuda" and ":" in str(device):
        index = str(device).split(":", 1)[1]
        if index.isdigit() and int(index) >= torch.cuda.device_count():
            return (
                f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA device(s) (cuda:0 to "
                f"cuda:{torch.cuda.device_count() - 1}); use one of those, 'cpu' or 'auto'"
            )
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return (
                f"device {device!r}: MPS is not available in this torch build or on this machine; use device "
                "'cpu' or 'auto' (pytest: --interp-device cpu or auto)"
            )
    return None


_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def resolve_dtype(dtype: Any = None) -> torch.dtype:
    """``None``/``"float32"``/``"bfloat16"``/``"float16"`` (or a ``torch.dtype``) -> ``torch.dtype``."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
        return dtype
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use 'float32', 'bfloat16' or 'float16'")
    return getattr(torch, _DTYPES[key])


def model_context_length(model: Any) -> int:
    """The model's maximum context length in tokens (``cfg.n_ctx``)."""
    return int(model.cfg.n_ctx)


# ------------------------------------------------------------------ quiet environment


_QUIET_ENV = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
}


@contextlib.contextmanager
def _quiet():
    """Silence TransformerLens / transformers / hub progress bars and chatter while loading, and put
    everything back afterwards: environment variables, transformers' verbosity and progress bars, the
    loggers' levels (a load does not change global state nobody asked for)."""
    import logging

    tf_logging = None
    try:  # imported first: libraries that read these variables at import see the caller's environment
        import transformers

        tf_logging = transformers.logging
        verbosity, bars = tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()
    except Exception:  # pragma: no cover - transformers missing or changed: nothing to silence
        tf_logging = None
    saved_env = {k: os.environ.get(k) for k in _QUIET_ENV}
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    loggers = [logging.getLogger(n) for n in ("transformer_lens", "huggingface_hub")]
    levels = [lg.level for lg in loggers]
    if tf_logging is not None:
        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for k, old in saved_env.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if tf_logging is not None:
            tf_logging.set_verbosity(verbosity)
            if bars:
                tf_logging.enable_progress_bar()


# ------------------------------------------------------------------ sources


def _check_local_dir(path: Path, shown: str) -> None:
    """Raise a one-line ModelNotAvailable unless ``path`` is a loadable safetensors HF directory."""
    if not path.exists():
        raise ModelNotAvailable(
            f"model directory {shown!r} does not exist; expected a Hugging Face save_pretrained "
            f"directory (config.json + model.safetensors + tokenizer files) or a model name such as 'gpt2'"
        )
    if not path.is_dir():
        raise ModelNotAvailable(
            f"model path {shown!r} is not a directory; expected a Hugging Face save_pretrained directory "
            f"(config.json + model.safetensors + tokenizer files)"
        )
    has_config = (path / "config.json").is_file()
    if any((path / f).is_file() for f in _SAFETENSORS):
        if not has_config:
            raise ModelNotAvailable(
                f"model directory {shown!r} has no config.json; expected a Hugging Face "
                f"save_pretrained directory (config.json + model.safetensors)"
            )
        return
    pickles = sorted(
        {
            p.name
            for p in path.iterdir()
            if p.is_file() and (p.name in _PICKLES or p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        }
    )
    if pickles:
        raise ModelNotAvailable(
            f"model directory {shown!r} holds only a pickle checkpoint ({', '.join(pickles)}); interptest "
            f"refuses pickle checkpoints - convert it to safetensors (e.g. "
            f"model.save_pretrained(dir, safe_serialization=True)) so the directory has model.safetensors"
        )
    raise ModelNotAvailable(
        f"model directory {shown!r} has no weights; expected model.safetensors "
        f"(a Hugging Face save_pretrained directory with config.json)"
    )


def _official_name(name: str) -> str:
    """Resolve a TransformerLens alias (``gpt2-small`` -> ``gpt2``) without importing transformer_lens
    (the installed version's table: :func:`interptest.tl_compat.model_aliases`)."""
    aliases = model_aliases()
    lowered = name.lower()
    for official in aliases:
        if name == official:
            return official
    for official, names in aliases.items():
        if name in names:
            return official
    for official, names in aliases.items():
        if lowered == official.lower() or lowered in (a.lower() for a in names):
            return official
    return name


def _hub_offline() -> bool:
    val = os.environ.get("HF_HUB_OFFLINE", "") or os.environ.get("TRANSFORMERS_OFFLINE", "")
    if val.strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return False


def _hub_reachable(timeout: float = 2.0) -> bool:
    """One quick TCP connect to the hub endpoint, so an offline machine fails in ~ms, not after retries."""
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except Exception:  # pragma: no cover
        endpoint = "https://huggingface.co"
    url = urlparse(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cached(repo: str, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo, filename), str)
    except Exception:
        return False


def _known_local_names() -> list[str]:
    """The model names that load here without a network: the shipped models and the hub cache's models."""
    names = [n for n in SHIPPED_MODELS if shipped_model_dir(n).is_dir()]  # a name whose checkpoint is packaged
    try:
        from huggingface_hub import constants

        cache = Path(constants.HF_HUB_CACHE)
        names += sorted(p.name[len("models--") :].replace("--", "/") for p in cache.glob("models--*"))
    except Exception:  # pragma: no cover - no hub library or unreadable cache
        pass
    return names


def _did_you_mean(name: str) -> str:
    """ "did you mean 'interptest-tiny'? " when a locally known model name is close to ``name``."""
    import difflib

    known = _known_local_names()
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75) or difflib.get_close_matches(
        name.lower(), [k.lower() for k in known], n=1, cutoff=0.75
    )
    if not close:
        return ""
    match = next(k for k in known if k.lower() == close[0].lower())
    return f"did you mean {match!r} (models available here: {', '.join(known)})? If not, "


def _ensure_hub_model(name: str, official: str) -> None:
    """Make sure config and safetensors weights of hub model ``official`` are in the local cache."""
    shown = name if name == official else f"{name} ({official})"
    how = _HOW_TO_GET.format(name=official, hint=_did_you_mean(name))
    has_cfg = _cached(official, "config.json")
    has_weights = any(_cached(official, f) for f in _SAFETENSORS)
    if has_cfg and has_weights:
        return
    if has_cfg and any(_cached(official, f) for f in _PICKLES) and (_hub_offline() or not _hub_reachable()):
        raise ModelNotAvailable(
            f"model {shown!r} is cached only as a pickle checkpoint (pytorch_model.bin); interptest refuses "
            f"pickle checkpoints - download its model.safetensors (e.g. `hf download {official} "
            f"model.safetensors`) or convert it to safetensors in a local directory"
        )
    if _hub_offline():
        raise ModelNotAvailable(
            f"model {shown!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {how}"
        )
    if not _hub_reachable():
        raise ModelNotAvailable(
            f"model {shown!r} is not in the local Hugging Face cache and the hub is not reachable; {how}"
        )
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        hf_hub_download(official, "config.json")
    except Exception as exc:
        raise ModelNotAvailable(
            f"model {shown!r} could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}: {_first_line(exc)}); check the name, or {how}"
        ) from None
    try:
        snapshot_download(
            official, allow_patterns=["model.safetensors", "model.safetensors.index.json", "model-*.safetensors"]
        )
    except Exception as exc:
        raise ModelNotAvailable(
            f"model {shown!r}: safetensors weights could not be fetched "
            f"({type(exc).__name__}: {_first_line(exc)}); {how}"
        ) from None
    if not any(_cached(official, f) for f in _SAFETENSORS):
        raise ModelNotAvailable(
            f"model {shown!r} has no safetensors weights on the hub; interptest refuses "
            f"pickle checkpoints - convert it to safetensors in a local directory"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _looks_like_path(name: str) -> bool:
    """Not a hub id ("name" or "org/name"): "./x", "/abs/x", "~/x", "a/b/c", "x/" are paths."""
    return not _HUB_ID.match(name)


# ------------------------------------------------------------------ the loader


def parse_device_map(device_map: Any) -> Any:
    """``"auto"``/``"balanced"``/... as is; a dict as is; a JSON object string (the ini / command-line
    form, e.g. ``{"": "cpu"}``) as a dict; anything else a ValueError saying what is wrong (the option
    and the loader each name their source before it)."""
    if isinstance(device_map, dict):
        return device_map
    if isinstance(device_map, str):
        text = device_map.strip()
        if text.startswith(("{", "[", '"')):
            try:
                parsed = json.loads(text)
            except ValueError as exc:
                raise ValueError(f"device_map {text!r} is not valid JSON ({exc})") from None
            if not isinstance(parsed, dict):
                raise ValueError(f"device_map must be a JSON object, got {text!r}")
            return parsed
        if text in ("auto", "balanced", "balanced_low_0", "sequential"):
            return text
        raise ValueError(
            f"unknown device_map {text!r}; expected auto, balanced, "
            "balanced_low_0, sequential or a JSON object of module name to device"
        )
    raise ValueError(f"device_map must be a string or a dict, got {device_map!r}")


def _parse_device_map(device_map: Any, name: str) -> Any:
    try:
        return parse_device_map(device_map)
    except ValueError as problem:
        raise ModelNotAvailable(f"model {name!r}: {problem}") from None


def load_model(
    name_or_path: str | os.PathLike,
    device: Any = None,
    dtype: Any = None,
    *,
    device_map: Any = None,
    threads: int | None = None,
) -> TransformerBridge:
    """Load a model as a TransformerLens ``TransformerBridge`` (3.x or 4.x, whichever is installed) in eval mode.

    Loading changes no global state: torch's thread count is left alone unless ``threads`` is given
    (the plugin sets it from ``--interp-threads``), and the quieting of progress bars and logs during
    the load is undone afterwards.

    Args:
        name_or_path: ``"interptest-tiny"`` or ``"interptest-ioi"`` (shipped), a local Hugging Face
            ``save_pretrained`` directory with safetensors weights, or a Hugging Face / TransformerLens model
            name (``"gpt2"``, ``"EleutherAI/pythia-70m"``, ``"gpt2-small"``).
        device: ``None``/``"auto"`` (cuda, else mps, else cpu) or any torch device string.
        dtype: ``None``/``"float32"``/``"bfloat16"``/``"float16"`` or a ``torch.dtype``.
        device_map: a Hugging Face ``device_map`` (``"auto"``, ``"balanced"``, or a dict of module name
            to device), passed to ``from_pretrained`` through the bridge; the layers may then live on
            several devices (inputs go to the embedding's). Excludes ``device``.
        threads: torch's intra-op thread count to set (:func:`configure_threads`); ``None`` leaves it.

    Raises:
        ModelNotAvailable: with a one-line message for a missing directory, a directory without
            (safetensors) weights, a pickle-only checkpoint, or a model that is neither cached nor
            downloadable.
    """
    if threads is not None:
        configure_threads(threads)
    with _quiet():
        return _load(name_or_path, device, dtype, device_map)


def _load(name_or_path, device, dtype, device_map) -> TransformerBridge:
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ModelNotAvailable(
            f"model {name_or_path!r} is not a model name or directory; expected "
            f"'interptest-tiny', a Hugging Face model name or a save_pretrained directory"
        )
    name = name_or_path.strip()
    try:
        torch_dtype = resolve_dtype(dtype)
    except ValueError as exc:
        raise ModelNotAvailable(f"model {name!r}: {exc}") from None

    local: Path | None = None
    official = name
    if name in SHIPPED_MODELS:
        local = shipped_model_dir(name)
        _check_local_dir(local, f"{name} (packaged at {local})")
    else:
        expanded = Path(os.path.expanduser(name))
        if expanded.is_dir() or _looks_like_path(name):
            local = expanded
            _check_local_dir(local, name)
        else:
            official = _official_name(name)
            _ensure_hub_model(name, official)

    if device_map is not None:
        if device not in (None, "auto") and not (isinstance(device, str) and device.strip().lower() == "auto"):
            raise ModelNotAvailable(f"model {name!r}: give either device ({device!r}) or device_map, not both")
        device_map = _parse_device_map(device_map, name)
        dev = None
    else:
        dev = resolve_device(device)
        problem = device_problem(dev)
        if problem:
            raise ModelNotAvailable(f"model {name!r} cannot be loaded on {problem}")
    TransformerBridge = bridge_class()
    target = str(local) if local is not None else official
    try:
        kwargs = {"device_map": device_map} if device_map is not None else {"device": dev}
        model = TransformerBridge.boot_transformers(target, dtype=torch_dtype, trust_remote_code=False, **kwargs)
    except ModelNotAvailable:
        raise
    except Exception as exc:
        refusal = device_map_refusal(exc, name) if device_map is not None else None
        if refusal is not None:
            raise ModelNotAvailable(refusal) from exc
        unsupported = _unsupported_architecture(exc, local)
        if unsupported is not None:
            raise ModelNotAvailable(
                f"model {name!r}: its architecture {unsupported} is not supported by TransformerBridge in the "
                f"installed TransformerLens {tl_version()}; interptest loads every model through the bridge"
            ) from exc
        raise ModelNotAvailable(
            f"model {name!r} could not be loaded ({type(exc).__name__}: "
            f"{_first_line(exc)}); expected a Hugging Face GPT-style checkpoint with "
            f"config.json, model.safetensors and tokenizer files"
        ) from exc
    model.eval()
    _never_padded(model)
    return model


def _never_padded(model) -> None:
    """Turn transformers' padding heuristic off on this model's own modules.

    A Hugging Face model given ``input_ids`` without an ``attention_mask`` warns that they "may be padded"
    whenever the first or last token is the pad token — true of every prompt of a model whose BOS is its
    pad token (interptest-tiny, whose BOS/EOS/pad are all 0), so every test run and CLI call printed it.
    interptest never pads: each forward it runs is a batch of prompts of one token count (a spec's prompts
    must tokenize alike, the bridge pads only lists of strings, which interptest never passes), so there is
    no padding for a mask to hide and the guess is always wrong here. The check is replaced on the
    instances of this model only, nothing global: other models, and transformers' own check, are as before."""
    from transformers import PreTrainedModel

    hf_model = getattr(model, "original_model", None)
    if not isinstance(hf_model, PreTrainedModel):
        return
    for module in hf_model.modules():
        if isinstance(module, PreTrainedModel):
            module.warn_if_padding_and_no_attention_mask = _no_padding_check  # type: ignore[method-assign]


def _no_padding_check(input_ids, attention_mask) -> None:
    """interptest's inputs are never padded (see :func:`_never_padded`): nothing to warn about."""


def _unsupported_architecture(exc: BaseException, local: Path | None) -> str | None:
    """The architecture TransformerBridge refused, when ``exc`` is that refusal (3.x: "Unsupported
    architecture: X" or "Could not determine supported architecture ... Config architectures: [...]"; 4.x
    the same words): from the checkpoint's config.json where it is local, else from the message."""
    text = str(exc)
    if "supported architecture" not in text.lower():
        return None
    if local is not None:
        try:
            names = json.loads((local / "config.json").read_text()).get("architectures") or []
        except (OSError, ValueError, AttributeError):
            names = []
        if names:
            return ", ".join(map(str, names))
    found = re.search(r"Config architectures: \[([^\]]*)\]", text) or re.search(
        r"Unsupported architecture: (\S+)", text
    )
    return found.group(1).replace("'", "") if found and found.group(1) else "(unnamed in its config)"
