"""Estimator files: round trip, model checks, corrupt and hostile files."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from tiny_models import tiny_model

from at2_rag import Estimator, EstimatorError, ModelIdentity

IDENT = ModelIdentity("LlamaForCausalLM", 3, 4, 256, "tiny")


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    w = torch.randn(3, 4)
    est = Estimator(w, IDENT, "query", {"method": "fit", "steps": 10, "lr": 1e-3})
    path = est.save(tmp_path / "e.safetensors")
    back = Estimator.load(path)
    assert torch.equal(back.weights, w)
    assert back.model == IDENT and back.kind == "query"
    assert back.recipe == {"method": "fit", "steps": 10, "lr": 1e-3}
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temporary file


def test_uniform_is_average_attention():
    model = tiny_model("llama")
    est = Estimator.uniform(model)
    assert est.weights.shape == (3, 4) and est.recipe["method"] == "uniform"
    feats = torch.rand(3, 4, 5, 6)
    assert torch.allclose(est.source_scores(feats), feats.mean(dim=(0, 1)))


def test_score_is_weighted_head_sum():
    w = torch.randn(3, 4)
    feats = torch.rand(3, 4, 7)
    est = Estimator(w, IDENT)
    brute = sum(w[layer, h] * feats[layer, h] for layer in range(3) for h in range(4))
    assert torch.allclose(est.source_scores(feats), brute, atol=1e-6)


def test_wrong_shape_rejected():
    with pytest.raises(EstimatorError, match="do not match"):
        Estimator(torch.zeros(2, 4), IDENT)


def test_estimator_for_another_model_rejected(tmp_path):
    path = Estimator(torch.rand(30, 9), ModelIdentity("LlamaForCausalLM", 30, 9, 49152, "smol")).save(
        tmp_path / "smol.safetensors"
    )
    with pytest.raises(EstimatorError, match="num_layers 30 != 3"):
        Estimator.load(path).check_model(tiny_model("llama"))


def test_truncated_file_rejected(tmp_path):
    path = Estimator(torch.rand(3, 4), IDENT).save(tmp_path / "e.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    with pytest.raises(EstimatorError, match="not a valid at2-rag estimator"):
        Estimator.load(path)


def test_pickle_renamed_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(EstimatorError, match="not a valid"):
        Estimator.load(path)
    assert not marker.exists()


def test_foreign_safetensors_rejected(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"weights": torch.zeros(3, 4)}, str(path), metadata={"at2_rag": json.dumps({"format": "x"})})
    with pytest.raises(EstimatorError, match="not an at2-rag estimator"):
        Estimator.load(path)
    save_file({"w": torch.zeros(1)}, str(path))
    with pytest.raises(EstimatorError):
        Estimator.load(path)


def test_newer_format_rejected(tmp_path):
    est = Estimator(torch.rand(3, 4), IDENT)
    path = est.save(tmp_path / "e.safetensors")
    from safetensors.torch import save_file

    meta = est.metadata() | {"format_version": 99}
    save_file({"weights": est.weights}, str(path), metadata={"at2_rag": json.dumps(meta)})
    with pytest.raises(EstimatorError, match="upgrade at2-rag"):
        Estimator.load(path)


def test_missing_file_and_unknown_name():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Estimator.load("/nonexistent/e.safetensors")
    with pytest.raises(FileNotFoundError, match="no estimator named"):
        Estimator.load("no-such-estimator")


def test_shipped_names_resolve_to_the_loaded_models_own_estimators(tmp_path, monkeypatch):
    """A fetchable model with estimators shipped as ``<name>``/``<name>-query`` gets them for the shipped
    names; a kind with none shipped falls back to uniform weights, with a warning."""
    import shutil
    import warnings

    import at2_rag.estimator as em

    for name in ("default", "default-query"):
        shutil.copy(em._ESTIMATORS_DIR / f"{name}.safetensors", tmp_path)
    model = tiny_model("qwen2")
    ident = ModelIdentity.of(model)
    w = torch.rand(ident.num_layers, ident.num_heads)
    Estimator(w, ident, "answer", {"method": "fit"}).save(tmp_path / f"{em.SHIPPED_RUNGS[0]}.safetensors")
    other = ModelIdentity("Qwen2ForCausalLM", 5, 4, 256, "another layout")
    Estimator(torch.rand(5, 4), other, "query", {}).save(tmp_path / f"{em.SHIPPED_RUNGS[1]}-query.safetensors")
    monkeypatch.setattr(em, "_ESTIMATORS_DIR", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = Estimator.resolve("default", model, "answer")
    assert torch.equal(est.weights, w) and est.kind == "answer"
    with pytest.warns(UserWarning, match="trained for .*uniform weights"):
        query = Estimator.resolve("default", model, "query")  # the only query rung is another layout
    assert torch.equal(query.weights, Estimator.uniform(model, "query").weights)
    llama = tiny_model("llama")
    with pytest.warns(UserWarning, match="uniform weights"):  # no rung has its layout
        assert torch.equal(Estimator.resolve("default", llama, "answer").weights, Estimator.uniform(llama).weights)
