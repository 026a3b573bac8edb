"""Fail when the documented validation of the refusal measures no longer matches their cards.

Usage: python scripts/check_refusal_record.py [--page FILE] CARD_FOLDER [CARD_FOLDER ...]
Each folder is a card written by `alignscope refusal-card` on XSTest's three labelled files; its row
(the measure, pooled Cohen's kappa on the answers whole and cut, with their intervals, the kappa per
model, and the error on a difference) must appear in the page word for word. The page is the newest
docs/results/*-refusals.md unless --page names another. `make refusal-record` makes the cards.
"""

import argparse
import sys
from pathlib import Path

from alignscope.io import read_json

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
HEADER = ("| refusal measure | predictions | pooled kappa, whole [95% CI] | cut to the first tokens [95% CI] | "
          "kappa per model, whole | error on a difference, whole |\n| --- | --- | --- | --- | --- | --- |")


def row(card: dict) -> str:
    def kappa(a: dict) -> str:
        lo, hi = a["kappa_ci"]
        return f"{a['kappa']:.2f} [{lo:.2f}, {hi:.2f}]"

    pooled = card["pooled"]["measure"]
    per_model = ", ".join(f"{f['model']} {f['measure']['whole']['kappa']:.2f}" for f in card["files"])
    how = sorted({f["predictions"] for f in card["files"]})
    error = card["difference_error"]["whole"] if card.get("difference_error") else None
    return (f"| {card['measure']['name']} | {'; '.join(how)} | {kappa(pooled['whole'])} | {kappa(pooled['cut'])} | "
            f"{per_model} | {'-' if error is None else f'{error:.0f} points'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--page", type=Path, default=max(RESULTS.glob("*-refusals.md"), default=None))
    parser.add_argument("cards", nargs="+")
    args = parser.parse_args()
    rows = [row(read_json(Path(folder) / "refusal-card.json")) for folder in args.cards]
    print(HEADER + "\n" + "\n".join(rows))
    text = args.page.read_text() if args.page and args.page.is_file() else ""
    stale = [r for r in rows if r not in text]
    for r in stale:
        print(f"\n{args.page} lacks this row, as the card now measures it:\n{r}")
    sys.exit(1 if stale else 0)


if __name__ == "__main__":
    main()
