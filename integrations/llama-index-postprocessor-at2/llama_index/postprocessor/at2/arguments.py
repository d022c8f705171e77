"""Unknown constructor arguments are errors here, not silently ignored as pydantic models do by default."""

from __future__ import annotations

import difflib
from typing import Iterable, Type

from llama_index.core.bridge.pydantic import BaseModel


def check_arguments(cls: Type[BaseModel], given: Iterable[str], extra: Iterable[str] = ()) -> None:
    """Raise TypeError naming every argument in ``given`` that is neither a field of ``cls`` nor in ``extra``."""
    valid = sorted({*cls.model_fields, *extra})
    unknown = sorted(set(given) - set(valid))
    if not unknown:
        return
    hints = [f"{name!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(name, valid, n=1))
             else repr(name) for name in unknown]
    raise TypeError(
        f"{cls.__name__} got unknown argument(s) {', '.join(hints)}; valid arguments: {', '.join(valid)}"
    )
