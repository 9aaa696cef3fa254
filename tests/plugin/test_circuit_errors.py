"""Bad input to path and circuit claims, ablations, random controls and 'reference' is a collection error
naming the file, the line, the behavior, the claim and the offending part."""

import re

import pytest

HEADER = "behaviors:\n  - name: b\n"
PROMPT = (
    '    prompt: "Their names were Iris Jones and James Dixon. When James"\n    expect: " Dixon"\n'
    '    corrupt: "Their names were James Jones and Iris Dixon. When James"\n'
)
NO_CORRUPT = '    prompt: "Their names were Iris Jones and James Dixon. When James"\n    expect: " Dixon"\n'
REFERENCE = '    reference: ["Their names were Mary Smith and John Brown. When John"]\n'


def claims(*texts: str) -> str:
    return "    claims:\n" + "".join(f'      - "{t}"\n' for t in texts)


# case: (spec text, line the error points at, message after "behaviors/f.yaml:LINE: "; "…" skips text)
CASES = {
    "unknown-node": (
        HEADER + PROMPT + claims("circuit attn_out[0] faithful >= 0.9"),
        7,
        "behavior 'b', key 'claims[0]': cannot parse claim at column 9: expected the circuit's nodes: "
        "attention heads heads[L.H, ...] or MLP layers mlp_out[L, ...]",
    ),
    "unknown-receiver": (
        HEADER + PROMPT + claims("path heads[0.2] -> resid_pre[1] recovers >= 0.5"),
        7,
        "key 'claims[0]': cannot parse claim at column 20: expected a receiver: heads[L.H].q, "
        "heads[L.H].k, heads[L.H].v, mlp_in[L] or logits",
    ),
    "unknown-receiver-input": (
        HEADER + PROMPT + claims("path heads[0.2] -> heads[1.0].key recovers >= 0.5"),
        7,
        "expected q, k or v: the head's query, key or value input, found 'key'",
    ),
    "unknown-ablation": (
        HEADER + PROMPT + claims("circuit heads[0.2] faithful >= 0.9 ablate average"),
        7,
        "key 'claims[0]': cannot parse claim at column 43: expected an ablation after 'ablate' "
        "(resample, mean, zero), found 'average'",
    ),
    "position-outside": (
        HEADER + PROMPT + claims("circuit heads[0.2; 20] faithful >= 0.9"),
        7,
        "key 'claims[0]': claim 'circuit heads[0.2; 20] faithful >= 0.9': position 20 is out of "
        "range: there are 12 positions",
    ),
    "receiver-position-outside": (
        HEADER + PROMPT + claims("path heads[0.2] -> heads[1.0; ' Hart'].k recovers >= 0.5"),
        7,
        "position token ' Hart' does not occur in the prompt's tokens",
    ),
    "mean-without-reference": (
        HEADER + PROMPT + claims("circuit heads[0.2] faithful >= 0.9 ablate mean"),
        7,
        "key 'claims[0]': claim 'circuit heads[0.2] faithful >= 0.9 ablate mean' ablates by "
        "the mean: each node takes its mean over the family's clean samples or over "
        "'reference' prompts; this single-prompt behavior has neither",
    ),
    "breaks-mean-without-reference": (
        HEADER + PROMPT + claims("heads[0.2] breaks >= 0.5 ablate mean"),
        7,
        "claim 'heads[0.2] breaks >= 0.5 ablate mean' ablates by the mean",
    ),
    "resample-without-corrupt": (
        HEADER + NO_CORRUPT + '    foil: " Jones"\n' + claims("circuit heads[0.2] faithful >= 0.9"),
        7,
        "claim 'circuit heads[0.2] faithful >= 0.9' ablates by "
        "resampling: each node takes its value on the corrupted prompt; "
        "add a 'corrupt' prompt",
    ),
    "zero-without-foil": (
        HEADER + NO_CORRUPT + claims("circuit heads[0.2] faithful >= 0.9 ablate zero"),
        6,
        "compares logit differences expect − foil: add 'foil'",
    ),
    "reference-token-count": (
        HEADER + PROMPT + '    reference: ["Their names were Mary Smith and John Brown. When '
        'John", "Their names were Mary Smith. When Mary"]\n' + claims("circuit heads[0.2] faithful >= 0.5 ablate mean"),
        6,
        "behavior 'b', key 'reference[1]': reference prompt 'Their names were Mary Smith. When "
        "Mary' tokenizes to 9 tokens but the prompt to 12; positions are averaged one to one",
    ),
    "reference-empty": (
        HEADER + PROMPT + "    reference: []\n",
        6,
        "behavior 'b', key 'reference': expected a non-empty list of non-empty prompts",
    ),
    "reference-type": (
        HEADER + PROMPT + "    reference: one prompt\n",
        6,
        "behavior 'b', key 'reference': expected a list of strings, got a string",
    ),
    "beats-random-whole-model": (
        HEADER + PROMPT + claims("heads[0.0, 0.1, 0.2, 0.3, 1.0, 1.1, 1.2, 1.3] together recovers beats random at 0.9"),
        7,
        "'beats random' needs other node sets of the same composition, but the set takes 8 of 8 heads: it is as large "
        "as the whole model",
    ),
    "sender-after-receiver": (
        HEADER + PROMPT + claims("path heads[1.3] -> heads[1.0].k recovers >= 0.5"),
        7,
        "claim 'path heads[1.3] -> heads[1.0].k recovers >= 0.5': sender head 1.3 is at or after "
        "the receiver heads[1.0].k (layer 1)",
    ),
    "node-named-twice": (
        HEADER + PROMPT + claims("circuit heads[0.2] + heads[1.0, 0.2] minimal >= 0.1"),
        7,
        "the node list names head 0.2 twice",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_circuit_input_is_a_collection_error_naming_the_claim_and_part(pytester, write, case):
    text, line, message = CASES[case]
    write("behaviors/f.yaml", text)
    result = pytester.runpytest()
    output = result.stdout.str()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    located = r"^(\S*/)?behaviors/f\.yaml:" + str(line) + ": .*" + ".*".join(map(re.escape, message.split("…")))
    assert re.search(located, output, re.MULTILINE), f"no line matching {located!r} in:\n{output}"
    assert "INTERNALERROR" not in output and "Traceback" not in output
