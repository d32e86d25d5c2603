#!/usr/bin/env bash
# FSDP2 on real GPUs, small and quick (nvidia-h100-x2): the tiny model under torchrun with
# 2 ranks (FSDP2 by default), the same run stopped after 2 steps and resumed to 4, and the
# one-GPU path (engine + sorted micro-batches) on GPU 0; final weights compared.
#   bash experiments/fsdp_check_2gpu.sh OUTDIR
out=${1:-out/fsdp_check}; mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi -L; python -c "import torch, transformers; print(torch.__version__, transformers.__version__)"
python common.py --make-tiny >/dev/null 2>&1
python countdown.py --n-train 512 --n-test 64 --out "$out/data" > "$out/countdown.log" 2>&1
python engine.py --model tiny --device cuda --check > "$out/engine.log" 2>&1; echo "engine rc=$?"
run="ppo.py --model tiny --data $out/data --prompts-per-step 16 --samples-per-prompt 4 --mini-batch-prompts 8
     --max-response-len 128 --val-size 32 --eval-every 2 --save-every 2 --device cuda --seed 0"
CUDA_VISIBLE_DEVICES=0 timeout 150 python $run --steps 4 --out "$out/one" > "$out/one.log" 2>&1; echo "1 GPU rc=$?"
timeout 150 torchrun --nproc_per_node 2 $run --steps 4 --out "$out/fsdp" > "$out/fsdp.log" 2>&1; echo "2 GPUs rc=$?"
timeout 150 torchrun --nproc_per_node 2 $run --steps 2 --out "$out/fsdp_r" > "$out/fsdp_r1.log" 2>&1; echo "2 GPUs, 2 steps rc=$?"
timeout 150 torchrun --nproc_per_node 2 $run --steps 4 --resume --out "$out/fsdp_r" > "$out/fsdp_r2.log" 2>&1; echo "resumed rc=$?"
python - "$out" <<'PY'
import sys, torch
from safetensors.torch import load_file
o = sys.argv[1]
a, b = (load_file(f"{o}/{d}/final/model.safetensors") for d in ("fsdp", "fsdp_r"))
d = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
print(f"uninterrupted vs resumed (2 GPUs, FSDP2): max |diff| {d:.3g}, bitwise {all(torch.equal(a[k], b[k]) for k in a)}")
c = load_file(f"{o}/one/final/model.safetensors")
print(f"1 GPU vs 2 GPUs: max |diff| {max((a[k].float() - c[k].float()).abs().max().item() for k in a):.3g}")
PY
for f in one fsdp fsdp_r; do echo "== $f"; tail -n 3 "$out/$f/metrics.jsonl" | cut -c1-400; done
