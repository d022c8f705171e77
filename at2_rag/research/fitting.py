"""Fit AT2 estimators: per-head weights whose mask predictions best correlate with measured ablation targets."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..errors import InputError
from ..estimator import Estimator, ModelIdentity
from .options import at_least, finite_number
from .shards import load_records, portable_recipe, read_recipe, shard_paths


@dataclass
class Instances:
    """Padded training instances: features ``(N, L·H, S)``, signed masks ``(N, m, S)``, targets ``(N, m)``."""

    features: torch.Tensor
    signs: torch.Tensor
    targets: torch.Tensor
    shape: tuple[int, int]

    def __len__(self) -> int:
        return self.features.shape[0]


def make_instances(records, kind: str = "answer", *, calibrated: bool = False) -> Instances:
    """One instance per (example, answer sentence) for ``answer``; per example for ``query``.

    ``calibrated``: query features minus those of the content-free question (support shards).
    """
    feats, signs, ys = [], [], []
    shape = None
    for t, _ in records:
        L, H = t["query"].shape[:2]
        shape = (L, H)
        masks = t["masks"].to(torch.float32) * 2 - 1
        if kind == "answer":
            n_spans = t["features"].shape[2]
            cols = range(n_spans - 1) if n_spans > 1 else range(1)
            items = [(t["features"][:, :, c], t["targets"][:, c]) for c in cols]
        else:
            x = t["query"] - t["query_null"] if calibrated else t["query"]
            items = [(x, t["targets"][:, -1])]
        for x, y in items:
            y = y.to(torch.float32)
            if not torch.isfinite(y).all() or y.std() < 1e-6:
                continue  # no signal across masks
            feats.append(x.reshape(L * H, -1))
            signs.append(masks)
            ys.append(y)
    if not feats:
        raise InputError(
            "no usable training instances (every target was constant or infinite); generate data with more "
            "examples or masks"
        )
    s_max = max(f.shape[1] for f in feats)
    pad = lambda x: torch.nn.functional.pad(x, (0, s_max - x.shape[-1]))  # noqa: E731
    return Instances(
        torch.stack([pad(f) for f in feats]), torch.stack([pad(s) for s in signs]), torch.stack(ys), shape
    )


def pearson_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative Pearson correlation across the last axis, averaged over instances."""
    p = pred - pred.mean(dim=-1, keepdim=True)
    t = target - target.mean(dim=-1, keepdim=True)
    corr = (p * t).sum(-1) / (p.norm(dim=-1) * t.norm(dim=-1)).clamp(min=1e-12)
    return -corr.mean()


class NegativePearson:
    """AT2's loss: the negative Pearson correlation between predictions and targets across the masks
    of each instance, averaged over instances (:func:`pearson_loss`). Scale-free, so only the
    direction of the weights is learnt."""

    name = "negative-pearson"

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return pearson_loss(pred, target)


class Constraint(Protocol):
    """A projection of the weights, in place: after every optimiser step, or once on the result."""

    name: str
    every_step: bool

    def apply(self, weights: torch.Tensor) -> None: ...


class NonNegative:
    """Constraint: no head counts against a source; negative weights are clamped to zero after every step."""

    name = "non-negative"
    every_step = True

    def apply(self, weights: torch.Tensor) -> None:
        with torch.no_grad():
            weights.clamp_(min=0)


