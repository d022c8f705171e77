"""Faithfulness evaluation: metrics (ContextCite's protocol), attribution methods, the runner."""

from .methods import (
    AT2,
    AverageAttention,
    ContextCiteSurrogate,
    EmbeddingSimilarity,
    EvalExample,
    LeaveOneOut,
    Method,
    RetrieverOrder,
    fit_surrogate,
    make_method,
)
from .metrics import lds, mean_and_stderr, rankdata, spearman, topk_drop
from .runner import evaluate_example, format_table, run_evaluation, summarize

__all__ = [
    "AT2",
    "AverageAttention",
    "ContextCiteSurrogate",
    "EmbeddingSimilarity",
    "EvalExample",
    "LeaveOneOut",
    "Method",
    "RetrieverOrder",
    "evaluate_example",
    "fit_surrogate",
    "format_table",
    "lds",
    "make_method",
    "mean_and_stderr",
    "rankdata",
    "run_evaluation",
    "spearman",
    "summarize",
    "topk_drop",
]
