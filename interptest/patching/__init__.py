"""Activation patching with TransformerLens semantics, skipping only provably-redundant work.

The public API — everything outside this package uses these names only:

* :class:`Patcher` — one clean/corrupted prompt pair: ``sweep`` (a :class:`PatchMap`), ``cells_value``,
  ``joint``;
* :class:`BatchPatcher` — S pairs of one length patched together ([S, ...] values), optionally with
  Gaussian noise on the corrupted run's token embeddings;
* :func:`check_same_length`, :func:`check_answer_ids` — the input checks both classes make.

Every value equals what ``transformer_lens.patching.get_act_patch_*`` returns for the same cell with
the normalized logit-difference metric (up to float32 rounding). Modules:

* :mod:`.base` — what the engines share: checks, cell validation, batch sizing;
* :mod:`.single` — :class:`Patcher`;
* :mod:`.batch` — :class:`BatchPatcher`, which picks the engine;
* :mod:`.generic` — the generic engine: the bridge run with hooks (every architecture);
* :mod:`.fast` — the fast engine: the forward re-implemented from the Hugging Face weights, one module
  per architecture family (:mod:`.fast.gpt2`, :mod:`.fast.llama`, :mod:`.fast.neox`).
"""

from interptest.maps import PatchMap
from interptest.patching.base import (
    COMPONENTS,
    DIRECTIONS,
    check_answer_ids,
    check_same_length,
    model_device,
)
from interptest.patching.batch import BatchPatcher
from interptest.patching.single import Patcher

__all__ = [
    "COMPONENTS",
    "DIRECTIONS",
    "BatchPatcher",
    "PatchMap",
    "Patcher",
    "check_answer_ids",
    "check_same_length",
    "model_device",
]
