"""Shard files of ablation data: the resumable, deterministic writer, ``i/n`` splitting, and reading back.

A shard is a fixed chunk of the example list (``shard-NNNNN.safetensors``, written atomically), so any
subset of shards can be made by any process and the folder still equals a single run's. The folder's
``recipe.json`` records the options (``shard_size`` among them: the layout) and each shard the ids of its
chunk, so a rerun with another ``limit`` extends a short last shard instead of trusting it as complete.
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from pathlib import Path, PurePath
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import InputError
from ..files import atomic_path, atomic_write_text
from .data import kind_of

SHARD_FORMAT = "at2-rag-ablation-shard"
RECORD_TENSORS = ("query", "masks", "targets")
"""Tensors every stored record has (answer shards add ``features``, support shards ``query_null``)."""
_READ_ERRORS = (SafetensorError, OSError, EOFError, zlib.error, ValueError, RecursionError)


def portable_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """``recipe`` with its data file named by file name only (older recipes held this machine's path)."""
    if not isinstance(recipe.get("data"), str):
        return recipe
    return {**recipe, "data": PurePath(recipe["data"]).name}


def recipe_differences(stored: dict[str, Any], recipe: dict[str, Any]) -> list[str]:
    """The keys in which ``stored`` shards differ from ``recipe``; an older recipe (a data path, no data
    hash, no shard size) is compared by file name and without those, so its folder still resumes."""
    stored = portable_recipe(stored)
    keys = set(stored) | set(recipe)
    keys -= {key for key in ("data_sha256", "shard_size") if key not in stored}
    return sorted(key for key in keys if stored.get(key) != recipe.get(key))


def read_recipe(folder: str | Path) -> dict[str, Any] | None:
    """A shard folder's ``recipe.json`` (None when it has none); a damaged one is an :class:`InputError`
    naming it, raised before any work (not after a fit, or midway through a resume)."""
    path = Path(folder) / "recipe.json"
    if not path.exists():
        return None
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(recipe, dict):
            raise ValueError(f"it holds {kind_of(recipe)}, not an object")
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InputError(
            f"{path} is not a readable shard recipe ({exc}); restore it, or make the shards again in a new folder"
        ) from None
    return recipe


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
    already on disk are kept, so an interrupted run resumes (a different recipe is refused, naming the
    recorded options; ``shard_size`` is part of it, since it decides which examples each file holds).

    Each file is a fixed chunk of ``examples``, so it is the same whoever writes it: ``shard=(i, n)``
    writes (and returns) only the files whose index % n == i; the recipe never depends on it. A shard
    whose recorded chunk is a prefix of its chunk now (an earlier, smaller ``limit``) is completed; one
    that holds more of the same list (a larger ``limit`` before) is kept.
    ``write_chunk(path, chunk)`` (with its file ``suffix``) replaces the per-example ``records`` for
    writers that process a whole chunk at once; it must write ``path`` atomically.
    """
    from tqdm.auto import tqdm

    recipe = {**recipe, "shard_size": shard_size}
    _check_recipe(out, read_recipe(out), recipe)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.json", json.dumps(recipe, indent=1, sort_keys=True))
    paths = []
    mine = [i for i in range(shard_count(len(examples), shard_size)) if shard is None or i % shard[1] == shard[0]]
    bar = tqdm(total=sum(len(examples[i * shard_size : (i + 1) * shard_size]) for i in mine), desc=desc, unit="ex",
               disable=not progress)
    try:
        for i in mine:
            path = out / f"shard-{i:05d}{suffix}"
            chunk = examples[i * shard_size : (i + 1) * shard_size]
            paths.append(path)
            have = _stored_chunk(path, [str(ex["id"]) for ex in chunk])
            if have is None:
                bar.update(len(chunk))
                continue
            if write_chunk is not None:
                write_chunk(path, chunk)
                bar.update(len(chunk))
                continue
            tensors, metas = _read_shard(path) if have else ({}, [])
            bar.update(have)
            for ex in chunk[have:]:
                for rec in records(ex):
                    if rec is None:
                        continue
                    j = len(metas)
                    tensors.update({f"{j}.{name}": t for name, t in rec[0].items()})
                    metas.append(rec[1])
                bar.update(1)
            meta = {"format": SHARD_FORMAT, "recipe": recipe, "chunk": [str(ex["id"]) for ex in chunk], "examples": metas}
            save_shard(path, tensors, meta)
    finally:
        bar.close()
    return paths


def _check_recipe(out: Path, stored: dict[str, Any] | None, recipe: dict[str, Any]) -> None:
    """Refuse to add to shards of another recipe, naming each differing option's recorded and given value."""
    differ = [] if stored is None else recipe_differences(stored, recipe)
    if differ:
        stored = portable_recipe(stored)  # type: ignore[arg-type]
        shown = "; ".join(f"{key}: recorded {_short(stored.get(key))}, given {_short(recipe.get(key))}" for key in differ)
        raise InputError(
            f"{out} holds shards made with another recipe ({shown}; see {out / 'recipe.json'}); "
            "use a new folder or the recorded options"
        )


def _short(value: Any) -> str:
    """``repr(value)`` cut to 60 characters, for a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _stored_chunk(path: Path, ids: list[str]) -> int | None:
    """How many of ``ids`` (this shard's chunk, in order) ``path`` already holds: None when it is complete
    (it holds them all, or more of the same list, or is an older shard that records no chunk)."""
    if not path.exists():
        return 0
    try:
        if path.name.endswith(".safetensors"):
            with safe_open(str(path), "pt") as fh:
                meta = _shard_meta(fh)
        else:
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                meta = json.loads(fh.readline())
    except _READ_ERRORS as exc:
        raise _damaged(path, exc) from None
    have = meta.get("chunk") if isinstance(meta, dict) else None
    if not isinstance(have, list) or have[: len(ids)] == ids:
        return None
    if ids[: len(have)] != have:
        raise InputError(
            f"{path} holds examples {_short(have)} where this selection has {_short(ids)}; "
            "use a new folder for another selection"
        )
    return len(have)


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
    """Every example stored in a folder of shards, in shard order (see :func:`shard_paths`); a damaged
    or foreign shard file is an :class:`InputError` naming it."""
    records = []
    for path in shard_paths(shard_dir):
        tensors, metas = _read_shard(path)
        for j, m in enumerate(metas):
            prefix = f"{j}."
            records.append(({key[len(prefix):]: _as_float(t) for key, t in tensors.items() if key.startswith(prefix)}, m))
    return records


def _read_shard(path: Path) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """The tensors and record metadata of one shard file, checked: every record has :data:`RECORD_TENSORS`."""
    try:
        with safe_open(str(path), "pt") as fh:
            metas = _shard_meta(fh)["examples"]
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
        for j in range(len(metas)):
            missing = [name for name in RECORD_TENSORS if f"{j}.{name}" not in tensors]
            if missing:
                raise ValueError(f"record {j} has no {missing[0]!r} tensor")
    except _READ_ERRORS as exc:
        raise _damaged(path, exc) from None
    return tensors, metas


def _shard_meta(fh) -> dict[str, Any]:
    """The at2-rag metadata of an open shard file; ValueError when it has none listing its records."""
    text = (fh.metadata() or {}).get("at2_rag")
    meta = json.loads(text) if isinstance(text, str) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("examples"), list) or not all(
        isinstance(m, dict) for m in meta["examples"]
    ):
        raise ValueError("no at2-rag metadata listing its records")
    return meta


def _damaged(path: Path, why: object) -> InputError:
    """The one-line error for a shard file that cannot be read back."""
    return InputError(
        f"{path} is not a readable at2-rag shard ({why}); delete it and rerun the command that made it "
        "(`at2-rag train-data` with the same options) to remake it"
    )


def _as_float(t: torch.Tensor) -> torch.Tensor:
    """Features stored in float16 (support shards) come back as float32."""
    return t.to(torch.float32) if t.dtype == torch.float16 else t


__all__ = [
    "RECORD_TENSORS",
    "SHARD_FORMAT",
    "check_shard",
    "load_records",
    "parse_shard",
    "portable_recipe",
    "read_recipe",
    "recipe_differences",
    "save_shard",
    "shard_count",
    "shard_paths",
    "write_shards",
]
