"""Prune and regenerate where the first-stage retriever errs: BM25, a BM25 + MiniLM merge, and k = 20.

The NQ-RAG retriever (exact MiniLM similarity) ranks the gold passage first for about 90% of
questions, so the fitted rank fusion lets it decide. Here the same questions get other first-stage
orders over the same passage pool (``at2_rag.app.first_stage``): ``bm25-k10``, ``merge-k10``
(reciprocal-rank fusion, k = 60, of the MiniLM and BM25 top-20), ``minilm-k20``, ``bm25-k20``, and
``minilm-k10`` (the existing order) for reference.

``--stage lists`` (no language model; MiniLM embeds the pool once): writes every condition's list for
the validation and test questions to ``benchmarks/data/hard-retrieval/lists.jsonl.gz`` (passage ids,
retriever scores, the gold passage's position; ``meta.json`` beside it says how ids resolve to texts)
and the retrievers' gold hit rates (top 1 / top 3 / top k) to ``benchmarks/out/hard-retrieval-lists.json``.

``--stage validation|test``: for each condition whose list holds the gold passage, the bundled 135M model
scores the k passages (in retriever order, each carrying its retriever rank in metadata) with the shipped
support estimator in one prefill; methods keep 1, 2 or 3 passages and the same model answers from
them, greedily (one answer per distinct context; rows appended per question, so a run resumes):

- ``default``   support scores fused with the rank (``fused_scores``, the estimator's fitted weight);
- ``at2_only``  the support scores alone (rank weight 0);
- ``retriever`` the retriever's top n;
- ``adaptive``  standardized support scores plus the standardized retriever scores: the retriever's say
                grows with its score margin over the other passages, no weight to tune;
- ``w=…``       (validation) fusion at each weight of ``GRID`` (0, 0.5, 1, 2, 5) and the fitted one, to
                choose a weight per condition;
- ``tuned``     (test, with ``--weights``) fusion at the weight chosen on validation;
- ``full``      all k passages in retriever order.

``--reader NAME`` (a fetched model, e.g. ``qwen2.5-coder-0.5b``) answers from the kept passages instead of
the scorer, the setting of a small model pruning for a bigger reader; the 135M model still scores, so ``--weights``
and the token shares (counted in its tokens) stay the scorer's. Rows name their reader; a rows file holds
one reader's rows. ``--conditions bm25-k10,bm25-k20`` evaluates only those conditions (rows record the set;
a rows file holds one set), so a costlier reader can answer where the retriever errs most.

``--summary ROWS`` prints accuracy, gold-kept rate and token share per condition and budget, paired
two-sided sign tests of every method against ``retriever`` and ``at2_only``, and (validation) the
weight chosen per condition: highest mean accuracy over the budgets, ties to the higher gold-kept
rate, then to the weight nearest the fitted one.

    python benchmarks/hard_retrieval.py --stage lists                                  # ~6 min on this CPU
    python benchmarks/hard_retrieval.py --stage validation --limit 150 --out benchmarks/out/hard-retrieval-validation.jsonl
    python benchmarks/hard_retrieval.py --summary benchmarks/out/hard-retrieval-validation.jsonl \\
        --json benchmarks/out/hard-retrieval-validation.json
    python benchmarks/hard_retrieval.py --stage test --limit 220 --weights benchmarks/out/hard-retrieval-validation.json \\
        --out benchmarks/out/hard-retrieval-test.jsonl
    python benchmarks/hard_retrieval.py --summary benchmarks/out/hard-retrieval-test.jsonl \\
        --json benchmarks/out/hard-retrieval-test.json

``--limit 220`` test questions give at least 200 per condition (bm25-k10 holds the gold passage for 201
of the first 215). Add ``--device cuda`` to run the model on a GPU. Cost on the 2-core CPU (float32):
150 validation questions took 1.7 h (median 39 s a question, 18 s of it scoring; validation skips the
full contexts, which choosing a weight never needs), 220 test questions 4.0 h (median 65 s). A test question answers 22-29 distinct contexts,
the five full ones (1,300-3,000 tokens) included; answers are batched under a token budget
(``BATCH_TOKENS``), which halves their cost against a row cap alone. Both stages resume where they
stopped; a rerun gives the same scores and answers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from at2_rag.research.evaluation.metrics import sign_test_p  # noqa: E402

SOURCE = "../shared/data/nq_open_dev.jsonl.gz"
LISTS_DIR = "benchmarks/data/hard-retrieval"
LISTS_SUMMARY = "benchmarks/out/hard-retrieval-lists.json"
SPLITS = ("validation", "test")
BUDGETS = (1, 2, 3)
GRID = (0.0, 0.5, 1.0, 2.0, 5.0)
"""Rank weights tried on validation, with the support estimator's fitted weight (3.19, fitted on the train
split with MiniLM ranks)."""
BASELINES = ("retriever", "at2_only")
"""The methods every other method is paired against in the summary."""
LISTS_FORMAT = 1
DEFAULT_READER = "default"
"""Rows answered by the scorer itself (the bundled 135M model) name this reader; older rows name none."""
BATCH_TOKENS = 2048
"""Answers are batched while rows × longest prompt ≤ this, so short contexts are not padded to a full
context's length (1,300-3,000 tokens): 0.52× the time of a row cap of 8 alone, same answers, 32 prompts of
3 test questions; 4,096 measured 0.53×, one prompt at a time 0.58× (``benchmarks/answer_batching.py``)."""


# -- lists -------------------------------------------------------------------------------------------

def build(source: str, out_dir: str, summary_path: str, nq_rag: str | None, embedder=None) -> dict[str, Any]:
    """Write the lists file and its meta for the validation and test questions of ``source``; return
    (and write) the hit-rate summary. ``nq_rag``: the existing NQ-RAG data, to check ``minilm-k10`` against."""
    from at2_rag.app import first_stage as fs
    from at2_rag.research.data import file_sha256, split_of, write_jsonl

    rows, pool = fs.nq_pool(source)
    rows = [r for r in rows if split_of(r["id"]) in SPLITS]
    depth = max([fs.MERGE_DEPTH] + [c.k for c in fs.CONDITIONS.values()])
    dense = fs.minilm_hits([r["question"] for r in rows], pool, depth, embedder)
    lists = fs.build_lists(rows, pool, dense)
    for q, r in zip(lists, rows):
        q["split"] = split_of(r["id"])
    os.makedirs(out_dir, exist_ok=True)
    write_jsonl(os.path.join(out_dir, "lists.jsonl.gz"), lists)
    meta = {
        "format": LISTS_FORMAT,
        "source": os.path.basename(source),
        "source_sha256": file_sha256(source),
        "pool": len(pool),
        "resolve": "passage ids are at2_rag.app.first_stage.nq_pool(source)[1] ids: sha256(title + '\\n' + "
                   "text)[:12] of each question's gold passage, the ids data/nq_rag.jsonl.gz uses",
        "bm25": {"k1": fs.BM25_K1, "b": fs.BM25_B, "idf": "ln(1 + (N - df + 0.5) / (df + 0.5))",
                 "tokens": "lower-cased \\w+ runs, no stemming, no stop words", "text": "title + '. ' + text"},
        "merge": {"rrf_k": fs.RRF_K, "depth": fs.MERGE_DEPTH, "lists": ["minilm", "bm25"]},
        "conditions": {name: {"retriever": c.retriever, "k": c.k} for name, c in fs.CONDITIONS.items()},
    }
    with open(os.path.join(out_dir, "meta.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
        fh.write("\n")
    summary = lists_summary(lists, meta)
    if nq_rag and os.path.exists(nq_rag):
        summary["minilm_k10_vs_nq_rag"] = check_against_nq_rag(lists, nq_rag)
    os.makedirs(os.path.dirname(summary_path) or ".", exist_ok=True)
    with open(summary_path, "w") as fh:
        json.dump(summary, fh, indent=1)
        fh.write("\n")
    print_lists_summary(summary)
    return summary


def lists_summary(lists: Sequence[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Per split and condition: questions, gold passage first / in the top 3 / in the list."""
    from at2_rag.app.first_stage import hit_rates

    out: dict[str, Any] = {key: meta[key] for key in ("source", "source_sha256", "pool", "bm25", "merge")}
    out["splits"] = {}
    for split in SPLITS:
        rows = [q for q in lists if q["split"] == split]
        out["splits"][split] = {name: hit_rates(rows, name) for name in meta["conditions"]}
    return out


