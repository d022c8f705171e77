"""AT2 context attribution for LlamaIndex: prune retrieved nodes, cite them by measured attribution, and
answer with the bundled local model, all offline."""

from llama_index.postprocessor.at2.citation_engine import AT2CitationQueryEngine
from llama_index.postprocessor.at2.embedding import AT2BundledEmbedding
from llama_index.postprocessor.at2.llm import AT2LLM
from llama_index.postprocessor.at2.nodes import (
    ATTRIBUTION_SCORE_KEY,
    KEEP_SCORE_KEY,
    METADATA_KEYS,
    RANK_SOURCE_KEY,
    RETRIEVAL_SCORE_KEY,
    SPANS_KEY,
)
from llama_index.postprocessor.at2.postprocessor import AT2Postprocessor

from at2_rag import LazyAttributor

__all__ = [
    "ATTRIBUTION_SCORE_KEY",
    "AT2BundledEmbedding",
    "AT2CitationQueryEngine",
    "AT2LLM",
    "AT2Postprocessor",
    "KEEP_SCORE_KEY",
    "LazyAttributor",
    "METADATA_KEYS",
    "RANK_SOURCE_KEY",
    "RETRIEVAL_SCORE_KEY",
    "SPANS_KEY",
]
