"""Cross-check our ContextCite surrogate against the published ``context-cite`` package's solver.

Same model, same sources, same keep-masks and the same ablation targets: the rows written by
``at2-rag evaluate`` with a ``contextcite:N`` method hold the targets, and the masks follow from
each example's seed. Both solvers fit them; we report the rank correlation of the two weight
vectors per example, and the largest absolute difference.

The package's top-level import downloads NLTK data and needs spaCy and datasets, so only its
``solver.py`` (numpy + scikit-learn) is loaded, straight from the wheel:

    pip download context-cite==0.0.4 --no-deps -d /tmp/cc
    python benchmarks/contextcite_crosscheck.py --rows benchmarks/out/evaluate-test.json.rows.jsonl \
        --wheel /tmp/cc/context_cite-0.0.4-py3-none-any.whl --n 32
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import zipfile

import numpy as np
import torch

from at2_rag.ablation import random_masks
from at2_rag.research.evaluation import fit_surrogate, spearman
from at2_rag.research.evaluation.methods import evaluation_seed


def their_solver(wheel: str):
    """``context_cite.solver.LassoRegression`` from the wheel, without the package's heavy imports."""
    folder = tempfile.mkdtemp()
    with zipfile.ZipFile(wheel) as z:
        z.extract("context_cite/solver.py", folder)
    spec = importlib.util.spec_from_file_location("cc_solver", f"{folder}/context_cite/solver.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LassoRegression()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", required=True)
    ap.add_argument("--wheel", required=True)
    ap.add_argument("--n", type=int, default=32, help="ablations per example (the first n of the row's targets)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    solver = their_solver(args.wheel)
    rows = [json.loads(line) for line in open(args.rows) if line.strip()]
    rows = [r for r in rows if len(r.get("surrogate_targets", [])) >= args.n]
    out = []
    for r in rows:
        masks = random_masks(args.n, r["sources"], 0.5, seed=evaluation_seed(r["id"], "contextcite")).numpy()
        y = np.asarray(r["surrogate_targets"][: args.n])
        ours, _ = fit_surrogate(masks, y, r["answer_tokens"])
        theirs, _ = solver.fit(masks, y, r["answer_tokens"])
        rho = spearman(torch.from_numpy(ours), torch.from_numpy(np.asarray(theirs, dtype=np.float64)))
        out.append({"id": r["id"], "spearman": rho, "max_abs_diff": float(np.max(np.abs(ours - theirs))),
                    "max_abs_weight": float(np.max(np.abs(theirs)))})
    rhos = [o["spearman"] for o in out if o["spearman"] == o["spearman"]]
    print(f"{len(out)} examples, n = {args.n} ablations each")
    print(f"rank correlation of weights: median {statistics.median(rhos):.4f}, mean {statistics.mean(rhos):.4f}, "
          f"min {min(rhos):.4f}; >= 0.99 on {sum(r >= 0.99 for r in rhos)} of {len(rhos)} examples "
          "(those with non-constant weights)")
    print(f"largest absolute weight difference: {max(o['max_abs_diff'] for o in out):.2e} "
          f"(largest weight: {max(o['max_abs_weight'] for o in out):.2e})")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
