"""Feature claims (interptest.claims.features) and their engine (interptest.patching.features).

Every intervention equals a reference written here from the definitions, one forward at a time with a
TransformerLens hook at the SAE's hook: f = encode(x), ε = x − decode(f), x' = decode(f') + ε with f'
the edited features (reconstruction: x' = decode(f), ε dropped), on random GPT-2, Llama-style and
NeoX-style models (≤ 1e-5 of |m_clean − m_corrupt|); an empty intervention changes nothing (≤ 1e-6).
Grammar and collection errors are tested by their text."""

from __future__ import annotations

import os
import sys
import textwrap

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, os.path.dirname(__file__))

import pytest
import torch
from test_saes import make_weights, write_sae

import tinymodels
from interptest import saes
from interptest.claims import parse_claim
from interptest.claims.grammar import ClaimSyntaxError
from interptest.errors import SpecError
from interptest.patching.features import FeaturePatcher
from interptest.spec import parse_spec

HOOK = "blocks.1.hook_resid_pre"
D_SAE = 40


# ------------------------------------------------------------------------------------------------
# The reference: one sample, one feature set, one forward


def ref_encode(x, w, cfg):
    """SAELens's encoders, vectorized over rows (standard and topk here; test_saes checks every one)."""
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "standard":
        return torch.relu(pre)
    values, idx = pre.topk(cfg["k"], dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, values.relu())


def ref_decode(f, w):
    return f @ w["W_dec"] + w["b_dec"]


def ref_metric(model, ids, expect, foil, hook_fn=None, noise=None):
    hooks = []
    if noise is not None:
        hooks.append(("hook_embed", lambda act, hook: act + noise))
    if hook_fn is not None:
        hooks.append((HOOK, hook_fn))
    with torch.no_grad():
        logits = model.run_with_hooks(ids[None], fwd_hooks=hooks)[0, -1]
    return float(logits[expect] - logits[foil])


def ref_patched(model, ids, expect, foil, w, cfg, features, positions, source_f, noise=None):
    """x' = decode(f') + ε at the SAE hook, f' = f with ``features`` at ``positions`` from ``source_f`` [n, d_sae]."""

    def hook_fn(act, hook):
        x = act[0]
        f = ref_encode(x, w, cfg)
        eps = x - ref_decode(f, w)
        f2 = f.clone()
        for p in positions:
            for i in features:
                f2[p, i] = source_f[p, i]
        return (ref_decode(f2, w) + eps)[None]

    return ref_metric(model, ids, expect, foil, hook_fn, noise)


def ref_reconstructed(model, ids, expect, foil, w, cfg, positions):
    def hook_fn(act, hook):
        x = act[0].clone()
        x_hat = ref_decode(ref_encode(act[0], w, cfg), w)
        for p in positions:
            x[p] = x_hat[p]
        return x[None]

    return ref_metric(model, ids, expect, foil, hook_fn)


def setup(arch, tmp_path, architecture="standard", S=3, n=7, seed=0):
    model = tinymodels.tiny_model(arch)
    d = int(model.cfg.d_model)
    weights = make_weights(architecture, seed=seed, d_in=d, d_sae=D_SAE)
    extra = {"k": 6} if architecture == "topk" else {}
    directory = write_sae(tmp_path / f"sae-{arch}-{architecture}", architecture, weights, **extra)
    cfg = {"architecture": architecture, "k": 6}
    sae = saes.load(directory)
    g = torch.Generator().manual_seed(seed)
    vocab = int(model.cfg.d_vocab)
    clean = torch.randint(1, vocab, (S, n), generator=g)
    clean[:, 0] = 0
    corrupt = clean.clone()
    corrupt[:, 2] = torch.randint(1, vocab, (S,), generator=g)
    corrupt[:, 4] = torch.randint(1, vocab, (S,), generator=g)
    expect = torch.randint(1, vocab, (S,), generator=g)
    foil = torch.randint(1, vocab, (S,), generator=g)
    return model, sae, weights, cfg, clean, corrupt, expect, foil


def acts_of(model, ids, noise=None):
    hooks = [("hook_embed", lambda act, hook: act + noise)] if noise is not None else []
    store = {}

    def keep(act, hook):
        store["x"] = act.detach().clone()

    with torch.no_grad():
        model.run_with_hooks(ids, fwd_hooks=hooks + [(HOOK, keep)])
    return store["x"]


