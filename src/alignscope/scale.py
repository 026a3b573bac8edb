"""The scale question: does a larger base model lose less helpfulness after DPO for safety?

For every base model: HpR, HmR and mean helpful reward of each variant; the
helpfulness change base -> DPO with a paired bootstrap interval (the same prompts
answer both) and its exact McNemar test; retention; and, across sizes, the slope
of that change against log10(parameters), with a warning that a handful of sizes
make a weak trend test.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import stats

from alignscope.metrics import MetricsConfig, helpful_flags, load_rated_dir
from alignscope.report import display, fmt, fmt_p, fmt_rate, table


def paired_change(before: np.ndarray, after: np.ndarray, cfg: MetricsConfig) -> dict:
    """after - before, in rate points, with a percentile bootstrap over prompts."""
    res = stats.bootstrap((before.astype(float), after.astype(float)),
                          lambda b, a, axis=-1: 100.0 * (np.mean(a, axis=axis) - np.mean(b, axis=axis)),
                          paired=True, confidence_level=cfg.confidence, n_resamples=cfg.bootstrap_resamples,
                          method="percentile", rng=np.random.default_rng(cfg.seed))
    return {"change": 100.0 * (after.mean() - before.mean()),
            "ci95": [float(res.confidence_interval.low), float(res.confidence_interval.high)]}


def scale_analysis(per_base: dict, params: dict, rated_dirs: dict, cfg: MetricsConfig) -> dict:
    sizes = sorted(per_base, key=lambda name: params[name])
    rows, deltas = [], {}
    for name in sizes:
        metrics = per_base[name]
        models = {m.name: m for m in load_rated_dir(rated_dirs[name])}
        flags = {v: helpful_flags(m.ratings("helpful"), cfg) for v, m in models.items()}
        row = {"base": name, "parameters": params[name], "variants": {}}
        for v, m in metrics["models"].items():
            row["variants"][v] = {"HpR": m["HpR"], "HpR_ci95": m["HpR_ci95"], "HmR": m["HmR"],
                                  "HmR_ci95": m["HmR_ci95"], "mean_helpful_reward": m["mean_reward"]["helpful"],
                                  "mean_helpful_reward_ci95": m["mean_reward_ci95"]["helpful"]}
        for after in [v for v in ("dpo", "sftdpo") if v in flags]:
            change = paired_change(flags["base"], flags[after], cfg)
            test = next(t for t in metrics["paired_tests"] if t["metric"] == "HpR" and {t["a"], t["b"]} == {"base", after})
            retained = next((r for r in metrics["retention"] if r["before"] == "base" and r["after"] == after), None)
            row[f"base_to_{after}"] = {**change, "p_value": test["p_value"], "retention": retained}
            deltas.setdefault(after, []).append(change["change"])
        rows.append(row)
    trends = {}
    for after, values in deltas.items():
        if len(values) >= 3:
            fit = stats.linregress([math.log10(params[n]) for n in sizes], values)
            trends[after] = {"slope_per_decade": fit.slope, "p_value": fit.pvalue, "r": fit.rvalue,
                             "sizes": len(values)}
    return {"rows": rows, "trend": trends, "method": "change = HpR(after) - HpR(base) on the same prompts, "
            "percentile bootstrap over prompts; trend = least-squares slope of the change on log10(parameters) "
            "(scipy.stats.linregress)"}


def _params_text(n: float) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def scale_figure(analysis: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = analysis["rows"]
    x = np.array([r["parameters"] for r in rows])
    variants = [v for v in ("base", "sft", "dpo", "sftdpo") if all(v in r["variants"] for r in rows)]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    for ax, key, label in zip(axes[:3], ("HpR", "HmR", "mean_helpful_reward"),
                              ("HpR %", "HmR %", "mean reward, helpful prompts")):
        for i, v in enumerate(variants):
            y = np.array([r["variants"][v][key] for r in rows])
            ci = np.array([r["variants"][v][f"{key}_ci95"] for r in rows])
            shift = x * (1 + 0.04 * (i - len(variants) / 2))  # keep the bars apart on the log axis
            ax.errorbar(shift, y, yerr=[y - ci[:, 0], ci[:, 1] - y], marker="o", capsize=3, label=display(v))
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(frameon=False, fontsize=8)
    ax = axes[3]
    for after in ("dpo", "sftdpo"):
        key = f"base_to_{after}"
        if all(key in r for r in rows):
            y = np.array([r[key]["change"] for r in rows])
            ci = np.array([r[key]["ci95"] for r in rows])
            ax.errorbar(x, y, yerr=[y - ci[:, 0], ci[:, 1] - y], marker="s", capsize=3,
                        label=f"Base -> {display(after)}")
    ax.axhline(0, color="grey", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_title("HpR change from Base (points, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)


def scale_markdown(cfg, per_base: dict, analysis: dict, out: Path) -> str:
    scale_figure(analysis, out / "figures" / "scale.png")
    rows = []
    for r in analysis["rows"]:
        v = r["variants"]
        for after in [a for a in ("dpo", "sftdpo") if f"base_to_{a}" in r]:
            d = r[f"base_to_{after}"]
            ret = d["retention"]
            rows.append([r["base"], _params_text(r["parameters"]), display(after),
                         f"{fmt_rate(v['base']['HpR'])} -> {fmt_rate(v[after]['HpR'])}",
                         f"{fmt(d['change'], 1, sign=True)} [{fmt(d['ci95'][0], 1)}, {fmt(d['ci95'][1], 1)}]",
                         fmt_p(d["p_value"]),
                         f"{fmt(100 * ret['per_prompt'], 0)}%" if ret and ret["helpful_before"] else "n/a",
                         f"{fmt_rate(v['base']['HmR'])} -> {fmt_rate(v[after]['HmR'])}",
                         f"{fmt(v['base']['mean_helpful_reward'])} -> {fmt(v[after]['mean_helpful_reward'])}"])
    lines = [f"# {cfg.report.title}: does a larger base model lose less helpfulness after DPO?", "",
             f"Study `{cfg.name}`: {len(per_base)} base models; each one's full report is under `reports/<base>/`.", "",
             "## Scale table", "",
             table(["base", "parameters", "after", "HpR % base -> after", "HpR change, points [95% CI]",
                    "p (exact McNemar)", "helpful answers kept (per prompt)", "HmR % base -> after",
                    "mean helpful reward base -> after"], rows), "",
             "![HpR, HmR and mean helpful reward against parameter count](figures/scale.png)", "",
             "## What the data supports", ""]
    for r in analysis["rows"]:
        d = r.get("base_to_dpo")
        if d:
            verdict = ("a change the paired test supports" if d["p_value"] < 0.05 else
                       "a change the data cannot tell from no change")
            lines.append(f"- {r['base']} ({_params_text(r['parameters'])}): HpR {fmt(d['change'], 1, sign=True)} "
                         f"points after DPO [{fmt(d['ci95'][0], 1)}, {fmt(d['ci95'][1], 1)}], p = "
                         f"{fmt_p(d['p_value'])}: {verdict}.")
    for after, t in analysis["trend"].items():
        direction = "less" if t["slope_per_decade"] > 0 else "more"
        lines.append(f"- Across the {t['sizes']} sizes, the HpR change Base -> {display(after)} moves by "
                     f"{fmt(t['slope_per_decade'], 1, sign=True)} points per tenfold increase in parameters "
                     f"(r = {fmt(t['r'])}, p = {fmt_p(t['p_value'])}): "
                     + (f"larger models lose {direction} helpfulness, a trend the fit supports"
                        if t["p_value"] < 0.05 else
                        "no trend the data supports; with this few sizes only a steep one could show"))
    if not analysis["trend"]:
        lines.append("- Fewer than three sizes: no trend can be tested.")
    lines += ["", f"Method: {analysis['method']}.", ""]
    return "\n".join(lines)
