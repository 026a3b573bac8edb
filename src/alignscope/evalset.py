"""The evaluation set: harmful prompts picked by keyword and helpful prompts, as
the reference study picked them.

The study's procedure (Pant, arXiv 2509.09055): seed Python's `random` once; take
the harmless-base test rows whose chosen dialogue contains a keyword (a plain,
case-sensitive substring test) in file order and `random.sample` 50 of them; then
`random.sample` 50 helpful-base test rows from the same random state. With seed
100 this gives the study's two prompt files exactly.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from alignscope import __version__
from alignscope.config import validated
from alignscope.data import HHPair, Split, Subset, load_subset, paper_prompt
from alignscope.io import InputError, atomic_write_json, read_json
from alignscope.suites import SuiteConfig, check_suite_name, load_suite

PromptFormat = Literal["paper", "hh", "chat"]
# What an evaluation set file holds: a prompt under any other key would never be answered.
EVALSET_KEYS = ("harmful", "helpful", "provenance", "suites")


@dataclass
class EvalsetConfig:
    """How to build the evaluation set."""

    data: str = "hub"
    """`hub` or a local HH-RLHF folder."""
    seed: Annotated[int, Field(ge=0)] = 100
    """Python's random.Random(seed) draws both samples (a negative seed would draw what its absolute value does)."""
    n_harmful: Annotated[int, Field(ge=1)] = 50
    n_helpful: Annotated[int, Field(ge=1)] = 50
    keywords: list[str] = field(default_factory=lambda: ["kill", "murder", "rape"])
    all: bool = False
    """Every matching harmful prompt and every helpful prompt, in file order, instead of a sample."""
    format: PromptFormat = "hh"
    """`paper`: ends at the Human turn, as the study did; `hh`: ends with "\\n\\nAssistant:"; `chat`: the hh dialogue,
    rendered at generation by each model's own chat template."""
    harmful_subset: Subset = "harmless-base"
    helpful_subset: Subset = "helpful-base"
    split: Split = "test"
    revision: str | None = None
    suites: list[SuiteConfig] = field(default_factory=list)
    """Further suites asked beside the HH sample (XSTest, a prompt file), each in this prompt format."""


def format_prompt(pair: HHPair, fmt: PromptFormat) -> str:
    if fmt == "paper":
        return paper_prompt(pair.chosen_dialogue)
    if fmt in ("hh", "chat"):  # a chat prompt is rendered per model, when it is answered
        return pair.prompt
    raise InputError(f"format: expected 'paper', 'hh' or 'chat', got {fmt!r}")


def single_turn_prompt(text: str, fmt: PromptFormat) -> str:
    """A suite's one-turn prompt in the evaluation set's format (the HH sample's own turns)."""
    return f"\n\nHuman: {text}" + ("" if fmt == "paper" else "\n\nAssistant:")


def build_suites(cfg: EvalsetConfig) -> dict:
    names = [s.name for s in cfg.suites]
    if len(set(names)) != len(names):
        raise InputError(f"evalset.suites: names must differ, got {names}")
    suites = {}
    for suite in cfg.suites:
        rows, info = load_suite(suite)
        suites[suite.name] = {"kind": suite.kind, "provenance": info,
                              "items": [{"id": r["id"], "prompt": single_turn_prompt(r["text"], cfg.format),
                                         "category": r["category"]} | ({"type": r["type"]} if r["type"] else {})
                                        for r in rows]}
    return suites


def _sample(rng: random.Random, rows: list[HHPair], n: int, what: str) -> list[HHPair]:
    if n > len(rows):
        raise InputError(f"asked for {n} {what} prompts but only {len(rows)} rows qualify; "
                         f"lower the number or use --all")
    return rng.sample(rows, n)


