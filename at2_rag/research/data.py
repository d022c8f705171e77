"""Datasets in at2-rag's JSONL format: reading with row-by-row validation, splits, answer matching.

One JSON object a line (plain or ``.gz``)::

    {"id": "q1", "question": "...", "documents": [{"id": "d1", "title": "...", "text": "..."}],
     "answers": ["..."], "gold_document_ids": ["d1"]}

``answers`` and ``gold_document_ids`` are optional. Splits are deterministic functions of the id.
A little over 300 lines because every field's validation (with ``path:line`` and a fix in each
message) lives here, next to the reader, so the format has one definition.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
import string
import sys
import warnings
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..documents import check_encodable
from ..errors import InputError
from ..files import atomic_path
from ..seeds import stable_hash
from .options import optional_limit


def split_of(example_id: str, fractions: tuple[float, float] = (0.6, 0.2)) -> str:
    """Deterministic split from the id's hash: 60% train, 20% validation, 20% test by default."""
    h = stable_hash(example_id) / 0x100000000
    if h < fractions[0]:
        return "train"
    return "validation" if h < fractions[0] + fractions[1] else "test"


def open_text(path: str | Path, mode: str = "rt"):
    return gzip.open(path, mode, encoding="utf-8") if str(path).endswith(".gz") else open(path, mode, encoding="utf-8")


SPLITS = ("train", "validation", "test")
ON_ERROR = ("raise", "skip")
OnError = Literal["raise", "skip"]
_SHOWN_SKIPS = 3


@dataclass
class Dataset:
    """Examples read from a JSONL file, and the rows left out as invalid (``on_error="skip"``)."""

    examples: list[dict[str, Any]]
    skipped: list[str] = field(default_factory=list)
    """``"path:line: reason"`` of every skipped row."""


class _BadRow(Exception):
    """One row breaks the format (the message says how); the file itself is readable."""


def read_jsonl(
    path: str | Path, split: str | None = None, limit: int | None = None, on_error: OnError = "raise"
) -> list[dict[str, Any]]:
    """Read and validate examples, optionally only one split and at most ``limit`` of them (see :func:`read_dataset`)."""
    return read_dataset(path, split, limit, on_error).examples


def read_dataset(
    path: str | Path, split: str | None = None, limit: int | None = None, on_error: OnError = "raise"
) -> Dataset:
    """Read and validate examples: ids become strings and documents without an id get ``f"{id}#{i}"``.

    A bad row raises :class:`InputError` naming ``path:line`` and the example id; with
    ``on_error="skip"`` bad rows are left out instead, counted in ``Dataset.skipped`` and named in
    one warning, so one broken row does not abort a long run. A file that cannot be read at all
    (missing, not UTF-8, a broken gzip stream) always raises.
    """
    _check_selection(split, limit, on_error)
    data, first_line = Dataset([]), dict[str, int]()
    for lineno, line, ended in _lines(path):
        if not line.strip():
            continue
        try:
            ex = _example(_parse(line, ended), first_line, path)
        except _BadRow as exc:
            if on_error == "raise":
                raise InputError(f"{path}:{lineno}: {exc}") from None
            data.skipped.append(f"{path}:{lineno}: {exc}")
            continue
        first_line[ex["id"]] = lineno
        if split is None or split_of(ex["id"]) == split:
            data.examples.append(ex)
            if limit is not None and len(data.examples) >= limit:
                break
    if data.skipped:
        shown = "; ".join(data.skipped[:_SHOWN_SKIPS]) + ("; …" if len(data.skipped) > _SHOWN_SKIPS else "")
        warnings.warn(f"skipped {len(data.skipped)} invalid row(s) of {path}: {shown}", stacklevel=2)
    return data


def read_selection(
    path: str | Path, split: str | None = None, limit: int | None = None, on_error: OnError = "raise"
) -> list[dict[str, Any]]:
    """:func:`read_jsonl`, refusing a selection with no examples (rather than a run that makes nothing)."""
    examples = read_jsonl(path, split, limit, on_error)
    if not examples:
        where = "" if split is None else f" in the {split!r} split"
        raise InputError(
            f"{path} has no{' valid' if on_error == 'skip' else ''} examples{where}; use another split or file "
            "(split=None, --split all: every row)"
        )
    return examples


