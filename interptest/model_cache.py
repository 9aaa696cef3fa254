"""Models loaded once per process: the plugin's and :func:`interptest.check_behavior`'s store."""

from __future__ import annotations

import gc

from interptest.model import configure_threads, load_model

DEFAULT_MODEL = "interptest-tiny"


class ModelCache:
    """Loads each (model, device, dtype) once; ``clear()`` releases them.

    ``ModelCache.shared``, when a test harness sets it to a dict, is one store for every cache of the
    process (pytester's in-process runs then load each model once); a cache still sets its own thread
    count on first use, and ``clear()`` leaves the shared store alone."""

    shared: dict | None = None

    def __init__(
        self, device: str | None = None, dtype: str | None = None, threads: int | None = None, device_map=None
    ):
        self.device, self.dtype, self.threads, self.device_map = device, dtype, threads, device_map
        self._models: dict = {}
        self._configured = False

    def get(self, name: str):
        if not self._configured:
            configure_threads(self.threads)
            self._configured = True
        store = ModelCache.shared if ModelCache.shared is not None else self._models
        key = (name, self.device, self.dtype, str(self.device_map))
        if key not in store:
            store[key] = load_model(name, device=self.device, dtype=self.dtype, device_map=self.device_map)
        return store[key]

    def clear(self) -> None:
        self._models.clear()
        gc.collect()


_DEFAULT_CACHE = ModelCache()
