"""Faithfulness from the committed ablation outcomes (``benchmarks/data/outcomes``), on this CPU.

    python benchmarks/faithfulness.py select       # choices on held-out training questions (no test data read)
    python benchmarks/faithfulness.py holdout-loo  # leave-one-out passes for the design choice (CPU, ~25 min)
    python benchmarks/faithfulness.py designs      # AT2+N's ablation design and strength, on the same questions
    python benchmarks/faithfulness.py recipes      # token-window sources and feature extensions (held out)
    python benchmarks/faithfulness.py holdout-extra  # every source's leave-one-out and group passes (CPU, ~40 min)
    python benchmarks/faithfulness.py groups       # what better-chosen passes could buy AT2+8 (held out)
    python benchmarks/faithfulness.py test [--estimator FILE]   # the test tables, run once
    python benchmarks/faithfulness.py equivalent   # ContextCite's budget that matches each AT2 variant (test)

``select``: the learning curve, recipe and estimator-form ablations, and AT2+N's ridge strength with
random masks, all scored by LDS on the last ``--holdout`` questions of the ``train-k5`` outcomes (their
32 masks and whole-answer targets), which no fit sees. ``holdout-loo`` measures, for those questions,
the answer with each of the shipped estimator's 8 highest sources left out
(``benchmarks/data/outcomes/train-k5-holdout-loo.jsonl``, resumable); ``designs`` compares AT2+N's
two ablation designs (:mod:`at2_rag.refine`) on them. ``test``: AT2, AT2+N in both designs,
ContextCite-N, leave-one-out and average attention on the test outcomes at k = 5 and 10, paired sign
tests, and the LDS-vs-passes plot. Features are recomputed once (one pass per question) and cached
under ``data/features``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUTCOMES = ROOT / "benchmarks" / "data" / "outcomes"
OUT = ROOT / "benchmarks" / "out"
STRENGTHS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
DESIGN_STRENGTHS = (0.001, 0.003) + STRENGTHS  # the designs with left-out sources prefer weak shrinkage
HOLDOUT_LOO = OUTCOMES / "train-k5-holdout-loo.jsonl"
TOP = 8  # sources left out one at a time per held-out question: enough for AT2+N up to N = 8
HOLDOUT_EXTRA = OUTCOMES / "train-k5-holdout-extra.jsonl"
GROUPS = (1, 2, 3)  # group passes per design: the sources below the prior's top 8 − G, split in G groups


def load(name: str, data: str, shards: int | None = None) -> list:
    from at2_rag import AT2Attributor
    from at2_rag.research.features import cached_features

    att = AT2Attributor.from_pretrained()
    return cached_features(att, OUTCOMES / name, data, ROOT / "data" / "features" / name, progress=False,
                           shards=shards)


def fit_linear(rows, *, target: str = "sentences", n_masks: int | None = None, position: bool = False,
               non_negative: bool = True, log=None):
    """Per-head weights fitted with the shipped recipe, or a variant: ``target`` sentences, whole or
    both; the first ``n_masks`` masks only; a relative-position term per head."""
    from at2_rag.research.features import training_record
    from at2_rag.research.fit_model import fit_outcomes
    from at2_rag.research.fitting import fit_estimator, make_instances

    if target == "sentences" and not position:
        return fit_outcomes(rows, n_masks=n_masks, non_negative=non_negative, log=log)

    records = []
    for rec, feats, query in rows:
        t, meta = training_record(rec, feats, query, n_masks)
        f, y = t["features"], t["targets"]
        if target == "whole":
            f, y = f[:, :, -1:], y[:, -1:]
        elif target == "both" and f.shape[2] > 2:
            f = torch.cat([f, f[:, :, -1:]], dim=2)  # make_instances drops the last span: keep whole twice
            y = torch.cat([y, y[:, -1:]], dim=1)
        if position:
            f = with_position(f)
            t = {**t, "query": torch.cat([t["query"], t["query"]], dim=0)}
        records.append(({**t, "features": f, "targets": y}, meta))
    inst = make_instances(records, "answer")
    weights, _ = fit_estimator(inst, log=log, non_negative=non_negative)
    return weights


def with_position(f: torch.Tensor) -> torch.Tensor:
    """Features ``(L, H, spans, S)`` and the same times each source's relative position (first 0, last 1)."""
    s = f.shape[-1]
    r = torch.linspace(0, 1, s) if s > 1 else torch.zeros(1)
    return torch.cat([f, f * r], dim=0)