def _check_selection(split: str | None, limit: int | None, on_error: str) -> None:
    """Refuse a split, limit or error mode that could only select nothing or mean nothing."""
    if split is not None and split not in SPLITS:
        raise InputError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}, or None for every row")
    optional_limit(limit)
    if on_error not in ON_ERROR:
        raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _lines(path: str | Path) -> Iterator[tuple[int, str, bool]]:
    """``(line number, text, ends with a newline)`` of a UTF-8 file (gzip when named ``.gz``); a file
    that cannot be read raises one :class:`InputError` line naming it."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                yield lineno, _decode(raw, path, lineno), raw.endswith(b"\n")
    except FileNotFoundError:
        raise InputError(f"data file {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise InputError(f"data file {path} is a folder; pass a .jsonl or .jsonl.gz file") from None
    except gzip.BadGzipFile as exc:
        raise InputError(f"{path} is named .gz but is not gzip data ({exc}); rename it without .gz or compress it") from None
    except EOFError:
        raise InputError(f"{path} is a truncated gzip file (its stream ends early); re-create or re-download it") from None
    except (OSError, zlib.error) as exc:
        raise InputError(f"{path} cannot be read ({exc}); check the file") from None


def _decode(raw: bytes, path: str | Path, lineno: int) -> str:
    """One line as text (a UTF-8 byte-order mark on the first is dropped); other encodings are refused."""
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}:{lineno} is not UTF-8 text (byte {exc.start} of the line); convert the file, "
            f"e.g. `iconv -f latin1 -t utf-8`"
        ) from None


def _parse(line: str, ended: bool) -> Any:
    """The JSON value of one line; what Python's parser cannot take (too deep, too many digits) is a bad row too."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        cut = "" if ended else ", and it is cut off (the file may be truncated)"
        raise _BadRow(f"not valid JSON ({exc.msg} at column {exc.colno}){cut}; fix or remove the line") from None
    except RecursionError:
        raise _BadRow("arrays or objects nested too deeply to read; flatten or remove the line") from None
    except ValueError:  # Python's int-size guard (sys.get_int_max_str_digits)
        raise _BadRow(
            f"holds an integer of more than {sys.get_int_max_str_digits():,} digits, more than Python reads; "
            "write it as a string or remove the line"
        ) from None


