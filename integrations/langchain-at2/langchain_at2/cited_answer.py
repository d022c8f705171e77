"""``AT2CitedAnswer``: an LCEL runnable that answers from documents and cites them with AT2 scores."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.documents import Document
from langchain_core.language_models import LanguageModelLike
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import BasePromptTemplate, ChatPromptTemplate
from langchain_core.retrievers import RetrieverLike
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, RunnableSerializable
from langchain_core.runnables.config import patch_config
from langchain_core.runnables.utils import AddableDict
from pydantic import ConfigDict, Field, StrictFloat, field_validator
from typing_extensions import override

import at2_rag
from at2_rag import (
    CITATION_POLICY,
    DEFAULT_INSTRUCTION,
    AT2Attributor,
    Attribution,
    InputError,
    TokenStream,
    check_refine_ablations,
    format_context,
    keep_policy,
    with_markers,
)

from .chat_model import AT2ChatModel
from .compressor import AT2DocumentCompressor
from .documents import Count, as_documents, check_question, non_empty, to_at2
from .local_model import LocalModelFields

CitedInput = str | Mapping[str, Any]
GENERATE_RUN_NAME = "at2_generate"
"""Name of the child run in which the local model writes (and attributes) the answer."""
CITE_RUN_NAME = "at2_cite"
"""Name of the child run in which the answer is attributed and cited."""


def default_answer_prompt() -> ChatPromptTemplate:
    """The prompt for the final model: the local model's instruction, the numbered documents, the question."""
    return ChatPromptTemplate.from_messages(
        [("system", DEFAULT_INSTRUCTION), ("human", "{context}\n\nQuestion: {question}")]
    )


