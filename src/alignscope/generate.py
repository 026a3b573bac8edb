"""Greedy answers to an evaluation set, batched, the same every time.

The decoding loop is ours, not `model.generate`, for three reasons a CPU feels:
prompts are batched by length (left-padded, so little padding), an answer that
has finished leaves the batch (its rows stop costing anything), and each step
does only what greedy decoding needs (one argmax, no logits processors). Only
the new tokens are decoded; the study sliced answers out of the decoded
prompt+answer by string length, which breaks whenever a prompt does not survive
the tokenizer's round trip.

In fp32 the batched answers equal one-prompt-at-a-time answers token for token
(tested). In bf16 they need not: a batch changes the order of the sums inside a
matmul, and bf16 keeps 8 bits of mantissa, so near-ties between two next tokens
can go either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

from pydantic import Field

from alignscope.answers import CATEGORIES, answer_filename, generation_filename, read_answers, suite_filename
from alignscope.cache import ResultCache, cached_map, disabled_cache
from alignscope.config import validated
from alignscope.data import dialogue_messages
from alignscope.io import InputError, atomic_write_json, check_name, sha256_text
from alignscope.models import (cache_keyword, chat_template, end_of_turn_ids, eos_token_ids, load_causal_lm,
                               load_tokenizer, model_fingerprint, resolve_model)

STOP_EOS, STOP_STRING, STOP_LENGTH = "eos", "stop_string", "length"


@dataclass
class GenerateConfig:
    """How answers are decoded."""

    max_new_tokens: Annotated[int, Field(ge=1)] = 50
    batch_size: Annotated[int, Field(ge=1)] = 128
    """Answers decoded together (a decoding step reads every weight once, whatever the batch)."""
    prefill_batch_size: Annotated[int, Field(ge=1)] = 64
    """At most this many prompts run through the model together (sorted by length, so little is padding) ..."""
    prefill_tokens: Annotated[int, Field(ge=1)] = 1024
    """... and at most this many padded tokens."""
    max_group_tokens: Annotated[int, Field(ge=1)] = 131072
    """Cap on answers x padded prompt length in one decoding group: bounds the cache's memory."""
    stop_at_human_turn: bool | None = None
    """Cut an answer at the next "\\n\\nHuman:" turn; default: on for each prompt that ends with "Assistant:" (hh format)."""
    stop_strings: list[str] = field(default_factory=lambda: ["\n\nHuman:"])
    truncate_prompts: bool = False
    """Cut a prompt too long for the model's context from its start (recorded in each answer); else refuse it."""
    precision: Literal["fp32", "bf16"] = "fp32"
    backend: Literal["hf", "vllm"] = "hf"
    num_threads: Annotated[int, Field(ge=1)] | None = None


@dataclass
class Answer:
    prompt: str
    response: str
    tokens: int
    stop: str  # eos, stop_string or length
    token_ids: list[int] = field(default_factory=list, repr=False)
    prompt_tokens_cut: int = 0
    """Tokens cut from the prompt's start to fit the model's context (truncate_prompts)."""

    def payload(self) -> dict:
        """What the cache keeps of an answer (the prompt is in its key)."""
        out = {"response": self.response, "tokens": self.tokens, "stop": self.stop, "token_ids": self.token_ids}
        return out | ({"prompt_tokens_cut": self.prompt_tokens_cut} if self.prompt_tokens_cut else {})


def stops_at_human_turn(cfg: GenerateConfig, prompt: str) -> bool:
    """Decided per prompt, so that one prompt in another format changes no other prompt's answer."""
    if cfg.stop_at_human_turn is not None:
        return cfg.stop_at_human_turn
    return prompt.rstrip().endswith("Assistant:")


def prompt_stops(cfg: GenerateConfig, prompt: str) -> list[str]:
    return list(cfg.stop_strings) if stops_at_human_turn(cfg, prompt) else []


def context_limit(model) -> int | None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(config, "max_position_embeddings", None)


