#!/usr/bin/env bash
# The GPU figures in the README: one PPO step of the study's shape and SFT throughput with a
# Qwen2.5-3B-shaped model (random weights, forced lengths), on one GPU and on two (torchrun).
# Usage: bash experiments/gpu_ppo_sft.sh ppo|sft OUTDIR
# CBM_GPU_MEM_GB=78 caps the single-GPU runs at an H100's memory when run on an H200.
set -x
what=$1; out=${2:-out/gpu}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv
python countdown.py --out data/gpu-cd --n-train 2000 --n-test 64 >/dev/null
python common.py --make-tiny >/dev/null 2>&1   # the tokenizer random:* models borrow
if [ "$what" = ppo ]; then
  PPO="ppo.py --model random:qwen2.5-3b --data data/gpu-cd --steps 1 --prompts-per-step 256 --samples-per-prompt 4
       --max-response-len 512 --force-response-len 512 --micro-batch 16 --eval-every 0
       --log-rollouts-every 0 --save-every 0 --no-save-final"
  CUDA_VISIBLE_DEVICES=0 CBM_GPU_MEM_GB=${CBM_GPU_MEM_GB:-78} python $PPO --out "$out/ppo_1gpu" 2>&1 | grep -v "Loading weights" | tee "$out/ppo_1gpu.log"
  torchrun --standalone --nproc_per_node=2 $PPO --out "$out/ppo_2gpu" 2>&1 | grep -v "Loading weights" | tee "$out/ppo_2gpu.log"
  cp "$out"/ppo_1gpu/metrics.jsonl "$out/ppo_1gpu_metrics.jsonl"; cp "$out"/ppo_2gpu/metrics.jsonl "$out/ppo_2gpu_metrics.jsonl"
else
  SFT="sft.py --model random:qwen2.5-3b --synthetic 1024 --max-steps 6 --batch-size 64 --micro-batch 8 --grad-ckpt --no-save"
  CUDA_VISIBLE_DEVICES=0 CBM_GPU_MEM_GB=${CBM_GPU_MEM_GB:-78} python $SFT --out "$out/sft_1gpu" 2>&1 | grep -v "Loading weights" | tee "$out/sft_1gpu.log"
  torchrun --standalone --nproc_per_node=2 sft.py ${SFT#sft.py} --out "$out/sft_2gpu" 2>&1 | grep -v "Loading weights" | tee "$out/sft_2gpu.log"
fi
