"""Shared fixtures. Real data lives in ../shared beside the checkout (CI has it,
a user's clone does not): tests that need it skip with the reason."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ALIGNSCOPE_SHARED", ROOT.parent / "shared"))
HH_DATA = SHARED / "data" / "hh-rlhf"
REFERENCE = SHARED / "reference-study"


@pytest.fixture
def hh_data() -> Path:
    if not (HH_DATA / "harmless-base" / "test.jsonl.gz").is_file():
        pytest.skip(f"real HH-RLHF test splits not found under {HH_DATA}")
    return HH_DATA


@pytest.fixture
def reference() -> Path:
    if not (REFERENCE / "responses").is_dir():
        pytest.skip(f"reference-study artifacts not found under {REFERENCE}")
    return REFERENCE


def dialogue(*turns: str) -> str:
    """'H', 'A', 'H' ... -> an HH-RLHF dialogue string."""
    out = ""
    for i, text in enumerate(turns):
        out += f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {text}"
    return out


def write_hh(folder: Path, subset: str, split: str, rows: list, gz: bool = True) -> Path:
    """Write rows (dicts, or raw strings for broken lines) in the official layout."""
    path = folder / subset / f"{split}.jsonl{'.gz' if gz else ''}"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path
