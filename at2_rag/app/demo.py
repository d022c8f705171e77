"""The main job: retrieve over the sample corpus, prune with AT2, regenerate, and cite — shown in the
terminal and, on request, as an HTML report."""

from __future__ import annotations

import time

from ..policy import KeepPolicy
from ..pruning import Mode
from .corpus import sample_corpus, sample_questions
from .pipeline import DEFAULT_KEEP, DEFAULT_RETRIEVE, QAResult, RunSettings, correctness_tally

SAMPLE_CORPUS = "the bundled sample corpus (32 passages on mountains)"


def run_demo(
    model: str = "default",
    estimator: str | None = "default",
    *,
    device: str | None = None,
    dtype: str | None = None,
    questions: int | None = 3,
    k: int = DEFAULT_RETRIEVE,
    keep: int = DEFAULT_KEEP,
    mode: Mode = "support",
    html: str | None = None,
    quiet: bool = False,
) -> list[QAResult]:
    """Answer the sample questions (the first ``questions``; None for all) and show everything."""
    from ..attributor import AT2Attributor
    from .pipeline import RAGPipeline
    from .retrieval import cached_index
    from .terminal import loading_message, print_header, print_result, progress, rich_console

    console = rich_console()
    if quiet:
        console.quiet = True
    t0 = time.perf_counter()
    with progress(console, loading_message(model)):
        att = AT2Attributor.from_pretrained(model, estimator, device=device, dtype=dtype)
    with progress(console, "Embedding the sample corpus (32 passages on mountains) into a FAISS index ..."):
        index = cached_index(sample_corpus())
    pipe = RAGPipeline(att, index, k=k, mode=mode, policy=KeepPolicy(top_k=keep), full_answer=True)
    run = RunSettings.of(pipe, estimator=estimator, corpus=SAMPLE_CORPUS)
    print_header(console, run)
    console.print(f"Ready in {time.perf_counter() - t0:.1f} s. Retrieving {k} chunks per question, keeping "
                  f"the best {keep} by keep score ({mode} mode), then answering from those and, to compare, from all "
                  f"{k}.\n")
    results = []
    for q in sample_questions()[:questions]:
        with progress(console, f"Answering: {q.question}"):
            r = pipe.ask(q.question, references=q.answers)
        results.append(r)
        print_result(console, r)
    tally = correctness_tally([r.comparison for r in results])
    if tally:
        console.print(f"[bold]Against the reference answers:[/bold] {tally}", highlight=False)
    if html:
        from .report import write_html

        write_html(results, html, title="at2-rag demo: pruned answers with measured citations", settings=run)
        console.print(f"HTML report written to {html}")
    return results
