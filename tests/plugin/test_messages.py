"""Messages that name the real cause and the fix (issue 13.3): each mistake a new user makes, and the
text interptest answers with."""

from pathlib import Path

import pytest
import torch

import interptest.spec
from interptest.errors import SpecError
from interptest.spec import parse_spec

FRANCE = """\
behaviors:
  - name: france
    prompt: "The capital of France is"
    expect: " Paris"
"""


def test_interp_model_flag_is_blamed_not_the_spec_model_key(pytester, write):
    write("behaviors/f.yaml", FRANCE)  # no 'model' key at all
    result = pytester.runpytest("--interp-model", "nope")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(
        [
            "*behaviors/f.yaml:2: behavior 'france': --interp-model 'nope': model 'nope' is not "
            "in the local Hugging Face cache*or name a local save_pretrained directory instead"
        ]
    )
    assert "key 'model'" not in result.stdout.str()


def test_the_spec_model_key_is_blamed_when_the_spec_names_the_model(pytester, write):
    write("behaviors/f.yaml", "model: nope\n" + FRANCE)
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        ["*behaviors/f.yaml:1: behavior 'france', key 'model': model 'nope' is not in the local Hugging Face cache*"]
    )


def test_misspelt_model_gets_a_did_you_mean(pytester, write):
    write("behaviors/f.yaml", "model: interptest-tinny\n" + FRANCE)
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        [
            "*key 'model': model 'interptest-tinny' is not in the local Hugging Face cache*"
            "did you mean 'interptest-tiny' (models available here: interptest-tiny*)? If not, "
            "pre-download it*"
        ]
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_on_a_torch_without_cuda_says_so_and_suggests_cpu(pytester, write):
    write("behaviors/f.yaml", FRANCE)
    result = pytester.runpytest("--interp-device", "cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    cause = (
        "CUDA is not available in this torch build"
        if torch.version.cuda is None
        else "has CUDA support but no CUDA device is visible"
    )
    result.stderr.fnmatch_lines(
        [f"*--interp-device cuda: *{cause}*; use device 'cpu' or 'auto' (pytest: --interp-device cpu or auto)*"]
    )
    assert "checkpoint" not in result.stderr.str() + result.stdout.str()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_load_model_on_cuda_without_cuda_names_the_device():
    import interptest

    with pytest.raises(
        interptest.InterpError,
        match=r"model 'interptest-tiny' cannot be loaded on device 'cuda': "
        r".*CUDA.*; use device 'cpu' or 'auto'",
    ) as info:
        interptest.load_model("interptest-tiny", device="cuda")
    assert "checkpoint" not in str(info.value)


def test_unquoted_expect_says_to_quote_it_with_the_leading_space(pytester, write):
    write(
        "behaviors/f.yaml",
        """\
        behaviors:
          - name: alex
            prompt: "Her name was Alex Hart. When Alex"
            expect:  Hart
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*FAILED  top-1 prediction is 'Hart'*the model predicts ' Hart'*that is 'Hart' with a "
            "leading space: YAML drops the leading space of an unquoted value, so quote it with "
            'the space: expect: " Hart"*'
        ]
    )


def test_unquoted_foil_says_to_quote_it_with_the_leading_space(pytester, write):
    write(
        "behaviors/f.yaml",
        """\
        behaviors:
          - name: alex
            prompt: "Her name was Alex Hart. When Alex"
            expect: " Hart"
            foil:  Cole
        """,
    )
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        [
            "*key 'foil': the foil must be a single token; 'Cole' is 2 tokens*' Cole', with a "
            "leading space, would work: YAML drops the leading space of an unquoted value, so "
            'quote it with the space: foil: " Cole"'
        ]
    )


def test_claim_token_without_its_space_gets_a_did_you_mean(pytester, write):
    write(
        "behaviors/f.yaml",
        """\
        behaviors:
          - name: alex
            prompt: "Her name was Alex Hart. When Alex"
            expect: " Hart"
            claims: ["prob('Hart') >= 0.5"]
        """,
    )
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        ["*'Hart' encodes to [[]'H', 'art']; ' Hart', with a leading space, is one token: did you mean ' Hart'?*"]
    )


def _spec_error(text: str, path: str = "behaviors/f.yaml") -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(text, path)
    return str(info.value)


def test_tab_in_yaml_says_indentation_must_use_spaces():
    message = _spec_error('behaviors:\n  - name: a\n\tprompt: "x"\n')
    assert message == (
        "behaviors/f.yaml:3: invalid YAML: this line is indented with a tab character; YAML "
        "indentation must use spaces, not tabs (replace the tab with spaces)"
    )


def test_other_yaml_errors_do_not_blame_tabs():
    message = _spec_error("behaviors:\n  - name: a\n    claims: [\n")
    assert "invalid YAML" in message and "tab" not in message


def test_unknown_lexicon_lists_the_lexicons_with_a_did_you_mean(tmp_path):
    (tmp_path / "lexicons").mkdir()
    (tmp_path / "lexicons" / "pets.txt").write_text("cat\ndog\n")
    message = _spec_error(
        """\
behaviors:
  - name: a
    template: "Her name was {first} {last}. When {first}"
    expect: " {last}"
    vars:
      first: [Alex, Mary]
      last: "@surname"
""",
        str(tmp_path / "f.yaml"),
    )
    shipped = sorted(p.stem for p in (Path(interptest.spec.__file__).parent / "lexicons").glob("*.txt"))
    assert "surnames" in shipped and "pets" not in shipped
    assert "key 'vars.last': lexicon @surname not found: looked for " in message
    assert message.endswith(
        "did you mean @surnames? lexicons beside the spec: @pets; shipped with interptest: "
        + ", ".join("@" + name for name in shipped)
    )


def test_noise_position_without_its_own_quotes_says_how_to_quote_it():
    message = _spec_error("""\
behaviors:
  - name: a
    prompt: "The capital of France is"
    expect: " Paris"
    corrupt: {noise: {positions: [" France"]}}
""")
    assert "key 'corrupt.noise': bad position ' France'" in message
    assert message.endswith(
        "a token position needs its own quotes inside the YAML string (the YAML quotes only "
        "delimit the string): write positions: [\"' France'\"]"
    )


def test_spec_outside_behaviors_gets_a_hint_about_the_collection_rule(pytester, write):
    write("specs/f.yaml", FRANCE)
    write("config/other.yaml", "name: not a spec\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(
        [
            "*interptest: 1 YAML file(s) with a 'behaviors' list were not collected as specs: specs/f.yaml",
            "*a spec is collected when it is inside a directory named 'behaviors', named on the command line "
            "(pytest specs/f.yaml), or matched by the ini key interp_files (e.g. interp_files = specs/*.yaml)*",
        ]
    )
    assert "other.yaml" not in result.stdout.str()
    pytester.makeini("[pytest]\ninterp_files = specs/*.yaml\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert "were not collected" not in result.stdout.str()


def test_spec_outside_behaviors_hint_under_xdist(pytester, write):
    write("specs/f.yaml", FRANCE)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result.stdout.fnmatch_lines(
        ["*interptest: 1 YAML file(s) with a 'behaviors' list were not collected as specs: specs/f.yaml"]
    )
