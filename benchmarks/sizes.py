"""Faithfulness against model size: the same test questions and masks, scored for every rung.

    python benchmarks/sizes.py faithfulness     # LDS per rung, ContextCite-equivalent budgets, paired tests, plot

A rung is a model with committed ``eval`` outcomes at k = 5 (``benchmarks/data/outcomes/<rung>/test-k5``;
the bundled model's are ``benchmarks/data/outcomes/test-k5``). Only questions present in every rung, with
the same documents in the same order, are compared, so every difference is paired. Per rung: average
attention, AT2 with the rung's shipped estimator where one exists, AT2 + 4 and + 8 on that prior (on
average attention's where no estimator exists: ``avg+N``), ContextCite at 8..32 ablations, and
leave-one-out. Features are recomputed once per rung (one pass per question) and cached in
``data/features/<rung>``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUTCOMES = ROOT / "benchmarks" / "data" / "outcomes"
OUT = ROOT / "benchmarks" / "out"
RUNGS = {
    "default": OUTCOMES / "test-k5",
    "qwen2.5-coder-0.5b": OUTCOMES / "qwen2.5-coder-0.5b" / "test-k5",
    "qwen2.5-coder-1.5b": OUTCOMES / "qwen2.5-coder-1.5b" / "test-k5",
}
"""Each rung's test outcomes at k = 5 (a rung without a folder yet is skipped)."""
PARAMETERS = {"default": 135e6, "qwen2.5-coder-0.5b": 494e6, "qwen2.5-coder-1.5b": 1.54e9}
"""Published parameter counts (the plot's axis). Loaded from GGUF, the Qwen models' output layer is
untied from the embeddings, so they hold more tensors in memory (0.5B: 630M)."""
CC_GRID = tuple(range(8, 33, 4))
"""ContextCite budgets every rung's outcomes hold (the larger models' runs keep 32 surrogate masks)."""


def question_keys(name: str) -> list[set]:
    """Per shard file of a rung, its questions as ``(id, document ids in prompt order)``."""
    from at2_rag.research.outcomes import read_outcomes

    return [{(r["id"], tuple(r["document_ids"])) for r in read_outcomes(shard)[1]}
            for shard in sorted(RUNGS[name].glob("shard-*.jsonl.gz"))]


def rung_rows(name: str, data: str, shards: int):
    """``(record, whole-answer features)`` of a rung's first ``shards`` shard files, its parameter count
    and its model identity (features cost one pass per question, once)."""
    from at2_rag import AT2Attributor, ModelIdentity
    from at2_rag.research.features import cached_features

    att = AT2Attributor.from_pretrained(name, None)
    n_params = sum(p.numel() for p in att.model.parameters())
    rows = cached_features(att, RUNGS[name], data, ROOT / "data" / "features" / name / "test-k5", progress=False,
                           shards=shards)
    return [(r, f[:, :, -1]) for r, f, _ in rows], n_params, ModelIdentity.of(att.model)


def shipped_estimator(name: str):
    """The rung's shipped answer estimator, or None when it has none yet."""
    from at2_rag import Estimator
    from at2_rag.errors import EstimatorError

    try:
        return Estimator.load(name)
    except (EstimatorError, OSError, ValueError):
        return None


def rung_methods(est, uniform) -> list:
    from at2_rag.refine import DEFAULT_DESIGN, DEFAULT_STRENGTH
    from at2_rag.research.evaluation.offline import at2, at2_refined, contextcite, leave_one_out

    strength = DEFAULT_STRENGTH[DEFAULT_DESIGN]
    prior, tag = (est, "at2") if est is not None else (uniform, "avg")
    methods = [at2(uniform, "avg_attention")]
    if est is not None:
        methods.append(at2(est))
    methods += [at2_refined(prior, n, strength, name=f"{tag}+{n}") for n in (4, 8)]
    return methods + [contextcite(n) for n in CC_GRID] + [leave_one_out()]


