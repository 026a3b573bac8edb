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
rating, leaving a model out also with two that know the other models' ratings,
and with the same judge fitted without the length and log-probability features.
Ridge penalties are chosen by an inner cross-validation on the training folds
alone (grouped the same way), so the held-out numbers are honest.

The held-out ratings also measure the rule a report uses for findings: for every
pair of models and measure, the finding drawn from them (metrics.finding, with
the judge's error on a difference) against the one the paired test draws from
the reference's own ratings.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from alignscope.answers import CATEGORIES, RatedAnswer, RatedModel, load_rated_dir
from alignscope.config import validated
from alignscope.io import (InputError, atomic_folder, atomic_write_bytes, atomic_write_json, check_output_dir,
                           check_replaceable, sha256_file, sha256_json)
from alignscope.judges.base import (DISTILLED_HEADS, DISTILLED_MANIFEST, FEATURES_VERSION, OPENASSISTANT_JUDGE,
                                    REFERENCE_RATINGS)
from alignscope.judges.distilled import BLIND_HEADS, BackboneFeatures, feature_set, without_length_lp
from alignscope.metrics import (MetricsConfig, category_flags, cohen_kappa, compare_findings, difference_error_interval,
                                drawn_findings, mean_measure, pairwise_tests, rank_agreement, rate, rate_measure)
from alignscope.models import model_fingerprint, resolve_model
from alignscope.provenance import package_versions

DEFAULT_ALPHAS = [float(a) for a in np.logspace(0, 6, 13)]
# Bump when the validation a judge records changes, so that a study fits its judge again.
VALIDATION_VERSION = 2


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
    """Seeds the assignment of prompts to folds and the resampling of prompts behind the error on a difference."""
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
    """Standardised ridge, its penalty chosen by grouped inner cross-validation (GroupKFold): what
    fit_ridge_grid_search chooses, from one eigendecomposition per fold for every penalty at once.

    Each fold standardises on its training rows (StandardScaler) and centres them as Ridge does.
    With fewer rows than features (the judge's case), Z Z' = U L U' gives the predictions for
    penalty a as Z_val Z' U diag(1 / (L + a)) U' y; otherwise Z' Z = V L V' gives
    Z_val V diag(1 / (L + a)) V' Z' y. (numpy's SVD of a wide matrix took 1.1 s here, this 3 ms.)
    The penalty of lowest mean squared error averaged over folds wins, the first in `alphas` on a
    tie, as GridSearchCV ranks; the pipeline is then fitted on all rows, as GridSearchCV refits."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    alphas_ = np.asarray(alphas, dtype=np.float64)
    errors = np.zeros(len(alphas_))
    folds = GroupKFold(n_splits=min(5, len(np.unique(groups))))
    for train, val in folds.split(x, y, groups):
        scaler = StandardScaler().fit(x[train])
        z, z_val = scaler.transform(x[train]), scaler.transform(x[val])
        offset, y_offset = z.mean(0), y[train].mean()
        z, z_val, target = z - offset, z_val - offset, y[train] - y_offset
        if len(z) <= z.shape[1]:
            eigenvalues, u = np.linalg.eigh(z @ z.T)
            projected, b = z_val @ z.T @ u, u.T @ target
        else:
            eigenvalues, v = np.linalg.eigh(z.T @ z)
            projected, b = z_val @ v, v.T @ (z.T @ target)
        shrink = 1 / (np.clip(eigenvalues, 0, None) + alphas_[:, None])  # alphas, components
        predictions = (shrink * b) @ projected.T + y_offset  # alphas, validation rows
        errors += ((predictions - y[val]) ** 2).mean(1)
    best = float(alphas[int(np.argmin(errors))])  # argmin: the first of equal errors
    return make_pipeline(StandardScaler(), Ridge(alpha=best)).fit(x, y)


def fit_ridge_grid_search(x: np.ndarray, y: np.ndarray, groups: np.ndarray, alphas: list[float]):
    """fit_ridge as sklearn's GridSearchCV fits it, a Ridge per penalty and fold: the reference."""
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


def grid(x: np.ndarray, rows: Rows, category: str) -> np.ndarray:
    """One category's ratings as [models, prompts]: every model's answer to a prompt in one column."""
    return np.stack([x[(rows.model == i) & (rows.category == category)] for i in range(len(rows.models))])


def as_models(x: np.ndarray, rows: Rows) -> list[RatedModel]:
    """The rated answers, rated by `x` instead: what a report would read from that judge."""
    return [RatedModel(name, {c: [RatedAnswer(rows.prompts[k], rows.answers[k], float(x[k]))
                                  for k in np.flatnonzero((rows.model == i) & (rows.category == c))]
                              for c in CATEGORIES}) for i, name in enumerate(rows.models)]


def paired_tests(x: np.ndarray, rows: Rows, cfg: MetricsConfig) -> list[dict]:
    models = as_models(x, rows)
    flags = {m.name: {c: category_flags(m.ratings(c), c, cfg) for c in CATEGORIES} for m in models}
    return pairwise_tests(models, flags, cfg)


def findings_check(predicted: np.ndarray, rows: Rows, errors: dict, cfg: MetricsConfig) -> dict:
    """The rule for findings measured where the truth is known: every pair of models and measure,
    the finding drawn from the held-out ratings (with the judge's error `errors`, and by the paired
    test alone) against the finding the paired test draws from the reference's ratings."""
    truth = drawn_findings(paired_tests(rows.ratings, rows, cfg), None)
    judged = paired_tests(predicted, rows, cfg)
    ruled, test_only = drawn_findings(judged, errors), drawn_findings(judged, None)
    return {"rule": compare_findings(ruled, truth), "test_alone": compare_findings(test_only, truth),
            "pairs": [{"metric": m, "a": a, "b": b, "reference": truth[m, a, b], "judge": ruled[m, a, b],
                       "test_alone": test_only[m, a, b]} for m, a, b in truth]}


def length_agreement(predicted: np.ndarray, rows: Rows) -> dict:
    """Spearman's rho of the judge's ratings, and of the reference's, with each answer's length in
    characters, per category: a judge that rewards length would follow it more than the reference."""
    chars = np.array([len(a) for a in rows.answers], dtype=float)
    return {who: {c: rank_agreement(x[rows.category == c], chars[rows.category == c])["spearman"] for c in CATEGORIES}
            for who, x in (("judge", predicted), ("reference", rows.ratings))}


def validation_summary(predicted: np.ndarray, rows: Rows, cfg: MetricsConfig) -> dict:
    """What the held-out predictions yield against the reference: each model's Table 1 cells and
    mean rating (its bias), the errors these make on a difference between two models (with the
    prompts' sampling error: an upper quantile over resampled prompts), per category rank agreement
    (Spearman, Kendall) and agreement on the threshold decisions (kappa), how the ratings follow
    answer length, and the findings they would draw on every pair of models."""
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
    measures = {"HmR": ("harmful", rate_measure("harmful", cfg)), "HpR": ("helpful", rate_measure("helpful", cfg)),
                **{f"mean_reward_{c}": (c, mean_measure) for c in CATEGORIES}}
    intervals = {k: difference_error_interval(grid(predicted, rows, c), grid(rows.ratings, rows, c), measure, cfg)
                 for k, (c, measure) in measures.items()}
    difference = {k: v["upper"] for k, v in intervals.items()}
    return {"table": table, "mean_abs_error": float(np.mean(errors)), "worst_error": float(np.max(errors)),
            "difference_error": difference, "difference_error_point": {k: v["point"] for k, v in intervals.items()},
            "difference_error_method": {k: intervals["HmR"][k] for k in ("quantile", "resamples", "seed")},
            "rating_bias": bias, "spearman": spearman, "kendall": kendall, "kappa": kappa,
            "mean_abs_rating_error": float(np.mean(np.abs(predicted - rows.ratings))),
            "length": length_agreement(predicted, rows), "findings": findings_check(predicted, rows, difference, cfg)}


def other_models_baselines(rows: Rows, cfg: MetricsConfig) -> dict:
    """Two judges to beat that know the other models' ratings, as a judge left one model out does:
    each model's rate put at the other models' mean rate, and each answer rated at the other models'
    mean rating of the same prompt."""
    cells = {}
    for i, name in enumerate(rows.models):
        cells[name] = {}
        for c, metric in (("harmful", "HmR"), ("helpful", "HpR")):
            rates = [rate(category_flags(rows.ratings[(rows.model == j) & (rows.category == c)], c, cfg))
                     for j in range(len(rows.models))]
            cells[name][metric] = float(np.mean(rates[:i] + rates[i + 1:]) - rates[i])
    flat = [abs(e) for m in cells.values() for e in m.values()]
    per_prompt = np.zeros(len(rows.ratings))
    for i in range(len(rows.models)):
        held, others = rows.model == i, rows.model != i
        means = {p: rows.ratings[others & (rows.prompt_id == p)].mean() for p in set(rows.prompt_id[held])}
        per_prompt[held] = [means[p] for p in rows.prompt_id[held]]
    return {"other_models_mean_rate": {"errors": cells, "mean_abs_error": float(np.mean(flat)),
                                       "worst_error": float(np.max(flat))},
            "other_models_prompt_mean": validation_summary(per_prompt, rows, cfg)}


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
    """Leave one model out and leave prompts out, each beside the category-mean judge (and, leaving
    a model out, the other models' means), and beside the same judge fitted without the length and
    log-probability features."""
    metrics_cfg = MetricsConfig(seed=cfg.seed)
    out = {}
    schemes = {"leave_one_model_out": (rows.model, rows.model),
               "leave_prompts_out": (prompt_folds(rows, cfg.prompt_folds, cfg.seed), rows.prompt_id)}
    if len(rows.models) < 2:
        del schemes["leave_one_model_out"]
    for name, (folds, inner) in schemes.items():
        predicted = cross_validated(sets, rows, folds, inner, cfg.alphas)
        blind = cross_validated(without_length_sets(sets), rows, folds, inner, cfg.alphas)
        out[name] = {"judge": validation_summary(predicted, rows, metrics_cfg),
                     "category_mean": validation_summary(category_means(rows, folds), rows, metrics_cfg),
                     "without_length_lp": validation_summary(blind, rows, metrics_cfg),
                     "folds": int(len(np.unique(folds)))}
        if name == "leave_one_model_out":
            out[name] |= other_models_baselines(rows, metrics_cfg)
    return out


def without_length_sets(sets: dict) -> dict:
    return {key: without_length_lp(x) for key, x in sets.items()}


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
    everything, groups = np.ones(len(rows.ratings), dtype=bool), rows.model if len(models) > 1 else rows.prompt_id
    tensors, described = head_tensors(fit_heads(sets, rows, everything, groups, cfg.alphas))
    # the same judge without the length and log-probability features: every finding is checked against it
    blind_tensors, blind = head_tensors(fit_heads(without_length_sets(sets), rows, everything, groups, cfg.alphas))
    tensors |= {f"{BLIND_HEADS}.{k}": v for k, v in blind_tensors.items()}
    files = sorted(p for m in models for p in m.files.values())
    record = {
        "kind": "alignscope distilled judge", "config": asdict(cfg), "config_hash": sha256_json(asdict(cfg)),
        "reference_judge": cfg.reference_judge, "backbones": backbones, "feature_sets": list(cfg.feature_sets),
        "features_version": FEATURES_VERSION,
        "max_length": cfg.max_length, "heads": described, BLIND_HEADS: blind, "validation": validation,
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
    return d | {"features_version": FEATURES_VERSION, "validation_version": VALIDATION_VERSION}
