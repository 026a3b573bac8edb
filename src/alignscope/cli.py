"""`alignscope` on the command line: thin wrappers over the library.

A command's settings are the fields of the stage's `Config` dataclass, turned into
options here (names, defaults and help come from the dataclass and its field
docstrings), then validated as strictly as a YAML config. Only torch-free modules
are imported at the top, so `alignscope --help` starts fast.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
import yaml

from alignscope.judges.card import AgreementConfig, judge_agreement, write_card
from alignscope.answers import SUITE_FILE, check_index, load_rated_dir, misnamed_files, read_suite_answers
from alignscope.cache import ResultCache
from alignscope.config import ConfigError, bounded_yaml, config_problems, field_docs, load_yaml
from alignscope.data import DataConfig, load_pairs, summary_text
from alignscope.judges.train_judge import DistillConfig, train_judge
from alignscope.evalset import EvalsetConfig, build_evalset, load_evalset, write_evalset
from alignscope.refusal import decide, load_refusals
from alignscope.refusal.card import RefusalCardConfig, refusal_card, write_refusal_card
from alignscope.refusal.classifier import RefusalTrainConfig, train_refusal_classifier
from alignscope.refusal.labelled import read_answer_records
from alignscope.suites import SuiteConfig
from alignscope.generate import GenerateConfig, answer_evalset, write_answer_files
from alignscope.io import InputError, atomic_write_json, check_name, check_output_dir
from alignscope.markdown import fmt
from alignscope.memory import keep_freed_memory
from alignscope.metrics import MetricsConfig, compute_metrics
from alignscope.models import cache_dir
from alignscope.report import ReportConfig, write_report
from alignscope.judges.reward_model import load_rm_config, train_reward_model
from alignscope.judges.score import ScoreConfig, rate_folder
from alignscope.study import load_study, run_study
from alignscope.train import load_recipe, train

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Align small causal LMs and measure what alignment did to their safety and helpfulness.")

# List settings given as one comma-separated value; others (free text) repeat the option instead.
COMMA_LISTS = {"keywords", "subsets", "target_modules"}


# --------------------------------------------------------------------------- options from dataclasses

def _option_type(hint):
    """The annotation typer should see for a field's type, or None when it has no command-line form."""
    optional = type(None) in typing.get_args(hint)
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    members = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
    if len(members) > 1:
        return Optional[str] if str in members else None  # e.g. report_to: str | list[str]
    base = members[0]
    if typing.get_origin(base) is dict:  # a YAML flow mapping, as recipes write it: '{prompt: question}'
        return Optional[str]
    if typing.get_origin(base) is Literal:
        return Optional[base] if optional else base
    if base in (bool, int, float, str):
        return Optional[base] if optional else base
    item = typing.get_args(base)[0] if typing.get_origin(base) is list else None
    if typing.get_origin(item) is Annotated:  # list[Annotated[float, Field(gt=0)]]: pydantic checks the bound
        item = typing.get_args(item)[0]
    if item is str or typing.get_origin(item) is Literal:
        return Optional[list[str]]
    if item in (int, float):
        return Optional[list[item]]
    return None


def mapping_option(option: str, text: str) -> dict:
    """A mapping option's value, in YAML's flow form ('{prompt: question, chosen: better}')."""
    try:
        value, _ = bounded_yaml(text, option)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise ConfigError("alignscope", [f"{option}: expected a mapping such as '{{prompt: question, chosen: better}}', "
                                         f"got {text[:80]!r}"], "in the options")
    return value


