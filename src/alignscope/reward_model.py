"""A local reward model: any encoder or LM backbone with a one-logit head, trained
with TRL's RewardTrainer on HH-RLHF preference pairs.

It judges when the OpenAssistant DeBERTa model cannot be had (no hub). Its pairs
are encoded exactly as the judge encodes them (`tokenizer(prompt, reply)`, the
prompt cut from its start), its held-out accuracy is measured on dialogues it
never saw, and it records the dialogues it trained on so that `score` can refuse
an evaluation set that shares one.
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
from alignscope.judge import RM_MANIFEST, encode_pair, rate_encoded
from alignscope.models import choose_precision, load_sequence_classifier, model_fingerprint, resolve_model
from alignscope.provenance import package_versions
from alignscope.train import CADENCE, TrainingSettings, common_trl_args, training_logs

# OpenAssistant/reward-model-deberta-v3-large-v2's accuracy on Anthropic HH pairs, from its model card.
OPENASSISTANT_HH_ACCURACY = 0.69


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
