"""--interp-threads / interp_threads and --interp-batch-size / interp_batch_size."""

import pytest

SPEC = """\
behaviors:
  - name: alex
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Hart"
    corrupt: "Her name was Alex Cole. When Alex"
    claims:
      - "resid_pre[0, ' Hart'] recovers >= 0.9"
"""


@pytest.mark.parametrize("args, message", [
    (["--interp-threads=0"], "--interp-threads: invalid value '0'; expected a positive integer or 'auto'"),
    (["--interp-threads=many"], "--interp-threads: invalid value 'many'"),
    (["--interp-batch-size=-4"], "--interp-batch-size: invalid value '-4'; expected a positive integer"),
])
def test_bad_value_is_a_usage_error(pytester, write, args, message):
    write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_threads_option_sets_torch_threads(pytester, write):
    write("behaviors/f.yaml", SPEC)
    write("test_threads.py", """\
        import torch

        def test_threads(interp_model):
            assert torch.get_num_threads() == 1
        """)
    pytester.runpytest_subprocess("--interp-threads=1", "-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_batch_size_one_gives_the_same_verdicts(pytester, write):
    write("behaviors/f.yaml", SPEC)
    pytester.makeini("[pytest]\ninterp_batch_size = 1\n")
    pytester.runpytest().assert_outcomes(passed=1)
