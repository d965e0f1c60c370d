"""Progress: bars (rich) on a terminal; off a terminal (a service's log, a CI job), a line every LOG_EVERY seconds
of long work; nothing when ROBUST_AD_QUIET is set, or in the processes of a torchrun group other than process 0."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from typing import TypeVar

from rich.progress import track as _rich_track

T = TypeVar("T")
LOG_EVERY = 30.0  # seconds between progress lines off a terminal


def enabled() -> bool:
    """A person is watching, and this is the only process or process 0 of a torchrun group."""
    return sys.stderr.isatty() and _reporting()


def _reporting() -> bool:
    return not os.environ.get("ROBUST_AD_QUIET") and os.environ.get("RANK", "0") == "0"


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar when a person is watching, else with a line now and then."""
    if enabled():
        yield from _rich_track(items, description=description, total=total, transient=True)
        return
    if not _reporting():
        yield from items
        return
    total = total if total is not None else len(items) if isinstance(items, Sized) else None
    began = last = time.monotonic()
    for done, item in enumerate(items):
        if (now := time.monotonic()) - last >= LOG_EVERY:
            of = f"/{total} ({done / total:.0%})" if total else ""
            print(f"{description}: {done}{of}, {now - began:.0f} s", file=sys.stderr, flush=True)
            last = now
        yield item
