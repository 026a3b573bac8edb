"""A study's stages: each declares the files it reads (its inputs), what else decides
its outputs (its key: settings, model fingerprints), the outputs themselves, and
the work that makes them. `stages.json` records, per stage, the hash of its key and
of its inputs' contents; a stage whose outputs exist under the same hash is skipped.

The hash is built from content (file hashes, model fingerprints, settings), never
from how a path is spelled, so a study folder that is moved, or data named by
another path, is still up to date.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from alignscope.io import atomic_write_json, read_json, sha256_file, sha256_json


@dataclass
class Stage:
    name: str
    inputs: list[Path]
    """The files the work reads; their contents enter the stage's hash."""
    key: Any
    """JSON-able: everything else that decides the outputs."""
    outputs: list[Path]
    work: Callable[[], Any]
    """Makes the outputs; what it returns (JSON-able) is kept in stages.json for later stages and reports."""

    def digest(self) -> str:
        return sha256_json({"inputs": [sha256_file(p) for p in self.inputs], "key": self.key})


@dataclass
class StageLog:
    """stages.json: per stage, its key hash, outputs, seconds and result; plus the timings of this run's
    outputs (a skipped stage's are those of the run that made its outputs)."""

    path: Path
    quiet: bool = False
    records: dict = field(init=False)
    timings: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.records = read_json(self.path) if self.path.is_file() else {}

    def run(self, stage: Stage) -> Any:
        digest = stage.digest()
        record = self.records.get(stage.name)
        started = time.time()
        if record and record.get("key") == digest and all(p.exists() for p in stage.outputs):
            # the time it took to make the outputs kept: a rerun that skips the stage made nothing
            self.timings.append({"stage": stage.name, "seconds": record.get("seconds", 0.0),
                                 "status": "skipped (inputs unchanged; seconds of the run that made it)"})
            self._say(f"[{stage.name}] up to date")
            return record.get("result")
        self._say(f"[{stage.name}] running")
        result = stage.work()
        seconds = round(time.time() - started, 1)
        root = self.path.parent
        self.records[stage.name] = {"key": digest, "seconds": seconds, "result": result,
                                    "inputs": [str(_relative(p, root)) for p in stage.inputs],
                                    "outputs": [str(_relative(p, root)) for p in stage.outputs]}
        atomic_write_json(self.path, self.records)
        self.timings.append({"stage": stage.name, "seconds": seconds, "status": "ran"})
        return result

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        return path
