"""`model: gpt2` through the plugin, offline, from a Hugging Face cache that holds GPT-2 small's real
config and tokenizer with random weights (tests/gpt2cache.py): the shipped behaviors/gpt2/ spec collects
and runs instead of skipping, with positions on GPT-2's tokens, and multi-token lexicon entries are
reported at collection with GPT-2's tokenization. The weights are random: outcomes mean nothing, so the
tests look at collection, positions and the mechanics of a run, never at what passed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import gpt2cache

SHIPPED = Path(__file__).parents[2] / "behaviors"

OBJECTS = """\
behaviors:
  - name: gift
    template: "Alice gave Bob the {object}. Bob thanked Alice for the"
    expect: " {object}"
    vars: {object: "@objects"}
    samples: 4
"""

CAPITALS = """\
behaviors:
  - name: flight
    template: "She flew from {origin} to {destination}. She landed in"
    expect: " {destination}"
    vars: {origin: "@capitals", destination: "@capitals"}
    samples: 4
"""

# interptest's lexicons that are not single GPT-2 tokens where a template puts them (after a space),
# with GPT-2's tokenization as interptest prints it (the token texts, decoded).
MULTI_TOKEN = {
    "names": {"Ella": [" Ell", "a"], "Dora": [" D", "ora"]},
    "objects": {"kite": [" k", "ite"], "vase": [" v", "ase"]},
    "capitals": {
        "Nairobi": [" N", "airo", "bi"],
        "Kyiv": [" Ky", "iv"],
        "Bucharest": [" Buch", "arest"],
        "Belgrade": [" Bel", "grade"],
        "Zagreb": [" Z", "ag", "reb"],
        "Accra": [" Acc", "ra"],
        "Rabat": [" Rab", "at"],
        "Bogota": [" Bog", "ota"],
        "Caracas": [" Car", "acas"],
        "Hanoi": [" H", "ano", "i"],
        "Kathmandu": [" Kath", "mand", "u"],
        "Reykjavik": [" Rey", "kj", "av", "ik"],
        "Tallinn": [" Tall", "inn"],
        "Riga": [" R", "iga"],
        "Vilnius": [" Vil", "n", "ius"],
        "Montevideo": [" Monte", "video"],
        "Quito": [" Qu", "ito"],
        "Doha": [" D", "oha"],
    },
}


def shown(word: str, tokens: list[str]) -> str:
    return f"{word!r} → {tokens!r}"


@pytest.fixture(autouse=True)
def load_every_time(monkeypatch):
    """These tests are about loading from the cache: no model store shared between in-process runs."""
    import interptest.model_cache

    monkeypatch.setattr(interptest.model_cache.ModelCache, "shared", None)


@pytest.fixture
def offline(monkeypatch):
    """HF_HOME/HF_HUB_CACHE at the random-gpt2 cache, HF_HUB_OFFLINE=1, sockets refused; the inner
    in-process pytest runs inherit all of it."""
    return gpt2cache.offline_gpt2(monkeypatch)


@pytest.fixture
def published(pytester):
    target = pytester.path / "behaviors" / "gpt2" / "published.yaml"
    target.parent.mkdir(parents=True)
    target.write_text((SHIPPED / "gpt2" / "published.yaml").read_text())
    return target


def test_shipped_gpt2_spec_collects_from_the_cache(pytester, published, offline, monkeypatch, tmp_path):
    items, _ = pytester.inline_genitems()
    assert [item.nodeid for item in items] == [
        "behaviors/gpt2/published.yaml::ioi-name-movers",
        "behaviors/gpt2/published.yaml::induction-alex-hart",
    ]
    for item in items:
        assert item.get_closest_marker("interp_model").args[0] == "gpt2"
        assert item.get_closest_marker("skip") is None, item.get_closest_marker("skip")
    # the contrast: the same offline run with an empty cache skips both, saying why
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    items, _ = pytester.inline_genitems()
    reasons = [item.get_closest_marker("skip").kwargs["reason"] for item in items]
    assert len(reasons) == 2 and all(
        reason.startswith(
            "model not available: model 'gpt2' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
        )
        for reason in reasons
    ), reasons


def test_shipped_gpt2_spec_runs_with_positions_on_gpt2_tokens(pytester, published, offline):
    result = pytester.runpytest("--interp-report=report")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 2, result.stdout.str()
    assert "skipped" not in outcomes and "error" not in outcomes and "errors" not in outcomes
    output = result.stdout.str()
    assert "Traceback" not in output and "INTERNALERROR" not in output
    assert "[gpt2]" in output  # the per-behavior summary lines

    records = {
        r["nodeid"].split("::")[1]: r
        for r in json.loads((pytester.path / "report" / "results.json").read_text())["behaviors"]
    }
    ioi, induction = records["ioi-name-movers"], records["induction-alex-hart"]
    assert ioi["model"] == induction["model"] == "gpt2"
    assert ioi["tokens"] == gpt2cache.IOI_TOKENS
    assert induction["tokens"] == ["<|endoftext|>", "Her", " name", " was", " Alex", " Hart", ".", " When", " Alex"]
    assert ioi["foil"] == " John" and induction["foil"] == " Cole"

    claims = {c["text"]: c for c in ioi["claims"] + induction["claims"]}
    # ' John'#2 is the second ' John', position 10 -- the one token the corruption changes, so at layer 0
    # patching it recovers exactly 1 with any weights
    john2 = claims["resid_pre[0, ' John'#2] recovers >= 0.99"]
    assert john2["map"] == "resid_pre" and john2["cells"] == [[0, 10]]
    assert john2["value"] == pytest.approx(1.0, abs=1e-4) and john2["passed"]
    last = claims["resid_post[-1, -1] recovers >= 0.99"]
    assert last["map"] == "resid_post" and last["cells"] == [[11, 14]]
    assert last["value"] == pytest.approx(1.0, abs=1e-4)
    assert claims["resid_pre[0:3, ' Hart'] recovers >= 0.9"]["cells"] == [[0, 5], [1, 5], [2, 5]]
    assert claims["resid_pre[-1, -1] recovers >= 0.9"]["cells"] == [[11, 8]]
    assert claims["any heads[5.1, 5.5, 6.9, 7.2, 7.10] recovers >= 0.1"]["cells"] == [
        [5, 1],
        [5, 5],
        [6, 9],
        [7, 2],
        [7, 10],
    ]
    assert claims["heads[9.6, 9.9, 10.0] together recovers >= 0.3"]["value"] is not None

    shapes = {
        (name, key): (len(m["values"]), len(m["values"][0]))
        for name, r in records.items()
        for key, m in r["maps"].items()
    }
    assert shapes == {
        ("ioi-name-movers", "resid_pre"): (12, 15),
        ("ioi-name-movers", "resid_post"): (12, 15),
        ("induction-alex-hart", "resid_pre"): (12, 9),
        ("induction-alex-hart", "heads"): (12, 12),
    }
    for record in (ioi, induction):
        assert record["clean_metric"] is not None and record["corrupt_metric"] is not None
        assert abs(record["clean_metric"] - record["corrupt_metric"]) >= 1.0  # min_effect: claims were judged


def test_multi_token_lexicon_entries_are_collection_errors_on_gpt2(pytester, write, offline):
    """The lexicon check of docs/families.md, `--interp-model gpt2 --co`, on the shipped induction spec (@names)
    and on specs using @objects and @capitals: one collection error per file, naming the variable,
    the lexicon and each entry with GPT-2's tokenization (at most 8, then a count)."""
    (pytester.path / "behaviors").mkdir()
    (pytester.path / "behaviors" / "induction.yaml").write_text((SHIPPED / "induction.yaml").read_text())
    write("behaviors/objects.yaml", OBJECTS)
    write("behaviors/capitals.yaml", CAPITALS)
    result = pytester.runpytest("--co", "--interp-model", "gpt2")
    assert result.ret == 2
    output = result.stdout.str()
    assert "Traceback" not in output and "INTERNALERROR" not in output
    assert output.count("ERROR collecting") == 3

    names = ", ".join(shown(w, t) for w, t in MULTI_TOKEN["names"].items())
    assert (
        f"behavior 'induction-any-name', key 'vars.first': 2 value(s) of {{first}} in lexicon @names are "
        f"not single tokens for this model: {names}"
    ) in output
    objects = ", ".join(shown(w, t) for w, t in MULTI_TOKEN["objects"].items())
    assert (
        f"behavior 'gift', key 'vars.object': 2 value(s) of {{object}} in lexicon "
        f"@objects are not single tokens for this model: {objects}"
    ) in output
    every = ", ".join(shown(w, t) for w, t in MULTI_TOKEN["capitals"].items())
    assert (
        f"behavior 'flight', key 'vars.origin': 18 value(s) of {{origin}} in "
        f"lexicon @capitals are not single tokens for this model: {every}"
    ) in output
    # every other entry of these lexicons is one GPT-2 token: none else is named
    assert "'Emma'" not in output and "'Paris'" not in output and "'Rome'" not in output


