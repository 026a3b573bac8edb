"""Greedy answers to an evaluation set, batched, the same every time.

The decoding loop is ours, not `model.generate`, for three reasons a CPU feels:
prompts are batched by length (left-padded, so little padding), an answer that
has finished leaves the batch at once (its rows stop costing anything), and
each step does only what greedy decoding needs (one argmax, no logits
processors). Only the new tokens are decoded; the study sliced answers out of
the decoded prompt+answer by string length, which breaks whenever a prompt does
not survive the tokenizer's round trip.

In fp32 the batched answers equal one-prompt-at-a-time answers token for token
(tested). In bf16 they need not: a batch changes the order of the sums inside a
matmul, and bf16 keeps 8 bits of mantissa, so near-ties between two next tokens
can go either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from alignscope.io import InputError

STOP_EOS, STOP_STRING, STOP_LENGTH = "eos", "stop_string", "length"


@dataclass
class GenerateConfig:
    """How answers are decoded."""

    max_new_tokens: int = 50
    batch_size: int = 128
    """Answers decoded together (a decoding step reads every weight once, whatever the batch)."""
    prefill_batch_size: int = 64
    """At most this many prompts run through the model together (sorted by length, so little is padding) ..."""
    prefill_tokens: int = 1024
    """... and at most this many padded tokens."""
    max_group_tokens: int = 131072
    """Cap on answers x padded prompt length in one decoding group: bounds the cache's memory."""
    stop_at_human_turn: bool | None = None
    """Cut an answer at the next "\\n\\nHuman:" turn; default: on when prompts end with "Assistant:" (hh format)."""
    stop_strings: list[str] = field(default_factory=lambda: ["\n\nHuman:"])
    precision: Literal["fp32", "bf16"] = "fp32"
    backend: Literal["hf", "vllm"] = "hf"
    num_threads: int | None = None


@dataclass
class Answer:
    prompt: str
    response: str
    tokens: int
    stop: str  # eos, stop_string or length
    token_ids: list[int] = field(default_factory=list, repr=False)


def stops_at_human_turn(cfg: GenerateConfig, prompts: list[str]) -> bool:
    if cfg.stop_at_human_turn is not None:
        return cfg.stop_at_human_turn
    return bool(prompts) and all(p.rstrip().endswith("Assistant:") for p in prompts)


def eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _finish(tokenizer, prompt: str, ids: list[int], eos: set[int], stops: list[str], limit: int) -> Answer | None:
    """The answer if decoding should stop after `ids`, else None."""
    if ids and ids[-1] in eos:
        return Answer(prompt, tokenizer.decode(ids[:-1], skip_special_tokens=True).strip(), len(ids), STOP_EOS, ids)
    if stops:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        cut = min((text.find(s) for s in stops if s in text), default=-1)
        if cut >= 0:
            return Answer(prompt, text[:cut].strip(), len(ids), STOP_STRING, ids)
    if len(ids) >= limit:
        return Answer(prompt, tokenizer.decode(ids, skip_special_tokens=True).strip(), len(ids), STOP_LENGTH, ids)
    return None


def _zeros(shape: tuple, like):
    """Zeros that cost nothing until written, on a CPU.

    Most of a decoding group's cache is left padding that is only ever read (as masked
    zeros), and torch.zeros writes every byte of it. On the VM measured here first
    writes to fresh memory ran at about 0.5 GB/s, so zero-filling a 3 GB cache cost
    seconds; an anonymous mapping is zero-filled by the kernel as pages are first
    touched. (Turning transparent huge pages off for it made fewer pages committed but
    decoding slower; measured both ways, this was the faster.)"""
    import mmap

    import torch

    if like.device.type != "cpu":
        return like.new_zeros(shape)
    count = 1
    for n in shape:
        count *= n
    memory = mmap.mmap(-1, max(count * like.element_size(), 1))  # anonymous: zero-filled, mapped lazily
    return torch.frombuffer(memory, dtype=like.dtype, count=count).view(shape)


