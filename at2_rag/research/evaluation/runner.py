"""Run attribution methods over a JSONL dataset and measure them the same way (resumable).

Per example: the model answers from the first ``k`` retrieved documents (shuffled by the example's
id, so position carries no signal), sources are sentences, and every method attributes that fixed
answer. Metrics: LDS on fresh random keep-masks (never the ones a surrogate was fitted on), the
answer's log-probability drop when each method's top-k sources are ablated, whether the gold
document ranks first / in the top 3, and forward passes and seconds per method.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...ablation import random_masks
from ...attributor import AT2Attributor
from ...errors import InputError
from ...files import atomic_write_text, json_safe
from ...prompts import encode
from ..data import OnError, is_correct, read_selection, shuffled_documents
from ..options import at_least, mask_count
from ..shards import check_shard
from .methods import EvalExample, Method, evaluation_seed, whole_answer_targets
from .metrics import lds, mean_and_stderr, topk_drop
from .rows import append_row, check_same_run, prepare_rows_file, read_rows, run_options

DROP_KS = (1, 3, 5)


def make_example(att: AT2Attributor, ex: dict[str, Any], k: int, max_new_tokens: int) -> tuple[EvalExample, bool]:
    """The evaluation example for one dataset row (the model's own greedy answer), and its correctness."""
    docs = shuffled_documents(ex, k)
    order = [d["id"] for d in ex["documents"][:k]]
    gen = att.generate(ex["question"], docs, granularity="sentence", max_new_tokens=max_new_tokens)
    gold = set(ex.get("gold_document_ids") or [])
    item = EvalExample(
        id=str(ex["id"]), question=ex["question"], prompt=gen.prompt, answer=gen.answer,
        # The canonical tokenization of the answer text: what every method (and `attribute`) sees.
        answer_ids=encode(att.tokenizer, gen.answer) if gen.answer else [],
        retrieval_rank=[order.index(d["id"]) if d.get("id") in order else i for i, d in enumerate(docs)],
        gold_documents=[i for i, d in enumerate(docs) if d.get("id") in gold],
    )
    return item, is_correct(gen.answer, ex.get("answers") or [])


def evaluate_example(att: AT2Attributor, ex: EvalExample, methods: Sequence[Method], n_masks: int = 32) -> dict:
    """Every method's scores on one example, and every metric of them."""
    results = {m.name: m.attribute(att, ex) for m in methods}
    masks = random_masks(n_masks, len(ex.prompt.sources), 0.5, seed=evaluation_seed(ex.id, "lds"))
    targets = whole_answer_targets(att, ex, masks)
    drops = topk_drop(att.model, ex.prompt, ex.answer_ids, {n: r.scores for n, r in results.items()}, DROP_KS)
    row: dict[str, Any] = {"id": ex.id, "sources": len(ex.prompt.sources), "answer_tokens": len(ex.answer_ids),
                           "methods": {}}
    for name, r in results.items():
        m = {"lds": lds(r.scores, masks, targets), "forward_passes": r.forward_passes, "seconds": r.seconds,
             **{f"drop{k}": v for k, v in drops[name].items()}}
        if ex.gold_documents:
            per_doc = torch.zeros(len(ex.prompt.documents), dtype=torch.float64)
            per_doc.index_add_(0, torch.tensor([s.document for s in ex.prompt.sources]), r.scores)
            order = torch.argsort(per_doc, descending=True, stable=True).tolist()
            m["gold_top1"] = float(order[0] in ex.gold_documents)
            m["gold_recall3"] = float(any(d in ex.gold_documents for d in order[:3]))
        row["methods"][name] = m
    if ex.surrogate is not None:  # the surrogate's ablation targets (masks follow from the seed): for cross-checks
        row["surrogate_targets"] = ex.surrogate.targets.tolist()
    return row


def run_evaluation(
    att: AT2Attributor,
    data: str,
    methods: Sequence[Method],
    out: str,
    *,
    split: str | None = "test",
    limit: int | None = None,
    k: int = 5,
    n_masks: int = 32,
    max_new_tokens: int = 48,
    progress: bool = True,
    on_error: OnError = "raise",
    shard: tuple[int, int] | None = None,
) -> dict:
    """Evaluate ``methods`` on the first ``limit`` rows of ``data``; the summary of those rows goes to ``out``.

    Rows go to ``out + '.rows.jsonl'`` as they finish, after a header holding the options: a rerun
    with the same options (any ``limit``) skips finished rows, one with other options raises
    :class:`InputError` (see :mod:`.rows`). ``on_error="skip"`` leaves out invalid data rows (see
    :func:`~at2_rag.research.data.read_dataset`).

    ``shard=(i, n)`` evaluates only every n-th example from the i-th, into its own rows file
    (``out + f'.rows.{i}-of-{n}.jsonl'``), and writes no summary; a run without ``shard`` counts the
    rows of every such file made with the same options as done, so after n shard runs (separate
    processes, machines, or Ray workers) it only writes the summary.
    """
    _check_options(methods, k, n_masks, max_new_tokens)
    check_shard(shard)
    examples = read_selection(data, split, limit, on_error)
    options = run_options(att, data, methods, split=split, k=k, n_masks=n_masks, max_new_tokens=max_new_tokens)
    rows_path = out + (".rows.jsonl" if shard is None else f".rows.{shard[0]}-of-{shard[1]}.jsonl")
    stored = read_rows(rows_path)
    check_same_run(rows_path, stored, options)
    done: dict[str, dict] = {}
    for row in stored.rows:
        done.setdefault(row["id"], row)
    if shard is None:
        for part in sorted(Path(out).parent.glob(glob.escape(Path(out).name) + ".rows.*-of-*.jsonl")):
            rows = read_rows(part)
            check_same_run(part, rows, options)
            for row in rows.rows:
                done.setdefault(row["id"], row)
    else:
        examples = examples[shard[0] :: shard[1]]
    todo = [e for e in examples if e["id"] not in done]
    if todo:
        prepare_rows_file(rows_path, stored, options)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(examples), initial=len(examples) - len(todo), desc="examples")
    for raw in todo:
        row = _evaluate_row(att, raw, methods, k, n_masks, max_new_tokens)
        append_row(rows_path, row)
        done[row["id"]] = row
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    rows = [done[e["id"]] for e in examples]
    result = summarize(rows, [m.name for m in methods])
    if shard is None:
        atomic_write_text(out, json.dumps(json_safe({"summary": result, "rows": rows}), indent=1, allow_nan=False))
    return result


