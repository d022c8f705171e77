"""How much support data a support estimator needs: the 135M model's learning curve on its committed shards.

The 0.5B model's support estimator is fitted on far less data than the shipped 135M one (CPU time).
This asks, on the 135M model whose 500 train questions x 16 masks are committed, what a smaller set
costs: the first N train questions with the first M masks of each, fitted exactly as ``fit-model``
fits its trained weights (``fit_support`` after holding out the last 15% of the N questions, without
the fall-back to the training-free signal, so each row is what training alone gives), scored on the committed
*validation* shards (k = 10, retriever and shuffled order) by how often the gold passage scores first
and by held-out Pearson, next to the training-free signal (uniform weights, content-free calibrated).
No model is run.

    python benchmarks/support_curve.py --json benchmarks/out/support-curve-135m.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from at2_rag.research.fit_model import holdout_split  # noqa: E402
from at2_rag.research.shards import load_records  # noqa: E402
from at2_rag.research.support_fit import fit_support, gold_first, support_pearson  # noqa: E402

SHARDS = "benchmarks/data/support-run/support"


def first_masks(records: list, m: int) -> list:
    """The records with only their first ``m`` ablations (masks and targets)."""
    return [({**t, "masks": t["masks"][:m], "targets": t["targets"][:m]}, meta) for t, meta in records]


def scores(weights: torch.Tensor, calibrated: bool, val: list) -> dict:
    """Validation gold-first rates (k = 10, both orders) and Pearson of one set of weights."""
    row = {"val_pearson": support_pearson(weights, val, calibrated)}
    for order in ("retriever", "shuffled"):
        row[f"gold_first_{order}"], row[f"n_{order}"] = gold_first(val, weights, calibrated, k=10, order=order)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", default=SHARDS)
    ap.add_argument("--questions", default="16,28,50,100,200,500", help="train questions, comma-separated")
    ap.add_argument("--masks", default="8,16", help="masks per record, comma-separated")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    train, val = load_records(f"{args.shards}/train"), load_records(f"{args.shards}/validation")
    ids = list(dict.fromkeys(m["id"] for _, m in train))
    shape = train[0][0]["query"].shape[:2]
    result = {"validation_questions": len({m["id"] for _, m in val}), "rows": [],
              "training_free": scores(torch.full(shape, 1.0 / (shape[0] * shape[1])), True, val)}
    print(f"training-free (uniform, calibrated): {result['training_free']}", flush=True)
    for n in (int(x) for x in args.questions.split(",")):
        keep = set(ids[:n])
        for m in (int(x) for x in args.masks.split(",")):
            records = first_masks([r for r in train if r[1]["id"] in keep], m)
            fit, held = holdout_split(records, 0.15, lambda r: r[1]["id"])
            weights, calibration, report = fit_support(fit, held, keep_training_free=False, log=None)
            row = {"questions": n, "masks": m, "calibration": calibration,
                   "holdout_pearson": report["holdout_pearson"], "rank_weight": report["fusion"]["rank_weight"],
                   **scores(weights, calibration == "content-free", val)}
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
