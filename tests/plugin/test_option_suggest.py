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
    block = output[output.index("# --interp-suggest for 'alex-hart'") :].split("\n=")[0]
    suggested = yaml.safe_load(block)[0]["claims"]
    assert any(c.startswith("resid_pre[") for c in suggested) and "resid_pre[elsewhere]" in " ".join(suggested)
    spec.write_text(SPEC + "    claims:\n" + "".join(f'      - "{c}"\n' for c in suggested))
    pytester.runpytest().assert_outcomes(passed=1)


FAMILY = """\
behaviors:
  - name: fam
    template: "Her name was {first} {last}. When {first}"
    expect: " {last}"
    corrupt: {resample: [last]}
    vars: {first: [Alex, Mary, John], last: [Hart, Cole, Jones, Baker]}
    samples: 12
"""


def test_families_get_claims_on_their_bootstrap_bounds_that_hold_when_pasted(pytester, write):
    spec = write("behaviors/f.yaml", FAMILY)
    result = pytester.runpytest("--interp-suggest")
    result.assert_outcomes(passed=1)
    output = result.stdout.str()
    assert "# --interp-suggest for 'fam' (interptest-tiny): bounds of the mean over 12 samples" in output
    block = output[output.index("# --interp-suggest for 'fam'") :].split("\n=")[0]
    suggested = yaml.safe_load(block)[0]["claims"]
    assert "resid_pre[:, {last}] recovers >= 0.90" in suggested  # the position as a template variable
    spec.write_text(FAMILY + "    claims:\n" + "".join(f'      - "{c}"\n' for c in suggested))
    pytester.runpytest().assert_outcomes(passed=1)


def test_suggested_bounds_keep_a_margin_to_the_measured_values():
    from interptest.suggest import bound_at_least, bound_at_most

    assert [bound_at_least(v) for v in (1.0, 0.992, 0.95, 0.9)] == [0.95, 0.9, 0.9, 0.85]
    assert [bound_at_most(v) for v in (0.0, 0.008, 0.05, 0.51)] == [0.05, 0.1, 0.1, 0.6]


# The trial's IOI family: ' Eric' was printed as a position (one sample's token), a collection error once pasted.
IOI_FAMILY = {
    "name": "ioi-any-names",
    "template": "When {a} and {b} went to the {place}, {b} gave a {obj} to",
    "expect": " {a}",
    "foil": " {b}",
    "corrupt": "When {a} and {b} went to the {place}, {a} gave a {obj} to",
    "vars": {"a": "@names", "b": "@names", "place": "@places", "obj": "@objects"},
    "samples": 20,
}


def test_every_suggestion_for_the_shipped_families_pastes_back_and_holds(pytester, write):
    import pathlib

    families = [IOI_FAMILY]
    for path in sorted((pathlib.Path(__file__).parents[2] / "behaviors").glob("*.yaml")):
        for behavior in yaml.safe_load(path.read_text())["behaviors"]:
            if "template" in behavior:
                families.append({k: v for k, v in behavior.items() if k not in ("claims", "description")})
    assert len(families) >= 4, families
    spec = write("behaviors/f.yaml", yaml.safe_dump({"model": "interptest-tiny", "behaviors": families}))
    result = pytester.runpytest("--interp-suggest")
    result.assert_outcomes(passed=len(families))
    output = result.stdout.str()
    for family in families:
        block = output[output.index(f"# --interp-suggest for {family['name']!r}") :].split("\n\n")[0].split("\n=")[0]
        family["claims"] = yaml.safe_load(block)[0]["claims"]
        assert family["claims"], block
    ioi = "\n".join(families[0]["claims"])
    assert "resid_pre[0, {b}#2] recovers >= 0.90" in ioi and "' " not in ioi  # no sample's token as a position
    spec.write_text(yaml.safe_dump({"model": "interptest-tiny", "behaviors": families}))
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=len(families))


def test_a_position_is_written_so_that_it_binds_on_every_sample():
    from interptest.claims import position_source

    one = [["<s>", " Alex", " Hart", ".", " Alex"]]
    assert [position_source(p, one) for p in range(1, 5)] == ["' Alex'#1", "' Hart'", "'.'", "-1"]
    tokens = [
        ["<s>", " When", " Eric", " and", " Ann", ",", " Ann", " to"],
        ["<s>", " When", " Bo", " and", " Cy", ",", " Cy", " to"],
    ]
    variables = [{"a": " Eric", "b": " Ann"}, {"a": " Bo", "b": " Cy"}]
    labels = [position_source(p, tokens, variables) for p in (2, 4, 6, 3, 7)]
    assert labels == ["{a}", "{b}#1", "{b}#2", "' and'", "' to'"]
