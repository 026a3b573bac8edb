"""A local reward model: any encoder or LM backbone with a one-logit head, trained
with TRL's RewardTrainer on HH-RLHF preference pairs.

It judges when the OpenAssistant DeBERTa model cannot be had (no hub). Its pairs
are encoded exactly as the scorer encodes them (`tokenizer(prompt, reply)`, the
prompt cut from its start), its held-out accuracy is measured on dialogues it
never saw, and it records the dialogues it trained on so that `score` can refuse
an evaluation set that shares one.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alignscope.config import load_config
from alignscope.data import DataConfig, HHPair, first_human_turn, load_pairs
from alignscope.io import InputError, atomic_write_json, read_json, sha256_json
from alignscope.score import RM_MANIFEST, ScoreConfig, encode_pair, score_pairs

# OpenAssistant/reward-model-deberta-v3-large-v2's accuracy on Anthropic HH pairs, from its model card.
OPENASSISTANT_HH_ACCURACY = 0.69


@dataclass
class RewardTrainingSettings:
    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 5e-5
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_length: int = 512
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    seed: int = 42
    logging_steps: int = 10


@dataclass
class RewardModelConfig:
    """`alignscope train-rm`: a reward model from HH-RLHF pairs."""

    output_dir: str
    backbone: str = "all-minilm-l6-v2"
    """Encoder or LM: hub id, folder, or packaged name (all-minilm-l6-v2 is the offline default)."""
    data: DataConfig = field(default_factory=DataConfig)
    heldout_fraction: float = 0.1
    """Share of dialogues (grouped by opening turn) kept out of training to measure accuracy."""
    training: RewardTrainingSettings = field(default_factory=RewardTrainingSettings)
    allow_pickle: bool = False


def load_rm_config(path, overrides=()) -> RewardModelConfig:
    return load_config(RewardModelConfig, path, overrides)


def split_heldout(pairs: list[HHPair], fraction: float, seed: int) -> tuple[list[HHPair], list[HHPair]]:
    """Held-out pairs are whole conversations: branches of one dialogue never straddle the split."""
    openings = sorted({first_human_turn(p.prompt) for p in pairs})
    random.Random(seed).shuffle(openings)
    held = set(openings[: round(len(openings) * fraction)])
    return ([p for p in pairs if first_human_turn(p.prompt) not in held],
            [p for p in pairs if first_human_turn(p.prompt) in held])


def pair_accuracy(model, tokenizer, pairs: list[HHPair], max_length: int) -> float:
    cfg = ScoreConfig(max_length=max_length)
    chosen = score_pairs(model, tokenizer, [p.prompt for p in pairs], [p.chosen for p in pairs], cfg)
    rejected = score_pairs(model, tokenizer, [p.prompt for p in pairs], [p.rejected for p in pairs], cfg)
    return sum(c > r for c, r in zip(chosen, rejected)) / max(len(pairs), 1)


def train_reward_model(cfg: RewardModelConfig) -> dict:
    """Train, measure held-out accuracy, save `output_dir/model` with its manifest. Skips a finished run."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from alignscope.models import resolve_model
    from alignscope.train import _save_folder, package_versions

    out = Path(cfg.output_dir)
    manifest_path = out / "model" / RM_MANIFEST
    digest = sha256_json(asdict(cfg))
    if manifest_path.is_file():
        manifest = read_json(manifest_path)
        if manifest.get("config_hash") == digest:
            return manifest
        raise InputError(f"{out} holds a reward model trained from another config; choose another output_dir")
    loaded = load_pairs(cfg.data)
    train_pairs, heldout = split_heldout(loaded.pairs, cfg.heldout_fraction, cfg.training.seed)
    if not train_pairs or not heldout:
        raise InputError(f"data: {len(loaded.pairs)} pairs leave {len(train_pairs)} to train on and "
                         f"{len(heldout)} held out; use more rows or another heldout_fraction")
    resolved = resolve_model(cfg.backbone, cfg.allow_pickle)
    tokenizer = AutoTokenizer.from_pretrained(resolved)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(cfg.training.seed)  # the new head's initial weights
    model = AutoModelForSequenceClassification.from_pretrained(
        resolved, num_labels=1, dtype=torch.float32, use_safetensors=None if cfg.allow_pickle else True)
    model.config.pad_token_id = tokenizer.pad_token_id

    t = cfg.training
    encode = lambda p, reply: encode_pair(tokenizer, p.prompt, reply, t.max_length)  # noqa: E731
    dataset = Dataset.from_dict({"chosen_ids": [encode(p, p.chosen) for p in train_pairs],
                                 "rejected_ids": [encode(p, p.rejected) for p in train_pairs]})
    started = time.time()
    accuracy_before = pair_accuracy(model, tokenizer, heldout, t.max_length)
    args = RewardConfig(
        output_dir=str(out / "checkpoints"), num_train_epochs=t.epochs, max_steps=t.max_steps,
        learning_rate=t.learning_rate, per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, max_length=t.max_length,
        weight_decay=t.weight_decay, warmup_steps=t.warmup_ratio, seed=t.seed, data_seed=t.seed,
        bf16=False, use_cpu=not torch.cuda.is_available(), gradient_checkpointing=False,
        logging_steps=t.logging_steps, save_strategy="no", report_to="none", dataloader_pin_memory=False)
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    model = trainer.model.eval()
    accuracy = pair_accuracy(model, tokenizer, heldout, t.max_length)
    manifest = {
        "config": asdict(cfg), "config_hash": digest, "backbone": resolved,
        "heldout_accuracy": accuracy, "heldout_accuracy_before_training": accuracy_before,
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

    _save_folder(out / "model", write)
    return manifest
