"""Fit a support estimator from support shards: question-row weights, their calibration, and the
retriever-rank weight of the fused keep score.

Support shards (:func:`~at2_rag.research.ablation_data.generate_support_data`) hold question-row
features and reference-answer ablation targets per (example, k, order). The weights are fitted with
and without content-free calibration; the variant with the higher Pearson correlation on the
held-out records is kept. A logistic model of "is the gold document" on (z-scored score,
log(1 + retriever rank)) then gives the rank weight :func:`at2_rag.ranking.fused_scores` uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..ranking import standardized
from .fitting import fit_estimator, make_instances, mask_predictions, pearson_loss

Record = tuple[dict[str, torch.Tensor], dict[str, Any]]


def support_scores(weights: torch.Tensor, record: Record, calibrated: bool) -> np.ndarray:
    """Per-document support scores of one record: question-row features (calibrated or raw) · weights."""
    t = record[0]
    x = t["query"] - t["query_null"] if calibrated else t["query"]
    return torch.einsum("lhs,lh->s", x.to(torch.float32), weights.to(torch.float32)).numpy()


def support_pearson(weights: torch.Tensor, records: Sequence[Record], calibrated: bool) -> float:
    """Mean Pearson correlation between predicted and measured reference-answer targets across masks."""
    inst = make_instances(records, "query", calibrated=calibrated)
    return -float(pearson_loss(mask_predictions(weights.flatten(), inst.features, inst.signs), inst.targets))


def gold_first(records: Sequence[Record], weights: torch.Tensor, calibrated: bool, *, k: int | None = None,
               order: str | None = None) -> tuple[float, int]:
    """How often a gold document scores first, over records that have one (optionally of one k and order)."""
    rows = [r for r in records if r[1]["gold_positions"] and (k is None or r[1]["k"] == k)
            and (order is None or r[1]["order"] == order)]
    if not rows:
        return float("nan"), 0
    hits = sum(int(np.argmax(support_scores(weights, r, calibrated))) in r[1]["gold_positions"] for r in rows)
    return hits / len(rows), len(rows)


def fit_rank_weight(records: Sequence[Record], weights: torch.Tensor, calibrated: bool, *,
                    k: int | None = None) -> dict[str, float]:
    """Logistic regression (Newton steps) of "is a gold document" on (z-scored support score,
    log(1 + retriever rank)) over every document of records with a gold document (of ``k`` documents,
    if given); the rank weight is ``-coef_log_rank / coef_score``, so the keep score
    ``z - rank_weight · log(1 + rank)`` ranks as the model's log-odds do. 0 when no record names a
    gold document or the score does not raise the odds."""
    X, y = [], []
    for rec in records:
        meta = rec[1]
        if not meta["gold_positions"] or (k is not None and meta["k"] != k):
            continue
        for i, zi in enumerate(standardized(support_scores(weights, rec, calibrated).tolist())):
            X.append([zi, math.log1p(meta["retriever_ranks"][i]), 1.0])
            y.append(float(i in meta["gold_positions"]))
    if not X or len(set(y)) < 2:
        return {"rank_weight": 0.0, "instances": len(y)}
    Xa, ya = np.array(X), np.array(y)
    w = np.zeros(3)
    for _ in range(50):
        p = 1 / (1 + np.exp(-Xa @ w))
        hess = (Xa * (p * (1 - p))[:, None]).T @ Xa + 1e-6 * np.eye(3)
        w -= np.linalg.solve(hess, Xa.T @ (p - ya))
    rank_weight = float(-w[1] / w[0]) if w[0] > 0 else 0.0
    return {"coef_score": float(w[0]), "coef_log_rank": float(w[1]), "intercept": float(w[2]),
            "rank_weight": max(0.0, rank_weight), "instances": len(y)}


def fit_support(train: Sequence[Record], held: Sequence[Record], *, keep_training_free: bool = True,
                **fit_kwargs) -> tuple[torch.Tensor, str | None, dict]:
    """Support weights ``(L, H)``, their calibration (``"content-free"`` or None) and a report.

    Both variants are fitted on ``train``; the one with the higher Pearson on ``held`` is kept. With
    ``keep_training_free``, the training-free signal (uniform weights on content-free calibrated
    features: average attention minus a content-free question's) is kept instead when it predicts
    ``held`` better still, so a fit on too little data never ships a pruner worse than no training.
    The rank weight is fitted on ``train``'s records of the largest k with the kept weights (where the
    rank matters most).
    """
    if not train or not held:
        raise InputError("support fitting needs training and held-out records; give more examples")
    fitted = {}
    for calibrated in (False, True):
        weights, _ = fit_estimator(make_instances(train, "query", calibrated=calibrated), **fit_kwargs)
        fitted[calibrated] = (weights, support_pearson(weights, held, calibrated))
    calibrated = fitted[True][1] > fitted[False][1]
    weights, pearson = fitted[calibrated]
    uniform = torch.full_like(weights, 1.0 / weights.numel())
    free_pearson = support_pearson(uniform, held, True)
    report = {
        "holdout_pearson_trained": pearson,
        "holdout_pearson_other_calibration": fitted[not calibrated][1],
        "holdout_pearson_average_attention": free_pearson,
        "holdout_gold_first_trained": gold_first(held, weights, calibrated)[0],
        "holdout_gold_first_average_attention": gold_first(held, uniform, True)[0],
    }
    free = keep_training_free and free_pearson > pearson
    if free:
        weights, calibrated, pearson = uniform, True, free_pearson
    first, n_gold = gold_first(held, weights, calibrated)
    report = {
        "weights": "training-free (held-out Pearson above the trained weights')" if free else "trained",
        "holdout_pearson": pearson, "holdout_gold_first": first, "holdout_gold_records": n_gold, **report,
        "fusion": fit_rank_weight(train, weights, calibrated, k=max(m["k"] for _, m in train)),
    }
    return weights, "content-free" if calibrated else None, report


__all__ = ["fit_rank_weight", "fit_support", "gold_first", "support_pearson", "support_scores"]
