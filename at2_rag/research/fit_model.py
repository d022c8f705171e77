"""From a model to its estimators in one call: ablation outcomes → features → fits → held-out reports → files.

The answer and query estimators come from the same ablation outcomes (the model's own answers); the
support estimator, which pruning uses by default, from support data (the dataset's reference answers,
whole documents as sources). Each stage keeps its output in a work folder (outcome and support shards,
cached features), so an interrupted run resumes where it stopped; the stages are also callable on their
own (:func:`~at2_rag.research.outcomes.generate_outcomes`,
:func:`~at2_rag.research.features.cached_features`, :func:`fit_outcomes`, :func:`holdout_lds`,
:func:`~at2_rag.research.ablation_data.generate_support_data`,
:func:`~at2_rag.research.support_fit.fit_support`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..attributor import AT2Attributor
from ..errors import InputError
from ..estimator import Estimator, ModelIdentity
from .ablation_data import generate_support_data, reference_answers
from .data import read_selection
from .evaluation.metrics import lds, mean_and_stderr
from .features import cached_features, training_record
from .fitting import fit_estimator, make_instances
from .options import ESTIMATOR_KINDS, at_least, estimator_kinds
from .outcomes import generate_outcomes, read_outcomes, set_masks, set_targets
from .shards import load_records, portable_recipe, read_recipe
from .support_fit import fit_support

DEFAULT_KINDS = ESTIMATOR_KINDS
"""``fit_model`` makes every kind unless told otherwise."""

Row = tuple[dict[str, Any], torch.Tensor, torch.Tensor]
"""An outcome record with its span features ``(L, H, spans, S)`` and question-row features ``(L, H, S)``."""


def fit_outcomes(
    rows: Sequence[Row], *, kind: str = "answer", n_masks: int | None = None, non_negative: bool = True,
    log: Callable | None = None, **fit_kwargs,
):
    """Per-head weights ``(L, H)`` fitted on ``rows``: for ``answer``, the answer rows' features against
    each answer sentence's targets; for ``query``, the question rows' features against the whole
    answer's. Non-negative by default, as the shipped estimators were fitted."""
    inst = make_instances([training_record(rec, f, q, n_masks) for rec, f, q in rows], kind)
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


def estimator_paths(out: str | Path, kinds: Sequence[str]) -> dict[str, Path]:
    """Where each kind is saved: the answer estimator at ``out``, the others beside it as
    ``<stem>-query`` and ``<stem>-support`` (as the shipped ``default``, ``default-query``, ``default-support``)."""
    out = Path(out)
    return {kind: out if kind == "answer" else out.with_name(f"{out.stem}-{kind}{out.suffix}") for kind in kinds}


def fit_model(
    att: AT2Attributor,
    data: str | Path,
    out: str | Path,
    work: str | Path,
    *,
    kinds: Sequence[str] = DEFAULT_KINDS,
    k: int = 5,
    limit: int | None = None,
    n_masks: int = 32,
    max_new_tokens: int = 48,
    holdout: float = 0.15,
    max_batch_tokens: int = 16384,
    support_limit: int | None = None,
    support_masks: int = 16,
    shard_size: int = 64,
    progress: bool = True,
    log: Callable[[str], None] = print,
    ray: dict[str, Any] | None = None,
) -> dict[str, tuple[Estimator, dict[str, Any]]]:
    """Train ``kinds`` estimators for ``att``'s model on the train split of ``data``; saved at
    :func:`estimator_paths` of ``out``. Returns ``{kind: (estimator, report)}``.

    The last ``holdout`` fraction of the examples is kept out of every fit and reports each estimator's
    held-out score next to average attention's (the uniform weights) on the same questions: LDS for
    answer and query, Pearson and gold-document-first for support. Support data needs reference
    answers in the data (``answers``) and uses the first ``support_limit`` examples (default ``limit``),
    ``support_masks`` random ablations each (16, the shipped support estimators' protocol).
    ``shard_size``: examples per data shard; a smaller one keeps more of a slow run that is stopped.
    ``ray``: the keyword arguments of :func:`~at2_rag.research.distributed.generate_with_ray` (``model``,
    ``address``, ``workers``, ``gpus_per_worker``, ``device``, ``dtype``) to make the shards on a Ray cluster.
    """
    kinds = estimator_kinds(kinds)
    if not 0 < holdout < 1:
        raise InputError(f"holdout must be a fraction between 0 and 1 (questions kept out of the fit), got {holdout}")
    at_least("k", k, 1, " (documents per example)")
    if "support" in kinds and not any(reference_answers(ex) for ex in read_selection(data, "train", support_limit or limit, "raise")):
        raise InputError(
            f"no example of {data}'s train split has a reference answer ('answers'): support estimators are "
            "fitted on reference answers; add them, or leave support out of the kinds"
        )
    work = Path(work)
    paths = estimator_paths(out, kinds)
    ident = ModelIdentity.of(att.model)
    results: dict[str, tuple[Estimator, dict[str, Any]]] = {}

    def save(kind: str, est: Estimator, report: dict[str, Any]) -> None:
        est.save(paths[kind])  # at once: a later stage that fails loses nothing
        log(f"{kind}: {_summary(report)}; saved {paths[kind]}")
        results[kind] = (est, report)

    if "answer" in kinds or "query" in kinds:
        log("ablation outcomes (resumable) ...")
        options = dict(split="train", k=k, limit=limit, n_masks=n_masks, max_new_tokens=max_new_tokens,
                       max_batch_tokens=max_batch_tokens, shard_size=shard_size)
        _generate(att, data, work / "outcomes", "outcomes", options, progress, ray)
        log("features, one pass per question (cached) ...")
        rows = cached_features(att, work / "outcomes", data, work / "features", progress=progress)
        fit_rows, held = holdout_split(rows, holdout, lambda r: r[0]["id"])
        recipe, _ = read_outcomes(work / "outcomes")
        for kind in ("answer", "query"):
            if kind in kinds:
                log(f"fitting the {kind} estimator on {len(fit_rows)} questions, {len(held)} held out ...")
                save(kind, *_fit_lds_kind(kind, fit_rows, held, ident, recipe))
    if "support" in kinds:
        log("support data: reference-answer ablations over whole documents (resumable) ...")
        _generate(att, data, work / "support", "support", dict(split="train", limit=support_limit or limit, n_masks=support_masks,
                                                               shard_size=shard_size),
                  progress, ray)
        records = load_records(work / "support")
        train, held_records = holdout_split(records, holdout, lambda r: r[1]["id"])
        log(f"fitting the support estimator on {len(train)} records, {len(held_records)} held out ...")
        weights, calibration, report = fit_support(train, held_records, log=None)
        support_recipe = portable_recipe(read_recipe(work / "support") or {})
        method = "negative-pearson" if report["weights"] == "trained" else "training-free"
        est = Estimator(weights, ident, "query", {"method": method, "target": "reference answer (support)",
                                                  "data": support_recipe, **report}, calibration)
        save("support", est, report)
    return {kind: results[kind] for kind in kinds}


