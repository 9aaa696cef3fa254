"""``--interp-suggest``: the strongest localization claims that hold on the current model, as YAML
ready to paste into the spec. Printed, never written into the user's file.

Per residual component, layers are grouped into bands that share the same carrier positions (cells
that alone recover ≥ 0.9 of the effect); each band becomes one claim with the band's weakest value as
its bound, and the rest of the component gets the matching ``elsewhere`` bound. For heads, the
smallest set of heads (greedy by single-head value) whose joint patch recovers ≥ 0.9 becomes one
``together`` claim. Then the smallest node set (heads and MLPs, greedy pruning) whose resample-faithfulness
stays ≥ 0.9, with its minimality and a random control, and the strongest path into each query, key and
value input of the heads it keeps (:func:`interptest.claims.circuit.suggest_claims`).

Margins: a suggested bound stays at least ``MARGIN`` (0.05) away from what was measured, rounded
outwards to 0.05 steps (a measured 1.000 suggests ``>= 0.95``, a measured 0.008 ``<= 0.10``), so that
rounding and small model changes do not flip a fresh claim; baselines catch smaller moves. For a prompt
family, "measured" is the one-sided 95 % bootstrap bound of the samples' mean (Bonferroni over the
component's cells) — the number the claim will be gated on.
"""

from __future__ import annotations

import math

CARRIER = 0.9
STEP = 0.05
MARGIN = 0.05
SUGGESTED_COMPONENTS = ("resid_pre", "attn_out", "mlp_out")


def bound_at_least(value: float) -> float:
    """The threshold a suggested ``>=`` claim on a measured ``value`` gets: ``MARGIN`` below it, rounded
    down to a multiple of ``STEP`` (1.0 -> 0.95, 0.992 -> 0.90, 0.95 -> 0.90). Public: the circuit and
    path suggestions of :mod:`interptest.claims.circuit` round their bounds with it too."""
    return round(math.floor((value - MARGIN) / STEP + 1e-9) * STEP, 2)


def bound_at_most(value: float) -> float:
    """The threshold a suggested ``<=`` claim on a measured ``value`` gets: ``MARGIN`` above it, rounded
    up to a multiple of ``STEP`` and never below ``STEP`` (0.0 -> 0.05, 0.008 -> 0.10, 0.51 -> 0.60)."""
    return round(max(STEP, math.ceil((value + MARGIN) / STEP - 1e-9) * STEP), 2)


def _position(tokens: list[str], p: int) -> str:
    if tokens.count(tokens[p]) == 1:
        return repr(tokens[p])
    if p == len(tokens) - 1:
        return "-1"
    nth = tokens[: p + 1].count(tokens[p])
    return f"{tokens[p]!r}#{nth}"


def _layers(first: int, last: int, n_layers: int) -> str:
    if first == last:
        return str(first)
    if last == n_layers - 1:
        return ":" if first == 0 else f"{first}:"
    return f"{first}:{last + 1}"


def residual_claims(component: str, lower, upper, tokens: list[str]) -> list[str]:
    """Band claims plus the ``elsewhere`` bound for one denoising map; ``lower``/``upper`` [layers][positions]
    are the measured values (one sample) or the bootstrap bounds of their mean (a family)."""
    n_layers = len(lower)
    carriers = [tuple(p for p, v in enumerate(row) if v is not None and v >= CARRIER) for row in lower]
    claims: list[str] = []
    covered: set[tuple[int, int]] = set()
    layer = 0
    while layer < n_layers:
        positions = carriers[layer]
        end = layer
        while end + 1 < n_layers and carriers[end + 1] == positions:
            end += 1
        if positions:
            for p in positions:
                weakest = min(lower[l][p] for l in range(layer, end + 1))
                claims.append(
                    f"{component}[{_layers(layer, end, n_layers)}, {_position(tokens, p)}] recovers >= "
                    f"{bound_at_least(weakest):.2f}"
                )
                covered.update((l, p) for l in range(layer, end + 1))
        layer = end + 1
    rest = [
        max(abs(v), abs(lower[l][p]))
        for l, row in enumerate(upper)
        for p, v in enumerate(row)
        if (l, p) not in covered and v is not None
    ]
    if claims and rest:
        claims.append(f"{component}[elsewhere] recovers <= {bound_at_most(max(rest)):.2f}")
    return claims


