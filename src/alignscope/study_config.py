"""A study's config file: its schema, and every check that can be made before any work.

`load_study` reports every problem at once, each with its line in the study's
YAML: unknown keys and wrong types (pydantic), and what the schema cannot see:
missing folders and recipes, a typo in a recipe override (blamed on the study's
line, not the recipe's), a model folder offering only pickled weights, a hub id
that cannot be loaded under HF_HUB_OFFLINE. A study that passes here fails later
only for reasons no file could show (a full disk, a crash).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field

from alignscope.config import ConfigError, Problem, apply_overrides, config_problems, load_yaml, locate, parse_config
from alignscope.data import HUB_DATASET
from alignscope.judges.train_judge import DistillConfig
from alignscope.evalset import EvalsetConfig
from alignscope.generate import GenerateConfig
from alignscope.io import InputError, check_name, check_output_dir
from alignscope.judges import OPENASSISTANT_JUDGE
from alignscope.metrics import MetricsConfig
from alignscope.models import PACKAGED, check_safetensors, hub_reachable_or_cached, hub_revision, looks_like_hub_id
from alignscope.refusal import RULES
from alignscope.suites import check_suite_name
from alignscope.refusal.classifier import RefusalTrainConfig
from alignscope.report import ReportConfig
from alignscope.judges.reward_model import RewardModelConfig
from alignscope.train import TrainConfig

# The reference study's four variants: a study's default, with what they start from when a config
# does not say (the rest start from base).
VARIANTS = ("base", "sft", "dpo", "sftdpo")
STANDARD_START = {"sftdpo": "sft"}


@dataclass
class VariantTraining:
    """How one variant is made: its method, applied to the variant it starts from, by a recipe and overrides."""

    recipe: str
    set: dict[str, Any] = field(default_factory=dict)
    method: Literal["sft", "dpo"] | None = None
    """sft or dpo; default: the recipe's own `method`."""
    start: Annotated[str | None, Field(alias="from")] = None
    """`from:` the variant it starts from, `base` or another declared one (a DPO variant's reference is where
    it starts); default: base (sftdpo: sft)."""


@dataclass
class BaseModelConfig:
    name: str
    """Short name used in file names and tables (letters, digits, '-', '.')."""
    model: str
    """Hub id, local folder, or packaged name."""
    revision: str | None = None
    """Hub revision (branch, tag, refs/pr/N, commit); empty: where a known repo keeps its safetensors."""
    parameters: float | None = None
    """Parameter count for the scale table; counted from the model when left out."""
    set: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-variant overrides for this base model only, e.g. {sft: {lora.r: 16}}."""


@dataclass
class JudgeConfig:
    """The judge that rates every answer."""

    model: str | None = OPENASSISTANT_JUDGE
    """A reward model used as it is (hub id or folder) ..."""
    revision: str | None = None
    """Hub revision of that model; empty: where a known repo keeps its safetensors (OpenAssistant's: refs/pr/3)."""
    train: dict[str, Any] | None = None
    """... or one trained first: fields of a reward-model recipe (see configs/recipes/reward-model.yaml) ..."""
    distill: dict[str, Any] | None = None
    """... or one distilled from the reference's ratings: fields of `alignscope train-judge` (backbones, feature_sets, ...)."""
    max_length: int = 512
    batch_size: int = 8


@dataclass
class RefusalsConfig:
    """The refusal measure every refusal number of the study uses, and the labelled answers that validate it."""

    classifier: str = "patterns"
    """`patterns`, `xstest-prefix`, or a folder written by `alignscope train-refusal` ..."""
    train: dict[str, Any] | None = None
    """... or one trained here: fields of `alignscope train-refusal` (labelled, backbone, ...)."""
    labelled: list[str] = field(default_factory=list)
    """Labelled answer files for the refusal card (XSTest completion CSVs, answer files with `refused`);
    empty: those the classifier trains on."""


@dataclass
class StudyConfig:
    """`alignscope study CONFIG.yaml`: everything the study does."""

    name: str
    output_dir: str
    models: list[BaseModelConfig]
    data: str = "hub"
    """HH-RLHF for the evaluation set and all training: `hub` or a local folder."""
    evalset: EvalsetConfig = field(default_factory=EvalsetConfig)
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    """The variants evaluated, in the order every table and figure shows them; base is the model as given."""
    train: dict[str, VariantTraining] = field(default_factory=dict)
    """How each trained variant is made, by name; the runner sets model, output_dir and data.source. A variant
    another starts from is trained even when it is not evaluated."""
    exclude_evalset_from_training: bool = True
    """Leave out training pairs that share a dialogue with the evaluation set (needed when both come from one split)."""
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    refusals: RefusalsConfig = field(default_factory=RefusalsConfig)
    reference_judge: str = OPENASSISTANT_JUDGE
    """Who rated the reference's answers (named in reports and cards)."""
    reference: str | None = None
    """The reference study's rated answers (its OPT-350M variants under OpenAssistant's judge): the judge is
    validated against them (a distilled judge learns from them), and their Table 1 is set beside this study's."""
    allow_pickle: bool = False


def variant_start(train: dict, name: str) -> str:
    """The variant `name` starts from (`train`: the study's declarations, parsed or raw)."""
    spec = train.get(name)
    given = spec.start if isinstance(spec, VariantTraining) else (spec or {}).get("from")
    return given or STANDARD_START.get(name, "base")


def trained_variants(cfg: StudyConfig) -> list[str]:
    """The variants to train, each after the one it starts from: the evaluated ones and their ancestors."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name != "base" and name not in order:
            visit(variant_start(cfg.train, name))
            order.append(name)

    for name in cfg.variants:
        visit(name)
    return order


def variant_index(cfg: StudyConfig) -> dict[str, int]:
    """Each variant's number in its file names: the study's four keep theirs (1-4) whichever variants a study
    runs, so their files keep their names; others follow from 5 in declared order."""
    index = {v: i for i, v in enumerate(VARIANTS, start=1)}
    for name in [*cfg.variants, *cfg.train]:
        index.setdefault(name, len(index) + 1)
    return index


def resolve_path(path: str, base_dir: Path) -> Path:
    """A path as written in a config: as it stands when it exists, else next to the config."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else base_dir / p


def variant_overrides(spec: VariantTraining, model: BaseModelConfig, variant: str) -> dict[str, Any]:
    """The study's settings for one variant's recipe: the variant's, then the base model's own."""
    return {**spec.set, **model.set.get(variant, {})}


def as_override(key: str, value) -> str:
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix(chr(10) + '...').strip()}"


