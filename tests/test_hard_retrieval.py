"""The hard-retrieval benchmark harness without a model: list building, keep sets, resuming, and the
summary's accuracies and sign tests against hand computations."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_first_stage import HashEmbedder  # the same deterministic MiniLM stand-in

from at2_rag.app.first_stage import hit_rates, tokenize
from at2_rag.errors import InputError
from at2_rag.research.data import split_of

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def hr():
    spec = importlib.util.spec_from_file_location("hard_retrieval", BENCHMARKS / "hard_retrieval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts benchmarks/ on sys.path, as running the script does
    return module




TOPICS = ["Warsaw", "Paris", "Lima", "Oslo", "Cairo", "Quito", "Hanoi", "Dakar", "Perth", "Bern", "Riga", "Sofia"]


@pytest.fixture
def nq_file(tmp_path):
    """Twelve questions q0 … q11 (q1, q2 validation; q8, q10, q11 test; the rest train), one passage each."""
    path = tmp_path / "nq.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i, city in enumerate(TOPICS):
            fh.write(json.dumps({
                "id": f"q{i}", "question": f"which city hosts festival number {i}", "answers": [city],
                "title": f"Festival {i}", "text": f"Festival number {i} takes place every year in {city}.",
            }) + "\n")
    return path


def test_lists_stage_writes_lists_meta_and_hit_rates(hr, nq_file, tmp_path):
    from at2_rag.app.nq_rag import build_nq_rag

    assert [split_of(f"q{i}") for i in (1, 2, 8, 10, 11)] == ["validation"] * 2 + ["test"] * 3
    build_nq_rag(nq_file, tmp_path / "rag.jsonl.gz", k=10, embedder=HashEmbedder())
    out, summary_path = tmp_path / "lists", tmp_path / "out" / "lists.json"
    summary = hr.build(str(nq_file), str(out), str(summary_path), str(tmp_path / "rag.jsonl.gz"), HashEmbedder())
    meta, lists = hr.read_lists(str(out))
    assert [(q["id"], q["split"]) for q in lists] == [
        ("q1", "validation"), ("q2", "validation"), ("q8", "test"), ("q10", "test"), ("q11", "test")]
    assert meta["pool"] == 12 and meta["bm25"]["k1"] == 1.5 and meta["merge"]["rrf_k"] == 60
    assert set(meta["conditions"]) == {"minilm-k10", "bm25-k10", "merge-k10", "minilm-k20", "bm25-k20"}
    for q in lists:
        assert [len(q["lists"][c]["ids"]) for c in meta["conditions"]] == [10, 10, 10, 12, 12]  # k20: the whole pool
        assert all(len(lst["scores"]) == len(lst["ids"]) for lst in q["lists"].values())
    # the recomputed minilm-k10 lists are the NQ-RAG builder's lists
    assert summary["minilm_k10_vs_nq_rag"] == {"questions": 5, "same_list": 5}
    assert json.loads(summary_path.read_text()) == summary
    assert summary["splits"]["test"]["bm25-k10"] == hit_rates(lists[2:], "bm25-k10")
    ranks = [q["lists"]["minilm-k20"]["gold_rank"] for q in lists[:2]]
    assert summary["splits"]["validation"]["minilm-k20"] == {
        "questions": 2, "top1": sum(r == 0 for r in ranks) / 2, "top3": sum(r < 3 for r in ranks) / 2, "topk": 1.0}
    assert hr.read_lists(str(out), "validation")[1] == lists[:2]
    with pytest.raises(InputError, match="--stage lists"):
        hr.read_lists(str(tmp_path / "nowhere"))


def test_adaptive_scores_add_standardized_retriever_scores(hr):
    # at2 [0, 2, 1]: mean 1, sd sqrt(2/3) -> z = [-1.2247, 1.2247, 0]
    # retriever [3, 0, 0]: mean 1, sd sqrt(2) -> z = [1.4142, -0.7071, -0.7071]
    assert hr.adaptive_scores([0, 2, 1], [3, 0, 0]) == pytest.approx([0.18946, 0.51764, -0.70711], abs=1e-5)
    assert hr.adaptive_scores([1, 1, 1], [5, 4, 3]) == pytest.approx([1.22474, 0.0, -1.22474], abs=1e-5)


def test_keep_sets_per_method_and_budget(hr):
    at2, retr = [0.1, 0.5, 0.3, 0.2], [9.0, 8.0, 7.0, 1.0]
    kept = hr.keep_sets(at2, retr, 3.19, grid=(0.0, 100.0), tuned=100.0)
    assert kept[(1, "retriever")] == [0] and kept[(3, "retriever")] == [0, 1, 2]
    assert kept[(3, "at2_only")] == [1, 2, 3] == kept[(3, "w=0")]
    assert kept[(3, "w=100")] == [0, 1, 2] == kept[(3, "tuned")]
    # default: z(at2) - 3.19 log(1 + rank); z = [-1.1832, 1.5213, 0.1690, -0.5071] (sd 0.14790)
    z = [(s - 0.275) / math.sqrt(0.021875) for s in at2]
    fused = [zi - 3.19 * math.log1p(r) for r, zi in enumerate(z)]
    assert kept[(2, "default")] == sorted(range(4), key=lambda i: -fused[i])[:2] == [1, 0]  # 1.5213 - 3.19 ln 2 > -1.1832
    assert set(kept) == {(n, m) for n in (1, 2, 3)
                         for m in ("retriever", "default", "at2_only", "adaptive", "w=0", "w=100", "tuned")}
    assert hr.weight_name(3.188391240600185) == "w=3.19"


class FakeAttributor:
    """Scores a passage by the question words it holds; a prompt's answer is its first passage's text."""

    def __init__(self):
        self.scored: list[str] = []
        self.first_text: dict[tuple[int, ...], str] = {}

    def query_estimator(self, name):
        return SimpleNamespace(rank_weight=3.19)

    def score_query(self, question, docs, *, estimator, granularity):
        assert all(d["metadata"]["retrieval_rank"] == r for r, d in enumerate(docs))
        self.scored.append(question)
        words = set(tokenize(question))
        sources, start = [], 0
        for i, d in enumerate(docs):
            n = len(tokenize(d["text"]))
            sources.append(SimpleNamespace(document=i, token_start=start, token_end=start + n))
            start += n
        scores = torch.tensor([float(len(words & set(tokenize(d["text"])))) for d in docs])
        return SimpleNamespace(document_scores=lambda: scores, sources=sources, dropped_documents=[])

    def prompt(self, question, docs):
        ids = tuple(zlib.crc32(d["text"].encode()) for d in docs)
        self.first_text[ids] = docs[0]["text"]
        return SimpleNamespace(input_ids=list(ids))


def test_stage_rows_resume_and_refuse_another_split(hr, nq_file, tmp_path, monkeypatch):
    import readers

    from at2_rag import AT2Attributor

    hr.build(str(nq_file), str(tmp_path / "lists"), str(tmp_path / "lists.json"), None, HashEmbedder())
    fake = FakeAttributor()
    calls = []

    def answers(att, prompts, batch_size=8, max_batch_tokens=None):
        calls.append((len(prompts), batch_size, max_batch_tokens))
        return [att.first_text[tuple(p)] for p in prompts]

    monkeypatch.setattr(AT2Attributor, "from_pretrained", classmethod(lambda cls, **kw: fake))
    monkeypatch.setattr(readers, "answer_ids_batched", answers)
    out = tmp_path / "rows.jsonl"
    argv = ["--stage", "test", "--source", str(nq_file), "--lists", str(tmp_path / "lists"), "--out", str(out)]
    hr.main(argv + ["--limit", "1"])
    first = out.read_text()
    assert len(first.splitlines()) == 1 and len(fake.scored) == 5  # one prefill per condition
    hr.main(argv + ["--limit", "2"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert out.read_text().startswith(first) and [r["id"] for r in rows] == ["q8", "q10"]
    assert len(fake.scored) == 10  # the second run scored only the new question
    row = rows[0]
    assert row["grid"] == {} and row["rank_weight"] == 3.19 and calls[0] == (row["distinct_contexts"], 8, hr.BATCH_TOKENS)
    for cond, c in row["conditions"].items():
        assert set(c["methods"]) == {f"{m}@{n}" for m in ("default", "at2_only", "retriever", "adaptive")
                                     for n in (1, 2, 3)} | {f"full@{c['k']}"}
        assert c["methods"]["retriever@1"]["tokens"] == c["tokens"][0]
        assert c["methods"][f"full@{c['k']}"]["tokens"] == sum(c["tokens"])
        for key, m in c["methods"].items():
            first_kept = c["kept"][key][0]
            # the fake reader answers with the first kept passage, which names the answer iff it is the gold one
            assert m["correct"] == (first_kept == c["gold_rank"]), (cond, key)
            assert m["gold_kept"] == (c["gold_rank"] in c["kept"][key])
    hr.main(argv + ["--limit", "2"])  # nothing left to do
    assert len(out.read_text().splitlines()) == 2 and len(fake.scored) == 10
    with pytest.raises(InputError, match="holds test rows"):
        hr.main(["--stage", "validation", "--source", str(nq_file), "--lists", str(tmp_path / "lists"),
                 "--out", str(out)])


def test_validation_stage_adds_the_weight_grid(hr, nq_file, tmp_path, monkeypatch):
    import readers

    from at2_rag import AT2Attributor

    hr.build(str(nq_file), str(tmp_path / "lists"), str(tmp_path / "lists.json"), None, HashEmbedder())
    fake = FakeAttributor()
    monkeypatch.setattr(AT2Attributor, "from_pretrained", classmethod(lambda cls, **kw: fake))
    monkeypatch.setattr(readers, "answer_ids_batched", lambda att, p, batch_size=8, max_batch_tokens=None: [att.first_text[tuple(x)] for x in p])
    out = tmp_path / "val.jsonl"
    hr.main(["--stage", "validation", "--source", str(nq_file), "--lists", str(tmp_path / "lists"),
             "--out", str(out), "--limit", "1"])
    row = json.loads(out.read_text())
    assert row["grid"] == {"w=0": 0.0, "w=0.5": 0.5, "w=1": 1.0, "w=2": 2.0, "w=3.19": 3.19, "w=5": 5.0}
    assert "w=0.5@2" in row["conditions"]["bm25-k10"]["methods"]
    # Choosing a weight never needs the full context: validation rows skip its (long) answer.
    assert not any(m.startswith("full@") for c in row["conditions"].values() for m in c["methods"])
    assert "full" not in hr.summary(str(out), None)["conditions"]["bm25-k10"]["budgets"]


def _m(correct: bool, tokens: int = 10, gold: bool | None = None) -> dict:
    return {"correct": correct, "tokens": tokens, "gold_kept": correct if gold is None else gold}


def synthetic_rows() -> list[dict]:
    """Six questions, two conditions (k = 4 passages of 10, 20, 30, 40 tokens), budget 1 and all 4."""
    default = [1, 1, 1, 1, 1, 0]
    retriever = [0, 0, 0, 0, 1, 0]
    at2 = [1, 1, 1, 0, 0, 1]
    rows = []
    for i in range(6):
        bm25 = {"default@1": _m(default[i]), "retriever@1": _m(retriever[i], 20), "at2_only@1": _m(at2[i], 30),
                "w=0@1": _m(at2[i], 30), "w=3.19@1": _m(default[i]), "full@4": _m(i == 0, 100, True)}
        # merge: w=0 and w=3.19 equally accurate (3 of 6); w=0 keeps the gold passage more often
        merge = {"default@1": _m(i < 3), "retriever@1": _m(i < 3), "at2_only@1": _m(i >= 3),
                 "w=0@1": _m(i >= 3, gold=True), "w=3.19@1": _m(i < 3), "full@4": _m(False, 100, True)}
        conds = {"bm25-k10": {"k": 4, "tokens": [10, 20, 30, 40], "methods": bm25},
                 "merge-k10": {"k": 4, "tokens": [10, 20, 30, 40], "methods": merge}}
        rows.append({"id": f"q{i}", "split": "validation", "rank_weight": 3.19,
                     "grid": {"w=0": 0.0, "w=3.19": 3.19}, "conditions": conds})
    return rows


def test_summary_matches_a_hand_computation(hr, tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows()))
    result = hr.summary(str(path), str(tmp_path / "summary.json"))
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(result))
    bm25 = result["conditions"]["bm25-k10"]
    assert bm25["n"] == 6 and set(bm25["budgets"]) == {"1", "full"}
    d = bm25["budgets"]["1"]["default"]
    assert d["accuracy"] == pytest.approx(5 / 6) and d["stderr"] == pytest.approx(math.sqrt(5 / 36 / 6))
    assert d["gold_kept"] == pytest.approx(5 / 6) and d["token_share"] == pytest.approx(0.1)
    # default vs retriever: right where it is wrong on q0-q3, never the reverse: 4-0, p = 2 / 2**4
    assert d["vs_retriever"] == {"wins": 4, "losses": 0, "p": pytest.approx(0.125)}
    # default vs at2_only: wins q3, q4; loses q5: 2-1, p = 2 · (1 + 3) / 2**3 = 1
    assert d["vs_at2_only"] == {"wins": 2, "losses": 1, "p": pytest.approx(1.0)}
    assert bm25["budgets"]["1"]["retriever"]["token_share"] == pytest.approx(0.2)
    assert "vs_retriever" not in bm25["budgets"]["1"]["retriever"]
    assert bm25["budgets"]["full"]["full"]["accuracy"] == pytest.approx(1 / 6)
    assert bm25["budgets"]["full"]["full"]["token_share"] == pytest.approx(1.0)
    merge = result["conditions"]["merge-k10"]["budgets"]["1"]
    # w=0 vs retriever: q3-q5 against q0-q2: 3-3, p = 1
    assert merge["w=0"]["vs_retriever"] == {"wins": 3, "losses": 3, "p": pytest.approx(1.0)}
    # bm25: w=3.19 is more accurate (5/6 vs 4/6); merge: a tie broken by the gold-kept rate (w=0: 6/6)
    assert result["chosen_weights"] == {"bm25-k10": 3.19, "merge-k10": 0.0}
    printed = capsys.readouterr().out
    assert "bm25-k10: 6 questions" in printed and "4-0" in printed


def test_chosen_weight_ties_go_to_the_weight_nearest_the_fitted_one(hr):
    rows = synthetic_rows()
    for r in rows:
        m = r["conditions"]["merge-k10"]["methods"]
        m["w=0@1"]["gold_kept"] = m["w=3.19@1"]["gold_kept"]
        m["w=0@1"]["correct"] = m["w=3.19@1"]["correct"]
    assert hr.summarize(rows)["chosen_weights"]["merge-k10"] == 3.19
    test_rows = [{**r, "grid": {}} for r in rows]
    assert "chosen_weights" not in hr.summarize(test_rows)


def test_chosen_weights_are_read_from_a_validation_summary(hr, tmp_path):
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"chosen_weights": {"bm25-k10": 0.5, "merge-k10": 2}}))
    assert hr.chosen_weights(str(path)) == {"bm25-k10": 0.5, "merge-k10": 2.0}
    assert hr.chosen_weights(None) == {}


def test_done_ids(hr, tmp_path):
    path = tmp_path / "rows.jsonl"
    assert hr.done_ids(str(path), "test") == set()
    path.write_text(json.dumps({"id": "a", "split": "test"}) + "\n\n" + json.dumps({"id": "b", "split": "test"}) + "\n")
    assert hr.done_ids(str(path), "test") == {"a", "b"}
    with pytest.raises(InputError, match="another --out"):
        hr.done_ids(str(path), "validation")


def test_rows_of_another_reader_mean_another_file(hr, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"id": "a", "split": "test"}) + "\n")  # rows before readers were recorded
    assert hr.done_ids(str(path), "test") == {"a"} == hr.done_ids(str(path), "test", hr.DEFAULT_READER)
    with pytest.raises(InputError, match="answered by default; pass another --out for reader qwen"):
        hr.done_ids(str(path), "test", "qwen")
    rows = synthetic_rows()
    rows[0]["reader"] = "qwen"
    with pytest.raises(InputError, match="several readers"):
        hr.summarize(rows)
    assert hr.summarize(synthetic_rows())["reader"] == hr.DEFAULT_READER


def test_a_reader_answers_from_the_kept_passages_the_scorer_chose(hr, nq_file, tmp_path, monkeypatch):
    import readers

    from at2_rag import AT2Attributor

    hr.build(str(nq_file), str(tmp_path / "lists"), str(tmp_path / "lists.json"), None, HashEmbedder())
    scorer, reader = FakeAttributor(), FakeAttributor()
    loaded = []

    def load(cls, model="default", estimator="default", **kw):
        loaded.append(model)
        return reader if model == "big" else scorer

    answered_by = []

    def answers(att, prompts, batch_size=8, max_batch_tokens=None):
        answered_by.append(att)
        return [att.first_text[tuple(p)] for p in prompts]

    monkeypatch.setattr(AT2Attributor, "from_pretrained", classmethod(load))
    monkeypatch.setattr(readers, "answer_ids_batched", answers)
    out = tmp_path / "rows.jsonl"
    argv = ["--stage", "test", "--source", str(nq_file), "--lists", str(tmp_path / "lists"), "--out", str(out)]
    hr.main(argv + ["--limit", "1", "--reader", "big"])
    row = json.loads(out.read_text())
    assert loaded == ["default", "big"] and answered_by == [reader]
    assert row["reader"] == "big" and len(scorer.scored) == 5 and not reader.scored  # the scorer scored
    assert reader.first_text and not scorer.first_text  # the reader's prompts
    with pytest.raises(InputError, match="answered by big"):
        hr.main(argv + ["--limit", "2"])
    hr.main(argv + ["--limit", "2", "--reader", "big"])  # the same reader resumes
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["q8", "q10"]


def test_conditions_limit_the_evaluation_and_the_rows_file(hr, nq_file, tmp_path, monkeypatch):
    import readers

    from at2_rag import AT2Attributor

    hr.build(str(nq_file), str(tmp_path / "lists"), str(tmp_path / "lists.json"), None, HashEmbedder())
    fake = FakeAttributor()
    monkeypatch.setattr(AT2Attributor, "from_pretrained", classmethod(lambda cls, *a, **kw: fake))
    monkeypatch.setattr(readers, "answer_ids_batched",
                        lambda att, prompts, **kw: [att.first_text[tuple(p)] for p in prompts])
    out = tmp_path / "rows.jsonl"
    argv = ["--stage", "test", "--source", str(nq_file), "--lists", str(tmp_path / "lists"), "--out", str(out)]
    hr.main(argv + ["--limit", "1", "--conditions", "bm25-k20, bm25-k10"])
    row = json.loads(out.read_text())
    assert row["only"] == ["bm25-k10", "bm25-k20"] == list(row["conditions"]) and len(fake.scored) == 2
    with pytest.raises(InputError, match=r"over conditions \['bm25-k10', 'bm25-k20'\]; pass another --out for conditions all"):
        hr.main(argv + ["--limit", "2"])
    with pytest.raises(InputError, match="pass another --out for conditions bm25-k10"):
        hr.main(argv + ["--limit", "2", "--conditions", "bm25-k10"])
    with pytest.raises(InputError, match="unknown bm25-k5; choose from minilm-k10,"):
        hr.main(argv + ["--conditions", "bm25-k5,bm25-k10"])
    hr.main(argv + ["--limit", "2", "--conditions", "bm25-k10,bm25-k20"])  # the same set resumes
    assert len(out.read_text().splitlines()) == 2 and len(fake.scored) == 4


def test_the_script_needs_a_stage_or_a_summary(hr, capsys):
    with pytest.raises(SystemExit):
        hr.main([])
    with pytest.raises(SystemExit):
        hr.main(["--stage", "test"])
    assert "needs --out" in capsys.readouterr().err
    assert str(BENCHMARKS) in sys.path
