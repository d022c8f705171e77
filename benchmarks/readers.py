"""Batched greedy answers for QA benchmarks: many prompts, one padded ``generate`` per batch.

The answers are those :meth:`AT2Attributor.generate` gives for the same prompt (same greedy settings,
same header-echo suppression, same stop-token handling); batching only makes a benchmark of
thousands of answers affordable on a GPU. ``tests/test_outcomes.py`` checks that batching does not change them.
"""

from __future__ import annotations

from at2_rag import AT2Attributor
from at2_rag.research.engine import batched_answers


def no_context_ids(att: AT2Attributor, question: str) -> list[int]:
    """The chat prompt of a bare question (the no-context lower bound)."""
    out = att.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(out["input_ids"])


answer_ids_batched = batched_answers
"""Greedy answers to token-id prompts, batched (kept under this name for the benchmark scripts)."""
