"""The report's tables: Table 1 and 2 as the study printed them, the paired tests, retention.

Numbers are printed the way the study printed them (two decimals, halves rounded up: +28.125 %
is "+28.13"), so its tables can be compared line by line.
"""

from __future__ import annotations

import math


from alignscope.markdown import ci, display, fmt, fmt_p, fmt_rate, table
from alignscope.metrics_schema import Metrics
from alignscope.metrics import finding_margin


def level(metrics: Metrics) -> str:
    """The confidence of the intervals, as the report labels them ("95%")."""
    return f"{metrics['confidence']:.0%}"


def rating_range(metrics: Metrics) -> tuple[float, float]:
    """Lowest and highest rating of any model in either category."""
    ranges = metrics["rating_range"].values()
    return min(lo for lo, _ in ranges), max(hi for _, hi in ranges)


def reward_places(metrics: Metrics) -> int:
    """Decimals for rewards: the study's 2 on OpenAssistant's scale (rewards spanning ~10), more
    for a judge whose rewards span a fraction of one, where 2 would print every difference as 0.00."""
    lo, hi = rating_range(metrics)
    return 2 if hi <= lo else max(2, 3 - math.floor(math.log10(hi - lo)))


def table1(metrics: Metrics) -> str:
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


def table2(metrics: Metrics) -> str:
    rows = [[display(n), fmt(r["HmR"], sign=True), fmt(r["HpR"], sign=True), fmt(r["CAS"], sign=True)]
            for n, r in metrics["relative_to_base"].items()]
    return table(["Model", "HmR change %", "HpR change %", "CAS change %"], rows)


def rate_tests_table(metrics: Metrics) -> str:
    rows = []
    for t in metrics["paired_tests"]:
        if t["metric"] not in ("HmR", "HpR"):
            continue
        rows.append([t["metric"], f"{display(t['a'])} vs {display(t['b'])}",
                     fmt_rate(metrics["models"][t["a"]][t["metric"]]) + " vs " + fmt_rate(metrics["models"][t["b"]][t["metric"]]),
                     str(t["a_only"]), str(t["b_only"]), fmt_p(t["p_value"]), fmt_p(t["q_value"])])
    return table(["metric", "a vs b", "rate % (a vs b)", "only a passes", "only b passes", "p (exact McNemar)",
                  "q (BH)"], rows)


def reward_tests_table(metrics: Metrics) -> str:
    rows, places = [], reward_places(metrics)
    for t in metrics["paired_tests"]:
        if not t["metric"].startswith("mean_reward"):
            continue
        rows.append([t["metric"].removeprefix("mean_reward_"), f"{display(t['a'])} - {display(t['b'])}",
                     f"{fmt(t['mean_diff'], places, sign=True)} {ci(t['ci'], places)}", fmt_p(t["p_value"]),
                     fmt_p(t["wilcoxon_p"]), fmt_p(t["q_value"])])
    return table(["prompts", "a - b", f"mean reward difference [{level(metrics)} CI]", "p (paired t)", "p (Wilcoxon)",
                  "q (BH)"], rows)


def retention_table(metrics: Metrics) -> str:
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
