"""Calibrate pruning scores into a 0-1 chance that a passage is the one that answers; test once.

The framework components report ``relevance_score`` (LangChain) and ``node.score`` (LlamaIndex) on
this scale, and their ``threshold`` compares it. The map is a softmax over the retrieved list of
``slope · keep`` where ``keep = z(AT2 score) − rank_weight · log(1 + retriever rank)`` (``rank_weight``
0 when no rank is known): monotone in the keep score, one number per (estimator, rank weight),
:class:`at2_rag.relevance.RelevanceMap`.

Label: the passage is the question's gold passage (NQ's annotated answering passage). Not "contains a
reference answer": 4.4% of the non-gold validation passages contain an answer string (years, numbers,
names that recur in unrelated passages), so that label would reward coincidental matches.

``--stage fit`` (seconds, no model run): validation questions only. The question-row features of
the committed support run (``benchmarks/data/support-run/support/validation``: 360 questions, top-10
passages in retriever and shuffled order; features equal those ``Pruner`` computes, to fp16) give each
passage's support and query score. The slope of each map is fitted by maximum likelihood (per-passage
log-loss); 5-fold cross-validation by question gives the validation numbers. Writes the maps (and this
recipe) to ``at2_rag/estimators/relevance.json`` and the report to ``benchmarks/out/calibration.json``.

``--stage test`` (the real model on the CPU, 270 prefills: 40 minutes on a busy 2-core machine; run once): test questions, passages in
shuffled order — top-10 (150 questions), top-5 (80: a list length the maps never saw) and top-10 without
the gold passage (40: nothing answers, which the maps cannot know); one prefill per list. Adds
expected calibration error (10 equal-width bins), Brier score and log-loss for the calibrated scores
next to the per-call min-max of the same keep scores (the adapters' former ``relevance_score``), and
writes the reliability diagram ``benchmarks/calibration.png``. ``--stage plot`` redraws it from the JSON.

    python benchmarks/calibration.py --stage fit
    python benchmarks/calibration.py --stage test
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from at2_rag.estimator import Estimator
from at2_rag.ranking import fused_scores, standardized
from at2_rag.relevance import RELEVANCE_FORMAT, RELEVANCE_FORMAT_VERSION, RelevanceMap, weights_fingerprint
from at2_rag.research.data import normalize_answer, read_jsonl

SHARDS = "benchmarks/data/support-run/support/validation"
DATA = "data/nq_rag.jsonl.gz"
MAPS_OUT = "at2_rag/estimators/relevance.json"
REPORT = "benchmarks/out/calibration.json"
PLOT = "benchmarks/calibration.png"
ESTIMATORS = ("default-support", "default-query")
TEST_CONDITIONS = {"top-10": (10, 150, False), "top-5": (5, 80, False), "top-10 without gold": (10, 40, True)}
"""Test lists: (passages retrieved, questions, gold passage removed)."""
BINS = 10
FOLDS = 5


# -- the fit -------------------------------------------------------------------------------------------
def map_lists(scores: Sequence[np.ndarray], ranks: Sequence[Sequence[int]], rank_weight: float) -> list[np.ndarray]:
    """Each list's map input (before the slope): z-scored scores, minus the rank term when fused."""
    if rank_weight > 0:
        return [np.array(fused_scores(s.tolist(), rank_weight, list(r))) for s, r in zip(scores, ranks)]
    return [np.array(standardized(s.tolist())) for s in scores]