@pytest.mark.parametrize(
    "arch,architecture", [("gpt2", "standard"), ("llama", "standard"), ("neox", "standard"), ("gpt2", "topk")]
)
def test_interventions_equal_the_one_forward_reference(arch, architecture, tmp_path):
    model, sae, w, cfg, clean, corrupt, expect, foil = setup(arch, tmp_path, architecture)
    S, n = clean.shape
    noise = torch.randn(S, n, int(model.cfg.d_model), generator=torch.Generator().manual_seed(5)) * 0.5
    noise[:, [0, 1, 3, 5, 6]] = 0
    acts = {"clean": acts_of(model, clean), "corrupt": acts_of(model, corrupt, noise)}
    engine = FeaturePatcher(model, sae, clean, corrupt, expect, foil, noise, 4, lambda which: acts[which])
    f_clean = ref_encode(acts["clean"], w, cfg)
    f_corrupt = ref_encode(acts["corrupt"], w, cfg)
    m_clean = torch.tensor([ref_metric(model, clean[s], expect[s], foil[s]) for s in range(S)])
    m_corrupt = torch.tensor([ref_metric(model, corrupt[s], expect[s], foil[s], noise=noise[s]) for s in range(S)])
    scale = float((m_clean - m_corrupt).abs().max())
    sets = [[3], [1, 7, 20], list(range(D_SAE))]
    cases = [
        ("corrupt", "clean", [2, 6], f_clean),
        ("clean", "corrupt", list(range(n)), f_corrupt),
        ("clean", "zero", [4], torch.zeros_like(f_clean)),
        ("clean", "mean", [0, 4, 6], f_clean.mean(0, keepdim=True).expand_as(f_clean)),
    ]
    for base, source, positions, source_f in cases:
        got = engine.patch(sets, positions, base, source)
        assert got.shape == (S, len(sets))
        ids = clean if base == "clean" else corrupt
        for s in range(S):
            nz = noise[s] if base == "corrupt" else None
            for j, features in enumerate(sets):
                ref = ref_patched(model, ids[s], expect[s], foil[s], w, cfg, features, positions, source_f[s], nz)
                assert abs(float(got[s, j]) - ref) <= 1e-5 * max(1.0, scale), (base, source, s, j)
    recon = engine.reconstruct([1, 5], "clean")
    for s in range(S):
        ref = ref_reconstructed(model, clean[s], expect[s], foil[s], w, cfg, [1, 5])
        assert abs(float(recon[s]) - ref) <= 1e-5 * max(1.0, scale)
    # the engine's features are the reference's
    assert torch.allclose(engine.features("clean"), f_clean, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_an_empty_intervention_changes_nothing(arch, tmp_path):
    model, sae, _, _, clean, corrupt, expect, foil = setup(arch, tmp_path)
    acts = {"clean": acts_of(model, clean), "corrupt": acts_of(model, corrupt)}
    engine = FeaturePatcher(model, sae, clean, corrupt, expect, foil, None, 2, lambda which: acts[which])
    for base in ("clean", "corrupt"):
        ids = clean if base == "clean" else corrupt
        plain = torch.tensor([ref_metric(model, ids[s], expect[s], foil[s]) for s in range(ids.shape[0])])
        for source in ("clean", "corrupt", "zero"):
            got = engine.patch([[]], range(ids.shape[1]), base, source)[:, 0]
            assert (got - plain.double()).abs().max() <= 1e-6
        # features replaced by their own values: x + (decode(f) − decode(f)) is x bit for bit
        same = engine.patch([list(range(D_SAE))], range(ids.shape[1]), base, base)[:, 0]
        assert (same - plain.double()).abs().max() <= 1e-6


# ------------------------------------------------------------------------------------------------
# Grammar


@pytest.mark.parametrize(
    "text,fields",
    [
        ("feature(res1, 123) at ' Hart' >= 2.0", {"form": "activation", "features": (123,), "on_corrupt": False}),
        ("feature(res1, 7) at -1 on corrupt <= 0.1", {"form": "activation", "on_corrupt": True}),
        ("any feature(res1, 7) at 1:4 >= 1", {"quantifier": "any"}),
        (
            "features(res1)[123, 456] together breaks >= 0.5 ablate zero",
            {"form": "patch", "features": (123, 456), "quantifier": "together", "ablation": "zero"},
        ),
        ("features(res1)[123] recovers >= 0.5", {"direction": "denoise", "quantifier": "every"}),
        ("features(res1)[top 5; -1] together recovers >= 0.8", {"top": 5, "features": ()}),
        ("any features(res1)[1, 2] recovers >= 0.5", {"quantifier": "any"}),
        ("features(res1)[1, 2] together breaks beats random at 0.95", {"direction": "noise"}),
        ("reconstruction(res1) recovers >= 0.9", {"form": "reconstruction", "positions": None}),
        ("reconstruction(res1) at -1 recovers >= 0.9", {"form": "reconstruction"}),
    ],
)
def test_grammar(text, fields):
    claim = parse_claim(text)
    assert claim.sae == "res1"
    for key, value in fields.items():
        assert getattr(claim, key) == value, key


@pytest.mark.parametrize(
    "text,message",
    [
        ("feature(res1) at -1 >= 1", "expected ',' and a feature index, e.g. feature(res1, 123)"),
        ("feature(res1, -3) at -1 >= 1", "feature indices count from 0"),
        ("feature(res1, 3) >= 1", "expected 'at' and a position"),
        ("features(res1)[1, 1] recovers >= 0.5", "a feature is listed twice"),
        ("features(res1)[top 0] together recovers >= 0.5", "'top' needs at least 1 feature"),
        ("features(res1)[1, 2] breaks beats random at 0.9", "write 'together' before the verb"),
        ("features(res1)[1] recovers >= 0.5 ablate zero", "'ablate' names what replaces the features"),
        ("features(res1)[1] recover >= 0.5", "'recovers' or 'breaks' (did you mean 'recovers'?)"),
        ("any features(res1)[1] together recovers >= 0.5", "'any' and 'together' cannot be combined"),
        ("features(3)[1] recovers >= 0.5", "expected an SAE name (a key of 'saes')"),
        ("reconstruction(res1) breaks >= 0.5", "expected 'recovers' (or 'at' and a position)"),
    ],
)
def test_grammar_errors(text, message):
    with pytest.raises(ClaimSyntaxError) as info:
        parse_claim(text)
    assert message in info.value.render()


def test_any_still_starts_localization_claims():
    assert type(parse_claim("any resid_pre[0, -1] recovers >= 0.5")).__name__ == "LocalizationClaim"


# ------------------------------------------------------------------------------------------------
# The saes key and collection errors, at the key's or the claim's line


def spec_file(tmp_path, body: str, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def parse(path):
    return parse_spec(path.read_text(), str(path))


def _error(path) -> str:
    with pytest.raises(SpecError) as info:
        parse(path)
    return str(info.value)


BEHAVIOR = textwrap.dedent(
    """
    behaviors:
      - name: b
        prompt: "The dog sat"
        expect: " on"
        corrupt: "The Bob sat"
        claims:
          - "{claim}"
    """
)


def test_saes_key_resolves_next_to_the_spec_and_merges_levels(tmp_path):
    write_sae(tmp_path / "saes" / "a", "standard")
    write_sae(tmp_path / "saes" / "b", "jumprelu")
    path = spec_file(
        tmp_path,
        """
        saes:
          one: {path: saes/a}
        behaviors:
          - name: b
            prompt: "The dog sat"
            expect: " on"
            corrupt: "The Bob sat"
            saes:
              two: {path: saes/b}
            claims:
              - "features(one)[1] recovers >= 0.5"
              - "features(two)[1] recovers >= 0.5"
        """,
    )
    behavior = parse(path).behaviors[0]
    assert [s.name for s in behavior.saes] == ["one", "two"]
    assert behavior.sae("two").config.architecture == "jumprelu"
    assert behavior.sae("one").path == str(tmp_path / "saes" / "a")
    shipped = parse_spec("saes:\n  z: {zoo: tiny-res1}\n" + BEHAVIOR.format(claim="features(z)[1] recovers >= 0.5"))
    assert shipped.behaviors[0].sae("z").config.d_sae == 512


def test_unknown_sae_name_at_the_claims_line(tmp_path):
    write_sae(tmp_path / "a")
    path = spec_file(
        tmp_path, "saes:\n  res1: {path: a}\n" + BEHAVIOR.format(claim="features(res2)[1] recovers >= 0.5")
    )
    message = _error(path)
    assert message.startswith(f"{path}:10: behavior 'b', key 'claims[0]': ")
    assert "names SAE 'res2', which is not defined under 'saes' (defined: res1) (did you mean 'res1'?)" in message


def test_feature_index_beyond_d_sae_at_the_claims_line(tmp_path):
    write_sae(tmp_path / "a")  # d_sae 24
    path = spec_file(tmp_path, "saes:\n  res1: {path: a}\n" + BEHAVIOR.format(claim="feature(res1, 24) at -1 >= 1"))
    message = _error(path)
    assert message.startswith(f"{path}:10: behavior 'b', key 'claims[0]': ")
    assert "feature 24 does not exist: SAE 'res1' has d_sae = 24 (features 0..23)" in message


@pytest.mark.parametrize(
    "entry,message",
    [
        ("{path: nowhere}", "nowhere: no such SAE directory"),
        ("{paths: a}", "expected {path: DIR}"),
        ("{release: r}", "expected {path: DIR}"),
        ("{path: pickled}", "pickled weights (sae_weights.pt) are refused: safetensors only"),
        ("{path: badcfg}", "cfg.json: not valid JSON"),
        ("{path: matryoshka}", "architecture 'matryoshka' is not supported"),
        ("{zoo: nope}", "no shipped SAE 'nope' (shipped: tiny-res1)"),
    ],
)
def test_bad_sae_entries_at_the_entry_line(tmp_path, entry, message):
    write_sae(tmp_path / "pickled")
    (tmp_path / "pickled" / "sae_weights.safetensors").unlink()
    torch.save({}, tmp_path / "pickled" / "sae_weights.pt")
    write_sae(tmp_path / "badcfg")
    (tmp_path / "badcfg" / "cfg.json").write_text("{")
    write_sae(tmp_path / "matryoshka", "matryoshka")
    path = spec_file(tmp_path, f"saes:\n  fine: {{path: pickled/..}}\n  res1: {entry}\n" + BEHAVIOR.format(claim="x"))
    path.write_text(path.read_text().replace("  fine: {path: pickled/..}\n", ""))
    text = _error(path)
    assert text.startswith(f"{path}:2: key 'saes.res1': ") and message in text, text


def test_release_needs_sae_lens(tmp_path):
    import importlib.util

    if importlib.util.find_spec("sae_lens") is not None:
        pytest.skip("sae-lens is installed here")
    path = spec_file(
        tmp_path, "saes:\n  scope: {release: gemma-scope-2b-pt-res, id: layer_12}\n" + BEHAVIOR.format(claim="x")
    )
    text = _error(path)
    assert text.startswith(f"{path}:2: key 'saes.scope': release 'gemma-scope-2b-pt-res': loading an SAE by release")
    assert "needs the 'sae-lens' package, which is not installed" in text


def test_claims_that_cannot_be_false_or_lack_a_corruption_are_refused(tmp_path):
    write_sae(tmp_path / "a")
    path = spec_file(tmp_path, "saes:\n  res1: {path: a}\n" + BEHAVIOR.format(claim="feature(res1, 3) at -1 >= 0"))
    assert "cannot be false: the value is a feature activation" in _error(path)
    body = "saes:\n  res1: {path: a}\n" + BEHAVIOR.format(claim="features(res1)[3] recovers >= 0.5")
    path = spec_file(tmp_path, body.replace('    corrupt: "The Bob sat"\n', ""))
    assert "is normalized by the clean−corrupt effect (m_clean − m_corrupt); add a 'corrupt' prompt" in _error(path)
    body = "saes:\n  res1: {path: a}\n" + BEHAVIOR.format(claim="feature(res1, 3) at -1 on corrupt <= 0.5")
    path = spec_file(tmp_path, body.replace('    corrupt: "The Bob sat"\n', ""))
    assert "claim 'feature(res1, 3) at -1 on corrupt <= 0.5' reads the corrupted run; add a 'corrupt'" in _error(path)
    body = "saes:\n  res1: {path: a}\n" + BEHAVIOR.format(claim="features(res1)[3] breaks >= 0.5 ablate mean")
    path = spec_file(tmp_path, body)
    assert "ablates by the mean" in _error(path) and "add a 'reference' list of prompts" in _error(path)


# ------------------------------------------------------------------------------------------------
# Through the pipeline: binding, the run, each claim's values


def _behavior(tmp_path, claims, sae_dir, **keys):
    from interptest.spec import parse_behavior

    entry = {
        "name": "b",
        "prompt": "The dog sat on the",
        "corrupt": "The Bob sat on the",
        "expect": " dog",
        "foil": " Bob",
        "min_effect": 0.0,
        "saes": {"s": {"path": str(sae_dir)}},
        "claims": claims,
    }
    return parse_behavior(entry | keys)


def test_claim_values_equal_the_reference(tmp_path):
    from interptest.binding import bind_behavior
    from interptest.running import Run

    model = tinymodels.tiny_model("gpt2")
    w = make_weights("standard", seed=3, d_in=int(model.cfg.d_model), d_sae=D_SAE)
    sae_dir = write_sae(tmp_path / "s", "standard", w)
    cfg = {"architecture": "standard"}
    claims = [
        "feature(s, 3) at 2 >= 0.5",
        "any feature(s, 5) at 1:4 on corrupt >= 0.5",
        "features(s)[1, 2; 2] together recovers >= 0.1",
        "features(s)[1, 2, 9] recovers >= 0.1",
        "features(s)[top 3] together breaks >= 0.1 ablate zero",
        "reconstruction(s) recovers >= 0.1",
        "reconstruction(s) at 2 recovers >= 0.1",
    ]
    bound = bind_behavior(_behavior(tmp_path, claims, sae_dir), model)
    run = Run(bound)
    clean, corrupt = bound.clean_ids[0], bound.corrupt_ids[0]
    expect, foil = int(run.expect_first[0]), int(run.foil_ids[0])
    n = clean.shape[0]
    x_clean, x_corrupt = acts_of(model, clean[None])[0], acts_of(model, corrupt[None])[0]
    f_clean, f_corrupt = ref_encode(x_clean, w, cfg), ref_encode(x_corrupt, w, cfg)
    mc, mx = ref_metric(model, clean, expect, foil), ref_metric(model, corrupt, expect, foil)
    assert abs(float(run.clean_metrics[0]) - mc) < 1e-5 and abs(float(run.corrupt_metrics[0]) - mx) < 1e-5

    def rec(m):
        return (m - mx) / (mc - mx)

    def brk(m):
        return (mc - m) / (mc - mx)

    diff = (f_clean - f_corrupt).abs().sum(0)
    top = sorted(sorted(range(D_SAE), key=lambda i: (-float(diff[i]), i))[:3])
    expected = [
        [float(f_clean[2, 3])],
        [float(f_corrupt[p, 5]) for p in (1, 2, 3)],
        [rec(ref_patched(model, corrupt, expect, foil, w, cfg, [1, 2], [2], f_clean))],
        [rec(ref_patched(model, corrupt, expect, foil, w, cfg, [i], range(n), f_clean)) for i in (1, 2, 9)],
        [brk(ref_patched(model, clean, expect, foil, w, cfg, top, range(n), torch.zeros_like(f_clean)))],
        [rec(ref_reconstructed(model, clean, expect, foil, w, cfg, range(n)))],
        [rec(ref_reconstructed(model, clean, expect, foil, w, cfg, [2]))],
    ]
    scale = 1e-5 * max(1.0, abs(mc - mx)) / abs(mc - mx)  # 1e-5 of |Δm|, in normalized units
    for claim, bound_claim, want in zip(bound.spec.claims, bound.bound_claims, expected):
        got = claim.measure(bound_claim, run).values[0].tolist()
        assert len(got) == len(want), claim.text
        for g, r in zip(got, want):
            assert abs(g - r) <= max(scale, 1e-6), (claim.text, g, r)


def test_the_sae_must_fit_the_model_at_its_entry_line(tmp_path):
    from interptest.binding import bind_behavior

    model = tinymodels.tiny_model("gpt2")
    cases = [
        (make_weights("standard", d_in=24), {}, "d_in = 24 does not fit 'blocks.1.hook_resid_pre', which is 32 wide"),
        (
            make_weights("standard", d_in=32),
            {"metadata": {"hook_name": "blocks.9.hook_resid_pre"}},
            "its hook 'blocks.9.hook_resid_pre' does not exist on this model",
        ),
        (
            make_weights("standard", d_in=32),
            {"metadata": {"hook_name": "blocks.0.attn.hook_q"}},
            "its hook 'blocks.0.attn.hook_q' is not supported: SAEs read the residual stream",
        ),
    ]
    for i, (weights, cfg, message) in enumerate(cases):
        sae_dir = write_sae(tmp_path / f"s{i}", "standard", weights, **cfg)
        behavior = _behavior(tmp_path, ["features(s)[1] recovers >= 0.5"], sae_dir)
        with pytest.raises(SpecError) as info:
            bind_behavior(behavior, model)
        text = str(info.value)
        assert text.startswith(f"<dict>: behavior 'b', key 'saes.s': SAE 's' ({sae_dir}): "), text
        assert message in text, text


def test_unused_saes_are_not_loaded(tmp_path):
    from interptest.binding import bind_behavior

    model = tinymodels.tiny_model("gpt2")
    sae_dir = write_sae(tmp_path / "s", "standard", make_weights("standard", d_in=24))  # would not fit
    bind_behavior(_behavior(tmp_path, ["prob(' dog') >= 0.0001"], sae_dir), model)


def test_ablate_mean_over_reference_prompts_equals_the_reference(tmp_path):
    from interptest.binding import bind_behavior
    from interptest.running import Run

    model = tinymodels.tiny_model("gpt2")
    w = make_weights("standard", seed=4, d_in=int(model.cfg.d_model), d_sae=D_SAE)
    sae_dir = write_sae(tmp_path / "s", "standard", w)
    refs = ["The the sat on the", "The Bob sat on the", "The dog sat on the"]
    claim = "features(s)[1, 2, 3; 1:4] together breaks >= 0.1 ablate mean"
    bound = bind_behavior(_behavior(tmp_path, [claim], sae_dir, reference=refs), model)
    run = Run(bound)
    clean, corrupt = bound.clean_ids[0], bound.corrupt_ids[0]
    expect, foil = int(run.expect_first[0]), int(run.foil_ids[0])
    cfg = {"architecture": "standard"}
    mean_f = torch.stack([ref_encode(acts_of(model, model.to_tokens(r))[0], w, cfg) for r in refs]).mean(0)
    mc, mx = ref_metric(model, clean, expect, foil), ref_metric(model, corrupt, expect, foil)
    m = ref_patched(model, clean, expect, foil, w, {"architecture": "standard"}, [1, 2, 3], [1, 2, 3], mean_f)
    got = float(bound.spec.claims[0].measure(bound.bound_claims[0], run).values[0, 0])
    assert abs(got - (mc - m) / (mc - mx)) <= 1e-5 * max(1.0, abs(mc - mx)) / abs(mc - mx)


def test_any_before_another_kind_is_still_refused():
    # 'any' picks features(...) (takes_any) but still says it does not apply to a prediction claim
    with pytest.raises(ClaimSyntaxError) as info:
        parse_claim("any prob(' Hart') >= 0.5")
    assert "'any' does not apply to prediction claims" in info.value.render()


def test_activation_claims_need_no_corruption(tmp_path):
    from interptest.api import check_behavior

    model = tinymodels.tiny_model("gpt2")
    w = make_weights("standard", seed=3, d_in=int(model.cfg.d_model), d_sae=D_SAE)
    sae_dir = write_sae(tmp_path / "s", "standard", w)
    behavior = {
        "name": "b",
        "prompt": "The dog sat on the",
        "expect": " dog",
        "saes": {"s": {"path": str(sae_dir)}},
        "claims": ["feature(s, 3) at 2 >= 0.001", "feature(s, 3) at 2 <= 1000"],
    }
    result = check_behavior(behavior, model, raise_on_failure=False)
    x = acts_of(model, model.to_tokens("The dog sat on the"))[0]
    want = float(ref_encode(x, w, {"architecture": "standard"})[2, 3])
    values = {c.text: c.value for c in result.checks}
    assert values["feature(s, 3) at 2 <= 1000"] == pytest.approx(want, abs=1e-6)
    assert [c.figure["type"] for c in result.checks if c.text.startswith("feature(")] == ["features", "features"]
    assert "corrupt" not in next(c for c in result.checks if c.text.startswith("feature(")).figure["rows"][0]


def test_an_empty_edit_returns_the_activation_bit_for_bit(tmp_path):
    """At the hook, an edit that changes no feature returns x itself (x + 0), not decode(f) + ε (which rounds)."""
    model, sae, _, _, clean, corrupt, expect, foil = setup("gpt2", tmp_path)
    acts = {"clean": acts_of(model, clean), "corrupt": acts_of(model, corrupt)}
    engine = FeaturePatcher(model, sae, clean, corrupt, expect, foil, None, 8, lambda which: acts[which])
    edits = []

    class Spy:
        cfg = model.cfg

        def run_with_hooks(self, ids, fwd_hooks):
            edits.extend(fn for name, fn in fwd_hooks if name == HOOK)
            return model.run_with_hooks(ids, fwd_hooks=fwd_hooks)

    engine.model = Spy()
    engine.patch([[], list(range(D_SAE))], [1, 3], "clean", "clean")
    x = acts["clean"].repeat(2, 1, 1)
    out = edits[0](x.clone())
    assert torch.equal(out, x)  # both sets are empty edits: no feature changes (clean values on the clean run)
    f, eps = sae.split(x)
    assert not torch.equal(sae.decode(f) + eps, x)  # the naive form would not be exact
