"""What a claim kind is: the one interface every kind module implements, and the shared judgement.

A kind is a frozen dataclass (its parsed form) deriving from :class:`Claim`. It provides

* ``keywords`` and ``parse``: the first words it owns in the grammar, and its parser;
* ``requirement``: what it needs of the spec before any model is loaded (e.g. a corruption);
* ``bind``: its resolution against the model's dimensions and every sample's tokens;
* ``measure``: the values it reads from a run, per sample and cell (asking the engine for them);
* ``record`` and ``render``: its extra fields in results.json and its extra terminal lines.

Judging is shared: one sample is compared directly, several are gated on a one-sided bootstrap
bound of their mean (Bonferroni over the claim's cells). Pure Python apart from ``judge``, which
receives tensors from ``measure``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from interptest.claims.grammar import ClaimBindError, Comparison, Parser
from interptest.stats import bootstrap_bounds, pass_rate

# Suggested bounds stay at least MARGIN away from what was measured, rounded outwards to STEP
# (interptest.suggest explains why).
STEP = 0.05
MARGIN = 0.05

# How far a value may move when the model runs in reduced precision instead of float32, in normalized
# units (logit-valued claims: as a fraction of |m_clean|). Three times the largest difference measured on
# the shipped suite (bfloat16: 0.0066, float16: 0.0022 on normalized values; docs/gpus.md, "Reduced precision").
DTYPE_ERROR = {"bfloat16": 0.02, "float16": 0.01}


class Unjudgeable(Exception):
    """A claim cannot be judged on this run (e.g. the corruption barely changes the behavior)."""

    def __init__(self, detail: str):
        self.detail = detail
        super().__init__(detail)


@dataclass
class Measurement:
    """A claim's values on one run: ``values`` [samples, cells] (a float tensor)."""

    values: Any
    cells: tuple = ()  # what each column is, for failing-cell marks
    labels: Sequence[str] = ()  # each column in words, e.g. "(layer 0, position 5 ' Hart')"
    quantifier: str = "every"  # every | any | together (one column)
    note: str = ""  # replaces the worst-cell detail of a single sample
    patch_map: Any = None  # the map the values were read from, for the failure map
    figure: dict | None = None  # JSON data the report draws for this claim ({"type": ..., ...})
    comparison: Any = None  # replaces the claim's comparison (e.g. the random-control threshold)
    context: str = ""  # appended to the detail, for one sample and for a family alike


@dataclass
class Verdict:
    passed: bool
    value: float | None
    detail: str
    failing: tuple = field(default=())


class Claim:
    """Base class of every claim kind (see the module docstring)."""

    keywords: ClassVar[tuple[str, ...]] = ()
    hint: ClassVar[str] = ""  # how the kind's claims start, for the "unknown claim" message
    takes_any: ClassVar[bool] = False  # its claims may start with the quantifier 'any' before a keyword
    text: str
    comparison: Comparison

    @classmethod
    def parse(cls, parser: Parser) -> Claim:
        raise NotImplementedError

    @property
    def bind_late(self) -> bool:
        """True when binding needs the other claims bound first (``elsewhere``)."""
        return False

    def requirement(self, behavior) -> str | None:
        """What the behavior lacks for this claim (a message), or None."""
        return None

    def template_variables(self) -> list[str]:
        """Template variables this claim names (checked against a family's variables)."""
        return []

    def bind(self, context) -> Any:
        """The claim resolved for the model and every sample; raises ``ClaimBindError``."""
        return None

    def measure(self, bound, run) -> Measurement:
        raise NotImplementedError

    def format_value(self, value: float) -> str:
        return f"{value:z.3f}"

    def value_range(self) -> tuple[float, float, str] | None:
        """The values this claim's measurement can take, ``(low, high, what)`` (e.g. ``(0, 1, "a
        probability")``), or None when unbounded; a comparison that every value in it satisfies (or none
        does) is refused at collection (:func:`cannot_be_false`)."""
        return None

    def unit(self) -> str:
        """What the value measures, for the reduced-precision check: "normalized" (fractions, probabilities),
        "logits" (scaled like m_clean) or "exact" (ranks: no tolerance)."""
        return "normalized"

    def record(self, check) -> dict:
        """Extra results.json fields of one checked claim."""
        return {}

    def render(self, check, color: bool = False) -> list[str]:
        """Extra terminal lines under a failing claim (e.g. its patching map)."""
        return []

    @classmethod
    def suggest(cls, run, seed: int) -> list[str]:
        """``--interp-suggest``: claims of this kind that hold on ``run`` (a run with a corruption whose
        effect is large enough), with bounds from :func:`bound_at_least` / :func:`bound_at_most`."""
        return []


