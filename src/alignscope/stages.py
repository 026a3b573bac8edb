"""A study's stages: each declares the files it reads (its inputs), what else decides
its outputs (its key: settings, model fingerprints), the outputs themselves, and
the work that makes them. `stages.json` records, per stage, the hash of its key and
of its inputs' contents; a stage whose outputs exist under the same hash is skipped.

The hash is built from content (file hashes, model fingerprints, settings), never
from how a path is spelled, so a study folder that is moved, or data named by
another path, is still up to date.

Each stage that runs also records what it cost (`Costs`): wall and CPU seconds, minor
page faults, peak memory, the load average when it started, how many cores other
processes took meanwhile, and torch's thread count. On a small VM a stage's wall time
swings several-fold with the machine's state; these say why a slow run was slow.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
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


# other processes' average use of the CPU above which a stage's timings are called shared
SHARED_CORES = 0.25


def machine_busy_seconds() -> float | None:
    """CPU seconds every process on the machine has used since boot (Linux /proc/stat), or None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def reset_peak_memory() -> bool:
    """Linux lets a process reset its own peak RSS (VmHWM), so each stage gets its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mb(reset: bool) -> float:
    if reset:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


@dataclass
class Costs:
    """What one stage cost this process (and any children it waited for)."""

    wall_s: float
    user_s: float
    system_s: float
    minor_faults: int
    peak_memory_mb: float
    """Peak resident memory during the stage (the process's lifetime peak where it cannot be reset)."""
    load_at_start: float | None
    """The 1-minute load average as the stage started."""
    other_cores: float | None
    """Cores other processes used on average while the stage ran: above SHARED_CORES its timings are not its own."""
    threads: int | None
    """torch's intra-op threads as the stage ended (None where torch never loaded)."""

    @property
    def shared(self) -> bool:
        return self.other_cores is not None and self.other_cores > SHARED_CORES


class CostMeter:
    """Measures a stretch of work: start it, do the work, `stop()` returns its Costs."""

    def __init__(self):
        self.reset = reset_peak_memory()
        self.load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        self.busy = machine_busy_seconds()
        self.own = self._own()
        self.started = time.perf_counter()

    @staticmethod
    def _own() -> tuple[float, float, int]:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + kids.ru_utime, me.ru_stime + kids.ru_stime, me.ru_minflt + kids.ru_minflt

    def stop(self) -> Costs:
        wall = time.perf_counter() - self.started
        user, system, faults = (b - a for a, b in zip(self.own, self._own()))
        busy = machine_busy_seconds()
        other = None
        if busy is not None and self.busy is not None and wall > 0:
            other = max(0.0, (busy - self.busy) - (user + system)) / wall
        torch = sys.modules.get("torch")
        return Costs(round(wall, 1), round(user, 1), round(system, 1), int(faults),
                     round(peak_memory_mb(self.reset), 1), None if self.load is None else round(self.load, 2),
                     None if other is None else round(other, 2), torch.get_num_threads() if torch else None)


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
                                 "status": "skipped (inputs unchanged; costs of the run that made it)",
                                 "costs": record.get("costs")})
            self._say(f"[{stage.name}] up to date")
            return record.get("result")
        self._say(f"[{stage.name}] running")
        meter = CostMeter()
        result = stage.work()
        costs = asdict(meter.stop())
        seconds = round(time.time() - started, 1)
        root = self.path.parent
        self.records[stage.name] = {"key": digest, "seconds": seconds, "costs": costs, "result": result,
                                    "inputs": [str(_relative(p, root)) for p in stage.inputs],
                                    "outputs": [str(_relative(p, root)) for p in stage.outputs]}
        atomic_write_json(self.path, self.records)
        self.timings.append({"stage": stage.name, "seconds": seconds, "status": "ran", "costs": costs})
        return result

    def plan(self, names: list[str]) -> str:
        """What a run will do, before it starts: each stage, whether an earlier run left its outputs
        (its key is checked when it is reached), and what it cost then."""
        lines, known, todo = [f"plan: {len(names)} stages ({self.path.parent})"], 0.0, 0.0
        width = max(map(len, names))
        for name in names:
            record = self.records.get(name)
            if record is None:
                lines.append(f"  {name:{width}}  to run (no earlier run to estimate from)")
                continue
            done = all((self.path.parent / p).exists() for p in record.get("outputs", []))
            seconds = record.get("seconds", 0.0)
            known += seconds
            todo += 0 if done else seconds
            lines.append(f"  {name:{width}}  " + (f"done earlier ({seconds:.0f} s then)" if done else
                                                  f"to run (took {seconds:.0f} s last time)"))
        if known:
            lines.append(f"  estimate for what is left, from the last run's costs: {todo / 60:.1f} min")
        return "\n".join(lines)

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)


def _relative(path: Path, root: Path) -> Path:
    try:
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        return path
