"""Batched greedy decoding: equal to one-prompt-at-a-time decoding, in input order,
with every stop reason recorded and nothing dropped; and its cache."""

import json
from dataclasses import replace

import pytest
import torch

from alignscope.cache import ResultCache
from alignscope.generate import GenerateConfig, generate_answers, generate_cached, summarize
from alignscope.io import InputError
from alignscope.models import load_causal_lm, load_tokenizer
from tiny import tiny_gemma3, tiny_opt

PROMPTS = [  # of very different lengths, in no particular order
    "Human: What is the capital of France?\n\nAssistant:",
    "Human: Hi\n\nAssistant:",
    "Human: I have a long story. " + "It went on and on. " * 12 + "What should I do?\n\nAssistant:",
    "Human: How do I make tea?\n\nAssistant: Boil water.\n\nHuman: Then?\n\nAssistant:",
    "Human: Tell me a joke.\n\nAssistant:",
    "Human: " + "Why? " * 30 + "\n\nAssistant:",
    "Human: Name three colors.\n\nAssistant:",
]


def one_at_a_time(model, tok, prompts, n=50):
    """The reference study's way: model.generate on each prompt alone."""
    out = []
    for p in prompts:
        x = tok(p, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**x, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
        out.append(ids[0, x.input_ids.shape[1]:].tolist())
    return out


@pytest.fixture(scope="module", params=["opt", "gemma3"])
def tiny_lm(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param) / "model"
    (tiny_opt if request.param == "opt" else tiny_gemma3)(folder)
    model, tok = load_causal_lm(str(folder))[0], load_tokenizer(str(folder))
    if request.param == "gemma3":  # the long prompts must run past the sliding window, or it goes untested
        assert max(len(tok(p).input_ids) for p in PROMPTS) > 4 * model.config.sliding_window
    return model, tok, folder


@pytest.mark.parametrize("batch_size, prefill", [(128, 2), (3, 1), (2, 4)])
def test_batched_equals_one_at_a_time(tiny_lm, batch_size, prefill):
    model, tok, _ = tiny_lm
    expected = one_at_a_time(model, tok, PROMPTS, n=30)
    got = generate_answers(model, tok, PROMPTS, GenerateConfig(max_new_tokens=30, batch_size=batch_size,
                                                               prefill_batch_size=prefill, stop_at_human_turn=False))
    assert [a.prompt for a in got] == PROMPTS  # input order, whatever the batch order
    # one_at_a_time keeps the EOS token when a prompt ends with one; our token_ids do too
    assert [a.token_ids for a in got] == expected
    assert all(a.tokens == len(a.token_ids) for a in got)


def test_stop_reasons_and_empty_answers_are_kept(tiny_lm):
    model, tok, _ = tiny_lm
    free = generate_answers(model, tok, PROMPTS, GenerateConfig(max_new_tokens=12, stop_at_human_turn=False))
    assert {a.stop for a in free} == {"length"} and all(a.tokens == 12 for a in free)

    def with_eos(eos):
        saved = model.generation_config.eos_token_id
        model.generation_config.eos_token_id = eos
        try:
            return generate_answers(model, tok, PROMPTS, GenerateConfig(max_new_tokens=12, stop_at_human_turn=False))
        finally:
            model.generation_config.eos_token_id = saved

    # EOS mid-answer: pick a prompt and a position whose token has not appeared before it
    row, k = next((r, k) for r, a in enumerate(free) for k in range(2, 12) if a.token_ids[k] not in a.token_ids[:k])
    ended = with_eos(free[row].token_ids[k])
    assert ended[row].stop == "eos" and ended[row].tokens == k + 1
    assert ended[row].response == tok.decode(free[row].token_ids[:k], skip_special_tokens=True).strip()
    # EOS first: the answer is empty, and kept and counted
    empty = with_eos(free[1].token_ids[0])
    assert empty[1].stop == "eos" and empty[1].response == "" and empty[1].tokens == 1
    assert len(empty) == len(PROMPTS) and summarize(empty)["empty"] >= 1

    # a stop string: cut the answer where it first appears
    text = tok.decode(free[2].token_ids, skip_special_tokens=True)
    marker = text[len(text) // 2: len(text) // 2 + 3]
    cut = generate_answers(model, tok, PROMPTS, GenerateConfig(max_new_tokens=12, stop_at_human_turn=True,
                                                               stop_strings=[marker]))
    assert cut[2].stop == "stop_string" and cut[2].response == text[: text.find(marker)].strip()


def test_stop_at_human_turn_defaults_to_the_prompt_format():
    from alignscope.generate import stops_at_human_turn

    assert stops_at_human_turn(GenerateConfig(), "Human: a\n\nAssistant:")
    assert not stops_at_human_turn(GenerateConfig(), "Human: a")  # the study's paper format
    assert not stops_at_human_turn(GenerateConfig(stop_at_human_turn=False), "Human: a\n\nAssistant:")


def test_one_prompt_in_another_format_changes_no_other_answer(tiny_lm, tmp_path):
    """The stopping rule is each prompt's own, and so is its cache key: editing one prompt so that it
    no longer ends with Assistant: recomputes that prompt only, and the others still stop at a
    Human turn."""
    model, tok, folder = tiny_lm
    text = generate_answers(model, tok, PROMPTS[:1], GenerateConfig(max_new_tokens=12, stop_at_human_turn=False))
    marker = text[0].response[len(text[0].response) // 2:][:3]  # a stop string the first answer runs into
    cfg = GenerateConfig(max_new_tokens=12, stop_strings=[marker])
    cache = ResultCache(tmp_path / "cache")
    first, _ = generate_cached(str(folder), PROMPTS, cfg, cache)
    assert first[0].stop == "stop_string"
    edited = [PROMPTS[0], PROMPTS[1].removesuffix("\n\nAssistant:"), *PROMPTS[2:]]
    again, info = generate_cached(str(folder), edited, cfg, cache)
    assert info["computed"] == 1 and info["settings"]["stop_strings_on"] == len(PROMPTS) - 1
    assert again[0].stop == "stop_string" and again[0].response == first[0].response
    fresh, _ = generate_cached(str(folder), edited, cfg)  # no cache: the same answers computed together
    assert [a.response for a in fresh] == [a.response for a in again]


def test_the_cache_recomputes_nothing_unchanged_and_never_trusts_a_bad_entry(tiny_lm, tmp_path):
    model, tok, folder = tiny_lm
    cache = ResultCache(tmp_path / "cache")
    cfg = GenerateConfig(max_new_tokens=8, stop_at_human_turn=False)
    first, info = generate_cached(str(folder), PROMPTS, cfg, cache)
    assert info["computed"] == len(PROMPTS)
    again, info = generate_cached(str(folder), PROMPTS, cfg, cache)
    assert info["computed"] == 0 and [a.token_ids for a in again] == [a.token_ids for a in first]

    entries = sorted((tmp_path / "cache").rglob("*.json"))
    entries[0].write_text(entries[0].read_text()[:40])  # a write cut short
    doc = json.loads(entries[1].read_text())
    doc["payload"]["response"] = "tampered"  # a payload that no longer matches its checksum
    entries[1].write_text(json.dumps(doc))
    redone, info = generate_cached(str(folder), PROMPTS, cfg, cache)
    assert info["computed"] == 2 and cache.stats["corrupt"] == 2
    assert [a.response for a in redone] == [a.response for a in first]

    _, info = generate_cached(str(folder), PROMPTS[:2], replace(cfg, max_new_tokens=9), cache)
    assert info["computed"] == 2  # other decoding settings, other answers


def test_vllm_backend_says_what_it_needs(tiny_lm):
    _, _, folder = tiny_lm
    with pytest.raises(InputError, match="vllm"):
        generate_cached(str(folder), PROMPTS[:1], GenerateConfig(backend="vllm"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_packaged_real_model_batched_equals_one_at_a_time(hh_data, name):
    from alignscope.evalset import EvalsetConfig, build_evalset
    from alignscope.models import resolve_model

    evalset = build_evalset(EvalsetConfig(data=str(hh_data), n_harmful=3, n_helpful=3, format="hh"))
    prompts = [x["prompt"] for x in evalset["harmful"] + evalset["helpful"]]
    path = resolve_model(name)
    model, _ = load_causal_lm(path)
    tok = load_tokenizer(path)
    expected = one_at_a_time(model, tok, prompts, n=20)
    got = generate_answers(model, tok, prompts, GenerateConfig(max_new_tokens=20, stop_at_human_turn=False,
                                                               prefill_batch_size=2))
    assert [a.token_ids for a in got] == expected


def test_keep_rows_copies_each_kept_row_and_leaves_padding_zero():
    """Dropping finished rows from the in-place cache keeps every kept row's own tokens where
    they were, and its left padding zeros (masked positions still meet the softmax's 0 * V)."""
    from transformers.cache_utils import DynamicLayer

    from alignscope.kv_cache import InPlaceLayer

    torch.manual_seed(0)
    width, capacity, starts = 6, 9, [0, 2, 4]  # three prompts of 6, 4 and 2 tokens, right-aligned
    parts = []
    for rows, length in ((1, 6), (2, 4)):  # two prefill batches, the second narrower
        part = DynamicLayer()
        part.keys, part.values = torch.randn(rows, 2, length, 4), torch.randn(rows, 2, length, 4)
        parts.append(part)
    parts[1].keys[1, :, :2] = 0  # the shorter prompt of the second batch is left-padded inside it
    parts[1].values[1, :, :2] = 0
    layer = InPlaceLayer()
    layer.fill(parts, rows=3, width=width, capacity=capacity)
    layer.update(torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4))  # one decoded token
    before_k, before_v = layer.keys.clone(), layer.values.clone()
    assert torch.equal(before_k[1, :, 2:6], parts[1].keys[0])  # right-aligned at the group's width

    layer.keep_rows([0, 2], [starts[0], starts[2]])
    assert layer.keys.shape == (2, 2, width + 1, 4) and layer.kbuf.shape[2] == capacity
    assert torch.equal(layer.keys[0], before_k[0]) and torch.equal(layer.values[1], before_v[2])
    assert not layer.keys[1, :, :starts[2]].any()  # padding: zeros, never copied
    layer.update(torch.ones(2, 2, 1, 4), torch.ones(2, 2, 1, 4))  # decoding goes on in the kept rows
    assert layer.keys.shape[2] == width + 2 and bool((layer.keys[:, :, -1] == 1).all())


def test_a_prompt_longer_than_the_context_is_named_or_cut_when_asked(tmp_path):
    """OPT has 2048 positions; a longer prompt would crash inside the embedding lookup."""
    folder = tiny_opt(tmp_path / "opt", max_position_embeddings=64)
    model, tok = load_causal_lm(str(folder))[0], load_tokenizer(str(folder))
    long = "Human: " + "tell me more " * 40 + "\n\nAssistant:"
    prompts = [PROMPTS[1], long]
    with pytest.raises(InputError, match=r"evalset item 7 \('Human: tell me more.*\) has \d+ tokens; with "
                                         r"max_new_tokens 8 it needs \d+ positions, but the model has 64"):
        generate_answers(model, tok, prompts, GenerateConfig(max_new_tokens=8), names=["a", "evalset item 7"])
    got = generate_answers(model, tok, prompts, GenerateConfig(max_new_tokens=8, truncate_prompts=True,
                                                               stop_at_human_turn=False))
    n = len(tok(long).input_ids)
    assert got[0].prompt_tokens_cut == 0 and got[1].prompt_tokens_cut == n - (64 - 8)
    # the cut prompt keeps its leading </s> and its end, and answers as that prompt would
    kept = tok(long).input_ids[:1] + tok(long).input_ids[n - (64 - 8) + 1:]
    expected = model.generate(torch.tensor([kept]), max_new_tokens=8, do_sample=False,
                              pad_token_id=tok.pad_token_id)[0, len(kept):].tolist()
    assert got[1].token_ids == expected and got[1].tokens == 8