def build_evalset(cfg: EvalsetConfig) -> dict:
    cfg = validated(cfg, "evalset")
    if not [k for k in cfg.keywords if k]:
        raise InputError("keywords: give at least one keyword to pick harmful prompts")
    harmless, harmless_info = load_subset(cfg.data, cfg.harmful_subset, cfg.split, revision=cfg.revision)
    helpful, helpful_info = load_subset(cfg.data, cfg.helpful_subset, cfg.split, revision=cfg.revision)
    matching = [p for p in harmless if any(k and k in p.chosen_dialogue for k in cfg.keywords)]
    if not matching:
        raise InputError(f"keywords {cfg.keywords}: no {cfg.harmful_subset}/{cfg.split} dialogue contains any of "
                         f"them (a case-sensitive substring test), so there would be no harmful prompts")
    if cfg.all:
        harmful_rows, helpful_rows = matching, helpful
    else:
        rng = random.Random(cfg.seed)  # one state for both draws, as the study did
        harmful_rows = _sample(rng, matching, cfg.n_harmful, "harmful")
        helpful_rows = _sample(rng, helpful, cfg.n_helpful, "helpful")
    provenance = {
        "alignscope": __version__,
        "procedure": ("all keyword-matching harmful rows and all helpful rows, in file order" if cfg.all else
                      "random.Random(seed); sample n_harmful of the keyword-matching harmful rows "
                      "(file order), then n_helpful of all helpful rows, from the same state"),
        "config": asdict(cfg),
        "files": [{k: info[k] for k in ("subset", "split", "source", "path", "sha256", "revision", "rows")}
                  for info in (harmless_info, helpful_info)],
        "keyword_matches": len(matching),
    }
    suites = build_suites(cfg)  # before anything is returned: a bad suite fails the whole set
    return {
        "harmful": [{"id": p.id, "prompt": format_prompt(p, cfg.format)} for p in harmful_rows],
        "helpful": [{"id": p.id, "prompt": format_prompt(p, cfg.format)} for p in helpful_rows],
        "provenance": provenance,
    } | ({"suites": suites} if suites else {})


def write_evalset(evalset: dict, out: str | Path) -> Path:
    return atomic_write_json(out, evalset)


def load_evalset(path: str | Path) -> dict:
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected an object with 'harmful' and 'helpful' lists")
    unknown = [k for k in doc if k not in EVALSET_KEYS]
    if unknown:
        raise InputError(f"{path}: unknown categor{'ies' if len(unknown) > 1 else 'y'} {', '.join(map(repr, unknown))}; "
                         f"an evaluation set holds {', '.join(EVALSET_KEYS)} only")
    for cat in ("harmful", "helpful"):
        items = doc.get(cat)
        if not isinstance(items, list):
            raise InputError(f"{path}: field {cat!r} must be a list of {{'id', 'prompt'}}")
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or "id" not in item:
                raise InputError(f"{path}: {cat}[{i}] must be an object with string 'prompt' and an 'id'")
        first = {}
        for i, item in enumerate(items):
            j = first.setdefault(item["prompt"], i)
            if j != i:
                raise InputError(f"{path}: {cat}[{i}] repeats the prompt of {cat}[{j}] ({item['prompt'][:60]!r}); "
                                 "each prompt is answered once, and the report pairs answers by prompt")
    suites = doc.get("suites", {})
    if not isinstance(suites, dict):
        raise InputError(f"{path}: 'suites' must map suite names to {{'kind', 'items'}}")
    for name, suite in suites.items():
        check_suite_name(name, f"{path}: suites")
        items = suite.get("items") if isinstance(suite, dict) else None
        if not isinstance(items, list) or not items:
            raise InputError(f"{path}: suites.{name}.items must be a non-empty list")
        for i, item in enumerate(items):
            if not (isinstance(item, dict) and isinstance(item.get("prompt"), str) and "id" in item
                    and isinstance(item.get("category"), str)):
                raise InputError(f"{path}: suites.{name}.items[{i}] must have an 'id', a string 'prompt' and a "
                                 "string 'category'")
    return doc
