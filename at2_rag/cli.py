"""The ``at2-rag`` command: demo, dataset building, training data, fitting."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="'default', a .gguf file, a folder or a hub id")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, ...")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16 or auto")


def _attributor(args, estimator=None, **kwargs):
    from .attributor import AT2Attributor

    return AT2Attributor.from_pretrained(
        args.model, estimator, device=args.device, dtype=args.dtype, **kwargs
    )


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(model=args.model, estimator=args.estimator, device=args.device, dtype=args.dtype)
    return 0


def cmd_build_nq(args) -> int:
    from .data import build_nq_rag

    stats = build_nq_rag(args.source, args.out, k=args.k)
    print(json.dumps(stats))
    return 0


def cmd_train_data(args) -> int:
    from .training import generate_training_data

    att = _attributor(args)
    paths = generate_training_data(
        att, args.data, args.out, split=args.split, limit=args.limit, k=args.k,
        n_masks=args.masks, p_keep=args.p_keep, max_new_tokens=args.max_new_tokens,
        shard_size=args.shard_size, seed=args.seed, batch_size=args.batch_size,
    )
    print(f"{len(paths)} shards in {args.out}")
    return 0


def cmd_train(args) -> int:
    from .estimator import ModelIdentity
    from .models import load_model
    from .training import train_estimator

    model, _ = load_model(args.model, device=args.device, dtype=args.dtype)
    est, _ = train_estimator(
        args.data, ModelIdentity.of(model), kind=args.kind, validation_dir=args.validation,
        steps=args.steps, lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
        non_negative=args.non_negative, seed=args.seed,
    )
    est.save(args.out)
    print(f"saved {args.kind} estimator to {args.out}")
    return 0


def cmd_attribute(args) -> int:
    att = _attributor(args, args.estimator, granularity=args.granularity)
    docs = [Path(p).read_text(encoding="utf-8") for p in args.documents]
    result = att.generate(args.question, docs) if args.answer is None else att.attribute(args.question, docs, args.answer)
    print(json.dumps(result.to_dict(), indent=1) if args.json else str(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="at2-rag", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="answer, attribute and rank sources on the bundled default model")
    _add_model_args(p)
    p.add_argument("--estimator", default="default")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("attribute", help="answer (or attribute --answer) over document files")
    _add_model_args(p)
    p.add_argument("question")
    p.add_argument("documents", nargs="+", help="text files, one document each")
    p.add_argument("--answer", default=None, help="attribute this answer instead of generating one")
    p.add_argument("--estimator", default="default")
    p.add_argument("--granularity", default="document", type=lambda s: int(s) if s.isdigit() else s)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_attribute)

    p = sub.add_parser("build-nq", help="build the NQ-RAG dataset (MiniLM + FAISS retrieval)")
    p.add_argument("--source", default="../shared/data/nq_open_dev.jsonl.gz")
    p.add_argument("--out", default="data/nq_rag.jsonl.gz")
    p.add_argument("--k", type=int, default=10)
    p.set_defaults(func=cmd_build_nq)

    p = sub.add_parser("train-data", help="generate ablation training data (sharded, resumable)")
    _add_model_args(p)
    p.add_argument("--data", required=True, help="JSONL(.gz) in at2-rag's format")
    p.add_argument("--out", required=True, help="folder for the shards")
    p.add_argument("--split", default="train", choices=["train", "validation", "test"])
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--k", type=int, default=5, help="documents per example")
    p.add_argument("--masks", type=int, default=32)
    p.add_argument("--p-keep", type=float, default=0.5)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--shard-size", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_data)

    p = sub.add_parser("train", help="fit an estimator on ablation shards")
    _add_model_args(p)
    p.add_argument("--data", required=True, help="training shard folder")
    p.add_argument("--validation", default=None, help="validation shard folder (monitoring only)")
    p.add_argument("--kind", default="answer", choices=["answer", "query"])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--non-negative", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
