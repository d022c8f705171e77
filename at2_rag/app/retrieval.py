"""Dense retrieval for the demo and ``ask``: the bundled MiniLM embeddings and an exact FAISS index.

An index over a document set is cached on disk (FAISS index file + JSON documents, never pickle),
keyed by a hash of the documents and the embedder, so re-running over the same corpus is fast.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import shutil
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
_DAMAGE = (OSError, ValueError, KeyError, TypeError, AttributeError)  # what reading a damaged index raises


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
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        problem = _vector_problem(vectors, len(documents))
        if problem is not None:
            raise InputError(f"the index's vectors are unusable: {problem}")
        faiss = _faiss()
        self.documents = list(documents)
        self.vectors = vectors
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
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise InputError(f"k must be a whole number of documents, at least 1; got {k!r}")
        for q in queries:
            if not isinstance(q, str) or not q.strip():
                raise InputError("the query is empty: pass a question to retrieve for")
        q = np.ascontiguousarray(self.embedder.encode(list(queries)).numpy(), dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.index.d:
            raise InputError(f"the embedder gives vectors of shape {q.shape[1:]}, the index holds ({self.index.d},): "
                             "search with the embedder the index was built with")
        scores, hits = self.index.search(q, min(int(k), len(self.documents)))
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
            (tmp / "index.json").write_text(json.dumps(meta), encoding="utf-8")  # ASCII: any str survives
        return folder

    @classmethod
    def load(cls, folder: str | Path, embedder=None) -> VectorIndex:
        """Read an index written by :meth:`save`; a damaged one raises :class:`InputError`."""
        try:
            return cls._read(Path(folder), embedder)
        except _DAMAGE as e:
            raise InputError(f"the index in {str(folder)!r} is unreadable ({e}); delete the folder to rebuild it") from e

    @classmethod
    def _read(cls, folder: Path, embedder=None, dimension: int | None = None) -> VectorIndex:
        """:meth:`load` without the message: one of ``_DAMAGE`` saying what is wrong; with ``dimension``,
        vectors of another length are wrong too."""
        meta = json.loads((folder / "index.json").read_text(encoding="utf-8"))
        vectors = np.load(folder / "vectors.npy", allow_pickle=False)
        if meta.get("format") != INDEX_FORMAT:
            raise ValueError(f"unknown index format {meta.get('format')!r}")
        index = cls([Document(**d) for d in meta["documents"]], vectors, embedder)
        if dimension is not None and index.index.d != dimension:
            raise ValueError(f"vectors of dimension {index.index.d}, not the embedder's {dimension}")
        return index


def cached_index(documents: Sequence[Document], cache: str | Path | None = None, embedder=None) -> VectorIndex:
    """The index for ``documents``, from the cache when it holds one for exactly these documents.

    ``cache`` is the folder holding cached indexes (default: ``indexes/`` in at2-rag's cache). When it
    cannot be written, a warning says so and the index built in memory is returned. A damaged cached
    index (unreadable, vectors of the wrong shape or not finite) is reported in one warning line and rebuilt.
    """
    from ..embeddings import EMBEDDING_DIM
    from ..models import cache_dir

    key = hashlib.sha256(
        json.dumps({"embedder": "all-MiniLM-L6-v2", "docs": [_doc_dict(d) for d in documents]},
                   sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
    ).hexdigest()[:16]
    folder = (Path(cache) if cache else cache_dir() / "indexes") / key
    if folder.is_dir():
        try:
            dimension = EMBEDDING_DIM if embedder is None else getattr(embedder, "dimension", None)
            index = VectorIndex._read(folder, embedder, dimension)
            if [_doc_dict(d) for d in index.documents] == [_doc_dict(d) for d in documents]:
                return index
        except _DAMAGE as e:
            why = " ".join(str(e).split()) or type(e).__name__
            warnings.warn(f"the cached index {folder} is damaged ({why}); rebuilding it", stacklevel=2)
        shutil.rmtree(folder, ignore_errors=True)  # else the save below would keep it
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


def _vector_problem(vectors: np.ndarray, count: int) -> str | None:
    """What makes ``vectors`` unusable as ``count`` documents' embeddings (None when nothing): a shape
    other than (count, dimension), or NaN / infinite values, which FAISS would rank as no match at all."""
    if vectors.ndim != 2 or vectors.shape[0] != count or vectors.shape[1] < 1:
        return f"shape {vectors.shape} for {count} documents; expected ({count}, dimension)"
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
        return f"{bad.size} vector(s) hold NaN or infinite values (document {int(bad[0])} first)"
    return None


def _doc_dict(doc: Document) -> dict[str, Any]:
    d = asdict(doc)
    d["metadata"] = dict(doc.metadata)
    return d


def _default_embedder():
    from ..embeddings import MiniLMEmbedder

    return MiniLMEmbedder()
