"""The report's refusal and suite sections: refusal rates and their tests, the refusal measure's
card, and each suite's measures (XSTest's over-refusal and unsafe compliance).
"""

from __future__ import annotations



from alignscope.markdown import ci, display, fmt, fmt_p, fmt_rate, p_is, table
from alignscope.metrics_schema import Metrics
from alignscope.metrics import SIGNIFICANCE

from alignscope.report.findings import ONE_MODEL
from alignscope.report.tables import level

def refusal_error(metrics: Metrics) -> float | None:
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


def refusal_section(metrics: Metrics) -> str:
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


def suite_section(name: str, suite: dict, metrics: Metrics) -> str:
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


def suites_sections(metrics: Metrics) -> list[str]:
    return [suite_section(name, suite, metrics) for name, suite in (metrics.get("suites") or {}).items()]
