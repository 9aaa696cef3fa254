"""``--interp-suggest``: the strongest localization claims that hold on the current model, as YAML
ready to paste into the spec. Printed, never written into the user's file.

Per residual component, layers are grouped into bands that share the same carrier positions (cells
that alone recover ≥ 0.9 of the effect); each band becomes one claim with the band's weakest value as
its bound, and the rest of the component gets the matching ``elsewhere`` bound. For heads, the
smallest set of heads (greedy by single-head value) whose joint patch recovers ≥ 0.9 becomes one
``together`` claim. Then the smallest node set (heads and MLPs, greedy pruning) whose resample-faithfulness
stays ≥ 0.9, with its minimality and a random control, and the strongest path into each query, key and
value input of the heads it keeps. Each claim kind suggests its own claims (``Claim.suggest``,
:mod:`interptest.claims.localization` and :mod:`interptest.claims.circuit`); this module runs them and writes the YAML.

Margins: a suggested bound stays at least ``MARGIN`` (0.05) away from what was measured, rounded
outwards to 0.05 steps (a measured 1.000 suggests ``>= 0.95``, a measured 0.008 ``<= 0.10``), so that
rounding and small model changes do not flip a fresh claim; baselines catch smaller moves. For a prompt
family, "measured" is the one-sided 95 % bootstrap bound of the samples' mean (Bonferroni over the
component's cells) — the number the claim will be gated on.
"""

from __future__ import annotations

from interptest import families
from interptest.claims import KINDS
from interptest.claims.base import MARGIN, STEP, bound_at_least, bound_at_most, measured_bounds
from interptest.running import Run

__all__ = ["MARGIN", "STEP", "bound_at_least", "bound_at_most", "measured_bounds", "suggest"]


def suggest(bound, batch_size: int | None = None) -> str:
    """YAML for the behavior's strongest holding claims (a comment when nothing can be suggested)."""
    import torch

    spec = bound.spec
    header = f"# --interp-suggest for {spec.name!r} ({bound.model_name})"
    if bound.corrupt_ids is None:
        return f"{header}: no 'corrupt' prompt, so nothing to patch"
    if spec.family is not None:
        header += f": bounds of the mean over {bound.n_samples} samples"
    with torch.inference_mode():
        run = Run(bound, batch_size)
        seed = run.seed
        if run.foil_problem():
            return f"{header}: the corrupted prompt predicts the expected token too; set 'foil'"
        problem = run.effect_problem()
        if problem:
            return f"{header}: {problem}"
        claims = [text for kind in KINDS for text in kind.suggest(run, seed)]
    if spec.family is not None:  # positions as template variables where the tokens came from one
        claims = [_templated(claim, bound) for claim in claims]
    lines = [header, f"- name: {spec.name}", "  claims:"]
    lines += [f'    - "{claim}"' for claim in claims]
    return "\n".join(lines)


def _templated(claim: str, bound) -> str:
    """A family's claim with a quoted token position replaced by the template variable it came from."""
    for var, text in families.variable_token_texts(bound.spec, bound.samples[0].values).items():
        claim = claim.replace(f", {text!r}]", f", {{{var}}}]")
    return claim