def _decode_cache(model, prefilled: list, rows: int, width: int, capacity: int):
    """One cache for a decoding group, filled from the prefilled batches' caches.

    Its layers write each new token into a preallocated buffer instead of
    concatenating (transformers' DynamicLayer re-copies the whole cache at every
    step: 60% of a decoding step at batch 64 here). Each batch's prompts go in
    right-aligned, as if the whole group had been prefilled together with left
    padding; sliding-window layers keep attending over their window only."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    class InPlaceLayer(DynamicLayer):
        def fill(self, parts: list) -> None:
            first = parts[0]
            # zeros, not empty: a masked position still meets the softmax's 0 * V
            self.kbuf = _zeros((rows, first.keys.shape[1], capacity, first.keys.shape[-1]), first.keys)
            self.vbuf = _zeros((rows, first.values.shape[1], capacity, first.values.shape[-1]), first.values)
            row = 0
            for part in parts:
                b, t = part.keys.shape[0], part.keys.shape[-2]  # t < width: shorter batch, or a window
                self.kbuf[row:row + b, :, width - t:width] = part.keys
                self.vbuf[row:row + b, :, width - t:width] = part.values
                row += b
            self.dtype, self.device, self.is_initialized = first.keys.dtype, first.keys.device, True
            self.length = width
            self._visible()

        def _view(self, start: int) -> tuple:
            return self.kbuf[:, :, start:self.length], self.vbuf[:, :, start:self.length]

        def _visible(self) -> None:
            self.keys, self.values = self._view(0)

        def update(self, key_states, value_states, *args, **kwargs):
            n = self.length
            self.kbuf[:, :, n:n + key_states.shape[-2]] = key_states
            self.vbuf[:, :, n:n + key_states.shape[-2]] = value_states
            self.length = n + key_states.shape[-2]
            self._visible()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def keep_rows(self, rows_kept: list[int], starts: list[int]) -> None:
            """Drop finished rows. Only each kept row's own tokens (from `starts`) are copied:
            its left padding stays untouched zeros, so dropping rows costs what they hold."""
            kbuf = _zeros((len(rows_kept),) + tuple(self.kbuf.shape[1:]), self.kbuf)
            vbuf = _zeros((len(rows_kept),) + tuple(self.vbuf.shape[1:]), self.vbuf)
            for new, (old, start) in enumerate(zip(rows_kept, starts)):
                kbuf[new, :, start:self.length] = self.kbuf[old, :, start:self.length]
                vbuf[new, :, start:self.length] = self.vbuf[old, :, start:self.length]
            self.kbuf, self.vbuf = kbuf, vbuf
            self._visible()

    class InPlaceSlidingLayer(InPlaceLayer, DynamicSlidingWindowLayer):
        def _visible(self) -> None:
            self.cumulative_length = self.length
            self.keys, self.values = self._view(max(0, self.length - self.sliding_window + 1))

        def update(self, key_states, value_states, *args, **kwargs):
            # as DynamicSlidingWindowLayer: attend over the last window - 1 cached tokens
            # plus the new ones, keep the last window - 1
            n = self.length
            InPlaceLayer.update(self, key_states, value_states)
            return self._view(max(0, n - self.sliding_window + 1))

    cache = DynamicCache(config=model.config)
    layers = []
    for index, layer in enumerate(cache.layers):
        if type(layer) is DynamicSlidingWindowLayer:
            layer = InPlaceSlidingLayer(sliding_window=layer.sliding_window)
        elif type(layer) is DynamicLayer:
            layer = InPlaceLayer()
        else:
            raise InputError(f"{type(model).__name__}: cache layers of type {type(layer).__name__} are not "
                             "supported by the batched decoder")
        layer.fill([c.layers[index] for c in prefilled])
        layers.append(layer)
    cache.layers = layers
    return cache


def _prefill_batches(order: list[int], lengths: list[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Consecutive prompts (longest first) while the padded batch stays within the budgets:
    many short prompts go through together, long ones two or three at a time."""
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1 > max_rows or (len(current) + 1) * lengths[current[0]] > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current] if current else batches


