"""The report: metrics.json, report.md with the study's tables and our statistics,
and the figures it links.

Numbers are printed the way the study printed them (two decimals, halves
rounded up: +28.125 % is "+28.13"), so its tables can be compared line by line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np

from alignscope.io import atomic_write_json, atomic_write_text
from alignscope.metrics import MetricsConfig, RatedModel, compute_metrics, harmless_flags, helpful_flags

DISPLAY_NAMES = {"base": "Base", "sft": "SFT", "dpo": "DPO", "sftdpo": "SFT+DPO", "sft+dpo": "SFT+DPO"}
SIGNIFICANCE = 0.05
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


def display(name: str) -> str:
    return DISPLAY_NAMES.get(name.lower(), name)


def fmt(x: float, places: int = 2, sign: bool = False) -> str:
    """Round half up, as the study's tables do (Python's round() would give 28.12 for 28.125)."""
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "n/a"
    q = Decimal(repr(float(x))).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    q = abs(q) if q.is_zero() else q  # no "-0.00"
    text = f"{q:.{places}f}"
    return "+" + text if sign and q > 0 else text


def fmt_rate(x: float) -> str:
    return fmt(x, 0) if float(x).is_integer() else fmt(x, 1)


def fmt_p(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else fmt(p, 4)


def p_is(name: str, p: float) -> str:
    """'p = 0.0213' or 'p < 0.0001', for sentences."""
    text = fmt_p(p)
    return f"{name} {text}" if text.startswith("<") else f"{name} = {text}"


def ci(lo_hi: list[float], places: int = 0) -> str:
    return f"[{fmt(lo_hi[0], places)}, {fmt(lo_hi[1], places)}]"


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

def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def table1(metrics: dict) -> str:
    rows, places = [], reward_places(metrics)
    for name, m in metrics["models"].items():
        rows.append([display(name),
                     f"{fmt_rate(m['HmR'])} {ci(m['HmR_ci95'])}", f"{fmt_rate(m['HpR'])} {ci(m['HpR_ci95'])}",
                     f"{fmt_rate(m['CAS'])} {ci(m['CAS_ci95'])}",
                     f"{fmt(m['mean_reward']['harmful'], places)} {ci(m['mean_reward_ci95']['harmful'], places)}",
                     f"{fmt(m['mean_reward']['helpful'], places)} {ci(m['mean_reward_ci95']['helpful'], places)}",
                     f"{m['n']['harmful']} / {m['n']['helpful']}"])
    return table(["Model", "HmR % [95% CI]", "HpR % [95% CI]", "CAS % [95% CI]",
                  "mean reward, harmful [95% CI]", "mean reward, helpful [95% CI]", "n harmful / helpful"], rows)


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
                     f"{fmt(t['mean_diff'], places, sign=True)} {ci(t['ci95'], places)}", fmt_p(t["p_value"]),
                     fmt_p(t["wilcoxon_p"]), fmt_p(t["q_value"])])
    return table(["prompts", "a - b", "mean reward difference [95% CI]", "p (paired t)", "p (Wilcoxon)",
                  "q (BH)"], rows)


def retention_table(metrics: dict) -> str:
    rows = []
    for r in metrics["retention"]:
        rows.append([f"{display(r['before'])} -> {display(r['after'])}",
                     f"{fmt_rate(r['HpR_before'])} -> {fmt_rate(r['HpR_after'])}", fmt(r["aggregate"]),
                     f"{r['still_helpful']} / {r['helpful_before']}",
                     f"{fmt(100 * r['per_prompt'], 0)} {ci([100 * x for x in r['per_prompt_ci95']])}"])
    return table(["before -> after", "HpR %", "aggregate retention (HpR ratio)",
                  "helpful before, still helpful after", "per-prompt retention % [95% CI]"], rows)


def findings(metrics: dict) -> str:
    """Plain words: which differences the paired tests support, which they do not."""
    supported, unsupported = [], []
    for t in metrics["paired_tests"]:
        if t["metric"] not in ("HmR", "HpR"):
            continue
        a, b = metrics["models"][t["a"]], metrics["models"][t["b"]]
        what = "harmful prompts harmlessly" if t["metric"] == "HmR" else "helpful prompts helpfully"
        ra, rb = a[t["metric"]], b[t["metric"]]
        higher, lower = (t["a"], t["b"]) if ra >= rb else (t["b"], t["a"])
        gained = max(t["a_only"], t["b_only"])
        lost = min(t["a_only"], t["b_only"])
        sentence = (f"{display(higher)} answers more of the {what} than {display(lower)} "
                    f"({fmt_rate(max(ra, rb))}% vs {fmt_rate(min(ra, rb))}%; {gained} prompts one way, "
                    f"{lost} the other; {p_is('p', t['p_value'])}, {p_is('q', t['q_value'])})")
        if t["q_value"] < SIGNIFICANCE:
            supported.append(sentence)
        elif ra != rb:
            nominal = " (nominally below 0.05, not after correcting for the number of tests)" \
                if t["p_value"] < SIGNIFICANCE else ""
            unsupported.append(f"{display(t['a'])} vs {display(t['b'])} on {t['metric']} "
                               f"({fmt_rate(ra)}% vs {fmt_rate(rb)}%, {p_is('p', t['p_value'])}{nominal})")
    n = next(iter(metrics["models"].values()))["n"]
    widths = [m[k][1] - m[k][0] for m in metrics["models"].values() for k in ("HmR_ci95", "HpR_ci95")]
    parts = []
    if supported:
        parts.append("**The data supports** (exact McNemar on the same prompts, Benjamini-Hochberg "
                     f"q < {SIGNIFICANCE}): " + "; ".join(supported) + ".")
    else:
        parts.append("**No difference in HmR or HpR between any two models is supported** at "
                     f"q < {SIGNIFICANCE} by the paired tests.")
    if unsupported:
        parts.append("**The data does not support** a difference in: " + "; ".join(unsupported) + ". "
                     f"With {n['harmful']} harmful and {n['helpful']} helpful prompts the 95% intervals on a "
                     f"rate are {fmt(min(widths), 0)} to {fmt(max(widths), 0)} points wide, so gaps of this size "
                     "are within what resampling the prompts would produce.")
    places, rewards = reward_places(metrics), []
    for t in metrics["paired_tests"]:
        if t["metric"].startswith("mean_reward") and t["q_value"] < SIGNIFICANCE:
            higher, lower = (t["a"], t["b"]) if t["mean_diff"] > 0 else (t["b"], t["a"])
            diff, (lo, hi) = abs(t["mean_diff"]), sorted(abs(x) for x in t["ci95"])
            rewards.append(f"{display(higher)} over {display(lower)} on {t['metric'].removeprefix('mean_reward_')} "
                           f"prompts (+{fmt(diff, places)} [{fmt(lo, places)}, {fmt(hi, places)}]; "
                           f"{p_is('p', t['p_value'])}, {p_is('q', t['q_value'])})")
    parts.append("**On mean reward** (paired t on the same prompts, Benjamini-Hochberg q < "
                 f"{SIGNIFICANCE}), the data supports a higher reward for " + "; ".join(rewards) + "." if rewards else
                 f"No difference in mean reward is supported at q < {SIGNIFICANCE} (paired t on the same prompts).")
    for r in metrics["retention"]:
        if r["helpful_before"]:
            parts.append(f"Of the {r['helpful_before']} helpful prompts {display(r['before'])} answered helpfully, "
                         f"{display(r['after'])} still answers {r['still_helpful']} helpfully "
                         f"({fmt(100 * r['per_prompt'], 0)}%, 95% CI {ci([100 * x for x in r['per_prompt_ci95']])}).")
    return "\n\n".join(parts)


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
        lo = np.array([metrics["models"][n][f"{k}_ci95"][0] for n in names])
        hi = np.array([metrics["models"][n][f"{k}_ci95"][1] for n in names])
        pos = x + (i - 1) * width
        ax.bar(pos, vals, width, label=k, color=color, alpha=0.85)
        ax.errorbar(pos, vals, yerr=[vals - lo, hi - vals], fmt="none", ecolor="black", capsize=3, lw=1)
        for p, v in zip(pos, vals):
            ax.text(p, 1, fmt_rate(v), ha="center", va="bottom", fontsize=7, color="white")
    ax.set_xticks(x, [display(n) for n in names])
    ax.set_ylabel("% of prompts")
    ax.set_ylim(0, 100)
    ax.set_title("Rates with 95% intervals", pad=24)
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


FIGURES = {
    "rates.png": "HmR, HpR and CAS per model with 95% intervals",
    "reward_boxes.png": "reward distributions per model",
    "per_prompt.png": "per-prompt rewards against the thresholds",
    "thresholds.png": "threshold sensitivity of HmR and HpR",
}


def make_figures(models: list[RatedModel], metrics: dict, cfg: MetricsConfig, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    ratings = rating_range(metrics)
    # Figures are small; writing through a temporary name keeps them atomic too.
    for name, draw in (("rates.png", lambda p: figure_rates(metrics, p)),
                       ("reward_boxes.png", lambda p: figure_reward_boxes(models, cfg, ratings, p)),
                       ("per_prompt.png", lambda p: figure_per_prompt(models, cfg, ratings, p)),
                       ("thresholds.png", lambda p: figure_thresholds(metrics, p))):
        tmp = fig_dir / f".{name}.tmp.png"
        draw(tmp)
        tmp.replace(fig_dir / name)
    return [f"figures/{n}" for n in FIGURES]


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


def render_markdown(metrics: dict, cfg: ReportConfig, figures: list[str], extra_sections: list[str] = ()) -> str:
    thr = metrics["thresholds"]
    parts = [f"# {cfg.title}", ""]
    parts += [f"- {note}" for note in cfg.notes]
    parts += [
        f"- Harmless: reward {thr['harmless']['comparison']} {thr['harmless']['value']:g} on a harmful prompt; "
        f"helpful: reward {thr['helpful']['comparison']} {thr['helpful']['value']:g} on a helpful prompt; "
        "CAS = (HmR + HpR) / 2.",
        *([f"- {JUDGE_CAVEAT}"] if cfg.judge_caveat else []),
        *[f"- {note}" for note in threshold_notes(metrics)],
        "",
        "## Table 1: rates and mean rewards",
        "", table1(metrics), "",
        f"## Table 2: change relative to {display(metrics['base'])}",
        "", table2(metrics), "",
        "## What the data supports", "", findings(metrics), "",
        "## Paired tests on the rates",
        "",
        "Each test compares two models on the same prompts: only the prompts where they disagree count.",
        "", rate_tests_table(metrics), "",
        "## Paired tests on the mean reward", "", reward_tests_table(metrics), "",
        "## Helpfulness retention", "", retention_table(metrics), "",
    ]
    parts += list(extra_sections)
    if figures:
        parts += ["## Figures", ""]
        parts += [f"![{FIGURES.get(Path(f).name, f)}]({f})" for f in figures]
        parts.append("")
    parts += ["## Methods", ""] + [f"- {k.replace('_', ' ')}: {v}" for k, v in metrics["methods"].items()]
    return "\n".join(parts) + "\n"


def write_report(models: list[RatedModel], out: str | Path, metrics_cfg: MetricsConfig = MetricsConfig(),
                 report_cfg: ReportConfig = ReportConfig(), extra: dict | None = None,
                 extra_sections: list[str] = ()) -> dict:
    """Compute the metrics and write metrics.json, report.md and figures/ under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(models, metrics_cfg)
    if extra:
        metrics.update(extra)
    figures = make_figures(models, metrics, metrics_cfg, out) if report_cfg.figures else []
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "report.md", render_markdown(metrics, report_cfg, figures, extra_sections))
    return metrics
