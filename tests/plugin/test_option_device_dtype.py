"""--interp-device / interp_device and --interp-dtype / interp_dtype: each takes effect on the model the
run loads, the flag beats the ini key, and a bad value is a usage error."""

import json

import pytest
import torch

SPEC = """\
behaviors:
  - name: france
    prompt: "The capital of France is"
    expect: " Paris"
"""

# Runs after the behavior (test files are collected after behaviors/) and records the dtypes and devices
# of the parameters of the model the `interp_model` fixture gives and of the model the behavior ran on.
OBSERVE = """\
    import json

    def describe(model):
        params = list(model.parameters())
        return {"dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in params}),
                "devices": sorted({p.device.type for p in params})}

    def test_observe(interp_model, request):
        behaviors = [item.bound.model for item in request.session.items if getattr(item, "bound", None)]
        assert len(behaviors) == 1
        seen = {"fixture": describe(interp_model), "behavior": describe(behaviors[0])}
        (request.config.rootpath / "observed.json").write_text(json.dumps(seen))
    """


def observe(pytester, write, ini: str, *args: str) -> dict:
    """Run the spec and the observing test with this ini text and these flags; the one dtype and the one
    device of the loaded model's parameters, the same for the fixture and the behavior."""
    write("behaviors/f.yaml", SPEC)
    write("test_observe.py", OBSERVE)
    pytester.makeini("[pytest]\n" + ini)
    result = pytester.runpytest("-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=2)
    seen = json.loads((pytester.path / "observed.json").read_text())
    assert seen["fixture"] == seen["behavior"], seen
    [dtype], [device] = seen["fixture"]["dtypes"], seen["fixture"]["devices"]
    return {"dtype": dtype, "device": device}


@pytest.mark.parametrize(
    "ini, args, dtype",
    [
        pytest.param("", [], "float32", id="default"),
        pytest.param("interp_dtype = bfloat16\n", [], "bfloat16", id="ini-bfloat16"),
        pytest.param("interp_dtype = float16\n", [], "float16", id="ini-float16"),
        pytest.param("", ["--interp-dtype=bfloat16"], "bfloat16", id="flag-bfloat16"),
        pytest.param("interp_dtype = bfloat16\n", ["--interp-dtype=float32"], "float32", id="flag-float32-beats-ini"),
        pytest.param("interp_dtype = float16\n", ["--interp-dtype=bfloat16"], "bfloat16", id="flag-bfloat16-beats-ini"),
    ],
)
def test_dtype_of_the_loaded_model(pytester, write, ini, args, dtype):
    assert observe(pytester, write, ini, *args)["dtype"] == dtype


AUTO = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize(
    "ini, args, device",
    [
        pytest.param("", [], AUTO, id="default-auto"),  # auto: CUDA where there is one
        pytest.param("interp_device = cpu\n", [], "cpu", id="ini-cpu"),
        pytest.param("", ["--interp-device=cpu"], "cpu", id="flag-cpu"),
        pytest.param("interp_device = cuda\n", ["--interp-device=cpu"], "cpu", id="flag-cpu-beats-ini"),
        pytest.param("interp_device = cuda:0\n", ["--interp-device=auto"], AUTO, id="flag-auto-beats-ini"),
    ],
)
def test_device_of_the_loaded_model(pytester, write, ini, args, device):
    assert observe(pytester, write, ini, *args)["device"] == device


@pytest.mark.gpu
@pytest.mark.parametrize(
    "ini, args",
    [
        pytest.param("interp_device = cuda\n", [], id="ini-cuda"),
        pytest.param("interp_device = cpu\n", ["--interp-device=cuda:0"], id="flag-cuda0-beats-ini"),
    ],
)
def test_cuda_device_of_the_loaded_model(pytester, write, ini, args):
    assert observe(pytester, write, ini, *args)["device"] == "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available: test_cuda_device_of_the_loaded_model")
@pytest.mark.parametrize(
    "ini, args",
    [
        pytest.param("interp_device = cuda\n", [], id="ini-cuda"),
        pytest.param("interp_device = cpu\n", ["--interp-device=cuda:0"], id="flag-cuda0-beats-ini"),
    ],
)
def test_cuda_without_cuda_is_a_usage_error(pytester, write, ini, args):
    # Where auto would pick the CPU, CUDA is refused only if the key or flag reaches the plugin; the message
    # names the option and the cause (no CUDA here), not the spec's model or its checkpoint files.
    write("behaviors/f.yaml", SPEC)
    pytester.makeini("[pytest]\n" + ini)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    device = args[0].split("=")[1] if args else "cuda"
    result.stderr.fnmatch_lines(
        [f"*--interp-device {device}: *CUDA*; use device 'cpu' or 'auto' (pytest: --interp-device cpu or auto)*"]
    )
    assert "key 'model'" not in result.stdout.str() + result.stderr.str()


DEVICES = "allowed: auto, cpu, cuda, cuda:N, mps"
DTYPES = "allowed: float32, bfloat16, float16"


@pytest.mark.parametrize(
    "ini, args, message",
    [
        pytest.param("", ["--interp-device=tpu"], f"--interp-device: invalid value 'tpu'; {DEVICES}", id="flag-tpu"),
        pytest.param(
            "", ["--interp-device=cuda:x"], f"--interp-device: invalid value 'cuda:x'; {DEVICES}", id="flag-cuda:x"
        ),
        pytest.param(
            "", ["--interp-dtype=float64"], f"--interp-dtype: invalid value 'float64'; {DTYPES}", id="flag-float64"
        ),
        pytest.param("interp_device = gpu0\n", [], f"--interp-device: invalid value 'gpu0'; {DEVICES}", id="ini-gpu0"),
        pytest.param("interp_dtype = fp64\n", [], f"--interp-dtype: invalid value 'fp64'; {DTYPES}", id="ini-fp64"),
        pytest.param(
            "interp_dtype = float32\n",
            ["--interp-dtype=double"],
            f"--interp-dtype: invalid value 'double'; {DTYPES}",
            id="flag-double-over-good-ini",
        ),
    ],
)
def test_bad_value_is_a_usage_error(pytester, write, ini, args, message):
    write("behaviors/f.yaml", SPEC)
    pytester.makeini("[pytest]\n" + ini)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR == 4
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "Traceback" not in result.stderr.str()


@pytest.mark.parametrize(
    "ini, flag",
    [
        pytest.param("interp_device = gpu0\n", "--interp-device=cpu", id="device"),
        pytest.param("interp_dtype = fp64\n", "--interp-dtype=float32", id="dtype"),
    ],
)
def test_a_valid_flag_overrides_a_bad_ini_value(pytester, write, ini, flag):
    write("behaviors/f.yaml", SPEC)
    pytester.makeini("[pytest]\n" + ini)
    pytester.runpytest(flag).assert_outcomes(passed=1)