def encode_prompts(tokenizer, prompts: list[str], cfg: GenerateConfig, limit: int | None,
                   names: list[str] | None = None, special_tokens: bool = True) -> tuple[list[list[int]], list[int]]:
    """Token ids of each prompt, and how many tokens were cut from its start to leave room
    for the answer within the model's context. Without truncate_prompts, a prompt that does
    not fit is refused by name (an embedding lookup past the table would fail obscurely)."""
    encoded, cut = [], []
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, add_special_tokens=special_tokens)["input_ids"]
        room = None if limit is None else limit - cfg.max_new_tokens
        if room is None or len(ids) <= room:
            encoded.append(ids)
            cut.append(0)
            continue
        name = names[i] if names else f"prompt {i}"
        if not cfg.truncate_prompts:
            raise InputError(
                f"{name} ({prompt[:60]!r}...) has {len(ids)} tokens; with max_new_tokens {cfg.max_new_tokens} it "
                f"needs {len(ids) + cfg.max_new_tokens} positions, but the model has {limit} "
                "(max_position_embeddings). Set truncate_prompts (--truncate-prompts) to cut such prompts from "
                "their start, or lower max_new_tokens")
        if room < 2:
            raise InputError(f"max_new_tokens {cfg.max_new_tokens} leaves no room for a prompt in {limit} positions")
        keep_bos = tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
        kept = ids[len(ids) - room + keep_bos:]
        encoded.append(([ids[0]] if keep_bos else []) + kept)
        cut.append(len(ids) - len(encoded[-1]))
    return encoded, cut


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


def prefill_batches(order: list[int], lengths: list[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Consecutive prompts (longest first) while the padded batch stays within the budgets:
    many short prompts go through together, long ones two or three at a time."""
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1 > max_rows or (len(current) + 1) * lengths[current[0]] > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current] if current else batches


def decode_groups(widths: list[int], sizes: list[int], max_rows: int, max_tokens: int) -> list[list[int]]:
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


def prefill(model, batches: list[list[int]], encoded: list[list[int]], pad: int) -> tuple[list, list]:
    """Run each batch of prompts (left-padded, so every prompt ends at the last column) through
    the model: the caches they leave, and the logits of each prompt's first answer token."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    caches, first_logits = [], []
    keyword = cache_keyword(model)
    for batch in batches:
        w = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), w), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), w), dtype=torch.long)
        for r, i in enumerate(batch):
            ids[r, w - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[r, w - len(encoded[i]):] = 1
        ids, mask = ids.to(device), mask.to(device)
        caches.append(DynamicCache(config=model.config))
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    use_cache=True, logits_to_keep=1, **{keyword: caches[-1]})
        first_logits.append(out.logits[:, -1])
    return caches, first_logits


@dataclass
class Decoding:
    """What every decoding group of one `generate_answers` call shares."""

    model: Any
    tokenizer: Any
    prompts: list[str]
    encoded: list[list[int]]
    """Each prompt's token ids."""
    cfg: GenerateConfig
    stops: list[list[str]]
    """Each prompt's stop strings."""
    eos: set[int]
    on_answer: Callable[[int, "Answer"], None]
    """Called with (prompt index, answer) as each answer finishes."""