def _groups(widths: list[int], sizes: list[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Consecutive prefill batches merged into decode groups within the row and token budgets."""
    groups, current, rows, widest = [], [], 0, 0
    for i, (w, n) in enumerate(zip(widths, sizes)):
        if current and (rows + n > max_rows or (rows + n) * max(widest, w) > max_tokens):
            groups.append(current)
            current, rows, widest = [], 0, 0
        current.append(i)
        rows, widest = rows + n, max(widest, w)
    if current:
        groups.append(current)
    return groups


def generate_answers(model, tokenizer, prompts: list[str], cfg: GenerateConfig = GenerateConfig(),
                     progress=None, on_answer=None) -> list[Answer]:
    """Greedy answers in input order, whatever order the batches ran in.

    Prompts are sorted by length and prefilled in small batches (little padding; a
    prompt's forward pass is compute-bound, so a larger batch would not make it
    cheaper), then the prefilled caches are merged into large decoding groups (a
    decoding step reads every weight once whatever the batch, so it pays to decode
    many answers together)."""
    import torch
    from transformers import DynamicCache

    if cfg.max_new_tokens < 1:
        raise InputError("max_new_tokens must be at least 1")
    if not prompts:
        return []
    stops = list(cfg.stop_strings) if stops_at_human_turn(cfg, prompts) else []
    eos = eos_ids(model, tokenizer)
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos), 0)
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    answers: list[Answer | None] = [None] * len(prompts)
    batches = _prefill_batches(order, [len(e) for e in encoded], cfg.prefill_batch_size, cfg.prefill_tokens)
    widths = [max(len(encoded[i]) for i in rows) for rows in batches]
    model.eval()
    with torch.inference_mode(), autocast:
        for group in _groups(widths, [len(b) for b in batches], cfg.batch_size, cfg.max_group_tokens):
            rows = [i for b in group for i in batches[b]]
            width = max(widths[b] for b in group)
            prefilled, first_logits = [], []
            for b in group:
                batch, w = batches[b], widths[b]
                ids = torch.full((len(batch), w), pad, dtype=torch.long)
                mask = torch.zeros((len(batch), w), dtype=torch.long)
                for r, i in enumerate(batch):  # left padding: every prompt ends at the last column
                    ids[r, w - len(encoded[i]):] = torch.tensor(encoded[i])
                    mask[r, w - len(encoded[i]):] = 1
                ids, mask = ids.to(device), mask.to(device)
                prefilled.append(DynamicCache(config=model.config))
                out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                            past_key_values=prefilled[-1], use_cache=True, logits_to_keep=1)
                first_logits.append(out.logits[:, -1])
            cache = _decode_cache(model, prefilled, len(rows), width, width + cfg.max_new_tokens)
            del prefilled
            lengths = torch.tensor([len(encoded[i]) for i in rows], device=device)
            mask = (torch.arange(width, device=device)[None, :] >= (width - lengths)[:, None]).long()
            positions = (lengths - 1)[:, None]
            logits = torch.cat(first_logits)
            generated: list[list[int]] = [[] for _ in rows]
            batch = list(range(len(rows)))  # the slot (index into `rows`) of each batch row
            decoding = [True] * len(rows)
            while True:
                next_tokens = logits.argmax(-1).tolist()
                for slot, token in zip(batch, next_tokens):
                    if not decoding[slot]:
                        continue
                    generated[slot].append(token)
                    done = _finish(tokenizer, prompts[rows[slot]], generated[slot], eos, stops, cfg.max_new_tokens)
                    if done is not None:
                        decoding[slot] = False
                        answers[rows[slot]] = done
                        if on_answer:  # e.g. into the cache at once: a killed run keeps what it finished
                            on_answer(rows[slot], done)
                        if progress:
                            progress(1)
                live = [b for b, slot in enumerate(batch) if decoding[slot]]
                if not live:
                    break
                # Finished answers leave the batch, but in bulk: dropping rows copies the whole
                # cache, so a few finished rows ride along (their tokens ignored) until half are done.
                if len(live) <= len(batch) // 2:
                    index = torch.tensor(live, device=device)
                    starts = [width - len(encoded[rows[batch[b]]]) for b in live]
                    for layer in cache.layers:
                        layer.keep_rows(live, starts)
                    mask, positions = mask[index], positions[index]
                    batch, next_tokens = [batch[b] for b in live], [next_tokens[b] for b in live]
                mask = torch.cat([mask, mask.new_ones((len(batch), 1))], dim=1)
                positions = positions + 1
                out = model(input_ids=torch.tensor(next_tokens, device=device)[:, None], attention_mask=mask,
                            position_ids=positions, past_key_values=cache, use_cache=True)
                logits = out.logits[:, -1]
    return answers  # type: ignore[return-value]


def summarize(answers: list[Answer]) -> dict:
    counts = {STOP_EOS: 0, STOP_STRING: 0, STOP_LENGTH: 0}
    for a in answers:
        counts[a.stop] += 1
    return {"answers": len(answers), "stopped": counts, "empty": sum(not a.response for a in answers),
            "mean_tokens": sum(a.tokens for a in answers) / max(len(answers), 1)}


# --------------------------------------------------------------------------- with a cache

def settings_key(cfg: GenerateConfig, stops: list[str]) -> dict:
    """What decides an answer besides the model and the prompt (not the batch size: in
    fp32 batched answers equal one-at-a-time answers)."""
    return {"decoding": "greedy", "max_new_tokens": cfg.max_new_tokens, "stop_strings": stops,
            "precision": cfg.precision, "backend": cfg.backend}


def _generate_vllm(resolved: str, prompts: list[str], cfg: GenerateConfig, stops: list[str]) -> list[Answer]:
    """The same answers format from vLLM (GPU only). vLLM batches continuously, so in
    bf16 its answers may differ from the hf backend's near ties."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError:
        raise InputError("backend vllm: vLLM is not installed (pip install 'alignscope[vllm]')") from None
    import torch

    if not torch.cuda.is_available():
        raise InputError("backend vllm needs a CUDA GPU; use backend: hf on this machine")
    llm = LLM(model=resolved, dtype="float32" if cfg.precision == "fp32" else "bfloat16", seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=cfg.max_new_tokens, stop=stops or None,
                            skip_special_tokens=True)
    answers = []
    for prompt, result in zip(prompts, llm.generate(prompts, params, use_tqdm=False)):
        out = result.outputs[0]
        if out.finish_reason == "length":
            stop = STOP_LENGTH
        else:  # "stop": a stop string (str) or an EOS token (int or None)
            stop = STOP_STRING if isinstance(out.stop_reason, str) else STOP_EOS
        answers.append(Answer(prompt, out.text.strip(), len(out.token_ids), stop, list(out.token_ids)))
    return answers


def generate_cached(model_spec: str, prompts: list[str], cfg: GenerateConfig = GenerateConfig(), cache=None,
                    allow_pickle: bool = False, revision: str | None = None, progress=None) -> tuple[list[Answer], dict]:
    """Answers for `prompts`, computing only those the cache lacks (the model is not even
    loaded when it has them all). Returns the answers and a summary of the run."""
    import torch

    from alignscope.cache import ResultCache
    from alignscope.models import model_fingerprint, resolve_model

    cache = cache or ResultCache(Path("/nonexistent"), enabled=False)
    resolved = resolve_model(model_spec, allow_pickle)
    fingerprint = model_fingerprint(resolved, revision)
    stops = list(cfg.stop_strings) if stops_at_human_turn(cfg, prompts) else []
    settings = settings_key(cfg, stops)
    keys = [cache.key("generate", fingerprint, settings, p) for p in prompts]
    found = [cache.get(k) for k in keys]
    missing = [i for i, f in enumerate(found) if f is None]
    started = time.time()
    if missing:
        todo = [prompts[i] for i in missing]
        if cfg.backend == "vllm":
            new = _generate_vllm(resolved, todo, cfg, stops)
        else:
            from alignscope.train import load_causal_lm, load_tokenizer

            if cfg.num_threads:
                torch.set_num_threads(cfg.num_threads)
            model, _ = load_causal_lm(model_spec, allow_pickle, revision)
            if torch.cuda.is_available():
                model = model.cuda()
            tokenizer = load_tokenizer(resolved, revision)
            fixed = GenerateConfig(**{**cfg.__dict__, "stop_at_human_turn": bool(stops)})

            def store(j: int, answer: Answer) -> None:
                found[missing[j]] = {"response": answer.response, "tokens": answer.tokens, "stop": answer.stop,
                                     "token_ids": answer.token_ids}
                cache.put(keys[missing[j]], found[missing[j]])

            new = generate_answers(model, tokenizer, todo, fixed, progress=progress, on_answer=store)
        for i, answer in zip(missing, new):
            if found[i] is None:  # the vllm backend returns them all at the end
                found[i] = {"response": answer.response, "tokens": answer.tokens, "stop": answer.stop,
                            "token_ids": answer.token_ids}
                cache.put(keys[i], found[i])
    elif progress:
        progress(len(prompts))
    answers = [Answer(p, f["response"], f["tokens"], f["stop"], f["token_ids"]) for p, f in zip(prompts, found)]
    info = {"model": model_spec, "resolved": resolved, "fingerprint": fingerprint, "settings": settings,
            "computed": len(missing), "cached": len(prompts) - len(missing),
            "seconds": round(time.time() - started, 2), **summarize(answers)}
    return answers, info


def answer_evalset(model_spec: str, evalset: dict, cfg: GenerateConfig = GenerateConfig(), cache=None,
                   allow_pickle: bool = False, revision: str | None = None, progress=None) -> tuple[dict, dict]:
    """Answers to both halves of an evaluation set: {"harmful": [...], "helpful": [...]} of
    {"id", "prompt", "response", "tokens", "stop"}, in the evaluation set's order."""
    items = [(cat, item) for cat in ("harmful", "helpful") for item in evalset[cat]]
    answers, info = generate_cached(model_spec, [item["prompt"] for _, item in items], cfg, cache,
                                    allow_pickle, revision, progress)
    out = {"harmful": [], "helpful": []}
    for (cat, item), a in zip(items, answers):
        out[cat].append({"id": item["id"], "prompt": item["prompt"], "response": a.response,
                         "tokens": a.tokens, "stop": a.stop})
    return out, info


def write_answer_files(folder: str | Path, index: int, name: str, answers: dict, info: dict) -> list[Path]:
    """`<index>_<name>_<harmful|helpful>.json` (what `score` reads) and `<index>_<name>_generation.json`."""
    from alignscope.io import atomic_write_json
    from alignscope.metrics import rated_filename

    folder = Path(folder)
    paths = [atomic_write_json(folder / rated_filename(index, name, cat), answers[cat]) for cat in ("harmful", "helpful")]
    atomic_write_json(folder / f"{index}_{name}_generation.json", info)
    return paths
