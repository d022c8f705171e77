"""Sentence-level pruning measured: tokens saved against accuracy when kept passages are cut to their
supporting sentences.

The support estimator was fitted on whole documents; ``Pruner(sentence_policy=...)`` applies it to
sentences (sources become sentences, documents are kept by their summed sentence scores, each kept
document keeps the sentences ``sentence_policy`` picks among its own). Here, on validation questions
(k = 10 in retriever order, every document with its retriever rank in metadata, the default fused keep
score), for 1, 2 and 3 kept passages, the bundled 135M reader answers from:

- ``document``: whole documents, document-level scores (the default pruner);
- ``sentence-whole``: the documents sentence-level scoring keeps, whole (separates the choice of
  documents from the cutting);
- ``sentence-<policy>``: those documents cut to their kept sentences, for each sentence policy in
  :data:`SENTENCE_POLICIES`.

Per question and method: the answer and whether it is correct, the reader's prompt tokens (``tokens``;
the full ten-passage prompt's in ``total_tokens``) and the kept sources' own tokens, whether a gold
passage was kept and whether a reference answer string survives in the kept text. One answer per
distinct context; rows appended per question (resumable). ``--summary`` prints accuracy, token share,
answer-survives rate and paired sign tests against ``document`` at the same budget.

    python benchmarks/sentence_pruning.py --limit 100 --out benchmarks/out/sentence-pruning-validation.jsonl
    python benchmarks/sentence_pruning.py --summary benchmarks/out/sentence-pruning-validation.jsonl \\
        --json benchmarks/out/sentence-pruning-validation.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from at2_rag.research.evaluation.metrics import sign_test_p  # noqa: E402

BUDGETS = (1, 2, 3)
SENTENCE_POLICIES = {
    "rel0.25": {"relative": 0.25},
    "rel0.5": {"relative": 0.5},
    "rel0.75": {"relative": 0.75},
    "top1": {"top_k": 1},
    "top2": {"top_k": 2},
}
"""Sentence policies compared (``KeepPolicy`` keyword arguments): relative cuts, and a fixed count."""


def contexts_of(ex: dict, att, budgets=BUDGETS) -> tuple[dict, dict]:
    """Per (method, budget): the kept documents' ids and texts and their prompt tokens; plus per-question facts."""
    from at2_rag import RETRIEVAL_RANK_KEY, KeepPolicy, Pruner
    from at2_rag.research.ablation_data import support_documents

    docs = [{**d, "metadata": {RETRIEVAL_RANK_KEY: r}} for r, d in enumerate(support_documents(ex, 10, "retriever"))]
    top = KeepPolicy(top_k=max(budgets))
    out: dict[tuple[str, int], dict] = {}
    whole = Pruner(att, policy=top).prune(ex["question"], docs)
    for n in budgets:
        kept = whole.kept[:n]
        out[("document", n)] = {"kept": kept, "docs": [whole.documents[i] for i in kept],
                                "tokens": sum(whole.token_lengths[i] for i in kept)}
    for name, kwargs in SENTENCE_POLICIES.items():
        pr = Pruner(att, policy=top, sentence_policy=KeepPolicy(**kwargs)).prune(ex["question"], docs)
        assert pr.sentence_tokens is not None
        for n in budgets:
            kept = pr.kept[:n]
            if name == next(iter(SENTENCE_POLICIES)):  # the documents are the same for every sentence policy
                out[("sentence-whole", n)] = {"kept": kept, "docs": [pr.documents[i] for i in kept],
                                              "tokens": sum(pr.token_lengths[i] for i in kept)}
            out[(f"sentence-{name}", n)] = {"kept": kept, "docs": pr.kept_documents[:n],
                                            "tokens": sum(pr.sentence_tokens[i] for i in kept)}
    facts = {"total_tokens": len(att.prompt(ex["question"], docs).input_ids), "rank_source": whole.rank_source,
             "gold_positions": [i for i, d in enumerate(docs) if d["id"] in set(ex["gold_document_ids"])]}
    return out, facts


