"""Rich terminal rendering of a :class:`~at2_rag.app.pipeline.QAResult`: scores as bars, answers, citations."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .pipeline import AnswerComparison, QAResult

# C0 controls but tab and newline, DEL and the C1 controls: removed from any text shown, so corpus
# text cannot move the cursor, retitle the window or hide output (ANSI CSI / OSC sequences start
# with ESC or a C1 byte; without it the rest is inert text).
_CONTROLS = dict.fromkeys([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0)])


def printable(text: str) -> str:
    """``text`` without terminal control characters (see ``_CONTROLS``)."""
    return text.translate(_CONTROLS)

if TYPE_CHECKING:
    from rich.text import Text


def rich_console(stderr: bool = False):
    """A rich Console (on stderr for progress and notes), or a clear error naming the package to install."""
    try:
        from rich.console import Console
    except ImportError as e:
        raise ImportError("the terminal view needs rich; install it with `pip install rich`") from e
    return Console(stderr=stderr)


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
        title = printable(doc.title or doc.id or "")
        table.add_row(str(i + 1), Text(title[:40], style="" if kept else "dim"), f"{r.retrieval_scores[i]:.3f}", bar,
                      f"{r.prune.scores[i]:.3f}", Text("kept", style="green") if kept else Text("dropped", style="dim"))
    console.print(table)
    cmp = r.comparison
    if r.full_context_answer is not None:
        console.print(Text("Full-context answer", style="bold") + _flag(cmp.full_correct) + Text(": ")
                      + Text(printable(r.full_context_answer.strip())))
    dropped = ", ".join(f"[{i + 1}]" for i in r.dropped) or "none"
    console.print(
        f"Pruned: kept {len(r.kept)} of {len(r.retrieved)} chunks ({r.prune.kept_tokens} of "
        f"{r.prune.total_tokens} tokens); dropped {dropped}"
    )
    answer = Text()
    pos = 0
    for c in r.citations:
        answer.append(printable(r.answer[pos : c.start]))
        answer.append(printable(r.answer[c.start : c.end]))
        answer.append("".join(f"[{r.kept[d] + 1}]" for d in c.documents), style="bold cyan")
        pos = c.end
    answer.append(printable(r.answer[pos:]))
    title = Text("Answer from the kept chunks") + _flag(cmp.pruned_correct)
    console.print(Panel(answer, title=title, title_align="left"))
    console.print(verdict_text(cmp))
    for c in r.citations:
        if not c.sources:
            continue
        console.print(Text("“" + printable(c.text.strip()) + "”", style="italic"))
        for s in c.sources:
            doc = r.final.prompt.documents[s.document]
            line = Text(f"   [{r.kept[s.document] + 1}] ", style="bold cyan")
            line.append(printable(doc.text[: s.start]))
            line.append(printable(doc.text[s.start : s.end]), style="black on yellow")
            line.append(printable(doc.text[s.end :]))
            line.append(f"  ({s.score:.3f})", style="dim")
            console.print(line)
    console.print()


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
