"""Refusal measures: does an answer refuse or deflect?

- `patterns`: a fixed, versioned list of phrases (`refusal.patterns`), no model;
- `xstest-prefix`: XSTest's own prefix baseline (`refusal.baseline`);
- a trained classifier folder (`refusal.classifier`, `alignscope train-refusal`).

Each is validated against answers people labelled (`refusal.labelled`,
`refusal.card`); a study names one and every refusal number it reports uses it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alignscope.io import InputError
from alignscope.refusal.baseline import XSTEST_PREFIX_VERSION, prefix_refuses
from alignscope.refusal.classifier import TrainedRefusals, is_refusal_classifier
from alignscope.refusal.patterns import OPENING_CHARACTERS, REFUSAL_PATTERNS_VERSION, opening, patterns_sha256, refuses


class PatternRefusals:
    """A fixed rule on the answer alone: the pattern list, or XSTest's prefix baseline."""

    def __init__(self, kind: str):
        self.kind = kind
        self.rule, self.version = ((refuses, REFUSAL_PATTERNS_VERSION) if kind == "patterns"
                                   else (prefix_refuses, XSTEST_PREFIX_VERSION))
        self.name = f"`{self.version}`"

    def classify(self, prompts: list[str], answers: list[str], progress=None) -> np.ndarray:
        return np.array([self.rule(a) for a in answers], dtype=bool)

    def describe(self) -> dict:
        return {"kind": self.kind, "version": self.version} | (
            {"sha256": patterns_sha256()} if self.kind == "patterns" else {})


RULES = ("patterns", "xstest-prefix")


def load_refusals(spec: str, allow_pickle: bool = False) -> PatternRefusals | TrainedRefusals:
    """`patterns`, `xstest-prefix`, or the folder of a trained classifier."""
    if spec in RULES:
        return PatternRefusals(spec)
    if Path(spec).is_dir():
        if not is_refusal_classifier(spec):
            raise InputError(f"{spec}: not a refusal classifier folder (no refusal-classifier.json); "
                             "train one with alignscope train-refusal")
        return TrainedRefusals(spec, allow_pickle)
    raise InputError(f"refusal classifier {spec!r}: expected {', '.join(RULES)} or a folder written by "
                     "alignscope train-refusal")


def classify_answer_sets(measure, sets: dict, progress=None) -> dict[object, list[bool]]:
    """Decisions on several lists of {prompt, response} answers in one pass (a trained classifier
    loads its encoder once), per list, in order."""
    flat = [a for answers in sets.values() for a in answers]
    decided = measure.classify([a["prompt"] for a in flat], [a["response"] for a in flat], progress).tolist()
    out, start = {}, 0
    for key, answers in sets.items():
        out[key], start = decided[start:start + len(answers)], start + len(answers)
    return out


def decide(measure, answers: dict[str, dict[str, list]], suites: dict[str, dict] | None = None,
           progress=None) -> dict:
    """Every refusal decision a report shows, made by one measure in one pass: the one path from
    answers to decisions, for the CLI and the study alike (metrics and the page only read them).

    answers: {model: {category: [answers]}}, each a RatedAnswer or a {prompt, response} dict;
    suites: {suite: {"kind": kind, "answers": {model: [suite answers]}}}.
    Returns {"measure": what decided, "flags": {model: {category: [bool]}}, "suites": {suite: {"kind",
    "answers": {model: [each answer with "refused"]}}}}."""
    def record(a) -> dict:
        return a if isinstance(a, dict) else {"prompt": a.prompt, "response": a.response}

    suites = suites or {}
    sets = {(model, c): [record(a) for a in items] for model, by_cat in answers.items() for c, items in by_cat.items()}
    sets |= {(model, "suite", name): items for name, suite in suites.items()
             for model, items in suite["answers"].items()}
    decided = classify_answer_sets(measure, sets, progress)
    return {"measure": measure.describe(),
            "flags": {model: {c: decided[model, c] for c in by_cat} for model, by_cat in answers.items()},
            "suites": {name: {"kind": suite["kind"],
                              "answers": {model: [a | {"refused": r} for a, r in zip(items, decided[model, "suite", name])]
                                          for model, items in suite["answers"].items()}}
                       for name, suite in suites.items()}}


__all__ = ["classify_answer_sets", "decide", "OPENING_CHARACTERS", "REFUSAL_PATTERNS_VERSION", "PatternRefusals", "TrainedRefusals", "load_refusals",
           "opening", "patterns_sha256", "prefix_refuses", "refuses"]
