"""at2-rag: faithful context attribution (AT2) for RAG pipelines — prune context, cite sources.

The public surface (pinned by ``tests/test_public_api.py``): the core's attribution, pruning and
citation names, plus the application's RAG pipeline. Integrations import only these names.
"""

from .app.pipeline import QAResult, RAGPipeline  # noqa: E402,I001  (the application layer, last)
from .attributor import AT2Attributor, check_new_tokens
from .citations import Citation, CitedSource, cite, with_markers
from .documents import Document, DocumentLike, check_encodable, format_context
from .embeddings import MiniLMEmbedder
from .errors import (
    AT2Error,
    ContextTooLongError,
    DeviceError,
    EstimatorError,
    InputError,
    ModelNotAvailableError,
    UnsupportedModelError,
)
from .estimator import Estimator, ModelIdentity
from .lazy import LazyAttributor
from .models import load_model
from .policy import CITATION_POLICY, DEFAULT_POLICY, SENTENCE_POLICY, KeepPolicy, keep_policy
from .prompts import DEFAULT_INSTRUCTION, Granularity, Prompt, Source, build_prompt
from .pruning import MODES, RETRIEVAL_RANK_KEY, Mode, Pruner, PruneResult, fused_scores
from .refine import check_refine_ablations
from .results import AnswerSentence, Attribution, ScoredSource
from .sentences import split_sentences
from .streaming import TokenStream, answer_text, chat_prompt, greedy_generate, prompt_ids

__version__ = "0.1.0"

__all__ = [
    "AT2Attributor",
    "AT2Error",
    "AnswerSentence",
    "Attribution",
    "CITATION_POLICY",
    "Citation",
    "CitedSource",
    "ContextTooLongError",
    "DEFAULT_INSTRUCTION",
    "DEFAULT_POLICY",
    "DeviceError",
    "Document",
    "DocumentLike",
    "Estimator",
    "EstimatorError",
    "Granularity",
    "InputError",
    "KeepPolicy",
    "LazyAttributor",
    "MODES",
    "MiniLMEmbedder",
    "Mode",
    "ModelIdentity",
    "ModelNotAvailableError",
    "Prompt",
    "PruneResult",
    "Pruner",
    "QAResult",
    "RAGPipeline",
    "RETRIEVAL_RANK_KEY",
    "SENTENCE_POLICY",
    "TokenStream",
    "ScoredSource",
    "Source",
    "UnsupportedModelError",
    "answer_text",
    "build_prompt",
    "chat_prompt",
    "check_encodable",
    "check_new_tokens",
    "check_refine_ablations",
    "cite",
    "format_context",
    "fused_scores",
    "greedy_generate",
    "keep_policy",
    "load_model",
    "prompt_ids",
    "split_sentences",
    "with_markers",
]
