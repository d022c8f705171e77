"""Shared test data: the facts as nodes, the question, and an API-model stand-in that records prompts."""

from __future__ import annotations

import re
from typing import Any, List

from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseGen
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.llms import MockLLM
from llama_index.core.schema import NodeWithScore, TextNode

QUESTION = "When was the Eiffel Tower completed?"
GOLD = "eiffel"
FACTS = {
    "eiffel": ("Eiffel Tower", "The Eiffel Tower is located in Paris, France. It was completed in 1889."),
    "everest": ("Mount Everest", "Mount Everest is the highest mountain on Earth."),
    "tokyo": ("Tokyo", "The capital of Japan is Tokyo. Tokyo hosted the Summer Olympics in 2021."),
    "banana": ("Bananas", "Bananas are rich in potassium and are grown in tropical regions."),
}


class FixedLLM(MockLLM):
    """An API-model stand-in: always answers ``answer`` (streamed word by word) and records every prompt."""

    answer: str = ""
    _prompts: List[str] = PrivateAttr(default_factory=list)

    def __init__(self, answer: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.answer = answer

    @property
    def prompts(self) -> List[str]:
        return self._prompts

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self._prompts.append(prompt)
        return CompletionResponse(text=self.answer)

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        self._prompts.append(prompt)

        def gen() -> CompletionResponseGen:
            text = ""
            for word in re.findall(r"\S+\s*", self.answer):
                text += word
                yield CompletionResponse(text=text, delta=word)

        return gen()


def make_nodes() -> List[NodeWithScore]:
    """The facts as retrieved nodes, with retrieval scores and a title the LLM is meant to see."""
    return [
        NodeWithScore(node=TextNode(id_=key, text=text, metadata={"title": title}), score=1.0 - 0.1 * i)
        for i, (key, (title, text)) in enumerate(FACTS.items())
    ]


async def while_ticking(work) -> tuple[Any, int]:
    """Await ``work()`` while a task ticks every 10 ms; returns its result and the ticks (the event loop
    kept running while the model generated in a worker thread when ticks > 2)."""
    import asyncio

    ticks = 0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    try:
        result = await work()
    finally:
        done.set()
        await ticker
    return result, ticks