def decode(run: Decoding, rows: list[int], prefilled: list, first_logits: list) -> None:
    """Greedy decoding of one group (`rows` index the prompts) from its prefilled caches."""
    import torch

    # torch and transformers at its top: loaded only when decoding, so the CLI starts without them
    from alignscope.kv_cache import decode_cache

    model, encoded, cfg = run.model, run.encoded, run.cfg
    device = next(model.parameters()).device
    width = max(len(encoded[i]) for i in rows)
    cache = decode_cache(model, prefilled, len(rows), width, width + cfg.max_new_tokens)
    prefilled.clear()
    lengths = torch.tensor([len(encoded[i]) for i in rows], device=device)
    mask = (torch.arange(width, device=device)[None, :] >= (width - lengths)[:, None]).long()
    positions = (lengths - 1)[:, None]
    logits = torch.cat(first_logits)
    keyword = cache_keyword(model)
    generated: list[list[int]] = [[] for _ in rows]
    batch = list(range(len(rows)))  # the slot (index into `rows`) of each batch row
    decoding = [True] * len(rows)
    while True:
        next_tokens = logits.argmax(-1).tolist()
        for slot, token in zip(batch, next_tokens):
            if not decoding[slot]:
                continue
            generated[slot].append(token)
            done = _finish(run.tokenizer, run.prompts[rows[slot]], generated[slot], run.eos,
                           run.stops[rows[slot]], cfg.max_new_tokens)
            if done is not None:
                decoding[slot] = False
                run.on_answer(rows[slot], done)
        live = [b for b, slot in enumerate(batch) if decoding[slot]]
        if not live:
            return
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
                    position_ids=positions, use_cache=True, **{keyword: cache})
        logits = out.logits[:, -1]


def generate_answers(model, tokenizer, prompts: list[str], cfg: GenerateConfig = GenerateConfig(),
                     progress=None, on_answer=None, names: list[str] | None = None,
                     chat: bool = False) -> list[Answer]:
    """Greedy answers in input order, whatever order the batches ran in.

    Prompts are sorted by length and prefilled in small batches (little padding; a
    prompt's forward pass is compute-bound, so a larger batch would not make it
    cheaper), then the prefilled caches are merged into large decoding groups (a
    decoding step reads every weight once whatever the batch, so it pays to decode
    many answers together).

    `chat`: the prompts are rendered by the model's chat template (which places any special
    tokens itself), and an answer also ends at the template's end-of-turn token."""
    import torch

    cfg = validated(cfg, "generate")
    if not prompts:
        return []
    stops = [prompt_stops(cfg, p) for p in prompts]
    encoded, cut = encode_prompts(tokenizer, prompts, cfg, context_limit(model), names, special_tokens=not chat)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]), reverse=True)
    eos = eos_token_ids(model, tokenizer) | (end_of_turn_ids(tokenizer) if chat else set())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos), 0)
    answers: list[Answer | None] = [None] * len(prompts)

    def finished(i: int, answer: Answer) -> None:
        answer.prompt_tokens_cut = cut[i]
        answers[i] = answer
        if on_answer:  # e.g. into the cache at once: a killed run keeps what it finished
            on_answer(i, answer)
        if progress:
            progress(1)

    run = Decoding(model, tokenizer, prompts, encoded, cfg, stops, eos, finished)
    batches = prefill_batches(order, [len(e) for e in encoded], cfg.prefill_batch_size, cfg.prefill_tokens)
    widths = [max(len(encoded[i]) for i in rows) for rows in batches]
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        for group in decode_groups(widths, [len(b) for b in batches], cfg.batch_size, cfg.max_group_tokens):
            prefilled, first_logits = prefill(model, [batches[b] for b in group], encoded, pad)
            rows = [i for b in group for i in batches[b]]
            decode(run, rows, prefilled, first_logits)
    return answers  # type: ignore[return-value]


def answers_of_file(path: str | Path) -> list[Answer]:
    """An answer file's answers, as generation made them (for counting how they ended)."""
    return [Answer(a["prompt"], a["response"], a.get("tokens", 0), a.get("stop", STOP_LENGTH), [],
                   a.get("prompt_tokens_cut", 0)) for a in read_answers(Path(path))]


def summarize(answers: list[Answer]) -> dict:
    counts = {STOP_EOS: 0, STOP_STRING: 0, STOP_LENGTH: 0}
    for a in answers:
        counts[a.stop] += 1
    return {"answers": len(answers), "stopped": counts, "empty": sum(not a.response for a in answers),
            "mean_tokens": sum(a.tokens for a in answers) / max(len(answers), 1),
            "prompts_cut": sum(a.prompt_tokens_cut > 0 for a in answers)}


# --------------------------------------------------------------------------- with a cache

