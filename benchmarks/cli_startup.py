"""How long ``at2-rag --help`` takes: the package at a git revision (``--before``) against the working tree.

Each run is a fresh interpreter that calls the CLI's ``main(["--help"])`` (what the ``at2-rag`` script
does), timed from outside; the bare interpreter (``python -c pass``) is timed the same way as the floor.
The earlier package is read with ``git archive`` into a temporary folder; nothing in the checkout changes.

    OMP_NUM_THREADS=1 python benchmarks/cli_startup.py            # before = 1627184 (eager imports)
    OMP_NUM_THREADS=1 python benchmarks/cli_startup.py --runs 9 --before HEAD~3
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELP = ("import sys; sys.path.insert(0, sys.argv[1]); import at2_rag.app.cli as cli; "
        "assert cli.__file__.startswith(sys.argv[1]), cli.__file__; cli.main(['--help'])")
"""The package under ``sys.argv[1]`` first on the path (ahead of the editable install); ``--help`` exits 0."""


def seconds(argv: list[str]) -> float:
    """Wall-clock seconds of one run of ``argv`` (its output discarded); a failing run is an error."""
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def median_of(argv: list[str], runs: int) -> float:
    """The median of ``runs`` timings of ``argv``, after one untimed run (warms the file cache)."""
    seconds(argv)
    return statistics.median(seconds(argv) for _ in range(runs))


def export(revision: str, folder: Path) -> Path:
    """``at2_rag`` as it was at ``revision``, unpacked under ``folder`` (read with ``git archive``)."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision, "at2_rag"],
                         check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(folder, filter="data")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="1627184", help="the git revision to compare with (eager imports)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each (the median is reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = export(args.before, Path(tmp))
        floor = median_of([sys.executable, "-c", "pass"], args.runs)
        before = median_of([sys.executable, "-c", HELP, str(old)], args.runs)
        after = median_of([sys.executable, "-c", HELP, str(ROOT)], args.runs)
    print(f"at2-rag --help, median of {args.runs} runs (fresh interpreter each):")
    print(f"  before ({args.before}): {before:.2f} s")
    print(f"  after (working tree): {after:.2f} s")
    print(f"  python -c pass:       {floor:.2f} s")
    print(f"  after/before = {after / before:.3f}; above the bare interpreter: "
          f"{before - floor:.2f} s before, {after - floor:.2f} s after")


if __name__ == "__main__":
    main()
