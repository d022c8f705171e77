"""How the benchmarks should batch greedy answers on a CPU: a row cap alone, or a row cap and a token budget.

A pruning benchmark answers a mix of short contexts (one to three passages) and long ones (all k = 10 or
20 passages) per question. ``batched_answers`` pads every row of a batch to its longest prompt, so with
a row cap alone the longest batch prefills short prompts at the full context's length. Here the same
prompts — for each of the first ``--questions`` test questions of the harder benchmark's lists, every
condition's retriever top 1, 2 and 3 and its full list — are answered by the bundled model under each
setting in turn, interleaved per question (the order rotates), and the answers compared; the table gives
seconds and each setting's time as a ratio to the row cap alone.

    python benchmarks/answer_batching.py --questions 3 --json benchmarks/out/answer-batching.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SETTINGS = {"rows 8": (8, None), "rows 8, 2,048 tokens": (8, 2048), "rows 8, 4,096 tokens": (8, 4096),
            "one at a time": (1, None)}
"""``name: (batch_size, max_batch_tokens)``; the first is the reference the ratios divide by."""


def question_prompts(att, q: dict, passages: dict) -> list[list[int]]:
    """Every condition's retriever top 1, 2, 3 and full list for one question, as prompt ids (distinct)."""
    seen: dict[tuple[str, ...], list[int]] = {}
    for lst in q["lists"].values():
        for n in (1, 2, 3, len(lst["ids"])):
            ids = tuple(lst["ids"][:n])
            if ids not in seen:
                seen[ids] = list(att.prompt(q["question"], [passages[i] for i in ids]).input_ids)
    return list(seen.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    from hard_retrieval import LISTS_DIR, SOURCE, read_lists

    from at2_rag import AT2Attributor
    from at2_rag.app.first_stage import nq_pool
    from at2_rag.files import atomic_write_text
    from at2_rag.research.engine import batched_answers

    torch.manual_seed(0)
    _, lists = read_lists(LISTS_DIR, "test")
    rows, pool = nq_pool(SOURCE)
    questions = {r["id"]: r["question"] for r in rows}
    passages = {p["id"]: p for p in pool}
    att = AT2Attributor.from_pretrained(max_new_tokens=32)
    names = list(SETTINGS)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    agree: dict[str, int] = {n: 0 for n in names}
    total = 0
    for qi, q in enumerate(lists[: args.questions]):
        prompts = question_prompts(att, {**q, "question": questions[q["id"]]}, passages)
        answers = {}
        for name in names[qi % len(names):] + names[: qi % len(names)]:
            size, budget = SETTINGS[name]
            t0 = time.perf_counter()
            answers[name] = batched_answers(att, prompts, batch_size=size, max_batch_tokens=budget)
            seconds[name].append(time.perf_counter() - t0)
        for name in names:
            agree[name] += sum(a == b for a, b in zip(answers[name], answers[names[0]]))
        total += len(prompts)
        lengths = sorted(len(p) for p in prompts)
        print(f"{q['id']}: {len(prompts)} prompts of {lengths[0]}-{lengths[-1]} tokens; "
              + ", ".join(f"{n} {seconds[n][-1]:.1f}s" for n in names), flush=True)
    ref = sum(seconds[names[0]])
    result = {"questions": args.questions, "prompts": total, "settings": {
        n: {"batch_size": SETTINGS[n][0], "max_batch_tokens": SETTINGS[n][1], "seconds": sum(seconds[n]),
            "per_question_median": statistics.median(seconds[n]), "ratio": sum(seconds[n]) / ref,
            "answers_equal_to_reference": agree[n]} for n in names}}
    print(f"\n{total} prompts over {args.questions} questions (answers equal to '{names[0]}''s / all)")
    for n, r in result["settings"].items():
        print(f"  {n:22s} {r['seconds']:7.1f} s  {r['ratio']:.2f}×  {r['answers_equal_to_reference']}/{total}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
