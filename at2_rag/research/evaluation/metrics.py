"""LDS, top-k log-probability drop, and the small statistics they need."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ...ablation import answer_token_logprobs
from ...prompts import Prompt


def rankdata(x: torch.Tensor) -> torch.Tensor:
    """Ranks (0-based) with ties given their average rank."""
    x = x.to(torch.float64)
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(x.numel(), dtype=torch.float64)
    for value in torch.unique(x):
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation; NaN when either side is constant."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = ra.norm() * rb.norm()
    return float((ra * rb).sum() / denom) if denom > 0 else math.nan


def lds(scores: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor) -> float:
    """Linear datamodeling score of one example.

    Spearman correlation, across keep-masks ``(m, S)``, between the measured targets ``(m,)`` and the
    scores' linear prediction ``Σ_s v_s · score(s)``.
    """
    predicted = masks.to(torch.float64) @ scores.to(torch.float64)
    return spearman(predicted, targets)


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the finite values."""
    xs = [v for v in values if v == v and math.isfinite(v)]
    if not xs:
        return math.nan, math.nan
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, math.nan
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return mean, math.sqrt(var / len(xs))


def topk_drop(
    model, prompt: Prompt, answer_ids: Sequence[int], scores_by_method: dict[str, torch.Tensor], ks: Sequence[int]
) -> dict[str, dict[int, float]]:
    """Drop in the answer's log-probability when each method's ``k`` top sources are ablated.

    All ablations of one example run in one batch, with the unablated answer first.
    """
    n_src = len(prompt.sources)
    masks = [torch.ones(n_src, dtype=torch.bool)]
    keys = []
    for name, scores in scores_by_method.items():
        order = torch.argsort(scores, descending=True, stable=True)
        for k in ks:
            m = torch.ones(n_src, dtype=torch.bool)
            m[order[: min(k, n_src)]] = False
            masks.append(m)
            keys.append((name, k))
    logp = answer_token_logprobs(model, prompt, answer_ids, torch.stack(masks), batch_size=len(masks))
    total = logp.to(torch.float64).sum(dim=1)
    out: dict[str, dict[int, float]] = {name: {} for name in scores_by_method}
    for (name, k), value in zip(keys, total[1:].tolist()):
        out[name][k] = float(total[0]) - value
    return out


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign-test p-value of ``wins`` against ``losses`` (ties already dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def equivalent_budget(lds_by_budget: dict[int, float], target: float) -> float | None:
    """The number of ablations at which a many-ablation method's LDS (``{budget: LDS}``) reaches
    ``target``: linear between neighbouring budgets of its running maximum (so a noisy dip never
    counts twice); None when ``target`` lies outside the range measured."""
    grid = sorted(lds_by_budget)
    best: list[float] = []
    for n in grid:
        best.append(max(best[-1], lds_by_budget[n]) if best else lds_by_budget[n])
    if target == best[0]:
        return float(grid[0])
    for n0, l0, n1, l1 in zip(grid, best, grid[1:], best[1:]):
        if l0 < target <= l1:
            return n0 + (n1 - n0) * (target - l0) / (l1 - l0)
    return None
