"""Shard files of ablation data: the resumable, deterministic writer, ``i/n`` splitting, and reading back.

A shard is a fixed chunk of the example list (``shard-NNNNN.safetensors``, written atomically), so any
subset of shards can be made by any process and the folder still equals a single run's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePath
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import InputError
from ..files import atomic_path, atomic_write_text

SHARD_FORMAT = "at2-rag-ablation-shard"


def portable_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """``recipe`` with its data file named by file name only (older recipes held this machine's path)."""
    if not isinstance(recipe.get("data"), str):
        return recipe
    return {**recipe, "data": PurePath(recipe["data"]).name}


def recipe_differences(stored: dict[str, Any], recipe: dict[str, Any]) -> list[str]:
    """The keys in which ``stored`` shards differ from ``recipe``; an older recipe (a data path, no data
    hash) is compared by file name and without the hash, so its folder still resumes."""
    stored = portable_recipe(stored)
    keys = set(stored) | set(recipe)
    if "data_sha256" not in stored:
        keys.discard("data_sha256")
    return sorted(key for key in keys if stored.get(key) != recipe.get(key))


def check_shard(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    """``shard`` as ``(i, n)`` with 0 ≤ i < n (or None: every shard file); anything else is an :class:`InputError`."""
    if shard is None:
        return None
    try:
        i, n = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise InputError(f"shard must be a pair (i, n) of integers, got {shard!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"shard {i}/{n} is out of range; give i/n with n >= 1 and 0 <= i < n (e.g. 0/4 ... 3/4)")
    return i, n


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (as ``--shard`` takes it) as a checked ``(i, n)``."""
    i, sep, n = text.partition("/")
    try:
        pair = (int(i), int(n)) if sep else None
    except ValueError:
        pair = None
    if pair is None:
        raise InputError(f"shard must look like i/n (e.g. 0/4), got {text!r}")
    return check_shard(pair)  # type: ignore[return-value]


def shard_count(n_examples: int, shard_size: int) -> int:
    """How many shard files ``n_examples`` examples fill, ``shard_size`` to a file."""
    return math.ceil(n_examples / shard_size)


def write_shards(
    out: Path, examples, recipe, records, shard_size: int, desc: str, progress: bool,
    shard: tuple[int, int] | None = None, *, write_chunk=None, suffix: str = ".safetensors",
) -> list[Path]:
    """Write ``shard-NNNNN.safetensors`` files of the records each example yields; complete shards
    already on disk are kept, so an interrupted run resumes (a different recipe is refused).

    Each file is a fixed chunk of ``examples``, so it is the same whoever writes it: ``shard=(i, n)``
    writes (and returns) only the files whose index % n == i; the recipe never depends on it.
    ``write_chunk(path, chunk)`` (with its file ``suffix``) replaces the per-example ``records`` for
    writers that process a whole chunk at once; it must write ``path`` atomically.
    """
    from tqdm.auto import tqdm

    manifest = out / "recipe.json"
    if manifest.exists():
        differ = recipe_differences(json.loads(manifest.read_text(encoding="utf-8")), recipe)
        if differ:
            raise InputError(
                f"{out} holds shards made with another recipe (differing in {', '.join(differ)}; see {manifest}); "
                "use a new folder or the same options"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(manifest, json.dumps(recipe, indent=1, sort_keys=True))
    paths = []
    mine = [i for i in range(shard_count(len(examples), shard_size)) if shard is None or i % shard[1] == shard[0]]
    bar = tqdm(total=sum(len(examples[i * shard_size : (i + 1) * shard_size]) for i in mine), desc=desc, unit="ex",
               disable=not progress)
    try:
        for i in mine:
            path = out / f"shard-{i:05d}{suffix}"
            chunk = examples[i * shard_size : (i + 1) * shard_size]
            paths.append(path)
            if path.exists():
                bar.update(len(chunk))
                continue
            if write_chunk is not None:
                write_chunk(path, chunk)
                bar.update(len(chunk))
                continue
            tensors, metas = {}, []
            for ex in chunk:
                for rec in records(ex):
                    if rec is None:
                        continue
                    j = len(metas)
                    tensors.update({f"{j}.{name}": t for name, t in rec[0].items()})
                    metas.append(rec[1])
                bar.update(1)
            save_shard(path, tensors, {"format": SHARD_FORMAT, "recipe": recipe, "examples": metas})
    finally:
        bar.close()
    return paths


def save_shard(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """One shard file, written atomically (a crash leaves no half shard that a resumed run would keep)."""
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"at2_rag": json.dumps(meta)})


def shard_paths(shard_dir: str | Path) -> list[Path]:
    """The shard files of a folder, in order; a missing or empty folder is an :class:`InputError`."""
    paths = sorted(Path(shard_dir).glob("shard-*.safetensors"))
    if not paths:
        raise InputError(f"no shards in {shard_dir} (expected shard-*.safetensors files made by `at2-rag train-data`)")
    return paths


def load_records(shard_dir: str | Path) -> list[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    """Every example stored in a folder of shards, in shard order (see :func:`shard_paths`)."""
    records = []
    for path in shard_paths(shard_dir):
        with safe_open(str(path), "pt") as fh:
            meta = json.loads(fh.metadata()["at2_rag"])
            keys = list(fh.keys())
            for j, m in enumerate(meta["examples"]):
                prefix = f"{j}."
                names = [key[len(prefix):] for key in keys if key.startswith(prefix)]
                records.append(({n: _as_float(fh.get_tensor(prefix + n)) for n in names}, m))
    return records


def _as_float(t: torch.Tensor) -> torch.Tensor:
    """Features stored in float16 (support shards) come back as float32."""
    return t.to(torch.float32) if t.dtype == torch.float16 else t


__all__ = [
    "SHARD_FORMAT",
    "check_shard",
    "load_records",
    "parse_shard",
    "portable_recipe",
    "recipe_differences",
    "save_shard",
    "shard_count",
    "shard_paths",
    "write_shards",
]
