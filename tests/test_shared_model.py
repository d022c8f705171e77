"""Components built without an attributor share one loaded model per (model, device, dtype) in a process."""

from __future__ import annotations

import gc
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest

import at2_rag.lazy
from at2_rag import AT2Attributor, LazyAttributor


@pytest.fixture
def loads(monkeypatch, default_model):
    """Counts ``AT2Attributor.from_pretrained`` calls; each builds an attributor around the one real model."""
    monkeypatch.setattr(at2_rag.lazy, "_SHARED", weakref.WeakValueDictionary())
    calls: list[dict] = []
    weights, tok = default_model

    def load(model: str = "default", estimator="default", **kwargs):
        calls.append({"model": model, "estimator": estimator, **kwargs})
        for key in ("device", "dtype", "trust_remote_code"):
            kwargs.pop(key, None)
        return AT2Attributor(weights, tok, estimator, **kwargs)

    monkeypatch.setattr(AT2Attributor, "from_pretrained", staticmethod(load))
    return calls


def test_two_components_with_the_same_settings_load_once_and_share_the_attributor(loads):
    first, second = LazyAttributor(model="default", dtype="float32"), LazyAttributor(model="default", dtype="float32")
    assert not first.loaded and not second.loaded
    assert first.get() is second.get()
    assert loads == [{"model": "default", "estimator": "default", "dtype": "float32"}]


def test_other_settings_share_the_weights_with_their_own_estimator(loads):
    compressor_like = LazyAttributor(model="default", device=None, dtype=None, estimator="default", overflow="drop_last")
    chat_like = LazyAttributor(model="default", device=None, dtype=None)
    uniform = LazyAttributor(model="default", device=None, dtype=None, estimator=None)
    a, b, c = compressor_like.get(), chat_like.get(), uniform.get()
    assert len(loads) == 1
    assert a.model is b.model is c.model and a.tokenizer is b.tokenizer
    assert a.overflow == "drop_last" and b.overflow == "error"
    assert c.estimator.recipe == {"method": "uniform"} and a.estimator.recipe != c.estimator.recipe
    assert LazyAttributor(model="default", device=None, dtype=None).get() is b  # equal settings: the same object


def test_another_dtype_or_device_is_another_model(loads):
    LazyAttributor(model="default", dtype="float32").get()
    LazyAttributor(model="default", dtype="bfloat16").get()
    LazyAttributor(model="default", dtype="float32", device="cpu").get()
    assert [c.get("dtype") for c in loads] == ["float32", "bfloat16", "float32"]


def test_a_given_attributor_is_used_and_nothing_is_loaded(loads, default_model):
    att = AT2Attributor(*default_model)
    assert LazyAttributor(att).get() is att and loads == []


def test_a_model_no_component_uses_is_freed_and_loaded_again(loads):
    lazy = LazyAttributor(model="default")
    lazy.get()
    assert len(at2_rag.lazy._SHARED) == 1
    del lazy
    gc.collect()
    assert len(at2_rag.lazy._SHARED) == 0
    LazyAttributor(model="default").get()
    assert len(loads) == 2


def test_concurrent_first_calls_load_once(loads):
    components = [LazyAttributor(model="default") for _ in range(3)]
    barrier = threading.Barrier(6)

    def get(i: int) -> AT2Attributor:
        barrier.wait()
        return components[i % 3].get()

    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(get, range(6)))
    assert len(loads) == 1 and all(a is got[0] for a in got)
