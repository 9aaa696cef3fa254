"""Logit-lens claims: the prediction read off an intermediate residual stream::

    lens(resid_post[0], -1) rank(' Hart') <= 5
    lens(resid_pre[1], -1) logit_diff >= 2.0
    lens(resid_mid[1], last) prob(' Hart') >= 0.5

The residual at (layer, position) of the clean run goes through the final norm — recomputed on that
residual, as the logit lens does (TransformerLens ``accumulated_resid(apply_ln=True)``) — and the
unembedding, then the architecture's own transform of the logits (Gemma 2/3's final soft cap); ``prob``,
``rank``, ``logit`` and ``logit_diff`` then mean what they mean for the model's own prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from interptest import components
from interptest.claims.attention import single_position
from interptest.claims.base import BindContext, Claim, Measurement
from interptest.claims.grammar import (
    ClaimBindError,
    ClaimSyntaxError,
    Comparison,
    LayerSelection,
    Parser,
    PositionSelection,
    did_you_mean,
    resolve_layers,
)
from interptest.claims.prediction import PredictionClaim

RESIDUALS = ("resid_pre", "resid_mid", "resid_post")


@dataclass(frozen=True)
class LensClaim(Claim):
    text: str
    component: str
    layer: LayerSelection
    position: PositionSelection
    prediction: PredictionClaim  # what is read off the lens: prob / rank / logit / logit_diff
    comparison: Comparison

    keywords: ClassVar[tuple[str, ...]] = ("lens",)
    hint: ClassVar[str] = "lens(resid_post[L], POS) rank(...)"

    @classmethod
    def parse(cls, p: Parser) -> LensClaim:
        p.expect("ident", "lens")
        p.expect("punct", "(", "'(' after lens")
        comp = p.tok
        if comp.kind != "ident" or comp.value not in RESIDUALS:
            if comp.kind == "ident" and comp.value in components.COMPONENTS:
                raise ClaimSyntaxError(
                    f"lens reads the residual stream; {comp.value} is not one: use {', '.join(RESIDUALS)}",
                    p.text,
                    comp.start,
                )
            p.fail(
                f"a residual stream ({', '.join(RESIDUALS)})"
                + (did_you_mean(comp.value, RESIDUALS) if comp.kind == "ident" else "")
            )
        p.i += 1
        p.expect("punct", "[", f"'[' after {comp.value}")
        start = p.tok
        layer = p.layers()
        if layer.kind != "index":
            raise ClaimSyntaxError(
                "lens reads one layer: give a single layer number, e.g. resid_post[1]", p.text, start.start
            )
        p.expect("punct", "]", "']' (lens reads one layer, e.g. resid_post[1])")
        p.expect("punct", ",", "',' and the position to read, e.g. lens(resid_post[1], -1)")
        position = p.positions()
        p.expect("punct", ")", "')'")
        what = p.tok
        if what.kind != "ident" or what.value not in PredictionClaim.keywords:
            p.fail(
                "what to read off the lens: prob(...), rank(...), logit(...) or logit_diff"
                + (did_you_mean(what.value, PredictionClaim.keywords) if what.kind == "ident" else "")
            )
        prediction = PredictionClaim.parse(p)
        return cls(p.text, comp.value, layer, position, prediction, prediction.comparison)

    def requirement(self, behavior) -> str | None:
        return self.prediction.requirement(behavior)

    def template_variables(self) -> list[str]:
        names = self.prediction.template_variables()
        return names + ([self.position.values[0]] if self.position.kind == "variable" else [])

    def bind(self, context: BindContext):
        if self.component not in context.components:
            raise ClaimBindError(context.not_exposed(self.component))
        layer = resolve_layers(self.layer, context.n_layers)[0]
        where = context.same_on_every_sample(
            lambda s: single_position(self.position, context.tokens[s], context.variables[s], "lens"),
            "its position differs",
        )
        return layer, where, self.prediction.bind(context)

    def measure(self, bound, run) -> Measurement:
        layer, position, token_ids = bound
        logits = self._logits(run, self.component, layer, position)
        values = self.prediction.values(logits, token_ids, run.expect_first, run.foil_ids)[:, None]
        return Measurement(values, figure=self._table(run, position, layer))

    @staticmethod
    def _logits(run, component: str, layer: int, position: int):
        return run.memo(f"lens:{component}:{layer}:{position}", lambda: lens_logits(run, component, layer, position))

    def _table(self, run, position: int, layer: int) -> dict:
        """The lens at every layer boundary (resid_pre of each layer, then the final residual): the
        expected token's rank and probability and the logit difference, sample means."""
        import torch

        rows = []
        n_layers = int(run.model.cfg.n_layers)
        stops = [("resid_pre", l) for l in range(n_layers)] + [("resid_post", n_layers - 1)]
        if (self.component, layer) not in stops:
            stops.append((self.component, layer))
            stops.sort(key=lambda cl: (cl[1], ("resid_pre", "resid_mid", "resid_post").index(cl[0])))
        e, f = run.expect_first, run.foil_ids
        for component, l in stops:
            logits = self._logits(run, component, l, position).double()
            r = torch.arange(logits.shape[0], device="cpu")
            rank = (logits > logits[r, e][:, None]).sum(-1).double() + 1
            prob = torch.softmax(logits, -1)[r, e]
            diff = logits[r, e] - logits[r, f] if f is not None else None
            rows.append(
                {
                    "stream": f"{component}[{l}]",
                    "rank": float(rank.mean()),
                    "prob": float(prob.mean()),
                    "logit_diff": None if diff is None else float(diff.mean()),
                    "claimed": (component, l) == (self.component, layer),
                }
            )
        return {"type": "lens", "position": position, "rows": rows, "samples": int(e.shape[0])}

    def render(self, check, color: bool = False) -> list[str]:
        figure = check.figure
        if not figure:
            return []
        lines = [
            "",
            f"  logit lens for {check.text!r} (position {figure['position']}"
            + ("; sample means)" if figure.get("samples", 1) > 1 else ")"),
            f"    {'stream':16} {'rank':>8} {'p(expect)':>10} {'logit diff':>11}",
        ]
        for row in figure["rows"]:
            diff = "n/a" if row["logit_diff"] is None else f"{row['logit_diff']:z.2f}"
            mark = "*" if row["claimed"] else " "
            lines.append(f"   {mark}{row['stream']:16} {row['rank']:z8.1f} {row['prob']:z10.3f} {diff:>11}")
        return lines

    def format_value(self, value: float) -> str:
        return self.prediction.format_value(value)

    def unit(self) -> str:
        return self.prediction.unit()

    def value_range(self) -> tuple[float, float, str] | None:
        return self.prediction.value_range()


