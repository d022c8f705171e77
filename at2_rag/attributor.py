"""Generate-and-attribute, attribute a given answer, and score sources from the query alone.

Features for AT2 are the attention rows that *predict* the answer tokens (row t-1 for token t),
reduced per source and head; the estimator turns them into one score per source. During
``generate`` those rows are exactly the prefill's last row and each decode step's row, so a model's
own answer is attributed with no extra forward pass.
"""

from __future__ import annotations

import asyncio
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from . import capture
from .errors import ContextTooLongError, EstimatorError, InputError
from .estimator import Estimator, ModelIdentity
from .prompts import (
    DEFAULT_INSTRUCTION,
    HEADER_WORD,
    DocumentLike,
    Granularity,
    Prompt,
    Source,
    build_prompt,
    decode,
    encode,
    token_char_starts,
)
from .sentences import split_sentences

SHIPPED_ESTIMATORS = ("default", "default-query", "default-support")
"""Estimators shipped for the default model: answer rows, question rows (the model's own answers),
and question rows trained on reference answers (which sources support the right answer)."""
CONTENT_FREE_QUESTION = "N/A"
"""The question of the calibration prompt: asks nothing, so its attention is the positional prior."""


@dataclass(frozen=True)
class ScoredSource:
    """A source with its attribution score."""

    source: Source
    score: float

    @property
    def text(self) -> str:
        return self.source.text


@dataclass(frozen=True)
class AnswerSentence:
    """One sentence of the answer: character span in the answer and its per-source scores."""

    text: str
    start: int
    end: int
    scores: torch.Tensor
    tokens: tuple[int, ...] = ()
    """Indices of the answer tokens that make up this sentence."""


