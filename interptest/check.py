"""Check one behavior on one model: bind the spec to the model's tokenizer, then run it.

``bind_behavior`` does every check that needs the model but no forward pass (token counts,
single-token answers, positions, layer and head ranges); its errors are :class:`SpecError`, so the
plugin reports them at collection. ``run_behavior`` runs the forwards: the prediction checks and
every localization claim through one shared :class:`~interptest.patching.Patcher`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from interptest.claims import (
    BoundClaim,
    ClaimBindIndexError,
    LocalizationClaim,
    PredictionClaim,
    bind_claims,
)
from interptest.errors import InterpError, SpecError
from interptest.spec import BehaviorSpec, bind_error, parse_behavior

DEFAULT_MODEL = "interptest-tiny"
TOP_K = 5


@dataclass(frozen=True)
class Prediction:
    token: str
    prob: float


@dataclass
class CheckResult:
    """One check of a behavior: an implicit one (``expect`` is the top-1 prediction) or a claim."""
    text: str
    passed: bool
    value: float | None
    detail: str = ""
    claim: object = None
    bound: BoundClaim | None = None
    patch_map: object = None          # the PatchMap the verdict was read from, for the failure map
    failing_cells: tuple = ()


@dataclass
class BoundBehavior:
    """A behavior resolved against one model's tokenizer and dimensions; ready to run."""
    spec: BehaviorSpec
    model: object
    model_name: str
    clean_ids: object                 # LongTensor [1, n]
    corrupt_ids: object | None
    tokens: list[str]
    corrupt_tokens: list[str] | None
    expect_ids: list[int]
    foil_id: int | None               # None: the top-1 prediction on the corrupted prompt, found at run time
    prediction_ids: dict[str, int]    # token text of prob()/rank()/logit() claims -> id
    bound_claims: list[BoundClaim]


@dataclass
class BehaviorResult:
    behavior: BehaviorSpec
    model_name: str
    tokens: list[str]
    corrupt_tokens: list[str] | None
    expect: str
    foil: str | None
    clean_metric: float | None
    corrupt_metric: float | None
    clean_top: list[Prediction]
    corrupt_top: list[Prediction]
    checks: list[CheckResult]
    maps: dict = field(default_factory=dict)   # (component, direction) -> PatchMap
    baseline: dict | None = None               # {"status": missing|ok|moved, "detail": ...} when compared
    suggestion: str | None = None              # --interp-suggest's YAML
    samples: int = 1                           # prompt families: how many samples the numbers summarise

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [check for check in self.checks if not check.passed]


class BehaviorFailed(AssertionError):
    """Raised by :func:`check_behavior` when a check fails; ``str()`` is the full failure report."""

    def __init__(self, result: BehaviorResult):
        self.result = result
        from interptest.render import render_failure

        super().__init__(render_failure(result, color=False))


# ---------------------------------------------------------------------------------------------
# Binding


def _encode(model, text: str) -> list[int]:
    return model.to_tokens(text, prepend_bos=False, truncate=False)[0].tolist()


def _decode(model, ids) -> list[str]:
    return [model.tokenizer.decode([i]) for i in ids]


def _unknown_words(model, text: str) -> list[str]:
    unk = getattr(model.tokenizer, "unk_token_id", None)
    if unk is None:
        return []
    return [word for word in text.split() if unk in _encode(model, " " + word)]


def _producible_ids(spec: BehaviorSpec, model, text: str, key: str) -> list[int]:
    try:
        ids = _encode(model, text)
    except Exception as error:  # the tokenizer's own complaint, e.g. about unencodable characters
        raise spec.error(f"{text!r} cannot be encoded by the model's tokenizer ({error})", key) from None
    unknown = _unknown_words(model, text)
    if unknown:
        raise spec.error(f"the model's tokenizer maps {', '.join(map(repr, unknown))} to its unknown token; "
                         "use words the model knows", key)
    if not ids or model.tokenizer.decode(ids) != text:
        raise spec.error(f"{text!r} cannot be produced by the model's tokenizer (it encodes to {_decode(model, ids)})",
                         key)
    return ids


def _check_prompt(spec: BehaviorSpec, model, text: str, key: str, n_ctx: int):
    unknown = _unknown_words(model, text)
    if unknown:
        raise spec.error(f"the model's tokenizer maps {', '.join(map(repr, unknown))} to its unknown token", key)
    ids = model.to_tokens(text, truncate=False)   # TL truncates to n_ctx silently by default
    if ids.shape[-1] > n_ctx:
        raise spec.error(f"the prompt is {ids.shape[-1]} tokens long but the model's context holds {n_ctx}", key)
    return ids, model.to_str_tokens(text)