def config_options(param: str, cls: type, *, skip: tuple = (), rename: dict | None = None):
    """Give the decorated command an option per field of `cls` (unless skipped); it receives the
    validated instance as `param`. Problems are reported as the options' names."""
    rename = rename or {}
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)

    def option_name(name: str) -> str:
        return "--" + rename.get(name, name).replace("_", "-")

    def wrap(fn):
        sig = inspect.signature(fn)
        added, fields = [], []
        mappings = {f.name for f in dataclasses.fields(cls) if typing.get_origin(hints[f.name]) is dict}
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else ...)
            annotation = None if f.name in skip else _option_type(hints[f.name])
            if annotation is None:
                continue
            names = [option_name(f.name)]
            if annotation in (bool, Optional[bool]):
                names = [f"{option_name(f.name)}/--no-{option_name(f.name)[2:]}"]
            help_text = docs.get(f.name, "") + (" (comma-separated or repeated)" if f.name in COMMA_LISTS else "")
            added.append(inspect.Parameter(f"{param}__{f.name}", inspect.Parameter.KEYWORD_ONLY,
                                           default=typer.Option(default, *names, help=help_text),
                                           annotation=annotation))
            fields.append(f.name)

        @functools.wraps(fn)
        def wrapper(**kwargs):
            values = {}
            for name in fields:
                value = kwargs.pop(f"{param}__{name}")
                if isinstance(value, list) and name in COMMA_LISTS:
                    value = [part for item in value for part in item.split(",") if part]
                if isinstance(value, str) and name in mappings:
                    value = mapping_option(option_name(name), value)
                values[name] = value
            problems = config_problems(cls, values)
            if problems:
                raise ConfigError("alignscope", [f"{option_name(p.loc[0])}: {p.message}" if p.loc else str(p)
                                                 for p in problems], "in the options")
            return fn(**kwargs, **{param: cls(**values)})

        # typer reads the evaluated annotations (this module's are strings until evaluated)
        own_hints = typing.get_type_hints(fn, include_extras=True)
        own = [p.replace(annotation=own_hints.get(p.name, p.annotation)) for p in sig.parameters.values()
               if p.name != param]
        wrapper.__signature__ = sig.replace(parameters=own + added)
        wrapper.__annotations__ = {p.name: p.annotation for p in own + added}
        return wrapper

    return wrap


def output_path(value: str) -> Path:
    """An output path as typed: an empty one would otherwise become the current folder."""
    if not value.strip():
        raise typer.BadParameter("is empty; name the file or folder to write (. for the current folder)")
    return Path(value)


# --------------------------------------------------------------------------- commands

@app.command("data")
@config_options("cfg", DataConfig, rename={"source": "data"})
def data_cmd(cfg: DataConfig, out: Annotated[Optional[Path], typer.Option(help="Write the data summary JSON here.", parser=output_path)] = None):
    """Load HH-RLHF pairs, split them into prompt / chosen / rejected, and summarise what was read."""
    loaded = load_pairs(cfg)
    typer.echo(summary_text(loaded.summary))
    if out:
        atomic_write_json(out, loaded.summary)
        typer.echo(f"summary written to {out}")


@app.command("evalset")
@config_options("cfg", EvalsetConfig)
def evalset_cmd(cfg: EvalsetConfig,
                out: Annotated[Path, typer.Option(help="Where to write the evaluation set JSON.", parser=output_path)],
                xstest: Annotated[Optional[str], typer.Option(help="Add XSTest as a suite: `hub` or its folder / xstest_prompts.csv.")] = None,
                xstest_per_category: Annotated[Optional[int], typer.Option(help="A seeded sample of this many safe and this many unsafe XSTest prompts, stratified by type.")] = None):
    """Build the evaluation set as the reference study did (seed 100 + --format paper gives its prompts)."""
    if xstest:
        cfg = dataclasses.replace(cfg, suites=[SuiteConfig("xstest", source=xstest, per_category=xstest_per_category,
                                                           seed=cfg.seed)])
    evalset = build_evalset(cfg)
    write_evalset(evalset, out)
    suites = "".join(f" + {len(s['items'])} {name} prompts" for name, s in evalset.get("suites", {}).items())
    typer.echo(f"{len(evalset['harmful'])} harmful + {len(evalset['helpful'])} helpful prompts{suites} "
               f"({cfg.format} format) written to {out}")


