"""`alignscope train-judge`: a judge distilled from a reference judge's ratings.

With no hub there is no OpenAssistant reward model, but its ratings of the
reference study's 400 answers are here. A distilled judge learns them: frozen
features of each answer from a packaged LM backbone (`judge.BackboneFeatures`),
and per category (harmful, helpful) ridge regressions, one per feature set,
averaged. Its ratings lie on the reference judge's scale, so the study's -3 and
-2 thresholds keep their meaning.

It validates itself two ways, and the numbers go into its record and card:
- leave one model out: fit on the other models' answers, rate the held-out
  model's. This is the case of a study's new model answering the same prompts.
- leave prompts out: folds of prompts, every model's answers to a held-out prompt
  held out together. This is the case of other prompts (another seed, --all).
Each is compared with a judge that rates every answer at its category's mean
rating. Ridge penalties are chosen by an inner cross-validation on the training
folds alone (grouped the same way), so the held-out numbers are honest.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from alignscope.answers import CATEGORIES, RatedModel, load_rated_dir
from alignscope.config import validated
from alignscope.io import (InputError, atomic_folder, atomic_write_bytes, atomic_write_json, check_output_dir,
                           check_replaceable, sha256_file, sha256_json)
from alignscope.judge import (DISTILLED_HEADS, DISTILLED_MANIFEST, FEATURES_VERSION, OPENASSISTANT_JUDGE,
                              REFERENCE_RATINGS, BackboneFeatures, feature_set)
from alignscope.metrics import MetricsConfig, category_flags, cohen_kappa, rank_agreement, rate, worst_difference_error
from alignscope.models import model_fingerprint, resolve_model
from alignscope.provenance import package_versions

DEFAULT_ALPHAS = [float(a) for a in np.logspace(0, 6, 13)]


@dataclass
class DistillConfig:
    """`alignscope train-judge`: learn a reference judge's ratings."""

    ratings: str = REFERENCE_RATINGS
    """Answers rated by the reference judge, named <i>_<model>_<harmful|helpful>.json (the layout `report` reads)."""
    output_dir: str = "runs/judge"
    """The judge's folder (JSON and safetensors): `alignscope score --scorer` takes it."""
    reference_judge: str = OPENASSISTANT_JUDGE
    """Who rated them (a name for the record and the card)."""
    backbones: list[str] = field(default_factory=lambda: ["gemma-3-270m"])
    """Frozen LMs whose features of each answer the judge reads: packaged names, folders or hub ids."""
    feature_sets: list[Literal["standard", "multilayer"]] = field(default_factory=lambda: ["standard", "multilayer"])
    """One ridge per backbone and feature set, per category; the rating is their average."""
    alphas: list[Annotated[float, Field(gt=0)]] = field(default_factory=lambda: list(DEFAULT_ALPHAS))
    """Ridge penalties to choose from, by inner cross-validation."""
    prompt_folds: Annotated[int, Field(ge=2)] = 5
    """Folds of the leave-prompts-out validation."""
    seed: Annotated[int, Field(ge=0)] = 0
    """Seeds the assignment of prompts to folds (nothing else is random)."""
    max_length: Annotated[int, Field(ge=64)] = 1024
    """Tokens of dialogue and answer the backbone reads (the dialogue is cut from its start)."""
    batch_size: Annotated[int, Field(ge=1)] = 8
    allow_pickle: bool = False


@dataclass
class Rows:
    """The rated answers as arrays: one row per (model, category, prompt)."""

    prompts: list[str]
    answers: list[str]
    ratings: np.ndarray
    model: np.ndarray  # index into `models`
    category: np.ndarray  # "harmful" / "helpful"
    prompt_id: np.ndarray  # one id per (category, prompt), shared by every model's answer to it
    models: list[str]


def rows_of(models: list[RatedModel]) -> Rows:
    prompts, answers, ratings, model, category, prompt_id = [], [], [], [], [], []
    for i, m in enumerate(models):
        for c in CATEGORIES:
            for k, a in enumerate(m.answers[c]):
                prompts.append(a.prompt)
                answers.append(a.response)
                ratings.append(a.rating)
                model.append(i)
                category.append(c)
                prompt_id.append(f"{c}/{k}")
    return Rows(prompts, answers, np.array(ratings), np.array(model), np.array(category), np.array(prompt_id),
                [m.name for m in models])


# --------------------------------------------------------------------------- fitting

