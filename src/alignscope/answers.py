"""Answer and rated-answer files: how they are named, read and checked.

`generate` writes `<i>_<model>_<harmful|helpful>.json` (a list of {prompt,
response, ...}); `score` adds a `rating` to each answer under the same name;
`report` reads them back. The model with the lowest index is the base. Every
stage reads through this module, so a file that is short, repeats a prompt or
collides with another file's model is refused with its name, never half-read; so is
a file that looks like an answer file but is misnamed (it would drop a model), and a
folder that `score` began and did not finish.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alignscope.io import NAME_PATTERN, InputError, check_name, excerpt, read_json

CATEGORIES = ("harmful", "helpful")
ANSWER_FILE = re.compile(rf"^(\d+)_({NAME_PATTERN})_(harmful|helpful)\.json$")
# A suite's answers (XSTest, a prompt file): one file per model, each answer with its category.
SUITE_FILE = re.compile(rf"^(\d+)_({NAME_PATTERN})_suite-({NAME_PATTERN})\.json$")
# The answer files a folder may hold, as (pattern, what its name should look like).
ANSWER_PATTERNS = [(ANSWER_FILE, "<i>_<model>_<harmful|helpful>.json"), (SUITE_FILE, "<i>_<model>_suite-<suite>.json")]
# What else alignscope writes beside them.
OTHER_FILES = re.compile(rf"^\d+_{NAME_PATTERN}_generation\.json$")
# A name like these is taken for an answer file someone misnamed: reading on without it drops a model.
LOOKS_LIKE_ANSWERS = re.compile(r"^-?\d+_.*\.json$|harmful|helpful", re.IGNORECASE)
SCORING_RECORD = "scoring.json"
# Sums and variances of larger ratings overflow a float; no judge's scale comes near.
MAX_ABS_RATING = 1e12


def answer_filename(index: int, model: str, category: str) -> str:
    check_index(index)
    return f"{index}_{check_name(model, 'model name')}_{category}.json"


def check_index(index) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise InputError(f"index: {index!r} is not a whole number >= 0 (the lowest index is the base)")
    return index


def suite_filename(index: int, model: str, suite: str) -> str:
    check_index(index)
    return f"{index}_{check_name(model, 'model name')}_suite-{check_name(suite, 'suite name')}.json"


def read_suite_answers(path: Path) -> list[dict]:
    """A suite's answers: {id, prompt, response, category, ...} each, ids unique."""
    doc = read_answers(path)
    seen = set()
    for i, item in enumerate(doc):
        if not isinstance(item.get("category"), str) or "id" not in item:
            raise InputError(f"{path}: item {i}: a suite answer needs an 'id' and a string 'category'")
        if item["id"] in seen:
            raise InputError(f"{path}: item {i}: id {item['id']!r} appears twice")
        seen.add(item["id"])
    return doc


def generation_filename(index: int, model: str) -> str:
    """How one model's answers were made (settings, fingerprint, stop reasons), beside its answer files."""
    return f"{index}_{model}_generation.json"


@dataclass
class RatedAnswer:
    prompt: str
    response: str
    rating: float
    stop: str | None = None
    """Why generation ended (eos, stop_string, length) where the file says; other tools' files do not."""


