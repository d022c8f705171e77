"""at2-rag: faithful context attribution (AT2) for RAG pipelines — prune context, cite sources.

The public surface (pinned by ``tests/test_public_api.py``): the core's attribution, pruning and
citation names, plus the application's RAG pipeline. Integrations import only these names.

Each name is imported from its module on first use (PEP 562), so ``import at2_rag`` (and the
``at2-rag`` command's ``--help``) does not load torch and transformers until something needs them.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "QAResult": ".app.pipeline",
    "RAGPipeline": ".app.pipeline",
    "AT2Attributor": ".attributor",
    "check_new_tokens": ".attributor",
    "Citation": ".citations",
    "CitedSource": ".citations",
    "cite": ".citations",
    "with_markers": ".citations",
    "Document": ".documents",
    "DocumentLike": ".documents",
    "check_encodable": ".documents",
    "format_context": ".documents",
    "MiniLMEmbedder": ".embeddings",
    "AT2Error": ".errors",
    "ContextTooLongError": ".errors",
    "DeviceError": ".errors",
    "EstimatorError": ".errors",
    "InputError": ".errors",
    "ModelNotAvailableError": ".errors",
    "UnsupportedModelError": ".errors",
    "Estimator": ".estimator",
    "ModelIdentity": ".estimator",
    "LazyAttributor": ".lazy",
    "load_model": ".models",
    "CITATION_POLICY": ".policy",
    "DEFAULT_POLICY": ".policy",
    "SENTENCE_POLICY": ".policy",
    "KeepPolicy": ".policy",
    "keep_policy": ".policy",
    "DEFAULT_INSTRUCTION": ".prompts",
    "Granularity": ".prompts",
    "Prompt": ".prompts",
    "Source": ".prompts",
    "build_prompt": ".prompts",
    "MODES": ".pruning",
    "RETRIEVAL_RANK_KEY": ".documents",
    "Mode": ".pruning",
    "Pruner": ".pruning",
    "PruneResult": ".pruning",
    "fused_scores": ".ranking",
    "check_refine_ablations": ".refine",
    "AnswerSentence": ".results",
    "Attribution": ".results",
    "ScoredSource": ".results",
    "split_sentences": ".sentences",
    "TokenStream": ".streaming",
    "answer_text": ".streaming",
    "chat_prompt": ".streaming",
    "greedy_generate": ".streaming",
    "prompt_ids": ".streaming",
}
"""Public name → the module (relative to this package) that defines it; the TYPE_CHECKING block below
says the same to type checkers, and ``tests/test_cli_startup.py`` checks the two agree."""

if TYPE_CHECKING:
    from .app.pipeline import QAResult, RAGPipeline
    from .attributor import AT2Attributor, check_new_tokens
    from .citations import Citation, CitedSource, cite, with_markers
    from .documents import RETRIEVAL_RANK_KEY, Document, DocumentLike, check_encodable, format_context
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
    from .pruning import MODES, Mode, Pruner, PruneResult
    from .ranking import fused_scores
    from .refine import check_refine_ablations
    from .results import AnswerSentence, Attribution, ScoredSource
    from .sentences import split_sentences
    from .streaming import TokenStream, answer_text, chat_prompt, greedy_generate, prompt_ids

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


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use and kept here; else a submodule, as an
    eager package would have had it (``at2_rag.models`` after ``import at2_rag``)."""
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's own names and every public one, loaded or not (for completion and ``dir()``)."""
    return sorted(set(globals()) | set(__all__))
