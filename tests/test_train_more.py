"""Training beyond the tiny core loop: shipped recipes, the CPU LM-head compaction,
several processes, and a packaged real model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignscope.data import DataConfig
from alignscope.heldout import HeldoutSettings
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
    from alignscope.judges.reward_model import load_rm_config

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


def test_two_process_ddp_training_matches_one_process_on_the_same_global_batch(tiny):
    """DDP over gloo on the CPU: 2 ranks x 2 rows make the same global batch as 1 process x 4
    rows (one seeded order, sharded by batch), and the loss averages tokens across ranks, so
    every logged loss is the same; only rank 0 writes, and the trained weights are the same too."""
    from safetensors.torch import load_file

    root, _, _ = tiny
    # no dropout: each rank draws its own masks, so with dropout on the two runs differ by chance
    model = tiny_opt(root / "tiny-opt-no-dropout", dropout=0.0)
    replies = [" Sure.", " Sure, here is how, step by step.", " No.", " Here you go: first, gather what you need."]
    rows = [{"chosen": f"\n\nHuman: How do I do task {i}?\n\nAssistant:{replies[i % 4]}",
             "rejected": f"\n\nHuman: How do I do task {i}?\n\nAssistant: Go away."} for i in range(16)]
    write_hh(root / "ddp-data", "harmless-base", "train", rows)  # replies of different lengths: token means differ
    runs = {}
    for procs, batch in ((2, 2), (1, 4)):
        recipe = root / f"ddp-{procs}.yaml"
        recipe.write_text(json.dumps({
            "method": "sft", "model": str(model), "output_dir": str(root / f"ddp-{procs}"),
            "data": {"source": str(root / "ddp-data"), "subsets": ["harmless-base"]},
            "training": {"epochs": 1, "learning_rate": 1e-2, "per_device_batch_size": batch,
                         "gradient_accumulation_steps": 1, "precision": "fp32", "logging_steps": 1,
                         "group_by_length": False}}))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ALIGNSCOPE_QUIET": "1"}
        torchrun = Path(sys.executable).parent / "torchrun"
        run = subprocess.run([str(torchrun), "--nproc_per_node", str(procs), "-m", "alignscope", "train", "sft",
                              str(recipe)], env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        runs[procs] = root / f"ddp-{procs}"
    done = json.loads((runs[2] / "done.json").read_text())
    assert done["processes"] == 2 and done["global_step"] == 4  # 16 rows / (2 ranks x batch 2)
    losses = {p: [x["loss"] for x in json.loads((d / "train_log.json").read_text()) if "loss" in x]
              for p, d in runs.items()}
    assert len(losses[2]) == 4 and losses[2] == pytest.approx(losses[1], abs=1e-5), losses
    a, b = (load_file(d / "model" / "model.safetensors") for d in runs.values())
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4  # Adam amplifies last-bit sum differences


@pytest.mark.slow
def test_packaged_smollm2_converts_once_and_trains(hh_data, tmp_path):
    from alignscope.models import CONVERSION_MARKER, resolve_model

    folder = Path(resolve_model("smollm2-135m-instruct"))
    assert (folder / CONVERSION_MARKER).is_file() and (folder / "model.safetensors").is_file()
    assert resolve_model("smollm2-135m-instruct") == str(folder)  # cached
    cfg = TrainConfig(method="sft", model="smollm2-135m-instruct", output_dir=str(tmp_path / "sft"),
                      data=DataConfig(source=str(hh_data), subsets=["helpful-base"], split="test", limit=8),
                      training=TrainingSettings(max_steps=2, per_device_batch_size=2, gradient_accumulation_steps=2,
                                                learning_rate=1e-5, max_length=256, logging_steps=1),
                      heldout=HeldoutSettings(pairs=0))  # scoring 120 real pairs twice would triple its time
    result = train(cfg)
    assert len([x for x in result.log_history if "loss" in x]) == 2
    tok = json.loads((result.model_dir / "tokenizer_config.json").read_text())
    assert tok.get("pad_token") == "<|endoftext|>"  # not its EOS, <|im_end|>


def test_every_declared_drop_probability_is_zeroed_whatever_the_architecture_calls_it():
    """OPT's `dropout` (applied functionally), GPT-2's `*_pdrop`, a nested mapping (as MPT's
    attn_config once was) and a composite model's text sub-config: DPO must score policy and
    reference without any of them."""
    from transformers import GPT2Config, Gemma3Config, OPTConfig

    from alignscope.models import disable_dropout_in_config

    opt = OPTConfig(dropout=0.1, attention_dropout=0.1, layerdrop=0.2)
    assert sorted(disable_dropout_in_config(opt)) == ["attention_dropout", "dropout", "layerdrop"]
    assert (opt.dropout, opt.attention_dropout, opt.layerdrop) == (0, 0, 0)
    gpt2 = GPT2Config()
    assert {"resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout"} <= set(disable_dropout_in_config(gpt2))
    assert gpt2.resid_pdrop == gpt2.embd_pdrop == gpt2.attn_pdrop == gpt2.summary_first_dropout == 0
    nested = OPTConfig(dropout=0.0, attention_dropout=0.0, attn_config={"attn_pdrop": 0.1, "alibi": True})
    assert disable_dropout_in_config(nested) == ["attn_config.attn_pdrop"]
    assert nested.attn_config == {"attn_pdrop": 0.0, "alibi": True}
    gemma = Gemma3Config(text_config={"attention_dropout": 0.1})
    assert "text_config.attention_dropout" in disable_dropout_in_config(gemma)
    assert gemma.text_config.attention_dropout == 0
    assert disable_dropout_in_config(gemma) == []  # nothing left to switch off


def test_a_dpo_reference_from_another_repo_loads_at_its_own_revision_not_the_policys():
    from alignscope.train import DPOSettings, reference_revision

    policy_only = TrainConfig(method="dpo", model="facebook/opt-350m", output_dir="x", revision="refs/pr/24")
    assert reference_revision(policy_only) == "refs/pr/24"  # the reference is the policy's start
    other = TrainConfig(method="dpo", model="facebook/opt-350m", output_dir="x", revision="refs/pr/24",
                        dpo=DPOSettings(reference="facebook/opt-125m", reference_revision="refs/pr/35"))
    assert reference_revision(other) == "refs/pr/35"
    assert reference_revision(TrainConfig(method="dpo", model="m", output_dir="x", revision="r",
                                          dpo=DPOSettings(reference="other/model"))) is None


def test_report_to_reaches_trls_arguments_and_tensorboard_logs_land_under_output_dir(tmp_path):
    from alignscope.train import trl_args, training_logs

    cfg = TrainConfig(method="dpo", model="m", output_dir=str(tmp_path / "run"),
                      training=TrainingSettings(report_to="tensorboard"))
    assert trl_args(cfg, "fp32", tmp_path / "run" / "checkpoints").report_to == ["tensorboard"]
    assert trl_args(TrainConfig(method="sft", model="m", output_dir="x"), "fp32", tmp_path).report_to == []
    before = os.environ.get("TENSORBOARD_LOGGING_DIR")
    with training_logs(cfg.training, tmp_path / "run"):
        assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "run" / "logs")  # not under checkpoints/
    assert os.environ.get("TENSORBOARD_LOGGING_DIR") == before
