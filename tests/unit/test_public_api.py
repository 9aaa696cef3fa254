"""The package's public names: ``dir(interptest)`` lists them, each resolves, and importing the package
(or listing it) imports no torch."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.torchfree


def test_dir_lists_the_public_api_without_importing_torch():
    code = (
        "import json, sys, interptest; "
        "print(json.dumps([sorted(dir(interptest)), interptest.__all__, 'torch' in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    listed, public, torch_imported = json.loads(done.stdout)
    assert not torch_imported
    assert set(public) <= set(listed)
    expected = {"load_model", "patch_sweep", "check_behavior", "BehaviorFailed", "top_predictions", "SpecError"}
    assert expected <= set(public)


def test_every_public_name_resolves():
    pytest.importorskip("torch")
    import interptest

    for name in interptest.__all__:
        value = getattr(interptest, name)
        assert value is not None and (name == "__version__" or getattr(value, "__name__", name) == name)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        interptest.nope  # noqa: B018
