"""Keep the retrieved documents that drove the answer: keep policies and the prune step.

Shared by every front end (CLI, LangChain, LlamaIndex) so a policy means the same thing everywhere.
Three scoring modes:

- ``"support"`` (default): one prefill pass; the question rows' attention is scored by the support
  estimator, trained on ablations of the dataset's *reference* answers, so it predicts which
  documents make the model answer correctly — not which ones it leans on (a small reader leans on
  the last document whatever it says). Fused with the retriever's rank (:func:`fused_scores`) when a
  rank is known (:func:`known_ranks`): never with an order nobody vouched for.
- ``"draft"``: the local model drafts an answer; its attention while drafting is scored by the answer
  estimator (zero extra passes). Faithful to what the draft used, right or wrong.
- ``"query"``: one prefill pass scored by the query estimator, trained on the model's own answers.

With the shipped question-row estimators, each result also carries ``relevance``: a calibrated chance
that each document is the one that answers (:class:`RelevanceMap`, fitted on validation questions).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from .attributor import AT2Attributor, check_new_tokens
from .documents import Document, DocumentLike, as_documents, brief
from .errors import InputError
from .estimator import Estimator, check_rank_weight
from .policy import DEFAULT_POLICY, KeepPolicy
from .prompts import Granularity, encode
from .ranking import INPUT_ORDERS, InputOrder, RankSource, fused_scores, known_ranks
from .relevance import RelevanceMap, relevance_map
from .results import Attribution

Mode = Literal["support", "draft", "query"]
MODES: tuple[str, ...] = ("support", "draft", "query")
DEFAULT_ESTIMATORS = {"support": "default-support", "query": "default-query"}
"""The shipped question-row estimator of each prefill-only mode."""
ThresholdScale = Literal["keep", "relevance"]
THRESHOLD_SCALES: tuple[str, ...] = ("keep", "relevance")
"""What a keep policy's ``threshold`` compares: keep scores, or calibrated relevance (0-1)."""


@dataclass
class PruneResult:
    """The outcome of scoring and pruning one set of documents."""

    documents: list[Document]
    """The input documents (normalised), in input order."""
    scores: list[float]
    """One attribution score per input document."""
    kept: list[int]
    """Indices of the kept documents, highest score first."""
    token_lengths: list[int]
    """Each document's length in prompt tokens."""
    attribution: Attribution
    """The attribution the scores came from (its ``answer`` is the draft in draft mode)."""
    mode: str = "support"
    keep_scores: list[float] | None = None
    """The scores the keep policy ranked (AT2 scores fused with the retriever rank when one is known);
    ``scores`` when not given."""
    dropped_for_window: list[int] = field(default_factory=list)
    """Documents left out of scoring to fit the window (``overflow="drop_last"``); never kept."""
    sentence_spans: dict[int, list[tuple[int, int]]] | None = None
    """With sentence-level pruning: per kept document, the character spans of its kept sentences
    in reading order (None: whole documents are kept)."""
    sentence_tokens: dict[int, int] | None = None
    """With sentence-level pruning: per kept document, the prompt tokens of its kept sentences."""
    rank_source: RankSource = "none"
    """Where the keep score's rank term came from: every document's ``retrieval_rank`` metadata
    (``"metadata"``), the input order declared as the retriever's (``"input order"``), or nowhere
    (``"none"``: no rank was known, or the rank weight is 0; the keep score is AT2's alone)."""
    relevance: list[float] | None = None
    """Calibrated chance (0-1) that each document is the one that answers (:class:`RelevanceMap`; 0 for
    documents dropped for the window); None when no shipped map fits the estimator, mode and rank weight."""

    def __post_init__(self) -> None:
        if self.keep_scores is None:
            self.keep_scores = list(self.scores)

    @property
    def relevance_calibrated(self) -> bool:
        """Whether :attr:`relevance_scores` are calibrated chances (else keep scores min-max scaled)."""
        return self.relevance is not None

    @property
    def relevance_scores(self) -> list[float]:
        """One 0-1 score per document for frameworks: :attr:`relevance` when calibrated, else the keep
        scores min-max scaled within this call (best 1, worst 0; not finite: 0)."""
        if self.relevance is not None:
            return list(self.relevance)
        keep = self.keep_scores or []
        finite = [s for s in keep if math.isfinite(s)]
        low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
        return [0.0 if not math.isfinite(s) else 1.0 if high == low else (s - low) / (high - low) for s in keep]

    @property
    def dropped(self) -> list[int]:
        """Indices of the documents not kept, in input order."""
        keep = set(self.kept)
        return [i for i in range(len(self.documents)) if i not in keep]

    def kept_text(self, i: int) -> str:
        """Document ``i``'s text as kept: whole, or only its kept sentences with sentence-level pruning."""
        text = self.documents[i].text
        if self.sentence_spans is None or i not in self.sentence_spans:
            return text
        return "".join(text[s:e] for s, e in self.sentence_spans[i]).strip()

    @property
    def kept_documents(self) -> list[Document]:
        """The kept documents, best first (with only their kept sentences in sentence-level mode)."""
        return [dataclasses.replace(self.documents[i], text=self.kept_text(i)) for i in self.kept]

    @property
    def draft(self) -> str:
        """The local model's draft answer (empty in query mode)."""
        return self.attribution.answer

    @property
    def kept_tokens(self) -> int:
        if self.sentence_tokens is not None:
            return sum(self.sentence_tokens[i] for i in self.kept)
        return sum(self.token_lengths[i] for i in self.kept)

    @property
    def total_tokens(self) -> int:
        return sum(self.token_lengths)


