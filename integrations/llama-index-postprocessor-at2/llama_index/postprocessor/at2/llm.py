"""AT2LLM: the local model of an AT2 attributor as a LlamaIndex LLM (offline, greedy, streamed)."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from llama_index.core.base.llms.generic_utils import (
    astream_completion_response_to_chat_response,
    completion_response_to_chat_response,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from at2_rag import (
    AT2Attributor,
    ContextTooLongError,
    LazyAttributor,
    ModelIdentity,
    TokenStream,
    answer_text,
    chat_prompt,
    check_encodable,
    greedy_generate,
    prompt_ids,
)

from .arguments import check_arguments
from .nodes import Count


class AT2LLM(CustomLLM):
    """A LlamaIndex LLM that answers with the local model of an :class:`~at2_rag.AT2Attributor`, offline.

    Decoding is greedy. Prompts go through the tokenizer's chat template: ``messages_to_prompt``
    renders chat messages with it, and ``completion_to_prompt`` wraps a completion prompt as one user
    message (after ``system_prompt``, if set); pass your own functions to replace either.
    ``stream_complete``/``stream_chat`` yield the answer token by token while the model generates in a
    worker thread; the async methods wait for it without blocking the event loop.

    Pass ``attributor=`` to share the model the postprocessor and the citation engine use (one model
    in memory answers and attributes); otherwise the bundled model (or ``model``) is loaded on first
    use, including the first read of ``metadata`` (the context window comes from the model's config).
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(default="default", frozen=True, description="Local model to load when none is given.")
    device: Optional[str] = Field(default=None, frozen=True, description="Device for the model (None: CPU).")
    dtype: Optional[str] = Field(default=None, frozen=True, description="Model dtype (None: float32).")
    max_new_tokens: Optional[Count] = Field(
        default=None, gt=0, description="Most tokens to generate (None: the attributor's default, 64)."
    )
    context_window: Optional[Count] = Field(
        default=None, gt=0, description="Context window in tokens (None, or more: the model config's)."
    )

    _loader: LazyAttributor = PrivateAttr()

    def __init__(
        self,
        attributor: Optional[AT2Attributor] = None,
        *,
        messages_to_prompt: Optional[Callable[[Sequence[ChatMessage]], str]] = None,
        completion_to_prompt: Optional[Callable[[str], str]] = None,
        **kwargs: Any,
    ) -> None:
        check_arguments(type(self), kwargs, ["attributor"])
        super().__init__(
            messages_to_prompt=messages_to_prompt or self._chat_template_prompt,
            completion_to_prompt=completion_to_prompt or self._completion_template_prompt,
            **kwargs,
        )
        self._loader = LazyAttributor(attributor, model=self.model, device=self.device, dtype=self.dtype)

    @classmethod
    def class_name(cls) -> str:
        return "AT2LLM"

    @property
    def attributor_loader(self) -> LazyAttributor:
        """The local model, loaded on first use (the citation engine shares it when given no other)."""
        return self._loader

    @property
    def metadata(self) -> LLMMetadata:
        """A chat model whose window is the model config's (``context_window`` may lower it)."""
        att = self._loader.get()
        return LLMMetadata(
            context_window=self._window(att),
            num_output=self.max_new_tokens or att.max_new_tokens,
            is_chat_model=True,
            model_name=ModelIdentity.of(att.model).name or self.model,
        )

    # -- prompts ----------------------------------------------------------------------------------
    def _chat_template_prompt(self, messages: Sequence[ChatMessage]) -> str:
        """The default ``messages_to_prompt``: the messages through the tokenizer's chat template."""
        turns = conversation(messages)  # checked before the model loads
        return chat_prompt(self._loader.get(), turns)

    def _completion_template_prompt(self, completion: str) -> str:
        """The default ``completion_to_prompt``: ``system_prompt`` (if set) and one user message."""
        messages = [ChatMessage(role=MessageRole.USER, content=completion)]
        if self.system_prompt:
            messages.insert(0, ChatMessage(role=MessageRole.SYSTEM, content=self.system_prompt))
        return self._chat_template_prompt(messages)

    # -- completion -------------------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """The greedy answer to ``prompt`` (``formatted``: already rendered, e.g. by ``messages_to_prompt``)."""
        return self._complete(prompt, formatted, kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """The greedy answer to ``prompt``, one token's text at a time (``text`` accumulates, ``delta`` is new)."""
        stream = self._stream(prompt, formatted, kwargs, self._loader.get())

        def gen() -> CompletionResponseGen:
            text = ""
            for piece in stream.pieces():
                text += piece
                yield CompletionResponse(text=text, delta=piece)

        return gen()

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """:meth:`complete` in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(self._complete, prompt, formatted, kwargs)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """:meth:`stream_complete`, waiting for each token without blocking the event loop."""
        stream = self._stream(prompt, formatted, kwargs, await self._loader.aget())

        async def gen() -> CompletionResponseAsyncGen:
            text = ""
            async for piece in stream.apieces():
                text += piece
                yield CompletionResponse(text=text, delta=piece)

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """:meth:`chat` in a worker thread, so the event loop keeps running."""
        await self._loader.aget()
        prompt = self.messages_to_prompt(messages)
        completion = await asyncio.to_thread(self._complete, prompt, True, kwargs)
        return completion_response_to_chat_response(completion)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """:meth:`stream_chat`, waiting for each token without blocking the event loop."""
        att = await self._loader.aget()
        stream = self._stream(self.messages_to_prompt(messages), True, kwargs, att)

        async def gen() -> CompletionResponseAsyncGen:
            text = ""
            async for piece in stream.apieces():
                text += piece
                yield CompletionResponse(text=text, delta=piece)

        return astream_completion_response_to_chat_response(gen())

    # -- internals --------------------------------------------------------------------------------
    def _window(self, att: AT2Attributor) -> int:
        model_window = att.max_length or DEFAULT_CONTEXT_WINDOW
        return model_window if self.context_window is None else min(self.context_window, model_window)

    def _inputs(self, prompt: str, formatted: bool, kwargs: Dict[str, Any], att: AT2Attributor) -> Tuple[List[int], int]:
        """The prompt's token ids and this call's answer length (checked against the window)."""
        unknown = sorted(set(kwargs) - {"max_new_tokens"})
        if unknown:
            raise TypeError(f"AT2LLM got unsupported call argument(s): {', '.join(unknown)} (only max_new_tokens)")
        max_new = kwargs.get("max_new_tokens", self.max_new_tokens)
        max_new = att.max_new_tokens if max_new is None else max_new
        if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 1:
            raise ValueError(f"max_new_tokens must be a positive int, got {max_new!r}")
        text = prompt if formatted else self.completion_to_prompt(prompt)
        ids = prompt_ids(att, check_encodable(text, "the prompt"))
        window = self._window(att)
        if len(ids) + max_new > window:
            raise ContextTooLongError(
                f"the prompt has {len(ids)} tokens and the answer may take {max_new} more, but the "
                f"context window is {window} tokens; shorten the prompt (retrieve fewer or smaller nodes)"
            )
        return ids, max_new

    def _complete(self, prompt: str, formatted: bool, kwargs: Dict[str, Any]) -> CompletionResponse:
        att = self._loader.get()
        ids, max_new = self._inputs(prompt, formatted, kwargs, att)
        new = greedy_generate(att, ids, max_new)[0, len(ids):].tolist()
        answer = att.strip_stop_tokens(new)
        usage = {
            "prompt_tokens": len(ids),
            "completion_tokens": len(new),
            "finish_reason": "stop" if len(answer) < len(new) else "length",
        }
        return CompletionResponse(text=answer_text(att, new), raw=usage)

    def _stream(
        self, prompt: str, formatted: bool, kwargs: Dict[str, Any], att: AT2Attributor
    ) -> TokenStream[torch.Tensor]:
        ids, max_new = self._inputs(prompt, formatted, kwargs, att)
        return TokenStream(att, lambda generate_kwargs: greedy_generate(att, ids, max_new, **generate_kwargs))


def conversation(messages: Sequence[ChatMessage]) -> List[Dict[str, str]]:
    """Chat-template messages (``role``, ``content``) from LlamaIndex chat messages; text only."""
    out = []
    for i, message in enumerate(messages):
        if any(not isinstance(block, TextBlock) for block in message.blocks):
            raise ValueError(f"message {i}: AT2LLM reads text only, not images, audio or other blocks")
        out.append({"role": message.role.value, "content": check_encodable(message.content or "", f"message {i}")})
    return out
