"""AT2 + N ablations: a few ablated passes sharpen AT2's scores.

ContextCite fits a linear surrogate ``y(v) ≈ b + Σ_s w_s v_s`` to many random ablations. With only
a few, that regression is underdetermined; here AT2's scores ``a`` are its prior: the scale ``c`` of
``c·a`` (and the intercept) are fitted first, then ridge regression pulls ``w`` away from ``c·a``
only as far as the ablations demand. ``strength`` is the ridge penalty per ablation (larger keeps
``w`` nearer the prior). Which passes to spend (``design``): ``"top"`` leaves out, one at a time, the N
sources the prior ranks highest (measuring the effects that dominate the answer), ``"random"`` drops
each source with probability 0.5 in N masks (ContextCite's design), and ``"mixed"`` spends half on
each. The default design and its strength were chosen on held-out training questions (README,
RESULTS.md §7).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

from .ablation import answer_token_logprobs, random_masks, span_targets
from .documents import brief
from .errors import InputError
from .seeds import stable_hash

if TYPE_CHECKING:
    from .results import Attribution

DESIGNS = ("top", "mixed", "random")
"""Ablation designs of AT2 + N (see the module docstring)."""

DEFAULT_DESIGN = "top"
DEFAULT_STRENGTH = {"top": 0.01, "mixed": 0.03, "random": 0.3}
"""The ridge strength of each design, chosen on held-out training questions (RESULTS.md §7)."""
MAX_STRENGTH = 1e12
"""Largest ridge strength accepted: there the refined scores equal the prior to float64 precision, and
``strength · n`` stays far from overflow."""


def design_split(n_ablations: int, design: str) -> tuple[int, int]:
    """How many of ``n_ablations`` passes leave out one top source, and how many are random masks."""
    if design not in DESIGNS:
        raise InputError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}")
    n_top = {"top": n_ablations, "random": 0, "mixed": n_ablations // 2}[design]
    return n_top, n_ablations - n_top


def top_sources(prior: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` highest-prior sources, highest first, ties broken by position (at most all)."""
    return torch.argsort(prior, descending=True, stable=True)[:n]


