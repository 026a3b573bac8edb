"""What a stage costs is recorded, and the allocator setting keeps freed memory."""

import json
import mmap
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alignscope.report import timings_table
from alignscope.stages import Stage, StageLog

PAGE = os.sysconf("SC_PAGE_SIZE")
linux = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")


def busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


@linux
def test_each_stage_records_its_own_cpu_faults_and_peak_memory(tmp_path):
    log = StageLog(tmp_path / "stages.json", quiet=True)
    size = 256 * 2**20

    def touch() -> None:
        # 256 MB of fresh anonymous memory written once: one fault per page (malloc might reuse freed pages)
        block = mmap.mmap(-1, size)
        for offset in range(0, size, PAGE):
            block[offset] = 1
        block.close()

    log.run(Stage("touch", [], 1, [], touch))
    log.run(Stage("spin", [], 2, [], lambda: busy(0.5)))
    log.run(Stage("sleep", [], 3, [], lambda: time.sleep(0.5)))
    touched, spun, slept = (t["costs"] for t in log.timings)
    assert touched["minor_faults"] >= 0.9 * size / PAGE
    assert spun["minor_faults"] < 0.1 * size / PAGE
    # the peak is the stage's own: it is reset as each stage starts
    assert touched["peak_memory_mb"] - spun["peak_memory_mb"] > 200
    assert spun["user_s"] + spun["system_s"] >= 0.4 and slept["user_s"] + slept["system_s"] <= 0.1
    assert slept["wall_s"] >= 0.5
    records = json.loads((tmp_path / "stages.json").read_text())
    assert records["touch"]["costs"] == touched


def test_a_skipped_stage_reports_the_costs_of_the_run_that_made_it(tmp_path):
    out = tmp_path / "out.txt"
    stage = Stage("spin", [], 1, [out], lambda: (busy(0.3), out.write_text("x"))[1])
    first = StageLog(tmp_path / "stages.json", quiet=True)
    first.run(stage)
    again = StageLog(tmp_path / "stages.json", quiet=True)
    again.run(stage)
    assert again.timings[0]["costs"] == first.timings[0]["costs"]
    assert again.timings[0]["status"].startswith("skipped")


def test_the_timings_table_gives_the_costs_and_names_a_stage_that_shared_the_cpu():
    costs = {"wall_s": 12.0, "user_s": 20.4, "system_s": 3.6, "minor_faults": 2_500_000, "peak_memory_mb": 3072.0,
             "load_at_start": 0.5, "other_cores": 0.9, "threads": 2}
    text = timings_table([{"stage": "train x", "seconds": 12.0, "status": "ran", "costs": costs},
                          {"stage": "generate x", "seconds": 5.0, "status": "ran", "costs": costs | {"other_cores": 0.1}},
                          {"stage": "total", "seconds": 17.0, "status": ""}])
    rows = [line for line in text.splitlines() if line.startswith("| train") or line.startswith("| generate")]
    assert rows[0] == ("| train x | 12.0 | 20 | 4 | 2.50 | 3.0 | 0.5 | 2 | "
                       "ran; shared the CPU: other processes used 0.9 cores |")
    assert rows[1].endswith("| 2 | ran |")


MIXED_SIZES = """
import json, random, resource
from alignscope.memory import keep_freed_memory
done = keep_freed_memory()
import torch
random.seed(0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):  # blocks of varying sizes above glibc's largest mmap threshold, as activations come
    n = random.randint(8, 80) * 2**20 // 4
    a = torch.ones(n); b = torch.ones(n // 2)
    del a, b
print(json.dumps({"done": done, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def mixed_sizes(setting: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ALIGNSCOPE_MALLOC", "LD_PRELOAD")}
    if setting:
        env["ALIGNSCOPE_MALLOC"] = setting
    out = subprocess.run([sys.executable, "-c", MIXED_SIZES], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@linux
def test_freed_memory_is_kept_by_default_and_system_leaves_glibc_as_it_was():
    default, system = mixed_sizes(None), mixed_sizes("system")
    if not default["done"].startswith("glibc"):
        pytest.skip(default["done"])
    assert system["done"] == "system allocator (ALIGNSCOPE_MALLOC=system)"
    # 40 rounds of 12-120 MB (~2.6 GB, ~640k pages): faulted in afresh by glibc as it is, reused when kept
    assert system["faults"] > 400_000 and default["faults"] < 0.2 * system["faults"]