def faithfulness(args) -> None:
    from at2_rag import Estimator
    from at2_rag.research.evaluation.metrics import equivalent_budget
    from at2_rag.research.evaluation.offline import evaluate_offline, sign_test

    present = [n for n, path in RUNGS.items() if (path / "recipe.json").is_file() and any(path.glob("shard-*"))]
    if not present:
        raise SystemExit("no rung has test outcomes yet; make them with benchmarks/outcomes_run.py")
    # Paired: questions every rung has, with the same documents in the same order.
    keys = {n: question_keys(n) for n in present}
    common = set.intersection(*(set().union(*k) for k in keys.values()))
    if args.limit is not None:
        common = set(sorted(common)[: args.limit])
    if not common:
        raise SystemExit("no test question is in every rung with the same documents; make their outcomes first")
    needed = {n: 1 + max(i for i, shard in enumerate(k) if shard & common) for n, k in keys.items()}
    loaded = {n: rung_rows(n, args.data, needed[n]) for n in present}
    out = {"questions": len(common), "k": 5, "rungs": {}}
    print(f"{len(common)} test questions (k = 5) in every rung: {', '.join(present)}")
    for name, (rows, n_params, ident) in loaded.items():
        rows = sorted((rf for rf in rows if (rf[0]["id"], tuple(rf[0]["document_ids"])) in common),
                      key=lambda rf: rf[0]["id"])
        records, feats = [r for r, _ in rows], [f for _, f in rows]
        est = shipped_estimator("default" if name == "default" else name)
        uniform = Estimator(torch.ones(feats[0].shape[:2], dtype=torch.float32), ident, "answer")
        res = evaluate_offline(records, feats, rung_methods(est, uniform))
        cc = {n: res[f"contextcite:{n}"]["lds"] for n in CC_GRID}
        rung = {"parameters": PARAMETERS[name], "parameters_loaded": n_params, "estimator": est is not None,
                "correct": sum(r["correct"] for r in records),
                "sources": sum(len(r["sources"]) for r in records) / len(records), "methods": {}}
        print(f"\n{name} ({PARAMETERS[name] / 1e6:.0f}M parameters; {rung['sources']:.1f} sources per question; "
              f"{rung['correct']}/{len(records)} answers correct)")
        for m, r in res.items():
            eq = equivalent_budget(cc, r["lds"]) if not m.startswith("contextcite") else None
            rung["methods"][m] = {"lds": r["lds"], "stderr": r["stderr"], "passes": r["passes"],
                                  "contextcite_equivalent": eq, "per_record": r["per_record"]}
            print(f"  {m:<16} LDS {r['lds']:.3f} ± {r['stderr']:.3f}  passes {r['passes']:5.1f}"
                  + (f"  = ContextCite-{eq:.1f}" if eq is not None else ""))
        out["rungs"][name] = rung
    names = list(out["rungs"])
    print("\npaired between rungs (sign test):")
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for m in ("avg_attention", "contextcite:16", "contextcite:32", "loo"):
                w, lo, p = sign_test(out["rungs"][b]["methods"][m]["per_record"], out["rungs"][a]["methods"][m]["per_record"])
                out.setdefault("paired", {})[f"{m}: {b} vs {a}"] = {"wins": w, "losses": lo, "p": p}
                print(f"  {m:<15} {b} vs {a}: {w} wins, {lo} losses, p = {p:.2g}")
    OUT.mkdir(exist_ok=True)
    (OUT / "sizes-faithfulness.json").write_text(json.dumps(out, indent=1))
    plot(out, ROOT / "benchmarks" / "sizes-lds.png")


def plot(out: dict, png: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # the numbers are written already; the plot is optional
        print(f"no plot: matplotlib is missing; pip install 'at2-rag[bench]' and rerun for {png.name}")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    series = ("avg_attention", "at2", "at2+8", "avg+8", "contextcite:16", "contextcite:32", "loo")
    for m in series:
        pts = [(r["parameters"], r["methods"][m]) for r in out["rungs"].values() if m in r["methods"]]
        if not pts:
            continue
        ax.errorbar([p for p, _ in pts], [v["lds"] for _, v in pts], yerr=[v["stderr"] for _, v in pts],
                    marker="o", capsize=3, label=m)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"LDS (k = 5, {out['questions']} paired test questions)")
    ax.set_title("Faithfulness against model size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=("faithfulness",))
    p.add_argument("--data", default=str(ROOT / "data" / "nq_rag.jsonl.gz"))
    p.add_argument("--limit", type=int, default=None, help="at most this many paired questions")
    args = p.parse_args(argv)
    {"faithfulness": faithfulness}[args.stage](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