def ablation_masks(
    prior: torch.Tensor, n_ablations: int, design: str = DEFAULT_DESIGN, *, seed: int = 0,
    random: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(passes, S)`` keep-masks of AT2 + N: row 0 keeps every source (the unablated answer), then the
    design's top rows — each of the highest-prior sources left out alone (ties broken by position; at
    most one per source) — then its random rows, keeping each source with probability 0.5 (drawn from
    ``seed``, or the first rows of ``random`` when given, e.g. an evaluation's fixed mask sequence)."""
    n_top, n_random = design_split(n_ablations, design)
    n_src = prior.shape[0]
    top = top_sources(prior, n_top)
    left_out = torch.ones(len(top), n_src, dtype=torch.bool)
    left_out[torch.arange(len(top)), top] = False
    rand = random_masks(n_random, n_src, 0.5, seed=seed) if random is None else random[:n_random]
    return torch.cat([torch.ones(1, n_src, dtype=torch.bool), left_out, rand.to(torch.bool)])


def refine_scores(prior: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor, *, strength: float) -> torch.Tensor:
    """Scores ``(S,)`` from prior scores ``(S,)``, keep-masks ``(n, S)`` and their targets ``(n,)``.

    Minimises ``‖y − b − Xw‖² + strength·n·‖w − c·a‖²`` over ``w`` and ``b`` after fitting ``c ≥ 0``
    (least squares of ``y`` on ``X a``); with fewer than 2 ablations, or constant targets, it
    returns the prior. When the ablations do not support the prior's direction (``c`` fits to 0), the
    result is a plain ridge surrogate of the ablations alone.
    """
    strength = check_strength(strength)
    a = prior.to(torch.float64)
    X = masks.to(torch.float64)
    y = targets.to(torch.float64)
    n, s = X.shape
    if n < 2 or float(y.std()) == 0.0:
        return a.clone()
    Xc, yc = X - X.mean(dim=0), y - y.mean()
    pa = Xc @ a
    denom = float(pa @ pa)
    c = max(float(pa @ yc) / denom, 0.0) if denom > 0 else 0.0
    r = yc - c * pa
    lam = max(strength * n, 1e-12)
    delta = torch.linalg.solve(Xc.T @ Xc + lam * torch.eye(s, dtype=torch.float64), Xc.T @ r)
    return c * a + delta


def check_strength(strength: object) -> float:
    """``strength`` as a ridge penalty, a real number from 0 to :data:`MAX_STRENGTH`, else
    :class:`InputError` (NaN or inf would make every refined score NaN)."""
    if isinstance(strength, (int, float)) and not isinstance(strength, bool) and 0 <= strength <= MAX_STRENGTH:
        return float(strength)
    raise InputError(
        f"strength must be a number from 0 to {MAX_STRENGTH:.0e} (the ridge penalty; None: the design's "
        f"default), got {brief(strength)}"
    )


def check_refine_ablations(n: object, name: str = "refine_ablations", *, allow_zero: bool = False) -> int:
    """``n`` as a number of AT2 + N ablations: an integer >= 2 (or 0 for AT2 alone, when
    ``allow_zero``, as components that refine on request take it); else :class:`InputError`."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0 or n == 1 or (n == 0 and not allow_zero):
        zero = "0 (AT2 alone) or " if allow_zero else ""
        raise InputError(f"{name} must be {zero}an integer >= 2 (ablated passes), got {n!r}")
    return n


def refine_attribution(
    model, attribution: Attribution, n_ablations: int = 8, *, design: str = DEFAULT_DESIGN,
    strength: float | None = None, seed: int = 0, batch_size: int = 8,
) -> Attribution:
    """``attribution`` with its scores (whole answer and each answer sentence) refined by
    ``n_ablations`` ablated passes plus the unablated answer (:func:`ablation_masks`; at most
    ``n_ablations + 1`` passes, since a source is left out alone at most once).

    ``strength`` defaults to the design's (:data:`DEFAULT_STRENGTH`). The masks follow from the
    whole answer's scores and from the answer and ``seed``, so the same call gives the same scores;
    every answer sentence is refined from the same passes.
    """
    check_refine_ablations(n_ablations, "n_ablations")
    design_split(n_ablations, design)  # an unknown design is refused before any pass, as is the strength
    strength = DEFAULT_STRENGTH[design] if strength is None else check_strength(strength)
    if not attribution.answer_ids:
        raise InputError("the attribution has no answer tokens: there is nothing to refine")
    masks = ablation_masks(attribution.scores, n_ablations, design, seed=stable_hash(seed, *attribution.answer_ids))
    logp = answer_token_logprobs(model, attribution.prompt, attribution.answer_ids, masks, batch_size=batch_size)
    spans = [range(len(attribution.answer_ids))] + [s.tokens for s in attribution.sentences]
    y = span_targets(logp, spans)  # (1 + n, 1 + sentences)
    scores = refine_scores(attribution.scores, masks, y[:, 0], strength=strength).to(torch.float32)
    sentences = [
        dataclasses.replace(s, scores=refine_scores(s.scores, masks, y[:, 1 + i], strength=strength).to(torch.float32))
        if s.tokens else s
        for i, s in enumerate(attribution.sentences)
    ]
    return dataclasses.replace(
        attribution, scores=scores, sentences=sentences, method=f"{attribution.method}+{n_ablations}",
        extra_forward_passes=attribution.extra_forward_passes + masks.shape[0],
    )


__all__ = [
    "DEFAULT_DESIGN", "DEFAULT_STRENGTH", "DESIGNS", "MAX_STRENGTH", "ablation_masks", "check_refine_ablations",
    "check_strength", "design_split", "refine_attribution", "refine_scores", "top_sources",
]
