"""The local model as a plain chat LLM for front ends: chat prompts, greedy generation, token streams.

Framework wrappers (LangChain's chat model, LlamaIndex's LLM, the cited-answer streams) share these,
so the bundled model can answer in a chain and attribute with the same loaded weights.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .attributor import AT2Attributor
from .errors import InputError
from .prompts import decode, encode

T = TypeVar("T")
_DONE = object()


def chat_prompt(att: AT2Attributor, messages: Sequence[Mapping[str, str]]) -> str:
    """``messages`` (``role``, ``content``) rendered with the tokenizer's chat template, generation prompt added."""
    tokenizer = att.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("the model's tokenizer has no chat template: a chat (instruct) model is needed")
    return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)


def prompt_ids(att: AT2Attributor, text: str) -> list[int]:
    """Token ids of a rendered prompt (its special-token text parsed), encoded through the core's
    per-tokenizer lock, so it is safe while other threads attribute with the same tokenizer."""
    return encode(att.tokenizer, text, special=True)


def greedy_generate(att: AT2Attributor, prompt_ids: Sequence[int], max_new_tokens: int, **generate_kwargs: Any):
    """Greedy ``generate`` on the attributor's model, without capture: prompt ids then the new ids."""
    ids = torch.tensor([list(prompt_ids)], device=att.device)
    with torch.inference_mode():
        return att.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
            do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=att.pad_token_id(),
            **generate_kwargs,
        )


def answer_text(att: AT2Attributor, new_ids: Sequence[int]) -> str:
    """The answer text of generated ids: cut at the first stop token, decoded exactly (as attribution does)."""
    return decode(att.tokenizer, att.strip_stop_tokens(list(new_ids)))


class _TokenQueue(BaseStreamer):
    """Receives the generated ids from ``generate`` (its first ``put`` carries the prompt: skipped)."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        """Queue the new token ids."""
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        """Nothing to do: the worker signals the end once the whole call has returned."""


class _Cancelled(StoppingCriteria):
    """Stops generating once the reader has gone away (closed the stream early)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class TokenStream(Generic[T]):
    """Runs ``call(generate_kwargs)`` in a worker thread and yields the answer text it adds, token by token.

    ``call`` must pass ``generate_kwargs`` (a streamer and a stopping criterion) on to the model's
    ``generate`` (``greedy_generate`` or ``AT2Attributor.generate`` both do). Pieces are decoded as
    answers are (cut at the first stop token, exact decode), so they add up to the attribution's
    answer. After the stream ends, ``result`` is what ``call`` returned, ``token_ids`` the generated
    ids and ``text`` the whole text. Closing the stream early stops the generation at the next token.
    """

    def __init__(self, att: AT2Attributor, call: Callable[[dict[str, Any]], T]) -> None:
        self._att, self._call = att, call
        self._tokens = _TokenQueue()
        self._cancel = threading.Event()
        self._error: BaseException | None = None
        self.result: T | None = None
        self.token_ids: list[int] = []
        self.text = ""

    def _work(self) -> None:
        try:
            with torch.inference_mode():
                self.result = self._call(
                    {"streamer": self._tokens, "stopping_criteria": StoppingCriteriaList([_Cancelled(self._cancel)])}
                )
        except BaseException as error:  # re-raised in the reader's thread
            self._error = error
        finally:
            self._tokens.queue.put(_DONE)

    def _piece(self, ids: list[int], final: bool = False) -> str:
        """The text the new ids add (held back while its last character may be incomplete)."""
        self.token_ids += ids
        text = answer_text(self._att, self.token_ids)
        if (text.endswith("\ufffd") and not final) or not text.startswith(self.text):
            return ""
        piece, self.text = text[len(self.text) :], text
        return piece

    def _start(self) -> threading.Thread:
        thread = threading.Thread(target=self._work, name="at2-generate", daemon=True)
        thread.start()
        return thread

    def _finish(self, thread: threading.Thread) -> str:
        thread.join()
        if self._error is not None:
            raise self._error
        return self._piece([], final=True)

    def pieces(self) -> Iterator[str]:
        """The answer text, piece by piece, as the model generates it."""
        thread = self._start()
        try:
            while (ids := self._tokens.queue.get()) is not _DONE:
                if piece := self._piece(ids):
                    yield piece
            if rest := self._finish(thread):
                yield rest
        finally:
            self._cancel.set()

    async def apieces(self) -> AsyncIterator[str]:
        """:meth:`pieces`, waiting for each token without blocking the event loop."""
        thread = self._start()
        try:
            while (ids := await asyncio.to_thread(self._tokens.queue.get)) is not _DONE:
                if piece := self._piece(ids):
                    yield piece
            if rest := await asyncio.to_thread(self._finish, thread):
                yield rest
        finally:
            self._cancel.set()

    def __iter__(self) -> Iterator[str]:
        return self.pieces()

    def __aiter__(self) -> AsyncIterator[str]:
        return self.apieces()
