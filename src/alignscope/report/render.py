"""report.md and report.html from metrics.json: the report reads what `metrics` computed and
computes nothing itself.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path


from alignscope.answers import RatedModel
from alignscope.report.page import hh_sections, suite_sections, write_html_report
from alignscope.io import atomic_write_json, atomic_write_text, check_output_dir
from alignscope.markdown import display, fmt
from alignscope.metrics import MetricsConfig
from alignscope.metrics_schema import Metrics, validate_metrics

from alignscope.report.figures import figure_captions, make_figures
from alignscope.report.findings import findings
from alignscope.report.refusals import refusal_card_section, refusal_section, suites_sections
from alignscope.report.study import training_section
from alignscope.report.tables import rate_tests_table, retention_table, reward_tests_table, table1, table2

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


def threshold_notes(metrics: Metrics) -> list[str]:
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


def render_markdown(metrics: Metrics, cfg: ReportConfig, figures: list[str], extra_sections: list[str] = (),
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


def refusal_name(metrics: Metrics) -> str:
    measure = metrics["refusal"]["measure"]
    return (metrics.get("refusal_card") or {}).get("name") or measure.get("version") or measure["kind"]


def html_sections(models: list[RatedModel], metrics: Metrics, refusals: dict, label: str = "") -> list[dict]:
    """What report.html shows of the answers: the HH prompts and every suite, with `refusal.decide`'s decisions."""
    return hh_sections(models, metrics, refusals["flags"], label) + suite_sections(refusals.get("suites") or {}, label)


def write_report(models: list[RatedModel], metrics: Metrics, out: str | Path, refusals: dict,
                 report_cfg: ReportConfig = ReportConfig(), extra_sections: list[str] = (),
                 leading_sections=()) -> Path:
    """Write report.md, report.html and figures/ under `out` beside metrics.json, from what `compute_metrics`
    computed (and a study added) and the refusal decisions it was computed from; the report computes nothing.
    A section may be a callable of the metrics."""
    out = check_output_dir(out)
    validate_metrics(metrics)  # what a study added included: every key named by the schema
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
