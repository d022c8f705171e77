"""The per-example rows file of an evaluation (``out.rows.jsonl``): what makes a resumed run safe.

Its first line is a header holding the options the rows were made with; a rerun with other options is
refused instead of mixing two runs (``limit`` only picks how many rows, so it is not among them). Files
written before the header existed are still read, and resumed when their methods match. A row is
appended whole or, after a crash, cut off on the last line: that line is dropped and redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...attributor import AT2Attributor
from ...errors import InputError
from ...estimator import Estimator, ModelIdentity
from ...estimator import resolve as resolve_estimator
from ...files import atomic_path
from ..data import data_identity, file_sha256
from .methods import AT2, Method

ROWS_FORMAT = "at2-rag-evaluation-rows"


@dataclass
class EvaluationRows:
    """A rows file read back: its options (None when written before the header existed) and rows."""

    options: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    cut_line: int | None = None
    """Line number of a cut-off last line (a crash mid-append), which is left out of ``rows``."""
    good_bytes: int = 0
    """Bytes of the file up to the end of its last readable line."""


def read_rows(path: str | os.PathLike) -> EvaluationRows:
    """The rows (and options header) of ``path``; empty when it does not exist. A cut-off last line is
    left out and noted in ``cut_line``; any other unreadable line raises :class:`InputError`."""
    if not os.path.exists(path):
        return EvaluationRows()
    lines = Path(path).read_bytes().split(b"\n")
    found, offset = EvaluationRows(), 0
    for n, raw in enumerate(lines, 1):
        last = n == len(lines)
        if raw.strip():
            value = _row(raw, path, n, last)
            if value is None:
                found.cut_line = n
                break
            if value.get("format") != ROWS_FORMAT:
                found.rows.append(value)
            elif found.options is None and not found.rows:
                found.options = value.get("options") or {}
            else:
                raise InputError(f"{path}:{n} is a second options header (two runs joined?); use another --out")
        offset += len(raw) + (0 if last else 1)
    found.good_bytes = offset
    return found


def _row(raw: bytes, path: str | os.PathLike, n: int, last: bool) -> dict[str, Any] | None:
    """One line as a row (or the header); None for a cut-off last line."""
    try:
        value = json.loads(raw)
    except ValueError:  # JSONDecodeError or UnicodeDecodeError
        if last:
            return None
        value = None
    if not isinstance(value, dict) or not ("id" in value or value.get("format") == ROWS_FORMAT):
        raise InputError(
            f"{path}:{n} is not a valid evaluation row; delete that line (its example is redone) or use another --out"
        )
    return value


def run_options(
    att: AT2Attributor, data: str | os.PathLike, methods: Sequence[Method], *,
    split: str | None, k: int, n_masks: int, max_new_tokens: int,
) -> dict[str, Any]:
    """What must match for two runs' rows to be one result (files by content hash, not by path)."""
    return {
        **data_identity(data),
        "split": split,
        "k": k,
        "n_masks": n_masks,
        "max_new_tokens": max_new_tokens,
        "methods": [m.name for m in methods],
        "method_estimators": {m.name: h for m in methods if (h := _method_estimator_sha256(m))},
        "estimator_sha256": _weights_sha256(att.estimator),
        "model": ModelIdentity.of(att.model).name,
    }


def _method_estimator_sha256(method: Method) -> str | None:
    """The content hash of an ``at2:FILE`` method's estimator (of its weights when given as an object)."""
    if not isinstance(method, AT2) or method.estimator in (None, "default"):
        return None
    if isinstance(method.estimator, Estimator):
        return _weights_sha256(method.estimator)
    try:
        return file_sha256(resolve_estimator(method.estimator))
    except FileNotFoundError as exc:
        raise InputError(f"method {method.name!r}: {exc}; check the path") from None


def _weights_sha256(estimator: Estimator) -> str:
    """The sha256 of an estimator's weights (float32 bytes): the same estimator wherever it was loaded from."""
    return hashlib.sha256(estimator.weights.float().contiguous().numpy().tobytes()).hexdigest()


