"""Loss, fit, resumable data generation and estimator recipes."""

from __future__ import annotations

import json
import stat

import pytest
import torch
from tiny_models import tiny_model

from at2_rag import AT2Attributor, Estimator, ModelIdentity
from at2_rag.files import current_umask
from at2_rag.research import ablation_data
from at2_rag.research.ablation_data import generate_training_data
from at2_rag.research.data import write_jsonl
from at2_rag.research.fitting import (
    Instances,
    L1Normalized,
    NegativePearson,
    NonNegative,
    fit_estimator,
    make_instances,
    mask_predictions,
    pearson_loss,
    train_estimator,
)
from at2_rag.research.shards import load_records


def test_pearson_loss_hand_values():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert float(pearson_loss(x, 2 * x + 1)) == pytest.approx(-1.0)
    assert float(pearson_loss(x, -x)) == pytest.approx(1.0)
    y = torch.tensor([[1.0, -1.0, -1.0, 1.0]])  # orthogonal to the centred ramp
    assert float(pearson_loss(x, y)) == pytest.approx(0.0, abs=1e-7)


def synthetic(n, true_w, n_masks=24, n_sources=6, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(n, true_w.numel(), n_sources, generator=g)
    signs = (torch.rand(n, n_masks, n_sources, generator=g) < 0.5).float() * 2 - 1
    y = mask_predictions(true_w.flatten(), feats, signs)
    y = y + noise * y.std() * torch.randn(y.shape, generator=g)
    return Instances(feats, signs, y, tuple(true_w.shape))


def test_fit_recovers_known_head_weights():
    g = torch.Generator().manual_seed(1)
    true_w = torch.zeros(4, 5)
    true_w[1, 2], true_w[3, 0], true_w[0, 4] = 3.0, -2.0, 0.5
    true_w += 0.05 * torch.rand(4, 5, generator=g)
    train, val = synthetic(300, true_w, seed=2), synthetic(100, true_w, seed=3)
    w, history = fit_estimator(train, val, steps=600, lr=1e-2, log=None)
    assert w.shape == (4, 5) and float(w.abs().sum()) == pytest.approx(1.0, abs=1e-5)
    cos = torch.nn.functional.cosine_similarity(w.flatten(), true_w.flatten(), dim=0)
    assert cos > 0.98
    assert history[-1]["val_pearson"] > 0.95
    # Uniform weights (the starting point) are clearly worse on held-out data.
    uniform = torch.full((20,), 1 / 20)
    assert -float(pearson_loss(mask_predictions(uniform, val.features, val.signs), val.targets)) < 0.9


def test_fit_with_fewer_examples_than_batch_and_non_negative():
    true_w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    train = synthetic(10, true_w, seed=4)
    w, _ = fit_estimator(train, steps=50, batch_size=512, non_negative=True, log=None)
    assert (w >= 0).all() and torch.isfinite(w).all()


def test_loss_and_constraint_objects_reproduce_the_defaults():
    x, y = torch.randn(3, 8), torch.randn(3, 8)
    assert torch.equal(NegativePearson()(x, y), pearson_loss(x, y))
    true_w = torch.tensor([[1.0, -0.5], [0.2, 2.0]])
    train = synthetic(40, true_w, seed=5)
    default, _ = fit_estimator(train, steps=30, log=None)
    explicit, _ = fit_estimator(train, steps=30, loss=NegativePearson(), constraints=[L1Normalized()], log=None)
    assert torch.equal(default, explicit)
    raw, _ = fit_estimator(train, steps=30, constraints=[], log=None)
    assert float(raw.abs().sum()) != pytest.approx(1.0)
    L1Normalized().apply(raw)
    assert torch.equal(raw, default)
    shorthand, _ = fit_estimator(train, steps=30, non_negative=True, log=None)
    spelled, _ = fit_estimator(train, steps=30, constraints=[NonNegative(), L1Normalized()], log=None)
    assert torch.equal(shorthand, spelled) and (shorthand >= 0).all()
    assert float(shorthand.sum()) == pytest.approx(1.0, abs=1e-6)
    w = torch.tensor([-1.0, 2.0, -3.0])
    NonNegative().apply(w)
    assert w.tolist() == [0.0, 2.0, 0.0]


@pytest.fixture()
def tiny_setup(tokenizer, tmp_path):
    model = tiny_model("llama", vocab_size=len(tokenizer))
    att = AT2Attributor(model, tokenizer, estimator=None)
    data = tmp_path / "data.jsonl"
    examples = [
        {"id": f"ex{i}", "question": f"Question {i}?", "answers": ["alpha"],
         "documents": [{"id": f"d{j}", "title": f"T{j}", "text": f"Doc {j} says {i}. More text here."} for j in range(3)],
         "gold_document_ids": ["d0"]}
        for i in range(40)
    ]
    write_jsonl(data, examples)
    return att, data


def run(att, data, out, **kw):
    return generate_training_data(
        att, data, out, split="train", limit=4, k=3, n_masks=4, max_new_tokens=5, shard_size=1,
        progress=False, **kw,
    )


def test_training_data_is_resumable_and_deterministic(tiny_setup, tmp_path, monkeypatch):
    att, data = tiny_setup
    clean = run(att, data, tmp_path / "clean")
    assert len(clean) == 4 and all(p.exists() for p in clean)
    mode = 0o666 & ~current_umask()  # written atomically, yet with a plain file's permissions
    assert all(stat.S_IMODE(p.stat().st_mode) == mode for p in [*clean, tmp_path / "clean" / "recipe.json"])
    # Kill mid-way: the third example raises; the completed shards stay, no half file is left.
    real = ablation_data.build_record
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ablation_data, "build_record", dying)
    with pytest.raises(KeyboardInterrupt):
        run(att, data, tmp_path / "resumed")
    done = sorted((tmp_path / "resumed").glob("shard-*"))
    assert len(done) == 2 and not list((tmp_path / "resumed").glob("*.tmp"))
    monkeypatch.setattr(ablation_data, "build_record", real)
    resumed = run(att, data, tmp_path / "resumed")
    for a, b in zip(clean, resumed):
        assert a.read_bytes() == b.read_bytes()
    # A different recipe in the same folder is refused rather than mixed.
    with pytest.raises(ValueError, match="another recipe"):
        generate_training_data(att, data, tmp_path / "resumed", limit=4, k=3, n_masks=8,
                               max_new_tokens=5, shard_size=1, progress=False)


