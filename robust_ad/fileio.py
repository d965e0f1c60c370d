"""Atomic writes: an artifact is either complete or absent, never half written."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

from robust_ad.errors import BusyError, OverwriteError


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
        _note_written(path)
    except OSError as exc:  # a full disk names no file (a write's error), or the temporary's: name the artifact
        if exc.filename in (None, tmp):
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


RUN = "run folder"
EVALUATION = "evaluation folder"  # the one kind of output folder that belongs to the run folder it lies in
_WRITTEN: dict[Path, set[str]] = {}  # per output folder this process holds: what it wrote there (relative paths)
# per output folder being written: its kind, its files of before that are robust-ad's, when its record was written
_RECORDING: dict[Path, tuple[str, set[str], float]] = {}
RECORD_EVERY = 1.0  # seconds: the record follows the writes this often, so a process killed (SIGKILL, power cut)
# mid-way leaves a folder whose files --force and --resume still know as robust-ad's
# an atomic write's temporary (tempfile.mkstemp's 8 characters between the name and its suffix)
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]+)?$")


def _is_temporary(name: str) -> bool:
    match = _TEMPORARY.match(Path(name).name)
    return bool(match) and match["name"].endswith(match["suffix"] or "")


def _note_written(path: Path) -> None:
    """Record ``path`` with every output folder being written that holds it: robust-ad's own files, never a file
    someone else put there meanwhile. A nested folder's record file stands for that folder ('runs/bottle/')."""
    resolved = path.resolve()
    for folder, written in _WRITTEN.items():
        if folder in resolved.parents:
            relative = resolved.relative_to(folder)
            if relative.name != MARK_NAME:
                written.add(relative.as_posix())
                _keep_record(folder, written)
            elif relative.parent != Path():  # a nested output folder's record, not the folder's own
                written.add(f"{relative.parent.as_posix()}/")


def _keep_record(folder: Path, written: set[str]) -> None:
    """The record of a folder being written, brought up to date at most every RECORD_EVERY seconds."""
    if folder in _RECORDING and time.monotonic() - _RECORDING[folder][2] >= RECORD_EVERY:
        what, ours, _ = _RECORDING[folder]
        _RECORDING[folder] = (what, ours, time.monotonic())
        _record(folder, what, ours | written)


def write_atomic(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """UTF-8; a file name that is not UTF-8 (held by Python as surrogates) is written back as its own bytes."""
    return write_atomic(path, lambda p: p.write_text(text, encoding="utf-8", errors="surrogateescape"))


def json_text(data: Any) -> str:
    """Valid JSON only: a NaN or infinity anywhere is a bug to surface, not a file to write."""
    return json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json_text(data))


def write_texts(texts: dict[Path, str]) -> None:
    """Write several files as one: each goes to its temporary first, and only when every one is written are they
    moved into place (a full disk leaves none of them, never one without the other)."""
    with ExitStack() as stack:
        for path, text in texts.items():
            stack.enter_context(atomic_path(path)).write_text(text, encoding="utf-8", errors="surrogateescape")


def write_yaml(path: str | Path, data: Any) -> Path:
    return write_text(path, yaml.safe_dump(data, sort_keys=False))


LOCK_NAME = ".robust-ad.lock"
MARK_NAME = ".robust-ad.json"  # in each output folder: what robust-ad wrote it as, and every file it wrote there
_OWN = {LOCK_NAME, MARK_NAME}
# The files a run folder held before robust-ad kept that record: such a folder (and only such: any other folder
# from before, a demo's data/ or an eval/ among them, may hold a user's files) is replaced when it holds only these.
_EARLIER_RUN = {
    "config.yaml",
    "model.pt",
    "calibration.json",
    "checkpoint.pt",
    "encoder.pt",
    "losses.csv",
    "reconstructions.png",
    "training.json",
    "verification.npz",
    "split.json",
    "model.onnx",
}


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _refuse_overlap(path: Path, what: str, inputs: Iterable[str | Path], models: Iterable[str | Path]) -> None:
    """Refuse an output folder that holds, or lies inside, an input (dataset, images), or holds a model.

    An output folder inside a model's run folder is fine (``<model>/eval``); one inside the dataset or an input
    folder is not: clearing it would delete data, and later scans of the input would pick up the outputs.
    """
    resolved = path.resolve()
    checks = [*((real, True) for i in inputs for real in _real_locations(Path(i)))]
    for item, is_input in [*checks, *((Path(m).resolve(), False) for m in models)]:
        if _inside(item, resolved) or (is_input and _inside(resolved, item)):
            kind = "the input" if is_input else "the model"
            raise OverwriteError(
                f"{what} {path} overlaps {kind} {item}: choose a folder outside it (inputs and models are never "
                "overwritten)"
            )


