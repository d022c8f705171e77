"""Faithfulness metrics for attribution scores (ContextCite's protocol)."""

from .metrics import lds, mean_and_stderr, rankdata, spearman, topk_drop

__all__ = ["lds", "mean_and_stderr", "rankdata", "spearman", "topk_drop"]