def _generate(att, data, out_dir: Path, kind: str, options: dict, progress: bool, ray: dict | None) -> None:
    """One resumable data stage, in this process or on Ray."""
    if ray is not None:
        from .distributed import generate_with_ray

        generate_with_ray(data_path=data, out_dir=out_dir, kind=kind, **ray, **options)
    elif kind == "outcomes":
        generate_outcomes(att, data, out_dir, kind="train", progress=progress, **options)
    else:
        generate_support_data(att, data, out_dir, progress=progress, **options)


def holdout_split(items: Sequence, holdout: float, example_id: Callable) -> tuple[list, list]:
    """Items of the first examples to fit, those of the last ``holdout`` fraction of examples to report."""
    ids = list(dict.fromkeys(example_id(x) for x in items))
    n_held = max(1, round(len(ids) * holdout))
    if len(ids) - n_held < 2:
        raise InputError(f"only {len(ids)} usable examples; give more data (a few hundred questions)")
    held_ids = set(ids[-n_held:])
    return [x for x in items if example_id(x) not in held_ids], [x for x in items if example_id(x) in held_ids]


def _fit_lds_kind(kind: str, fit_rows: Sequence[Row], held: Sequence[Row], ident: ModelIdentity,
                  recipe: dict) -> tuple[Estimator, dict[str, Any]]:
    """Fit the answer or query estimator and its held-out LDS next to average attention's."""
    weights = fit_outcomes(fit_rows, kind=kind, log=None)
    if kind == "query":  # score the question rows: put them where holdout_lds reads the whole answer's
        held = [(rec, q[:, :, None], q) for rec, _, q in held]
    uniform = torch.ones_like(weights)
    ours = mean_and_stderr(holdout_lds(lambda rec, f, m, y: torch.einsum("lhs,lh->s", f, weights), held))
    base = mean_and_stderr(holdout_lds(lambda rec, f, m, y: torch.einsum("lhs,lh->s", f, uniform), held))
    report = {"fit_examples": len(fit_rows), "holdout_examples": len(held),
              "holdout_lds": {"mean": ours[0], "stderr": ours[1]},
              "holdout_lds_average_attention": {"mean": base[0], "stderr": base[1]}}
    est = Estimator(weights, ident, kind, {"method": "negative-pearson", "fit": {"non_negative": True},
                                           "data": recipe, **report})
    return est, report


def _summary(report: dict[str, Any]) -> str:
    """One line of a kind's held-out report."""
    if "holdout_lds" in report:
        ours, base = report["holdout_lds"], report["holdout_lds_average_attention"]
        return f"held-out LDS {ours['mean']:.3f} ± {ours['stderr']:.3f} (average attention {base['mean']:.3f} ± {base['stderr']:.3f})"
    line = (f"held-out Pearson {report['holdout_pearson']:.3f} (training-free "
            f"{report['holdout_pearson_average_attention']:.3f})")
    if report["holdout_gold_records"]:
        line += (f", gold document first {report['holdout_gold_first']:.2f} (training-free "
                 f"{report['holdout_gold_first_average_attention']:.2f}) on {report['holdout_gold_records']} records")
    if report.get("weights", "trained") != "trained":
        line += (f"; the trained weights reached {report['holdout_pearson_trained']:.3f}, so the training-free "
                 "signal is kept")
    return line + f", rank weight {report['fusion']['rank_weight']:.2f}"


__all__ = ["DEFAULT_KINDS", "estimator_paths", "fit_model", "fit_outcomes", "holdout_lds", "holdout_split"]
