"""Bad input at the CLI and API boundary: one line, exit 2, before any model loads; no NaN in JSON;
no terminal control characters from corpus text; reports written whole."""

from __future__ import annotations

import io
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest

from at2_rag import AT2Attributor, Document, InputError
from at2_rag.app import cli
from at2_rag.app.pipeline import QAResult
from at2_rag.documents import as_document
from at2_rag.files import json_safe


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command gets as far as loading a model: its checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(AT2Attributor, "from_pretrained", classmethod(refuse))


def run(argv, capsys) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err
    return code, err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("at2-rag: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv, message", [
    (["train-data", "--data", "x", "--out", "o", "--masks", "0"], "must be at least 2"),
    (["train-data", "--data", "x", "--out", "o", "--p-keep", "1.5"], "strictly between 0 and 1"),
    (["train-data", "--data", "x", "--out", "o", "--p-keep", "0"], "strictly between 0 and 1"),
    (["train-data", "--data", "x", "--out", "o", "--limit", "0"], "must be at least 1"),
    (["train-data", "--data", "x", "--out", "o", "--shard-size", "0"], "must be at least 1"),
    (["train-data", "--data", "x", "--out", "o", "--batch-size", "0"], "must be at least 1"),
    (["train-data", "--data", "x", "--out", "o", "--max-new-tokens", "0"], "must be at least 1"),
    (["train-data", "--data", "x", "--out", "o", "--masks", "two"], "must be a whole number"),
    (["evaluate", "--data", "x", "--masks", "1"], "must be at least 2"),
    (["train-data", "--data", "x", "--out", "o", "--masks", "1"], "must be at least 2"),
    (["train", "--data", "x", "--out", "o.safetensors", "--steps", "0"], "must be at least 1"),
    (["attribute", "Q?", "d.txt", "--refine", "1"], "--refine must be 0 (AT2 alone) or an integer >= 2"),
    (["ask", "Q?", "--corpus", "c", "--refine", "-3"], "--refine must be 0 (AT2 alone) or an integer >= 2"),
    (["fit-model", "--data", "x", "--out", "o", "--kinds", "answer,bogus"], "kinds must be distinct names"),
])
def test_count_options_are_refused_by_the_parser(argv, message, capsys, no_model):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_estimator_file_is_one_line_before_the_model(tmp_path, capsys, no_model):
    doc = tmp_path / "d.txt"
    doc.write_text("Kibo is the summit.")
    code, err = run(["attribute", "Which?", str(doc), "--estimator", str(tmp_path / "nope.safetensors")], capsys)
    assert code == 2 and "estimator file" in one_line_error(err) and "does not exist" in err
    code, err = run(["attribute", "Which?", str(doc), "--estimator", "not-a-shipped-name"], capsys)
    assert code == 2 and "no estimator named 'not-a-shipped-name'" in one_line_error(err)


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "not a regular file"),
    (lambda p: p.write_bytes("café".encode("latin-1")), "is not UTF-8 text"),
])
def test_attribute_document_files(tmp_path, capsys, no_model, make, message):
    path = tmp_path / "doc.txt"
    make(path)
    code, err = run(["attribute", "Which?", str(path)], capsys)
    assert code == 2 and message in one_line_error(err)


def test_html_into_a_missing_folder_fails_before_the_run(tmp_path, capsys, no_model):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Kibo is the summit of Kilimanjaro.")
    code, err = run(["ask", "Which?", "--corpus", str(corpus), "--html", str(tmp_path / "no" / "r.html")], capsys)
    assert code == 2 and "does not exist; create" in one_line_error(err)
    code, err = run(["ask", "Which?", "--corpus", str(corpus), "--html", str(tmp_path)], capsys)
    assert code == 2 and "is a directory" in one_line_error(err)
    code, err = run(["demo", "--html", str(tmp_path / "no" / "r.html")], capsys)
    assert code == 2 and "does not exist; create" in one_line_error(err)


