"""Generate-and-attribute, attribute a given answer, and score sources from the query alone.

Features for AT2 are the attention rows that *predict* the answer tokens (row t-1 for token t),
reduced per source and head; the estimator turns them into one score per source. During
``generate`` those rows are exactly the prefill's last row and each decode step's row, so a model's
own answer is attributed with no extra forward pass.

Longer than most modules (~390 lines) for a reason: it is one class whose entry points share the
capture, scoring and window-fitting internals; prompts, results and estimator resolution live elsewhere.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import os
import threading
import warnings
from collections.abc import Sequence
from typing import Literal

import torch

from . import capture
from .citations import Citation, cite
from .documents import HEADER_WORD, DocumentLike, check_encodable, document_label
from .errors import ContextTooLongError, InputError
from .estimator import Estimator
from .policy import CITATION_POLICY, KeepPolicy
from .prompts import (
    DEFAULT_INSTRUCTION,
    Granularity,
    Prompt,
    build_prompt,
    check_granularity,
    decode,
    documents_that_fit,
    encode,
    sentence_tokens,
    token_char_starts,
)
from .refine import check_refine_ablations
from .results import AnswerSentence, Attribution

CONTENT_FREE_QUESTION = "N/A"
"""The question of the calibration prompt: asks nothing, so its attention is the positional prior."""
AT2_METHOD = "at2"
"""``Attribution.method`` of a zero-pass AT2 attribution (a refined one is ``at2+N``)."""


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
        check_new_tokens(max_new_tokens)
        capture.prepare_model(model)
        self.model = model
        self.tokenizer = tokenizer
        self.estimator = Estimator.resolve(estimator, model, "answer")
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

    def with_estimator(self, estimator: Estimator | str | None) -> AT2Attributor:
        """The same model, tokenizer and settings with another answer estimator (shares the weights)."""
        clone = copy.copy(self)
        clone.estimator = Estimator.resolve(estimator, self.model, "answer")
        clone._named_estimators = {}
        clone._named_lock = threading.Lock()
        return clone

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
        keep_features: bool | None = None,
        **generate_kwargs,
    ) -> Attribution:
        """Answer ``question`` from ``documents`` (greedy by default) and attribute the answer.

        The features are captured while generating: zero extra forward passes. ``keep_features``
        (default: the attributor's setting) keeps them on the result.
        """
        new_tokens = self.max_new_tokens if max_new_tokens is None else check_new_tokens(max_new_tokens)
        prompt, dropped = self._fitted_prompt(question, documents, granularity, new_tokens, "max_new_tokens")
        ids = torch.tensor([prompt.input_ids], device=self.device)
        cap = self._capture(prompt, capture_from=len(prompt) - 1)
        kwargs = {"do_sample": False, "max_new_tokens": new_tokens, **generate_kwargs}
        kwargs.setdefault("pad_token_id", self.pad_token_id())
        if self.suppress_header_echo:
            kwargs.setdefault("begin_suppress_tokens", self.header_start_tokens())
        if kwargs.get("do_sample") is False:
            # Greedy decoding: silence sampling settings a model's generation config may carry.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with capture.capturing(cap):
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, **kwargs
            )
        answer_ids = self.strip_stop_tokens(out[0, len(prompt) :].tolist(), kwargs.get("eos_token_id"))
        return self._result(prompt, answer_ids, cap, 0, dropped, self._keep(keep_features))

    @torch.inference_mode()
    def attribute(
        self,
        question: str,
        documents: Sequence[DocumentLike],
        answer: str,
        *,
        granularity: Granularity | None = None,
        keep_features: bool | None = None,
    ) -> Attribution:
        """Attribute an answer produced elsewhere (e.g. by an API model) in one forward pass."""
        if not isinstance(answer, str):
            raise InputError(f"the answer must be a str, got {type(answer).__name__}")
        if not answer.strip():
            raise InputError("the answer is empty: there is nothing to attribute")
        check_encodable(answer, "the answer")
        answer_ids = encode(self.tokenizer, answer)
        prompt, dropped = self._fitted_prompt(question, documents, granularity, len(answer_ids), "the answer")
        ids = torch.tensor([prompt.input_ids + answer_ids], device=self.device)
        rows = range(len(prompt) - 1, len(prompt) + len(answer_ids) - 1)
        cap = self._capture(prompt, rows=rows)
        with capture.capturing(cap):
            self.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        return self._result(prompt, answer_ids, cap, 1, dropped, self._keep(keep_features))

    def refine(self, attribution: Attribution, n_ablations: int = 8, **kwargs) -> Attribution:
        """AT2 + ``n_ablations`` ablations: ``attribution`` sharpened by a few ablated passes of this
        model (see :func:`at2_rag.refine.refine_attribution`: ``design``, ``strength``; at most
        ``n_ablations + 1`` extra passes)."""
        from .refine import refine_attribution

        return refine_attribution(self.model, attribution, n_ablations, **kwargs)

    def query_estimator(self, estimator: Estimator | str | None) -> Estimator:
        """The query estimator for ``estimator``; a name or path is read from disk only once per
        attributor (a file replaced on disk later is not re-read)."""
        if not isinstance(estimator, (str, os.PathLike)):
            return Estimator.resolve(estimator, self.model, "query")
        estimator = os.fspath(estimator)
        with self._named_lock:
            key = (estimator, "query")
            if key not in self._named_estimators:
                self._named_estimators[key] = Estimator.resolve(estimator, self.model, "query")
            return self._named_estimators[key]

    @torch.inference_mode()
    def score_query(
        self,
        question: str,
        documents: Sequence[DocumentLike],
        *,
        estimator: Estimator | str | None = None,
        granularity: Granularity | None = None,
        keep_features: bool | None = None,
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
            scores=est.source_scores(qf),
            sentences=[],
            method="at2-query",
            extra_forward_passes=1,
            query_features=qf if self._keep(keep_features) else None,
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
        pad = self.pad_token_id() or 0
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

    def refined(self, attribution: Attribution, n_ablations: int) -> Attribution:
        """:meth:`refine` as components that refine on request use it: ``n_ablations`` 0, or an
        attribution without answer tokens (nothing to refine), returns ``attribution`` as it is."""
        if check_refine_ablations(n_ablations, allow_zero=True) == 0 or not attribution.answer_ids:
            return attribution
        return self.refine(attribution, n_ablations)

    def cited(self, attribution: Attribution, policy: KeepPolicy = CITATION_POLICY) -> tuple[Attribution, list[Citation]]:
        """``attribution``'s citations (:func:`~at2_rag.cite`), clause by clause where it kept its per-token
        features and no ablations refined its scores (refined scores measure whole sentences), else sentence
        by sentence; with ``attribution`` returned without those features unless this attributor keeps them.

        Components cite through this so a two-claim answer sentence cites the source of each claim; make
        the attribution with ``keep_features=True`` to allow it.
        """
        token_scores = token_starts = None
        if attribution.features is not None and attribution.method == AT2_METHOD and attribution.answer_ids:
            token_scores = self.estimator.source_scores(attribution.features)
            token_starts = token_char_starts(self.tokenizer, attribution.answer_ids, attribution.answer)
        citations = cite(attribution, policy, token_scores=token_scores, token_starts=token_starts)
        if not self.keep_features and (attribution.features is not None or attribution.query_features is not None):
            attribution = dataclasses.replace(attribution, features=None, query_features=None)
        return attribution, citations

    async def arefine(self, attribution: Attribution, n_ablations: int = 8, **kwargs) -> Attribution:
        """:meth:`refine` in a worker thread, so the event loop keeps running meanwhile."""
        return await asyncio.to_thread(self.refine, attribution, n_ablations, **kwargs)

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
        member = prompt.membership(length)[None]
        query_rows = range(prompt.question_tokens[0], len(prompt)) if length is None else ()
        return capture.AttentionCapture(
            member.to(self.device),
            rows=[*rows, *query_rows],
            capture_from=capture_from,
            num_layers=self._num_layers,
        )

    def _keep(self, keep_features: bool | None) -> bool:
        """A call's ``keep_features``, defaulting to the attributor's."""
        return self.keep_features if keep_features is None else keep_features

    def _result(
        self, prompt: Prompt, answer_ids: list[int], cap, extra_passes: int, dropped: list[int], keep: bool
    ) -> Attribution:
        """Score the captured rows: answer rows per token and sentence, question rows on request."""
        full, positions = cap.features()[0], cap.positions()  # (L, H, rows, S), (rows,)
        answer_rows = torch.nonzero(positions >= len(prompt) - 1).flatten()[: len(answer_ids)]
        feats = full[:, :, answer_rows]  # row t-1 for every answer token t
        is_query = (positions >= prompt.question_tokens[0]) & (positions < len(prompt))
        answer = decode(self.tokenizer, answer_ids)
        per_token = self.estimator.source_scores(feats)  # (n, S)
        scores = per_token.mean(dim=0) if answer_ids else torch.zeros(len(prompt.sources))
        sentences = [
            AnswerSentence(answer[s0:s1], s0, s1, per_token[tok].mean(dim=0), tuple(tok))
            for (s0, s1), tok in sentence_tokens(self.tokenizer, answer_ids, answer)
        ]
        return Attribution(
            prompt=prompt,
            answer=answer,
            scores=scores,
            sentences=sentences,
            method=AT2_METHOD,
            extra_forward_passes=extra_passes,
            answer_ids=list(answer_ids),
            features=feats if keep else None,
            query_features=full[:, :, is_query].mean(dim=2) if keep else None,
            dropped_documents=dropped,
        )

    def _fitted_prompt(
        self, question, documents, granularity, extra: int, what: str
    ) -> tuple[Prompt, list[int]]:
        """The prompt, made to fit the window with ``extra`` more tokens (see ``overflow``).

        Whole documents are laid out first: token windows (a pass over every token) are built only
        for a prompt that fits, and ``drop_last`` finds how many documents fit from one layout's
        per-document token counts, then builds once (linear, not a rebuild per dropped document)."""
        granularity = self.granularity if granularity is None else granularity
        check_granularity(granularity)
        layout = granularity if isinstance(granularity, str) else "document"
        prompt = self.prompt(question, documents, layout)
        limit, dropped = self.max_length, []
        if limit is not None and len(prompt) + extra > limit:
            if self.overflow == "error":
                raise ContextTooLongError(
                    f"the prompt has {len(prompt)} tokens and {what} needs {extra} more, but the model's "
                    f"window is {limit} tokens; pass fewer or shorter documents, prune them first, or "
                    "use overflow='drop_last'"
                )
            docs = prompt.documents
            keep = documents_that_fit(prompt, limit - extra)
            prompt = self.prompt(question, docs[:keep], layout)
            if len(prompt) + extra > limit:
                raise ContextTooLongError(
                    f"even the first document alone gives a {len(prompt)}-token prompt, and {what} needs "
                    f"{extra} more, beyond the model's {limit}-token window; split the document into chunks"
                )
            dropped = list(range(keep, len(docs)))
            ids = [document_label(docs[i], i) for i in dropped]
            warnings.warn(
                f"the context exceeded the model's {limit}-token window: dropped the last "
                f"{len(dropped)} document(s) {ids} (overflow='drop_last')",
                stacklevel=3,
            )
        if layout != granularity:
            prompt = self.prompt(question, prompt.documents, granularity)
        return prompt, dropped

    # -- token helpers (public: batched readers built on the same model reuse them) --------------
    def header_start_tokens(self) -> list[int]:
        """Token ids that begin a copy of a document header at the start of an answer."""
        ids = {encode(self.tokenizer, w)[0] for w in (HEADER_WORD, " " + HEADER_WORD)}
        return sorted(ids)

    def pad_token_id(self) -> int | None:
        """The id that pads batches: the tokenizer's pad token, else its end-of-sequence token."""
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def strip_stop_tokens(self, ids: list[int], eos: int | list[int] | None = None) -> list[int]:
        """Cut the generated ids at the first end-of-sequence token (the call's own, if given)."""
        stops = self.model.generation_config.eos_token_id if eos is None else eos
        stops = set(stops if isinstance(stops, list) else [stops]) - {None}
        if self.tokenizer.eos_token_id is not None:
            stops.add(self.tokenizer.eos_token_id)
        for i, t in enumerate(ids):
            if t in stops:
                return ids[:i]
        return ids


def check_new_tokens(value: object) -> int:
    """``max_new_tokens`` as given, or :class:`InputError` unless it is a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"max_new_tokens must be a positive int (tokens to generate), got {value!r}")
    return value
