"""at2-rag: faithful context attribution (AT2) for RAG pipelines — prune context, cite sources."""

from .attributor import AnswerSentence, AT2Attributor, Attribution, ScoredSource
from .citations import Citation, CitedSource, cite, with_markers
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
from .prompts import Document, Prompt, Source, build_prompt
from .pruning import DEFAULT_POLICY, RETRIEVAL_RANK_KEY, KeepPolicy, Pruner, PruneResult, fused_scores
from .sentences import split_sentences

__version__ = "0.1.0"

__all__ = [
    "AT2Attributor",
    "AT2Error",
    "AnswerSentence",
    "Attribution",
    "Citation",
    "CitedSource",
    "ContextTooLongError",
    "DEFAULT_POLICY",
    "DeviceError",
    "Document",
    "Estimator",
    "EstimatorError",
    "InputError",
    "KeepPolicy",
    "LazyAttributor",
    "ModelIdentity",
    "ModelNotAvailableError",
    "Prompt",
    "PruneResult",
    "RETRIEVAL_RANK_KEY",
    "Pruner",
    "ScoredSource",
    "Source",
    "UnsupportedModelError",
    "build_prompt",
    "cite",
    "fused_scores",
    "load_model",
    "split_sentences",
    "with_markers",
]
