"""Fit the support estimator from support shards and choose its options on validation.

Fits per-head weights on the train shards' question-row features against reference-answer
ablation targets, raw and content-free-calibrated; compares both (and uniform weights and the
shipped query estimator, raw and calibrated) on validation by Pearson correlation with the held-out
targets and by how often the gold passage scores first (k = 10, retriever and shuffled order).
The calibration with the higher validation Pearson is kept. A logistic model on the train split,
P(gold | z-scored support score, log(1 + retriever rank)), gives the retriever-rank weight of the
fused keep score. Writes the estimator and a JSON report.

    python benchmarks/train_support.py --shards .gpu/run1/run/support \
        --out at2_rag/estimators/default-support.safetensors --report benchmarks/out/support-estimator.json
"""

from __future__ import annotations

import argparse
import json

import torch

from at2_rag.estimator import Estimator
from at2_rag.research.fitting import fit_estimator, make_instances
from at2_rag.research.shards import load_records
from at2_rag.research.support_fit import fit_rank_weight, gold_first, support_pearson

STEPS = 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default=".gpu/run1/run/support")
    ap.add_argument("--out", default="at2_rag/estimators/default-support.safetensors")
    ap.add_argument("--report", default="benchmarks/out/support-estimator.json")
    args = ap.parse_args()

    train = load_records(f"{args.shards}/train")
    val = load_records(f"{args.shards}/validation")
    recipe_data = json.load(open(f"{args.shards}/train/recipe.json"))
    shipped_query = Estimator.load("default-query")
    n_w = shipped_query.weights.numel()
    candidates = {"uniform": torch.full_like(shipped_query.weights, 1 / n_w), "shipped query": shipped_query.weights}
    report = {"train_examples": len({m["id"] for _, m in train}), "train_records": len(train),
              "validation_records": len(val), "methods": {}}
    fitted = {}
    for calibrated in (False, True):
        tr = make_instances(train, "query", calibrated=calibrated)
        va = make_instances(val, "query", calibrated=calibrated)
        weights, history = fit_estimator(tr, va, steps=STEPS, log=None)
        fitted[calibrated] = (weights, history[-1]["val_pearson"], len(tr))
        candidates[f"support{' (calibrated)' if calibrated else ''}"] = weights
    for name, weights in candidates.items():
        for calibrated in (False, True):
            if name.startswith("support") and calibrated != name.endswith("(calibrated)"):
                continue
            row = {"val_pearson": support_pearson(weights, val, calibrated)}
            for order in ("retriever", "shuffled"):
                row[f"gold_first_{order}"], row["n"] = gold_first(val, weights, calibrated, k=10, order=order)
            report["methods"][f"{name}{', calibrated' if calibrated and not name.startswith('support') else ''}"] = row
    for order in ("retriever", "shuffled"):
        rows = [m for _, m in val if m["k"] == 10 and m["order"] == order and m["gold_positions"]]
        report["methods"].setdefault("retriever rank", {})[f"gold_first_{order}"] = (
            sum(0 in [m["retriever_ranks"][p] for p in m["gold_positions"]] for m in rows) / len(rows))
    calibrated = fitted[True][1] > fitted[False][1]
    weights, val_pearson, n_inst = fitted[calibrated]
    fusion = fit_rank_weight(train, weights, calibrated, k=10)
    report["chosen"] = {"calibration": "content-free" if calibrated else None, "val_pearson": val_pearson,
                        "fusion": fusion}
    est = Estimator(
        weights,
        shipped_query.model,
        "query",
        {
            "method": "negative-pearson", "target": "reference answer (support)", "data": recipe_data,
            "examples": report["train_examples"], "instances": n_inst, "fit": {"steps": STEPS, "lr": 1e-3,
            "batch_size": 512}, "validation": {"pearson": val_pearson, **report["methods"][
                "support (calibrated)" if calibrated else "support"]},
            "fusion": fusion,
        },
        "content-free" if calibrated else None,
    )
    est.save(args.out)
    with open(args.report, "w") as fh:
        json.dump(report, fh, indent=1)
    for name, row in report["methods"].items():
        print(f"{name:32s} " + "  ".join(f"{k}={v:.3f}" for k, v in row.items() if k != "n"))
    print("chosen:", json.dumps(report["chosen"]))


if __name__ == "__main__":
    main()
