"""Ablation data on a Ray cluster: each shard file is one Ray task, run by actors that load the model once.

The result is byte for byte what one process writes (each shard file is a fixed chunk of the examples,
seeded per example), and a worker that dies mid-shard leaves no partial file (shards are written
atomically); its actor is restarted and the shard retried, so the folder ends complete.

Point it at a cluster with GPU workers::

    # on the head machine (and `ray start --address=<head>:6379` on each GPU machine)
    ray start --head
    # here: every node needs at2-rag installed and the same paths for --data and --out (a shared disk)
    at2-rag train-data --model my/model --device cuda --data data.jsonl --out shards \\
        --ray <head>:6379 --ray-gpus-per-worker 1

``at2-rag evaluate --ray …`` spreads an evaluation the same way (:func:`evaluate_with_ray`), and
``at2-rag fit-model --ray …`` its ablation outcomes. ``--ray auto`` joins the cluster this machine already belongs to (``ray start`` was run here), ``--ray local``
starts a private one on this machine. ``--ray-workers`` defaults to the cluster's CPU count, or one worker per
``--ray-gpus-per-worker`` GPUs. Without Ray, ``--shard i/n`` splits the same work across any scheduler
(e.g. a SLURM array). Ray is imported only here, and only when used (``pip install "at2-rag[ray]"``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from ..errors import InputError
from .ablation_data import generate_support_data, generate_training_data
from .data import read_selection
from .outcomes import generate_outcomes
from .shards import shard_count

KINDS = {
    "training": generate_training_data,
    "support": generate_support_data,
    "outcomes": partial(generate_outcomes, kind="train"),
    "eval-outcomes": partial(generate_outcomes, kind="eval"),
}
"""The generators a worker can run, by name."""


def import_ray() -> Any:
    """The ``ray`` module, or an :class:`InputError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError('distributed data generation needs Ray: pip install "at2-rag[ray]"') from None
    return ray


class ShardWorker:
    """One Ray actor: loads the model once, then writes the shard files it is given."""

    def __init__(self, model: str, device: str | None, dtype: str | None, estimator: str | None = None) -> None:
        """Load ``model`` as ``AT2Attributor.from_pretrained`` does; data needs no estimator, evaluation does."""
        from ..attributor import AT2Attributor

        self.attributor = AT2Attributor.from_pretrained(model, estimator, device=device, dtype=dtype)

    def evaluate(self, data_path: str, methods: list[str], out: str, index: int, count: int,
                 options: dict[str, Any]) -> int:
        """Evaluate every ``count``-th example from the ``index``-th into its own rows file; the rows done."""
        from .evaluation import make_method, run_evaluation

        summary = run_evaluation(self.attributor, data_path, [make_method(m) for m in methods], out,
                                 shard=(index, count), progress=False, **options)
        return max(s["n"] for s in summary.values())

    def run(self, kind: str, data_path: str, out_dir: str, index: int, count: int, options: dict[str, Any]) -> str:
        """Write shard file ``index`` of ``count`` (skipped when already complete) and return its path."""
        paths = KINDS[kind](self.attributor, data_path, out_dir, **{**options, "shard": (index, count), "progress": False})
        return str(paths[0])


def _connect(ray: Any, address: str | None) -> None:
    """Join ``address`` (``"auto"``, ``"host:port"``, ``ray://…``; ``"local"`` or None: a private cluster)."""
    if ray.is_initialized():
        return
    ray.init(address=None if address in (None, "local") else address, include_dashboard=False)


def _default_workers(ray: Any, gpus_per_worker: float) -> int:
    """One worker per CPU of the cluster, or per ``gpus_per_worker`` GPUs when workers take GPUs."""
    resources = ray.cluster_resources()
    if gpus_per_worker > 0:
        workers = int(resources.get("GPU", 0) // gpus_per_worker)
        if workers < 1:
            raise InputError(
                f"the Ray cluster has {resources.get('GPU', 0):g} GPUs, fewer than --ray-gpus-per-worker "
                f"{gpus_per_worker:g}; start GPU nodes or lower it"
            )
        return workers
    return max(1, int(resources.get("CPU", 1)))


def _start(data_path, default_split: str, address, workers, gpus_per_worker: float, options: dict[str, Any]):
    """Check the worker options, read the selected examples, join the cluster: ``(ray, examples)``."""
    if gpus_per_worker < 0:
        raise InputError(f"gpus_per_worker must be >= 0, got {gpus_per_worker}")
    if workers is not None and workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    ray = import_ray()
    examples = read_selection(data_path, options.get("split", default_split), options.get("limit"),
                              options.get("on_error", "raise"))
    _connect(ray, address)
    return ray, examples


def _pool(ray, n_workers: int, gpus_per_worker: float, max_retries: int, init_args: tuple) -> list:
    """``n_workers`` restartable :class:`ShardWorker` actors built from ``init_args``."""
    actor = ray.remote(ShardWorker).options(
        num_cpus=0 if gpus_per_worker > 0 else 1, num_gpus=gpus_per_worker,
        max_restarts=max_retries, max_task_retries=max_retries,
    )
    return [actor.remote(*init_args) for _ in range(n_workers)]


def generate_with_ray(
    model: str,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    kind: str = "training",
    address: str | None = "auto",
    workers: int | None = None,
    gpus_per_worker: float = 0,
    device: str | None = None,
    dtype: str | None = None,
    max_retries: int = 3,
    **options: Any,
) -> list[Path]:
    """``generate_training_data`` (``generate_support_data`` for ``kind="support"``, ``generate_outcomes`` for
    ``kind="outcomes"`` / ``"eval-outcomes"``) with its shard files spread over Ray actors; returns every shard path, as one
    process would. ``options`` are the generator's."""
    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    ray, examples = _start(data_path, "train", address, workers, gpus_per_worker, options)
    count = shard_count(len(examples), options.get("shard_size", 8 if kind == "training" else 64))
    pool = _pool(ray, min(count, workers or _default_workers(ray, gpus_per_worker)), gpus_per_worker, max_retries,
                 (model, device, dtype))
    n_workers = len(pool)
    data, out = str(Path(data_path).resolve()), str(Path(out_dir).resolve())
    try:
        pending = [pool[i % n_workers].run.remote(kind, data, out, i, count, options) for i in range(count)]
        ray.get(pending)
    finally:
        for a in pool:
            ray.kill(a)
    suffix = ".jsonl.gz" if kind.endswith("outcomes") else ".safetensors"
    paths = [Path(out_dir) / f"shard-{i:05d}{suffix}" for i in range(count)]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise RuntimeError(f"{out} lacks {len(missing)} of {count} shard files after the Ray run; run it again to resume")
    return paths


def evaluate_with_ray(
    model: str,
    data_path: str | Path,
    methods: list[str],
    out: str,
    *,
    estimator: str | None = "default",
    address: str | None = "auto",
    workers: int | None = None,
    gpus_per_worker: float = 0,
    device: str | None = None,
    dtype: str | None = None,
    max_retries: int = 3,
    **options: Any,
) -> int:
    """``run_evaluation`` of ``methods`` (command-line names) with its examples spread over Ray actors,
    each writing its own rows file (``shard=(i, n)``); a worker that dies is restarted and resumes its
    file. Returns the rows written; a run without Ray (e.g. ``at2-rag evaluate`` with the same options)
    then finds every row done and writes the summary."""
    ray, examples = _start(data_path, "test", address, workers, gpus_per_worker, options)
    pool = _pool(ray, max(1, min(len(examples), workers or _default_workers(ray, gpus_per_worker))),
                 gpus_per_worker, max_retries, (model, device, dtype, estimator))
    n_workers = len(pool)
    data, target = str(Path(data_path).resolve()), str(Path(out).resolve())
    try:
        done = ray.get([pool[i].evaluate.remote(data, list(methods), target, i, n_workers, options)
                        for i in range(n_workers)])
    finally:
        for a in pool:
            ray.kill(a)
    return sum(done)


__all__ = ["ShardWorker", "evaluate_with_ray", "generate_with_ray", "import_ray"]
