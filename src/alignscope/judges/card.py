"""How far a judge can be trusted: its agreement with a reference judge on the same answers.

`judge_card` takes answers a reference judge rated (the layout `report` reads; the
reference study's 400 OpenAssistant ratings by default) and another judge's ratings
of the same answers, and measures, per category:
- rank agreement: Spearman's rho and Kendall's tau with the reference's ratings;
- decision agreement: Cohen's kappa on the study's threshold decisions (harmless,
  helpful), which is what HmR and HpR count;
- the Table 1 the judge yields beside the reference's, with each cell's error.
A judge on another scale than the reference's (a reward model of our own) is also
shown after a monotone map to the reference scale (isotonic regression), fitted
leaving each model out, so that no answer is mapped by a fit that saw it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from alignscope.answers import CATEGORIES, RatedModel, load_rated_dir
from alignscope.cache import ResultCache
from alignscope.io import atomic_write_json, atomic_write_text, check_output_dir, read_json, sha256_file
from alignscope.judges.base import (DISTILLED_MANIFEST, OPENASSISTANT_JUDGE, REFERENCE_RATINGS, is_distilled,
                                    judge_fingerprint, resolve_judge)
from alignscope.metrics import (MetricsConfig, category_flags, cohen_kappa, combined_alignment_score, rank_agreement,
                                rate)
from alignscope.markdown import display, fmt, fmt_rate, table
from alignscope.judges.score import ScoreConfig, rate_pairs_cached


@dataclass
class AgreementConfig:
    """`alignscope judge-agreement`: which answers, rated by which reference judge, and where the card goes."""

    rated: str = REFERENCE_RATINGS
    """Answers rated by the reference judge (the layout `report` reads)."""
    out: str = "runs/judge-card"
    """Folder for judge.json and judge.md, the judge card."""
    reference_judge: str = OPENASSISTANT_JUDGE
    """Who rated them (named in the card)."""


def monotone_map(judge: np.ndarray, reference: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The judge's ratings on the reference scale: an isotonic fit of reference on judge, for each
    group (a model) fitted on the other groups only."""
    from sklearn.isotonic import IsotonicRegression

    mapped = np.empty_like(reference, dtype=float)
    for g in np.unique(groups):
        held = groups == g
        fit = IsotonicRegression(out_of_bounds="clip").fit(judge[~held], reference[~held])
        mapped[held] = fit.predict(judge[held])
    return mapped


def table1_rows(models: list[RatedModel], ratings: dict, cfg: MetricsConfig) -> dict:
    """HmR, HpR and CAS per model from `ratings[model][category]`."""
    out = {}
    for m in models:
        hmr, hpr = (rate(category_flags(ratings[m.name][c], c, cfg)) for c in CATEGORIES)
        out[m.name] = {"HmR": hmr, "HpR": hpr, "CAS": combined_alignment_score(hmr, hpr)}
    return out


def cell_errors(judge: dict, reference: dict) -> dict:
    errors = {m: {k: judge[m][k] - reference[m][k] for k in ("HmR", "HpR")} for m in reference}
    flat = [abs(v) for e in errors.values() for v in e.values()]
    return {"cells": errors, "mean_abs": float(np.mean(flat)), "worst": float(np.max(flat))}


