"""A content-addressed cache for generations and scores.

One small JSON file per entry under `<cache dir>/<kind>/<key[:2]>/<key>.json`,
written atomically. Each entry carries its key and a checksum of its payload; an
entry that is unreadable, truncated, or fails either check is deleted and
recomputed, never trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from alignscope.io import atomic_write_json, sha256_json


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
