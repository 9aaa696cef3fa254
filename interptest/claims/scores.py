"""Head-type claims: TransformerLens ``detect_head`` scores of named heads::

    induction_score(heads[1.0]) >= 0.3
    previous_token_score(heads[0.3]) >= 0.5
    duplicate_token_score(heads[0.1]) <= 0.1
    induction_score(heads[1.0, 1.3]) together on random_repeat >= 0.4
    previous_token_score(heads[elsewhere]) <= 0.3

A score is the attention mass a head puts on the positions its type predicts, divided by its total
attention mass (``detect_head``'s "mul" measure, BOS and the current token included): previous token
(key = query − 1), duplicate token (an earlier occurrence of the query's token), induction (the token
after an earlier occurrence of the query's token). By default it is computed on the behavior's clean
prompt(s); ``on random_repeat`` uses a seeded random token sequence repeated twice (BOS + r + r, r of
``interp_repeat_length`` tokens), one per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from interptest.claims.attention import PATTERN_HOOK, elsewhere_heads, parse_heads_or_elsewhere
from interptest.claims.base import BindContext, Claim, Measurement
from interptest.claims.grammar import Comparison, Parser, did_you_mean, resolve_heads

SCORES = ("previous_token_score", "duplicate_token_score", "induction_score")
DEFAULT_REPEAT_LENGTH = 20


def detection_pattern(kind: str, tokens):
    """[n, n] 0/1 pattern of the positions a head of this kind attends to (TransformerLens's)."""
    import torch

    n = tokens.shape[-1]
    if kind == "previous_token_score":
        pattern = torch.zeros(n, n, device="cpu")
        pattern[1:, :-1] = torch.eye(n - 1, device="cpu")
        return pattern
    same = (tokens[:, None] == tokens[None, :]).float()
    duplicate = torch.tril(same, diagonal=-1)
    if kind == "duplicate_token_score":
        return duplicate
    induction = torch.zeros(n, n, device="cpu")
    induction[:, 1:] = duplicate[:, :-1]
    return torch.tril(induction)


def random_repeat_tokens(model, n_sequences: int, length: int, seed: int):
    """[n_sequences, 1 + 2 * length] ids: BOS (if the tokenizer prepends one), then r twice; seeded."""
    import torch

    specials = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    allowed = torch.tensor([i for i in range(int(model.cfg.d_vocab)) if i not in specials], device="cpu")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    picks = allowed[torch.randint(0, len(allowed), (n_sequences, length), generator=generator, device="cpu")]
    bos = (
        model.to_tokens("", prepend_bos=True)[0].cpu()[:1]
        if getattr(model.cfg, "default_prepend_bos", True)
        else torch.zeros(0, dtype=torch.long, device="cpu")
    )
    return torch.cat([bos.expand(n_sequences, -1), picks, picks], dim=1)


@dataclass(frozen=True)
class ScoreClaim(Claim):
    text: str
    score: str
    heads: tuple[tuple[int, int], ...]
    quantifier: str  # every | together (mean over heads)
    comparison: Comparison
    elsewhere: bool = False
    on_random_repeat: bool = False

    keywords: ClassVar[tuple[str, ...]] = SCORES
    hint: ClassVar[str] = "induction_score(heads[...]) and the other head scores"

    @property
    def bind_late(self) -> bool:
        return self.elsewhere

    @classmethod
    def parse(cls, p: Parser) -> ScoreClaim:
        score = p.expect("ident").value
        p.expect("punct", "(", f"'(' after {score}")
        head = p.tok
        if not p.accept("ident", "heads"):
            p.fail(
                "heads[...], e.g. induction_score(heads[1.0])"
                + (did_you_mean(head.value, ("heads",)) if head.kind == "ident" else "")
            )
        heads, elsewhere = parse_heads_or_elsewhere(p)
        p.expect("punct", ")", "')'")
        quantifier = "together" if p.accept("ident", "together") else "every"
        on_random_repeat = False
        if p.accept("ident", "on"):
            p.expect("ident", "random_repeat", "'random_repeat' after 'on' (the behavior's prompt is the default)")
            on_random_repeat = True
        comparison = p.comparison()
        p.end()
        return cls(p.text, score, heads, quantifier, comparison, elsewhere, on_random_repeat)

    def value_range(self) -> tuple[float, float, str] | None:
        return (0.0, 1.0, "a share of attention")

    def requirement(self, behavior) -> str | None:
        if self.elsewhere and not any(
            isinstance(c, ScoreClaim) and c.score == self.score and not c.elsewhere for c in behavior.claims
        ):
            return (
                f"{self.score}(heads[elsewhere]) needs another {self.score} claim in the same behavior to "
                "define what 'elsewhere' excludes"
            )
        return None

    def bind(self, context: BindContext):
        if self.elsewhere:
            return elsewhere_heads(context, self.score, f"{self.score}(heads")
        heads = tuple(resolve_heads(self.heads, context.n_layers, context.n_heads))
        context.covered.setdefault(self.score, set()).update(heads)
        return heads

    def measure(self, heads, run) -> Measurement:
        import torch

        names = [PATTERN_HOOK.format(layer=layer) for layer in sorted({layer for layer, _ in heads})]
        if self.on_random_repeat:
            length = int(run.bound.options.get("repeat_length") or DEFAULT_REPEAT_LENGTH)
            seed = run.seed + 1
            tokens = random_repeat_tokens(run.model, run.bound.n_samples, length, seed)
            patterns = run.activations(f"random_repeat:{length}", names, ids=tokens)
        else:
            tokens = run.bound.clean_ids
            patterns = run.activations("clean", names)
        detect = torch.stack([detection_pattern(self.score, row) for row in tokens])  # [S, n, n]
        columns = []
        for layer, head in heads:
            pattern = patterns[PATTERN_HOOK.format(layer=layer)][:, head].double()  # [S, n, n]
            columns.append((pattern * detect).sum(dim=(1, 2)) / pattern.sum(dim=(1, 2)))
        values = torch.stack(columns, dim=1)
        if self.quantifier == "together":
            return Measurement(
                values.mean(dim=1, keepdim=True), quantifier="together", note=f"mean over {len(heads)} heads"
            )
        return Measurement(values, heads, [f"head {l}.{h}" for l, h in heads])
