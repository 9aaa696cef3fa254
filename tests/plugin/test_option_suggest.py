"""--interp-suggest prints claims that hold, as YAML; it never writes the spec."""

import yaml

SPEC = """\
behaviors:
  - name: alex-hart
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Hart"
    corrupt: "Her name was Alex Cole. When Alex"
"""


def test_suggested_claims_hold_when_pasted(pytester, write):
    spec = write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest("--interp-suggest")
    result.assert_outcomes(passed=1)
    assert spec.read_text() == SPEC
    output = result.stdout.str()
    block = output[output.index("# --interp-suggest for 'alex-hart'"):].split("\n=")[0]
    suggested = yaml.safe_load(block)[0]["claims"]
    assert any(c.startswith("resid_pre[") for c in suggested) and "resid_pre[elsewhere]" in " ".join(suggested)
    spec.write_text(SPEC + "    claims:\n" + "".join(f'      - "{c}"\n' for c in suggested))
    pytester.runpytest().assert_outcomes(passed=1)


def test_families_get_a_pointer_instead_of_claims(pytester, write):
    write("behaviors/f.yaml", """\
        behaviors:
          - name: fam
            template: "Her name was {first} {last}. When {first}"
            expect: " {last}"
            corrupt: {resample: [last]}
            vars: {first: [Alex, Mary], last: [Hart, Cole, Jones]}
            samples: 3
        """)
    result = pytester.runpytest("--interp-suggest")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["# --interp-suggest for 'fam': suggestions are made for single prompts; run it on "
                                 "one instance of the family*"])
