"""--interp-device / interp_device and --interp-dtype / interp_dtype."""

import pytest

SPEC = """\
behaviors:
  - name: france
    prompt: "The capital of France is"
    expect: " Paris"
"""


@pytest.mark.parametrize("args, message", [
    (["--interp-device=tpu"], "--interp-device: invalid value 'tpu'; allowed: auto, cpu, cuda, cuda:N, mps"),
    (["--interp-device=cuda:x"], "--interp-device: invalid value 'cuda:x'"),
    (["--interp-dtype=float64"], "--interp-dtype: invalid value 'float64'; allowed: float32, bfloat16, float16"),
])
def test_bad_value_is_a_usage_error(pytester, write, args, message):
    write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_bad_ini_value_is_a_usage_error_and_the_flag_beats_it(pytester, write):
    write("behaviors/f.yaml", SPEC)
    pytester.makeini("[pytest]\ninterp_device = gpu0\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--interp-device: invalid value 'gpu0'*"])
    pytester.runpytest("--interp-device=cpu").assert_outcomes(passed=1)


def test_cpu_float32_runs(pytester, write):
    write("behaviors/f.yaml", SPEC)
    pytester.makeini("[pytest]\ninterp_device = cpu\ninterp_dtype = float32\n")
    pytester.runpytest().assert_outcomes(passed=1)


def test_bfloat16_loads_the_model_in_that_dtype(pytester, write):
    write("behaviors/f.yaml", SPEC)
    write("test_dtype.py", """\
        import torch

        def test_dtype(interp_model):
            assert next(interp_model.parameters()).dtype == torch.bfloat16
        """)
    pytester.runpytest("--interp-dtype=bfloat16", "--interp-device=cpu").assert_outcomes(passed=2)