def available_components(model) -> tuple[str, ...]:
    """The claim components whose hooks this model exposes."""
    hooks = getattr(model, "hook_dict", {})
    names = {"resid_pre": "blocks.0.hook_resid_pre", "resid_mid": "blocks.0.hook_resid_mid",
             "resid_post": "blocks.0.hook_resid_post", "attn_out": "blocks.0.hook_attn_out",
             "mlp_out": "blocks.0.hook_mlp_out", "heads": "blocks.0.attn.hook_z"}
    return tuple(c for c, hook in names.items() if hook in hooks)


def localization_claims_on(spec: BehaviorSpec, model) -> list:
    """The behavior's localization claims, once each names a component this model exposes."""
    components = available_components(model)
    for claim in spec.localization_claims:
        if claim.component not in components:
            raise spec.error(f"claim {claim.text!r}: this model does not expose {claim.component!r} "
                             f"(available: {', '.join(components)})", claim_index=spec.claim_index(claim))
    return spec.localization_claims


def bind_behavior(spec: BehaviorSpec, model, model_name: str = "", seed: int = 0):
    """Resolve ``spec`` against ``model``; raises :class:`SpecError` for anything the model cannot do.

    Families (and noise corruptions) bind to a :class:`~interptest.check_family.BoundFamily`."""
    if spec.family is not None or (spec.corruption is not None and spec.corruption.kind == "noise"):
        from interptest.check_family import bind_family

        return bind_family(spec, model, model_name, seed)
    n_ctx = model.cfg.n_ctx
    clean_ids, tokens = _check_prompt(spec, model, spec.prompt, "prompt", n_ctx)
    corrupt_ids = corrupt_tokens = None
    if spec.corruption is not None and spec.corruption.kind == "replace":
        from interptest.check_family import _swap_tokens

        corrupt_ids = _swap_tokens(spec, model, clean_ids, spec.corruption.replace)
        corrupt_tokens = _decode(model, corrupt_ids[0].tolist())
    elif spec.corrupt is not None:
        corrupt_ids, corrupt_tokens = _check_prompt(spec, model, spec.corrupt, "corrupt", n_ctx)
        if corrupt_ids.shape[-1] != clean_ids.shape[-1]:
            raise spec.error(f"the clean and corrupted prompts tokenize to different lengths "
                             f"({clean_ids.shape[-1]} vs {corrupt_ids.shape[-1]}), so positions cannot be "
                             f"matched: prompt {tokens} vs corrupt {corrupt_tokens}", "corrupt")
    expect_ids = _producible_ids(spec, model, spec.expect, "expect")
    foil_id = None
    if spec.foil is not None:
        foil_ids = _producible_ids(spec, model, spec.foil, "foil")
        if len(foil_ids) != 1:
            raise spec.error(f"the foil must be a single token; {spec.foil!r} is {len(foil_ids)} tokens "
                             f"{_decode(model, foil_ids)}", "foil")
        foil_id = foil_ids[0]
        if foil_id == expect_ids[0]:
            raise spec.error(f"'expect' {spec.expect!r} and 'foil' {spec.foil!r} start with the same token "
                             f"{_decode(model, [foil_id])[0]!r}: the logit difference would always be 0", "foil")
    prediction_ids = {}
    for claim in spec.prediction_claims:
        if claim.token is None:
            continue
        index = spec.claim_index(claim)
        ids = _encode(model, claim.token)
        if len(ids) != 1 or model.tokenizer.decode(ids) != claim.token or _unknown_words(model, claim.token):
            raise spec.error(f"{claim.function}() needs a single token the model can produce; {claim.token!r} "
                             f"encodes to {_decode(model, ids)}", claim_index=index)
        prediction_ids[claim.token] = ids[0]
    localization = localization_claims_on(spec, model)
    try:
        bound = bind_claims(localization, tokens, model.cfg.n_layers, model.cfg.n_heads)
    except ClaimBindIndexError as error:
        raise bind_error(spec, error, localization) from None
    return BoundBehavior(spec, model, model_name, clean_ids, corrupt_ids, tokens, corrupt_tokens, expect_ids,
                         foil_id, prediction_ids, bound)


# ---------------------------------------------------------------------------------------------
# Running


def _top(model, logits, k: int = TOP_K) -> list[Prediction]:
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    values, ids = probs.topk(k)
    return [Prediction(model.tokenizer.decode([i]), float(p)) for p, i in zip(values.tolist(), ids.tolist())]


