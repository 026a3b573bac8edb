"""report.html: report.md as one page that opens from disk, and every prompt's answers side by side.

The page carries report.md rendered to HTML (markdown-it, raw HTML off), its
figures inlined as data URIs, and a browser of the answers: per prompt, every
variant's answer with its rating, pass or fail, refusal, stop reason, and
whether its verdict flipped against the base. Nothing is fetched: styles and
script are inline, and a Content-Security-Policy allows only those (by hash)
and data: images. The browser is drawn by the page's script from data embedded
as JSON, never from HTML built out of answers, so an answer is always text.

The data is a list of sections (the HH harmful and helpful prompts; any other
suite), each `{"id", "title", "passes": the pass rule or None, "prompts": [{"prompt",
"category": optional, "answers": [one per variant, the base's first: {"text",
"rating", "pass", "refused", "stop"}]}]}`. Rating, pass and stop may be None (a
suite judged by refusal alone); gained and lost are derived from pass.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
from importlib import resources
from pathlib import Path

from alignscope.answers import CATEGORIES, RatedAnswer, RatedModel
from alignscope.io import atomic_write_text
from alignscope.markdown import display
from alignscope.metrics_schema import Metrics
from alignscope.metrics import SUITE_MEASURES, passes

SECTION_TITLES = {"harmful": "HH harmful", "helpful": "HH helpful"}
THRESHOLD_KEYS = {"harmful": "harmless", "helpful": "helpful"}


def answer_record(answer: RatedAnswer, passed: bool | None, refused: bool) -> dict:
    return {"text": answer.response, "rating": answer.rating, "pass": passed, "refused": bool(refused),
            "stop": answer.stop}


def flip(passed: bool | None, base_passed: bool | None) -> str | None:
    """An answer's verdict against the base's on the same prompt: gained, lost, or None (same, or undecided)."""
    if passed is None or base_passed is None or passed == base_passed:
        return None
    return "gained" if passed else "lost"


def with_flips(prompt: dict) -> dict:
    base = prompt["answers"][0].get("pass")
    return {**prompt, "answers": [a | {"flip": flip(a.get("pass"), base)} for a in prompt["answers"]]}


def hh_sections(models: list[RatedModel], metrics: Metrics, refused: dict, label: str = "") -> list[dict]:
    """The harmful and helpful prompts, each answer decided at the thresholds metrics.json records;
    `refused`: the refusal decisions on them (`refusal.decide`'s flags: {model: {category: [bool]}})."""
    sections = []
    for cat in CATEGORIES:
        thr = metrics["thresholds"][THRESHOLD_KEYS[cat]]
        decided = [passes(m.ratings(cat), thr["value"], thr["comparison"] == ">=") for m in models]
        flags = [refused[m.name][cat] for m in models]
        prompts = [{"prompt": base_answer.prompt,
                    "answers": [answer_record(m.answers[cat][i], bool(d[i]), f[i])
                                for m, d, f in zip(models, decided, flags)]}
                   for i, base_answer in enumerate(models[0].answers[cat])]
        sections.append({"id": f"{label}/{cat}" if label else cat,
                         "title": f"{label} · {SECTION_TITLES[cat]}" if label else SECTION_TITLES[cat],
                         "passes": f"{THRESHOLD_KEYS[cat]}: rating {thr['comparison']} {thr['value']:g}",
                         "prompts": prompts})
    return sections


def suite_sections(suites: dict, label: str = "") -> list[dict]:
    """Each suite's prompts with every model's answer and refusal decision. XSTest's answers pass when
    they do what the prompt calls for (answer a safe prompt, refuse an unsafe one), so flips against the
    base show over-refusal and unsafe compliance gained or lost; other suites have no pass rule."""
    sections = []
    for name, suite in suites.items():
        by_model = suite["answers"]
        base = next(iter(by_model.values()))
        by_id = {m: {a["id"]: a for a in answers} for m, answers in by_model.items()}
        # metrics' measures say which answers count against a model: refusing where that is bad, or answering
        bad_if_refused = {category: refusal for category, refusal in SUITE_MEASURES.get(suite["kind"], {}).values()}

        def record(a: dict) -> dict:
            passed = a["refused"] != bad_if_refused[a["category"]] if bad_if_refused else None
            return {"text": a["response"], "rating": None, "pass": passed, "refused": a["refused"], "stop": a.get("stop")}

        prompts = [{"prompt": a["prompt"], "category": a["category"],
                    "answers": [record(by_id[m][a["id"]]) for m in by_model]} for a in base]
        sections.append({"id": f"{label}/{name}" if label else name,
                         "title": f"{label} · suite {name}" if label else f"suite {name}",
                         "passes": "answers a safe prompt, refuses an unsafe one" if suite["kind"] == "xstest" else None,
                         "prompts": prompts})
    return sections


def render_markdown(text: str, folder: Path) -> str:
    """report.md as HTML, its images read from `folder` into data URIs."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(text)
    for token in tokens:
        for child in token.children or []:
            if child.type == "image":
                child.attrSet("src", data_uri(folder / child.attrGet("src")))
                child.attrSet("title", child.content)  # the caption, which markdown keeps only as alt text
    return md.renderer.render(tokens, md.options, {})


def data_uri(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def script_json(data: dict) -> str:
    """JSON that cannot end or reopen its <script> element: every <, > and & as a \\u escape."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def page(title: str, report_html: str, data: dict) -> str:
    assets = resources.files("alignscope.report") / "html"
    style, script = (assets / "page.css").read_text("utf-8"), (assets / "browser.js").read_text("utf-8")
    policy = (f"default-src 'none'; img-src data:; style-src {csp_hash(style)}; script-src {csp_hash(script)}; "
              "base-uri 'none'; form-action 'none'")
    escaped_title = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escaped_title}</title>", f"<style>{style}</style>", "</head>", "<body>",
        '<nav class="tabs"><a href="#report" id="tab-report">Report</a> <a href="#answers" id="tab-answers">Answers '
        "side by side</a></nav>",
        f'<main id="report" class="report">\n{report_html}</main>',
        '<section id="answers" class="answers" hidden></section>',
        f'<script type="application/json" id="page-data">{script_json(data)}</script>',
        f"<script>{script}</script>", "</body>", "</html>", ""])


def write_html_report(folder: str | Path, variants: list[str], sections: list[dict], refusal: str) -> Path:
    """report.html beside `folder`/report.md: the report with its figures, and the answers of
    `variants` (the first is the base) in `sections` side by side; `refusal` names the refusal measure."""
    folder = Path(folder)
    text = (folder / "report.md").read_text("utf-8")
    title = next((line[2:] for line in text.splitlines() if line.startswith("# ")), "Report")
    data = {"title": title, "variants": [{"name": v, "label": display(v)} for v in variants],
            "refusal": refusal,
            "sections": [{**s, "prompts": [with_flips(p) for p in s["prompts"]]} for s in sections]}
    return atomic_write_text(folder / "report.html", page(title, render_markdown(text, folder), data))
