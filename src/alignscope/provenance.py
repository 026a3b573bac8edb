"""What a run records about where its numbers came from: package versions, the
git commit of alignscope itself, the machine, and the study manifest."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from alignscope.io import read_json, sha256_file

PACKAGES = ("alignscope", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "scipy",
            "scikit-learn")


def package_versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    """The commit of alignscope's checkout, with "-dirty" when tracked files differ from it:
    a commit alone would claim code that did not run."""
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD"], capture_output=True).returncode
        return commit + ("-dirty" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def machine() -> dict:
    import torch

    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def trained_model_record(folder: Path) -> dict:
    """What the manifest says of one trained model folder (done.json and data_manifest.json)."""
    done = read_json(folder / "done.json")
    data = read_json(folder / "data_manifest.json")
    return {"start_model": done["resolved_model"], "start_fingerprint": done.get("start_fingerprint"),
            "steps": done["global_step"], "precision": done["precision"], "seed": done.get("seed"),
            "dropout_disabled": done.get("dropout_disabled"),
            "rows_trained": data["rows_trained"], "rows_sha256": data["rows_sha256"],
            "data_files": [{k: f[k] for k in ("path", "sha256")} for f in data["files"]]}


def study_manifest(*, name: str, config: dict, config_file: str | None, evalset_path: Path, evalset: dict,
                   judge: dict, trained: dict, answers: dict, seeds: dict, timings: list) -> dict:
    return {"study": name, "config_file": config_file, "config": config, "versions": package_versions(),
            "git_commit": git_commit(), "machine": machine(), "seeds": seeds,
            "evalset": {"sha256": sha256_file(evalset_path), "provenance": evalset["provenance"]},
            "judge": judge, "trained_models": trained, "generation": answers, "timings": timings}