def parse_retention(items: list[str] | None) -> list[list[str]] | None:
    pairs = []
    for item in items or []:
        before, sep, after = item.partition(":")
        if not sep or not before or not after:
            raise InputError(f"--retention {item!r}: expected before:after, e.g. sft:sftdpo")
        pairs.append([before, after])
    return pairs or None


@app.command("report")
@config_options("report_cfg", ReportConfig, rename={"notes": "note"})
@config_options("metrics_cfg", MetricsConfig, skip=("retention_pairs",))
def report_cmd(
    metrics_cfg: MetricsConfig, report_cfg: ReportConfig,
    rated: Annotated[Path, typer.Option(help="Folder of <i>_<model>_<harmful|helpful>.json rated answers; the first model is the base.")],
    out: Annotated[Path, typer.Option(help="Folder for metrics.json, report.md and figures/.", parser=output_path)],
    retention: Annotated[Optional[list[str]], typer.Option(help="before:after model pair; repeat for more. Default: base to every model, and sft to sftdpo.")] = None,
    refusals: Annotated[Optional[str], typer.Option(help="Refusal measure: patterns (default), xstest-prefix, or a folder from train-refusal.")] = None,
    suite_answers: Annotated[Optional[Path], typer.Option(help="Folder of <i>_<model>_suite-<name>.json answers (XSTest, prompt files); default: --rated.")] = None,
    strict: Annotated[bool, typer.Option(help="Refuse files that look like answer files but are misnamed; --no-strict leaves them out and lists them.")] = True,
):
    """Turn rated answers into metrics.json and report.md: the study's tables with intervals and paired tests."""
    metrics_cfg = dataclasses.replace(metrics_cfg, retention_pairs=parse_retention(retention))
    check_output_dir(out)
    models = load_rated_dir(rated, strict)
    notes = list(report_cfg.notes) + [f"Rated answers: `{rated}` ({len(models)} models; base: {models[0].name})."]
    left_out = [p.name for p in misnamed_files(rated)]
    if left_out:
        typer.echo(f"left out (misnamed, --no-strict): {', '.join(left_out)}", err=True)
        notes.append(f"Left out as misnamed (--no-strict): {', '.join(f'`{n}`' for n in left_out)}.")
    suites = suite_files(suite_answers or rated, [m.name for m in models])
    measure = load_refusals(refusals or "patterns")
    decisions = decide(measure, {m.name: m.answers for m in models},
                       {name: {"kind": next(iter(by_model.values()))[0].get("suite_kind", "prompts"), "answers": by_model}
                        for name, by_model in suites.items()})
    metrics = compute_metrics(models, metrics_cfg, decisions)  # bad settings fail here, before anything is written
    write_report(models, metrics, out, decisions, dataclasses.replace(report_cfg, notes=notes))
    for name, m in metrics["models"].items():
        typer.echo(f"{name:>10}: HmR {m['HmR']:5.1f}  HpR {m['HpR']:5.1f}  CAS {m['CAS']:5.1f}")
    typer.echo(f"report: {out / 'report.md'}\nmetrics: {out / 'metrics.json'}")


def suite_files(folder: Path, models: list[str]) -> dict[str, dict[str, list[dict]]]:
    """{suite: {model: answers}} from `<i>_<model>_suite-<suite>.json`; every model must have each suite."""
    found: dict[str, dict[str, list[dict]]] = {}
    for path in sorted(Path(folder).glob("*_suite-*.json")):
        m = SUITE_FILE.match(path.name)
        if not m:
            continue
        if m.group(2) not in models:
            raise InputError(f"{path}: suite answers of {m.group(2)!r}, a model with no rated answers "
                             f"(models: {', '.join(models)})")
        found.setdefault(m.group(3), {})[m.group(2)] = read_suite_answers(path)
    for suite, by_model in found.items():
        missing = [n for n in models if n not in by_model]
        if missing:
            raise InputError(f"{folder}: suite {suite!r} has no answers of {', '.join(missing)}")
        found[suite] = {n: by_model[n] for n in models}
    return found


