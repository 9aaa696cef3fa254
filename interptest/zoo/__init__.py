"""The model zoo: the shipped reference model ``interptest-tiny`` and the scripts that make it.

* :mod:`interptest.zoo.corpus` -- synthetic corpus and lexicons;
* :mod:`interptest.zoo.train` -- ``python -m interptest.zoo.train --out DIR`` regenerates the checkpoint;
* :mod:`interptest.zoo.evaluate` -- ``python -m interptest.zoo.evaluate DIR`` measures its behaviors.
"""

from __future__ import annotations

from pathlib import Path

TINY_NAME = "interptest-tiny"


def shipped_saes() -> tuple[str, ...]:
    """The SAEs shipped in ``zoo/saes`` (a spec names one with ``saes: {NAME: {zoo: tiny-res1}}``)."""
    root = Path(__file__).resolve().parent / "saes"
    return tuple(sorted(p.name for p in root.iterdir() if (p / "cfg.json").is_file())) if root.is_dir() else ()


def shipped_sae_dir(name: str) -> Path:
    """Directory of the shipped SAE ``name`` (see :func:`shipped_saes`)."""
    return Path(__file__).resolve().parent / "saes" / name


def tiny_model_dir() -> Path:
    """Directory of the shipped ``interptest-tiny`` checkpoint (package data)."""
    return Path(__file__).resolve().parent / TINY_NAME
