"""Hostile estimator files: non-finite or overflowing weights, metadata of the wrong JSON types, and
paths that are not regular files (a FIFO would block the loader forever)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from at2_rag import Estimator, EstimatorError, ModelIdentity

IDENT = ModelIdentity("LlamaForCausalLM", 3, 4, 256, "tiny")
GOOD_META = Estimator(torch.ones(3, 4) / 12, IDENT).metadata()


def _write(path, weights: torch.Tensor, meta=GOOD_META, *, raw_meta: str | None = None):
    """An estimator file written with safetensors directly, as a tampered file would be."""
    text = raw_meta if raw_meta is not None else json.dumps(meta)
    save_file({"weights": weights.contiguous()}, str(path), metadata={"at2_rag": text})
    return path


def _with(value: float) -> torch.Tensor:
    w = torch.full((3, 4), 0.05)
    w[1, 2] = value
    return w


BAD_WEIGHTS = {
    "nan": _with(float("nan")),
    "+inf": _with(float("inf")),
    "-inf": _with(float("-inf")),
    "3e38 (sum overflows float32)": torch.full((3, 4), 3e38),
    "-3e38 (sum overflows float32)": torch.full((3, 4), -3e38),
    "finite but huge (1e7)": _with(1e7),
}


@pytest.mark.parametrize("name", list(BAD_WEIGHTS))
def test_bad_weights_rejected_by_the_constructor(name):
    with pytest.raises(EstimatorError, match="weights") as info:
        Estimator(BAD_WEIGHTS[name], IDENT)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", list(BAD_WEIGHTS))
def test_bad_weights_rejected_at_load(tmp_path, name):
    path = _write(tmp_path / "tampered.safetensors", BAD_WEIGHTS[name])
    with pytest.raises(EstimatorError) as info:
        Estimator.load(path)
    message = str(info.value)
    assert str(path) in message and "weights" in message
    assert "at2-rag train" in message  # names the fix
    assert "\n" not in message


def test_large_but_sane_weights_still_load(tmp_path):
    """The bound is generous: weights far beyond any trained estimator's still load and score."""
    w = torch.full((3, 4), 1e4)
    est = Estimator.load(_write(tmp_path / "big.safetensors", w))
    assert torch.isfinite(est.source_scores(torch.rand(3, 4, 5))).all()


BAD_META = {
    "metadata is a list": ("at2_rag", json.dumps([1, 2])),
    "metadata is a string": ("at2_rag", json.dumps("at2-rag-estimator")),
    "format_version 'abc'": ("format_version", "abc"),
    "format_version a list": ("format_version", [1]),
    "format_version a bool": ("format_version", True),
    "format_version 1.5": ("format_version", 1.5),
    "recipe a list": ("recipe", [1, 2]),
    "recipe a string": ("recipe", "fit"),
    "model a list": ("model", [1, 2]),
    "model a string": ("model", "smol"),
    "model num_layers a string": ("model", dict(GOOD_META["model"], num_layers="3")),
    "model num_heads a list": ("model", dict(GOOD_META["model"], num_heads=[4])),
    "model vocab_size a float": ("model", dict(GOOD_META["model"], vocab_size=256.5)),
    "model architecture a number": ("model", dict(GOOD_META["model"], architecture=7)),
    "model name a dict": ("model", dict(GOOD_META["model"], name={})),
    "model num_layers negative": ("model", dict(GOOD_META["model"], num_layers=-3)),
    "kind 'both'": ("kind", "both"),
    "kind a list": ("kind", ["answer"]),
    "calibration a list": ("calibration", ["content-free"]),
    "calibration a number": ("calibration", 1),
    "calibration unknown": ("calibration", "divide"),
}


@pytest.mark.parametrize("name", list(BAD_META))
def test_metadata_of_the_wrong_type_is_an_estimator_error(tmp_path, name):
    key, value = BAD_META[name]
    path = tmp_path / "e.safetensors"
    if key == "at2_rag":
        _write(path, torch.ones(3, 4) / 12, raw_meta=value)
    else:
        _write(path, torch.ones(3, 4) / 12, GOOD_META | {key: value})
    with pytest.raises(EstimatorError) as info:  # not AttributeError / TypeError / a bare ValueError
        Estimator.load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    if key != "at2_rag":
        assert key in message, f"the message should name the field {key!r}: {message}"


def test_missing_optional_fields_keep_their_defaults(tmp_path):
    meta = {k: v for k, v in GOOD_META.items() if k in ("format", "model")}
    est = Estimator.load(_write(tmp_path / "old.safetensors", torch.ones(3, 4) / 12, meta))
    assert est.kind == "answer" and est.recipe == {} and est.calibration is None


def test_kind_checked_by_the_constructor():
    with pytest.raises(EstimatorError, match="kind"):
        Estimator(torch.ones(3, 4) / 12, IDENT, "both")  # type: ignore[arg-type]


_LOAD_SCRIPT = """
import sys
from at2_rag import Estimator, EstimatorError
try:
    Estimator.load(sys.argv[1])
except EstimatorError as exc:
    print("EstimatorError:", exc)
else:
    print("loaded")
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_is_rejected_without_blocking(tmp_path):
    """Loaded in a subprocess with a timeout: a blocked open() may hold the GIL, so a thread could
    not time it out, and a failing run must not hang the test session."""
    fifo = tmp_path / "x.safetensors"
    os.mkfifo(fifo)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _LOAD_SCRIPT, str(fifo)], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail("loading a FIFO blocked instead of failing at once")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("EstimatorError:") and "regular file" in done.stdout
    assert str(fifo) in done.stdout


def test_directory_named_like_an_estimator_is_rejected(tmp_path):
    folder = tmp_path / "x.safetensors"
    folder.mkdir()
    with pytest.raises(EstimatorError, match="regular file"):
        Estimator.load(folder)


def test_symlink_to_an_estimator_file_still_loads(tmp_path):
    real = Estimator(torch.ones(3, 4) / 12, IDENT).save(tmp_path / "real.safetensors")
    link = tmp_path / "link.safetensors"
    link.symlink_to(real)
    assert torch.equal(Estimator.load(link).weights, torch.ones(3, 4) / 12)
