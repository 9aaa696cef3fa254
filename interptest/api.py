"""The public Python API: :func:`patch_sweep` (one component's patching map, as strict as a spec),
:func:`check_behavior` (one behavior checked like a spec item), with :class:`BehaviorFailed`, and the values
of every other claim kind for a model and a prompt — :func:`attention`, :func:`head_scores`,
:func:`direct_effects`, :func:`lens`, :func:`path_effect`, :func:`circuit_faithfulness`,
:func:`circuit_drops`, :func:`top_predictions` and the general :func:`measure`. Each builds the claim a spec
would write, so its input is checked by the same parser and binding (the same messages) and its value comes
from the same engine as the spec's verdict."""

from __future__ import annotations

import math
import warnings

from interptest import components
from interptest.binding import SpecTokenizer, bind_behavior
from interptest.claims import Unjudgeable
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


# ---------------------------------------------------------------------------------------------
# The values of every claim kind


def measure(
    model,
    claim: str,
    prompt: str,
    *,
    expect: str | None = None,
    corrupt: str | None = None,
    foil: str | None = None,
    reference: list[str] | None = None,
    seed: int = 0,
    random_sets: int | None = None,
    repeat_length: int | None = None,
    batch_size: int | None = None,
) -> dict[str, float]:
    """The values ``claim`` is judged on, for ``prompt`` (and ``corrupt``, ``foil``, ``reference`` as a
    spec's keys): ``{cell label: value}`` for a claim over several cells (``"head 1.0"``, ``"(layer 0,
    position 5 ' Hart')"``), ``{"value": v}`` for a joint one (``together``, paths, circuits). The claim's
    comparison is parsed and checked (a claim that cannot be false is refused) but not applied.

    ``expect`` defaults to the clean prompt's top-1 token. Bad input raises :class:`InterpError` with the
    message a spec would get; a value that cannot be measured (the corruption barely changes the behavior)
    raises it with the reason."""
    return _measure(
        "measure",
        model,
        [claim],
        prompt,
        expect,
        corrupt,
        foil,
        reference,
        seed,
        random_sets,
        repeat_length,
        batch_size,
    )[0]


def attention(
    model, prompt: str, heads, query=-1, key=0, *, corrupt: str | None = None, on_corrupt: bool = False
) -> dict[tuple[int, int], float]:
    """Attention weight from position ``query`` to position ``key`` of each head (``"1.0, 1.2"`` or
    ``[(1, 0), (1, 2)]``), on the clean prompt or, ``on_corrupt``, on ``corrupt``: ``{(layer, head):
    weight}``, as ``attn[HEADS] from QUERY to KEY`` measures it. A position is an integer or a string as a
    claim writes it (``"' Hart'"``, ``"last"``)."""
    claim = f"attn[{_heads(heads)}] from {_position(query)} to {_position(key)}{' on corrupt' if on_corrupt else ''}"
    values = _measure("attention", model, [f"{claim} >= 0.5"], prompt, None, corrupt, None)[0]
    return _by_head(values)


def head_scores(
    model,
    prompt: str,
    score: str,
    heads=None,
    *,
    on_random_repeat: bool = False,
    repeat_length: int | None = None,
    seed: int = 0,
) -> dict[tuple[int, int], float]:
    """``score`` (``previous_token_score``, ``duplicate_token_score``, ``induction_score``) of each head
    (default: every head of the model), on ``prompt`` or on a seeded random sequence repeated twice
    (``on_random_repeat``, ``repeat_length`` tokens, default 20; seeded by ``seed`` and this function's
    name, as a spec's draw is by --interp-seed and the behavior's name): ``{(layer, head): score}``."""
    heads = _heads(heads if heads is not None else _every_head(model))
    suffix = " on random_repeat" if on_random_repeat else ""
    values = _measure(
        "head_scores",
        model,
        [f"{score}(heads[{heads}]){suffix} >= 0.5"],
        prompt,
        None,
        None,
        None,
        None,
        seed,
        None,
        repeat_length,
    )[0]
    return _by_head(values)