class AT2CitedAnswer(LocalModelFields, RunnableSerializable[CitedInput, dict[str, Any]]):
    """Answer a question from documents and cite, per answer sentence, the source sentences used.

    Input: a question string, or ``{"question": ..., "documents": [...]}`` (documents or strings;
    without them ``retriever`` fetches them). Output: ``{"question", "answer",
    "answer_with_markers", "citations", "documents", "document_scores"}``; each citation gives the
    answer sentence's span and the cited source sentences (document index into ``documents``, id,
    character span in that document, score).

    With no ``llm`` the local model answers and its own attention is scored (zero extra passes).
    With an ``llm`` (any LangChain chat model or LLM) that model answers and the local model
    attributes its answer in one teacher-forced pass. With a ``compressor`` the documents are
    pruned first (score with the local model, keep the used ones), then the answer is written from
    the pruned context. An empty question, or no usable documents, raises ``at2_rag.InputError``.

    ``stream``/``astream`` yield ``AddableDict`` chunks that add up to the ``invoke`` output: first
    ``{"question", "documents", "answer": ""}``, then ``{"answer": piece}`` as the answer is
    generated, last ``{"answer_with_markers", "citations", "document_scores"}``. The AT2 steps are
    child runs named ``"at2_prune"``, ``"at2_generate"`` (local answers) and ``"at2_cite"``, so
    callbacks, tracing and ``astream_events`` show them.

    One local model serves every step: this runnable's ``attributor``, else the compressor's, else
    that of an ``AT2ChatModel`` given as ``llm``.

    Example:
        .. code-block:: python

            chain = AT2CitedAnswer(retriever=retriever, llm=AT2ChatModel(attributor=att), attributor=att)
            out = chain.invoke("Who wrote Hamlet?")
            print(out["answer_with_markers"])
            for chunk in chain.stream("Who wrote Hamlet?"):
                print(chunk.get("answer", ""), end="")
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    retriever: RetrieverLike | None = None
    """Fetches documents when the input has none."""
    llm: LanguageModelLike | None = None
    """The model that writes the final answer (None: the local model)."""
    prompt: BasePromptTemplate = Field(default_factory=default_answer_prompt)
    """Prompt for ``llm``, with the variables ``context`` and ``question``."""
    compressor: AT2DocumentCompressor | None = None
    """Prunes the documents before the final answer (its local model is shared when none is given)."""
    max_sources: Count = Field(default=3, ge=1)
    """At most this many cited sources per answer sentence."""
    relative: StrictFloat = Field(default=0.5, ge=0.0, le=1.0)
    """Cite a source only if it carries at least this fraction of the sentence's best score."""
    refine_ablations: Count = 0
    """Sharpen the citations with this many ablated passes of the local model (AT2 + N: the N
    top-scored sources left out one at a time; N + 1 more passes per answer); 0: AT2 alone."""

    @field_validator("refine_ablations")
    @classmethod
    def _ablations(cls, value: int) -> int:
        return check_refine_ablations(value, "refine_ablations", allow_zero=True)

    @override
    def get_attributor(self) -> AT2Attributor:
        """The local attributor: this runnable's own, else the compressor's, else an ``AT2ChatModel`` llm's."""
        if not self.attributor_loaded:
            if self.compressor is not None:
                return self.compressor.get_attributor()
            if isinstance(self.llm, AT2ChatModel):
                return self.llm.get_attributor()
        return super().get_attributor()

    @override
    def invoke(
        self, input: CitedInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        return self._call_with_config(self._run, input, config, **kwargs)

    @override
    async def ainvoke(
        self, input: CitedInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        return await self._acall_with_config(self._arun, input, config, **kwargs)

    @override
    def transform(
        self, input: Iterator[CitedInput], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        yield from self._transform_stream_with_config(input, self._transform, config, **kwargs)

    @override
    def stream(
        self, input: CitedInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[dict[str, Any]]:
        yield from self.transform(iter([input]), config, **kwargs)

    @override
    async def atransform(
        self, input: AsyncIterator[CitedInput], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        async for chunk in self._atransform_stream_with_config(input, self._atransform, config, **kwargs):
            yield chunk

    @override
    async def astream(
        self, input: CitedInput, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[dict[str, Any]]:
        async def one() -> AsyncIterator[CitedInput]:
            yield input

        async for chunk in self.atransform(one(), config, **kwargs):
            yield chunk

    # -- invoke and stream share the steps -----------------------------------------------------------
    def _run(
        self, input: CitedInput, run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> dict[str, Any]:
        out = AddableDict()
        for chunk in self._chunks(input, patch_config(config, callbacks=run_manager.get_child()), stream=False):
            out = out + chunk
        return dict(out)

    async def _arun(
        self, input: CitedInput, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig
    ) -> dict[str, Any]:
        out = AddableDict()
        async for chunk in self._achunks(input, patch_config(config, callbacks=run_manager.get_child()), False):
            out = out + chunk
        return dict(out)

    def _transform(
        self, inputs: Iterator[CitedInput], run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> Iterator[AddableDict]:
        child = patch_config(config, callbacks=run_manager.get_child())
        yield from self._chunks(merged_input(inputs), child, stream=True)

    async def _atransform(
        self,
        inputs: AsyncIterator[CitedInput],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
    ) -> AsyncIterator[AddableDict]:
        chunks = [chunk async for chunk in inputs]
        child = patch_config(config, callbacks=run_manager.get_child())
        async for chunk in self._achunks(merged_input(chunks), child, stream=True):
            yield chunk

    def _chunks(self, input: CitedInput, config: RunnableConfig, stream: bool) -> Iterator[AddableDict]:
        """Retrieve, prune, answer (piece by piece when streaming), cite: the output as addable chunks."""
        question, docs = self._parse(input)
        if docs is None:
            docs = self._require_retriever().invoke(question, config=config)
        if self.compressor is not None and docs:
            docs = list(self.compressor.compress_documents(docs, question, callbacks=config.get("callbacks")))
        docs = self._usable(docs)
        att = self.get_attributor()
        at2_docs = [to_at2(d, self.title_key) for d in docs]
        yield AddableDict(question=question, documents=docs, answer="")
        holder: dict[str, Attribution] = {}
        writer, inputs = self._writer(att, question, docs, at2_docs, holder, stream)
        answer = ""
        for piece in writer.stream(inputs, config) if stream else [writer.invoke(inputs, config)]:
            if piece:
                answer += piece
                yield AddableDict(answer=piece)
        cite_step = self._cite_step(att, at2_docs, holder)
        yield AddableDict(cite_step.invoke({"question": question, "answer": answer}, config))

    async def _achunks(
        self, input: CitedInput, config: RunnableConfig, stream: bool
    ) -> AsyncIterator[AddableDict]:
        """:meth:`_chunks` on the event loop, the model work in worker threads."""
        question, docs = self._parse(input)
        if docs is None:
            docs = await self._require_retriever().ainvoke(question, config=config)
        if self.compressor is not None and docs:
            docs = list(
                await self.compressor.acompress_documents(docs, question, callbacks=config.get("callbacks"))
            )
        docs = self._usable(docs)
        att = await asyncio.to_thread(self.get_attributor)
        at2_docs = [to_at2(d, self.title_key) for d in docs]
        yield AddableDict(question=question, documents=docs, answer="")
        holder: dict[str, Attribution] = {}
        writer, inputs = self._writer(att, question, docs, at2_docs, holder, stream)
        answer = ""
        async for piece in apieces(writer, inputs, config, stream):
            if piece:
                answer += piece
                yield AddableDict(answer=piece)
        cite_step = self._cite_step(att, at2_docs, holder)
        yield AddableDict(await cite_step.ainvoke({"question": question, "answer": answer}, config))

    # -- the steps ----------------------------------------------------------------------------------
    def _writer(
        self,
        att: AT2Attributor,
        question: str,
        docs: list[Document],
        at2_docs: list[at2_rag.Document],
        holder: dict[str, Attribution],
        stream: bool,
    ) -> tuple[Runnable, dict[str, Any]]:
        """The answer writer and its input: the ``llm`` chain, or the local model (attribution left in ``holder``)."""
        if self.llm is not None:
            return self.prompt | self.llm | StrOutputParser(), self._prompt_inputs(question, at2_docs)

        def generate(inputs: dict[str, Any]) -> str:
            holder["attribution"] = att.generate(
                inputs["question"], at2_docs, granularity="sentence", max_new_tokens=self.max_new_tokens,
                keep_features=True,
            )
            return holder["attribution"].answer

        def generation(question: str) -> TokenStream[Attribution]:
            return TokenStream(
                att,
                lambda kwargs: att.generate(
                    question, at2_docs, granularity="sentence", max_new_tokens=self.max_new_tokens,
                    keep_features=True, **kwargs
                ),
            )

        def generate_stream(inputs: dict[str, Any]) -> Iterator[str]:
            pieces = generation(inputs["question"])
            yield from pieces
            holder["attribution"] = pieces.result

        async def agenerate_stream(inputs: dict[str, Any]) -> AsyncIterator[str]:
            pieces = generation(inputs["question"])
            async for piece in pieces:
                yield piece
            holder["attribution"] = pieces.result

        if stream:
            writer = RunnableLambda(generate_stream, afunc=agenerate_stream, name=GENERATE_RUN_NAME)
        else:
            writer = RunnableLambda(generate, name=GENERATE_RUN_NAME)
        return writer, {"question": question, "documents": docs}

    def _cite_step(
        self, att: AT2Attributor, at2_docs: list[at2_rag.Document], holder: dict[str, Attribution]
    ) -> Runnable[dict[str, str], dict[str, Any]]:
        """Attributes the answer (unless the local model already did while writing it) and cites it."""

        def cite_answer(inputs: dict[str, str]) -> dict[str, Any]:
            answer, attribution = inputs["answer"], holder.get("attribution")
            if attribution is None and answer.strip():
                attribution = att.attribute(inputs["question"], at2_docs, answer, granularity="sentence",
                                            keep_features=True)
            if attribution is not None:
                attribution = att.refined(attribution, self.refine_ablations)
            return self._citations(att, answer, attribution, len(at2_docs))

        return RunnableLambda(cite_answer, name=CITE_RUN_NAME)

    # -- helpers ------------------------------------------------------------------------------------
    @staticmethod
    def _parse(input: CitedInput) -> tuple[str, list[Document] | None]:
        if isinstance(input, str):
            return check_question(input, "question"), None
        if not isinstance(input, Mapping) or "question" not in input:
            raise InputError("the input must be a question string or a mapping with a 'question' key")
        docs = input.get("documents")
        return check_question(input["question"], "question"), None if docs is None else as_documents(docs)

    def _require_retriever(self) -> RetrieverLike:
        if self.retriever is None:
            raise InputError("no documents in the input and no retriever to fetch them")
        return self.retriever

    def _usable(self, docs: Sequence[Document]) -> list[Document]:
        kept = [docs[i] for i in non_empty(docs, type(self).__name__)]
        if not kept:
            raise InputError("no documents with text to answer from")
        return kept

    @staticmethod
    def _prompt_inputs(question: str, docs: list) -> dict[str, str]:
        return {"question": question, "context": format_context(docs)}

    def _citations(self, att: AT2Attributor, answer: str, attribution: Attribution | None, n_docs: int) -> dict[str, Any]:
        """The output keys that come from the attribution: the marked answer, citations (clause by clause
        from the per-token scores the attribution kept for this), document scores."""
        policy = keep_policy(top_n=self.max_sources, relative=self.relative, min_keep=0, default=CITATION_POLICY)
        cites: list = []
        if attribution is not None:
            attribution, cites = att.cited(attribution, policy)
        scores = attribution.document_scores().tolist() if attribution else []
        return {
            "answer_with_markers": with_markers(answer, cites),
            "citations": [c.to_dict() for c in cites],
            "document_scores": scores + [0.0] * (n_docs - len(scores)),
        }


def merged_input(chunks: Iterable[CitedInput]) -> CitedInput:
    """One input from streamed input chunks: strings concatenated, mappings merged, else the last."""
    merged: Any = None
    for chunk in chunks:
        if isinstance(merged, str) and isinstance(chunk, str):
            merged += chunk
        elif isinstance(merged, Mapping) and isinstance(chunk, Mapping):
            merged = {**merged, **chunk}
        else:
            merged = chunk
    return merged


async def apieces(
    writer: Runnable, inputs: dict[str, Any], config: RunnableConfig, stream: bool
) -> AsyncIterator[str]:
    """The answer's pieces as ``writer`` streams them, or its whole answer as one piece."""
    if stream:
        async for piece in writer.astream(inputs, config):
            yield piece
    else:
        yield await writer.ainvoke(inputs, config)
