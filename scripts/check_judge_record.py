"""Fail when the documented tables of a distilled judge no longer match the judge's own record.

Usage: python scripts/check_judge_record.py [--page FILE] JUDGE_FOLDER [JUDGE_FOLDER ...]
Each folder is a judge written by `alignscope train-judge`; its validation, rendered as the docs
render it (alignscope.judges.card.record_tables), must appear in the page word for word. The page
is the newest docs/results/*-judges.md unless --page names another.
"""

import argparse
import sys
from pathlib import Path

from alignscope.io import read_json
from alignscope.judges import DISTILLED_MANIFEST
from alignscope.judges.card import record_tables

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--page", type=Path, default=max(RESULTS.glob("*-judges.md"), default=None))
parser.add_argument("judges", nargs="+")
args = parser.parse_args()
text = args.page.read_text()
stale = []
for folder in args.judges:
    record = read_json(Path(folder) / DISTILLED_MANIFEST)
    backbones = ", ".join(b["spec"] for b in record["backbones"])
    for table in record_tables(record["validation"]):
        if table not in text:
            stale.append(f"{folder} ({backbones}): {args.page} lacks this table, as the judge now measures it:\n{table}\n")
print("\n".join(stale) or f"{args.page} matches the records of {', '.join(args.judges)}")
sys.exit(1 if stale else 0)
