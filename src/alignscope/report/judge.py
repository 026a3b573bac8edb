"""The report's judge section: what the judge is, its validated error, its Table 1 beside the
reference's, and the check of its findings against its length-blind heads.
"""

from __future__ import annotations


import numpy as np

from alignscope.judges.card import RANKING_BASELINES, findings_check_text
from alignscope.answers import RatedAnswer, RatedModel, read_answers
from alignscope.data import first_human_turn
from alignscope.judges import OPENASSISTANT_JUDGE
from alignscope.markdown import ci, display, fmt, fmt_rate, table
from alignscope.metrics_schema import Metrics
from alignscope.metrics import (SIGNIFICANCE, MetricsConfig, drawn_findings, harmless_flags, helpful_flags,
                                pairwise_tests, rank_agreement, worst_difference_error)
from alignscope.judges.score import BLIND_RATING

from alignscope.report.findings import finding_words
from alignscope.report.tables import level

SCHEMES = {"leave_one_model_out": "leaving each model out", "leave_prompts_out": "leaving prompts out"}


def difference_errors(summary: dict) -> dict:
    """A judge's held-out error on the difference between two models: on HmR and HpR and on mean
    reward per category, as its validation recorded it (an upper quantile over resampled prompts);
    for a judge fitted before that, the spread of its per-model cell errors."""
    recorded = summary.get("difference_error", {})
    if "HmR" in recorded:
        return dict(recorded)
    out = {k: worst_difference_error([cells[k]["error"] for cells in summary["table"].values()])
           for k in ("HmR", "HpR")}
    return out | {k: v for k, v in recorded.items() if k.startswith("mean_reward_")}


def judge_view(judge: dict, card: dict, card_file: str, prompts: list[str]) -> dict:
    """The judge as a study report presents it: its card, which of its validations covers this
    study's `prompts`, and the error below which a difference between models is not a finding."""
    info = dict(judge) | {"card": card, "card_file": card_file}
    validation = card["judge"].get("validation")
    if validation:
        trained = {first_human_turn(p) for p in card["judge"]["trained_prompts"]}
        ours = {first_human_turn(p) for p in prompts}
        scheme = "leave_one_model_out" if ours <= trained and "leave_one_model_out" in validation \
            else "leave_prompts_out"
        info |= {"applies": scheme, "prompts": len(ours), "prompts_new_to_judge": len(ours - trained),
                 "error": {**difference_errors(validation[scheme]["judge"]),
                           "validation": f"{SCHEMES[scheme]} on the reference answers"}}
        if "without_length_lp" in validation[scheme]:
            info["error_without_length_lp"] = difference_errors(validation[scheme]["without_length_lp"])
    elif card.get("errors"):
        cells = card["errors"]["judge"]["cells"].values()
        info["error"] = {k: worst_difference_error([c[k] for c in cells]) for k in ("HmR", "HpR")} | {
            "validation": "its agreement with the reference judge on the reference answers"}
    return info


def judge_name(judge: dict) -> str:
    return {"distilled": "the distilled judge", "reward model": "the local reward model"}.get(
        judge["kind"], f"`{judge['model']}`")


def judge_description(judge: dict) -> str:
    if judge["kind"] == "distilled":
        made = judge["distilled"]
        return (f"A **distilled judge**, fitted here to {judge['reference_judge']}'s ratings of the reference study's "
                f"{made['answers']} answers (`{judge['reference']}`), reading frozen features of each answer from "
                f"`{', '.join(b['spec'] for b in made['backbones'])}`; its ratings are on that judge's scale, so the "
                "thresholds keep their meaning.")
    if judge["kind"] == "reward model":
        return (f"A **local reward model** (`{judge['backbone']}` backbone, trained here with TRL's RewardTrainer on "
                f"{judge['trained_pairs']} HH-RLHF {judge['split']} pairs).")
    return (f"`{judge['model']}`, the reference study's own judge." if judge["model"] == OPENASSISTANT_JUDGE
            else f"`{judge['model']}`, used as it is.")


def applies_text(judge: dict) -> str:
    if judge["applies"] == "leave_one_model_out":
        return ("This study asks the judge's own prompts (in its own prompt format or another), so leaving each "
                "model out is the validation that applies: a new model's answers to prompts the judge has seen.")
    return (f"{judge['prompts_new_to_judge']} of this study's {judge['prompts']} prompts are not among the judge's, so "
            "leaving prompts out is the validation that applies, and it is the weaker of the two.")


BASELINES = {"category_mean": "a judge rating each answer at its category's mean",
             "other_models_mean_rate": "each model's rate put at the other models' mean rate",
             "other_models_prompt_mean": "each answer rated at the other models' mean rating of its prompt",
             "without_length_lp": "the same judge fitted without the length and log-probability features"}


