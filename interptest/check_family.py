"""Check a prompt family (or a single prompt with a noise corruption): every sample goes through the
batched engine together, and each claim is gated on a one-sided bootstrap bound of its mean."""

from __future__ import annotations

from dataclasses import dataclass

from interptest import families
from interptest.check import (
    BehaviorResult,
    CheckResult,
    _decode,
    _encode,
    _top,
    localization_claims_on,
)
from interptest.claims import BoundClaim, ClaimBindError, ClaimBindIndexError, bind_claims, resolve_positions
from interptest.spec import BehaviorSpec, bind_error
from interptest.stats import bootstrap_bounds, pass_rate

SHRINK_EXAMPLES = 60


@dataclass
class BoundFamily:
    spec: BehaviorSpec
    model: object
    model_name: str
    seed: int
    samples: list                 # families.Sample
    clean_ids: object             # [S, n]
    corrupt_ids: object           # [S, n] (equal to clean_ids for a noise corruption)
    noise_positions: list | None  # positions whose embeddings get noise
    tokens: list[str]             # the first sample's tokens (for maps and messages)
    expect_ids: list[int]
    foil_ids: list[int] | None
    prediction_ids: dict          # claim index -> [S] token ids
    bound_claims: list[BoundClaim]


def _first_ids(spec, model, texts, key) -> list[int]:
    ids = []
    for text in texts:
        encoded = _encode(model, text)
        if not encoded or model.tokenizer.decode(encoded) != text:
            raise spec.error(f"{text!r} cannot be produced by the model's tokenizer (it encodes to "
                             f"{_decode(model, encoded)})", key)
        ids.append(encoded[0])
    return ids


def _check_lexicons(spec: BehaviorSpec, model) -> None:
    """Every value of every variable must be one token where the template puts it."""
    for var, values in spec.family.variables.items():
        bad = []
        for value in values:
            text = families.variable_token_texts(spec, {var: value})[var]
            ids = _encode(model, text)
            if len(ids) != 1:
                bad.append(f"{value!r} → {_decode(model, ids)}")
        if bad:
            source = spec.family.sources[var]
            where = f"lexicon {source}" if source.startswith("@") else "the list"
            shown = ", ".join(bad[:8]) + (f", … {len(bad) - 8} more" if len(bad) > 8 else "")
            raise spec.error(f"{len(bad)} value(s) of {{{var}}} in {where} are not single tokens for this model: "
                             f"{shown}", f"vars.{var}")


def _swap_tokens(spec, model, ids, replace):
    mapping = {}
    for a, b in replace:
        ia, ib = _encode(model, a), _encode(model, b)
        if len(ia) != 1 or len(ib) != 1:
            raise spec.error(f"replace needs single tokens: {a!r} → {_decode(model, ia)}, {b!r} → "
                             f"{_decode(model, ib)}", "corrupt.replace")
        mapping[ia[0]], mapping[ib[0]] = ib[0], ia[0]
    out = ids.clone()
    for row in range(ids.shape[0]):
        for p in range(ids.shape[1]):
            out[row, p] = mapping.get(int(ids[row, p]), int(ids[row, p]))
    if bool((out == ids).all(dim=1).any()):
        raise spec.error(f"the replacement changes nothing in the prompt: none of "
                         f"{', '.join(repr(a) for a, _ in replace)} occurs as a token", "corrupt.replace")
    return out


def instance_tensors(spec: BehaviorSpec, model, samples) -> tuple:
    """clean ids, corrupted ids, expect ids, foil ids (or None) for samples of equal token length."""
    import torch

    n_ctx = model.cfg.n_ctx
    clean = [model.to_tokens(s.prompt, truncate=False)[0] for s in samples]
    lengths = {len(c) for c in clean}
    if len(lengths) != 1:
        a, b = samples[0], next(s for s, c in zip(samples, clean) if len(c) != len(clean[0]))
        raise spec.error(f"samples tokenize to different lengths: {model.to_str_tokens(a.prompt)} vs "
                         f"{model.to_str_tokens(b.prompt)}", "template" if spec.family else "prompt")
    if clean[0].shape[0] > n_ctx:
        raise spec.error(f"the prompt is {clean[0].shape[0]} tokens long but the model's context holds {n_ctx}",
                         "template" if spec.family else "prompt")
    clean_ids = torch.stack(clean)
    kind = spec.corruption.kind
    if kind == "replace":
        corrupt_ids = _swap_tokens(spec, model, clean_ids, spec.corruption.replace)
    elif kind == "noise":
        corrupt_ids = clean_ids.clone()
    else:
        corrupt = [model.to_tokens(s.corrupt, truncate=False)[0] for s in samples]
        for s, c, k in zip(samples, clean, corrupt):
            if len(k) != len(c):
                raise spec.error(f"the clean and corrupted prompts tokenize to different lengths ({len(c)} vs "
                                 f"{len(k)}): prompt {model.to_str_tokens(s.prompt)} vs corrupt "
                                 f"{model.to_str_tokens(s.corrupt)}", "corrupt")
        corrupt_ids = torch.stack(corrupt)
    expect_ids = _first_ids(spec, model, [s.expect for s in samples], "expect")
    foil_ids = _first_ids(spec, model, [s.foil for s in samples], "foil") if spec.foil else None
    return clean_ids, corrupt_ids, expect_ids, foil_ids