def test_training_data_keeps_features_per_call_not_on_the_attributor(tiny_setup, tmp_path, monkeypatch):
    att, data = tiny_setup
    real, seen = att.generate, []

    def spy(*a, **k):
        seen.append((k.get("keep_features"), att.keep_features))
        return real(*a, **k)

    monkeypatch.setattr(att, "generate", spy)
    run(att, data, tmp_path / "shards")
    assert seen and all(s == (True, False) for s in seen)
    assert load_records(tmp_path / "shards")[0][0]["features"].ndim == 4


def test_records_instances_and_estimator_recipe(tiny_setup, tmp_path):
    att, data = tiny_setup
    run(att, data, tmp_path / "shards")
    records = load_records(tmp_path / "shards")
    assert len(records) == 4
    t, meta = records[0]
    L, H = 3, 4
    S = len(meta["source_document"])
    assert t["features"].shape[:2] == (L, H) and t["features"].shape[-1] == S
    assert t["masks"].shape == (4, S) and t["targets"].shape[0] == 4
    inst = make_instances(records, "query")
    assert inst.features.shape[1] == L * H
    est, history = train_estimator(
        tmp_path / "shards", ModelIdentity.of(att.model), kind="query", steps=20, log=None
    )
    path = est.save(tmp_path / "q.safetensors")
    back = Estimator.load(path)
    assert back.kind == "query" and back.recipe["data"]["n_masks"] == 4
    assert back.recipe["examples"] == 4 and json.dumps(back.recipe)
    assert back.recipe["method"] == "negative-pearson" and "constraints" not in back.recipe["fit"]
    est, _ = train_estimator(tmp_path / "shards", ModelIdentity.of(att.model), kind="query", steps=5, log=None,
                             loss=NegativePearson(), constraints=[NonNegative(), L1Normalized()])
    assert est.recipe["fit"]["constraints"] == ["non-negative", "l1-normalized"] and json.dumps(est.recipe)
    assert (est.weights >= 0).all()