def fit_mlp(rows, hidden: int = 16, steps: int = 1000, seed: int = 0):
    """A small non-linear combiner of a source's L×H head features, fitted with the same Pearson loss."""
    from at2_rag.research.features import training_record
    from at2_rag.research.fitting import make_instances, pearson_loss

    inst = make_instances([training_record(*r) for r in rows], "answer")
    torch.manual_seed(seed)
    d = inst.features.shape[1]
    net = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randperm(len(inst), generator=g)[:512]
        scores = net(inst.features[idx].transpose(1, 2))[..., 0]  # (n, S)
        pred = torch.einsum("nms,ns->nm", inst.signs[idx], scores)
        loss = pearson_loss(pred, inst.targets[idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
    net.eval()
    return net


def select(args) -> None:
    from at2_rag import Estimator
    from at2_rag.refine import refine_scores
    from at2_rag.research.evaluation.methods import fit_surrogate
    from at2_rag.research.evaluation.metrics import mean_and_stderr
    from at2_rag.research.fit_model import holdout_lds

    rows = load("train-k5", args.data, args.shards)
    fit_rows, held = rows[: -args.holdout], rows[-args.holdout :]
    default = Estimator.load("default")
    results: dict[str, dict] = {}

    def report(name, values, **extra):
        mean, se = mean_and_stderr(values)
        results[name] = {"lds": mean, "stderr": se, **extra}
        print(f"{name:<44} LDS {mean:.3f} ± {se:.3f}", flush=True)

    def linear(w):
        return lambda rec, f, m, y: torch.einsum("lhs,lh->s", f, w).to(torch.float64)

    report("shipped estimator (400 NQ examples, sentence targets)", holdout_lds(linear(default.weights), held))
    report("average attention", holdout_lds(linear(torch.ones_like(default.weights)), held))
    t = time.perf_counter()
    curve = {}
    for n in (100, 200, 400, len(fit_rows)):
        w = fit_linear(fit_rows[:n])
        curve[n] = w
        report(f"linear, sentence targets, {n} examples", holdout_lds(linear(w), held), examples=n)
    best = curve[len(fit_rows)]
    for target in ("whole", "both"):
        w = fit_linear(fit_rows, target=target)
        report(f"linear, {target}-answer targets" if target == "whole" else "linear, sentence + whole targets",
               holdout_lds(linear(w), held))
    free = fit_linear(fit_rows, non_negative=False)
    report("linear, sentence targets, weights of any sign", holdout_lds(linear(free), held))
    w16 = fit_linear(fit_rows, n_masks=16)
    report("linear, 16 masks per example (of 32)", holdout_lds(linear(w16), held))
    wpos = fit_linear(fit_rows, position=True)
    report("linear + per-head relative-position term",
           holdout_lds(lambda rec, f, m, y: torch.einsum("lhs,lh->s", with_position(f[:, :, None])[:, :, 0], wpos)
                       .to(torch.float64), held))
    net = fit_mlp(fit_rows)
    with torch.no_grad():
        report("non-linear combiner (MLP, 16 hidden)",
               holdout_lds(lambda rec, f, m, y: net(f.reshape(-1, f.shape[-1]).T)[:, 0].to(torch.float64), held))
    print(f"(fits took {time.perf_counter() - t:.0f} s)")
    # AT2+N: the ridge strength per N, with the best linear estimator as the prior; ContextCite-N alongside.
    refine = {}
    for n in (2, 4, 8):
        for s in STRENGTHS:
            def score(rec, f, m, y, s=s):
                prior = linear(best)(rec, f, m, y)
                full = torch.ones(1, m.shape[1], dtype=torch.bool)
                base = torch.tensor(rec["base"][-1:], dtype=torch.float64)
                return refine_scores(prior, torch.cat([full, m]), torch.cat([base, y]), strength=s)

            values = holdout_lds(score, held, n_refit=n)
            refine[(n, s)] = sum(values) / len(values)
            report(f"at2+{n}, strength {s}", values, n=n, strength=s)
        report(f"contextcite:{n} (same {n} masks)", holdout_lds(
            lambda rec, f, m, y: torch.from_numpy(fit_surrogate(m.numpy(), y.numpy(), len(rec["answer_ids"]))[0]),
            held, n_refit=n), n=n)
        report(f"at2 (same held-out masks as at2+{n})", holdout_lds(linear(best), held, n_refit=n), n=n)
    chosen = {n: max(STRENGTHS, key=lambda s: refine[(n, s)]) for n in (2, 4, 8)}
    print("chosen strengths:", chosen)
    OUT.mkdir(exist_ok=True)
    est = Estimator(best, default.model, "answer", {
        "method": "negative-pearson", "data": json.loads((OUTCOMES / "train-k5" / "recipe.json").read_text()),
        "examples": len(fit_rows), "selection": f"last {args.holdout} train-k5 questions held out",
        "holdout_lds": results[f"linear, sentence targets, {len(fit_rows)} examples"]["lds"],
    })
    est.save(OUT / "faithfulness-linear.safetensors")
    json.dump({"holdout": args.holdout, "fit_examples": len(fit_rows), "results": results,
               "chosen_strength": chosen}, open(OUT / "faithfulness-select.json", "w"), indent=1)


def recipes(args) -> None:
    """Recipe and feature rows the ``select`` stage lacks, on the same held-out questions: token-window
    training sources (the reference recipe: 4-token windows, ``train-k5-tok4``) and longer answers
    (``train-k5-long``), each against sentence sources on the same questions (where those outcomes are
    committed), and the answer features extended by the question's (query) features or by
    each source's features divided by its length in tokens (400 fit questions each)."""
    from at2_rag.research.evaluation.metrics import mean_and_stderr
    from at2_rag.research.evaluation.offline import sign_test
    from at2_rag.research.features import training_record
    from at2_rag.research.fit_model import fit_outcomes, holdout_lds
    from at2_rag.research.fitting import fit_estimator, make_instances

    rows = load("train-k5", args.data)
    fit_rows, held = rows[: -args.holdout], rows[-args.holdout :]
    query = {rec["id"]: q for rec, _, q in held}
    capped = sum(len(r[0]["answer_ids"]) >= 48 for r in rows) / len(rows)
    print(f"train-k5: {capped:.0%} of the answers reach the 48-token cap")
    results, per = {}, {}

    def report(name, values, **extra):
        per[name] = values
        mean, se = mean_and_stderr(values)
        results[name] = {"lds": mean, "stderr": se, **extra}
        print(f"{name:<58} LDS {mean:.3f} ± {se:.3f}", flush=True)

    def linear(w, extend=None):
        return lambda rec, f, m, y: torch.einsum(
            "lhs,lh->s", f if extend is None else extend(rec, f, query[rec["id"]]), w).to(torch.float64)

    pairs = []
    for name, what in (("train-k5-tok4", "4-token windows as sources"), ("train-k5-long", "answers up to 128 tokens")):
        if not (OUTCOMES / name).exists():
            continue
        variant = load(name, args.data)
        recs = [v[0] for v in variant]
        facts = {"sources": sum(len(r["sources"]) for r in recs) / len(recs),
                 "answer_tokens": sum(len(r["answer_ids"]) for r in recs) / len(recs)}
        print(f"{name}: {len(recs)} questions, {facts['sources']:.1f} sources and {facts['answer_tokens']:.1f} "
              "answer tokens on average")
        results[f"{name} data"] = facts
        same = [r for r in fit_rows if r[0]["id"] in {v[0]["id"] for v in variant}]
        assert len(same) == len(variant), f"{name}'s questions are among the first training questions"
        base_name, name_v = f"sentence sources, 48-token answers, {len(same)} questions", f"{what}, the same questions"
        if base_name not in results:
            report(base_name, holdout_lds(linear(fit_outcomes(same)), held), examples=len(same))
        report(name_v, holdout_lds(linear(fit_outcomes(variant)), held), examples=len(variant))
        pairs.append((name_v, base_name))

    def lengths(rec):
        return torch.tensor([e - s for s, e in rec["sources"]], dtype=torch.float32).clamp_min(1)

    extensions = {
        "+ query features": lambda rec, f, q: torch.cat([f, q if f.dim() == 3 else q[:, :, None].expand_as(f)]),
        "+ features / source length": lambda rec, f, q: torch.cat([f, f / lengths(rec)]),
    }
    base = fit_rows[:400]
    report("sentence sources, answer features (400 questions)", holdout_lds(linear(fit_outcomes(base)), held))
    for name, extend in extensions.items():
        records = []
        for rec, feats, q in base:
            t, meta = training_record(rec, feats, q)
            records.append(({**t, "features": extend(rec, t["features"], q), "query": torch.cat([q, q])}, meta))
        w, _ = fit_estimator(make_instances(records, "answer"), log=None, non_negative=True)
        report(f"answer features {name} (400 questions)", holdout_lds(linear(w, extend), held))
    for a, b in pairs + [(f"answer features {n} (400 questions)", "sentence sources, answer features (400 questions)")
                         for n in extensions]:
        w, lo, p = sign_test(per[a], per[b])
        results[a][f"vs {b}"] = {"wins": w, "losses": lo, "p": p}
        print(f"  {a} vs {b}: {w}-{lo}, sign-test p = {p:.2g}")
    OUT.mkdir(exist_ok=True)
    json.dump({"holdout": args.holdout, "train_k5_answers_at_48_tokens": capped, "results": results},
              open(OUT / "faithfulness-recipes.json", "w"), indent=1)


def pending_held_out(args, rows: list, path: Path):
    """The held-out ``rows`` not yet written to ``path`` (a resumable JSON-lines file), each as
    ``(record, prior, targets)``: the shipped estimator's scores for its sentence sources, and
    ``targets(masks)`` — the whole answer's target under each keep-mask. Progress every 20."""
    from at2_rag import AT2Attributor, Estimator
    from at2_rag.ablation import span_targets
    from at2_rag.research.data import read_selection
    from at2_rag.research.engine import ablated_passes, answer_logprobs

    done = {json.loads(line)["id"] for line in path.open()} if path.exists() else set()
    att = AT2Attributor.from_pretrained()
    est = Estimator.load("default")
    examples = {e["id"]: e for e in read_selection(args.data, "train", None, "raise")}
    t = time.perf_counter()
    for n, (rec, feats, _) in enumerate(rows):
        if n % 20 == 0:
            print(f"{n}/{len(rows)} questions, {time.perf_counter() - t:.0f} s", flush=True)
        if rec["id"] in done:
            continue
        ex = examples[rec["id"]]
        by_id = {d["id"]: d for d in ex["documents"]}
        prompt = att.prompt(ex["question"], [by_id[i] for i in rec["document_ids"]], "sentence")
        assert [[s.token_start, s.token_end] for s in prompt.sources] == rec["sources"]

        def targets(masks, prompt=prompt, rec=rec) -> torch.Tensor:
            logp = answer_logprobs(att.model, ablated_passes(prompt, rec["answer_ids"], masks), max_batch_tokens=8192)
            return span_targets(torch.stack(logp), [range(len(rec["answer_ids"]))])[:, 0]

        yield rec, est.source_scores(feats[:, :, -1]), targets


def holdout_loo(args) -> None:
    """The whole answer's target with each of the shipped prior's TOP highest sources left out, for the
    held-out questions; one JSON line per question, appended (a rerun resumes)."""
    from at2_rag.refine import ablation_masks, top_sources

    held = load("train-k5", args.data)[-args.holdout :]
    for rec, prior, targets in pending_held_out(args, held, HOLDOUT_LOO):
        y = targets(ablation_masks(prior, TOP, "top"))
        top = top_sources(prior, TOP).tolist()
        with HOLDOUT_LOO.open("a") as fh:
            fh.write(json.dumps({"id": rec["id"], "base": float(y[0]), "top": top, "loo": y[1:].tolist()}) + "\n")


def rest_groups(order: list[int], n_groups: int, n: int = TOP) -> list[list[int]]:
    """The sources ranked below the top ``n − n_groups`` of ``order`` (the prior's ranking), dealt in
    turn into ``n_groups`` groups, so each group holds high and low ones alike."""
    rest = order[n - n_groups :]
    return [rest[g::n_groups] for g in range(n_groups)]


def holdout_extra(args) -> None:
    """For the held-out questions of ``holdout-loo``: the answer with each source below the prior's
    top 8 left out alone (so every source has its leave-one-out), and with each group of
    :func:`rest_groups` left out, for 1, 2 and 3 groups; one JSON line per question, appended
    (resumable)."""
    loo = {d["id"]: d for d in map(json.loads, HOLDOUT_LOO.open())}
    held = [r for r in load("train-k5", args.data)[-args.holdout :] if r[0]["id"] in loo]
    from at2_rag.refine import top_sources

    for rec, prior, targets in pending_held_out(args, held, HOLDOUT_EXTRA):
        order = top_sources(prior, len(prior)).tolist()
        assert order[:TOP] == loo[rec["id"]]["top"]
        leave_out = [[s] for s in order[TOP:]] + [g for G in GROUPS for g in rest_groups(order, G)]
        y = targets(left_out_rows(len(order), leave_out)[1:]).tolist()
        rest, grouped = y[: len(order) - TOP], iter(y[len(order) - TOP :])
        by_groups = {str(G): [next(grouped) for _ in range(G)] for G in GROUPS}
        with HOLDOUT_EXTRA.open("a") as fh:
            fh.write(json.dumps({"id": rec["id"], "order": order, "loo_rest": rest, "groups": by_groups}) + "\n")


def left_out_rows(n_sources: int, left_out: list[list[int]]) -> torch.Tensor:
    """Keep-masks: the unablated row, then one row per set of ``left_out`` sources."""
    masks = torch.ones(1 + len(left_out), n_sources, dtype=torch.bool)
    for i, sources in enumerate(left_out):
        masks[1 + i, sources] = False
    return masks


def largest_effects(base: float, loo: torch.Tensor, n: int = TOP) -> list[int]:
    """The ``n`` sources whose leave-one-out moves the target most (either way): the oracle's choice."""
    return torch.argsort((base - loo).abs(), descending=True)[:n].tolist()


def groups(args) -> None:
    """What better-chosen leave-out passes could buy AT2+8, on the held-out questions of
    ``holdout-extra``: the top design; N − G top sources plus the rest in G groups (measured passes);
    an oracle that leaves out the 8 sources with the largest true effect (from every source's
    leave-one-out, unknowable in use); and leave-one-out of every source. LDS on masks 8..31."""
    from at2_rag import Estimator
    from at2_rag.refine import DEFAULT_STRENGTH, refine_scores
    from at2_rag.research.evaluation.metrics import mean_and_stderr
    from at2_rag.research.evaluation.offline import sign_test
    from at2_rag.research.fit_model import holdout_lds

    loo = {d["id"]: d for d in map(json.loads, HOLDOUT_LOO.open())}
    extra = {d["id"]: d for d in map(json.loads, HOLDOUT_EXTRA.open())}
    held = [r for r in load("train-k5", args.data)[-args.holdout :] if r[0]["id"] in extra]
    est = Estimator.load("default")
    strength = DEFAULT_STRENGTH["top"]

    def every_loo(rid: str) -> tuple[float, torch.Tensor]:
        order = extra[rid]["order"]
        out = torch.empty(len(order), dtype=torch.float64)
        out[order] = torch.tensor(loo[rid]["loo"] + extra[rid]["loo_rest"], dtype=torch.float64)
        return loo[rid]["base"], out

    def surrogate(pick):
        def score(rec, f, m, y):
            prior = est.source_scores(f).to(torch.float64)
            base, l_all = every_loo(rec["id"])
            left_out, ys = pick(rec["id"], base, l_all)
            targets = torch.tensor([base] + ys, dtype=torch.float64)
            return refine_scores(prior, left_out_rows(len(prior), left_out), targets, strength=strength)
        return score

    def top_and_groups(n_groups):
        def pick(rid, base, l_all):
            order = extra[rid]["order"]
            top = order[: TOP - n_groups]
            sets = [[s] for s in top] + (rest_groups(order, n_groups) if n_groups else [])
            return sets, [float(l_all[s]) for s in top] + (extra[rid]["groups"][str(n_groups)] if n_groups else [])
        return pick

    def oracle(rid, base, l_all):
        top = largest_effects(base, l_all)
        return [[s] for s in top], [float(l_all[s]) for s in top]

    methods = {"at2": lambda rec, f, m, y: est.source_scores(f).to(torch.float64)}
    methods.update({f"at2+8 top {TOP - g} + {g} groups" if g else "at2+8 top": surrogate(top_and_groups(g))
                    for g in (0,) + GROUPS})
    methods["at2+8 oracle (8 largest true effects)"] = surrogate(oracle)
    def leave_one_out(rec, f, m, y):
        base, l_all = every_loo(rec["id"])
        return base - l_all

    methods["leave-one-out (every source)"] = leave_one_out
    per, results = {}, {}
    print(f"{len(held)} held-out questions, {sum(len(r[0]['sources']) for r in held) / len(held):.1f} sources each")
    for name, fn in methods.items():
        per[name] = holdout_lds(fn, held, n_refit=TOP)
        mean, se = mean_and_stderr(per[name])
        results[name] = {"lds": mean, "stderr": se}
        print(f"  {name:<40} LDS {mean:.3f} ± {se:.3f}", flush=True)
    for name in list(methods)[2:]:
        w, lo, p = sign_test(per[name], per["at2+8 top"])
        results[name]["vs top"] = {"wins": w, "losses": lo, "p": p}
        print(f"  {name} vs at2+8 top: {w}-{lo}, sign-test p = {p:.2g}")
    OUT.mkdir(exist_ok=True)
    json.dump({"questions": len(held), "strength": strength, "results": results},
              open(OUT / "faithfulness-groups.json", "w"), indent=1)


def designs(args) -> None:
    """AT2+N's ablation designs (random masks, the prior's top sources left out one at a time, half of
    each) per N and strength, on the held-out questions (prior: the shipped estimator; random rows: the
    first training masks; LDS on masks N..31 for every design, so all are paired)."""
    from at2_rag import Estimator
    from at2_rag.refine import DESIGNS, ablation_masks, design_split, refine_scores, top_sources
    from at2_rag.research.evaluation.metrics import mean_and_stderr
    from at2_rag.research.evaluation.offline import sign_test
    from at2_rag.research.fit_model import holdout_lds

    loo = {d["id"]: d for d in map(json.loads, HOLDOUT_LOO.open())}
    held = [r for r in load("train-k5", args.data)[-args.holdout :] if r[0]["id"] in loo]
    est = Estimator.load("default")
    results, per = {}, {}

    def scorer(n, s, design):
        n_top, n_random = design_split(n, design)

        def score(rec, f, m, y):
            prior = est.source_scores(f).to(torch.float64)
            d = loo[rec["id"]]
            masks = ablation_masks(prior, n, design, random=m)
            top = top_sources(prior, n_top).tolist()
            assert top == d["top"][: len(top)]  # the prior's top sources, as measured
            y_all = torch.tensor([d["base"]] + d["loo"][: len(top)], dtype=torch.float64)
            return refine_scores(prior, masks, torch.cat([y_all, y[:n_random]]), strength=s)
        return score

    print(f"{len(held)} held-out questions")
    for n in (4, 8):
        per[(n, "at2")] = holdout_lds(lambda rec, f, m, y: est.source_scores(f).to(torch.float64), held, n_refit=n)
        for design in DESIGNS:
            for s in DESIGN_STRENGTHS:
                values = holdout_lds(scorer(n, s, design), held, n_refit=n)
                per[(n, design, s)] = values
                mean, se = mean_and_stderr(values)
                results[f"at2+{n} {design} strength {s}"] = {"n": n, "design": design, "strength": s, "lds": mean, "stderr": se}
                print(f"at2+{n:<2} {design:<6} strength {s:<5} LDS {mean:.3f} ± {se:.3f}", flush=True)
    chosen = {}
    for n in (4, 8):
        best = {d: max(DESIGN_STRENGTHS, key=lambda s: results[f"at2+{n} {d} strength {s}"]["lds"]) for d in DESIGNS}
        chosen[n] = {"best_strength": best}
        for d in ("mixed", "top"):
            w, lo, p = sign_test(per[(n, d, best[d])], per[(n, "random", best["random"])])
            chosen[n][f"{d}_vs_random"] = {"wins": w, "losses": lo, "p": p}
            print(f"N = {n}: {d} vs random, each at its best strength ({best[d]}, {best['random']}): {w}-{lo}, "
                  f"sign-test p = {p:.2g}")
    OUT.mkdir(exist_ok=True)
    json.dump({"questions": len(held), "results": results, "chosen": chosen},
              open(OUT / "faithfulness-designs.json", "w"), indent=1)


def test(args) -> None:
    from at2_rag import Estimator
    from at2_rag.refine import DEFAULT_STRENGTH, DESIGNS
    from at2_rag.research.evaluation.offline import (
        at2,
        at2_refined,
        contextcite,
        evaluate_offline,
        leave_one_out,
        sign_test,
    )

    est = Estimator.load(args.estimator)
    shipped = Estimator.load("default")
    out = {}
    for k in (5, 10):
        rows = load(f"test-k{k}", args.data)
        records, feats = [r for r, _, _ in rows], [f[:, :, -1] for _, f, _ in rows]
        methods = [at2(est), at2(Estimator(torch.ones_like(est.weights), est.model, "answer"), "avg_attention")]
        if args.estimator != "default":
            methods.append(at2(shipped, "at2 (previous estimator)"))
        methods += [at2_refined(est, n, DEFAULT_STRENGTH[d], design=d) for d in DESIGNS for n in (2, 4, 8)]
        methods += [contextcite(n) for n in (8, 16, 32, 64)] + [leave_one_out()]
        res = evaluate_offline(records, feats, methods)
        out[k] = res
        print(f"\nk = {k}: {len(records)} test questions, {sum(len(r['sources']) for r in records) / len(records):.1f} "
              "sources each on average")
        for name, r in res.items():
            print(f"  {name:<28} LDS {r['lds']:.3f} ± {r['stderr']:.3f}   passes {r['passes']:.1f}")
        for a, b in (("at2", "contextcite:16"), ("at2", "contextcite:32"), ("at2+8", "contextcite:32"),
                     ("at2+8", "contextcite:16"), ("at2+4", "contextcite:16"), ("at2+8", "at2+8:random"),
                     ("at2+4", "at2+4:random"), ("at2+8", "at2+8:mixed"), ("at2+8:random", "contextcite:16")):
            w, lo, p = sign_test(res[a]["per_record"], res[b]["per_record"])
            print(f"  paired {a} vs {b}: {w} wins, {lo} losses, sign-test p = {p:.2g}")
            res[f"paired {a} vs {b}"] = {"wins": w, "losses": lo, "p": p}
    OUT.mkdir(exist_ok=True)
    json.dump(out, open(OUT / "faithfulness-test.json", "w"), indent=1)
    plot(out, ROOT / "benchmarks" / "faithfulness-lds-cost.png")


EQUIVALENT_GRID = tuple(range(8, 65, 4))
"""ContextCite budgets of the ``equivalent`` stage."""


def oracle_top(est, n: int = TOP):
    """A diagnostic, not a method: AT2+N's top design had it left out the ``n`` sources with the
    largest true effect (read from every source's leave-one-out, which no user has)."""
    from at2_rag.refine import DEFAULT_STRENGTH, refine_scores
    from at2_rag.research.evaluation.offline import OfflineMethod
    from at2_rag.research.outcomes import set_targets

    def score(rec, f):
        prior = est.source_scores(f).to(torch.float64)
        base, l_all = float(rec["base"][-1]), set_targets(rec, "loo")[:, -1].to(torch.float64)
        top = largest_effects(base, l_all, n)
        y = torch.tensor([base] + [float(l_all[s]) for s in top], dtype=torch.float64)
        return refine_scores(prior, left_out_rows(len(prior), [[s] for s in top]), y, strength=DEFAULT_STRENGTH["top"])

    return OfflineMethod(f"oracle+{n}", score, lambda rec: 1 + min(n, len(rec["sources"])))


def equivalent(args) -> None:
    """How many random ablations ContextCite needs to match AT2 and AT2+N on the test split: ContextCite
    at every budget of ``EQUIVALENT_GRID`` (a finer grid than the ``test`` table, same masks). With
    them, the ``oracle_top`` diagnostic: the 8 sources with the largest true effect left out instead."""
    from at2_rag import Estimator
    from at2_rag.refine import DEFAULT_DESIGN, DEFAULT_STRENGTH
    from at2_rag.research.evaluation.metrics import equivalent_budget
    from at2_rag.research.evaluation.offline import at2, at2_refined, contextcite, evaluate_offline, leave_one_out

    est = Estimator.load(args.estimator)
    out = {}
    for k in (5, 10):
        rows = load(f"test-k{k}", args.data)
        records, feats = [r for r, _, _ in rows], [f[:, :, -1] for _, f, _ in rows]
        methods = [at2(est)] + [at2_refined(est, n, DEFAULT_STRENGTH[DEFAULT_DESIGN]) for n in (2, 4, 8)]
        methods += [leave_one_out(), oracle_top(est)] + [contextcite(n) for n in EQUIVALENT_GRID]
        res = evaluate_offline(records, feats, methods)
        cc = {n: res[f"contextcite:{n}"]["lds"] for n in EQUIVALENT_GRID}
        out[k] = {"contextcite": cc, "methods": {}}
        print(f"\nk = {k}: ContextCite LDS by budget: " + ", ".join(f"{n}: {v:.3f}" for n, v in cc.items()))
        for name in ("at2", "at2+2", "at2+4", "at2+8", "oracle+8", "loo"):
            r = res[name]
            eq = equivalent_budget(cc, r["lds"])
            out[k]["methods"][name] = {"lds": r["lds"], "passes": r["passes"], "contextcite_equivalent": eq}
            print(f"  {name:<8} LDS {r['lds']:.3f} with {r['passes']:.1f} extra passes = ContextCite with "
                  + (f"{eq:.1f} ablations" if eq is not None else "more than 64 / fewer than 8 ablations"))
    OUT.mkdir(exist_ok=True)
    json.dump(out, open(OUT / "faithfulness-equivalent.json", "w"), indent=1)


def plot(out: dict, png: Path) -> None:
    """LDS against extra passes per k: one line per family (AT2 + N by design, ContextCite-N), points
    for the rest."""
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def family(name: str) -> str:
        if m := re.fullmatch(r"at2\+\d+(?::(\w+))?", name):
            return f"AT2 + N ({m.group(1) or 'top, default'})"
        return "ContextCite-N" if name.startswith("contextcite:") else name

    styles = {"AT2 + N (top, default)": ("tab:red", "o"), "AT2 + N (mixed)": ("tab:orange", "s"),
              "AT2 + N (random)": ("tab:pink", "^"), "ContextCite-N": ("tab:blue", "D"), "loo": ("tab:green", "*"),
              "at2": ("black", "o"), "avg_attention": ("tab:gray", "v")}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for ax, (k, res) in zip(axes, out.items()):
        groups: dict[str, list] = {}
        for name, r in res.items():
            if "lds" in r:
                groups.setdefault(family(name), []).append((max(r["passes"], 0.5), r["lds"], r["stderr"]))
        for fam, pts in groups.items():
            pts.sort()
            color, marker = styles.get(fam, ("tab:purple", "x"))
            label = f"{fam} (0 extra)" if pts[0][0] == 0.5 else ("leave-one-out" if fam == "loo" else fam)
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], color=color,
                        marker=marker, capsize=3, linestyle="-" if len(pts) > 1 else "none", label=label)
        ax.set_xscale("log")
        ax.set_title(f"k = {k} documents", fontsize=10)
        ax.set_xlabel("extra forward passes per question (log; 0 drawn at 0.5)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("LDS (32 fresh ablations)")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle("Faithfulness vs cost, NQ-RAG test split (H200 outcomes, CPU features)", fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=("select", "recipes", "holdout-loo", "holdout-extra", "designs", "groups", "test",
                                      "equivalent"))
    p.add_argument("--data", default=str(ROOT / "data" / "nq_rag.jsonl.gz"))
    p.add_argument("--holdout", type=int, default=160)
    p.add_argument("--estimator", default="default")
    p.add_argument("--shards", type=int, default=None, help="only the first N train shards (a quick check)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    stages = {"select": select, "recipes": recipes, "holdout-loo": holdout_loo, "holdout-extra": holdout_extra,
              "designs": designs, "groups": groups, "test": test, "equivalent": equivalent}
    stages[args.stage](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
