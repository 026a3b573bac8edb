"""What every judge shares: the `Judge` interface, the names of a judge's files, resolving a judge and
its fingerprint, and the refusal to judge prompts a reward model trained on.

Two kinds implement `Judge`: a reward model (`judges.reward_model`) and a distilled judge
(`judges.distilled`); `judges.load_judge` gives the one a spec names.
"""

from __future__ import annotations

import abc
from pathlib import Path

from alignscope.data import first_human_turn
from alignscope.io import InputError, read_json
from alignscope.models import model_fingerprint, resolve_model

OPENASSISTANT_JUDGE = "OpenAssistant/reward-model-deberta-v3-large-v2"
# Its ratings of the reference study's 400 answers, beside a checkout: what every judge is validated against.
REFERENCE_RATINGS = "../shared/reference-study/responses"
RM_MANIFEST = "alignscope-reward-model.json"
DISTILLED_MANIFEST = "alignscope-judge.json"
DISTILLED_HEADS = "heads.safetensors"
FEATURE_SETS = ("standard", "multilayer")
# Bump when what BackboneFeatures computes changes: heads fitted to the old features then refuse to
# rate new ones (fit the judge again) instead of rating them silently wrong.
FEATURES_VERSION = 1
# Blocks the LM head works in when it gives answer tokens' log-probabilities: 256 positions x 8192
# words is 8 MB of float32, small enough for the allocator to reuse instead of mapping fresh pages.
LOGIT_POSITIONS, LOGIT_WORDS = 256, 8192



class Judge(abc.ABC):
    """What rates (prompt, answer) pairs: a reward model or a distilled judge."""

    resolved: str
    """Where its files are (a folder, or a hub model's cache)."""

    @abc.abstractmethod
    def rate(self, questions: list[str], answers: list[str], categories: list[str] | None = None,
             max_length: int = 512, batch_size: int = 8, progress=None) -> tuple[list[float], list[int]]:
        """One rating per pair, in input order, and the answer tokens cut from each to fit `max_length`.
        `categories` (harmful or helpful, one per pair): a judge that rates by category needs them."""

    @abc.abstractmethod
    def describe(self) -> dict:
        """What the judge is, for a run's record: its kind, where it is, its fingerprint."""


def is_distilled(resolved: str) -> bool:
    return (Path(resolved) / DISTILLED_MANIFEST).is_file()


def resolve_judge(spec: str, allow_pickle: bool = False) -> str:
    """A distilled judge's folder (it has no config.json), or what resolve_model makes of a reward model."""
    return spec if is_distilled(spec) else resolve_model(spec, allow_pickle)


def judge_fingerprint(spec: str, allow_pickle: bool = False, revision: str | None = None) -> str:
    """The judge's content: every file of its folder (a distilled judge's record names its backbones'
    fingerprints), or a hub model's commit."""
    return model_fingerprint(resolve_judge(spec, allow_pickle), revision)


def trained_openings(resolved: str) -> set[str]:
    """Opening Human turns of the rows an alignscope reward model trained on (empty for others)."""
    manifest = Path(resolved) / RM_MANIFEST
    return set(read_json(manifest)["trained_openings"]) if manifest.is_file() else set()


def check_not_trained_on(resolved: str, prompts: list[str]) -> None:
    """Refuse to judge prompts whose dialogue a preference-trained reward model saw: it would
    flatter the answers that resemble the replies it was taught to prefer."""
    openings = trained_openings(resolved)
    shared = [p for p in prompts if first_human_turn(p) in openings]
    if shared:
        raise InputError(
            f"reward model {resolved} was trained on {len(shared)} of these prompts' dialogues "
            f"(e.g. {shared[0][:80]!r}); judging them would flatter the models. Train it with "
            "exclude_prompts_of set to this evaluation set")
