"""Evaluation throughput: the reference study's method against ours, in one process,
on the same model, prompts, reward model and decoding settings.

  python bench/eval_throughput.py                        # packaged Gemma-3-270M, the study's 100 prompts
  python bench/eval_throughput.py --scorer runs/reward-model/model --baseline-sample 0

Theirs (the study's eval notebook): one prompt at a time through `model.generate`
(greedy, 50 new tokens), the answer sliced out of the decoded prompt+answer by the
prompt's string length, then one (prompt, answer) pair at a time through the
reward model. Ours: `alignscope.generate.generate_answers` and
`alignscope.judges.rate_encoded`, batched. Both score the same encoding of a pair
(the question cut from its start at 512 tokens); the difference measured is the
batching. The slow baseline runs on a length-stratified sample of the prompts
(`--baseline-sample`, 0 for all); ours always answers all of them.

The script checks that both give the same answers (token ids; and the text,
where slicing did not mangle it) and the same scores (within 1e-4), and prints
answers per second for each. The last line is `speedup: N.NNx`.

`--model opt-350m-shape` and `--scorer openassistant-shape` time the study's two models
(their real config and tokenizer files, random weights: no hub needed); on a CUDA GPU the
script also prints the memory-bandwidth bound of a decoding step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from alignscope.generate import GenerateConfig, generate_answers  # noqa: E402
from alignscope.judges import encode_pair, rate_encoded  # noqa: E402
from alignscope.models import load_causal_lm, load_tokenizer, resolve_model  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from shapes import SHARED, openassistant_shape, opt350m_shape  # noqa: E402


def load_policy(name: str, device: str):
    if name == "opt-350m-shape":  # facebook/opt-350m's config and tokenizer files, random weights
        name = str(opt350m_shape(Path("/tmp/alignscope-bench/opt-350m-shape")))
    model, path = load_causal_lm(name)
    return model.to(device).eval(), load_tokenizer(path)


def load_judge(spec: str | None, device: str):
    """A reward model: a trained one if given, OpenAssistant's shape with random weights, or the
    packaged MiniLM with a seeded new head (speed does not depend on the weights; both sides use
    the same model)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if spec == "openassistant-shape":
        spec = str(openassistant_shape(Path("/tmp/alignscope-bench/openassistant-shape")))
    path = resolve_model(spec or "all-minilm-l6-v2")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    return model.to(device).eval(), AutoTokenizer.from_pretrained(path)


