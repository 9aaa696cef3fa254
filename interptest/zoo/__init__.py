"""The model zoo: the shipped reference models and the scripts that make them.

* ``interptest-tiny`` (2 layers; induction, two-person copying, IOI, facts) -- the default model;
* ``interptest-ioi`` (4 layers x 8 heads; IOI on templates and names it never saw, induction) -- the model whose
  multi-layer IOI circuit ``behaviors/ioi/`` states;
* :mod:`interptest.zoo.corpus` / :mod:`interptest.zoo.ioi_corpus` -- their synthetic corpora and lexicons;
* :mod:`interptest.zoo.train` -- ``python -m interptest.zoo.train --preset NAME --out DIR`` regenerates one;
* :mod:`interptest.zoo.evaluate` -- ``python -m interptest.zoo.evaluate DIR`` measures its behaviors.
"""

from __future__ import annotations

from pathlib import Path

TINY_NAME = "interptest-tiny"
IOI_NAME = "interptest-ioi"
SHIPPED_MODELS = (TINY_NAME, IOI_NAME)


def shipped_saes() -> tuple[str, ...]:
    """The SAEs shipped in ``zoo/saes`` (a spec names one with ``saes: {NAME: {zoo: tiny-res1}}``)."""
    root = Path(__file__).resolve().parent / "saes"
    return tuple(sorted(p.name for p in root.iterdir() if (p / "cfg.json").is_file())) if root.is_dir() else ()


def shipped_sae_dir(name: str) -> Path:
    """Directory of the shipped SAE ``name`` (see :func:`shipped_saes`)."""
    return Path(__file__).resolve().parent / "saes" / name


def shipped_model_dir(name: str) -> Path:
    """Directory of the shipped checkpoint ``name`` (one of :data:`SHIPPED_MODELS`; package data)."""
    if name not in SHIPPED_MODELS:
        raise ValueError(f"no shipped model {name!r} (shipped: {', '.join(SHIPPED_MODELS)})")
    return Path(__file__).resolve().parent / name


def tiny_model_dir() -> Path:
    """Directory of the shipped ``interptest-tiny`` checkpoint (package data)."""
    return shipped_model_dir(TINY_NAME)
