"""
PPO from scratch on Countdown, as the study ran it (TinyZero / veRL defaults).

    # CPU, tiny model (seconds a step)
    python ppo.py --model tiny --init out/sft_tiny/final --data data/countdown --out out/ppo-tiny \
        --steps 20 --prompts-per-step 8 --samples-per-prompt 4 --max-response-len 128
    # one GPU, the study's settings (256 prompts x 4 samples, 1024-token responses, 250 steps)
    python ppo.py --model qwen2.5-3b --data data/countdown --out out/ppo-qwen
    # several GPUs: prompts sharded by rank; actor, critic and reference sharded with FSDP2
    # (fp32 master shards and AdamW states on the GPUs, bf16 compute; --no-fsdp: DDP)
    torchrun --standalone --nproc_per_node=4 ppo.py --model llama-3.2-3b --init out/sft-llama/final \
        --out out/ppo-llama
    # several hosts (not yet run): the same command on each, --out and --data on a shared disk
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST0:29500 --rdzv-id=ppo-llama \
        ppo.py --model llama-3.2-3b --init out/sft-llama/final --out out/ppo-llama

What one step does (each line below is a block in `train_step`):
  1. draw P prompts from train.jsonl and sample K responses each at temperature 1.0;
  2. score each response with countdown.score (1.0 correct, 0.1 well-formed, 0 none), placed
     on its last token (the EOS, or the last token if it ran out of length);
  3. recompute with the training models: old log-probs (policy), reference log-probs (the
     frozen initial model) and values (the critic: a copy of the initial model whose LM head
     is replaced by a scalar head);
  4. token rewards r_t = score * [t is last] - kl_coef * KL_t, with KL_t = log pi - log pi_ref
     (k1; Ziegler et al. 2019, https://arxiv.org/abs/1909.08593);
  5. GAE (Schulman et al. 2016, https://arxiv.org/abs/1506.02438), gamma = lambda = 1, and
     advantages whitened over the batch's response tokens;
  6. PPO epochs over mini-batches: clipped policy loss (https://arxiv.org/abs/1707.06347) and
     clipped value loss, averaged over tokens, with gradient clipping. Actor and critic take
     turns mini-batch by mini-batch: where AdamW runs on the CPU (a 3B pair on one GPU), one
     model's step runs in a background thread while the other computes on the GPU.
The passes of 3 and 6 run rows of like length together (micro-batches sorted by response
length, each cut to the columns its rows use: perf/pad_waste is the padding left). With
FSDP2 under torchrun (shard.py), each rank holds 1/N of every weight, gradient and AdamW state;
rollouts read a bf16 replica of the policy refreshed from the shards before each sampling, and
checkpoints hold full weights (fp32) and name-keyed states, resumable at any number of ranks.
Only response tokens up to and including the first EOS count anywhere (mask). Variants:
`--adv-estimator grpo` (group-normalised scores, no critic; https://arxiv.org/abs/2402.03300),
`--kl-in-loss` (k3 KL as a loss term instead of a reward penalty), `--kl-target` (adaptive
KL coefficient). Outputs: out/RUN/{config.json, metrics.jsonl, rollouts/step_XXXXXX.jsonl,
val/step_XXXXXX.jsonl, ckpt/step_XXXXXX/, final/}; README "Data formats" has the records.
A used --out needs --resume (continue) or --overwrite (start afresh).
"""
import argparse
import json
import math
import os
import random
import time

import torch

import common
from core_algos import (AdaptiveKL, compute_gae, explained_variance, grpo_advantages, kl_penalty, masked_mean,
                        masked_whiten, policy_loss, value_loss)
import shard
from optim import MasterAdamW, accumulate_fp32, all_reduce_mean_, clip_fp32_, make_optimizer, set_lr
import sampler
from sampler import Critic, critic_values, position_ids, token_logprobs
from shard import unwrap