def judge_card(models: list[RatedModel], judge_ratings: dict[str, dict[str, list[float]]], cfg: MetricsConfig,
               judge: dict, reference: dict) -> dict:
    """Everything the card says, from the reference's rated models and the judge's ratings of the
    very same answers (`judge_ratings[model][category]`, in the models' answer order)."""
    names = [m.name for m in models]
    ref = {m.name: {c: m.ratings(c) for c in CATEGORIES} for m in models}
    raw = {n: {c: np.asarray(judge_ratings[n][c], dtype=float) for c in CATEGORIES} for n in names}
    mapped = {n: {} for n in names}
    categories = {}
    for c in CATEGORIES:
        r = np.concatenate([ref[n][c] for n in names])
        j = np.concatenate([raw[n][c] for n in names])
        groups = np.concatenate([[i] * len(ref[n][c]) for i, n in enumerate(names)])
        # held out by model; with a single model, by prompt (five folds), so no answer maps itself
        folds = groups if len(names) > 1 else np.arange(len(r)) % min(5, len(r))
        m = monotone_map(j, r, folds) if len(r) > 1 else j
        for i, n in enumerate(names):
            mapped[n][c] = m[groups == i]
        categories[c] = {
            "n": len(r), **rank_agreement(j, r),
            "kappa": cohen_kappa(category_flags(j, c, cfg), category_flags(r, c, cfg)),
            "kappa_mapped": cohen_kappa(category_flags(m, c, cfg), category_flags(r, c, cfg)),
            "judge_range": [float(j.min()), float(j.max())], "reference_range": [float(r.min()), float(r.max())],
        }
    tables = {"reference": table1_rows(models, ref, cfg), "judge": table1_rows(models, raw, cfg),
              "mapped": table1_rows(models, mapped, cfg)}
    return {
        "judge": judge, "reference": reference, "models": names, "categories": categories, "table1": tables,
        "errors": {"judge": cell_errors(tables["judge"], tables["reference"]),
                   "mapped": cell_errors(tables["mapped"], tables["reference"])},
        "thresholds": {k: v for k, v in asdict(cfg).items() if k.startswith(("harmless", "helpful"))},
        "methods": {
            "rank": "Spearman's rho and Kendall's tau (scipy.stats) between the judge's and the reference's "
                    "ratings of the same answers, per category, over every model's answers",
            "decisions": "Cohen's kappa (sklearn.metrics.cohen_kappa_score) on the threshold decision HmR or HpR counts",
            "mapped": "isotonic regression of the reference's rating on the judge's (sklearn), per category, "
                      "fitted leaving each model out and applied to that model's answers (with one model, leaving "
                      "out each fifth of the prompts)",
            "errors": "rate points, judge minus reference, over the models x {HmR, HpR} cells",
        },
    }


def card_markdown(card: dict) -> str:
    """The judge card (judge.md): its held-out validation where it was fitted to the reference's
    ratings, its agreement with the reference judge where it rated the reference's answers."""
    lines = [f"# Judge card: `{card['judge']['model']}`", "", f"Fingerprint `{card['judge']['fingerprint']}`.", ""]
    if card["judge"].get("validation"):
        lines += validation_markdown(card)
    if card.get("categories"):
        lines += agreement_markdown(card)
    return "\n".join(lines) + "\n"


