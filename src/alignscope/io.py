"""Small file helpers every stage shares: atomic writes, content hashes, the name rule.

An artifact is written to a temporary file (or folder) beside its target and
renamed into place, so a run killed mid-write leaves either the old artifact or
the new one, never half of one. Readers can therefore trust anything that exists.
A folder swapped in whole carries a marker (its kind and the hash of each file),
and only a folder whose marker checks out is ever replaced: anything else in its
place is the user's, and is refused. A write the system refuses (a full disk, a
read-only file system) is an InputError naming the path and the reason.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import re
import reprlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


class InputError(ValueError):
    """Bad user input: the message names the file, line or field and what was expected."""


# Names that become parts of file names (models, variants, suites): no separators, no
# "..", nothing a markdown table or a shell would read as syntax.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9.-]*"
_NAME = re.compile(rf"^{NAME_PATTERN}$")
FOLDER_MARKER = ".alignscope-folder.json"


def check_name(value, what: str) -> str:
    """`value` if it may be part of a file name, else an InputError naming `what` and the rule."""
    if not isinstance(value, str) or not _NAME.match(value) or len(value) > 100:
        raise InputError(f"{what}: {excerpt(value)} is not a name; names match {NAME_PATTERN} (letters, digits, "
                         "'-' and '.', starting with a letter or digit; at most 100 characters)")
    return value


def excerpt(value) -> str:
    """A bounded repr of a user's value for an error message, whatever its size."""
    short = reprlib.Repr()  # Python 3.11's takes no arguments
    short.maxlevel, short.maxlist, short.maxdict, short.maxstring, short.maxother, short.maxlong = 2, 4, 4, 60, 60, 40
    return short.repr(value)


@contextlib.contextmanager
def reported_os_errors(path):
    """An OSError while writing `path` (no space, read-only, no permission) as an InputError that names
    the file and the system's reason, instead of a traceback."""
    try:
        yield
    except OSError as e:
        where = e.filename if isinstance(e.filename, str) else path
        raise InputError(f"{where}: cannot write ({e.strerror or e})") from None


def _umask() -> int:
    """The process umask. Read from /proc where it can be: setting it to learn it, the only
    portable way, briefly changes it for every thread."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_target(path: Path) -> None:
    """Say plainly when an output path cannot be written, before anything is computed into it."""
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise InputError(f"{path}: cannot write here, {parent} is a file, not a folder")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected a file path")


def check_output_dir(path: str | os.PathLike) -> Path:
    """An output folder that exists or can be made, checked before any work: not empty, not a file nor
    under one, and on a file system that takes writes."""
    if not str(path):
        raise InputError("an empty output folder was given; name the folder (use . for this one)")
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise InputError(f"{path}: cannot use as an output folder, {p} is a file")
    existing = next(p for p in (path, *path.parents, Path(".")) if p.exists())
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise InputError(f"{path}: cannot write, {existing} is on a read-only file system")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{path}: cannot write, permission denied on {existing}")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    _check_target(path)
    with reported_os_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_then_rename(path, data)
    return path


def _write_then_rename(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; the file should get what a plain open() would give it
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON: a NaN or infinity is a bug upstream (write null and say why), never written."""
    try:
        text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"{path}: refusing to write a non-finite number ({e}); write null instead") from None
    return atomic_write_text(path, text + "\n")


def atomic_folder(target: str | os.PathLike, write: Callable[[Path], Any], kind: str,
                  legacy_files: tuple[str, ...] = ()) -> Path:
    """Build a folder of this `kind` in a temporary sibling with `write(tmp)`, mark it, then swap it in
    whole. A folder already there is replaced only when it is one alignscope wrote (see `check_replaceable`).
    A symlink to a folder stays a link: the folder it points to is the one replaced."""
    target = Path(target)
    if target.is_symlink():
        target = target.resolve()
    check_output_dir(target.parent)
    check_replaceable(target, kind, legacy_files)
    with reported_os_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
        try:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
            write(tmp)
            atomic_write_json(tmp / FOLDER_MARKER, {"kind": kind, "files": folder_hashes(tmp)})
            replace_folder(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def folder_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` but the marker, by relative path."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != FOLDER_MARKER}


def check_replaceable(target: Path, kind: str, legacy_files: tuple[str, ...] = ()) -> None:
    """Refuse to replace `target` unless it is absent, empty, or carries alignscope's marker for
    this kind and holds exactly the files the marker lists, unchanged: anything else may be
    the user's, and replacing the folder would delete it. A folder written before folders were
    marked passes if it holds nothing but files named in `legacy_files`."""
    if not target.exists():
        return
    if not target.is_dir():
        raise InputError(f"{target}: is a file; expected a folder ({kind}) to write")
    if not any(target.iterdir()):
        return
    if legacy_files and not (target / FOLDER_MARKER).exists() and all(
            p.is_file() and p.name in legacy_files for p in target.iterdir()):
        return
    why = None
    try:
        marker = json.loads((target / FOLDER_MARKER).read_text(encoding="utf-8"))
        if not isinstance(marker, dict) or marker.get("kind") != kind:
            why = f"its {FOLDER_MARKER} is not that of a {kind}"
        elif marker.get("files") != folder_hashes(target):
            extra = sorted(set(folder_hashes(target)) - set(marker.get("files") or {}))
            why = (f"it holds files alignscope did not write there (e.g. {extra[0]})" if extra else
                   "its files changed since alignscope wrote them")
    except (OSError, ValueError):
        why = f"it holds files but no {FOLDER_MARKER} that alignscope writes in each folder it makes"
    if why:
        raise InputError(f"{target}: would be replaced whole by a new {kind}, but {why}; "
                         "choose a new or empty folder, or remove this one yourself")


def replace_folder(tmp: Path, target: Path) -> None:
    """Put folder `tmp` in place of `target`. The old folder is first renamed aside and only
    then deleted, so a reader or a concurrent writer finds the old folder, a whole new one,
    or (for an instant) none: never half of one, and never a folder deleted under it."""
    for _ in range(10):
        aside = None
        if target.exists():
            aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old."))
            try:
                os.rename(target, aside)  # onto an empty folder: allowed, and atomic
            except FileNotFoundError:  # another writer moved it first
                aside.rmdir()
                aside = None
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.exists():
                raise
            continue  # another writer's folder got in first: move it aside in turn
        finally:
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
        return
    raise OSError(f"{target}: could not be replaced, other writers kept replacing it")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder; expected a JSON file") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None


def read_csv_rows(path: Path, columns: tuple[str, ...] = (), layout: str = "") -> list[tuple[int, dict]]:
    """(line number, row) for each row of a CSV file, refusing one without `columns` (`layout` says
    what file was expected). The line is where the row ends, as csv counts it: a quoted field may span lines."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: line 1: missing column(s) {', '.join(missing)}; {layout}")
        return [(reader.line_num, row) for row in reader]


def finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object, independent of key order."""
    return sha256_text(json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")))