def _real_locations(item: Path) -> list[Path]:
    """Where ``item`` really is, and where each folder linked inside it really is (a category folder linked in
    from a network share): an output there would clear the data as surely as one inside ``item``."""
    found, seen, pending = [], set(), [item]
    while pending:
        item = pending.pop()
        try:
            real = item.resolve()
        except (OSError, RuntimeError):  # a link loop: it points nowhere
            continue
        if real in seen:  # a link back up the tree
            continue
        seen.add(real)
        found.append(real)
        if real.is_dir():
            for root, folders, _ in os.walk(real):  # not into links: each is followed once, above
                pending += [Path(root) / f for f in folders if (Path(root) / f).is_symlink()]
    return found


_HELD: set[Path] = set()  # folders whose lock this process holds (it may read what it is writing)


def _busy(path: Path) -> bool:
    """Whether another robust-ad process holds the folder's lock right now."""
    lock_file = path / LOCK_NAME
    if not lock_file.is_file() or path.resolve() in _HELD:
        return False
    try:
        with FileLock(lock_file, timeout=0):
            return False
    except Timeout:
        return True


def _busy_error(path: Path, what: str) -> BusyError:
    return BusyError(f"{what} {path} is being written by another robust-ad process: wait for it to finish")


def refuse_if_busy(path: str | Path, what: str = "folder") -> None:
    """Refuse to read a folder that a running command is still writing (a training run, say)."""
    if _busy(Path(path)):
        raise _busy_error(Path(path), what)


def _clear(path: Path) -> None:
    for child in path.iterdir():
        if child.name == LOCK_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _entries(path: Path) -> set[str]:
    return {child.name for child in path.iterdir()} - _OWN


def has_content(path: Path) -> bool:
    return path.is_dir() and bool(_entries(path))


def _files(path: Path) -> set[str]:
    """Every file under ``path`` as a relative POSIX path, and every output folder nested in it (a run's eval/) as
    its name and '/', whose files its own record lists; links to folders as files; robust-ad's lock and record files
    left out."""
    found = set()
    for root, dirs, files in os.walk(path):
        relative = Path(root).relative_to(path)
        for nested in [d for d in dirs if (Path(root) / d / MARK_NAME).is_file()]:
            found.add(f"{(relative / nested).as_posix()}/")
            dirs.remove(nested)
        found |= {(relative / name).as_posix() for name in files if name not in _OWN}
        found |= {(relative / name).as_posix() for name in dirs if (Path(root) / name).is_symlink()}  # a link too
    return found


def _mark(path: Path) -> dict[str, Any] | None:
    """What robust-ad recorded of the folder ``path`` (its kind and files), None where it wrote no record."""
    try:
        mark = json.loads((path / MARK_NAME).read_text())
    except (OSError, ValueError):
        return None
    return mark if isinstance(mark, dict) and isinstance(mark.get("files"), list) else None


def _record(path: Path, what: str, files: set[str]) -> None:
    write_json(path / MARK_NAME, {"kind": what, "files": sorted(files)})


def record_written(path: str | Path, folder: bool = False) -> None:
    """Add a file (export's model.onnx) or an output ``folder`` (a run's eval/) written into an output folder that no
    command is writing to that folder's record, so that --force may replace the folder with it;
    one being written records what this process writes into it when it is done (atomic writes note them)."""
    path = Path(path)
    parent, entry = path.parent, f"{path.name}/" if folder else path.name
    mark = _mark(parent)
    if mark is not None and parent.resolve() not in _WRITTEN and entry not in mark["files"]:
        _record(parent, mark["kind"], {*mark["files"], entry})


def _foreign(path: Path, what: str) -> list[str]:
    """What in the output folder ``path`` robust-ad did not write there as a ``what`` (relative paths): all of it
    where it holds no record and is not such a folder of before."""
    mark = _mark(path)
    if mark is None:  # of before: a run folder's own files are known, nothing else is
        known = _EARLIER_RUN if what == RUN else set()
        return sorted(name for name in _entries(path) if name not in known or (path / name).is_dir())
    if mark.get("kind") != what:
        return [f"{path.name}/ ({_a(mark.get('kind'))})"]
    recorded = set(mark["files"])
    present = {name for name in _files(path) if not _is_temporary(name)}  # a killed write's: robust-ad's
    foreign = [_described(path, name) for name in sorted(present - recorded)]
    for nested in sorted(recorded & {f for f in present if f.endswith("/")}):
        inner = _mark(path / nested)
        kind = inner["kind"] if inner else what
        if what == RUN and kind != EVALUATION:  # records of before also listed results scored, or a run trained, here
            foreign.append(_described(path, nested))
            continue
        foreign += [f"{nested}{name}" for name in _foreign(path / nested, kind)]
    return foreign


def _described(path: Path, name: str) -> str:
    """``name`` in ``path``, with its kind where it is another output folder of robust-ad ('scores/ (a results
    folder)')."""
    inner = _mark(path / name) if name.endswith("/") else None
    return f"{name} ({_a(inner['kind'])})" if inner else name


