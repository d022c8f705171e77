"""Plot LDS against cost (forward passes, log scale) for every method in an ``at2-rag evaluate`` summary.

    python benchmarks/evaluation_plot.py benchmarks/out/evaluate-test.json benchmarks/evaluation-lds-cost.png ["label"]

The optional label (e.g. the machine) is added to the title.
"""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(summary_path: str, png: str, machine: str = "") -> None:
    summary = json.load(open(summary_path))["summary"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, s in summary.items():
        passes = s["forward_passes"]["mean"]
        x = passes if passes > 0 else 0.5  # methods with no LM pass sit left of 1, labelled so
        label = name if passes > 0 else f"{name} (no LM pass)"
        ax.errorbar(x, s["lds"]["mean"], yerr=s["lds"]["stderr"], fmt="o", capsize=3, label=label)
    ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("forward passes per example (log scale)")
    ax.set_ylabel("LDS (Spearman, 32 fresh ablations)")
    n = next(iter(summary.values()))["n"]
    suffix = f", {machine}" if machine else ""
    ax.set_title(f"Faithfulness vs cost, NQ-RAG test split ({n} examples{suffix})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main(*sys.argv[1:4])
