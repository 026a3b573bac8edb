"""Memory allocators side by side on the offline demo's own work: which keeps a CPU study fastest.

  python bench/allocators.py                       # every workload, every setup, 1 round
  python bench/allocators.py --workloads dpo sft --rounds 2

Setups (each a fresh process, since an allocator is chosen before Python starts):
  glibc          the system's malloc as it is (alignscope with ALIGNSCOPE_MALLOC=system)
  glibc-kept     glibc told to keep freed memory (alignscope.memory.keep_freed_memory: mallopt
                 M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GB, M_TOP_PAD 64 MB), what ALIGNSCOPE_MALLOC=keep does
  jemalloc       Debian's libjemalloc2 preloaded, never purging freed pages
                 (MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1)
  tcmalloc       Debian's libtcmalloc-minimal4 preloaded, never releasing (TCMALLOC_RELEASE_RATE=0)
Workloads (the demo's model and settings, a few repetitions each, the first one a warm-up):
  dpo    DPO steps of the demo's recipe (SmolLM2-135M, LoRA r8, 2 x 4 pairs, max length 384)
  sft    SFT steps of the demo's recipe (full fine-tune, 2 x 4 rows, max length 384)
  generate  greedy answers to 32 of the demo's prompts, 50 new tokens
  judge  Gemma-3-270M features of 24 of the reference study's answers (the distilled judge's backbone)

Rounds interleave the setups (their order rotates each round). Per workload and setup it prints
the CPU seconds (user + system) of a repetition, its minimum and median wall seconds, and its
minor page faults, each the median over the repetitions after the warm-up; then each setup's
wall and CPU time as a ratio to glibc's. Wall time alone swings several-fold on a shared VM:
read CPU seconds and faults first, and run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
LIB = Path("/usr/lib/x86_64-linux-gnu")
SETUPS = {
    "glibc": {"ALIGNSCOPE_MALLOC": "system"},
    "glibc-kept": {"ALIGNSCOPE_MALLOC": "keep"},
    "jemalloc": {"LD_PRELOAD": str(LIB / "libjemalloc.so.2"), "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"},
    "tcmalloc": {"LD_PRELOAD": str(LIB / "libtcmalloc_minimal.so.4"), "TCMALLOC_RELEASE_RATE": "0",
                 "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(2**40)},
}
WORKLOADS = ("dpo", "sft", "generate", "judge")
DATA = ROOT.parent / "shared/data/hh-rlhf"
REFERENCE = ROOT.parent / "shared/reference-study/responses"


def usage() -> tuple[float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime + r.ru_stime, r.ru_minflt


def report(rep: int, before: tuple) -> None:
    after = usage()
    print(json.dumps({"rep": rep, "wall": after[0] - before[0], "cpu": after[1] - before[1],
                      "faults": after[2] - before[2]}), flush=True)


# --------------------------------------------------------------------------- the workloads (child side)

def train_steps(method: str, reps: int) -> None:
    from transformers import TrainerCallback

    from alignscope.train import build_trainer, dpo_dataset, load_recipe, setup, sft_dataset

    class PerStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.before = usage()

        def on_step_end(self, args, state, control, **kwargs):
            report(state.global_step, self.before)

    recipe = "dpo.yaml" if method == "dpo" else "sft.yaml"
    with tempfile.TemporaryDirectory() as out:
        cfg = load_recipe(ROOT / "configs/recipes" / recipe, [
            "model=smollm2-135m-instruct", f"output_dir={out}", f"data.source={DATA}", "data.split=test",
            "data.subsets=[harmless-base,helpful-base]", f"data.limit={8 * reps}", "training.max_length=384",
            f"training.max_steps={reps}", "training.save_steps=100000", "heldout.pairs=0",
            "training.learning_rate=1e-4"])
        s = setup(cfg)
        as_dataset = dpo_dataset if method == "dpo" else sft_dataset
        trainer = build_trainer(cfg, s.model, s.tokenizer, as_dataset(s.loaded.pairs), s.ref_model, s.precision,
                                Path(out) / "checkpoints")
        trainer.add_callback(PerStep())
        trainer.train()


def demo_prompts(n: int) -> list[str]:
    from alignscope.evalset import EvalsetConfig, build_evalset

    evalset = build_evalset(EvalsetConfig(data=str(DATA), seed=100, n_harmful=50, n_helpful=50,
                                          keywords=["kill", "murder", "rape"]))
    items = evalset["harmful"] + evalset["helpful"]
    return [x["prompt"] for x in items][:n]


def generate(reps: int) -> None:
    from alignscope.generate import GenerateConfig, generate_answers
    from alignscope.models import load_causal_lm, load_tokenizer

    prompts = demo_prompts(32)
    model, resolved = load_causal_lm("smollm2-135m-instruct")
    tokenizer = load_tokenizer(resolved)
    for rep in range(reps):
        before = usage()
        generate_answers(model, tokenizer, prompts, GenerateConfig(max_new_tokens=50))
        report(rep, before)


def judge(reps: int) -> None:
    from alignscope.answers import load_rated_dir
    from alignscope.judges.train_judge import rows_of
    from alignscope.judges import BackboneFeatures

    rows = rows_of(load_rated_dir(REFERENCE))
    pick = list(range(0, len(rows.answers), max(1, len(rows.answers) // 24)))[:24]
    extractor = BackboneFeatures("gemma-3-270m", max_length=512)
    for rep in range(reps):
        before = usage()
        extractor.extract([rows.prompts[i] for i in pick], [rows.answers[i] for i in pick])
        report(rep, before)


def child(workload: str, reps: int) -> None:
    from alignscope.memory import keep_freed_memory

    print(json.dumps({"allocator": keep_freed_memory()}), flush=True)
    {"dpo": lambda: train_steps("dpo", reps), "sft": lambda: train_steps("sft", reps),
     "generate": lambda: generate(reps), "judge": lambda: judge(reps)}[workload]()


# --------------------------------------------------------------------------- the parent

def run_child(workload: str, setup: str, reps: int) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "ALIGNSCOPE_MALLOC")}
    env |= SETUPS[setup] | {"ALIGNSCOPE_QUIET": "1", "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", workload, "--reps", str(reps)], env=env,
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{workload} under {setup} failed:\n{out.stderr[-3000:]}")
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith('{"')]
    reps = [x for x in lines if "rep" in x]
    # each process's repetitions as they come: a run stopped early still says what it measured
    print(f"  {workload:8} {setup:10} {lines[0]['allocator']}: " + ", ".join(
        f"{x['wall']:.1f} s wall / {x['cpu']:.1f} s CPU / {x['faults']} faults" for x in reps), flush=True)
    return reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--setups", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--reps", type=int, default=4, help="repetitions per process, the first a warm-up")
    parser.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.reps)
    missing = [s for s in args.setups if "LD_PRELOAD" in SETUPS[s] and not Path(SETUPS[s]["LD_PRELOAD"]).exists()]
    if missing:
        sys.exit(f"missing libraries for {missing}: apt-get install libjemalloc2 libtcmalloc-minimal4")
    results: dict = {}
    for r in range(args.rounds):
        order = args.setups[r % len(args.setups):] + args.setups[:r % len(args.setups)]
        for workload in args.workloads:
            for setup in order:
                # the warm-up repetition (model caches, first allocations) is left out
                results.setdefault((workload, setup), []).extend(run_child(workload, setup, args.reps)[1:])
    print(f"\nper repetition, median after the warm-up ({args.rounds} round(s) x {args.reps - 1} repetitions)")
    print(f"{'workload':9} {'setup':11} {'CPU s':>7} {'wall min':>9} {'wall med':>9} {'faults':>10} "
          f"{'wall/glibc':>10} {'CPU/glibc':>9}")
    for workload in args.workloads:
        base = results.get((workload, "glibc"))
        for setup in args.setups:
            reps = results[workload, setup]
            cpu = statistics.median(x["cpu"] for x in reps)
            wall_min, wall_med = min(x["wall"] for x in reps), statistics.median(x["wall"] for x in reps)
            faults = statistics.median(x["faults"] for x in reps)
            ratios = ""
            if base:
                ratios = (f"{wall_med / statistics.median(x['wall'] for x in base):10.2f} "
                          f"{cpu / statistics.median(x['cpu'] for x in base):9.2f}")
            print(f"{workload:9} {setup:11} {cpu:7.1f} {wall_min:9.1f} {wall_med:9.1f} {faults:10.0f} {ratios}")


if __name__ == "__main__":
    main()