def direct_effects(
    model,
    prompt: str,
    *,
    expect: str | None = None,
    foil: str | None = None,
    corrupt: str | None = None,
    relative: bool = False,
) -> dict[str, dict]:
    """Direct logit attribution of every head, attention layer and MLP layer to the logit difference
    expect − foil (the foil: given, else the corrupted prompt's top-1): ``{"heads": {(layer, head): v},
    "attn_out": {layer: v}, "mlp_out": {layer: v}}``, as ``direct(...)`` measures it; ``relative``
    divides by m_clean (``of logit_diff``)."""
    of = " of logit_diff" if relative else ""
    n_layers = int(model.cfg.n_layers)
    claims = [f"direct(heads[{_heads(_every_head(model))}]) >= 0.5{of}"]
    claims += [f"direct({target}[0:{n_layers}]) >= 0.5{of}" for target in ("attn_out", "mlp_out")]
    heads, attn, mlp = _measure("direct_effects", model, claims, prompt, expect, corrupt, foil)
    return {
        "heads": _by_head(heads),
        "attn_out": {int(label.split("[")[1].rstrip("]")): v for label, v in attn.items()},
        "mlp_out": {int(label.split("[")[1].rstrip("]")): v for label, v in mlp.items()},
    }


def lens(
    model,
    prompt: str,
    quantity: str = "prob",
    token: str | None = None,
    *,
    residual: str = "resid_post",
    position=-1,
    expect: str | None = None,
    foil: str | None = None,
    corrupt: str | None = None,
) -> dict[int, float]:
    """The logit lens at every layer: ``quantity`` (``prob``, ``rank``, ``logit`` of ``token``, default
    ``expect``, itself default the clean top-1; or ``logit_diff``) read off ``residual`` of each layer at
    ``position``: ``{layer: value}``, as ``lens(residual[L], position) quantity(...)`` measures it."""
    if quantity not in ("prob", "rank", "logit", "logit_diff"):
        raise InterpError(f"lens: unknown quantity {quantity!r}; expected prob, rank, logit or logit_diff")
    if expect is None:
        expect = top_predictions(model, prompt, 1)[0][0]
    read = "logit_diff" if quantity == "logit_diff" else f"{quantity}({(token if token is not None else expect)!r})"
    bound = "<= 2" if quantity == "rank" else ">= 0.5"
    claims = [f"lens({residual}[{layer}], {_position(position)}) {read} {bound}" for layer in range(model.cfg.n_layers)]
    values = _measure("lens", model, claims, prompt, expect, corrupt, foil)
    return {layer: value["value"] for layer, value in enumerate(values)}


def path_effect(
    model,
    prompt: str,
    corrupt: str,
    senders: str,
    receivers: str,
    *,
    direction: str = "denoise",
    ablation: str | None = None,
    expect: str | None = None,
    foil: str | None = None,
    reference: list[str] | None = None,
) -> float:
    """The normalized effect of patching the path ``senders -> receivers`` (``"heads[0.1]"``,
    ``"heads[1.0].k"``, as a claim writes them), as ``path SENDERS -> RECEIVERS recovers|breaks``
    measures it: ``direction`` ``denoise`` (recovers) or ``noise`` (breaks, with ``ablation`` resample,
    mean or zero)."""
    verb = _verb("path_effect", direction)
    suffix = f" ablate {ablation}" if ablation else ""
    claim = f"path {senders} -> {receivers} {verb} >= 0.5{suffix}"
    return _measure("path_effect", model, [claim], prompt, expect, corrupt, foil, reference)[0]["value"]


def circuit_faithfulness(
    model,
    prompt: str,
    nodes: str,
    *,
    corrupt: str | None = None,
    ablation: str = "resample",
    expect: str | None = None,
    foil: str | None = None,
    reference: list[str] | None = None,
) -> float:
    """Faithfulness of the circuit ``nodes`` (``"heads[0.1, 1.0] + mlp_out[1]"``) with everything else
    ablated (``resample``, ``mean`` or ``zero``), as ``circuit NODES faithful`` measures it."""
    claim = f"circuit {nodes} faithful >= 0.5 ablate {ablation}"
    return _measure("circuit_faithfulness", model, [claim], prompt, expect, corrupt, foil, reference)[0]["value"]


