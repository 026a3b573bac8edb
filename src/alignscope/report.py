"""The report: metrics.json, report.md with the study's tables and our statistics,
and the figures it links.

Numbers are printed the way the study printed them (two decimals, halves
rounded up: +28.125 % is "+28.13"), so its tables can be compared line by line.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alignscope.agreement import RANKING_BASELINES, findings_check_text
from alignscope.answers import RatedAnswer, RatedModel, read_answers
from alignscope.data import first_human_turn
from alignscope.html_report import hh_sections, suite_sections, write_html_report
from alignscope.io import atomic_folder, atomic_write_json, atomic_write_text, check_output_dir
from alignscope.judge import OPENASSISTANT_JUDGE
from alignscope.markdown import ci, display, fmt, fmt_p, fmt_rate, p_is, table
from alignscope.metrics import (SIGNIFICANCE, MetricsConfig, drawn_findings, finding, finding_margin,
                                harmless_flags, helpful_flags, pairwise_tests, rank_agreement, worst_difference_error)
from alignscope.score import BLIND_RATING
from alignscope.stages import SHARED_CORES

JUDGE_CAVEAT = (
    "Harmlessness is judged by a reward model trained mostly for helpfulness preferences; "
    "OpenAssistant/reward-model-deberta-v3-large-v2 separates Anthropic harmless pairs only weakly "
    "(RewardBench: 56% on harmless pairs, 71% on helpful), so HmR is the weaker of the two measurements.")


@dataclass
class ReportConfig:
    """What the report says about where its numbers came from."""

    title: str = "Alignment report"
    notes: list[str] = field(default_factory=list)
    """Lines printed under the title: the judge, the data trained on, anything a reader must know."""
    figures: bool = True
    judge_caveat: bool = True
    """Say that the OpenAssistant judge separates harmless pairs weakly (off when another judge rated)."""


def level(metrics: dict) -> str:
    """The confidence of the intervals, as the report labels them ("95%")."""
    return f"{metrics['confidence']:.0%}"


def rating_range(metrics: dict) -> tuple[float, float]:
    """Lowest and highest rating of any model in either category."""
    ranges = metrics["rating_range"].values()
    return min(lo for lo, _ in ranges), max(hi for _, hi in ranges)


def reward_places(metrics: dict) -> int:
    """Decimals for rewards: the study's 2 on OpenAssistant's scale (rewards spanning ~10), more
    for a judge whose rewards span a fraction of one, where 2 would print every difference as 0.00."""
    lo, hi = rating_range(metrics)
    return 2 if hi <= lo else max(2, 3 - math.floor(math.log10(hi - lo)))


# --------------------------------------------------------------------------- markdown

def table1(metrics: dict) -> str:
    rows, places = [], reward_places(metrics)
    for name, m in metrics["models"].items():
        rows.append([display(name),
                     f"{fmt_rate(m['HmR'])} {ci(m['HmR_ci'])}", f"{fmt_rate(m['HpR'])} {ci(m['HpR_ci'])}",
                     f"{fmt_rate(m['CAS'])} {ci(m['CAS_ci'])}",
                     f"{fmt(m['mean_reward']['harmful'], places)} {ci(m['mean_reward_ci']['harmful'], places)}",
                     f"{fmt(m['mean_reward']['helpful'], places)} {ci(m['mean_reward_ci']['helpful'], places)}",
                     f"{m['n']['harmful']} / {m['n']['helpful']}"])
    c = level(metrics)
    return table(["Model", f"HmR % [{c} CI]", f"HpR % [{c} CI]", f"CAS % [{c} CI]",
                  f"mean reward, harmful [{c} CI]", f"mean reward, helpful [{c} CI]", "n harmful / helpful"], rows)


def table2(metrics: dict) -> str:
    rows = [[display(n), fmt(r["HmR"], sign=True), fmt(r["HpR"], sign=True), fmt(r["CAS"], sign=True)]
            for n, r in metrics["relative_to_base"].items()]
    return table(["Model", "HmR change %", "HpR change %", "CAS change %"], rows)


def rate_tests_table(metrics: dict) -> str:
    rows = []
    for t in metrics["paired_tests"]:
        if t["metric"] not in ("HmR", "HpR"):
            continue
        rows.append([t["metric"], f"{display(t['a'])} vs {display(t['b'])}",
                     fmt_rate(metrics["models"][t["a"]][t["metric"]]) + " vs " + fmt_rate(metrics["models"][t["b"]][t["metric"]]),
                     str(t["a_only"]), str(t["b_only"]), fmt_p(t["p_value"]), fmt_p(t["q_value"])])
    return table(["metric", "a vs b", "rate % (a vs b)", "only a passes", "only b passes", "p (exact McNemar)",
                  "q (BH)"], rows)


def reward_tests_table(metrics: dict) -> str:
    rows, places = [], reward_places(metrics)
    for t in metrics["paired_tests"]:
        if not t["metric"].startswith("mean_reward"):
            continue
        rows.append([t["metric"].removeprefix("mean_reward_"), f"{display(t['a'])} - {display(t['b'])}",
                     f"{fmt(t['mean_diff'], places, sign=True)} {ci(t['ci'], places)}", fmt_p(t["p_value"]),
                     fmt_p(t["wilcoxon_p"]), fmt_p(t["q_value"])])
    return table(["prompts", "a - b", f"mean reward difference [{level(metrics)} CI]", "p (paired t)", "p (Wilcoxon)",
                  "q (BH)"], rows)


def retention_table(metrics: dict) -> str:
    rows = []
    for r in metrics["retention"]:
        rows.append([f"{display(r['before'])} -> {display(r['after'])}",
                     f"{fmt_rate(r['HpR_before'])} -> {fmt_rate(r['HpR_after'])}", fmt(r["aggregate"]),
                     f"{r['still_helpful']} / {r['helpful_before']}",
                     f"{percent(r['per_prompt'])} {percent_ci(r['per_prompt_ci'])}"])
    return table(["before -> after", "HpR %", "aggregate retention (HpR ratio)",
                  "helpful before, still helpful after", f"per-prompt retention % [{level(metrics)} CI]"], rows)


def percent_ci(fraction_ci: list[float] | None) -> str:
    return ci(None if fraction_ci is None else [100 * x for x in fraction_ci])


def percent(fraction: float | None) -> str:
    return fmt(None if fraction is None else 100 * fraction, 0)


def margin_text(t: dict, error: float, places: int | None = None) -> str:
    """The margin a gap must pass, and what it combines."""
    gap_ci = t["gap_ci"] if "gap_ci" in t else t["ci"]
    show = (lambda x: fmt(x, 1)) if places is None else (lambda x: fmt(x, places))
    return (f"its margin of {show(finding_margin(gap_ci, error))} (the judge's error on a difference, {show(error)}, "
            f"and the gap's own sampling error, +-{show((gap_ci[1] - gap_ci[0]) / 2)}, combined)")


def rate_findings(metrics: dict) -> list[str]:
    """Which rate differences the paired tests support (q < SIGNIFICANCE), and which they do not;
    with a judge whose error is known, a supported gap must also pass its margin (metrics.finding)."""
    supported, unsupported, within = [], [], []
    judge_error = (metrics.get("judge") or {}).get("error") or {}
    for t in metrics["paired_tests"]:
        if t["metric"] not in ("HmR", "HpR"):
            continue
        ra, rb = metrics["models"][t["a"]][t["metric"]], metrics["models"][t["b"]][t["metric"]]
        what = "harmful prompts harmlessly" if t["metric"] == "HmR" else "helpful prompts helpfully"
        higher, lower = (t["a"], t["b"]) if ra >= rb else (t["b"], t["a"])
        error = judge_error.get(t["metric"])
        if t["q_value"] < SIGNIFICANCE and error is not None and not finding(t, error):
            within.append(f"{display(higher)} over {display(lower)} on {t['metric']} ({fmt_rate(max(ra, rb))}% vs "
                          f"{fmt_rate(min(ra, rb))}%, {p_is('q', t['q_value'])}): a gap of {fmt_rate(abs(ra - rb))} "
                          f"points, within {margin_text(t, error)}")
        elif t["q_value"] < SIGNIFICANCE:
            beyond_margin = f"; beyond {margin_text(t, error)}" if error is not None else ""
            supported.append(f"{display(higher)} answers more of the {what} than {display(lower)} "
                             f"({fmt_rate(max(ra, rb))}% vs {fmt_rate(min(ra, rb))}%; {max(t['a_only'], t['b_only'])} "
                             f"prompts one way, {min(t['a_only'], t['b_only'])} the other; {p_is('p', t['p_value'])}, "
                             f"{p_is('q', t['q_value'])}{beyond_margin})")
        elif ra != rb:
            nominal = " (nominally below 0.05, not after correcting for the number of tests)" \
                if t["p_value"] < SIGNIFICANCE else ""
            unsupported.append(f"{display(t['a'])} vs {display(t['b'])} on {t['metric']} "
                               f"({fmt_rate(ra)}% vs {fmt_rate(rb)}%, {p_is('p', t['p_value'])}{nominal})")
    beyond = " and beyond the judge's error combined with the gap's own sampling error" if judge_error else ""
    parts = [("**The data supports** (exact McNemar on the same prompts, Benjamini-Hochberg "
              f"q < {SIGNIFICANCE}{beyond}): " + "; ".join(supported) + ".") if supported else
             ("**No difference in HmR or HpR between any two models is supported** at "
              f"q < {SIGNIFICANCE}{beyond}.")]
    if within:
        parts.append("**The paired tests support, but the judge's own error does not**: " + "; ".join(within) + ". "
                     "A gap the judge could make on its own by misjudging one model is not a finding "
                     f"({judge_error.get('validation', 'its validation')}).")
    if unsupported:
        n = next(iter(metrics["models"].values()))["n"]
        widths = [m[k][1] - m[k][0] for m in metrics["models"].values() for k in ("HmR_ci", "HpR_ci")]
        parts.append("**The data does not support** a difference in: " + "; ".join(unsupported) + ". "
                     f"With {n['harmful']} harmful and {n['helpful']} helpful prompts the {level(metrics)} "
                     f"intervals on a rate are {fmt(min(widths), 0)} to {fmt(max(widths), 0)} points wide, so gaps "
                     "of this size are within what resampling the prompts would produce.")
    return parts


def reward_findings(metrics: dict) -> str:
    places, rewards, within = reward_places(metrics), [], []
    judge_error = (metrics.get("judge") or {}).get("error") or {}
    for t in metrics["paired_tests"]:
        if t["metric"].startswith("mean_reward") and t["q_value"] < SIGNIFICANCE:
            higher, lower = (t["a"], t["b"]) if t["mean_diff"] > 0 else (t["b"], t["a"])
            diff, (lo, hi) = abs(t["mean_diff"]), sorted(abs(x) for x in t["ci"])
            text = (f"{display(higher)} over {display(lower)} on {t['metric'].removeprefix('mean_reward_')} "
                    f"prompts (+{fmt(diff, places)} [{fmt(lo, places)}, {fmt(hi, places)}]; "
                    f"{p_is('p', t['p_value'])}, {p_is('q', t['q_value'])})")
            error = judge_error.get(t["metric"])
            if error is not None and not finding(t, error):
                within.append(f"{text}: within {margin_text(t, error, places)}")
            else:
                rewards.append(text)
    beyond = (" and beyond the judge's error combined with the gap's own sampling error"
              if any(k.startswith("mean_reward") for k in judge_error) else "")
    parts = [(f"**On mean reward** (paired t on the same prompts, Benjamini-Hochberg q < {SIGNIFICANCE}{beyond}), "
              "the data supports a higher reward for " + "; ".join(rewards) + ".") if rewards else
             f"No difference in mean reward is supported at q < {SIGNIFICANCE}{beyond} (paired t on the same prompts)."]
    if within:
        parts.append("**The paired tests support, but the judge's own error does not**, a higher mean reward for "
                     + "; ".join(within) + ".")
    return " ".join(parts)


def retention_findings(metrics: dict) -> list[str]:
    return [f"Of the {r['helpful_before']} helpful prompts {display(r['before'])} answered helpfully, "
            f"{display(r['after'])} still answers {r['still_helpful']} helpfully "
            f"({percent(r['per_prompt'])}%, {level(metrics)} CI {percent_ci(r['per_prompt_ci'])})."
            for r in metrics["retention"] if r["helpful_before"]]


ONE_MODEL = "One model only: there is no second model to compare it with, so no paired test was made."


def findings(metrics: dict) -> str:
    """Plain words: which differences the paired tests support, which they do not."""
    if len(metrics["models"]) < 2:
        return ONE_MODEL
    return "\n\n".join(rate_findings(metrics) + [reward_findings(metrics)] + retention_findings(metrics))


# --------------------------------------------------------------------------- figures

def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _threshold_line(ax, value: float, label: str, data_range: tuple[float, float], vertical: bool = False) -> None:
    """Mark a threshold among the data; where it lies far beyond them (a judge on another scale
    than OpenAssistant's), name it at that edge instead of stretching the axis until the data
    is a flat line."""
    lo, hi = data_range
    pad = 0.25 * (hi - lo) if hi > lo else 1.0
    if lo - pad <= value <= hi + pad:
        (ax.axvline if vertical else ax.axhline)(value, color="crimson", ls="--", lw=1, label=label)
        return
    below, text = value < lo, f"{label}\nlies off this axis"
    if vertical:
        ax.text(0.02 if below else 0.98, 0.5, text, transform=ax.transAxes, color="crimson", fontsize=8,
                ha="left" if below else "right")
    else:
        ax.text(0.5, 0.02 if below else 0.98, text, transform=ax.transAxes, color="crimson", fontsize=8,
                ha="center", va="bottom" if below else "top")


def figure_rates(metrics: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    names = list(metrics["models"])
    keys = ["HmR", "HpR", "CAS"]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names) + 2), 4.2))
    width = 0.8 / len(keys)
    x = np.arange(len(names))
    for i, (k, color) in enumerate(zip(keys, _colors(3))):
        vals = np.array([metrics["models"][n][k] for n in names])
        lo = np.array([metrics["models"][n][f"{k}_ci"][0] for n in names])
        hi = np.array([metrics["models"][n][f"{k}_ci"][1] for n in names])
        pos = x + (i - 1) * width
        ax.bar(pos, vals, width, label=k, color=color, alpha=0.85)
        ax.errorbar(pos, vals, yerr=[vals - lo, hi - vals], fmt="none", ecolor="black", capsize=3, lw=1)
        for p, v in zip(pos, vals):
            ax.text(p, 1, fmt_rate(v), ha="center", va="bottom", fontsize=7, color="white")
    ax.set_xticks(x, [display(n) for n in names])
    ax.set_ylabel("% of prompts")
    ax.set_ylim(0, 100)
    ax.set_title(f"Rates with {level(metrics)} intervals", pad=24)
    # above the axes: bars at 100% would hide a legend inside them
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=3, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def figure_reward_boxes(models: list[RatedModel], cfg: MetricsConfig, data_range: tuple[float, float],
                        path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(models) + 3), 4.2), sharey=True)
    for ax, cat, thr in zip(axes, ("harmful", "helpful"), (cfg.harmless_threshold, cfg.helpful_threshold)):
        data = [m.ratings(cat) for m in models]
        ax.boxplot(data, tick_labels=[display(m.name) for m in models], showmeans=True,
                   meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black"})
        _threshold_line(ax, thr, f"{'harmless' if cat == 'harmful' else 'helpful'} threshold ({thr:g})",
                        data_range)
        ax.set_title(f"{cat} prompts")
        ax.grid(axis="y", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", frameon=True, framealpha=0.9, fontsize=8)
    axes[0].set_ylabel("reward")
    fig.suptitle("Reward per model (box: quartiles, diamond: mean)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def figure_per_prompt(models: list[RatedModel], cfg: MetricsConfig, data_range: tuple[float, float],
                      path: Path) -> None:
    """Each prompt's reward under every model, joined by a line: the pairing the tests use."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(models) + 3), 4.6), sharey=True)
    colors = _colors(len(models))
    for ax, cat in zip(axes, ("harmful", "helpful")):
        thr = cfg.harmless_threshold if cat == "harmful" else cfg.helpful_threshold
        grid = np.stack([m.ratings(cat) for m in models])  # models x prompts
        x = np.arange(len(models))
        for j in range(grid.shape[1]):
            ax.plot(x, grid[:, j], color="grey", alpha=0.18, lw=0.8)
        for i, m in enumerate(models):
            flags = harmless_flags(grid[i], cfg) if cat == "harmful" else helpful_flags(grid[i], cfg)
            jitter = np.linspace(-0.08, 0.08, grid.shape[1])
            ax.scatter(x[i] + jitter[flags], grid[i][flags], s=14, color=colors[i], label=None)
            ax.scatter(x[i] + jitter[~flags], grid[i][~flags], s=14, facecolors="none", edgecolors=colors[i])
        _threshold_line(ax, thr, f"threshold ({thr:g})", data_range)
        ax.set_xticks(x, [display(m.name) for m in models])
        ax.set_title(f"{cat} prompts (filled: passes {thr:g})")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("reward")
    fig.suptitle("Per-prompt rewards; grey lines join one prompt across models")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def figure_thresholds(metrics: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    sweep = metrics["thresholds"]["sweep"]
    names = list(metrics["models"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, key, thr_key in zip(axes, ("HmR", "HpR"), ("harmless", "helpful")):
        for name, color in zip(names, _colors(len(names))):
            ax.plot(sweep["values"], sweep[key][name], label=display(name), color=color)
        thr = metrics["thresholds"][thr_key]
        _threshold_line(ax, thr["value"], f"chosen ({thr['comparison']} {thr['value']:g})",
                        (sweep["values"][0], sweep["values"][-1]), vertical=True)
        ax.set_xlabel("reward threshold")
        ax.set_title(f"{key} as its threshold moves")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% of prompts")
    axes[1].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def figure_tradeoff(metrics: dict, path: Path) -> None:
    """Over-refusal against unsafe compliance, one point per model: the trade-off in one picture
    (the corner at the origin refuses nothing safe and answers nothing unsafe)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.8, 5))
    for (name, suite) in ((n, s) for n, s in metrics["suites"].items() if s["kind"] == "xstest"):
        for model, color in zip(suite["models"], _colors(len(suite["models"]))):
            over, unsafe = suite["models"][model]["over_refusal"], suite["models"][model]["unsafe_compliance"]
            ax.errorbar(over["rate"], unsafe["rate"], xerr=[[over["rate"] - over["ci"][0]], [over["ci"][1] - over["rate"]]],
                        yerr=[[unsafe["rate"] - unsafe["ci"][0]], [unsafe["ci"][1] - unsafe["rate"]]], fmt="o",
                        color=color, capsize=3, label=display(model))
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("over-refusal: safe XSTest prompts refused (%)")
    ax.set_ylabel("unsafe compliance: unsafe XSTest prompts answered (%)")
    ax.set_title(f"Over-refusal against unsafe compliance, {level(metrics)} intervals")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def has_xstest(metrics: dict) -> bool:
    return any(s["kind"] == "xstest" for s in (metrics.get("suites") or {}).values())


FIGURE_FILES = ("rates.png", "reward_boxes.png", "per_prompt.png", "thresholds.png", "tradeoff.png")


def figure_captions(metrics: dict) -> dict[str, str]:
    return {
        "rates.png": f"HmR, HpR and CAS per model with {level(metrics)} intervals",
        "reward_boxes.png": "reward distributions per model",
        "per_prompt.png": "per-prompt rewards against the thresholds",
        "thresholds.png": "threshold sensitivity of HmR and HpR",
    } | ({"tradeoff.png": "XSTest: over-refusal against unsafe compliance"} if has_xstest(metrics) else {})


def make_figures(models: list[RatedModel], metrics: dict, cfg: MetricsConfig, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    ratings = rating_range(metrics)

    def draw_all(fig_dir: Path) -> None:
        for name, draw in (("rates.png", lambda p: figure_rates(metrics, p)),
                           ("reward_boxes.png", lambda p: figure_reward_boxes(models, cfg, ratings, p)),
                           ("per_prompt.png", lambda p: figure_per_prompt(models, cfg, ratings, p)),
                           ("thresholds.png", lambda p: figure_thresholds(metrics, p)),
                           *([("tradeoff.png", lambda p: figure_tradeoff(metrics, p))] if has_xstest(metrics) else [])):
            draw(fig_dir / name)

    # all or none: the folder is drawn aside and swapped in whole
    atomic_folder(out / "figures", draw_all, "report figures", legacy_files=tuple(figure_captions(metrics)))
    return [f"figures/{n}" for n in figure_captions(metrics)]


# --------------------------------------------------------------------------- all of it

def threshold_notes(metrics: dict) -> list[str]:
    """A threshold beyond every rating of its category makes that rate the same for every model:
    the thresholds are in the OpenAssistant reward model's units, and another judge has its own."""
    notes = []
    for rate_name, cat, key in (("HmR", "harmful", "harmless"), ("HpR", "helpful", "helpful")):
        lo, hi = metrics["rating_range"][cat]
        thr = metrics["thresholds"][key]["value"]
        if thr < lo or thr > hi:
            side = "passes" if thr < lo else "fails"
            notes.append(f"**Every {cat}-prompt answer {side}**: the judge rated them all between {fmt(lo)} and "
                         f"{fmt(hi)}, and the {key} threshold is {thr:g}, so {rate_name} cannot tell the models "
                         f"apart. The thresholds are in OpenAssistant's reward units; for a judge on another "
                         f"scale set `metrics.{key}_threshold` in a study or `--{key}-threshold` of "
                         f"`alignscope report`, and see the threshold-sensitivity figure.")
    return notes


def refusal_error(metrics: dict) -> float | None:
    """The refusal measure's error on a difference between two models, in points, from its card."""
    card = metrics.get("refusal_card") or {}
    return card.get("difference_error")


def refusal_card_section(card: dict) -> str:
    """What the refusal measure is and how it agrees with people: it opens the refusal sections."""
    pooled = card["pooled"]

    def kappa(form: str) -> str:
        k = pooled[form]
        return "n/a" if k["kappa"] is None else f"{k['kappa']:.2f} {ci(k['kappa_ci'], 2)}"

    error = card.get("difference_error")
    lines = ["## The refusal measure", "",
             f"Refusals are decided by {card['name']}. Against people's labels on {card['answers']} XSTest answers "
             f"of {card['models']} chat models ({card['predictions']}), its pooled Cohen's kappa is {kappa('whole')} "
             f"on the answers whole and {kappa('cut')} cut to their first {card['cut_tokens']} tokens; XSTest's "
             f"prefix baseline reaches {card['baseline_kappa']['whole']:.2f} and {card['baseline_kappa']['cut']:.2f}. "
             f"Card: [{card['card_file']}]({card['card_file']}).", ""]
    if error is not None:
        lines += [f"Which validation applies: the labelled answers are long replies of large chat models; the answers "
                  f"here are at most {card['max_new_tokens']} tokens from small models, closest to the cut ones but "
                  f"not the same. A refusal rate's gap between two models smaller than the measure's error on a "
                  f"difference ({fmt(error, 1)} points, the larger of whole and cut) is not called a finding.", ""]
    return "\n".join(lines)


def refusal_verdicts(tests: list[dict], gap, describe, error: float | None) -> list[str]:
    """Supported gaps (q < SIGNIFICANCE) beyond the measure's error, and those within it."""
    supported, within = [], []
    for t in tests:
        if t["q_value"] >= SIGNIFICANCE:
            continue
        text = describe(t)
        if error is not None and abs(gap(t)) <= error:
            within.append(f"{text}: a gap of {fmt_rate(abs(gap(t)))} points, within the measure's error of "
                          f"{fmt(error, 1)}")
        else:
            supported.append(text)
    beyond = " and beyond the measure's error" if error is not None else ""
    parts = [(f"**Supported** (exact McNemar, Benjamini-Hochberg q < {SIGNIFICANCE}{beyond}): " + "; ".join(supported)
              + ".") if supported else f"No difference is supported (q < {SIGNIFICANCE}{beyond})."]
    if within:
        parts.append("**The paired tests support, but the measure's own error does not**: " + "; ".join(within) + ".")
    return parts


def refusal_section(metrics: dict) -> str:
    """How often each model refuses or deflects: a measure no judge enters."""
    r = metrics["refusal"]
    tests = {(t["a"], t["category"]): t for t in r["tests"]}

    def cell(name: str, c: str) -> str:
        m = r["models"][name][c]
        test = tests.get((name, c))
        return (f"{m['count']} / {m['n']} ({fmt_rate(m['rate'])}% {ci(m['ci'])})"
                + (f", {p_is('p', test['p_value'])}" if test else ""))

    rows = [[display(n), cell(n, "harmful"), cell(n, "helpful")] for n in r["models"]]
    describe = (lambda t: f"{display(t['a'])} refuses or deflects {'more' if t['a_only'] > t['b_only'] else 'less'} "
                f"often than {display(t['b'])} on {t['category']} prompts ({t['a_only']} prompts one way, "
                f"{t['b_only']} the other; {p_is('q', t['q_value'])})")
    if r.get("patterns") and not metrics.get("refusal_card"):
        supported = [describe(t) for t in r["tests"] if t["q_value"] < SIGNIFICANCE]
        verdict = ("**Supported** (exact McNemar against the base, Benjamini-Hochberg q < "
                   f"{SIGNIFICANCE}): " + "; ".join(supported) + "." if supported else
                   f"No change in refusals against the base is supported (q < {SIGNIFICANCE})." if len(rows) > 1 else
                   ONE_MODEL)
        return "\n".join(["## Refusals (no judge)", "",
                          f"Answers whose opening refuses or deflects, by the fixed pattern list `{r['patterns']}` "
                          "(alignscope.refusal): on harmful prompts a safety measure that needs no judge, on helpful "
                          "prompts over-refusal. In brackets the rate and its interval; p: exact McNemar against the "
                          "base.", "",
                          table(["Model", "harmful prompts refused", "helpful prompts refused"], rows), "", verdict, ""])
    gap = lambda t: r["models"][t["a"]][t["category"]]["rate"] - r["models"][t["b"]][t["category"]]["rate"]
    name = (metrics.get("refusal_card") or {}).get("name") or f"`{r['measure'].get('version', r['measure']['kind'])}`"
    return "\n".join(["## Refusals on the HH prompts (no judge)", "",
                      f"Answers that refuse or deflect, as {name} decides: on harmful prompts a safety measure that "
                      "needs no judge, on helpful prompts over-refusal. In brackets the rate and its interval; p: exact "
                      "McNemar against the base.", "",
                      table(["Model", "harmful prompts refused", "helpful prompts refused"], rows), "",
                      *refusal_verdicts(r["tests"], gap, describe, refusal_error(metrics)), ""])


MEASURE_WORDS = {"over_refusal": ("over-refusal", "safe prompts refused"),
                 "unsafe_compliance": ("unsafe compliance", "unsafe prompts answered")}


def measure_words(measure: str, spec: dict) -> tuple[str, str]:
    return MEASURE_WORDS.get(measure) or (f"refusal ({spec['category']})", f"{spec['category']} prompts refused")


def suite_section(name: str, suite: dict, metrics: dict) -> str:
    """A suite's refusal rates per model, every pair tested, and which gaps are findings."""
    c = level(metrics)
    measures = suite["measures"]
    header = ["Model"] + [f"{measure_words(m, spec)[1]} [{c} CI]" for m, spec in measures.items()]
    rows = [[display(model)] + [f"{v['count']} / {v['n']} ({fmt_rate(v['rate'])}% {ci(v['ci'])})"
                                for v in (per[m] for m in measures)] for model, per in suite["models"].items()]
    test_rows = [[measure_words(t["measure"], measures[t["measure"]])[0], f"{display(t['a'])} vs {display(t['b'])}",
                  f"{fmt_rate(suite['models'][t['a']][t['measure']]['rate'])} vs "
                  f"{fmt_rate(suite['models'][t['b']][t['measure']]['rate'])}", str(t["a_only"]), str(t["b_only"]),
                  fmt_p(t["p_value"]), fmt_p(t["q_value"])] for t in suite["tests"]]
    gap = lambda t: suite["models"][t["a"]][t["measure"]]["rate"] - suite["models"][t["b"]][t["measure"]]["rate"]

    def describe(t: dict) -> str:
        words = measure_words(t["measure"], measures[t["measure"]])[0]
        higher, lower = (t["a"], t["b"]) if gap(t) > 0 else (t["b"], t["a"])
        return (f"{display(higher)} has more {words} than {display(lower)} "
                f"({fmt_rate(suite['models'][higher][t['measure']]['rate'])}% vs "
                f"{fmt_rate(suite['models'][lower][t['measure']]['rate'])}%; {max(t['a_only'], t['b_only'])} prompts "
                f"one way, {min(t['a_only'], t['b_only'])} the other; {p_is('q', t['q_value'])})")

    intro = ("XSTest (Röttger et al. 2024): safe prompts that only look unsafe, where a refusal is over-refusal, the "
             "helpfulness that safety training costs; and unsafe contrasts, where an answer is unsafe compliance. "
             if suite["kind"] == "xstest" else f"Prompts of the suite `{name}`, by category. ")
    return "\n".join([f"## Suite `{name}`", "", intro + "Refusals as the study's refusal measure decides; "
                      "every pair of models by exact McNemar on the same prompts, Benjamini-Hochberg across the suite.",
                      "", table(header, rows), "",
                      table(["measure", "a vs b", "rate % (a vs b)", "only a", "only b", "p (exact McNemar)", "q (BH)"],
                            test_rows), "",
                      *refusal_verdicts(suite["tests"], gap, describe, refusal_error(metrics)), ""])


def suites_sections(metrics: dict) -> list[str]:
    return [suite_section(name, suite, metrics) for name, suite in (metrics.get("suites") or {}).items()]


def render_markdown(metrics: dict, cfg: ReportConfig, figures: list[str], extra_sections: list[str] = (),
                    leading_sections: list[str] = ()) -> str:
    thr = metrics["thresholds"]
    parts = [f"# {cfg.title}", ""]
    parts += [f"- {note}" for note in cfg.notes]
    parts += [
        f"- Harmless: reward {thr['harmless']['comparison']} {thr['harmless']['value']:g} on a harmful prompt; "
        f"helpful: reward {thr['helpful']['comparison']} {thr['helpful']['value']:g} on a helpful prompt; "
        "CAS = (HmR + HpR) / 2.",
        *([f"- {JUDGE_CAVEAT}"] if cfg.judge_caveat else []),
        *[f"- {note}" for note in threshold_notes(metrics)],
        *[f"- Undefined, and null in metrics.json: {note}." for note in metrics.get("undefined", [])],
        "",
        *leading_sections,
        "## Table 1: rates and mean rewards",
        "", table1(metrics), "",
        *([training_section(metrics)] if metrics.get("training") else []),
        f"## Table 2: change relative to {display(metrics['base'])}",
        "", table2(metrics), "",
        "## What the data supports", "", findings(metrics), "",
        "## Paired tests on the rates",
        "",
        "Each test compares two models on the same prompts: only the prompts where they disagree count.",
        "", rate_tests_table(metrics), "",
        "## Paired tests on the mean reward", "", reward_tests_table(metrics), "",
        "## Helpfulness retention", "", retention_table(metrics), "",
        *([refusal_card_section(metrics["refusal_card"])] if metrics.get("refusal_card") else []),
        refusal_section(metrics),
        *suites_sections(metrics),
    ]
    parts += list(extra_sections)
    if figures:
        parts += ["## Figures", ""]
        captions = figure_captions(metrics)
        parts += [f"![{captions.get(Path(f).name, f)}]({f})" for f in figures]
        parts.append("")
    parts += ["## Methods", ""] + [f"- {k.replace('_', ' ')}: {v}" for k, v in metrics["methods"].items()]
    return "\n".join(parts) + "\n"


def refusal_name(metrics: dict) -> str:
    measure = metrics["refusal"]["measure"]
    return (metrics.get("refusal_card") or {}).get("name") or measure.get("version") or measure["kind"]


def html_sections(models: list[RatedModel], metrics: dict, refusals: dict, label: str = "") -> list[dict]:
    """What report.html shows of the answers: the HH prompts and every suite, with `refusal.decide`'s decisions."""
    return hh_sections(models, metrics, refusals["flags"], label) + suite_sections(refusals.get("suites") or {}, label)


def write_report(models: list[RatedModel], metrics: dict, out: str | Path, refusals: dict,
                 report_cfg: ReportConfig = ReportConfig(), extra_sections: list[str] = (),
                 leading_sections=()) -> Path:
    """Write report.md, report.html and figures/ under `out` beside metrics.json, from what `compute_metrics`
    computed (and a study added) and the refusal decisions it was computed from; the report computes nothing.
    A section may be a callable of the metrics."""
    out = check_output_dir(out)
    leading, extra_sections = ([section(metrics) if callable(section) else section for section in sections]
                               for sections in (leading_sections, extra_sections))
    figures = [f"figures/{n}" for n in figure_captions(metrics)] if report_cfg.figures else []
    text = render_markdown(metrics, report_cfg, figures, extra_sections, leading)
    cfg = MetricsConfig(**metrics["config"])
    written = []
    try:  # a failed write leaves none of this run's outputs beside the old ones
        if figures:
            make_figures(models, metrics, cfg, out)
            written.append(out / "figures")
        written.append(atomic_write_json(out / "metrics.json", metrics))
        written.append(atomic_write_text(out / "report.md", text))
        write_html_report(out, [m.name for m in models], html_sections(models, metrics, refusals),
                          refusal_name(metrics))
    except BaseException:
        for path in written:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        raise
    return out


# --------------------------------------------------------------------------- a study's prose

def study_notes(*, study: str, base_model: str, evalset: dict, max_new_tokens: int, data: str, trainings: list[dict],
                judge: dict) -> list[str]:
    """What a study report says under its title: prompts, data, training split, judge."""
    from scipy import stats

    prov = evalset["provenance"]["config"]
    notes = [f"Study `{study}`; base model `{base_model}`; evaluation set: {len(evalset['harmful'])} harmful + "
             f"{len(evalset['helpful'])} helpful prompts from HH-RLHF {prov['split']} (seed {prov['seed']}, "
             f"keywords {', '.join(prov['keywords'])}, `{prov['format']}` prompt format); greedy answers of at most "
             f"{max_new_tokens} new tokens."]
    if data != "hub":
        notes.append(f"Data from the local folder `{data}`.")
    if any(t["split"] == "test" for t in trainings):
        notes.append("Training used the HH-RLHF **test** split (the train split cannot be had offline), leaving "
                     "out every pair that shares a dialogue with the evaluation set; rows and steps per variant are "
                     "in the table of answers below and in each model's data_manifest.json.")
    if judge.get("trained_here"):
        k = round(judge["heldout_accuracy"] * judge["heldout_pairs"])
        interval = stats.binomtest(k, judge["heldout_pairs"]).proportion_ci(method="wilson")
        chance = interval.low <= 0.5
        notes.append(
            f"Judge: a **local reward model** (`{judge['backbone']}` backbone, trained here on "
            f"{judge['trained_pairs']} HH-RLHF {judge['split']} pairs), not OpenAssistant's DeBERTa. Its "
            f"held-out pair accuracy is {100 * judge['heldout_accuracy']:.1f}% [{100 * interval.low:.0f}, "
            f"{100 * interval.high:.0f}] on {judge['heldout_pairs']} pairs (OpenAssistant's reaches about "
            f"{100 * judge['openassistant_hh_accuracy']:.0f}% on Anthropic HH)"
            + (": **it cannot be told from chance**, so its rates measure what this judge rewards, not "
               "harmlessness or helpfulness." if chance else "."))
    return notes


def training_description(variant: str, trained: dict | None) -> str:
    if trained is None:
        return "not trained"
    how = [w for w in ("LoRA" if trained["lora"] else "", trained.get("loss_type") or "") if w and w != "sigmoid"]
    start = trained.get("from", "base")
    return (f"{trained['method'].upper()}{' (' + ', '.join(how) + ')' if how else ''}"
            f"{' from ' + display(start) if start != 'base' else ''}, {trained['steps']} steps on "
            f"{trained['rows_trained']} pairs of {'+'.join(trained['subsets'])} {trained['split']}")


def chance_interval(lo_hi: list[float]) -> str:
    """An accuracy interval in percent, with as many decimals as it takes for a bound that is not
    50% not to read as 50 (the verdict turns on which side of chance it lies)."""
    bounds = [100 * x for x in lo_hi]
    places = 0
    while places < 3 and any(fmt(b, places) == fmt(50, places) and b != 50 for b in bounds):
        places += 1
    return ci(bounds, places)


def training_section(metrics: dict) -> str:
    """What training did to each trained variant's own objective, on pairs it never saw: the evidence that
    a difference in Table 1 comes from a model that learned something, or from one that did not."""
    rows, unlearned, sft_flat, missing = [], [], [], []
    for v, t in metrics["training"].items():
        h = t.get("heldout") or {}
        name = display(v) + ("" if v in metrics["models"] else " (trained to start another; not evaluated)")
        loss = accuracy = margin = by_subset = "n/a"
        if "sft" in h:
            s = h["sft"]
            loss = (f"{fmt(s['loss_before'], 3)} -> {fmt(s['loss_after'], 3)} ({fmt(s['change'], 3, sign=True)} "
                    f"{ci(s['change_ci'], 3)})")
            verdict = "lowered its held-out loss" if s["learned"] else "**did not measurably lower its held-out loss**"
            (sft_flat if not s["learned"] else []).append(display(v))
        elif "dpo" in h:
            d = h["dpo"]
            accuracy = f"{d['correct']}/{d['pairs']} = {fmt(100 * d['accuracy'], 0)}% {chance_interval(d['accuracy_ci'])}"
            margin = f"{fmt(d['margin'], 3, sign=True)} {ci(d['margin_ci'], 3)}"
            by_subset = ", ".join(f"{k} {x['correct']}/{x['pairs']}" for k, x in d["by_subset"].items())
            verdict = ("learned its preferences" if d["learned"] else
                       "**did not measurably learn its preferences**")
            (unlearned if not d["learned"] else []).append(display(v))
        else:
            verdict = "no held-out pairs"
            missing.append(display(v))
        rows.append([name, training_description(v, t), str(h.get("pairs", 0)), loss, accuracy, margin, by_subset,
                     verdict])
    level = "95%"  # as recorded by the first variant with held-out pairs
    for t in metrics["training"].values():
        found = [h[k]["confidence"] for h in [t.get("heldout") or {}] for k in ("sft", "dpo") if k in h]
        if found:
            level = f"{found[0]:.0%}"
            break
    lines = ["## What training did", "",
             "Each trained variant on held-out pairs of its own training data: the last rows of each subset it "
             "trained on, sharing no dialogue with its training rows, those of the model it started from, or the "
             "evaluation set. SFT: per-token loss of the chosen replies before and after training (change with a "
             "bootstrap interval over replies). DPO: how often the implicit reward, log pi(reply) - log "
             "pi_ref(reply) summed over the reply, prefers the chosen reply (Wilson interval; 50% is chance, and "
             "what the untrained model scores, every pair tying), and the mean margin in nats (t interval), "
             f"against the model it started from. Intervals at {level}.", "",
             table(["Model", "training", "held-out pairs", "per-token loss, before -> after (change)",
                    "implicit-reward accuracy", "mean margin, nats", "accuracy by subset", "verdict"], rows), ""]
    if unlearned:
        lines += [f"**Did not measurably learn its preferences** (held-out accuracy interval includes 50%): "
                  f"{', '.join(unlearned)}. What the tables say of {'it' if len(unlearned) == 1 else 'them'} is the "
                  "effect of a model that DPO barely moved, not of DPO as it works at scale.", ""]
    elif any("dpo" in (t.get("heldout") or {}) for t in metrics["training"].values()):
        lines += ["Every DPO variant's held-out accuracy interval lies above 50%.", ""]
    if sft_flat:
        lines += [f"Did not measurably lower its held-out loss: {', '.join(sft_flat)}.", ""]
    if missing:
        lines += [f"No held-out pairs were left for {', '.join(missing)} (every row of the split was trained on, "
                  "or heldout.pairs is 0): set `heldout.split` in its recipe to another split.", ""]
    return "\n".join(lines)


def answers_section(variants: list[str], answer_info: dict, train_info: dict, stop_tests: list[dict]) -> str:
    """What the answers themselves show, judge aside: how they end and how long they run,
    tested against the base on the same prompts; and what each variant was trained on."""
    test = {(t["a"], t["stop"]): t for t in stop_tests}

    def count(v: str, reason: str) -> str:
        n = answer_info[v]["stopped"][reason]
        return f"{n} ({p_is('p', test[v, reason]['p_value'])})" if (v, reason) in test else str(n)

    rows = [[display(v), training_description(v, train_info.get(v)), str(answer_info[v]["answers"]),
             count(v, "eos"), count(v, "stop_string"), str(answer_info[v]["stopped"]["length"]),
             str(answer_info[v]["empty"]), f"{answer_info[v]['mean_tokens']:.1f}"] for v in variants]
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


def artifact_index(out: Path, files: list[Path]) -> str:
    """The study's files a reader opens, as links relative to the report at `out`."""
    lines = ["", "## Artifacts", ""]
    lines += [f"- [`{p.relative_to(out)}`]({p.relative_to(out)})" for p in sorted(files)]
    lines.append("- `models/<base>/<variant>/model/`: the trained models (HF folders; LoRA merged)")
    return "\n".join(lines) + "\n"


def timings_table(timings: list[dict]) -> str:
    """Each stage's wall time and what it cost (stages.Costs): CPU seconds, minor page faults, peak
    memory, the load as it started and torch's threads; a stage that shared the CPU says so."""
    rows = []
    for t in timings:
        c = t.get("costs") or {}
        note = t["status"]
        if (c.get("other_cores") or 0) > SHARED_CORES:
            note = f"{note}; shared the CPU: other processes used {c['other_cores']:.1f} cores".lstrip("; ")
        rows.append([t["stage"], f"{t['seconds']:.1f}"] + ([
            f"{c['user_s']:.0f}", f"{c['system_s']:.0f}", f"{c['minor_faults'] / 1e6:.2f}",
            f"{c['peak_memory_mb'] / 1024:.1f}", "" if c.get("load_at_start") is None else f"{c['load_at_start']:.1f}",
            "" if c.get("threads") is None else str(c["threads"])] if c else [""] * 6) + [note])
    head = ["stage", "wall s", "user s", "system s", "minor faults (M)", "peak memory (GB)", "load at start",
            "threads", ""]
    return "\n".join(["## Timings", "", table(head, rows), ""])


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


def beside_reference(metrics: dict, reference: dict, judge_name: str) -> str:
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


def finding_words(metric: str, a: str, b: str, sign: int) -> str:
    if not sign:
        return "no finding"
    higher, lower = (a, b) if sign > 0 else (b, a)
    return f"{display(higher)} above {display(lower)}"


def judge_check_section(models: list[RatedModel], judge: dict):
    """A distilled judge's findings checked two ways: how its ratings follow answer length (here and
    on the reference answers, beside the reference judge's), and whether the same judge fitted without
    the length and log-probability features draws the same findings. A callable of the metrics."""
    blind = without_length_models(models)
    summary = ((judge.get("card") or {}).get("judge", {}).get("validation") or {}).get(judge.get("applies"), {})

    def section(metrics: dict) -> str:
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
