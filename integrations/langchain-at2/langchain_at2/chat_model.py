"""``AT2ChatModel``: the local model of an AT2 attributor as a LangChain chat model (offline, greedy, streamed)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage, ChatMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, field_validator
from typing_extensions import override

from at2_rag import AT2Attributor, ModelIdentity, TokenStream, chat_prompt, check_encodable, greedy_generate, prompt_ids

from .documents import Count
from .local_model import LocalModelBase

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "function"}
"""Chat-template roles of LangChain's message types (``ChatMessage`` carries its own role)."""


class StopSequences:
    """Cuts streamed text before the first stop sequence, holding back a tail that may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hit = False
        self._held = ""

    def feed(self, piece: str) -> str:
        """The part of ``piece`` (after any held-back text) that is surely before a stop sequence."""
        if self.hit:
            return ""
        text = self._held + piece
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.hit, self._held = True, ""
            return text[: min(cuts)]
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """The held-back text, once the stream has ended without a stop sequence."""
        held, self._held = self._held, ""
        return held


class AT2ChatModel(LocalModelBase, BaseChatModel):
    """A chat model that answers with the local model of an ``AT2Attributor`` (fully offline).

    Messages are rendered with the tokenizer's chat template, decoding is greedy, and ``stream``
    yields the answer token by token (the model runs in a worker thread). Share the attributor
    the other AT2 components use (``attributor=att``) so one model in memory both answers and
    attributes; without one, the bundled model (or ``model``) is loaded on first use.
    Text content only.

    Example:
        .. code-block:: python

            from langchain_at2 import AT2ChatModel

            llm = AT2ChatModel(attributor=att, max_new_tokens=64)
            llm.invoke("Who wrote Hamlet?").content
            for chunk in llm.stream("Who wrote Hamlet?"):
                print(chunk.content, end="")
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", populate_by_name=True)

    max_new_tokens: Count | None = Field(default=None, gt=0, alias="max_tokens")
    """Most tokens to generate (alias ``max_tokens``; None: the attributor's default, 64)."""
    temperature: float | None = None
    """Only greedy decoding: None or 0 (accepted so LangChain's standard parameters work)."""
    stop: list[str] | None = None
    """Stop sequences: the answer ends before the first one (a per-call ``stop`` replaces them)."""
    streaming: bool = False
    """Stream from ``invoke`` too (LangChain's standard flag; ``stream`` always streams)."""


    @field_validator("temperature")
    @classmethod
    def _greedy_only(cls, value: float | None) -> float | None:
        if value not in (None, 0):
            raise ValueError(f"AT2ChatModel decodes greedily: temperature must be 0 or None, got {value!r}")
        return value

    @property
    @override
    def _llm_type(self) -> str:
        return "at2-chat"

    @property
    @override
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "device": self.device, "dtype": self.dtype, "max_new_tokens": self.max_new_tokens}

    @override
    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        model = kwargs.get("model")
        params = LangSmithParams(
            ls_provider="at2",
            ls_model_name=model if isinstance(model, str) else self.model,
            ls_model_type="chat",
            ls_temperature=0.0,
        )
        if self.max_new_tokens is not None:
            params["ls_max_tokens"] = self.max_new_tokens
        if stops := stop if stop is not None else self.stop:
            params["ls_stop"] = stops
        return params

    @override
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._chunks(messages, stop, **kwargs))

    @override
    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, stop, **kwargs):
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    # -- internals ----------------------------------------------------------------------------------
    def _chunks(
        self, messages: list[BaseMessage], stop: list[str] | None, **kwargs: Any
    ) -> Iterator[ChatGenerationChunk]:
        """The answer's text chunks, then a last empty chunk with usage and finish reason."""
        conversation(messages)  # bad messages fail here, before the model loads
        att = self.get_attributor()
        prompt = self._prompt_ids(att, messages)
        max_new = self._max_new_tokens(att, kwargs)
        stops = StopSequences((self.stop if stop is None else stop) or [])

        generation = TokenStream(att, lambda generate_kwargs: greedy_generate(att, prompt, max_new, **generate_kwargs))
        pieces = iter(generation)
        try:
            for piece in pieces:
                if text := stops.feed(piece):
                    yield ChatGenerationChunk(message=AIMessageChunk(content=text))
                if stops.hit:
                    break
        finally:
            pieces.close()
        if text := stops.flush():
            yield ChatGenerationChunk(message=AIMessageChunk(content=text))
        ids = generation.token_ids
        stopped = stops.hit or att.strip_stop_tokens(ids) != ids
        usage = UsageMetadata(input_tokens=len(prompt), output_tokens=len(ids), total_tokens=len(prompt) + len(ids))
        name = ModelIdentity.of(att.model).name or self.model
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                chunk_position="last",
                usage_metadata=usage,
                response_metadata={"model_name": name, "finish_reason": "stop" if stopped else "length"},
            )
        )

    def _max_new_tokens(self, att: AT2Attributor, kwargs: dict[str, Any]) -> int:
        """This call's answer length: ``max_new_tokens``/``max_tokens`` of the call, else the field's."""
        unknown = sorted(set(kwargs) - {"max_new_tokens", "max_tokens"})
        if unknown:
            raise TypeError(f"AT2ChatModel got unsupported call arguments: {', '.join(unknown)}")
        value = kwargs.get("max_new_tokens", kwargs.get("max_tokens"))
        if value is None:
            value = self.max_new_tokens if self.max_new_tokens is not None else att.max_new_tokens
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {value!r}")
        return value

    def _prompt_ids(self, att: AT2Attributor, messages: Sequence[BaseMessage]) -> list[int]:
        """The messages rendered with the chat template (generation prompt added) as token ids."""
        return prompt_ids(att, chat_prompt(att, conversation(messages)))


def conversation(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """Chat-template messages (``role``, ``content``) from LangChain messages; text content only."""
    out = []
    for i, message in enumerate(messages):
        role = message.role if isinstance(message, ChatMessage) else _ROLES.get(message.type)
        if role is None:
            raise ValueError(f"message {i}: AT2ChatModel cannot read a {message.type!r} message")
        if isinstance(message.content, list) and any(
            not isinstance(block, str) and block.get("type") != "text" for block in message.content
        ):
            raise ValueError(f"message {i}: AT2ChatModel reads text only, not images, audio or files")
        out.append({"role": role, "content": check_encodable(message.text, f"message {i}")})
    return out
