"""Moved: import :class:`BatchPatcher` from :mod:`interptest.patching` (kept so older imports work)."""

from interptest.patching import BatchPatcher

__all__ = ["BatchPatcher"]