def softmax_lists(keep: Sequence[np.ndarray], slope: float) -> list[np.ndarray]:
    out = []
    for k in keep:
        e = np.exp(slope * k - np.max(slope * k))
        out.append(e / e.sum())
    return out


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def fit_slope(keep: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> float:
    """The softmax slope minimising per-passage log-loss: a log-spaced grid, then golden-section search."""
    y = np.concatenate(labels)

    def loss(log_slope: float) -> float:
        return log_loss(np.concatenate(softmax_lists(keep, math.exp(log_slope))), y)

    grid = np.linspace(math.log(0.01), math.log(50.0), 200)
    i = int(np.argmin([loss(g) for g in grid]))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if loss(a) < loss(b):
            hi = b
        else:
            lo = a
    return math.exp((lo + hi) / 2)


def min_max(keep: np.ndarray) -> np.ndarray:
    """The adapters' former relevance score: keep scores min-max scaled within the call."""
    low, high = keep.min(), keep.max()
    return np.ones_like(keep) if high == low else (keep - low) / (high - low)


def metrics(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Expected calibration error (equal-width bins), Brier score and log-loss of predictions ``p``."""
    bins = np.minimum((p * BINS).astype(int), BINS - 1)
    ece = sum(abs(p[bins == b].mean() - y[bins == b].mean()) * (bins == b).mean() for b in range(BINS) if (bins == b).any())
    return {"ece": float(ece), "brier": float(np.mean((p - y) ** 2)), "log_loss": log_loss(p, y),
            "mean_prediction": float(p.mean()), "positive_rate": float(y.mean()), "passages": int(len(p))}


def reliability(p: np.ndarray, y: np.ndarray) -> list[dict[str, float]]:
    """Per equal-width bin: mean prediction, observed frequency, passages."""
    bins = np.minimum((p * BINS).astype(int), BINS - 1)
    return [{"bin": b, "mean_prediction": float(p[bins == b].mean()), "frequency": float(y[bins == b].mean()),
             "passages": int((bins == b).sum())} for b in range(BINS) if (bins == b).any()]


def fold_of(example_id: str) -> int:
    return int(hashlib.sha256(example_id.encode()).hexdigest(), 16) % FOLDS


def validation_lists() -> dict[str, Any]:
    """Scores of both shipped estimators, ranks, labels and ids of every validation list."""
    from at2_rag.research.shards import load_records
    from at2_rag.research.support_fit import support_scores

    records = load_records(SHARDS)
    estimators = {name: Estimator.load(name) for name in ESTIMATORS}
    return {
        "scores": {name: [support_scores(est.weights, rec, est.calibration == "content-free") for rec in records]
                   for name, est in estimators.items()},
        "ranks": [m["retriever_ranks"] for _, m in records],
        "labels": [np.isin(np.arange(m["k"]), m["gold_positions"]).astype(float) for _, m in records],
        "ids": [m["id"] for _, m in records],
        "orders": sorted({f"k={m['k']} {m['order']}" for _, m in records}),
    }


def fit(args) -> None:
    data = validation_lists()
    labels, folds = data["labels"], np.array([fold_of(i) for i in data["ids"]])
    maps, report = [], []
    for name in ESTIMATORS:
        est = Estimator.load(name)
        for rank_weight in sorted({0.0, est.rank_weight}):
            keep = map_lists(data["scores"][name], data["ranks"], rank_weight)
            slope = fit_slope(keep, labels)
            oof: list[np.ndarray] = [np.empty(0)] * len(keep)
            for f in range(FOLDS):
                train = [i for i in range(len(keep)) if folds[i] != f]
                s = fit_slope([keep[i] for i in train], [labels[i] for i in train])
                for i in np.flatnonzero(folds == f):
                    oof[i] = softmax_lists([keep[i]], s)[0]
            y = np.concatenate(labels)
            maps.append({"estimator": name, "weights_sha256": weights_fingerprint(est), "rank_weight": rank_weight,
                         "slope": slope})
            report.append({"estimator": name, "rank_weight": rank_weight, "slope": slope,
                           "cross_validated": metrics(np.concatenate(oof), y),
                           "min_max": metrics(np.concatenate([min_max(k) for k in keep]), y)})
            print(f"{name} rank_weight={rank_weight:.3f}: slope {slope:.4f}; 5-fold ECE "
                  f"{report[-1]['cross_validated']['ece']:.4f} (min-max {report[-1]['min_max']['ece']:.4f})")
    recipe = {
        "script": "benchmarks/calibration.py --stage fit",
        "data": DATA, "features": SHARDS, "split": "validation",
        "questions": len(set(data["ids"])), "lists": len(data["ids"]), "orders": data["orders"],
        "label": "the passage is the question's gold passage",
        "map": "softmax over the list of slope * (z(score) - rank_weight * log(1 + rank))",
        "fit": "maximum likelihood of per-passage labels (log-loss), 1-D search over the slope",
    }
    shipped = {"format": RELEVANCE_FORMAT, "format_version": RELEVANCE_FORMAT_VERSION, "recipe": recipe, "maps": maps}
    write_json(args.maps, shipped)
    out = read_json(args.out)
    out.update({"recipe": recipe, "maps": maps, "validation": report})
    write_json(args.out, out)


# -- the test -------------------------------------------------------------------------------------------
def test_lists(condition: str, k: int, n: int, without_gold: bool) -> list[dict[str, Any]]:
    """The test lists of one condition: documents (shuffled), their retriever ranks and gold positions."""
    import random

    examples = [e for e in read_jsonl(DATA, split="test") if e.get("gold_rank") is not None and e.get("answers")]
    lists = []
    for ex in examples[:n]:
        gold = set(ex.get("gold_document_ids") or [])
        pool = [d for d in ex["documents"] if not (without_gold and d["id"] in gold)][:k]
        ids = [d["id"] for d in ex["documents"]]
        docs = list(pool)
        random.Random(f"calibration:{condition}:{ex['id']}").shuffle(docs)
        lists.append({"id": ex["id"], "question": ex["question"], "documents": docs,
                      "ranks": [ids.index(d["id"]) for d in docs],
                      "gold_positions": [i for i, d in enumerate(docs) if d["id"] in gold],
                      "answer_positions": [i for i, d in enumerate(docs) if any(
                          normalize_answer(a) and normalize_answer(a) in normalize_answer(d["text"]) for a in ex["answers"])]})
    return lists


def run_test(args) -> None:
    import torch

    from at2_rag import AT2Attributor, Pruner

    torch.manual_seed(0)
    att = AT2Attributor.from_pretrained()
    query = Estimator.load("default-query")
    rows = []
    t0 = time.time()
    for condition, (k, n, without_gold) in TEST_CONDITIONS.items():
        for j, item in enumerate(test_lists(condition, k, n, without_gold)):
            res = att.score_query(item["question"], item["documents"], estimator="default-support", keep_features=True)
            rows.append({"condition": condition, **{key: item[key] for key in ("id", "ranks", "gold_positions", "answer_positions")},
                         "default-support": res.document_scores().tolist(),
                         "default-query": query.source_scores(res.query_features).tolist()})
            if not rows[1:]:  # the runtime path gives the same chances as the map applied here
                docs = [{**d, "metadata": {"retrieval_rank": r}} for d, r in zip(item["documents"], item["ranks"])]
                pruned = Pruner(att).prune(item["question"], docs)
                rows[0]["pruner_relevance"] = pruned.relevance
            if j % 10 == 0:
                print(f"{condition}: {j + 1}/{n} ({time.time() - t0:.0f} s)", flush=True)
    out = read_json(args.out)
    out["test"] = {"conditions": {c: {"k": k, "questions": n, "without_gold": g} for c, (k, n, g) in TEST_CONDITIONS.items()},
                   "seconds": time.time() - t0, "rows": rows}
    out["test"]["results"] = test_results(out)
    write_json(args.out, out)
    plot(out, args.plot)


def test_results(report: dict[str, Any]) -> dict[str, Any]:
    """Calibration metrics of every shipped map on every test condition, next to min-max scaling."""
    rows = report["test"]["rows"]
    maps = [RelevanceMap(**m) for m in report["maps"]]
    first = rows[0]
    support = next(m for m in maps if m.estimator == "default-support" and m.rank_weight > 0)
    check = support.probabilities(first["default-support"], first["ranks"])
    results: dict[str, Any] = {"pruner_matches_map": bool(np.allclose(first["pruner_relevance"], check, atol=1e-4))}
    for condition in report["test"]["conditions"]:
        part = [r for r in rows if r["condition"] == condition]
        y = np.concatenate([np.isin(np.arange(len(r["ranks"])), r["gold_positions"]).astype(float) for r in part])
        for m in maps:
            p = [np.array(m.probabilities(r[m.estimator], r["ranks"])) for r in part]
            keep = map_lists([np.array(r[m.estimator]) for r in part], [r["ranks"] for r in part], m.rank_weight)
            name = f"{condition} | {m.estimator}, {'with rank' if m.rank_weight > 0 else 'no rank'}"
            results[name] = {
                "calibrated": metrics(np.concatenate(p), y), "min_max": metrics(np.concatenate([min_max(x) for x in keep]), y),
                "top_passage_mean_chance": float(np.mean([x.max() for x in p])),
                "top_passage_chance_at_least_half": float(np.mean([x.max() >= 0.5 for x in p])),
                "top_passage_is_gold": float(np.mean([int(np.argmax(x)) in r["gold_positions"] for x, r in zip(p, part)])),
                "top_passage_contains_answer": float(np.mean([int(np.argmax(x)) in r["answer_positions"]
                                                              for x, r in zip(p, part)])),
                "reliability": reliability(np.concatenate(p), y),
                "reliability_min_max": reliability(np.concatenate([min_max(x) for x in keep]), y),
            }
    return results


def plot(report: dict[str, Any], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["test"]["results"]
    panels = [c for c, spec in report["test"]["conditions"].items() if not spec["without_gold"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False)
    for ax, condition in zip(axes[0], panels):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
        for name, r in results.items():
            if not name.startswith(condition + " |"):
                continue
            label = name.split(" | ")[1]
            line = _reliability_line(ax, r["reliability"], "o-", None, f"{label}: ECE {r['calibrated']['ece']:.3f}")
            line.set_alpha(0.9)
            if "default-support, with rank" in name:
                _reliability_line(ax, r["reliability_min_max"], "s--", "black",
                                  f"min-max per call (former): ECE {r['min_max']['ece']:.3f}").set_alpha(0.6)
        n = report["test"]["conditions"][condition]["questions"]
        ax.set_title(f"NQ-RAG test, {condition} shuffled ({n} questions)", fontsize=10)
        ax.set_xlabel("predicted chance the passage is the gold passage\n(marker area: passages in the bin)")
        ax.set_ylabel("observed frequency")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def _reliability_line(ax, points: list[dict[str, float]], style: str, color: str | None, label: str):
    """One reliability curve; each bin's marker area grows with the passages it holds."""
    xs, ys = [b["mean_prediction"] for b in points], [b["frequency"] for b in points]
    (line,) = ax.plot(xs, ys, style, lw=1, ms=0, color=color, label=label)
    total = sum(b["passages"] for b in points)
    ax.scatter(xs, ys, s=[8 + 400 * math.sqrt(b["passages"] / total) for b in points], color=line.get_color(),
               marker=style[0], alpha=0.8, zorder=3)
    return line


# -- files ------------------------------------------------------------------------------------------------
def read_json(path: str) -> dict[str, Any]:
    return json.load(open(path)) if os.path.exists(path) else {}


def write_json(path: str, data: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("fit", "test", "plot"), required=True)
    ap.add_argument("--maps", default=MAPS_OUT, help="where the shipped maps go (fit)")
    ap.add_argument("--out", default=REPORT)
    ap.add_argument("--plot", default=PLOT)
    args = ap.parse_args()
    if args.stage == "fit":
        fit(args)
    elif args.stage == "test":
        run_test(args)
    else:
        report = read_json(args.out)
        report["test"]["results"] = test_results(report)
        write_json(args.out, report)
        plot(report, args.plot)


if __name__ == "__main__":
    main()
