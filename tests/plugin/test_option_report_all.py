"""--interp-report-all / ini interp_report_all: every component's map, not only the claimed ones."""

import json

SPEC = """\
behaviors:
  - name: alex-hart
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Hart"
    corrupt: "Her name was Alex Cole. When Alex"
    claims:
      - "resid_pre[0, ' Hart'] recovers >= 0.9"
      - "mlp_out[0, ' Hart'] breaks >= 0.0"
  - name: france
    prompt: "The capital of France is"
    expect: " Paris"
"""
EVERY = {"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "heads"}


def maps(directory) -> dict:
    records = json.loads((directory / "results.json").read_text())["behaviors"]
    return {r["nodeid"].split("::")[1]: r["maps"] for r in records}


def test_only_claimed_maps_by_default(pytester, write):
    write("behaviors/f.yaml", SPEC)
    pytester.runpytest("--interp-report=out").assert_outcomes(passed=2)
    assert set(maps(pytester.path / "out")["alex-hart"]) == {"resid_pre", "mlp_out:noise"}


def test_flag_sweeps_every_component(pytester, write):
    write("behaviors/f.yaml", SPEC)
    pytester.runpytest("--interp-report=out", "--interp-report-all").assert_outcomes(passed=2)
    found = maps(pytester.path / "out")
    assert set(found["alex-hart"]) == EVERY | {"mlp_out:noise"}
    assert found["france"] == {}  # nothing to patch without a corruption
    resid_post = found["alex-hart"]["resid_post"]["values"]
    assert abs(resid_post[-1][-1] - 1) < 1e-3  # the last layer's last position carries it all
    html = (pytester.path / "out" / "report.html").read_text()
    assert html.count('class="heatmap"') == 7


def test_ini_key(pytester, write):
    write("behaviors/f.yaml", SPEC)
    pytester.makeini("[pytest]\ninterp_report = out\ninterp_report_all = true\n")
    pytester.runpytest().assert_outcomes(passed=2)
    assert set(maps(pytester.path / "out")["alex-hart"]) == EVERY | {"mlp_out:noise"}
