"""AT2 context attribution for LlamaIndex: prune retrieved nodes and cite them by measured attribution."""

from llama_index.postprocessor.at2.citation_engine import AT2CitationQueryEngine
from llama_index.postprocessor.at2.embedding import AT2BundledEmbedding
from llama_index.postprocessor.at2.nodes import (
    ATTRIBUTION_SCORE_KEY,
    METADATA_KEYS,
    RETRIEVAL_SCORE_KEY,
    SPANS_KEY,
)
from llama_index.postprocessor.at2.postprocessor import AT2Postprocessor

from at2_rag import LazyAttributor

__all__ = [
    "ATTRIBUTION_SCORE_KEY",
    "AT2BundledEmbedding",
    "AT2CitationQueryEngine",
    "AT2Postprocessor",
    "LazyAttributor",
    "METADATA_KEYS",
    "RETRIEVAL_SCORE_KEY",
    "SPANS_KEY",
]
