"""A study's prose in its report: what was trained and on what, the held-out evidence of learning,
how answers ended, the artifacts, and what each stage cost.
"""

from __future__ import annotations

from pathlib import Path


from alignscope.markdown import ci, display, fmt, p_is, table
from alignscope.metrics_schema import Metrics
from alignscope.metrics import SIGNIFICANCE
from alignscope.stages import SHARED_CORES


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


def training_section(metrics: Metrics) -> str:
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