def _last_logits(model, ids):
    return model(ids)[0, -1].float()


def _greedy_check(bound: BoundBehavior, clean_logits) -> CheckResult:
    """``expect`` must be what the model predicts: its top-1 next token, token after token."""
    import torch

    model = bound.model
    ids = bound.clean_ids
    logits = clean_logits
    for step, target in enumerate(bound.expect_ids):
        predicted = int(logits.argmax())
        if predicted != target:
            produced = model.tokenizer.decode(bound.expect_ids[:step] + [predicted])
            prob = float(torch.softmax(logits, -1)[target])
            where = f" after {model.tokenizer.decode(bound.expect_ids[:step])!r}" if step else ""
            return CheckResult(f"top-1 prediction is {bound.spec.expect!r}", False, prob,
                               f"the model predicts {produced!r}{where}; p({_decode(model, [target])[0]!r}) = "
                               f"{prob:.3f}")
        if step + 1 < len(bound.expect_ids):
            ids = torch.cat([ids, torch.tensor([[target]], device=ids.device)], dim=1)
            logits = _last_logits(model, ids)
    first = bound.expect_ids[0]
    return CheckResult(f"top-1 prediction is {bound.spec.expect!r}", True,
                       float(torch.softmax(clean_logits, -1)[first]), "the measured value is p(first token)")


def _prediction_value(claim: PredictionClaim, bound: BoundBehavior, logits, foil_id) -> float:
    import torch

    if claim.function == "logit_diff":
        return float(logits[bound.expect_ids[0]] - logits[foil_id])
    token = bound.prediction_ids[claim.token]
    if claim.function == "prob":
        return float(torch.softmax(logits, -1)[token])
    if claim.function == "logit":
        return float(logits[token])
    return float((logits > logits[token]).sum()) + 1.0  # rank, 1 = top


def _localization_check(bound_claim: BoundClaim, patcher, result: BehaviorResult, min_effect: float) -> CheckResult:
    claim: LocalizationClaim = bound_claim.claim
    delta = patcher.clean_metric - patcher.corrupt_metric
    if not abs(delta) >= min_effect:
        return CheckResult(claim.text, False, None,
                           f"the corruption barely changes the behavior (Δ = {delta:.3f}, below min_effect "
                           f"{min_effect:g}); the claim cannot be judged", claim, bound_claim)
    if claim.quantifier == "together":
        value = float(patcher.joint(claim.component, bound_claim.cells, claim.direction))
        return CheckResult(claim.text, claim.comparison.holds(value), value, "one joint patch of the region",
                           claim, bound_claim)
    if claim.component == "heads" and bound_claim.positions:
        values = [float(v) for v in patcher.cells_value(claim.component, bound_claim.cells, claim.direction)]
        patch_map = None
    else:
        patch_map = patcher.sweep(claim.component, claim.direction)
        result.maps[(claim.component, claim.direction)] = patch_map
        values = [float(patch_map.values[cell[0], cell[1]]) for cell in bound_claim.cells]
    holds = [claim.comparison.holds(v) for v in values]
    pick = max if claim.comparison.wants_high == (claim.quantifier == "any") else min
    index = pick(range(len(values)), key=lambda i: values[i])
    failing = tuple(cell for cell, ok in zip(bound_claim.cells, holds) if not ok)
    passed = any(holds) if claim.quantifier == "any" else all(holds)
    label = "best" if claim.quantifier == "any" else "worst"
    cell = bound_claim.cells[index]
    where = f"head {cell[0]}.{cell[1]}" if claim.component == "heads" and len(cell) == 2 else \
        _cell_label(cell, result.tokens)
    detail = f"{label} cell {where} of {len(values)}"
    if not passed and claim.quantifier != "any":
        detail += f"; {len(failing)} of {len(values)} cells fail"
    return CheckResult(claim.text, passed, values[index], detail, claim, bound_claim, patch_map, failing)


def _cell_label(cell, tokens) -> str:
    if len(cell) == 3:
        return f"head {cell[0]}.{cell[1]} at position {cell[2]} {tokens[cell[2]]!r}"
    return f"(layer {cell[0]}, position {cell[1]} {tokens[cell[1]]!r})"


