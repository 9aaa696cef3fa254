"""Bad input is a collection error with file, line, behavior and key — never an INTERNALERROR or a
torch/transformers traceback."""

import re

import pytest

HEADER = "behaviors:\n  - name: b\n"
CLEAN = '    prompt: "Her name was Alex Hart. When Alex"\n    expect: " Hart"\n'
CORRUPT = '    corrupt: "Her name was Alex Cole. When Alex"\n'


def claims(*texts: str) -> str:
    return "    claims:\n" + "".join(f'      - "{t}"\n' for t in texts)


# case: (spec text, line the error points at, message after "behaviors/f.yaml:LINE: "; "…" skips text)
CASES = {
    "invalid-yaml": ("behaviors: [\n", 2, "invalid YAML"),
    "top-level-list": ("- a\n", 1, "the top level must be a mapping"),
    "missing-behaviors": ("model: interptest-tiny\n", 1, "missing required key 'behaviors'"),
    "missing-name": ("behaviors:\n  - prompt: x\n", 2, "behavior #1 is missing required key 'name'"),
    "missing-prompt": (HEADER + '    expect: " Hart"\n', 2, "behavior 'b': missing required key 'prompt'"),
    "wrong-type": (
        HEADER + "    prompt: [a]\n    expect: x\n",
        3,
        "behavior 'b', key 'prompt': expected a string, got a list",
    ),
    "unknown-key": (
        HEADER + CLEAN + "    corupt: x\n",
        5,
        "behavior 'b', key 'corupt': unknown key 'corupt' in a behavior; did you mean 'corrupt'?",
    ),
    "duplicate-name": (
        HEADER + CLEAN + "  - name: b\n" + CLEAN,
        5,
        "behavior 'b', key 'name': duplicate behavior name (first on line 2)",
    ),
    "empty-prompt": (HEADER + "    prompt: ''\n    expect: x\n", 3, "behavior 'b', key 'prompt': 'prompt' is empty"),
    "corrupt-is-prompt": (
        HEADER + CLEAN + '    corrupt: "Her name was Alex Hart. When Alex"\n',
        5,
        "behavior 'b', key 'corrupt': 'corrupt' is identical to 'prompt'",
    ),
    "token-count": (
        HEADER + CLEAN + '    corrupt: "Her name was Alex Cole Cole. When Alex"\n',
        5,
        (
            "behavior 'b', key 'corrupt': the clean and corrupted prompts tokenize to different "
            "lengths (9 vs 10), so positions cannot be matched: prompt ['<|endoftext|>', 'Her', ' name',"
        ),
    ),
    "empty-expect": (HEADER + "    prompt: x\n    expect: ''\n", 4, "behavior 'b', key 'expect': 'expect' is empty"),
    "empty-foil": (HEADER + CLEAN + "    foil: ''\n", 5, "behavior 'b', key 'foil': 'foil' is empty"),
    "foil-is-expect": (HEADER + CLEAN + '    foil: " Hart"\n', 5, "behavior 'b', key 'foil': 'foil' equals 'expect'"),
    "foil-same-first-token": (
        HEADER + CLEAN + '    foil: " Hart Hart"\n',
        5,
        "behavior 'b', key 'foil': the foil must be a single token; ' Hart Hart' is 2 tokens",
    ),
    "claim-syntax": (
        HEADER + CLEAN + CORRUPT + claims("resid_pre[0:2 ' Hart'] recovers >= 0.9"),
        7,
        "behavior 'b', key 'claims[0]': cannot parse claim at column 15",
    ),
    "unknown-component": (
        HEADER + CLEAN + CORRUPT + claims("resid_mild[0, 1] recovers >= 0.9"),
        7,
        ("behavior 'b', key 'claims[0]': cannot parse claim at column 1: …did you mean 'resid_mid'?"),
    ),
    "layer-out-of-range": (
        HEADER + CLEAN + CORRUPT + claims("resid_pre[7, -1] recovers >= 0.9"),
        7,
        ("behavior 'b', key 'claims[0]': claim 'resid_pre[7, -1] recovers >= 0.9': layer 7 is out of range: there are"),
    ),
    "head-out-of-range": (
        HEADER + CLEAN + CORRUPT + claims("heads[0.99] recovers >= 0.9"),
        7,
        ("behavior 'b', key 'claims[0]': claim 'heads[0.99] recovers >= 0.9': head 0.99 is out of range"),
    ),
    "position-absent": (
        HEADER + CLEAN + CORRUPT + claims("resid_pre[0, ' Bob'] recovers >= 0.9"),
        7,
        (
            "behavior 'b', key 'claims[0]': claim \"resid_pre[0, ' Bob'] recovers >= 0.9\": position "
            "token ' Bob' does not occur in the prompt's tokens"
        ),
    ),
    "position-ambiguous": (
        HEADER + CLEAN + CORRUPT + claims("resid_pre[0, ' Alex'] recovers >= 0.9"),
        7,
        (
            "behavior 'b', key 'claims[0]': claim \"resid_pre[0, ' Alex'] recovers >= 0.9\": "
            "position token ' Alex' is ambiguous: it occurs 2 times (positions 4, 8); write ' Alex'#1 "
            "or ' Alex'#2"
        ),
    ),
    "elsewhere-alone": (
        HEADER + CLEAN + CORRUPT + claims("resid_pre[elsewhere] recovers <= 0.1"),
        7,
        "behavior 'b', key 'claims[0]': resid_pre[elsewhere] needs another claim on resid_pre",
    ),
    "prob-multi-token": (
        HEADER + CLEAN + claims("prob(' Hart Hart') >= 0.1"),
        6,
        (
            "behavior 'b', key 'claims[0]': …prob() needs a single token the model can produce; "
            "' Hart Hart' encodes to [' Hart', ' Hart']"
        ),
    ),
    # a model named by the file: the line of the file's 'model' key, for the behavior that uses it
    "unknown-model": (
        "model: no-such-model-xyz\n" + HEADER + CLEAN,
        1,
        "behavior 'b', key 'model': model 'no-such-model-xyz' ",
    ),
    "unknown-model-in-defaults": (
        'model: interptest-tiny\ndefaults:\n  expect: " Hart"\n  model: no-such-model-xyz\n'
        + HEADER
        + '    prompt: "Her name was Alex Hart. When Alex"\n',
        4,
        "behavior 'b', key 'model': model 'no-such-model-xyz' ",
    ),
    "missing-model-dir": (
        "model: ./missing-checkpoint/\n" + HEADER + CLEAN,
        1,
        "behavior 'b', key 'model': model directory './missing-checkpoint/' does not exist",
    ),
    "too-long": (
        HEADER + f'    prompt: "{" Alex" * 600}"\n    expect: " Hart"\n',
        3,
        "behavior 'b', key 'prompt': the prompt is 601 tokens long but the model's context holds",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_spec_is_a_collection_error_with_location(pytester, write, case):
    text, line, message = CASES[case]
    write("behaviors/f.yaml", text)
    result = pytester.runpytest()
    output = result.stdout.str()
    assert result.ret == pytest.ExitCode.INTERRUPTED  # collection errors stop the run
    assert "ERROR collecting behaviors/f.yaml" in output
    # A line of its own that starts with the spec's path (absolute or relative) and the line number.
    located = r"^(\S*/)?behaviors/f\.yaml:" + str(line) + ": " + ".*".join(map(re.escape, message.split("…")))
    assert re.search(located, output, re.MULTILINE), f"no line matching {located!r} in:\n{output}"
    assert "INTERNALERROR" not in output and "Traceback" not in output and "site-packages" not in output


MIXED = (
    HEADER
    + CLEAN
    + CORRUPT
    + claims("resid_pre[7, -1] recovers >= 0.9", "logit_diff >= 1.0", "resid_pre[0, ' Bob'] recovers >= 0.9")
    + "  - name: good\n"
    + CLEAN
    + claims("prob(' Hart') >= 0.5")
    + "  - name: unparsable\n"
    + CLEAN
    + claims("prob(' Hart') >= ", "rank(' Hart') <=")
)


def test_one_bad_behavior_hides_neither_the_others_nor_its_own_other_errors(pytester, write):
    write("behaviors/f.yaml", MIXED)
    result = pytester.runpytest("-rE")
    result.assert_outcomes(passed=1, errors=2)  # the valid behavior still collects and runs
    output = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "ERROR collecting" not in output and "Traceback" not in output
    # every error of the file, each at its claim's line, binding errors pointing into the claim's text
    assert re.search(
        r"behaviors/f\.yaml:7: behavior 'b', key 'claims\[0\]': claim 'resid_pre\[7, -1\].*layer 7 is out", output
    )
    assert "    resid_pre[7, -1] recovers >= 0.9\n              ^\n" in output
    assert re.search(r"behaviors/f\.yaml:9: behavior 'b', key 'claims\[2\]': .*' Bob' does not occur", output)
    assert "    resid_pre[0, ' Bob'] recovers >= 0.9\n                 ^^^^^^" in output
    assert re.search(r"behaviors/f\.yaml:19: behavior 'unparsable', key 'claims\[0\]': cannot parse claim", output)
    assert re.search(r"behaviors/f\.yaml:20: behavior 'unparsable', key 'claims\[1\]': cannot parse claim", output)


def test_a_file_whose_behaviors_are_all_refused_is_one_collection_error_listing_each(pytester, write):
    write(
        "behaviors/f.yaml",
        MIXED.split("  - name: good\n")[0] + "  - name: unparsable\n" + MIXED.split("  - name: unparsable\n")[1],
    )
    for args in ((), ("--co",)):
        result = pytester.runpytest(*args)
        output = result.stdout.str()
        assert result.ret == pytest.ExitCode.INTERRUPTED and "ERROR collecting behaviors/f.yaml" in output
        assert output.count("behaviors/f.yaml:") >= 4 and "key 'claims[1]'" in output and "key 'claims[2]'" in output
