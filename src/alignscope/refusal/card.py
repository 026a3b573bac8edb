"""The refusal card: how a refusal measure agrees with people, file by file and pooled.

For each labelled file (one model's answers) and for all of them together: accuracy,
Cohen's kappa, refusal recall (of the answers people call refusals, the share the
measure finds) and precision, each with an interval, and the measure's refusal rate
against the people's. All of it twice: on the answers whole, and cut to the study's
answer length, since the labelled answers are long chat-model replies and a study's
are short. XSTest's prefix baseline is measured beside it. A trained classifier is
measured on its own training files only through its held-out predictions (the
classifier fitted without that file), never in-sample.

The measure's error on a difference between two models is the spread of its per-file
rate errors: it over-counts one model's refusals by e_a and another's by e_b, so their
gap is off by e_a - e_b.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field

from alignscope.config import validated
from alignscope.io import atomic_folder, atomic_write_json, atomic_write_text
from alignscope.markdown import ci, fmt, table
from alignscope.models import resolve_model
from alignscope.metrics import (MetricsConfig, bootstrap_kappas, cohen_kappa, proportion_interval,
                                worst_difference_error)
from alignscope.refusal import PatternRefusals, TrainedRefusals, load_refusals
from alignscope.refusal.classifier import cut_to_tokens
from alignscope.refusal.labelled import LabelledAnswers, read_labelled_files

FORMS = ("whole", "cut")


@dataclass
class RefusalCardConfig:
    """`alignscope refusal-card`: a refusal measure against answers people labelled."""

    refusals: str = "patterns"
    """`patterns`, `xstest-prefix`, or a trained classifier folder."""
    cut_tokens: Annotated[int, Field(ge=1)] = 50
    """Answers are also measured cut to this many tokens (the study's max_new_tokens)."""
    cut_tokenizer: str = "all-minilm-l6-v2"
    """Whose tokens the cut counts (a trained classifier cuts with its own backbone's, as it was validated)."""
    bootstrap_resamples: Annotated[int, Field(ge=100)] = 2000
    seed: int = 0
    allow_pickle: bool = False


def agreement(refused: np.ndarray, predicted: np.ndarray, cfg: MetricsConfig, resamples: int, seed: int) -> dict:
    """Accuracy, kappa, recall and precision of `predicted` against people's `refused`, with intervals
    (Wilson for the proportions, a percentile bootstrap over answers for kappa)."""
    n, hits = len(refused), int(np.sum(refused == predicted))
    tp, people, measure = int(np.sum(refused & predicted)), int(refused.sum()), int(predicted.sum())
    kappa = cohen_kappa(refused, predicted)
    draws = bootstrap_kappas(refused, predicted, resamples, seed)
    alpha = (1 - cfg.confidence) / 2
    return {
        "n": n, "people_refused": people, "measure_refused": measure,
        "accuracy": hits / n, "accuracy_ci": proportion_interval(hits, n, cfg),
        "kappa": kappa, "kappa_ci": [float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))]
        if kappa is not None and len(draws) else None,
        "recall": tp / people if people else None,
        "recall_ci": proportion_interval(tp, people, cfg) if people else None,
        "precision": tp / measure if measure else None,
        "precision_ci": proportion_interval(tp, measure, cfg) if measure else None,
        "rate_error": 100.0 * (measure - people) / n,
    }


def predictions(measure, labelled: LabelledAnswers, cut: list[str]) -> tuple[dict, str]:
    """The measure's decisions on one file, whole and cut, and whether they are held out."""
    if isinstance(measure, TrainedRefusals) and labelled.sha256 in measure.heldout:
        stored = measure.heldout[labelled.sha256]
        return {f: np.array(stored[f], dtype=bool) for f in FORMS}, "held out (fitted without this model)"
    trained = isinstance(measure, TrainedRefusals)
    return ({"whole": measure.classify(labelled.prompts, labelled.answers), "cut": measure.classify(labelled.prompts, cut)},
            "not trained on" if trained else "rule (nothing fitted)")


def cut_tokenizer(measure, cfg: RefusalCardConfig):
    """Whose tokens the cut counts: a trained classifier's backbone's (as it was validated), else the
    configured tokenizer. Only the tokenizer loads: held-out predictions need no encoder."""
    from transformers import AutoTokenizer

    if isinstance(measure, TrainedRefusals):
        spec, n = measure.record["backbone"]["spec"], measure.record["config"]["cut_tokens"]
    else:
        spec, n = cfg.cut_tokenizer, cfg.cut_tokens
    return AutoTokenizer.from_pretrained(resolve_model(spec, cfg.allow_pickle)), n


