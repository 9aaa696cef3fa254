"""interptest: mechanistic-interpretability findings as pytest tests.

The public Python API is listed in ``__all__`` (and by ``dir(interptest)``); the functions that need torch
are imported from :mod:`interptest.api` and :mod:`interptest.model` on first use, so ``import interptest``
stays cheap (the pytest plugin and the command import it before they know whether a model is needed)."""

from __future__ import annotations

import importlib

from interptest.errors import InterpError, ModelNotAvailable, SpecError
from interptest.version import __version__

# name -> the module that defines it, imported on first access (it imports torch and TransformerLens)
_DEFERRED = {
    "load_model": "interptest.model",
    "patch_sweep": "interptest.api",
    "check_behavior": "interptest.api",
    "BehaviorFailed": "interptest.api",
    "top_predictions": "interptest.api",
    **{
        name: "interptest.api"
        for name in (
            "attention",
            "head_scores",
            "direct_effects",
            "lens",
            "path_effect",
            "circuit_faithfulness",
            "circuit_drops",
            "measure",
        )
    },
}

__all__ = ["InterpError", "ModelNotAvailable", "SpecError", "__version__", *_DEFERRED]


def __getattr__(name: str):
    # torch and transformer_lens cost seconds to import; only pay for them when asked.
    if name in _DEFERRED:
        return getattr(importlib.import_module(_DEFERRED[name]), name)
    raise AttributeError(f"module 'interptest' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
