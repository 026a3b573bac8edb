"""The study runner: one config file to the whole study.

  data -> evaluation set -> (judge) -> for each base model: train its variants ->
  generate -> score -> metrics -> report

Every stage writes its outputs atomically and records the hash of its inputs in
`stages.json`; a stage whose outputs exist with the same input hash is skipped,
and one killed midway resumes (training from its last checkpoint, generation and
scoring from the cache, which they fill answer by answer). A run manifest
records the resolved config, versions, git commit, data and model hashes, seeds,
devices and timings.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from alignscope.config import ConfigError, apply_overrides, load_yaml, parse_config
from alignscope.evalset import EvalsetConfig
from alignscope.generate import GenerateConfig
from alignscope.io import InputError, atomic_write_json, atomic_write_text, read_json, sha256_file, sha256_json
from alignscope.metrics import MetricsConfig
from alignscope.report import ReportConfig
from alignscope.score import DEFAULT_SCORER

VARIANTS = ("base", "sft", "dpo", "sftdpo")
Variant = Literal["base", "sft", "dpo", "sftdpo"]


@dataclass
class VariantTraining:
    """How one variant is trained: a recipe file and overrides of its fields."""

    recipe: str
    set: dict[str, Any] = field(default_factory=dict)


@dataclass
class BaseModelConfig:
    name: str
    """Short name used in file names and tables (letters, digits, '-', '.')."""
    model: str
    """Hub id, local folder, or packaged name."""
    parameters: float | None = None
    """Parameter count for the scale table; counted from the model when left out."""
    set: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-variant overrides for this base model only, e.g. {sft: {lora.r: 16}}."""


@dataclass
class JudgeConfig:
    """The reward model that rates every answer."""

    model: str | None = DEFAULT_SCORER
    """A reward model used as it is (hub id or folder) ..."""
    train: dict[str, Any] | None = None
    """... or one trained first: fields of a reward-model recipe (see configs/recipes/reward-model.yaml)."""
    max_length: int = 512
    batch_size: int = 8


@dataclass
class StudyConfig:
    """`alignscope study CONFIG.yaml`: everything the study does."""

    name: str
    output_dir: str
    models: list[BaseModelConfig]
    data: str = "hub"
    """HH-RLHF for the evaluation set and all training: `hub` or a local folder."""
    evalset: EvalsetConfig = field(default_factory=EvalsetConfig)
    variants: list[Variant] = field(default_factory=lambda: list(VARIANTS))
    train: dict[str, VariantTraining] = field(default_factory=dict)
    """sft, dpo and sftdpo: each variant's recipe; the runner sets model, output_dir and data.source."""
    exclude_evalset_from_training: bool = True
    """Leave out training pairs that share a dialogue with the evaluation set (needed when both come from one split)."""
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    allow_pickle: bool = False


# --------------------------------------------------------------------------- config

def load_study(path: str | Path, overrides: list[str] = ()) -> StudyConfig:
    """Parse and validate the whole config before any work: every problem at once."""
    data, node = load_yaml(path)
    cfg = parse_config(StudyConfig, apply_overrides(data, overrides), str(path), node)
    problems = study_problems(cfg, Path(path).parent)
    if problems:
        raise ConfigError(str(path), problems)
    return cfg


