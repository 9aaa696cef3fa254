"""The one place that knows which TransformerLens is installed and where its pieces live.

interptest runs on every TransformerLens that has ``TransformerBridge``: 3.0 through 4.x. They differ in
where things are, and in what they can do:

* ``TransformerBridge`` is ``transformer_lens.TransformerBridge`` in 4.x and only
  ``transformer_lens.model_bridge.TransformerBridge`` in 3.x; ``boot_transformers`` is attached to it by
  importing ``transformer_lens.model_bridge.sources.transformers`` in both (:func:`bridge_class`).
* The model-name alias table (``gpt2-small`` -> ``gpt2``) is a data file in 4.x
  (``tools/model_registry/data/model_aliases.json``) and a dict in 3.x
  (``transformer_lens.supported_models.MODEL_ALIASES``) (:func:`model_aliases`, read without importing
  transformer_lens, which takes seconds).
* ``HookedTransformer`` exists in 3.x only (4.0 removed it); a user's notebook model under 3.x is one, and
  interptest runs it through its generic engine (:func:`hooked_transformer_class`, :func:`is_hooked_transformer`).
* TransformerLens before 3.8 refuses a ``device_map`` that puts weights on the CPU ("multi-device support
  is GPU-only in v1"; read in the wheels: 3.2.1, 3.3.0 and 3.5.0 refuse, 3.8.1, 3.9.0 and 4.3.0 accept);
  :func:`device_map_refusal` turns that refusal into a message naming the installed version.

Every import site in the package and its tests goes through here. Importing this module imports neither
torch nor transformer_lens.
"""

from __future__ import annotations

import ast
import functools
import json
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.model_bridge import TransformerBridge

__all__ = [
    "SUPPORTED",
    "CPU_DEVICE_MAP_SINCE",
    "bridge_class",
    "cpu_device_map_supported",
    "device_map_refusal",
    "hook_for",
    "hooked_transformer_class",
    "is_bridge",
    "is_hooked_transformer",
    "model_aliases",
    "tl_version",
    "tl_version_tuple",
]

# The range interptest supports and tests (docs/models.md, "Compatibility").
SUPPORTED = "TransformerLens >= 3.0 (TransformerBridge) and < 5"


@functools.cache
def tl_version() -> str | None:
    """The installed TransformerLens's version string (``"4.3.0"``), or None when it is not installed."""
    try:
        return metadata.version("transformer_lens")
    except metadata.PackageNotFoundError:
        return None


def tl_version_tuple() -> tuple[int, ...]:
    """The installed version as integers (``(3, 2, 1)``); ``()`` when not installed. Pre-release and local
    suffixes are dropped (``"4.0.0rc1"`` -> ``(4, 0, 0)``)."""
    text = tl_version()
    if text is None:
        return ()
    parts: list[int] = []
    for piece in text.split("+")[0].split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) < len(piece):
            break
    return tuple(parts)


def bridge_class() -> type[TransformerBridge]:
    """``TransformerBridge`` of whichever TransformerLens is installed, with ``boot_transformers`` attached."""
    import transformer_lens.model_bridge.sources.transformers  # noqa: F401  (attaches boot_transformers)

    try:
        from transformer_lens import TransformerBridge  # 4.x exports it at the top level
    except ImportError:
        from transformer_lens.model_bridge import TransformerBridge  # 3.x: only here
    return TransformerBridge


def hooked_transformer_class() -> type | None:
    """``HookedTransformer`` where it exists (TransformerLens 3.x), else None (4.0 removed it)."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError:  # 4.x: the module's __getattr__ raises ImportError with a migration hint
        return None
    return HookedTransformer


def is_bridge(model: Any) -> bool:
    """Whether ``model`` is a ``TransformerBridge`` (of the installed TransformerLens)."""
    return isinstance(model, bridge_class())


def is_hooked_transformer(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens 3.x ``HookedTransformer`` (always False on 4.x)."""
    cls = hooked_transformer_class()
    return cls is not None and isinstance(model, cls)


def _package_root() -> Path | None:
    spec = find_spec("transformer_lens")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _aliases_from_source(path: Path) -> dict[str, list[str]]:
    """``MODEL_ALIASES`` of a 3.x ``supported_models.py``, a dict literal, read without executing it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        targets: list[ast.expr]
        if isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        elif isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        else:
            continue
        if value is not None and any(isinstance(t, ast.Name) and t.id == "MODEL_ALIASES" for t in targets):
            return ast.literal_eval(value)
    raise KeyError("MODEL_ALIASES")


@functools.cache
def model_aliases() -> dict[str, list[str]]:
    """TransformerLens's alias table, official name -> its aliases (``{"gpt2": ["gpt2-small", ...]}``), of
    whichever version is installed; empty when TransformerLens is absent or its table cannot be read.

    Read from the files, not by importing transformer_lens (3-13 s cold), so that a model name that is not
    cached fails fast. 4.x: ``tools/model_registry/data/model_aliases.json``; 3.x: the ``MODEL_ALIASES``
    literal of ``supported_models.py``."""
    root = _package_root()
    if root is None:
        return {}
    data = root / "tools" / "model_registry" / "data" / "model_aliases.json"
    if data.is_file():
        try:
            return dict(json.loads(data.read_text(encoding="utf-8"))["aliases"])
        except (OSError, ValueError, KeyError):
            return {}
    source = root / "supported_models.py"
    if source.is_file():
        try:
            return dict(_aliases_from_source(source))
        except (OSError, SyntaxError, ValueError, KeyError):
            return {}
    return {}


# The first TransformerLens that accepts a device_map with CPU targets (read in the wheels, see above).
CPU_DEVICE_MAP_SINCE = (3, 8)


def cpu_device_map_supported() -> bool:
    """Whether the installed TransformerLens loads a ``device_map`` that places weights on the CPU."""
    return tl_version_tuple() >= CPU_DEVICE_MAP_SINCE


# Bridge hook names with no hook of that name on a HookedTransformer, and the HookedTransformer hook at the same
# point of the forward for a patch: the MLP's input after ln2, the final LayerNorm's input (both read by path
# patching's receivers). Where the LayerNorm is not folded, hook_normalized comes before its affine map,
# which is a fixed function of it, so replacing it replaces the input the same way.
_HOOKED_EQUIVALENT = {
    "mlp.hook_in": "ln2.hook_normalized",
    "ln_final.hook_in": "ln_final.hook_normalized",
}


def hook_for(model: Any, name: str) -> str:
    """``name`` if ``model`` has that hook, else its HookedTransformer equivalent where one exists (else ``name``:
    the caller's error names it)."""
    hooks = getattr(model, "hook_dict", None)
    if hooks is None or name in hooks:
        return name
    for bridge_name, hooked_name in _HOOKED_EQUIVALENT.items():
        if name.endswith(bridge_name):
            other = name[: -len(bridge_name)] + hooked_name
            if other in hooks:
                return other
    return name


def device_map_refusal(exc: BaseException, name: str) -> str | None:
    """The message for TransformerLens's refusal of a CPU/disk ``device_map`` (before 3.8: "multi-device
    support is GPU-only in v1"), naming the installed version; None for any other error."""
    if "GPU-only" not in str(exc):
        return None
    return (
        f"model {name!r}: TransformerLens {tl_version()} (installed) accepts a device_map only across GPUs "
        f"(its multi-device support is GPU-only), and this device_map places weights on the CPU, disk or "
        f"meta device; load on one device with device='cpu' instead, or put the map's modules on GPUs "
        f"(TransformerLens 3.8 or newer accepts a CPU device_map)"
    )