# --------------------------------------------------------------------------- loading

def load_study(path: str | Path, overrides: list[str] = ()) -> StudyConfig:
    """Parse and check the whole config before any work: every problem at once, with its line."""
    raw, node = load_yaml(path)
    overrides = list(overrides)
    raw = apply_overrides(raw, overrides)
    problems = config_problems(StudyConfig, raw, node, overrides) + study_problems(raw, node, Path(path).parent,
                                                                                   overrides)
    if problems:
        texts = list(dict.fromkeys(str(p) for p in sorted(problems, key=lambda p: p.line or 0)))
        raise ConfigError(str(path), texts)
    return parse_config(StudyConfig, raw, str(path), node)


def study_problems(raw: dict, node, base_dir: Path, overrides: list[str] = ()) -> list[Problem]:
    """What the schema cannot see, checked on the raw mapping so that a schema error elsewhere
    hides none of it."""
    problems: list[Problem] = []

    def report(loc: tuple, text: str) -> None:
        problems.append(locate(node, loc, text, overrides))

    allow_pickle = raw.get("allow_pickle") is True
    if isinstance(raw.get("output_dir"), str):
        try:
            check_output_dir(raw["output_dir"])
        except InputError as e:
            report(("output_dir",), str(e))
    data = raw.get("data", "hub")
    if data == "hub":
        if os.environ.get("HF_HUB_OFFLINE") and not hub_dataset_cached():
            report(("data",), "'hub' under HF_HUB_OFFLINE, and Anthropic/hh-rlhf is not in the local hub cache; "
                              "give a local folder")
    elif isinstance(data, str) and not Path(data).is_dir():
        report(("data",), f"{data!r} is neither 'hub' nor an existing folder")

    models = raw.get("models") if isinstance(raw.get("models"), list) else []
    if "models" in raw and not models:
        report(("models",), "list at least one base model")
    names = [m.get("name") for m in models if isinstance(m, dict)]
    if len(set(map(str, names))) != len(names):
        report(("models",), f"names must differ, got {names}")
    for i, m in enumerate(models):
        if not isinstance(m, dict):
            continue
        if isinstance(m.get("name"), str):
            try:
                check_name(m["name"], "name")
            except InputError as e:
                report(("models", i, "name"), str(e).removeprefix("name: "))
        if isinstance(m.get("model"), str):
            for text in model_problems(m["model"], m.get("revision"), allow_pickle):
                report(("models", i, "model"), text)
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    for i, m in enumerate(models):
        for variant in m.get("set", {}) if isinstance(m, dict) and isinstance(m.get("set"), dict) else {}:
            if variant not in train:
                report(("models", i, "set", variant), f"{variant!r} is not a trained variant of this study "
                                                      f"(declared under train: {', '.join(map(str, train)) or 'none'})")

    variants = raw.get("variants", list(VARIANTS))
    if isinstance(variants, list):
        if "base" not in variants:
            report(("variants",), "must include base (every comparison is against it)")
        twice = sorted({str(v) for v in variants if variants.count(v) > 1})
        if twice:
            report(("variants",), f"{', '.join(twice)} listed twice; each variant is evaluated once")
        for i, name in enumerate(variants):
            try:
                check_name(name, "variant")
            except InputError as e:
                report(("variants", i), str(e).removeprefix("variant: "))
        needed = declaration_problems(variants, train, report)
        unused = [str(v) for v in train if v not in needed and v != "base"]  # declared, trained by no one: still checked
        training_problems(raw, base_dir, needed + unused, models, report)
    judge_problems(raw.get("judge", {}), allow_pickle, report)
    refusal_problems(raw.get("refusals", {}), report)
    evalset = raw.get("evalset") if isinstance(raw.get("evalset"), dict) else {}
    suites = evalset.get("suites") if isinstance(evalset.get("suites"), list) else []
    names = [s.get("name") for s in suites if isinstance(s, dict)]
    for i, name in enumerate(names):
        if isinstance(name, str):
            try:
                check_suite_name(name, "evalset.suites")
            except InputError as e:
                report(("evalset", "suites", i, "name"), str(e))
    if len(set(map(str, names))) != len(names):
        report(("evalset", "suites"), f"suite names must differ, got {names}")
    reference = raw.get("reference")
    if isinstance(reference, str) and not Path(reference).is_dir():
        report(("reference",), f"{reference!r} is not a folder of rated answers")
    if isinstance(raw.get("judge"), dict) and raw["judge"].get("distill") is not None and not reference:
        report(("judge", "distill"), "a distilled judge learns from the reference's ratings: set `reference`")
    return problems


