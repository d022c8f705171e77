"""The LangChain quick-start notebook executes top to bottom (stored without outputs)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[3] / "notebooks" / "langchain_quickstart.ipynb"


@pytest.mark.skipif(not NOTEBOOK.exists(), reason="runs from a checkout of the repository")
def test_quickstart_notebook_runs_without_stored_outputs():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), (
        "store the notebook without outputs"
    )
    resources = {"metadata": {"path": str(NOTEBOOK.parent)}}
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3", resources=resources).execute()
    text = "".join(o.get("text", "") for c in code for o in c.outputs if o.get("output_type") == "stream")
    assert "1889" in text and "[1]" in text
