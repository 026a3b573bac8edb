"""Judges: what rates a (prompt, answer) pair, loaded from a hub id, a folder or a packaged name, and
used the same way by `score`, the judge card and a study. The interface is `Judge` (`judges.base`);
a reward model (`judges.reward_model`, trained by `train-rm`) and a distilled judge
(`judges.distilled`, fitted by `train-judge` in `judges.train_judge`) implement it. `judges.score`
rates answer files with one; `judges.card` measures one against a reference judge.
"""

from __future__ import annotations

from alignscope.judges.base import (DISTILLED_HEADS, DISTILLED_MANIFEST, FEATURE_SETS, FEATURES_VERSION,
                                    OPENASSISTANT_JUDGE, REFERENCE_RATINGS, RM_MANIFEST, Judge, check_not_trained_on,
                                    is_distilled, judge_fingerprint, resolve_judge, trained_openings)
from alignscope.judges.distilled import BLIND_HEADS, BackboneFeatures, DistilledJudge, feature_set
from alignscope.judges.reward_model import RewardModel, encode_pair, rate_encoded
from alignscope.models import resolve_model


def load_judge(spec: str, allow_pickle: bool = False, revision: str | None = None) -> Judge:
    """The judge `spec` names, resolved once: a distilled judge's folder, or a reward model."""
    resolved = resolve_model(spec, allow_pickle) if not is_distilled(spec) else spec
    if is_distilled(resolved):
        return DistilledJudge(resolved, allow_pickle)
    return RewardModel(spec, allow_pickle, revision)



__all__ = ["BLIND_HEADS", "DISTILLED_HEADS", "DISTILLED_MANIFEST", "FEATURE_SETS", "FEATURES_VERSION", "OPENASSISTANT_JUDGE",
           "REFERENCE_RATINGS", "RM_MANIFEST", "BackboneFeatures", "DistilledJudge", "Judge", "RewardModel",
           "check_not_trained_on", "encode_pair", "feature_set", "is_distilled", "judge_fingerprint", "load_judge",
           "rate_encoded", "resolve_judge", "trained_openings"]
