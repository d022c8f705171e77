"""Time to chunk large texts with ``chunk_text``: it must grow linearly (a 50 MB file in seconds).

Inputs: 1, 10 and 50 MB of one sentence per line (single line breaks, no blank lines: the case
that was quadratic), a 5 MB paragraph without newlines, and a 1 MB base64 "word" (cut at the cap).

    python benchmarks/chunking.py --out /tmp/chunking.json
    python benchmarks/chunking.py --sizes-mb 1 10 --reps 5 --out /tmp/chunking.json
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import statistics
import time
from pathlib import Path

from at2_rag.app.corpus import MAX_CHUNK_CHARS, chunk_text

LINE = "The glacier route is long and cold.\n"
MB = 1_000_000


def cases(sizes_mb: list[float]) -> list[tuple[str, str]]:
    """(name, text) of each input, in the order they are timed."""
    lines = [(f"{size:g} MB, one sentence per line", LINE * int(size * MB / len(LINE))) for size in sizes_mb]
    paragraph = ("5 MB, one paragraph, no newlines", LINE.replace("\n", " ") * (5 * MB // len(LINE)))
    blob = ("1 MB, one base64 word", base64.b64encode(bytes(range(256)) * (MB // 256)).decode()[:MB])
    return [*lines, paragraph, blob]


def measure(text: str, reps: int) -> dict:
    """Seconds per run of ``chunk_text(text)`` (best and median of ``reps``), and what it made."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        chunks = chunk_text(text)
        times.append(time.perf_counter() - start)
    return {
        "chars": len(text), "best_s": min(times), "median_s": statistics.median(times), "reps": reps,
        "chunks": len(chunks), "longest_chunk": max(b - a for a, b in chunks),
        "mb_per_s": len(text) / MB / min(times),
    }


def main() -> None:
    """Time every case, print a table and write the numbers as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mb", type=float, nargs="+", default=[1, 10, 50], help="one-line-per-sentence sizes")
    ap.add_argument("--reps", type=int, default=3, help="runs per case (best and median are reported)")
    ap.add_argument("--out", required=True, help="where to write the JSON")
    args = ap.parse_args()
    rows = []
    print(f"{'input':36} {'chars':>11} {'best s':>8} {'median s':>9} {'MB/s':>6} {'chunks':>8} {'longest':>8}")
    for name, text in cases(args.sizes_mb):
        row = {"input": name, **measure(text, args.reps)}
        rows.append(row)
        print(f"{name:36} {row['chars']:>11,} {row['best_s']:>8.2f} {row['median_s']:>9.2f} "
              f"{row['mb_per_s']:>6.1f} {row['chunks']:>8,} {row['longest_chunk']:>8,}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "max_chunk_chars": MAX_CHUNK_CHARS}
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
