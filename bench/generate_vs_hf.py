"""Greedy generation: transformers' own batched `generate` against ours, side by side in one
process, on the offline demo's evaluation set.

  python bench/generate_vs_hf.py                 # the demo's 100 HH prompts, SmolLM2-135M-Instruct
  python bench/generate_vs_hf.py --xstest        # and XSTest's 100 beside them
  python bench/generate_vs_hf.py --only ours     # ours alone, with a time per phase (for profiling)

The prompts are what the study's evalset stage builds from configs/offline-demo.yaml
(`evalset:`, data ../shared/data/hh-rlhf); the decoding settings are its `generate:`
(greedy, fp32, 50 new tokens, an hh prompt's answer cut at "\\n\\nHuman:").

transformers' side is the path lm-eval's HF backend takes: prompts sorted by length
(longest first), the tokenizer left-padding, 16 prompts a `model.generate` call with a
GenerationConfig made here from nothing (so no defaults of the model's own ride along):
do_sample=False, max_new_tokens 50, use_cache=True, eos_token_id = our EOS set,
pad_token_id = our pad, and stop_strings=["\\n\\nHuman:"] with the tokenizer (the batch
ends once every row has hit EOS or the stop string, as ours stops a row). No logits
processors run (the script prints the list, which must be empty); both sides use the
model as loaded, with the same attention implementation (sdpa). Ours is
`generate_answers` with the demo's GenerateConfig.

Each side runs `--rounds` times, the order alternating; printed per side: the fastest
wall time, CPU seconds (user+sys, of that run) and minor page faults (ru_minflt) of
that run; then how many answers are identical token for token, where transformers'
tokens are cut where ours stop an answer (EOS, the stop string, or the length limit, by
the same rule), and the ratio of transformers' wall time to ours.
The last line is `ratio HF/ours: N.NNx`.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import alignscope.generate as generate  # noqa: E402
from alignscope.evalset import build_evalset  # noqa: E402
from alignscope.generate import generate_answers, prompt_stops  # noqa: E402
from alignscope.models import eos_token_ids, load_causal_lm, load_tokenizer  # noqa: E402
from alignscope.study_config import load_study  # noqa: E402


def demo_prompts(data: str, xstest: bool):
    cfg = load_study(ROOT / "configs/offline-demo.yaml", [f"data={data}"])
    evalset = build_evalset(dataclasses.replace(cfg.evalset, data=cfg.data))
    prompts = [item["prompt"] for cat in ("harmful", "helpful") for item in evalset[cat]]
    if xstest:
        prompts += [item["prompt"] for suite in evalset.get("suites", {}).values() for item in suite["items"]]
    return prompts, cfg.generate


def hf_config(model, tok, prompts, cfg):
    from transformers import GenerationConfig

    stops = sorted({s for p in prompts for s in prompt_stops(cfg, p)})
    return GenerationConfig(do_sample=False, max_new_tokens=cfg.max_new_tokens, use_cache=True,
                            eos_token_id=sorted(eos_token_ids(model, tok)), pad_token_id=tok.pad_token_id,
                            stop_strings=stops or None)


def hf_generate(model, tok, prompts, cfg, batch_size: int) -> list[list[int]]:
    gen = hf_config(model, tok, prompts, cfg)
    tok.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(tok(prompts[i]).input_ids), reverse=True)
    out: list[list[int]] = [[] for _ in prompts]
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            x = tok([prompts[i] for i in rows], return_tensors="pt", padding=True)
            ids = model.generate(**x, generation_config=gen, tokenizer=tok)
            for r, i in enumerate(rows):
                out[i] = ids[r, x.input_ids.shape[1]:].tolist()
    return out


def cut_as_ours(tok, prompt: str, ids: list[int], eos: set, cfg) -> list[int]:
    """transformers' tokens up to where our rule would have stopped the answer."""
    for n in range(1, len(ids) + 1):
        if generate._finish(tok, prompt, ids[:n], eos, prompt_stops(cfg, prompt), cfg.max_new_tokens):
            return ids[:n]
    return ids


def measured(fn):
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    result = fn()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return result, {"wall": wall, "cpu": cpu, "minflt": after.ru_minflt - before.ru_minflt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/hh-rlhf"))
    parser.add_argument("--xstest", action="store_true", help="XSTest's 100 prompts beside the HH 100")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hf-batch", type=int, default=16)
    parser.add_argument("--only", choices=["hf", "ours"])
    args = parser.parse_args()
    prompts, cfg = demo_prompts(args.data, args.xstest)
    model, resolved = load_causal_lm(args.model)
    tok = load_tokenizer(resolved)
    model.eval()
    print(f"{args.model} ({model.config._attn_implementation}, {model.dtype}), {len(prompts)} prompts, "
          f"{torch.get_num_threads()} threads; ours: {cfg}")
    from transformers import LogitsProcessorList

    processors = model._get_logits_processor(hf_config(model, tok, prompts, cfg), 1,
                                             logits_processor=LogitsProcessorList())
    print(f"transformers' logits processors: {list(processors)}")

    sides = {"hf": lambda: hf_generate(model, tok, prompts, cfg, args.hf_batch),
             "ours": lambda: [a.token_ids for a in generate_answers(model, tok, prompts, cfg)]}
    names = [args.only] if args.only else ["hf", "ours"]
    best: dict[str, dict] = {}
    tokens: dict[str, list] = {}
    for r in range(args.rounds):
        for side in (names if r % 2 == 0 else names[::-1]):
            tokens[side], m = measured(sides[side])
            print(f"  round {r + 1} {side:>4}: {m['wall']:6.1f} s wall, {m['cpu']:6.1f} s CPU, "
                  f"{m['minflt']:>9} minor faults", flush=True)
            if side not in best or m["wall"] < best[side]["wall"]:
                best[side] = m
    for side, m in best.items():
        print(f"{side:>4}: {m['wall']:6.1f} s wall (min of {args.rounds}), {m['cpu']:6.1f} s CPU, "
              f"{m['minflt']} minor faults")
    if len(best) == 2:
        eos = eos_token_ids(model, tok)
        same = sum(cut_as_ours(tok, p, h, eos, cfg) == o for p, h, o in zip(prompts, tokens["hf"], tokens["ours"]))
        print(f"identical token for token: {same} of {len(prompts)}")
        print(f"ratio HF/ours: {best['hf']['wall'] / best['ours']['wall']:.2f}x")


if __name__ == "__main__":
    main()
