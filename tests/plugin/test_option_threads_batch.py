"""--interp-threads / interp_threads and --interp-batch-size / interp_batch_size: each takes effect, the
flag beats the ini key, and a bad value is a usage error."""

import json

import pytest
import torch

from interptest.model import available_cpus

SPEC = """\
behaviors:
  - name: alex
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Hart"
    corrupt: "Her name was Alex Cole. When Alex"
    claims:
      - "resid_pre[0, ' Hart'] recovers >= 0.9"
"""


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param(
            ["--interp-threads=0"],
            "--interp-threads: invalid value '0'; expected a positive integer or 'auto'",
            id="threads-0",
        ),
        pytest.param(["--interp-threads=many"], "--interp-threads: invalid value 'many'", id="threads-many"),
        pytest.param(
            ["--interp-batch-size=-4"],
            "--interp-batch-size: invalid value '-4'; expected a positive integer",
            id="batch-size--4",
        ),
    ],
)
def test_bad_value_is_a_usage_error(pytester, write, args, message):
    write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


@pytest.mark.parametrize(
    "ini, flag",
    [
        pytest.param("interp_threads = 0\n", "--interp-threads=1", id="threads"),
        pytest.param("interp_batch_size = none\n", "--interp-batch-size=4", id="batch-size"),
    ],
)
def test_bad_ini_value_is_a_usage_error_unless_the_flag_overrides_it(pytester, write, ini, flag):
    write("behaviors/f.yaml", SPEC)
    pytester.makeini("[pytest]\n" + ini)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {flag.split('=')[0]}: invalid value*"])
    pytester.runpytest(flag).assert_outcomes(passed=1)


# ---- threads: what torch.get_num_threads() is while the run's tests execute ----------------------

THREADS_TEST = """\
    import json

    import torch

    def test_threads(interp_model, request):
        (request.config.rootpath / "threads.json").write_text(json.dumps(torch.get_num_threads()))
    """


def threads_in_run(pytester, write, ini: str, *args: str, start: int = 1) -> int:
    """torch's thread count inside an in-process run that starts at ``start`` threads; this process's own
    count is restored afterwards."""
    write("test_threads.py", THREADS_TEST)
    pytester.makeini("[pytest]\n" + ini)
    before = torch.get_num_threads()
    torch.set_num_threads(start)
    try:
        pytester.runpytest("-p", "no:cacheprovider", *args).assert_outcomes(passed=1)
    finally:
        torch.set_num_threads(before)
    return json.loads((pytester.path / "threads.json").read_text())


CPUS = available_cpus()
needs_two_cpus = pytest.mark.skipif(CPUS < 2, reason="one CPU available: every thread setting gives 1 thread")


@needs_two_cpus
@pytest.mark.parametrize(
    "ini, args, threads",
    [
        # Each run starts at 1 thread, which is what 'auto' (half the CPUs, at most the current count) keeps.
        pytest.param("interp_threads = 2\n", [], 2, id="ini"),
        pytest.param("", ["--interp-threads=2"], 2, id="flag"),
        pytest.param("interp_threads = 1\n", ["--interp-threads=2"], 2, id="flag-2-beats-ini"),
        pytest.param("interp_threads = 2\n", ["--interp-threads=1"], 1, id="flag-1-beats-ini"),
        pytest.param("interp_threads = 2\n", ["--interp-threads=auto"], 1, id="flag-auto-beats-ini"),
        pytest.param("", [f"--interp-threads={CPUS + 3}"], CPUS, id="capped-at-the-cpus"),
    ],
)
def test_threads_option_sets_torch_threads(pytester, write, ini, args, threads):
    assert threads_in_run(pytester, write, ini, *args) == threads


def test_auto_threads_is_half_the_cpus(pytester, write):
    assert threads_in_run(pytester, write, "", start=CPUS) == max(1, CPUS // 2)


# ---- batch size: the rows of every forward pass of a behavior's run --------------------------------

# A prompt family: its clean and corrupted runs go through the bridge, its patched cells through the fast
# engine (interptest-tiny is GPT-2-shaped), both batched.
FAMILY = """\
behaviors:
  - name: induction
    template: "Her name was {first} {last}. When {first}"
    expect: " {last}"
    foil: " Cole"
    corrupt: {resample: [last]}
    vars:
      first: [Alex, Mary, John, Iris]
      last: [Hart, Park, Smith, Lee]
    samples: 5
    claims:
      - "resid_pre[:, {last}] recovers >= 0.8"
"""

# Counts forwards while a behavior runs: the batch size of every bridge forward (its hook_embed call) and
# the rows of every fast-engine forward (one row pack per forward).
COUNT_FORWARDS = """\
    import json

    import pytest

    from interptest.patching import fast

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(item):
        bound = getattr(item, "bound", None)
        if bound is None:
            return (yield)
        sizes = []

        def count(act, hook=None):
            sizes.append(["bridge", int(act.shape[0])])

        pack_init = fast._Pack.__init__

        def counted_pack(self, smp, *args, **kwargs):
            sizes.append(["fast", len(smp)])
            pack_init(self, smp, *args, **kwargs)

        fast._Pack.__init__ = counted_pack
        try:
            with bound.model.hooks(fwd_hooks=[("hook_embed", count)]):
                return (yield)
        finally:
            fast._Pack.__init__ = pack_init
            (item.config.rootpath / "forwards.json").write_text(json.dumps(sizes))
    """


def forwards(pytester, write, ini: str, *args: str) -> list[tuple[str, int]]:
    """(engine, rows) of each forward pass of the family's run, in order; the behavior passes."""
    write("behaviors/f.yaml", FAMILY)
    write("conftest.py", COUNT_FORWARDS)
    pytester.makeini("[pytest]\n" + ini)
    pytester.runpytest("-p", "no:cacheprovider", *args).assert_outcomes(passed=1)
    return [tuple(f) for f in json.loads((pytester.path / "forwards.json").read_text())]


def split(passes: list[tuple[str, int]], batch: int) -> list[tuple[str, int]]:
    """Each pass of ``passes`` rows as forwards of at most ``batch`` rows."""
    return [(engine, min(batch, rows - start)) for engine, rows in passes for start in range(0, rows, batch)]


@pytest.fixture
def unbatched(pytester, write) -> list[tuple[str, int]]:
    """The run's forward passes when one forward may hold every row (today: the bridge's clean and corrupted
    runs of the 5 samples, the fast engine's base run of both, then its patched rows, one pass per layer)."""
    passes = forwards(pytester, write, "interp_batch_size = 1000\n")
    assert {engine for engine, _ in passes} == {"bridge", "fast"}, passes
    assert max(rows for _, rows in passes) > 7, passes  # so that every batch size below splits some pass
    return passes


@pytest.mark.parametrize(
    "ini, args, batch",
    [
        pytest.param("interp_batch_size = 7\n", [], 7, id="ini"),
        pytest.param("", ["--interp-batch-size=3"], 3, id="flag"),
        pytest.param("interp_batch_size = 7\n", ["--interp-batch-size=1"], 1, id="flag-1-beats-ini"),
        pytest.param("interp_batch_size = 1\n", ["--interp-batch-size=1000"], 1000, id="flag-1000-beats-ini"),
    ],
)
def test_batch_size_bounds_the_rows_of_every_forward(pytester, write, unbatched, ini, args, batch):
    assert forwards(pytester, write, ini, *args) == split(unbatched, batch)