# ---------------------------------------------------------------------------------
# settings: the flags and their defaults (the study's PPO run); `--help` lists them all
SETTINGS = [
    # (flag, default, type, help)
    common.SHARED["model"],
    common.SHARED["init"],   # policy, critic trunk and reference start from it
    ("data", "data/countdown", str, "folder with train.jsonl and test.jsonl (countdown.py)"),
    ("out", "out/ppo", str, "run folder"),
    ("condition", None, str, "name of the experimental condition (recorded in config.json; plots use it)"),
    *sampler.SETTINGS,       # template, reward, prompt/response lengths, engine, stop, ...
    ("steps", 250, int, "PPO steps (0: the validation before training only, no update)"),
    ("prompts_per_step", 256, int, "prompts per step (global, over all ranks)"),
    ("samples_per_prompt", 4, int, "responses sampled per prompt"),
    ("temperature", 1.0, float, "sampling temperature for rollouts (log-probs are of logits / T, as sampled)"),
    ("actor_lr", 1e-6, float, "policy learning rate"),
    ("critic_lr", 1e-5, float, "critic learning rate"),
    ("warmup_steps", 0, int, "linear LR warm-up steps (both optimisers)"),
    ("weight_decay", 0.01, float, "AdamW weight decay"),
    ("kl_coef", 0.001, float, "KL coefficient (initial value if --kl-target is set)"),
    ("kl_kind", "k1", str, "KL estimator in the reward: k1 | abs | mse | k3"),
    ("kl_target", None, float, "adaptive KL controller target (off by default: fixed coefficient)"),
    ("kl_horizon", 10000, int, "adaptive KL controller horizon (in samples)"),
    ("kl_in_loss", False, bool, "k3 KL as a policy-loss term instead of a reward penalty"),
    ("adv_estimator", "gae", str, "gae | grpo (group-normalised scores, no critic)"),
    ("gamma", 1.0, float, "discount"),
    ("lam", 1.0, float, "GAE lambda"),
    ("ppo_epochs", 1, int, "passes over each step's batch"),
    ("mini_batch_prompts", 128, int, "prompts per PPO mini-batch (global)"),
    ("micro_batch", 8, int, "sequences per forward/backward (gradient accumulation unit)"),
    ("forward_micro_batch", 0, int, "sequences per no-grad forward (old/ref log-probs, values); 0: 2 x --micro-batch"),
    ("clip", 0.2, float, "policy ratio clip"),
    ("value_clip", 0.5, float, "value clip"),
    ("grad_clip", 1.0, float, "gradient norm clip"),
    ("entropy_coef", 0.001, float, "entropy bonus: the actor loss subtracts coef x token-mean entropy"),
    ("grad_ckpt", None, bool, "gradient checkpointing (default: on for GPU)"),
    ("compile", None, bool, "decoder layers through torch.compile for the log-prob, value and update passes "
                            "(1.3x on an H100 at 3B: README Speed; the first passes wait for the compiler); "
                            "default: on for one GPU, off under FSDP2 (not measured there) and with --engine hf"),
    ("fsdp", None, bool, "under torchrun: shard actor, critic and reference with FSDP2 (fp32 master shards and "
                         "AdamW states on the GPUs, bf16 compute); default: on with 2+ ranks; --no-fsdp: DDP"),
    ("fsdp_accumulate", False, bool, "under FSDP2: sum a mini-batch's gradients on each rank (whole, in fp32: "
                                     "+4 bytes a parameter per model) and reduce-scatter once, not after every "
                                     "micro-batch; not yet measured on GPUs"),
    ("optim_device", "auto", str, "where fp32 master weights + Adam states live: auto | cuda | cpu"),
    ("eval_every", 10, int, "validation every N steps and before the first (0: never)"),
    ("val_size", 1024, int, "test tasks used for validation (the first N of test.jsonl)"),
    ("val_samples", 1, int, "samples per validation task at temperature 1.0, written to val/ (plus one greedy)"),
    ("log_rollouts_every", 10, int, "write rollouts/step_XXXXXX.jsonl every N steps (0: never)"),
    ("save_every", 50, int, "checkpoint every N steps (0: only final)"),
    common.SHARED["keep"],
    ("max_bad_steps", 3, int, "stop after this many consecutive steps with a non-finite loss"),
    ("profile_step", 0, int, "profile this step: OUT/profile/rank<r>.txt, the top ops by device time (0: off)"),
    ("dtype", "auto", str, "weights: auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32"),
    ("save_final", True, bool, "save final/ and the last checkpoint (benchmarks turn it off)"),
    common.SHARED["resume"],
    common.SHARED["overwrite"],
    ("seed", 0, int, "random seed"),
    ("device", None, str, "cuda | cpu (default: cuda if available)"),
    common.SHARED["wandb"],
]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_settings(ap, SETTINGS)
    a = ap.parse_args(argv)
    a.model = common.model_and_init(a.model, a.init)
    checks = [
        *sampler.option_checks(a),
        (a.kl_kind in ("k1", "abs", "mse", "k3"), "--kl-kind must be k1, abs, mse or k3"),
        (a.adv_estimator in ("gae", "grpo"), "--adv-estimator must be gae or grpo"),
        (a.optim_device in ("auto", "cuda", "cpu"), "--optim-device must be auto, cuda or cpu"),
        (a.dtype in ("auto", "bf16", "fp32"), "--dtype must be auto, bf16 or fp32"),
        (a.prompts_per_step % a.mini_batch_prompts == 0 or a.mini_batch_prompts > a.prompts_per_step,
         "--prompts-per-step must be a multiple of --mini-batch-prompts"),
        (a.adv_estimator != "grpo" or a.samples_per_prompt > 1, "grpo needs --samples-per-prompt > 1"),
        (a.steps >= 0 and min(a.prompts_per_step, a.samples_per_prompt, a.micro_batch) > 0,
         "--steps must be >= 0; --prompts-per-step, --samples-per-prompt, --micro-batch > 0"),
        (a.steps > 0 or a.eval_every > 0, "--steps 0 validates before training only: it needs --eval-every > 0"),
        (a.forward_micro_batch >= 0, "--forward-micro-batch must be >= 0 (0: twice --micro-batch)"),
        (0 <= a.profile_step <= a.steps, "--profile-step must be a step of the run (0: off)"),
        (min(a.mini_batch_prompts, a.ppo_epochs, a.kl_horizon) > 0,
         "--mini-batch-prompts, --ppo-epochs, --kl-horizon must be > 0"),
        (a.temperature > 0, "--temperature must be > 0 (rollouts sample; validation is also greedy)"),
        (min(a.actor_lr, a.critic_lr, a.weight_decay, a.kl_coef, a.entropy_coef, a.clip, a.value_clip,
             a.grad_clip, a.warmup_steps) >= 0,
         "--actor-lr, --critic-lr, --weight-decay, --kl-coef, --entropy-coef, --clip, --value-clip, "
         "--grad-clip, --warmup-steps must be >= 0"),
        (0 <= a.gamma <= 1 and 0 <= a.lam <= 1, "--gamma and --lam must lie in [0, 1]"),
        (a.kl_target is None or a.kl_target > 0, "--kl-target must be > 0"),
        (min(a.eval_every, a.val_size, a.val_samples, a.log_rollouts_every, a.save_every, a.keep) >= 0
         and a.val_samples > 0 and a.max_bad_steps > 0,
         "--eval-every, --val-size, --log-rollouts-every, --save-every, --keep must be >= 0; "
         "--val-samples and --max-bad-steps > 0"),
        (not (a.resume and a.overwrite), "--resume and --overwrite exclude each other"),
        *[(common.model_name_problem(m) is None, f"--{k}: {common.model_name_problem(m)}")
          for k, m in (("model", a.model), ("init", a.init)) if m is not None],
    ]
    for ok, msg in checks:
        if not ok:
            ap.error(msg)
    a.mini_batch_prompts = min(a.mini_batch_prompts, a.prompts_per_step)
    return a


# ---------------------------------------------------------------------------------
# the optimisers' background steps (the critic and its values pass live in sampler.py)

