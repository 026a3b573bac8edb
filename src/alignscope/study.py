"""The study runner: one config file to the whole study, as a list of declared stages.

  evaluation set -> (judge) -> for each base model: train its variants ->
  generate -> score -> report -> (overview over base models) -> manifest

Each stage names what decides its outputs, the outputs, and the work (see
`stages`); a stage whose outputs exist under the same key is skipped, and one
killed midway resumes (training from its last checkpoint, generation and
scoring from the cache, which they fill answer by answer). Every file a stage
reads is named by the config, never found by a glob, so files left by an
earlier run with other variants are never read.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from alignscope.judges.card import judge_agreement, judge_record, write_card
from alignscope.answers import (CATEGORIES, answer_filename, answer_files, generation_filename, load_rated_dir,
                               load_rated_files, read_suite_answers, suite_filename)
from alignscope.cache import ResultCache
from alignscope.config import parse_config
from alignscope.data import is_hh_source, resolve_file
from alignscope.judges.train_judge import DistillConfig, distill_key, train_judge
from alignscope.evalset import build_evalset, load_evalset, write_evalset
from alignscope.generate import answer_evalset, answer_files_of, answers_of_file, summarize, write_answer_files
from alignscope.report import write_html_report
from alignscope.io import InputError, atomic_write_json, atomic_write_text, read_json, sha256_file
from alignscope.judges import DISTILLED_MANIFEST, OPENASSISTANT_JUDGE, judge_fingerprint
from alignscope.memory import allocator
from alignscope.metrics import MetricsConfig, compute_metrics, stop_reason_tests
from alignscope.models import cache_dir, count_parameters, model_fingerprint, resolve_model
from alignscope.refusal import decide, load_refusals
from alignscope.refusal.card import RefusalCardConfig, card_view, refusal_card, write_refusal_card
from alignscope.refusal.classifier import CLASSIFIER_MANIFEST, RefusalTrainConfig, train_refusal_classifier
from alignscope.refusal.labelled import read_labelled_files
from alignscope.provenance import study_manifest, trained_model_record
from alignscope.report import (FIGURE_FILES, ReportConfig, answers_section, artifact_index, beside_reference,
                               html_sections, judge_check_section, judge_name, judge_section, judge_view,
                               refusal_name, study_notes, timings_table, write_report)
from alignscope.judges.reward_model import RM_MANIFEST, RewardModelConfig, rm_config_hash, train_reward_model
from alignscope.scale import scale_analysis, scale_figure, scale_markdown
from alignscope.judges.score import ScoreConfig, rate_files, rated_paths
from alignscope.stages import Stage, StageLog
from alignscope.study_config import (BaseModelConfig, StudyConfig, as_override, load_study, resolve_path,
                                     trained_variants, variant_index, variant_overrides, variant_start)
from alignscope.suites import local_file
from alignscope.train import finished_run, load_recipe, recipe_hash, train

__all__ = ["StudyConfig", "StudyRun", "load_study", "run_study"]

# The code that computes and renders a report is part of its key: rerendering takes a
# second, and a report left by an older alignscope would otherwise stand beside newer results.
REPORT_CODE = ("judges/card.py", "answers.py", "markdown.py", "metrics.py", "scale.py", "refusal/card.py",
               *(f"report/{name}" for name in ("__init__.py", "tables.py", "findings.py", "figures.py", "refusals.py",
                                                "judge.py", "study.py", "render.py", "page.py", "html/browser.js",
                                                "html/page.css")))


# refusals.json as refusal.decide returns it (1: per variant, flags only)
REFUSALS_LAYOUT = 2


def code_hash(files: tuple[str, ...]) -> list[str]:
    return [sha256_file(Path(__file__).parent / f) for f in files]


@dataclass
class StudyResult:
    output_dir: Path
    metrics: dict
    timings: list[dict]


@dataclass
class StudyRun:
    """One run of a study: its config, folders and caches, and what each stage has produced."""

    cfg: StudyConfig
    config_path: Path | None = None
    quiet: bool = False
    out: Path = field(init=False)
    stages: StageLog = field(init=False)
    evalset: dict = field(default_factory=dict)
    judge: dict = field(default_factory=dict)  # what the judge is, for reports and the manifest
    judge_view: dict = field(default_factory=dict)  # ... with its card and error, as a report shows it
    models: dict = field(default_factory=dict)  # (base, variant) -> model spec (folder, packaged name or hub id)
    trained: dict = field(default_factory=dict)  # (base, variant) -> what training reported
    answers: dict = field(default_factory=dict)  # (base, variant) -> what generation reported
    reports: dict = field(default_factory=dict)  # base -> its metrics

    def __post_init__(self):
        self.out = Path(self.cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.base_dir = self.config_path.parent if self.config_path else Path(".")
        self.stages = StageLog(self.out / "stages.json", self.quiet)
        self.index = variant_index(self.cfg)
        self.evalset_path = self.out / "evalset.json"
        self.generations = ResultCache(cache_dir() / "generations")
        self._judge_fingerprint: str | None = None
        self.scores = ResultCache(cache_dir() / "scores")

    def run(self) -> StudyResult:
        started = time.time()
        if not self.quiet:
            print(self.stages.plan(self.stage_names()), flush=True)
        atomic_write_text(self.out / "study.yaml", yaml.safe_dump(asdict(self.cfg), sort_keys=False))
        self.stages.run(self.evalset_stage())
        self.evalset = load_evalset(self.evalset_path)
        self.judge = self.judge_info(self.run_if_declared(self.judge_stage()))
        self.run_if_declared(self.card_stage())
        self.judge_view = self.judge_report()
        self.run_if_declared(self.refusal_classifier_stage())
        self.run_if_declared(self.refusal_card_stage())
        for base in self.cfg.models:
            self.models[base.name, "base"] = base.model
            for variant in trained_variants(self.cfg):
                self.trained[base.name, variant] = self.stages.run(self.train_stage(base, variant))
            for variant in self.variants:
                self.answers[base.name, variant] = self.stages.run(self.generate_stage(base, variant))
            self.stages.run(self.score_stage(base))
            self.stages.run(self.refusals_stage(base))
            self.stages.run(self.report_stage(base))
            self.reports[base.name] = read_json(self.out / "reports" / base.name / "metrics.json")
        self.stages.run(self.overview_stage())
        self.stages.timings.append({"stage": "total", "seconds": round(time.time() - started, 1), "status": ""})
        atomic_write_json(self.out / "manifest.json", self.manifest())
        atomic_write_text(self.out / "timings.md", timings_table(self.stages.timings))
        if not self.quiet:
            print(timings_table(self.stages.timings))
            print(f"report: {self.out / 'report.md'}\nmetrics: {self.out / 'metrics.json'}")
        return StudyResult(self.out, read_json(self.out / "metrics.json"), self.stages.timings)

    def stage_names(self) -> list[str]:
        """The stages `run` goes through, in its order, for the plan it prints first."""
        cfg = self.cfg
        names = ["evalset"]
        names += ["judge"] if cfg.judge.distill is not None or cfg.judge.train is not None else []
        names += ["judge card"] if cfg.reference else []
        names += ["refusal classifier"] if cfg.refusals.train else []
        names += ["refusal card"] if self.refusal_labelled() else []
        for base in cfg.models:
            names += [f"train {base.name}/{v}" for v in trained_variants(cfg)]
            names += [f"generate {base.name}/{v}" for v in self.variants]
            names += [f"{stage} {base.name}" for stage in ("score", "refusals", "report")]
        return names + ["overview"]

    def run_if_declared(self, stage: Stage | None):
        return self.stages.run(stage) if stage else None

    @property
    def variants(self) -> list[str]:
        return list(self.cfg.variants)

    def start(self, variant: str) -> str:
        return variant_start(self.cfg.train, variant)

    def method(self, variant: str) -> str | None:
        return self.trained[next(iter(self.cfg.models)).name, variant]["method"] if variant != "base" else None

    @property
    def has_xstest(self) -> bool:
        return any(s["kind"] == "xstest" for s in self.evalset.get("suites", {}).values())

    @property
    def suites(self) -> list[str]:
        return list(self.evalset.get("suites", {}))

    # ----------------------------------------------------------------------- stages

    def data_files(self, subsets: list[str], split: str, revision: str | None = None) -> list[Path]:
        """The HH-RLHF files a stage reads (from the hub's cache when the data is the hub's)."""
        return [resolve_file(self.cfg.data, s, split, revision) for s in subsets]

    def reference_files(self) -> list[Path]:
        return [f.path for f in answer_files(self.cfg.reference)] if self.cfg.reference else []

    def evalset_stage(self) -> Stage:
        cfg = dataclasses.replace(self.cfg.evalset, data=self.cfg.data)
        suite_files = [f for f in map(local_file, cfg.suites) if f]
        return Stage("evalset", self.data_files([cfg.harmful_subset, cfg.helpful_subset], cfg.split, cfg.revision)
                     + suite_files, {**asdict(cfg), "data": None}, [self.evalset_path],
                     lambda: str(write_evalset(build_evalset(cfg), self.evalset_path)))

    def reward_model_config(self) -> RewardModelConfig:
        """A reward model trained here, on data that shares no dialogue with the evaluation set."""
        spec = {**self.cfg.judge.train, "output_dir": str(self.out / "judge")}
        spec["data"] = {**spec.get("data", {}), "source": self.cfg.data}
        if self.cfg.exclude_evalset_from_training:
            # and the reference's prompts: its card rates the reference's answers with this model
            spec["data"]["exclude_prompts_of"] = [str(self.evalset_path)] + ([self.cfg.reference]
                                                                               if self.cfg.reference else [])
        return parse_config(RewardModelConfig, spec, "judge.train")

    def distill_config(self) -> DistillConfig:
        """A judge distilled here from the reference's ratings."""
        spec = {**self.cfg.judge.distill, "output_dir": str(self.out / "judge"), "ratings": self.cfg.reference}
        return parse_config(DistillConfig, spec, "judge.distill")

    def judge_stage(self) -> Stage | None:
        """The judge, made here when the config asks for one; None when it is used as it is."""
        if self.cfg.judge.distill is not None:
            cfg = self.distill_config()

            def distil() -> dict:
                answers = sum(len(read_json(p)) for p in self.reference_files()) * len(cfg.backbones)
                bar, tick = progress_bar(answers, "judge features", self.quiet)
                record = train_judge(cfg, tick)
                bar.close()
                return {"validation": record["validation"], "backbones": record["backbones"],
                        "trained_prompts": record["trained_on"]["prompts"], "answers": record["trained_on"]["answers"]}

            return Stage("judge", self.reference_files(), distill_key(cfg), [self.out / "judge" / DISTILLED_MANIFEST],
                         distil)
        if self.cfg.judge.train is not None:
            rm_cfg = self.reward_model_config()

            def fit() -> dict:
                manifest = train_reward_model(rm_cfg)
                return {k: manifest[k] for k in ("heldout_accuracy", "heldout_accuracy_before_training",
                                                 "heldout_pairs", "trained_pairs", "openassistant_hh_accuracy",
                                                 "backbone")}

            inputs = self.data_files(rm_cfg.data.subsets, rm_cfg.data.split, rm_cfg.data.revision)
            return Stage("judge", inputs + [self.evalset_path] + self.reference_files(), rm_config_hash(rm_cfg),
                         [self.out / "judge" / "model" / RM_MANIFEST], fit)
        return None

    def judge_info(self, made: dict | None) -> dict:
        """What reports and the manifest say of the judge (the report words it)."""
        judge = self.cfg.judge
        if judge.distill is not None:
            return {"model": str(self.out / "judge"), "kind": "distilled", "distilled": made,
                    "reference_judge": self.cfg.reference_judge, "reference": self.cfg.reference}
        if judge.train is not None:
            rm = self.reward_model_config()
            return {**made, "trained_here": True, "kind": "reward model", "model": str(self.out / "judge" / "model"),
                    "split": rm.data.split, "backbone": rm.backbone, "backbone_path": made["backbone"]}
        return {"model": judge.model, "revision": judge.revision, "trained_here": False, "kind": "given",
                "reference_judge": self.cfg.reference_judge}

    def card_stage(self) -> Stage | None:
        """The judge's card against the reference's ratings: a distilled judge's own held-out
        validation; any other judge's agreement on the reference's answers, rated by it."""
        if not self.cfg.reference:
            return None
        folder = self.out / "judge-card"
        score_cfg = self.score_config()
        reference = {"folder": self.cfg.reference, "judge": self.cfg.reference_judge}

        def work() -> None:
            if self.judge["kind"] == "distilled":
                models = load_rated_dir(self.cfg.reference)
                card = {"judge": judge_record(score_cfg, models),
                        "reference": {**reference, "answers": sum(len(m.answers[c]) for m in models for c in CATEGORIES)}}
            else:
                card = judge_agreement(score_cfg, self.cfg.reference, self.cfg.metrics, self.cfg.reference_judge,
                                       self.scores)
            write_card(card, folder)

        key = [self.judge_fingerprint(), self.cfg.reference_judge, asdict(self.cfg.metrics),
               code_hash(("judges/card.py",))]
        return Stage("judge card", self.reference_files(), key, [folder / "judge.json", folder / "judge.md"], work)

    def judge_report(self) -> dict:
        """The judge as a study report presents it: with its card when this study declares one (a
        card left by an earlier run with a reference is never read)."""
        if not self.cfg.reference:
            return dict(self.judge)
        return judge_view(self.judge, read_json(self.out / "judge-card" / "judge.json"), "judge-card/judge.md",
                          [x["prompt"] for c in CATEGORIES for x in self.evalset[c]])

    def train_stage(self, base: BaseModelConfig, variant: str) -> Stage:
        spec = self.cfg.train[variant]
        start = self.start(variant)
        target = self.out / "models" / base.name / variant
        chosen = variant_overrides(spec, base, variant)
        overrides = [as_override(k, v) for k, v in chosen.items()] + ([f"method={spec.method}"] if spec.method else [])
        # the study's HH-RLHF, unless the variant names its own training data
        source = self.cfg.data if "data.source" not in chosen else own_data(chosen["data.source"], self.base_dir)
        overrides += [f"model={self.models[base.name, start]}", f"output_dir={target}", f"data.source={source}",
                      f"revision={base.revision if start == 'base' and base.revision else 'null'}"]
        if self.cfg.exclude_evalset_from_training:
            overrides.append(f"data.exclude_prompts_of={self.evalset_path}")
        if self.cfg.allow_pickle:
            overrides.append("allow_pickle=true")
        recipe = load_recipe(resolve_path(spec.recipe, self.base_dir), overrides)
        self.models[base.name, variant] = str(target / "model")

        digest = recipe_hash(recipe)

        def work() -> dict:
            try:
                finished_run(target, digest)
            except InputError as e:  # train() refuses too, but in terms of an output_dir a study user does not set
                raise InputError(f"train.{variant}: {target} holds a model trained with another recipe than this "
                                 "study now declares; a trained model is never overwritten: delete or move that "
                                 "folder to train it again") from e
            train(recipe)  # itself skips a finished run of the same recipe and resumes a killed one
            data = read_json(target / "data_manifest.json")
            hh = is_hh_source(recipe.data.source)  # else the file's or hub dataset's name stands for the subsets
            done = read_json(target / "done.json")
            return {"steps": done["global_step"], "rows_trained": data["rows_trained"],
                    "split": recipe.data.split if hh or recipe.data.source.startswith("hub:") else "",
                    "subsets": recipe.data.subsets if hh else [f["subset"] for f in data["files"]],
                    "method": recipe.method, "from": start, "lora": recipe.lora is not None,
                    "loss_type": recipe.dpo.loss_type if recipe.method == "dpo" else None,
                    "learning_rate": recipe.training.learning_rate, "heldout": done.get("heldout")}

        data = recipe.data
        inputs = (self.data_files(data.subsets, data.split, data.revision) if is_hh_source(data.source) else
                  [Path(data.source)] if Path(data.source).is_file() else [])  # a hub dataset: its commit is hashed
        inputs += [self.evalset_path] if self.cfg.exclude_evalset_from_training else []
        return Stage(f"train {base.name}/{variant}", inputs, digest,
                     [target / "model", target / "done.json"], work)

    def generate_stage(self, base: BaseModelConfig, variant: str) -> Stage:
        spec = self.models[base.name, variant]
        revision = base.revision if variant == "base" else None
        folder = self.out / "answers" / base.name
        index = self.index[variant]

        def work() -> dict:
            total = len(self.evalset["harmful"]) + len(self.evalset["helpful"])
            total += sum(len(s["items"]) for s in self.evalset.get("suites", {}).values())
            bar, tick = progress_bar(total, f"{base.name}/{variant}", self.quiet)
            answers, info = answer_evalset(spec, self.evalset, self.cfg.generate, self.generations,
                                           self.cfg.allow_pickle, revision, progress=tick)
            bar.close()
            write_answer_files(folder, index, variant, answers, info)
            return info

        key = [model_fingerprint(resolve_model(spec, self.cfg.allow_pickle), revision), asdict(self.cfg.generate)]
        return Stage(f"generate {base.name}/{variant}", [self.evalset_path], key,
                     answer_files_of(folder, index, variant, self.suites) + [folder / generation_filename(index, variant)],
                     work)

    def answer_files(self, base: BaseModelConfig, kind: str) -> list[Path]:
        """This study's own answer (or rated) files of one base model, in variant order."""
        return [self.out / kind / base.name / answer_filename(self.index[v], v, c)
                for v in self.variants for c in CATEGORIES]

    def judge_fingerprint(self) -> str:
        """The judge's fingerprint, taken once it exists (after the judge stage) and kept for the run:
        every stage it keys is keyed by the same judge."""
        if self._judge_fingerprint is None:
            cfg = self.score_config()
            self._judge_fingerprint = judge_fingerprint(cfg.model, cfg.allow_pickle, cfg.revision)
        return self._judge_fingerprint

    def score_config(self) -> ScoreConfig:
        judge = self.cfg.judge
        return ScoreConfig(model=self.judge["model"], max_length=judge.max_length, batch_size=judge.batch_size,
                           allow_pickle=self.cfg.allow_pickle, revision=self.judge.get("revision"))

    def score_stage(self, base: BaseModelConfig) -> Stage:
        score_cfg = self.score_config()
        files = self.answer_files(base, "answers")

        def work() -> dict:
            bar, tick = progress_bar(sum(len(read_json(p)) for p in files), f"scoring {base.name}", self.quiet)
            info = rate_files(rated_paths(files), self.out / "rated" / base.name, score_cfg, self.scores, tick)
            bar.close()
            return info

        key = [self.judge_fingerprint(), asdict(score_cfg) | {"model": None}]
        return Stage(f"score {base.name}", files, key, self.answer_files(base, "rated"), work)

    # ------------------------------------------------------------------ refusals

    def refusal_train_config(self) -> RefusalTrainConfig:
        spec = {**self.cfg.refusals.train, "output_dir": str(self.out / "refusal-classifier"),
                "allow_pickle": self.cfg.allow_pickle}
        return parse_config(RefusalTrainConfig, spec, "refusals.train")

    @property
    def refusal_spec(self) -> str:
        return str(self.out / "refusal-classifier") if self.cfg.refusals.train else self.cfg.refusals.classifier

    def refusal_key(self) -> list:
        """What decides a refusal decision: the measure, and a trained classifier's whole record."""
        spec = self.refusal_spec
        path = Path(spec) / CLASSIFIER_MANIFEST
        return [spec, sha256_file(path) if path.is_file() else load_refusals(spec).describe()]

    def refusal_classifier_stage(self) -> Stage | None:
        if not self.cfg.refusals.train:
            return None
        cfg = self.refusal_train_config()

        def work() -> dict:
            answers = sum(len(s.answers) for s in read_labelled_files(cfg.labelled))
            bar, tick = progress_bar(2 * answers, "refusal classifier: embedding whole and cut answers", self.quiet)
            record = train_refusal_classifier(cfg, tick)
            bar.close()
            return {"trained_on": record["trained_on"], "chosen_penalty": record["chosen_penalty"]}

        return Stage("refusal classifier", [Path(f) for f in cfg.labelled], asdict(cfg) | {"output_dir": None},
                     [self.out / "refusal-classifier" / CLASSIFIER_MANIFEST], work)

    def refusal_labelled(self) -> list[str]:
        return self.cfg.refusals.labelled or (self.cfg.refusals.train or {}).get("labelled", [])

    def refusal_card_stage(self) -> Stage | None:
        labelled = self.refusal_labelled()
        if not labelled:
            return None
        folder = self.out / "refusal-card"
        cfg = RefusalCardConfig(refusals=self.refusal_spec, cut_tokens=self.cfg.generate.max_new_tokens,
                                allow_pickle=self.cfg.allow_pickle)
        return Stage("refusal card", [Path(f) for f in labelled],
                     [self.refusal_key(), asdict(cfg) | {"refusals": None}, asdict(self.cfg.metrics)],
                     [folder / "refusal-card.json", folder / "refusal-card.md"],
                     lambda: write_refusal_card(refusal_card(cfg, labelled, self.cfg.metrics), folder) and None)

    def refusals_path(self, base: BaseModelConfig) -> Path:
        return self.out / "refusals" / base.name / "refusals.json"

    def refusals_stage(self, base: BaseModelConfig) -> Stage:
        """Every answer of every variant, HH and suites, classified once by the study's refusal measure."""
        folder = self.out / "answers" / base.name
        hh = {v: {c: folder / answer_filename(self.index[v], v, c) for c in CATEGORIES} for v in self.variants}
        suites = {v: {s: folder / suite_filename(self.index[v], v, s) for s in self.suites} for v in self.variants}

        def work() -> None:
            measure = load_refusals(self.refusal_spec, self.cfg.allow_pickle)
            decided = decide(measure, {v: {c: read_json(p) for c, p in hh[v].items()} for v in self.variants},
                             {s: {"kind": self.evalset["suites"][s]["kind"],
                                  "answers": {v: read_suite_answers(suites[v][s]) for v in self.variants}}
                              for s in self.suites})
            atomic_write_json(self.refusals_path(base), decided)

        inputs = [p for v in self.variants for p in [*hh[v].values(), *suites[v].values()]]
        # the file's layout is part of the key: one written by an older alignscope is made again, not misread
        return Stage(f"refusals {base.name}", inputs, self.refusal_key() + [REFUSALS_LAYOUT], [self.refusals_path(base)],
                     work)

    def refusals(self, base: BaseModelConfig) -> dict:
        """What `refusals_stage` decided: every HH and suite answer's refusal decision."""
        return read_json(self.refusals_path(base))

    def report_stage(self, base: BaseModelConfig) -> Stage:
        files = self.answer_files(base, "rated")
        folder = self.out / "reports" / base.name
        metrics_cfg = self.cfg.metrics
        if metrics_cfg.retention_pairs is None:
            # against base, and against the variant each one started from where that one is evaluated too
            pairs = [["base", v] for v in self.variants if v != "base"]
            pairs += [[self.start(v), v] for v in self.variants if v != "base" and self.start(v) != "base"
                      and self.start(v) in self.variants]
            metrics_cfg = MetricsConfig(**{**asdict(self.cfg.metrics), "retention_pairs": pairs})
        # counted from the HH answer files themselves: what the stop tests read, whatever else was asked
        answer_info = {v: {k: summarize([a for c in CATEGORIES for a in answers_of_file(
            self.out / "answers" / base.name / answer_filename(self.index[v], v, c))])[k]
            for k in ("answers", "stopped", "empty", "mean_tokens")} for v in self.variants}
        train_info = {v: self.trained[base.name, v] for v in self.variants if (base.name, v) in self.trained}
        # every trained variant's held-out evidence, those trained only to start another from included
        training = {v: self.trained[base.name, v] for v in trained_variants(self.cfg)}
        notes = study_notes(study=self.cfg.name, base_model=base.model, evalset=self.evalset,
                            max_new_tokens=self.cfg.generate.max_new_tokens, data=self.cfg.data,
                            trainings=list(train_info.values()), judge=self.judge)
        report_cfg = ReportConfig(title=f"{self.cfg.report.title}: {base.name} ({base.model})",
                                  notes=notes + self.cfg.report.notes, figures=self.cfg.report.figures,
                                  judge_caveat=self.judge.get("model") == OPENASSISTANT_JUDGE)

        judge = {**self.judge_view, "card_file": f"../../{self.judge_view['card_file']}"} \
            if self.judge_view.get("card_file") else self.judge_view
        leading = [judge_section(judge)]
        if self.cfg.reference:
            reference = {"judge": self.cfg.reference_judge, "description": f"`{self.cfg.reference}`",
                         "metrics": compute_metrics(load_rated_dir(self.cfg.reference), self.cfg.metrics)}
            leading.append(lambda metrics: beside_reference(metrics, reference, judge_name(self.judge)))

        card = self.out / "refusal-card" / "refusal-card.json"

        def work() -> None:
            models = load_rated_files(files)
            refusals = self.refusals(base)
            metrics = compute_metrics(models, metrics_cfg, refusals)
            stop_tests = stop_reason_tests(models)
            metrics |= {"answers": answer_info, "stop_tests": stop_tests, "judge": judge, "training": training}
            if self.refusal_labelled():
                metrics["refusal_card"] = card_view(read_json(card), "../../refusal-card/refusal-card.md",
                                                    self.cfg.generate.max_new_tokens)
            sections = [answers_section(self.variants, answer_info, train_info, stop_tests)]
            if self.judge["kind"] == "distilled" and judge.get("error"):
                sections.append(judge_check_section(models, judge))
            write_report(models, metrics, folder, refusals, report_cfg, sections, leading)

        key = [asdict(metrics_cfg), asdict(report_cfg), answer_info, training, judge, code_hash(REPORT_CODE)]
        inputs = [self.refusals_path(base)] + ([card] if self.refusal_labelled() else [])
        return Stage(f"report {base.name}", files + self.reference_files() + inputs, key,
                     [folder / "metrics.json", folder / "report.md", folder / "report.html"], work)

    def overview_stage(self) -> Stage:
        """report.md and metrics.json at the top of output_dir: the base model's own report when
        there is one, an overview with the scale analysis when there are several."""
        reports = {b.name: self.out / "reports" / b.name for b in self.cfg.models}
        inputs = [folder / f for folder in reports.values() for f in ("report.md", "metrics.json")]
        key = [[asdict(m) for m in self.cfg.models], asdict(self.cfg.report), code_hash(REPORT_CODE),
               [str(p.relative_to(self.out)) for p in self.artifacts()]]
        outputs = [self.out / "report.md", self.out / "metrics.json", self.out / "report.html"]
        if len(reports) == 1:
            name, folder = next(iter(reports.items()))

            def single() -> None:
                # links written for reports/<base>/: figures move down a level, the judge card up two
                text = (folder / "report.md").read_text().replace("](figures/", f"](reports/{name}/figures/") \
                    .replace("](../../", "](")
                atomic_write_text(self.out / "report.md", text + artifact_index(self.out, self.artifacts()))
                atomic_write_json(self.out / "metrics.json", self.reports[name])
                models = load_rated_files(self.answer_files(self.cfg.models[0], "rated"))
                write_html_report(self.out, [m.name for m in models],
                                  html_sections(models, self.reports[name], self.refusals(self.cfg.models[0])),
                                  refusal_name(self.reports[name]))

            return Stage("overview", inputs, key, outputs, single)

        def several() -> None:
            params = {m.name: m.parameters or count_parameters(m.model, m.revision, self.cfg.allow_pickle)
                      for m in self.cfg.models}
            rated = {m.name: load_rated_files(self.answer_files(m, "rated")) for m in self.cfg.models}
            dpo = [v for v in self.variants if v != "base" and self.method(v) == "dpo"]
            analysis = scale_analysis(self.reports, params, rated, self.cfg.metrics, dpo)
            scale_figure(analysis, self.out / "figures" / "scale.png")
            text = scale_markdown(self.cfg.report.title, self.cfg.name, analysis)
            atomic_write_text(self.out / "report.md", text + artifact_index(self.out, self.artifacts()))
            atomic_write_json(self.out / "metrics.json", {"scale": analysis, "models": self.reports,
                                                          "parameters": params})
            sections = [s for m in self.cfg.models
                        for s in html_sections(rated[m.name], self.reports[m.name], self.refusals(m), m.name)]
            write_html_report(self.out, [m.name for m in next(iter(rated.values()))], sections,
                              refusal_name(next(iter(self.reports.values()))))

        return Stage("overview", inputs, key, outputs, several)

    # ----------------------------------------------------------------------- records

    def artifacts(self) -> list[Path]:
        """The files a reader of the study opens, all declared by the config."""
        files = [self.out / n for n in ("evalset.json", "study.yaml", "stages.json", "manifest.json", "timings.md")]
        if self.judge["kind"] == "reward model":
            files.append(Path(self.judge["model"]) / RM_MANIFEST)
        elif self.judge["kind"] == "distilled":
            files.append(Path(self.judge["model"]) / DISTILLED_MANIFEST)
        if self.cfg.reference:
            files += [self.out / "judge-card" / "judge.md", self.out / "judge-card" / "judge.json"]
        if self.cfg.refusals.train:
            files.append(self.out / "refusal-classifier" / CLASSIFIER_MANIFEST)
        if self.refusal_labelled():
            files += [self.out / "refusal-card" / "refusal-card.md", self.out / "refusal-card" / "refusal-card.json"]
        for base in self.cfg.models:
            report = self.out / "reports" / base.name
            files += [report / "report.md", report / "report.html", report / "metrics.json"]
            figures = [f for f in FIGURE_FILES if f != "tradeoff.png" or self.has_xstest]
            files += [report / "figures" / f for f in figures] if self.cfg.report.figures else []
            files += [self.refusals_path(base)]
            files += [self.out / "answers" / base.name / suite_filename(self.index[v], v, s)
                      for v in self.variants for s in self.suites]
            files += self.answer_files(base, "answers") + self.answer_files(base, "rated")
            files += [self.out / "answers" / base.name / generation_filename(self.index[v], v)
                      for v in self.variants]
            files.append(self.out / "rated" / base.name / "scoring.json")
            for v in trained_variants(self.cfg):
                files += [self.out / "models" / base.name / v / n
                          for n in ("done.json", "recipe.yaml", "data_manifest.json", "train_log.json", "heldout.json")]
        return files

    def manifest(self) -> dict:
        trained = {f"{b}/{v}": trained_model_record(self.out / "models" / b / v) for b, v in self.trained}
        judge = dict(self.judge)
        if judge.get("model"):
            judge["fingerprint"] = self.judge_fingerprint()
        return {**study_manifest(
            name=self.cfg.name, config=asdict(self.cfg), evalset_path=self.evalset_path, evalset=self.evalset,
            config_file=str(self.config_path) if self.config_path else None, judge=judge, trained=trained,
            answers={f"{b}/{v}": {k: info.get(k) for k in ("fingerprint", "revision", "settings", "computed", "cached")}
                     for (b, v), info in self.answers.items()},
            seeds={"evalset": self.cfg.evalset.seed, "metrics_bootstrap": self.cfg.metrics.seed,
                   "training": {name: record["seed"] for name, record in trained.items()}},
            timings=self.stages.timings), "allocator": allocator()}


def own_data(source: str, base_dir: Path) -> str:
    """A variant's own training data: a hub dataset as named, a file as it stands or next to the config."""
    return source if source.startswith("hub") else str(resolve_path(source, base_dir))


def progress_bar(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="answer", leave=False, disable=quiet or None)
    return bar, bar.update


def run_study(cfg: StudyConfig, config_path: str | Path | None = None, quiet: bool = False) -> StudyResult:
    return StudyRun(cfg, Path(config_path) if config_path else None, quiet).run()
