"""Feature claims on the shipped model and SAE: the behaviors of behaviors/features.yaml pass with the
numbers their comments state, false feature claims fail (so a broken implementation cannot pass the
suite), and the shipped SAE has the L0 and explained variance its model card states."""

import os
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import pytest

import interptest
from interptest import saes
from interptest.api import check_behavior
from interptest.spec import load_spec_file

ROOT = Path(__file__).parents[2]
SPEC = ROOT / "behaviors" / "features.yaml"
SAE_DIR = ROOT / "interptest" / "zoo" / "saes" / "tiny-res1"


@pytest.fixture(scope="module")
def model():
    return interptest.load_model("interptest-tiny")


def shipped(name, claims=None):
    behavior = next(b for b in load_spec_file(SPEC).behaviors if b.name == name)
    if claims is None:
        return behavior
    import dataclasses

    from interptest.claims import parse_claim

    return dataclasses.replace(behavior, claims=tuple(parse_claim(c) for c in claims), claim_pass_rates=())


def values(result):
    return {check.text: check.value for check in result.checks}


MEASURED = {
    "alex-hart-features": {
        "feature(res1, 139) at ' Hart' >= 0.8": 1.016,
        "feature(res1, 139) at ' Hart' on corrupt <= 0.1": 0.0,
        "features(res1)[139; ' Hart'] recovers >= 0.05": 0.121,
        "features(res1)[top 8; ' Hart'] together recovers >= 0.3": 0.361,
        "features(res1)[top 8; ' Hart'] together breaks >= 0.2": 0.250,
        "reconstruction(res1) recovers >= 0.9": 0.934,
        "reconstruction(res1) at ' Hart' recovers >= 0.85": 0.908,
    },
    "mary-john-features": {
        "feature(res1, 328) at -1 >= 1.0": 1.561,
        "features(res1)[328; -1] breaks >= 0.4 ablate zero": 0.457,
        "features(res1)[top 5; -1] together recovers >= 0.3": 0.343,
        "reconstruction(res1) recovers >= 0.75": 0.803,
    },
}


@pytest.mark.parametrize("name", ["alex-hart-features", "mary-john-features", "induction-any-name-features"])
def test_the_shipped_feature_behaviors_pass_with_the_stated_numbers(model, name):
    result = check_behavior(shipped(name), model, raise_on_failure=False)
    assert result.passed, [(c.text, c.value, c.detail) for c in result.failures]
    got = values(result)
    for text, value in MEASURED.get(name, {}).items():
        assert got[text] == pytest.approx(value, abs=1e-3), text


FALSE = {
    "alex-hart-features": [
        "features(res1)[top 8; ' Hart'] together recovers >= 0.9",  # 0.361: the rest is in ε
        "features(res1)[0, 1, 2; ' Hart'] together recovers >= 0.2",  # features that do not differ: 0
        "features(res1)[0, 1, 2; ' Hart'] together recovers beats random at 0.95",
        "feature(res1, 139) at ' Hart' on corrupt >= 0.5",  # 0.0
        "reconstruction(res1) recovers >= 0.99",  # 0.934
        "features(res1)[139; ' Hart'] breaks >= 0.5 ablate zero",
    ],
    "mary-john-features": [
        "feature(res1, 328) at -1 <= 0.5",  # 1.561
        "features(res1)[top 5; -1] together recovers >= 0.9",  # 0.343
    ],
}


@pytest.mark.parametrize("name", sorted(FALSE))
def test_false_feature_claims_fail(model, name):
    result = check_behavior(shipped(name, FALSE[name]), model, raise_on_failure=False)
    verdicts = {c.text: c.passed for c in result.checks}
    for text in FALSE[name]:
        assert verdicts[text] is False, (text, values(result)[text])


def test_the_shipped_sae_matches_its_model_card(model):
    from interptest.zoo.train_sae import HOOK, activations

    sae = saes.load(SAE_DIR)
    assert (sae.config.architecture, sae.d_in, sae.d_sae, sae.hook_name) == ("standard", 128, 512, HOOK)
    x = activations(model, 2000, 300, HOOK)
    f = sae.encode(x)
    assert saes.l0(f) == pytest.approx(9.924, abs=1e-3)
    assert saes.explained_variance(x, sae.decode(f)) == pytest.approx(0.9315, abs=1e-4)
    assert int(((f > 0).sum(0) == 0).sum()) == 0


def test_the_features_command_prints_the_indices_claims_name(capsys, tmp_path):
    from interptest.cli import main

    alex = "Her name was Alex Hart. When Alex"
    assert main(["features", alex, "--sae", "tiny-res1", "--corrupt", alex.replace("Hart", "Cole"), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("standard SAE on blocks.1.hook_resid_pre (d_in=128, d_sae=512); interptest-tiny")
    assert "    5 ' Hart'          282: 1.84, 139: 1.02, 433: 0.81" in out
    assert "    139  Σ 1.02; most at 5 ' Hart' / ' Cole': 1.02 clean, 0.00 corrupted" in out
    assert main(["features", alex, "--sae", str(tmp_path / "none")]) == 2
    assert "no such SAE directory" in capsys.readouterr().err
    assert main(["features", alex, "--sae", "tiny-res1", "--corrupt", "Her name"]) == 2
    assert "the corrupted prompt has 3 tokens, the prompt 9" in capsys.readouterr().err