def run(args) -> None:
    import torch
    from pruning_eval import pending_questions
    from readers import answer_ids_batched

    from at2_rag import AT2Attributor
    from at2_rag.research.data import is_correct

    torch.manual_seed(0)
    todo = pending_questions(args.data, args.split, args.limit, args.out)
    att = AT2Attributor.from_pretrained(max_new_tokens=32)
    for ex in todo:
        contexts, facts = contexts_of(ex, att)
        prompts: dict[tuple[str, ...], list[int]] = {}
        keys = {}
        for key, c in contexts.items():
            ctx = tuple((d.id, d.title, d.text) for d in c["docs"])
            keys[key] = ctx
            if ctx not in prompts:
                prompts[ctx] = att.prompt(ex["question"], c["docs"]).input_ids
        answers = dict(zip(prompts, answer_ids_batched(att, list(prompts.values()), batch_size=args.batch_size)))
        row = {"id": ex["id"], "question": ex["question"], "answers": ex["answers"], **facts, "methods": {}}
        for (method, n), c in contexts.items():
            a = answers[keys[(method, n)]]
            row["methods"][f"{method}@{n}"] = {
                "kept": c["kept"], "tokens": len(prompts[keys[(method, n)]]), "source_tokens": c["tokens"], "answer": a, "correct": is_correct(a, ex["answers"]),
                "gold_kept": bool(set(c["kept"]) & set(facts["gold_positions"])),
                "answer_in_context": is_correct(" ".join(d.text for d in c["docs"]), ex["answers"]),
            }
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(ex["id"], len(prompts), "contexts", flush=True)


def summary(path: str, out_json: str | None) -> dict:
    """Accuracy (± standard error), token share, gold-kept and answer-survives rates per method and
    budget, with paired sign tests against ``document`` at the same budget."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    methods = sorted(rows[0]["methods"], key=lambda m: int(m.split("@")[1])) if rows else []
    table = {}
    for m in methods:
        got = [r["methods"][m] for r in rows]
        acc = statistics.fmean(float(g["correct"]) for g in got)
        entry = {
            "accuracy": acc, "stderr": math.sqrt(acc * (1 - acc) / len(got)),
            "token_share": sum(g["tokens"] for g in got) / sum(r["total_tokens"] for r in rows),
            "mean_tokens": statistics.fmean(g["tokens"] for g in got),
            "gold_kept": statistics.fmean(float(g["gold_kept"]) for g in got),
            "answer_in_context": statistics.fmean(float(g["answer_in_context"]) for g in got),
        }
        ref = f"document@{m.split('@')[1]}"
        if m != ref:
            wins = sum(g["correct"] and not r["methods"][ref]["correct"] for g, r in zip(got, rows))
            losses = sum(r["methods"][ref]["correct"] and not g["correct"] for g, r in zip(got, rows))
            entry["vs_document"] = {"wins": wins, "losses": losses, "p": sign_test_p(wins, losses)}
        table[m] = entry
    result = {"questions": len(rows), "methods": table}
    if out_json:
        with open(out_json, "w") as fh:
            json.dump(result, fh, indent=1)
    print(f"{len(rows)} questions (k = 10, retriever order; tokens: the reader's prompt, share of the full prompt's)")
    for m, e in table.items():
        pair = e.get("vs_document")
        ps = f"vs document {pair['wins']}-{pair['losses']} p={pair['p']:.3g}" if pair else ""
        print(f"  {m:22s} acc {e['accuracy']:6.1%} ± {e['stderr']:.1%}  tokens {e['token_share']:5.1%} "
              f"({e['mean_tokens']:5.1f})  gold kept {e['gold_kept']:5.1%}  answer in context "
              f"{e['answer_in_context']:5.1%}  {ps}")
    return result


def main() -> None:
    from pruning_eval import run_or_summarise

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/nq_rag.jsonl.gz")
    ap.add_argument("--split", default="validation", choices=["validation", "test"])
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/out/sentence-pruning-validation.jsonl")
    run_or_summarise(ap, run, summary)


if __name__ == "__main__":
    main()
