"""All model work behind the support estimator and the pruning benchmark's inputs, in one run.

1. Reader answers (batched greedy, the default prompt): k = 10 full context in both orders
   (the draft of draft mode), gold passage only, no context — validation and test; on validation
   also two candidate prompts (short-answer instruction; and the question stated before the
   documents too), gold-only and k = 10: ``OUT/readers.jsonl``.
2. Draft-mode document scores (shipped answer estimator and uniform weights) of every k = 10 draft,
   one teacher-forced pass each: ``OUT/drafts.jsonl``.
3. Support data (reference-answer ablations, raw and content-free question-row features) for the
   train split (k = 10 in retriever and shuffled order, k = 5 shuffled) and for validation and test
   (k = 10, both orders): ``OUT/support/<split>/shard-*.safetensors``.

    python benchmarks/support_run.py --data data/nq_rag.jsonl.gz --out OUT --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SHORT_INSTRUCTION = (
    "Answer the question using only the search results below. Answer with a short phrase, not a "
    "sentence."
)
ORDERS = ("retriever", "shuffled")


def variant_prompt(att, question, docs, variant):
    """Token ids of the reader prompt ``variant``: default, short, or short with the question first."""
    from at2_rag import build_prompt

    if variant == "default":
        return att.prompt(question, docs).input_ids
    instruction = SHORT_INSTRUCTION
    if variant == "short_question_first":
        instruction += "\n\nQuestion: " + question
    return build_prompt(att.tokenizer, question, docs, instruction=instruction).input_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/nq_rag.jsonl.gz")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-limit", type=int, default=550)
    ap.add_argument("--eval-limit", type=int, default=None, help="validation/test examples (default all)")
    ap.add_argument("--n-masks", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--tf32", action="store_true", help="TF32 matmuls for the ablation passes (CUDA)")
    ap.add_argument("--stages", default="support,readers,drafts")
    args = ap.parse_args()

    import torch
    from readers import answer_ids_batched, no_context_ids

    from at2_rag import AT2Attributor
    from at2_rag.estimator import Estimator
    from at2_rag.research.ablation_data import generate_support_data, support_documents
    from at2_rag.research.data import read_jsonl

    os.makedirs(args.out, exist_ok=True)
    t_start = time.time()
    att = AT2Attributor.from_pretrained(device=args.device, dtype="float32", max_new_tokens=32)
    stages = set(args.stages.split(","))
    log = lambda msg: print(f"[{time.time() - t_start:7.1f}s] {msg}", flush=True)  # noqa: E731


    evals = {s: read_jsonl(args.data, split=s, limit=args.eval_limit) for s in ("validation", "test")}
    if "readers" in stages:
        jobs = []  # (split, id, condition, prompt ids)
        for split, exs in evals.items():
            for ex in exs:
                q = ex["question"]
                gold = [d for d in ex["documents"] if d["id"] in set(ex.get("gold_document_ids") or [])]
                for order in ORDERS:
                    docs = support_documents(ex, 10, order)
                    jobs.append((split, ex["id"], f"full10_{order}", att.prompt(q, docs).input_ids))
                jobs.append((split, ex["id"], "none", no_context_ids(att, q)))
                if gold:
                    jobs.append((split, ex["id"], "gold", att.prompt(q, gold).input_ids))
                if split == "validation":
                    for variant in ("short", "short_question_first"):
                        docs = ex["documents"][:10]
                        jobs.append((split, ex["id"], f"{variant}:full10_retriever",
                                     variant_prompt(att, q, docs, variant)))
                        if gold:
                            jobs.append((split, ex["id"], f"{variant}:gold", variant_prompt(att, q, gold, variant)))
        log(f"{len(jobs)} reader prompts")
        answers = answer_ids_batched(att, [j[3] for j in jobs], max_new_tokens=32, batch_size=args.batch_size)
        with open(os.path.join(args.out, "readers.jsonl"), "w") as fh:
            for (split, ident, cond, _), a in zip(jobs, answers):
                fh.write(json.dumps({"split": split, "id": ident, "condition": cond, "answer": a}) + "\n")
        log("readers done")

    if "drafts" in stages:
        drafts = {}
        with open(os.path.join(args.out, "readers.jsonl")) as fh:
            for line in fh:
                r = json.loads(line)
                if r["condition"].startswith("full10_"):
                    drafts[(r["id"], r["condition"][len("full10_"):])] = r["answer"]
        uniform = Estimator.uniform(att.model, "answer")
        with open(os.path.join(args.out, "drafts.jsonl"), "w") as fh:
            for split, exs in evals.items():
                for ex in exs:
                    for order in ORDERS:
                        draft = drafts[(ex["id"], order)]
                        row = {"split": split, "id": ex["id"], "order": order, "draft": draft}
                        if draft.strip():
                            res = att.attribute(ex["question"], support_documents(ex, 10, order), draft,
                                                 keep_features=True)
                            row["answer_estimator"] = res.scores.tolist()
                            row["uniform"] = uniform.source_scores(res.features).mean(dim=0).tolist()
                        fh.write(json.dumps(row) + "\n")
        log("drafts done")

    if "support" in stages:
        torch.backends.cuda.matmul.allow_tf32 = args.tf32  # answers and scores above stay in full float32
        for split, limit, configs in (
            ("train", args.train_limit, ((10, "retriever"), (10, "shuffled"), (5, "shuffled"))),
            ("validation", args.eval_limit, ((10, "retriever"), (10, "shuffled"))),
            ("test", args.eval_limit, ((10, "retriever"), (10, "shuffled"))),
        ):
            generate_support_data(
                att, args.data, os.path.join(args.out, "support", split), split=split, limit=limit,
                configs=configs, n_masks=args.n_masks, batch_size=args.batch_size, progress=False,
            )
            log(f"support {split} done")


if __name__ == "__main__":
    main()
