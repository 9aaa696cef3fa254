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


def test_a_bad_map_is_a_collection_error_naming_it(pytester, write):
    write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest("--interp-device-map=everywhere")
    assert result.ret == 2
    result.stdout.fnmatch_lines(
        [
            "*unknown device_map 'everywhere'; expected auto, balanced, balanced_low_0, "
            "sequential or a JSON object of module name to device*"
        ]
    )
