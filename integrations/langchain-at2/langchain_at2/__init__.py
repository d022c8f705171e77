"""LangChain integration of at2-rag: prune retrieved documents and cite sources with AT2 attribution."""

from .chat_model import AT2ChatModel
from .cited_answer import AT2CitedAnswer, default_answer_prompt
from .compressor import AT2DocumentCompressor
from .documents import KEEP_SCORE_KEY, RANK_SOURCE_KEY, RELEVANCE_KEY, SCORE_KEY, SPANS_KEY, format_documents
from .embeddings import AT2BundledEmbeddings
from .local_model import LocalModelFields
from .retriever import AT2PruningRetriever

__version__ = "0.1.0"

__all__ = [
    "AT2BundledEmbeddings",
    "AT2ChatModel",
    "AT2CitedAnswer",
    "AT2DocumentCompressor",
    "AT2PruningRetriever",
    "KEEP_SCORE_KEY",
    "LocalModelFields",
    "RANK_SOURCE_KEY",
    "RELEVANCE_KEY",
    "SCORE_KEY",
    "SPANS_KEY",
    "default_answer_prompt",
    "format_documents",
]