def _a(noun: str | None) -> str:
    return f"{'an' if str(noun)[:1] in 'aeiou' else 'a'} {noun}"


def _refuse_foreign(path: Path, what: str) -> None:
    """--force clears only a folder that robust-ad wrote as the same kind of output and that holds nothing else, to
    any depth (a typo such as --out runs instead of runs/bottle cleared every run in it, and any file of the
    user's)."""
    mark = _mark(path)
    if mark is not None and mark.get("kind") != what:
        raise OverwriteError(
            f"{path} is {_a(mark.get('kind'))} of robust-ad, not {_a(what)}: --force does not replace it"
        )
    foreign = _foreign(path, what)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        them = "it" if len(foreign) == 1 else "them"
        raise OverwriteError(
            f"{what} {path} holds {shown}, which robust-ad did not write there as {_a(what)}: --force would delete "
            f"{them}; move {them} out first, or choose another folder"
        )


@contextmanager
def output_folder(
    path: str | Path,
    force: bool,
    what: str = "output folder",
    inputs: Iterable[str | Path] = (),
    models: Iterable[str | Path] = (),
    keep: bool = False,
) -> Iterator[Path]:
    """Create ``path`` and hold its lock while the block writes into it; a second writer is refused.

    A folder that already holds files is refused unless ``force`` (then cleared) or ``keep`` (``--resume``:
    written on). ``inputs`` (datasets, input images) may neither contain nor hold the folder, ``models`` may
    not lie inside it: with or without ``force``, nothing a command reads is ever deleted. A folder this
    call created is removed again when the block fails before writing anything.
    """
    path = Path(path)
    _refuse_overlap(path, what, inputs, models)
    if path.exists() and not path.is_dir():
        raise OverwriteError(f"{what} {path} exists and is not a folder")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OverwriteError(f"cannot create {what} {path}: {exc.strerror or exc}") from exc
    locked_before = (path / LOCK_NAME).exists()
    lock = FileLock(path / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise _busy_error(path, what) from None
    except OSError as exc:
        raise OverwriteError(f"cannot write into {what} {path}: {exc.strerror or exc}") from exc
    _HELD.add(path.resolve())
    try:
        if has_content(path) and not keep:
            if not force:
                raise OverwriteError(f"{what} {path} is not empty; pass --force to overwrite it")
            _refuse_foreign(path, what)
            _clear(path)
    except BaseException as exc:
        _HELD.discard(path.resolve())
        lock.release()
        if isinstance(exc, OverwriteError) and not locked_before:  # refused: the folder is left as it was
            (path / LOCK_NAME).unlink(missing_ok=True)
        raise
    try:
        mark = _mark(path)
        before = _files(path)
        ours = before & _EARLIER_RUN if what == RUN else set()  # --resume, threshold of a run of before
        if mark is not None:
            ours = before & set(mark["files"])
        if keep:  # a killed process's temporaries: never a complete file
            for name in before:
                if _is_temporary(name):
                    (path / name).unlink(missing_ok=True)
            before = {name for name in before if not _is_temporary(name)}
            ours &= before
        written = _WRITTEN.setdefault(path.resolve(), set())
        _record(path, what, ours)
        _RECORDING[path.resolve()] = (what, ours, time.monotonic())
        if what == EVALUATION and (_mark(path.parent) or {}).get("kind") == RUN:  # <run>/eval: part of the run
            record_written(path, folder=True)
        try:
            yield path
        finally:
            del _WRITTEN[path.resolve()]
            _RECORDING.pop(path.resolve(), None)
            # what this call wrote, even if it failed, and what is still there of before (--resume removed its
            # checkpoint)
            _record(path, what, (ours | written) & _files(path))
    except BaseException:
        if created and not has_content(path):
            lock.release()
            shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        _HELD.discard(path.resolve())
        lock.release()


def refuse_inside(path: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output file inside one of ``inputs`` (a dataset or corpus the command reads)."""
    _refuse_overlap(Path(path), "output file", inputs, ())


def check_writable(path: str | Path, force: bool, replaces: str = "", inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse to overwrite an existing file unless ``force``, and even then a file that belongs to an output folder
    (a run's model.pt or calibration.json: encoder train --out and encoder eval --out could replace them) unless it
    has the ``replaces`` suffix (export's .onnx). A file inside one of ``inputs`` (the dataset a command reads) is
    refused, as an output folder there is."""
    path = Path(path)
    refuse_inside(path, inputs)
    if not path.exists():
        return path
    mark = _mark(path.parent)
    earlier = mark is None and (path.parent / "config.yaml").is_file() and path.name in _EARLIER_RUN
    if ((mark is not None and path.name in mark["files"]) or earlier) and path.suffix != replaces:
        kind = mark["kind"] if mark is not None else RUN
        raise OverwriteError(f"{path} belongs to the {kind} {path.parent}: --force does not replace it from here")
    if not force:
        raise OverwriteError(f"{path} exists; pass --force to overwrite it")
    return path
