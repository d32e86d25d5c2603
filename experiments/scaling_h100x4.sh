#!/usr/bin/env bash
# PPO scaling on one host of 4 GPUs (nvidia-h100-x4), one command:
#   bash experiments/scaling_h100x4.sh OUTDIR [RUNS]
# One PPO step of the study's shape (256 prompts x 4 samples, Qwen2.5-3B shape with random
# weights, --micro-batch 8, checkpointing as below), two steps per run and the second reported (the first
# compiles and captures), through bench.py --parts ppo. RUNS (default 4,1,1:study,2):
#   1. 4 GPUs (FSDP2), forced 512-token responses, alone on the machine;
#   2. side by side (--concurrent: each run on its own GPUs and their 16 of the 64 cores):
#      1 GPU forced (GPU 0), 1 GPU at the study's lengths (GPU 1), 2 GPUs FSDP2 forced (GPUs
#      2-3). The 1-GPU runs keep their fp32 masters and AdamW states on the CPU (~114 GB of
#      host memory each); time/optim_wait > 0 in their rows would mean the shared host slowed
#      their background optimizer.
# The study's lengths are scaled to the forced runs' 512-token cap (--ppo-study-len 512: mean
# 166, the same longest row), so that row differs from the forced one in the lengths alone. At
# the study's own 1,024 cap a micro-batch of 8 of the longest rows without checkpointing needs
# ~85 GB on one GPU (estimated from the 61 GB peak at 640 tokens).
# Measured on 4 H100 80GB (2026-11-26, RUNS=4,1,2, docs/bench/scaling_h100x4_2026-11-26/): run 1
# took ~3 minutes (39.4 s a step), the 1-GPU forced run 113.4 s a step, and the 2-GPU run ran
# out of memory: 2 ranks' FSDP shards (~46 GB) and a micro-batch of 8 without checkpointing do
# not fit 80 GB. So on cards under 100 GB every row keeps ppo.py's default (--grad-ckpt), the
# same flags in every row; on H200s every row takes --no-grad-ckpt as before. With
# checkpointing the calls run longer: split them, same OUTDIR (rows add up in bench.json):
#   bash experiments/scaling_h100x4.sh OUT 4        # ~4 minutes
#   bash experiments/scaling_h100x4.sh OUT 1,1:study,2   # ~7 minutes (estimated)
# Run 1 goes first so that runs 2 find torch.compile's caches warm. bench.py prints the scaling
# table (step s, tokens/s, speed-up against 1 GPU, GPU and host GB per rank, padding waste) and
# the host memory 8 ranks would need; OUTDIR gets bench.json (rewritten after each run),
# bench.log, each run's folder (config.json, metrics.jsonl) and log (ppo_<N>gpu_<lengths>.log).
set -x
out=${1:-out/scaling}; runs=${2:-4,1,1:study,2}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv
nproc; free -g | head -2; python -c "import torch; print(torch.__version__)"
python common.py --make-tiny >/dev/null 2>&1   # the tokenizer random:* models borrow
mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1)
ckpt=$([ "${mem:-0}" -lt 100000 ] && echo --grad-ckpt || echo --no-grad-ckpt)
# every row the same layers: ppo.py compiles them by default on one GPU only (off under FSDP2,
# not measured there), so the ratio compares like with like; COMPILE=--compile tries both.
# EXTRA: more ppo.py flags for every row, e.g. EXTRA=--fsdp-accumulate (one reduce-scatter a
# mini-batch under FSDP2; the 1-GPU rows ignore it)
python bench.py --parts ppo --ngpu "$runs" --concurrent --ppo-study-len 512 \
  --ppo-args "$ckpt --micro-batch 8 ${COMPILE:---no-compile} ${EXTRA:-}" --out "$out/bench.json" 2>&1 | grep -v "Loading weights" | tee -a "$out/bench.log"
