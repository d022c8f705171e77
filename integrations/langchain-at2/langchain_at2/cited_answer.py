"""``AT2CitedAnswer``: an LCEL runnable that answers from documents and cites them with AT2 scores."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.documents import Document
from langchain_core.language_models import LanguageModelLike
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import BasePromptTemplate, ChatPromptTemplate
from langchain_core.retrievers import RetrieverLike
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import patch_config
from pydantic import Field
from typing_extensions import override

from at2_rag import (
    DEFAULT_INSTRUCTION,
    AT2Attributor,
    Attribution,
    InputError,
    KeepPolicy,
    cite,
    format_context,
    with_markers,
)

from .compressor import AT2DocumentCompressor
from .documents import as_documents, check_question, non_empty, to_at2
from .local_model import LocalModelFields

CitedInput = str | Mapping[str, Any]


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
    pruned first (draft with the local model, keep the used ones), then the answer is written from
    the pruned context. An empty question, or no usable documents, raises ``at2_rag.InputError``.

    Example:
        .. code-block:: python

            chain = AT2CitedAnswer(retriever=retriever, llm=chat_model)
            out = chain.invoke("Who wrote Hamlet?")
            print(out["answer_with_markers"])
    """

    retriever: RetrieverLike | None = None
    """Fetches documents when the input has none."""
    llm: LanguageModelLike | None = None
    """The model that writes the final answer (None: the local model)."""
    prompt: BasePromptTemplate = Field(default_factory=default_answer_prompt)
    """Prompt for ``llm``, with the variables ``context`` and ``question``."""
    compressor: AT2DocumentCompressor | None = None
    """Prunes the documents before the final answer (its local model is shared when none is given)."""
    max_sources: int = Field(default=3, ge=1)
    """At most this many cited sources per answer sentence."""
    relative: float = Field(default=0.5, ge=0.0, le=1.0)
    """Cite a source only if it carries at least this fraction of the sentence's best score."""

    @override
    def get_attributor(self) -> AT2Attributor:
        """The local attributor: this runnable's own, else the compressor's (one model in memory)."""
        if not self.attributor_loaded and self.compressor is not None:
            return self.compressor.get_attributor()
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

    # -- the steps ----------------------------------------------------------------------------------
    def _run(
        self, input: CitedInput, run_manager: CallbackManagerForChainRun, config: RunnableConfig
    ) -> dict:
        question, docs = self._parse(input)
        child = patch_config(config, callbacks=run_manager.get_child())
        if docs is None:
            docs = self._require_retriever().invoke(question, config=child)
        if self.compressor is not None and docs:
            docs = list(self.compressor.compress_documents(docs, question, callbacks=child.get("callbacks")))
        docs = self._usable(docs)
        att, at2_docs = self.get_attributor(), [to_at2(d, self.title_key) for d in docs]
        if self.llm is None:
            attribution = att.generate(
                question, at2_docs, granularity="sentence", max_new_tokens=self.max_new_tokens
            )
            return self._output(question, docs, attribution.answer, attribution)
        answer = self._answer_chain().invoke(self._prompt_inputs(question, at2_docs), config=child)
        attribution = (
            att.attribute(question, at2_docs, answer, granularity="sentence") if answer.strip() else None
        )
        return self._output(question, docs, answer, attribution)

    async def _arun(
        self, input: CitedInput, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig
    ) -> dict:
        question, docs = self._parse(input)
        child = patch_config(config, callbacks=run_manager.get_child())
        if docs is None:
            docs = await self._require_retriever().ainvoke(question, config=child)
        if self.compressor is not None and docs:
            docs = list(
                await self.compressor.acompress_documents(docs, question, callbacks=child.get("callbacks"))
            )
        docs = self._usable(docs)
        att = await asyncio.to_thread(self.get_attributor)
        at2_docs = [to_at2(d, self.title_key) for d in docs]
        if self.llm is None:
            attribution = await att.agenerate(
                question, at2_docs, granularity="sentence", max_new_tokens=self.max_new_tokens
            )
            return self._output(question, docs, attribution.answer, attribution)
        answer = await self._answer_chain().ainvoke(self._prompt_inputs(question, at2_docs), config=child)
        attribution = (
            await att.aattribute(question, at2_docs, answer, granularity="sentence")
            if answer.strip()
            else None
        )
        return self._output(question, docs, answer, attribution)

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

    def _answer_chain(self) -> Runnable:
        return self.prompt | self.llm | StrOutputParser()

    @staticmethod
    def _prompt_inputs(question: str, docs: list) -> dict[str, str]:
        return {"question": question, "context": format_context(docs)}

    def _output(
        self, question: str, docs: list[Document], answer: str, attribution: Attribution | None
    ) -> dict[str, Any]:
        cites = cite(attribution, KeepPolicy(top_k=self.max_sources, relative=self.relative, min_keep=0)) if attribution else []
        scores = attribution.document_scores().tolist() if attribution else [0.0] * len(docs)
        return {
            "question": question,
            "answer": answer,
            "answer_with_markers": with_markers(answer, cites),
            "citations": [c.to_dict() for c in cites],
            "documents": docs,
            "document_scores": scores + [0.0] * (len(docs) - len(scores)),
        }
