"""Checks the CLI runs at its boundary, before any model loads: options, input files, output paths.

Each raises :class:`~at2_rag.errors.InputError` with one line naming the problem and the fix, so a
mistake costs a second, not a model load followed by a traceback.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import InputError
from ..refine import check_refine_ablations
from ..research import options


def _argument(convert, rule, what: str):
    """An argparse type: ``convert`` the text, then apply the research entry points' own ``rule``
    (so an option is checked by the same rule at the CLI and at the API)."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        try:
            return rule("", value)
        except InputError as e:
            raise argparse.ArgumentTypeError(str(e).strip()) from None

    parse.__name__ = what.replace(" ", "_")  # argparse names the type in its messages
    return parse


def at_least(minimum: int):
    """argparse type: a whole number ≥ ``minimum``."""
    return _argument(int, lambda name, value: options.at_least(name, value, minimum), "a whole number")


positive_int = at_least(1)
masks_count = _argument(int, lambda name, value: options.mask_count(value), "a whole number")
"""Random ablations: a correlation across masks needs at least two (the research rule)."""
open_fraction = _argument(float, options.open_fraction, "a number between 0 and 1")
"""argparse type: a keep probability, strictly between 0 and 1."""
refine_ablations = _argument(int, lambda name, value: check_refine_ablations(value, "--refine", allow_zero=True),
                             "a whole number")
"""argparse type: AT2 + N ablations, 0 (AT2 alone) or at least 2."""
estimator_kinds = _argument(lambda text: tuple(k.strip() for k in text.split(",") if k.strip()),
                            lambda name, value: options.estimator_kinds(value), "a comma-separated list")
"""argparse type: estimator kinds, e.g. ``answer,query,support``."""


def text_argument(value: str) -> str:
    """argparse type of a text argument (a question, an answer): valid Unicode, so it can be tokenised
    and written back as UTF-8; an undecodable byte (a lone surrogate, as Python passes it on) is refused."""
    bad = next((i for i, c in enumerate(value) if "\ud800" <= c <= "\udfff"), None)
    if bad is not None:
        raise argparse.ArgumentTypeError(
            f"is not valid UTF-8 text (an undecodable byte at character {bad}); pass UTF-8 text"
        )
    return value


def model_options(args: argparse.Namespace) -> None:
    """``--model``, ``--device`` and ``--dtype`` checked by the loader's own rules before anything runs or
    loads. A device need only exist here when this process loads the model (not for ``train-data --ray``,
    whose workers do); ``train`` reads only the model's config, so its folder need hold no weights."""
    from ..models import check_model, parse_device, resolve_device, resolve_dtype

    loads_here = not (args.command == "train-data" and getattr(args, "ray", None) is not None)
    if hasattr(args, "device"):
        device = resolve_device(args.device) if loads_here else parse_device(args.device)
        resolve_dtype(args.dtype, device)
    check_model(args.model, weights=hasattr(args, "device"))


def input_file(path: str, what: str) -> Path:
    """An existing regular file that can be read."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} {path} does not exist")
    if not p.is_file():
        raise InputError(f"{what} {path} is not a regular file (a directory?); pass a file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{what} {path} is not readable (permissions); fix them or pass another file")
    return p


def read_text_file(path: str, what: str = "document file") -> str:
    """A UTF-8 text file's contents (a BOM is dropped), or one line saying why it cannot be used."""
    p = input_file(path, what)
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(
            f"{what} {path} is not UTF-8 text (byte {e.start}); convert it, e.g. `iconv -t UTF-8 {path}`"
        ) from None
    except OSError as e:
        raise InputError(f"{what} {path} cannot be read ({e.strerror or e})") from None


def estimator_file(value: str | None, kind: str = "answer") -> None:
    """An ``--estimator`` that is a path (not a shipped name or 'none') must exist; a shipped name must
    be of ``kind`` (checked from its file, before any model loads)."""
    from ..estimator import Estimator, installed_names

    if value is None or value == "default":
        return
    if value in installed_names():
        Estimator.load(value).check_kind(kind)
        return
    p = Path(value)
    if p.suffix == ".safetensors" or os.sep in value or p.exists():
        input_file(value, "estimator file")
        return
    raise InputError(
        f"no estimator named {value!r}: pass a .safetensors file, 'none', or one of {installed_names()}"
    )


def output_file(path: str | None, what: str) -> None:
    """The folder of an output file must exist and be writable, and the path must not be a folder."""
    if path is None:
        return
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise InputError(f"{what} {path} is a directory; pass a file name")
    if p.exists() and not p.is_file():
        raise InputError(f"{what} {path} is not a regular file (a device or FIFO?); pass a file name")
    if not folder.is_dir():
        raise InputError(f"the folder of {what} {path} does not exist; create {folder} first")
    if not os.access(folder, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise InputError(f"{what} {path} cannot be written (permissions); choose another path")


def kept_chunks(keep: int | None, top_k: int) -> int:
    """``--keep`` against ``--top-k``: no more chunks kept than retrieved; None (not given) keeps the
    default number, at most ``top_k``."""
    from .pipeline import DEFAULT_KEEP

    if keep is None:
        return min(DEFAULT_KEEP, top_k)
    if keep > top_k:
        raise InputError(
            f"--keep {keep} is more than --top-k {top_k}: pruning keeps some of the retrieved chunks; "
            f"lower --keep or raise --top-k"
        )
    return keep
