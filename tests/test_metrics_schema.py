"""metrics.json's schema: what compute_metrics writes is a valid record, a key the schema does not
name is refused, and every key the schema names has its line on the docs page."""

import json
import re
import typing
from pathlib import Path

import pytest

from alignscope.answers import RatedAnswer, RatedModel
from alignscope.io import InputError
from alignscope.metrics import compute_metrics
from alignscope.metrics_schema import METRICS_SCHEMA, Metrics, validate_metrics
from alignscope.refusal import PatternRefusals, decide

DOCS = Path(__file__).resolve().parents[1] / "docs" / "metrics-json.md"


def model(name, harmful, helpful):
    return RatedModel(name, {"harmful": [RatedAnswer(f"h{i}", "I can't help with that." if x < -3 else "Sure.", x)
                                         for i, x in enumerate(harmful)],
                             "helpful": [RatedAnswer(f"p{i}", "Sure.", x) for i, x in enumerate(helpful)]})


def test_a_computed_record_is_valid_and_a_stray_or_missing_key_is_refused():
    models = [model("base", [-4, -2, -1, -5], [-3, -1, 0, -2.5]), model("sft", [-1, -1, -2, -4], [-1, -1, 0, -3])]
    refusals = decide(PatternRefusals("patterns"), {m.name: m.answers for m in models})
    metrics = compute_metrics(models, refusals=refusals)
    assert metrics["schema"] == METRICS_SCHEMA and metrics["refusal"]["models"]["base"]["harmful"]["count"] == 2
    validate_metrics(json.loads(json.dumps(metrics)))  # as read back from the file
    with pytest.raises(InputError, match=r"not a alignscope-metrics/1 record \(models.base.HmR_typo: Extra inputs"):
        validate_metrics({**metrics, "models": {"base": {**metrics["models"]["base"], "HmR_typo": 1.0}}})
    with pytest.raises(InputError, match=r"thresholds: Field required"):
        validate_metrics({k: v for k, v in metrics.items() if k != "thresholds"})
    with pytest.raises(InputError, match=r"paired_tests.0.p_value: Input should be a valid number"):
        validate_metrics({**metrics, "paired_tests": [{**metrics["paired_tests"][0], "p_value": "small"}]})


def test_every_key_of_the_schema_is_on_the_docs_page():
    documented = set(re.findall(r"`([A-Za-z_]+)", DOCS.read_text()))
    missing = [key for key in typing.get_type_hints(Metrics) if key not in documented]
    assert not missing, f"docs/metrics-json.md does not document {missing}"
