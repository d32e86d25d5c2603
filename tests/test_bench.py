"""bench.py runs end to end on the CPU with the tiny model and writes figures that add up."""
import json
import os
import subprocess
import sys

import pytest

import bench

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_cpu_smoke(tmp_path):
    out = tmp_path / "bench.json"
    # the documented CPU smoke run (every part): --device cpu picks bench.CPU_SIZES
    # with the PPO step at 1 and 2 ranks (torchrun, FSDP2 on gloo) and at the study's lengths
    cmd = [sys.executable, "bench.py", "--model", "tiny", "--device", "cpu", "--parts", "all", "--out", str(out),
           "--ngpu", "1,2,1:study", "--train-configs", "nockpt:2,nockpt:2+ppo+profile,fwd:4"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["ceilings"]["copy_bytes_per_s"] > 0 and res["ceilings"]["matmul_flops_per_s"] > 0
    rows = res["generate"]["rows"]
    assert [x["batch"] for x in rows] == [4, 8]
    assert all(x["engine_tok_s"] > 0 for x in rows) and "hf_tok_s" in rows[1]
    assert abs(rows[1]["speedup_vs_hf"] - rows[1]["engine_tok_s"] / rows[1]["hf_tok_s"]) < 1e-6
    c = res["correct"]
    assert c["engine_vs_hf/rows_identical"] == c["prompts"]      # fp32 on a CPU: exact
    assert c["logp_mean_abs_diff"] < 1e-4
    tr = res["train"]
    assert [x["config"] for x in tr["rows"]] == ["nockpt:2", "nockpt:2+ppo+profile", "fwd:4"]
    flops = {"nockpt": 6, "fwd": 2}     # per parameter and token: forward + backward, or forward only
    for x in tr["rows"]:
        per = flops[x["config"].split(":")[0]] * tr["n_params"] * x["tok_s"]
        assert x["tok_s"] > 0 and abs(x["mfu_vs_measured"] - per / res["ceilings"]["matmul_flops_per_s"]) < 1e-9
    assert "aten::" in (tmp_path / "train_profile_nockpt_2_ppo_profile" / "rank0.txt").read_text()
    assert [(x["ngpu"], x["lengths"], x["fsdp"]) for x in res["ppo"]] == [(1, "forced", False), (2, "forced", True),
                                                                         (1, "study", False)]
    for ppo in res["ppo"]:
        assert ppo["phases_s"]["generate"] > 0 and ppo["phases_s"]["actor_update"] > 0
        assert ppo["logp_diff"] < 1e-4                             # engine vs training forward
        assert ppo["kl_step1"] == 0.0                              # policy == reference at step 1
        assert ppo["host_gb"] > 0 and 0 <= ppo["pad_waste"] <= ppo["pad_waste_unsorted"] < 1
    assert [x["response_length"] for x in res["ppo"][:2]] == [8, 8] and res["ppo"][2]["response_length"] != 8
    lines = r.stdout.strip().splitlines()
    assert "generate B=8" in r.stdout and "ppo 2 GPU, forced lengths" in r.stdout
    assert lines[-5].startswith("GPUs lengths") and lines[-1].startswith("host memory at 8 ranks")


def test_bench_rejects_bad_flags():
    r = subprocess.run([sys.executable, "bench.py", "--parts", "warp"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "--parts" in r.stderr
    r = subprocess.run([sys.executable, "bench.py", "--device", "cpu", "--model", "random:qwen2.5-3b"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "--device cpu" in r.stderr


def test_scaling_figures():
    """The 8-rank host memory: a + b/N fitted to the FSDP runs (one run: its own figure per
    rank, an upper bound); one process's figure (no FSDP) is left out. Cores go with GPUs."""
    rows = [{"ngpu": 1, "host_gb": 114.0, "fsdp": False}, {"ngpu": 2, "host_gb": 10.0, "fsdp": True},
            {"ngpu": 4, "host_gb": 7.0, "fsdp": True}]
    total, per = bench.host_at(rows)                   # a + b/N through (2, 10) and (4, 7): a = 4, b = 12
    assert per == pytest.approx(4 + 12 / 8) and total == pytest.approx(8 * per)
    assert bench.host_at(rows[:2]) == (80.0, 10.0) and bench.host_at(rows[:1]) is None
    assert bench.share(list(range(64)), [2, 3], 4) == list(range(32, 64))
    r = subprocess.run([sys.executable, "bench.py", "--ngpu", "1,2:warp"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "--ngpu" in r.stderr


def test_cpu_sizes_fill_only_what_the_user_left():
    a = bench.parse_args(["--model", "tiny", "--device", "cpu"])
    assert (a.batch_sizes, a.hf_batch_sizes, a.new_tokens, a.ppo_prompts) == ([4, 8], [8], 12, 2)
    a = bench.parse_args(["--model", "tiny", "--device", "cpu", "--new-tokens", "20", "--batch-sizes", "2"])
    assert (a.batch_sizes, a.new_tokens, a.prompt_len) == ([2], 20, 16)
    # a flag given with the GPU default's own value is the user's too (it was replaced before)
    a = bench.parse_args(["--model", "tiny", "--device", "cpu", "--ppo-prompts", "256", "--ppo-samples", "4"])
    assert (a.ppo_prompts, a.ppo_samples, a.ppo_len) == (256, 4, 8)
    a = bench.parse_args(["--model", "tiny", "--device", "cuda"])     # parsing only: no GPU needed
    assert (a.batch_sizes, a.new_tokens) == ([64, 256, 512, 1024], 512)
