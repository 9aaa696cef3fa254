# pytester's in-process runs restore sys.modules afterwards, and torch cannot be imported twice in one
# process: import the heavy stack once, here, so every inner run finds it already loaded.
import torch  # noqa: F401

import interptest.api  # noqa: F401
import interptest.model  # noqa: F401
import interptest.model_cache  # noqa: F401
import interptest.patching  # noqa: F401
from interptest.tl_compat import bridge_class

bridge_class()  # transformer_lens's bridge, of whichever version is installed

# Every in-process run loads interptest-tiny (and the models its specs name) once, from one store shared
# by the runs' model caches; the check below keeps a run from leaving hooks on a shared model.
interptest.model_cache.ModelCache.shared = {}


def pytest_runtest_teardown(item):
    for model in (interptest.model_cache.ModelCache.shared or {}).values():
        hooks = [name for name, point in getattr(model, "hook_dict", {}).items() if point._forward_hooks]
        assert not hooks, f"{item.nodeid} left forward hooks on a shared model: {hooks[:5]}"
