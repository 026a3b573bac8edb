"""A user's own prompts: CSV, JSONL, JSON (a list of objects) or Parquet, with a prompt column
and a category column (or one category for all). A bad row fails with its file and line (row,
for Parquet)."""

from __future__ import annotations

import json
from pathlib import Path

from alignscope.io import InputError, read_csv_rows, read_json, sha256_file

FORMATS = (".csv", ".jsonl", ".json", ".parquet")


def _records(path: Path) -> list[tuple[str, dict]]:
    """(where, row) for every row: `line N` for text formats, `row N` for Parquet."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return [(f"line {line}", row) for line, row in read_csv_rows(path)]
    if suffix == ".jsonl":
        out = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    out.append((f"line {n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
        return out
    if suffix == ".json":
        doc = read_json(path)
        if not isinstance(doc, list):
            raise InputError(f"{path}: expected a JSON list of objects")
        return [(f"item {i}", row) for i, row in enumerate(doc)]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return [(f"row {i}", row) for i, row in enumerate(pq.read_table(path).to_pylist())]
    raise InputError(f"{path}: expected a {', '.join(FORMATS)} file")


def read_prompt_file(path: Path, prompt_column: str, category_column: str | None,
                     type_column: str | None = None) -> tuple[list[dict], dict]:
    if not path.is_file():
        raise InputError(f"{path}: prompt file not found")
    rows = []
    for where, row in _records(path):
        if not isinstance(row, dict):
            raise InputError(f"{path}: {where}: expected an object with a {prompt_column!r} field")
        for column in filter(None, (prompt_column, category_column, type_column)):
            value = row.get(column)
            if not isinstance(value, str) or not value.strip():
                got = "missing" if column not in row else f"{value!r}"
                raise InputError(f"{path}: {where}: column {column!r} must be a non-empty string, got {got}")
        rows.append({"id": str(row.get("id", len(rows) + 1)), "text": row[prompt_column],
                     "category": row[category_column] if category_column else None,
                     "type": row[type_column] if type_column else None, "_order": len(rows)})
    if not rows:
        raise InputError(f"{path}: no prompts")
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: ids repeat (e.g. {next(i for i in ids if ids.count(i) > 1)!r}); each row needs its own")
    return rows, {"source": str(path), "path": str(path), "sha256": sha256_file(path), "revision": None,
                  "rows": len(rows)}
