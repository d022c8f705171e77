"""The local model behind a framework component: given up front, or loaded once per process on first use.

Components built without an attributor share one loaded model per (model, device, dtype,
trust_remote_code) through a process-wide cache: a chain of a compressor, a chat model and a
postprocessor loads the weights once. The cache is guarded by a lock and holds its entries weakly, so
a model is freed when no component uses it any more. It only hands out models; attribution state
lives in each call.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any

from .attributor import AT2Attributor

MODEL_KEYS = ("model", "device", "dtype", "trust_remote_code")
"""The ``from_pretrained`` arguments that choose the weights; the others (estimator, overflow, ...)
configure an attributor around them."""


class _Shared:
    """One loaded model: the attributor it was loaded as, and the attributors made around its weights
    for other settings (one per setting, so equal settings get the same object)."""

    def __init__(self, attributor: AT2Attributor, settings: dict[str, Any]) -> None:
        self.by_settings: dict[str, AT2Attributor] = {_settings_key(settings): attributor}
        self.lock = threading.Lock()

    def attributor(self, settings: dict[str, Any]) -> AT2Attributor:
        key = _settings_key(settings)
        with self.lock:
            if key not in self.by_settings:
                first = next(iter(self.by_settings.values()))
                self.by_settings[key] = AT2Attributor(first.model, first.tokenizer, **settings)
            return self.by_settings[key]


_SHARED: weakref.WeakValueDictionary[str, _Shared] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def _settings_key(values: dict[str, Any]) -> str:
    return repr(sorted(values.items(), key=lambda kv: kv[0]))


def shared_attributor(holder: list[_Shared], **load_kwargs: Any) -> AT2Attributor:
    """An attributor for ``load_kwargs`` around the process's one copy of the chosen weights, loading
    them with ``AT2Attributor.from_pretrained`` when no live component holds them; ``holder`` keeps the
    entry alive for the caller."""
    model_key = _settings_key({k: load_kwargs.get(k) for k in MODEL_KEYS})
    settings = {k: v for k, v in load_kwargs.items() if k not in MODEL_KEYS}
    with _SHARED_LOCK:  # loads are rare: one lock keeps two components from loading the same weights
        entry = _SHARED.get(model_key)
        if entry is None:
            entry = _Shared(AT2Attributor.from_pretrained(**load_kwargs), settings)
            _SHARED[model_key] = entry
    holder.append(entry)
    return entry.attributor(settings)


class LazyAttributor:
    """An :class:`~at2_rag.AT2Attributor` given up front, or loaded on first use under a lock.

    Loading takes seconds and hundreds of MB, so it happens only when there is work to do, and once
    per process for the same (model, device, dtype, trust_remote_code): components built without an
    attributor share the weights (each gets an attributor with its own estimator and settings).
    """

    def __init__(self, attributor: AT2Attributor | None = None, **load_kwargs: Any) -> None:
        self._attributor = attributor
        self._load_kwargs = load_kwargs
        self._lock = threading.Lock()
        self._holder: list[_Shared] = []

    @property
    def loaded(self) -> bool:
        """Whether the attributor exists yet (given, or loaded by an earlier call)."""
        return self._attributor is not None

    def get(self) -> AT2Attributor:
        """The attributor, from the process-wide cache (loaded with ``AT2Attributor.from_pretrained``
        the first time)."""
        if self._attributor is None:
            with self._lock:
                if self._attributor is None:
                    self._attributor = shared_attributor(self._holder, **self._load_kwargs)
        return self._attributor

    async def aget(self) -> AT2Attributor:
        """:meth:`get`, loading in a worker thread so the event loop keeps running meanwhile."""
        if self._attributor is not None:
            return self._attributor
        return await asyncio.to_thread(self.get)
