"""The command line and its reports behave like their neighbours: --version, help for every argument
with its default, quiet loading unless --verbose, chunk labels and headings, a run header, offsets and
citation markers in JSON, and the full-context answer cited and flagged where it differs."""

from __future__ import annotations

import argparse
import io
import json
import re
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import at2_rag
from at2_rag import AT2Attributor, Document, cite
from at2_rag.app import cli
from at2_rag.app.corpus import chunk_label, chunk_text, load_folder, sample_corpus
from at2_rag.app.pipeline import DEFAULT_KEEP, QAResult, RAGPipeline, RunSettings
from at2_rag.app.report import render_html

# -- the parser: --version, help texts, defaults, --keep against --top-k --------------------------------


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand's parser, by name."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"at2-rag {at2_rag.__version__}\n"


def test_every_argument_of_every_command_has_help():
    commands = _commands()
    assert {"demo", "ask", "attribute", "evaluate", "build-nq", "train-data", "train"} <= set(commands)
    missing = [f"{name} {action.dest}" for name, p in commands.items() for action in p._actions
               if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()]
    assert not missing, f"arguments without help: {missing}"


def test_help_shows_defaults_in_plain_text():
    top = cli.build_parser().format_help()
    assert "``" not in top and ":class:" not in top
    assert "attention" in top  # says what the tool does, not just the command list
    helps = {name: " ".join(p.format_help().split()) for name, p in _commands().items()}
    for text in helps.values():
        assert "``" not in text
        assert "(default: None)" not in text and "(default: False)" not in text  # nothing to show: no note
    ask = helps["ask"]
    assert "(default: 8)" in ask and "(default: support)" in ask and "(default: 120)" in ask
    assert f"(default: {DEFAULT_KEEP}, at most --top-k)" in ask and "(default: default)" in ask
    assert "(default: results.json)" in helps["evaluate"] and "(default: 0.001)" in helps["train"]
    assert "--verbose" in ask and "--version" in top


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command gets as far as loading a model: its checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(AT2Attributor, "from_pretrained", classmethod(refuse))


def test_keep_more_than_top_k_is_one_line_before_the_model(tmp_path, capsys, no_model):
    (tmp_path / "a.txt").write_text("Kibo is the summit of Kilimanjaro.")
    for argv in (["ask", "Which?", "--corpus", str(tmp_path)], ["demo"]):
        assert cli.main([*argv, "--top-k", "2", "--keep", "3"]) == 2
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("at2-rag: error: --keep 3 is more than --top-k 2"), lines


def test_keep_defaults_to_at_most_top_k(monkeypatch):
    from at2_rag.app import pipeline

    seen = []
    monkeypatch.setattr("at2_rag.app.demo.run_demo", lambda **kw: seen.append((kw["k"], kw["keep"])))
    assert cli.main(["demo"]) == 0
    assert cli.main(["demo", "--top-k", "5", "--keep", "5"]) == 0
    monkeypatch.setattr(pipeline, "DEFAULT_KEEP", 3)  # a default above a small --top-k gives way to it
    assert cli.main(["demo", "--top-k", "2"]) == 0
    assert cli.main(["demo", "--top-k", "4"]) == 0
    assert seen == [(8, DEFAULT_KEEP), (5, 5), (2, 2), (4, 3)]


# -- quiet loading unless --verbose --------------------------------------------------------------------