def validation_markdown(card: dict) -> list[str]:
    judge = card["judge"]
    lines = [f"## Held-out validation against {card['reference']['judge']}", "",
             f"Fitted to {card['reference']['judge']}'s ratings of `{card['reference']['folder']}`, reading "
             f"features from {', '.join('`' + b['spec'] + '`' for b in judge['backbones'])}. Each row rates answers "
             "the judge was not fitted to: leaving each model out (a new model answering the same prompts) and "
             "leaving prompts out (new prompts); beside it, a judge that rates every answer at its category's "
             "mean rating, left out the same way.", ""]
    for scheme, v in judge["validation"].items():
        names = list(v["judge"]["table"])
        rows = [[display(n), *(f"{fmt_rate(v['judge']['table'][n][k]['reference'])} -> "
                               f"{fmt_rate(v['judge']['table'][n][k]['judge'])} "
                               f"({fmt(v['judge']['table'][n][k]['error'], 0, sign=True)})" for k in ("HmR", "HpR"))]
                for n in names]
        j, base = v["judge"], v["category_mean"]
        lines += [f"### {scheme.replace('_', ' ').capitalize()} ({v['folds']} folds)", "",
                  table(["Model", "HmR % reference -> judge (error)", "HpR % reference -> judge (error)"], rows), "",
                  f"Cell error: mean {fmt(j['mean_abs_error'], 1)} points, worst {fmt(j['worst_error'], 0)} (category "
                  f"means: {fmt(base['mean_abs_error'], 1)}, worst {fmt(base['worst_error'], 0)}). Mean |rating "
                  f"error| {fmt(j['mean_abs_rating_error'])}.", ""]
        lines += baselines_markdown(v)
        if "kendall" in j:  # judges fitted before alignscope recorded these lack them
            d = j["difference_error"]
            lines += [table(["", "harmful prompts", "helpful prompts"], [
                ["Spearman rho with the reference", *(fmt(j["spearman"][c]) for c in CATEGORIES)],
                ["Kendall tau", *(fmt(j["kendall"][c]) for c in CATEGORIES)],
                ["Cohen's kappa on the decision HmR / HpR counts", *(fmt(j["kappa"][c]) for c in CATEGORIES)],
                ["error on a difference between two models' rates, points", fmt_rate(d["HmR"]), fmt_rate(d["HpR"])],
                ["error on a difference between two models' mean rewards", fmt(d["mean_reward_harmful"]),
                 fmt(d["mean_reward_helpful"])],
                *([["Spearman of its ratings with answer length (the reference's)",
                    *(f"{fmt(j['length']['judge'][c])} ({fmt(j['length']['reference'][c])})" for c in CATEGORIES)]]
                  if "length" in j else [])]), ""]
            if "findings" in j:
                m = j["difference_error_method"]
                lines += [f"The error on a difference is the {fmt(100 * m['quantile'], 0)}th percentile of the spread "
                          f"of the held-out models' errors over {m['resamples']} resamplings of the prompts (seed "
                          f"{m['seed']}); the spread on the prompts as they are: {fmt_rate(j['difference_error_point']['HmR'])} "
                          f"and {fmt_rate(j['difference_error_point']['HpR'])} points, "
                          f"{fmt(j['difference_error_point']['mean_reward_harmful'])} and "
                          f"{fmt(j['difference_error_point']['mean_reward_helpful'])}. A gap is a finding where its "
                          "paired test holds (Benjamini-Hochberg q < 0.05) and it exceeds this error and its own "
                          "sampling error combined. " + findings_check_text(j["findings"]), ""]
        else:
            lines += [f"Spearman with the reference: {fmt(j['spearman']['harmful'])} on harmful prompts, "
                      f"{fmt(j['spearman']['helpful'])} on helpful.", ""]
    lines += ["An error on a difference: the judge misjudges one model by e_a and another by e_b, so their gap is "
              "off by e_a - e_b; the largest such over the held-out models, and where the validation records it, "
              "its upper percentile over resampled prompts.", ""]
    return lines


def findings_check_text(check: dict) -> str:
    """What the rule for findings gets wrong on the reference study's pairs, where the truth is known."""
    r, alone = check["rule"], check["test_alone"]
    return (f"Measured on the reference study's own {r['comparisons']} comparisons (every pair of its models on "
            f"HmR, HpR and the two mean rewards; {r['supported_by_reference']} of them findings under "
            "the reference judge's ratings), this rule applied to the judge's held-out ratings draws "
            f"{r['false']} false, {r['reversed']} reversed and {r['missed']} missed findings ({r['agreed']} right); "
            f"the paired test alone would draw {alone['false']} false, {alone['reversed']} reversed and "
            f"{alone['missed']} missed.")


def baselines_markdown(v: dict) -> list[str]:
    """The judges a held-out judge must beat, beside the constant one: those that know the other
    models' ratings (leaving a model out), and the same judge blind to length and log-probabilities."""
    rows = []
    if "other_models_mean_rate" in v:
        b = v["other_models_mean_rate"]
        rows.append(["each model's rate put at the other models' mean rate",
                     f"{fmt(b['mean_abs_error'], 1)} ({fmt(b['worst_error'], 0)})", "-", "-"])
    for key, label in (("other_models_prompt_mean", "each answer rated at the other models' mean rating of its prompt"),
                       ("without_length_lp", "the same judge fitted without the length and log-probability features")):
        if key in v:
            b = v[key]
            rows.append([label, f"{fmt(b['mean_abs_error'], 1)} ({fmt(b['worst_error'], 0)})",
                         *(fmt(b["spearman"][c]) for c in CATEGORIES)])
    if not rows:
        return []
    j = v["judge"]
    rows.insert(0, ["the judge", f"{fmt(j['mean_abs_error'], 1)} ({fmt(j['worst_error'], 0)})",
                    *(fmt(j["spearman"][c]) for c in CATEGORIES)])
    return [table(["held out the same way", "Table 1 cell error, points: mean (worst)", "Spearman, harmful",
                   "Spearman, helpful"], rows), ""]