def refusal_card(cfg: RefusalCardConfig, labelled_paths: list[str], metrics_cfg: MetricsConfig = MetricsConfig()) -> dict:
    cfg = validated(cfg, "refusal-card")
    sets = read_labelled_files(labelled_paths)
    measure, baseline = load_refusals(cfg.refusals, cfg.allow_pickle), PatternRefusals("xstest-prefix")
    tokenizer, cut_tokens = cut_tokenizer(measure, cfg)
    files, pooled = [], {name: {f: ([], []) for f in FORMS} for name in ("measure", "baseline")}
    for s in sets:
        cut = [cut_to_tokens(tokenizer, a, cut_tokens) for a in s.answers]
        refused = np.array(s.refused, dtype=bool)
        decided, how = predictions(measure, s, cut)
        base = {"whole": baseline.classify(s.prompts, s.answers), "cut": baseline.classify(s.prompts, cut)}
        entry = {"model": s.name, "path": s.path, "sha256": s.sha256, "predictions": how,
                 "median_characters": {"whole": float(np.median([len(a) for a in s.answers])),
                                       "cut": float(np.median([len(a) for a in cut]))}}
        for name, by_form in (("measure", decided), ("baseline", base)):
            entry[name] = {f: agreement(refused, by_form[f], metrics_cfg, cfg.bootstrap_resamples, cfg.seed)
                           for f in FORMS}
            for f in FORMS:
                pooled[name][f][0].append(refused)
                pooled[name][f][1].append(by_form[f])
        files.append(entry)
    card = {
        "measure": {"spec": cfg.refusals, "name": measure.name, **measure.describe()},
        "baseline": baseline.describe(),
        "cut_tokens": cut_tokens, "confidence": metrics_cfg.confidence, "config": asdict(cfg),
        "files": files,
        "pooled": {name: {f: agreement(np.concatenate(pooled[name][f][0]), np.concatenate(pooled[name][f][1]),
                                       metrics_cfg, cfg.bootstrap_resamples, cfg.seed) for f in FORMS}
                   for name in pooled},
    }
    card["difference_error"] = {f: worst_difference_error([e["measure"][f]["rate_error"] for e in files])
                                for f in FORMS} if len(files) > 1 else None
    return card


def _row(label: str, form: str, a: dict) -> list[str]:
    def share(value, interval) -> str:
        return "-" if value is None else f"{100 * value:.1f} {ci(None if interval is None else [100 * x for x in interval])}"

    kappa = "-" if a["kappa"] is None else f"{a['kappa']:.2f} {ci(a['kappa_ci'], 2)}"
    return [label, form, str(a["n"]), f"{a['people_refused']} / {a['measure_refused']}",
            share(a["accuracy"], a["accuracy_ci"]), kappa, share(a["recall"], a["recall_ci"]),
            share(a["precision"], a["precision_ci"]), fmt(a["rate_error"], 1, sign=True)]


def card_markdown(card: dict) -> str:
    level = f"{card['confidence']:.0%}"
    header = ["answers", "form", "n", "refusals (people / measure)", f"accuracy % [{level}]", f"kappa [{level}]",
              f"recall % [{level}]", f"precision % [{level}]", "rate error (points)"]
    rows = []
    for who, title in (("measure", card["measure"]["name"]), ("baseline", f"`{card['baseline']['version']}` (baseline)")):
        for e in card["files"]:
            rows += [_row(f"{title}: {e['model']}", f, e[who][f]) for f in FORMS]
        rows += [_row(f"{title}: pooled", f, card["pooled"][who][f]) for f in FORMS]
    how = "; ".join(f"{e['model']}: {e['predictions']}" for e in card["files"])
    diff = card["difference_error"]
    lines = [
        f"# Refusal card: {card['measure']['name']}", "",
        f"Measured against people's labels (a partial refusal counts as a refusal), on each file's answers whole and "
        f"cut to their first {card['cut_tokens']} tokens. Predictions: {how}.", "",
        table(header, rows), "",
    ]
    if diff:
        lines += [f"Error on a difference between two models (the spread of the per-file rate errors): "
                  f"{fmt(diff['whole'], 1)} points whole, {fmt(diff['cut'], 1)} cut.", ""]
    lines += ["These answers are long chat-model replies (median "
              + ", ".join(f"{e['model']} {e['median_characters']['whole']:.0f}" for e in card["files"])
              + " characters); a small model's 50-token answers differ in style, which no labelled file here covers.",
              ""]
    return "\n".join(lines)


def write_refusal_card(card: dict, out: str | Path) -> Path:
    def write(folder: Path) -> None:
        atomic_write_json(folder / "refusal-card.json", card)
        atomic_write_text(folder / "refusal-card.md", card_markdown(card))

    return atomic_folder(out, write, "refusal card")


def card_view(card: dict, card_file: str, max_new_tokens: int) -> dict:
    """What a report says of the refusal measure: its name, held-out agreement, and error on a
    difference (the larger of whole and cut: a study's answers are neither)."""
    diff = card.get("difference_error")
    return {"name": card["measure"]["name"], "card_file": card_file, "cut_tokens": card["cut_tokens"],
            "answers": sum(e["measure"]["whole"]["n"] for e in card["files"]), "models": len(card["files"]),
            "predictions": "; ".join(sorted({e["predictions"] for e in card["files"]})),
            "pooled": card["pooled"]["measure"],
            "baseline_kappa": {f: card["pooled"]["baseline"][f]["kappa"] or 0.0 for f in FORMS},
            "difference_error": max(diff.values()) if diff else None, "max_new_tokens": max_new_tokens}
