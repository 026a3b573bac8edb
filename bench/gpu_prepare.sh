#!/usr/bin/env bash
# Bring what the GPU machine lacks into .gpu/ (git-ignored; carried by the device tool): wheels for
# its Python 3.12 (trl, datasets, pydantic, deepspeed and what they need beyond its image), and the
# files of ../shared the checks read (the hub models' config and tokenizer files, the study's
# prompts, HH-RLHF's test splits). Needs PyPI and this checkout's .venv (deepspeed ships only a
# source package: its wheel is built here with DS_BUILD_OPS=0, pure Python, its kernels compiled
# on first use there, where ninja and nvcc are). About 13 MB. The GPU image has pyarrow; if its
# version is older than datasets needs (>= 24), GPU_PYARROW=1 adds a wheel of it (53 MB,
# near the device tool's 64 MiB limit on what travels).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu/wheels .gpu/shared/data .gpu/shared/reference-study
# .gpu/ is git-ignored (.gitignore), so it travels only when the device tool carries it
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .gpu/wheels \
  trl==1.16.0 datasets==5.2.0 "dill<0.4.2" "multiprocess<0.70.20" pydantic==2.14.4 pydantic-core==2.50.5 \
  annotated-types typing-inspection hjson ${GPU_PYARROW:+"pyarrow>=24"}
DS_BUILD_OPS=0 .venv/bin/pip wheel -q --no-deps --no-build-isolation -w .gpu/wheels "deepspeed>=0.16"
cp -r ../shared/hub-files .gpu/shared/
cp -r ../shared/data/hh-rlhf .gpu/shared/data/
cp -r ../shared/reference-study/prompts .gpu/shared/reference-study/
du -sh .gpu