def agreement_markdown(card: dict) -> list[str]:
    cats = card["categories"]

    def kappa_text(c: str) -> str:
        return " / ".join("n/a" if cats[c][k] is None else fmt(cats[c][k]) for k in ("kappa", "kappa_mapped"))

    lines = [f"## Agreement with {card['reference']['judge']}", "",
             f"On the {sum(c['n'] for c in cats.values())} answers of `{card['reference']['folder']}` "
             f"({', '.join(display(n) for n in card['models'])}), rated by both.", ""]
    if card["judge"].get("in_sample"):
        lines += ["**These are the answers this judge was fitted to**: the agreement below is in-sample and "
                  "flatters it. Its held-out validation is what measures it.", ""]
    lines += [table(["", "harmful prompts", "helpful prompts"], [
        ["Spearman rho with the reference", *(fmt(cats[c]["spearman"]) for c in CATEGORIES)],
        ["Kendall tau", *(fmt(cats[c]["kendall"]) for c in CATEGORIES)],
        ["Cohen's kappa on the decision (raw / mapped)", *(kappa_text(c) for c in CATEGORIES)],
        ["ratings span (judge; reference)", *(f"{fmt(cats[c]['judge_range'][0])} to {fmt(cats[c]['judge_range'][1])}; "
                                             f"{fmt(cats[c]['reference_range'][0])} to "
                                             f"{fmt(cats[c]['reference_range'][1])}" for c in CATEGORIES)]]), ""]
    t = card["table1"]
    rows = []
    for n in card["models"]:
        cells = []
        for k in ("HmR", "HpR"):
            ref, raw, mapped = t["reference"][n][k], t["judge"][n][k], t["mapped"][n][k]
            cells += [fmt_rate(ref), f"{fmt_rate(raw)} ({fmt(raw - ref, 0, sign=True)})",
                      f"{fmt_rate(mapped)} ({fmt(mapped - ref, 0, sign=True)})"]
        rows.append([display(n), *cells])
    e = card["errors"]
    lines += ["Table 1 as each judge would give it (rate %, error in points):", "",
              table(["Model", "HmR reference", "HmR judge", "HmR judge, mapped", "HpR reference", "HpR judge",
                     "HpR judge, mapped"], rows), "",
              f"Mean |error| over the {2 * len(card['models'])} cells: {fmt(e['judge']['mean_abs'], 1)} points "
              f"(worst {fmt(e['judge']['worst'], 0)}); after the monotone map: {fmt(e['mapped']['mean_abs'], 1)} "
              f"(worst {fmt(e['mapped']['worst'], 0)}).", ""]
    lines += [f"- {k}: {v}" for k, v in card["methods"].items()]
    return lines


# --------------------------------------------------------------------------- running it

def rate_reference(cfg: ScoreConfig, models: list[RatedModel], cache: ResultCache | None = None,
                   progress=None) -> dict[str, dict[str, list[float]]]:
    """The judge's ratings of every answer the reference judge rated, in the same order."""
    items = [(m.name, c, a) for m in models for c in CATEGORIES for a in m.answers[c]]
    rated, _ = rate_pairs_cached(cfg, [a.prompt for *_, a in items], [a.response for *_, a in items],
                                 [c for _, c, _ in items], cache, progress)
    out = {m.name: {c: [] for c in CATEGORIES} for m in models}
    for (name, c, _), x in zip(items, rated):
        out[name][c].append(x["rating"])
    return out


