#!/usr/bin/env bash
# The GPU figures in the README: one PPO step of the study's shape and SFT throughput with a
# Qwen2.5-3B-shaped model (random weights, forced lengths), on one GPU or two (torchrun).
# Usage: bash experiments/gpu_ppo_sft.sh NGPU OUTDIR      (NGPU = 1 or 2)
# CBM_GPU_MEM_GB=78 caps the single-GPU runs at an H100's memory when run on an H200.
set -x
ngpu=$1; out=${2:-out/gpu}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv
python countdown.py --out data/gpu-cd --n-train 2000 --n-test 64 >/dev/null 2>&1
python common.py --make-tiny >/dev/null 2>&1   # the tokenizer random:* models borrow
PPO="ppo.py --model random:qwen2.5-3b --data data/gpu-cd --steps 1 --prompts-per-step 256 --samples-per-prompt 4
     --max-response-len 512 --force-response-len 512 --micro-batch 16 --eval-every 0
     --log-rollouts-every 0 --save-every 0 --no-save-final --overwrite --out $out/ppo_${ngpu}gpu"
SFT="sft.py --model random:qwen2.5-3b --synthetic 1024 --max-steps 6 --batch-size 64 --micro-batch 8
     --grad-ckpt --no-save --overwrite --out $out/sft_${ngpu}gpu"
if [ "$ngpu" = 1 ]; then
  run="env CUDA_VISIBLE_DEVICES=0 CBM_GPU_MEM_GB=${CBM_GPU_MEM_GB:-78} python"
else
  run="torchrun --standalone --nproc_per_node=$ngpu"
fi
$run $SFT 2>&1 | grep -v "Loading weights" | tee "$out/sft_${ngpu}gpu.log"
$run $PPO 2>&1 | grep -v "Loading weights" | tee "$out/ppo_${ngpu}gpu.log"
cp "$out/ppo_${ngpu}gpu/metrics.jsonl" "$out/ppo_${ngpu}gpu_metrics.jsonl"
