"""Validation report for the default model's estimators: LDS and top-k log-prob drop.

Methods: uniform weights (average attention), the trained answer estimator, the query estimator
(prefill rows only). LDS uses the stored ablations of each validation example (masks never seen in
fitting, examples never trained on); top-k drop runs fresh ablation passes.

    python benchmarks/estimators.py --shards data/gpu/validation --data data/nq_rag.jsonl.gz
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from tqdm import tqdm

from at2_rag import Estimator, load_model
from at2_rag.prompts import build_prompt, encode
from at2_rag.research.data import read_jsonl, shuffled_documents
from at2_rag.research.evaluation import lds, mean_and_stderr, topk_drop
from at2_rag.research.shards import load_records


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--answer-estimator", default="default")
    ap.add_argument("--query-estimator", default="default-query")
    ap.add_argument("--drop-limit", type=int, default=100, help="examples for the top-k drop")
    ap.add_argument("--out", default="benchmarks/out/estimators.json")
    args = ap.parse_args()

    records = load_records(args.shards)
    recipe = json.loads(open(f"{args.shards}/recipe.json").read())
    examples = {e["id"]: e for e in read_jsonl(args.data, split=recipe["split"])}
    model, tok = load_model("default")
    ans, qry = Estimator.load(args.answer_estimator), Estimator.load(args.query_estimator)
    uniform = Estimator.uniform(model)
    rows = []
    for i, (t, meta) in enumerate(tqdm(records, desc="examples")):
        whole = t["features"][:, :, -1]  # whole-answer features (L, H, S)
        scores = {"uniform": uniform.source_scores(whole), "at2-answer": ans.source_scores(whole), "at2-query": qry.source_scores(t["query"])}
        row = {"id": meta["id"], "correct": meta["correct"]}
        y = t["targets"][:, -1]
        for name, s in scores.items():
            row[f"lds/{name}"] = lds(s, t["masks"].bool(), y)
        # Document-level: is the gold document the top-scored one (sentence scores summed per doc)?
        docs = meta["document_ids"]
        gold = [j for j, d in enumerate(docs) if d in meta["gold_document_ids"]]
        if gold:
            src_doc = torch.tensor(meta["source_document"])
            for name, s in scores.items():
                per_doc = torch.zeros(len(docs)).index_add_(0, src_doc, s)
                row[f"gold_top1/{name}"] = float(int(per_doc.argmax()) in gold)
        if i < args.drop_limit:
            ex = examples[meta["id"]]
            prompt = build_prompt(tok, ex["question"], shuffled_documents(ex, recipe["k"], recipe["seed"]), "sentence")
            assert len(prompt.sources) == len(meta["source_document"])
            drops = topk_drop(model, prompt, encode(tok, meta["answer"]), scores, ks=(1, 3))
            for name, by_k in drops.items():
                for k, v in by_k.items():
                    row[f"drop{k}/{name}"] = v
        rows.append(row)
    summary = {}
    for key in sorted({k for r in rows for k in r if "/" in k}):
        m, se = mean_and_stderr([r[key] for r in rows if key in r])
        summary[key] = {"mean": m, "stderr": se, "n": sum(key in r for r in rows)}
    correct = [r for r in rows if r["correct"]]
    for name in ("uniform", "at2-answer", "at2-query"):
        key = f"gold_top1/{name}"
        vals = [r[key] for r in correct if key in r]
        summary[f"{key}/correct"] = {"mean": sum(vals) / max(1, len(vals)), "n": len(vals)}
    out = {"summary": summary, "rows": rows, "shards": args.shards, "time": time.strftime("%Y-%m-%d %H:%M")}
    import os

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"{'method':<12} {'LDS':>14} {'top-1 drop':>14} {'top-3 drop':>14} {'gold top-1':>10} {'gold top-1 (correct)':>20}")
    for name in ("uniform", "at2-answer", "at2-query"):
        def f(k, name=name):
            s = summary.get(f"{k}/{name}")
            return f"{s['mean']:.3f} ± {s['stderr']:.3f}" if s else "-"
        g = summary.get(f"gold_top1/{name}", {}).get("mean", float("nan"))
        gc = summary.get(f"gold_top1/{name}/correct", {})
        print(f"{name:<12} {f('lds'):>14} {f('drop1'):>14} {f('drop3'):>14} {g:>10.2f} {gc.get('mean', float('nan')):>12.2f} (n={gc.get('n')})")


if __name__ == "__main__":
    main()