def bind_family(spec: BehaviorSpec, model, model_name: str = "", seed: int = 0) -> BoundFamily:
    if spec.family is not None:
        _check_lexicons(spec, model)
        samples = families.expand(spec, seed)
    else:
        samples = [families.instance(spec, {})]
    clean_ids, corrupt_ids, expect_ids, foil_ids = instance_tensors(spec, model, samples)
    tokens = model.to_str_tokens(samples[0].prompt)
    variables = families.variable_token_texts(spec, samples[0].values)
    noise_positions = None
    if spec.corruption.kind == "noise":
        try:
            noise_positions = sorted({p for sel in spec.corruption.positions
                                      for p in resolve_positions(sel, tokens, variables)})
        except ClaimBindError as problem:
            raise spec.error(f"noise position: {problem}", "corrupt.noise") from None
    prediction_ids = {}
    for claim in spec.prediction_claims:
        if claim.token is not None:
            index = spec.claim_index(claim)
            texts = [claim.token.format(**s.values) for s in samples]
            ids = []
            for text in texts:
                encoded = _encode(model, text)
                if len(encoded) != 1:
                    raise spec.error(f"{claim.function}() needs a single token; {text!r} encodes to "
                                     f"{_decode(model, encoded)}", claim_index=index)
                ids.append(encoded[0])
            prediction_ids[index] = ids
    localization = localization_claims_on(spec, model)
    try:
        bound = bind_claims(localization, tokens, model.cfg.n_layers, model.cfg.n_heads, variables)
        for sample in samples[1:]:      # positions must not move between samples
            other = bind_claims(localization, model.to_str_tokens(sample.prompt), model.cfg.n_layers,
                                model.cfg.n_heads, families.variable_token_texts(spec, sample.values))
            for index, (a, b) in enumerate(zip(bound, other)):
                if a.cells != b.cells:
                    raise ClaimBindIndexError(index, f"its positions differ between samples ({sample.prompt!r}); "
                                                     "use template variables such as {last} or numeric positions")
    except ClaimBindIndexError as error:
        raise bind_error(spec, error, localization) from None
    return BoundFamily(spec, model, model_name, seed, samples, clean_ids, corrupt_ids, noise_positions, tokens,
                       expect_ids, foil_ids, prediction_ids, bound)


# ---------------------------------------------------------------------------------------------
# Running


def _noise(bound: BoundFamily, n_samples: int, salt: int = 0):
    """Gaussian noise on the token embeddings at the noised positions; scale in units of the
    embedding matrix's standard deviation (ROME's causal tracing). Seeded: same seed, same noise."""
    import torch

    if bound.noise_positions is None:
        return None
    model = bound.model
    d_model = model.cfg.d_model
    std = float(model.W_E.float().std())
    generator = torch.Generator().manual_seed(families.sample_seed(bound.seed, bound.spec) + salt)
    noise = torch.zeros(n_samples, bound.clean_ids.shape[1], d_model)
    draws = torch.randn(n_samples, len(bound.noise_positions), d_model, generator=generator)
    noise[:, bound.noise_positions] = draws * bound.spec.corruption.scale * std
    return noise.to(model.cfg.device)


def _patcher(bound: BoundFamily, clean_ids, corrupt_ids, expect_ids, foil_ids, noise, batch_size):
    from interptest.patching_batch import BatchPatcher

    model = bound.model
    if foil_ids is None:        # default foil: the model's top-1 prediction on each corrupted prompt
        hooks = []
        if noise is not None:
            def add_noise(act, hook=None):
                return act + noise.to(act.dtype)
            hooks = [("hook_embed", add_noise)]
        logits = model.run_with_hooks(corrupt_ids, fwd_hooks=hooks)[:, -1]
        foil_ids = [int(i) for i in logits.argmax(-1)]
    return BatchPatcher(model, clean_ids, corrupt_ids, expect_ids, foil_ids, embed_noise=noise,
                        batch_size=batch_size), foil_ids


