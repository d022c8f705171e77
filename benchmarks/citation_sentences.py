"""Which source sentence does an answer sentence's citation name first? Measured on NQ-RAG questions.

For each question the default model answers from the gold passage (``--k 1``, as ``at2-rag ask``
regenerates from its one kept chunk) or from the gold passage among ``k - 1`` retrieved ones in a
shuffled order, with sentences as sources. Where the answer is correct, the *answer sentence* is the
first one holding a reference answer, and the *gold sentences* are the passage's sentences that hold
one (the sentence that states the answer). Questions whose passage states the answer in every
sentence, or in none, are left out (nothing to tell apart).

Every answer token's per-source AT2 scores are kept in the rows (resumable, one line per question),
so each way of turning them into one score per source for the answer sentence is compared offline,
on the same answers:

- ``mean``: the mean over the sentence's tokens (AT2's trained target; what citations used before);
- ``max``: the largest score any one token of the sentence gives the source;
- ``window3``: the largest mean over 3 consecutive tokens of the sentence;
- ``mean_per_token``: ``mean`` divided by the source's length in tokens (a diagnostic of length bias);
- ``clauses``: :func:`at2_rag.cite` given the per-token scores: each clause of the sentence picks sources
  by the mean over its own tokens, the sentence cites them all, strongest first (one clause: ``mean``).

:data:`at2_rag.CITATION_POLICY` picks the cited sentences from each method's scores. Reported per method:
the top-1 hit rate (the first cited sentence is a gold one), the rate at which a gold sentence is cited
at all, how many sentences are cited and what share of them are gold, with paired win/loss counts and
two-sided sign-test p-values against ``mean``, over all usable answers and over those whose answer
sentence has several clauses; and where the top-1 source and the gold sentence lie in the passage
(position bias).

Answers that join two claims are rare among these (the small model mostly answers in one), so
``--compound ROWS`` builds them on purpose from the usable ``--k 1`` rows: the model's answer sentence
(the claim that answers the question) and the passage's longest other sentence (a second, longer
claim) joined by ", and", in both orders, attributed in one teacher-forced pass each (no generation).
Its summary reports how often each method cites the gold sentence, the other sentence, and both.

    OMP_NUM_THREADS=1 python benchmarks/citation_sentences.py --split validation --limit 150 --k 1 --out k1.jsonl
    OMP_NUM_THREADS=1 python benchmarks/citation_sentences.py --split validation --limit 150 --k 3 --out k3.jsonl
    OMP_NUM_THREADS=1 python benchmarks/citation_sentences.py --compound k1.jsonl --out compound.jsonl
    python benchmarks/citation_sentences.py --summary k1.jsonl k3.jsonl --compound-summary compound.jsonl \\
        --json benchmarks/out/citation-sentences.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from types import SimpleNamespace

METHODS = ("mean", "max", "window3", "mean_per_token", "clauses")
BASELINE = "mean"


def window_max(rows: Sequence[Sequence[float]], width: int) -> list[float]:
    """Per source: the largest mean over ``width`` consecutive rows (all rows when there are fewer)."""
    n, w = len(rows), min(width, len(rows))
    return [max(sum(r[s] for r in rows[i:i + w]) / w for i in range(n - w + 1)) for s in range(len(rows[0]))]


AGGREGATIONS: dict[str, Callable[[Sequence[Sequence[float]], Sequence[int]], list[float]]] = {
    "mean": lambda rows, lengths: [sum(c) / len(rows) for c in zip(*rows)],
    "max": lambda rows, lengths: [max(c) for c in zip(*rows)],
    "window3": lambda rows, lengths: window_max(rows, 3),
    "mean_per_token": lambda rows, lengths: [sum(c) / len(rows) / max(n, 1) for c, n in zip(zip(*rows), lengths)],
}
"""Method → (token rows of the answer sentence (tokens × sources), source lengths in tokens) → scores."""


def contains_answer(text: str, answers: Sequence[str]) -> bool:
    """Whether a normalized reference answer occurs in ``text`` (the NQ-Open rule)."""
    from at2_rag.research.data import is_correct

    return is_correct(text, list(answers))


def context(example: dict, k: int) -> list[dict] | None:
    """The gold passage, alone (k = 1) or among the first ``k - 1`` other retrieved passages in an order
    drawn from the id; None when the example has no gold passage."""
    gold = set(example.get("gold_document_ids") or [])
    golds = [d for d in example["documents"] if d.get("id") in gold][:1]
    if not golds:
        return None
    docs = golds + [d for d in example["documents"] if d.get("id") not in gold][: k - 1]
    random.Random(f"citation:{example['id']}").shuffle(docs)
    return docs


def collect(args) -> None:
    """Answer each selected question once and append its row (questions already in ``--out`` are skipped)."""
    import torch

    from at2_rag import AT2Attributor
    from at2_rag.prompts import token_char_starts
    from at2_rag.research.data import read_selection

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    done = set()
    if os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as fh:
            done = {json.loads(line)["id"] for line in fh if line.strip()}
    att = AT2Attributor.from_pretrained(args.model)
    examples = read_selection(args.data, args.split, args.limit)
    with open(args.out, "a", encoding="utf-8") as out:
        for n, ex in enumerate(examples, 1):
            if ex["id"] in done:
                continue
            docs = context(ex, args.k)
            row: dict = {"id": ex["id"], "question": ex["question"], "answers": ex["answers"], "k": args.k}
            if docs is None:
                row["skip"] = "no gold passage"
            else:
                r = att.generate(ex["question"], docs, granularity="sentence", max_new_tokens=args.max_new_tokens,
                                 keep_features=True)
                per_token = att.estimator.source_scores(r.features)  # (answer tokens, sources)
                gold_doc = next(i for i, d in enumerate(docs) if d["id"] in set(ex["gold_document_ids"]))
                row |= {
                    "answer": r.answer,
                    "correct": contains_answer(r.answer, ex["answers"]),
                    "sources": [{"document": s.document, "text": s.text, "tokens": s.token_end - s.token_start,
                                 "gold": s.document == gold_doc and contains_answer(s.text, ex["answers"])}
                                for s in r.sources],
                    "token_starts": token_char_starts(att.tokenizer, r.answer_ids, r.answer),
                    "sentences": [{"text": s.text, "start": s.start, "end": s.end, "tokens": list(s.tokens),
                                   "answer": contains_answer(s.text, ex["answers"])} for s in r.sentences],
                    "token_scores": [[round(x, 6) for x in t] for t in per_token.tolist()],
                }
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
            print(f"{n}/{len(examples)} {ex['id']} {row.get('skip') or ('correct' if row['correct'] else 'wrong')}",
                  file=sys.stderr, flush=True)


def compound_answers(row: dict) -> list[tuple[str, str, int]]:
    """(order, answer, other source) for a usable row: its answer sentence and the passage's longest non-gold
    sentence joined by ", and", each first once."""
    claim = next(s for s in row["sentences"] if s["answer"])["text"].strip().rstrip(".!?")
    others = [i for i, s in enumerate(row["sources"]) if not s["gold"] and len(s["text"].split()) >= 3]
    if not others:
        return []
    other = max(others, key=lambda i: (len(row["sources"][i]["text"]), -i))
    text = row["sources"][other]["text"].strip().rstrip(".!?")

    def tail(t: str) -> str:  # a sentence continued after ", and": "The ..." becomes "the ..."
        return t[0].lower() + t[1:] if t[:1].isupper() and t[1:2].islower() else t

    return [("answer_first", f"{claim}, and {tail(text)}.", other), ("answer_second", f"{text}, and {tail(claim)}.", other)]


def collect_compound(args) -> None:
    """Attribute the compound answers of the usable rows of ``args.compound`` (teacher-forced) into ``--out``."""
    import torch

    from at2_rag import AT2Attributor
    from at2_rag.prompts import token_char_starts
    from at2_rag.research.data import read_jsonl

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    rows = [r for r in with_token_starts([json.loads(line) for line in open(args.compound, encoding="utf-8")
                                          if line.strip()]) if usable(r) and r["k"] == 1]
    wanted = {r["id"] for r in rows}
    examples = {ex["id"]: ex for ex in read_jsonl(args.data) if ex["id"] in wanted}
    att = AT2Attributor.from_pretrained(args.model)
    with open(args.out, "w", encoding="utf-8") as out:
        for n, row in enumerate(rows, 1):
            docs = context(examples[row["id"]], 1)
            for order, answer, other in compound_answers(row):
                r = att.attribute(row["question"], docs, answer, granularity="sentence", keep_features=True)
                assert [s.text for s in r.sources] == [s["text"] for s in row["sources"]], row["id"]
                out.write(json.dumps({
                    "id": row["id"], "order": order, "answer": r.answer, "other": other,
                    "gold": [s["gold"] for s in row["sources"]],
                    "token_scores": [[round(x, 6) for x in t]
                                     for t in att.estimator.source_scores(r.features).tolist()],
                    "token_starts": token_char_starts(att.tokenizer, r.answer_ids, r.answer),
                    "sentences": [{"text": s.text, "start": s.start, "end": s.end, "tokens": list(s.tokens)}
                                  for s in r.sentences],
                }, ensure_ascii=False) + "\n")
            out.flush()
            print(f"{n}/{len(rows)} {row['id']}", file=sys.stderr, flush=True)


def compound_cited(row: dict, method: str) -> list[int]:
    """What ``method`` cites for a compound answer (one sentence: the whole answer)."""
    sentence = max(row["sentences"], key=lambda s: len(s["tokens"]))
    view = {"answer": row["answer"], "token_scores": row["token_scores"], "token_starts": row["token_starts"],
            "sentences": [sentence | {"answer": True}],
            "sources": [{"gold": g, "tokens": 0} for g in row["gold"]]}
    return cited_sources(view, method)


def summarize_compound(path: str) -> dict:
    """Per order and method: the gold sentence cited, the other sentence cited, both; sign tests vs ``mean``."""
    from at2_rag.research.evaluation.offline import sign_test

    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    out: dict = {"file": os.path.basename(path), "answers": len(rows),
                 "one_sentence": sum(len(r["sentences"]) == 1 for r in rows), "orders": {}}
    for order in ("answer_first", "answer_second"):
        rs = [r for r in rows if r["order"] == order]
        per = {}
        for m in ("mean", "clauses"):
            xs = []
            for r in rs:
                cited = compound_cited(r, m)
                gold = any(r["gold"][i] for i in cited)
                xs.append({"gold_cited": float(gold), "other_cited": float(r["other"] in cited),
                           "both_cited": float(gold and r["other"] in cited), "cited": len(cited)})
            per[m] = xs
        entry = {}
        for m, xs in per.items():
            entry[m] = {"n": len(xs)} | {key: statistics.mean(x[key] for x in xs) if xs else None
                                         for key in ("gold_cited", "other_cited", "both_cited", "cited")}
            if m != BASELINE:
                for key in ("gold_cited", "both_cited"):
                    w, lo, p = sign_test([x[key] for x in xs], [x[key] for x in per[BASELINE]])
                    entry[m][f"{key}_vs_mean"] = {"wins": w, "losses": lo, "p": p}
        out["orders"][order] = entry
    return out


def usable(row: dict) -> bool:
    """A correct answer with a sentence that states it, from a passage whose sentences differ on it."""
    if row.get("skip") or not row["correct"] or not any(s["answer"] for s in row["sentences"]) \
            or row.get("token_starts", ()) is None:
        return False
    gold = [s["gold"] for s in row["sources"]]
    return any(gold) and not all(gold)


def cited_sources(row: dict, method: str) -> list[int]:
    """The sources :data:`at2_rag.CITATION_POLICY` cites for the row's answer sentence under ``method``, in order."""
    import torch

    from at2_rag import CITATION_POLICY, AnswerSentence, cite

    sentence = next(s for s in row["sentences"] if s["answer"])
    rows = [row["token_scores"][t] for t in sentence["tokens"]]
    if method == "clauses":
        start = sentence.get("start", row["answer"].find(sentence["text"]))
        sent = AnswerSentence(sentence["text"], start, start + len(sentence["text"]),
                              torch.tensor(rows).mean(dim=0), tuple(sentence["tokens"]))
        sources = [SimpleNamespace(document=0, text="", start=0, end=0) for _ in row["sources"]]
        att = SimpleNamespace(sources=sources, prompt=SimpleNamespace(documents=[SimpleNamespace(id=None)]),
                              sentences=[sent], answer=row["answer"])
        return [c.source for c in cite(att, token_scores=torch.tensor(row["token_scores"]),
                                       token_starts=row["token_starts"])[0].sources]
    scores = AGGREGATIONS[method](rows, [s["tokens"] for s in row["sources"]])
    positive = [i for i, x in enumerate(scores) if x > 0]
    return [positive[j] for j in CITATION_POLICY.select([scores[i] for i in positive])]