def test_lexicon_check_lists_every_offending_entry(pytester, write, offline):
    write("behaviors/capitals.yaml", CAPITALS)
    output = pytester.runpytest("--co", "--interp-model", "gpt2").stdout.str()
    missing = [word for word, tokens in MULTI_TOKEN["capitals"].items() if shown(word, tokens) not in output]
    assert not missing, missing


def test_lexicon_error_points_at_the_vars_key(pytester, write, offline):
    (pytester.path / "behaviors").mkdir()
    (pytester.path / "behaviors" / "induction.yaml").write_text((SHIPPED / "induction.yaml").read_text())
    write("behaviors/objects.yaml", OBJECTS)
    output = pytester.runpytest("--co", "--interp-model", "gpt2").stdout.str()
    vars_line = 1 + (SHIPPED / "induction.yaml").read_text().splitlines().index("    vars:")
    assert f"behaviors/induction.yaml:{vars_line}: behavior 'induction-any-name', key 'vars.first'" in output
    assert "behaviors/objects.yaml:5: behavior 'gift', key 'vars.object'" in output


def test_single_token_drop_leaves_gpt2s_multi_token_names_out_with_a_note(pytester, write, offline):
    write(
        "behaviors/names.yaml",
        """\
        behaviors:
          - name: names
            template: "Her name was {first} {last}. When {first}"
            expect: " {last}"
            vars: {first: "@names", last: "@surnames"}
            samples: 4
            single_token: drop
        """,
    )
    result = pytester.runpytest("--interp-model", "gpt2", "-v", "--interp-report=out")
    result.assert_outcomes(passed=0, failed=1)  # random weights: the prediction is wrong, not the run
    record = json.loads((pytester.path / "out" / "results.json").read_text())["behaviors"][0]
    detail = record["claims"][0]["detail"]
    names = MULTI_TOKEN["names"]
    assert (
        f"dropped 2 value(s) that are not single tokens for this model: {shown('Ella', names['Ella'])}, "
        f"{shown('Dora', names['Dora'])}"
    ) in detail
