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
from .rows import EvaluationRows, read_rows
from .runner import evaluate_example, format_table, run_evaluation, summarize

__all__ = [
    "AT2",
    "AverageAttention",
    "ContextCiteSurrogate",
    "EmbeddingSimilarity",
    "EvalExample",
    "EvaluationRows",
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
    "read_rows",
    "run_evaluation",
    "spearman",
    "summarize",
    "topk_drop",
]
