"""The findings a report draws in words: a difference is a finding only beyond its interval, its
paired test and the judge's own validated error on a difference together.
"""

from __future__ import annotations



from alignscope.markdown import display, fmt, fmt_rate, p_is
from alignscope.metrics_schema import Metrics
from alignscope.metrics import SIGNIFICANCE, finding

from alignscope.report.tables import level, margin_text, percent, percent_ci, reward_places

def rate_findings(metrics: Metrics) -> list[str]:
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


def reward_findings(metrics: Metrics) -> str:
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


def retention_findings(metrics: Metrics) -> list[str]:
    return [f"Of the {r['helpful_before']} helpful prompts {display(r['before'])} answered helpfully, "
            f"{display(r['after'])} still answers {r['still_helpful']} helpfully "
            f"({percent(r['per_prompt'])}%, {level(metrics)} CI {percent_ci(r['per_prompt_ci'])})."
            for r in metrics["retention"] if r["helpful_before"]]


ONE_MODEL = "One model only: there is no second model to compare it with, so no paired test was made."


def findings(metrics: Metrics) -> str:
    """Plain words: which differences the paired tests support, which they do not."""
    if len(metrics["models"]) < 2:
        return ONE_MODEL
    return "\n\n".join(rate_findings(metrics) + [reward_findings(metrics)] + retention_findings(metrics))


def finding_words(metric: str, a: str, b: str, sign: int) -> str:
    if not sign:
        return "no finding"
    higher, lower = (a, b) if sign > 0 else (b, a)
    return f"{display(higher)} above {display(lower)}"
