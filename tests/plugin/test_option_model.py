"""Model resolution: --interp-model > behavior > file > ini interp_model > interptest-tiny."""

import pytest

BEHAVIOR = """\
  - name: {name}
    {model}
    prompt: "The capital of France is"
    expect: " Paris"
"""


def spec(file_model: str | None, *behaviors: tuple[str, str | None]) -> str:
    head = f"model: {file_model}\n" if file_model else ""
    body = "".join(BEHAVIOR.format(name=n, model=f"model: {m}" if m else "") for n, m in behaviors)
    return head + "behaviors:\n" + body


def models_of(pytester, *args) -> dict[str, str]:
    items, _ = pytester.inline_genitems(*args)
    return {item.name: item.get_closest_marker("interp_model").args[0] for item in items}


def test_default_is_interptest_tiny(pytester, write):
    write("behaviors/f.yaml", spec(None, ("a", None)))
    assert models_of(pytester) == {"a": "interptest-tiny"}


def test_behavior_beats_file_beats_ini(pytester, write):
    write("behaviors/f.yaml", spec("./ckpt-file", ("a", None), ("b", "interptest-tiny")))
    pytester.makeini("[pytest]\ninterp_model = interptest-tiny\n")
    (pytester.path / "behaviors" / "ckpt-file").mkdir()
    result = pytester.runpytest("--co")
    # the file's model (a directory beside the spec, without weights) is used for 'a': a clear error
    result.stdout.fnmatch_lines(["*ERROR collecting behaviors/f.yaml*", "*behavior 'a', key 'model'*ckpt-file*"])
    write("behaviors/f.yaml", spec("interptest-tiny", ("a", None), ("b", "./ckpt-behavior")))
    result = pytester.runpytest("--co")
    result.stdout.fnmatch_lines(["*behavior 'b', key 'model'*ckpt-behavior*"])


def test_ini_model_is_the_default_for_specs_naming_none(pytester, write):
    write("behaviors/f.yaml", spec(None, ("a", None)))
    pytester.makeini("[pytest]\ninterp_model = ./no-such-dir\n")
    result = pytester.runpytest("--co")
    # the spec names no model: the message blames the ini key that did, not the spec's (absent) 'model' key
    result.stdout.fnmatch_lines(
        [
            "*behaviors/f.yaml:*: behavior 'a': ini option interp_model './no-such-dir': model "
            "directory './no-such-dir' does not exist*"
        ]
    )
    assert "key 'model'" not in result.stdout.str()


def test_command_line_beats_every_spec(pytester, write):
    write("behaviors/f.yaml", spec("./no-such-dir", ("a", "./nor-this"), ("b", None)))
    pytester.makeini("[pytest]\ninterp_model = ./nor-that\n")
    assert models_of(pytester, "--interp-model", "interptest-tiny") == {"a": "interptest-tiny", "b": "interptest-tiny"}
    pytester.runpytest("--interp-model", "interptest-tiny").assert_outcomes(passed=2)


@pytest.mark.parametrize("flag", ["--interp-model=./nowhere", "--interp-model=definitely-not-a-model-xyz"])
def test_unavailable_model_is_a_clear_collection_error(pytester, write, flag):
    write("behaviors/f.yaml", spec(None, ("a", None)))
    result = pytester.runpytest(flag)
    output = result.stdout.str()
    assert "ERROR collecting behaviors/f.yaml" in output and flag.split("=")[1].lstrip("./") in output
    assert "Traceback" not in output and "INTERNALERROR" not in output


def test_model_directory_relative_to_the_spec_file(pytester, write):
    import shutil
    from pathlib import Path

    import interptest

    shutil.copytree(Path(interptest.__file__).parent / "zoo" / "interptest-tiny", pytester.path / "behaviors" / "ckpt")
    write("behaviors/f.yaml", spec("./ckpt", ("a", None)))
    assert models_of(pytester)["a"].endswith("behaviors/ckpt")
    pytester.runpytest().assert_outcomes(passed=1)


def test_if_model_unavailable_skip_turns_a_missing_model_into_skips(pytester, write):
    write("behaviors/hub.yaml", "model: ./not-downloaded\nif_model_unavailable: skip\n" + spec(None, ("a", None)))
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*model not available: model directory './not-downloaded' does not exist*"])


def test_if_model_unavailable_rejects_other_values(pytester, write):
    write("behaviors/hub.yaml", "if_model_unavailable: maybe\n" + spec(None, ("a", None)))
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        ["*behavior 'a', key 'if_model_unavailable': expected one of error, skip, got 'maybe'*"]
    )