OVERRIDES = Annotated[Optional[list[str]], typer.Argument(help="key=value overrides, e.g. training.learning_rate=1e-5 output_dir=runs/x")]


@app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_cmd(
    method: Annotated[Literal["sft", "dpo"], typer.Argument(help="sft or dpo")],
    recipe: Annotated[Path, typer.Argument(help="A training recipe YAML (see configs/recipes/).")],
    overrides: OVERRIDES = None,
):
    """Train SFT or DPO from a recipe through TRL; rerunning resumes from the last complete checkpoint."""
    declared = load_yaml(recipe)[0].get("method")
    if declared not in (None, method):
        raise InputError(f"{recipe}: the recipe says method: {declared}, but you ran `alignscope train {method}`")
    cfg = load_recipe(recipe, [*(overrides or []), f"method={method}"])
    result = train(cfg)
    if result.skipped:
        typer.echo(f"{cfg.output_dir} already holds this recipe's finished run; nothing to do")
    losses = [x["loss"] for x in result.log_history if "loss" in x]
    if losses:
        typer.echo(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} logged steps")
    typer.echo(f"model: {result.model_dir}")


def progress(total: int | None, desc: str):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="answer", leave=False, disable=None)
    return bar, bar.update


def result_cache(kind: str, enabled: bool) -> ResultCache:
    return ResultCache(cache_dir() / kind, enabled=enabled)


@app.command("generate")
@config_options("cfg", GenerateConfig)
def generate_cmd(
    cfg: GenerateConfig,
    model: Annotated[str, typer.Option(help="Hub id, model folder, or packaged name (gemma-3-270m, smollm2-135m-instruct).")],
    evalset: Annotated[Path, typer.Option(help="Evaluation set JSON from `alignscope evalset`.")],
    out: Annotated[Path, typer.Option(help="Folder for <index>_<name>_<harmful|helpful>.json answers.", parser=output_path)],
    name: Annotated[Optional[str], typer.Option(help="Model name in the file names (default: the model's folder or id name).")] = None,
    index: Annotated[int, typer.Option(help="Order among models; the report takes the lowest as the base.")] = 1,
    revision: Annotated[Optional[str], typer.Option(help="Hub revision of the model.")] = None,
    cache: Annotated[bool, typer.Option(help="Reuse and store answers in the cache.")] = True,
    allow_pickle: bool = False,
):
    """Greedy answers to an evaluation set, batched and cached."""
    name = check_name(name or Path(model.rstrip("/")).name.replace("_", "-"), "--name")
    check_index(index)
    check_output_dir(out)
    doc = load_evalset(evalset)
    bar, tick = progress(len(doc["harmful"]) + len(doc["helpful"]), "generating")
    answers, info = answer_evalset(model, doc, cfg, result_cache("generations", cache), allow_pickle, revision,
                                   progress=tick)
    bar.close()
    write_answer_files(out, index, name, answers, info)
    typer.echo(f"{info['answers']} answers ({info['computed']} computed, {info['cached']} from the cache) "
               f"in {info['seconds']} s; stopped: {info['stopped']}; empty: {info['empty']}")
    typer.echo(f"written: {out}/{index}_{name}_harmful.json, {out}/{index}_{name}_helpful.json")


@app.command("score")
@config_options("cfg", ScoreConfig, rename={"model": "scorer"})
def score_cmd(
    cfg: ScoreConfig,
    answers: Annotated[Path, typer.Option(help="Folder of <i>_<model>_<harmful|helpful>.json answers.")],
    out: Annotated[Path, typer.Option(help="Folder for the rated files `alignscope report` reads.", parser=output_path)],
    cache: Annotated[bool, typer.Option(help="Reuse and store ratings in the cache.")] = True,
):
    """Rate answers with a judge (a reward model or a distilled judge), batched and cached."""
    info = rate_folder(answers, out, cfg, result_cache("scores", cache))
    typer.echo(f"{info['computed']} pairs rated, {info['cached']} from the cache, in {info['seconds']} s; "
               f"{info['empty_answers']} empty answers rated as they are; {info['answers_cut']} answers cut to fit")
    typer.echo(f"rated answers: {out}")


