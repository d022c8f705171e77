"""AT2ChatModel: LangChain's standard chat-model suites, token streaming, stop sequences, usage, sharing."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import ValidationError

from at2_rag import AT2Attributor
from langchain_at2 import AT2ChatModel
from langchain_at2.chat_model import StopSequences, conversation

GREEDY_ONLY = {"temperature": 0, "max_tokens": 16, "stop": []}
"""LangChain's standard parameters that apply to a local, greedy model (no timeout, retries or key)."""


class TestLcAT2ChatModelUnit(ChatModelUnitTests):
    """The standard unit suite (construction, tracing parameters); nothing is loaded."""

    @property
    def chat_model_class(self) -> type[AT2ChatModel]:
        return AT2ChatModel

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        return GREEDY_ONLY


class TestLcAT2ChatModelStandard(ChatModelIntegrationTests):
    """The standard integration suite on the real bundled model (short answers for speed)."""

    @pytest.fixture(autouse=True)
    def _shared(self, attributor) -> None:
        self._params = {"attributor": attributor, "max_tokens": 16}

    @property
    def chat_model_class(self) -> type[AT2ChatModel]:
        return AT2ChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return self._params

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        return GREEDY_ONLY

    @property
    def supports_model_override(self) -> bool:
        return False  # one local model per instance


