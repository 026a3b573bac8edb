"""DPO steps: each pair's prompt run once for both replies (training.shared_prompt) against TRL's
two rows a pair, interleaved in one process on the same batches and the same weights.

  python bench/dpo_step.py                         # packaged SmolLM2-135M, the offline demo's DPO recipe
  python bench/dpo_step.py --rounds 2 --train-steps 0

A step is what one optimizer step of the demo computes: forward and backward of the loss over
gradient_accumulation_steps micro-batches of 2 pairs (policy with LoRA, reference with the adapter
off), max length 384. No optimizer runs between them, so both sides see the same weights; they must
give the same loss (to 1e-5). Per step: CPU seconds (user + sys), wall, minor page faults.

With --train-steps N, N real optimizer steps are then trained each way from the same start, and
the largest difference between the two LoRA weight sets is printed.

The last line is `speedup: N.NNx`: the two-row path's minimum wall over the shared prompt's.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from alignscope.train import build_trainer, dpo_dataset, load_recipe, setup  # noqa: E402
from alignscope.trl_patches import compact_lm_head  # noqa: E402


def recipe(model: str, data: str, out: str, extra=()):
    return load_recipe(ROOT / "configs/recipes/dpo.yaml", [
        f"model={model}", f"output_dir={out}", f"data.source={data}", "data.split=test",
        # configs/offline-demo.yaml's dpo variant
        "data.subsets=[harmless-base,helpful-base]", "data.drop_identical=true", "data.limit=64",
        "training.max_length=384", "training.learning_rate=2e-4", "heldout.pairs=0", *extra])


def usage():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), u.ru_utime + u.ru_stime, u.ru_minflt


def one_step(trainer, batches, shared: bool) -> tuple[float, tuple]:
    from trl import DPOTrainer

    compute = trainer.compute_loss if shared else lambda m, b: DPOTrainer.compute_loss(trainer, m, b)
    trainer.model.train()
    trainer.model.zero_grad()
    before, total = usage(), 0.0
    for batch in batches:
        loss = compute(trainer.model, batch) / len(batches)
        loss.backward()
        total += loss.item()
    after = usage()
    return total, tuple(a - b for a, b in zip(after, before))


def lora_weights(trainer) -> dict:
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/hh-rlhf"))
    parser.add_argument("--rounds", type=int, default=3, help="steps each way, alternating")
    parser.add_argument("--train-steps", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out, compact_lm_head(True):
        cfg = recipe(args.model, args.data, out)
        s = setup(cfg)
        trainer = build_trainer(cfg, s.model, s.tokenizer, dpo_dataset(s.loaded.pairs), s.ref_model, s.precision,
                                Path(out) / "checkpoints")
        # a step's worth of micro-batches a round, as the demo's first steps draw them
        loader = iter(trainer.get_train_dataloader())
        accumulate = cfg.training.gradient_accumulation_steps
        steps = [[trainer._prepare_inputs(next(loader)) for _ in range(accumulate)] for _ in range(args.rounds)]
        tokens = [int(sum(b["attention_mask"].sum() for b in step)) for step in steps]
        rows = {"two rows": [], "shared prompt": []}
        for i, batches in enumerate(steps):
            for side in ("two rows", "shared prompt") if i % 2 == 0 else ("shared prompt", "two rows"):
                loss, (wall, cpu, faults) = one_step(trainer, batches, side == "shared prompt")
                rows[side].append((loss, wall, cpu, faults))
                print(f"step {i} ({tokens[i]} tokens in TRL's rows) {side:>13}: loss {loss:.7f}  "
                      f"CPU {cpu:6.1f} s  wall {wall:6.1f} s  minor faults {faults}", flush=True)
        worst = max(abs(a[0] - b[0]) for a, b in zip(rows["two rows"], rows["shared prompt"]))
        print(f"{args.model}: {args.rounds} steps of {accumulate} x {cfg.training.per_device_batch_size} pairs, "
              f"max length {cfg.training.max_length}")
        for side, r in rows.items():
            walls = [x[1] for x in r]
            print(f"  {side:>13}: wall min {min(walls):.1f} s, median {statistics.median(walls):.1f} s; "
                  f"CPU median {statistics.median(x[2] for x in r):.1f} s; "
                  f"minor faults median {statistics.median(x[3] for x in r):.0f}")
        print(f"  largest loss difference: {worst:.2e}")
        assert worst < 1e-5, "the two sides disagree"
        if args.train_steps:
            trained = {}
            for shared in (False, True):
                cfg_n = recipe(args.model, args.data, f"{out}/{shared}", [f"training.max_steps={args.train_steps}",
                                                                          f"training.shared_prompt={shared}",
                                                                          "training.logging_steps=1"])
                s = setup(cfg_n)
                t = build_trainer(cfg_n, s.model, s.tokenizer, dpo_dataset(s.loaded.pairs), s.ref_model,
                                  s.precision, Path(out) / f"ckpt-{shared}")
                start = time.perf_counter()
                t.train()
                trained[shared] = lora_weights(t)
                print(f"  {args.train_steps} optimizer steps, shared_prompt={shared}: {time.perf_counter() - start:.1f} s, "
                      f"losses {[round(h['loss'], 6) for h in t.state.log_history if 'loss' in h]}", flush=True)
            diff = max((trained[True][n] - trained[False][n]).abs().max().item() for n in trained[False])
            scale = max(w.abs().max().item() for w in trained[False].values())
            print(f"  LoRA weights after {args.train_steps} steps: max abs difference {diff:.2e} "
                  f"(largest weight {scale:.2e})")
    medians = {side: min(x[1] for x in r) for side, r in rows.items()}
    print(f"CPU ratio (median): {statistics.median(x[2] for x in rows['two rows']) / statistics.median(x[2] for x in rows['shared prompt']):.2f}x")
    print(f"speedup: {medians['two rows'] / medians['shared prompt']:.2f}x")


if __name__ == "__main__":
    main()