def check_against_nq_rag(lists: Sequence[dict[str, Any]], nq_rag: str) -> dict[str, int]:
    """How many questions' recomputed ``minilm-k10`` list equals the stored NQ-RAG documents."""
    from at2_rag.research.data import read_jsonl

    stored = {e["id"]: [d["id"] for d in e["documents"]] for e in read_jsonl(nq_rag)}
    compared = [q for q in lists if q["id"] in stored]
    same = sum(q["lists"]["minilm-k10"]["ids"] == stored[q["id"]] for q in compared)
    return {"questions": len(compared), "same_list": same}


def print_lists_summary(summary: dict[str, Any]) -> None:
    for split, conds in summary["splits"].items():
        n = next(iter(conds.values()))["questions"]
        print(f"\n{split}, {n} questions: retriever's gold hit rate (top 1 / top 3 / top k)")
        for name, h in conds.items():
            print(f"  {name:11s} {h['top1']:6.1%} {h['top3']:6.1%} {h['topk']:6.1%}")
    if "minilm_k10_vs_nq_rag" in summary:
        c = summary["minilm_k10_vs_nq_rag"]
        print(f"\nminilm-k10 equals the NQ-RAG data's list for {c['same_list']} of {c['questions']} questions")


def read_lists(lists_dir: str, split: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The meta and the per-question lists (one split, or all) written by :func:`build`."""
    from at2_rag.errors import InputError
    from at2_rag.research.data import open_text

    meta_path = os.path.join(lists_dir, "meta.json")
    if not os.path.exists(meta_path):
        raise InputError(f"no lists in {lists_dir}; write them with `python benchmarks/hard_retrieval.py --stage lists`")
    with open(meta_path) as fh:
        meta = json.load(fh)
    if meta.get("format") != LISTS_FORMAT:
        raise InputError(f"{meta_path} has format {meta.get('format')!r}, not {LISTS_FORMAT}; rewrite the lists")
    with open_text(os.path.join(lists_dir, "lists.jsonl.gz")) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return meta, [q for q in rows if split is None or q["split"] == split]


# -- keep sets (no model) ------------------------------------------------------------------------------

def adaptive_scores(at2: Sequence[float], retriever: Sequence[float]) -> list[float]:
    """Keep scores of the ``adaptive`` rule: standardized AT2 scores plus standardized retriever scores
    (higher = better). The retriever's lead over the other passages, in its own spread, is its say."""
    from at2_rag.ranking import standardized

    return [a + r for a, r in zip(standardized(at2), standardized(retriever))]


def weight_name(w: float) -> str:
    """A grid method's name: ``w=`` and the weight to 3 significant digits."""
    return f"w={w:.3g}"


def keep_sets(
    at2: Sequence[float],
    retriever: Sequence[float],
    rank_weight: float,
    *,
    budgets: Sequence[int] = BUDGETS,
    grid: Sequence[float] = (),
    tuned: float | None = None,
) -> dict[tuple[int, str], list[int]]:
    """The positions (into the list, retriever order) each method keeps at each budget, best first:
    ``{(budget, method): kept}``. ``at2``: support scores; ``retriever``: the retriever's scores."""
    from at2_rag import KeepPolicy, fused_scores

    ranks = list(range(len(at2)))
    scored = {"default": fused_scores(at2, rank_weight, ranks), "at2_only": list(at2),
              "adaptive": adaptive_scores(at2, retriever)}
    for w in grid:
        scored[weight_name(w)] = fused_scores(at2, w, ranks)
    if tuned is not None:
        scored["tuned"] = fused_scores(at2, tuned, ranks)
    out = {}
    for n in budgets:
        policy = KeepPolicy(top_k=n)
        out[(n, "retriever")] = ranks[:n]
        for method, scores in scored.items():
            out[(n, method)] = policy.select(scores)
    return out


# -- the pruning evaluation ----------------------------------------------------------------------------

def done_ids(path: str, split: str, reader: str = DEFAULT_READER, only: Sequence[str] | None = None) -> set[str]:
    """Ids of the questions a rows file already holds (none when it does not exist); rows of another
    split, answered by another reader (rows without one: the scorer) or over another set of conditions
    (``only``; rows without one: all) mean the wrong file."""
    from at2_rag.errors import InputError

    if not os.path.exists(path):
        return set()
    done = set()
    with open(path) as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                if row["split"] != split:
                    raise InputError(f"{path} holds {row['split']} rows; pass another --out for the {split} stage")
                if row.get("reader", DEFAULT_READER) != reader:
                    raise InputError(f"{path} holds rows answered by {row.get('reader', DEFAULT_READER)}; "
                                     f"pass another --out for reader {reader}")
                if row.get("only") != (list(only) if only else None):
                    raise InputError(f"{path} holds rows over conditions {row.get('only') or 'all'}; "
                                     f"pass another --out for conditions {','.join(only) if only else 'all'}")
                done.add(row["id"])
    return done


def chosen_weights(path: str | None) -> dict[str, float]:
    """The per-condition weights a validation summary (``--json``) chose; none without a path."""
    if not path:
        return {}
    with open(path) as fh:
        return {c: float(w) for c, w in json.load(fh)["chosen_weights"].items()}


def question_row(att, estimator, q: dict[str, Any], nq: dict[str, Any], passages: dict[str, dict[str, str]],
                 answer, *, rank_weight: float, grid: Sequence[float] = (), tuned: dict[str, float] | None = None,
                 reader=None, reader_name: str = DEFAULT_READER, only: Sequence[str] | None = None) -> dict[str, Any]:
    """One question's row: per condition whose list holds the gold passage, the support scores of its
    passages (one prefill, retriever order, ranks in metadata), what each method keeps and the reader's
    answer to it (the full context on test questions only). ``answer(prompts)`` answers a list of token-id
    prompts; each distinct context once. ``only``: evaluate just these conditions."""
    from at2_rag import RETRIEVAL_RANK_KEY
    from at2_rag.errors import InputError
    from at2_rag.research.ablation_data import support_documents
    from at2_rag.research.data import is_correct

    tuned = tuned or {}
    t0 = time.perf_counter()
    reader = reader or att
    row: dict[str, Any] = {"id": q["id"], "split": q["split"], "question": nq["question"], "answers": nq["answers"],
                           "reader": reader_name, **({"only": list(only)} if only else {}), "rank_weight": rank_weight, "grid": {weight_name(w): w for w in grid}, "conditions": {}}
    contexts: dict[tuple[str, str], tuple[str, ...]] = {}  # (condition, method@budget) -> passage ids
    for cond, lst in q["lists"].items():
        if lst["gold_rank"] is None or (only and cond not in only):
            continue
        ex = {"id": q["id"], "documents": [
            {**passages[pid], "metadata": {RETRIEVAL_RANK_KEY: r}} for r, pid in enumerate(lst["ids"])]}
        docs = support_documents(ex, len(lst["ids"]), "retriever")
        scored = att.score_query(nq["question"], docs, estimator=estimator, granularity="document")
        if scored.dropped_documents:
            raise InputError(f"{q['id']} {cond}: the prompt does not fit the model's window")
        at2 = scored.document_scores().tolist()
        tokens = [0] * len(docs)
        for src in scored.sources:
            tokens[src.document] += src.token_end - src.token_start
        kept = {f"{m}@{n}": idx for (n, m), idx in
                keep_sets(at2, lst["scores"], rank_weight, grid=grid, tuned=tuned.get(cond)).items()}
        if q["split"] == "test":  # validation only chooses weights: the full context's answer is not needed
            kept[f"full@{len(docs)}"] = list(range(len(docs)))
        for key, idx in kept.items():
            contexts[(cond, key)] = tuple(lst["ids"][i] for i in idx)
        row["conditions"][cond] = {"k": len(docs), "gold_rank": lst["gold_rank"], "tokens": tokens,
                                   "at2_scores": at2, "retriever_scores": lst["scores"], "kept": kept, "methods": {}}
    row["score_seconds"] = round(time.perf_counter() - t0, 1)
    prompts: dict[tuple[str, ...], list[int]] = {}
    for ids in contexts.values():
        if ids not in prompts:
            prompts[ids] = list(reader.prompt(nq["question"], [passages[i] for i in ids]).input_ids)
    answers = dict(zip(prompts, answer(list(prompts.values()))))
    for (cond, key), ids in contexts.items():
        c = row["conditions"][cond]
        idx = c["kept"][key]
        a = answers[ids]
        c["methods"][key] = {"answer": a, "correct": is_correct(a, nq["answers"]),
                             "tokens": sum(c["tokens"][i] for i in idx), "gold_kept": c["gold_rank"] in idx}
    row["distinct_contexts"] = len(prompts)
    return row


def parse_conditions(text: str | None, meta: dict[str, Any]) -> list[str] | None:
    """``--conditions``: the named conditions in the lists' order, or None (all) without a value."""
    from at2_rag.errors import InputError

    if not text:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in names if c not in meta["conditions"]]
    if unknown or not names:
        raise InputError(f"--conditions {text!r}: unknown {', '.join(unknown) or 'empty'}; "
                         f"choose from {','.join(meta['conditions'])}")
    return [c for c in meta["conditions"] if c in names]


