"""Nodes as at2-rag documents, and the scores AT2 writes onto (copies of) nodes."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Annotated, List, Optional, Sequence, Tuple

from llama_index.core.bridge.pydantic import BeforeValidator, StrictInt
from llama_index.core.schema import MetadataMode, NodeWithScore

from at2_rag import RETRIEVAL_RANK_KEY, Document, InputError

RETRIEVAL_SCORE_KEY = "retrieval_score"
"""Metadata key holding the score a node had before AT2 scored it (the retriever's, usually)."""
ATTRIBUTION_SCORE_KEY = "attribution_score"
"""Metadata key holding the node's AT2 attribution score."""
KEEP_SCORE_KEY = "keep_score"
"""Metadata key holding the score the pruner ranked by: the attribution score fused with the retriever
rank when one is known (standardized units), else the attribution score."""
RANK_SOURCE_KEY = "rank_source"
"""Metadata key of where the keep score's retriever rank came from: ``"retrieval_rank"`` (node
metadata), ``"retrieval_score"`` (the nodes' distinct retriever scores), ``"input order"``, or
``"none"`` (no rank known, or rank weight 0: AT2 alone)."""
SPANS_KEY = "attribution_spans"
"""Metadata key, with sentence-level pruning, of the kept sentences' character spans in the original text."""
METADATA_KEYS = (RETRIEVAL_SCORE_KEY, ATTRIBUTION_SCORE_KEY, KEEP_SCORE_KEY, RANK_SOURCE_KEY, SPANS_KEY)
"""Every metadata key AT2 adds; all are excluded from LLM and embedding text."""



def _integral(value: object) -> object:
    """Any integer type (numpy's too, not a bool) as a Python int; anything else unchanged for the strict check."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


Count = Annotated[StrictInt, BeforeValidator(_integral)]
"""A count field: an int, or a numpy integer converted to one; never a bool, a float or a string."""

def node_text(node: NodeWithScore, metadata_mode: MetadataMode) -> str:
    """The text AT2 scores for ``node``: its content rendered with ``metadata_mode``."""
    return node.node.get_content(metadata_mode=metadata_mode)


def nodes_with_text(nodes: Sequence[NodeWithScore], metadata_mode: MetadataMode) -> List[NodeWithScore]:
    """The nodes that have text to attribute; empty ones are left out with a warning.

    A node without text cannot have driven an answer, so it is never kept or cited.
    """
    kept = [n for n in nodes if node_text(n, metadata_mode).strip()]
    if len(kept) < len(nodes):
        empty = [n.node.node_id for n in nodes if not node_text(n, metadata_mode).strip()]
        warnings.warn(
            f"left out {len(empty)} node(s) with no text, which AT2 cannot score: {empty}",
            stacklevel=3,
        )
    return kept


def to_documents(nodes: Sequence[NodeWithScore], metadata_mode: MetadataMode) -> List[Document]:
    """One at2-rag document per node, identified by the node id, with the node's metadata (a copy).
    Unless every node carries ``retrieval_rank`` metadata, distinct retrieval scores on every node give
    each its retriever rank (best score 0), so rank fusion does not depend on the nodes' order; with a
    missing or a tied score no rank is set (ties say nothing certain about order). A retrieval score
    that is neither None nor a finite number is an :class:`~at2_rag.InputError`."""
    ranks = score_ranks(nodes)
    return [
        Document(text=node_text(n, metadata_mode), id=n.node.node_id,
                 metadata=dict(n.node.metadata) if r is None else {**n.node.metadata, RETRIEVAL_RANK_KEY: r})
        for n, r in zip(nodes, ranks or [None] * len(nodes))
    ]


def score_ranks(nodes: Sequence[NodeWithScore]) -> Optional[List[int]]:
    """Retriever ranks from the nodes' retrieval scores when all are present and distinct, else None
    (also when every node already carries ``retrieval_rank`` metadata, which the core reads itself)."""
    scores = [retrieval_score(n) for n in nodes]  # checks every score, used or not
    if all(_is_rank(n.node.metadata.get(RETRIEVAL_RANK_KEY)) for n in nodes):
        return None
    if any(s is None for s in scores) or len(set(scores)) < len(scores):
        return None
    ranks = [0] * len(nodes)
    for rank, i in enumerate(sorted(range(len(nodes)), key=lambda i: -scores[i])):  # type: ignore[operator]
        ranks[i] = rank
    return ranks


def rank_label(nodes: Sequence[NodeWithScore], core_source: str) -> str:
    """The ``rank_source`` written on returned nodes: the core's, with ``"metadata"`` made precise."""
    if core_source != "metadata":
        return core_source
    return "retrieval_score" if score_ranks(nodes) is not None else RETRIEVAL_RANK_KEY


def _is_rank(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 0


def retrieval_score(node: NodeWithScore) -> Optional[float]:
    """The score the node had before AT2 scored it (the retriever's), if any; :class:`~at2_rag.InputError`
    unless it is None or a finite number (it ranks the nodes)."""
    value = node.node.metadata.get(RETRIEVAL_SCORE_KEY, node.score)
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            score = float(value)
        except OverflowError:  # an int beyond the float range, e.g. 10**400
            score = math.inf
        if math.isfinite(score):
            return score
    where = f"metadata[{RETRIEVAL_SCORE_KEY!r}]" if RETRIEVAL_SCORE_KEY in node.node.metadata else "NodeWithScore.score"
    raise InputError(
        f"node {node.node.node_id!r}: its retrieval score ({where}) is {_shown(value)}, not a finite number; "
        "pass a finite float, or None to rank the nodes by their order"
    )


def _shown(value: object) -> str:
    """A short view of a bad score (a huge int by its size: its digits may not even print)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an int of {value.bit_length()} bits"
    return f"{value!r:.40}"


def annotate(
    node: NodeWithScore,
    score: Optional[float],
    *,
    text: Optional[str] = None,
    spans: Optional[Sequence[Tuple[int, int]]] = None,
    rank_score: Optional[float] = None,
    keep_score: Optional[float] = None,
    rank_source: Optional[str] = None,
) -> NodeWithScore:
    """A copy of ``node`` carrying its attribution score; the caller's node is left untouched.

    ``NodeWithScore.score`` is ``rank_score`` when given (the pruner's calibrated relevance, or the
    score the node arrived with), else the attribution score. ``keep_score`` and ``rank_source``, when
    given, go to the metadata too.

    The first score a node arrived with is kept under :data:`RETRIEVAL_SCORE_KEY` (scoring twice
    keeps the retriever's score, not the first attribution), and the added keys are excluded from
    the text that LLMs and embedding models see. ``text`` replaces the copy's text (sentence-level
    pruning), ``spans`` records where its pieces lie in the text that was scored (the node's text
    as it arrived).
    """
    inner = node.node
    metadata = dict(inner.metadata)
    metadata.setdefault(RETRIEVAL_SCORE_KEY, node.score)
    metadata[ATTRIBUTION_SCORE_KEY] = score
    if keep_score is not None:
        metadata[KEEP_SCORE_KEY] = keep_score
    if rank_source is not None:
        metadata[RANK_SOURCE_KEY] = rank_source
    if spans is not None:
        metadata[SPANS_KEY] = [list(span) for span in spans]
    copy = inner.model_copy(
        deep=True,
        update={
            "metadata": metadata,
            "excluded_llm_metadata_keys": _with_keys(inner.excluded_llm_metadata_keys),
            "excluded_embed_metadata_keys": _with_keys(inner.excluded_embed_metadata_keys),
        },
    )
    if text is not None:
        copy.set_content(text)
        # The copy now holds a subset of the chunk: its offsets in the source file no longer apply.
        copy.start_char_idx = copy.end_char_idx = None
    return NodeWithScore(node=copy, score=score if rank_score is None else rank_score)


def _with_keys(excluded: Sequence[str]) -> List[str]:
    return list(dict.fromkeys([*excluded, *METADATA_KEYS]))
