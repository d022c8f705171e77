"""Score attribution methods offline, from stored evaluation outcomes (no ablated pass is rerun).

An ``eval`` outcome record (:mod:`at2_rag.research.outcomes`) holds, for one question and answer, the
targets of the LDS masks, of the ContextCite mask sequence and of leave-one-out. Every method below
then costs a CPU a few milliseconds per question, except AT2's features (one teacher-forced pass,
recomputed once per record and shared by every estimator). Methods are charged the forward passes
they would need live: AT2 0 (its features come with generation), ContextCite-N N, leave-one-out
S + 1, AT2+N N + 1 (the N ablations and the unablated answer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...estimator import Estimator
from ...refine import DEFAULT_DESIGN, ablation_masks, design_split, refine_scores, top_sources
from ..outcomes import set_masks, set_targets
from .methods import fit_surrogate
from .metrics import lds, mean_and_stderr, sign_test_p


@dataclass(frozen=True)
class OfflineMethod:
    """A method's name, its scores for one record, and the forward passes it costs."""

    name: str
    score: Callable[[dict, torch.Tensor], torch.Tensor]
    """``(record, whole-answer features (L, H, S)) -> (S,)`` scores."""
    passes: Callable[[dict], int]


def at2(estimator: Estimator, name: str = "at2") -> OfflineMethod:
    return OfflineMethod(name, lambda rec, f: estimator.source_scores(f).to(torch.float64), lambda rec: 0)


def contextcite(n: int, alpha: float = 0.01) -> OfflineMethod:
    def score(rec, f):
        masks, y = set_masks(rec, "contextcite")[:n], set_targets(rec, "contextcite")[:n, -1]
        w, _ = fit_surrogate(masks.numpy(), y.numpy(), len(rec["answer_ids"]), alpha)
        return torch.from_numpy(w)

    return OfflineMethod(f"contextcite:{n}", score, lambda rec: n)


def leave_one_out() -> OfflineMethod:
    def score(rec, f):
        return float(rec["base"][-1]) - set_targets(rec, "loo")[:, -1]

    return OfflineMethod("loo", score, lambda rec: len(rec["sources"]) + 1)


def at2_refined(estimator: Estimator, n: int, strength: float, name: str | None = None,
                design: str = DEFAULT_DESIGN) -> OfflineMethod:
    """AT2+N (:mod:`at2_rag.refine`): the AT2 scores as the prior of a surrogate fitted on the unablated
    answer and N ablated passes of ``design``: its top rows read from the leave-one-out set, its random
    rows the first ContextCite masks (as the live evaluation method draws them)."""
    n_top, n_random = design_split(n, design)

    def score(rec, f):
        prior = estimator.source_scores(f).to(torch.float64)
        masks = ablation_masks(prior, n, design, random=set_masks(rec, "contextcite"))
        top = top_sources(prior, n_top)
        y = torch.cat([torch.tensor(rec["base"][-1:], dtype=torch.float64), set_targets(rec, "loo")[top, -1],
                       set_targets(rec, "contextcite")[:n_random, -1]])
        return refine_scores(prior, masks, y, strength=strength)

    return OfflineMethod(name or f"at2+{n}" + ("" if design == DEFAULT_DESIGN else f":{design}"), score,
                         lambda rec: 1 + min(n_top, len(rec["sources"])) + n_random)


def evaluate_offline(
    records: Sequence[dict], features: Sequence[torch.Tensor], methods: Sequence[OfflineMethod]
) -> dict[str, dict]:
    """Per method: LDS per record (on the ``lds`` set), its mean ± stderr, and mean forward passes."""
    out = {}
    for m in methods:
        values, passes = [], []
        for rec, f in zip(records, features):
            scores = m.score(rec, f)
            values.append(lds(scores, set_masks(rec, "lds"), set_targets(rec, "lds")[:, -1]))
            passes.append(m.passes(rec))
        mean, se = mean_and_stderr(values)
        out[m.name] = {"lds": mean, "stderr": se, "passes": float(np.mean(passes)), "per_record": values}
    return out


def sign_test(a: Sequence[float], b: Sequence[float]) -> tuple[int, int, float]:
    """Paired wins of ``a`` over ``b``, losses, and the two-sided sign-test p-value (ties dropped)."""
    wins = sum(x > y for x, y in zip(a, b))
    losses = sum(x < y for x, y in zip(a, b))
    return wins, losses, sign_test_p(wins, losses)


__all__ = ["OfflineMethod", "at2", "at2_refined", "contextcite", "evaluate_offline", "leave_one_out", "sign_test"]