class Pruner:
    """Score retrieved documents with AT2 and keep the useful ones.

    Args:
        attributor: the local model that scores (and, in draft mode, drafts).
        mode: ``"support"`` (default), ``"draft"`` or ``"query"`` (see the module docstring).
        policy: the keep policy (default: :data:`DEFAULT_POLICY`).
        query_estimator: estimator of the question rows in support and query modes (default: the
            shipped one of the mode, ``"default-support"`` / ``"default-query"``).
        rank_weight: weight of the retriever rank in the keep score (:func:`fused_scores`), used only
            when a rank is known (:func:`known_ranks`). None: the weight fitted with the support
            estimator (its recipe's ``fusion.rank_weight``) in support mode, 0 (AT2 scores alone) in
            the other modes. The policy ranks by the keep scores, so with a rank weight its
            ``relative`` is in keep-score units (standardized, possibly negative), and so is
            ``threshold`` unless ``threshold_scale="relevance"``.
        input_order: ``"unknown"`` (default): without ``retrieval_rank`` metadata on every document the
            keep score is AT2's alone, whatever the order; ``"retriever"``: the documents come in the
            retriever's order, best first, so their positions are the ranks.
        threshold_scale: what the policy's ``threshold`` compares: ``"keep"`` scores (default), or
            ``"relevance"``, the calibrated 0-1 chance (:attr:`PruneResult.relevance`; an
            :class:`InputError` where no calibration fits: draft mode, sentence-level pruning, an
            estimator or rank weight without a shipped map).
        max_new_tokens: length of the draft in draft mode.
        sentence_policy: also prune inside kept documents: sources become sentences, documents are
            kept by their summed sentence scores under ``policy``, then each kept document keeps the
            sentences this policy selects among its own (e.g. ``KeepPolicy(relative=0.5)``: those
            with at least half the weight of its strongest sentence). None: whole documents.
    """

    def __init__(
        self,
        attributor: AT2Attributor,
        *,
        mode: Mode = "support",
        policy: KeepPolicy | None = None,
        query_estimator: Estimator | str | None = "default",
        max_new_tokens: int | None = None,
        sentence_policy: KeepPolicy | None = None,
        rank_weight: float | None = None,
        input_order: InputOrder = "unknown",
        threshold_scale: ThresholdScale = "keep",
    ) -> None:
        if mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(map(repr, MODES))}, got {brief(mode)}")
        if input_order not in INPUT_ORDERS:
            raise InputError(
                f"input_order must be 'unknown' or 'retriever' (the documents come best first), got {brief(input_order)}")
        if threshold_scale not in THRESHOLD_SCALES:
            raise InputError(f"threshold_scale must be 'keep' or 'relevance', got {brief(threshold_scale)}")
        if rank_weight is not None:
            rank_weight = check_rank_weight(rank_weight, "rank_weight (or None: the estimator's)")
        for name, value in (("policy", policy), ("sentence_policy", sentence_policy)):
            if value is not None and not isinstance(value, KeepPolicy):
                raise InputError(
                    f"{name} must be an at2_rag.KeepPolicy or None, got {type(value).__name__}; "
                    "build one with KeepPolicy(top_k=...) or at2_rag.keep_policy(...)"
                )
        if max_new_tokens is not None:
            check_new_tokens(max_new_tokens)
        if sentence_policy is not None and sentence_policy.min_keep < 1:
            raise InputError(
                "sentence_policy.min_keep must be at least 1: a kept document with no kept sentence "
                "would be an empty document"
            )
        self.attributor = attributor
        self.mode = mode
        self.policy = policy or DEFAULT_POLICY
        if query_estimator == "default":
            query_estimator = DEFAULT_ESTIMATORS.get(mode, "default-query")
        self.query_estimator = query_estimator
        self.rank_weight = rank_weight
        self.max_new_tokens = max_new_tokens
        self.sentence_policy = sentence_policy
        self.input_order = input_order
        self.threshold_scale = threshold_scale
        if threshold_scale == "relevance" and self.policy.threshold is not None and not self._calibratable():
            raise InputError(self._uncalibrated_threshold())

    @property
    def granularity(self) -> Granularity:
        """What a source is: sentences with sentence-level pruning, else whole documents."""
        return "document" if self.sentence_policy is None else "sentence"

    def attribute(self, question: str, documents: Sequence[DocumentLike]) -> Attribution:
        """The attribution behind the scores (document or sentence granularity)."""
        if self.mode in ("support", "query"):
            return self.attributor.score_query(
                question, documents, estimator=self.query_estimator, granularity=self.granularity
            )
        return self.attributor.generate(
            question, documents, granularity=self.granularity, max_new_tokens=self.max_new_tokens
        )

    def prune(self, question: str, documents: Sequence[DocumentLike]) -> PruneResult:
        """Score ``documents`` for ``question`` and apply the keep policy."""
        docs = as_documents(documents)  # raises InputError on none / empty / non-string documents
        ranks, source = known_ranks(docs, self.input_order)
        weight = self._rank_weight() if ranks is not None else 0.0
        if weight == 0:
            ranks, source = None, "none"
        calibration = self._relevance_map(weight)
        by_relevance = self.threshold_scale == "relevance" and self.policy.threshold is not None
        if by_relevance and calibration is None:
            raise InputError(self._uncalibrated_threshold() if not self._calibratable() else self._no_relevance_map(weight))
        att = self.attribute(question, docs)
        n_scored = len(att.prompt.documents)  # the first n_scored documents (the rest dropped for the window)
        doc_scores = att.document_scores().tolist()
        lengths = [0] * n_scored
        for s in att.sources:
            lengths[s.document] += s.token_end - s.token_start
        scored_ranks = None if ranks is None else ranks[:n_scored]
        keep_scores = fused_scores(doc_scores, weight, scored_ranks)
        relevance = None if calibration is None else calibration.probabilities(doc_scores, scored_ranks)
        kept = self.policy.select(keep_scores, lengths, threshold_scores=relevance if by_relevance else None)
        # Documents dropped to fit the window were never seen: score them -inf, keep none of them.
        dropped = list(att.dropped_documents)
        scores = doc_scores + [float("-inf")] * len(dropped)
        lengths = lengths + [len(encode(self.attributor.tokenizer, docs[i].text)) for i in dropped]
        keep_scores = keep_scores + [float("-inf")] * len(dropped)
        relevance = None if relevance is None else relevance + [0.0] * len(dropped)
        result = PruneResult(docs, scores, kept, lengths, att, self.mode, keep_scores, dropped,
                             rank_source=source, relevance=relevance)
        if self.sentence_policy is not None:
            result.sentence_spans, result.sentence_tokens = _kept_sentences(att, kept, self.sentence_policy)
        return result

    def _rank_weight(self) -> float:
        """The retriever-rank weight in use when a rank is known (see the ``rank_weight`` argument)."""
        if self.rank_weight is not None:
            return self.rank_weight
        if self.mode != "support":
            return 0.0
        return self.attributor.query_estimator(self.query_estimator).rank_weight

    def _calibratable(self) -> bool:
        """Whether a relevance map can apply at all: whole documents scored from the question rows."""
        return self.mode != "draft" and self.sentence_policy is None

    def _relevance_map(self, rank_weight: float) -> RelevanceMap | None:
        """The shipped relevance map for this pruner's estimator and the rank weight in use, if any."""
        if not self._calibratable():
            return None
        return relevance_map(self.attributor.query_estimator(self.query_estimator), rank_weight)

    def _uncalibrated_threshold(self) -> str:
        return (
            f"threshold={self.policy.threshold} is a calibrated relevance (0-1), which exists only for whole "
            "documents scored in support or query mode with a shipped estimator and its fitted rank weight "
            f"(here: mode={self.mode!r}, sentence-level={self.sentence_policy is not None}); use top_k, "
            "token_budget or relative instead"
        )

    def _no_relevance_map(self, rank_weight: float) -> str:
        est = self.attributor.query_estimator(self.query_estimator)
        return (
            f"threshold={self.policy.threshold} is a calibrated relevance (0-1), but no relevance map ships for "
            f"this {est.model.name or est.model.architecture} estimator with rank weight {rank_weight:g} (maps exist "
            "for the bundled model's default-support and default-query, with or without ranks); use top_k, "
            "token_budget or relative instead"
        )

    async def aprune(self, question: str, documents: Sequence[DocumentLike]) -> PruneResult:
        """:meth:`prune` in a worker thread, so the event loop keeps running meanwhile."""
        return await asyncio.to_thread(self.prune, question, documents)



def _kept_sentences(
    att: Attribution, kept: Sequence[int], policy: KeepPolicy
) -> tuple[dict[int, list[tuple[int, int]]], dict[int, int]]:
    """Per kept document, the character spans (reading order) and prompt tokens of the sentences
    ``policy`` keeps among that document's own sentences."""
    by_doc: dict[int, list[tuple[int, int, int, float]]] = {d: [] for d in kept}
    for src, score in zip(att.sources, att.scores.tolist()):
        if src.document in by_doc:
            by_doc[src.document].append((src.start, src.end, src.token_end - src.token_start, score))
    spans, tokens = {}, {}
    for d, sents in by_doc.items():
        chosen = sorted(policy.select([s[3] for s in sents], [s[2] for s in sents]))
        spans[d] = [(sents[j][0], sents[j][1]) for j in chosen]
        tokens[d] = sum(sents[j][2] for j in chosen)
    return spans, tokens
