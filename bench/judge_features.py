"""Distilled-judge features: each dialogue once with its answers continued from its KV cache,
the LM head on answer positions only, against every (dialogue, answer) through the backbone
whole, side by side in one process on the reference study's rated answers.

  python bench/judge_features.py                           # Gemma-3-270M, 20 prompts x 4 models
  python bench/judge_features.py --prompts 100 --save /tmp/features.npz

Each side runs `--repeats` times, interleaved; the fastest run counts. It prints each side's
seconds, CPU seconds and minor page faults, the max abs difference of every feature array, and
of the ratings of ridge heads fitted (as train-judge does, on all rows) to the whole pass's
features. The last line is `speedup: N.NNx`: the whole pass's seconds over ours.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from alignscope.answers import load_rated_dir  # noqa: E402
from alignscope.judges.train_judge import DEFAULT_ALPHAS, fit_heads, predict, rows_of  # noqa: E402
from alignscope.judges import FEATURE_SETS, BackboneFeatures, feature_set  # noqa: E402


def usage() -> tuple[float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime + r.ru_stime, r.ru_minflt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="gemma-3-270m")
    parser.add_argument("--ratings", default=str(ROOT.parent / "shared/reference-study/responses"))
    parser.add_argument("--prompts", type=int, default=20, help="prompts, half of them per category")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--save", help="an .npz for the features of ours (and the rows' ratings, models, categories)")
    args = parser.parse_args()
    rows = rows_of(load_rated_dir(args.ratings))
    keep = np.array([int(p.split("/")[1]) < args.prompts // 2 for p in rows.prompt_id])
    for name in ("ratings", "model", "category", "prompt_id"):
        setattr(rows, name, getattr(rows, name)[keep])
    rows.prompts = [p for p, k in zip(rows.prompts, keep) if k]
    rows.answers = [a for a, k in zip(rows.answers, keep) if k]
    extractor = BackboneFeatures(args.backbone, max_length=args.max_length)
    print(f"{len(rows.answers)} answers to {len(set(rows.prompts))} prompts, {args.backbone}, "
          f"max_length {args.max_length}")
    runs, features = {"whole": [], "ours": []}, {}
    for _ in range(args.repeats):
        for side in ("whole", "ours"):
            start, cpu, faults = usage()
            features[side] = extractor.extract(rows.prompts, rows.answers, share_dialogue=side == "ours")
            end, cpu_end, faults_end = usage()
            runs[side].append((end - start, cpu_end - cpu, faults_end - faults))
            print(f"{side:>5}: {end - start:7.1f} s  cpu {cpu_end - cpu:7.1f} s  minor faults {faults_end - faults}")
    best = {side: min(r) for side, r in runs.items()}
    for side, (wall, cpu, faults) in best.items():
        print(f"{side:>5} best: {wall:.1f} s, cpu {cpu:.1f} s, {faults} minor page faults")
    for k in features["whole"]:
        print(f"max abs difference {k}: {np.abs(features['whole'][k] - features['ours'][k]).max():.3g}")
    sets = {side: {(0, name): feature_set(f, name, extractor.layers) for name in FEATURE_SETS}
            for side, f in features.items()}
    everything = np.ones(len(rows.ratings), dtype=bool)
    heads = fit_heads(sets["whole"], rows, everything, rows.model, DEFAULT_ALPHAS)
    ratings = {side: predict(heads, s, rows, everything) for side, s in sets.items()}
    print(f"max abs difference of ratings: {np.abs(ratings['whole'] - ratings['ours']).max():.3g} "
          f"(ratings span {np.ptp(ratings['whole']):.2f})")
    if args.save:
        np.savez(args.save, **features["ours"], ratings=rows.ratings, model=rows.model, category=rows.category,
                 prompt_id=rows.prompt_id, layers=extractor.layers)
    print(f"speedup: {best['whole'][0] / best['ours'][0]:.2f}x (cpu {best['whole'][1] / best['ours'][1]:.2f}x)")


if __name__ == "__main__":
    main()
