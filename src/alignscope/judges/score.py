"""Rate answer files with a judge, batched and cached: the rated files `report` reads.

Every answer is rated, empty ones included, and a rating is reused only for the
same judge (by fingerprint), the same encoding settings, prompt and answer (and
category, for a distilled judge): from the cache, or from the same run when a pair
recurs (variants that did not change the base's answer), which is rated once. The
output folder's `scoring.json` says "complete": false before the first rated file
is written and lists every file once the last is: a reader refuses a folder left
between the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field

from alignscope.answers import (SCORING_RECORD, AnswerFile, answer_filename, answer_files, check_names, parse_name,
                                read_answers)
from alignscope.cache import ResultCache, cached_map, disabled_cache
from alignscope.io import InputError, atomic_write_json, check_output_dir
from alignscope.judges import load_judge
from alignscope.judges.base import (OPENASSISTANT_JUDGE, check_not_trained_on, is_distilled, judge_fingerprint,
                                    resolve_judge)
from alignscope.judges.distilled import DistilledJudge

# Bump when the way a pair is encoded changes, so that no rating made the old way is reused.
ENCODING_VERSION = 2
# A distilled judge's rating by its heads fitted without the answer's length and log-probabilities,
# beside `rating` in each rated answer: what a study checks its findings against.
BLIND_RATING = "rating_without_length_lp"
# Batches rated between two writes to the cache.
CHUNK_BATCHES = 8


@dataclass
class ScoreConfig:
    """Which judge rates the answers, and how."""

    model: str = OPENASSISTANT_JUDGE
    """The judge: a reward model (hub id or folder) or a distilled judge folder."""
    max_length: Annotated[int, Field(ge=16)] = 512
    """Tokens of (question, answer) a reward model sees: the question is cut from its start."""
    batch_size: Annotated[int, Field(ge=1)] = 8
    """Pairs rated together (length-sorted)."""
    allow_pickle: bool = False
    revision: str | None = None
    """Hub revision of the judge (OpenAssistant's keeps safetensors only in refs/pr/3)."""


def rate_pairs_cached(cfg: ScoreConfig, questions: list[str], answers: list[str], categories: list[str],
                      cache: ResultCache | None = None, progress=None) -> tuple[list[dict], dict]:
    """{"rating", "answer_tokens_cut"} for each pair, computing only what the cache lacks;
    refuses prompts whose dialogue an alignscope reward model was trained on."""
    cache = cache or disabled_cache()
    resolved = resolve_judge(cfg.model, cfg.allow_pickle)
    check_not_trained_on(resolved, questions)
    fingerprint = judge_fingerprint(cfg.model, cfg.allow_pickle, cfg.revision)
    settings = {"max_length": cfg.max_length, "encoding": ENCODING_VERSION}
    # a distilled judge rates by category; a reward model does not, and its entries stay shared
    by_category = is_distilled(resolved)
    keys = [cache.key("score", fingerprint, settings, q, a, *([c] if by_category else []))
            for q, a, c in zip(questions, answers, categories)]
    # a pair that recurs (a variant that left the base's answer as it was) is looked up and rated once
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    rows = list(first.values())  # the pairs to look up, each a first occurrence
    position = {i: m for m, i in enumerate(rows)}

    def compute(missing: list[int], store) -> None:
        judge = load_judge(cfg.model, cfg.allow_pickle, cfg.revision)
        # longest first, a few batches at a time: batches stay tight, and each chunk's ratings enter
        # the cache as soon as they are known, so a killed run keeps what it finished
        missing = sorted((rows[m] for m in missing), key=lambda i: len(questions[i]) + len(answers[i]), reverse=True)
        step = cfg.batch_size * CHUNK_BATCHES
        for start in range(0, len(missing), step):
            chunk = missing[start:start + step]
            args = [questions[i] for i in chunk], [answers[i] for i in chunk], [categories[i] for i in chunk]
            checks = None
            if isinstance(judge, DistilledJudge):  # with its ratings, those of its heads blind to length
                ratings, checks = judge.rate_checked(*args, progress)
                cuts = [0] * len(chunk)
            else:
                ratings, cuts = judge.rate(*args, cfg.max_length, cfg.batch_size, progress)
            for k, (i, rating, cut) in enumerate(zip(chunk, ratings, cuts)):
                store(position[i], {"rating": rating, "answer_tokens_cut": cut}
                      | ({BLIND_RATING: checks[k]} if checks is not None else {}))

    found, info = cached_map(cache, list(first), compute, progress)
    if progress and len(rows) < len(keys):
        progress(len(keys) - len(rows))
    by_key = dict(zip(first, found))
    return [by_key[k] for k in keys], {"scorer": cfg.model, "resolved": resolved, "revision": cfg.revision,
                                       "fingerprint": fingerprint, "max_length": cfg.max_length, **info,
                                       "repeated": len(keys) - len(rows)}


def rate_files(files: list[AnswerFile], out_dir: str | Path, cfg: ScoreConfig = ScoreConfig(),
               cache: ResultCache | None = None, progress=None) -> dict:
    """Rate exactly these answer files in one pass; write each under its own name in `out_dir`."""
    out_dir = check_output_dir(out_dir)
    rows = [(f, read_answers(f.path)) for f in files]
    questions = [r["prompt"] for _, answers in rows for r in answers]
    responses = [r["response"] for _, answers in rows for r in answers]
    categories = [f.category for f, answers in rows for _ in answers]
    if not questions:
        raise InputError(f"{files[0].path.parent}: the answer files hold no answers to rate")
    rated, info = rate_pairs_cached(cfg, questions, responses, categories, cache, progress)
    names = [answer_filename(f.index, f.model, f.category) for f, _ in rows]
    info["empty_answers"] = sum(not r.strip() for r in responses)
    info["answers_cut"] = sum(x["answer_tokens_cut"] > 0 for x in rated)
    atomic_write_json(out_dir / SCORING_RECORD, {"complete": False, "files": names})
    written, position = [], 0
    try:
        for (f, answers), name in zip(rows, names):
            out = [{**r, "rating": x["rating"]} | ({"answer_tokens_cut": x["answer_tokens_cut"]}
                                                   if x["answer_tokens_cut"] else {})
                   | ({BLIND_RATING: x[BLIND_RATING]} if BLIND_RATING in x else {})
                   for r, x in zip(answers, rated[position:position + len(answers)])]
            position += len(answers)
            written.append((atomic_write_json(out_dir / name, out), f.path))
        atomic_write_json(out_dir / SCORING_RECORD, {**info, "complete": True, "files": names})
    except BaseException:
        # none of this run's rated files stay beside an unfinished record (a file rated in place stays:
        # it holds the answers); the record keeps saying the folder is unfinished
        for path, source in written:
            if path.resolve() != source.resolve():
                path.unlink(missing_ok=True)
        raise
    return info


def rate_folder(answers_dir: str | Path, out_dir: str | Path, cfg: ScoreConfig = ScoreConfig(),
                cache: ResultCache | None = None, progress=None) -> dict:
    """Rate every answer file of a folder (`alignscope score`)."""
    return rate_files(answer_files(answers_dir), out_dir, cfg, cache, progress)


def rated_paths(files: list[Path]) -> list[AnswerFile]:
    """Answer files named by path (a study's own), checked as a folder's would be."""
    parsed = [parse_name(Path(p)) for p in files]
    if any(f is None for f in parsed):
        raise InputError(f"{files[parsed.index(None)]}: not named <i>_<model>_<harmful|helpful>.json")
    check_names(parsed)
    return parsed
