"""Make the committed ablation outcomes (and time the batched engine against the per-example path).

Stages run in priority order under one time budget; each writes resumable shards, so a rerun with
the same ``--out`` continues where the last one stopped. Usage (one GPU call)::

    python benchmarks/outcomes_run.py --device cuda --tf32 --out OUT --budget 420

``--dry-run`` shrinks every stage to 2 examples and 4 masks (a CPU check of the script itself).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

STAGES = [
    # name, kind, split, k, limit, masks (train), max_new_tokens, granularity (sentence or token window)
    ("test-k5", "eval", "test", 5, 250, 0, 48, "sentence"),
    ("test-k10", "eval", "test", 10, 250, 0, 48, "sentence"),
    ("train-k5", "train", "train", 5, None, 32, 48, "sentence"),
    ("validation-k5", "eval", "validation", 5, 150, 0, 48, "sentence"),
    ("validation-k10", "eval", "validation", 10, 150, 0, 48, "sentence"),
    ("train-k5-tok4", "train", "train", 5, 400, 32, 48, 4),
    ("train-k10", "train", "train", 10, None, 32, 48, "sentence"),
    ("train-k5-long", "train", "train", 5, 400, 32, 128, "sentence"),
]
"""Every stage, in priority order. The committed folders (``benchmarks/data/outcomes``) hold the first
three (``train-k5``: its first 960 questions, on a GPU) and the first 64 questions of ``train-k5-tok4``
and ``train-k5-long`` (on a CPU, ``--limit 64``); copy them into ``--out`` to resume rather than remake."""

def engine_speed(att, data: str, k: int, n: int, max_batch_tokens: int) -> dict:
    """Examples per second of training data: the per-example path (``build_record``) vs the batched engine."""
    from at2_rag.research.ablation_data import build_record
    from at2_rag.research.data import read_selection
    from at2_rag.research.outcomes import outcome_records

    examples = read_selection(data, "train", n, "raise")
    sync = torch.cuda.synchronize if att.device.type == "cuda" else (lambda: None)
    outcome_records(att, examples[:2], kind="train", k=k, n_masks=32, max_batch_tokens=max_batch_tokens)  # warm-up
    sync()
    t = time.perf_counter()
    for ex in examples:
        build_record(att, ex, k=k, n_masks=32, p_keep=0.5, max_new_tokens=48, seed=0, batch_size=8)
    sync()
    before = time.perf_counter() - t
    t = time.perf_counter()
    outcome_records(att, examples, kind="train", k=k, n_masks=32, max_batch_tokens=max_batch_tokens)
    sync()
    after = time.perf_counter() - t
    return {"k": k, "examples": n, "per_example_path_ex_per_s": n / before, "engine_ex_per_s": n / after,
            "speedup": before / after}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/nq_rag.jsonl.gz")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="default", help="'default' or a fetched model's name (at2-rag fetch-model)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--tf32", action="store_true", help="TF32 matrix products (float32 storage and sums)")
    p.add_argument("--budget", type=float, default=420.0, help="seconds for every stage together")
    p.add_argument("--max-batch-tokens", type=int, default=16384)
    p.add_argument("--stages", default=",".join(s[0] for s in STAGES))
    p.add_argument("--speed-examples", type=int, default=8, help="examples per k for the engine timing (0: skip)")
    p.add_argument("--limit", type=int, default=None, help="at most this many questions per stage (a CPU-sized run)")
    p.add_argument("--contextcite-masks", type=int, default=64,
                   help="ContextCite surrogate masks of eval stages (fewer: the first of the same sequence)")
    p.add_argument("--train-masks", type=int, default=None, help="masks of train stages (the stage's own: 32)")
    p.add_argument("--shard-size", type=int, default=64, help="questions per shard (smaller: commit a slow run as it grows)")
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    start = time.monotonic()
    deadline = start + args.budget
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    from at2_rag import AT2Attributor
    from at2_rag.research.outcomes import eval_sets, generate_outcomes

    att = AT2Attributor.from_pretrained(args.model, None, device=args.device, dtype=args.dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = {"device": torch.cuda.get_device_name() if att.device.type == "cuda" else "cpu",
           "tf32": args.tf32, "dtype": args.dtype, "max_batch_tokens": args.max_batch_tokens, "stages": {}}
    if args.speed_examples:
        log["engine_speed"] = [engine_speed(att, args.data, k, 1 if args.dry_run else args.speed_examples,
                                            args.max_batch_tokens) for k in (5, 10)]
        print(json.dumps(log["engine_speed"]), flush=True)
    wanted = args.stages.split(",")
    for name, kind, split, k, limit, masks, new_tokens, granularity in STAGES:
        if name not in wanted:
            continue
        if args.limit is not None:
            limit = args.limit if limit is None else min(limit, args.limit)
        if args.train_masks is not None and masks:
            masks = args.train_masks
        if args.dry_run:
            limit, masks = 1, 4 if masks else 0
        t = time.monotonic()
        try:
            generate_outcomes(
                att, args.data, out / name, kind=kind, split=split, k=k, limit=limit, n_masks=masks or 32,
                max_new_tokens=new_tokens, max_batch_tokens=args.max_batch_tokens, deadline=deadline,
                progress=False, shard_size=2 if args.dry_run else args.shard_size, granularity=granularity,
                set_sizes=eval_sets(args.contextcite_masks),
            )
            status = "done"
        except TimeoutError as e:
            status = f"stopped: {e}"
        log["stages"][name] = {"status": status, "seconds": round(time.monotonic() - t, 1)}
        print(name, log["stages"][name], flush=True)
        (out / "run.json").write_text(json.dumps(log, indent=1))
        if status != "done":
            break
    (out / "run.json").write_text(json.dumps(log, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