def study_problems(cfg: StudyConfig, base_dir: Path) -> list[str]:
    """What parse_config cannot see: paths, recipes, names, combinations."""
    from alignscope.models import PACKAGED
    from alignscope.train import TrainConfig

    problems = []
    if cfg.data != "hub" and not Path(cfg.data).is_dir():
        problems.append(f"data: {cfg.data!r} is neither 'hub' nor an existing folder")
    names = [m.name for m in cfg.models]
    if not names:
        problems.append("models: list at least one base model")
    if len(set(names)) != len(names):
        problems.append(f"models: names must differ, got {names}")
    for i, m in enumerate(cfg.models):
        if not m.name.replace("-", "").replace(".", "").isalnum():
            problems.append(f"models[{i}].name: {m.name!r} may use letters, digits, '-' and '.' only")
        if _looks_local(m.model) and m.model not in PACKAGED and not Path(m.model).is_dir():
            problems.append(f"models[{i}].model: {m.model!r} is not a folder, a packaged model or a hub id")
        for variant in m.set:
            if variant not in ("sft", "dpo", "sftdpo"):
                problems.append(f"models[{i}].set.{variant}: expected sft, dpo or sftdpo")
    if "base" not in cfg.variants:
        problems.append("variants: must include base (every comparison is against it)")
    if len(set(cfg.variants)) != len(cfg.variants):
        problems.append(f"variants: listed twice in {cfg.variants}")
    needed = set(cfg.variants) | ({"sft"} if "sftdpo" in cfg.variants else set())
    for variant in [v for v in VARIANTS if v in needed and v != "base"]:
        spec = cfg.train.get(variant)
        if spec is None:
            problems.append(f"train.{variant}: missing; give the recipe this variant is trained with")
            continue
        recipe = _resolve(spec.recipe, base_dir)
        if not recipe.is_file():
            problems.append(f"train.{variant}.recipe: {spec.recipe!r} not found")
            continue
        for m in cfg.models:
            try:
                data, _ = load_yaml(recipe)
                parse_config(TrainConfig, apply_overrides(data, _overrides(spec, m, variant, "model", "out", "hub")),
                             str(recipe))
            except InputError as e:
                problems.append(f"train.{variant} for {m.name}: {e}")
    if cfg.judge.train is None and not cfg.judge.model:
        problems.append("judge: give a reward model (judge.model) or a recipe to train one (judge.train)")
    if cfg.judge.train is not None:
        from alignscope.reward_model import RewardModelConfig

        try:
            parse_config(RewardModelConfig, {**cfg.judge.train, "output_dir": "judge"}, "judge.train")
        except InputError as e:
            problems.append(str(e))
    elif cfg.judge.model and _looks_local(cfg.judge.model) and not Path(cfg.judge.model).is_dir():
        problems.append(f"judge.model: {cfg.judge.model!r} is not a folder or a hub id")
    return problems


