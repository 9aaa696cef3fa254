"""--interp-device-map / interp_device_map: a Hugging Face device_map, passed to from_pretrained through
the bridge, for models larger than one device. Tested on the CPU with a one-device map."""

import pytest

from interptest.tl_compat import cpu_device_map_supported, tl_version

SPEC = """\
behaviors:
  - name: alex-hart
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Hart"
    corrupt: "Her name was Alex Cole. When Alex"
    claims:
      - "resid_pre[:, ' Hart'] recovers >= 0.9"
"""

OBSERVER = """\
import torch


def test_where(interp_model):
    devices = {p.device.type for p in interp_model.parameters()}
    assert devices == {"cpu"}
"""


@pytest.mark.parametrize("where", ["flag", "ini"])
def test_a_one_device_map_runs_the_suite(pytester, write, where):
    write("behaviors/f.yaml", SPEC)
    write("test_observer.py", OBSERVER)
    args = ["-p", "no:cacheprovider"]
    if where == "flag":
        args.append('--interp-device-map={"": "cpu"}')
    else:
        pytester.makeini('[pytest]\ninterp_device_map = {"": "cpu"}\n')
    result = pytester.runpytest(*args)
    if cpu_device_map_supported():
        result.assert_outcomes(passed=2)
    else:  # TransformerLens < 3.8: a collection error naming the version, as a bad map is
        assert result.ret == 2
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(
            [f"*TransformerLens {tl_version()} (installed) accepts a device_map only across GPUs*"]
        )


@pytest.mark.parametrize(
    "value, message",
    [
        (
            "everywhere",
            "--interp-device-map: unknown device_map 'everywhere'; expected auto, balanced, balanced_low_0, "
            "sequential or a JSON object of module name to device",
        ),
        ('{"": cpu}', "--interp-device-map: device_map '{\"\": cpu}' is not valid JSON (Expecting value*"),
        ("{}x", "--interp-device-map: device_map '{}x' is not valid JSON (Extra data*"),
    ],
)
def test_a_bad_map_is_a_usage_error_naming_the_option(pytester, write, value, message):
    """Not an error of the spec's model key: the option is wrong, before any spec is read (exit 4)."""
    write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest(f"--interp-device-map={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "model 'interptest-tiny'" not in result.stdout.str() + result.stderr.str()


def test_a_bad_map_in_the_ini_file_names_the_ini_key(pytester, write):
    write("behaviors/f.yaml", SPEC)
    pytester.makeini("[pytest]\ninterp_device_map = [1]\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --interp-device-map: device_map must be a JSON object, got '[1]'"])
