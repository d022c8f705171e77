"""QA benchmark: does AT2 prune-and-regenerate answer better from less context?

For each NQ-RAG example (k retrieved passages in retriever order, default model, greedy answers):

- ``full``       answer from all k passages (this is also the draft of AT2 draft mode);
- ``at2_draft``  AT2 scores the passages from the draft's attention, keeps the best ``--keep``, regenerates;
- ``at2_query``  AT2 scores the passages from the question alone (query estimator), keeps ``--keep``, regenerates;
- ``embedding``  cosine similarity of each passage to the draft answer (MiniLM), best first within the
                 token budget AT2 draft mode kept for that example, regenerates;
- ``retriever``  the retriever's first passages within that same token budget, regenerates;
- ``gold``       the gold passage only (upper bound);  ``none``  no context at all (lower bound).

Accuracy: a normalised gold answer occurs in the normalised prediction (NQ-Open convention).
Rows are appended per example to ``--out`` (JSONL), so an interrupted run resumes where it stopped;
``--summary`` turns the rows into a table, a JSON summary and a plot.

    python benchmarks/qa.py --data data/nq_rag.jsonl.gz --split test --limit 100 --out benchmarks/out/qa-test.jsonl
    python benchmarks/qa.py --summary benchmarks/out/qa-test.jsonl --plot benchmarks/qa-accuracy.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

METHODS = ["full", "at2_draft", "at2_query", "embedding", "retriever", "gold", "none"]


def run(args) -> None:
    import torch

    from at2_rag import AT2Attributor, KeepPolicy, Pruner
    from at2_rag.app.retrieval import passage_text
    from at2_rag.embeddings import MiniLMEmbedder
    from at2_rag.prompts import Document
    from at2_rag.research.data import is_correct, read_jsonl

    examples = [e for e in read_jsonl(args.data, split=args.split) if e.get("gold_rank") is not None]
    examples = examples[: args.limit]
    from pruning_eval import done_ids

    done = done_ids(args.out)
    todo = [e for e in examples if e["id"] not in done]
    print(f"{len(examples)} examples with the gold passage retrieved; {len(done)} done, {len(todo)} to go", flush=True)
    if not todo:
        return
    torch.manual_seed(0)
    att = AT2Attributor.from_pretrained(args.model, max_new_tokens=args.max_new_tokens)
    draft = Pruner(att, mode="draft", policy=KeepPolicy(top_k=args.keep))
    query = Pruner(att, mode="query", policy=KeepPolicy(top_k=args.keep))
    embedder = MiniLMEmbedder()
    tok = att.tokenizer

    def gen(question, docs):
        t = time.perf_counter()
        answer = att.generate(question, docs).answer
        return answer, time.perf_counter() - t

    def no_context(question):
        t = time.perf_counter()
        ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        with torch.inference_mode():
            out = att.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=args.max_new_tokens, pad_token_id=tok.eos_token_id,
                                     temperature=None, top_p=None, top_k=None)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True), time.perf_counter() - t

    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for n, ex in enumerate(todo, 1):
        q, answers = ex["question"], ex["answers"]
        docs = [Document(text=d["text"], title=d.get("title"), id=d.get("id")) for d in ex["documents"][: args.k]]
        gold = [d for d in docs if d.id in set(ex["gold_document_ids"])]
        row = {"id": ex["id"], "question": q, "answers": answers, "gold_rank": ex["gold_rank"]}
        res = {}

        t = time.perf_counter()
        pd = draft.prune(q, docs)
        t_draft = time.perf_counter() - t
        lengths, total = pd.token_lengths, pd.total_tokens
        res["full"] = {"answer": pd.draft, "tokens": total, "seconds": t_draft, "kept": list(range(len(docs)))}
        budget = pd.kept_tokens

        a, s = gen(q, [docs[i] for i in pd.kept])
        res["at2_draft"] = {"answer": a, "tokens": budget, "seconds": t_draft + s, "kept": pd.kept}

        t = time.perf_counter()
        pq = query.prune(q, docs)
        t_query = time.perf_counter() - t
        a, s = gen(q, [docs[i] for i in pq.kept])
        res["at2_query"] = {"answer": a, "tokens": pq.kept_tokens, "seconds": t_query + s, "kept": pq.kept}

        t = time.perf_counter()
        vecs = embedder.encode([pd.draft or q] + [passage_text(d) for d in docs])
        sims = (vecs[1:] @ vecs[0]).tolist()
        kept = KeepPolicy(token_budget=budget).select(sims, lengths)
        t_emb = time.perf_counter() - t
        a, s = gen(q, [docs[i] for i in kept])
        res["embedding"] = {"answer": a, "tokens": sum(lengths[i] for i in kept), "seconds": t_draft + t_emb + s,
                            "kept": kept}

        kept = KeepPolicy(token_budget=budget).select([-i for i in range(len(docs))], lengths)
        a, s = gen(q, [docs[i] for i in kept])
        res["retriever"] = {"answer": a, "tokens": sum(lengths[i] for i in kept), "seconds": s, "kept": kept}

        a, s = gen(q, gold)
        res["gold"] = {"answer": a, "tokens": sum(lengths[docs.index(g)] for g in gold), "seconds": s}
        a, s = no_context(q)
        res["none"] = {"answer": a, "tokens": 0, "seconds": s}

        for m in res.values():
            m["correct"] = is_correct(m["answer"], answers)
        row["methods"] = res
        row["gold_kept"] = {m: any(docs[i].id in ex["gold_document_ids"] for i in res[m]["kept"])
                            for m in ("at2_draft", "at2_query", "embedding", "retriever")}
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"[{n}/{len(todo)}] " + " ".join(f"{m}={int(res[m]['correct'])}" for m in METHODS), flush=True)


def summary(path: str, plot: str | None, out_json: str | None) -> dict:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    n = len(rows)
    table = {}
    for m in METHODS:
        acc = [float(r["methods"][m]["correct"]) for r in rows]
        tokens = [r["methods"][m]["tokens"] for r in rows]
        frac = [r["methods"][m]["tokens"] / r["methods"]["full"]["tokens"] for r in rows]
        ratio = [r["methods"][m]["seconds"] / r["methods"]["full"]["seconds"] for r in rows]
        mean = statistics.fmean(acc)
        table[m] = {
            "accuracy": mean,
            "accuracy_stderr": math.sqrt(mean * (1 - mean) / n) if n > 1 else 0.0,
            "mean_tokens": statistics.fmean(tokens),
            "token_fraction": statistics.fmean(frac),
            "latency_ratio_median": statistics.median(ratio),
            "seconds_median": statistics.median(r["methods"][m]["seconds"] for r in rows),
        }
        if m in ("at2_draft", "at2_query", "embedding", "retriever"):
            table[m]["gold_kept"] = statistics.fmean(float(r["gold_kept"][m]) for r in rows)
    print(f"{n} examples")
    print(f"{'method':<11} {'accuracy':>15} {'ctx tokens':>10} {'kept':>6} {'gold kept':>9} {'latency':>8}")
    for m, t in table.items():
        gk = f"{t['gold_kept']:.0%}" if "gold_kept" in t else "-"
        print(f"{m:<11} {t['accuracy']:>8.1%} ± {t['accuracy_stderr']:.1%} {t['mean_tokens']:>10.0f} "
              f"{t['token_fraction']:>6.0%} {gk:>9} {t['latency_ratio_median']:>7.2f}x")
    result = {"examples": n, "methods": table}
    if out_json:
        with open(out_json, "w") as fh:
            json.dump(result, fh, indent=1)
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for m, t in table.items():
            ax.errorbar(t["mean_tokens"], t["accuracy"] * 100, yerr=t["accuracy_stderr"] * 100, fmt="o", capsize=3,
                        label=m)
        ax.legend(fontsize=8, loc="upper right")
        ax.set_xlabel("context tokens given to the final answer (mean)")
        ax.set_ylabel("answer accuracy (%)")
        ax.set_title(f"NQ-RAG {n} test questions, SmolLM2-135M-Instruct")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(plot, dpi=120)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/nq_rag.jsonl.gz")
    ap.add_argument("--split", default="test", choices=["train", "validation", "test"])
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--keep", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default="benchmarks/out/qa-test.jsonl")
    ap.add_argument("--summary", default=None, help="summarise this rows file instead of running")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.summary:
        summary(args.summary, args.plot, args.json)
    else:
        run(args)


if __name__ == "__main__":
    sys.exit(main())