def run(args) -> None:
    """The validation or test stage: append one row per question not yet in ``args.out``."""
    import torch
    from readers import answer_ids_batched

    from at2_rag import AT2Attributor
    from at2_rag.app.first_stage import nq_pool
    from at2_rag.errors import InputError
    from at2_rag.research.data import file_sha256

    torch.manual_seed(0)
    meta, lists = read_lists(args.lists, args.stage)
    if file_sha256(args.source) != meta["source_sha256"]:
        raise InputError(f"{args.source} is not the file the lists were built from; rebuild them (--stage lists)")
    rows, pool = nq_pool(args.source)
    by_id = {r["id"]: r for r in rows}
    passages = {p["id"]: p for p in pool}
    only = parse_conditions(args.conditions, meta)
    questions = [q for q in lists if any(c["gold_rank"] is not None for name, c in q["lists"].items()
                                         if not only or name in only)][: args.limit]
    reader_name = args.reader or DEFAULT_READER
    done = done_ids(args.out, args.stage, reader_name, only)
    todo = [q for q in questions if q["id"] not in done]
    tuned = chosen_weights(args.weights)
    print(f"{len(questions)} {args.stage} questions; {len(done)} done, {len(todo)} to go", flush=True)
    att = AT2Attributor.from_pretrained(max_new_tokens=32, device=args.device)
    est = att.query_estimator("default-support")
    rank_weight = est.rank_weight
    grid = tuple(sorted({*GRID, rank_weight})) if args.stage == "validation" else ()
    reader = (AT2Attributor.from_pretrained(args.reader, None, max_new_tokens=32, device=args.device)  # answers only
              if args.reader else att)

    def answer(prompts):
        return answer_ids_batched(reader, prompts, batch_size=args.batch_size, max_batch_tokens=args.batch_tokens or None)

    for q in todo:
        t0 = time.perf_counter()
        row = question_row(att, est, q, by_id[q["id"]], passages, answer, rank_weight=rank_weight, grid=grid,
                           tuned=tuned, reader=reader, reader_name=reader_name, only=only)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(q["id"], f"{row['seconds']}s ({row['score_seconds']}s scoring), {row['distinct_contexts']} answers,"
              " right at keep 1 (default):",
              {c: int(v["methods"]["default@1"]["correct"]) for c, v in row["conditions"].items()}, flush=True)


