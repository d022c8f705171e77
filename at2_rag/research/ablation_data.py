"""Ablation training data (features, random keep-masks, measured targets) in resumable shards, to fit estimators on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..ablation import answer_token_logprobs, random_masks, span_targets
from ..attributor import AT2Attributor
from ..errors import InputError
from ..estimator import ModelIdentity
from ..prompts import encode
from ..seeds import stable_hash
from .data import OnError, data_identity, is_correct, read_selection, shuffled_documents
from .options import at_least, mask_count, open_fraction
from .shards import check_shard, write_shards


def example_seed(seed: int, example_id: str) -> int:
    """A per-example seed that does not depend on processing order: 32 bits of ``sha256(f"{seed}:{example_id}")``."""
    return stable_hash(seed, example_id)


def build_record(
    attributor: AT2Attributor,
    example: dict[str, Any],
    *,
    k: int,
    n_masks: int,
    p_keep: float,
    max_new_tokens: int,
    seed: int,
    batch_size: int = 8,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Features, masks and ablation targets for one example (None when the answer is empty)."""
    docs = shuffled_documents(example, k, seed)
    result = attributor.generate(
        example["question"], docs, granularity="sentence", max_new_tokens=max_new_tokens, keep_features=True
    )
    if not result.answer_ids or not result.sentences:
        return None
    prompt = result.prompt
    spans = [list(s.tokens) for s in result.sentences] + [list(range(len(result.answer_ids)))]
    assert result.features is not None and result.query_features is not None
    span_features = torch.stack([result.features[:, :, span].mean(dim=2) for span in spans], dim=2)
    masks = random_masks(n_masks, len(prompt.sources), p_keep, seed=example_seed(seed, example["id"]))
    all_kept = torch.ones(1, len(prompt.sources), dtype=torch.bool)
    logps = answer_token_logprobs(
        attributor.model, prompt, result.answer_ids, torch.cat([all_kept, masks]), batch_size=batch_size
    )
    targets = span_targets(logps, spans)
    tensors = {
        "features": span_features.contiguous(),  # (L, H, spans, S); last span = whole answer
        "query": result.query_features.contiguous(),  # (L, H, S)
        "masks": masks.to(torch.uint8),
        "targets": targets[1:].contiguous(),  # (m, spans)
        "base": targets[0].contiguous(),  # (spans,) with every source kept
        "logp": logps.to(torch.float64).sum(dim=1).contiguous(),  # (1 + m,) whole-answer log P
    }
    docs_meta = [d.get("id") for d in docs]
    meta = {
        "id": example["id"],
        "question": example["question"],
        "answer": result.answer,
        "correct": is_correct(result.answer, example.get("answers", [])) if example.get("answers") else None,
        "source_document": [s.document for s in prompt.sources],
        "document_ids": docs_meta,
        "gold_document_ids": example.get("gold_document_ids", []),
        "n_sentences": len(result.sentences),
        "prompt_tokens": len(prompt),
    }
    return tensors, meta


SUPPORT_ORDERS = ("retriever", "shuffled")
"""Document orders of support data: as retrieved (best first), or shuffled from the example id."""


def reference_answers(example: dict[str, Any]) -> list[str]:
    """The example's non-empty reference answers (what support data teacher-forces)."""
    return [a for a in example.get("answers") or [] if isinstance(a, str) and a.strip()]


def support_documents(example: dict[str, Any], k: int, order: str, seed: int = 0) -> list[dict[str, Any]]:
    """The first ``k`` retrieved documents in retriever order, or shuffled (see ``shuffled_documents``)."""
    if order not in SUPPORT_ORDERS:
        raise ValueError(f"order must be one of {SUPPORT_ORDERS}, got {order!r}")
    return list(example["documents"][:k]) if order == "retriever" else shuffled_documents(example, k, seed)


