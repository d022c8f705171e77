"""A small model pruning for a bigger reader: who should choose the passages a larger model reads?

For each NQ-RAG question (k = 10 retrieved passages, shuffled or retriever order; every passage carries
its retriever rank in metadata) a pruner keeps 1, 2 or 3 passages and the *reader* (a larger model,
``--reader``) answers from them, greedily. Pruners, all from one prefill of the question:

- ``proxy_default``  the bundled 135M model's default pruner: support estimator fused with the rank;
- ``proxy_support``  the same scores without the rank (the 135M model's content signal alone);
- ``proxy_uniform``  the 135M model's training-free signal: average attention of the question rows
                     minus that of a content-free question (no estimator at all);
- ``reader_uniform`` the same training-free signal from the reader's own attention (its own pass);
- ``retriever``      the retriever's first passages (by rank);
- ``reader_support`` / ``reader_default``  the reader's own *trained* support estimator, alone and fused
                     with the rank as ``Pruner`` does (``--stage add-reader-support``: added to a finished
                     rows file, answering only the contexts it has not answered yet; ``reader_support``
                     at one passage only).

``full`` (all ten) and ``gold`` (the gold passage alone) bound them. Accuracy: a normalised reference
answer occurs in the normalised answer. Every method's kept passages are recorded, so gold-kept rates
come for free; the reader answers each distinct context once (``proxy_support`` and ``proxy_uniform``
at one passage only, to bound the CPU cost). Rows are appended per question (resumable).

    python benchmarks/bigger_reader.py --reader qwen2.5-coder-0.5b --split test --limit 100 \\
        --out benchmarks/out/bigger-reader-0.5b-test.jsonl
    python benchmarks/bigger_reader.py --summary benchmarks/out/bigger-reader-0.5b-test.jsonl \\
        --json benchmarks/out/bigger-reader-0.5b-test.json
    python benchmarks/bigger_reader.py --stage add-reader-support --rows benchmarks/out/bigger-reader-0.5b-test.jsonl \\
        --out benchmarks/out/bigger-reader-0.5b-test-support.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from at2_rag.research.evaluation.metrics import sign_test_p  # noqa: E402

BUDGETS = (1, 2, 3)
ANSWERED = {  # method -> budgets the reader answers for (the others: kept passages only)
    "proxy_default": BUDGETS, "reader_uniform": BUDGETS, "retriever": BUDGETS,
    "proxy_support": (1,), "proxy_uniform": (1,), "reader_default": BUDGETS, "reader_support": (1,),
}


def question_scores(att, estimator, question: str, docs: list[dict]) -> tuple[list[float], list[float], list[int]]:
    """``estimator``'s scores and the training-free (uniform, content-free calibrated) scores of the
    documents from one batched prefill of ``att``, and each document's prompt tokens."""
    from at2_rag import Estimator

    prompt = att.prompt(question, docs, "document")
    raw, null = att.query_features(prompt, content_free=True)
    calibrated = raw - null
    own = estimator.source_scores(calibrated if estimator.calibration == "content-free" else raw).tolist()
    uniform = Estimator.uniform(att.model, "query").source_scores(calibrated).tolist()
    tokens = [s.token_end - s.token_start for s in prompt.sources]
    return own, uniform, tokens


SIGNAL_VARIANTS = ("difference", "raw", "difference_per_token", "log_ratio", "difference_late_layers")
"""Training-free forms of the question rows' attention compared on validation (``--stage signals``)."""


