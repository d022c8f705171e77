"""Prune-and-regenerate benchmark of the support pruner: keep policy chosen on validation, test once.

``--stage validation``: on validation questions (k = 10, retriever and shuffled order) the default scorer (support
estimator fused with retriever rank) keeps its best 1, 2 or 3 passages; the reader answers from
each; the policy with the highest accuracy (ties: fewer tokens) is the default.

``--stage test``: on test questions, k = 10 in retriever order and shuffled order, every method keeps
one passage (the default policy's budget) and the reader answers from it:
``default`` (support + retriever rank, through ``Pruner``; every document carries its retriever rank in
its metadata, so the shuffled order does not mislead it), ``support_only`` (same pass, rank weight 0:
no retriever information at all — the content-only row of the shuffled protocol), ``retriever`` (the retriever's top passage — identical to the embedding
filter on question similarity, since the retriever *is* exact MiniLM similarity), ``embedding_draft``
(MiniLM similarity to the full-context draft), ``at2_draft`` (the shipped answer estimator on the
draft's attention). ``full``, ``gold``, ``none`` answers and the drafts come from
``benchmarks/support_run.py`` (H200, float32); everything here runs on the CPU.
Rows are appended per question (resumable); ``--summary`` prints accuracies, token shares, paired
win/loss counts with two-sided sign-test p-values and kept-position histograms.

    python benchmarks/pruning_eval.py --stage validation --limit 100 --out benchmarks/out/prune-validation.jsonl
    python benchmarks/pruning_eval.py --stage test --limit 200 --out benchmarks/out/prune-test.jsonl
    python benchmarks/pruning_eval.py --summary benchmarks/out/prune-test.jsonl --plot benchmarks/prune-accuracy.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from at2_rag.research.evaluation.metrics import sign_test_p as sign_test  # noqa: E402

ORDERS = ("retriever", "shuffled")
TEST_METHODS = ("default", "support_only", "retriever", "embedding_draft", "at2_draft")




def done_ids(path: str) -> set[str]:
    """Ids of the questions a resumable rows file already holds (none when it does not exist)."""
    if not os.path.exists(path):
        return set()
    with open(path) as fh:
        return {json.loads(line)["id"] for line in fh if line.strip()}


def pending_questions(data: str, split: str, limit: int, out: str) -> list[dict]:
    """The first ``limit`` questions of ``split`` whose retrieved list holds a gold passage, less those the
    resumable rows file ``out`` already holds (the counts printed)."""
    from at2_rag.research.data import read_jsonl

    examples = [e for e in read_jsonl(data, split=split) if e.get("gold_rank") is not None][:limit]
    done = done_ids(out)
    todo = [e for e in examples if e["id"] not in done]
    print(f"{len(examples)} {split} questions; {len(done)} done, {len(todo)} to go", flush=True)
    return todo


def run_or_summarise(ap: argparse.ArgumentParser, run, summary) -> None:
    """A resumable benchmark's entry point: ``--summary ROWS [--json OUT]`` summarises a rows file,
    anything else runs (``run(args)``)."""
    ap.add_argument("--summary", default=None, help="summarise this rows file instead of running")
    ap.add_argument("--json", default=None, help="with --summary: write the summary here as JSON")
    args = ap.parse_args()
    if args.summary:
        summary(args.summary, args.json)
    else:
        run(args)


def load_gpu(run_dir: str):
    readers, drafts = {}, {}
    with open(os.path.join(run_dir, "readers.jsonl")) as fh:
        for line in fh:
            r = json.loads(line)
            readers[(r["id"], r["condition"])] = r["answer"]
    with open(os.path.join(run_dir, "drafts.jsonl")) as fh:
        for line in fh:
            r = json.loads(line)
            drafts[(r["id"], r["order"])] = r
    return readers, drafts


def run(args) -> None:
    import torch
    from readers import answer_ids_batched

    from at2_rag import RETRIEVAL_RANK_KEY, AT2Attributor, KeepPolicy, Pruner, fused_scores
    from at2_rag.research.ablation_data import support_documents
    from at2_rag.research.data import is_correct, read_jsonl

    torch.manual_seed(0)
    split = "validation" if args.stage == "validation" else "test"
    examples = [e for e in read_jsonl(args.data, split=split) if e.get("gold_rank") is not None][: args.limit]
    readers, drafts = load_gpu(args.gpu_run)
    done = done_ids(args.out)
    todo = [e for e in examples if e["id"] not in done]
    print(f"{len(examples)} {split} questions; {len(done)} done, {len(todo)} to go", flush=True)
    att = AT2Attributor.from_pretrained(max_new_tokens=32)
    embedder = None
    if args.stage == "test":
        from at2_rag.app.retrieval import passage_text
        from at2_rag.embeddings import MiniLMEmbedder

        embedder = MiniLMEmbedder()
    stored = {}
    if args.stage == "validation":
        # Validation scores come from the support run's stored question-row features (the same
        # features Pruner computes, there on the GPU), saving a CPU prefill per question and order.
        from at2_rag.research.ablation_data import load_records

        for t, m in load_records(os.path.join(args.gpu_run, "support", "validation")):
            stored[(m["id"], m["order"])] = t["query"]
        todo = [e for e in todo if (e["id"], "retriever") in stored]
    est = att.query_estimator("default-support")
    rank_weight = est.recipe["fusion"]["rank_weight"]
    for ex in todo:
        q, gold_ids = ex["question"], set(ex["gold_document_ids"])
        ranks = {d["id"]: r for r, d in enumerate(ex["documents"])}
        row = {"id": ex["id"], "question": q, "answers": ex["answers"], "orders": {}}
        contexts = {}  # (order, method) -> kept indices (into that order's documents)
        for order in ORDERS:
            # Every document carries its retriever rank, so fusion is the same in either order.
            docs = [{**d, "metadata": {RETRIEVAL_RANK_KEY: ranks[d["id"]]}} for d in support_documents(ex, 10, order)]
            if args.stage == "validation":
                scores = est.source_scores(stored[(ex["id"], order)]).tolist()
                fused = fused_scores(scores, rank_weight, [ranks[d["id"]] for d in docs])
                tokens = [src.token_end - src.token_start for src in att.prompt(q, docs).sources]
                for n in (1, 2, 3):
                    contexts[(order, f"top{n}")] = KeepPolicy(top_k=n).select(fused)
                row["orders"][order] = {"scores": scores, "keep_scores": fused, "tokens": tokens}
            else:
                pr = Pruner(att, policy=KeepPolicy(top_k=1)).prune(q, docs)
                fused = pr.keep_scores
                contexts[(order, "default")] = pr.kept
                contexts[(order, "support_only")] = KeepPolicy(top_k=1).select(pr.scores)
                contexts[(order, "retriever")] = [[d["id"] for d in docs].index(ex["documents"][0]["id"])]
                d = drafts[(ex["id"], order)]
                if d.get("answer_estimator"):
                    contexts[(order, "at2_draft")] = KeepPolicy(top_k=1).select(d["answer_estimator"])
                vecs = embedder.encode([d["draft"] or q] + [passage_text(x) for x in pr.documents])
                contexts[(order, "embedding_draft")] = KeepPolicy(top_k=1).select((vecs[1:] @ vecs[0]).tolist())
                row["orders"][order] = {"tokens": pr.token_lengths, "scores": pr.scores, "keep_scores": fused}
            row["orders"][order].update({
                "gold_positions": [i for i, x in enumerate(docs) if x["id"] in gold_ids],
                "doc_ids": [x["id"] for x in docs],
            })
        # One answer per distinct context (a single kept passage gives the same prompt in both orders).
        prompts, keys = {}, {}
        for (order, method), kept in contexts.items():
            docs = support_documents(ex, 10, order)
            key = tuple(docs[i]["id"] for i in kept)
            keys[(order, method)] = key
            if key not in prompts:
                by_id = {x["id"]: x for x in docs}
                prompts[key] = att.prompt(q, [by_id[i] for i in key]).input_ids
        answers = dict(zip(prompts, answer_ids_batched(att, list(prompts.values()), batch_size=args.batch_size)))
        for (order, method), kept in contexts.items():
            o = row["orders"][order]
            a = answers[keys[(order, method)]]
            o.setdefault("methods", {})[method] = {
                "kept": kept, "answer": a, "correct": is_correct(a, ex["answers"]),
                "tokens": sum(o["tokens"][i] for i in kept),
            }
        for order in row["orders"]:
            o = row["orders"][order]
            for cond in ("full10_" + order, "gold", "none"):
                if (ex["id"], cond) in readers:
                    a = readers[(ex["id"], cond)]
                    name = "full" if cond.startswith("full") else cond
                    o["methods"][name] = {"answer": a, "correct": is_correct(a, ex["answers"]), "device": "H200"}
            o["methods"]["full"]["tokens"] = sum(o["tokens"])
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(ex["id"], {f"{o[0]}:{m}": int(v["correct"]) for o in row["orders"].items()
                         for m, v in o[1]["methods"].items()}, flush=True)


def summary(path: str, out_json: str | None, plot: str | None = None) -> dict:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    result = {"questions": len(rows), "orders": {}}
    for order in ORDERS:
        rs = [r["orders"][order] for r in rows if order in r["orders"]]
        if not rs:
            continue
        methods = [m for m in rs[0]["methods"] if all(m in r["methods"] for r in rs)]
        table = {}
        for m in methods:
            acc = statistics.fmean(float(r["methods"][m]["correct"]) for r in rs)
            entry = {"accuracy": acc, "stderr": math.sqrt(acc * (1 - acc) / len(rs))}
            if "tokens" in rs[0]["methods"][m]:
                entry["token_share"] = statistics.fmean(r["methods"][m]["tokens"] / sum(r["tokens"]) for r in rs)
            if "kept" in rs[0]["methods"][m]:
                entry["gold_kept"] = statistics.fmean(
                    float(bool(set(r["methods"][m]["kept"]) & set(r["gold_positions"]))) for r in rs)
                hist = [0] * 10
                for r in rs:
                    for i in r["methods"][m]["kept"]:
                        hist[i] += 1
                entry["kept_positions"] = hist
            table[m] = entry
        ref = "default" if "default" in methods else methods[0]
        for m in methods:
            if m == ref:
                continue
            w = sum(r["methods"][ref]["correct"] and not r["methods"][m]["correct"] for r in rs)
            lo = sum(r["methods"][m]["correct"] and not r["methods"][ref]["correct"] for r in rs)
            table[m]["paired_vs_" + ref] = {"wins": w, "losses": lo, "sign_test_p": sign_test(w, lo)}
        gold_hist = [0] * 10
        for r in rs:
            for i in r["gold_positions"]:
                gold_hist[i] += 1
        result["orders"][order] = {"n": len(rs), "methods": table, "gold_positions": gold_hist}
        print(f"\n{order} order, {len(rs)} questions (paired against {ref}: wins-losses, sign-test p)")
        for m, t in table.items():
            pair = t.get("paired_vs_" + ref)
            ps = f"{pair['wins']:>3}-{pair['losses']:<3} p={pair['sign_test_p']:.3g}" if pair else ""
            share = f"{t['token_share']:.0%}" if "token_share" in t else "-"
            gk = f"{t['gold_kept']:.0%}" if "gold_kept" in t else "-"
            print(f"  {m:16s} {t['accuracy']:6.1%} ± {t['stderr']:.1%}  tokens {share:>4}  gold kept {gk:>4}  {ps}")
        for m, t in table.items():
            if "kept_positions" in t:
                print(f"  kept positions {m:16s} {t['kept_positions']}")
        print(f"  gold positions {'':16s} {gold_hist}")
    # Device check: where a CPU answer came from exactly the gold passage, the H200's batched
    # gold-only answer had the same prompt; the two texts should agree.
    same = n = 0
    for r in rows:
        for o in r["orders"].values():
            gold = o["methods"].get("gold")
            for m in o["methods"].values():
                if gold and "kept" in m and sorted(m["kept"]) == sorted(o["gold_positions"]):
                    n += 1
                    same += m["answer"] == gold["answer"]
    result["cpu_h200_identical_answers"] = {"identical": same, "compared": n}
    print(f"\nCPU answers from the gold passage alone equal to the H200 batched gold-only answer: {same} of {n}")
    if out_json:
        with open(out_json, "w") as fh:
            json.dump(result, fh, indent=1)
    if plot:
        _plot(result, plot)
    return result


def _plot(result: dict, path: str) -> None:
    """Accuracy against the share of the full context's tokens kept, one panel per document order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    orders = list(result["orders"])
    fig, axes = plt.subplots(1, len(orders), figsize=(6.0 * len(orders), 4.2), sharey=True, squeeze=False)
    for ax, order in zip(axes[0], orders):
        for m, t in result["orders"][order]["methods"].items():
            if "token_share" not in t:
                ax.axhline(t["accuracy"] * 100, ls=":", lw=1, color="grey")
                ax.annotate(m, (100.0, t["accuracy"] * 100), fontsize=7, color="grey", ha="right", va="bottom")
                continue
            ax.errorbar(t["token_share"] * 100, t["accuracy"] * 100, yerr=t["stderr"] * 100, fmt="o", capsize=3,
                        label=m)
        ax.set_title(f"{order} order, {result['orders'][order]['n']} questions")
        ax.set_xlabel("context tokens kept (% of all 10 passages)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel("answer accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["validation", "test"], default="validation")
    ap.add_argument("--data", default="data/nq_rag.jsonl.gz")
    ap.add_argument("--gpu-run", default="benchmarks/data/support-run")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=None)
    ap.add_argument("--summary", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="with --summary: accuracy vs kept tokens (PNG)")
    args = ap.parse_args()
    if args.summary:
        summary(args.summary, args.json, args.plot)
    else:
        run(args)


if __name__ == "__main__":
    main()
