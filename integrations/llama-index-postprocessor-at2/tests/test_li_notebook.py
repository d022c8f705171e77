"""The quick-start notebook runs top to bottom, offline, and shows pruning and citations."""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_index.postprocessor.at2 import METADATA_KEYS

NOTEBOOK = Path(__file__).resolve().parents[3] / "notebooks" / "llamaindex_quickstart.ipynb"

# Run first in the kernel: any connection beyond this machine fails the notebook.
NO_NETWORK = """
import socket
_connect = socket.socket.connect
def _local_only(sock, address):
    host = address[0] if isinstance(address, tuple) else address
    if sock.family == socket.AF_UNIX or host in ("127.0.0.1", "::1", "localhost"):
        return _connect(sock, address)
    raise OSError(f"the notebook must not use the network (tried to reach {address!r})")
socket.socket.connect = _local_only
"""


def test_quickstart_notebook_executes_offline():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "store the notebook without outputs"
    nb.cells.insert(0, nbformat.v4.new_code_cell(NO_NETWORK))
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()

    outputs = [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    (prompt,) = [o for o in outputs if "Context information is below." in o]  # MockLLM echoes its prompt
    assert "title: First ascent of Everest" in prompt
    assert not any(key in prompt for key in METADATA_KEYS)
    assert any("[1]" in o and "hillary" in o for o in outputs)