def signal_variant(name: str, raw, null, tokens):
    """Scores ``(S,)`` of one training-free form from raw and content-free features ``(L, H, S)``."""
    import torch

    if name == "raw":
        return raw.sum((0, 1))
    if name == "log_ratio":
        return (torch.log(raw.clamp_min(1e-9)) - torch.log(null.clamp_min(1e-9))).sum((0, 1))
    if name == "difference_late_layers":
        return (raw - null)[raw.shape[0] // 2:].sum((0, 1))
    diff = (raw - null).sum((0, 1))
    return diff / torch.tensor(tokens, dtype=diff.dtype) if name == "difference_per_token" else diff


def signals(args) -> None:
    """Gold-passage-first rate of each training-free form, per model, on validation questions (shuffled,
    k = 10): the form ``run`` uses for both models is chosen here, never on test questions."""
    from at2_rag import AT2Attributor
    from at2_rag.research.ablation_data import support_documents
    from at2_rag.research.data import read_jsonl

    examples = [e for e in read_jsonl(args.data, split="validation") if e.get("gold_rank") is not None][: args.limit]
    models = {"proxy": AT2Attributor.from_pretrained("default"), "reader": AT2Attributor.from_pretrained(args.reader)}
    trained = {m: att.query_estimator("default-support") for m, att in models.items()}
    trained = {m: est for m, est in trained.items() if est.recipe.get("target") == "reference answer (support)"}
    hits = {m: {v: 0 for v in SIGNAL_VARIANTS + (("trained_support",) if m in trained else ())} for m in models}
    per_question = []  # per question, model and form: gold first (1) or not (0), for paired tests
    for n, ex in enumerate(examples, 1):
        docs = support_documents(ex, 10, "shuffled")
        gold = {i for i, d in enumerate(docs) if d["id"] in set(ex["gold_document_ids"])}
        before = {m: dict(h) for m, h in hits.items()}
        for m, att in models.items():
            prompt = att.prompt(ex["question"], docs, "document")
            raw, null = att.query_features(prompt, content_free=True)
            tokens = [s.token_end - s.token_start for s in prompt.sources]
            for v in SIGNAL_VARIANTS:
                hits[m][v] += int(signal_variant(v, raw, null, tokens).argmax()) in gold
            if m in trained:  # the model's shipped support estimator, for comparison (no rank)
                est = trained[m]
                own = est.source_scores(raw - null if est.calibration == "content-free" else raw)
                hits[m]["trained_support"] += int(own.argmax()) in gold
        per_question.append({"id": ex["id"], **{m: {v: h - before[m][v] for v, h in hv.items()} for m, hv in hits.items()}})
        print(n, {m: dict(h) for m, h in hits.items()}, flush=True)
    result = {"split": "validation", "order": "shuffled", "k": 10, "questions": len(examples), "reader": args.reader,
              "gold_first": {m: {v: h / len(examples) for v, h in hv.items()} for m, hv in hits.items()}}
    for m in trained:  # the trained estimator against the chosen training-free form, paired
        wins = sum(q[m]["trained_support"] > q[m]["difference"] for q in per_question)
        losses = sum(q[m]["trained_support"] < q[m]["difference"] for q in per_question)
        result.setdefault("trained_vs_difference", {})[m] = {"wins": wins, "losses": losses, "p": sign_test_p(wins, losses)}
    result["per_question"] = per_question
    with open(args.json or "benchmarks/out/bigger-reader-signals-validation.json", "w") as fh:
        json.dump(result, fh, indent=1)
    print(json.dumps(result, indent=1))


def run(args) -> None:
    import torch
    from pruning_eval import pending_questions
    from readers import answer_ids_batched

    from at2_rag import RETRIEVAL_RANK_KEY, AT2Attributor, Estimator, KeepPolicy, fused_scores
    from at2_rag.research.ablation_data import support_documents
    from at2_rag.research.data import is_correct

    torch.manual_seed(0)
    todo = pending_questions(args.data, args.split, args.limit, args.out)
    if not todo:
        return
    proxy = AT2Attributor.from_pretrained("default", max_new_tokens=32)
    reader = AT2Attributor.from_pretrained(args.reader, max_new_tokens=32)
    support = proxy.query_estimator("default-support")
    rank_weight = support.recipe["fusion"]["rank_weight"]
    reader_uniform = Estimator.uniform(reader.model, "query")
    orders = args.orders.split(",")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for n_done, ex in enumerate(todo, 1):
        q, gold_ids = ex["question"], set(ex["gold_document_ids"])
        ranks = {d["id"]: r for r, d in enumerate(ex["documents"])}
        row = {"id": ex["id"], "question": q, "answers": ex["answers"], "reader": args.reader, "orders": {}}
        prompts: dict[tuple, list[int]] = {}
        plan = []  # (order, method, budget, key)
        for order in orders:
            docs = [{**d, "metadata": {RETRIEVAL_RANK_KEY: ranks[d["id"]]}} for d in support_documents(ex, 10, order)]
            doc_ranks = [ranks[d["id"]] for d in docs]
            t = time.perf_counter()
            sup, proxy_uni, tokens = question_scores(proxy, support, q, docs)
            t_proxy = time.perf_counter() - t
            t = time.perf_counter()
            _, own_uni, _ = question_scores(reader, reader_uniform, q, docs)
            t_reader = time.perf_counter() - t
            signals = {
                "proxy_default": fused_scores(sup, rank_weight, doc_ranks), "proxy_support": sup,
                "proxy_uniform": proxy_uni, "reader_uniform": own_uni, "retriever": [-r for r in doc_ranks],
            }
            o = row["orders"][order] = {
                "doc_ids": [d["id"] for d in docs], "tokens": tokens, "ranks": doc_ranks,
                "gold_positions": [i for i, d in enumerate(docs) if d["id"] in gold_ids],
                "signals": signals, "seconds": {"proxy_score": t_proxy, "reader_score": t_reader}, "methods": {},
            }
            for method, scores in signals.items():
                for n in BUDGETS:
                    kept = KeepPolicy(top_k=n).select(scores)
                    entry = {"kept": kept, "tokens": sum(tokens[i] for i in kept),
                             "gold_kept": any(docs[i]["id"] in gold_ids for i in kept)}
                    o["methods"][f"{method}@{n}"] = entry
                    if n in ANSWERED[method]:
                        plan.append((order, f"{method}@{n}", tuple(docs[i]["id"] for i in kept)))
            plan.append((order, "full", tuple(d["id"] for d in docs)))
            o["methods"]["full"] = {"kept": list(range(len(docs))), "tokens": sum(tokens)}
            by_id = {d["id"]: d for d in docs}
            for _, _, key in plan:
                if key not in prompts and all(i in by_id for i in key):
                    prompts[key] = reader.prompt(q, [by_id[i] for i in key], "document").input_ids
        gold_key = tuple(d["id"] for d in ex["documents"][:10] if d["id"] in gold_ids)
        if gold_key not in prompts:
            prompts[gold_key] = reader.prompt(q, [d for d in ex["documents"][:10] if d["id"] in gold_ids], "document").input_ids
        t = time.perf_counter()
        answers = dict(zip(prompts, answer_ids_batched(reader, list(prompts.values()), batch_size=args.batch_size)))
        row["answer_seconds"] = time.perf_counter() - t
        row["answered_contexts"] = len(prompts)
        for order, method, key in plan:
            a = answers[key]
            row["orders"][order]["methods"][method].update({"answer": a, "correct": is_correct(a, ex["answers"])})
        a = answers[gold_key]
        row["gold"] = {"answer": a, "correct": is_correct(a, ex["answers"])}
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"[{n_done}/{len(todo)}] {ex['id']} contexts={len(prompts)} answers={row['answer_seconds']:.0f}s "
              + " ".join(f"{o}:{m}={int(v['correct'])}" for o, x in row["orders"].items()
                         for m, v in x["methods"].items() if "correct" in v and m.endswith("@1")), flush=True)