def baseline_rows(v: dict, where: str = "") -> list[list[str]]:
    """A validation's judges to beat, as rows of cell error, mean (worst), and Spearman per category."""
    rows = []
    for key, label in BASELINES.items():
        if key in v:
            b = v[key]
            rows.append([f"  {label}{where}", f"{fmt(b['mean_abs_error'], 1)} ({fmt(b['worst_error'], 0)})",
                         *(fmt(b["spearman"][c]) if key in RANKING_BASELINES else "-" for c in ("harmful", "helpful"))])
    return rows


def error_text(judge: dict, validation: dict | None) -> list[str]:
    """How large a gap the judge's own error can make, the rule that follows, and what the rule
    gets wrong where the truth is known."""
    e = judge["error"]
    rewards = (f", and on their mean rewards {fmt(e['mean_reward_harmful'])} (harmful prompts) and "
               f"{fmt(e['mean_reward_helpful'])} (helpful)" if "mean_reward_harmful" in e else "")
    summary = validation[judge["applies"]]["judge"] if validation and judge.get("applies") else {}
    method = summary.get("difference_error_method")
    how = (f"the {fmt(100 * method['quantile'], 0)}th percentile of the spread of its held-out models' errors over "
           f"{method['resamples']} resamplings of the prompts, seed {method['seed']}, {e['validation']}"
           if method else f"the largest such, {e['validation']}")
    lines = [f"**What its error means here**: misjudging two models by different amounts, the judge alone can "
             f"open or close a gap between them of up to {fmt_rate(e['HmR'])} points on HmR and "
             f"{fmt_rate(e['HpR'])} on HpR{rewards} ({how}). A difference is a finding only where its paired test "
             f"holds (q < {SIGNIFICANCE}) and the gap exceeds this error and its own sampling error combined "
             "(the square root of the sum of their squares, the sampling error being the half-width of the "
             "gap's paired interval); Table 2 and CAS inherit these errors."]
    if "findings" in summary:
        lines[-1] += " " + findings_check_text(summary["findings"])
    return lines + [""]


def judge_section(judge: dict) -> str:
    """What a study report opens with: the judge, how well it agrees with the reference judge,
    which of its validations covers this study, and how large a gap its error can make."""
    lines = ["## The judge", "", judge_description(judge), ""]
    card = judge.get("card") or {}
    validation = card.get("judge", {}).get("validation")
    if validation:
        rows = []
        for scheme, v in validation.items():
            j = v["judge"]
            rows.append([SCHEMES[scheme] + (" (applies here)" if scheme == judge.get("applies") else ""),
                         f"{fmt(j['mean_abs_error'], 1)} ({fmt(j['worst_error'], 0)})",
                         *(fmt(j["spearman"][c]) for c in ("harmful", "helpful"))])
            rows += baseline_rows(v, f", {SCHEMES[scheme]}")
        lines += [f"Held out from its own fitting, against {card['reference']['judge']}'s ratings of "
                  f"{card['reference']['answers']} answers ({card['reference']['folder']}):", "",
                  table(["validation", "Table 1 cell error, points: mean (worst)", "Spearman, harmful",
                         "Spearman, helpful"], rows), ""]
    elif card.get("categories"):
        cats, errors = card["categories"], card["errors"]
        lines += [f"Against {card['reference']['judge']} on the {sum(c['n'] for c in cats.values())} answers of "
                  f"`{card['reference']['folder']}`: Spearman {fmt(cats['harmful']['spearman'])} (harmful prompts) "
                  f"and {fmt(cats['helpful']['spearman'])} (helpful); the Table 1 it gives is off by "
                  f"{fmt(errors['judge']['mean_abs'], 1)} points a cell on average (worst "
                  f"{fmt(errors['judge']['worst'], 0)}), {fmt(errors['mapped']['mean_abs'], 1)} after a monotone map "
                  "to the reference scale.", ""]
    if judge.get("applies"):
        lines += [applies_text(judge), ""]
    if validation:
        lines += ["Both validations rate answers of the reference study's own models. Answers of another model "
                  "family (this study's, unless it trains those models) are a shift neither measures: read the "
                  "judge's ratings of them as its best estimate of the reference judge's, not as that judge's.", ""]
    if judge.get("error"):
        lines += error_text(judge, validation)
    if judge.get("card_file"):
        lines += [f"The judge's full card: [judge-card/judge.md]({judge['card_file']}).", ""]
    else:
        lines += ["**No judge card**: this study names no `reference` (answers rated by a reference judge, such as "
                  "the reference study's 400 OpenAssistant ratings), so nothing here measures how far this judge's "
                  "ratings are from that judge's"
                  + (", nor checks this study's scoring path against the published ratings" if judge.get("model") ==
                     OPENASSISTANT_JUDGE else "")
                  + ". Set `reference` to such a folder to open the report with the judge's card.", ""]
    return "\n".join(lines)


