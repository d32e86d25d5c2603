"""The study's settings (TinyZero / veRL) as our defaults, and the PPO math fixes that bring
ppo.py in line with veRL: each test here fails on the code before the fidelity issue."""
import json
import os
import subprocess
import sys

import pytest
import torch

import common
import countdown
import optim
import ppo
import sampler
import sft
from conftest import REPO


def bos_tokenizer():
    """The tiny tokenizer made to add a BOS like Llama-3's does (built locally, no download)."""
    from tokenizers.processors import TemplateProcessing
    tok = common.load_tokenizer("tiny")
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_token_id)])
    assert tok("12 + 3").input_ids[0] == tok.bos_token_id      # it does add one by default
    return tok


# ---------------------------------------------------------------- defaults
def test_ppo_defaults_are_the_studys():
    """verl/trainer/config/ppo_trainer.yaml + scripts/train_tiny_zero_n4_cd.sh."""
    a = ppo.parse_args([])
    study = dict(steps=250, prompts_per_step=256, samples_per_prompt=4, temperature=1.0, max_prompt_len=256,
                 max_response_len=1024, actor_lr=1e-6, critic_lr=1e-5, warmup_steps=0, weight_decay=0.01,
                 kl_coef=0.001, kl_kind="k1", kl_target=None, kl_in_loss=False, adv_estimator="gae",
                 gamma=1.0, lam=1.0, ppo_epochs=1, mini_batch_prompts=128, clip=0.2, value_clip=0.5,
                 grad_clip=1.0, entropy_coef=0.001, reward="study", eval_every=10, val_size=1024,
                 val_samples=1, template="base")
    assert {k: getattr(a, k) for k in study} == study


def test_sft_defaults_are_the_studys():
    """slurm_scripts/sft.sh + verl/trainer/config/sft_trainer.yaml."""
    a = sft.parse_args(["--model", "tiny", "--data", "x.jsonl"])
    study = dict(lr=1e-5, weight_decay=0.01, warmup_frac=0.1, min_lr_frac=0.0, epochs=5, batch_size=64,
                 max_len=2048, beta1=0.9, beta2=0.95, grad_clip=1.0)
    assert {k: getattr(a, k) for k in study} == study
    assert sft.lr_at(0, 100, 1.0, 10, 0.0) == pytest.approx(0.1)       # warm-up
    assert sft.lr_at(99, 100, 1.0, 10, 0.0) < 0.01                      # cosine to ~0


def test_sft_weight_decay_covers_every_parameter():
    model = common.load_model("tiny")
    args = sft.parse_args(["--model", "tiny", "--data", "x.jsonl", "--device", "cpu"])
    opt = sft.make_optimizer(model, args, "cpu")
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01]
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == \
        sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- no BOS
def test_no_bos_on_prompts_in_ppo_and_sft():
    """The study tokenizes with add_special_tokens=False (rl_dataset, sft_dataset)."""
    tok = bos_tokenizer()
    prompt = countdown.make_prompt([1, 2, 3], 6)
    ids, mask = sampler.encode_prompts(tok, [prompt, prompt + " x"], 256)
    assert tok.bos_token_id not in ids[mask > 0].tolist()
    assert ids[1, -len(tok(prompt, add_special_tokens=False).input_ids) - 2:].tolist() != []
    exs, _ = sft.tokenize_records([{"prompt": prompt, "completion": " 1+2+3"}], "pc", tok, 2048)
    assert exs[0][0][0] != tok.bos_token_id
    assert exs[0][0][:len(tok(prompt, add_special_tokens=False).input_ids)] == \
        tok(prompt, add_special_tokens=False).input_ids
    exs, _ = sft.tokenize_records([{"text": "some text"}], "text", tok, 2048)
    assert tok.bos_token_id not in exs[0][0]


# ---------------------------------------------------------------- the task stream
def test_train_tasks_walk_shuffled_epochs_without_replacement():
    tasks = [{"id": i, "nums": [1, 2], "target": 3} for i in range(10)]
    a = ppo.parse_args(["--prompts-per-step", "3", "--mini-batch-prompts", "3"])
    one = {"rank": 0, "world_size": 1}
    draws = [[t["id"] for t in ppo.draw_tasks(tasks, s, a, one)] for s in range(1, 7)]
    assert all(len(d) == 3 for d in draws)
    epoch1, epoch2 = sum(draws[:3], []), sum(draws[3:], [])
    assert len(set(epoch1)) == 9 and len(set(epoch2)) == 9 and epoch1 != epoch2   # drop_last: 1 left out
    assert draws == [[t["id"] for t in ppo.draw_tasks(tasks, s, a, one)] for s in range(1, 7)]  # resumable
    halves = [[t["id"] for t in ppo.draw_tasks(tasks, 2, a, {"rank": r, "world_size": 2})] for r in (0, 1)]
    assert sorted(halves[0] + halves[1]) == sorted(draws[1])