class TokenRecorder(BaseCallbackHandler):
    """Records the tokens reported through ``on_llm_new_token``."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def test_stream_yields_tokens_as_generated_and_adds_up_to_invoke(attributor):
    model = AT2ChatModel(attributor=attributor, max_new_tokens=16)
    answer = model.invoke("What is the capital of France?")
    recorder = TokenRecorder()
    chunks = list(model.stream("What is the capital of France?", config={"callbacks": [recorder]}))
    assert len(chunks) > 3 and chunks[-1].chunk_position == "last"
    assert "".join(c.content for c in chunks) == answer.content and answer.content.strip()
    assert "".join(recorder.tokens) == answer.content and len([t for t in recorder.tokens if t]) > 3
    # `streaming=True` makes invoke stream too: the same answer, reported token by token.
    recorder = TokenRecorder()
    streamed = AT2ChatModel(attributor=attributor, max_new_tokens=16, streaming=True).invoke(
        "What is the capital of France?", config={"callbacks": [recorder]}
    )
    assert streamed.content == answer.content and len([t for t in recorder.tokens if t]) > 3
    achunks = asyncio.run(collect(model, "What is the capital of France?"))
    assert "".join(c.content for c in achunks) == answer.content and len(achunks) > 3


async def collect(model: AT2ChatModel, prompt: str) -> list:
    return [chunk async for chunk in model.astream(prompt)]


def test_usage_finish_reason_and_length(attributor):
    model = AT2ChatModel(attributor=attributor, max_new_tokens=3)
    short = model.invoke("Tell me a long story about a dragon.")
    assert short.usage_metadata["output_tokens"] == 3
    assert short.response_metadata["finish_reason"] == "length"
    assert short.response_metadata["model_name"].startswith("HuggingFaceTB/SmolLM2-135M-Instruct")
    prompt_ids = model._prompt_ids(attributor, [HumanMessage("Tell me a long story about a dragon.")])
    assert short.usage_metadata["input_tokens"] == len(prompt_ids)
    assert short.usage_metadata["total_tokens"] == len(prompt_ids) + 3
    assert model.invoke("Hi", max_new_tokens=2).usage_metadata["output_tokens"] == 2
    done = AT2ChatModel(attributor=attributor, max_new_tokens=64).invoke("Say hello.")
    assert done.response_metadata["finish_reason"] == "stop" and done.usage_metadata["output_tokens"] < 64


def test_stop_sequences_end_the_answer_before_them(attributor):
    model = AT2ChatModel(attributor=attributor, max_new_tokens=16)
    full = model.invoke("Hello").content
    words = full.split()
    assert len(words) >= 4, full
    stop = " " + words[2]
    cut = full[: full.index(stop)]
    stopped = model.invoke("Hello", stop=[stop])
    assert stopped.content == cut and stopped.response_metadata["finish_reason"] == "stop"
    assert stopped.usage_metadata["output_tokens"] < len(model._prompt_ids(attributor, [HumanMessage(full)]))
    assert "".join(c.content for c in model.stream("Hello", stop=[stop])) == cut
    assert AT2ChatModel(attributor=attributor, max_new_tokens=16, stop=[stop]).invoke("Hello").content == cut
    assert model.invoke("Hello", stop=["<never appears>"]).content == full


def test_stop_sequences_hold_back_only_a_possible_start():
    stops = StopSequences(["END", "xyz"])
    assert stops.feed("abc E") == "abc " and stops.feed("N") == "" and stops.feed("x") == "EN"
    assert stops.feed("yz tail") == "" and stops.hit
    assert stops.feed("more") == ""
    free = StopSequences(["END"])
    assert free.feed("the EN") == "the " and free.flush() == "EN" and not free.hit


def test_messages_use_the_chat_template_roles(attributor):
    messages = [
        SystemMessage("Be brief."),
        HumanMessage("Hi"),
        AIMessage("Hello!"),
        ChatMessage(role="user", content="And now?"),
        ToolMessage("42", tool_call_id="1"),
    ]
    roles = [m["role"] for m in conversation(messages)]
    assert roles == ["system", "user", "assistant", "user", "tool"]
    text = AT2ChatModel(attributor=attributor)._prompt_ids(attributor, messages[:3])
    rendered = attributor.tokenizer.decode(text)
    assert rendered.endswith("<|im_start|>assistant\n") and "<|im_start|>system\nBe brief.<|im_end|>" in rendered
    with pytest.raises(ValueError, match="text only"):
        conversation([HumanMessage(content=[{"type": "image", "url": "https://example.com/x.png"}])])


def test_bad_settings_and_call_arguments_are_rejected(attributor):
    for bad in ({"temperature": 0.7}, {"max_tokens": 0}, {"top_p": 0.9}, {"timeout": 60}, {"model_kwargs": {"device": "cpu"}}):
        with pytest.raises(ValidationError):
            AT2ChatModel(**bad)
    with pytest.raises(TypeError, match="attributor"):
        AT2ChatModel(attributor="default")
    model = AT2ChatModel(attributor=attributor, max_tokens=4)
    assert model.max_new_tokens == 4 and AT2ChatModel(max_new_tokens=5).max_new_tokens == 5
    with pytest.raises(TypeError, match="unsupported call arguments: top_p"):
        model.invoke("Hi", top_p=0.5)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        model.invoke("Hi", max_new_tokens=0)


def test_loads_the_bundled_model_lazily_once(monkeypatch, attributor):
    calls = []

    def load(*args: Any, **kwargs: Any) -> AT2Attributor:
        calls.append(kwargs)
        return attributor

    monkeypatch.setattr(AT2Attributor, "from_pretrained", staticmethod(load))
    model = AT2ChatModel(max_new_tokens=2, dtype="float32")
    assert not model.attributor_loaded
    model.invoke("Hi")
    model.invoke("Hi again")
    assert calls == [{"model": "default", "device": None, "dtype": "float32"}]
    assert model.get_attributor() is attributor


def test_threads_equal_sequential(attributor):
    model = AT2ChatModel(attributor=attributor, max_new_tokens=8)
    prompts = ["What is the capital of France?", "Name a fruit.", "Count to three."]
    sequential = [model.invoke(p).content for p in prompts]
    with ThreadPoolExecutor(3) as pool:
        threaded = list(pool.map(lambda p: "".join(c.content for c in model.stream(p)), prompts))
    assert threaded == sequential and len(set(sequential)) == 3
