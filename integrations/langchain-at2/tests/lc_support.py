"""Test data shared by the LangChain tests: a question, its gold document, and short documents."""

from __future__ import annotations

from langchain_core.documents import Document

QUESTION = "When was the Eiffel Tower completed?"
GOLD = 0
TEXTS = [
    "The Eiffel Tower is located in Paris, France. It was completed in 1889.",
    "Mount Everest is the highest mountain on Earth. It lies in the Himalayas.",
    "The capital of Japan is Tokyo. Tokyo hosted the Summer Olympics in 2021.",
    "Bananas are rich in potassium and are grown in tropical regions.",
]


def make_docs() -> list[Document]:
    """Fresh LangChain documents with metadata that must survive pruning."""
    return [
        Document(page_content=t, metadata={"source": f"doc-{i}.txt", "rank": i}, id=f"id-{i}")
        for i, t in enumerate(TEXTS)
    ]