# ---------------------------------------------------------------- PPO math
def tiny_batch(policy, ref, n=4, R=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(5, 200, (n, 10 + R), generator=g)
    return {"seq": seq, "attn": torch.ones_like(seq), "mask": torch.ones(n, R),
            "scores": torch.tensor([1.0, 0.1, 0.0, 1.0][:n])}


def test_old_and_reference_logprobs_use_the_sampling_temperature():
    model = common.load_model("random:tiny")
    args = ppo.parse_args(["--temperature", "0.7", "--adv-estimator", "grpo"])
    b = ppo.compute_advantages(tiny_batch(model, model), model, model, None, args, 0.001, {})
    with torch.no_grad():
        logits = model(input_ids=b["seq"]).logits[:, -7:-1].float()
    want = torch.log_softmax(logits / 0.7, -1).gather(-1, b["seq"][:, -6:, None]).squeeze(-1)
    assert torch.allclose(b["old_logp"], want, atol=1e-5) and torch.allclose(b["ref_logp"], want, atol=1e-5)


def test_grpo_keeps_the_kl_penalty_in_the_reward():
    policy, ref = common.load_model("random:tiny"), common.load_model("random:tiny")
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))      # a reference the policy has moved away from
    args = ppo.parse_args(["--adv-estimator", "grpo", "--samples-per-prompt", "4"])
    adv = [ppo.compute_advantages(tiny_batch(policy, ref), policy, ref, None, args, c, {})["adv"]
           for c in (0.0, 0.5)]
    assert not torch.allclose(adv[0], adv[1])
    b = tiny_batch(policy, ref)
    out = ppo.compute_advantages(b, policy, ref, None, args, 0.5, {})
    want = ppo.grpo_advantages(b["scores"] - 0.5 * out["kl"].sum(1), 4, b["mask"])
    assert torch.allclose(out["adv"], want, atol=1e-5)


def test_whitening_is_veRLs_unbiased_one():
    x, mask = torch.randn(3, 5), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).float()
    v = x[mask > 0]
    w = ppo.masked_whiten(x, mask)
    assert torch.allclose(w[mask > 0], (v - v.mean()) / (v.var(unbiased=True) + 1e-8).sqrt(), atol=1e-6)