@app.command("train-rm", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_rm_cmd(
    recipe: Annotated[Path, typer.Argument(help="A reward-model recipe YAML (see configs/recipes/reward-model.yaml).")],
    overrides: OVERRIDES = None,
):
    """Train a local reward model with TRL's RewardTrainer; reports held-out pair accuracy."""
    manifest = train_reward_model(load_rm_config(recipe, overrides or []))
    typer.echo(f"held-out pair accuracy {manifest['heldout_accuracy']:.3f} on {manifest['heldout_pairs']} pairs "
               f"(before training {manifest['heldout_accuracy_before_training']:.3f}; "
               f"OpenAssistant DeBERTa on Anthropic HH: {manifest['openassistant_hh_accuracy']:.2f})")
    typer.echo(f"model: {manifest['config']['output_dir']}/model")


@app.command("train-judge")
@config_options("cfg", DistillConfig, rename={"output_dir": "out", "backbones": "backbone"})
def train_judge_cmd(cfg: DistillConfig):
    """Distil a reference judge's ratings (OpenAssistant's, of the reference study's answers) into a judge
    on a packaged backbone; validates it leaving each model out and leaving prompts out."""
    bar, tick = progress(None, "answers read by the backbone")
    record = train_judge(cfg, progress=tick)
    bar.close()
    for scheme, v in record["validation"].items():
        j, base = v["judge"], v["category_mean"]
        spearman = ", ".join(f"{c} {x:.2f}" for c, x in j["spearman"].items() if x is not None)
        typer.echo(f"{scheme.replace('_', ' ')}: rate error {j['mean_abs_error']:.1f} points (worst "
                   f"{j['worst_error']:.0f}; category means: {base['mean_abs_error']:.1f}, worst "
                   f"{base['worst_error']:.0f}); Spearman {spearman}")
    typer.echo(f"judge: {cfg.output_dir}  (alignscope score --scorer {cfg.output_dir})")


@app.command("judge-agreement")
@config_options("metrics_cfg", MetricsConfig, skip=("retention_pairs", "sweep_min", "sweep_max", "sweep_step",
                                                    "bootstrap_resamples", "seed", "ci_method", "confidence"))
@config_options("cfg", ScoreConfig, rename={"model": "judge"})
@config_options("where", AgreementConfig)
def judge_agreement_cmd(
    cfg: ScoreConfig, metrics_cfg: MetricsConfig, where: AgreementConfig,
    cache: Annotated[bool, typer.Option(help="Reuse and store ratings in the cache.")] = True,
):
    """Rate a reference judge's answers with another judge and measure their agreement: the judge card."""
    out = check_output_dir(where.out)
    card = judge_agreement(cfg, where.rated, metrics_cfg, where.reference_judge, result_cache("scores", cache))
    write_card(card, out)
    cats, errors = card["categories"], card["errors"]
    typer.echo("Spearman with the reference: " + ", ".join(f"{c} {fmt(v['spearman'], 3)}" for c, v in cats.items()))
    typer.echo(f"Table 1 cells: mean |error| {errors['judge']['mean_abs']:.1f} points (worst "
               f"{errors['judge']['worst']:.0f}); after a monotone map {errors['mapped']['mean_abs']:.1f} "
               f"(worst {errors['mapped']['worst']:.0f})")
    typer.echo(f"card: {out / 'judge.md'}")


@app.command("train-refusal")
@config_options("cfg", RefusalTrainConfig, rename={"output_dir": "out", "penalties": "penalty"})
def train_refusal_cmd(cfg: RefusalTrainConfig):
    """Learn a refusal classifier from labelled answers (XSTest's completion CSVs, answer files with a `refused`
    label); validates it leaving each model out, whole and cut to the study's answer length."""
    record = train_refusal_classifier(cfg)
    typer.echo(f"trained on {', '.join(t['model'] for t in record['trained_on'])}; penalty C = "
               f"{record['chosen_penalty']:g} (inner cross-validation)")
    typer.echo(f"classifier: {cfg.output_dir}  (alignscope refusal-card --refusals {cfg.output_dir} --labelled ...)")


@app.command("refusal-card")
@config_options("cfg", RefusalCardConfig)
def refusal_card_cmd(
    cfg: RefusalCardConfig,
    labelled: Annotated[list[Path], typer.Option(help="Labelled answers: XSTest completion CSVs, answer files with `refused`; repeat.")],
    out: Annotated[Path, typer.Option(help="Folder for refusal-card.json and refusal-card.md.")],
):
    """Measure a refusal classifier against answers people labelled: accuracy, kappa, recall, precision per file
    and pooled, whole and cut, with XSTest's prefix baseline beside it."""
    card = refusal_card(cfg, [str(p) for p in labelled])
    write_refusal_card(card, out)
    for form in ("whole", "cut"):
        m, b = card["pooled"]["measure"][form], card["pooled"]["baseline"][form]
        typer.echo(f"{form:>5}: kappa {fmt(m['kappa'], 2)} (baseline {fmt(b['kappa'], 2)}), accuracy "
                   f"{100 * m['accuracy']:.1f}%, n {m['n']}")
    typer.echo(f"card: {out / 'refusal-card.md'}")


@app.command("classify-refusals")
def classify_refusals_cmd(
    answers: Annotated[Path, typer.Option(help="XSTest completion CSV, or a JSON list of {prompt, response}.")],
    out: Annotated[Path, typer.Option(help="JSON file: one record per answer, in input order, with `refused`.")],
    refusals: Annotated[str, typer.Option(help="patterns, xstest-prefix, or a folder from train-refusal.")] = "patterns",
):
    """Decide for each answer whether it refuses."""
    records = read_answer_records(answers)
    measure = load_refusals(refusals)
    decided = decide(measure, {"file": {"answers": records}})["flags"]["file"]["answers"]
    atomic_write_json(out, [r | {"refused": d} for r, d in zip(records, decided)])
    typer.echo(f"{sum(decided)} of {len(records)} answers refuse ({measure.name}); written to {out}")


@app.command("study", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def study_cmd(
    config: Annotated[Path, typer.Argument(help="A study config YAML (see configs/).")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value overrides, e.g. data=../shared/data/hh-rlhf output_dir=runs/x")] = None,
):
    """Run a whole study: evaluation set, training, generation, scoring, metrics and report; rerun to resume."""
    run_study(load_study(config, overrides or []), config)


def spread_list_options(argv: list[str]) -> list[str]:
    """`--labelled a.csv b.csv` read as `--labelled a.csv --labelled b.csv`: click takes a list option once per
    value, and a shell glob or the README gives several files after one. Only for commands without positional
    arguments, where every word after such an option can only be one of its values."""
    command = typer.main.get_command(app).commands.get(argv[0]) if argv else None
    kinds = [getattr(p, "param_type_name", None) for p in command.params] if command else []
    if command is None or "argument" in kinds:
        return argv
    lists = {name for p, kind in zip(command.params, kinds) if kind == "option" and p.multiple for name in p.opts}
    out, option, taken = [], None, 0
    for arg in argv:
        if arg.startswith("-"):
            option, taken = (arg if arg in lists else None), 0
            out.append(arg)
        elif option is not None and taken:
            out += [option, arg]
        else:
            out.append(arg)
            taken += option is not None
    return out


def main() -> None:
    keep_freed_memory()  # before torch allocates anything
    try:
        app(args=spread_list_options(sys.argv[1:]))
    except InputError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted; finished artifacts are kept, rerun to resume", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