def measure(row: dict, method: str) -> dict:
    """One usable row under one method: top-1 hit, gold cited, cited count and gold share, top-1 position."""
    gold = [s["gold"] for s in row["sources"]]
    cited = cited_sources(row, method)
    return {"top1": float(bool(cited) and gold[cited[0]]), "cited_gold": float(any(gold[i] for i in cited)),
            "cited": len(cited), "cited_gold_share": sum(gold[i] for i in cited) / len(cited) if cited else 0.0,
            "top_position": cited[0] if cited else None}


def several_clauses(row: dict) -> bool:
    """Whether the row's answer sentence has more than one clause."""
    from at2_rag.sentences import split_clauses

    sentence = next(s for s in row["sentences"] if s["answer"])
    start = sentence.get("start", row["answer"].find(sentence["text"]))
    return len(split_clauses(row["answer"], start, start + len(sentence["text"]))) > 1


def with_token_starts(rows: list[dict]) -> list[dict]:
    """Rows with ``token_starts``: rows written before it was stored get it from the bundled tokenizer, or
    None (then left out) when the answer re-encodes to other tokens than the model generated."""
    if all("token_starts" in r for r in rows if not r.get("skip")):
        return rows
    from at2_rag import load_model
    from at2_rag.prompts import encode, token_char_starts

    _, tokenizer = load_model("default")
    for r in rows:
        if not r.get("skip") and "token_starts" not in r:
            ids = encode(tokenizer, r["answer"])
            r["token_starts"] = token_char_starts(tokenizer, ids, r["answer"]) \
                if len(ids) == len(r["token_scores"]) else None
    return rows