# -- summary -------------------------------------------------------------------------------------------

def paired(rs: Sequence[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    """Questions ``a`` answered right and ``b`` wrong (wins), the reverse (losses), two-sided sign test."""
    wins = sum(r[a]["correct"] and not r[b]["correct"] for r in rs)
    losses = sum(r[b]["correct"] and not r[a]["correct"] for r in rs)
    return {"wins": wins, "losses": losses, "p": sign_test_p(wins, losses)}


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per condition and budget: each method's accuracy, gold-kept rate and token share, paired against
    the baselines; with weight-grid rows, the weight chosen per condition."""
    conds = list(dict.fromkeys(c for r in rows for c in r["conditions"]))
    from at2_rag.errors import InputError

    readers = sorted({r.get("reader", DEFAULT_READER) for r in rows})
    if len(readers) > 1:
        raise InputError(f"rows answered by several readers ({', '.join(readers)}); summarize one reader's rows at a time")
    result: dict[str, Any] = {"questions": len(rows), "reader": readers[0] if readers else DEFAULT_READER,
                              "conditions": {}}
    for cond in conds:
        rs = [r["conditions"][cond] for r in rows if cond in r["conditions"]]
        ms = [r["methods"] for r in rs]
        names = [m for m in ms[0] if all(m in x for x in ms)]
        entry: dict[str, Any] = {"n": len(rs), "k": rs[0]["k"], "budgets": {}}
        for key in names:
            method, n = key.rsplit("@", 1)
            acc = statistics.fmean(float(x[key]["correct"]) for x in ms)
            t = {"accuracy": acc, "stderr": math.sqrt(acc * (1 - acc) / len(ms)),
                 "gold_kept": statistics.fmean(float(x[key]["gold_kept"]) for x in ms),
                 "token_share": statistics.fmean(x[key]["tokens"] / sum(r["tokens"]) for x, r in zip(ms, rs))}
            if method not in ("full", *BASELINES):
                for base in BASELINES:
                    if f"{base}@{n}" in names:
                        t[f"vs_{base}"] = paired(ms, key, f"{base}@{n}")
            slot = "full" if method == "full" else n
            entry["budgets"].setdefault(slot, {})[method] = t
        result["conditions"][cond] = entry
    grid = {name: w for r in rows for name, w in r.get("grid", {}).items()}
    fitted = rows[0]["rank_weight"] if rows else 0.0
    weights = _choose_weights(result, grid, fitted)
    if weights:
        result["chosen_weights"] = weights
    return result


def _choose_weights(result: dict[str, Any], grid: dict[str, float], fitted: float) -> dict[str, float]:
    """Per condition, the ``grid`` weight (``{method name: weight}``) with the highest mean accuracy over
    the budgets (ties: higher mean gold-kept rate, then the weight nearest the ``fitted`` one)."""
    out = {}
    for cond, entry in result["conditions"].items():
        tables = [t for b, t in entry["budgets"].items() if b != "full"]
        names = [m for m in tables[0] if m in grid] if tables else []
        ranked = sorted(
            (-statistics.fmean(t[m]["accuracy"] for t in tables), -statistics.fmean(t[m]["gold_kept"] for t in tables),
             abs(grid[m] - fitted), m)
            for m in names
        )
        if ranked:
            out[cond] = grid[ranked[0][3]]
    return out


def print_summary(result: dict[str, Any]) -> None:
    print(f"{result['questions']} questions, reader {result.get('reader', DEFAULT_READER)} "
          "(paired: wins-losses, two-sided sign-test p)")
    for cond, entry in result["conditions"].items():
        print(f"\n{cond}: {entry['n']} questions with the gold passage in the list")
        for budget, methods in entry["budgets"].items():
            label = f"all {entry['k']}" if budget == "full" else f"keep {budget}"
            print(f"  {label}")
            for m, t in methods.items():
                pairs = "  ".join(f"vs {b} {t[f'vs_{b}']['wins']:>3}-{t[f'vs_{b}']['losses']:<3} "
                                  f"p={t[f'vs_{b}']['p']:.3g}" for b in BASELINES if f"vs_{b}" in t)
                print(f"    {m:10s} {t['accuracy']:6.1%} ± {t['stderr']:.1%}  gold kept {t['gold_kept']:5.1%}  "
                      f"tokens {t['token_share']:5.1%}  {pairs}")
    if "chosen_weights" in result:
        print("\nrank weight chosen per condition:", result["chosen_weights"])


def summary(path: str, out_json: str | None) -> dict[str, Any]:
    with open(path) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    result = summarize(rows)
    print_summary(result)
    if out_json:
        with open(out_json, "w") as fh:
            json.dump(result, fh, indent=1)
            fh.write("\n")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["lists", "validation", "test"], default=None)
    ap.add_argument("--source", default=SOURCE, help="the NQ-Open file (questions, answers, the pool)")
    ap.add_argument("--nq-rag", default="data/nq_rag.jsonl.gz", help="lists: the NQ-RAG data to check minilm-k10 against")
    ap.add_argument("--lists", default=LISTS_DIR, help="the folder of lists.jsonl.gz and meta.json")
    ap.add_argument("--lists-summary", default=LISTS_SUMMARY)
    ap.add_argument("--limit", type=int, default=None, help="the first N questions of the split")
    ap.add_argument("--weights", default=None, help="test: the validation summary JSON whose chosen weights to use")
    ap.add_argument("--batch-size", type=int, default=8, help="answers: rows per padded batch")
    ap.add_argument("--batch-tokens", type=int, default=BATCH_TOKENS,
                    help="answers: rows × longest prompt per batch at most this (0: rows only)")
    ap.add_argument("--reader", default=None,
                    help="validation/test: a fetched model name that answers instead of the scorer (e.g. qwen2.5-coder-0.5b)")
    ap.add_argument("--conditions", default=None,
                    help="validation/test: only these conditions, comma-separated (e.g. bm25-k10,bm25-k20)")
    ap.add_argument("--device", default="cpu", help="validation/test: where the 135M model runs (cpu, cuda)")
    ap.add_argument("--out", default=None, help="validation/test: the rows file (appended; resumable)")
    ap.add_argument("--summary", default=None, help="a rows file to summarize")
    ap.add_argument("--json", default=None, help="with --summary: write the summary here")
    args = ap.parse_args(argv)
    if args.summary:
        summary(args.summary, args.json)
    elif args.stage == "lists":
        build(args.source, args.lists, args.lists_summary, args.nq_rag)
    elif args.stage in SPLITS:
        if not args.out:
            ap.error(f"--stage {args.stage} needs --out (the rows file)")
        run(args)
    else:
        ap.error("pass --stage lists|validation|test or --summary ROWS")


if __name__ == "__main__":
    main()
