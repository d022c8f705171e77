"""Retrieve, prune with AT2, regenerate from the kept chunks, and cite: the main job in one call."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..documents import RETRIEVAL_RANK_KEY, Document, DocumentLike, as_documents, check_encodable
from ..errors import InputError
from ..policy import DEFAULT_POLICY, KeepPolicy
from ..research.data import is_correct, normalize_answer
from .corpus import chunk_label

if TYPE_CHECKING:  # torch-backed modules, imported where used: the CLI reads this module's defaults without them
    from ..attributor import AT2Attributor
    from ..citations import Citation
    from ..pruning import Mode, PruneResult
    from ..results import Attribution
    from .retrieval import VectorIndex

DEFAULT_RETRIEVE = 8
"""Chunks retrieved per question: enough to usually contain the answer, few enough for a small window."""
DEFAULT_KEEP = DEFAULT_POLICY.top_k
"""Chunks kept after pruning: the core default (chosen on validation, see ``at2_rag.pruning``)."""
AGREEMENT = {"differs": "≠ answers differ", "same": "= answers agree"}
"""The flag every view shows next to both answers, by :attr:`AnswerComparison.agreement`."""


@dataclass(frozen=True)
class AnswerComparison:
    """The pruned answer against the full-context one, and each against reference answers where known."""

    changed: bool | None
    """True when pruning changed the answer (normalised text differs); None without a full-context answer."""
    full_correct: bool | None
    """Whether the full-context answer contains a reference answer; None without references or that answer."""
    pruned_correct: bool | None
    """Whether the pruned answer contains a reference answer; None without references."""

    @property
    def has_references(self) -> bool:
        """True when reference answers were known, so correctness could be judged."""
        return self.pruned_correct is not None

    @property
    def agreement(self) -> str | None:
        """The short flag every view puts next to both answers: 'differs', 'same', or None (no comparison)."""
        return None if self.changed is None else "differs" if self.changed else "same"

    @property
    def verdict(self) -> str:
        """One plain sentence for every view: did pruning change the answer, and is each answer correct."""
        if self.changed is None:
            head = "No full-context answer in this mode, so whether pruning changed the answer is unknown"
        elif self.changed:
            head = "Pruning changed the answer"
        else:
            head = "Pruning did not change the answer"
        if not self.has_references:
            tail = ": the two answers differ, and there are no reference answers to say which is right" \
                if self.changed else ""
            return head + tail + "."
        parts = []
        if self.full_correct is not None:
            parts.append(f"full-context answer {_correct_word(self.full_correct)}")
        parts.append(f"pruned answer {_correct_word(self.pruned_correct)}")
        return f"{head}: {', '.join(parts)}."


def _correct_word(ok: bool | None) -> str:
    """'correct' or 'incorrect' for a known flag."""
    return "correct" if ok else "incorrect"


def compare_answers(full: str | None, pruned: str, references: Sequence[str] | None = None) -> AnswerComparison:
    """Compare the full-context and pruned answers (normalised) and judge both against ``references``.

    The one rule behind the terminal view, the HTML report and the JSON output, so they never disagree.
    """
    refs = [a for a in (references or ()) if normalize_answer(a)]
    changed = None if full is None else normalize_answer(full) != normalize_answer(pruned)
    pruned_correct = is_correct(pruned, refs) if refs else None
    full_correct = is_correct(full, refs) if refs and full is not None else None
    return AnswerComparison(changed, full_correct, pruned_correct)


def correctness_tally(comparisons: Sequence[AnswerComparison]) -> str | None:
    """One line counting correct pruned and full-context answers over the questions with references (None: none)."""
    judged = [c for c in comparisons if c.has_references]
    if not judged:
        return None
    n, with_full = len(judged), [c for c in judged if c.full_correct is not None]
    line = (f"pruned answer correct in {sum(bool(c.pruned_correct) for c in judged)} of {n}, "
            f"full-context answer correct in {sum(bool(c.full_correct) for c in with_full)} of {len(with_full)}")
    if len(with_full) < n:
        line += f" (no full-context answer for the other {n - len(with_full)})"
    compared = [c for c in comparisons if c.changed is not None]
    if compared:
        line += f"; pruning changed the answer in {sum(bool(c.changed) for c in compared)} of {len(compared)}"
    return line


@dataclass
class QAResult:
    """Everything one question went through: retrieval, scores, pruning, final answer, citations."""

    question: str
    retrieved: list[Document]
    retrieval_scores: list[float]
    prune: PruneResult
    final: Attribution
    """The answer regenerated from the kept chunks, attributed per sentence to their sentences."""
    citations: list[Citation]
    seconds: dict[str, float] = field(default_factory=dict)
    references: tuple[str, ...] | None = None
    """Accepted reference answers, when known (to judge both answers); None otherwise."""
    full_attribution: Attribution | None = None
    """The answer from all retrieved chunks, attributed per sentence, when generated for comparison
    (outside draft mode; in draft mode the draft's attribution plays that part)."""
    full_citations: list[Citation] | None = None
    """Citations of :attr:`full_attribution`, made with it (None: made from it when asked for)."""

    @property
    def answer(self) -> str:
        return self.final.answer

    @property
    def comparison(self) -> AnswerComparison:
        """Whether pruning changed the answer and, with references, whether each answer is correct."""
        return compare_answers(self.full_context_answer, self.answer, self.references)

    @property
    def full_context_answer(self) -> str | None:
        """The answer from all retrieved chunks: the draft in draft mode, else the one generated for
        comparison (``RAGPipeline(full_answer=True)``), else None."""
        if self.prune.mode == "draft":
            return self.prune.draft
        return None if self.full_attribution is None else self.full_attribution.answer

    @property
    def full_context_attribution(self) -> Attribution | None:
        """The attribution of :attr:`full_context_answer` over all retrieved chunks (None without it)."""
        return self.prune.attribution if self.prune.mode == "draft" else self.full_attribution

    @property
    def full_context_citations(self) -> list[Citation] | None:
        """Citations of the full-context answer (its sources are all retrieved chunks); None without it."""
        from ..citations import cite

        if self.prune.mode != "draft" and self.full_citations is not None:
            return self.full_citations
        att = self.full_context_attribution
        return None if att is None else cite(att)

    def chunk_numbers(self, full: bool = False) -> dict[int, int]:
        """Citation document index → the cited chunk's number as every view shows it (its position in
        ``retrieved`` + 1), for the pruned answer's citations or, with ``full``, the full-context answer's."""
        if not full:
            return {d: i + 1 for d, i in enumerate(self.kept)}
        att = self.full_context_attribution
        left_out = set(att.dropped_documents) if att is not None else set()
        return dict(enumerate((i + 1 for i in range(len(self.retrieved)) if i not in left_out)))

    def cited_answer(self, full: bool = False) -> str | None:
        """The answer (``full``: the full-context one) with ``[n]`` chunk markers after each cited sentence."""
        from ..citations import with_markers

        answer, citations = (self.full_context_answer, self.full_context_citations) if full else (
            self.answer, self.citations)
        if answer is None:
            return None
        return with_markers(answer, citations or [], self.chunk_numbers(full))

    @property
    def keep_scores(self) -> list[float]:
        """The scores the chunks were kept by (AT2 fused with retriever rank in support mode)."""
        return self.prune.keep_scores

    def bar_fractions(self) -> list[float]:
        """Each chunk's keep score as a 0–1 bar length (lowest finite score 0, highest 1), for every view."""
        finite = [k for k in self.keep_scores if math.isfinite(k)]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
        span = hi - lo
        return [0.0 if not math.isfinite(k) else (1.0 if span == 0 else (k - lo) / span) for k in self.keep_scores]

    @property
    def kept(self) -> list[int]:
        """Indices (into ``retrieved``) of the kept chunks, best first: the order the final prompt has."""
        return list(self.prune.kept)

    @property
    def dropped(self) -> list[int]:
        return self.prune.dropped

    def to_dict(self) -> dict:
        """A JSON-ready view: both answers (plain and with ``[n]`` chunk markers) and the comparison,
        then every retrieved chunk (label, file offsets when it came from a folder, scores), the kept
        order (indices into ``retrieved``, best first) and both answers' citations; each citation's
        ``chunks`` are indices into ``retrieved``."""
        cmp = self.comparison
        full_citations = self.full_context_citations
        out = {
            "question": self.question,
            "answer": self.answer,
            "answer_cited": self.cited_answer(),
            "full_context_answer": self.full_context_answer,
            "full_context_answer_cited": self.cited_answer(full=True),
            "pruning_changed_answer": cmp.changed,
            "comparison": cmp.verdict,
        }
        if cmp.has_references:
            out.update(reference_answers=list(self.references or ()), full_correct=cmp.full_correct,
                       pruned_correct=cmp.pruned_correct)
        return out | {
            "mode": self.prune.mode,
            "retrieved": [
                {"id": d.id, "label": chunk_label(d), "title": d.title, **_location(d), "text": d.text,
                 "retrieval_score": r, "attribution_score": a, "keep_score": k, "kept": i in self.prune.kept}
                for i, (d, r, a, k) in enumerate(
                    zip(self.retrieved, self.retrieval_scores, self.prune.scores, self.keep_scores))
            ],
            "kept_order": self.kept,
            "citations": _citation_dicts(self.citations, self.chunk_numbers()),
            "full_context_citations": None if full_citations is None else _citation_dicts(
                full_citations, self.chunk_numbers(full=True)),
            "kept_tokens": self.prune.kept_tokens,
            "retrieved_tokens": self.prune.total_tokens,
            "seconds": self.seconds,
        }


def _location(doc: Document) -> dict[str, Any]:
    """A folder chunk's file (relative to the corpus folder) and character offsets in it; {} for others."""
    return {key: doc.metadata[key] for key in ("source", "start", "end") if key in doc.metadata}


def _citation_dicts(citations: Sequence[Citation], numbers: dict[int, int]) -> list[dict[str, Any]]:
    """Citations as dicts, each with ``chunks``: its cited documents as indices into ``retrieved``."""
    return [c.to_dict() | {"chunks": [numbers[d] - 1 for d in c.documents]} for c in citations]


@dataclass(frozen=True)
class RunSettings:
    """What a run was set up with, for the header of every view (terminal, HTML report, JSON)."""

    model: str
    estimator: str
    top_k: int
    keep: int | None
    mode: str
    corpus: str
    refine: int = 0
    """Ablations that sharpen the citations (AT2 + N); 0: AT2 alone."""

    @classmethod
    def of(cls, pipeline: RAGPipeline, *, estimator: str | None, corpus: str) -> RunSettings:
        """The settings of ``pipeline``; ``estimator`` as the user named it (None: uniform weights)."""
        from ..estimator import ModelIdentity

        return cls(ModelIdentity.of(pipeline.attributor.model).name, estimator or "none (uniform attention)",
                   pipeline.k, pipeline.pruner.policy.top_k, pipeline.pruner.mode, corpus, pipeline.refine_ablations)

    def items(self) -> list[tuple[str, str]]:
        """(label, value) pairs in display order, the same in every view."""
        keep = "policy" if self.keep is None else str(self.keep)
        citations = "AT2" if not self.refine else f"AT2 + {self.refine} ablations"
        return [("model", self.model), ("estimator", self.estimator), ("top-k", str(self.top_k)),
                ("keep", keep), ("mode", self.mode), ("citations", citations), ("corpus", self.corpus)]

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready fields (``run`` in ``at2-rag ask --json``)."""
        return asdict(self)


class RAGPipeline:
    """Question → retrieve ``k`` chunks → AT2-score and keep the best → regenerate → cite.

    Args:
        attributor: the local model (answers, scores and cites).
        index: where chunks are retrieved from.
        k: chunks retrieved per question.
        mode: ``"support"`` (default), ``"draft"`` or ``"query"`` (see :class:`~at2_rag.Pruner`).
        policy: keep policy (default: the core's, the best ``DEFAULT_KEEP`` chunks).
        max_new_tokens: answer length.
        full_answer: also answer from all retrieved chunks, attributed and cited, to show what pruning
            changed (free in draft mode, where that answer is the draft; one more generation in the
            other modes).
        refine_ablations: sharpen each cited answer's attribution with this many ablated passes
            (AT2 + N, :meth:`~at2_rag.AT2Attributor.refine`; N + 1 more passes per answer); 0: AT2 alone.
    """

    def __init__(
        self,
        attributor: AT2Attributor,
        index: VectorIndex,
        *,
        k: int = DEFAULT_RETRIEVE,
        mode: Mode = "support",
        policy: KeepPolicy | None = None,
        max_new_tokens: int = 48,
        full_answer: bool = False,
        refine_ablations: int = 0,
    ) -> None:
        from ..attributor import check_new_tokens
        from ..pruning import Pruner
        from ..refine import check_refine_ablations

        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive int (chunks to retrieve per question), got {k!r}")
        # the attributor's own rule, checked before any work rather than after retrieval and scoring
        self.max_new_tokens = check_new_tokens(max_new_tokens)
        self.refine_ablations = check_refine_ablations(refine_ablations, allow_zero=True)
        self.attributor = attributor
        self.index = index
        self.k = k
        self.full_answer = full_answer
        self.pruner = Pruner(attributor, mode=mode, policy=policy, max_new_tokens=max_new_tokens)

    def ask(self, question: str, references: Iterable[str] | None = None) -> QAResult:
        """Answer ``question`` from the index with pruned context and measured citations.

        ``references`` (accepted answers, when known) let the result say whether each answer is correct.
        """
        check_question(question)  # before retrieval: the retriever's tokenizer cannot take a bad question
        refs = check_references(references)
        t0 = time.perf_counter()
        hits = self.index.search(question, self.k)
        # The index returns best first, so each chunk's rank is known: the support pruner fuses it.
        docs = [replace(d, metadata={**d.metadata, RETRIEVAL_RANK_KEY: i}) for i, (d, _) in enumerate(hits)]
        sims = [s for _, s in hits]
        return self.answer(question, docs, sims, t_retrieve=time.perf_counter() - t0, references=refs)

    def answer(
        self, question: str, documents: Sequence[DocumentLike], retrieval_scores: Iterable[float] | None = None,
        *, t_retrieve: float = 0.0, references: Iterable[str] | None = None,
    ) -> QAResult:
        """Prune ``documents`` (already retrieved), regenerate from the kept ones and cite.

        ``retrieval_scores``, when given, holds one score per document (in their order).
        """
        check_question(question)
        refs = check_references(references)
        docs = as_documents(documents)  # a bare string is one error, not one document per character
        sims = _check_scores(retrieval_scores, len(docs))
        t1 = time.perf_counter()
        pruned = self.pruner.prune(question, docs)
        t2 = time.perf_counter()
        # Best first, as rerankers hand documents on: the strongest evidence opens the context.
        final, citations = self._cited(question, pruned.kept_documents)
        t3 = time.perf_counter()
        seconds = {"retrieve": t_retrieve, "score_and_prune": t2 - t1, "regenerate": t3 - t2}
        full = full_citations = None
        if self.full_answer and pruned.mode != "draft":
            full, full_citations = self._cited(question, docs)
            seconds["full_context_answer"] = time.perf_counter() - t3
        return QAResult(question, pruned.documents, sims, pruned, final, citations, seconds, refs, full,
                        full_citations)

    def _cited(self, question: str, documents: Sequence[Document]) -> tuple[Attribution, list[Citation]]:
        """Answer ``question`` from ``documents`` with sentences as sources, attribute and cite the answer.

        Citations are picked clause by clause from the answer's per-token scores (see :func:`~at2_rag.cite`),
        or from its sentence scores once ablations have refined those (they measure whole sentences). The
        features this needs are dropped from the result unless the attributor keeps features."""
        att = self.attributor
        answer = att.refined(att.generate(question, documents, granularity="sentence",
                                          max_new_tokens=self.max_new_tokens, keep_features=True),
                             self.refine_ablations)
        answer, citations = att.cited(answer)
        return answer, citations


def check_question(question: object) -> str:
    """``question`` as given, or :class:`InputError` unless it is a non-empty string a tokenizer can encode."""
    if not isinstance(question, str) or not question.strip():
        raise InputError(f"the question must be a non-empty string, got {question!r:.60}")
    check_encodable(question, "the question")
    return question


def check_references(references: Iterable[str] | None) -> tuple[str, ...] | None:
    """Reference answers as a tuple (None: unknown), or :class:`InputError` unless a collection of strings."""
    if references is None:
        return None
    if isinstance(references, (str, bytes)) or not isinstance(references, Iterable):
        raise InputError(
            f"references must be a list of accepted answers, got a {type(references).__name__} "
            f"{references!r:.60}; wrap a single answer in a list: references=[answer]"
        )
    refs = tuple(references)
    for i, ref in enumerate(refs):
        if not isinstance(ref, str):
            raise InputError(f"reference answer {i} is a {type(ref).__name__}, not a string; pass strings")
        check_encodable(ref, f"reference answer {i}")
    return refs


def _check_scores(scores: Iterable[float] | None, n: int) -> list[float]:
    """One retrieval score per document (NaN for each when ``scores`` is None), else :class:`InputError`."""
    if scores is None:
        return [float("nan")] * n
    values = None if isinstance(scores, (str, bytes)) or not isinstance(scores, Iterable) else list(scores)
    if values is None or len(values) != n:
        got = f"a {type(scores).__name__}" if values is None else f"{len(values)} scores"
        raise InputError(f"retrieval_scores must hold one score per document: {n} documents, got {got}")
    return values
