"""Evaluation: metrics on synthetic inputs, the LASSO surrogate (KKT check), methods, the runner and CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from at2_rag import InputError
from at2_rag.ablation import answer_token_logprobs, random_masks, span_targets
from at2_rag.app.cli import main
from at2_rag.prompts import encode
from at2_rag.research.data import write_jsonl
from at2_rag.research.evaluation import (
    EvalExample,
    LeaveOneOut,
    fit_surrogate,
    lds,
    make_method,
    read_rows,
    run_evaluation,
    spearman,
    topk_drop,
)


def test_exactly_linear_scores_give_lds_one_and_random_scores_about_zero():
    g = torch.Generator().manual_seed(0)
    masks = random_masks(64, 10, seed=1)
    w = torch.randn(10, generator=g, dtype=torch.float64)
    targets = masks.double() @ w + 3.0
    assert lds(w, masks, targets) == pytest.approx(1.0)
    assert lds(-w, masks, targets) == pytest.approx(-1.0)
    random = [lds(torch.randn(10, generator=g), masks, targets) for _ in range(400)]
    assert abs(sum(random) / len(random)) < 0.05


def test_spearman_matches_brute_force_pearson_of_ranks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = rng.integers(0, 5, size=12).astype(float)  # with ties
        b = rng.normal(size=12)

        def ranks(x):  # average ranks, brute force
            return np.array([np.sum(x < v) + (np.sum(x == v) - 1) / 2 for v in x])

        expected = np.corrcoef(ranks(a), ranks(b))[0, 1]
        assert spearman(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected)
    assert math.isnan(spearman(torch.ones(5), torch.arange(5.0)))


def test_surrogate_recovers_a_linear_model_and_satisfies_the_lasso_kkt_conditions():
    masks = random_masks(128, 12, seed=3).numpy()
    w_true = np.zeros(12)
    w_true[[1, 4, 7]] = [2.0, -1.5, 0.8]
    y = masks @ w_true + 0.25
    w, b = fit_surrogate(masks, y, num_tokens=1, alpha=1e-6)
    assert np.allclose(w, w_true, atol=1e-3) and b == pytest.approx(0.25, abs=1e-3)
    # KKT on the standardised problem: |z_j·r|/n <= alpha, with equality (and sign) where w_j != 0.
    noisy = y + np.random.default_rng(0).normal(scale=0.5, size=y.shape)
    alpha, n_tok = 0.05, 4
    w, b = fit_surrogate(masks, noisy, num_tokens=n_tok, alpha=alpha)
    X = masks.astype(float)
    scale = X.std(axis=0)
    Z = (X - X.mean(axis=0)) / scale
    yy = noisy / n_tok
    coef = w / n_tok * scale  # back to the standardised coefficients
    r = yy - yy.mean() - Z @ coef
    grad = Z.T @ r / len(yy)
    for j in range(12):
        if abs(coef[j]) > 1e-9:
            assert grad[j] == pytest.approx(alpha * np.sign(coef[j]), abs=1e-6)
        else:
            assert abs(grad[j]) <= alpha + 1e-6
    assert lds(torch.from_numpy(w), torch.from_numpy(masks), torch.from_numpy(noisy)) > 0.8


def test_make_method_names_and_errors():
    assert make_method("contextcite:64").n == 64
    assert make_method("at2").name == "at2"
    assert make_method("at2+8").name == "at2+8" and make_method("at2+8").n == 8
    assert make_method("at2+8").design == "top" and make_method("at2+8:random").design == "random"
    assert make_method("at2+8:random").name == "at2+8:random" and make_method("at2+8:top").name == "at2+8"
    assert make_method("at2+8").strength == 0.01 and make_method("at2+8:mixed").name == "at2+8:mixed"
    for bad in ("nope", "contextcite:x", "contextcite:0", "loo:3", "at2+1", "at2+x", "at2+4:3", "at2+4:best"):
        with pytest.raises(InputError):
            make_method(bad)


@pytest.fixture(scope="module")
def example(attributor):
    docs = [
        "The Eiffel Tower is in Paris. It was completed in 1889.",
        "Mount Everest is the highest mountain on Earth. It lies in the Himalayas.",
        "Tokyo is the capital of Japan.",
    ]
    answer = "Mount Everest is the highest mountain."
    prompt = attributor.prompt("What is the highest mountain?", docs, granularity="sentence")
    return EvalExample("ex1", "What is the highest mountain?", prompt, answer, encode(attributor.tokenizer, answer),
                       retrieval_rank=[2, 0, 1], gold_documents=[1])


def test_leave_one_out_matches_single_ablations(attributor, example):
    result = LeaveOneOut().attribute(attributor, example)
    n = len(example.prompt.sources)
    assert result.forward_passes == n + 1
    full = span_targets(answer_token_logprobs(attributor.model, example.prompt, example.answer_ids,
                                              torch.ones(1, n, dtype=torch.bool)), [range(len(example.answer_ids))])
    for s in (0, 2):
        mask = torch.ones(1, n, dtype=torch.bool)
        mask[0, s] = False
        y = span_targets(answer_token_logprobs(attributor.model, example.prompt, example.answer_ids, mask),
                         [range(len(example.answer_ids))])
        assert float(result.scores[s]) == pytest.approx(float(full - y), rel=1e-4, abs=1e-6)
    assert int(result.scores.argmax()) == 2  # "Mount Everest is the highest mountain on Earth."


def test_methods_rank_the_gold_sentence_and_report_their_cost(attributor, example):
    names = ["at2", "avg_attention", "contextcite:16", "embedding", "retriever", "at2+4", "at2+4:random",
             "at2+8"]
    res = {n: make_method(n).attribute(attributor, example) for n in names}
    # at2+N: AT2's pass, the unablated answer, N ablations (a source left out alone at most once: 5 here)
    assert [res[n].forward_passes for n in names] == [1, 1, 16, 0, 0, 6, 6, 7]
    # (at2+4 is only counted here: with 5 sources and 4 ablations the prior's scale can fit to 0, which
    # leaves a plain ridge surrogate of 5 points; its quality is measured in RESULTS §7, not on one toy.)
    for n in ("at2", "contextcite:16", "embedding"):
        assert int(res[n].scores.argmax()) == 2, (n, res[n].scores)
    # Retriever order: every sentence of the first-retrieved document (doc 1) ranks above the others.
    r = res["retriever"].scores
    doc_of = [s.document for s in example.prompt.sources]
    assert all(r[i] > r[j] for i in range(len(r)) for j in range(len(r)) if doc_of[i] == 1 and doc_of[j] != 1)
    # top-k drop agrees with a direct ablation of the top source.
    drops = topk_drop(attributor.model, example.prompt, example.answer_ids, {"at2": res["at2"].scores}, [1])
    n = len(example.prompt.sources)
    keep = torch.ones(2, n, dtype=torch.bool)
    keep[1, int(res["at2"].scores.argmax())] = False
    logp = answer_token_logprobs(attributor.model, example.prompt, example.answer_ids, keep).double().sum(1)
    assert drops["at2"][1] == pytest.approx(float(logp[0] - logp[1]), rel=1e-4)


def test_surrogates_share_one_mask_sequence_and_are_charged_their_own_prefix(attributor, example):
    import dataclasses

    ex = dataclasses.replace(example, surrogate=None)
    small, large = make_method("contextcite:8"), make_method("contextcite:20")
    r_small, r_large = small.attribute(attributor, ex), large.attribute(attributor, ex)
    n = len(ex.prompt.sources)
    masks = random_masks(20, n, seed=ex.surrogate.seed)
    assert torch.equal(ex.surrogate.masks(8), masks[:8])  # a prefix of the longer sequence
    # The shared targets equal an independent computation on the same masks.
    direct = span_targets(answer_token_logprobs(attributor.model, ex.prompt, ex.answer_ids, masks),
                          [range(len(ex.answer_ids))])[:, 0]
    assert torch.allclose(ex.surrogate.targets, direct.double(), atol=1e-4)
    # Each surrogate equals a fit on its own prefix; the smaller one is charged only its own passes.
    w8, _ = fit_surrogate(masks[:8].numpy(), ex.surrogate.targets[:8].numpy(), len(ex.answer_ids))
    assert np.allclose(r_small.scores.numpy(), w8)
    assert [b[0] for b in ex.surrogate.boundaries] == [0, 8, 16, 20]
    assert r_small.seconds < r_large.seconds and r_large.seconds >= ex.surrogate.seconds(20)
    assert ex.surrogate.seconds(12) == pytest.approx(sum(b[1] for b in ex.surrogate.boundaries[1:3]) / 2)
    # Asking again for fewer masks reuses the computed targets (no new batches).
    make_method("contextcite:4").attribute(attributor, ex)
    assert len(ex.surrogate.boundaries) == 4
    # Extending from 20 keeps the batch grid: 20-24, 24-28 (what 28 masks cost alone, batch by batch).
    make_method("contextcite:28").attribute(attributor, ex)
    assert [b[0] for b in ex.surrogate.boundaries] == [0, 8, 16, 20, 24, 28]


def test_runner_and_cli_end_to_end_and_resume(tmp_path, attributor, capsys, monkeypatch):
    data = tmp_path / "tiny.jsonl"
    docs = [
        {"id": "a", "title": "Everest", "text": "Mount Everest is the highest mountain on Earth."},
        {"id": "b", "title": "Tokyo", "text": "Tokyo is the capital of Japan. It is a large city."},
        {"id": "c", "title": "Nile", "text": "The Nile is a long river in Africa."},
    ]
    write_jsonl(data, [
        {"id": "q1", "question": "What is the highest mountain on Earth?", "documents": docs,
         "answers": ["Everest"], "gold_document_ids": ["a"], "split": "test"},
        {"id": "q2", "question": "What is the capital of Japan?", "documents": docs,
         "answers": ["Tokyo"], "gold_document_ids": ["b"], "split": "test"},
    ])
    methods = [make_method(m) for m in ("at2", "avg_attention", "contextcite:8", "loo", "retriever")]
    out = str(tmp_path / "res.json")
    summary = run_evaluation(attributor, str(data), methods, out, split=None, k=3, n_masks=8,
                             max_new_tokens=16, progress=False)
    stored = read_rows(out + ".rows.jsonl")  # an options header, then one row per line
    assert stored.options["methods"] == [m.name for m in methods] and stored.options["k"] == 3
    rows = stored.rows
    assert [r["id"] for r in rows] == ["q1", "q2"]
    for r in rows:
        m = r["methods"]
        assert m["loo"]["forward_passes"] == r["sources"] + 1 and m["contextcite:8"]["forward_passes"] == 8
        assert -1.0 <= m["at2"]["lds"] <= 1.0 and "drop5" in m["at2"] and "gold_top1" in m["at2"]
    assert summary["at2"]["n"] == 2 and summary["at2"]["time_ratio_to_at2_median"] == pytest.approx(1.0)
    for name in ("at2", "loo"):  # citation accuracy: all gold-retrieved rows, and the correct ones apart
        hits = [r["methods"][name]["gold_top1"] for r in rows]
        assert summary[name]["gold_top1_retrieved"] == {"mean": sum(hits) / 2, "n": 2}
        right = [h for h, r in zip(hits, rows) if r["correct"]]
        assert summary[name]["gold_top1_correct"]["n"] == len(right)
    # Resuming: finished rows are not recomputed.
    import at2_rag.research.evaluation.runner as runner

    monkeypatch.setattr(runner, "evaluate_example", lambda *a, **k: pytest.fail("recomputed a finished row"))
    monkeypatch.setattr("at2_rag.app.cli._attributor", lambda args, estimator=None, **kw: attributor)
    assert main(["evaluate", "--data", str(data), "--methods", "at2,avg_attention,contextcite:8,loo,retriever",
                 "--split", "all", "--k", "3", "--masks", "8", "--max-new-tokens", "16", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "contextcite:8" in printed and "LDS" in printed
    # Other options (here the default --max-new-tokens 48) are refused rather than mixed into these rows.
    assert main(["evaluate", "--data", str(data), "--methods", "at2,avg_attention,contextcite:8,loo,retriever",
                 "--split", "all", "--k", "3", "--masks", "8", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "--max-new-tokens 48" in err and "another --out or the same options" in err and err.count("\n") == 1
    assert main(["evaluate", "--data", str(data), "--methods", "at2,bogus", "--out", out]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(data), "--split", "train", "--out", out]) == 2
    assert "no examples" in capsys.readouterr().err