def beside_reference(metrics: Metrics, reference: dict, judge_name: str) -> str:
    """This study's Table 1 under its judge beside the reference study's own, as published."""
    def row(label: str, m: dict) -> list[str]:
        return [label, *(f"{fmt_rate(m[k])} {ci(m[k + '_ci'])}" for k in ("HmR", "HpR", "CAS"))]

    rows = [row(f"{display(n)} (reference, {reference['judge']})", m) for n, m in reference["metrics"]["models"].items()]
    rows += [row(f"{display(n)} (this study, {judge_name})", m) for n, m in metrics["models"].items()]
    c = level(metrics)
    return "\n".join([
        "## Beside the reference study", "",
        f"The reference study's models ({reference['description']}) as its judge rated them, and this study's as "
        "this study's judge rated them, on the same thresholds. The rows come from different models and judges: "
        "read them side by side, not as paired comparisons.", "",
        table(["Model", f"HmR % [{c} CI]", f"HpR % [{c} CI]", f"CAS % [{c} CI]"], rows), ""])


def without_length_models(models: list[RatedModel]) -> list[RatedModel] | None:
    """The same answers as rated by the distilled judge's heads fitted without the length and
    log-probability features (written beside each rating by `score`); None where any lacks one."""
    out = []
    for m in models:
        answers = {}
        for c, path in m.files.items():
            items = read_answers(path)
            if any(BLIND_RATING not in x for x in items):
                return None
            answers[c] = [RatedAnswer(a.prompt, a.response, float(x[BLIND_RATING]), a.stop)
                          for a, x in zip(m.answers[c], items)]
        out.append(RatedModel(m.name, answers, m.files))
    return out


def length_rows(models: list[RatedModel]) -> list[list[str]]:
    """Per model: Spearman of its ratings with its answers' length in characters, and the mean length."""
    rows = []
    for m in models:
        cells = []
        for c in ("harmful", "helpful"):
            chars = np.array([len(a.response) for a in m.answers[c]], dtype=float)
            cells.append(f"{fmt(rank_agreement(m.ratings(c), chars)['spearman'])} ({fmt(chars.mean(), 0)} chars)")
        rows.append([display(m.name), *cells])
    return rows


def judge_check_section(models: list[RatedModel], judge: dict):
    """A distilled judge's findings checked two ways: how its ratings follow answer length (here and
    on the reference answers, beside the reference judge's), and whether the same judge fitted without
    the length and log-probability features draws the same findings. A callable of the metrics."""
    blind = without_length_models(models)
    summary = ((judge.get("card") or {}).get("judge", {}).get("validation") or {}).get(judge.get("applies"), {})

    def section(metrics: Metrics) -> str:
        lines = ["## The judge's findings checked against length", "",
                 "Alignment changes how long answers run and how they end, and the judge reads the answer's length "
                 "and log-probabilities. Spearman's rho of each model's ratings with its answers' length in "
                 "characters (in brackets, their mean length):", "",
                 table(["Model", "harmful prompts", "helpful prompts"], length_rows(models)), ""]
        if "length" in summary.get("judge", {}):
            held, ref = summary["judge"]["length"]["judge"], summary["judge"]["length"]["reference"]
            lines += [f"On the reference answers ({SCHEMES[judge['applies']]}), this judge's held-out ratings follow "
                      f"length with rho {fmt(held['harmful'])} (harmful) and {fmt(held['helpful'])} (helpful); "
                      f"the reference judge's own, {fmt(ref['harmful'])} and {fmt(ref['helpful'])}.", ""]
        if blind is None:
            return "\n".join(lines + ["No ratings without the length and log-probability features were recorded "
                                       "(a judge fitted before it had such heads): fit it again to check.", ""])
        flags = {m.name: {"harmful": harmless_flags(m.ratings("harmful"), MetricsConfig(**metrics["config"])),
                          "helpful": helpful_flags(m.ratings("helpful"), MetricsConfig(**metrics["config"]))}
                 for m in blind}
        errors = {k: v for k, v in judge.get("error_without_length_lp", judge["error"]).items() if k != "validation"}
        ours = drawn_findings(metrics["paired_tests"], {k: v for k, v in judge["error"].items() if k != "validation"})
        theirs = drawn_findings(pairwise_tests(blind, flags, MetricsConfig(**metrics["config"])), errors)
        differ = [f"{metric.replace('mean_reward_', 'mean reward, ')} {display(a)} vs {display(b)}: "
                  f"{finding_words(metric, a, b, ours[metric, a, b])} with every feature, "
                  f"{finding_words(metric, a, b, theirs[metric, a, b])} without length and log-probabilities"
                  for metric, a, b in ours if ours[metric, a, b] != theirs[metric, a, b]]
        found = sum(bool(v) for v in ours.values())
        lines += [f"The same judge fitted without the length and log-probability features, under the same rule "
                  f"(with its own held-out error on a difference): " + (
                      f"**it disagrees** in direction or support on {len(differ)} of the {len(ours)} comparisons: "
                      + "; ".join(differ) + "." if differ else
                      f"it draws the same {found} finding{'s' if found != 1 else ''} on all {len(ours)} comparisons "
                      "(HmR, HpR and the two mean rewards, every pair of models)."), ""]
        return "\n".join(lines)

    return section
