"""The reference study's two hub models, all but their weights: the real config and tokenizer
files from ../shared/hub-files, with random weights and fewer layers (for speed), saved as a
folder or laid out as the local hub cache would hold them, so that `facebook/opt-350m` and
OpenAssistant's reward model load through the hub code path with HF_HUB_OFFLINE=1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import SHARED

HUB_FILES = SHARED / "hub-files"
OPT = HUB_FILES / "facebook-opt-350m"
OPENASSISTANT = HUB_FILES / "openassistant-reward-model-deberta-v3-large-v2"
OPT_REPO, OPT_SHA = "facebook/opt-350m", "e66073fc011d08b795e4c3dc4b413b49147f9655"  # refs/pr/24
OA_REPO, OA_REF, OA_SHA = "OpenAssistant/reward-model-deberta-v3-large-v2", "refs/pr/3", "3" * 40


def need_hub_files() -> None:
    if not (OPT / "config.json").is_file() or not (OPENASSISTANT / "spm.model").is_file():
        pytest.skip(f"the study's hub files are not under {HUB_FILES}")


def _copy_small_files(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and f.name != "README.md":
            shutil.copy(f, target / f.name)


def opt350m(target: Path, layers: int = 2, seed: int = 0, **config) -> Path:
    """facebook/opt-350m's architecture (its config.json, `layers` of its 24 decoder layers) and
    tokenizer files byte for byte, with random weights."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    need_hub_files()
    _copy_small_files(OPT, target)
    cfg = json.loads((OPT / "config.json").read_text()) | {"num_hidden_layers": layers} | config
    torch.manual_seed(seed)
    model = OPTForCausalLM(OPTConfig(**cfg))
    model.save_pretrained(target, safe_serialization=True)
    (target / "config.json").write_text(json.dumps(cfg, indent=2))  # the hub's file, layers cut
    return target


def openassistant_rm(target: Path, layers: int = 1, seed: int = 0) -> Path:
    """OpenAssistant/reward-model-deberta-v3-large-v2's architecture (DeBERTa-v3-large, `layers` of
    24) and tokenizer (built from its spm.model), with random weights."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    need_hub_files()
    _copy_small_files(OPENASSISTANT, target)
    cfg = json.loads((OPENASSISTANT / "config.json").read_text()) | {"num_hidden_layers": layers}
    torch.manual_seed(seed)
    model = DebertaV2ForSequenceClassification(DebertaV2Config(**cfg))
    model.save_pretrained(target, safe_serialization=True)
    (target / "config.json").write_text(json.dumps(cfg, indent=2))
    return target


def hub_cache(home: Path, repo: str, commit: str, folder: Path, ref: str | None = None, main: bool = True) -> Path:
    """Lay `folder` out as the local hub cache under HF_HOME=`home` holds `repo` at `commit`
    (and the branches that point at it: `main` unless told otherwise, and `ref`, e.g. refs/pr/3)."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    for name in (("main",) if main else ()) + ((ref,) if ref else ()):
        (root / "refs" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "refs" / name).write_text(commit)
    return snapshot
