"""The local model as a plain chat LLM: chat prompts, greedy generation and token streams (shared by
both framework wrappers)."""

from __future__ import annotations

import asyncio
import time

import pytest

from at2_rag import InputError, TokenStream, answer_text, chat_prompt, greedy_generate, prompt_ids

DOCS = ["Kilimanjaro is the highest mountain in Africa, in Tanzania.", "Mount Kenya is second."]
QUESTION = "What is the highest mountain in Africa?"


def test_chat_prompt_ids_equal_the_templates_own_tokenization(attributor):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <|im_end|> there"}]
    text = chat_prompt(attributor, messages)
    assert text.endswith("<|im_start|>assistant\n")
    ids = prompt_ids(attributor, text)
    assert ids == attributor.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                           return_dict=True)["input_ids"]


def test_a_tokenizer_without_template_is_an_input_error(attributor, monkeypatch):
    monkeypatch.setattr(attributor.tokenizer, "chat_template", None)
    with pytest.raises(InputError, match="no chat template"):
        chat_prompt(attributor, [{"role": "user", "content": "Hi"}])


def test_stream_pieces_add_up_to_the_greedy_answer(attributor):
    ids = prompt_ids(attributor, chat_prompt(attributor, [{"role": "user", "content": QUESTION}]))
    full = greedy_generate(attributor, ids, 12)[0, len(ids):].tolist()
    stream = TokenStream(attributor, lambda kw: greedy_generate(attributor, ids, 12, **kw))
    pieces = list(stream)
    assert len(pieces) > 1, "the answer arrives in pieces, not in one chunk"
    assert "".join(pieces) == answer_text(attributor, full) == stream.text
    assert stream.token_ids == full


def test_streamed_attribution_equals_generate(attributor):
    expected = attributor.generate(QUESTION, DOCS, max_new_tokens=12)
    stream = TokenStream(attributor, lambda kw: attributor.generate(QUESTION, DOCS, max_new_tokens=12, **kw))
    text = asyncio.run(_collect(stream))
    assert text == expected.answer == stream.result.answer
    assert stream.result.scores.tolist() == expected.scores.tolist()


async def _collect(stream) -> str:
    return "".join([piece async for piece in stream])


def test_closing_a_stream_stops_generation(attributor):
    ids = prompt_ids(attributor, chat_prompt(attributor, [{"role": "user", "content": "Count from one to fifty."}]))
    # min_new_tokens: the answer would run to 60 tokens if nothing stopped it.
    assert greedy_generate(attributor, ids, 60, min_new_tokens=60).shape[1] - len(ids) == 60
    stream = TokenStream(attributor, lambda kw: greedy_generate(attributor, ids, 60, min_new_tokens=60, **kw))
    pieces = stream.pieces()
    next(pieces)
    pieces.close()
    deadline = time.monotonic() + 60
    while stream.result is None and time.monotonic() < deadline:  # the worker stops at its next token
        time.sleep(0.05)
    assert stream.result is not None
    assert stream.result.shape[1] - len(ids) < 20, "generation went on after the reader closed the stream"
