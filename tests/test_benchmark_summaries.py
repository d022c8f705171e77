"""The summaries of the sentence-pruning, proxy-citation and bigger-reader benchmarks, checked against
hand counts on made-up rows (the numbers RESULTS.md reports come from these functions)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts benchmarks/ on sys.path, as running the script does
    return module


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_sentence_pruning_summary_counts_paired_wins_and_token_shares(tmp_path):
    sp = load("sentence_pruning")

    def method(correct, tokens, gold=True, survives=True):
        return {"kept": [0], "tokens": tokens, "correct": correct, "gold_kept": gold, "answer_in_context": survives}

    rows = [
        {"id": "a", "total_tokens": 1000, "methods": {"document@1": method(True, 200), "sentence-top1@1": method(True, 50)}},
        {"id": "b", "total_tokens": 1000, "methods": {"document@1": method(False, 100),
                                                      "sentence-top1@1": method(True, 50, survives=False)}},
        {"id": "c", "total_tokens": 2000, "methods": {"document@1": method(True, 300),
                                                      "sentence-top1@1": method(False, 100, gold=False)}},
        {"id": "d", "total_tokens": 1000, "methods": {"document@1": method(True, 100), "sentence-top1@1": method(False, 40)}},
    ]
    out = sp.summary(write_rows(tmp_path / "rows.jsonl", rows), str(tmp_path / "s.json"))
    doc, sent = out["methods"]["document@1"], out["methods"]["sentence-top1@1"]
    assert doc["accuracy"] == 0.75 and sent["accuracy"] == 0.5
    assert math.isclose(sent["stderr"], math.sqrt(0.25 / 4))
    assert math.isclose(doc["token_share"], 700 / 5000) and math.isclose(sent["token_share"], 240 / 5000)
    assert sent["gold_kept"] == 0.75 and sent["answer_in_context"] == 0.75
    assert sent["vs_document"] == {"wins": 1, "losses": 2, "p": 1.0}  # b won; c and d lost
    assert "vs_document" not in doc
    assert json.loads((tmp_path / "s.json").read_text())["questions"] == 4


def test_proxy_citation_summary_agreement_and_spearman(tmp_path):
    pc = load("proxy_citations")
    loo = [3.0, 1.0, 2.0]
    rows = [
        {"id": "a", "reader": "r", "k": 3, "correct": True, "gold_positions": [0], "scores": {
            "loo": loo, "proxy_at2": [0.9, 0.1, 0.5], "proxy_avg": [0.1, 0.9, 0.5], "minilm": [0.5, 0.1, 0.9],
            "reader_avg": [0.9, 0.1, 0.5]}},
        {"id": "b", "reader": "r", "k": 3, "correct": False, "gold_positions": [1], "scores": {
            "loo": loo, "proxy_at2": [0.1, 0.9, 0.5], "proxy_avg": [0.9, 0.5, 0.1], "minilm": [0.9, 0.1, 0.5],
            "reader_avg": [0.9, 0.1, 0.5]}},
        {"id": "c", "reader": "r", "k": 3, "correct": False, "gold_positions": [], "skipped": "empty answer"},
    ]
    out = pc.summary(write_rows(tmp_path / "rows.jsonl", rows), None)
    assert out["questions"] == 3 and out["attributed"] == 2 and math.isclose(out["reader_correct"], 1 / 3)
    assert out["loo_top_is_gold"] == 0.5  # leave-one-out's top passage (0) is gold for a, not for b
    p = out["proxies"]
    assert p["proxy_at2"]["top1_agreement"] == 0.5 and p["reader_avg"]["top1_agreement"] == 1.0
    # Spearman by hand: identical ranks 1; reversed -1; [0.1, 0.9, 0.5] vs [3, 1, 2] -> ranks (1,3,2) vs (3,1,2): -1.
    assert math.isclose(p["proxy_at2"]["spearman"], 0.0) and math.isclose(p["reader_avg"]["spearman"], 1.0)
    assert p["reader_avg"]["at2_vs_this_top1"] == {"wins": 0, "losses": 1, "p": 1.0}
    assert p["reader_avg"]["at2_vs_this_spearman"]["losses"] == 1
    # minilm: a [0.5,0.1,0.9] ranks (2,1,3) vs (3,1,2): 0.5; b [0.9,0.1,0.5] identical: 1.
    assert math.isclose(p["minilm"]["spearman"], 0.75)


def test_bigger_reader_summary_tests_every_budget_against_the_full_context(tmp_path):
    br = load("bigger_reader")

    def order(correct_at1, full_correct):
        return {"tokens": [10, 10], "methods": {
            "retriever@1": {"kept": [0], "tokens": 10, "gold_kept": True, "correct": correct_at1},
            "full": {"tokens": 20, "correct": full_correct}}}

    rows = [{"id": str(i), "reader": "r", "gold": {"correct": True},
             "orders": {"shuffled": order(c, f)}} for i, (c, f) in enumerate([(True, False)] * 6 + [(False, True)])]
    out = br.summary(write_rows(tmp_path / "rows.jsonl", rows), None)
    entry = out["orders"]["shuffled"]["methods"]["retriever@1"]
    assert entry["vs_full"]["wins"] == 6 and entry["vs_full"]["losses"] == 1
    assert entry["vs_full"]["p"] == pytest.approx(2 * 8 / 128)  # two-sided: P(X <= 1), X ~ Bin(7, 1/2)
    assert "vs_full" not in out["orders"]["shuffled"]["methods"]["full"]


def test_bigger_reader_summary_pairs_gold_kept_even_where_nothing_was_answered(tmp_path):
    br = load("bigger_reader")

    def order(ours_gold, theirs_gold):
        return {"tokens": [10, 10], "methods": {
            "reader_support@2": {"kept": [0, 1], "tokens": 20, "gold_kept": ours_gold},
            "proxy_support@2": {"kept": [1, 0], "tokens": 20, "gold_kept": theirs_gold},
            "full": {"tokens": 20, "correct": True}}}

    pairs = [(True, False)] * 5 + [(False, True)] * 2 + [(True, True)] * 3
    rows = [{"id": str(i), "reader": "r", "gold": {"correct": True}, "orders": {"shuffled": order(a, b)}}
            for i, (a, b) in enumerate(pairs)]
    entry = br.summary(write_rows(tmp_path / "rows.jsonl", rows), None)["orders"]["shuffled"]["methods"]["reader_support@2"]
    assert entry["gold_kept"] == pytest.approx(0.8)
    assert (entry["gold_vs_proxy_support"]["wins"], entry["gold_vs_proxy_support"]["losses"]) == (5, 2)
    assert entry["gold_vs_proxy_support"]["p"] == pytest.approx(2 * 29 / 128)  # P(X <= 2), X ~ Bin(7, 1/2)
    assert "accuracy" not in entry and not any(k.startswith("vs_") for k in entry)  # never answered: no accuracy tests
