"""Calibrated relevance: the chance (0-1) that each scored document is the one that answers.

Maps fitted on validation questions (``benchmarks/calibration.py``) ship in ``estimators/relevance.json``,
one per (estimator, rank weight); :func:`relevance_map` finds the one that fits a pruner's scores.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EstimatorError, InputError
from .estimator import Estimator
from .ranking import fused_scores, standardized

RELEVANCE_FILE = Path(__file__).parent / "estimators" / "relevance.json"
"""The shipped relevance maps and the recipe that fitted them (``benchmarks/calibration.py``)."""
RELEVANCE_FORMAT = "at2-rag-relevance"
RELEVANCE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class RelevanceMap:
    """Calibrated chance that each scored document is the one that answers: a softmax over the list of
    ``slope · (z(score) − rank_weight · log(1 + rank))``, fitted by maximum likelihood on validation
    questions for one estimator (named by its weights' SHA-256) with one rank weight (0: no rank).

    Monotone in the keep score within a call, so a threshold on it keeps a prefix of the keep order.
    The shares sum to 1: it assumes the list holds the answering passage, as the validation lists
    (top-10 dense retrieval) almost always did; it cannot say that none of them answers.
    """

    estimator: str
    weights_sha256: str
    rank_weight: float
    slope: float

    def probabilities(self, scores: Sequence[float], ranks: Sequence[int] | None = None) -> list[float]:
        """The chance of each document (AT2 scores ``scores``, retriever ``ranks`` when the map uses them)."""
        if not scores:
            return []
        if self.rank_weight > 0 and ranks is None:
            raise InputError("this relevance map needs the documents' retriever ranks")
        logits = [self.slope * k for k in (
            fused_scores(scores, self.rank_weight, ranks) if self.rank_weight > 0 else standardized(scores))]
        top = max(logits)
        weights = [math.exp(v - top) for v in logits]
        total = sum(weights)
        return [w / total for w in weights]


def weights_fingerprint(estimator: Estimator) -> str:
    """SHA-256 of an estimator's weights as little-endian float32: which estimator a relevance map was fitted for."""
    return hashlib.sha256(estimator.weights.detach().cpu().numpy().astype("<f4").tobytes()).hexdigest()


@functools.cache
def relevance_maps(path: Path = RELEVANCE_FILE) -> tuple[RelevanceMap, ...]:
    """The relevance maps in ``path`` (none when it does not exist), read once as JSON and checked."""
    if not path.exists():
        return ()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != RELEVANCE_FORMAT:
            raise ValueError(f"its format is not {RELEVANCE_FORMAT!r}")
        if data.get("format_version") != RELEVANCE_FORMAT_VERSION:
            raise ValueError(f"format_version {data.get('format_version')!r} is not {RELEVANCE_FORMAT_VERSION}")
        return tuple(_relevance_map(m) for m in data["maps"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EstimatorError(f"{path} is not a valid relevance-map file ({exc}); reinstall at2-rag") from None


def _relevance_map(entry: Any) -> RelevanceMap:
    """One map entry of the relevance file, type-checked (finite numbers, a positive slope)."""
    fields = {f.name: entry[f.name] for f in dataclasses.fields(RelevanceMap)}
    for name in ("rank_weight", "slope"):
        value = fields[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} {value!r} is not a finite number")
    if fields["slope"] <= 0 or fields["rank_weight"] < 0:
        raise ValueError("a map needs a positive slope and a non-negative rank weight")
    return RelevanceMap(str(fields["estimator"]), str(fields["weights_sha256"]),
                        float(fields["rank_weight"]), float(fields["slope"]))


def relevance_map(estimator: Estimator, rank_weight: float) -> RelevanceMap | None:
    """The shipped map fitted for ``estimator`` with exactly this rank weight (0: no rank), else None."""
    maps = relevance_maps()
    if not maps:
        return None
    fingerprint = weights_fingerprint(estimator)
    return next((m for m in maps if m.weights_sha256 == fingerprint
                 and math.isclose(m.rank_weight, rank_weight, rel_tol=1e-9, abs_tol=1e-12)), None)
