"""Held-out scoring with the log-prob cache, side by side in one process on the same pairs:

- original: the whole eval set through `dataloader_logps`, as before the cache;
- cold: `heldout_logps` with an empty cache (every row computed, plus the lookup's cost);
- reference warm: the reference's rows cached, the policy's computed (a second DPO run from the
  same starting model: another learning rate, a validation candidate);
- all warm: every row cached (a run killed after its save and resumed, or rerun).

  python bench/heldout_cache.py                 # packaged SmolLM2-135M, local test split, 16 pairs

It scores what a DPO run scores after training (policy: LoRA on; reference: adapter off) through the
trainer's own eval collator, with configs/recipes/dpo.yaml at the offline demo's max length. Each side
runs twice, interleaved; CPU seconds (user + sys) and the faster wall time count. Every side must give
the original's log-probabilities exactly. The last line is `speedup (reference warm): N.NNx`.
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

from alignscope.cache import ResultCache, disabled_cache  # noqa: E402
from alignscope.train import build_trainer, dataloader_logps, dpo_dataset, heldout_logps, load_recipe, setup  # noqa: E402


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def original(trainer, model=None):
    from torch.utils.data import DataLoader

    loader = DataLoader(trainer.eval_dataset, batch_size=trainer.args.per_device_eval_batch_size,
                        collate_fn=trainer.data_collator, shuffle=False)
    return dataloader_logps(trainer, model or trainer.model, trainer.accelerator.prepare(loader))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/hh-rlhf"))
    parser.add_argument("--pairs", type=int, default=16, help="held-out pairs, shared between the subsets")
    parser.add_argument("--max-length", type=int, default=384)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cfg = load_recipe(ROOT / "configs/recipes/dpo.yaml", [
            f"model={args.model}", f"output_dir={out}", f"data.source={args.data}", "data.split=test",
            "data.subsets=[harmless-base,helpful-base]", "data.limit=4", f"training.max_length={args.max_length}",
            f"heldout.pairs={args.pairs}"])
        s = setup(cfg)
        trainer = build_trainer(cfg, s.model, s.tokenizer, dpo_dataset(s.loaded.pairs), s.ref_model, s.precision,
                                Path(out) / "checkpoints", dpo_dataset(s.heldout))
        base = trainer.accelerator.unwrap_model(trainer.model)
        warm = ResultCache(Path(out) / "logps")
        runs = iter(range(1000))

        def score(side: str):
            n = next(runs)
            if side == "original":
                policy, _ = original(trainer)
                with base.disable_adapter():
                    reference, _ = original(trainer)
                return policy, reference
            cache = disabled_cache() if side == "cold" else warm
            # a policy fingerprint never seen before, unless every row is to be found
            policy, _, _ = heldout_logps(trainer, "policy" if side == "all warm" else f"policy-{n}", cache)
            with base.disable_adapter():
                reference, _, _ = heldout_logps(trainer, "reference", cache)
            return policy, reference

        score("all warm")  # fills the cache: the reference's rows, and the policy's under "policy"
        cpu, wall, values = {}, {}, {}
        for side in ("original", "cold", "reference warm", "all warm") * 2:
            c, w = cpu_seconds(), time.perf_counter()
            values[side] = score(side)
            c, w = cpu_seconds() - c, time.perf_counter() - w
            cpu[side], wall[side] = cpu.get(side, 0) + c / 2, min(wall.get(side, float("inf")), w)
    flat = {side: [x for part in v for pair in part for x in pair] for side, v in values.items()}
    worst = max(max(abs(a - b) for a, b in zip(flat[side], flat["original"])) for side in flat)
    print(f"{args.model}: {len(trainer.eval_dataset)} held-out pairs, policy and reference, max length {args.max_length}")
    for side in cpu:
        print(f"  {side:>15}: {cpu[side]:7.1f} CPU s (mean of 2), {wall[side]:7.1f} s wall (min of 2)")
    print(f"  largest difference from the original in a summed log-probability: {worst:.2e} nats")
    assert worst == 0, "a side disagrees with the original"
    print(f"speedup (reference warm): {cpu['original'] / cpu['reference warm']:.2f}x")


if __name__ == "__main__":
    main()