def cannot_be_false(claim: Claim) -> str | None:
    """Why ``claim``'s comparison holds whatever the model does (``prob(...) <= 1.0``), from its kind's
    :meth:`Claim.value_range`; None when the claim can fail. (A claim that can never hold fails when it
    runs, visibly: it is not refused.)"""
    bounds, comparison = claim.value_range(), getattr(claim, "comparison", None)
    if bounds is None or comparison is None:
        return None
    low, high, what = bounds
    op, t = comparison.op, comparison.threshold
    if not (
        (op == ">=" and t <= low) or (op == ">" and t < low) or (op == "<=" and t >= high) or (op == "<" and t > high)
    ):
        return None
    span = f"[{low:g}, {'∞' if high == math.inf else f'{high:g}'}]"
    return (
        f"claim {claim.text!r} cannot be false: the value is {what}, always in {span}, so '{op} {t:g}' holds "
        "whatever the model does; claim a bound inside that range"
    )


def judge(claim: Claim, measurement: Measurement, required_rate: float | None, seed: int) -> Verdict:
    """Compare a measurement with the claim's threshold: directly for one sample, on the bootstrap
    bound of the mean for several."""
    values = measurement.values
    n_samples, n_cells = int(values.shape[0]), int(values.shape[1])
    comparison = measurement.comparison or claim.comparison
    if n_samples == 1:
        verdict = _judge_one(comparison, measurement, [float(v) for v in values[0].tolist()])
    else:
        verdict = _judge_many(comparison, measurement, values, required_rate, seed, n_samples, n_cells)
    if measurement.context:
        verdict.detail = f"{verdict.detail}; {measurement.context}" if verdict.detail else measurement.context
    return verdict


def precision_limit(
    claim: Claim, verdict: Verdict, dtype: str, m_clean: float | None, comparison: Comparison | None = None
) -> str | None:
    """Why the verdict cannot be trusted at this dtype (its value lies within the dtype's error of the
    threshold), or None. ``comparison``: the one the verdict was judged by, where the measurement sets it
    (a ``beats random`` control compares with the random sets' quantile; the claim's own threshold is NaN)."""
    error = DTYPE_ERROR.get(dtype)
    unit = claim.unit()
    comparison = comparison or claim.comparison
    if error is None or verdict.value is None or unit == "exact" or comparison.op == "==":
        return None
    if not math.isfinite(comparison.threshold):
        return None
    if unit == "logits":
        if m_clean is None:
            return None
        error *= abs(m_clean)
    margin = abs(verdict.value - comparison.threshold)
    if margin >= error:
        return None
    return (
        f"; undecided at {dtype}: the value is {margin:.3g} from the threshold, within this precision's error "
        f"(±{error:.3g}); run with --interp-dtype float32 to decide it"
    )


def _worst(values: list[float], comparison: Comparison, quantifier: str) -> int:
    pick = max if comparison.wants_high == (quantifier == "any") else min
    return pick(range(len(values)), key=lambda i: values[i])


def _failing(m: Measurement, holds: list[bool]) -> tuple:
    """The cells whose own comparison fails (none for a joint value or a measurement without cells)."""
    if m.quantifier == "together" or not m.cells:
        return ()
    return tuple(cell for cell, ok in zip(m.cells, holds) if not ok)


def _judge_one(comparison: Comparison, m: Measurement, values: list[float]) -> Verdict:
    holds = [comparison.holds(v) for v in values]
    passed = any(holds) if m.quantifier == "any" else all(holds)
    index = _worst(values, comparison, m.quantifier)
    failing = _failing(m, holds)
    if m.note or not m.labels:
        return Verdict(passed, values[index], m.note, failing)
    label = "best" if m.quantifier == "any" else "worst"
    detail = f"{label} cell {m.labels[index]} of {len(values)}"
    if not passed and m.quantifier != "any":
        detail += f"; {len(failing)} of {len(values)} cells fail"
    return Verdict(passed, values[index], detail, failing)


def _judge_many(comparison: Comparison, m: Measurement, values, required_rate, seed, n_samples, n_cells) -> Verdict:
    corrected = n_cells if m.quantifier in ("every", "any") else 1
    stats = bootstrap_bounds(values, comparison.wants_high, corrected, seed)
    bounds = [s.mean if comparison.op == "==" else s.bound for s in stats]
    holds = [comparison.holds(b) for b in bounds]
    passed = any(holds) if m.quantifier == "any" else all(holds)
    i = _worst(bounds, comparison, m.quantifier)
    per_sample = [[comparison.holds(float(v)) for v in row] for row in values.tolist()]
    rate = pass_rate([any(row) if m.quantifier == "any" else all(row) for row in per_sample])
    side = "lower" if comparison.wants_high else "upper"
    detail = (
        f"mean {stats[i].mean:z.3f}, {stats[i].level * 100:.4g}% {side} bound {stats[i].bound:z.3f}"
        + (f" (Bonferroni over {corrected} cells)" if corrected > 1 else "")
        + f"; pass rate {rate:z.2f} over {n_samples} samples"
    )
    if required_rate is not None:
        detail += f" (required {required_rate:z.2f})"
        passed = passed and rate >= required_rate
    return Verdict(passed, bounds[i], detail, _failing(m, holds))


