"""Rich terminal rendering of a :class:`~at2_rag.app.pipeline.QAResult`: scores as bars, answers, citations."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..citations import Citation
from ..files import utf8_text
from ..models import DEFAULT_MODEL, default_model_cached
from .corpus import chunk_label
from .pipeline import AGREEMENT, AnswerComparison, QAResult, RunSettings

# C0 controls but tab and newline, DEL and the C1 controls: removed from any text shown, so corpus
# text cannot move the cursor, retitle the window or hide output (ANSI CSI / OSC sequences start
# with ESC or a C1 byte; without it the rest is inert text). Also the bidirectional overrides,
# embeddings, isolates and marks (U+202E shows "txt.exe" as "exe.txt"): shown text reads as stored.
_BIDI = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_CONTROLS = dict.fromkeys([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0), *_BIDI])


def printable(text: str) -> str:
    """``text`` as it may reach a terminal: without control characters (see ``_CONTROLS``) and with
    undecodable bytes written as ``\\xNN`` (:func:`~at2_rag.files.utf8_text`). Every view uses it."""
    return utf8_text(text).translate(_CONTROLS)


if TYPE_CHECKING:
    from rich.text import Text


def rich_console(stderr: bool = False):
    """A rich Console (on stderr for progress and notes), or a clear error naming the package to install."""
    try:
        from rich.console import Console
    except ImportError as e:
        raise ImportError("the terminal view needs rich; install it with `pip install rich`") from e
    return Console(stderr=stderr)


def loading_message(model: str) -> str:
    """The progress line shown while ``model`` loads; it names the slow first run of the bundled model."""
    if model == DEFAULT_MODEL:
        if default_model_cached():
            return "Loading the bundled model ..."
        return "Preparing the bundled model (first run only: dequantising and caching it, ~30 s) ..."
    if model.endswith(".gguf"):
        return f"Loading {printable(model)} (dequantising a GGUF file takes a while) ..."
    return f"Loading the model {printable(model)} ..."


@contextmanager
def progress(console, message: str) -> Iterator[None]:
    """Show ``message`` while the block runs: a spinner on a terminal, one plain line elsewhere (a log, a pipe)."""
    if console.is_terminal:
        with console.status(message):
            yield
    else:
        console.print(message, highlight=False, markup=False, soft_wrap=True)
        yield


def print_header(console, run: RunSettings) -> None:
    """One line naming what the run was set up with: model, estimator, top-k, keep, mode and corpus."""
    from rich.text import Text

    line = Text()
    for n, (label, value) in enumerate(run.items()):
        line.append(" · " if n else "", style="dim")
        line.append(f"{label} ", style="dim")
        line.append(printable(value))
    console.print(line)


def print_result(console, r: QAResult, bar_width: int = 24) -> None:
    """Retrieved chunks with AT2 score bars, both answers, what was dropped, and per-sentence citations."""
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console.rule(f"[bold]Q: {escape(printable(r.question))}")
    table = Table(show_edge=False, pad_edge=False, expand=False)
    table.add_column("#", justify="right")
    table.add_column("chunk")
    table.add_column("retrieval", justify="right")
    table.add_column("keep score")
    table.add_column("AT2", justify="right")
    table.add_column("")
    for i, (doc, frac) in enumerate(zip(r.retrieved, r.bar_fractions())):
        n = round(frac * bar_width) if math.isfinite(frac) else 0
        kept = i in r.prune.kept
        bar = Text("█" * n + "·" * (bar_width - n), style="blue" if kept else "dim")
        bar.append(f" {r.keep_scores[i]:.2f}")
        title = _fit(printable(chunk_label(doc)), 40)
        table.add_row(str(i + 1), Text(title, style="" if kept else "dim"), f"{r.retrieval_scores[i]:.3f}", bar,
                      f"{r.prune.scores[i]:.3f}", Text("kept", style="green") if kept else Text("dropped", style="dim"))
    console.print(table)
    cmp = r.comparison
    if r.full_context_answer is not None:
        full = _cited(r.full_context_answer, r.full_context_citations or [], r.chunk_numbers(full=True))
        console.print(Text("Full-context answer", style="bold") + _flag(cmp.full_correct) + Text(": ")
                      + full + _agreement(cmp))
    dropped = ", ".join(f"[{i + 1}]" for i in r.dropped) or "none"
    console.print(
        f"Pruned: kept {len(r.kept)} of {len(r.retrieved)} chunks ({r.prune.kept_tokens} of "
        f"{r.prune.total_tokens} tokens); dropped {dropped}"
    )
    numbers = r.chunk_numbers()
    answer = _cited(r.answer, r.citations, numbers)
    title = Text("Answer from the kept chunks") + _flag(cmp.pruned_correct) + _agreement(cmp)
    console.print(Panel(answer, title=title, title_align="left"))
    console.print(verdict_text(cmp))
    for c in r.citations:
        if not c.sources:
            continue
        console.print(Text("“" + printable(c.text.strip()) + "”", style="italic"))
        for s in c.sources:
            doc = r.final.prompt.documents[s.document]
            line = Text(f"   [{numbers[s.document]}] ", style="bold cyan")
            line.append(printable(doc.text[: s.start]))
            line.append(printable(doc.text[s.start : s.end]), style="black on yellow")
            line.append(printable(doc.text[s.end :]))
            line.append(f"  ({s.score:.3f})", style="dim")
            console.print(line)
    console.print()


def _cited(answer: str, citations: list[Citation], numbers: dict[int, int]) -> Text:
    """``answer``, trimmed, with each cited sentence followed by its ``[n]`` chunk markers (``numbers``:
    citation document → n)."""
    from rich.text import Text

    out, pos = Text(), len(answer) - len(answer.lstrip())
    for c in citations:
        end = c.end
        while end > c.start and answer[end - 1].isspace():  # the marker follows the text, as in JSON
            end -= 1
        out.append(printable(answer[pos:end]))
        out.append("".join(f"[{numbers[d]}]" for d in c.documents), style="bold cyan")
        pos = max(pos, end)
    out.append(printable(answer[pos:]))
    out.rstrip()
    return out


def _fit(label: str, width: int) -> str:
    """``label`` in at most ``width`` characters, cut at the start so a chunk number stays visible."""
    return label if len(label) <= width else "…" + label[len(label) - width + 1 :]


def _agreement(cmp: AnswerComparison) -> Text:
    """The flag shown next to both answers: '≠ answers differ' (highlighted) or '= answers agree', or
    nothing without a comparison."""
    from rich.text import Text

    if cmp.agreement is None:
        return Text("")
    return Text(f"  {AGREEMENT[cmp.agreement]}", style="bold yellow" if cmp.agreement == "differs" else "dim")


def _flag(ok: bool | None) -> Text:
    """' (correct)' / ' (incorrect)' against the reference answers, or nothing when there are none."""
    from rich.text import Text

    if ok is None:
        return Text("")
    return Text(" (correct)" if ok else " (incorrect)", style="green" if ok else "red")


def verdict_text(cmp: AnswerComparison) -> Text:
    """The comparison's verdict, highlighted when pruning changed the answer."""
    from rich.text import Text

    return Text(cmp.verdict, style="bold yellow" if cmp.changed else "bold" if cmp.changed is False else "dim")