@dataclass
class RatedModel:
    name: str
    answers: dict[str, list[RatedAnswer]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    def ratings(self, category: str) -> np.ndarray:
        return np.array([a.rating for a in self.answers[category]], dtype=float)


@dataclass
class AnswerFile:
    path: Path
    index: int
    model: str
    category: str


def parse_name(path: Path) -> AnswerFile | None:
    m = ANSWER_FILE.match(path.name)
    return AnswerFile(path, int(m.group(1)), m.group(2), m.group(3)) if m else None


def answer_files(folder: str | Path, strict: bool = True) -> list[AnswerFile]:
    """Every answer file of a folder, refusing two files for one model and category, two models
    under one index, and (unless not `strict`) misnamed files: each would silently drop or reorder
    a model."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of answer files")
    check_finished(folder)
    found = [f for f in map(parse_name, sorted(folder.glob("*.json"))) if f]
    misnamed = misnamed_files(folder)
    if misnamed and strict:
        raise InputError(f"{folder}: {len(misnamed)} file{'s' if len(misnamed) > 1 else ''} look like answer files "
                         f"but are not named {ANSWER_PATTERNS[0][1]} (model names match {NAME_PATTERN}, indices "
                         f"are >= 0): {', '.join(p.name for p in misnamed)}; rename them, or pass --no-strict "
                         "to leave them out")
    if not found:
        raise InputError(f"{folder}: no files named <i>_<model>_<harmful|helpful>.json")
    check_names(found)
    return sorted(found, key=lambda f: (f.index, f.model, f.category))


def misnamed_files(folder: Path) -> list[Path]:
    """Files that look like answer files (a .json of any case with a leading index or naming a category)
    but match no answer-file pattern: each would silently drop a model."""
    return [p for p in sorted(folder.iterdir())
            if LOOKS_LIKE_ANSWERS.search(p.name) and p.suffix.lower() == ".json" and p.is_file()
            and not any(pattern.match(p.name) for pattern, _ in ANSWER_PATTERNS) and not OTHER_FILES.match(p.name)]


def check_finished(folder: Path) -> None:
    """`score` marks its folder unfinished first and finished last: refuse one it began and did not
    finish, naming what is missing. A folder without its record (the user's own rated files) is read."""
    record = folder / SCORING_RECORD
    if not record.is_file():
        return
    doc = read_json(record)
    if not isinstance(doc, dict):
        raise InputError(f"{record}: expected an object (the scoring record)")
    files = doc.get("files") if isinstance(doc.get("files"), list) else []
    missing = [name for name in files if not (folder / str(name)).is_file()]
    if doc.get("complete") is False or missing:
        raise InputError(f"{folder}: `alignscope score` began this folder and did not finish ({SCORING_RECORD} "
                         f"says so); missing: {', '.join(map(str, missing)) or 'its final record'}. Rerun "
                         "`alignscope score`")


def check_names(files: list[AnswerFile]) -> None:
    by_slot: dict[tuple[str, str], AnswerFile] = {}
    by_index: dict[int, AnswerFile] = {}
    by_model: dict[str, AnswerFile] = {}
    for f in files:
        other = by_slot.setdefault((f.model, f.category), f)
        if other is not f:
            raise InputError(f"{other.path} and {f.path}: both hold the {f.category} answers of model "
                             f"{f.model!r}; keep one")
        other = by_index.setdefault(f.index, f)
        if other.model != f.model:
            raise InputError(f"{other.path} and {f.path}: models {other.model!r} and {f.model!r} share index "
                             f"{f.index}; the index orders the models (the lowest is the base), give each its own")
        other = by_model.setdefault(f.model, f)
        if other.index != f.index:
            raise InputError(f"{other.path} and {f.path}: model {f.model!r} appears under indices {other.index} "
                             f"and {f.index}")


def read_answers(path: Path, need_rating: bool = False) -> list[dict]:
    """A list of {prompt, response, ...} answers; with `need_rating`, each with a finite rating."""
    doc = read_json(path)
    if not isinstance(doc, list):
        raise InputError(f"{path}: expected a JSON list of {{'prompt', 'response'"
                         + (", 'rating'" if need_rating else "") + "}")
    for i, item in enumerate(doc):
        if not isinstance(item, dict):
            raise InputError(f"{path}: item {i} is not an object")
        for key in ("prompt", "response"):
            if not isinstance(item.get(key), str):
                raise InputError(f"{path}: item {i}: {key!r} must be a string")
        if need_rating:
            rating = item.get("rating")
            if (isinstance(rating, bool) or not isinstance(rating, (int, float)) or not math.isfinite(rating)
                    or abs(rating) > MAX_ABS_RATING):
                raise InputError(f"{path}: item {i}: 'rating' must be a finite number within +-{MAX_ABS_RATING:g}, "
                                 f"got {excerpt(rating)}")
    return doc


def parse_rated_list(doc: list[dict]) -> list[RatedAnswer]:
    return [RatedAnswer(item["prompt"], item["response"], float(item["rating"]),
                        item.get("stop") if isinstance(item.get("stop"), str) else None) for item in doc]


def load_rated_dir(folder: str | Path, strict: bool = True) -> list[RatedModel]:
    """Models in index order (the first is the base) from `<i>_<model>_<harmful|helpful>.json`."""
    return load_rated_files([f.path for f in answer_files(folder, strict)])


def load_rated_files(paths: list[Path]) -> list[RatedModel]:
    """Exactly these rated files (a study names its own, so stale files beside them are never read)."""
    files = [parse_name(Path(p)) for p in paths]
    bad = [p for p, f in zip(paths, files) if f is None]
    if bad:
        raise InputError(f"{bad[0]}: not named <i>_<model>_<harmful|helpful>.json")
    check_names(files)
    found: dict[tuple[int, str], RatedModel] = {}
    for f in sorted(files, key=lambda f: (f.index, f.model)):
        model = found.setdefault((f.index, f.model), RatedModel(f.model))
        model.answers[f.category] = parse_rated_list(read_answers(f.path, need_rating=True))
        model.files[f.category] = f.path
    models = list(found.values())
    for model in models:
        for cat in CATEGORIES:
            if cat not in model.answers:
                where = next(iter(model.files.values())).parent
                raise InputError(f"{where}: model {model.name!r} has no {cat} file "
                                 f"(expected <i>_{model.name}_{cat}.json)")
    align_prompts(models)
    return models


def align_prompts(models: list[RatedModel]) -> None:
    """Paired tests compare answers to the same prompt: put every model's answers in the
    base model's prompt order, and refuse sets that differ, naming the file and a prompt."""
    base = models[0]
    for cat in CATEGORIES:
        for model in models:
            answers, path = model.answers[cat], model.files.get(cat, model.name)
            if not answers:
                raise InputError(f"{path}: no answers; every model needs its {cat} answers")
            seen: set[str] = set()
            repeated = next((a.prompt for a in answers if a.prompt in seen or seen.add(a.prompt)), None)
            if repeated is not None:
                raise InputError(f"{path}: the prompt {repeated[:80]!r} appears twice; each prompt is answered once")
        order = [a.prompt for a in base.answers[cat]]
        for model in models[1:]:
            answers = model.answers[cat]
            if [a.prompt for a in answers] == order:
                continue
            by_prompt = {a.prompt: a for a in answers}
            if set(by_prompt) != set(order):
                missing = [p for p in order if p not in by_prompt]
                extra = [p for p in by_prompt if p not in set(order)]
                example = (f"{len(missing)} of the base's prompts missing, e.g. {missing[0][:80]!r}" if missing else
                           f"{len(extra)} prompts the base lacks, e.g. {extra[0][:80]!r}")
                raise InputError(
                    f"{model.files.get(cat, model.name)} ({len(answers)} answers) and "
                    f"{base.files.get(cat, base.name)} ({len(order)} answers): {model.name!r} and the base "
                    f"{base.name!r} answered different {cat} prompts; {example}")
            model.answers[cat] = [by_prompt[p] for p in order]
