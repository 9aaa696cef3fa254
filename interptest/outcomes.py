"""Checking a bound behavior: its implicit top-1 check and every claim measured on one :class:`Run` and
judged (:func:`interptest.claims.judge`), as a :class:`BehaviorResult`; a failing family claim is
shrunk to a minimal instance (:mod:`interptest.shrinking`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from interptest.binding import BoundBehavior
from interptest.claims import Unjudgeable, judge, precision_limit
from interptest.running import Run, device_of, last_logits
from interptest.shrinking import ShrinkBudget, minimal_instance, shrink_order
from interptest.spec import BehaviorSpec
from interptest.stats import pass_rate

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
    claim: Any = None
    bound: Any = None  # what the claim bound to (cells, token ids, ...)
    patch_map: Any = None  # the PatchMap the verdict was read from, for the failure map
    failing_cells: tuple = ()
    figure: dict | None = None  # what the report draws for this claim (see claims.base.Measurement)


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
    maps: dict = field(default_factory=dict)  # (component, direction) -> PatchMap (a family: the mean)
    baseline: dict | None = None  # {"status": missing|ok|moved, "detail": ...} when compared
    suggestion: str | None = None  # --interp-suggest's YAML
    samples: int = 1  # how many samples the numbers summarise
    engine: dict | None = None  # which patching engine ran (Run.engine_record), None when nothing was patched
    draw: dict = field(default_factory=dict)  # {"seed", "draw"}: which samples a family drew (baselines)
    labels: list = field(default_factory=list)  # each position as a claim writes it ({b}#2 in a family)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [check for check in self.checks if not check.passed]


def _top(model, logits, k: int = TOP_K) -> list[Prediction]:
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    values, ids = probs.topk(k)
    return [Prediction(model.tokenizer.decode([i]), float(p)) for p, i in zip(values.tolist(), ids.tolist())]


def _greedy_failure(run: Run, s: int) -> str | None:
    """Why sample s's ``expect`` is not what the model predicts token after token, or None."""
    import torch

    bound, model = run.bound, run.model
    expect = bound.expect_ids[s]
    ids = bound.clean_ids[s : s + 1]
    logits = run.clean_logits[s]
    for step, target in enumerate(expect):
        predicted = int(logits.argmax())
        if predicted != target:
            produced = model.tokenizer.decode(expect[:step] + [predicted])
            prob = float(torch.softmax(logits, -1)[target])
            where = f" after {model.tokenizer.decode(expect[:step])!r}" if step else ""
            hint = ""
            text = bound.samples[s].expect
            if (
                not step
                and not text.startswith(" ")
                and model.to_tokens(" " + text, prepend_bos=False)[0].tolist()[:1] == [predicted]
            ):
                hint = (
                    f"; that is {text!r} with a leading space: YAML drops the leading space of an unquoted "
                    f'value, so quote it with the space: expect: "{" " + text}"'
                )
            return f"the model predicts {produced!r}{where}; p({model.tokenizer.decode([target])!r}) = {prob:.3f}{hint}"
        if step + 1 < len(expect):
            ids = torch.cat([ids, torch.tensor([[target]], device="cpu")], dim=1)
            logits = last_logits(model, ids, device_of(model), None, None)[0]
    return None


def _top1_check(run: Run) -> CheckResult:
    """``expect`` must be what the model predicts: its top-1 next token, token after token."""
    import torch

    bound = run.bound
    text = f"top-1 prediction is {bound.spec.expect!r}"
    failures = [_greedy_failure(run, s) for s in range(bound.n_samples)]
    if bound.n_samples == 1:
        first = bound.expect_ids[0][0]
        prob = float(torch.softmax(run.clean_logits[0], -1)[first])
        if failures[0]:
            return CheckResult(text, False, prob, failures[0])
        return CheckResult(text, True, prob, "the measured value is p(first token)")
    rate = pass_rate([f is None for f in failures])
    wrong = [s for s, f in enumerate(failures) if f]
    detail = f"top-1 accuracy {rate:z.2f} over {bound.n_samples} samples"
    if wrong:
        detail += f"; wrong on e.g. {bound.samples[wrong[0]].prompt!r}: {failures[wrong[0]]}"
    for note in bound.notes:
        detail += f"; {note}"
    return CheckResult(text, not wrong, rate, detail)


def run_behavior(
    bound: BoundBehavior,
    *,
    batch_size: int | None = None,
    shrink: bool = True,
    shrink_budget: float | None = None,
    clock=None,
) -> BehaviorResult:
    """``shrink``: shrink failing family claims (cheapest first, within ``shrink_budget`` seconds per
    behavior, default :data:`interptest.shrinking.DEFAULT_BUDGET_S`; ``clock`` for tests)."""
    import torch

    spec, model = bound.spec, bound.model
    with torch.inference_mode():
        run = Run(bound, batch_size)
        foil = model.tokenizer.decode([int(run.foil_ids[0])]) if run.foil_ids is not None else None
        result = BehaviorResult(
            spec,
            bound.model_name,
            bound.tokens,
            bound.corrupt_tokens,
            bound.samples[0].expect,
            foil,
            None if run.clean_metrics is None else float(run.clean_metrics.mean()),
            None if run.corrupt_metrics is None else float(run.corrupt_metrics.mean()),
            _top(model, run.clean_logits[0]),
            _top(model, run.corrupt_logits[0]) if run.corrupt_logits is not None else [],
            [_top1_check(run)],
            samples=bound.n_samples,
        )
        seed = run.seed
        to_shrink: dict[int, CheckResult] = {}
        for index, (claim, bound_claim) in enumerate(zip(spec.claims, bound.bound_claims)):
            try:
                measurement = claim.measure(bound_claim, run)
            except Unjudgeable as why:
                result.checks.append(CheckResult(claim.text, False, None, why.detail, claim, bound_claim))
                continue
            verdict = judge(claim, measurement, spec.claim_pass_rate(index), seed)
            check = CheckResult(
                claim.text,
                verdict.passed,
                verdict.value,
                verdict.detail,
                claim,
                bound_claim,
                measurement.patch_map,
                verdict.failing,
                measurement.figure,
            )
            undecided = precision_limit(claim, verdict, run.dtype, result.clean_metric, measurement.comparison)
            if undecided:  # too close to the threshold for this precision: never a silent pass or fail
                check.passed = False
                check.detail += undecided
            if not verdict.passed and spec.family is not None and shrink:
                to_shrink[index] = check
            result.checks.append(check)
        result.maps = dict(run.maps)
        result.engine = run.engine_record()
        # each position as a claim writes it: a family's by template variable ({b}#2), not one sample's token
        result.labels = (
            [bound.position_source(p) for p in range(len(bound.tokens))] if spec.family else list(bound.tokens)
        )
    if to_shrink:  # after every claim is measured: cheap claims first, then controls, within the budget
        budget = ShrinkBudget(shrink_budget, clock) if clock is not None else ShrinkBudget(shrink_budget)
        with torch.inference_mode():
            for index in shrink_order(list(to_shrink), spec.claims):
                to_shrink[index].detail += minimal_instance(bound, index, batch_size, budget)
    return result