def test_entropy_bonus_enters_the_actor_loss_with_its_gradient():
    model = common.load_model("random:tiny")
    b = tiny_batch(model, model)
    b.update(old_logp=torch.zeros(4, 6), adv=torch.zeros(4, 6), ref_logp=torch.zeros(4, 6))
    idx = torch.arange(4)
    losses = {}
    for coef in (0.0, 0.5):
        args = ppo.parse_args(["--entropy-coef", str(coef)])
        loss, st = ppo.actor_loss_fn(args, 0.001)(model, b, idx)
        losses[coef] = loss
    assert float((losses[0.0] - losses[0.5]).detach()) == pytest.approx(0.5 * float(st["entropy"]), rel=1e-4)
    model.zero_grad()
    losses[0.5].backward()      # advantages are 0: any gradient comes from the entropy term
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bf16_gradients_accumulate_in_fp32():
    """Micro-batch gradients of bf16 weights are summed in fp32 and handed to the optimizer
    (a bf16 .grad would round at every micro-batch)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64).to(torch.bfloat16)
    opt = optim.MasterAdamW(model.parameters(), device="cpu", lr=0.0)
    seen = {}
    opt.step = lambda grads=None: seen.update(grads=grads)
    xs = torch.randn(16, 64) * torch.logspace(-3, 3, 16)[:, None]   # gradients of mixed magnitudes
    b = {"mask": torch.ones(16, 1), "x": xs.to(torch.bfloat16)}

    def loss_fn(m, b, idx):
        return m(b["x"][idx]).float().sum(), {}
    args = ppo.parse_args(["--micro-batch", "1", "--grad-clip", "1e9"])
    ppo.minibatch_step(model, opt, b, torch.arange(16), args, {"ddp": False}, loss_fn, {})
    want = []
    for i in range(16):
        model.zero_grad()
        (loss_fn(model, b, torch.tensor([i]))[0] / 16).backward()
        want.append([p.grad.float() for p in model.parameters()])
    want = [sum(g[k] for g in want) for k in range(2)]
    assert seen["grads"] is not None and all(g.dtype == torch.float32 for g in seen["grads"])
    assert all(torch.allclose(g, w, rtol=1e-5, atol=1e-6) for g, w in zip(seen["grads"], want))


def test_random_models_are_identical_in_every_call():
    torch.manual_seed(1)
    a = common.load_model("random:tiny")
    torch.manual_seed(2)
    b = common.load_model("random:tiny")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


# ---------------------------------------------------------------- torchrun
TWO_RANKS = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def test_whitening_under_two_ranks_equals_one_process(tmp_path):
    script = tmp_path / "whiten.py"
    script.write_text(
        "import sys, torch, common, ppo\n"
        "d = common.setup_dist('cpu')\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = torch.randn(8, 7, generator=g)\n"
        "mask = (torch.arange(7)[None] < torch.randint(1, 8, (8,), generator=g)[:, None]).float()\n"
        "full = ppo.masked_whiten(x, mask)\n"
        "r = d['rank']\n"
        "mine = ppo.masked_whiten(x[r * 4:(r + 1) * 4], mask[r * 4:(r + 1) * 4], d)\n"
        "err = (mine - full[r * 4:(r + 1) * 4]).abs().max().item()\n"
        "open(sys.argv[1] + str(r), 'w').write(repr(err))\n"
        "common.cleanup_dist(d)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    r = subprocess.run(TWO_RANKS + [str(script), str(tmp_path / "err")], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert all(float((tmp_path / f"err{k}").read_text()) < 1e-6 for k in (0, 1))


def test_prompts_not_divisible_by_ranks_is_a_clear_error(tmp_path):
    data = tmp_path / "data"
    common.write_jsonl(str(data / "train.jsonl"), countdown.generate_tasks(16, seed=0))
    common.write_jsonl(str(data / "test.jsonl"), countdown.generate_tasks(4, seed=1))
    r = subprocess.run(TWO_RANKS + ["ppo.py", "--model", "tiny", "--data", str(data), "--out", str(tmp_path / "o"),
                                    "--steps", "1", "--prompts-per-step", "3", "--mini-batch-prompts", "3",
                                    "--device", "cpu"],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode != 0 and "must be multiples of the number of ranks (2)" in r.stderr
    assert 'ppo.py", line' not in r.stderr          # ranks exit 2 with the message, no traceback of ours


# ---------------------------------------------------------------- end to end
def test_temperature_run_logs_logp_diff_and_validation_samples(tmp_path):
    """At T=0.7 the engine's log-probs and the recomputed old log-probs agree as at T=1 (both
    are of logits / T); validation runs before step 1 and every --eval-every steps and writes
    its temperature-1 samples to val/step_XXXXXX.jsonl (what classify.py judges)."""
    data = tmp_path / "data"
    common.write_jsonl(str(data / "train.jsonl"), countdown.generate_tasks(32, seed=0))
    common.write_jsonl(str(data / "test.jsonl"), countdown.generate_tasks(6, seed=1))
    diffs = {}
    for T in (1.0, 0.7):
        out = tmp_path / f"run{T}"
        args = ppo.parse_args(["--model", "random:tiny", "--data", str(data), "--out", str(out),
                               "--steps", "2", "--prompts-per-step", "4", "--mini-batch-prompts", "4",
                               "--max-response-len", "16", "--eval-every", "2", "--val-size", "5",
                               "--save-every", "0", "--temperature", str(T), "--device", "cpu"])
        ppo.train(args)
        metrics = common.read_jsonl(str(out / "metrics.jsonl"))
        assert [m["step"] for m in metrics] == [0, 1, 2] and "val/acc_greedy" in metrics[0]
        diffs[T] = [m["rollout/logp_diff"] for m in metrics[1:]]
        val = common.read_jsonl(str(out / "val" / "step_000002.jsonl"))
        assert len(val) == 5 and {r["step"] for r in val} == {2}
        assert os.path.exists(out / "val" / "step_000000.jsonl")
        cfg = json.load(open(out / "config.json"))
        assert cfg["temperature"] == T
    assert max(diffs[0.7]) < 1e-4 and max(diffs[1.0]) < 1e-4, diffs


def test_priming_tasks_and_curation_rewrites_are_the_studys():
    """Priming tasks: numbers 1..24, targets 10..25 (TinyZero tasks/countdown.py, api_gen.py);
    curation rewrites at temperature 0 with 5,120 tokens (relabel_pretrain_qa.py)."""
    import curate_pretrain
    import gen_priming
    g = gen_priming.parse_args([])
    assert (g.num_min, g.num_max, g.target_min, g.target_max, g.n) == (1, 24, 10, 25, 1000)
    c = curate_pretrain.parse_args([])
    assert (c.temperature, c.max_tokens) == (0.0, 5120)


def test_init_alone_names_the_model_too():
    """`ppo.py --init out/sft-llama/final` alone must not pair the tiny tokenizer with its weights."""
    assert ppo.parse_args(["--init", REPO]).model == REPO
    assert ppo.parse_args([]).model == "tiny"
    assert ppo.parse_args(["--model", "tiny", "--init", REPO]).model == "tiny"