def settings_key(cfg: GenerateConfig, stops: list[str]) -> dict:
    """What decides an answer besides the model and the prompt (not the batch size: in
    fp32 batched answers equal one-at-a-time answers)."""
    key = {"decoding": "greedy", "max_new_tokens": cfg.max_new_tokens, "stop_strings": stops,
           "precision": cfg.precision, "backend": cfg.backend}
    # only when on: it changes no answer whose prompt fits, so existing entries stay valid
    return key | ({"truncate_prompts": True} if cfg.truncate_prompts else {})


def render_chat(tokenizer, prompts: list[str], model_name: str) -> tuple[list[str], dict]:
    """HH dialogues rendered by the model's own chat template, ready for its answer, and what
    decides them (the template's hash, its end-of-turn token)."""
    template = chat_template(tokenizer, model_name)
    rendered = [tokenizer.apply_chat_template(dialogue_messages(p), tokenize=False, add_generation_prompt=True)
                for p in prompts]
    return rendered, {"prompt_format": "chat", "chat_template_sha256": sha256_text(template),
                      "end_of_turn": tokenizer.convert_ids_to_tokens(sorted(end_of_turn_ids(tokenizer)))}


def _generate_vllm(resolved: str, prompts: list[str], cfg: GenerateConfig) -> list[Answer]:
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
    params = [SamplingParams(temperature=0.0, max_tokens=cfg.max_new_tokens, stop=prompt_stops(cfg, p) or None,
                             skip_special_tokens=True) for p in prompts]
    answers = []
    for prompt, result in zip(prompts, llm.generate(prompts, params, use_tqdm=False)):
        out = result.outputs[0]
        if out.finish_reason == "length":
            stop = STOP_LENGTH
        else:  # "stop": a stop string (str) or an EOS token (int or None)
            stop = STOP_STRING if isinstance(out.stop_reason, str) else STOP_EOS
        answers.append(Answer(prompt, out.text.strip(), len(out.token_ids), stop, list(out.token_ids)))
    return answers


def generate_cached(model_spec: str, prompts: list[str], cfg: GenerateConfig = GenerateConfig(),
                    cache: ResultCache | None = None, allow_pickle: bool = False, revision: str | None = None,
                    progress=None, names: list[str] | None = None, chat: bool = False) -> tuple[list[Answer], dict]:
    """Answers for `prompts`, computing only those the cache lacks (the model is not even
    loaded when it has them all). Returns the answers and a summary of the run.

    `chat`: `prompts` are HH dialogues, rendered by the model's chat template before they are answered."""
    import torch

    cfg = validated(cfg, "generate")
    cache = cache or disabled_cache()
    resolved = resolve_model(model_spec, allow_pickle)
    fingerprint = model_fingerprint(resolved, revision)
    given, chat_settings = prompts, {}
    if chat and cfg.backend == "vllm":
        raise InputError("the chat prompt format is answered by backend hf only (vLLM would tokenize the rendered "
                         "prompts again and not stop at the template's end of turn)")
    if chat:
        prompts, chat_settings = render_chat(load_tokenizer(resolved, revision), prompts, model_spec)
    # each prompt's own stopping rule is in its key: one prompt in another format leaves the others' entries valid
    keys = [cache.key("generate", fingerprint, settings_key(cfg, prompt_stops(cfg, p)) | chat_settings, p)
            for p in prompts]

    def compute(missing: list[int], store) -> None:
        todo = [prompts[i] for i in missing]
        if cfg.backend == "vllm":
            for i, answer in zip(missing, _generate_vllm(resolved, todo, cfg)):
                store(i, answer.payload())
            return
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        model, _ = load_causal_lm(model_spec, allow_pickle, revision)
        if torch.cuda.is_available():
            model = model.cuda()
        tokenizer = load_tokenizer(resolved, revision)
        generate_answers(model, tokenizer, todo, cfg, progress=progress,
                         on_answer=lambda j, answer: store(missing[j], answer.payload()),
                         names=[names[i] for i in missing] if names else None, chat=chat)

    found, info = cached_map(cache, keys, compute, progress)
    answers = [Answer(p, f["response"], f["tokens"], f["stop"], f["token_ids"], f.get("prompt_tokens_cut", 0))
               for p, f in zip(given, found)]
    settings = settings_key(cfg, list(cfg.stop_strings)) | chat_settings | {
        "stop_strings_on": sum(stops_at_human_turn(cfg, p) for p in prompts)}  # prompts they applied to
    info = {"model": model_spec, "resolved": resolved, "revision": revision, "fingerprint": fingerprint,
            "settings": settings, **info, **summarize(answers)}
    return answers, info