def run_behavior(bound, *, batch_size: int | None = None) -> BehaviorResult:
    import torch

    if not isinstance(bound, BoundBehavior):
        from interptest.check_family import run_family

        return run_family(bound, batch_size=batch_size)
    spec, model = bound.spec, bound.model
    with torch.inference_mode():
        clean_logits = _last_logits(model, bound.clean_ids)
        corrupt_logits = _last_logits(model, bound.corrupt_ids) if bound.corrupt_ids is not None else None
        foil_id = bound.foil_id
        if foil_id is None and corrupt_logits is not None:
            foil_id = int(corrupt_logits.argmax())
        result = BehaviorResult(
            spec, bound.model_name, bound.tokens, bound.corrupt_tokens, spec.expect,
            model.tokenizer.decode([foil_id]) if foil_id is not None else None,
            None, None, _top(model, clean_logits), _top(model, corrupt_logits) if corrupt_logits is not None else [],
            [_greedy_check(bound, clean_logits)],
        )
        if foil_id is not None:
            e = bound.expect_ids[0]
            result.clean_metric = float(clean_logits[e] - clean_logits[foil_id])
            if corrupt_logits is not None:
                result.corrupt_metric = float(corrupt_logits[e] - corrupt_logits[foil_id])
        for claim in spec.prediction_claims:
            value = _prediction_value(claim, bound, clean_logits, foil_id)
            result.checks.append(CheckResult(claim.text, claim.comparison.holds(value), value, claim=claim))
        if bound.bound_claims:
            if foil_id == bound.expect_ids[0]:
                detail = (f"the foil (top-1 on the corrupted prompt) is the expected token {spec.expect!r} itself; "
                          "set 'foil' or choose a corruption that changes the prediction")
                result.checks += [CheckResult(b.claim.text, False, None, detail, b.claim, b) for b in bound.bound_claims]
                return _in_spec_order(result)
            from interptest.patching import Patcher

            patcher = Patcher(model, bound.clean_ids, bound.corrupt_ids, bound.expect_ids[0], foil_id,
                              batch_size=batch_size)
            result.clean_metric, result.corrupt_metric = patcher.clean_metric, patcher.corrupt_metric
            for bound_claim in bound.bound_claims:
                result.checks.append(_localization_check(bound_claim, patcher, result, spec.min_effect))
    return _in_spec_order(result)


def _in_spec_order(result: BehaviorResult) -> BehaviorResult:
    """The implicit top-1 check first, then the claims in the order the spec lists them."""
    order = {id(c): i for i, c in enumerate(result.behavior.claims)}
    result.checks.sort(key=lambda c: -1 if c.claim is None else order[id(c.claim)])
    return result


# ---------------------------------------------------------------------------------------------
# Models, cached per process


class ModelCache:
    """Loads each (model, device, dtype) once; ``clear()`` releases them."""

    def __init__(self, device: str | None = None, dtype: str | None = None, threads: int | None = None):
        self.device, self.dtype, self.threads = device, dtype, threads
        self._models: dict = {}
        self._configured = False

    def get(self, name: str):
        key = (name, self.device, self.dtype)
        if key not in self._models:
            from interptest.model import configure_threads, load_model

            if not self._configured:
                configure_threads(self.threads)
                self._configured = True
            self._models[key] = load_model(name, device=self.device, dtype=self.dtype)
        return self._models[key]

    def clear(self) -> None:
        self._models.clear()
        import gc

        gc.collect()


_DEFAULT_CACHE = ModelCache()


def check_behavior(spec, model=None, *, batch_size: int | None = None, seed: int = 0,
                   raise_on_failure: bool = True) -> BehaviorResult:
    """Check one behavior given as a dict with the YAML keys (or a parsed :class:`BehaviorSpec`).

    ``model`` is a loaded TransformerBridge, a model name / checkpoint directory, or None for the
    behavior's own ``model`` key (default ``interptest-tiny``). Raises :class:`BehaviorFailed`
    (an AssertionError whose message is the full report) when a check fails, unless
    ``raise_on_failure`` is False; bad input raises :class:`SpecError`.
    """
    behavior = spec if isinstance(spec, BehaviorSpec) else parse_behavior(spec)
    if model is None or isinstance(model, str):
        name = model or behavior.model or DEFAULT_MODEL
        model = _DEFAULT_CACHE.get(name)
    else:
        name = getattr(model.cfg, "model_name", "model")
    result = run_behavior(bind_behavior(behavior, model, name, seed), batch_size=batch_size)
    if raise_on_failure and not result.passed:
        raise BehaviorFailed(result)
    return result


__all__ = ["BehaviorFailed", "BehaviorResult", "BoundBehavior", "CheckResult", "InterpError", "ModelCache",
           "SpecError", "bind_behavior", "check_behavior", "run_behavior"]
