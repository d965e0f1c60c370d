"""Progress bars (rich), quiet when not attached to a terminal or when ROBUST_AD_QUIET is set."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import track as _rich_track

T = TypeVar("T")


def enabled() -> bool:
    """A person is watching, and this is the only process or process 0 of a torchrun group."""
    return sys.stderr.isatty() and not os.environ.get("ROBUST_AD_QUIET") and os.environ.get("RANK", "0") == "0"


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar when a person is watching."""
    if not enabled():
        yield from items
        return
    yield from _rich_track(items, description=description, total=total, transient=True)