def _claim_values(patcher, bound_claim: BoundClaim):
    """Per-sample values [S, C] of a claim's cells (C = 1 for a joint claim), and the sweep if used."""
    claim = bound_claim.claim
    if claim.quantifier == "together":
        return patcher.joint(claim.component, list(bound_claim.cells), claim.direction)[:, None], None
    if claim.component == "heads" and bound_claim.positions:
        return patcher.cells_value(claim.component, list(bound_claim.cells), claim.direction), None
    sweep = patcher.sweep(claim.component, claim.direction)
    layers = [c[0] for c in bound_claim.cells]
    cols = [c[1] for c in bound_claim.cells]
    return sweep[:, layers, cols], sweep


def _per_sample_holds(claim, values) -> list[bool]:
    holds = [[claim.comparison.holds(float(v)) for v in row] for row in values.tolist()]
    return [any(row) if claim.quantifier == "any" else all(row) for row in holds]


def _judge(claim, values, required_rate, seed):
    """(passed, reported value, detail, failing column indices) from per-sample values [S, C]."""
    n_samples, n_cells = values.shape
    comparison = claim.comparison
    wants_high = comparison.wants_high
    corrected = n_cells if getattr(claim, "quantifier", "every") in ("every", "any") else 1
    stats = bootstrap_bounds(values, wants_high, corrected, seed)
    bounds = [s.mean if comparison.op == "==" else s.bound for s in stats]
    holds = [comparison.holds(b) for b in bounds]
    quantifier = getattr(claim, "quantifier", "every")
    passed = any(holds) if quantifier == "any" else all(holds)
    pick = max if wants_high == (quantifier == "any") else min
    i = pick(range(n_cells), key=lambda k: bounds[k])
    rate = pass_rate(_per_sample_holds(claim, values) if hasattr(claim, "quantifier")
                     else [comparison.holds(float(v)) for v in values[:, 0].tolist()])
    side = "lower" if wants_high else "upper"
    level = stats[i].level * 100
    detail = (f"mean {stats[i].mean:.3f}, {level:.4g}% {side} bound {stats[i].bound:.3f}"
              + (f" (Bonferroni over {corrected} cells)" if corrected > 1 else "")
              + f"; pass rate {rate:.2f} over {n_samples} samples")
    if required_rate is not None:
        detail += f" (required {required_rate:.2f})"
        passed = passed and rate >= required_rate
    failing = [k for k, ok in enumerate(holds) if not ok]
    return passed, bounds[i], detail, failing


