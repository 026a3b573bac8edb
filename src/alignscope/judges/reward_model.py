"""A reward model: any `AutoModelForSequenceClassification` with one logit, the OpenAssistant judge or one
trained here, called as OpenAssistant's model card says, `tokenizer(question, answer)`. Pairs longer
than `max_length` lose tokens from the start of the question (its oldest turns) and keep the answer
whole; an answer that alone leaves too little room keeps its start and the question's last quarter of
the budget, and the cut is recorded.

`alignscope train-rm` trains one (`train_reward_model`): any encoder or LM backbone with a one-logit
head, trained with TRL's RewardTrainer on HH-RLHF preference pairs, for when the OpenAssistant model
cannot be had (no hub). Its pairs are encoded exactly as the judge encodes them, its held-out accuracy
is measured on dialogues it never saw, and it records the dialogues it trained on so that `score` can
refuse an evaluation set that shares one.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from alignscope.config import load_config, validated
from alignscope.data import DataConfig, HHPair, data_fingerprint, first_human_turn, load_pairs
from alignscope.io import InputError, atomic_folder, atomic_write_json, read_json, sha256_json
from alignscope.judges.base import RM_MANIFEST, Judge
from alignscope.models import choose_precision, load_sequence_classifier, model_fingerprint, resolve_model
from alignscope.provenance import package_versions
from alignscope.train import CADENCE, TrainingSettings, common_trl_args, training_logs

# OpenAssistant/reward-model-deberta-v3-large-v2's accuracy on Anthropic HH pairs, from its model card.
OPENASSISTANT_HH_ACCURACY = 0.69


@dataclass
class EncodedPair:
    ids: list[int]
    answer_tokens_cut: int = 0


def encode_pair(tokenizer, question: str, answer: str, max_length: int) -> EncodedPair:
    """`tokenizer(question, answer)` within `max_length` tokens, cutting the question from its start.

    The cut is explicit: DeBERTa-v3's tokenizer declares a model_max_length of 1e30, so
    nothing would truncate to its 512 positions otherwise."""
    answer_tokens = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
    if answer_tokens + tokenizer.num_special_tokens_to_add(pair=True) >= max_length:
        return _cut_answer_end(tokenizer, question, answer, max_length)
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left"
    try:
        return EncodedPair(tokenizer(question, answer, truncation="only_first", max_length=max_length)["input_ids"])
    finally:
        tokenizer.truncation_side = side


def _cut_answer_end(tokenizer, question: str, answer: str, max_length: int) -> EncodedPair:
    """The answer alone is too long: keep the start of the answer (what a reader judges first)
    and the end of the question, joined by the tokenizer's own pair template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise InputError(f"{type(tokenizer).__name__}: an answer longer than max_length {max_length} needs a fast "
                         "tokenizer to be cut")
    q = backend.encode(question, add_special_tokens=False)
    a = backend.encode(answer, add_special_tokens=False)
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    keep_q = min(len(q.ids), budget // 4)
    keep_a = budget - keep_q
    cut = len(a.ids) - keep_a
    q.truncate(keep_q, direction="left")
    a.truncate(keep_a, direction="right")
    return EncodedPair(backend.post_process(q, a, add_special_tokens=True).ids, cut)


class RewardModel(Judge):
    """A sequence classifier with one logit: the OpenAssistant judge, or one of ours."""

    def __init__(self, spec: str, allow_pickle: bool = False, revision: str | None = None):
        import torch

        self.spec, self.revision = spec, revision
        self.model, self.tokenizer, self.resolved = load_sequence_classifier(spec, allow_pickle, revision)
        self.model.eval()
        if torch.cuda.is_available():
            self.model = self.model.cuda()

    def rate(self, questions: list[str], answers: list[str], categories: list[str] | None = None,
             max_length: int = 512, batch_size: int = 8, progress=None) -> tuple[list[float], list[int]]:
        """One rating per pair, in input order, and the answer tokens cut from each (categories unused)."""
        encoded = [encode_pair(self.tokenizer, q, a, max_length) for q, a in zip(questions, answers)]
        return rate_encoded(self.model, [e.ids for e in encoded], self.tokenizer.pad_token_id or 0, batch_size,
                            progress), [e.answer_tokens_cut for e in encoded]

    def describe(self) -> dict:
        return {"kind": "reward model", "model": self.spec, "revision": self.revision,
                "fingerprint": model_fingerprint(self.resolved, self.revision)}


def rate_encoded(model, encoded: list[list[int]], pad: int, batch_size: int, progress=None) -> list[float]:
    """The one logit of each encoded pair, in length-sorted batches.

    Only input_ids and attention_mask go in: the reward models we train see no token
    type ids (TRL's collator builds none), and DeBERTa-v3's reward model ignores them."""
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    scores = [0.0] * len(encoded)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, :len(encoded[i])] = torch.tensor(encoded[i])
                mask[r, :len(encoded[i])] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0]
            for i, value in zip(rows, logits.float().tolist()):
                scores[i] = float(value)
            if progress:
                progress(len(rows))
    return scores




@dataclass
class RewardTrainingSettings(TrainingSettings):
    """The training settings (same fields) with a reward model's defaults: a fresh head wants a
    higher learning rate and a short warm-up; batches in random order; fp32 everywhere."""

    learning_rate: Annotated[float, Field(gt=0)] = 5e-5
    per_device_batch_size: Annotated[int, Field(ge=1)] = 16
    gradient_accumulation_steps: Annotated[int, Field(ge=1)] = 1
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.1
    group_by_length: bool = False
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"