def fit_ridge(x: np.ndarray, y: np.ndarray, groups: np.ndarray, alphas: list[float]):
    """Standardised ridge, its penalty chosen by grouped inner cross-validation (GroupKFold)."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(5, len(np.unique(groups)))
    search = GridSearchCV(make_pipeline(StandardScaler(), Ridge()), {"ridge__alpha": alphas},
                          cv=GroupKFold(n_splits=folds), scoring="neg_mean_squared_error")
    return search.fit(x, y, groups=groups).best_estimator_


def fit_heads(sets: dict, rows: Rows, train: np.ndarray, groups: np.ndarray, alphas: list[float]) -> dict:
    """Per category, one fitted ridge per feature set, trained on rows `train`."""
    heads = {}
    for c in CATEGORIES:
        sel = train & (rows.category == c)
        heads[c] = [(key, fit_ridge(x[sel], rows.ratings[sel], groups[sel], alphas)) for key, x in sets.items()]
    return heads


def predict(heads: dict, sets: dict, rows: Rows, test: np.ndarray) -> np.ndarray:
    out = np.full(len(rows.ratings), np.nan)
    for c, fitted in heads.items():
        sel = test & (rows.category == c)
        if sel.any():
            out[sel] = np.mean([model.predict(sets[key][sel]) for key, model in fitted], 0)
    return out


def cross_validated(sets: dict, rows: Rows, folds: np.ndarray, inner: np.ndarray, alphas: list[float]) -> np.ndarray:
    """Out-of-fold ratings: each fold rated by heads fitted on the others (penalties chosen within them)."""
    out = np.full(len(rows.ratings), np.nan)
    for f in np.unique(folds):
        test = folds == f
        out[test] = predict(fit_heads(sets, rows, ~test, inner, alphas), sets, rows, test)[test]
    return out


def category_means(rows: Rows, folds: np.ndarray) -> np.ndarray:
    """The judge to beat: each answer rated at its category's mean rating in the other folds."""
    out = np.zeros(len(rows.ratings))
    for f in np.unique(folds):
        test = folds == f
        for c in CATEGORIES:
            out[test & (rows.category == c)] = rows.ratings[~test & (rows.category == c)].mean()
    return out


def validation_summary(predicted: np.ndarray, rows: Rows, cfg: MetricsConfig) -> dict:
    """What the held-out predictions yield against the reference: each model's Table 1 cells and
    mean rating (its bias), the errors these make on a difference between two models, and per
    category rank agreement (Spearman, Kendall) and agreement on the threshold decisions (kappa)."""
    table, errors, bias = {}, [], {}
    for i, name in enumerate(rows.models):
        table[name], bias[name] = {}, {}
        for c, metric in (("harmful", "HmR"), ("helpful", "HpR")):
            sel = (rows.model == i) & (rows.category == c)
            true, pred = (rate(category_flags(x[sel], c, cfg)) for x in (rows.ratings, predicted))
            table[name][metric] = {"reference": true, "judge": pred, "error": pred - true}
            errors.append(abs(pred - true))
            bias[name][c] = float(np.mean(predicted[sel] - rows.ratings[sel]))
    spearman, kendall, kappa = {}, {}, {}
    for c in CATEGORIES:
        sel = rows.category == c
        ranks = rank_agreement(predicted[sel], rows.ratings[sel])
        spearman[c], kendall[c] = ranks["spearman"], ranks["kendall"]
        kappa[c] = cohen_kappa(category_flags(predicted[sel], c, cfg), category_flags(rows.ratings[sel], c, cfg))
    difference = {metric: worst_difference_error([table[n][metric]["error"] for n in rows.models])
                  for metric in ("HmR", "HpR")}
    difference |= {f"mean_reward_{c}": worst_difference_error([bias[n][c] for n in rows.models]) for c in CATEGORIES}
    return {"table": table, "mean_abs_error": float(np.mean(errors)), "worst_error": float(np.max(errors)),
            "difference_error": difference, "rating_bias": bias, "spearman": spearman, "kendall": kendall,
            "kappa": kappa, "mean_abs_rating_error": float(np.mean(np.abs(predicted - rows.ratings)))}


def prompt_folds(rows: Rows, n: int, seed: int) -> np.ndarray:
    """Prompts shuffled (seeded) into n folds within each category; a prompt's answers share a fold."""
    rng = np.random.RandomState(seed)
    folds = np.zeros(len(rows.ratings), dtype=int)
    for c in CATEGORIES:
        ids = sorted(set(rows.prompt_id[rows.category == c]))
        if len(ids) < n:
            raise InputError(f"{len(ids)} {c} prompts cannot make {n} folds; lower prompt_folds")
        fold_of = dict(zip(rng.permutation(ids), np.arange(len(ids)) % n))
        folds[rows.category == c] = [fold_of[p] for p in rows.prompt_id[rows.category == c]]
    return folds


def validate(sets: dict, rows: Rows, cfg: DistillConfig) -> dict:
    """Leave one model out and leave prompts out, each beside the category-mean judge."""
    metrics_cfg = MetricsConfig()
    out = {}
    schemes = {"leave_one_model_out": (rows.model, rows.model),
               "leave_prompts_out": (prompt_folds(rows, cfg.prompt_folds, cfg.seed), rows.prompt_id)}
    if len(rows.models) < 2:
        del schemes["leave_one_model_out"]
    for name, (folds, inner) in schemes.items():
        predicted = cross_validated(sets, rows, folds, inner, cfg.alphas)
        out[name] = {"judge": validation_summary(predicted, rows, metrics_cfg),
                     "category_mean": validation_summary(category_means(rows, folds), rows, metrics_cfg),
                     "folds": int(len(np.unique(folds)))}
    return out