def rates(per: dict[str, list[dict]]) -> dict:
    """Mean rates per method, with paired sign tests of top-1 and gold-cited against ``mean``."""
    from at2_rag.research.evaluation.offline import sign_test

    out = {}
    for m, xs in per.items():
        entry: dict = {"n": len(xs)}
        entry |= {key: statistics.mean(x[key] for x in xs) if xs else None
                  for key in ("top1", "cited_gold", "cited", "cited_gold_share")}
        if m != BASELINE:
            for key in ("top1", "cited_gold"):
                w, lo, p = sign_test([x[key] for x in xs], [x[key] for x in per[BASELINE]])
                entry[f"{key}_vs_mean"] = {"wins": w, "losses": lo, "p": p}
        out[m] = entry
    return out


def summarize(path: str) -> dict:
    """Rates per method over the usable rows, paired sign tests against ``mean``, position histograms."""
    rows = with_token_starts([json.loads(line) for line in open(path, encoding="utf-8") if line.strip()])
    use = [r for r in rows if usable(r)]
    per = {m: [measure(r, m) for r in use] for m in METHODS}
    multi = [several_clauses(r) for r in use]
    out: dict = {
        "file": os.path.basename(path), "questions": len(rows),
        "answered_correctly": sum(bool(r.get("correct")) for r in rows), "usable": len(use),
        "left_out_not_reencodable": sum(bool(r.get("correct")) and r.get("token_starts", ()) is None for r in rows),
        "usable_with_several_clauses": sum(multi),
        "k": sorted({r["k"] for r in rows}),
        "sources_per_question": statistics.mean(len(r["sources"]) for r in use) if use else None,
        "gold_sentences_per_question": statistics.mean(sum(s["gold"] for s in r["sources"]) for r in use) if use else None,
        "chance_top1": statistics.mean(sum(s["gold"] for s in r["sources"]) / len(r["sources"]) for r in use)
        if use else None,
        "methods": rates(per),
        "methods_several_clauses": rates({m: [x for x, keep in zip(xs, multi) if keep] for m, xs in per.items()}),
    }
    # Position bias: where, relative to the passage's sentences, the top-1 source and the gold sentence lie
    # (first sentence, last sentence, or between), for the baseline.
    def where(i: int, n: int) -> str:
        return "first" if i == 0 else "last" if i == n - 1 else "middle"

    out["top1_position_mean"] = dict(Counter(where(x["top_position"], len(r["sources"]))
                                             for x, r in zip(per[BASELINE], use) if x["top_position"] is not None))
    out["gold_position"] = dict(Counter(where(next(i for i, s in enumerate(r["sources"]) if s["gold"]),
                                              len(r["sources"])) for r in use))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/nq_rag.jsonl.gz")
    parser.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    parser.add_argument("--limit", type=int, default=150)
    parser.add_argument("--k", type=int, default=1, help="passages in the context (the gold one among them)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", default="benchmarks/out/citation-sentences-validation.jsonl")
    parser.add_argument("--summary", nargs="+", default=None, metavar="ROWS", help="summarize these rows files")
    parser.add_argument("--compound", default=None, metavar="ROWS",
                        help="attribute compound answers built from these --k 1 rows into --out")
    parser.add_argument("--compound-summary", default=None, metavar="ROWS", help="summarize compound rows")
    parser.add_argument("--json", default=None, help="also write the summaries to this JSON file")
    args = parser.parse_args()
    if args.compound is not None:
        collect_compound(args)
        return
    if args.summary is None:
        collect(args)
        return
    summaries: dict = {"natural_answers": [summarize(p) for p in args.summary]}
    if args.compound_summary:
        summaries["compound_answers"] = summarize_compound(args.compound_summary)
    text = json.dumps(summaries, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