def run_family(bound: BoundFamily, *, batch_size: int | None = None) -> BehaviorResult:
    import torch

    from interptest.patching import PatchMap

    spec, model = bound.spec, bound.model
    n = len(bound.samples)
    with torch.inference_mode():
        noise = _noise(bound, n)
        patcher, foil_ids = _patcher(bound, bound.clean_ids, bound.corrupt_ids, bound.expect_ids, bound.foil_ids,
                                     noise, batch_size)
        clean_logits, corrupt_logits = patcher.clean_logits, patcher.corrupt_logits
        first = bound.samples[0]
        result = BehaviorResult(
            spec, bound.model_name, bound.tokens, None, first.expect, model.tokenizer.decode([foil_ids[0]]),
            float(patcher.clean_metrics.mean()), float(patcher.corrupt_metrics.mean()),
            _top(model, clean_logits[0]), _top(model, corrupt_logits[0]), [])
        result.samples = n
        top1 = [int(clean_logits[s].argmax()) == bound.expect_ids[s] for s in range(n)]
        wrong = [bound.samples[s].prompt for s in range(n) if not top1[s]]
        result.checks.append(CheckResult(
            f"top-1 prediction is {spec.expect!r}", not wrong, pass_rate(top1),
            f"top-1 accuracy {pass_rate(top1):.2f} over {n} samples"
            + (f"; wrong on e.g. {wrong[0]!r}" if wrong else "")))
        rate_for = {i: spec.claim_pass_rates[i] if i < len(spec.claim_pass_rates) and spec.claim_pass_rates[i]
                    is not None else spec.min_pass_rate for i in range(len(spec.claims))}
        seed = families.sample_seed(bound.seed, spec)
        for claim in spec.prediction_claims:
            index = spec.claim_index(claim)
            values = _prediction_values(claim, clean_logits, bound.expect_ids, foil_ids, bound.prediction_ids.get(index))
            passed, value, detail, _ = _judge(claim, values[:, None], rate_for[index], seed)
            result.checks.append(CheckResult(claim.text, passed, value, detail, claim))
        delta = patcher.clean_metrics - patcher.corrupt_metrics
        weak = int((delta.abs() < spec.min_effect).sum())
        for bound_claim in bound.bound_claims:
            claim = bound_claim.claim
            index = spec.claim_index(claim)
            if weak:
                result.checks.append(CheckResult(claim.text, False, None,
                                                 f"the corruption barely changes the behavior on {weak} of {n} samples "
                                                 f"(|Δ| < min_effect {spec.min_effect:g}; smallest Δ = "
                                                 f"{float(delta.abs().min()):.3f}); the claim cannot be judged",
                                                 claim, bound_claim))
                continue
            values, sweep = _claim_values(patcher, bound_claim)
            passed, value, detail, failing = _judge(claim, values, rate_for[index], seed)
            patch_map = None
            if sweep is not None:
                mean = sweep.mean(dim=0)
                patch_map = PatchMap(claim.component, claim.direction, mean, mean, list(bound.tokens),
                                     result.clean_metric, result.corrupt_metric)
                result.maps[(claim.component, claim.direction)] = patch_map
            check = CheckResult(claim.text, passed, value, detail, claim, bound_claim, patch_map,
                                tuple(bound_claim.cells[k] for k in failing) if claim.quantifier != "together" else ())
            if not passed and spec.family is not None:
                check.detail += _minimal_instance(bound, bound_claim, batch_size)
            result.checks.append(check)
    from interptest.check import _in_spec_order

    return _in_spec_order(result)


def _prediction_values(claim, logits, expect_ids, foil_ids, token_ids):
    import torch

    rows = torch.arange(logits.shape[0])
    if claim.function == "logit_diff":
        return logits[rows, expect_ids] - logits[rows, foil_ids]
    target = torch.tensor(token_ids)
    if claim.function == "prob":
        return torch.softmax(logits, -1)[rows, target]
    if claim.function == "logit":
        return logits[rows, target]
    return (logits > logits[rows, target][:, None]).sum(-1).double() + 1


def _minimal_instance(bound: BoundFamily, bound_claim: BoundClaim, batch_size) -> str:
    """Hypothesis shrinks to the smallest instance on which the claim fails on its own."""
    from hypothesis import HealthCheck, Phase, find, settings
    from hypothesis.errors import NoSuchExample

    spec = bound.spec
    claim = bound_claim.claim
    last = {}

    def fails(pair) -> bool:
        values, corrupt_values = pair
        sample = families.instance(spec, values, corrupt_values)
        try:
            clean, corrupt, expect, foil = instance_tensors(spec, bound.model, [sample])
        except Exception:
            return False
        single = BoundFamily(spec, bound.model, bound.model_name, bound.seed, [sample], clean, corrupt,
                             bound.noise_positions, bound.tokens, expect, foil, {}, [bound_claim])
        patcher, _ = _patcher(single, clean, corrupt, expect, foil, _noise(single, 1), batch_size)
        delta = float(patcher.clean_metrics[0] - patcher.corrupt_metrics[0])
        if abs(delta) < spec.min_effect:
            return False
        values_, _ = _claim_values(patcher, bound_claim)
        holds = _per_sample_holds(claim, values_)[0]
        if not holds:
            row = values_[0].tolist()
            last[id(pair)] = min(row) if claim.comparison.wants_high else max(row)
            last["value"] = last[id(pair)]
        return not holds

    config = settings(max_examples=SHRINK_EXAMPLES, database=None, derandomize=True, deadline=None,
                      phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    try:
        import torch

        with torch.inference_mode():
            values, corrupt_values = find(families.instance_strategy(spec), fails, settings=config)
            fails((values, corrupt_values))
    except NoSuchExample:
        return (f"\nno single instance fails on its own within {SHRINK_EXAMPLES} tries: the claim fails on the "
                "family's mean")
    sample = families.instance(spec, values, corrupt_values)
    block = families.as_yaml(spec, sample, claim.text, last.get("value"))
    return "\nminimal failing instance (shrunk by hypothesis), ready to paste:\n" + block
