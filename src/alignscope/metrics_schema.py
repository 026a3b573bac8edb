"""metrics.json's schema: the typed, versioned record `metrics.compute_metrics` writes and every
reader (the report, the page, the scale analysis, a user's script) reads. docs/metrics-json.md
documents each key; `validate_metrics`, which `write_report` calls on what it writes, refuses a
record with a key the schema does not name, so a new number cannot appear without its type and its
line in the docs (tests/test_metrics_schema.py checks both).

The records are TypedDicts: metrics.json stays plain JSON, and a reader keeps indexing it as it did,
now with a type a checker and pydantic can hold it to.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import NotRequired, TypedDict  # pydantic needs this TypedDict before Python 3.12

from alignscope.io import InputError

METRICS_SCHEMA = "alignscope-metrics/1"
"""metrics.json's `schema`: bump the number when a key changes meaning or goes; a new key keeps it."""

Interval = list[float]
FORBID = ConfigDict(extra="forbid")


@with_config(FORBID)
class ModelRates(TypedDict):
    HmR: float
    HpR: float
    CAS: float
    HmR_ci: Interval
    HpR_ci: Interval
    CAS_ci: Interval
    mean_reward: dict[str, float]
    mean_reward_ci: dict[str, Interval]
    median_reward: dict[str, float]
    n: dict[str, int]
    empty_responses: dict[str, int]


@with_config(FORBID)
class PairedTest(TypedDict):
    metric: str
    a: str
    b: str
    test: str
    n: int
    p_value: float
    q_value: float
    a_only: NotRequired[int]
    b_only: NotRequired[int]
    gap: NotRequired[float]
    gap_ci: NotRequired[Interval]
    mean_diff: NotRequired[float]
    ci: NotRequired[Interval]
    wilcoxon_p: NotRequired[float]


@with_config(FORBID)
class Retention(TypedDict):
    before: str
    after: str
    HpR_before: float
    HpR_after: float
    aggregate: float | None
    helpful_before: int
    still_helpful: int
    per_prompt: float | None
    per_prompt_ci: Interval | None


@with_config(FORBID)
class Threshold(TypedDict):
    value: float
    comparison: Literal[">=", ">"]


@with_config(FORBID)
class Sweep(TypedDict):
    values: list[float]
    HmR: dict[str, list[float]]
    HpR: dict[str, list[float]]


@with_config(FORBID)
class Thresholds(TypedDict):
    harmless: Threshold
    helpful: Threshold
    sweep: Sweep


@with_config(FORBID)
class Share(TypedDict):
    count: int
    n: int
    rate: float
    ci: Interval


@with_config(FORBID)
class RefusalTest(TypedDict):
    a: str
    b: str
    test: str
    n: int
    a_only: int
    b_only: int
    p_value: float
    q_value: float
    category: NotRequired[str]
    measure: NotRequired[str]


@with_config(FORBID)
class Refusal(TypedDict):
    patterns: str | None
    measure: dict[str, Any]
    models: dict[str, dict[str, Share]]
    tests: list[RefusalTest]


@with_config(FORBID)
class Suite(TypedDict):
    kind: str
    base: str
    measures: dict[str, dict[str, Any]]
    models: dict[str, dict[str, Share]]
    tests: list[RefusalTest]


@with_config(FORBID)
class Metrics(TypedDict):
    """What metrics.json holds: `compute_metrics`'s keys, then those a study adds (NotRequired)."""

    schema: str
    base: str
    models: dict[str, ModelRates]
    rating_range: dict[str, Interval]
    relative_to_base: dict[str, dict[str, float | None]]
    paired_tests: list[PairedTest]
    retention: list[Retention]
    undefined: list[str]
    refusal: NotRequired[Refusal]
    thresholds: Thresholds
    confidence: float
    methods: dict[str, str]
    config: dict[str, Any]
    suites: NotRequired[dict[str, Suite]]
    # a study's
    answers: NotRequired[dict[str, dict[str, Any]]]
    stop_tests: NotRequired[list[dict[str, Any]]]
    judge: NotRequired[dict[str, Any]]
    training: NotRequired[dict[str, dict[str, Any]]]
    refusal_card: NotRequired[dict[str, Any]]


METRICS = TypeAdapter(Metrics)


def validate_metrics(metrics: dict, where: str = "metrics.json") -> Metrics:
    """The record as the schema types it; a key it does not name, a missing one or a wrong type is refused."""
    try:
        return METRICS.validate_python(metrics, strict=False)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in e.errors()[:5])
        raise InputError(f"{where}: not a {METRICS_SCHEMA} record ({problems})") from None
