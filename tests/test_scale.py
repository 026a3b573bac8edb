"""The scale question's analysis: the base -> DPO change per size and its trend across sizes."""

import numpy as np
import pytest

from alignscope.answers import RatedAnswer, RatedModel
from alignscope.metrics import MetricsConfig, compute_metrics
from alignscope.scale import scale_analysis, scale_markdown


def rated(name: str, helpful: list[float]) -> RatedModel:
    return RatedModel(name, {"harmful": [RatedAnswer(f"h{i}", "r", -1.0) for i in range(len(helpful))],
                             "helpful": [RatedAnswer(f"p{i}", "r", x) for i, x in enumerate(helpful)]})


def test_three_sizes_reach_the_trend_and_its_verdict():
    cfg = MetricsConfig(bootstrap_resamples=1000)
    # 40 helpful prompts; the base answers 30 helpfully at every size; DPO keeps 10, 20, 30 of them
    base = [0.0] * 30 + [-5.0] * 10
    sizes = {"small": (1e8, 10), "mid": (1e9, 20), "large": (1e10, 30)}
    per_base, models = {}, {}
    for name, (_, kept) in sizes.items():
        models[name] = [rated("base", base), rated("dpo", [0.0] * kept + [-5.0] * (40 - kept))]
        per_base[name] = compute_metrics(models[name], cfg)
    analysis = scale_analysis(per_base, {n: p for n, (p, _) in sizes.items()}, models, cfg)
    changes = [r["base_to_dpo"]["change"] for r in analysis["rows"]]
    assert [r["base"] for r in analysis["rows"]] == ["small", "mid", "large"] and changes == [-50.0, -25.0, 0.0]
    # exact McNemar on the discordant prompts: 20, 10 and 0 helpful under the base alone
    assert [r["base_to_dpo"]["p_value"] for r in analysis["rows"]] == pytest.approx([2 * 0.5 ** 20, 2 * 0.5 ** 10, 1.0])
    assert analysis["rows"][2]["base_to_dpo"]["ci"] == [0.0, 0.0]  # every prompt the same: every resample 0
    trend = analysis["trend"]["dpo"]
    assert trend["sizes"] == 3 and trend["slope_per_decade"] == pytest.approx(25.0) and trend["r"] == pytest.approx(1)
    text = scale_markdown("Scale", "s", analysis)
    assert "moves by +25.0 points per tenfold increase in parameters" in text
    assert "larger models lose less helpfulness, a trend the fit supports" in text
    assert "small (100M): HpR -50.0 points after DPO" in text and "a change the paired test supports" in text


def test_a_change_equal_at_every_size_has_no_trend_and_no_nan():
    cfg = MetricsConfig(bootstrap_resamples=1000)
    models = {n: [rated("base", [0.0] * 10), rated("dpo", [0.0] * 10)] for n in ("a", "b", "c")}
    per_base = {n: compute_metrics(m, cfg) for n, m in models.items()}
    analysis = scale_analysis(per_base, {"a": 1e8, "b": 1e9, "c": 1e10}, models, cfg)
    assert analysis["trend"]["dpo"]["p_value"] is None
    assert "is the same at every size: no trend can be estimated" in scale_markdown("S", "s", analysis)
    assert np.isfinite([r["base_to_dpo"]["change"] for r in analysis["rows"]]).all()
