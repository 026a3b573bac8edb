"""Training beyond the tiny core loop: shipped recipes, the CPU LM-head compaction,
several processes, and a packaged real model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignscope.data import DataConfig
from alignscope.train import LoraSettings, TrainConfig, TrainingSettings, load_recipe, train
from conftest import ROOT, write_hh
from tiny import hh_pairs, tiny_opt


@pytest.mark.parametrize("recipe", sorted(p for p in (ROOT / "configs" / "recipes").glob("*.yaml")
                                           if p.name != "reward-model.yaml"), ids=lambda p: p.name)
def test_shipped_recipes_validate(recipe):
    cfg = load_recipe(recipe)
    assert cfg.method in ("sft", "dpo") and cfg.training.per_device_batch_size == 2
    assert cfg.training.gradient_accumulation_steps == 4
    if cfg.method == "dpo":
        assert cfg.lora.r == 8 and cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.dpo.beta == 0.1


def test_shipped_reward_model_recipe_validates():
    from alignscope.reward_model import load_rm_config

    cfg = load_rm_config(ROOT / "configs/recipes/reward-model.yaml")
    assert cfg.backbone == "all-minilm-l6-v2" and 0 < cfg.heldout_fraction < 1


def test_reference_recipes_match_the_study():
    sft, dpo = load_recipe(ROOT / "configs/recipes/sft.yaml"), load_recipe(ROOT / "configs/recipes/dpo.yaml")
    sftdpo = load_recipe(ROOT / "configs/recipes/sft-dpo.yaml")
    assert (sft.model, sft.lora, sft.training.epochs, sft.training.learning_rate, sft.training.max_length) == (
        "facebook/opt-350m", None, 2, 2e-5, 512)
    assert (dpo.training.epochs, dpo.training.learning_rate, dpo.lora.alpha, dpo.lora.dropout) == (1, 2e-5, 16, 0.05)
    assert sftdpo.model == sft.output_dir + "/model" and sftdpo.dpo.reference is None  # adapter-off SFT


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model = tiny_opt(root / "tiny-opt")
    write_hh(root / "data", "harmless-base", "train", hh_pairs(16))
    return root, model, DataConfig(source=str(root / "data"), subsets=["harmless-base"])


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_compact_lm_head_gives_the_same_training(tiny, method):
    root, model, data = tiny
    runs = []
    for compact in (False, True):
        cfg = TrainConfig(method=method, model=str(model), output_dir=str(root / f"{method}-compact-{compact}"),
                          data=data, lora=LoraSettings() if method == "dpo" else None,
                          training=TrainingSettings(max_steps=3, learning_rate=1e-2, per_device_batch_size=4,
                                                    gradient_accumulation_steps=1, precision="fp32",
                                                    logging_steps=1, compact_lm_head=compact))
        runs.append([x["loss"] for x in train(cfg).log_history if "loss" in x])
    assert len(runs[0]) == 3 and runs[0] == pytest.approx(runs[1], abs=1e-5)


def test_two_process_ddp_training(tiny):
    """DDP over gloo on the CPU: only rank 0 writes, both ranks share the work."""
    root, model, data = tiny
    recipe = root / "ddp.yaml"
    recipe.write_text(json.dumps({
        "method": "sft", "model": str(model), "output_dir": str(root / "ddp"),
        "data": {"source": data.source, "subsets": data.subsets},
        "training": {"epochs": 1, "learning_rate": 1e-2, "per_device_batch_size": 2,
                     "gradient_accumulation_steps": 1, "precision": "fp32", "logging_steps": 1}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ALIGNSCOPE_QUIET": "1"}
    torchrun = Path(sys.executable).parent / "torchrun"
    run = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "alignscope", "train", "sft", str(recipe)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    done = json.loads((root / "ddp" / "done.json").read_text())
    assert done["processes"] == 2 and done["global_step"] == 4  # 16 rows / (2 ranks x batch 2)
    assert (root / "ddp" / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_packaged_smollm2_converts_once_and_trains(hh_data, tmp_path):
    from alignscope.models import CONVERSION_MARKER, resolve_model

    folder = Path(resolve_model("smollm2-135m-instruct"))
    assert (folder / CONVERSION_MARKER).is_file() and (folder / "model.safetensors").is_file()
    assert resolve_model("smollm2-135m-instruct") == str(folder)  # cached
    cfg = TrainConfig(method="sft", model="smollm2-135m-instruct", output_dir=str(tmp_path / "sft"),
                      data=DataConfig(source=str(hh_data), subsets=["helpful-base"], split="test", limit=8),
                      training=TrainingSettings(max_steps=2, per_device_batch_size=2, gradient_accumulation_steps=2,
                                                learning_rate=1e-5, max_length=256, logging_steps=1))
    result = train(cfg)
    assert len([x for x in result.log_history if "loss" in x]) == 2
    tok = json.loads((result.model_dir / "tokenizer_config.json").read_text())
    assert tok.get("pad_token") == "<|endoftext|>"  # not its EOS, <|im_end|>
