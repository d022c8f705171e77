"""Dense retrieval for the demo and ``ask``: the bundled MiniLM embeddings and an exact FAISS index.

An index over a document set is cached on disk (FAISS index file + JSON documents, never pickle),
keyed by a hash of the documents and the embedder, so re-running over the same corpus is fast.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..documents import Document
from ..errors import InputError, ModelNotAvailableError
from ..files import atomic_folder

INDEX_FORMAT = 1


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise ModelNotAvailableError(
            "retrieval needs faiss; install it with `pip install faiss-cpu` (or `pip install 'at2-rag[demo]'`)"
        ) from e
    return faiss


def passage_text(doc: Document) -> str:
    """What is embedded for a document: its title, when it has one, then its text."""
    return f"{doc.title}. {doc.text}" if doc.title else doc.text


class VectorIndex:
    """Documents with unit embedding vectors, searched by inner product (= cosine similarity)."""

    def __init__(self, documents: Sequence[Document], vectors: np.ndarray, embedder=None) -> None:
        if len(documents) != len(vectors):
            raise ValueError(f"{len(documents)} documents but {len(vectors)} vectors")
        faiss = _faiss()
        self.documents = list(documents)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._embedder = embedder
        self.index = faiss.IndexFlatIP(self.vectors.shape[1])
        self.index.add(self.vectors)

    @classmethod
    def build(cls, documents: Sequence[Document], embedder=None) -> VectorIndex:
        """Embed ``documents`` with ``embedder`` (default: the bundled all-MiniLM-L6-v2)."""
        if not documents:
            raise InputError("no documents to index")
        embedder = embedder or _default_embedder()
        vectors = embedder.encode([passage_text(d) for d in documents]).numpy()
        return cls(documents, vectors, embedder)

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = _default_embedder()
        return self._embedder

    def search(self, query: str, k: int = 5) -> list[tuple[Document, float]]:
        """The ``k`` documents most similar to ``query``, best first, with cosine similarities."""
        return self.search_many([query], k)[0]

    def search_many(self, queries: Sequence[str], k: int = 5) -> list[list[tuple[Document, float]]]:
        """:meth:`search` for several queries, embedded in batches."""
        for q in queries:
            if not isinstance(q, str) or not q.strip():
                raise InputError("the query is empty: pass a question to retrieve for")
        q = self.embedder.encode(list(queries)).numpy()
        scores, hits = self.index.search(q, min(k, len(self.documents)))
        return [
            [(self.documents[i], float(s)) for i, s in zip(row_hits.tolist(), row_scores.tolist()) if i >= 0]
            for row_hits, row_scores in zip(hits, scores)
        ]

    def save(self, folder: str | Path) -> Path:
        """Write the index atomically to ``folder`` (vectors as .npy, documents as JSON)."""
        folder = Path(folder)
        with atomic_folder(folder, complete="index.json") as tmp:
            np.save(tmp / "vectors.npy", self.vectors, allow_pickle=False)
            meta = {"format": INDEX_FORMAT, "documents": [_doc_dict(d) for d in self.documents]}
            (tmp / "index.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path, embedder=None) -> VectorIndex:
        """Read an index written by :meth:`save`; a damaged one raises :class:`InputError`."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "index.json").read_text(encoding="utf-8"))
            vectors = np.load(folder / "vectors.npy", allow_pickle=False)
            if meta.get("format") != INDEX_FORMAT:
                raise ValueError(f"unknown index format {meta.get('format')!r}")
            docs = [Document(**d) for d in meta["documents"]]
            return cls(docs, vectors, embedder)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"the index in {str(folder)!r} is unreadable ({e}); delete the folder to rebuild it") from e


def cached_index(documents: Sequence[Document], cache: str | Path | None = None, embedder=None) -> VectorIndex:
    """The index for ``documents``, from the cache when it holds one for exactly these documents.

    ``cache`` is the folder holding cached indexes (default: ``indexes/`` in at2-rag's cache). When it
    cannot be written, a warning says so and the index built in memory is returned.
    """
    from ..models import cache_dir

    key = hashlib.sha256(
        json.dumps({"embedder": "all-MiniLM-L6-v2", "docs": [_doc_dict(d) for d in documents]},
                   sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()[:16]
    folder = (Path(cache) if cache else cache_dir() / "indexes") / key
    if (folder / "index.json").is_file():
        try:
            index = VectorIndex.load(folder, embedder)
            if [_doc_dict(d) for d in index.documents] == [_doc_dict(d) for d in documents]:
                return index
        except InputError:
            pass  # rebuilt below
    index = VectorIndex.build(documents, embedder)
    try:
        index.save(folder)
    except OSError as exc:  # an unwritable cache costs a rebuild next time, not this answer
        warnings.warn(
            f"the index cache {folder.parent} cannot be written ({exc.strerror or exc}); the index is kept "
            "in memory and rebuilt next time: set AT2_RAG_CACHE (or pass cache=) to a writable folder",
            stacklevel=2,
        )
    return index


def _doc_dict(doc: Document) -> dict[str, Any]:
    d = asdict(doc)
    d["metadata"] = dict(doc.metadata)
    return d


def _default_embedder():
    from ..embeddings import MiniLMEmbedder

    return MiniLMEmbedder()
