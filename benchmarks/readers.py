"""Batched greedy answers for QA benchmarks: many prompts, one padded ``generate`` per batch.

The answers are those :meth:`AT2Attributor.generate` gives for the same prompt (same greedy settings,
same header-echo suppression, same stop-token handling); batching only makes a benchmark of
thousands of answers affordable on a GPU. ``tests/test_benchmark_readers.py`` checks the equality.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from at2_rag import AT2Attributor
from at2_rag.prompts import decode


def no_context_ids(att: AT2Attributor, question: str) -> list[int]:
    """The chat prompt of a bare question (the no-context lower bound)."""
    out = att.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(out["input_ids"])


@torch.inference_mode()
def answer_ids_batched(
    att: AT2Attributor,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    progress: bool = False,
) -> list[str]:
    """Greedy answers to token-id prompts, batched with left padding (shortest prompts together)."""
    from tqdm.auto import tqdm

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    pad = att.pad_token_id()
    pad = 0 if pad is None else pad
    kwargs = {
        "do_sample": False, "max_new_tokens": max_new_tokens, "pad_token_id": pad,
        "temperature": None, "top_p": None, "top_k": None,
    }
    if att.suppress_header_echo:
        kwargs["begin_suppress_tokens"] = att.header_start_tokens()
    for lo in tqdm(range(0, len(order), batch_size), desc="answers", disable=not progress):
        idx = order[lo : lo + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + list(prompts[i]) for i in idx])
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx])
        out = att.model.generate(
            input_ids=ids.to(att.device), attention_mask=mask.to(att.device), use_cache=True, **kwargs
        )
        for row, i in zip(out[:, width:].tolist(), idx):
            answers[i] = decode(att.tokenizer, att.strip_stop_tokens(row))
    return answers