def json_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, JSON value)`` of each non-blank line; an unreadable file or line raises one
    :class:`InputError` naming ``path:line`` (the reader of every JSONL input, rows checked by the caller)."""
    for lineno, line, ended in _lines(path):
        if line.strip():
            try:
                value = _parse(line, ended)
            except _BadRow as exc:
                raise InputError(f"{path}:{lineno}: {exc}") from None
            yield lineno, value


def check_example(ex: Any, path: str | Path, lineno: int, first_line: dict[str, int]) -> dict[str, Any]:
    """``ex`` checked as a dataset example (what :func:`read_dataset` accepts), so a writer refuses at build
    time what a reader would refuse later; ``first_line`` maps the ids seen so far to their lines."""
    try:
        checked = _example(ex, first_line, path)
    except _BadRow as exc:
        raise InputError(f"{path}:{lineno}: {exc}") from None
    first_line[checked["id"]] = lineno
    return checked


def _example(ex: Any, first_line: dict[str, int], path: str | Path) -> dict[str, Any]:
    """``ex`` checked against the format, with a string id and an id on every document."""
    if not isinstance(ex, dict):
        raise _BadRow(f"each line must be a JSON object, got {kind_of(ex)}")
    ex_id = _example_id(ex)
    if ex_id in first_line:
        raise _BadRow(f"example {ex_id!r} repeats the id of {path}:{first_line[ex_id]}; give each example its own id")
    try:
        _check_fields(ex)
        ex["documents"] = _documents(ex["documents"], ex_id)
    except _BadRow as exc:
        raise _BadRow(f"example {ex_id!r}: {exc}") from None
    ex["id"] = ex_id
    return ex


def _example_id(ex: dict[str, Any]) -> str:
    """The example's id as a string (an int id ``7`` is ``"7"``: splits and seeds hash the same text)."""
    if "id" not in ex:
        raise _BadRow("missing required field 'id'; give every example a unique id")
    value = ex["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise _BadRow(f"'id' must be a non-empty string or an integer, got {kind_of(value)}")
    _check_text(str(value), "'id'")
    return str(value)


def _check_fields(ex: dict[str, Any]) -> None:
    """The question, answers and gold document ids."""
    for key in ("question", "documents"):
        if key not in ex:
            raise _BadRow(f"missing required field {key!r}; add it")
    if not isinstance(ex["question"], str) or not ex["question"].strip():
        raise _BadRow(f"'question' must be a non-empty string, got {kind_of(ex['question'])}")
    _check_text(ex["question"], "the question")
    for key in ("answers", "gold_document_ids"):
        _check_strings(ex.get(key), key)


def _check_strings(value: Any, key: str) -> None:
    """An optional list of strings (``"Paris"`` alone would be matched letter by letter)."""
    if value is None:
        return
    if isinstance(value, str):
        raise _BadRow(f"{key!r} must be a list of strings, got one string; write [{json.dumps(value)}]")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _BadRow(f"{key!r} must be a list of strings, got {kind_of(value)}")
    for i, v in enumerate(value):
        _check_text(v, f"{key}[{i}]")


def _documents(docs: Any, ex_id: str) -> list[dict[str, Any]]:
    """The documents checked, each with an id (``f"{ex_id}#{i}"`` when it has none), ids unique."""
    if not isinstance(docs, list) or not docs:
        raise _BadRow(f"'documents' must be a non-empty list of objects, got {kind_of(docs)}")
    seen: dict[str, int] = {}
    for i, doc in enumerate(docs):
        _check_document(doc, i)
        if doc.get("id") is None:
            doc["id"] = f"{ex_id}#{i}"
        if doc["id"] in seen:
            raise _BadRow(f"documents {seen[doc['id']]} and {i} share the id {doc['id']!r}; give each its own id")
        seen[doc["id"]] = i
    return docs


def _check_document(doc: Any, i: int) -> None:
    """One document: a non-empty ``text``, an optional string ``title`` and an optional string ``id``."""
    if not isinstance(doc, dict):
        raise _BadRow(f"document {i} must be an object with a 'text' string, got {kind_of(doc)}")
    if not isinstance(doc.get("text"), str) or not doc["text"].strip():
        raise _BadRow(f"document {i} needs a non-empty 'text' string, got {kind_of(doc.get('text'))}")
    _check_text(doc["text"], f"the text of document {i}")
    if doc.get("title") is not None:
        if not isinstance(doc["title"], str):
            raise _BadRow(f"document {i} has a 'title' of type {type(doc['title']).__name__}; use a string or null")
        _check_text(doc["title"], f"the title of document {i}")
    if doc.get("id") is not None:
        if not isinstance(doc["id"], str) or not doc["id"]:
            raise _BadRow(f"document {i} needs a non-empty string 'id' (or none at all), got {kind_of(doc['id'])}")
        _check_text(doc["id"], f"the id of document {i}")


def _check_text(text: str, what: str) -> None:
    """Refuse a lone surrogate (valid JSON as ``"\\udc80"``, but no tokenizer can encode it)."""
    try:
        check_encodable(text, what)
    except InputError as exc:
        raise _BadRow(str(exc)) from None


def kind_of(value: Any) -> str:
    """A short description of a JSON value for an error message."""
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, (list, dict)):
        return "an array" if isinstance(value, list) else "an object"
    return json.dumps(value)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes: what identifies a data or estimator file wherever it lies."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_identity(path: str | Path) -> dict[str, str]:
    """What a recipe records of its data file: the name and the content hash, never this machine's path."""
    return {"data": Path(path).name, "data_sha256": file_sha256(path)}


def write_jsonl(path: str | Path, examples: Iterable[dict[str, Any]]) -> Path:
    """Write examples atomically (a crash leaves the old file or none, never half a file)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        # A .gz gets no file name or time in its header, so the same examples give the same bytes
        # (and the same data_sha256 in recipes) on every build.
        sink = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if path.name.endswith(".gz") else raw
        try:
            for ex in examples:
                sink.write((json.dumps(ex, ensure_ascii=False) + "\n").encode("utf-8"))
        finally:
            if sink is not raw:
                sink.close()
    return path


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, squeeze whitespace (the NQ-Open convention)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def is_correct(prediction: str, answers: Iterable[str]) -> bool:
    """True when a normalized gold answer occurs in the normalized prediction.

    ``answers`` is a list of strings: one string alone raises TypeError (its letters would be
    matched one by one, inflating accuracy).
    """
    if isinstance(answers, str):
        raise TypeError(f"answers must be a list of strings, not one string; pass [{answers!r}]")
    pred = normalize_answer(prediction)
    return any(normalize_answer(a) and normalize_answer(a) in pred for a in answers)


def shuffled_documents(example: dict[str, Any], k: int, seed: int = 0) -> list[dict[str, Any]]:
    """The first ``k`` retrieved documents in an order drawn from the example id (order carries no signal)."""
    docs = list(example["documents"][:k])
    random.Random(f"{seed}:{example['id']}").shuffle(docs)
    return docs

