"""The report: report.md, report.html and figures/ beside metrics.json, read from what `metrics`
computed. One module per part: `tables` (the study's tables), `findings` (what the numbers support,
in words), `figures`, `refusals` (refusal and suite sections), `judge` (the judge's section),
`study` (a study's own prose), `render` (report.md, and `write_report`) and `page` (report.html).
"""

from __future__ import annotations

from alignscope.report.figures import FIGURE_FILES
from alignscope.report.judge import beside_reference, judge_check_section, judge_name, judge_section, judge_view
from alignscope.report.page import write_html_report
from alignscope.report.render import JUDGE_CAVEAT, ReportConfig, html_sections, refusal_name, render_markdown, write_report
from alignscope.report.study import answers_section, artifact_index, study_notes, timings_table

__all__ = ["FIGURE_FILES", "JUDGE_CAVEAT", "ReportConfig", "answers_section", "artifact_index", "beside_reference",
           "html_sections", "judge_check_section", "judge_name", "judge_section", "judge_view", "refusal_name",
           "render_markdown", "study_notes", "timings_table", "write_html_report", "write_report"]
