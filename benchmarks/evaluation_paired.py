"""Paired checks on ``at2-rag evaluate`` rows: per-question wins, median seconds, and agreement of two runs.

    python benchmarks/evaluation_paired.py benchmarks/out/evaluate-gpu.json.rows.jsonl --wins at2,avg_attention
    python benchmarks/evaluation_paired.py benchmarks/out/evaluate-test.json.rows.jsonl \
        --against benchmarks/out/evaluate-gpu.json.rows.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics


def read(path: str) -> dict[str, dict]:
    rows = (json.loads(line) for line in open(path, encoding="utf-8") if line.strip())
    return {r["id"]: r for r in rows if "methods" in r}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("rows")
    ap.add_argument("--wins", help="A,B: on how many questions A's LDS is higher than B's")
    ap.add_argument("--against", help="another run's rows: largest LDS difference per method on shared questions")
    args = ap.parse_args()
    rows = read(args.rows)
    names = list(next(iter(rows.values()))["methods"])
    for name in names:
        secs = [r["methods"][name]["seconds"] for r in rows.values() if name in r["methods"]]
        print(f"{name:<16} median seconds per question {statistics.median(secs):.3f}")
    if args.wins:
        a, b = args.wins.split(",")
        both = [r for r in rows.values() if a in r["methods"] and b in r["methods"]]
        wins = sum(r["methods"][a]["lds"] > r["methods"][b]["lds"] for r in both)
        print(f"{a} LDS > {b} LDS on {wins} of {len(both)} questions")
    if args.against:
        other = read(args.against)
        shared = [i for i in rows if i in other]
        print(f"{len(shared)} shared questions; same sources and answer length on "
              f"{sum(rows[i]['sources'] == other[i]['sources'] and rows[i]['answer_tokens'] == other[i]['answer_tokens'] for i in shared)}")
        for name in names:
            diffs = [abs(rows[i]["methods"][name]["lds"] - other[i]["methods"][name]["lds"])
                     for i in shared if name in other[i]["methods"]]
            if diffs:
                print(f"{name:<16} largest |LDS difference| {max(diffs):.2e} over {len(diffs)} questions")


if __name__ == "__main__":
    main()
