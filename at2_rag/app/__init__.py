"""The application: CLI, demo, terminal and HTML reports, corpus loading, retrieval, the RAG pipeline.

The top layer: it uses the core (``at2_rag``) and the research code (for ``train``/``evaluate``).
"""