def ablation_requirement(text: str, ablation: str, behavior) -> str | None:
    """What the behavior lacks for ``ablate <ablation>`` in claim ``text``, or None."""
    if ablation == "resample" and behavior.corruption is None:
        return (
            f"claim {text!r} ablates by resampling: each node takes its value on the corrupted prompt; add a "
            "'corrupt' prompt to the behavior (or write 'ablate mean' or 'ablate zero')"
        )
    if ablation == "mean" and behavior.family is None and not getattr(behavior, "reference", ()):
        return (
            f"claim {text!r} ablates by the mean: each node takes its mean over the family's clean samples or "
            "over 'reference' prompts; this single-prompt behavior has neither: add a 'reference' list of "
            "prompts with the prompt's token count"
        )
    return None


@dataclass
class BindContext:
    """What binding may know: each sample's tokens and variables, the model's dimensions, and a
    tokenizer check. Built by the pipeline; claim kinds read it."""

    prompts: list[str]  # each sample's clean prompt
    tokens: list[list[str]]  # each sample's clean tokens (BOS included)
    variables: list[dict]  # each sample's template variables, as token texts
    n_layers: int
    n_heads: int
    components: tuple[str, ...]  # the components this model exposes
    model_name: str
    single_token_ids: Any  # (text or template, what) -> [one id per sample]
    covered: dict = field(default_factory=dict)  # component -> cells claimed so far (for elsewhere)
    n_kv_heads: int | None = None  # key/value heads per layer (grouped-query attention), None: n_heads
    architecture: str = ""  # the model's Hugging Face architecture (GPTNeoXForCausalLM), for messages
    # what this architecture cannot support, and why: a component it lacks ("resid_mid") or a claim kind's
    # keyword ("direct"), decided at binding so a claim fails at collection, at its line
    unsupported: dict = field(default_factory=dict)
    spec_dir: str = ""  # the spec file's folder: a claim's @file paths resolve next to it
    parallel: bool = False  # parallel attention/MLP blocks (no head -> MLP edge within a layer)
    saes: dict = field(default_factory=dict)  # SAE name -> interptest.saes.SAE, loaded and checked for the model

    def not_exposed(self, component: str) -> str:
        """Why a claim cannot use ``component`` on this model: what it exposes instead, and the
        architecture's reason where one is known (parallel blocks have no resid_mid)."""
        text = f"this model does not expose {component!r} (available: {', '.join(self.components)})"
        why = self.unsupported.get(component)
        return f"{text}; on {self.architecture or 'this architecture'}, {why}" if why else text

    def same_on_every_sample(self, resolve, moved: str = "its positions differ"):
        """``resolve(sample)`` on the first sample, required equal on every other one: a claim's cells
        must not move between a family's samples. ``moved`` names what moved in the error."""
        first = resolve(0)
        for s in range(1, len(self.tokens)):
            if resolve(s) != first:
                raise ClaimBindError(
                    f"{moved} between samples ({self.prompts[s]!r}); use template variables such as {{last}} "
                    "or numeric positions"
                )
        return first


# ---------------------------------------------------------------------------------------------
# Suggested bounds (every kind's ``suggest``)


def bound_at_least(value: float) -> float:
    """The threshold a suggested ``>=`` claim on a measured ``value`` gets: ``MARGIN`` below it, rounded
    down to a multiple of ``STEP`` (1.0 -> 0.95, 0.992 -> 0.90, 0.95 -> 0.90). Every kind's suggestions
    round their bounds with it."""
    return round(math.floor((value - MARGIN) / STEP + 1e-9) * STEP, 2)


def bound_at_most(value: float) -> float:
    """The threshold a suggested ``<=`` claim on a measured ``value`` gets: ``MARGIN`` above it, rounded
    up to a multiple of ``STEP`` and never below ``STEP`` (0.0 -> 0.05, 0.008 -> 0.10, 0.51 -> 0.60)."""
    return round(max(STEP, math.ceil((value + MARGIN) / STEP - 1e-9) * STEP), 2)


def measured_bounds(values, seed: int, n_cells: int, wants_high: bool) -> list[float]:
    """Per column of [samples, cells]: the value itself (one sample), else the one-sided bootstrap bound
    (lower for ``wants_high``)."""
    if values.shape[0] == 1:
        return [float(v) for v in values[0]]
    return [s.bound for s in bootstrap_bounds(values, wants_high, n_cells, seed)]
