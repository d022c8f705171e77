"""AT2LLM: the bundled model as a LlamaIndex LLM (greedy, chat template, streaming), and a fully local pipeline."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch
from li_support import GOLD, QUESTION, while_ticking
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock
from llama_index.postprocessor.at2 import AT2LLM, AT2CitationQueryEngine, AT2Postprocessor

from at2_rag import AT2Attributor, ContextTooLongError


def greedy_answer(att: AT2Attributor, messages, max_new_tokens: int) -> str:
    """The reference: the chat template, the model's own greedy ``generate``, cut at the first stop token."""
    text = att.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([att.tokenizer(text, add_special_tokens=False)["input_ids"]])
    out = att.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, temperature=None, top_p=None, top_k=None)
    return att.tokenizer.decode(att.strip_stop_tokens(out[0, ids.shape[1]:].tolist()))


@pytest.fixture(scope="module")
def llm(attributor):
    return AT2LLM(attributor=attributor, max_new_tokens=16)


@pytest.fixture(scope="module")
def answer(attributor, llm):
    """The LLM's answer to the question, checked once against the reference decoding."""
    text = llm.complete(QUESTION).text
    assert text == greedy_answer(attributor, [{"role": "user", "content": QUESTION}], 16)
    return text


def test_complete_is_greedy_generation_through_the_chat_template(llm, answer):
    assert "1889" in answer
    assert llm.complete(QUESTION).text == answer  # greedy: the same answer every time
    response = llm.complete(QUESTION)
    assert response.raw == {"prompt_tokens": response.raw["prompt_tokens"], "completion_tokens": 16,
                            "finish_reason": "length"}
    prompt = llm.completion_to_prompt(QUESTION)
    assert prompt.endswith(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
    assert llm.complete(prompt, formatted=True).text == answer  # formatted: used as it is


def test_chat_uses_the_chat_template_and_the_system_prompt(attributor, llm, answer):
    messages = [ChatMessage(role=MessageRole.USER, content=QUESTION)]
    reply = llm.chat(messages)
    assert reply.message.role == MessageRole.ASSISTANT and reply.message.content == answer
    assert "<|im_start|>user\n" in llm.messages_to_prompt(messages)
    french = AT2LLM(attributor=attributor, max_new_tokens=8, system_prompt="Answer in French.")
    prompt = french.completion_to_prompt(QUESTION)
    assert prompt.startswith("<|im_start|>system\nAnswer in French.<|im_end|>") and "SmolLM" not in prompt
    expected = greedy_answer(attributor, [{"role": "system", "content": "Answer in French."},
                                          {"role": "user", "content": QUESTION}], 8)
    assert french.complete(QUESTION).text == expected


def test_stream_complete_yields_tokens_that_add_up_to_the_answer(llm, answer):
    chunks = list(llm.stream_complete(QUESTION))
    assert len(chunks) >= 5  # token by token, not one block at the end
    assert "".join(c.delta for c in chunks) == answer == chunks[-1].text
    assert all(b.text == a.text + b.delta for a, b in zip(chunks, chunks[1:]))
    chat_chunks = list(llm.stream_chat([ChatMessage(role=MessageRole.USER, content=QUESTION)]))
    assert [c.delta for c in chat_chunks] == [c.delta for c in chunks]


def test_closing_a_stream_stops_the_generation(attributor):
    long = AT2LLM(attributor=attributor, max_new_tokens=400)
    stream = long.stream_complete("Write a long story about a dragon who learns to fly.")
    next(stream)
    workers = [t for t in threading.enumerate() if t.name == "at2-generate"]
    stream.close()
    for t in workers:
        t.join(timeout=5)
    assert workers and not any(t.is_alive() for t in workers)  # 400 tokens would take far longer


def test_async_methods_match_and_keep_the_event_loop_running(llm, answer):
    async def stream():
        return [c.delta async for c in await llm.astream_complete(QUESTION)]

    async def rest():
        completed = (await llm.acomplete(QUESTION)).text
        messages = [ChatMessage(role=MessageRole.USER, content=QUESTION)]
        chatted = (await llm.achat(messages)).message.content
        chat_streamed = [c.delta async for c in await llm.astream_chat(messages)]
        return completed, chatted, chat_streamed

    streamed, ticks = asyncio.run(while_ticking(stream))
    completed, chatted, chat_streamed = asyncio.run(rest())
    assert ticks > 2  # the loop kept running while the model generated in a worker thread
    assert "".join(streamed) == completed == chatted == "".join(chat_streamed) == answer
    assert len(streamed) >= 5


def test_metadata_comes_from_the_model(attributor, llm):
    meta = llm.metadata
    assert meta.context_window == attributor.max_length == 8192
    assert meta.num_output == 16 and meta.is_chat_model
    assert "SmolLM2-135M-Instruct" in meta.model_name
    assert AT2LLM(attributor=attributor, context_window=1024).metadata.context_window == 1024
    assert AT2LLM(attributor=attributor).metadata.num_output == attributor.max_new_tokens
    data = llm.to_dict()
    assert data["class_name"] == AT2LLM.class_name() == "AT2LLM" and data["max_new_tokens"] == 16


def test_model_loads_lazily_once_and_bad_calls_fail(monkeypatch, attributor):
    calls = []

    def fake_from_pretrained(**kwargs):
        calls.append(kwargs)
        return attributor

    monkeypatch.setattr(AT2Attributor, "from_pretrained", staticmethod(fake_from_pretrained))
    lazy = AT2LLM(device="cpu", max_new_tokens=4)
    assert not lazy.attributor_loader.loaded
    lazy.complete(QUESTION)
    lazy.complete(QUESTION)
    assert calls == [{"model": "default", "device": "cpu", "dtype": None}]

    with pytest.raises(TypeError, match="max_new_tokens"):
        lazy.complete(QUESTION, temperature=0.7)
    with pytest.raises(ValueError, match="positive int"):
        lazy.complete(QUESTION, max_new_tokens=0)
    with pytest.raises(ContextTooLongError, match="window"):
        AT2LLM(attributor=attributor, context_window=32).complete(QUESTION * 3)
    with pytest.raises(TypeError, match="'max_tokens'.*valid arguments:.*max_new_tokens"):
        AT2LLM(max_tokens=5)
    with pytest.raises(ValueError, match="text only"):
        image = ImageBlock(url="https://example.com/tower.png")  # never fetched
        lazy.messages_to_prompt([ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text="Where?"), image])])


