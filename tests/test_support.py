"""Support pruning: content-free calibration, reference-answer ablation data, rank fusion, the
shipped support estimator and the default pruner."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_model

from at2_rag import DEFAULT_POLICY, AT2Attributor, Estimator, KeepPolicy, Pruner, fused_scores
from at2_rag.ablation import logit_prob
from at2_rag.attributor import CONTENT_FREE_QUESTION
from at2_rag.errors import EstimatorError
from at2_rag.prompts import encode
from at2_rag.ranking import standardized
from at2_rag.research.ablation_data import build_support_record, generate_support_data, support_documents
from at2_rag.research.data import write_jsonl
from at2_rag.research.fitting import fit_estimator, make_instances, mask_predictions, pearson_loss
from at2_rag.research.shards import load_records

SUPPORT_DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "support-run" / "support"
DOCS = [
    {"id": "a", "title": "Kilimanjaro", "text": "Kilimanjaro is the highest mountain in Africa."},
    {"id": "b", "title": "Everest", "text": "Mount Everest is the highest mountain on Earth. It is in Nepal."},
    {"id": "c", "title": "Bananas", "text": "Bananas are rich in potassium."},
]


@pytest.fixture(scope="module")
def tiny_att(tokenizer):
    return AT2Attributor(tiny_model("llama", vocab_size=len(tokenizer)), tokenizer, estimator=None)


def test_content_free_row_equals_a_separate_pass_on_the_null_prompt(tiny_att):
    prompt = tiny_att.prompt("Which mountain is the highest on Earth?", DOCS)
    raw, null = tiny_att.query_features(prompt, content_free=True)
    alone, none = tiny_att.query_features(prompt)
    null_alone, _ = tiny_att.query_features(tiny_att.prompt(CONTENT_FREE_QUESTION, DOCS))
    assert none is None
    assert raw.shape == (3, 4, len(DOCS))
    torch.testing.assert_close(raw, alone, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(null, null_alone, atol=1e-6, rtol=1e-5)  # padding changed nothing
    assert not torch.allclose(raw, null)


def test_query_features_match_eager_attention(tokenizer):
    """Independent computation: mean over the question rows of eager attention summed per document."""
    model = tiny_model("llama", vocab_size=len(tokenizer), attn="eager")
    prompt = AT2Attributor(tiny_model("llama", vocab_size=len(tokenizer)), tokenizer, estimator=None).prompt(
        "Which mountain is the highest?", DOCS)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt.input_ids]), output_attentions=True)
    att = torch.stack(out.attentions)[:, 0]  # (L, H, T, T)
    rows = range(prompt.question_tokens[0], len(prompt))
    expected = torch.stack(
        [att[:, :, rows, s.token_start : s.token_end].sum(-1).mean(-1) for s in prompt.sources], dim=-1
    )
    got, _ = AT2Attributor(tiny_model("llama", vocab_size=len(tokenizer)), tokenizer, estimator=None).query_features(
        prompt, content_free=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_calibrated_estimator_scores_raw_minus_null(tiny_att, tmp_path):
    w = torch.rand(3, 4)
    est = Estimator(w, Estimator.uniform(tiny_att.model).model, "query", {"method": "test"}, "content-free")
    path = est.save(tmp_path / "cal.safetensors")
    loaded = Estimator.load(path)
    assert loaded.calibration == "content-free" and loaded.kind == "query"
    result = tiny_att.score_query("Which mountain is the highest?", DOCS, estimator=loaded)
    raw, null = tiny_att.query_features(result.prompt, content_free=True)
    torch.testing.assert_close(result.scores, torch.einsum("lhs,lh->s", raw - null, w))


def test_calibration_metadata_is_checked():
    ident = Estimator.uniform(tiny_model("llama")).model
    with pytest.raises(EstimatorError, match="calibration"):
        Estimator(torch.ones(3, 4), ident, "query", {}, "divide")
    with pytest.raises(EstimatorError, match="only query estimators"):
        Estimator(torch.ones(3, 4), ident, "answer", {}, "content-free")
    assert Estimator.load("default").calibration is None  # files written before calibration load


def test_support_record_targets_match_direct_masked_passes(tiny_att):
    ex = {"id": "q1", "question": "Which mountain is the highest?", "documents": DOCS,
          "answers": ["Mount Everest"], "gold_document_ids": ["b"]}
    tensors, meta = build_support_record(tiny_att, ex, k=3, order="shuffled", n_masks=4, batch_size=2)
    docs = support_documents(ex, 3, "shuffled")
    prompt = tiny_att.prompt(ex["question"], docs)
    answer = encode(tiny_att.tokenizer, "Mount Everest")
    assert meta["gold_positions"] == [[d["id"] for d in docs].index("b")]
    assert meta["retriever_ranks"] == [[d["id"] for d in DOCS].index(d["id"]) for d in docs]
    ids = torch.tensor([prompt.input_ids + answer])
    for m, mask in enumerate(tensors["masks"].bool()):
        keep = torch.ones_like(ids)
        for s in prompt.sources:
            if not mask[s.index]:
                keep[0, s.token_start : s.token_end] = 0
        with torch.no_grad():
            logits = tiny_att.model(input_ids=ids, attention_mask=keep).logits[0, len(prompt) - 1 : -1]
        logp = torch.log_softmax(logits.double(), -1).gather(-1, torch.tensor(answer)[:, None]).sum()
        assert float(tensors["targets"][m, 0]) == pytest.approx(float(logit_prob(logp)), abs=1e-3)
    raw, null = tiny_att.query_features(prompt, content_free=True)
    torch.testing.assert_close(tensors["query"].float(), raw, atol=2e-3, rtol=2e-3)  # stored as float16
    torch.testing.assert_close(tensors["query_null"].float(), null, atol=2e-3, rtol=2e-3)


def test_support_data_is_resumable_and_trains_a_calibrated_estimator(tiny_att, tmp_path):
    data = tmp_path / "data.jsonl"
    rows = [{"id": f"q{i}", "question": f"Question number {i}?", "documents": DOCS, "answers": ["Everest"],
             "gold_document_ids": ["b"]} for i in range(3)]
    rows.append({"id": "noref", "question": "No reference?", "documents": DOCS})
    write_jsonl(data, rows)
    out = tmp_path / "shards"
    configs = ((3, "retriever"), (2, "shuffled"))
    paths = generate_support_data(tiny_att, data, out, split=None, configs=configs, n_masks=6,
                                  shard_size=2, progress=False)
    records = load_records(out)
    assert len(records) == 6  # 3 examples with a reference answer × 2 configs
    assert {(m["k"], m["order"]) for _, m in records} == set(configs)
    first = paths[0].read_bytes()
    paths[0].unlink()
    generate_support_data(tiny_att, data, out, split=None, configs=configs, n_masks=6, shard_size=2,
                          progress=False)
    assert paths[0].read_bytes() == first  # deterministic
    with pytest.raises(ValueError, match="another recipe"):
        generate_support_data(tiny_att, data, out, split=None, configs=configs, n_masks=5, shard_size=2,
                              progress=False)
    raw = make_instances(records, "query")
    cal = make_instances(records, "query", calibrated=True)
    t, _ = records[0]
    k = t["query"].shape[-1]
    torch.testing.assert_close(cal.features[0, :, :k], (t["query"] - t["query_null"]).reshape(12, k))
    assert not torch.allclose(raw.features, cal.features)


def test_standardized_and_fused_scores_against_numpy():
    rng = np.random.default_rng(0)
    s = rng.normal(size=7)
    z = (s - s.mean()) / s.std()
    np.testing.assert_allclose(standardized(s.tolist()), z, atol=1e-12)
    np.testing.assert_allclose(fused_scores(s.tolist(), 2.5), z - 2.5 * np.log1p(np.arange(7)), atol=1e-12)
    assert fused_scores(s.tolist(), 0) == s.tolist()
    assert standardized([3.0, 3.0]) == [0.0, 0.0] and standardized([]) == []
    # A large rank weight reproduces the retriever's order; zero reproduces AT2's.
    assert KeepPolicy(top_k=7).select(fused_scores(s.tolist(), 1e6)) == list(range(7))
    assert KeepPolicy(top_k=7).select(fused_scores(s.tolist(), 0)) == list(np.argsort(-s))


def test_shipped_support_estimator_and_recipe():
    est = Estimator.load("default-support")
    assert est.kind == "query" and est.calibration is None
    recipe = est.recipe
    assert recipe["target"].startswith("reference answer")
    assert recipe["data"]["configs"] == [[10, "retriever"], [10, "shuffled"], [5, "shuffled"]]
    assert recipe["fusion"]["rank_weight"] > 0
    assert recipe["validation"]["gold_first_shuffled"] > 0.75  # chance is 0.1


@pytest.mark.skipif(not SUPPORT_DATA.exists(), reason="support data not present")
def test_refit_on_committed_support_data_reproduces_the_shipped_estimator():
    est = Estimator.load("default-support")
    train = make_instances(load_records(SUPPORT_DATA / "train"), "query")
    val = make_instances(load_records(SUPPORT_DATA / "validation"), "query")
    weights, history = fit_estimator(train, val, steps=est.recipe["fit"]["steps"], log=None)
    assert history[-1]["val_pearson"] == pytest.approx(est.recipe["validation"]["pearson"], abs=0.01)
    assert float(torch.nn.functional.cosine_similarity(weights.flatten(), est.weights.flatten(), dim=0)) > 0.99
    shipped = -float(pearson_loss(mask_predictions(est.weights.flatten(), val.features, val.signs), val.targets))
    assert shipped == pytest.approx(est.recipe["validation"]["pearson"], abs=1e-3)


def test_pruner_defaults_to_support_mode_with_rank_fusion(attributor):
    pruner = Pruner(attributor, input_order="retriever")
    assert pruner.mode == "support" and pruner.policy == DEFAULT_POLICY
    result = pruner.prune("What is the highest mountain on Earth?", [d["text"] for d in DOCS])
    weight = Estimator.load("default-support").recipe["fusion"]["rank_weight"]
    assert result.keep_scores == pytest.approx(fused_scores(result.scores, weight))
    assert result.kept == DEFAULT_POLICY.select(result.keep_scores) and result.rank_source == "input order"
    assert result.draft == ""
    alone = Pruner(attributor, rank_weight=0, input_order="retriever").prune(
        "What is the highest mountain on Earth?", [d["text"] for d in DOCS])
    assert alone.keep_scores == alone.scores == result.scores and alone.rank_source == "none"
    unknown = Pruner(attributor).prune("What is the highest mountain on Earth?", [d["text"] for d in DOCS])
    assert unknown.keep_scores == unknown.scores == result.scores and unknown.rank_source == "none"
    assert alone.kept == [1]  # the support estimator alone finds the Everest passage
    with pytest.raises(ValueError, match="rank_weight"):
        Pruner(attributor, rank_weight=-1.0)
    with pytest.raises(ValueError, match="rank_weight"):
        Pruner(attributor, rank_weight=math.inf)
    assert Pruner(attributor, mode="draft")._rank_weight() == 0.0


def test_support_estimator_resists_the_recency_bias(attributor):
    """The gold passage last or first: the support estimator ranks it first both ways, with no rank."""
    texts = [d["text"] for d in DOCS]
    q = "Which country is Mount Everest in?"
    for order in (texts, texts[::-1]):
        result = Pruner(attributor, rank_weight=0).prune(q, order)
        assert order[result.kept[0]] == texts[1], result.scores


def test_bar_fractions_scale_keep_scores_and_keep_scores_default_to_scores():
    from types import SimpleNamespace

    from at2_rag.app.pipeline import QAResult

    def result(scores, keep):
        prune = SimpleNamespace(scores=scores, keep_scores=keep)
        return QAResult("q?", [], [], prune, None, [])  # type: ignore[arg-type]

    r = result([0.1, 0.3, 0.2], [-1.0, 3.0, float("-inf")])
    assert r.keep_scores == [-1.0, 3.0, float("-inf")]
    assert r.bar_fractions() == [0.0, 1.0, 0.0]
    assert result([0.1, 0.3, 0.2], [0.1, 0.3, 0.2]).bar_fractions() == pytest.approx([0.0, 1.0, 0.5])
    # A PruneResult built without keep scores ranks by its attribution scores.
    from at2_rag import PruneResult

    assert PruneResult([], [0.2, 0.1], [0], [3, 4], None).keep_scores == [0.2, 0.1]  # type: ignore[arg-type]
    assert result([0.5, 0.5], [2.0, 2.0]).bar_fractions() == [1.0, 1.0]


def test_retrieval_rank_metadata_replaces_the_input_order(attributor):
    from at2_rag import Document
    from at2_rag.ranking import retriever_ranks

    texts = [d["text"] for d in DOCS]
    ranked = [Document(text=t, metadata={"retrieval_rank": r}) for r, t in enumerate(texts)]
    assert retriever_ranks(ranked) == [0, 1, 2]
    assert retriever_ranks(ranked[:2] + [Document(text="x")]) is None
    assert retriever_ranks([Document(text="x", metadata={"retrieval_rank": True})]) is None
    s = [0.3, 0.1, 0.2]
    assert fused_scores(s, 1.0, [2, 0, 1]) == pytest.approx(
        [z - math.log1p(r) for z, r in zip(standardized(s), [2, 0, 1])])
    q = "What is the highest mountain on Earth?"
    forward = Pruner(attributor, rank_weight=50.0).prune(q, ranked)
    backward = Pruner(attributor, rank_weight=50.0).prune(q, ranked[::-1])
    # A dominant rank weight keeps the retriever's best document in either order.
    assert forward.documents[forward.kept[0]].text == backward.documents[backward.kept[0]].text == texts[0]
    # No metadata: the order counts only when declared the retriever's.
    assert Pruner(attributor, rank_weight=50.0, input_order="retriever").prune(q, texts[::-1]).kept == [0]
    assert Pruner(attributor, rank_weight=50.0).prune(q, texts[::-1]).rank_source == "none"


def _support_records(n: int, seed: int = 0):
    """Synthetic support records: question-row features, gold positions that follow the features."""
    g = torch.Generator().manual_seed(seed)
    recs = []
    for i in range(n):
        k = 6
        q = torch.rand(2, 3, k, generator=g)
        gold = int(torch.argmax(q[0, 0] + 0.5 * torch.rand(k, generator=g)))
        ranks = torch.randperm(k, generator=g).tolist()
        recs.append(({"query": q, "query_null": q * 0.5}, {"id": f"e{i}", "k": k, "order": "shuffled",
                                                           "gold_positions": [gold], "retriever_ranks": ranks}))
    return recs


def test_rank_weight_fit_matches_an_independent_logistic_fit():
    """Newton steps against L-BFGS on the same log-likelihood, the design built with numpy."""
    from at2_rag.research.support_fit import fit_rank_weight

    recs = _support_records(60)
    weights = torch.rand(2, 3, generator=torch.Generator().manual_seed(1))
    got = fit_rank_weight(recs, weights, calibrated=False)
    X, y = [], []
    for t, m in recs:
        s = np.einsum("lhs,lh->s", t["query"].numpy(), weights.numpy())
        z = (s - s.mean()) / s.std()
        X += [[zi, np.log1p(r)] for zi, r in zip(z, m["retriever_ranks"])]
        y += [float(i in m["gold_positions"]) for i in range(len(z))]
    X, y = torch.tensor(X, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(X @ w + b, y, reduction="sum")
        loss.backward()
        return loss

    opt.step(closure)
    w, b = w.detach(), b.detach()
    assert got["coef_score"] == pytest.approx(float(w[0]), abs=1e-4)
    assert got["coef_log_rank"] == pytest.approx(float(w[1]), abs=1e-4)
    assert got["intercept"] == pytest.approx(float(b[0]), abs=1e-4)
    assert got["rank_weight"] == pytest.approx(max(0.0, -float(w[1] / w[0])), abs=1e-4)
    assert got["instances"] == 60 * 6
    # records of another k are left out when k is given; none with a gold document: no rank term
    assert fit_rank_weight(recs, weights, calibrated=False, k=10) == {"rank_weight": 0.0, "instances": 0}


@pytest.mark.skipif(not SUPPORT_DATA.exists(), reason="support data not present")
def test_rank_weight_on_committed_support_data_reproduces_the_shipped_fusion():
    from at2_rag.research.support_fit import fit_rank_weight

    est = Estimator.load("default-support")
    got = fit_rank_weight(load_records(SUPPORT_DATA / "train"), est.weights, calibrated=False, k=10)
    for key in ("coef_score", "coef_log_rank", "intercept", "rank_weight", "instances"):
        assert got[key] == pytest.approx(est.recipe["fusion"][key], rel=1e-3), key


def test_fit_support_keeps_the_calibration_that_predicts_held_out_targets_better():
    from at2_rag.research.support_fit import fit_support, support_pearson

    recs = _support_records(40)
    g = torch.Generator().manual_seed(2)
    for t, _ in recs:  # targets follow the calibrated features (raw minus content-free) of head (0, 0)
        t["query_null"] = torch.rand(t["query"].shape, generator=g)
        t["masks"] = (torch.rand(8, 6, generator=g) < 0.5).to(torch.uint8)
        x = (t["query"] - t["query_null"])[0, 0]
        t["targets"] = (t["masks"].float() @ x)[:, None].double()
    weights, calibration, report = fit_support(recs[:30], recs[30:], log=None)
    assert calibration == "content-free" and weights.shape == (2, 3)
    assert report["holdout_pearson"] == pytest.approx(support_pearson(weights, recs[30:], True))
    assert report["holdout_pearson"] > report["holdout_pearson_other_calibration"]
    assert report["holdout_pearson"] > 0.8 and report["holdout_gold_records"] == 10


def test_fit_support_keeps_the_training_free_signal_when_trained_weights_predict_held_out_targets_worse():
    """Held-out targets follow every head's calibrated attention equally (the training-free signal); the
    training targets are mostly noise, so fitted weights can only do worse there."""
    from at2_rag.research.support_fit import fit_support, support_pearson

    recs = _support_records(16)
    g = torch.Generator().manual_seed(3)
    for i, (t, _) in enumerate(recs):
        t["query_null"] = torch.rand(t["query"].shape, generator=g)
        t["masks"] = (torch.rand(8, 6, generator=g) < 0.5).to(torch.uint8)
        x = (t["query"] - t["query_null"]).sum(dim=(0, 1))
        noise = 5.0 * torch.randn(8, generator=g) if i < 12 else torch.zeros(8)
        t["targets"] = (t["masks"].float() @ x + noise)[:, None].double()
    weights, calibration, report = fit_support(recs[:12], recs[12:], log=None)
    assert calibration == "content-free" and report["weights"].startswith("training-free")
    assert torch.equal(weights, torch.full((2, 3), 1 / 6))
    assert report["holdout_pearson"] == pytest.approx(1.0) == pytest.approx(support_pearson(weights, recs[12:], True))
    assert report["holdout_pearson_trained"] < report["holdout_pearson"]
    assert report["fusion"]["instances"] == 12 * 6
    trained, _, plain = fit_support(recs[:12], recs[12:], keep_training_free=False, log=None)
    assert plain["weights"] == "trained" and not torch.allclose(trained, weights)
    assert plain["holdout_pearson"] == pytest.approx(report["holdout_pearson_trained"])


def test_the_sentence_policy_keeps_each_documents_two_best_sentences():
    from at2_rag import SENTENCE_POLICY

    # Chosen on validation (RESULTS.md §14): the two best, whatever their weight relative to the best.
    assert sorted(SENTENCE_POLICY.select([0.1, 0.9, 0.05, 0.2])) == [1, 3]
    assert SENTENCE_POLICY.select([-1.0]) == [0]  # a kept document never loses every sentence
