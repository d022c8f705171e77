"""A self-contained HTML report: answers whose sentences link to the highlighted source sentences.

One file, inline CSS and a few lines of JavaScript, no server and no network: hovering (or
focusing) an answer sentence highlights the source sentences it rests on (for the full-context
answer, the chunks it rests on); every score shows on hover. A header records the run's settings.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

from ..citations import Citation, CitedSource
from ..files import atomic_write_text
from .corpus import chunk_label
from .pipeline import AGREEMENT, AnswerComparison, QAResult, RunSettings, correctness_tally

_CSS = """
body{font:15px/1.5 system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#1d232a}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:2.2em;border-top:1px solid #ddd;padding-top:1em}
.answer{background:#f4f7fb;border-radius:6px;padding:.7em 1em;margin:.4em 0}
.ans-sent,.full-sent{cursor:pointer;border-radius:3px;padding:0 1px}
.ans-sent:hover,.ans-sent:focus,.ans-sent.pinned,.full-sent:hover,.full-sent:focus,.full-sent.pinned{background:#ffe9a8;outline:none}
.mark{font-size:.75em;vertical-align:super;color:#3558a8}
.chunk{border:1px solid #ddd;border-radius:6px;padding:.5em .8em;margin:.5em 0}
.chunk.dropped{opacity:.55;border-style:dashed}
.chunk.active{box-shadow:0 0 0 2px #ffd24d;opacity:1}
.chunk .text{white-space:pre-line}
.chunk .head{display:flex;gap:.8em;align-items:center;font-size:.85em;color:#555}
.bar{display:inline-block;height:.7em;background:#4f7fd9;border-radius:2px;min-width:1px}
.badge{font-size:.75em;padding:0 .4em;border-radius:3px;background:#dfe9d8}
.dropped .badge{background:#eee}
.src-sent.cited{background:#fff4cf}
.src-sent.active{background:#ffd24d;box-shadow:0 0 0 2px #ffd24d}
.muted{color:#666;font-size:.9em}
.flag{font-size:.8em;padding:0 .4em;border-radius:3px;margin-left:.3em}
.flag.correct{background:#dfe9d8} .flag.incorrect{background:#f6d5d5}
.flag.changed{background:#ffe2b3;color:#8a4b00;font-weight:600} .flag.same{background:#eee;color:#555}
.run{display:flex;flex-wrap:wrap;gap:.3em 1.4em;margin:.6em 0;font-size:.9em}
.run div{display:flex;gap:.4em} .run dt{color:#666} .run dd{margin:0;font-weight:600}
.verdict{font-weight:600;margin:.4em 0} .verdict.changed{color:#8a4b00}
.tally{font-weight:600}
"""

_JS = """
document.querySelectorAll('.ans-sent, .full-sent').forEach(function (el) {
  var ids = (el.dataset.cites || '').split(' ').filter(Boolean);
  function set(on) { ids.forEach(function (id) {
    var t = document.getElementById(id); if (t) t.classList.toggle('active', on); }); }
  el.addEventListener('mouseenter', function () { set(true); });
  el.addEventListener('mouseleave', function () { if (!el.classList.contains('pinned')) set(false); });
  el.addEventListener('focus', function () { set(true); });
  el.addEventListener('blur', function () { if (!el.classList.contains('pinned')) set(false); });
  el.addEventListener('click', function () { set(el.classList.toggle('pinned')); });
});
"""


def render_html(
    results: Sequence[QAResult], title: str = "at2-rag report", settings: RunSettings | None = None
) -> str:
    """The whole report for ``results`` as one HTML string, headed by the run's ``settings`` when given."""
    body = "".join(_question(n, r) for n, r in enumerate(results))
    tally = correctness_tally([r.comparison for r in results])
    if tally:
        body = f'<p class="tally">Against the reference answers: {_e(tally)}</p>' + body
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>{_run(settings)}"
        '<p class="muted">Hover over or click an answer sentence to highlight the source sentences it rests '
        "on. Bars show the keep score chunks were ranked by (in support mode, AT2's estimate of how much a chunk supports a correct answer, fused with the retriever's rank); citation scores are AT2 attribution scores (how much a source drove the answer).</p>"
        f"{body}<script>{_JS}</script></body></html>"
    )


def write_html(
    results: Sequence[QAResult], path: str, title: str = "at2-rag report", settings: RunSettings | None = None
) -> None:
    """Write the report atomically: a crash or a full disk leaves the previous file or none."""
    atomic_write_text(path, render_html(results, title, settings))


def _run(settings: RunSettings | None) -> str:
    """The header of the run's settings (model, estimator, top-k, keep, mode, corpus), or nothing."""
    if settings is None:
        return ""
    items = "".join(f"<div><dt>{_e(label)}</dt><dd>{_e(value)}</dd></div>" for label, value in settings.items())
    return f'<dl class="run">{items}</dl>'


def _question(n: int, r: QAResult) -> str:
    kept = r.kept  # retrieved indices of the final prompt's documents, in order
    # Source sentence id for (final prompt source index) and the sentences cited anywhere.
    sid = {s.index: f"q{n}-d{kept[s.document]}-s{s.index}" for s in r.final.sources}
    cited_ids = {sid[c.source] for cit in r.citations for c in cit.sources}
    numbers = r.chunk_numbers()
    answer = _answer_html(r.answer, r.citations, numbers, lambda s: sid[s.source])
    full = r.full_context_answer
    if full is not None:  # its citations highlight whole chunks: the dropped ones have no sentence marks
        full_numbers = r.chunk_numbers(full=True)
        full = _answer_html(full, r.full_context_citations or [], full_numbers,
                            lambda s: f"q{n}-c{full_numbers[s.document] - 1}", "full-sent")
    cmp = r.comparison
    chunks = []
    for i, (doc, frac) in enumerate(zip(r.retrieved, r.bar_fractions())):
        score, keep = r.prune.scores[i], r.keep_scores[i]
        is_kept = i in kept
        width = frac * 120
        text = _kept_text(r, n, i, kept.index(i), cited_ids) if is_kept else _e(doc.text)
        chunks.append(
            f'<div class="chunk {"kept" if is_kept else "dropped"}" id="q{n}-c{i}" data-doc="{i}">'
            f'<div class="head"><b>[{i + 1}] {_e(chunk_label(doc))}</b>'
            f'<span class="bar" style="width:{width:.0f}px" title="keep score {keep:.4f}"></span>'
            f'<span title="the score chunks were kept by: AT2 fused with the retriever rank">keep {keep:.2f}</span>'
            f'<span title="AT2 attribution score">AT2 {score:.3f}</span>'
            f'<span title="retrieval cosine similarity">retrieval {r.retrieval_scores[i]:.3f}</span>'
            f'<span class="badge">{"kept" if is_kept else "dropped"}</span></div>'
            f'<div class="text">{text}</div></div>'
        )
    dropped = ", ".join(f"[{i + 1}]" for i in r.dropped) or "none"
    return (
        f'<section class="question" id="q{n}"><h2>Q: {_e(r.question)}</h2>'
        + (f'<div class="answer full"><b>Full-context answer</b>{_flag(cmp.full_correct)}'
           f"{_agreement(cmp)}: {full}</div>" if full is not None else "")
        + f'<div class="answer final"><b>Answer from the {len(kept)} kept chunk(s)</b>{_flag(cmp.pruned_correct)}'
        f"{_agreement(cmp)}: {answer}</div>{_verdict(cmp)}"
        + f'<p class="muted">Mode: {_e(r.prune.mode)} · kept {r.prune.kept_tokens} of {r.prune.total_tokens} '
        f"context tokens · dropped: {dropped}</p>{''.join(chunks)}</section>"
    )


def _flag(ok: bool | None) -> str:
    """A correct/incorrect tag against the reference answers, or nothing when there are none."""
    if ok is None:
        return ""
    word = "correct" if ok else "incorrect"
    return f'<span class="flag {word}">{word}</span>'


def _agreement(cmp: AnswerComparison) -> str:
    """The flag shown next to both answers (do they differ?), or nothing without a comparison."""
    if cmp.agreement is None:
        return ""
    state = "changed" if cmp.agreement == "differs" else "same"
    return f'<span class="flag {state}" title="{_e(cmp.verdict)}">{_e(AGREEMENT[cmp.agreement])}</span>'


def _verdict(cmp: AnswerComparison) -> str:
    """The comparison's verdict, with the changed flag as a data attribute for machines."""
    state = {True: "changed", False: "same", None: "unknown"}[cmp.changed]
    return f'<p class="verdict {state}" data-changed="{state}">{_e(cmp.verdict)}</p>'


def _answer_html(
    answer: str, citations: Sequence[Citation], numbers: dict[int, int], target: Callable[[CitedSource], str],
    css_class: str = "ans-sent",
) -> str:
    """``answer`` with each sentence linked (``data-cites``: the element id ``target`` gives each cited
    source, a source sentence or a whole chunk) and followed by its ``[n]`` chunk markers (``numbers``:
    citation document → n)."""
    out, pos = [], 0
    for c in citations:
        out.append(_e(answer[pos : c.start]))
        ids = " ".join(dict.fromkeys(target(s) for s in c.sources))
        tip = "; ".join(f"[{numbers[s.document]}] {s.score:.3f}" for s in c.sources) or "no citation"
        marks = "".join(f"[{numbers[d]}]" for d in c.documents)
        out.append(
            f'<span class="{css_class}" tabindex="0" data-cites="{ids}" title="{_e(tip)}">{_e(answer[c.start:c.end])}'
            f'<span class="mark">{marks}</span></span>'
        )
        pos = c.end
    out.append(_e(answer[pos:]))
    return "".join(out)


def _kept_text(r: QAResult, n: int, doc_index: int, final_doc: int, cited_ids: set[str]) -> str:
    """The kept chunk's text with each sentence wrapped (id, score on hover, cited highlight)."""
    text = r.retrieved[doc_index].text
    overall = r.final.scores.tolist()
    out, pos = [], 0
    for s in r.final.sources:
        if s.document != final_doc:
            continue
        ident = f"q{n}-d{doc_index}-s{s.index}"
        out.append(_e(text[pos : s.start]))
        cls = "src-sent cited" if ident in cited_ids else "src-sent"
        out.append(f'<span class="{cls}" id="{ident}" title="score {overall[s.index]:.4f}">{_e(text[s.start:s.end])}</span>')
        pos = s.end
    out.append(_e(text[pos:]))
    return "".join(out)


def _e(text: str) -> str:
    return html.escape(text, quote=True)