def answer_evalset(model_spec: str, evalset: dict, cfg: GenerateConfig = GenerateConfig(),
                   cache: ResultCache | None = None, allow_pickle: bool = False, revision: str | None = None,
                   progress=None) -> tuple[dict, dict]:
    """Answers to every prompt of an evaluation set, in its order: {"harmful": [...], "helpful":
    [...]} of {"id", "prompt", "response", "tokens", "stop"}, and {"suites": {name: [...]}} with
    each answer's category (and type) when the set has suites. An evaluation set in the chat format is
    rendered by the model's own chat template."""
    items = [(cat, None, item) for cat in CATEGORIES for item in evalset[cat]]
    kinds = {name: suite["kind"] for name, suite in evalset.get("suites", {}).items()}
    items += [(item["category"], name, item) for name, suite in evalset.get("suites", {}).items()
              for item in suite["items"]]
    chat = (evalset.get("provenance") or {}).get("config", {}).get("format") == "chat"
    answers, info = generate_cached(model_spec, [item["prompt"] for _, _, item in items], cfg, cache,
                                    allow_pickle, revision, progress,
                                    names=[f"{suite or ''}{' ' if suite else ''}{cat} prompt {item['id']}"
                                           for cat, suite, item in items], chat=chat)
    # how answers ended, counted over the HH prompts (what the report tests against the base), each suite apart
    hh = sum(suite is None for _, suite, _ in items)
    info |= summarize(answers[:hh])
    if kinds:
        info["suites"] = {name: summarize([a for (_, s, _), a in zip(items, answers) if s == name]) for name in kinds}
    out = {"harmful": [], "helpful": []}
    for (cat, suite, item), a in zip(items, answers):
        answer = ({"id": item["id"], "prompt": item["prompt"], "response": a.response, "tokens": a.tokens,
                   "stop": a.stop} | ({"prompt_tokens_cut": a.prompt_tokens_cut} if a.prompt_tokens_cut else {}))
        if suite is None:
            out[cat].append(answer)
        else:
            extra = {"category": cat, "suite_kind": kinds[suite]} | ({"type": item["type"]} if "type" in item else {})
            out.setdefault("suites", {}).setdefault(suite, []).append(answer | extra)
    return out, info


def answer_files_of(folder: str | Path, index: int, name: str, suites: list[str] = ()) -> list[Path]:
    """The files `write_answer_files` writes for one model: what later stages read."""
    return ([Path(folder) / answer_filename(index, name, cat) for cat in CATEGORIES]
            + [Path(folder) / suite_filename(index, name, suite) for suite in suites])


def write_answer_files(folder: str | Path, index: int, name: str, answers: dict, info: dict) -> list[Path]:
    """`<index>_<name>_<harmful|helpful>.json` (what `score` reads), a `<index>_<name>_suite-<suite>.json`
    per suite, and `<index>_<name>_generation.json`."""
    check_name(name, "name")
    suites = answers.get("suites", {})
    paths = answer_files_of(folder, index, name, list(suites))
    contents = [answers[cat] for cat in CATEGORIES] + list(suites.values())
    paths = [atomic_write_json(path, content) for path, content in zip(paths, contents)]
    atomic_write_json(Path(folder) / generation_filename(index, name), info)
    return paths