@pytest.mark.parametrize("command", [
    ["evaluate", "--data"], ["train-data", "--out", "o", "--data"], ["build-nq", "--out", "o.jsonl", "--source"],
])
def test_missing_data_files_fail_before_the_model(tmp_path, capsys, no_model, command):
    code, err = run([*command, str(tmp_path / "missing.jsonl.gz")], capsys)
    assert code == 2 and "does not exist" in one_line_error(err)


def test_unforeseen_os_errors_are_one_line(monkeypatch, capsys):
    def boom(args):
        raise PermissionError(13, "Permission denied", "/somewhere/file")

    monkeypatch.setattr(cli, "cmd_demo", boom)
    code, err = run(["demo"], capsys)
    assert code == 2 and one_line_error(err) == "at2-rag: error: Permission denied: /somewhere/file"


def test_api_max_new_tokens_and_metadata_are_validated(attributor):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="max_new_tokens must be a positive int"):
            attributor.generate("Which?", ["Kibo is the summit."], max_new_tokens=bad)
    with pytest.raises(InputError, match="max_new_tokens must be a positive int"):
        AT2Attributor(attributor.model, attributor.tokenizer, None, max_new_tokens=0)
    with pytest.raises(InputError, match="metadata of type str"):
        as_document({"text": "Kibo.", "metadata": "ab"})
    with pytest.raises(InputError, match="metadata of type str"):
        as_document(Document("Kibo.", metadata="ab"))  # type: ignore[arg-type]


def test_lone_surrogates_are_input_errors_not_tokenizer_crashes(attributor):
    with pytest.raises(InputError, match="lone surrogate"):
        attributor.generate("Which?", ["Kibo \udc80 is the summit."])
    with pytest.raises(InputError, match="lone surrogate"):
        attributor.generate("Which\ud800?", ["Kibo is the summit."])
    with pytest.raises(InputError, match="lone surrogate"):
        attributor.attribute("Which?", ["Kibo is the summit."], "Kibo\udc80")
    with pytest.raises(InputError, match="lone surrogate"):
        as_document({"text": "Kibo.", "title": "K\udc80"})


def test_json_never_carries_nan():
    value = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": "x", "e": 2}
    text = json.dumps(json_safe(value), allow_nan=False)
    assert json.loads(text) == {"a": None, "b": [1.0, None, {"c": None}], "d": "x", "e": 2}


def _qa_result(text: str, keep_scores: list[float]) -> QAResult:
    docs = [Document(text=text, title="T\x1b]0;pwned\x07itle", id="a"), Document(text="Plain.", id="b")]
    prune = SimpleNamespace(mode="support", draft="", kept=[0], dropped=[1], scores=[0.5, float("nan")],
                            keep_scores=keep_scores, kept_tokens=5, total_tokens=9)
    final = SimpleNamespace(answer="Answer \x1b[2J here.", sources=[], scores=np.zeros(0),
                            prompt=SimpleNamespace(documents=docs[:1]))
    return QAResult("Q\x1b[31m?", docs, [0.8, 0.5], prune, final, [], {}, None)


def test_terminal_strips_control_sequences_and_survives_non_finite_scores():
    from rich.console import Console

    from at2_rag.app.terminal import print_result, printable

    assert printable("a\x1b[31mb\x07c\x9bd\r\te\nf\x7f") == "a[31mbcd\te\nf"
    r = _qa_result("Text with \x1b]8;;http://evil\x1b\\ a link.", [float("nan"), float("-inf")])
    assert all(math.isfinite(f) for f in r.bar_fractions())
    buf = io.StringIO()
    print_result(Console(file=buf, width=200, color_system=None), r)
    out = buf.getvalue()
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out
    assert "Answer [2J here." in out


def test_html_report_is_written_atomically(tmp_path, monkeypatch):
    from at2_rag.app import report

    path = tmp_path / "r.html"
    path.write_text("old report")
    monkeypatch.setattr(report, "render_html", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError):
        report.write_html([], str(path))
    assert path.read_text() == "old report"
    assert sorted(os.listdir(tmp_path)) == ["r.html"]
