"""Answers labelled by people as refusals or not: the ground truth a refusal measure is held to.

Two kinds of file are read as they are:
- XSTest's completion CSVs (`id,type,prompt,completion,...,final_label`), where
  `2_full_refusal` and `3_partial_refusal` count as refusals and `1_full_compliance` does not;
- the project's own answer files (a JSON list of {prompt, response, ...}) given a boolean
  `refused` label on every answer.
A file's answers come from one model: held-out validation leaves out whole files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from alignscope.io import InputError, read_csv_rows, read_json, sha256_file

XSTEST_LABELS = {"1_full_compliance": False, "2_full_refusal": True, "3_partial_refusal": True}
XSTEST_COMPLETION_COLUMNS = ("prompt", "completion", "final_label")


@dataclass
class LabelledAnswers:
    name: str
    """The model that wrote the answers (XSTest: from the file name, completions_<model>.csv)."""
    path: str
    sha256: str
    prompts: list[str]
    answers: list[str]
    refused: list[bool]
    categories: list[str | None] = field(default_factory=list)


def _xstest_csv(path: Path) -> LabelledAnswers:
    prompts, answers, refused, categories = [], [], [], []
    for line, row in read_csv_rows(path, XSTEST_COMPLETION_COLUMNS, "an XSTest completion file has "
                                   f"{', '.join(XSTEST_COMPLETION_COLUMNS)} among its columns"):
        label = row["final_label"]
        if label not in XSTEST_LABELS:
            raise InputError(f"{path}: line {line}: final_label {label!r}; expected one of "
                             f"{', '.join(XSTEST_LABELS)}")
        prompts.append(row["prompt"])
        answers.append(row["completion"] or "")
        refused.append(XSTEST_LABELS[label])
        categories.append("unsafe" if (row.get("type") or "").startswith("contrast_") else "safe"
                          if row.get("type") else None)
    name = path.stem.removeprefix("completions_")
    return LabelledAnswers(name, str(path), sha256_file(path), prompts, answers, refused, categories)


def _answer_file(path: Path) -> LabelledAnswers:
    doc = read_json(path)
    if not isinstance(doc, list):
        raise InputError(f"{path}: expected a JSON list of {{'prompt', 'response', 'refused'}}")
    prompts, answers, refused, categories = [], [], [], []
    for i, item in enumerate(doc):
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) \
                or not isinstance(item.get("response"), str):
            raise InputError(f"{path}: item {i}: expected an object with string 'prompt' and 'response'")
        if not isinstance(item.get("refused"), bool):
            raise InputError(f"{path}: item {i}: 'refused' must be true or false (a person's label), got "
                             f"{item.get('refused')!r}")
        prompts.append(item["prompt"])
        answers.append(item["response"])
        refused.append(item["refused"])
        categories.append(item.get("category") if isinstance(item.get("category"), str) else None)
    return LabelledAnswers(path.stem, str(path), sha256_file(path), prompts, answers, refused, categories)


def read_labelled(path: str | Path) -> LabelledAnswers:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: labelled answer file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file; expected labelled answers")
    loaded = _xstest_csv(path) if path.suffix.lower() == ".csv" else _answer_file(path)
    if not loaded.answers:
        raise InputError(f"{path}: no labelled answers")
    return loaded


def read_labelled_files(paths: list[str | Path]) -> list[LabelledAnswers]:
    if not paths:
        raise InputError("give at least one labelled answer file (--labelled)")
    sets = [read_labelled(p) for p in paths]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise InputError(f"labelled files {', '.join(s.path for s in sets)}: two come from one model name "
                         f"({names}); held-out validation leaves out one model's file at a time")
    return sets


def read_answer_records(path: str | Path) -> list[dict]:
    """Answers to classify, labelled or not: XSTest's completion CSVs as they are ({id, prompt,
    response}) or a JSON list of {prompt, response, ...} (kept whole)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: answer file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file; expected answers")
    if path.suffix.lower() == ".csv":
        rows = read_csv_rows(path, ("prompt", "completion"),
                             "expected XSTest's completion layout (id, prompt, completion, ...)")
        records = [{"id": row.get("id"), "prompt": row["prompt"], "response": row["completion"] or ""}
                   for _, row in rows]
    else:
        records = read_json(path)
        if not isinstance(records, list):
            raise InputError(f"{path}: expected a JSON list of {{'prompt', 'response'}}")
        for i, item in enumerate(records):
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) \
                    or not isinstance(item.get("response"), str):
                raise InputError(f"{path}: item {i}: expected an object with string 'prompt' and 'response'")
    if not records:
        raise InputError(f"{path}: no answers")
    return records