def judge_record(cfg: ScoreConfig, models: list[RatedModel]) -> dict:
    """What the card says of the judge: its fingerprint; for a distilled judge its own held-out
    validation, and whether these very answers are the ones it was fitted to."""
    resolved = resolve_judge(cfg.model, cfg.allow_pickle)
    info = {"model": cfg.model, "fingerprint": judge_fingerprint(cfg.model, cfg.allow_pickle, cfg.revision)}
    if is_distilled(resolved):
        record = read_json(Path(resolved) / DISTILLED_MANIFEST)
        fitted = {f["sha256"] for f in record["trained_on"]["files"]}
        info |= {"distilled": True, "validation": record["validation"], "backbones": record["backbones"],
                 "trained_prompts": record["trained_on"]["prompts"],
                 "in_sample": {sha256_file(p) for m in models for p in m.files.values()} <= fitted}
    return info


def judge_agreement(cfg: ScoreConfig, rated: str | Path, metrics_cfg: MetricsConfig = MetricsConfig(),
                    reference_judge: str = OPENASSISTANT_JUDGE, cache: ResultCache | None = None,
                    progress=None) -> dict:
    """The card of judge `cfg.model` against the answers of `rated` and the ratings it holds."""
    models = load_rated_dir(rated)
    reference = {"folder": str(rated), "judge": reference_judge,
                 "files": [{"name": p.name, "sha256": sha256_file(p)} for m in models for p in m.files.values()]}
    return judge_card(models, rate_reference(cfg, models, cache, progress), metrics_cfg,
                      judge_record(cfg, models), reference)


def write_card(card: dict, out: str | Path) -> Path:
    out = check_output_dir(out)
    atomic_write_json(out / "judge.json", card)
    atomic_write_text(out / "judge.md", card_markdown(card))
    return out


# --------------------------------------------------------------------------- the documented record of a judge

# the judges to beat that rank answers (a category's mean or a model's rate ranks nothing)
RANKING_BASELINES = ("other_models_prompt_mean", "without_length_lp")


def record_tables(validation: dict) -> list[str]:
    """A distilled judge's validation as the documented two tables (the judge, and the judges it must
    beat), so that a check can find them there word for word."""
    def pair(d: dict, key: str, places: int = 2) -> str:
        return " / ".join(fmt(d[key][c], places) for c in CATEGORIES)

    rows, beaten = [], []
    for scheme, v in validation.items():
        j, d, f = v["judge"], v["judge"]["difference_error"], v["judge"]["findings"]["rule"]
        name = f"{scheme.replace('_', ' ').replace('leave', 'leaving')} ({v['folds']} folds)"
        rows.append([name, f"{fmt(j['mean_abs_error'], 1)} ({fmt(j['worst_error'], 0)})", pair(j, "spearman"),
                     pair(j, "kendall"), pair(j, "kappa"),
                     f"{fmt(d['HmR'], 0)}, {fmt(d['HpR'], 0)}; {fmt(d['mean_reward_harmful'])}, "
                     f"{fmt(d['mean_reward_helpful'])}",
                     f"{f['false']} / {f['reversed']} / {f['missed']} of {f['comparisons']} "
                     f"({f['supported_by_reference']} real)", pair(j["length"], "judge")])
        for key, label in (("category_mean", "each answer at its category's mean"),
                           ("other_models_mean_rate", "each model's rate at the other models' mean rate"),
                           ("other_models_prompt_mean", "each answer at the other models' mean rating of its prompt"),
                           ("without_length_lp", "the judge without its length and log-probability features")):
            if key in v:
                b = v[key]
                beaten.append([f"{label}, {name}", f"{fmt(b['mean_abs_error'], 1)} ({fmt(b['worst_error'], 0)})",
                               pair(b, "spearman") if key in RANKING_BASELINES else "-"])
    return [table(["validation", "Table 1 cell error, points: mean (worst)", "Spearman, harmful / helpful", "Kendall",
                   "Cohen's kappa on the decisions",
                   "error on a difference (95th percentile over resampled prompts): HmR, HpR points; mean reward, "
                   "harmful, helpful", "false / reversed / missed findings on the reference pairs",
                   "Spearman with answer length"], rows),
            table(["a judge to beat", "Table 1 cell error, points: mean (worst)", "Spearman, harmful / helpful"],
                  beaten)]
