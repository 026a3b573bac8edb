"""The checks bench/gpu_check.sh runs on a GPU, one per subcommand; each prints one result line last.

  python bench/gpu_checks.py train       # a bf16 SFT and DPO step on an OPT-350M-shaped model
  python bench/gpu_checks.py generate    # batched bf16 answers against fp32 answers, same model
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from shapes import SHARED, opt350m_shape  # noqa: E402

from alignscope.data import DataConfig  # noqa: E402
from alignscope.generate import GenerateConfig, generate_answers  # noqa: E402
from alignscope.models import load_causal_lm, load_tokenizer  # noqa: E402
from alignscope.train import LoraSettings, TrainConfig, TrainingSettings, train  # noqa: E402

WORK = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/alignscope-gpu-check"))
# GPU_CHECK_LAYERS=2 cuts the model for a smoke run of these scripts on a CPU (no figures then)
LAYERS = int(os.environ.get("GPU_CHECK_LAYERS", "0")) or None
CUDA = torch.cuda.is_available()
DATA = SHARED / "data" / "hh-rlhf"


def check_train() -> None:
    """One bf16 optimizer step of the study's SFT (full) and DPO (LoRA q/v) settings, 2 x 4 rows."""
    model = opt350m_shape(WORK / "opt-350m-shape", LAYERS)
    lines = []
    for method in ("sft", "dpo"):
        data = DataConfig(source=str(DATA), subsets=["helpful-base"], split="test", limit=16)
        cfg = TrainConfig(method=method, model=str(model), output_dir=str(WORK / f"{method}-bf16"), data=data,
                          lora=LoraSettings() if method == "dpo" else None,
                          training=TrainingSettings(max_steps=2, precision="bf16", logging_steps=1, max_length=512))
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
        started = time.time()
        log = train(cfg).log_history
        losses = [x["loss"] for x in log if "loss" in x]
        assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses))), losses
        peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if CUDA else ""
        lines.append(f"{method} bf16 losses {losses[0]:.3f} -> {losses[1]:.3f} in {time.time() - started:.0f} s{peak}")
    print("; ".join(lines))


def check_generate() -> None:
    """bf16 batching changes the order of sums inside each matmul: how many greedy answers still
    equal the fp32 ones token for token, on the study's 100 prompts."""
    import json

    model_dir = opt350m_shape(WORK / "opt-350m-shape", LAYERS)
    prompts = [p for f in ("harmful_prompts.json", "helpful_prompts.json")
               for p in json.loads((SHARED / "reference-study" / "prompts" / f).read_text())]
    model, tok = load_causal_lm(str(model_dir))[0], load_tokenizer(str(model_dir))
    model = model.cuda() if CUDA else model
    fp32 = generate_answers(model, tok, prompts, GenerateConfig(precision="fp32"))
    bf16 = generate_answers(model, tok, prompts, GenerateConfig(precision="bf16"))
    same = sum(a.token_ids == b.token_ids for a, b in zip(fp32, bf16))
    first = [next((i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids)) if x != y), None)
             for a, b in zip(fp32, bf16)]
    split = sorted(i for i in first if i is not None)
    print(f"bf16 vs fp32: {same}/{len(prompts)} answers identical; where they differ, the first differing token "
          f"is at median position {split[len(split) // 2] if split else '-'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("check", choices=["train", "generate"])
    {"train": check_train, "generate": check_generate}[parser.parse_args().check]()
