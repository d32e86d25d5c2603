#!/bin/bash
# One GPU, the study's PPO step (Qwen2.5-3B shape, random weights, 256 prompts x 4 samples,
# --no-grad-ckpt --micro-batch 8, the second step of each run): bench.py --parts ppo at forced
# 512-token responses and at the study's lengths (scaled to the same 512-token cap), one run
# after the other. ~16 minutes for both: run it through experiments/bg.sh, which outlives calls:
#   bash experiments/bg.sh OUT 'bash experiments/step_1gpu.sh /tmp/bg/s'
#   RUNS=1 ... (forced lengths only, ~8 minutes); EXTRA='--no-compile' (eager layers)
# Measured on one H100 (docs/bench/h100_ppo_step_s12_*): 115.6 s forced and 63.3 s at the
# study's lengths with eager layers; README, Speed. A profile of a 64-prompt step under
# ppo.py --profile-step was tried here too and died without a word (likely the host's memory:
# ~118 GB of the CPU optimizer's states beside the profiler's events); bench.py --parts train
# with '+profile' items gives the passes' top ops instead.
set -x
out=${1:?usage: bash experiments/step_1gpu.sh OUTDIR}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv; nproc; free -g | head -2
python common.py --make-tiny >/dev/null 2>&1   # the tokenizer random:* models borrow
python bench.py --parts ppo --ngpu "${RUNS:-1,1:study}" --ppo-study-len 512 \
  --ppo-args "--no-grad-ckpt --micro-batch 8 ${EXTRA:-}" --out "$out/bench.json" 2>&1 \
  | grep -v "Loading weights" | tee "$out/bench.log"
