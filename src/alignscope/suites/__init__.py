"""Evaluation suites beyond the study's HH sample: XSTest and any prompt file a user brings.

A suite is a list of single-turn prompts, each with a category (XSTest: `safe`,
`unsafe`) and, where the source has one, a type (XSTest's 18 prompt types). A
seeded subsample fits a budget, stratified by type so that every kind of prompt
stays in it. What was read is recorded (source, path, sha256, seed, rows), and
a bad row fails with its file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from alignscope.io import InputError, check_name
from alignscope.suites.prompt_file import read_prompt_file
from alignscope.suites.xstest import XSTEST_CATEGORIES, read_xstest, xstest_path

SuiteKind = Literal["xstest", "prompts"]


@dataclass
class SuiteConfig:
    """One evaluation suite: where its prompts come from and how many of them to ask."""

    name: str
    """Names the suite's answer files (`<i>_<model>_suite-<name>.json`): letters, digits, '.' and '-'."""
    kind: SuiteKind = "xstest"
    """`xstest`: XSTest's prompts (safe ones measure over-refusal, unsafe contrasts unsafe compliance);
    `prompts`: a CSV, JSONL, JSON or Parquet file with a prompt and a category column."""
    source: str = "hub"
    """xstest: `hub` (Paul/XSTest), a folder holding xstest_prompts.csv, or the file itself; prompts: the file."""
    per_category: Annotated[int, Field(ge=1)] | None = None
    """Ask at most this many prompts of each category, a seeded sample stratified by type; empty: all."""
    seed: Annotated[int, Field(ge=0)] = 0
    prompt_column: str = "prompt"
    category_column: str | None = "category"
    """prompts: the column holding each row's category ..."""
    category: str | None = None
    """... or one category for every row, when the file has none."""
    type_column: str | None = None
    """prompts: a column to stratify the sample by (XSTest: its `type`)."""
    revision: str | None = None
    """Hub revision of Paul/XSTest to pin."""


def check_suite_name(name: str, where: str = "suite") -> None:
    check_name(name, f"{where}: suite name")


def stratified_sample(rows: list[dict], n: int, seed: int) -> list[dict]:
    """n rows drawn with scikit-learn's stratified split (types in proportion), kept in file order."""
    if n >= len(rows):
        return rows
    types = [r.get("type") or "" for r in rows]
    from sklearn.model_selection import train_test_split

    stratify = types if len(set(types)) > 1 and min(types.count(t) for t in set(types)) > 1 else None
    picked, _ = train_test_split(list(range(len(rows))), train_size=n, random_state=seed, stratify=stratify)
    return [rows[i] for i in sorted(picked)]


def local_file(cfg: SuiteConfig) -> Path | None:
    """The file a suite reads, where it is local (a hub download is pinned by its revision instead)."""
    if cfg.source == "hub":
        return None
    return xstest_path(cfg.source) if cfg.kind == "xstest" else Path(cfg.source)


def load_suite(cfg: SuiteConfig) -> tuple[list[dict], dict]:
    """The suite's prompts as {"id", "text", "category", "type"} rows, and where they came from."""
    check_suite_name(cfg.name, f"suite {cfg.name!r}")
    if cfg.kind == "xstest":
        rows, info = read_xstest(cfg.source, cfg.revision)
    else:
        if cfg.source == "hub":
            raise InputError(f"suite {cfg.name!r}: a `prompts` suite reads a file; set its source")
        if not cfg.category_column and not cfg.category:
            raise InputError(f"suite {cfg.name!r}: give category_column or one category for every row")
        rows, info = read_prompt_file(Path(cfg.source), cfg.prompt_column,
                                      None if cfg.category else cfg.category_column, cfg.type_column)
        for row in rows:
            row["category"] = cfg.category or row["category"]
    categories = list(dict.fromkeys(r["category"] for r in rows))
    picked = rows
    if cfg.per_category:
        picked = [r for c in categories for r in stratified_sample([r for r in rows if r["category"] == c],
                                                                    cfg.per_category, cfg.seed)]
        picked.sort(key=lambda r: r["_order"])
    for r in picked:
        r.pop("_order", None)
    info = {**info, "kind": cfg.kind, "seed": cfg.seed, "per_category": cfg.per_category,
            "categories": {c: sum(r["category"] == c for r in picked) for c in categories},
            "procedure": ("every row" if not cfg.per_category else
                          "per category, sklearn train_test_split(train_size=per_category, random_state=seed, "
                          "stratify=type), kept in file order")}
    return picked, info


__all__ = ["SuiteConfig", "XSTEST_CATEGORIES", "check_suite_name", "load_suite", "local_file"]