@dataclass
class Attribution:
    """Scores of every source for an answer, overall and per answer sentence."""

    prompt: Prompt
    answer: str
    scores: torch.Tensor
    sentences: list[AnswerSentence]
    method: str
    extra_forward_passes: int
    answer_ids: list[int] = field(default_factory=list)
    features: torch.Tensor | None = field(default=None, repr=False)
    """Per-token features ``(layers, heads, answer tokens, sources)`` when kept."""
    query_features: torch.Tensor | None = field(default=None, repr=False)
    """Features of the prompt's question rows ``(layers, heads, sources)`` when kept."""
    dropped_documents: list[int] = field(default_factory=list)
    """Indices of input documents left out to fit the model's window (``overflow="drop_last"``)."""

    @property
    def sources(self) -> list[Source]:
        return self.prompt.sources

    def ranked(self, sentence: int | None = None) -> list[ScoredSource]:
        """All sources, highest score first (for one answer sentence when ``sentence`` is given)."""
        scores = self.scores if sentence is None else self.sentences[sentence].scores
        order = torch.argsort(scores, descending=True, stable=True).tolist()
        return [ScoredSource(self.sources[i], float(scores[i])) for i in order]

    def top_k(self, k: int = 3, sentence: int | None = None) -> list[ScoredSource]:
        """The ``k`` highest-scoring sources."""
        return self.ranked(sentence)[:k]

    def document_scores(self) -> torch.Tensor:
        """Scores summed per document (sources are disjoint, and scores are linear in them)."""
        out = torch.zeros(len(self.prompt.documents))
        for src, score in zip(self.sources, self.scores.tolist()):
            out[src.document] += score
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python view (JSON-serialisable)."""
        docs = self.prompt.documents
        return {
            "question": self.prompt.question,
            "answer": self.answer,
            "method": self.method,
            "granularity": self.prompt.granularity,
            "extra_forward_passes": self.extra_forward_passes,
            "sources": [
                {
                    "index": s.index,
                    "document": s.document,
                    "document_id": docs[s.document].id,
                    "text": s.text,
                    "start": s.start,
                    "end": s.end,
                    "score": float(score),
                }
                for s, score in zip(self.sources, self.scores.tolist())
            ],
            "sentences": [
                {"text": s.text, "start": s.start, "end": s.end, "scores": s.scores.tolist()}
                for s in self.sentences
            ],
        }

    def table(self, k: int | None = None, width: int = 60) -> str:
        """A plain-text table of the ranked sources."""
        rows = self.ranked()[:k] if k else self.ranked()
        lines = [f"{'rank':>4}  {'score':>9}  {'doc':>3}  text"]
        for rank, item in enumerate(rows, 1):
            text = " ".join(item.text.split())
            text = text if len(text) <= width else text[: width - 1] + "…"
            lines.append(f"{rank:>4}  {item.score:>9.4f}  {item.source.document + 1:>3}  {text}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return f"Answer: {self.answer}\n{self.table()}"


class AT2Attributor:
    """Attribute answers to context sources with AT2 on a local Hugging Face causal LM.

    Args:
        model, tokenizer: a transformers causal LM whose attention goes through the attention
            interface (see :func:`at2_rag.load_model`), and its tokenizer.
        estimator: an :class:`Estimator`, a path or shipped name (``"default"``), or None for
            uniform weights (average attention).
        granularity: default source granularity ("document", "sentence" or a token count).
        max_new_tokens: default generation length.
        keep_features: keep raw per-token features on results (for training and analysis).
        overflow: what to do when the prompt plus answer exceed the model's window: ``"error"``
            (default; raise :class:`ContextTooLongError`) or ``"drop_last"`` (drop documents from
            the end of the list — the lowest-ranked, in retriever order — with a warning naming them).
        suppress_header_echo: in :meth:`generate`, forbid the answer's first token from starting a
            copy of a document header ("Document [n] (Title: ...)"), which small models often emit
            instead of an answer. The prompt is unchanged, so trained estimators stay valid.
    """

    def __init__(
        self,
        model,
        tokenizer,
        estimator: Estimator | str | None = "default",
        *,
        granularity: Granularity = "document",
        instruction: str = DEFAULT_INSTRUCTION,
        system_prompt: str | None = None,
        max_new_tokens: int = 64,
        keep_features: bool = False,
        overflow: Literal["error", "drop_last"] = "error",
        suppress_header_echo: bool = True,
    ) -> None:
        if overflow not in ("error", "drop_last"):
            raise ValueError(f"overflow must be 'error' or 'drop_last', got {overflow!r}")
        capture.prepare_model(model)
        self.model = model
        self.tokenizer = tokenizer
        self.estimator = _resolve_estimator(estimator, model, "answer")
        self.granularity = granularity
        self.instruction = instruction
        self.system_prompt = system_prompt
        self.max_new_tokens = max_new_tokens
        self.keep_features = keep_features
        self.overflow = overflow
        self.suppress_header_echo = suppress_header_echo
        self._num_layers = capture.num_layers(model)
        # Estimators named by path or shipped name, loaded once per attributor (score_query's
        # estimator argument is usually such a name, passed again on every call).
        self._named_estimators: dict[tuple[str, str], Estimator] = {}
        self._named_lock = threading.Lock()

    @classmethod
    def from_pretrained(
        cls,
        model: str = "default",
        estimator: Estimator | str | None = "default",
        *,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        trust_remote_code: bool = False,
        **kwargs,
    ) -> AT2Attributor:
        """Load a model (``"default"``: the bundled SmolLM2-135M-Instruct) and an estimator."""
        from .models import load_model

        m, tok = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        return cls(m, tok, estimator, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_length(self) -> int | None:
        """The model's context window in tokens, when its config states one."""
        value = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        return int(value) if value else None

    # -- public API --------------------------------------------------------------------------------
    def prompt(
        self, question: str, documents: Sequence[DocumentLike], granularity: Granularity | None = None
    ) -> Prompt:
        """The tokenized prompt with source spans, as the model will see it."""
        return build_prompt(
            self.tokenizer,
            question,
            documents,
            self.granularity if granularity is None else granularity,
            instruction=self.instruction,
            system_prompt=self.system_prompt,
        )

    @torch.inference_mode()
    def generate(
        self,
        question: str,
        documents: Sequence[DocumentLike],
        *,
        granularity: Granularity | None = None,
        max_new_tokens: int | None = None,
        **generate_kwargs,
    ) -> Attribution:
        """Answer ``question`` from ``documents`` (greedy by default) and attribute the answer.

        The features are captured while generating: zero extra forward passes.
        """
        new_tokens = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        prompt, dropped = self._fitted_prompt(question, documents, granularity, new_tokens, "max_new_tokens")
        ids = torch.tensor([prompt.input_ids], device=self.device)
        cap = self._capture(prompt, capture_from=len(prompt) - 1)
        kwargs = {"do_sample": False, "max_new_tokens": new_tokens, **generate_kwargs}
        kwargs.setdefault("pad_token_id", self._pad_id())
        if self.suppress_header_echo:
            kwargs.setdefault("begin_suppress_tokens", self._header_start_tokens())
        if kwargs.get("do_sample") is False:
            # Greedy decoding: silence sampling settings a model's generation config may carry.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with capture.capturing(cap):
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **kwargs
            )
        answer_ids = self._strip_stop_tokens(out[0, len(prompt) :].tolist(), kwargs.get("eos_token_id"))
        return self._result(prompt, answer_ids, cap, extra_passes=0, dropped=dropped)

    @torch.inference_mode()
    def attribute(
        self,
        question: str,
        documents: Sequence[DocumentLike],
        answer: str,
        *,
        granularity: Granularity | None = None,
    ) -> Attribution:
        """Attribute an answer produced elsewhere (e.g. by an API model) in one forward pass."""
        if not isinstance(answer, str):
            raise InputError(f"the answer must be a str, got {type(answer).__name__}")
        if not answer.strip():
            raise InputError("the answer is empty: there is nothing to attribute")
        answer_ids = encode(self.tokenizer, answer)
        prompt, dropped = self._fitted_prompt(question, documents, granularity, len(answer_ids), "the answer")
        ids = torch.tensor([prompt.input_ids + answer_ids], device=self.device)
        rows = range(len(prompt) - 1, len(prompt) + len(answer_ids) - 1)
        cap = self._capture(prompt, rows=rows)
        with capture.capturing(cap):
            self.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        return self._result(prompt, answer_ids, cap, extra_passes=1, dropped=dropped)

    def query_estimator(self, estimator: Estimator | str | None) -> Estimator:
        """The query estimator for ``estimator``; a name or path is read from disk only once per
        attributor (a file replaced on disk later is not re-read)."""
        if not isinstance(estimator, (str, os.PathLike)):
            return _resolve_estimator(estimator, self.model, "query")
        estimator = os.fspath(estimator)
        with self._named_lock:
            key = (estimator, "query")
            if key not in self._named_estimators:
                self._named_estimators[key] = _resolve_estimator(estimator, self.model, "query")
            return self._named_estimators[key]

    @torch.inference_mode()
    def score_query(
        self,
        question: str,
        documents: Sequence[DocumentLike],
        *,
        estimator: Estimator | str | None = None,
        granularity: Granularity | None = None,
    ) -> Attribution:
        """Score sources from one prefill pass, before any answer exists (query mode).

        Uses the attention rows of the question and generation prompt; the estimator should be a
        ``"query"`` estimator (uniform weights when None). A calibrated estimator (``"content-free"``)
        scores those features minus the features of the same prompt asked a content-free question,
        computed as a second row of the same batch.
        """
        est = self.query_estimator(estimator)
        prompt, dropped = self._fitted_prompt(question, documents, granularity, 0, "nothing")
        raw, null = self.query_features(prompt, content_free=est.calibration == "content-free")
        qf = raw if null is None else raw - null
        return Attribution(
            prompt=prompt,
            answer="",
            scores=est.score(qf),
            sentences=[],
            method="at2-query",
            extra_forward_passes=1,
            query_features=qf if self.keep_features else None,
            dropped_documents=dropped,
        )

    @torch.inference_mode()
    def query_features(
        self, prompt: Prompt, *, content_free: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Question-row features ``(layers, heads, sources)`` of ``prompt`` from one prefill.

        With ``content_free``, also those of the same documents asked :data:`CONTENT_FREE_QUESTION`
        (the positional prior of the question rows, as in in-context re-ranking), from a second row
        of the same batch; else None. Both prompts share every token before the question, so each
        source has the same token range in both.
        """
        prompts = [prompt]
        if content_free:
            null = build_prompt(
                self.tokenizer, CONTENT_FREE_QUESTION, prompt.documents, prompt.granularity,
                instruction=self.instruction, system_prompt=self.system_prompt,
            )
            if null.input_ids[: null.question_tokens[0]] != prompt.input_ids[: prompt.question_tokens[0]]:
                raise RuntimeError("the content-free prompt does not share the documents' tokens")
            prompts.append(null)
        width = max(len(p) for p in prompts)
        pad = self._pad_id() or 0
        ids = torch.tensor([p.input_ids + [pad] * (width - len(p)) for p in prompts], device=self.device)
        attn = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts], device=self.device)
        first = prompt.question_tokens[0]
        cap = self._capture(prompt, rows=range(first, width), length=width)
        with capture.capturing(cap):
            self.model(input_ids=ids, attention_mask=attn, use_cache=False, logits_to_keep=1)
        feats, positions = cap.features(), cap.positions()  # (B, L, H, rows, S), (rows,)
        out = [feats[b][:, :, (positions < len(p))].mean(dim=2) for b, p in enumerate(prompts)]
        return out[0], (out[1] if content_free else None)

    # -- asyncio ----------------------------------------------------------------------------------
    async def agenerate(self, question: str, documents: Sequence[DocumentLike], **kwargs) -> Attribution:
        """:meth:`generate` in a worker thread, so the event loop keeps running meanwhile."""
        return await asyncio.to_thread(self.generate, question, documents, **kwargs)

    async def aattribute(
        self, question: str, documents: Sequence[DocumentLike], answer: str, **kwargs
    ) -> Attribution:
        """:meth:`attribute` in a worker thread, so the event loop keeps running meanwhile."""
        return await asyncio.to_thread(self.attribute, question, documents, answer, **kwargs)

    async def ascore_query(self, question: str, documents: Sequence[DocumentLike], **kwargs) -> Attribution:
        """:meth:`score_query` in a worker thread, so the event loop keeps running meanwhile."""
        return await asyncio.to_thread(self.score_query, question, documents, **kwargs)

    # -- internals ---------------------------------------------------------------------------------
    def _capture(
        self,
        prompt: Prompt,
        rows: Sequence[int] = (),
        capture_from: int | None = None,
        length: int | None = None,
    ) -> capture.AttentionCapture:
        """A capture of ``rows`` (and everything from ``capture_from``). Without ``length`` it also
        captures the prompt's question rows (kept as ``query_features``); with ``length`` (a padded
        batch) only ``rows``, over a membership that long."""
        member = torch.zeros(1, length or len(prompt), len(prompt.sources))
        for s in prompt.sources:
            member[0, s.token_start : s.token_end, s.index] = 1.0
        query_rows = range(prompt.question_tokens[0], len(prompt)) if length is None else ()
        return capture.AttentionCapture(
            member.to(self.device),
            rows=[*rows, *query_rows],
            capture_from=capture_from,
            num_layers=self._num_layers,
        )

    def _result(
        self, prompt: Prompt, answer_ids: list[int], cap, extra_passes: int, dropped: list[int]
    ) -> Attribution:
        """Score the captured rows: answer rows per token and sentence, question rows on request."""
        full, positions = cap.features()[0], cap.positions()  # (L, H, rows, S), (rows,)
        answer_rows = torch.nonzero(positions >= len(prompt) - 1).flatten()[: len(answer_ids)]
        feats = full[:, :, answer_rows]  # row t-1 for every answer token t
        is_query = (positions >= prompt.question_tokens[0]) & (positions < len(prompt))
        answer = decode(self.tokenizer, answer_ids)
        per_token = self.estimator.score(feats)  # (n, S)
        scores = per_token.mean(dim=0) if answer_ids else torch.zeros(len(prompt.sources))
        sentences = [
            AnswerSentence(answer[s0:s1], s0, s1, per_token[tok].mean(dim=0), tuple(tok))
            for (s0, s1), tok in _sentence_tokens(self.tokenizer, answer_ids, answer)
        ]
        return Attribution(
            prompt=prompt,
            answer=answer,
            scores=scores,
            sentences=sentences,
            method="at2",
            extra_forward_passes=extra_passes,
            answer_ids=list(answer_ids),
            features=feats if self.keep_features else None,
            query_features=full[:, :, is_query].mean(dim=2) if self.keep_features else None,
            dropped_documents=dropped,
        )

    def _fitted_prompt(
        self, question, documents, granularity, extra: int, what: str
    ) -> tuple[Prompt, list[int]]:
        """The prompt, made to fit the window with ``extra`` more tokens (see ``overflow``)."""
        prompt = self.prompt(question, documents, granularity)
        limit = self.max_length
        if limit is None or len(prompt) + extra <= limit:
            return prompt, []
        if self.overflow == "error":
            raise ContextTooLongError(
                f"the prompt has {len(prompt)} tokens and {what} needs {extra} more, but the model's "
                f"window is {limit} tokens; pass fewer or shorter documents, prune them first, or "
                "use overflow='drop_last'"
            )
        docs = list(prompt.documents)
        n_docs = len(docs)
        while len(prompt) + extra > limit and len(docs) > 1:
            docs.pop()
            prompt = self.prompt(question, docs, granularity)
        if len(prompt) + extra > limit:
            raise ContextTooLongError(
                f"even the first document alone gives a {len(prompt)}-token prompt, and {what} needs "
                f"{extra} more, beyond the model's {limit}-token window; split the document into chunks"
            )
        dropped = list(range(len(docs), n_docs))
        ids = [prompt_doc_id(d, i) for i, d in zip(dropped, documents[len(docs):])]
        warnings.warn(
            f"the context exceeded the model's {limit}-token window: dropped the last "
            f"{len(dropped)} document(s) {ids} (overflow='drop_last')",
            stacklevel=3,
        )
        return prompt, dropped

    def _header_start_tokens(self) -> list[int]:
        """Token ids that begin a copy of a document header at the start of an answer."""
        ids = {encode(self.tokenizer, w)[0] for w in (HEADER_WORD, " " + HEADER_WORD)}
        return sorted(ids)

    def _pad_id(self) -> int | None:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def _strip_stop_tokens(self, ids: list[int], eos: int | list[int] | None = None) -> list[int]:
        """Cut the generated ids at the first end-of-sequence token (the call's own, if given)."""
        stops = self.model.generation_config.eos_token_id if eos is None else eos
        stops = set(stops if isinstance(stops, list) else [stops]) - {None}
        if self.tokenizer.eos_token_id is not None:
            stops.add(self.tokenizer.eos_token_id)
        for i, t in enumerate(ids):
            if t in stops:
                return ids[:i]
        return ids


def prompt_doc_id(doc, index: int) -> str:
    """A document's id for messages: its id when it has one, else its index."""
    ident = getattr(doc, "id", None) if not isinstance(doc, dict) else doc.get("id")
    return str(ident) if ident is not None else f"#{index}"


def _sentence_tokens(tokenizer, ids: list[int], text: str) -> list[tuple[tuple[int, int], list[int]]]:
    """Each answer sentence's character span with the answer tokens that overlap it."""
    if not ids:
        return []
    starts = token_char_starts(tokenizer, ids, text)
    # A token inside a split character starts where the previous clean token started.
    clean = []
    for s in starts:
        clean.append(s if s is not None else (clean[-1] if clean else 0))
    ends = clean[1:] + [len(text)]
    out = []
    for s0, s1 in split_sentences(text):
        toks = [k for k, (a, b) in enumerate(zip(clean, ends)) if a < s1 and b > s0]
        if toks:
            out.append(((s0, s1), toks))
    return out


def _resolve_estimator(estimator, model, kind: str) -> Estimator:
    """An Estimator from an object, a path / shipped name, or None (uniform)."""
    if estimator is None:
        return Estimator.uniform(model, kind)  # type: ignore[arg-type]
    if isinstance(estimator, str) and estimator in SHIPPED_ESTIMATORS:
        name = "default-query" if estimator == "default" and kind == "query" else estimator
        try:
            est = Estimator.load(name)
        except FileNotFoundError:
            warnings.warn(
                f"no trained {kind} estimator is installed; using uniform weights (average "
                "attention), which is less faithful",
                stacklevel=3,
            )
            return Estimator.uniform(model, kind)  # type: ignore[arg-type]
        if est.model.mismatch(ModelIdentity.of(model)):
            warnings.warn(
                f"the shipped {kind} estimator was trained for {est.model.name}; the loaded model "
                "differs, so uniform weights (average attention) are used instead",
                stacklevel=3,
            )
            return Estimator.uniform(model, kind)  # type: ignore[arg-type]
        return est
    est = estimator if isinstance(estimator, Estimator) else Estimator.load(estimator)
    est.check_model(model)
    if est.kind != kind:
        raise EstimatorError(
            f"this is a {est.kind!r} estimator but {kind!r} features are being scored; use a "
            f"{kind!r} estimator"
        )
    return est