@dataclass
class RewardModelConfig:
    """`alignscope train-rm`: a reward model from HH-RLHF pairs."""

    output_dir: str
    backbone: str = "all-minilm-l6-v2"
    """Encoder or LM: hub id, folder, or packaged name (all-minilm-l6-v2 is the offline default)."""
    data: DataConfig = field(default_factory=DataConfig)
    heldout_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    """Share of dialogues (grouped by opening turn) kept out of training to measure accuracy."""
    training: RewardTrainingSettings = field(default_factory=RewardTrainingSettings)
    allow_pickle: bool = False


def load_rm_config(path, overrides=()) -> RewardModelConfig:
    return load_config(RewardModelConfig, path, overrides)


def rm_config_hash(cfg: RewardModelConfig) -> str:
    """What decides the reward model, by content (not where its data or backbone lie)."""
    d = asdict(validated(cfg))
    d.pop("output_dir")
    for key in CADENCE:
        d["training"].pop(key)
    d["backbone"] = model_fingerprint(resolve_model(cfg.backbone, cfg.allow_pickle))
    d["data"] = data_fingerprint(cfg.data)
    return sha256_json(d)


def split_heldout(pairs: list[HHPair], fraction: float, seed: int) -> tuple[list[HHPair], list[HHPair]]:
    """Held-out pairs are whole conversations: branches of one dialogue never straddle the split."""
    openings = sorted({first_human_turn(p.prompt) for p in pairs})
    random.Random(seed).shuffle(openings)
    held = set(openings[: round(len(openings) * fraction)])
    return ([p for p in pairs if first_human_turn(p.prompt) not in held],
            [p for p in pairs if first_human_turn(p.prompt) in held])


def pair_accuracy(model, tokenizer, pairs: list[HHPair], max_length: int) -> float:
    """Share of pairs whose chosen reply the model rates above the rejected one."""
    def rate(replies: list[str]) -> list[float]:
        encoded = [encode_pair(tokenizer, p.prompt, r, max_length).ids for p, r in zip(pairs, replies)]
        return rate_encoded(model, encoded, tokenizer.pad_token_id or 0, batch_size=8)

    chosen, rejected = rate([p.chosen for p in pairs]), rate([p.rejected for p in pairs])
    return sum(c > r for c, r in zip(chosen, rejected)) / max(len(pairs), 1)


def load_backbone(cfg: RewardModelConfig):
    """The backbone with a fresh one-logit head (seeded), its tokenizer, and where it was found."""
    return load_sequence_classifier(cfg.backbone, cfg.allow_pickle, new_head_seed=cfg.training.seed)


def fit(cfg: RewardModelConfig, model, tokenizer, pairs: list[HHPair], checkpoints: Path):
    """TRL's RewardTrainer on (chosen, rejected) pairs encoded as the judge encodes them."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    t = cfg.training
    encode = lambda p, reply: encode_pair(tokenizer, p.prompt, reply, t.max_length).ids  # noqa: E731
    dataset = Dataset.from_dict({"chosen_ids": [encode(p, p.chosen) for p in pairs],
                                 "rejected_ids": [encode(p, p.rejected) for p in pairs]})
    args = RewardConfig(**common_trl_args(t, choose_precision(t.precision), checkpoints), save_strategy="no")
    with training_logs(t, Path(cfg.output_dir)):
        trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        trainer.train()
    return trainer


def train_reward_model(cfg: RewardModelConfig) -> dict:
    """Train, measure held-out accuracy, save `output_dir/model` with its manifest. Skips a finished run."""
    cfg = validated(cfg, "reward model")
    out = Path(cfg.output_dir)
    manifest_path = out / "model" / RM_MANIFEST
    digest = rm_config_hash(cfg)
    if manifest_path.is_file():
        manifest = read_json(manifest_path)
        if manifest.get("config_hash") == digest:
            return manifest
        raise InputError(f"{out} holds a reward model trained from another config; choose another output_dir")
    loaded = load_pairs(cfg.data)
    if loaded.pairs and (loaded.pairs[0].conversational or loaded.pairs[0].rejected is None):
        raise InputError(f"data: {cfg.data.source}: a reward model is trained on plain-text preference pairs "
                         "(HH-RLHF, or prompt/chosen/rejected strings), as it rates them")
    train_pairs, heldout = split_heldout(loaded.pairs, cfg.heldout_fraction, cfg.training.seed)
    if not train_pairs or not heldout:
        raise InputError(f"data: {len(loaded.pairs)} pairs leave {len(train_pairs)} to train on and "
                         f"{len(heldout)} held out; use more rows or another heldout_fraction")
    model, tokenizer, resolved = load_backbone(cfg)
    started = time.time()
    accuracy_before = pair_accuracy(model, tokenizer, heldout, cfg.training.max_length)
    trainer = fit(cfg, model, tokenizer, train_pairs, out / "checkpoints")
    model = trainer.model.eval()
    manifest = {
        "config": asdict(cfg), "config_hash": digest, "backbone": resolved,
        "heldout_accuracy": pair_accuracy(model, tokenizer, heldout, cfg.training.max_length),
        "heldout_accuracy_before_training": accuracy_before,
        "heldout_pairs": len(heldout), "trained_pairs": len(train_pairs),
        "openassistant_hh_accuracy": OPENASSISTANT_HH_ACCURACY,
        "trained_rows": [p.id for p in train_pairs], "heldout_rows": [p.id for p in heldout],
        "trained_openings": sorted({first_human_turn(p.prompt) for p in train_pairs}),
        "data": loaded.summary, "train_log": trainer.state.log_history,
        "seconds": round(time.time() - started, 1), "versions": package_versions(),
    }

    def write(folder: Path):
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        atomic_write_json(folder / RM_MANIFEST, manifest)

    atomic_folder(out / "model", write, "reward model")
    return manifest