def wait_for(*opts, timings=None):
    """Wait for the background optimizer steps of these optimisers (no-op for others);
    the time blocked adds to timings["time/optim_wait"] if timings is given."""
    t = time.time()
    for o in opts:
        if isinstance(o, MasterAdamW):
            o.wait()
    if timings is not None:
        sync_time(timings, "optim_wait", t)


# ---------------------------------------------------------------------------------
# one PPO step

def draw_tasks(tasks, step, args, dist):
    """This rank's share of step's P prompts. As the study's shuffled DataLoader (drop_last):
    epochs of a fresh permutation of the train set, P tasks per step, the last partial batch of
    an epoch dropped, so no task repeats within an epoch. A pure function of (seed, step): a
    resumed run sees the same prompts as an uninterrupted one."""
    per_epoch = max(1, len(tasks) // args.prompts_per_step)
    epoch, k = divmod(step - 1, per_epoch)
    perm = list(range(len(tasks)))
    random.Random(args.seed * 1_000_003 + epoch).shuffle(perm)
    idx = perm[k * args.prompts_per_step:(k + 1) * args.prompts_per_step]
    return [tasks[i] for i in idx[dist["rank"]::dist["world_size"]]]


def host_copies(b):
    """b (a new dict where they are added) with attn and the response lengths copied to the host once ("attn_host", "len_host"):
    spans, masks and micro-batch order are read from them, so no pass or update waits for the
    GPU per micro-batch. Batches without "attn" (tests' toy learners) are left as they are."""
    if "attn" in b and "attn_host" not in b:
        b = dict(b, attn_host=b["attn"].cpu(), len_host=b["mask"].sum(1).cpu())
    return b


def forward_passes(b, policy, ref, critic, args, timings, opt_c=None, pads=None, skip=None):
    """Old and reference log-probs and values of batch b (no grad), returned in b. opt_c: the critic's
    optimizer, whose last step may still be running (update()). pads: sampler.count_padding's
    counters. skip: rows (a CPU index tensor) whose values come from elsewhere (the critic's
    first mini-batch: early_values), left 0 here."""
    seq, attn, mask, R = b["seq"], b["attn"], b["mask"], b["mask"].shape[1]
    mb = args.forward_micro_batch or 2 * args.micro_batch   # no activations kept: more rows fit
    b = host_copies(b)                    # one copy for the passes' spans and masks
    host = b["attn_host"]
    with torch.no_grad():
        t = time.time()
        T = args.temperature   # the log-probs of the distribution sampled from: logits / T (veRL)
        b["old_logp"] = token_logprobs(policy, seq, attn, R, mb, temperature=T, pads=pads, host=host)
        sync_time(timings, "old_logp", t)
        t = time.time()
        b["ref_logp"] = token_logprobs(ref, seq, attn, R, mb, temperature=T, pads=pads, host=host)
        sync_time(timings, "ref_logp", t)
        wait_for(opt_c, timings=timings)
        t = time.time()
        b["values"] = torch.zeros_like(mask)
        keep = torch.ones(len(mask), dtype=torch.bool)
        if skip is not None:
            keep[skip] = False
        keep = keep.nonzero().squeeze(-1)                           # rows the values pass takes
        b["values_tokens"] = float(host[keep].sum()) if critic is not None else 0.0
        if critic is not None and len(keep):
            kd = sampler.device_rows(keep, mask)
            b["values"][kd] = critic_values(critic, seq[kd], attn[kd], R, mb, pads, host[keep])
        sync_time(timings, "values", t)
    return b


def token_rewards(b, args, kl_coef):
    """Token rewards [N, R]: each response's score on its last token, minus kl_coef x KL on
    every token (k1 by default; none with --kl-in-loss). Sets b["kl"]."""
    mask = b["mask"]
    b["kl"] = kl_penalty(b["old_logp"], b["ref_logp"], args.kl_kind) * mask       # [N, R]
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards = torch.zeros_like(mask)
    rewards[torch.arange(len(last)), last] = b["scores"]
    return rewards if args.kl_in_loss else rewards - kl_coef * b["kl"]


def advantages(b, rewards, args, dist=None):
    """Advantages (whitened over the batch's response tokens on all ranks) and returns into b."""
    mask = b["mask"]
    if args.adv_estimator == "gae":
        adv, ret = compute_gae(rewards, b["values"] * mask, mask, args.gamma, args.lam)
        b["adv"], b["returns"] = masked_whiten(adv, mask, dist), ret
    else:   # veRL's GRPO scores each response by its token rewards' sum: the KL penalty included
        b["adv"] = grpo_advantages((rewards * mask).sum(1), args.samples_per_prompt, mask)
        b["returns"] = b["adv"]
    return b


def compute_advantages(b, policy, ref, critic, args, kl_coef, timings, opt_c=None, dist=None, pads=None):
    """Old/ref log-probs, values, KL-penalised token rewards, advantages and returns: the three
    functions above in turn, every value from the values pass."""
    b = forward_passes(b, policy, ref, critic, args, timings, opt_c, pads)
    return advantages(b, token_rewards(b, args, kl_coef), args, dist)


def early_values(args, critic):
    """Whether the critic takes its first mini-batch before the advantages exist, its forward
    giving the values of those rows (critic_loss_fn(fill=True)), which the values pass then
    skips (half its rows at the study's 2 mini-batches a step). It can at lambda = 1: the
    returns are the rewards-to-go and need no values, and the first update's forward runs on
    the old weights, so its values are the old values. veRL runs a values pass over every row;
    the numbers agree up to the kernels' rounding (tests/test_ppo.py)."""
    return critic is not None and args.adv_estimator == "gae" and args.lam == 1


def sync_time(timings, name, t0):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    timings[f"time/{name}"] = timings.get(f"time/{name}", 0.0) + time.time() - t0


def minibatches(n, args, dist, gen):
    """Index lists of this rank's mini-batches (a fresh permutation each PPO epoch)."""
    size = max(1, args.mini_batch_prompts * args.samples_per_prompt // dist["world_size"])
    for _ in range(args.ppo_epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, size):
            yield perm[i:i + size]


def update(learners, b, args, dist, mbs, timings, pads=None, taken=None):
    """PPO updates over mini-batches mbs (index lists: minibatches). learners: (name, model,
    optimizer, loss_fn) tuples, e.g. the actor and the critic. Mini-batches alternate between
    them, so that one's optimizer step (on the CPU, in the background) overlaps the other's
    forward/backward on the GPU. Each loss is a token-mean over its mini-batch (micro-batch sums
    divided by the mini-batch's token count). taken: {name: (stats, skipped)} of a learner whose
    first mini-batch already ran (the critic's: early_values).
    Returns {name: stats} and the number of skipped (non-finite) updates."""
    b = host_copies(b)
    taken = taken or {}
    stats = {name: dict(taken[name][0]) if name in taken else {} for name, *_ in learners}
    bad = sum(skipped for _, skipped in taken.values())
    # a learner whose first mini-batch ran early goes first in the later ones: the models still
    # alternate, so each CPU step overlaps the other model's GPU work
    order = [x for x in learners if x[0] in taken] + [x for x in learners if x[0] not in taken]
    for i, idx in enumerate(mbs):
        for learner in (learners if i == 0 else order):
            if i > 0 or learner[0] not in taken:
                bad += learner_step(learner, b, idx, args, dist, timings, stats[learner[0]], pads)
    return {name: {k: v / max(1, len(mbs)) for k, v in st.items()} for name, st in stats.items()}, bad


def learner_step(learner, b, idx, args, dist, timings, stats, pads=None):
    """One learner's update on mini-batch idx, timed; 1 if it was skipped (non-finite), else 0."""
    name, model, opt, loss_fn = learner
    wait_for(opt, timings=timings)    # this model's previous step must have landed
    t = time.time()
    ok = minibatch_step(model, opt, b, idx, args, dist, loss_fn, stats, pads)
    sync_time(timings, f"{name}_update", t)
    return int(not ok)


def minibatch_step(model, opt, b, idx, args, dist, loss_fn, stats, pads=None):
    """Accumulate gradients over micro-batches of idx (rows of like response length together,
    sampler.micro_batches), clip, step. False if skipped. A micro-batch's loss weighs by its
    share of the mini-batch's response tokens on all ranks, times the number of ranks (whose
    gradients are averaged): the gradient of the token-mean over the global mini-batch, as one
    process computes it. fp32 weights: .grad accumulates; DDP all-reduces in the last backward,
    FSDP reduce-scatters in each (into fp32 shards). Low-precision weights (MasterAdamW): the
    sum is kept in fp32 (accumulate_fp32) and all-reduced in fp32.
    Nothing in the loop waits for the GPU (spans come from b["attn_host"], indices reach the
    GPU through sampler.device_rows, the losses' finiteness and the stats stay on the device):
    it queues every micro-batch, and the host reads the results once, after the last backward."""
    model.train()
    world = dist.get("world_size", 1)
    n_tok = shard.global_sum(b["mask"][sampler.device_rows(idx, b["mask"])].sum(), dist).clamp(min=1)
    micro = sampler.micro_batches(b.get("len_host", b["mask"].sum(1)), args.micro_batch, idx)
    if "attn" in b:
        sampler.count_padding(pads, b.get("attn_host", b["attn"]), b["mask"].shape[1], micro)
    fp32_acc = isinstance(opt, MasterAdamW)
    # when the ranks' gradients meet: FSDP2 after every backward (--fsdp-accumulate: the last);
    # DDP in the last backward (MasterAdamW: never, its fp32 sums are all-reduced below)
    each = shard.is_sharded(model) and not args.fsdp_accumulate
    params = [p for p in model.parameters() if p.requires_grad]
    nonfinite, acc, sums = 0, None, {}
    for j, m in enumerate(micro):
        sync = each or (not fp32_acc and j == len(micro) - 1)
        with shard.grad_sync(model, sync), common.no_cudnn_attention():
            loss, s = loss_fn(model, b, m)
            w = b["mask"][sampler.device_rows(m, b["mask"])].sum() / n_tok * world
            nonfinite = nonfinite + (~torch.isfinite(loss.detach())).float()   # a device scalar
            (loss * w).backward()
        if fp32_acc:
            acc = accumulate_fp32(params, acc)
        for k, v in s.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float() * w
    # the loop's first wait for the GPU: finiteness and stats in one read
    nonfinite, *vals = torch.stack([torch.as_tensor(nonfinite, dtype=torch.float32), *sums.values()]).tolist()
    finite = not nonfinite
    for k, v in zip(sums, vals):
        stats[k] = stats.get(k, 0.0) + v
    if fp32_acc:
        if dist["ddp"]:
            all_reduce_mean_(acc, dist)
        gnorm = clip_fp32_(acc, args.grad_clip)
    else:
        gnorm = shard.full(torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip))
    # every rank takes the step or none does (a rank alone stepping would leave the others behind)
    gnorm = float(gnorm)
    ok = shard.global_sum(torch.tensor(float(not finite)), dist).item() == 0 and math.isfinite(gnorm)
    if ok:
        opt.step(acc) if fp32_acc else opt.step()
    opt.zero_grad(set_to_none=True)
    stats["grad_norm"] = stats.get("grad_norm", 0.0) + gnorm
    return ok


def actor_loss_fn(args, kl_coef):
    def fn(policy, b, m):
        v = sampler.micro_view(b, m)
        mask = v["mask"]
        logp, ent = token_logprobs(policy, v["seq"], v["attn"], mask.shape[1], len(m), temperature=args.temperature,
                                   entropy=True, entropy_grad=args.entropy_coef > 0, host=v["attn_host"])
        pg_loss, clipfrac = policy_loss(logp, v["old_logp"], v["adv"], mask, args.clip)
        loss = pg_loss - args.entropy_coef * masked_mean(ent, mask)   # entropy bonus (veRL dp_actor)
        if args.kl_in_loss:
            loss = loss + kl_coef * masked_mean(kl_penalty(logp, v["ref_logp"], "k3"), mask)
        approx_kl = masked_mean(0.5 * (logp.detach() - v["old_logp"]) ** 2, mask)
        return loss, {"losses/policy": pg_loss.detach(), "losses/actor": loss.detach(), "clipfrac": clipfrac,
                      "approx_kl": approx_kl, "entropy": masked_mean(ent.detach(), mask)}
    return fn


def critic_loss_fn(args, fill=False):
    """fill: the rows' old values are this forward's (the first update of a step, whose weights
    are the old ones: early_values), written into b["values"] for the advantages."""
    def fn(critic, b, m):
        v = sampler.micro_view(b, m)
        padded = not bool(v["attn_host"].all())        # read on the host
        values = critic(v["seq"], v["attn"], position_ids(v["attn"]), v["mask"].shape[1], padded)
        old = v["values"]
        if fill:
            old = values.detach()
            b["values"][sampler.device_rows(m, old), :old.shape[1]] = old
        loss = value_loss(values, old, v["returns"], v["mask"], args.value_clip)
        return loss, {"losses/value": loss.detach()}
    return fn


def batch_metrics(b, args):
    """The step's metrics on this rank. Behaviors (b["behaviors"]: behavior_rules.count_behaviors of
    each response) go out as sums and counts ("_sum/...", "_n..."), which train_step turns into
    means after the all-reduce (see there)."""
    mask, scores = b["mask"], b["scores"]
    beh = {}
    if b.get("behaviors") is not None:
        import study
        correct = [s >= 1.0 for s in b["score_list"]]
        for split, want in (("", None), ("/correct", True), ("/incorrect", False)):
            rows = [c for c, ok in zip(b["behaviors"], correct) if want is None or ok == want]
            beh[f"_n{split}"] = float(len(rows))
            for name in study.BEHAVIORS:
                beh[f"_sum/behavior/{name}{split}"] = float(sum(r[name] for r in rows))
                beh[f"_sum/behavior/{name}_rate{split}"] = float(sum(r[name] > 0 for r in rows))
    return {**beh,
        "score/mean": scores.mean().item(),
        "acc": (scores >= 1.0).float().mean().item(),
        "format_rate": (scores > 0).float().mean().item(),
        "response_length/mean": b["lengths"].float().mean().item(),
        "response_length/clip_ratio": b["clipped"].float().mean().item(),
        "kl": masked_mean(b["kl"], mask).item(),
        # the engine's sampler vs the training forward: bf16 noise, or a bug if large
        **({"rollout/logp_diff": masked_mean((b["gen_logp"] - b["old_logp"]).abs(), mask).item()}
           if b["gen_logp"] is not None else {}),
        "explained_variance": explained_variance(b["values"], b["returns"], mask)
        if args.adv_estimator == "gae" else 0.0,
    }


# ---------------------------------------------------------------------------------
# validation, rollout logs, checkpoints

@torch.no_grad()
def validate(policy, tokenizer, tasks, args, dist, reward_fn, step):
    """The study's validation on the test tasks: greedy accuracy (veRL validates with
    do_sample=False) and --val-samples responses per task at temperature 1.0, the samples its
    behavior evaluation judged (behavioral_evals/generate_completions.py). Every rank returns
    the metrics over all ranks' tasks and the sampled records (step `step`)."""
    mine = tasks[dist["rank"]::dist["world_size"]]
    kw = dict(opts=args, reward_fn=reward_fn, batch_tasks=max(1, args.prompts_per_step // dist["world_size"]))
    torch.manual_seed(args.seed * 1_000_003 + 999_983 * (step + 1) + dist["rank"])   # the same samples on a re-run
    recs = sampler.sample_tasks(policy, tokenizer, mine, args.val_samples, 1.0, step=step, **kw)
    greedy = [r["reward"] for r in sampler.sample_tasks(policy, tokenizer, mine, 1, 0.0, **kw)]
    recs, greedy = shard.gather_list(recs, dist), shard.gather_list(greedy, dist)
    mean = lambda xs: sum(xs) / max(1, len(xs))
    return {"val/acc": mean([r["reward"] >= 1 for r in recs]),
            "val/format_rate": mean([r["reward"] > 0 for r in recs]),
            "val/acc_greedy": mean([x >= 1 for x in greedy]),
            "val/score_greedy": mean(greedy)}, recs     # score_greedy: the study's val/test_score


def save_checkpoint(paths, models, state, args, dist):
    """Policy as a Hugging Face folder; critic, optimisers (keyed by parameter name, fp32 masters
    apart: shard.checkpoint_state) and RNG in trainer_state.pt; trainer_state.json (written
    last) marks the checkpoint complete. The same state goes to each of paths. Under FSDP the
    weights (fp32: the masters) and optimizer states are gathered first, a collective: every
    rank calls this, rank 0 writes."""
    tokenizer, policy, _, critic, opt_a, opt_c = models[:6]
    wait_for(opt_a, opt_c)
    fsdp = shard.is_sharded(policy)
    sd_a, osd_a, masters_a = shard.checkpoint_state(unwrap(policy), opt_a, fsdp)
    sd_c, osd_c, masters_c = shard.checkpoint_state(unwrap(critic), opt_c, fsdp) if critic is not None else [None] * 3
    if not dist["master"]:
        return
    if critic is not None and sd_c is None:
        sd_c = unwrap(critic).state_dict()

    def extra(tmp):
        torch.save({"critic": sd_c, "opt_actor": osd_a, "opt_critic": osd_c, "masters_actor": masters_a,
                    "masters_critic": masters_c, "torch_rng": torch.get_rng_state()},
                   os.path.join(tmp, "trainer_state.pt"))
        common.write_json(os.path.join(tmp, "trainer_state.json"), state)
    model = shard.WithState(unwrap(policy), sd_a) if sd_a is not None else unwrap(policy)
    for path in paths:
        common.save_hf(model, tokenizer, path, extra=extra, cfg={"stage": "ppo", **vars(args)})


def truncate_metrics(out, step):
    """On resume, forget metrics logged after the checkpoint we resume from."""
    path = os.path.join(out, "metrics.jsonl")
    recs = [r for r in common.read_jsonl_tolerant(path) if r.get("step", 0) <= step]
    common.write_jsonl(path, recs)


# ---------------------------------------------------------------------------------
# set-up and the loop

def build(args, dist):
    """Tokenizer, policy, reference, critic, optimisers and, under FSDP, the policy's rollout
    replica (shard.replica; else None); resumed if asked."""
    device = dist["device"]
    init = args.init or args.model
    tokenizer = common.load_tokenizer(args.model)
    _, ckpt = common.latest_ckpt(args.out) if args.resume else (0, None)
    dtype = {"auto": None, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    problem = common.vocab_problem(tokenizer, ckpt or init)
    if problem:
        common.die(problem, "ppo.py")
    fsdp = dist["ddp"] and args.fsdp is not False
    # mmap: every rank reads the same pages (a 3B pair's full AdamW states are ~50 GB)
    rs = torch.load(os.path.join(ckpt, "trainer_state.pt"), map_location="cpu", weights_only=False,
                    mmap=True) if ckpt else {}
    weights = torch.float32 if fsdp else dtype       # under FSDP the sharded weights are the fp32 masters
    compute = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)

    def load(src, masters=None, state=None, critic=False):
        m = common.load_model(args.model, weights, device, init=src)
        m = Critic(m) if critic else m
        for sd in (state, masters):                 # the critic's weights, then fp32 masters where saved
            if sd:
                m.load_state_dict(sd, strict=sd is state)
        if args.grad_ckpt if args.grad_ckpt is not None else device.startswith("cuda"):
            # non-reentrant checkpointing is the variant that works under DDP and FSDP
            (m.trunk if critic else m).gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        return shard.shard_model(m, compute, [m.head] if critic else ()) if fsdp else m
    policy = load(ckpt or init, rs.get("masters_actor"))
    policy.config.use_cache = not fsdp  # generation needs the cache even with checkpointing on
    critic = load(init, rs.get("masters_critic"), rs.get("critic"), critic=True) if args.adv_estimator == "gae" else None
    ref = common.load_model(args.model, dtype, device, init=init).eval().requires_grad_(False)
    ref = shard.shard_model(ref) if fsdp else ref
    if compile_layers_here(args, device, dist["world_size"], unwrap(policy)):
        for m in (policy, critic, ref):
            if m is not None:
                common.compile_layers(m)
    opt_a, opt_c = (make_optimizer(m, lr, args, device, sharded=fsdp) if m is not None else None
                    for m, lr in ((policy, args.actor_lr), (critic, args.critic_lr)))
    state = {"step": 0, "kl_coef": args.kl_coef, "bad_steps": 0}
    if ckpt:
        fp32 = lambda: common.load_model(args.model, torch.float32, "cpu", init=ckpt).state_dict()  # noqa: E731
        shard.restore_optimizer(policy, opt_a, rs["opt_actor"], lambda: rs.get("masters_actor") or fp32(), fsdp)
        if critic is not None:
            shard.restore_optimizer(critic, opt_c, rs["opt_critic"], lambda: rs.get("masters_critic") or rs["critic"], fsdp)
        with open(os.path.join(ckpt, "trainer_state.json")) as f:
            state = json.load(f)
    if dist["ddp"] and not fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [dist["local_rank"]] if device.startswith("cuda") else None
        policy = DDP(policy, device_ids=ids)
        critic = DDP(critic, device_ids=ids) if critic is not None else None
    replica = shard.replica(policy, compute) if fsdp else None
    return tokenizer, policy, ref, critic, opt_a, opt_c, state, ckpt, replica


def compile_layers_here(args, device, ranks, policy=None):
    """--compile, or its default: on for one GPU; off with several ranks (FSDP2 or DDP: not
    measured) and wherever rollouts would run transformers generate (--engine hf, or a policy
    engine.py does not run), which would call the compiled layers with a KV cache: a graph per
    layer and length.

    >>> a = parse_args(["--device", "cuda"])
    >>> compile_layers_here(a, "cuda", 1), compile_layers_here(a, "cuda", 2), compile_layers_here(a, "cpu", 1)
    (True, False, False)
    """
    if args.compile is not None:
        return args.compile
    if not device.startswith("cuda") or ranks > 1 or args.engine == "hf":
        return False
    if args.engine == "builtin" and policy is not None:
        import engine
        try:
            engine.check_supported(policy)
        except engine.Unsupported:
            return False
    return True


def rollout_model(models):
    """What samples: the policy, or under FSDP its replica refreshed from the shards (collective)."""
    policy, replica = models[1], models[6]
    if replica is None:
        return policy
    shard.refresh(replica, policy)
    return replica


def learn(b, models, args, kl_coef, dist, gen, timings, pads=None):
    """Steps 3-6 of a PPO step on a sampled batch b: old/ref log-probs and values, token
    rewards, advantages, then the actor's and critic's updates mini-batch by mini-batch (the
    critic's first one before the advantages where early_values says so). gen: the step's
    generator for the mini-batches. Returns (b, {learner: stats}, skipped updates)."""
    policy, ref, critic, opt_a, opt_c = models[1:6]
    b = host_copies(b)
    mbs = list(minibatches(b["mask"].shape[0], args, dist, gen))            # this step's PPO mini-batches
    early = early_values(args, critic)      # the critic's first mini-batch gives its rows' values
    b = forward_passes(b, policy, ref, critic, args, timings, opt_c, pads, skip=mbs[0] if early else None)
    rewards = token_rewards(b, args, kl_coef)                               # [N, R]
    taken = {}
    if early:   # returns at lambda = 1: rewards-to-go, with no values in them
        b["returns"] = compute_gae(rewards, torch.zeros_like(rewards), b["mask"], args.gamma, 1.0)[1]
        st = {}
        taken["critic"] = (st, learner_step(("critic", critic, opt_c, critic_loss_fn(args, fill=True)),
                                            b, mbs[0], args, dist, timings, st, pads))
    b = advantages(b, rewards, args, dist)
    learners = [("actor", policy, opt_a, actor_loss_fn(args, kl_coef))]
    if critic is not None:
        learners.append(("critic", critic, opt_c, critic_loss_fn(args)))
    stats, bad = update(learners, b, args, dist, mbs, timings, pads, taken)
    return b, stats, bad


def train_step(step, tasks, models, state, args, dist, reward_fn):
    """One PPO step (see the module docstring); returns the metrics dict."""
    tokenizer, policy, ref, critic, opt_a, opt_c = models[:6]
    device = dist["device"]
    torch.manual_seed(args.seed * 1_000_003 + step * dist["world_size"] + dist["rank"])
    gen = torch.Generator().manual_seed(args.seed + step)
    t_step, timings = time.time(), {}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    # 1-2. sample and score; count the behaviors in each response (the rules of behavior_rules.py)
    t0 = time.time()
    roll = rollout_model(models)
    sync_time(timings, "sync_weights", t0)
    b = sampler.sample_batch(roll, tokenizer, draw_tasks(tasks, step, args, dist), args.samples_per_prompt,
                             args.temperature, args, reward_fn)
    if roll is not policy:
        shard.release(roll)
    timings["time/generate"], timings["time/score"] = b["time_generate"], b["time_score"]
    import behavior_rules
    t0 = time.time()
    b["behaviors"] = [behavior_rules.count_behaviors(txt, t["nums"], t["target"]) for txt, t in zip(b["texts"], b["tasks"])]
    timings["time/behaviors"] = time.time() - t0
    # 3-6. old/ref log-probs, values, rewards, advantages; PPO updates
    pads = {}   # tokens the passes below process, and how many of them are padding
    b, stats, bad = learn(b, models, args, state["kl_coef"], dist, gen, timings, pads)
    a_stats, c_stats = stats["actor"], stats.get("critic", {})
    wait_for(opt_a, timings=timings)   # the next rollout needs the new policy; the critic's step may run on
    dt = time.time() - t_step
    m = {**batch_metrics(b, args), **a_stats, **{k.replace("grad_norm", "grad_norm/critic"): v for k, v in c_stats.items()}}
    m["grad_norm/actor"] = m.pop("grad_norm")
    m.update(timings)
    m["tokens_per_s"] = float(b["lengths"].sum()) / dt
    m["tokens/rank"] = float(b["attn"].sum())            # prompt + response tokens through each pass
    m["tokens/rank_values"] = b["values_tokens"]          # ... through the values pass (early_values: fewer)
    m = global_metrics(m, pads, dist)
    m.update({"kl_coef": state["kl_coef"], "lr/actor": opt_a.param_groups[0]["lr"],
              "lr/critic": opt_c.param_groups[0]["lr"] if opt_c else 0.0, "time/step": dt,
              "skipped_updates": bad})
    if args.log_rollouts_every and (step % args.log_rollouts_every == 0 or step == 1):
        recs = shard.gather_list(sampler.records(b, step), dist)
        if dist["master"]:
            common.write_jsonl(os.path.join(args.out, "rollouts", f"step_{step:06d}.jsonl"), recs)
    return m, bad


def global_metrics(m, pads, dist):
    """A step's metrics over all ranks: means, the largest rank's memory, and ratios of sums
    (padding, behaviors). pads: sampler.count_padding's counters."""
    device = dist["device"]
    m.update({f"_pad/{k}": float(v) for k, v in pads.items()})
    mem = {"mem/peak_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.startswith("cuda") else 0.0,
           "mem/host_peak_gb": shard.host_peak_gb()}
    m = common.all_reduce_mean(m, dist)
    m.update(shard.all_reduce_max(mem, dist))             # per rank: the largest
    m["tokens_per_s"] *= dist["world_size"]
    # padding: ratios of the sums over every pass and rank (the means' ratio is the sums')
    pad = {k[5:]: m.pop(k) for k in [k for k in m if k.startswith("_pad/")]}
    if pad.get("processed"):
        m["perf/pad_waste"] = 1 - pad["real"] / pad["processed"]
        m["perf/pad_waste_unsorted"] = 1 - pad["real"] / pad["full"]   # had every pass run at full width
    # behaviors: the mean of the ranks' sums over the mean of their counts is the global mean
    # (a mean of per-rank means would be too, for the whole batch, whose shares are equal,
    # but not for the correct / incorrect splits, whose sizes differ by rank); a split with
    # no response this step is left out
    for k in [k for k in m if k.startswith("_sum/")]:
        split = k[k.rindex("/"):] if k.endswith(("/correct", "/incorrect")) else ""
        total, n = m.pop(k), m[f"_n{split}"]
        if n > 0:
            m[k[len("_sum/"):]] = total / n
    for k in [k for k in m if k.startswith("_n")]:
        del m[k]
    return m


CONSOLE = ["score/mean", "acc", "val/acc", "kl", "losses/policy", "losses/value", "entropy",
           "response_length/mean", "behavior/verification", "behavior/backtracking", "behavior/subgoal",
           "behavior/backward", "time/step", "tokens_per_s", "mem/peak_gb"]


# settings that may differ between a run and its --resume (length, logging, speed, placement)
RESUME_FREE = ("resume", "overwrite", "steps", "device", "wandb", "save_every", "keep",
               "log_rollouts_every", "max_bad_steps", "engine", "vllm_mem", "micro_batch",
               "forward_micro_batch", "optim_device", "grad_ckpt", "save_final", "world_size", "fsdp",
               "force_lengths", "profile_step", "compile", "fsdp_accumulate")


def load_tasks(args):
    """Train tasks and the validation tasks (the first --val-size of test.jsonl); a missing,
    empty or malformed file is a DataError naming it."""
    def read(name):
        path = os.path.join(args.data, name)
        tasks = common.read_jsonl(path, required=("nums", "target"))
        if not tasks:
            raise common.DataError(f"{path}: no tasks (write them with countdown.py)")
        return tasks
    return read("train.jsonl"), read("test.jsonl")[:args.val_size] if args.eval_every else []


def run_validation(step, models, test_tasks, args, dist, reward_fn):
    """Validate, write the samples to val/step_XXXXXX.jsonl (rank 0) and return the metrics,
    time/validate with them (at step 0 it includes the engine's first compile and capture)."""
    t, roll = time.time(), rollout_model(models)
    m, recs = validate(roll, models[0], test_tasks, args, dist, reward_fn, step)
    m["time/validate"] = time.time() - t
    if roll is not models[1]:
        shard.release(roll)
    if dist["master"]:
        common.write_jsonl(os.path.join(args.out, "val", f"step_{step:06d}.jsonl"), recs)
    return m


def train(args, reward_fn=None):
    """The whole run. reward_fn(response, task, prompt=) -> float lets tests swap in another
    reward (default: countdown.score with --reward's rules)."""
    reward_fn = reward_fn or sampler.make_reward(args.reward)
    dist = common.setup_dist(args.device)
    if args.prompts_per_step % dist["world_size"] or args.mini_batch_prompts % dist["world_size"]:
        common.cleanup_dist(dist)   # every rank fails here, before any collective could hang
        common.die(f"--prompts-per-step ({args.prompts_per_step}) and --mini-batch-prompts "
                   f"({args.mini_batch_prompts}) must be multiples of the number of ranks "
                   f"({dist['world_size']})", "ppo.py")
    random.seed(args.seed)
    train_tasks, test_tasks = load_tasks(args)          # checked before anything is written
    common.claim_run_dir(args.out, args.resume, args.overwrite, mutate=dist["master"])
    if args.resume:
        common.check_same_settings(args.out, vars(args), free=RESUME_FREE)
    if dist["ddp"]:
        import torch.distributed as tdist
        tdist.barrier()                                  # rank 0 has tidied the folder
    tokenizer, policy, ref, critic, opt_a, opt_c, state, ckpt, replica = build(args, dist)
    models = (tokenizer, policy, ref, critic, opt_a, opt_c, replica)
    kl_ctl = AdaptiveKL(state["kl_coef"], args.kl_target, args.kl_horizon)
    if dist["master"]:
        os.makedirs(args.out, exist_ok=True)
        common.save_config(args.out, {"stage": "ppo", **vars(args), "world_size": dist["world_size"]})
        truncate_metrics(args.out, state["step"] if ckpt else -1)  # a fresh start: a fresh log
        if ckpt:
            print(f"resuming from {ckpt} at step {state['step'] + 1}")
        report = common.init_report(args.init)
        print(report or f"init {args.init or args.model}")
    wb = None
    if args.wandb and dist["master"]:
        import wandb
        wb = wandb.init(project=args.wandb, config=vars(args))
    t_start = time.time()
    first = state["step"] + 1
    if args.eval_every and first == 1:   # the study validates before training (val_before_train)
        m0 = run_validation(0, models, test_tasks, args, dist, reward_fn)
        if dist["master"]:
            common.log_step(args.out, 0, m0, keys=[k for k in CONSOLE if k in m0], total=args.steps,
                            t_start=t_start)
    for step in range(first, args.steps + 1):
        set_lr(opt_a, args.actor_lr, step - 1, args.warmup_steps)
        if opt_c:
            set_lr(opt_c, args.critic_lr, step - 1, args.warmup_steps)
        with common.profiled(step == args.profile_step, os.path.join(args.out, "profile"), dist["rank"],
                             cuda=str(dist["device"]).startswith("cuda")):
            m, bad = train_step(step, train_tasks, models, state, args, dist, reward_fn)
        state["bad_steps"] = state["bad_steps"] + 1 if bad else 0
        kl_ctl.update(m["kl"], args.prompts_per_step * args.samples_per_prompt)
        state.update(step=step, kl_coef=kl_ctl.value)
        if args.eval_every and (step % args.eval_every == 0 or step == args.steps):
            m.update(run_validation(step, models, test_tasks, args, dist, reward_fn))
        if dist["master"]:
            # a skipped (non-finite) update shows on the console, not only in metrics.jsonl
            common.log_step(args.out, step, m, keys=CONSOLE + ["skipped_updates"] * bool(bad), total=args.steps,
                            t_start=t_start, start=first - 1)
            if wb:
                wb.log(m, step=step)
        if state["bad_steps"] >= args.max_bad_steps:
            raise SystemExit(f"stopping: {state['bad_steps']} consecutive steps had a non-finite loss "
                             f"(updates skipped); the last good checkpoint is intact in {args.out}/ckpt")
        if args.save_every and step % args.save_every == 0 and step != args.steps and not bad:
            wait_for(opt_a, opt_c)
            shard.check_in_sync((policy, critic), dist)
            save_checkpoint([common.ckpt_dir(args.out, step)], models, state, args, dist)
            if dist["master"]:
                common.prune_checkpoints(args.out, args.keep)
    final = os.path.join(args.out, "final")
    # a run killed after its last checkpoint but before final/ resumes past the end: final/ then
    # (rank 0's view of the folder decides for every rank: saving is a collective under FSDP)
    lost = shard.all_reduce_max({"lost": dist["master"] and ckpt is not None and state["step"] == args.steps
                                 and not os.path.exists(os.path.join(final, "config.json"))}, dist)["lost"]
    if (first <= args.steps or lost) and args.save_final:
        wait_for(opt_a, opt_c)
        shard.check_in_sync((policy, critic), dist)
        # the last checkpoint first: final/ is what marks the run done (pipeline.py skips it then)
        save_checkpoint([common.ckpt_dir(args.out, args.steps)] * (first <= args.steps) + [final], models, state,
                        args, dist)
        if dist["master"]:
            common.prune_checkpoints(args.out, args.keep)
            print(f"done: {args.steps} steps in {common.fmt_time(time.time() - t_start)}; policy in {args.out}/final")
    wait_for(opt_a, opt_c)
    if dist["ddp"]:   # no collective still in flight when the group goes (gloo can abort at exit)
        import torch.distributed as tdist
        tdist.barrier()
    common.cleanup_dist(dist)
    return state


def main(argv=None):
    args = parse_args(argv)
    try:
        train(args)
    except common.DataError as e:      # bad input: one line naming the file and line, exit 2
        common.die(str(e), "ppo.py")


if __name__ == "__main__":
    main()
