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

from alignscope.answers import RatedModel
from alignscope.io import finite_or_none
from alignscope.metrics import SIGNIFICANCE, MetricsConfig, helpful_flags
from alignscope.markdown import display, fmt, fmt_p, fmt_rate, p_is, table


def paired_change(before: np.ndarray, after: np.ndarray, cfg: MetricsConfig) -> dict:
    """after - before, in rate points, with a percentile bootstrap over prompts."""
    res = stats.bootstrap((before.astype(float), after.astype(float)),
                          lambda b, a, axis=-1: 100.0 * (np.mean(a, axis=axis) - np.mean(b, axis=axis)),
                          paired=True, confidence_level=cfg.confidence, n_resamples=cfg.bootstrap_resamples,
                          method="percentile", rng=np.random.default_rng(cfg.seed))
    return {"change": 100.0 * (after.mean() - before.mean()),
            "ci": [float(res.confidence_interval.low), float(res.confidence_interval.high)]}


def scale_analysis(per_base: dict, params: dict, rated: dict[str, list[RatedModel]], cfg: MetricsConfig,
                   after_dpo: list[str] = ("dpo", "sftdpo")) -> dict:
    """Per base model (smallest first): each variant's rates, and the change in HpR from base to each
    variant of `after_dpo` (the study's DPO variants, in declared order) with its interval, its test
    (p and the base's own Benjamini-Hochberg q, the rule every report uses) and retention; across
    sizes, the trend of that change."""
    sizes = sorted(per_base, key=lambda name: params[name])
    rows, deltas = [], {}
    for name in sizes:
        metrics = per_base[name]
        flags = {m.name: helpful_flags(m.ratings("helpful"), cfg) for m in rated[name]}
        row = {"base": name, "parameters": params[name], "variants": {}}
        for v, m in metrics["models"].items():
            row["variants"][v] = {"HpR": m["HpR"], "HpR_ci": m["HpR_ci"], "HmR": m["HmR"],
                                  "HmR_ci": m["HmR_ci"], "mean_helpful_reward": m["mean_reward"]["helpful"],
                                  "mean_helpful_reward_ci": m["mean_reward_ci"]["helpful"]}
        for after in [v for v in after_dpo if v in flags]:
            change = paired_change(flags["base"], flags[after], cfg)
            test = next(t for t in metrics["paired_tests"] if t["metric"] == "HpR" and {t["a"], t["b"]} == {"base", after})
            retained = next((r for r in metrics["retention"] if r["before"] == "base" and r["after"] == after), None)
            row[f"base_to_{after}"] = {**change, "p_value": test["p_value"], "q_value": test["q_value"],
                                       "retention": retained}
            deltas.setdefault(after, []).append(change["change"])
        rows.append(row)
    trends = {}
    for after, values in deltas.items():
        if len(values) >= 3:
            fit = stats.linregress([math.log10(params[n]) for n in sizes], values)
            # a change equal at every size leaves r and p undefined: null, and said so in the report
            trends[after] = {"slope_per_decade": finite_or_none(fit.slope), "p_value": finite_or_none(fit.pvalue),
                             "r": finite_or_none(fit.rvalue), "sizes": len(values)}
    return {"rows": rows, "trend": trends, "confidence": cfg.confidence, "after": list(after_dpo),
            "method": "change = HpR(after) - HpR(base) on the same prompts, "
            "percentile bootstrap over prompts; significance: Benjamini-Hochberg q of the base's exact McNemar "
            f"tests, q < {SIGNIFICANCE}; trend = least-squares slope of the change on log10(parameters) "
            "(scipy.stats.linregress)"}


