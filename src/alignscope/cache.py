"""A content-addressed cache for answers and ratings.

One small JSON file per entry under `<cache dir>/<kind>/<key[:2]>/<key>.json`,
written atomically. Each entry carries its key and a checksum of its payload; an
entry that is unreadable, truncated, or fails either check is deleted and
recomputed, never trusted.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from alignscope.io import InputError, atomic_write_json, sha256_json


@dataclass
class ResultCache:
    root: Path
    enabled: bool = True
    stats: dict = field(default_factory=lambda: {"hits": 0, "misses": 0, "corrupt": 0})

    @staticmethod
    def key(*parts) -> str:
        return sha256_json(list(parts))

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str):
        if not self.enabled:
            return None
        path = self._path(key)
        if path.is_dir():
            raise InputError(f"{path}: a folder where a cache entry should be; remove it (anything under "
                             f"{self.root} may be deleted, it is recomputed)")
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if entry["key"] != key or entry["sha256"] != sha256_json(entry["payload"]):
                raise ValueError("checksum mismatch")
        except FileNotFoundError:
            self.stats["misses"] += 1
            return None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            self.stats["corrupt"] += 1
            self.stats["misses"] += 1
            path.unlink(missing_ok=True)
            return None
        self.stats["hits"] += 1
        return entry["payload"]

    def put(self, key: str, payload) -> None:
        if self.enabled:
            atomic_write_json(self._path(key), {"key": key, "sha256": sha256_json(payload), "payload": payload})


def disabled_cache() -> ResultCache:
    return ResultCache(Path("/nonexistent"), enabled=False)


def cached_map(cache: ResultCache, keys: list[str], compute: Callable[[list[int], Callable[[int, Any], None]], None],
               progress: Callable[[int], None] | None = None) -> tuple[list, dict]:
    """Values for `keys`: looked up, then `compute(missing, store)` for the rest.

    `compute` calls `store(i, value)` for each missing index as soon as that value is
    known, so it enters the cache at once and a killed run keeps what it finished."""
    found = [cache.get(k) for k in keys]
    missing = [i for i, f in enumerate(found) if f is None]
    started = time.time()

    def store(i: int, value) -> None:
        found[i] = value
        cache.put(keys[i], value)

    if missing:
        compute(missing, store)
        lost = [i for i in missing if found[i] is None]
        if lost:
            raise RuntimeError(f"{len(lost)} values were never stored by the computation")
    if progress and len(missing) < len(keys):
        progress(len(keys) - len(missing))
    return found, {"computed": len(missing), "cached": len(keys) - len(missing),
                   "seconds": round(time.time() - started, 2)}