def circuit_drops(
    model,
    prompt: str,
    nodes: str,
    *,
    corrupt: str | None = None,
    ablation: str = "resample",
    expect: str | None = None,
    foil: str | None = None,
    reference: list[str] | None = None,
) -> dict[str, float]:
    """The faithfulness the circuit loses without each of its nodes, ``{node: drop}``, as
    ``circuit NODES minimal`` measures it."""
    claim = f"circuit {nodes} minimal >= 0.05 ablate {ablation}"
    return _measure("circuit_drops", model, [claim], prompt, expect, corrupt, foil, reference)[0]


def _measure(
    function: str,
    model,
    claims: list[str],
    prompt: str,
    expect: str | None,
    corrupt: str | None,
    foil: str | None,
    reference: list[str] | None = None,
    seed: int = 0,
    random_sets: int | None = None,
    repeat_length: int | None = None,
    batch_size: int | None = None,
) -> list[dict[str, float]]:
    """Each claim's values on one run of a behavior built from the arguments: parsed, bound and measured
    as a spec item's claims are (the same checks, engine and messages)."""
    import torch

    if expect is None:
        expect = top_predictions(model, prompt, 1)[0][0]
    entry: dict = {"name": function, "prompt": prompt, "expect": expect, "claims": claims}
    for key, value in (("corrupt", corrupt), ("foil", foil), ("reference", reference)):
        if value is not None:
            entry[key] = list(value) if key == "reference" else value
    options = {k: v for k, v in (("random_sets", random_sets), ("repeat_length", repeat_length)) if v is not None}
    try:
        spec = parse_behavior(entry, path=f"{function}()")
        bound = bind_behavior(spec, model, getattr(model.cfg, "model_name", "model"), seed, options)
    except SpecError as error:
        raise _api_error(function, error) from None
    out = []
    with torch.inference_mode():
        run = Run(bound, batch_size)
        for claim, bound_claim in zip(spec.claims, bound.bound_claims):
            try:
                measurement = claim.measure(bound_claim, run)
            except Unjudgeable as why:
                raise InterpError(f"{function}: {why.detail}") from None
            row = [float(v) for v in measurement.values[0].tolist()]
            if measurement.quantifier == "together" or not measurement.labels:
                out.append({"value": row[0]})
            else:
                out.append(dict(zip(measurement.labels, row)))
    return out


def _heads(heads) -> str:
    """``"1.0, 1.2"`` as given, or pairs ``[(1, 0), (1, 2)]`` written so."""
    if isinstance(heads, str):
        return heads
    return ", ".join(f"{int(layer)}.{int(head)}" for layer, head in heads)


def _every_head(model) -> list[tuple[int, int]]:
    return [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]


def _by_head(values: dict[str, float]) -> dict[tuple[int, int], float]:
    """``{"head 1.0": v}`` as ``{(1, 0): v}``."""
    out = {}
    for label, value in values.items():
        layer, head = label.removeprefix("head ").split(".")
        out[(int(layer), int(head))] = value
    return out


def _position(position) -> str:
    if isinstance(position, bool) or not isinstance(position, (int, str)):
        raise InterpError(
            f'a position is an integer or a string as a claim writes it ("\' Hart\'", "last"), got {position!r}'
        )
    return str(position)


def _verb(function: str, direction: str) -> str:
    if direction not in ("denoise", "noise"):
        raise InterpError(
            f"{function}: unknown direction {direction!r}; valid directions: denoise, noise (denoise = patch "
            "clean into corrupted, 'recovers'; noise = patch corrupted into clean, 'breaks')"
        )
    return "recovers" if direction == "denoise" else "breaks"


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


__all__ = [
    "BehaviorFailed",
    "attention",
    "check_behavior",
    "circuit_drops",
    "circuit_faithfulness",
    "direct_effects",
    "head_scores",
    "lens",
    "measure",
    "patch_sweep",
    "path_effect",
    "top_predictions",
]