class L1Normalized:
    """Constraint: the fitted weights are scaled to unit L1 norm once, after the last step (the loss
    ignores scale; this fixes it, so scores of estimators are comparable)."""

    name = "l1-normalized"
    every_step = False

    def apply(self, weights: torch.Tensor) -> None:
        with torch.no_grad():
            weights.div_(weights.abs().sum().clamp(min=1e-12))


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(predictions (N, m), targets (N, m)) -> scalar`` to minimise."""


def mask_predictions(weights: torch.Tensor, inst_features: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """What the weights predict for every mask: ``ŷ(v) = Σ_s (2v_s − 1)·score(s)``, ``(N, m)``."""
    scores = torch.einsum("nfs,f->ns", inst_features, weights)
    return torch.einsum("nms,ns->nm", signs, scores)


def fit_estimator(
    train: Instances,
    validation: Instances | None = None,
    *,
    steps: int = 1000,
    lr: float = 1e-3,
    batch_size: int = 512,
    weight_decay: float = 0.0,
    loss: Loss | None = None,
    constraints: Sequence[Constraint] | None = None,
    non_negative: bool = False,
    seed: int = 0,
    log_every: int = 100,
    log=print,
) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """Fit per-head weights ``(L, H)`` with Adam and a cosine schedule; returns them and a history.

    ``loss`` defaults to :class:`NegativePearson`. ``constraints`` (default: :class:`L1Normalized`)
    are applied in order, after every optimiser step (``every_step``) or once to the final weights;
    ``non_negative=True`` is shorthand for adding :class:`NonNegative` first. The history's
    ``val_pearson`` is the Pearson correlation on ``validation``, whatever the loss.
    """
    check_fit_options(steps=steps, lr=lr, batch_size=batch_size, log_every=log_every, weight_decay=weight_decay)
    loss_fn = NegativePearson() if loss is None else loss
    constraints = [L1Normalized()] if constraints is None else list(constraints)
    if non_negative and not any(isinstance(c, NonNegative) for c in constraints):
        constraints.insert(0, NonNegative())
    g = torch.Generator().manual_seed(seed)
    n_feat = train.features.shape[1]
    w = torch.full((n_feat,), 1.0 / n_feat, requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    history = []
    for step in range(1, steps + 1):
        idx = torch.randperm(len(train), generator=g)[: min(batch_size, len(train))]
        value = loss_fn(mask_predictions(w, train.features[idx], train.signs[idx]), train.targets[idx])
        opt.zero_grad()
        value.backward()
        torch.nn.utils.clip_grad_norm_([w], 1.0)
        opt.step()
        sched.step()
        for c in constraints:
            if c.every_step:
                c.apply(w)
        if step % log_every == 0 or step == steps:
            row = {"step": step, "train_loss": float(value.detach())}
            if validation is not None:
                with torch.no_grad():
                    row["val_pearson"] = -float(
                        pearson_loss(mask_predictions(w, validation.features, validation.signs), validation.targets)
                    )
            history.append(row)
            if log:
                log("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    weights = w.detach().clone()
    for c in constraints:
        if not c.every_step:
            c.apply(weights)
    return weights.reshape(train.shape), history


def check_fit_options(**options: object) -> None:
    """Refuse ``steps``, ``batch_size``, ``log_every`` below 1, a ``lr`` that is not a finite positive number
    and a ``weight_decay`` that is not a finite number ≥ 0 (Adam's ValueError, or NaN weights, otherwise)."""
    for name in ("steps", "batch_size", "log_every"):
        if name in options:
            at_least(name, options[name])
    finite_number("lr", options.get("lr", 1.0), above=True, why=" (the learning rate)")
    finite_number("weight_decay", options.get("weight_decay", 0.0), why=" (Adam's L2 penalty; 0 turns it off)")


def train_estimator(
    shard_dir: str | Path,
    model_identity: ModelIdentity,
    *,
    kind: str = "answer",
    validation_dir: str | Path | None = None,
    **fit_kwargs,
) -> tuple[Estimator, list[dict[str, float]]]:
    """Fit an estimator from shards (validation shards only monitor, never fit).

    Options, folders and the shards' ``recipe.json`` are checked before anything is loaded, and every
    shard file as it is read, before the fit (:class:`InputError`).
    """
    if kind not in ("answer", "query"):
        raise InputError(f"kind must be 'answer' or 'query', got {kind!r}")
    check_fit_options(**fit_kwargs)
    for folder in (shard_dir, validation_dir) if validation_dir else (shard_dir,):
        shard_paths(folder)
    data_recipe = read_recipe(shard_dir)
    records = load_records(shard_dir)
    train = make_instances(records, kind)
    val = make_instances(load_records(validation_dir), kind) if validation_dir else None
    t0 = time.perf_counter()
    weights, history = fit_estimator(train, val, **fit_kwargs)
    fit = {k: v for k, v in fit_kwargs.items() if k not in ("log", "loss", "constraints")}
    if fit_kwargs.get("constraints") is not None:
        fit["constraints"] = [c.name for c in fit_kwargs["constraints"]]
    recipe = {
        "method": getattr(fit_kwargs.get("loss"), "name", "negative-pearson"),
        "data": portable_recipe(data_recipe) if data_recipe is not None else {},
        "examples": len(records),
        "instances": len(train),
        "fit": fit,
        "fit_seconds": round(time.perf_counter() - t0, 2),
        "final": history[-1] if history else {},
    }
    return Estimator(weights, model_identity, kind, recipe), history  # type: ignore[arg-type]


__all__ = [
    "Constraint",
    "Instances",
    "L1Normalized",
    "NegativePearson",
    "NonNegative",
    "check_fit_options",
    "fit_estimator",
    "make_instances",
    "mask_predictions",
    "pearson_loss",
    "train_estimator",
]
