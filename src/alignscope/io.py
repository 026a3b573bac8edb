"""Small file helpers every stage shares: atomic writes and content hashes.

An artifact is written to a temporary file (or folder) beside its target and
renamed into place, so a run killed mid-write leaves either the old artifact or
the new one, never half of one. Readers can therefore trust anything that exists.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


class InputError(ValueError):
    """Bad user input: the message names the file, line or field and what was expected."""


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
    """An output folder that exists or can be made: not a file, nor under one."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise InputError(f"{path}: cannot use as an output folder, {p} is a file")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    _check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON: a NaN or infinity is a bug upstream (write null and say why), never written."""
    try:
        text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"{path}: refusing to write a non-finite number ({e}); write null instead") from None
    return atomic_write_text(path, text + "\n")


def atomic_folder(target: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Build a folder in a temporary sibling with `write(tmp)`, then swap it in whole."""
    target = Path(target)
    check_output_dir(target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        write(tmp)
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


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