def _check_options(methods: Sequence[Method], k: int, n_masks: int, max_new_tokens: int) -> None:
    """Refuse options that can only give useless rows, before any data is read or model run."""
    if not methods:
        raise InputError("no methods to evaluate; pass at least one, e.g. at2 or loo")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise InputError(f"each method may be listed once, got {','.join(names)}")
    at_least("k", k, 1, " (documents per example)")
    mask_count(n_masks)
    at_least("max_new_tokens", max_new_tokens, 1, " (tokens of the answer)")


def _evaluate_row(
    att: AT2Attributor, raw: dict[str, Any], methods: Sequence[Method], k: int, n_masks: int, max_new_tokens: int
) -> dict:
    """The row of one dataset example (``skipped`` when the model's answer is empty)."""
    ex, correct = make_example(att, raw, k, max_new_tokens)
    if not ex.answer_ids:
        return {"id": ex.id, "skipped": "empty answer"}
    row = evaluate_example(att, ex, methods, n_masks)
    row["correct"] = correct
    return row


def summarize(rows: list[dict], names: Sequence[str]) -> dict:
    """Mean ± standard error of every metric per method; citation accuracy on correct answers (and,
    apart, on every example whose gold passage was retrieved)."""
    scored = [r for r in rows if "methods" in r]
    base = "at2" if "at2" in names else names[0]
    out: dict[str, dict] = {}
    for name in names:
        here = [r["methods"][name] for r in scored if name in r["methods"]]
        summary = {"n": len(here)}
        for key in ("lds", "drop1", "drop3", "drop5", "forward_passes", "seconds"):
            mean, se = mean_and_stderr([m[key] for m in here if key in m])
            summary[key] = {"mean": mean, "stderr": se}
        cite = [r["methods"][name] for r in scored if r.get("correct") and "gold_top1" in r["methods"].get(name, {})]
        summary["gold_top1_correct"] = {"mean": _mean([m["gold_top1"] for m in cite]), "n": len(cite)}
        summary["gold_recall3_correct"] = {"mean": _mean([m["gold_recall3"] for m in cite]), "n": len(cite)}
        # Every example whose gold passage was among the k documents, right answer or not (more examples,
        # but a wrong answer may rightly rest on another passage).
        found = [r["methods"][name] for r in scored if "gold_top1" in r["methods"].get(name, {})]
        summary["gold_top1_retrieved"] = {"mean": _mean([m["gold_top1"] for m in found]), "n": len(found)}
        ratios = [r["methods"][name]["seconds"] / r["methods"][base]["seconds"] for r in scored
                  if name in r["methods"] and r["methods"][base]["seconds"] > 0]
        summary["time_ratio_to_at2_median"] = _median(ratios)
        out[name] = summary
    return out


def format_table(summary: dict) -> str:
    """The summary as a plain-text table."""
    head = (f"{'method':<16} {'LDS':>15} {'top-1 drop':>13} {'top-3 drop':>13} {'top-5 drop':>13} {'cite@1':>7} "
            f"{'(all)':>6} {'passes':>7} {'time/AT2':>9}")
    lines = [head]
    for name, s in summary.items():
        def f(key, s=s):
            v = s[key]
            return f"{v['mean']:.3f} ± {v['stderr']:.3f}" if v["mean"] == v["mean"] else "-"
        cite, cite_all = s["gold_top1_correct"]["mean"], s["gold_top1_retrieved"]["mean"]
        lines.append(
            f"{name:<16} {f('lds'):>15} {f('drop1'):>13} {f('drop3'):>13} {f('drop5'):>13} "
            f"{cite:>7.0%} {cite_all:>6.0%} {s['forward_passes']['mean']:>7.1f} {s['time_ratio_to_at2_median']:>8.2f}x"
        )
    return "\n".join(lines)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _median(xs: list[float]) -> float:
    import statistics

    return statistics.median(xs) if xs else float("nan")