def theirs(model, tok, judge, judge_tok, prompts, max_new_tokens):
    """The study's notebook, one prompt and one pair at a time."""
    device = next(model.parameters()).device
    out, t_score = [], 0.0
    for prompt in prompts:
        x = tok(prompt, return_tensors="pt").to(device)
        with torch.no_grad():
            ids = model.generate(**x, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
        response = tok.decode(ids[0], skip_special_tokens=True)[len(prompt):].strip()
        start = time.perf_counter()
        pair = encode_pair(judge_tok, prompt, response, 512).ids
        with torch.no_grad():
            rating = judge(input_ids=torch.tensor([pair], device=device)).logits[0, 0].item()
        t_score += time.perf_counter() - start
        out.append({"token_ids": ids[0, x.input_ids.shape[1]:].tolist(), "response": response, "rating": rating})
    if len(prompts) > 2:
        print(f"theirs: scoring {t_score:.1f} s of the total")
    return out


def ours(model, tok, judge, judge_tok, prompts, max_new_tokens):
    answers, t_gen = timed(generate_answers, model, tok, prompts, GenerateConfig(max_new_tokens=max_new_tokens,
                                                                                 stop_at_human_turn=False))
    ratings, t_score = timed(rate_pairs, judge, judge_tok, prompts, [a.response for a in answers])
    if len(prompts) > 2:
        print(f"ours: generating {t_gen:.1f} s, scoring {t_score:.1f} s")
    return [{"token_ids": a.token_ids, "response": a.response, "rating": r} for a, r in zip(answers, ratings)]


def rate_pairs(judge, judge_tok, prompts, responses):
    encoded = [encode_pair(judge_tok, p, r, 512).ids for p, r in zip(prompts, responses)]
    return rate_encoded(judge, encoded, judge_tok.pad_token_id or 0, batch_size=8)


def timed(fn, *args):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def study_prompts(args) -> list[str]:
    if args.prompts:
        doc = json.loads(Path(args.prompts).read_text())
        return [x["prompt"] for x in doc["harmful"] + doc["helpful"]]
    ref = SHARED / "reference-study" / "prompts"
    return json.loads((ref / "harmful_prompts.json").read_text()) + json.loads((ref / "helpful_prompts.json").read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m", help="packaged name, folder, hub id, or opt-350m-shape")
    parser.add_argument("--scorer", default=None,
                        help="reward model folder, or openassistant-shape (default: MiniLM with a new head)")
    parser.add_argument("--prompts", default=None, help="an evaluation set JSON (default: the study's 100 prompts)")
    parser.add_argument("--baseline-sample", type=int, default=0, help="prompts for the slow baseline (0: all)")
    parser.add_argument("--max-new-tokens", type=int, default=50)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"

    model, tok = load_policy(args.model, device)
    judge, judge_tok = load_judge(args.scorer, device)
    prompts = study_prompts(args)
    by_length = sorted(range(len(prompts)), key=lambda i: len(tok(prompts[i]).input_ids))
    n = args.baseline_sample or len(prompts)
    sample = sorted(by_length[len(prompts) // n // 2::len(prompts) // n][:n]) if n < len(prompts) else by_length
    where = f"{torch.cuda.get_device_name()}" if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model} on {where}; {len(prompts)} prompts, baseline on {len(sample)} (length-stratified); "
          f"greedy, {args.max_new_tokens} new tokens, fp32")

    ours(model, tok, judge, judge_tok, prompts[:2], 2)  # warm both paths up once
    theirs(model, tok, judge, judge_tok, prompts[:1], 2)
    mine, t_ours = timed(ours, model, tok, judge, judge_tok, prompts, args.max_new_tokens)
    ref, t_ref = timed(theirs, model, tok, judge, judge_tok, [prompts[i] for i in sample], args.max_new_tokens)

    same_tokens = sum(mine[i]["token_ids"] == r["token_ids"] for i, r in zip(sample, ref))
    same_text = [(i, r) for i, r in zip(sample, ref) if mine[i]["response"] == r["response"]]
    worst = max((abs(mine[i]["rating"] - r["rating"]) for i, r in same_text), default=0.0)
    print(f"same answers: {same_tokens}/{len(sample)} token for token; {len(same_text)}/{len(sample)} as text "
          f"(the rest: slicing by the prompt's string length mangled theirs)")
    print(f"same scores where the text is the same: max |difference| {worst:.2e}")
    if same_tokens != len(sample) or worst > 1e-4:
        sys.exit("the two methods disagree: the timing comparison would be meaningless")

    per_ref, per_ours = t_ref / len(sample), t_ours / len(prompts)
    print(f"theirs: {per_ref:6.2f} s per answer = {1 / per_ref:6.2f} answers/s")
    print(f"ours:   {per_ours:6.2f} s per answer = {1 / per_ours:6.2f} answers/s ({t_ours:.1f} s for all)")
    if device == "cuda":
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        bandwidth = 3.35e12 if "H100" in where else 4.8e12 if "H200" in where else None
        if bandwidth:
            print(f"memory bound: a decoding step reads {weights / 1e9:.2f} GB of weights: "
                  f">= {weights / bandwidth * 1e3:.2f} ms a step, {weights / bandwidth * args.max_new_tokens:.2f} s "
                  f"for {args.max_new_tokens} tokens at any batch size")
    print(f"speedup: {per_ref / per_ours:.2f}x")


if __name__ == "__main__":
    main()
