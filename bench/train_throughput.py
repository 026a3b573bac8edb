"""Training throughput: our recipes against the reference study's TRL settings,
side by side in one process, on the same model and the same HH-RLHF rows.

  python bench/train_throughput.py                      # packaged Gemma-3-270M, local test split
  python bench/train_throughput.py --model facebook/opt-350m --data hub

"Theirs" is the study's notebook in TRL 1.16 terms: SFT on whole chosen dialogues
(`text` rows), fp32, batch 2 x 4, max length 512; DPO with LoRA r8 on q/v, the
adapter-off model as reference, batch 2 x 4, beta 0.1, fp32. "Ours" is
configs/recipes/{sft,dpo}.yaml as shipped, with only the model, data and step
count overridden. Tokens are the real (unpadded) tokens of the sequences each
step trains on: both sides see the same rows, so the same tokens. The first
optimizer step of each run is a warm-up and is not timed.

The last line is `speedup: N.NNx`: ours over theirs, tokens per second over the
SFT and DPO steps together.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from alignscope.data import DataConfig, load_pairs  # noqa: E402
from alignscope.models import choose_precision, load_causal_lm, load_tokenizer, resolve_model  # noqa: E402
from alignscope.train import (LoraSettings, build_trainer, dpo_dataset, load_recipe, lora_config,  # noqa: E402
                              sft_dataset)
from alignscope.trl_patches import compact_lm_head  # noqa: E402


class PeakMemory:
    """Peak memory above the starting point: CUDA allocator peak, or sampled process RSS on CPU."""

    def __init__(self):
        self.cuda = torch.cuda.is_available()

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            import psutil

            self.proc, self.start, self.peak, self.stop = psutil.Process(), None, 0, False
            self.start = self.proc.memory_info().rss
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.05)

    def __exit__(self, *exc):
        if self.cuda:
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.start) / 2**20
        else:
            self.stop = True
            self.thread.join()
            self.peak_mb = (self.peak - self.start) / 2**20


def count_tokens(inputs: dict) -> int:
    if inputs.get("attention_mask") is not None:
        return int(inputs["attention_mask"].sum())
    return int(inputs["input_ids"].numel())  # padding-free: one row, no padding


def timed_train(trainer, warmup_steps: int = 1) -> dict:
    """Train, counting the tokens and seconds of every optimizer step after the warm-up.

    Tokens are counted at the model's forward with gradients on: exactly the micro-batches
    trained on (DPO's reference forward runs without gradients and is not counted twice)."""
    from transformers import TrainerCallback

    tokens = {"n": 0}

    def count(module, args, kwargs):
        if torch.is_grad_enabled():
            tokens["n"] += count_tokens(kwargs)

    handle = trainer.model.register_forward_pre_hook(count, with_kwargs=True)
    marks = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == warmup_steps:
                marks["t0"], marks["n0"] = time.perf_counter(), tokens["n"]

    trainer.add_callback(Clock())
    with PeakMemory() as mem:
        trainer.train()
    seconds = time.perf_counter() - marks["t0"]
    handle.remove()
    n = tokens["n"] - marks["n0"]
    return {"tokens": n, "seconds": seconds, "tokens_per_s": n / seconds, "peak_mb": mem.peak_mb}


def study_args(method: str, out: Path, steps: int, max_length: int):
    """The reference notebook's TrainingArguments, nothing else set (CPU needs use_cpu and no bf16)."""
    from trl import DPOConfig, SFTConfig

    common = dict(output_dir=str(out), per_device_train_batch_size=2, gradient_accumulation_steps=4,
                  learning_rate=2e-5, max_steps=steps, report_to="none", save_strategy="no",
                  use_cpu=not torch.cuda.is_available(), bf16=False, gradient_checkpointing=False,
                  dataloader_pin_memory=False, logging_steps=1000, disable_tqdm=True, seed=42, max_length=max_length)
    if method == "sft":
        return SFTConfig(**common)
    return DPOConfig(**common, beta=0.1)


def theirs(method, model_path, pairs, out, steps, max_length):
    from datasets import Dataset
    from trl import DPOTrainer, SFTTrainer

    model, _ = load_causal_lm(model_path)
    tok = load_tokenizer(model_path)
    tok.pad_token = tok.eos_token  # the study's setting
    args = study_args(method, out, steps, max_length)
    if method == "sft":
        data = Dataset.from_dict({"text": [p.chosen_dialogue for p in pairs]})
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    else:
        data = Dataset.from_dict({"chosen": [p.chosen_dialogue for p in pairs],
                                  "rejected": [p.prompt + p.rejected for p in pairs]})
        trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                             peft_config=lora_config(LoraSettings()))
    return timed_train(trainer)


def ours(method, model_path, pairs, out, steps, max_length):
    recipe = load_recipe(ROOT / "configs" / "recipes" / f"{method}.yaml", [
        f"model={model_path}", f"output_dir={out}", f"training.max_steps={steps}", "training.save_steps=100000",
        "training.logging_steps=1000", f"training.max_length={max_length}"])
    model, resolved = load_causal_lm(recipe.model)
    tok = load_tokenizer(resolved)

    data = sft_dataset(pairs) if method == "sft" else dpo_dataset(pairs)
    os.environ["ALIGNSCOPE_QUIET"] = "1"
    with compact_lm_head(recipe.training.compact_lm_head):
        trainer = build_trainer(recipe, model, tok, data, precision=choose_precision(recipe.training.precision),
                                checkpoints=out)
        return timed_train(trainer)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hh-rlhf"))
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per run, the first untimed")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--out", default="/tmp/alignscope-bench-train")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    model_path = resolve_model(args.model)
    rows = args.steps * 2 * 4  # batch 2 x accumulation 4 per optimizer step
    pairs = load_pairs(DataConfig(source=args.data, subsets=["helpful-base", "harmless-base"], split="test",
                                  drop_identical=True, limit=rows // 2 + 1)).pairs[:rows]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"model {args.model}; {len(pairs)} HH-RLHF pairs; {args.steps} optimizer steps of 2 x 4; {device}")
    results = {}
    for method in ("sft", "dpo"):
        for side, run in (("theirs", theirs), ("ours", ours)):
            results[method, side] = run(method, model_path, pairs, Path(args.out) / f"{side}-{method}",
                                        args.steps, args.max_length)
            r = results[method, side]
            print(f"{method:>3} {side:>6}: {r['tokens']:6d} tokens in {r['seconds']:7.1f} s = "
                  f"{r['tokens_per_s']:7.1f} tokens/s, peak memory +{r['peak_mb']:7.0f} MB", flush=True)
            gc.collect()
        ratio = results[method, "ours"]["tokens_per_s"] / results[method, "theirs"]["tokens_per_s"]
        print(f"{method} speedup: {ratio:.2f}x")
    total = {side: sum(results[m, side]["tokens"] for m in ("sft", "dpo")) /
             sum(results[m, side]["seconds"] for m in ("sft", "dpo")) for side in ("theirs", "ours")}
    print(f"speedup: {total['ours'] / total['theirs']:.2f}x")


if __name__ == "__main__":
    main()