def _looks_local(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") != 1


def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() or p.exists() else base_dir / p


def _overrides(spec: VariantTraining, model: BaseModelConfig, variant: str, start: str, out: str,
               data: str) -> list[str]:
    """key=value overrides for a variant's recipe: the study's choices, then the recipe's own."""
    sets = {**spec.set, **model.set.get(variant, {})}
    return ([f"{k}={_yaml_value(v)}" for k, v in sets.items()]
            + [f"model={start}", f"output_dir={out}", f"data.source={data}"])


def _yaml_value(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


# --------------------------------------------------------------------------- stages

class Stages:
    """stages.json: each stage's input hash, outputs and time; a rerun skips what matches."""

    def __init__(self, path: Path):
        self.path = path
        self.records = read_json(path) if path.is_file() else {}
        self.timings: list[dict] = []

    def run(self, name: str, inputs, outputs: list[Path], work, quiet: bool = False):
        digest = sha256_json(inputs)
        record = self.records.get(name)
        started = time.time()
        if record and record["inputs"] == digest and all(p.exists() for p in outputs):
            self.timings.append({"stage": name, "seconds": 0.0, "status": "skipped (inputs unchanged)"})
            if not quiet:
                print(f"[{name}] up to date", flush=True)
            return record.get("result")
        if not quiet:
            print(f"[{name}] running", flush=True)
        result = work()
        seconds = round(time.time() - started, 1)
        self.records[name] = {"inputs": digest, "outputs": [str(p) for p in outputs], "seconds": seconds,
                              "result": result}
        atomic_write_json(self.path, self.records)
        self.timings.append({"stage": name, "seconds": seconds, "status": "ran"})
        return result


@dataclass
class StudyResult:
    output_dir: Path
    metrics: dict
    timings: list[dict]


def run_study(cfg: StudyConfig, config_path: str | Path | None = None, quiet: bool = False) -> StudyResult:
    from alignscope.cache import ResultCache
    from alignscope.evalset import build_evalset, load_evalset, write_evalset
    from alignscope.models import cache_dir

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_dir = Path(config_path).parent if config_path else Path(".")
    started = time.time()
    stages = Stages(out / "stages.json")
    atomic_write_text(out / "study.yaml", _dump_yaml(asdict(cfg)))
    gen_cache = ResultCache(cache_dir() / "generations")
    score_cache = ResultCache(cache_dir() / "scores")

    # evaluation set
    evalset_cfg = EvalsetConfig(**{**asdict(cfg.evalset), "data": cfg.data})
    evalset_path = out / "evalset.json"
    stages.run("evalset", {"evalset": asdict(evalset_cfg), "files": _data_hashes(cfg.data, evalset_cfg)},
               [evalset_path], lambda: str(write_evalset(build_evalset(evalset_cfg), evalset_path)), quiet)
    evalset = load_evalset(evalset_path)
    exclude = str(evalset_path) if cfg.exclude_evalset_from_training else None

    # the judge
    judge_model, judge_info = _judge(cfg, out, exclude, evalset_path, stages, quiet)

    per_base, answer_info, train_info = {}, {}, {}
    to_train = [v for v in VARIANTS if v != "base" and (v in cfg.variants or (v == "sft" and "sftdpo" in cfg.variants))]
    for base in cfg.models:
        trained = {"base": base.model}
        for variant in to_train:  # sft is trained for sftdpo even when it is not evaluated itself
            trained[variant], train_info[base.name, variant] = _train_variant(
                cfg, base, variant, trained, exclude, out, base_dir, stages, quiet)
        answers_dir, rated_dir = out / "answers" / base.name, out / "rated" / base.name
        for index, variant in enumerate([v for v in VARIANTS if v in cfg.variants], start=1):
            answer_info[base.name, variant] = _generate(cfg, base, variant, index, trained[variant], evalset,
                                                        evalset_path, answers_dir, gen_cache, stages, quiet)
        _score(cfg, base, judge_model, answers_dir, rated_dir, score_cache, stages, quiet)
        per_base[base.name] = _report(cfg, base, rated_dir, out / "reports" / base.name, answer_info,
                                      train_info, judge_info, evalset, stages, quiet)

    metrics = _top_report(cfg, out, per_base, stages)
    total = round(time.time() - started, 1)
    stages.timings.append({"stage": "total", "seconds": total, "status": ""})
    atomic_write_json(out / "manifest.json", _manifest(cfg, out, evalset, judge_info, answer_info, stages, config_path))
    atomic_write_text(out / "timings.md", _timings_table(stages.timings))
    if not quiet:
        print(_timings_table(stages.timings))
        print(f"report: {out / 'report.md'}\nmetrics: {out / 'metrics.json'}")
    return StudyResult(out, metrics, stages.timings)


def _data_hashes(source: str, evalset_cfg: EvalsetConfig) -> list:
    from alignscope.data import resolve_file

    if source == "hub":
        return [source, evalset_cfg.revision]
    return [sha256_file(resolve_file(source, s, evalset_cfg.split))
            for s in (evalset_cfg.harmful_subset, evalset_cfg.helpful_subset)]


def _judge(cfg: StudyConfig, out: Path, exclude: str | None, evalset_path: Path, stages: Stages,
           quiet: bool) -> tuple[str, dict]:
    if cfg.judge.train is None:
        return cfg.judge.model, {"model": cfg.judge.model, "trained_here": False}
    from alignscope.reward_model import RewardModelConfig, train_reward_model

    spec = {**cfg.judge.train, "output_dir": str(out / "judge")}
    spec["data"] = {**spec.get("data", {}), "source": cfg.data}
    if exclude:
        spec["data"]["exclude_prompts_of"] = exclude
    rm_cfg = parse_config(RewardModelConfig, spec, "judge.train")

    def work():
        manifest = train_reward_model(rm_cfg)
        return {k: manifest[k] for k in ("heldout_accuracy", "heldout_accuracy_before_training", "heldout_pairs",
                                        "trained_pairs", "openassistant_hh_accuracy", "backbone")}

    info = stages.run("judge", [asdict(rm_cfg), sha256_file(evalset_path)], [out / "judge" / "model"], work, quiet)
    return str(out / "judge" / "model"), {**info, "trained_here": True, "model": str(out / "judge" / "model"),
                                          "split": rm_cfg.data.split, "backbone": rm_cfg.backbone,
                                          "backbone_path": info["backbone"]}


def _train_variant(cfg: StudyConfig, base: BaseModelConfig, variant: str, trained: dict, exclude: str | None,
                   out: Path, base_dir: Path, stages: Stages, quiet: bool) -> tuple[str, dict]:
    from alignscope.train import load_recipe, train

    spec = cfg.train[variant]
    start = trained["sft"] if variant == "sftdpo" else base.model
    target = out / "models" / base.name / variant
    overrides = _overrides(spec, base, variant, start, str(target), cfg.data)
    if exclude:
        overrides.append(f"data.exclude_prompts_of={exclude}")
    if cfg.allow_pickle:
        overrides.append("allow_pickle=true")
    recipe = load_recipe(_resolve(spec.recipe, base_dir), overrides)

    def work():
        train(recipe)
        data = read_json(target / "data_manifest.json")
        return {"steps": read_json(target / "done.json")["global_step"], "rows_trained": data["rows_trained"],
                "split": recipe.data.split, "subsets": recipe.data.subsets, "method": recipe.method,
                "lora": recipe.lora is not None}

    # train() itself skips a finished run of the same recipe and resumes a killed one
    info = stages.run(f"train {base.name}/{variant}", [asdict(recipe), _fingerprint_of(start, cfg)],
                      [target / "model", target / "done.json"], work, quiet)
    return str(target / "model"), info


def _fingerprint_of(spec: str, cfg: StudyConfig) -> str:
    from alignscope.models import PACKAGED

    path = Path(spec)
    if path.is_dir() or spec in PACKAGED:
        from alignscope.models import model_fingerprint, resolve_model

        return model_fingerprint(resolve_model(spec, cfg.allow_pickle))
    return spec  # a hub id: its commit is resolved when it is loaded


def _generate(cfg, base, variant, index, model_spec, evalset, evalset_path, answers_dir, cache, stages, quiet):
    from alignscope.generate import answer_evalset, write_answer_files

    def work():
        bar, tick = _bar(len(evalset["harmful"]) + len(evalset["helpful"]), f"{base.name}/{variant}", quiet)
        answers, info = answer_evalset(model_spec, evalset, cfg.generate, cache, cfg.allow_pickle, progress=tick)
        bar.close()
        write_answer_files(answers_dir, index, variant, answers, info)
        return info

    inputs = [_fingerprint_of(model_spec, cfg), sha256_file(evalset_path), asdict(cfg.generate)]
    outputs = [answers_dir / f"{index}_{variant}_{cat}.json" for cat in ("harmful", "helpful")]
    return stages.run(f"generate {base.name}/{variant}", inputs, outputs, work, quiet)


def _score(cfg, base, judge_model, answers_dir, rated_dir, cache, stages, quiet):
    from alignscope.score import ScoreConfig, rate_folder

    score_cfg = ScoreConfig(model=judge_model, max_length=cfg.judge.max_length, batch_size=cfg.judge.batch_size,
                            allow_pickle=cfg.allow_pickle)
    files = sorted(p for p in answers_dir.glob("*_*_*.json") if not p.name.endswith("_generation.json"))

    def work():
        bar, tick = _bar(sum(len(read_json(p)) for p in files), f"scoring {base.name}", quiet)
        info = rate_folder(answers_dir, rated_dir, score_cfg, cache, progress=tick)
        bar.close()
        return info

    inputs = [_fingerprint_of(judge_model, cfg), asdict(score_cfg) | {"model": None}, [sha256_file(p) for p in files]]
    stages.run(f"score {base.name}", inputs, [rated_dir / p.name for p in files], work, quiet)


def _bar(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="answer", leave=False, disable=quiet or None)
    return bar, bar.update


# --------------------------------------------------------------------------- reports

def _report(cfg, base, rated_dir, report_dir, answer_info, train_info, judge_info, evalset, stages, quiet) -> dict:
    from alignscope.metrics import load_rated_dir, stop_reason_tests
    from alignscope.report import ReportConfig, write_report

    models = load_rated_dir(rated_dir)
    variants = [m.name for m in models]
    metrics_cfg = cfg.metrics
    if metrics_cfg.retention_pairs is None:
        pairs = [["base", v] for v in variants[1:]] + ([["sft", "sftdpo"]] if {"sft", "sftdpo"} <= set(variants) else [])
        metrics_cfg = MetricsConfig(**{**asdict(cfg.metrics), "retention_pairs": pairs})
    notes = _notes(cfg, base, judge_info, evalset, [i for (b, _), i in train_info.items() if b == base.name])
    stop_tests = stop_reason_tests(models)
    sections = [_answers_section(base.name, variants, answer_info, train_info, stop_tests)]
    report_cfg = ReportConfig(title=f"{cfg.report.title}: {base.name} ({base.model})", notes=notes + cfg.report.notes,
                              figures=cfg.report.figures, judge_caveat=judge_info.get("model") == DEFAULT_SCORER)
    files = sorted(rated_dir.glob("*.json"))

    def work():
        metrics = write_report(models, report_dir, metrics_cfg, report_cfg,
                               extra={"answers": {v: _answer_stats(answer_info[base.name, v]) for v in variants},
                                      "stop_tests": stop_tests, "judge": judge_info}, extra_sections=sections)
        return {"HpR": {v: metrics["models"][v]["HpR"] for v in variants}}

    # The code that computes and renders the report is an input too: rerendering takes a second,
    # and a report left from an older alignscope would otherwise stand beside newer results.
    code = [sha256_file(Path(__file__).with_name(f)) for f in ("metrics.py", "report.py", "study.py")]
    stages.run(f"report {base.name}", [[sha256_file(p) for p in files], asdict(metrics_cfg), asdict(report_cfg),
                                       sections, code], [report_dir / "metrics.json", report_dir / "report.md"],
               work, quiet)
    return read_json(report_dir / "metrics.json")


def _notes(cfg: StudyConfig, base: BaseModelConfig, judge_info: dict, evalset: dict, trainings: list[dict]) -> list[str]:
    from scipy import stats

    prov = evalset["provenance"]["config"]
    notes = [f"Study `{cfg.name}`; base model `{base.model}`; evaluation set: {len(evalset['harmful'])} harmful + "
             f"{len(evalset['helpful'])} helpful prompts from HH-RLHF {prov['split']} (seed {prov['seed']}, "
             f"keywords {', '.join(prov['keywords'])}, `{prov['format']}` prompt format); greedy answers of at most "
             f"{cfg.generate.max_new_tokens} new tokens."]
    if cfg.data != "hub":
        notes.append(f"Data from the local folder `{cfg.data}`.")
    if any(t["split"] == "test" for t in trainings):
        notes.append("Training used the HH-RLHF **test** split (the train split cannot be had offline), leaving "
                     "out every pair that shares a dialogue with the evaluation set; rows and steps per variant are "
                     "in the table of answers below and in each model's data_manifest.json.")
    if judge_info.get("trained_here"):
        k = round(judge_info["heldout_accuracy"] * judge_info["heldout_pairs"])
        ci = stats.binomtest(k, judge_info["heldout_pairs"]).proportion_ci(method="wilson")
        chance = ci.low <= 0.5
        notes.append(
            f"Judge: a **local reward model** (`{judge_info['backbone']}` backbone, trained here on "
            f"{judge_info['trained_pairs']} HH-RLHF {judge_info['split']} pairs), not OpenAssistant's DeBERTa. Its "
            f"held-out pair accuracy is {100 * judge_info['heldout_accuracy']:.1f}% [{100 * ci.low:.0f}, "
            f"{100 * ci.high:.0f}] on {judge_info['heldout_pairs']} pairs (OpenAssistant's reaches about "
            f"{100 * judge_info['openassistant_hh_accuracy']:.0f}% on Anthropic HH)"
            + (": **it cannot be told from chance**, so its rates measure what this judge rewards, not "
               "harmlessness or helpfulness." if chance else "."))
    elif judge_info.get("model"):
        notes.append(f"Judge: `{judge_info['model']}`.")
    return notes


def _answer_stats(info: dict) -> dict:
    return {k: info[k] for k in ("answers", "stopped", "empty", "mean_tokens")}


def _answers_section(base: str, variants: list[str], answer_info: dict, train_info: dict,
                     stop_tests: list[dict]) -> str:
    """What the answers themselves show, judge aside: how they end and how long they run,
    tested against the base on the same prompts; and what each variant was trained on."""
    from alignscope.report import SIGNIFICANCE, display, p_is, table

    test = {(t["a"], t["stop"]): t for t in stop_tests}

    def count(v: str, reason: str) -> str:
        n = answer_info[base, v]["stopped"][reason]
        return f"{n} ({p_is('p', test[v, reason]['p_value'])})" if (v, reason) in test else str(n)

    rows = []
    for v in variants:
        info, trained = answer_info[base, v], train_info.get((base, v))
        how = ("not trained" if trained is None else
               f"{trained['method'].upper()}{' (LoRA)' if trained['lora'] else ''}"
               f"{' from SFT' if v == 'sftdpo' else ''}, {trained['steps']} steps on "
               f"{trained['rows_trained']} pairs of {'+'.join(trained['subsets'])} {trained['split']}")
        rows.append([display(v), how, str(info["answers"]), count(v, "eos"), count(v, "stop_string"),
                     str(info["stopped"]["length"]), str(info["empty"]), f"{info['mean_tokens']:.1f}"])
    what = {"eos": "ends its answer with EOS", "stop_string": "goes on to write the next Human turn"}
    supported = [f"{display(t['a'])} {what[t['stop']]} {'more' if t['a_count'] > t['b_count'] else 'less'} often "
                 f"than {display(t['b'])} ({t['a_count']} vs {t['b_count']} of {t['n']}; "
                 f"{p_is('p', t['p_value'])}, {p_is('q', t['q_value'])})"
                 for t in stop_tests if t["q_value"] < SIGNIFICANCE]
    verdict = ("**Supported** (exact McNemar against the base on the same prompts, Benjamini-Hochberg q < "
               f"{SIGNIFICANCE}): " + "; ".join(supported) + "." if supported else
               "No change in how answers end is supported against the base (exact McNemar, Benjamini-Hochberg "
               f"q < {SIGNIFICANCE})." if stop_tests else "")
    return "\n".join(["## The answers themselves", "",
                      "How each model's answers ended, independent of the judge: a model that learned to end its "
                      "turn stops at EOS instead of writing the user's next turn (cut at the next Human turn) or "
                      "running to the token limit. In brackets, the exact McNemar p against the base.", "",
                      table(["Model", "training", "answers", "ended with EOS", "cut at a Human turn",
                             "hit the token limit", "empty", "mean new tokens"], rows), "",
                      *([verdict, ""] if verdict else [])])


def _top_report(cfg: StudyConfig, out: Path, per_base: dict, stages: Stages) -> dict:
    """The study's report.md and metrics.json at the top of output_dir: the base model's
    report itself when there is one, an overview with the scale analysis when there are several."""
    if len(per_base) == 1:
        name = next(iter(per_base))
        src = out / "reports" / name
        text = (src / "report.md").read_text().replace("](figures/", f"](reports/{name}/figures/")
        atomic_write_text(out / "report.md", text + _artifact_index(out))
        atomic_write_json(out / "metrics.json", per_base[name])
        return per_base[name]
    from alignscope.scale import scale_analysis, scale_markdown

    params = {m.name: m.parameters or _count_parameters(m, cfg) for m in cfg.models}
    analysis = scale_analysis(per_base, params, {m.name: out / "rated" / m.name for m in cfg.models}, cfg.metrics)
    text = scale_markdown(cfg, per_base, analysis, out)
    atomic_write_text(out / "report.md", text + _artifact_index(out))
    metrics = {"scale": analysis, "models": per_base, "parameters": params}
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _count_parameters(m: BaseModelConfig, cfg: StudyConfig) -> float:
    from transformers import AutoConfig, AutoModelForCausalLM

    from alignscope.models import resolve_model

    import torch

    config = AutoConfig.from_pretrained(resolve_model(m.model, cfg.allow_pickle))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return float(sum(p.numel() for p in model.parameters()))


def _artifact_index(out: Path) -> str:
    lines = ["", "## Artifacts", ""]
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if path.is_dir() or any(part.startswith(".") or part == "checkpoints" for part in rel.parts):
            continue
        if rel.parts[0] == "models" and rel.name not in ("done.json", "recipe.yaml", "data_manifest.json",
                                                        "train_log.json"):
            continue
        if rel.parts[0] == "judge" and rel.name != "alignscope-reward-model.json":
            continue
        lines.append(f"- [`{rel}`]({rel})")
    lines.append("- `models/<base>/<variant>/model/`: the trained models (HF folders; LoRA merged)")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- manifest

def _manifest(cfg, out, evalset, judge_info, answer_info, stages, config_path) -> dict:
    import torch

    from alignscope.train import package_versions

    trained = {}
    for done in sorted(out.glob("models/*/*/done.json")):
        doc = read_json(done)
        data = read_json(done.parent / "data_manifest.json")
        trained[f"{done.parent.parent.name}/{done.parent.name}"] = {
            "resolved_model": doc["resolved_model"], "steps": doc["global_step"], "precision": doc["precision"],
            "rows_trained": data["rows_trained"], "rows_sha256": data["rows_sha256"],
            "data_files": [{k: f[k] for k in ("path", "sha256")} for f in data["files"]],
        }
    return {
        "study": cfg.name, "config_file": str(config_path) if config_path else None, "config": asdict(cfg),
        "versions": package_versions(), "python": sys.version.split()[0], "platform": platform.platform(),
        "git_commit": _git_commit(), "devices": {
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "seeds": {"evalset": cfg.evalset.seed, "metrics_bootstrap": cfg.metrics.seed,
                  "training": {name: _recipe_seed(out / "models" / name / "recipe.yaml") for name in trained}},
        "evalset": {"sha256": sha256_file(out / "evalset.json"), "provenance": evalset["provenance"]},
        "judge": judge_info, "trained_models": trained,
        "generation": {f"{b}/{v}": {k: info[k] for k in ("fingerprint", "settings", "computed", "cached")}
                       for (b, v), info in answer_info.items()},
        "timings": stages.timings,
    }


def _recipe_seed(path: Path):
    import yaml

    return yaml.safe_load(path.read_text())["training"]["seed"] if path.is_file() else None


def _git_commit() -> str | None:
    """The commit of alignscope's checkout, with "-dirty" when tracked files differ from it:
    a commit alone would claim code that did not run."""
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD"], capture_output=True).returncode
        return commit + ("-dirty" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _timings_table(timings: list[dict]) -> str:
    from alignscope.report import table

    return "\n".join(["## Timings", "", table(["stage", "seconds", ""], [[t["stage"], f"{t['seconds']:.1f}", t["status"]]
                                                                          for t in timings]), ""])


def _dump_yaml(obj) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)
