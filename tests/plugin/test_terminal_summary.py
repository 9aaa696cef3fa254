"""One summary line per behavior with its key numbers."""


def test_summary_lines(pytester, write):
    write(
        "behaviors/f.yaml",
        """\
        behaviors:
          - name: alex-hart
            prompt: "Her name was Alex Hart. When Alex"
            expect: " Hart"
            corrupt: "Her name was Alex Cole. When Alex"
            claims:
              - "resid_pre[0, ' Hart'] recovers >= 0.9"
              - "prob(' Cole') >= 0.5"
          - name: france
            prompt: "The capital of France is"
            expect: " Paris"
        """,
    )
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        [
            "*- interptest -*",
            # the user's claims, and apart from them the implicit check (the top-1 prediction)
            "FAILED   behaviors/f.yaml::alex-hart  [[]interptest-tiny]  m_clean *  m_corrupt *  "
            "claims 1/2 + implicit 1/1 (top-1)",
            "PASSED   behaviors/f.yaml::france  [[]interptest-tiny]  m_clean n/a  m_corrupt n/a  "
            "claims 0/0 + implicit 1/1 (top-1)",
        ]
    )
