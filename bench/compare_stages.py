"""Two runs of a study, stage by stage: what each cost, and the ratio.

  python bench/compare_stages.py BASELINE NEW      # study folders (or their stages.json)

For every stage both runs ran (a stage one of them skipped shows the costs of the run that
made it, as stages.json keeps them), it prints wall seconds, CPU seconds (user + system),
minor page faults (millions) and peak memory (GB) of each run, with NEW's ratio to BASELINE's,
and flags a stage during which other processes used the CPU (its wall time is not its own).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from alignscope.stages import SHARED_CORES  # noqa: E402


def stages_of(path: str) -> dict:
    p = Path(path)
    return json.loads((p / "stages.json" if p.is_dir() else p).read_text())


def cells(record: dict) -> tuple:
    c = record.get("costs") or {}
    cpu = c["user_s"] + c["system_s"] if c else None
    return (record.get("seconds"), cpu, c.get("minor_faults", 0) / 1e6 if c else None,
            c.get("peak_memory_mb", 0) / 1024 if c else None, (c.get("other_cores") or 0) > SHARED_CORES)


def ratio(new, old) -> str:
    return f"{new / old:.2f}x" if new is not None and old else "-"


def num(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def compare(baseline: dict, new: dict) -> list[str]:
    lines = [f"{'stage':34} {'wall s':>15} {'ratio':>6} {'CPU s':>15} {'ratio':>6} {'faults M':>13} {'ratio':>6} "
             f"{'peak GB':>11}  note"]
    totals = [[0.0, 0.0], [0.0, 0.0]]
    for name in [n for n in baseline if n in new] + [n for n in new if n not in baseline]:
        old = cells(baseline[name]) if name in baseline else (None,) * 4 + (False,)
        now = cells(new[name])
        note = ", ".join(w for w, shared in (("baseline shared the CPU", old[4]), ("new shared the CPU", now[4]))
                         if shared)
        note += "" if name in baseline else ("; " if note else "") + "new stage"
        for i in (0, 1):
            if old[i] is not None and now[i] is not None:
                totals[i][0] += old[i]
                totals[i][1] += now[i]
        lines.append(f"{name[:34]:34} {num(old[0], '7.0f')} {num(now[0], '7.0f')} {ratio(now[0], old[0]):>6} "
                     f"{num(old[1], '7.0f')} {num(now[1], '7.0f')} {ratio(now[1], old[1]):>6} "
                     f"{num(old[2], '6.1f')} {num(now[2], '6.1f')} {ratio(now[2], old[2]):>6} "
                     f"{num(old[3], '5.1f')} {num(now[3], '5.1f')}  {note}")
    lines.append(f"{'all stages in both':34} {totals[0][0]:7.0f} {totals[0][1]:7.0f} {ratio(*totals[0][::-1]):>6} "
                 f"{totals[1][0]:7.0f} {totals[1][1]:7.0f} {ratio(*totals[1][::-1]):>6}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline")
    parser.add_argument("new")
    args = parser.parse_args()
    print("\n".join(compare(stages_of(args.baseline), stages_of(args.new))))


if __name__ == "__main__":
    main()