def add_reader_support(args) -> None:
    """Rows of ``--rows`` with the reader's own trained support pruner added (``reader_support``: its
    shipped support estimator's scores; ``reader_default``: those fused with the retriever rank, as
    ``Pruner`` does), each at 1–3 passages. Contexts the row already answered keep their answer (greedy,
    the same prompt); only new ones are answered. Resumable: rows already in ``--out`` are skipped."""
    from pruning_eval import done_ids
    from readers import answer_ids_batched

    from at2_rag import AT2Attributor, KeepPolicy, fused_scores
    from at2_rag.research.data import is_correct

    done = done_ids(args.out)
    rows = [json.loads(line) for line in open(args.rows) if line.strip()]
    rows = [r for r in rows if r["id"] not in done][: max(0, args.limit - len(done))]
    print(f"{len(done)} done, {len(rows)} to go", flush=True)
    if not rows:
        return
    reader = AT2Attributor.from_pretrained(rows[0]["reader"], max_new_tokens=32)
    support = reader.query_estimator("default-support")
    if support.recipe.get("target") != "reference answer (support)":
        raise SystemExit(f"{rows[0]['reader']} has no shipped support estimator; fit one with at2-rag fit-model --kinds support")
    rank_weight = support.recipe["fusion"]["rank_weight"]
    examples = {e["id"]: e for e in _read_examples(args.data, args.split)}
    for n_done, row in enumerate(rows, 1):
        ex = examples[row["id"]]
        by_id = {d["id"]: d for d in ex["documents"]}
        gold_ids = set(ex["gold_document_ids"])
        known, plan = {}, []
        for order, o in row["orders"].items():
            docs = [by_id[i] for i in o["doc_ids"]]
            for m in o["methods"].values():
                if "answer" in m:
                    known[tuple(o["doc_ids"][i] for i in m["kept"])] = m["answer"]
            t = time.perf_counter()
            own, _, _ = question_scores(reader, support, row["question"], docs)
            o["seconds"]["reader_support"] = time.perf_counter() - t
            o["signals"]["reader_support"] = own
            o["signals"]["reader_default"] = fused_scores(own, rank_weight, o["ranks"])
            for method in ("reader_support", "reader_default"):
                for n in BUDGETS:
                    kept = KeepPolicy(top_k=n).select(o["signals"][method])
                    o["methods"][f"{method}@{n}"] = {
                        "kept": kept, "tokens": sum(o["tokens"][i] for i in kept),
                        "gold_kept": any(o["doc_ids"][i] in gold_ids for i in kept)}
                    if n in ANSWERED[method]:
                        plan.append((order, f"{method}@{n}", tuple(o["doc_ids"][i] for i in kept)))
        new = list(dict.fromkeys(key for _, _, key in plan if key not in known))
        t = time.perf_counter()
        prompts = [reader.prompt(row["question"], [by_id[i] for i in key], "document").input_ids for key in new]
        known.update(zip(new, answer_ids_batched(reader, prompts, batch_size=args.batch_size)))
        row["support_answer_seconds"], row["support_new_contexts"] = time.perf_counter() - t, len(new)
        for order, method, key in plan:
            row["orders"][order]["methods"][method].update({"answer": known[key], "correct": is_correct(known[key], ex["answers"])})
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"[{n_done}/{len(rows)}] {row['id']} new contexts={len(new)} " + " ".join(
            f"{o}:{m}={int(v['correct'])}" for o, x in row["orders"].items() for m, v in x["methods"].items()
            if m.startswith("reader_") and "correct" in v), flush=True)


