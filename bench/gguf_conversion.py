"""Converting the packaged GGUF models to safetensors: transformers' path as it is against
alignscope's (each file parsed once for config, tokenizer and weights), side by side.

  python bench/gguf_conversion.py                  # SmolLM2-135M-Instruct and Gemma-3-270M, 2 rounds
  python bench/gguf_conversion.py --models gemma-3-270m --rounds 3

Each conversion runs in a fresh process into a new, empty model cache, the two setups
alternating; printed per conversion: wall and CPU seconds (user + system of the child) and
minor page faults; then per model the fastest of each setup, their ratio, and whether the
two converted folders hold the same bytes (every file but the markers that record when and
where the folder was made). The last line is `ratio as-is/parsed-once: N.NNx`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import contextlib, sys
sys.path.insert(0, {src!r})
import alignscope.models as models
if {as_is!r}:
    models.gguf_parsed_once = contextlib.nullcontext
models.packaged_model_path({name!r})
"""


def convert(name: str, as_is: bool, cache: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHILD.format(src=str(ROOT / "src"), as_is=as_is, name=name)],
                   env={**os.environ, "ALIGNSCOPE_CACHE": str(cache)}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": wall, "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
            "minflt": after.ru_minflt - before.ru_minflt}


def folder_digest(folder: Path) -> str:
    from alignscope.models import CONVERSION_MARKER

    h = hashlib.sha256()
    # the markers record when and where the folder was made; everything else must match
    for f in sorted(p for p in folder.rglob("*")
                    if p.is_file() and p.name != CONVERSION_MARKER and not p.name.startswith(".alignscope")):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma-3-270m"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    total = {"as-is": 0.0, "parsed-once": 0.0}
    with tempfile.TemporaryDirectory(prefix="gguf-bench-") as tmp:
        for name in args.models:
            best, digests = {}, {}
            for r in range(args.rounds):
                for setup in (("as-is", "parsed-once") if r % 2 == 0 else ("parsed-once", "as-is")):
                    cache = Path(tmp) / f"{name}-{setup}-{r}"
                    m = convert(name, setup == "as-is", cache)
                    digests.setdefault(setup, set()).add(folder_digest(cache / "models" / name))
                    print(f"  {name} round {r + 1} {setup:>11}: {m['wall']:6.1f} s wall, {m['cpu']:6.1f} s CPU, "
                          f"{m['minflt']:>9} minor faults", flush=True)
                    if setup not in best or m["wall"] < best[setup]["wall"]:
                        best[setup] = m
            same = len(digests["as-is"] | digests["parsed-once"]) == 1
            print(f"{name}: as-is {best['as-is']['wall']:.1f} s, parsed once {best['parsed-once']['wall']:.1f} s "
                  f"(fastest of {args.rounds}): {best['as-is']['wall'] / best['parsed-once']['wall']:.2f}x; "
                  f"same bytes: {'yes' if same else 'NO'}")
            for setup in total:
                total[setup] += best[setup]["wall"]
    print(f"ratio as-is/parsed-once: {total['as-is'] / total['parsed-once']:.2f}x "
          f"({total['as-is']:.1f} s against {total['parsed-once']:.1f} s)")


if __name__ == "__main__":
    main()
