"""Reader accuracy of candidate prompts on validation, from the answers of ``support_run.py``.

Compares the default prompt with a short-answer instruction, and with the question stated before
the documents too, on gold-passage-only and k = 10 contexts (retriever order), paired per question.

    python benchmarks/reader_prompts.py --run benchmarks/data/support-run --json benchmarks/out/reader-prompts.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pruning_eval import sign_test  # noqa: E402

from at2_rag.research.data import is_correct, read_jsonl  # noqa: E402

VARIANTS = ("default", "short", "short_question_first")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="benchmarks/data/support-run")
    ap.add_argument("--data", default="data/nq_rag.jsonl.gz")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    answers = {}
    with open(os.path.join(args.run, "readers.jsonl")) as fh:
        for line in fh:
            r = json.loads(line)
            if r["split"] == "validation":
                answers[(r["id"], r["condition"])] = r["answer"]
    refs = {e["id"]: e["answers"] for e in read_jsonl(args.data, split="validation")}
    ids = sorted({i for i, c in answers if c == "short:gold"})
    out = {"questions": len(ids), "contexts": {}}
    for context, base in (("gold", "gold"), ("full10_retriever", "full10_retriever")):
        correct = {}
        for v in VARIANTS:
            cond = base if v == "default" else f"{v}:{base}"
            correct[v] = [is_correct(answers[(i, cond)], refs[i]) for i in ids]
        row = {}
        for v in VARIANTS:
            row[v] = {"accuracy": sum(correct[v]) / len(ids)}
            if v != "default":
                w = sum(a and not b for a, b in zip(correct[v], correct["default"]))
                lo = sum(b and not a for a, b in zip(correct[v], correct["default"]))
                row[v]["vs_default"] = {"wins": w, "losses": lo, "sign_test_p": sign_test(w, lo)}
        out["contexts"][context] = row
    none = [is_correct(answers[(i, "none")], refs[i]) for i in ids]
    out["none_default"] = sum(none) / len(ids)
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
