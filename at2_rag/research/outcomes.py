"""Ablation outcomes: what the ablated passes measured, stored compactly and without features.

The ablated passes are the expensive part of estimator data; the features need one pass and are
recomputed on demand (:func:`~at2_rag.research.features.with_features`). An outcome record holds one example's prompt identity
(document ids in prompt order, the answer's token ids, every source's token range), its target
spans, and per mask set the keep-masks (bit-packed) and the targets they gave. Two kinds:

- ``train``: spans = the answer's sentences then the whole answer; one set ``train`` of ``m`` masks
  drawn from :func:`~at2_rag.research.ablation_data.example_seed` (``m`` = 64 holds the 32-mask
  recipe as its first 32 rows).
- ``eval``: span = the whole answer; sets ``lds`` (fresh masks that score a method), ``contextcite``
  (the surrogates' mask sequence; a surrogate of ``n`` uses the first ``n``) and ``loo`` (one source
  dropped at a time), with the seeds the evaluation suite uses, so any method is scored offline.

Files are ``shard-NNNNN.jsonl.gz`` in a folder with ``recipe.json``, written by the resumable shard
writer (any process may write any shard; ``--shard i/n`` and Ray work the same way).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..ablation import random_masks, span_targets
from ..attributor import AT2Attributor
from ..errors import InputError
from ..estimator import ModelIdentity
from ..prompts import encode, sentence_tokens
from .ablation_data import example_seed
from .data import OnError, data_identity, is_correct, open_text, read_selection, shuffled_documents, write_jsonl
from .engine import ablated_passes, answer_logprobs, batched_answers
from .evaluation.methods import evaluation_seed
from .shards import check_shard, write_shards

OUTCOME_FORMAT = "at2-rag-ablation-outcomes/1"
KINDS = ("train", "eval")
EVAL_SETS = {"lds": 32, "contextcite": 64}
"""Masks per evaluation set (the LDS masks and the ContextCite surrogates' sequence). A smaller
``contextcite`` count keeps the first masks of the same sequence (a CPU-sized run of a larger model)."""


def eval_sets(contextcite: int = EVAL_SETS["contextcite"]) -> dict[str, int]:
    """The evaluation sets with ``contextcite`` surrogate masks (the first ones of the full sequence)."""
    if not 2 <= contextcite <= EVAL_SETS["contextcite"]:
        raise InputError(f"contextcite masks must be 2..{EVAL_SETS['contextcite']}, got {contextcite}")
    return {**EVAL_SETS, "contextcite": contextcite}


def pack_masks(masks: torch.Tensor) -> str:
    """``(m, S)`` bool masks as base64 of their row-major bits."""
    return base64.b64encode(np.packbits(masks.numpy().astype(np.uint8), axis=None).tobytes()).decode("ascii")


def unpack_masks(text: str, m: int, n_sources: int) -> torch.Tensor:
    """The ``(m, S)`` bool masks of :func:`pack_masks`."""
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8), count=m * n_sources)
    return torch.from_numpy(bits.reshape(m, n_sources).astype(bool))


def _round(t: torch.Tensor) -> list:
    """Targets for JSON: 5 decimals (far below the spread of logit-probabilities across masks)."""
    return np.round(t.to(torch.float64).numpy(), 5).tolist()


def outcome_records(
    att: AT2Attributor,
    examples: Sequence[dict[str, Any]],
    *,
    kind: str,
    k: int,
    n_masks: int = 32,
    max_new_tokens: int = 48,
    seed: int = 0,
    max_batch_tokens: int = 16384,
    generate_batch: int = 32,
    granularity: str | int = "sentence",
    set_sizes: dict[str, int] = EVAL_SETS,
) -> list[dict[str, Any]]:
    """Outcome records of a chunk of examples: answers in batched ``generate``, then every ablated pass
    of the chunk through the batched engine. Examples whose answer is empty get no record.

    ``granularity`` is what a source is: ``"sentence"``, or an integer token-window size (e.g. 4 for
    the reference recipe's near-token-level training sources)."""
    docs = [shuffled_documents(ex, k, seed) for ex in examples]
    prompts = [att.prompt(ex["question"], d, granularity) for ex, d in zip(examples, docs)]
    answers = batched_answers(
        att, [p.input_ids for p in prompts], max_new_tokens=max_new_tokens, batch_size=generate_batch
    )
    plans, passes = [], []
    for ex, doc, prompt, answer in zip(examples, docs, prompts, answers):
        if not answer.strip():
            continue
        answer_ids = encode(att.tokenizer, answer)  # the canonical ids: what `attribute` sees
        n_src = len(prompt.sources)
        sets = _mask_sets(kind, str(ex["id"]), k, n_src, n_masks, seed, set_sizes)
        if kind == "train":
            spans = [(tok[0], tok[-1] + 1) for _, tok in sentence_tokens(att.tokenizer, answer_ids, answer) if tok]
        else:
            spans = []
        spans.append((0, len(answer_ids)))
        all_masks = torch.cat([torch.ones(1, n_src, dtype=torch.bool), *sets.values()])
        plans.append((ex, doc, prompt, answer, answer_ids, sets, spans, len(passes)))
        passes.extend(ablated_passes(prompt, answer_ids, all_masks))
    logps = answer_logprobs(att.model, passes, max_batch_tokens=max_batch_tokens)
    records = []
    for ex, doc, prompt, answer, answer_ids, sets, spans, start in plans:
        n = 1 + sum(len(m) for m in sets.values())
        y = span_targets(torch.stack(logps[start : start + n]), [range(a, b) for a, b in spans])
        gold = set(ex.get("gold_document_ids") or [])
        order = [d["id"] for d in ex["documents"]]
        rec = {
            "id": str(ex["id"]), "k": k, "granularity": granularity, "document_ids": [d["id"] for d in doc],
            "answer": answer,
            "answer_ids": answer_ids, "correct": is_correct(answer, ex.get("answers") or []),
            "gold_documents": [i for i, d in enumerate(doc) if d["id"] in gold],
            "retrieval_rank": [order.index(d["id"]) for d in doc],
            "prompt_tokens": len(prompt), "sources": [[s.token_start, s.token_end] for s in prompt.sources],
            "source_document": [s.document for s in prompt.sources],
            "spans": [list(s) for s in spans], "base": _round(y[0]), "sets": {},
        }
        row = 1
        for name, masks in sets.items():
            entry = {"m": len(masks), "targets": _round(y[row : row + len(masks)])}
            if name != "loo":
                entry["masks"] = pack_masks(masks)
            rec["sets"][name] = entry
            row += len(masks)
        records.append(rec)
    return records


def _mask_sets(kind: str, example_id: str, k: int, n_src: int, n_masks: int, seed: int,
               sizes: dict[str, int] = EVAL_SETS) -> dict[str, torch.Tensor]:
    """The keep-masks of each set of one example (see the module docstring)."""
    if kind == "train":
        return {"train": random_masks(n_masks, n_src, 0.5, seed=example_seed(seed, f"{example_id}:{k}"))}
    loo = torch.ones(n_src, n_src, dtype=torch.bool)
    loo[torch.arange(n_src), torch.arange(n_src)] = False
    sets = {name: random_masks(m, n_src, 0.5, seed=evaluation_seed(example_id, name)) for name, m in sizes.items()}
    return {**sets, "loo": loo}


def set_masks(record: dict[str, Any], name: str) -> torch.Tensor:
    """The ``(m, S)`` keep-masks of one set of a record."""
    entry, n_src = record["sets"][name], len(record["sources"])
    if name == "loo":
        return ~torch.eye(n_src, dtype=torch.bool)
    return unpack_masks(entry["masks"], entry["m"], n_src)


def set_targets(record: dict[str, Any], name: str) -> torch.Tensor:
    """The ``(m, spans)`` float64 targets of one set of a record."""
    return torch.tensor(record["sets"][name]["targets"], dtype=torch.float64)


def generate_outcomes(
    att: AT2Attributor,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    kind: str,
    split: str,
    k: int,
    limit: int | None = None,
    n_masks: int = 32,
    max_new_tokens: int = 48,
    seed: int = 0,
    shard_size: int = 64,
    max_batch_tokens: int = 16384,
    progress: bool = True,
    on_error: OnError = "raise",
    shard: tuple[int, int] | None = None,
    deadline: float | None = None,
    granularity: str | int = "sentence",
    set_sizes: dict[str, int] = EVAL_SETS,
) -> list[Path]:
    """Resumable outcome shards for the first ``limit`` examples of ``split`` (see the module docstring).

    ``deadline`` (a ``time.monotonic()`` value): past it, no new shard is started (:class:`TimeoutError`);
    the finished shards stay and a rerun resumes after them.
    """
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    check_shard(shard)
    examples = read_selection(data_path, split, limit, on_error)
    recipe = {
        "format": OUTCOME_FORMAT, "kind": kind, **data_identity(data_path), "split": split, "k": k,
        "n_masks": n_masks if kind == "train" else set_sizes, "p_keep": 0.5, "seed": seed,
        "granularity": granularity, "max_new_tokens": max_new_tokens, "target": "model answer",
        "model": ModelIdentity.of(att.model).name,
    }

    def write_chunk(path: Path, chunk: list[dict[str, Any]]) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"out of time before {path.name}; rerun to resume")
        recs = outcome_records(att, chunk, kind=kind, k=k, n_masks=n_masks, max_new_tokens=max_new_tokens,
                               seed=seed, max_batch_tokens=max_batch_tokens, granularity=granularity, set_sizes=set_sizes)
        # The chunk's ids let a rerun with a larger limit remake a short last shard (shards.write_shards).
        header = {"format": OUTCOME_FORMAT, "recipe": recipe, "chunk": [str(ex["id"]) for ex in chunk]}
        write_jsonl(path, [header, *recs])

    return write_shards(Path(out_dir), examples, recipe, None, shard_size, f"{kind} outcomes", progress, shard,
                        write_chunk=write_chunk, suffix=".jsonl.gz")


def read_outcomes(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The recipe and records of an outcome file, or of every shard in a folder (in shard order)."""
    path = Path(path)
    files = sorted(path.glob("shard-*.jsonl.gz")) if path.is_dir() else [path]
    if not files:
        raise InputError(f"no outcome shards in {path} (expected shard-*.jsonl.gz made by generate_outcomes)")
    recipe, records = None, []
    for f in files:
        with open_text(f) as fh:
            head = json.loads(fh.readline())
            if head.get("format") != OUTCOME_FORMAT:
                raise InputError(f"{f} is not an ablation-outcome file (its first line has no {OUTCOME_FORMAT!r})")
            if recipe is not None and head["recipe"] != recipe:
                raise InputError(f"{f} was made with another recipe than {files[0]}; keep one recipe per folder")
            recipe = head["recipe"]
            records.extend(json.loads(line) for line in fh if line.strip())
    return recipe, records


def merge_outcomes(folders: Sequence[str | Path], out: str | Path) -> Path:
    """One outcome file from the shards of one or more runs (same recipe; each example once)."""
    recipe, seen, records = None, set(), []
    for folder in folders:
        r, recs = read_outcomes(folder)
        if recipe is not None and r != recipe:
            raise InputError(f"{folder} holds outcomes of another recipe; merge only runs of one recipe")
        recipe = r
        for rec in recs:
            if rec["id"] not in seen:
                seen.add(rec["id"])
                records.append(rec)
    return write_jsonl(out, [{"format": OUTCOME_FORMAT, "recipe": recipe}, *records])


__all__ = [
    "EVAL_SETS",
    "eval_sets",
    "KINDS",
    "OUTCOME_FORMAT",
    "generate_outcomes",
    "merge_outcomes",
    "outcome_records",
    "pack_masks",
    "read_outcomes",
    "set_masks",
    "set_targets",
    "unpack_masks",
]
