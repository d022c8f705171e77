"""Features of stored ablation outcomes, recomputed on demand: one teacher-forced pass per question.

The outcomes (:mod:`.outcomes`) keep only what the ablated passes measured; this module rebuilds each
question's prompt, checks it against the stored source ranges and answer ids, captures the features,
caches them per shard, and shapes them as the fitting code takes them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..attributor import AT2Attributor
from ..errors import InputError
from .data import read_selection
from .outcomes import read_outcomes, set_masks, set_targets


def with_features(
    att: AT2Attributor, records: Sequence[dict[str, Any]], examples: dict[str, dict[str, Any]]
) -> Iterator[tuple[dict[str, Any], torch.Tensor, torch.Tensor]]:
    """Recompute each record's features in one teacher-forced pass: ``(record, span features
    (L, H, spans, S), question-row features (L, H, S))``.

    The rebuilt prompt must have the stored source ranges and the answer the stored ids, or the
    outcomes belong to another tokenizer, splitter or prompt (:class:`InputError`).
    """
    for rec in records:
        ex = examples.get(rec["id"])
        if ex is None:
            raise InputError(f"example {rec['id']!r} of the outcomes is not in the dataset; use the data file they were made from")
        by_id = {d["id"]: d for d in ex["documents"]}
        docs = [by_id[i] for i in rec["document_ids"]]
        granularity = rec.get("granularity", "sentence")  # records of the first format version: sentences
        result = att.attribute(ex["question"], docs, rec["answer"], granularity=granularity, keep_features=True)
        got = [[s.token_start, s.token_end] for s in result.prompt.sources]
        if got != rec["sources"] or result.answer_ids != rec["answer_ids"]:
            raise InputError(
                f"example {rec['id']!r}: the rebuilt prompt or answer differs from the stored outcomes "
                "(another tokenizer, sentence splitter or prompt); regenerate the outcomes"
            )
        assert result.features is not None and result.query_features is not None
        feats = torch.stack([result.features[:, :, a:b].mean(dim=2) for a, b in rec["spans"]], dim=2)
        yield rec, feats, result.query_features


def cached_features(
    att: AT2Attributor, outcome_dir: str | Path, data_path: str | Path, cache_dir: str | Path, *,
    progress: bool = True, shards: int | None = None,
) -> list[tuple[dict[str, Any], torch.Tensor, torch.Tensor]]:
    """:func:`with_features` for every record of an outcome folder (its first ``shards`` shard files),
    cached per shard in ``cache_dir`` (safetensors; a rerun reads finished shards back)."""
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm

    from ..files import atomic_path

    recipe, _ = read_outcomes(outcome_dir)
    examples = {e["id"]: e for e in read_selection(data_path, recipe["split"], None, "raise")}
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    files = sorted(Path(outcome_dir).glob("shard-*.jsonl.gz"))[:shards]
    for shard in tqdm(files, desc="features", disable=not progress):
        _, records = read_outcomes(shard)
        path = cache / shard.name.replace(".jsonl.gz", ".safetensors")
        if path.exists():
            t = load_file(str(path))
            out.extend((rec, t[f"{i}.features"], t[f"{i}.query"]) for i, rec in enumerate(records))
            continue
        done = list(with_features(att, records, examples))
        tensors = {}
        for i, (_, f, q) in enumerate(done):
            tensors[f"{i}.features"], tensors[f"{i}.query"] = f.contiguous(), q.contiguous()
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp))
        out.extend(done)
    return out


def training_record(rec: dict[str, Any], feats: torch.Tensor, query: torch.Tensor, n_masks: int | None = None):
    """A record in the shape :func:`~at2_rag.research.fitting.make_instances` takes (first ``n_masks`` masks)."""
    masks, targets = set_masks(rec, "train"), set_targets(rec, "train")
    if n_masks is not None:
        masks, targets = masks[:n_masks], targets[:n_masks]
    tensors = {"features": feats, "query": query, "masks": masks.to(torch.uint8), "targets": targets}
    return tensors, {"id": rec["id"], "k": rec["k"]}


__all__ = ["cached_features", "training_record", "with_features"]
