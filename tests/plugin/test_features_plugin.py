"""Feature claims through pytest: results.json records the SAE, the chosen features and the random
control; report.html draws the feature-activation strip; a bad SAE entry is a collection error at its line."""

import json

SPEC = """\
saes:
  res1: {zoo: tiny-res1}
behaviors:
  - name: alex-hart
    prompt: "Her name was Alex Hart. When Alex"
    expect: " Hart"
    corrupt: "Her name was Alex Cole. When Alex"
    claims:
      - "feature(res1, 139) at ' Hart' >= 0.8"
      - "features(res1)[top 3; ' Hart'] together recovers >= 0.2"
      - "features(res1)[top 3; ' Hart'] together recovers beats random at 0.9"
      - "reconstruction(res1) recovers >= 0.99"
"""


def test_results_and_report(pytester, write):
    write("behaviors/f.yaml", SPEC)
    result = pytester.runpytest("--interp-report=out", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)  # the reconstruction keeps 0.934, not 0.99
    result.stdout.fnmatch_lines(["*reconstruction(res1) recovers >= 0.99*"])
    data = json.loads((pytester.path / "out" / "results.json").read_text())
    claims = {c["text"]: c for c in data["behaviors"][0]["claims"]}
    activation = claims["feature(res1, 139) at ' Hart' >= 0.8"]
    assert activation["sae"] == "res1" and activation["form"] == "activation" and activation["passed"]
    assert activation["figure"]["type"] == "features" and activation["figure"]["rows"][0]["feature"] == 139
    top = claims["features(res1)[top 3; ' Hart'] together recovers >= 0.2"]
    assert top["features"] == [139, 431, 433] and top["top"] == 3 and top["passed"]
    control = claims["features(res1)[top 3; ' Hart'] together recovers beats random at 0.9"]
    assert control["features"] == [139, 431, 433] and control["random"]["drawn"] >= 20 and control["passed"]
    assert not claims["reconstruction(res1) recovers >= 0.99"]["passed"]
    html = (pytester.path / "out" / "report.html").read_text()
    assert 'data-figure="features"' in html and "feature 139 · clean" in html and "feature 139 · corrupt" in html


def test_a_bad_sae_entry_is_a_collection_error_at_its_line(pytester, write):
    write("behaviors/f.yaml", SPEC.replace("{zoo: tiny-res1}", "{path: missing}"))
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*behaviors/f.yaml:2: key 'saes.res1': *missing: no such SAE directory*"])


def test_suggest_states_feature_claims_that_hold(pytester, write):
    import re

    from interptest.api import check_behavior

    write("behaviors/f.yaml", SPEC.replace('      - "reconstruction(res1) recovers >= 0.99"\n', ""))
    result = pytester.runpytest("--interp-suggest", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    suggested = re.findall(r'- "((?:features|reconstruction)\(res1\)[^"]*)"', out)
    assert "reconstruction(res1) recovers >= 0.85" in suggested  # measured 0.934
    assert "features(res1)[139] recovers >= 0.05" in suggested  # measured 0.121: the strongest single feature
    assert any(s.startswith("features(res1)[top ") and "together recovers >= " in s for s in suggested), suggested
    behavior = {
        "name": "pasted",
        "prompt": "Her name was Alex Hart. When Alex",
        "expect": " Hart",
        "corrupt": "Her name was Alex Cole. When Alex",
        "saes": {"res1": {"zoo": "tiny-res1"}},
        "claims": suggested,
    }
    assert check_behavior(behavior, "interptest-tiny", raise_on_failure=False).passed


def test_an_sae_that_does_not_fit_the_model_is_an_error_at_its_entry(pytester, write):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
    from test_saes import make_weights, write_sae

    write_sae(pytester.path / "behaviors" / "wide", "standard", make_weights("standard", d_in=64, d_sae=600))
    write("behaviors/f.yaml", SPEC.replace("{zoo: tiny-res1}", "{path: wide}"))
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret != 0 and "passed" not in result.stdout.str().split("\n")[-1]
    result.stdout.fnmatch_lines(
        [
            "*behaviors/f.yaml:2: behavior 'alex-hart', key 'saes.res1': SAE 'res1' (*wide): d_in = 64 does not fit "
            "'blocks.1.hook_resid_pre', which is 128 wide on this model*"
        ]
    )
