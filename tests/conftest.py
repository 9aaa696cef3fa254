pytest_plugins = ["pytester"]

from hypothesis import settings

# Property tests are part of CI's gate: the same examples every run, no wall-clock deadline on a
# shared 2-core machine, no example database written into the checkout.
settings.register_profile("interptest", derandomize=True, deadline=None, database=None, print_blob=True)
settings.load_profile("interptest")


import textwrap

import pytest

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