def test_fully_local_pipeline_shares_one_model(monkeypatch, attributor, index):
    """The bundled model answers (AT2LLM), prunes (AT2Postprocessor) and cites, with no other model loaded."""

    def no_second_model(**kwargs):
        raise AssertionError("a second model was loaded")

    monkeypatch.setattr(AT2Attributor, "from_pretrained", staticmethod(no_second_model))
    llm = AT2LLM(attributor=attributor, max_new_tokens=16)
    pruner = AT2Postprocessor(attributor=attributor, top_n=1)
    engine = index.as_query_engine(llm=llm, similarity_top_k=4, node_postprocessors=[pruner])
    response = engine.query(QUESTION)
    assert [n.node_id for n in response.source_nodes] == [GOLD]
    assert "1889" in response.response

    cited = AT2CitationQueryEngine.from_args(index, llm=llm, pruner=pruner, similarity_top_k=4).query(QUESTION)
    assert cited.metadata["answer"] == response.response  # the same prompt, greedy: the same answer
    assert cited.response == response.response + "[1]" and cited.metadata["extra_forward_passes"] == 1
    assert {s["document_id"] for c in cited.metadata["citations"] for s in c["sources"]} == {GOLD}

    # With no attributor or pruner, the engine attributes with the AT2LLM's own model.
    shared = AT2CitationQueryEngine.from_args(index, llm=llm, similarity_top_k=2).query(QUESTION)
    assert shared.metadata["attribution_method"] == "at2" and shared.metadata["citations"]
