"""The study's two hub models with random weights, built from their real config and tokenizer
files (../shared/hub-files, or $ALIGNSCOPE_SHARED/hub-files): for timings and GPU checks that
need the real shapes, where the weights cannot be had."""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ALIGNSCOPE_SHARED", ROOT.parent / "shared"))
HUB_FILES = SHARED / "hub-files"


def opt350m_shape(target: Path, layers: int | None = None, seed: int = 0) -> Path:
    """facebook/opt-350m's config (all 24 layers unless cut) and tokenizer, random weights, as a folder."""
    import shutil

    import torch
    from transformers import OPTConfig, OPTForCausalLM

    source = HUB_FILES / "facebook-opt-350m"
    if (target / "model.safetensors").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        shutil.copy(f, target / f.name)
    cfg = json.loads((source / "config.json").read_text())
    if layers:
        cfg["num_hidden_layers"] = layers
    torch.manual_seed(seed)
    OPTForCausalLM(OPTConfig(**cfg)).save_pretrained(target, safe_serialization=True)
    (target / "config.json").write_text(json.dumps(cfg, indent=2))
    return target


def openassistant_shape(target: Path, seed: int = 0) -> Path:
    """OpenAssistant/reward-model-deberta-v3-large-v2's config and tokenizer, random weights, as a folder."""
    import shutil

    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    source = HUB_FILES / "openassistant-reward-model-deberta-v3-large-v2"
    if (target / "model.safetensors").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.name != "README.md":
            shutil.copy(f, target / f.name)
    torch.manual_seed(seed)
    DebertaV2ForSequenceClassification(DebertaV2Config(**json.loads((source / "config.json").read_text()))) \
        .save_pretrained(target, safe_serialization=True)
    return target