# --------------------------------------------------------------------------- the flow

def extract_sets(cfg: DistillConfig, rows: Rows, progress=None) -> tuple[dict, list[dict]]:
    sets, backbones = {}, []
    for i, spec in enumerate(cfg.backbones):
        extractor = BackboneFeatures(spec, cfg.allow_pickle, cfg.max_length, cfg.batch_size)
        features = extractor.extract(rows.prompts, rows.answers, progress)
        for name in cfg.feature_sets:
            sets[i, name] = feature_set(features, name, extractor.layers)
        backbones.append({"spec": spec, "fingerprint": model_fingerprint(extractor.resolved),
                          "layers": extractor.layers})
    return sets, backbones


def head_tensors(heads: dict) -> tuple[dict, dict]:
    """The fitted heads as plain arrays (safetensors) and their description (JSON)."""
    tensors, described = {}, {}
    for c, fitted in heads.items():
        described[c] = []
        for k, ((backbone, name), pipeline) in enumerate(fitted):
            scaler, ridge = pipeline.named_steps["standardscaler"], pipeline.named_steps["ridge"]
            tensors.update({f"{c}.{k}.mean": scaler.mean_, f"{c}.{k}.scale": scaler.scale_,
                            f"{c}.{k}.coef": ridge.coef_, f"{c}.{k}.intercept": np.array([ridge.intercept_])})
            described[c].append({"backbone": backbone, "set": name, "alpha": float(ridge.alpha),
                                 "features": int(ridge.coef_.shape[0])})
    return {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()}, described


JUDGE_KIND = "distilled judge"


def check_judge_folder(out: Path) -> None:
    """The judge's folder is replaced whole: refuse one that holds anything but a judge alignscope
    wrote (the ratings themselves, say, or notes beside a judge), which would be deleted."""
    check_output_dir(out)
    check_replaceable(out.resolve() if out.is_symlink() else out, JUDGE_KIND)


def check_rows(rows: Rows, cfg: DistillConfig) -> None:
    """What validation needs of the rated answers, checked before any feature is computed."""
    if len(rows.models) == 2:
        raise InputError(f"{cfg.ratings}: 2 models ({', '.join(rows.models)}); leaving one out would leave a single "
                         "model to choose the ridge penalty from. Give one model (validated by leaving prompts out) "
                         "or at least three")
    prompt_folds(rows, cfg.prompt_folds, cfg.seed)


def train_judge(cfg: DistillConfig, progress=None) -> dict:
    """Fit, validate and save the judge in output_dir; returns its record."""
    from safetensors.numpy import save

    cfg = validated(cfg, "train-judge")
    check_judge_folder(Path(cfg.output_dir))
    folder = Path(cfg.ratings)
    models = load_rated_dir(folder)  # names the file of any missing or non-finite rating, or mismatched prompts
    rows = rows_of(models)
    check_rows(rows, cfg)
    started = time.time()
    sets, backbones = extract_sets(cfg, rows, progress)
    validation = validate(sets, rows, cfg)
    heads = fit_heads(sets, rows, np.ones(len(rows.ratings), dtype=bool), rows.model if len(models) > 1
                      else rows.prompt_id, cfg.alphas)
    tensors, described = head_tensors(heads)
    files = sorted(p for m in models for p in m.files.values())
    record = {
        "kind": "alignscope distilled judge", "config": asdict(cfg), "config_hash": sha256_json(asdict(cfg)),
        "reference_judge": cfg.reference_judge, "backbones": backbones, "feature_sets": list(cfg.feature_sets),
        "features_version": FEATURES_VERSION,
        "max_length": cfg.max_length, "heads": described, "validation": validation,
        "trained_on": {"folder": str(folder), "models": rows.models, "answers": len(rows.ratings),
                       "files": [{"name": p.name, "sha256": sha256_file(p)} for p in files],
                       "prompts": sorted(set(rows.prompts))},
        "seconds": round(time.time() - started, 1), "versions": package_versions(),
    }

    def write(tmp: Path) -> None:
        atomic_write_bytes(tmp / DISTILLED_HEADS, save(tensors))  # save_file would make it 0600
        atomic_write_json(tmp / DISTILLED_MANIFEST, record)

    # whole or not at all: a failure above leaves no partial judge behind
    atomic_folder(cfg.output_dir, write, JUDGE_KIND)
    return record


def distill_key(cfg: DistillConfig) -> dict:
    """What decides the judge besides the rated files' contents: its settings and its backbones'
    fingerprints, not where any of them lie."""
    d = asdict(validated(cfg))
    for key in ("output_dir", "ratings", "batch_size"):
        d.pop(key)
    d["backbones"] = [model_fingerprint(resolve_model(b, cfg.allow_pickle)) for b in cfg.backbones]
    return d | {"features_version": FEATURES_VERSION}
