"""Prediction claims: ``prob(' Hart') >= 0.5``, ``rank(' Hart') <= 3``, ``logit(' Hart') > 10``,
``logit_diff >= 2.0`` — read off the clean run's next-token logits at the last position."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from interptest.claims.base import Claim, Measurement
from interptest.claims.grammar import ClaimSyntaxError, Comparison, Parser, template_fields

FUNCTIONS = ("prob", "rank", "logit")


@dataclass(frozen=True)
class PredictionClaim(Claim):
    text: str
    function: str  # prob | rank | logit | logit_diff
    token: str | None  # the token text for prob/rank/logit; None for logit_diff
    comparison: Comparison

    keywords: ClassVar[tuple[str, ...]] = FUNCTIONS + ("logit_diff",)
    hint: ClassVar[str] = "prob(...), rank(...), logit(...), logit_diff"

    @classmethod
    def parse(cls, p: Parser) -> PredictionClaim:
        name = p.expect("ident").value
        token = None
        if name != "logit_diff":
            p.expect("punct", "(", f"'(' after {name}")
            string = p.accept("string")
            if string is None:
                p.fail(f"a quoted token text, e.g. {name}(' Paris')")
            token = string.value
            if token == "":
                raise ClaimSyntaxError("the token text is empty", p.text, string.start)
            p.expect("punct", ")", "')'")
        comparison = p.comparison()
        p.end()
        return cls(p.text, name, token, comparison)

    def requirement(self, behavior) -> str | None:
        if self.function == "logit_diff" and behavior.corruption is None and behavior.foil is None:
            return (
                "'logit_diff' compares expect against a foil: add 'foil' or 'corrupt' "
                "(the foil defaults to the model's top-1 prediction on the corrupted prompt)"
            )
        return None

    def template_variables(self) -> list[str]:
        return template_fields(self.token) if self.token else []

    def bind(self, context):
        """One token id per sample (None for logit_diff)."""
        if self.token is None:
            return None
        return context.single_token_ids(self.token, f"{self.function}()")

    def measure(self, token_ids, run) -> Measurement:
        return Measurement(self.values(run.clean_logits, token_ids, run.expect_first, run.foil_ids)[:, None])

    def values(self, logits, token_ids, expect_ids, foil_ids):
        """[S] values of this function on next-token logits [S, vocab] (float64, CPU)."""
        import torch

        logits = logits.double()
        rows = torch.arange(logits.shape[0], device="cpu")
        if self.function == "logit_diff":
            return logits[rows, expect_ids] - logits[rows, foil_ids]
        target = torch.tensor(token_ids, device="cpu")
        if self.function == "prob":
            return torch.softmax(logits, -1)[rows, target]
        if self.function == "logit":
            return logits[rows, target]
        return (logits > logits[rows, target][:, None]).sum(-1).double() + 1  # rank, 1 = top

    def format_value(self, value: float) -> str:
        return f"{value:z.0f}" if self.function == "rank" else f"{value:z.3f}"

    def unit(self) -> str:
        return {"rank": "exact", "prob": "normalized"}.get(self.function, "logits")

    def value_range(self) -> tuple[float, float, str] | None:
        return {"prob": (0.0, 1.0, "a probability"), "rank": (1.0, math.inf, "a rank (1 = top)")}.get(self.function)