def _params_text(n: float) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def scale_figure(analysis: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = analysis["rows"]
    x = np.array([r["parameters"] for r in rows])
    variants = [v for v in rows[0]["variants"] if all(v in r["variants"] for r in rows)]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    for ax, key, label in zip(axes[:3], ("HpR", "HmR", "mean_helpful_reward"),
                              ("HpR %", "HmR %", "mean reward, helpful prompts")):
        for i, v in enumerate(variants):
            y = np.array([r["variants"][v][key] for r in rows])
            ci = np.array([r["variants"][v][f"{key}_ci"] for r in rows])
            shift = x * (1 + 0.04 * (i - len(variants) / 2))  # keep the bars apart on the log axis
            ax.errorbar(shift, y, yerr=[y - ci[:, 0], ci[:, 1] - y], marker="o", capsize=3, label=display(v))
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(frameon=False, fontsize=8)
    ax = axes[3]
    for after in analysis.get("after", ("dpo", "sftdpo")):
        key = f"base_to_{after}"
        if all(key in r for r in rows):
            y = np.array([r[key]["change"] for r in rows])
            ci = np.array([r[key]["ci"] for r in rows])
            ax.errorbar(x, y, yerr=[y - ci[:, 0], ci[:, 1] - y], marker="s", capsize=3,
                        label=f"Base -> {display(after)}")
    ax.axhline(0, color="grey", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_title(f"HpR change from Base (points, {analysis['confidence']:.0%} CI)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)


def scale_markdown(title: str, study: str, analysis: dict) -> str:
    """The overview report of a study over several base models (its figure: `scale_figure`)."""
    level = f"{analysis['confidence']:.0%}"
    rows = []
    for r in analysis["rows"]:
        v = r["variants"]
        for after in [a for a in analysis.get("after", ("dpo", "sftdpo")) if f"base_to_{a}" in r]:
            d = r[f"base_to_{after}"]
            ret = d["retention"]
            rows.append([r["base"], _params_text(r["parameters"]), display(after),
                         f"{fmt_rate(v['base']['HpR'])} -> {fmt_rate(v[after]['HpR'])}",
                         f"{fmt(d['change'], 1, sign=True)} [{fmt(d['ci'][0], 1)}, {fmt(d['ci'][1], 1)}]",
                         fmt_p(d["p_value"]), fmt_p(d["q_value"]),
                         f"{fmt(100 * ret['per_prompt'], 0)}%" if ret and ret["helpful_before"] else "n/a",
                         f"{fmt_rate(v['base']['HmR'])} -> {fmt_rate(v[after]['HmR'])}",
                         f"{fmt(v['base']['mean_helpful_reward'])} -> {fmt(v[after]['mean_helpful_reward'])}"])
    lines = [f"# {title}: does a larger base model lose less helpfulness after DPO?", "",
             f"Study `{study}`: {len(analysis['rows'])} base models; each one's full report is under "
             "`reports/<base>/`.", "",
             "## Scale table", "",
             table(["base", "parameters", "after", "HpR % base -> after", f"HpR change, points [{level} CI]",
                    "p (exact McNemar)", "q (BH)", "helpful answers kept (per prompt)", "HmR % base -> after",
                    "mean helpful reward base -> after"], rows), "",
             "![HpR, HmR and mean helpful reward against parameter count](figures/scale.png)", "",
             "## What the data supports", ""]
    lines += size_findings(analysis) + trend_findings(analysis)
    lines += ["", f"Method: {analysis['method']}.", ""]
    return "\n".join(lines)


def size_findings(analysis: dict) -> list[str]:
    out = []
    for r in analysis["rows"]:
        d = r.get("base_to_dpo")
        if d:
            verdict = ("a change the paired test supports" if d["q_value"] < SIGNIFICANCE else
                       "a change the data cannot tell from no change")
            out.append(f"- {r['base']} ({_params_text(r['parameters'])}): HpR {fmt(d['change'], 1, sign=True)} "
                       f"points after DPO [{fmt(d['ci'][0], 1)}, {fmt(d['ci'][1], 1)}], {p_is('p', d['p_value'])}, "
                       f"{p_is('q', d['q_value'])}: {verdict}.")
    return out


def trend_findings(analysis: dict) -> list[str]:
    out = []
    for after, t in analysis["trend"].items():
        if t["p_value"] is None:
            out.append(f"- Across the {t['sizes']} sizes, the HpR change Base -> {display(after)} is the same at "
                       "every size: no trend can be estimated.")
            continue
        direction = "less" if t["slope_per_decade"] > 0 else "more"
        out.append(f"- Across the {t['sizes']} sizes, the HpR change Base -> {display(after)} moves by "
                   f"{fmt(t['slope_per_decade'], 1, sign=True)} points per tenfold increase in parameters "
                   f"(r = {fmt(t['r'])}, {p_is('p', t['p_value'])}): "
                   + (f"larger models lose {direction} helpfulness, a trend the fit supports"
                      if t["p_value"] < SIGNIFICANCE else
                      "no trend the data supports; with this few sizes only a steep one could show"))
    if not analysis["trend"]:
        out.append("- Fewer than three sizes: no trend can be tested.")
    return out