def head_claims(patcher, head_values, seed: int = 0) -> list[str]:
    """The smallest greedy set of heads whose joint patch recovers ≥ 0.9 (on the bootstrap bound of the
    samples' mean for a family), as one ``together`` claim."""
    ranked = sorted(((v, l, h) for l, row in enumerate(head_values) for h, v in enumerate(row) if v == v), reverse=True)
    chosen = []
    for value, layer, head in ranked:
        if value <= 0:
            break
        chosen.append((layer, head, None))
        joint = measured_bounds(patcher.joint("heads", chosen, "denoise")[:, None], seed, 1, True)[0]
        if joint >= CARRIER:
            names = ", ".join(f"{l}.{h}" for l, h, _ in sorted(chosen))
            return [f"heads[{names}] together recovers >= {bound_at_least(joint):.2f}"]
    return []


def measured_bounds(values, seed: int, n_cells: int, wants_high: bool) -> list[float]:
    """Per column of [samples, cells]: the value itself (one sample), else the one-sided bootstrap bound
    (lower for ``wants_high``)."""
    if values.shape[0] == 1:
        return [float(v) for v in values[0]]
    from interptest.stats import bootstrap_bounds

    return [s.bound for s in bootstrap_bounds(values, wants_high, n_cells, seed)]


def suggest(bound, batch_size: int | None = None) -> str:
    """YAML for the behavior's strongest holding claims (a comment when nothing can be suggested)."""
    import torch

    from interptest import families
    from interptest.check import Run

    spec = bound.spec
    header = f"# --interp-suggest for {spec.name!r} ({bound.model_name})"
    if bound.corrupt_ids is None:
        return f"{header}: no 'corrupt' prompt, so nothing to patch"
    if spec.family is not None:
        header += f": bounds of the mean over {bound.n_samples} samples"
    seed = families.sample_seed(bound.seed, spec)
    with torch.inference_mode():
        run = Run(bound, batch_size)
        if run.foil_problem():
            return f"{header}: the corrupted prompt predicts the expected token too; set 'foil'"
        problem = run.effect_problem()
        if problem:
            return f"{header}: {problem}"
        claims = []
        for component in SUGGESTED_COMPONENTS:
            values, _ = run.sweep(component, "denoise")
            n_layers, width = values.shape[1], values.shape[2]
            flat = values.reshape(values.shape[0], -1).double()
            lower = measured_bounds(flat, seed, n_layers * width, True)
            upper = measured_bounds(flat, seed, n_layers * width, False)
            claims += residual_claims(
                component,
                [lower[l * width : (l + 1) * width] for l in range(n_layers)],
                [upper[l * width : (l + 1) * width] for l in range(n_layers)],
                bound.tokens,
            )
        _, heads = run.sweep("heads", "denoise")
        claims += head_claims(run.patcher(), heads.values.tolist(), seed)
        from interptest.claims.circuit import suggest_claims

        claims += suggest_claims(run, seed)
    if spec.family is not None:  # positions as template variables where the tokens came from one
        claims = [_templated(claim, bound) for claim in claims]
    lines = [header, f"- name: {spec.name}", "  claims:"]
    lines += [f'    - "{claim}"' for claim in claims]
    return "\n".join(lines)


def _templated(claim: str, bound) -> str:
    """A family's claim with a quoted token position replaced by the template variable it came from."""
    from interptest import families

    for var, text in families.variable_token_texts(bound.spec, bound.samples[0].values).items():
        claim = claim.replace(f", {text!r}]", f", {{{var}}}]")
    return claim
