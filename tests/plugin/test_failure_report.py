"""A failing behavior reports every failed check at once, without a Python traceback."""

FAILING = """\
behaviors:
  - name: alex-hart
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Hart"
    corrupt: "Her name was Alex Cole. When Alex"
    claims:
      - "prob(' Cole') >= 0.5"
      - "rank(' Hart') <= 3"
      - "logit_diff >= 1000"
      - "resid_pre[0, ' Hart'] recovers >= 0.9"
      - "resid_pre[:, 1] recovers >= 0.5"
"""


def literal(pattern: str) -> str:
    """fnmatch reads '[' as a character class; claims are full of them."""
    return pattern.replace("[", "[[]")


def test_every_failed_check_with_values_predictions_and_map(pytester, write):
    write("behaviors/f.yaml", FAILING)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            literal(line)
            for line in [
                "*behavior 'alex-hart' on interptest-tiny: 3 of 6 checks failed",
                "*passed  top-1 prediction is ' Hart'*measured 0.9*",
                "*FAILED  prob(' Cole') >= 0.5*measured 0.0*",
                "*passed  rank(' Hart') <= 3*measured 1*",
                "*FAILED  logit_diff >= 1000*measured *",
                "*passed  resid_pre[0, ' Hart'] recovers >= 0.9*measured 1.000*",
                "*FAILED  resid_pre[:, 1] recovers >= 0.5*measured 0.000*(worst cell (layer 0, position 1 'Her')*",
                "*prompt:  'Her name was Alex Hart. When Alex'",
                "*corrupt: 'Her name was Alex Cole. When Alex'",
                "*logit diff ' Hart' − ' Cole': m_clean = *, m_corrupt = * (Δ = *)",
                "*clean top-5:   ' Hart' *",
                "*corrupt top-5: ' Cole' *",
                "*map for 'resid_pre[:, 1] recovers >= 0.5'",
                "*resid_pre (recovers: clean patched into corrupted run), layer × position*",
                "*Her*·name*·was*·Alex*·Hart*",
                "*L0*  0.00!*1.00*",
            ]
        ]
    )
    assert "Traceback" not in output and "def runtest" not in output and "site-packages" not in output
    assert max(len(line) for line in output.splitlines() if "L0" in line or "·name" in line) <= 100


def test_reportinfo_points_at_the_behavior_line(pytester, write):
    write("behaviors/f.yaml", "# a comment\n" + FAILING)
    items, _ = pytester.inline_genitems()
    path, line, description = items[0].reportinfo()
    assert path.name == "f.yaml" and line == 2 and description == "behavior alex-hart"  # 0-based: line 3
    assert items[0].location == ("behaviors/f.yaml", 2, "behavior alex-hart")
