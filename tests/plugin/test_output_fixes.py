"""Small output fixes a reader trips on (issue 20 item 10): each failing claim's minimal instance has its own
name (the blocks paste together), a family's map is labelled by template variable, "sample means" only where
there are samples, token labels whole where the row has room, and no negative zero."""

import textwrap

import yaml

SPEC = """\
behaviors:
  - name: fam
    template: "Her name was {first} {last}. When {first}"
    expect: " {last}"
    corrupt: {resample: [last]}
    vars:
      first: [Alex, Mary, John, Iris]
      last: "@surnames"
    samples: 6
    claims:
      - "resid_pre[:, {last}] recovers <= 0.5"
      - "direct(mlp_out[1]) <= 0.1 of logit_diff"
  - name: one
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Hart"
    corrupt: "Her name was Alex Cole. When Alex"
    claims:
      - "direct(mlp_out[1]) <= 0.1 of logit_diff"
      - "lens(resid_post[0], -1) rank(' Hart') <= 1"
      - "resid_pre[:, ' Hart'] recovers <= 0.5"
"""


def _section(output: str, name: str) -> str:
    """One behavior's failure section: up to the next section, or the summaries after the last one (with
    CI set, pytest's short summary repeats every failure whole, the family's 'sample means' included)."""
    start = output.index(f"_ behavior {name} _")
    ends = [output.find(mark, start + 1) for mark in ("\n____", "\n----", "\n====")]
    return output[start : min((e for e in ends if e > 0), default=len(output))]


def test_failure_output(pytester, write):
    write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    output = result.stdout.str()
    family, one = _section(output, "fam"), _section(output, "one")

    # each failing claim's minimal instance is named after its claim's number, and the blocks paste together
    lines = family.splitlines()
    blocks = []
    for start in (i for i, line in enumerate(lines) if line.startswith("      - name: fam-minimal-")):
        end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("        "))
        blocks.append("\n".join(lines[start:end]) + "\n")
    names = [yaml.safe_load(textwrap.dedent(block))[0]["name"] for block in blocks]
    assert names == ["fam-minimal-1", "fam-minimal-2"]
    write("behaviors/minimal.yaml", "behaviors:\n" + "".join(textwrap.dedent(b) for b in blocks))
    pytester.runpytest("-p", "no:cacheprovider", "behaviors/minimal.yaml").assert_outcomes(failed=2)

    # a family's (mean) map is labelled as the claims write positions; a single prompt's by its tokens
    header = next(line for line in family.splitlines() if "{last}" in line and "·was" in line)
    assert header.split() == ["<|endoft…", "Her", "·name", "·was", "{first}#1", "{last}", ".", "·When", "{first}#2"]
    assert "·Alex     ·Hart" in one

    # "sample means" only where there are samples
    assert "largest direct effects of m_clean (sample means): mlp_out[1]" in family
    assert "largest direct effects of m_clean: mlp_out[1] +0.74" in one
    assert "logit lens for \"lens(resid_post[0], -1) rank(' Hart') <= 1\" (position 8)\n" in one
    assert "sample means" not in one

    # no negative zero (the direct effects list the smallest heads at +0.00)
    assert "-0.00" not in output and "-0.000" not in output
