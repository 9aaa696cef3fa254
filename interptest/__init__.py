"""interptest: mechanistic-interpretability findings as pytest tests."""

from __future__ import annotations

from interptest.errors import InterpError, ModelNotAvailable, SpecError
from interptest.version import __version__

__all__ = [
    "InterpError",
    "ModelNotAvailable",
    "SpecError",
    "__version__",
    "load_model",
    "patch_sweep",
    "check_behavior",
]


def __getattr__(name: str):
    # torch and transformer_lens cost seconds to import; only pay for them when asked.
    if name == "load_model":
        from interptest.model import load_model

        return load_model
    if name == "patch_sweep":
        from interptest.api import patch_sweep

        return patch_sweep
    if name == "check_behavior":
        from interptest.api import check_behavior

        return check_behavior
    raise AttributeError(f"module 'interptest' has no attribute {name!r}")
