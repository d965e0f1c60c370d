"""Atomic writes: an artifact is either complete or absent, never half written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from robust_ad.errors import OverwriteError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give artifacts the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda p: p.write_text(text))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_yaml(path: str | Path, data: Any) -> Path:
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


def prepare_output_dir(
    path: str | Path, force: bool, what: str = "output folder", protect: Iterable[str | Path] = ()
) -> Path:
    """Create ``path``; if it already holds files, refuse unless ``force`` (then clear it).

    ``protect`` lists what the command reads (input images, a dataset, a model): a folder holding any of
    them is refused even with ``force``, since clearing it would delete the user's data.
    """
    path = Path(path)
    resolved = path.resolve()
    for item in protect:
        item = Path(item).resolve()
        if item == resolved or resolved in item.parents:
            raise OverwriteError(
                f"{what} {path} holds the input {item}: choose another folder (inputs are never overwritten)"
            )
    if path.exists() and not path.is_dir():
        raise OverwriteError(f"{what} {path} exists and is not a folder")
    if path.exists() and any(path.iterdir()):
        if not force:
            raise OverwriteError(f"{what} {path} is not empty; pass --force to overwrite it")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_writable(path: str | Path, force: bool) -> Path:
    """Refuse to overwrite an existing file unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise OverwriteError(f"{path} exists; pass --force to overwrite it")
    return path