def lens_logits(run, component: str, layer: int, position: int):
    """[S, vocab] logits read off ``component`` at (layer, position): the final norm, the unembedding,
    then what the architecture does to its logits after the unembedding (Gemma 2/3's final soft cap), so
    that the lens of the last residual is the model's own prediction."""
    import torch

    model = run.model
    hook = components.get(component).hook_name(layer)
    resid = run.activations("clean", [hook])[hook][:, position]  # [S, d]
    device = next(iter(model.parameters())).device
    with torch.inference_mode():
        normed = model.ln_final(resid.to(device=device, dtype=model.W_U.dtype)[:, None, :])[:, 0]
        logits = normed @ model.W_U
        if getattr(model, "b_U", None) is not None:
            logits = logits + model.b_U
        logits = output_logits(model, logits)
    return logits.float().cpu()


def output_logits(model, logits):
    """The architecture's own post-unembedding transform of ``logits`` (TransformerLens's adapter declares
    it: a final soft cap ``cap · tanh(logits / cap)`` on Gemma 2/3, nothing on most); the identity where the
    bridge declares none."""
    adapter = getattr(model, "adapter", None)
    transform = getattr(adapter, "apply_output_logits_transform", None)
    if transform is not None:
        return transform(logits)
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    if cap is not None and float(cap) > 0:
        return float(cap) * (logits / float(cap)).tanh()
    return logits