def declaration_problems(variants: list, train: dict, report) -> list[str]:
    """How the variants are declared: base is not trained, every `from` names a declared variant, no chain
    loops. Returns the variants to train (the evaluated ones and every one they start from)."""
    if "base" in train:
        report(("train", "base"), "base is the model as given and is not trained; give the trained variant "
                                  "another name")
    for name in train:
        try:
            check_name(name, "variant")
        except InputError as e:
            report(("train", name), str(e).removeprefix("variant: "))
    needed: list[str] = []
    for name in [v for v in variants if isinstance(v, str)]:
        chain = [name]
        while chain[-1] != "base" and chain[-1] in train:
            start = variant_start(train, chain[-1])
            if start in chain:
                report(("train", chain[-1], "from"), f"a cycle: {' -> '.join(chain + [start])}; every chain of "
                                                     "`from` must end at base")
                break
            if start != "base" and start not in train:
                report(("train", chain[-1], "from"), f"unknown variant {start!r}; expected base or one declared "
                                                     f"under train ({', '.join(map(str, train))})")
                break
            chain.append(start)
        needed += [v for v in reversed(chain) if v != "base" and v not in needed]
    return needed


def training_problems(raw: dict, base_dir: Path, variants: list[str], models: list, report) -> None:
    """Each variant's recipe, with the study's overrides applied, as TrainConfig would read it.
    A problem in an override is reported at the study's line; one in the recipe, at the recipe's."""
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    for variant in variants:
        spec = train.get(variant)
        if not isinstance(spec, dict) or not isinstance(spec.get("recipe"), str):
            if spec is None:
                report(("train", variant), "missing; give the recipe this variant is trained with")
            continue
        recipe = resolve_path(spec["recipe"], base_dir)
        if not recipe.is_file():
            report(("train", variant, "recipe"), f"{spec['recipe']!r} not found")
            continue
        try:
            recipe_raw, recipe_node = load_yaml(recipe)
        except InputError as e:
            report(("train", variant, "recipe"), str(e))
            continue
        for i, m in enumerate(models if models else [{}]):
            if not isinstance(m, dict):
                continue
            sets = {("train", variant, "set"): spec.get("set") or {},
                    ("models", i, "set", variant): (m.get("set") or {}).get(variant) or {}}
            merged = dict(recipe_raw)
            for where, values in sets.items():
                if not isinstance(values, dict):
                    report(where, "expected a mapping of recipe keys to values")
                    continue
                for key, value in values.items():
                    problem = override_problem(str(key))
                    if problem:
                        report(where + (key,), problem)
                    else:
                        merged = apply_overrides(merged, [as_override(key, value)])
            if spec.get("method") in ("sft", "dpo"):
                merged["method"] = spec["method"]
            # the runner sets these three
            merged.update(model="x", output_dir="x", data={**(merged.get("data") or {}), "source": "hub"})
            for p in config_problems(TrainConfig, merged, recipe_node):
                owner = next((w for w, values in sets.items() if isinstance(values, dict) and p.path in values), None)
                if owner:
                    report(owner + (p.path,), p.message)
                else:
                    report(("train", variant, "recipe"), f"{recipe}: {p}")