def check_same_run(path: str | os.PathLike, stored: EvaluationRows, options: dict[str, Any]) -> None:
    """Refuse to add rows made with ``options`` to a file of rows made with others (a file without
    rows holds nothing to mix)."""
    if stored.options is not None and stored.rows:
        differ = {key for key in options if _canonical(key, stored.options.get(key)) != _canonical(key, options[key])}
        if differ:
            raise InputError(
                f"{path} was made with {describe(stored.options)}; this run has {describe(options, differ)}; "
                "use another --out or the same options"
            )
        return
    made_with = sorted({tuple(sorted(r["methods"])) for r in stored.rows if isinstance(r.get("methods"), dict)})
    if made_with and made_with != [tuple(sorted(options["methods"]))]:
        raise InputError(
            f"{path} was made with --methods {','.join(made_with[0])} (by an older at2-rag, which recorded no other "
            "options); use another --out or the same options"
        )


def _canonical(key: str, value: Any) -> Any:
    """Method order does not change any row, so methods compare as a set."""
    return sorted(value) if key == "methods" and isinstance(value, list) else value


def _short(sha: object) -> str:
    return str(sha)[:12]


_FLAGS: tuple[tuple[tuple[str, ...], Callable[[dict[str, Any]], str]], ...] = (
    (("data", "data_sha256"), lambda o: f"--data {o.get('data')} (sha256 {_short(o.get('data_sha256'))})"),
    (("split",), lambda o: f"--split {o.get('split') or 'all'}"),
    (("k",), lambda o: f"--k {o.get('k')}"),
    (("n_masks",), lambda o: f"--masks {o.get('n_masks')}"),
    (("max_new_tokens",), lambda o: f"--max-new-tokens {o.get('max_new_tokens')}"),
    (("methods", "method_estimators"), lambda o: "--methods " + ",".join(o.get("methods") or []) + "".join(
        f" ({name} sha256 {_short(sha)})" for name, sha in (o.get("method_estimators") or {}).items())),
    (("estimator_sha256",), lambda o: f"--estimator (weights sha256 {_short(o.get('estimator_sha256'))})"),
    (("model",), lambda o: f"--model {o.get('model') or '(unnamed)'}"),
)


def describe(options: dict[str, Any], keys: set[str] | None = None) -> str:
    """``options`` (or only those among ``keys``) as the command-line flags that set them."""
    return " ".join(render(options) for names, render in _FLAGS if keys is None or keys.intersection(names))


def prepare_rows_file(path: str | os.PathLike, stored: EvaluationRows, options: dict[str, Any]) -> None:
    """Make ``path`` ready for appending: the header of ``options`` first, no cut-off last line, a final
    newline. Rewritten atomically, and only when one of those is missing."""
    old = Path(path).read_bytes() if os.path.exists(path) else b""
    header = (json.dumps({"format": ROWS_FORMAT, "options": options}) + "\n").encode()
    if stored.cut_line is not None:
        warnings.warn(
            f"{path}:{stored.cut_line}: dropped a cut off last row (an interrupted run); its example is evaluated again",
            stacklevel=3,
        )
    if not stored.rows:
        content = header
    else:
        content = old[: stored.good_bytes]
        content += b"" if content.endswith(b"\n") else b"\n"
        if stored.options is None:
            warnings.warn(
                f"{path} has no options header (an older at2-rag wrote it); its rows are taken to match this run, "
                "whose options are now recorded in it",
                stacklevel=3,
            )
            content = header + content
    if content != old:
        with atomic_path(path) as tmp:
            tmp.write_bytes(content)


def append_row(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one row as one line (a crash can only cut off this last line)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


__all__ = ["ROWS_FORMAT", "EvaluationRows", "append_row", "check_same_run", "describe", "prepare_rows_file",
           "read_rows", "run_options"]
