"""``--interp-suggest``: the strongest localization claims that hold on the current model, as YAML
ready to paste into the spec. Printed, never written into the user's file.

Per residual component, layers are grouped into bands that share the same carrier positions (cells
that alone recover ≥ 0.9 of the effect); each band becomes one claim with the band's weakest value as
its bound, and the rest of the component gets the matching ``elsewhere`` bound. For heads, the
smallest set of heads (greedy by single-head value) whose joint patch recovers ≥ 0.9 becomes one
``together`` claim.
"""

from __future__ import annotations

import math

CARRIER = 0.9
STEP = 0.05
SUGGESTED_COMPONENTS = ("resid_pre", "attn_out", "mlp_out")


def _floor(value: float) -> float:
    return round(math.floor(value / STEP + 1e-9) * STEP, 2)


def _ceil(value: float) -> float:
    return round(max(STEP, math.ceil(value / STEP - 1e-9) * STEP), 2)


def _position(tokens: list[str], p: int) -> str:
    if tokens.count(tokens[p]) == 1:
        return repr(tokens[p])
    if p == len(tokens) - 1:
        return "-1"
    nth = tokens[:p + 1].count(tokens[p])
    return f"{tokens[p]!r}#{nth}"


def _layers(first: int, last: int, n_layers: int) -> str:
    if first == last:
        return str(first)
    if last == n_layers - 1:
        return ":" if first == 0 else f"{first}:"
    return f"{first}:{last + 1}"


def residual_claims(component: str, values, tokens: list[str]) -> list[str]:
    """Band claims plus the ``elsewhere`` bound for one denoising map (``values``: [layers][positions])."""
    n_layers = len(values)
    carriers = [tuple(p for p, v in enumerate(row) if v is not None and v >= CARRIER) for row in values]
    claims, covered = [], set()
    layer = 0
    while layer < n_layers:
        positions = carriers[layer]
        end = layer
        while end + 1 < n_layers and carriers[end + 1] == positions:
            end += 1
        if positions:
            for p in positions:
                weakest = min(values[l][p] for l in range(layer, end + 1))
                claims.append(f"{component}[{_layers(layer, end, n_layers)}, {_position(tokens, p)}] recovers >= "
                              f"{_floor(weakest):.2f}")
                covered.update((l, p) for l in range(layer, end + 1))
        layer = end + 1
    rest = [abs(v) for l, row in enumerate(values) for p, v in enumerate(row)
            if (l, p) not in covered and v is not None]
    if claims and rest:
        claims.append(f"{component}[elsewhere] recovers <= {_ceil(max(rest)):.2f}")
    return claims


def head_claims(patcher, head_values) -> list[str]:
    """The smallest greedy set of heads whose joint patch recovers ≥ 0.9, as one ``together`` claim."""
    ranked = sorted(((v, l, h) for l, row in enumerate(head_values) for h, v in enumerate(row) if v == v),
                    reverse=True)
    chosen = []
    for value, layer, head in ranked:
        if value <= 0:
            break
        chosen.append((layer, head, None))
        joint = float(patcher.joint("heads", chosen, "denoise")[0])
        if joint >= CARRIER:
            names = ", ".join(f"{l}.{h}" for l, h, _ in sorted(chosen))
            return [f"heads[{names}] together recovers >= {_floor(joint):.2f}"]
    return []


def suggest(bound, batch_size: int | None = None) -> str:
    """YAML for the behavior's strongest holding claims (a comment when nothing can be suggested)."""
    import torch

    from interptest.check import Run

    spec = bound.spec
    header = f"# --interp-suggest for {spec.name!r} ({bound.model_name})"
    if spec.family is not None:
        return (f"# --interp-suggest for {spec.name!r}: suggestions are made for single prompts; run it on one "
                "instance of the family (its prompt, expect and corrupt)")
    if bound.corrupt_ids is None:
        return f"{header}: no 'corrupt' prompt, so nothing to patch"
    with torch.inference_mode():
        run = Run(bound, batch_size)
        if run.foil_problem():
            return f"{header}: the corrupted prompt predicts the expected token too; set 'foil'"
        delta = float(run.clean_metrics[0] - run.corrupt_metrics[0])
        if abs(delta) < spec.min_effect:
            return f"{header}: the corruption barely changes the behavior (Δ = {delta:.3f})"
        claims = []
        for component in SUGGESTED_COMPONENTS:
            _, patch_map = run.sweep(component, "denoise")
            claims += residual_claims(component, patch_map.values.tolist(), bound.tokens)
        _, heads = run.sweep("heads", "denoise")
        claims += head_claims(run.patcher(), heads.values.tolist())
    lines = [header, f"- name: {spec.name}", "  claims:"]
    lines += [f'    - "{claim}"' for claim in claims]
    return "\n".join(lines)