def override_problem(key: str) -> str | None:
    """Is `key` (a.b.c) a field of a training recipe? Say which was meant if not."""
    import difflib
    import typing

    cls: Any = TrainConfig
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return None  # inside a free-form value (a list, a mapping)
        fields = [f.name for f in dataclasses.fields(cls)]
        if part not in fields:
            close = difflib.get_close_matches(part, fields, n=1)
            return "unknown recipe key" + (f"; did you mean {close[0]!r}?" if close else
                                           f" (known: {', '.join(fields)})")
        cls = next((t for t in _types_in(typing.get_type_hints(cls)[part]) if dataclasses.is_dataclass(t)), None)
    return None


def _types_in(tp):
    import typing

    yield tp
    for arg in typing.get_args(tp):
        yield from _types_in(arg)


def model_problems(spec: str, revision: str | None, allow_pickle: bool) -> list[str]:
    if spec in PACKAGED:
        return []
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            return [f"{spec!r} is a folder without config.json, not a model"]
        try:
            check_safetensors(path, allow_pickle)
        except InputError as e:
            return [str(e)]
        return []
    if path.exists() or not looks_like_hub_id(spec):
        return [f"{spec!r} is not a folder, a packaged model ({', '.join(PACKAGED)}) or a hub id"]
    if os.environ.get("HF_HUB_OFFLINE"):
        why = hub_reachable_or_cached(spec, hub_revision(spec, revision))
        if why:
            return [f"{why} (HF_HUB_OFFLINE is set)"]
    return []


def judge_problems(judge, allow_pickle: bool, report) -> None:
    if not isinstance(judge, dict):
        return
    given = [k for k in ("train", "distill") if judge.get(k) is not None]
    if not given and not judge.get("model", OPENASSISTANT_JUDGE):
        report(("judge",), "give a judge (judge.model), a recipe to train one (judge.train), or settings to "
                           "distil one (judge.distill)")
    if len(given) > 1:
        report(("judge",), "judge.train and judge.distill: choose one")
    if isinstance(judge.get("distill"), dict):
        for p in config_problems(DistillConfig, {**judge["distill"], "output_dir": "judge"}):
            report(("judge", "distill") + p.loc, p.message)
    elif isinstance(judge.get("train"), dict):
        for p in config_problems(RewardModelConfig, {**judge["train"], "output_dir": "judge"}):
            report(("judge", "train") + p.loc, p.message)
    elif isinstance(judge.get("model", OPENASSISTANT_JUDGE), str):
        for text in model_problems(judge.get("model", OPENASSISTANT_JUDGE), judge.get("revision"), allow_pickle):
            report(("judge", "model"), text)


def refusal_problems(refusals, report) -> None:
    if not isinstance(refusals, dict):
        return
    train, classifier = refusals.get("train"), refusals.get("classifier", "patterns")
    if train is not None and "classifier" in refusals:
        report(("refusals",), "refusals.classifier and refusals.train: choose one")
    if isinstance(train, dict):
        for p in config_problems(RefusalTrainConfig, {"output_dir": "x", **train}):
            report(("refusals", "train") + p.loc, p.message)
        for i, f in enumerate(train.get("labelled") or []):
            if isinstance(f, str) and not Path(f).is_file():
                report(("refusals", "train", "labelled", i), f"{f!r} not found")
    elif isinstance(classifier, str) and classifier not in RULES and not Path(classifier).is_dir():
        report(("refusals", "classifier"), f"{classifier!r}: expected {', '.join(RULES)} or a folder written by "
                                           "alignscope train-refusal")
    for i, f in enumerate(refusals.get("labelled") or []):
        if isinstance(f, str) and not Path(f).is_file():
            report(("refusals", "labelled", i), f"{f!r} not found")


def hub_dataset_cached() -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(HUB_DATASET, "harmless-base/test.jsonl.gz", repo_type="dataset")
    return isinstance(found, str)
