"""The local model behind a framework component: given up front, or loaded once on first use."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from .attributor import AT2Attributor


class LazyAttributor:
    """An :class:`~at2_rag.AT2Attributor` given up front, or loaded on first use under a lock.

    Loading takes seconds and hundreds of MB, so it happens once, only when there is work to do.
    """

    def __init__(self, attributor: AT2Attributor | None = None, **load_kwargs: Any) -> None:
        self._attributor = attributor
        self._load_kwargs = load_kwargs
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the attributor exists yet (given, or loaded by an earlier call)."""
        return self._attributor is not None

    def get(self) -> AT2Attributor:
        """The attributor, loading it with ``AT2Attributor.from_pretrained`` the first time."""
        if self._attributor is None:
            with self._lock:
                if self._attributor is None:
                    self._attributor = AT2Attributor.from_pretrained(**self._load_kwargs)
        return self._attributor

    async def aget(self) -> AT2Attributor:
        """:meth:`get`, loading in a worker thread so the event loop keeps running meanwhile."""
        if self._attributor is not None:
            return self._attributor
        return await asyncio.to_thread(self.get)
