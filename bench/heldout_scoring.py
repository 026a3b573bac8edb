"""Held-out scoring: each DPO pair's prompt run once for both replies (alignscope.shared_prompt)
against TRL's two rows a pair (the LM head on the reply positions only on both sides), side by
side in one process on the same pairs.

  python bench/heldout_scoring.py                          # packaged SmolLM2-135M, local test split
  python bench/heldout_scoring.py --model gemma-3-270m --pairs 16

It scores what a DPO run scores after training: the policy (LoRA on) and the reference
(adapter off) on held-out HH-RLHF pairs, through the trainer's own eval collator, with the
shipped configs/recipes/dpo.yaml at the offline demo's max length. Sides alternate, each runs
twice; the faster run counts, and the CPU seconds (user + sys) of both runs are printed. The two
sides must give the same log-probabilities to float rounding (1e-3 nats: fp32 sums of ~200 nats over
30 layers differ by ~1e-4 when attention runs over other shapes; in float64 the per-token values are
identical).

The last line is `speedup: N.NNx`: the two-row path's seconds over the shared prompt's.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import alignscope.heldout as heldout  # noqa: E402
from alignscope.cache import disabled_cache  # noqa: E402
from alignscope.train import build_trainer, dpo_dataset, heldout_logps, load_recipe, setup  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def score(trainer) -> tuple[float, float, list]:
    start, cpu = time.perf_counter(), cpu_seconds()
    # no log-prob cache: every run computes every row
    policy, _, _ = heldout_logps(trainer, "policy", disabled_cache())
    with trainer.accelerator.unwrap_model(trainer.model).disable_adapter():
        reference, _, _ = heldout_logps(trainer, "reference", disabled_cache())
    return time.perf_counter() - start, cpu_seconds() - cpu, policy + reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/hh-rlhf"))
    parser.add_argument("--pairs", type=int, default=32, help="held-out pairs, shared between the subsets")
    parser.add_argument("--max-length", type=int, default=384)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cfg = load_recipe(ROOT / "configs/recipes/dpo.yaml", [
            f"model={args.model}", f"output_dir={out}", f"data.source={args.data}", "data.split=test",
            # the offline demo's subsets and length
            "data.subsets=[harmless-base,helpful-base]", "data.limit=4", f"training.max_length={args.max_length}", f"heldout.pairs={args.pairs}"])
        s = setup(cfg)
        trainer = build_trainer(cfg, s.model, s.tokenizer, dpo_dataset(s.loaded.pairs), s.ref_model, s.precision,
                                Path(out) / "checkpoints", dpo_dataset(s.heldout))
        two_rows = lambda model, batch: None  # noqa: E731  the shared path declines: today's two-row path
        times, cpu, values = {}, {}, {}
        for side in ("two rows", "shared prompt", "two rows", "shared prompt"):
            original = heldout.completion_logps
            if side == "two rows":
                heldout.completion_logps = two_rows
            try:
                seconds, cpu_s, values[side] = score(trainer)
            finally:
                heldout.completion_logps = original
            times[side] = min(times.get(side, float("inf")), seconds)
            cpu.setdefault(side, []).append(cpu_s)
    worst = max(abs(a - b) for a, b in zip(sum(values["shared prompt"], []), sum(values["two rows"], [])))
    print(f"{args.model}: {len(trainer.eval_dataset)} held-out pairs, policy and reference, max length {args.max_length}")
    for side, seconds in times.items():
        print(f"  {side:>15}: min wall {seconds:7.1f} s, CPU {' / '.join(f'{c:.1f}' for c in cpu[side])} s")
    print(f"  largest difference in a summed log-probability: {worst:.2e} nats")
    assert worst < 1e-3, "the two sides disagree"
    print(f"CPU ratio: {min(cpu['two rows']) / min(cpu['shared prompt']):.2f}x")
    print(f"speedup: {times['two rows'] / times['shared prompt']:.2f}x")


if __name__ == "__main__":
    main()
