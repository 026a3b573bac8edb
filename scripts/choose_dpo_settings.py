"""Choose a study's DPO settings on a validation block of pairs, never on its evaluation prompts.

Each candidate (a set of recipe overrides on top of the study's own for one variant) is trained
as the study would train it, then scored on validation pairs: the `--validation` pairs just
before the held-out pairs the study reports (`heldout.skip`), sharing no dialogue with the
training rows or the evaluation set. Prints each candidate's implicit-reward accuracy, its Wilson
interval, mean margin and training time, and writes them to OUT/validation.json.

  python scripts/choose_dpo_settings.py configs/offline-demo.yaml dpo --out runs/dpo-validation \
      --candidate "lr2e-4=training.learning_rate=2e-4" \
      --candidate "lr1e-3=training.learning_rate=1e-3 lora.target_modules=[q_proj,k_proj,v_proj,o_proj]"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import time
from pathlib import Path

from alignscope.evalset import build_evalset, write_evalset
from alignscope.io import atomic_write_json, read_json
from alignscope.study_config import as_override, load_study, resolve_path
from alignscope.train import load_recipe, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("variant")
    ap.add_argument("--out", required=True)
    ap.add_argument("--candidate", action="append", required=True, help="NAME=key=value [key=value ...]")
    ap.add_argument("--validation", type=int, default=120, help="validation pairs (shared among subsets)")
    ap.add_argument("--set", action="append", default=[], help="study override, e.g. data=../shared/data/hh-rlhf")
    args = ap.parse_args()

    cfg = load_study(args.config, args.set)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    evalset = out / "evalset.json"
    if not evalset.is_file():
        write_evalset(build_evalset(dataclasses.replace(cfg.evalset, data=cfg.data)), evalset)
    spec = cfg.train[args.variant]
    model = cfg.models[0].model
    study = [as_override(k, v) for k, v in spec.set.items()]
    reported = load_recipe(resolve_path(spec.recipe, Path(args.config).parent), study).heldout.pairs
    results = read_json(out / "validation.json") if (out / "validation.json").is_file() else {}
    for candidate in args.candidate:
        name, _, overrides = candidate.partition("=")
        recipe = load_recipe(resolve_path(spec.recipe, Path(args.config).parent), study + shlex.split(overrides) + [
            f"model={model}", f"output_dir={out / name}", f"data.source={cfg.data}",
            f"data.exclude_prompts_of={evalset}", f"heldout.pairs={args.validation}", f"heldout.skip={reported}"])
        started = time.time()
        train(recipe)
        done = read_json(out / name / "done.json")
        d = done["heldout"]["dpo"]
        results[name] = {"overrides": overrides, "steps": done["global_step"], "seconds": done["seconds"],
                         "wall_seconds": round(time.time() - started), "validation": d,
                         "validation_ids": read_json(out / name / "heldout.json")["ids"]}
        atomic_write_json(out / "validation.json", results)
        print(f"{name}: {d['correct']}/{d['pairs']} = {d['accuracy']:.3f} [{d['accuracy_ci'][0]:.3f}, "
              f"{d['accuracy_ci'][1]:.3f}], margin {d['margin']:+.3f} nats, {done['seconds']:.0f} s", flush=True)
    print(json.dumps({k: {"accuracy": v["validation"]["accuracy"], "ci": v["validation"]["accuracy_ci"],
                          "margin": v["validation"]["margin"], "seconds": v["seconds"]} for k, v in results.items()},
                     indent=1))


if __name__ == "__main__":
    main()
