# pytester's in-process runs restore sys.modules afterwards, and torch cannot be imported twice in one
# process: import the heavy stack once, here, so every inner run finds it already loaded.
import torch  # noqa: F401
import transformer_lens.model_bridge.sources.transformers  # noqa: F401

import interptest.check  # noqa: F401
import interptest.model  # noqa: F401
import interptest.patching  # noqa: F401
