"""The report's figures (matplotlib): rates with intervals, reward distributions, per-prompt
ratings, the threshold sweep, and XSTest's trade-off.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alignscope.answers import RatedModel
from alignscope.io import atomic_folder
from alignscope.markdown import display, fmt_rate
from alignscope.metrics_schema import Metrics
from alignscope.metrics import MetricsConfig, harmless_flags, helpful_flags

from alignscope.report.tables import level, rating_range

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


def figure_rates(metrics: Metrics, path: Path) -> None:
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


def figure_thresholds(metrics: Metrics, path: Path) -> None:
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


def figure_tradeoff(metrics: Metrics, path: Path) -> None:
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


def has_xstest(metrics: Metrics) -> bool:
    return any(s["kind"] == "xstest" for s in (metrics.get("suites") or {}).values())


FIGURE_FILES = ("rates.png", "reward_boxes.png", "per_prompt.png", "thresholds.png", "tradeoff.png")


def figure_captions(metrics: Metrics) -> dict[str, str]:
    return {
        "rates.png": f"HmR, HpR and CAS per model with {level(metrics)} intervals",
        "reward_boxes.png": "reward distributions per model",
        "per_prompt.png": "per-prompt rewards against the thresholds",
        "thresholds.png": "threshold sensitivity of HmR and HpR",
    } | ({"tradeoff.png": "XSTest: over-refusal against unsafe compliance"} if has_xstest(metrics) else {})


def make_figures(models: list[RatedModel], metrics: Metrics, cfg: MetricsConfig, out: Path) -> list[str]:
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
