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

import dataclasses

from interptest.binding import bind_samples, load_saes
from interptest.claims import KINDS, Unjudgeable, judge, parse_claim
from interptest.claims.base import MARGIN, STEP, bound_at_least, bound_at_most, measured_bounds
from interptest.errors import SpecError
from interptest.running import Run

__all__ = ["MARGIN", "STEP", "bound_at_least", "bound_at_most", "measured_bounds", "suggest"]


def suggest(bound, batch_size: int | None = None) -> str:
    """YAML for the behavior's strongest holding claims (a comment when nothing can be suggested). A suggestion
    that starts with ``#`` is a note on how the claims after it were found: printed as a YAML comment, and
    neither a claim nor re-judged."""
    import torch

    spec = bound.spec
    header = f"# --interp-suggest for {spec.name!r} ({bound.model_name})"
    if bound.corrupt_ids is None:
        return f"{header}: no 'corrupt' prompt, so nothing to patch"
    if spec.family is not None:
        header += f": bounds of the mean over {bound.n_samples} samples"
    if spec.saes:  # every SAE the behavior declares, for the feature claims it could state
        try:
            bound.saes = {**load_saes(spec, bound.model, every=True), **bound.saes}
        except SpecError as error:
            return f"{header}: {error.message}"
    with torch.inference_mode():
        run = Run(bound, batch_size)
        seed = run.seed
        if run.foil_problem():
            return f"{header}: the corrupted prompt predicts the expected token too; set 'foil'"
        problem = run.effect_problem()
        if problem:
            return f"{header}: {problem}"
        claims = [text for kind in KINDS for text in kind.suggest(run, seed)]
        stated = [text for text in claims if not text.startswith("#")]  # '# ...': how a claim was found
        dropped = _failing_pass_rate(stated, bound, run) if spec.min_pass_rate is not None else []
    lines = [header, f"- name: {spec.name}", "  claims:"]
    shown = [claim for claim in claims if claim not in dropped]
    lines += [f"    {claim}" if claim.startswith("#") else f'    - "{claim}"' for claim in shown]
    if dropped:
        rate = f"{spec.min_pass_rate:g}"
        lines.append(f"  # left out: fewer than {rate} of the samples pass on their own (min_pass_rate)")
        lines += [f'  #  - "{claim}"' for claim in dropped]
    return "\n".join(lines)


def _failing_pass_rate(claims: list[str], bound, run) -> list[str]:
    """The suggestions the behavior's ``min_pass_rate`` would fail once pasted: a bound suggested from the
    samples' mean can still leave too few samples passing on their own. Judged on the same run."""
    spec = dataclasses.replace(bound.spec, claims=tuple(parse_claim(c) for c in claims), claim_pass_rates=())
    rebound = bind_samples(spec, bound.model, bound.samples, bound.model_name, bound.seed, bound.options)
    failing = []
    for claim, text, bound_claim in zip(spec.claims, claims, rebound.bound_claims):
        try:
            passed = judge(claim, claim.measure(bound_claim, run), spec.min_pass_rate, run.seed).passed
        except Unjudgeable:
            passed = False
        if not passed:
            failing.append(text)
    return failing
