import textwrap
from pathlib import Path

import pytest
from hypothesis import settings

pytest_plugins = ["pytester"]

# Property tests are part of CI's gate: the same examples every run, no wall-clock deadline on a
# shared 2-core machine, no example database written into the checkout.
settings.register_profile("interptest", derandomize=True, deadline=None, database=None, print_blob=True)
settings.load_profile("interptest")

ALEX_HART = """\
behaviors:
  - name: alex-hart
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Hart"
    corrupt: "Her name was Alex Cole. When Alex"
    claims:
      - "prob(' Hart') >= 0.5"
      - "logit_diff >= 2.0"
  - name: france
    prompt: "The capital of France is"
    expect: " Paris"
"""


@pytest.fixture
def alex_hart() -> str:
    """A two-behavior spec that passes on interptest-tiny."""
    return ALEX_HART


@pytest.fixture
def write(pytester):
    """write(path, text): a file in the pytester directory, parents created, text dedented."""

    def _write(path: str, text: str):
        target = pytester.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
        return target

    return _write


TORCHFREE = "pytestmark = pytest.mark.torchfree"  # how a torch-free test module marks itself


def pytest_ignore_collect(collection_path: Path, config: pytest.Config):
    """Under exactly ``-m torchfree``, do not even import what cannot hold a selected test: test modules
    without the module-level mark, directories holding none (tests/plugin/conftest.py imports torch) and
    spec files (collecting one loads its model). So ``pytest tests -m torchfree`` never imports torch."""
    if (config.getoption("markexpr") or "").strip() != "torchfree":
        return None
    if collection_path.is_dir():
        modules = collection_path.rglob("test_*.py")
        return not any(TORCHFREE in module.read_text(encoding="utf-8") for module in modules) or None
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return TORCHFREE not in collection_path.read_text(encoding="utf-8") or None
    return True


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the tests marked ``gpu``, with the reason, where CUDA is absent."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marked gpu): torch.cuda.is_available() is False")
    for item in gpu:
        item.add_marker(skip)
