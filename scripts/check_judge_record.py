"""Fail when the README's tables of a distilled judge no longer match the judge's own record.

Usage: python scripts/check_judge_record.py JUDGE_FOLDER [JUDGE_FOLDER ...]
Each folder is a judge written by `alignscope train-judge`; its validation, rendered as the README
renders it (alignscope.judges.card.record_tables), must appear in README.md word for word.
"""

import sys
from pathlib import Path

from alignscope.judges.card import record_tables
from alignscope.io import read_json
from alignscope.judges import DISTILLED_MANIFEST

readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
stale = []
for folder in sys.argv[1:]:
    record = read_json(Path(folder) / DISTILLED_MANIFEST)
    backbones = ", ".join(b["spec"] for b in record["backbones"])
    for text in record_tables(record["validation"]):
        if text not in readme:
            stale.append(f"{folder} ({backbones}): README.md lacks this table, as the judge now measures it:\n{text}\n")
print("\n".join(stale) or f"README.md matches the records of {', '.join(sys.argv[1:])}")
sys.exit(1 if stale else 0)
