"""Reward-model scoring of (prompt, answer) pairs.

Any `AutoModelForSequenceClassification` with one logit works; the default is
OpenAssistant/reward-model-deberta-v3-large-v2, called as its model card says,
`tokenizer(question, answer)`. Pairs longer than `max_length` lose tokens from the
start of the question (its oldest turns), never from the answer. Pairs are
scored in length-sorted batches; ratings come back in input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignscope.io import InputError, read_json

DEFAULT_SCORER = "OpenAssistant/reward-model-deberta-v3-large-v2"
RM_MANIFEST = "alignscope-reward-model.json"


@dataclass
class ScoreConfig:
    """Which reward model judges the answers, and how."""

    model: str = DEFAULT_SCORER
    max_length: int = 512
    batch_size: int = 8
    """Pairs scored together (length-sorted); on a CPU, 8 ran as fast as any size here."""
    allow_pickle: bool = False
    revision: str | None = None


def load_scorer(cfg: ScoreConfig):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from alignscope.models import resolve_model

    resolved = resolve_model(cfg.model, cfg.allow_pickle)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            resolved, dtype=torch.float32, revision=cfg.revision, use_safetensors=None if cfg.allow_pickle else True)
        tokenizer = AutoTokenizer.from_pretrained(resolved, revision=cfg.revision)
    except OSError as e:
        raise InputError(f"could not load reward model {cfg.model!r}: {e}") from None
    if model.config.num_labels != 1:
        raise InputError(f"reward model {cfg.model!r} has {model.config.num_labels} outputs; expected one logit")
    return model.eval(), tokenizer, resolved


def encode_pair(tokenizer, question: str, answer: str, max_length: int) -> list[int]:
    """`tokenizer(question, answer)`, the question cut from its start to fit."""
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        try:
            ids = tokenizer(question, answer, truncation="only_first", max_length=max_length)["input_ids"]
        except Exception:  # fast tokenizers raise when the answer alone is too long
            ids = None
        if ids is None or len(ids) > max_length:  # the answer alone is too long: cut both
            ids = tokenizer(question, answer, truncation="longest_first", max_length=max_length)["input_ids"]
    finally:
        tokenizer.truncation_side = side
    return ids


def score_pairs(model, tokenizer, questions: list[str], answers: list[str], cfg: ScoreConfig = ScoreConfig(),
                progress=None) -> list[float]:
    """One reward per (question, answer), in input order.

    Only input_ids and attention_mask go in: the reward models we train see no token
    type ids (TRL's collator builds none), and DeBERTa-v3's reward model ignores them."""
    import torch

    encoded = [encode_pair(tokenizer, q, a, cfg.max_length) for q, a in zip(questions, answers)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    pad = tokenizer.pad_token_id or 0
    scores = [0.0] * len(encoded)
    with torch.inference_mode():
        for start in range(0, len(order), cfg.batch_size):
            rows = order[start:start + cfg.batch_size]
            width = max(len(encoded[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, :len(encoded[i])] = torch.tensor(encoded[i])
                mask[r, :len(encoded[i])] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits[:, 0]
            for i, value in zip(rows, logits.tolist()):
                scores[i] = float(value)
            if progress:
                progress(len(rows))
    return scores


def trained_openings(resolved: str) -> set[str]:
    """Opening Human turns of the rows an alignscope reward model trained on (empty for others)."""
    manifest = Path(resolved) / RM_MANIFEST
    return set(read_json(manifest)["trained_openings"]) if manifest.is_file() else set()


def check_not_trained_on(resolved: str, prompts: list[str]) -> None:
    """Refuse to judge prompts whose dialogue the reward model was trained on."""
    from alignscope.data import first_human_turn

    openings = trained_openings(resolved)
    shared = [p for p in prompts if first_human_turn(p) in openings]
    if shared:
        raise InputError(
            f"reward model {resolved} was trained on {len(shared)} of these prompts' dialogues "
            f"(e.g. {shared[0][:80]!r}); judging them would flatter the models. Train it with "
            "exclude_prompts_of set to this evaluation set")


def score_cached(cfg: ScoreConfig, questions: list[str], answers: list[str], cache=None,
                 progress=None) -> tuple[list[float], dict]:
    """Rewards for the pairs, computing only those the cache lacks; refuses prompts whose
    dialogue an alignscope reward model was trained on."""
    import time

    from alignscope.cache import ResultCache
    from alignscope.models import model_fingerprint, resolve_model

    cache = cache or ResultCache(Path("/nonexistent"), enabled=False)
    resolved = resolve_model(cfg.model, cfg.allow_pickle)
    check_not_trained_on(resolved, questions)
    fingerprint = model_fingerprint(resolved, cfg.revision)
    keys = [cache.key("score", fingerprint, {"max_length": cfg.max_length}, q, a) for q, a in zip(questions, answers)]
    found = [cache.get(k) for k in keys]
    missing = [i for i, f in enumerate(found) if f is None]
    started = time.time()
    if missing:
        model, tokenizer, _ = load_scorer(cfg)
        new = score_pairs(model, tokenizer, [questions[i] for i in missing], [answers[i] for i in missing], cfg,
                          progress=progress)
        for i, value in zip(missing, new):
            found[i] = value
            cache.put(keys[i], value)
    elif progress:
        progress(len(questions))
    info = {"scorer": cfg.model, "resolved": resolved, "fingerprint": fingerprint, "max_length": cfg.max_length,
            "computed": len(missing), "cached": len(questions) - len(missing),
            "seconds": round(time.time() - started, 2)}
    return [float(f) for f in found], info


def read_answer_files(folder: str | Path) -> list[tuple[int, str, str, list[dict]]]:
    """(index, model, category, answers) for each `<i>_<model>_<harmful|helpful>.json`."""
    from alignscope.metrics import RATED_FILE

    folder = Path(folder)
    found = []
    for path in sorted(folder.glob("*.json")):
        m = RATED_FILE.match(path.name)
        if not m:
            continue
        rows = read_json(path)
        if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("prompt"), str)
                                                 and isinstance(r.get("response"), str) for r in rows):
            raise InputError(f"{path}: expected a list of {{'prompt', 'response', ...}} answers")
        found.append((int(m.group(1)), m.group(2), m.group(3), rows))
    if not found:
        raise InputError(f"{folder}: no answer files named <i>_<model>_<harmful|helpful>.json")
    return found


def rate_folder(answers_dir: str | Path, out_dir: str | Path, cfg: ScoreConfig = ScoreConfig(), cache=None,
                progress=None) -> dict:
    """Score every answer file of a folder in one pass; write the rated files `report` reads."""
    from alignscope.io import atomic_write_json
    from alignscope.metrics import rated_filename

    files = read_answer_files(answers_dir)
    questions = [r["prompt"] for *_, rows in files for r in rows]
    responses = [r["response"] for *_, rows in files for r in rows]
    ratings, info = score_cached(cfg, questions, responses, cache, progress)
    position = 0
    for index, model, cat, rows in files:
        rated = [{**r, "rating": ratings[position + k]} for k, r in enumerate(rows)]
        position += len(rows)
        atomic_write_json(Path(out_dir) / rated_filename(index, model, cat), rated)
    info["empty_answers"] = sum(not r.strip() for r in responses)
    atomic_write_json(Path(out_dir) / "scoring.json", info)
    return info
