"""A small model citing for a bigger reader: does the bundled 135M model's attribution of a larger
model's answer agree with what the larger model actually used?

For each NQ-RAG test question (k = 5 passages in retriever order, whole passages as sources) the
*reader* (a fetched larger model, ``--reader``) answers greedily. The truth is the reader's own
document leave-one-out: the fall of its answer's logit-probability when each passage is removed
(k + 1 passes of the reader). Proxies, none of which runs the reader again:

- ``proxy_at2``        the bundled 135M model's AT2 (shipped answer estimator) on the reader's answer:
                       one 135M pass — what ``AT2CitedAnswer`` / ``AT2CitationQueryEngine`` do with an
                       API model's answer;
- ``proxy_avg``        the 135M model's average attention on the same pass (no estimator);
- ``minilm``           cosine similarity of the answer and each passage (bundled MiniLM; no LM);
- ``reader_avg``       the reader's own average attention while it answered (zero extra passes; no
                       estimator exists for it yet) — what the reader could say of itself for free.

Per question: top-1 agreement with leave-one-out (the most-used passage), Spearman correlation over
the k passages; paired sign tests of ``proxy_at2`` against each other proxy. Rows appended per question
(resumable).

    python benchmarks/proxy_citations.py --reader qwen2.5-coder-0.5b --limit 60 \\
        --out benchmarks/out/proxy-citations-0.5b-test.jsonl
    python benchmarks/proxy_citations.py --summary benchmarks/out/proxy-citations-0.5b-test.jsonl \\
        --json benchmarks/out/proxy-citations-0.5b-test.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from at2_rag.research.evaluation.metrics import mean_and_stderr, sign_test_p  # noqa: E402

PROXIES = ("proxy_at2", "proxy_avg", "minilm", "reader_avg")


def run(args) -> None:
    import torch
    from pruning_eval import pending_questions

    from at2_rag import AT2Attributor
    from at2_rag.app.retrieval import passage_text
    from at2_rag.documents import as_document
    from at2_rag.embeddings import MiniLMEmbedder
    from at2_rag.research.ablation_data import support_documents
    from at2_rag.research.data import is_correct
    from at2_rag.research.evaluation.methods import EvalExample, LeaveOneOut

    torch.manual_seed(0)
    todo = pending_questions(args.data, "test", args.limit, args.out)
    if not todo:
        return
    reader = AT2Attributor.from_pretrained(args.reader, None, max_new_tokens=args.max_new_tokens)
    small = AT2Attributor.from_pretrained("default")
    small_avg = small.with_estimator(None)
    embedder = MiniLMEmbedder()
    loo = LeaveOneOut(batch_size=args.batch_size)
    for ex in todo:
        docs = support_documents(ex, args.k, "retriever")
        q = ex["question"]
        gen = reader.generate(q, docs, granularity="document")
        row = {"id": ex["id"], "question": q, "answers": ex["answers"], "reader": args.reader, "k": args.k,
               "answer": gen.answer, "correct": is_correct(gen.answer, ex["answers"]),
               "gold_positions": [i for i, d in enumerate(docs) if d["id"] in set(ex["gold_document_ids"])]}
        if not gen.answer.strip() or gen.dropped_documents:
            row["skipped"] = "empty answer" if not gen.answer.strip() else "documents dropped for the window"
        else:
            truth = loo.attribute(reader, EvalExample(ex["id"], q, gen.prompt, gen.answer, gen.answer_ids))
            vecs = embedder.encode([gen.answer] + [passage_text(as_document(d)) for d in docs])
            row["scores"] = {
                "loo": truth.scores.tolist(),
                "proxy_at2": small.attribute(q, docs, gen.answer, granularity="document").document_scores().tolist(),
                "proxy_avg": small_avg.attribute(q, docs, gen.answer, granularity="document").document_scores().tolist(),
                "minilm": (vecs[1:] @ vecs[0]).tolist(),
                "reader_avg": gen.document_scores().tolist(),
            }
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(ex["id"], row.get("skipped", "ok"), flush=True)


def _spearman(a: list[float], b: list[float]) -> float:
    import torch

    from at2_rag.research.evaluation.metrics import spearman

    return spearman(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))


def _argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


def summary(path: str, out_json: str | None) -> dict:
    """Top-1 agreement and Spearman correlation with the reader's leave-one-out, per proxy, with paired
    sign tests of ``proxy_at2`` against the others (top-1: questions one gets right and the other not;
    Spearman: questions where one correlates higher)."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    used = [r for r in rows if "scores" in r]
    table: dict[str, dict] = {}
    top1 = {p: [int(_argmax(r["scores"][p]) == _argmax(r["scores"]["loo"])) for r in used] for p in PROXIES}
    rho = {p: [_spearman(r["scores"][p], r["scores"]["loo"]) for r in used] for p in PROXIES}
    for p in PROXIES:
        m, se = mean_and_stderr(rho[p])
        entry = {"top1_agreement": statistics.fmean(top1[p]) if used else float("nan"), "spearman": m,
                 "spearman_stderr": se}
        if p != "proxy_at2":
            w = sum(a and not b for a, b in zip(top1["proxy_at2"], top1[p]))
            lo = sum(b and not a for a, b in zip(top1["proxy_at2"], top1[p]))
            entry["at2_vs_this_top1"] = {"wins": w, "losses": lo, "p": sign_test_p(w, lo)}
            w = sum(a > b for a, b in zip(rho["proxy_at2"], rho[p]))
            lo = sum(b > a for a, b in zip(rho["proxy_at2"], rho[p]))
            entry["at2_vs_this_spearman"] = {"wins": w, "losses": lo, "p": sign_test_p(w, lo)}
        table[p] = entry
    loo_gold = [int(_argmax(r["scores"]["loo"]) in r["gold_positions"]) for r in used if r["gold_positions"]]
    result = {"questions": len(rows), "attributed": len(used), "reader": rows[0]["reader"] if rows else None,
              "k": rows[0]["k"] if rows else None, "reader_correct": statistics.fmean(r["correct"] for r in rows),
              "loo_top_is_gold": statistics.fmean(loo_gold) if loo_gold else None, "proxies": table}
    if out_json:
        with open(out_json, "w") as fh:
            json.dump(result, fh, indent=1)
    print(f"{len(used)} of {len(rows)} questions attributed (reader {result['reader']}, k = {result['k']}, "
          f"its answer correct {result['reader_correct']:.0%}, leave-one-out's top passage gold "
          f"{result['loo_top_is_gold'] or 0:.0%})")
    for p, e in table.items():
        tests = ""
        if "at2_vs_this_top1" in e:
            t, s = e["at2_vs_this_top1"], e["at2_vs_this_spearman"]
            tests = (f"proxy_at2 vs this: top-1 {t['wins']}-{t['losses']} p={t['p']:.3g}, "
                     f"Spearman {s['wins']}-{s['losses']} p={s['p']:.3g}")
        print(f"  {p:12s} top-1 {e['top1_agreement']:6.1%}  Spearman {e['spearman']:+.3f} ± "
              f"{e['spearman_stderr']:.3f}  {tests}")
    return result


def main() -> None:
    from pruning_eval import run_or_summarise

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/nq_rag.jsonl.gz")
    ap.add_argument("--reader", default="qwen2.5-coder-0.5b", help="the larger model that answers (a fetched name)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=6)
    ap.add_argument("--out", default="benchmarks/out/proxy-citations-0.5b-test.jsonl")
    run_or_summarise(ap, run, summary)


if __name__ == "__main__":
    main()
