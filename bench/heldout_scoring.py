"""Held-out scoring: the LM head on the positions from each batch's first reply token on
(`logits_to_keep`), against every position, side by side in one process on the same pairs.

  python bench/heldout_scoring.py                          # packaged SmolLM2-135M, local test split
  python bench/heldout_scoring.py --model gemma-3-270m --pairs 16

It scores what a DPO run scores after training: the policy (LoRA on) and the reference
(adapter off) on held-out HH-RLHF pairs, through the trainer's own eval collator, with the
shipped configs/recipes/dpo.yaml at the offline demo's max length. Each side runs twice and
the faster run counts; the two sides must give the same log-probabilities (to 1e-3 nats).

The last line is `speedup: N.NNx`: every position's seconds over ours.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import alignscope.heldout as heldout  # noqa: E402
from alignscope.cache import disabled_cache  # noqa: E402
from alignscope.train import build_trainer, dpo_dataset, heldout_logps, load_recipe, setup  # noqa: E402


def score(trainer) -> tuple[float, list]:
    start = time.perf_counter()
    # no log-prob cache: every run computes every row
    policy, _, _ = heldout_logps(trainer, "policy", disabled_cache())
    with trainer.accelerator.unwrap_model(trainer.model).disable_adapter():
        reference, _, _ = heldout_logps(trainer, "reference", disabled_cache())
    return time.perf_counter() - start, policy + reference


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
        every_position = lambda model: False  # noqa: E731  the fallback path: the whole sequence through the head
        times, values = {}, {}
        for side in ("every position", "ours", "every position", "ours"):
            original = heldout.takes_logits_to_keep
            if side == "every position":
                heldout.takes_logits_to_keep = every_position
            try:
                seconds, values[side] = score(trainer)
            finally:
                heldout.takes_logits_to_keep = original
            times[side] = min(times.get(side, float("inf")), seconds)
    worst = max(abs(a - b) for a, b in zip(sum(values["ours"], []), sum(values["every position"], [])))
    print(f"{args.model}: {len(trainer.eval_dataset)} held-out pairs, policy and reference, max length {args.max_length}")
    for side, seconds in times.items():
        print(f"  {side:>15}: {seconds:7.1f} s")
    print(f"  largest difference in a summed log-probability: {worst:.2e} nats")
    assert worst < 1e-3, "the two sides disagree"
    print(f"speedup: {times['every position'] / times['ours']:.2f}x")


if __name__ == "__main__":
    main()
