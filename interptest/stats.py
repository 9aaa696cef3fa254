"""Statistical gating of family claims: one-sided bootstrap confidence bounds of the mean, corrected
for the number of cells a claim quantifies over (Bonferroni), and pass rates."""

from __future__ import annotations

from dataclasses import dataclass

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 4000


@dataclass(frozen=True)
class CellStats:
    mean: float
    bound: float  # lower bound for >=, >; upper bound for <=, <; the mean for ==
    level: float  # the one-sided confidence level actually used (after Bonferroni)


def bootstrap_bounds(values, wants_high: bool, n_cells: int, seed: int = 0) -> list[CellStats]:
    """Per column of ``values`` [samples, cells]: the mean and its one-sided bootstrap bound.

    The level is 1 − (1 − 0.95) / n_cells, so that all ``n_cells`` bounds hold together with
    probability ≥ 95 % (Bonferroni). Percentile bootstrap with a seeded generator: the same inputs
    give the same bounds.
    """
    import torch

    x = torch.as_tensor(values, dtype=torch.float64, device="cpu")
    if x.ndim == 1:
        x = x[:, None]
    n = x.shape[0]
    alpha = (1 - CONFIDENCE) / max(1, n_cells)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    index = torch.randint(0, n, (BOOTSTRAP_RESAMPLES, n), generator=generator, device="cpu")
    means = x[index].mean(dim=1)  # [B, cells]
    q = alpha if wants_high else 1 - alpha
    bounds = torch.quantile(means, q, dim=0)
    mean = x.mean(dim=0)
    return [CellStats(float(m), float(b), 1 - alpha) for m, b in zip(mean.tolist(), bounds.tolist())]


def pass_rate(holds) -> float:
    holds = list(holds)
    return sum(1 for h in holds if h) / len(holds) if holds else 0.0