def build_support_record(
    attributor: AT2Attributor,
    example: dict[str, Any],
    *,
    k: int,
    order: str,
    n_masks: int,
    p_keep: float = 0.5,
    seed: int = 0,
    batch_size: int = 32,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Question-row features and *reference-answer* ablation targets for one example.

    Whole documents are the sources. The features are those of query mode, raw and for the
    content-free question (``AT2Attributor.query_features``); the targets teacher-force the dataset's
    reference answer instead of the model's own, so an estimator fitted on them predicts which
    documents make the model produce the right answer (support), not which ones it happened to use.
    None when the example has no reference answer.
    """
    answers = reference_answers(example)
    if not answers:
        return None
    docs = support_documents(example, k, order, seed)
    prompt = attributor.prompt(example["question"], docs, "document")
    raw, null = attributor.query_features(prompt, content_free=True)
    assert null is not None
    answer_ids = encode(attributor.tokenizer, answers[0])
    n_src = len(prompt.sources)
    masks = random_masks(n_masks, n_src, p_keep, seed=example_seed(seed, f"{example['id']}:{k}:{order}"))
    all_kept = torch.ones(1, n_src, dtype=torch.bool)
    logps = answer_token_logprobs(
        attributor.model, prompt, answer_ids, torch.cat([all_kept, masks]), batch_size=batch_size
    )
    targets = span_targets(logps, [range(len(answer_ids))])  # (1 + m, 1)
    tensors = {
        "query": raw.to(torch.float16).contiguous(),  # (L, H, S)
        "query_null": null.to(torch.float16).contiguous(),  # (L, H, S), content-free question
        "masks": masks.to(torch.uint8),
        "targets": targets[1:].contiguous(),  # (m, 1)
        "base": targets[0].contiguous(),  # (1,) every document kept
    }
    gold = set(example.get("gold_document_ids") or [])
    ids = [d.get("id") for d in example["documents"]]
    meta = {
        "id": example["id"],
        "k": k,
        "order": order,
        "reference": answers[0],
        "document_ids": [d.get("id") for d in docs],
        "gold_positions": [i for i, d in enumerate(docs) if d.get("id") in gold],
        "retriever_ranks": [ids.index(d.get("id")) for d in docs],
        "prompt_tokens": len(prompt),
    }
    return tensors, meta


def generate_support_data(
    attributor: AT2Attributor,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    split: str = "train",
    limit: int | None = None,
    configs: tuple[tuple[int, str], ...] = ((10, "retriever"), (10, "shuffled"), (5, "shuffled")),
    n_masks: int = 16,
    p_keep: float = 0.5,
    shard_size: int = 64,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
    on_error: OnError = "raise",
    shard: tuple[int, int] | None = None,
) -> list[Path]:
    """Support shards (one record per example and (k, order) config); resumable like the others.

    ``shard=(i, n)`` writes only the shard files whose index % n == i (see :func:`check_shard`).
    """
    check_shard(shard)
    _check_configs(configs)
    _check_counts(n_masks=n_masks, p_keep=p_keep, shard_size=shard_size, batch_size=batch_size)
    examples = read_selection(data_path, split, limit, on_error)
    recipe = {
        "kind": "support", **data_identity(data_path), "split": split,
        "configs": [list(c) for c in configs], "n_masks": n_masks, "p_keep": p_keep, "seed": seed,
        "granularity": "document", "target": "reference answer",
        "model": ModelIdentity.of(attributor.model).name,
    }

    def records(ex):
        for k, order in configs:
            yield build_support_record(
                attributor, ex, k=k, order=order, n_masks=n_masks, p_keep=p_keep, seed=seed,
                batch_size=batch_size,
            )

    return write_shards(Path(out_dir), examples, recipe, records, shard_size, "support data", progress, shard)


def _check_configs(configs: tuple[tuple[int, str], ...]) -> None:
    """Support configs: at least one ``(k ≥ 1, order)`` pair."""
    if not configs:
        raise InputError("configs is empty; give at least one (k, order) pair, e.g. ((10, 'retriever'),)")
    for k, order in configs:
        at_least("k of a config", k, 1, " (documents per example)")
        if order not in SUPPORT_ORDERS:
            raise InputError(f"unknown document order {order!r} in configs; use one of {', '.join(SUPPORT_ORDERS)}")


def _check_counts(*, n_masks: int, p_keep: float, shard_size: int, batch_size: int) -> None:
    """The options both kinds of shard share, checked before any data is read or model run."""
    mask_count(n_masks)
    open_fraction("p_keep", p_keep)
    at_least("shard_size", shard_size, 1, " (examples per shard)")
    at_least("batch_size", batch_size, 1, " (ablations per forward pass)")


def generate_training_data(
    attributor: AT2Attributor,
    data_path: str | Path,
    out_dir: str | Path,
    *,
    split: str = "train",
    limit: int | None = None,
    k: int = 5,
    n_masks: int = 32,
    p_keep: float = 0.5,
    max_new_tokens: int = 48,
    shard_size: int = 8,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    on_error: OnError = "raise",
    shard: tuple[int, int] | None = None,
) -> list[Path]:
    """Answer data: shards ``shard-00000.safetensors`` …; existing complete shards are kept (resumable).

    For each example the model generates its own answer (greedy) while AT2 features are captured;
    then ``n_masks`` random keep-masks over the sources are ablated and every answer sentence's
    logit-probability is measured (:func:`build_record`). Counts are checked first (:class:`InputError`).
    ``shard=(i, n)`` writes only the shard files whose index % n == i, so ``n`` processes (a SLURM
    array, Ray workers) fill one folder exactly as one process would (see :func:`check_shard`).
    """
    check_shard(shard)
    at_least("k", k, 1, " (documents per example)")
    at_least("max_new_tokens", max_new_tokens, 1, " (tokens of the answer)")
    _check_counts(n_masks=n_masks, p_keep=p_keep, shard_size=shard_size, batch_size=batch_size)
    examples = read_selection(data_path, split, limit, on_error)
    recipe = {
        **data_identity(data_path), "split": split, "k": k, "n_masks": n_masks, "p_keep": p_keep,
        "max_new_tokens": max_new_tokens, "seed": seed, "granularity": "sentence",
        "model": ModelIdentity.of(attributor.model).name,
    }

    def records(ex):
        yield build_record(
            attributor, ex, k=k, n_masks=n_masks, p_keep=p_keep,
            max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size,
        )

    return write_shards(Path(out_dir), examples, recipe, records, shard_size, "ablation data", progress, shard)


__all__ = [
    "SUPPORT_ORDERS",
    "build_record",
    "build_support_record",
    "example_seed",
    "generate_support_data",
    "generate_training_data",
    "reference_answers",
    "support_documents",
]
