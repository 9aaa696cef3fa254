"""The public Python API: :func:`patch_sweep` (one component's patching map, as strict as a spec) and
:func:`check_behavior` (one behavior checked like a spec item), with :class:`BehaviorFailed`."""

from __future__ import annotations

import math
import warnings

from interptest import components
from interptest.binding import SpecTokenizer, bind_behavior
from interptest.errors import InterpError, SpecError
from interptest.model_cache import DEFAULT_MODEL, ModelCache
from interptest.outcomes import BehaviorResult, run_behavior
from interptest.render import render_failure
from interptest.running import Run, device_of
from interptest.spec import DEFAULT_MIN_EFFECT, BehaviorSpec, parse_behavior


class BehaviorFailed(AssertionError):
    """Raised by :func:`check_behavior` when a check fails; ``str()`` is the full failure report."""

    def __init__(self, result: BehaviorResult):
        self.result = result
        super().__init__(render_failure(result, color=False))


def patch_sweep(
    model,
    prompt: str,
    corrupt: str,
    component: str,
    expect: str,
    foil: str | None = None,
    direction: str = "denoise",
    batch_size: int | None = None,
):
    """Patch ``component`` at every (layer, position) — (layer, head) for ``heads`` — and return the
    :class:`~interptest.patching.PatchMap` of normalized values (``raw`` patched logit differences,
    ``clean_metric``, ``corrupt_metric`` and ``delta`` beside them).

    The inputs are checked as a spec's are, with the same messages: ``expect`` and ``foil`` must be
    single tokens the model produces, every word must be known to the tokenizer, the prompts must differ
    and tokenize to the same length, and the corruption must change the logit difference."""
    import torch

    if component not in components.COMPONENTS:
        raise InterpError(f"unknown component {component!r}; valid components: {', '.join(components.NAMES)}")
    if direction not in ("denoise", "noise"):
        raise InterpError(
            f"unknown direction {direction!r}; valid directions: denoise, noise (denoise = patch clean "
            "into corrupted, 'recovers'; noise = patch corrupted into clean, 'breaks')"
        )
    entry = {"name": "patch_sweep", "prompt": prompt, "expect": expect, "corrupt": corrupt}
    if foil is not None:
        entry["foil"] = foil
    try:
        spec = parse_behavior(entry, path="patch_sweep()")
        bound = bind_behavior(spec, model, getattr(model.cfg, "model_name", "model"))
        if len(bound.expect_ids[0]) != 1:
            raise spec.error(
                f"expect must be a single token; {expect!r} is {len(bound.expect_ids[0])} tokens "
                f"{SpecTokenizer(spec, model).decode(bound.expect_ids[0])}",
                "expect",
            )
    except SpecError as error:
        raise InterpError(
            f"patch_sweep: {error.key}: {error.message}" if error.key else f"patch_sweep: {error.message}"
        ) from None
    if component not in components.available(getattr(model, "hook_dict", {})):
        raise InterpError(components.unavailable_message(component, bound.model_name, model.hook_dict))
    with torch.inference_mode():
        run = Run(bound, batch_size)
        problem = run.foil_problem()
        if problem:
            raise InterpError(f"patch_sweep: {problem}")
        # patch_sweep always has a corrupted prompt, so both runs have a metric
        assert run.clean_metrics is not None and run.corrupt_metrics is not None
        delta = float(run.clean_metrics[0] - run.corrupt_metrics[0])
        if not math.isfinite(delta) or delta == 0:
            raise InterpError(
                f"patch_sweep: the clean and corrupted runs give the same logit difference "
                f"(m_clean − m_corrupt = {delta}), so normalized values are undefined; choose a "
                "corruption that changes the prediction"
            )
        if abs(delta) < DEFAULT_MIN_EFFECT:
            warnings.warn(
                f"patch_sweep: the corruption barely changes the behavior (Δm = {delta:.3g}, below "
                f"{DEFAULT_MIN_EFFECT:g}); normalized values divide by Δm and amplify rounding",
                stacklevel=2,
            )
        return run.sweep(component, direction)[1]


def top_predictions(model, prompt: str, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most probable next tokens after ``prompt``, as (token text, probability), most probable
    first: the softmax of the last position's logits, the prompt tokenized as a spec's is (with the
    model's BOS where it prepends one)."""
    import torch

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InterpError(f"top_predictions: k must be a positive integer, got {k!r}")
    try:  # the prompt is checked as a spec's: every word known to the tokenizer, within the context
        spec = parse_behavior({"name": "top_predictions", "prompt": prompt, "expect": " "}, path="top_predictions()")
        ids = SpecTokenizer(spec, model).prompt(prompt, "prompt")
    except SpecError as error:
        raise _api_error("top_predictions", error) from None
    with torch.inference_mode():
        probs = model(ids.to(device_of(model)))[0, -1].float().softmax(-1)
        values, indices = probs.topk(min(k, probs.shape[-1]))
    return [(model.to_string([int(i)]), float(v)) for v, i in zip(values, indices)]


def _api_error(function: str, error: SpecError) -> InterpError:
    """A spec error of an API call's input, as one line naming the function and the argument."""
    return InterpError(f"{function}: {error.key}: {error.message}" if error.key else f"{function}: {error.message}")


_DEFAULT_CACHE = ModelCache()


def check_behavior(
    spec, model=None, *, batch_size: int | None = None, seed: int = 0, raise_on_failure: bool = True
) -> BehaviorResult:
    """Check one behavior given as a dict with the YAML keys (or a parsed :class:`BehaviorSpec`).

    ``model`` is a loaded TransformerBridge, a model name / checkpoint directory, or None for the
    behavior's own ``model`` key (default ``interptest-tiny``). Raises :class:`BehaviorFailed`
    (an AssertionError whose message is the full report) when a check fails, unless
    ``raise_on_failure`` is False; bad input raises :class:`SpecError`.
    """
    __tracebackhide__ = True  # pytest shows the user's call, not interptest's frames
    try:
        behavior = spec if isinstance(spec, BehaviorSpec) else parse_behavior(spec)
        if model is None or isinstance(model, str):
            name = model or behavior.model or DEFAULT_MODEL
            model = _DEFAULT_CACHE.get(name)
        else:
            name = getattr(model.cfg, "model_name", "model")
        result = run_behavior(bind_behavior(behavior, model, name, seed), batch_size=batch_size)
    except InterpError as error:
        # The message says everything; raised from here, the traceback ends at the user's own line.
        raise error.with_traceback(None) from None
    if raise_on_failure and not result.passed:
        raise BehaviorFailed(result)
    return result


__all__ = ["BehaviorFailed", "check_behavior", "patch_sweep", "top_predictions"]