def _read_examples(data: str, split: str) -> list[dict]:
    from at2_rag.research.data import read_jsonl

    return list(read_jsonl(data, split=split))


REFERENCES = ("proxy_default", "retriever", "reader_uniform", "reader_default", "proxy_support", "reader_support")
"""The methods every other is compared with, paired, at the same budget (and the full context)."""


def paired(ours: list, theirs: list) -> dict:
    """Sign test of two paired yes/no outcomes: questions only ``ours`` gets right (wins) against the reverse."""
    wins = sum(bool(a) and not b for a, b in zip(ours, theirs))
    losses = sum(bool(b) and not a for a, b in zip(ours, theirs))
    return {"wins": wins, "losses": losses, "p": sign_test_p(wins, losses)}


def summary(path: str, out_json: str | None) -> dict:
    """Accuracy, gold-kept rate and token share per order, method and budget, with paired sign tests of
    both against each of :data:`REFERENCES` at the same budget (accuracy also against the full context)."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    result = {"questions": len(rows), "reader": rows[0]["reader"] if rows else None, "orders": {},
              "gold": sum(r["gold"]["correct"] for r in rows) / max(len(rows), 1)}
    for order in sorted({o for r in rows for o in r["orders"]}):
        rs = [r for r in rows if order in r["orders"]]
        methods = rs[0]["orders"][order]["methods"]
        table = {}
        for m in methods:
            got = [r["orders"][order]["methods"][m] for r in rs]
            total = [sum(r["orders"][order]["tokens"]) for r in rs]
            entry = {"token_share": sum(g["tokens"] for g in got) / sum(total)}
            budget = m.split("@")[1] if "@" in m else None
            refs = {**{ref: f"{ref}@{budget}" for ref in REFERENCES}, "full": "full"} if budget else {}
            for field, name, prefix in (("gold_kept", "gold_kept", "gold_vs_"), ("correct", "accuracy", "vs_")):
                if field not in got[0]:
                    continue
                entry[name] = sum(g[field] for g in got) / len(got)
                for ref, other in refs.items():
                    if other != m and field in methods.get(other, {}):
                        theirs = [r["orders"][order]["methods"][other][field] for r in rs]
                        entry[prefix + ref] = paired([g[field] for g in got], theirs)
            table[m] = entry
        result["orders"][order] = {"questions": len(rs), "methods": table}
    if out_json:
        with open(out_json, "w") as fh:
            json.dump(result, fh, indent=1)
    for order, o in result["orders"].items():
        print(f"\n{order} order, {o['questions']} questions (reader {result['reader']}, gold alone {result['gold']:.1%})")
        for m, e in o["methods"].items():
            tests = " ".join(f"{k}={v['wins']}-{v['losses']} p={v['p']:.2g}" for k, v in e.items() if "vs_" in k)
            acc = f"{e['accuracy']:.1%}" if "accuracy" in e else "   -  "
            gk = f"{e['gold_kept']:.1%}" if "gold_kept" in e else "  -  "
            print(f"  {m:20s} acc {acc:>6s}  gold kept {gk:>6s}  tokens {e['token_share']:.1%}  {tests}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/nq_rag.jsonl.gz")
    ap.add_argument("--reader", default="qwen2.5-coder-0.5b", help="the larger model that answers (a fetched name)")
    ap.add_argument("--split", default="test", choices=["validation", "test"])
    ap.add_argument("--stage", default="run", choices=["run", "signals", "add-reader-support"],
                    help="signals: compare training-free forms on validation questions (choose the form); "
                         "add-reader-support: add the reader's trained support pruner to the rows of --rows")
    ap.add_argument("--rows", default=None, help="with --stage add-reader-support: the finished rows file")
    ap.add_argument("--orders", default="shuffled,retriever")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--out", default=None)
    ap.add_argument("--summary", default=None, help="summarise this rows file instead of running")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.summary:
        summary(args.summary, args.json)
    elif args.stage == "signals":
        signals(args)
    elif args.stage == "add-reader-support":
        if not args.rows or not args.out:
            ap.error("--rows and --out are required to add the reader's support pruner")
        add_reader_support(args)
    else:
        if not args.out:
            ap.error("--out is required to run")
        run(args)


if __name__ == "__main__":
    main()
