#!/usr/bin/env bash
# Every check that needs a GPU, one line each; at most 9 minutes on one H200 (each check has its limit).
#
# Here, once (needs PyPI):  bash bench/gpu_prepare.sh      -> .gpu/ (git-ignored): wheels the GPU
#                           machine lacks, and the files of ../shared the checks read
# On the GPU machine:       bash bench/gpu_check.sh        (device tool: carry [".gpu"], timeout_s 580)
#
# Lines: bf16-train, bf16-generate, eval-bench (the study's method against ours, answers/s and the
# speedup; the bar is 30x), accelerate-<config> for each config that can start on one GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src"
if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
[ -d .gpu/shared ] && export ALIGNSCOPE_SHARED="$PWD/.gpu/shared"
export ALIGNSCOPE_CACHE=/tmp/alignscope-cache HF_HUB_OFFLINE=1 ALIGNSCOPE_QUIET=1 TQDM_DISABLE=1
logs="${OUT:-/tmp/alignscope-gpu-check}"
mkdir -p "$logs"

check() {  # check NAME SECONDS COMMAND...: one line, the command's last line or why it failed
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  if timeout "$limit" "$@" >"$logs/$name.log" 2>&1; then
    echo "$name: ok in $((SECONDS - start)) s: $(tail -n 1 "$logs/$name.log")"
  else
    echo "$name: FAILED after $((SECONDS - start)) s: $(tail -n 3 "$logs/$name.log" | tr '\n' ' ' | cut -c1-400)"
  fi
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | sed 's/^/gpu: /'
check bf16-train 120 python3 bench/gpu_checks.py train
check bf16-generate 75 python3 bench/gpu_checks.py generate
check eval-bench 150 python3 bench/eval_throughput.py --model opt-350m-shape --scorer openassistant-shape --baseline-sample 20
for config in ddp fsdp deepspeed-zero2 deepspeed-zero3; do
  # one process: does the config start, train two steps and save a plain HF folder?
  check "accelerate-$config" 50 python3 -m accelerate.commands.launch --config_file "configs/accelerate/$config.yaml" \
    --num_processes 1 -m alignscope train sft configs/recipes/sft.yaml model=/tmp/alignscope-gpu-check/opt-350m-shape \
    "data.source=${ALIGNSCOPE_SHARED:-../shared}/data/hh-rlhf" data.split=test "data.subsets=[helpful-base]" data.limit=16 \
    training.max_steps=2 "output_dir=/tmp/alignscope-gpu-check/accelerate-$config"
done
