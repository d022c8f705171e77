"""Calibrated relevance: the shipped maps, their math against numpy, where they apply, and thresholds on them."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from at2_rag import Estimator, EstimatorError, InputError, KeepPolicy, Pruner, PruneResult
from at2_rag.relevance import RELEVANCE_FILE, RelevanceMap, relevance_map, relevance_maps

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "benchmarks" / "out" / "calibration.json"
QUESTION = "In which city was Marie Curie born?"
TEXTS = [
    "The Amazon river flows through Brazil, Peru and Colombia into the Atlantic Ocean.",
    "Marie Curie was born in Warsaw, Poland, in 1867.",
    "The Eiffel Tower was completed in 1889.",
    "Mount Everest is the highest mountain on Earth.",
]


def test_shipped_maps_are_the_fitted_ones_for_the_shipped_estimators():
    shipped = json.loads(RELEVANCE_FILE.read_text())
    assert shipped["format"] == "at2-rag-relevance" and shipped["format_version"] == 1
    assert shipped["recipe"]["split"] == "validation" and shipped["recipe"]["script"].startswith("benchmarks/calibration.py")
    assert shipped["maps"] == json.loads(REPORT.read_text())["maps"]  # one fit, two copies
    for name in ("default-support", "default-query"):
        est = Estimator.load(name)
        digest = hashlib.sha256(est.weights.numpy().astype("<f4").tobytes()).hexdigest()
        weights = {m["rank_weight"] for m in shipped["maps"] if m["estimator"] == name and m["weights_sha256"] == digest}
        assert weights == ({0.0, est.rank_weight} if name == "default-support" else {0.0})
    assert relevance_map(Estimator.load("default-support"), 1.0) is None  # no map for another rank weight


def test_probabilities_are_a_softmax_of_the_fused_keep_score():
    scores, ranks = [0.003, 0.0001, -0.0004, 0.0012], [2, 0, 3, 1]
    m = RelevanceMap("x", "0" * 64, rank_weight=3.0, slope=0.8)
    s = np.array(scores)
    z = (s - s.mean()) / s.std()
    logits = 0.8 * (z - 3.0 * np.log1p(ranks))
    expected = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(m.probabilities(scores, ranks), expected, rtol=1e-12)
    plain = RelevanceMap("x", "0" * 64, rank_weight=0.0, slope=1.7)
    np.testing.assert_allclose(plain.probabilities(scores), np.exp(1.7 * z) / np.exp(1.7 * z).sum(), rtol=1e-12)
    assert plain.probabilities([0.2]) == [1.0] and plain.probabilities([0.1, 0.1]) == [0.5, 0.5]
    with pytest.raises(InputError, match="ranks"):
        m.probabilities(scores)


def test_a_damaged_map_file_is_an_estimator_error(tmp_path):
    bad = tmp_path / "relevance.json"
    for text in ("{", json.dumps({"format": "other"}), json.dumps(
            {"format": "at2-rag-relevance", "format_version": 1,
             "maps": [{"estimator": "e", "weights_sha256": "0", "rank_weight": 0.0, "slope": -1.0}]}),
                 json.dumps({"format": "at2-rag-relevance", "format_version": 2, "maps": []})):
        bad.write_text(text)
        relevance_maps.cache_clear()
        with pytest.raises(EstimatorError, match="not a valid relevance-map file"):
            relevance_maps(bad)
    relevance_maps.cache_clear()
    assert relevance_maps(tmp_path / "missing.json") == ()


def test_uncalibrated_results_fall_back_to_min_max_of_the_keep_scores():
    r = PruneResult([], [0.1, 0.3, 0.2], [1], [1, 1, 1], None, keep_scores=[-1.0, 3.0, float("-inf")])  # type: ignore[arg-type]
    assert not r.relevance_calibrated and r.relevance_scores == [0.0, 1.0, 0.0]
    r.relevance = [0.2, 0.7, 0.1]
    assert r.relevance_calibrated and r.relevance_scores == [0.2, 0.7, 0.1]


@pytest.mark.slow
def test_pruner_relevance_where_a_map_fits_and_none_elsewhere(attributor):
    docs = [{"text": t, "metadata": {"retrieval_rank": r}} for t, r in zip(TEXTS, [1, 0, 2, 3])]
    ranked = Pruner(attributor).prune(QUESTION, docs)
    est = attributor.query_estimator("default-support")
    expected = relevance_map(est, est.rank_weight).probabilities(ranked.scores, [1, 0, 2, 3])
    assert ranked.relevance == pytest.approx(expected) and ranked.kept == [1] and ranked.relevance[1] > 0.9
    unranked = Pruner(attributor).prune(QUESTION, TEXTS)
    assert unranked.relevance == pytest.approx(relevance_map(est, 0.0).probabilities(unranked.scores))
    assert Pruner(attributor, mode="query").prune(QUESTION, TEXTS).relevance is not None
    assert Pruner(attributor, rank_weight=1.0).prune(QUESTION, docs).relevance is None  # no map for this weight
    assert Pruner(attributor, rank_weight=1.0).prune(QUESTION, TEXTS).relevance is not None  # no rank: no rank term
    assert Pruner(attributor, query_estimator=None).prune(QUESTION, TEXTS).relevance is None  # uniform weights
    sentences = Pruner(attributor, mode="query", sentence_policy=KeepPolicy(relative=0.5)).prune(QUESTION, TEXTS)
    assert sentences.relevance is None


@pytest.mark.slow
def test_a_threshold_on_the_relevance_scale_is_a_probability_cut_off(attributor):
    policy = KeepPolicy(threshold=0.5, top_k=4, min_keep=0)
    by_chance = Pruner(attributor, policy=policy, threshold_scale="relevance").prune(QUESTION, TEXTS)
    assert by_chance.kept == [i for i, p in enumerate(by_chance.relevance) if p >= 0.5] == [1]
    none_left = Pruner(attributor, policy=KeepPolicy(threshold=0.999, min_keep=0), threshold_scale="relevance")
    assert none_left.prune(QUESTION, TEXTS).kept == []
    everything = Pruner(attributor, policy=KeepPolicy(threshold=0.0, min_keep=0), threshold_scale="relevance")
    assert sorted(everything.prune(QUESTION, TEXTS).kept) == [0, 1, 2, 3]
    # On the keep scale (raw AT2 units without a rank), 0.5 is far above every score.
    assert Pruner(attributor, policy=policy).prune(QUESTION, TEXTS).kept == []
    with pytest.raises(InputError, match="calibrated relevance"):
        Pruner(attributor, mode="draft", policy=policy, threshold_scale="relevance")
    with pytest.raises(InputError, match=r"calibrated relevance \(0-1\), but no relevance map ships for this .* rank weight 0"):
        Pruner(attributor, query_estimator=None, policy=policy, threshold_scale="relevance").prune(QUESTION, TEXTS)


def test_the_test_split_evaluation_is_recorded_once_with_calibrated_scores_ahead():
    report = json.loads(REPORT.read_text())
    results = report["test"]["results"]
    assert results["pruner_matches_map"] is True
    main = results["top-10 | default-support, with rank"]
    assert main["calibrated"]["passages"] == 1500 and math.isclose(main["calibrated"]["positive_rate"], 0.1)
    assert main["calibrated"]["ece"] < 0.05 < main["min_max"]["ece"]
    assert main["calibrated"]["brier"] < main["min_max"]["brier"]
    for entry in report["validation"]:
        assert entry["cross_validated"]["ece"] < entry["min_max"]["ece"]