@pytest.fixture
def library_logging():
    """Restore transformers' verbosity and progress-bar switch after a test changes them."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    yield hf_logging
    hf_logging.set_verbosity(verbosity)
    (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()


def test_quiet_libraries_switches_the_bars_and_logs(library_logging, capfd):
    from transformers import modeling_gguf_pytorch_utils as gguf_loading

    def gguf_bar_output() -> str:
        capfd.readouterr()
        for _ in gguf_loading.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
        return capfd.readouterr().err

    cli.quiet_libraries(verbose=False)
    assert not library_logging.is_progress_bar_enabled()
    assert library_logging.get_verbosity() == library_logging.ERROR
    assert gguf_bar_output() == ""
    cli.quiet_libraries(verbose=True)
    assert library_logging.is_progress_bar_enabled()
    assert library_logging.get_verbosity() == library_logging.WARNING
    assert "Converting and de-quantizing" in gguf_bar_output()


def test_commands_are_quiet_unless_verbose(library_logging, monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "cmd_demo", lambda args: seen.append(library_logging.is_progress_bar_enabled()) or 0)
    assert cli.main(["demo"]) == 0
    assert cli.main(["demo", "--verbose"]) == 0
    assert cli.main(["demo", "-v"]) == 0
    assert seen == [False, True, True]


def test_loading_the_model_prints_no_progress_bar_by_default(library_logging, capfd):
    from at2_rag import load_model

    cli.quiet_libraries(verbose=False)
    capfd.readouterr()
    load_model("default")
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err + captured.out
    cli.quiet_libraries(verbose=True)
    load_model("default")
    assert "Loading weights" in capfd.readouterr().err  # the test can fail: the bar exists


def test_progress_is_one_plain_line_off_a_terminal():
    from rich.console import Console

    from at2_rag.app.terminal import progress

    buf = io.StringIO()
    with progress(Console(file=buf, width=200, color_system=None), "Loading the bundled model ..."):
        pass
    assert buf.getvalue() == "Loading the bundled model ...\n"


def test_loading_message_names_the_slow_first_run():
    from at2_rag.app import terminal
    from at2_rag.app.terminal import loading_message

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(terminal, "default_model_cached", lambda: False)
        assert "first run" in loading_message("default") and "~30 s" in loading_message("default")
        mp.setattr(terminal, "default_model_cached", lambda: True)
        assert "first run" not in loading_message("default") and "bundled model" in loading_message("default")
    assert "m.gguf" in loading_message("m.gguf") and "GGUF" in loading_message("m.gguf")
    assert "org/model" in loading_message("org/model")


# -- the corpus: headings join the chunk that follows; labels name file and chunk ---------------------


def _texts(text: str, *args, **kwargs) -> list[str]:
    return [text[a:b] for a, b in chunk_text(text, *args, **kwargs)]


def test_a_heading_joins_the_chunk_that_follows():
    text = "# Coffee\n\nCoffee beans are seeds. Brazil grows most.\n\n## Decaf\n\nDecaf has less caffeine."
    assert _texts(text) == ["# Coffee\n\nCoffee beans are seeds. Brazil grows most.",
                            "## Decaf\n\nDecaf has less caffeine."]
    setext = "Coffee\n======\n\nCoffee beans are seeds.\n\nDecaf\n-----\n\nLess caffeine."
    assert _texts(setext) == ["Coffee\n======\n\nCoffee beans are seeds.", "Decaf\n-----\n\nLess caffeine."]
    stacked = "# Drinks\n\n## Coffee\n\nCoffee beans are seeds."
    assert _texts(stacked) == [stacked]
    # A heading with nothing after it, and lines that only look like headings, stay as they are.
    assert _texts("Text here.\n\n# The end") == ["Text here.", "# The end"]
    assert _texts("#hashtag\n\nText here.") == ["#hashtag", "Text here."]
    assert _texts("Text here.\n\n---\n\nMore text.") == ["Text here.", "---", "More text."]


def test_a_heading_joins_the_first_words_when_the_sentence_is_over_the_limit():
    text = "# Coffee\n\nOne two three four five."
    assert _texts(text, 3) == ["# Coffee\n\nOne", "two three four", "five."]
    assert _texts(text, 100, max_chars=14) == ["# Coffee\n\nOne", "two three four", "five."]


HEADING = st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=6), min_size=1, max_size=4).map(
    lambda ws: "#" * len(ws[0]) + " " + " ".join(ws))
SENTENCE = st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=6), min_size=1, max_size=12).map(
    lambda ws: " ".join(ws).capitalize() + ".")
PARAGRAPH = st.lists(SENTENCE, min_size=1, max_size=5).map(" ".join)
SECTIONS = st.lists(st.tuples(st.one_of(st.none(), HEADING), PARAGRAPH), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(sections=SECTIONS, trailing=st.one_of(st.none(), HEADING), limit=st.integers(6, 30),
       max_chars=st.integers(60, 200))
def test_no_heading_stands_alone_and_the_limits_hold(sections, trailing, limit, max_chars):
    blocks = [b for heading, paragraph in sections for b in (heading, paragraph) if b] + ([trailing] if trailing else [])
    text = "\n\n".join(blocks)
    chunks = chunk_text(text, limit, max_chars=max_chars)
    assert [w for a, b in chunks for w in text[a:b].split()] == text.split()
    assert all(len(text[a:b].split()) <= limit and b - a <= max_chars for a, b in chunks)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(chunks, chunks[1:]))
    alone = [text[a:b] for a, b in chunks if all(ln.startswith("#") for ln in text[a:b].splitlines() if ln)]
    # (A heading has at most 5 words and 34 characters, so it fits with a word of what follows.)
    assert alone == ([trailing] if trailing else []), "only a heading with nothing after it stands alone"


def test_folder_chunks_are_labelled_by_file_and_chunk(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "decaf.md").write_text(
        "# Coffee\n\nDecaf coffee has most caffeine removed.\n\nIt is made by soaking the beans.", encoding="utf-8")
    docs = load_folder(tmp_path)
    assert [chunk_label(d) for d in docs] == ["notes/decaf.md#0", "notes/decaf.md#1"]
    assert docs[0].text.startswith("# Coffee\n\nDecaf")
    everest = sample_corpus()[0]
    assert chunk_label(everest) == everest.title
    assert chunk_label(Document(text="x", id="abc")) == "abc" and chunk_label(Document(text="x")) == ""


# -- the views: header, labels, offsets, markers, full-context citations, the disagreement flag --------

RUN = RunSettings(model="SmolLM2-135M", estimator="default", top_k=2, keep=1, mode="draft", corpus="notes")


def _attribution(docs: list[Document], answer: str, cited: int):
    """An attribution (no model) whose one answer sentence rests on document ``cited``; a source per document."""
    sources = [SimpleNamespace(index=i, document=i, text=d.text, start=0, end=len(d.text)) for i, d in enumerate(docs)]
    scores = torch.tensor([1.0 if i == cited else 0.0 for i in range(len(docs))])
    sentence = SimpleNamespace(text=answer, start=0, end=len(answer), scores=scores)
    return SimpleNamespace(answer=answer, sources=sources, sentences=[sentence], scores=scores,
                           prompt=SimpleNamespace(documents=docs), dropped_documents=[])


def _result(full: str, pruned: str, mode: str = "draft") -> QAResult:
    """Two folder chunks; the second is kept; the full-context answer cites the first, the pruned one the second."""
    texts = ["Kibo is the highest summit.", "Mount Kenya is second."]
    docs = [Document(text=t, title="africa", id=f"notes/africa.md#{i}",
                     metadata={"source": "notes/africa.md", "chunk": i, "start": 30 * i, "end": 30 * i + len(t)})
            for i, t in enumerate(texts)]
    full_att = _attribution(docs, full, cited=0)
    final = _attribution(docs[1:], pruned, cited=0)
    prune = SimpleNamespace(mode=mode, draft=full if mode == "draft" else "", attribution=full_att, kept=[1],
                            dropped=[0], scores=[0.2, 0.6], keep_scores=[0.2, 0.6], kept_tokens=9, total_tokens=17)
    return QAResult("What is the highest mountain in Africa?", docs, [0.8, 0.5], prune, final, cite(final), {},
                    ("Kilimanjaro",), None if mode == "draft" else full_att)


def _shown(r: QAResult, run: RunSettings | None = None) -> str:
    from rich.console import Console

    from at2_rag.app.terminal import print_header, print_result

    buf = io.StringIO()
    console = Console(file=buf, width=200, color_system=None)
    if run is not None:
        print_header(console, run)
    print_result(console, r)
    return buf.getvalue()


def test_json_has_kept_order_offsets_and_cited_answers():
    for mode in ("draft", "support"):
        data = json.loads(json.dumps(_result("Kibo, on Kilimanjaro.", "Mount Kenya.", mode).to_dict()))
        assert data["kept_order"] == [1]
        assert [(c["label"], c["source"], c["start"], c["end"]) for c in data["retrieved"]] == [
            ("notes/africa.md#0", "notes/africa.md", 0, 27), ("notes/africa.md#1", "notes/africa.md", 30, 52)]
        assert data["answer_cited"] == "Mount Kenya.[2]"  # chunk numbers as the views show them
        assert data["citations"][0]["chunks"] == [1]
        assert data["full_context_answer"] == "Kibo, on Kilimanjaro."
        assert data["full_context_answer_cited"] == "Kibo, on Kilimanjaro.[1]"
        assert data["full_context_citations"][0]["chunks"] == [0]
        assert data["pruning_changed_answer"] is True and data["full_correct"] is True
    sample = Document(text="Kibo.", title="Kilimanjaro", id="kili")
    r = _result("a", "b")
    r.retrieved = [sample, sample]
    entry = r.to_dict()["retrieved"][0]
    assert entry["label"] == "Kilimanjaro" and "start" not in entry and "source" not in entry


def test_json_without_a_full_context_answer():
    r = _result("Kibo.", "Mount Kenya.", mode="query")
    r.full_attribution = None
    data = r.to_dict()
    assert data["full_context_answer"] is None and data["full_context_answer_cited"] is None
    assert data["full_context_citations"] is None and data["answer_cited"] == "Mount Kenya.[2]"


def test_terminal_cites_both_answers_flags_the_difference_and_has_a_header():
    out = _shown(_result("Kibo, on Kilimanjaro.", "Mount Kenya."), RUN)
    header = out.splitlines()[0]
    for field in ("model SmolLM2-135M", "estimator default", "top-k 2", "keep 1", "mode draft", "corpus notes"):
        assert field in header, header
    assert "notes/africa.md#0" in out and "notes/africa.md#1" in out
    assert "Full-context answer (correct): Kibo, on Kilimanjaro.[1]" in out
    assert "Mount Kenya.[2]" in out
    assert out.count("≠ answers differ") == 2  # next to both answers
    same = _shown(_result("Mount Kenya.", "Mount Kenya."))
    assert "differ" not in same.replace("Pruning did not change", "") and same.count("= answers agree") == 2
    alone = _result("Kibo.", "Mount Kenya.", mode="query")
    alone.full_attribution = None  # no full-context answer: nothing to flag
    assert "answers differ" not in _shown(alone) and "answers agree" not in _shown(alone)


def test_html_cites_both_answers_flags_the_difference_and_has_a_header():
    page = render_html([_result("Kibo, on Kilimanjaro.", "Mount Kenya.")], settings=RUN)
    head = page.split('<section class="question"')[0]
    for value in ("SmolLM2-135M", "default", "draft", "notes", ">2<", ">1<"):
        assert value in head, value
    assert "top-k" in head and "keep" in head and "corpus" in head and "estimator" in head
    assert "notes/africa.md#0" in page and "notes/africa.md#1" in page
    full = re.search(r'<div class="answer full">(.*?)</div>', page).group(1)
    assert '<span class="mark">[1]</span>' in full and 'data-cites="q0-c0"' in full and "full-sent" in full
    assert 'id="q0-c0"' in page  # the cited chunk, highlighted on hover
    assert page.count('class="flag changed"') == 2 and page.count("≠ answers differ") == 2
    same = render_html([_result("Mount Kenya.", "Mount Kenya.")])
    assert 'class="flag changed"' not in same and same.count('class="flag same"') == 2
    assert 'class="run"' not in same


def _unmarked(text: str) -> str:
    """``text`` without ``[n]`` citation markers."""
    return re.sub(r"\[\d+\]", "", text)


def test_pipeline_and_attribute_refine_the_citations_on_request(attributor, tmp_path, capsys):
    docs = [Document(text="Kibo is the highest summit of Kilimanjaro. It is in Tanzania.", title="Kilimanjaro"),
            Document(text="The Rhine flows through Basel.", title="Rhine")]
    pipe = RAGPipeline(attributor, None, k=2, mode="query", policy=at2_rag.KeepPolicy(top_k=2),  # type: ignore[arg-type]
                       max_new_tokens=10, refine_ablations=2)
    r = pipe.answer("What is the highest mountain in Africa?", docs)
    assert r.final.method == "at2+2" and r.final.extra_forward_passes == 3
    assert ("citations", "AT2 + 2 ablations") in RunSettings.of(pipe, estimator="default", corpus="c").items()
    with pytest.raises(at2_rag.InputError, match="refine_ablations"):
        RAGPipeline(attributor, None, refine_ablations=1)  # type: ignore[arg-type]
    doc = tmp_path / "kibo.txt"
    doc.write_text(docs[0].text, encoding="utf-8")
    argv = ["attribute", "What is the highest mountain?", str(doc), "--answer", "Kibo.", "--refine", "2", "--json"]
    assert cli.main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    # attribute's pass, the unablated answer, the one source (a whole document) left out
    assert data["method"] == "at2+2" and data["extra_forward_passes"] == 1 + 2
    assert cli.main(argv[:-1] + ["--granularity", "sentence", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["extra_forward_passes"] == 1 + 3  # two sentences: both left out


def test_pipeline_cites_the_full_context_answer(attributor):
    docs = [Document(text="Kibo is the highest summit of Kilimanjaro. It is in Tanzania.", title="Kilimanjaro"),
            Document(text="Mount Kenya is the second highest mountain in Africa.", title="Mount Kenya"),
            Document(text="The Rhine flows through Basel.", title="Rhine")]
    pipe = RAGPipeline(attributor, None, k=3, mode="support", policy=at2_rag.KeepPolicy(top_k=1),  # type: ignore[arg-type]
                       max_new_tokens=12, full_answer=True)
    r = pipe.answer("What is the highest mountain in Africa?", docs)
    assert r.full_context_answer and r.full_attribution is not None
    assert r.full_context_answer == r.full_attribution.answer
    citations = r.full_context_citations
    assert citations and all(r.full_context_answer[c.start : c.end] == c.text for c in citations)
    assert all(s.document < 3 for c in citations for s in c.sources)
    data = r.to_dict()
    assert _unmarked(data["full_context_answer_cited"]) == _unmarked(r.full_context_answer)
    run = RunSettings.of(pipe, estimator="default", corpus="three passages")
    assert (run.top_k, run.keep, run.mode, run.estimator) == (3, 1, "support", "default")
    assert "SmolLM2-135M" in run.model


def test_ask_json_reports_the_run_offsets_and_markers(tmp_path, capsys, monkeypatch, tmp_cache):
    corpus = tmp_path / "notes"
    corpus.mkdir()
    decaf = "# Coffee\n\nCoffee beans are the seeds of the Coffea plant. Brazil grows the most coffee."
    (corpus / "coffee.md").write_text(decaf, encoding="utf-8")
    (corpus / "tea.txt").write_text("Green tea comes from the leaves of Camellia sinensis.", encoding="utf-8")
    argv = ["ask", "Which country grows the most coffee?", "--corpus", str(corpus), "--top-k", "2", "--keep", "1",
            "--max-new-tokens", "12", "--compare-full", "--json"]
    assert cli.main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["run"] == {"model": data["run"]["model"], "estimator": "default", "top_k": 2, "keep": 1,
                           "mode": "support", "corpus": str(corpus), "refine": 0}
    coffee = next(c for c in data["retrieved"] if c["source"] == "coffee.md")
    assert coffee["label"] == "coffee.md#0" and coffee["text"] == decaf  # the heading is in the chunk
    assert decaf[coffee["start"] : coffee["end"]] == coffee["text"]
    assert [data["retrieved"][i]["kept"] for i in data["kept_order"]] == [True]
    assert _unmarked(data["answer_cited"]) == _unmarked(data["answer"])
    assert data["full_context_answer"] and data["full_context_citations"] is not None


def test_ask_fuses_the_index_rank_and_answer_does_not_assume_one(attributor):
    docs = [Document(text="The Rhine flows through Basel.", title="Rhine"),
            Document(text="Kibo is the highest summit of Kilimanjaro.", title="Kilimanjaro")]

    class Index:  # the index's contract: (document, similarity) pairs, best first
        def search(self, question, k):
            return [(d, 1.0 - i / 10) for i, d in enumerate(docs[:k])]

    pipe = RAGPipeline(attributor, Index(), k=2, mode="support", policy=at2_rag.KeepPolicy(top_k=1),  # type: ignore[arg-type]
                       max_new_tokens=4)
    asked = pipe.ask("What is the highest mountain in Africa?")
    assert asked.prune.rank_source == "metadata"
    assert [d.metadata["retrieval_rank"] for d in asked.prune.documents] == [0, 1]
    assert pipe.answer("What is the highest mountain in Africa?", docs).prune.rank_source == "none"
