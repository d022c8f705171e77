"""From a model to its estimator in one call: ablation outcomes → features → fit → held-out report → file.

Each stage keeps its output in a work folder (outcome shards, cached features), so an interrupted
run resumes where it stopped; the stages are also callable on their own
(:func:`~at2_rag.research.outcomes.generate_outcomes`, :func:`~at2_rag.research.features.cached_features`,
:func:`fit_outcomes`, :func:`holdout_lds`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..attributor import AT2Attributor
from ..errors import InputError
from ..estimator import Estimator, ModelIdentity
from .evaluation.metrics import lds, mean_and_stderr
from .features import cached_features, training_record
from .fitting import fit_estimator, make_instances
from .options import at_least
from .outcomes import generate_outcomes, read_outcomes, set_masks, set_targets

Row = tuple[dict[str, Any], torch.Tensor, torch.Tensor]
"""An outcome record with its span features ``(L, H, spans, S)`` and question-row features ``(L, H, S)``."""


def fit_outcomes(
    rows: Sequence[Row], *, n_masks: int | None = None, non_negative: bool = True, log: Callable | None = None,
    **fit_kwargs,
):
    """Per-head weights ``(L, H)`` fitted on the answer-sentence targets of ``rows``; non-negative by
    default, as the shipped estimator was fitted."""
    inst = make_instances([training_record(rec, f, q, n_masks) for rec, f, q in rows], "answer")
    weights, _ = fit_estimator(inst, log=log, non_negative=non_negative, **fit_kwargs)
    return weights


def holdout_lds(score: Callable[..., torch.Tensor], rows: Sequence[Row], n_refit: int = 0) -> list[float]:
    """LDS per question on its training masks and whole-answer targets, for rows no fit has seen.

    ``score(record, whole-answer features (L, H, S), masks, targets) -> (S,)`` gets the first
    ``n_refit`` masks and targets (for methods that use a few ablations, e.g. AT2+N); the LDS is
    taken on the rest.
    """
    out = []
    for rec, feats, _ in rows:
        masks, y = set_masks(rec, "train"), set_targets(rec, "train")[:, -1]
        scores = score(rec, feats[:, :, -1], masks[:n_refit], y[:n_refit])
        out.append(lds(scores, masks[n_refit:], y[n_refit:]))
    return out


def fit_model(
    att: AT2Attributor,
    data: str | Path,
    out: str | Path,
    work: str | Path,
    *,
    k: int = 5,
    limit: int | None = None,
    n_masks: int = 32,
    max_new_tokens: int = 48,
    holdout: float = 0.15,
    max_batch_tokens: int = 16384,
    progress: bool = True,
    log: Callable[[str], None] = print,
    ray: dict[str, Any] | None = None,
) -> tuple[Estimator, dict[str, Any]]:
    """Train an answer estimator for ``att``'s model on the train split of ``data`` and save it to ``out``.

    The last ``holdout`` fraction of the examples is kept out of the fit and reports the estimator's
    LDS next to average attention's (the uniform weights) on the same questions. ``ray``: the keyword
    arguments of :func:`~at2_rag.research.distributed.generate_with_ray` (``model``, ``address``,
    ``workers``, ``gpus_per_worker``, ``device``, ``dtype``) to make the outcome shards on a Ray cluster.
    """
    if not 0 < holdout < 1:
        raise InputError(f"holdout must be a fraction between 0 and 1 (questions kept out of the fit), got {holdout}")
    at_least("k", k, 1, " (documents per example)")
    work = Path(work)
    log("1/3 ablation outcomes (resumable) ...")
    options = dict(split="train", k=k, limit=limit, n_masks=n_masks, max_new_tokens=max_new_tokens,
                   max_batch_tokens=max_batch_tokens)
    if ray is not None:
        from .distributed import generate_with_ray

        generate_with_ray(data_path=data, out_dir=work / "outcomes", kind="outcomes", **ray, **options)
    else:
        generate_outcomes(att, data, work / "outcomes", kind="train", progress=progress, **options)
    log("2/3 features, one pass per question (cached) ...")
    rows = cached_features(att, work / "outcomes", data, work / "features", progress=progress)
    n_held = max(1, round(len(rows) * holdout))
    if len(rows) - n_held < 2:
        raise InputError(f"only {len(rows)} usable examples; give more data (a few hundred questions)")
    fit_rows, held = rows[:-n_held], rows[-n_held:]
    log(f"3/3 fitting on {len(fit_rows)} questions, {n_held} held out ...")
    weights = fit_outcomes(fit_rows, log=None)
    ident = ModelIdentity.of(att.model)
    uniform = Estimator.uniform(ident).weights
    ours = mean_and_stderr(holdout_lds(lambda rec, f, m, y: torch.einsum("lhs,lh->s", f, weights), held))
    base = mean_and_stderr(holdout_lds(lambda rec, f, m, y: torch.einsum("lhs,lh->s", f, uniform), held))
    recipe, _ = read_outcomes(work / "outcomes")
    report = {"fit_examples": len(fit_rows), "holdout_examples": n_held,
              "holdout_lds": {"mean": ours[0], "stderr": ours[1]},
              "holdout_lds_average_attention": {"mean": base[0], "stderr": base[1]}}
    est = Estimator(weights, ident, "answer", {"method": "negative-pearson", "fit": {"non_negative": True},
                                                "data": recipe, **report})
    est.save(out)
    log(f"held-out LDS {ours[0]:.3f} ± {ours[1]:.3f} (average attention {base[0]:.3f} ± {base[1]:.3f}); saved {out}")
    return est, report


__all__ = ["fit_model", "fit_outcomes", "holdout_lds"]
