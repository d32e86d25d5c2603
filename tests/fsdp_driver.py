"""Run by tests/test_fsdp.py under `torchrun --nproc_per_node=2` (gloo on the CPU, fp32): the
FSDP2 path of ppo.py against one process, and a resumed run against an uninterrupted one.
Each check writes its findings to OUT/<name>.json from rank 0; the test reads and asserts.

    torchrun --standalone --nproc_per_node=2 tests/fsdp_driver.py OUT DATA
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import ppo  # noqa: E402
import shard  # noqa: E402

OUT, DATA = sys.argv[1], sys.argv[2]
ONE = {"ddp": False, "rank": 0, "local_rank": 0, "world_size": 1, "master": True, "device": "cpu"}
FLAGS = ["--model", "tiny", "--data", DATA, "--prompts-per-step", "4", "--samples-per-prompt", "2",
         "--mini-batch-prompts", "4", "--max-response-len", "16", "--micro-batch", "3", "--eval-every", "1",
         "--val-size", "4", "--log-rollouts-every", "0", "--device", "cpu", "--actor-lr", "1e-3",
         "--critic-lr", "1e-3", "--kl-coef", "0.05"]


def fixed_batch(n=8, P=6, R=10, vocab=200):
    """Prompts left-padded and responses of ragged lengths (the same on every rank)."""
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(5, vocab, (n, P + R), generator=g)
    p_len, r_len = torch.randint(2, P + 1, (n,), generator=g), torch.randint(1, R + 1, (n,), generator=g)
    cols = torch.arange(P + R)
    attn = ((cols[None] >= P - p_len[:, None]) & (cols[None] < P + r_len[:, None])).long()
    return {"seq": seq, "attn": attn, "mask": attn[:, P:].float(), "scores": torch.rand(n, generator=g),
            "gen_logp": None}


def one_update(dist, rows, flags=()):
    """Advantages and one PPO update (one mini-batch: all of a rank's rows) from the same
    initial models; returns the gathered policy and critic weights and the stats."""
    args = ppo.parse_args(FLAGS + ["--out", os.path.join(OUT, "unused"), *flags])
    tok, policy, ref, critic, opt_a, opt_c, *_ = ppo.build(args, dist)
    b = {k: (v[rows] if v is not None else None) for k, v in fixed_batch().items()}
    b = ppo.compute_advantages(b, policy, ref, critic, args, args.kl_coef, {}, opt_c, dist)
    learners = [("actor", policy, opt_a, ppo.actor_loss_fn(args, args.kl_coef)),
                ("critic", critic, opt_c, ppo.critic_loss_fn(args))]
    mbs = list(ppo.minibatches(len(rows), args, dist, torch.Generator().manual_seed(0)))
    stats, bad = ppo.update(learners, b, args, dist, mbs, {})
    stats = {k: common.all_reduce_mean(v, dist) for k, v in stats.items()}
    return ({n: shard.full(p.detach()).clone() for n, p in m.named_parameters()} for m in (policy, critic)), stats


def fsdp_vs_one_process(dist):
    (pol, cri), stats = one_update(dist, torch.arange(dist["rank"], 8, dist["world_size"]))
    if dist["rank"] != 0:
        return
    (pol1, cri1), stats1 = one_update(ONE, torch.arange(8))
    init = common.load_model("tiny")
    diff = lambda a, b: max((a[k] - b[k]).abs().max().item() for k in a)   # noqa: E731
    moved = max((pol1[n] - p).abs().max().item() for n, p in init.named_parameters())
    report("fsdp_vs_one", policy_diff=diff(pol, pol1), critic_diff=diff(cri, cri1), moved=moved,
           stats=stats, stats1=stats1)


def accumulate_vs_each(dist):
    """One update on 2 ranks (4 rows each, micro-batches of 3: two backwards a mini-batch),
    gradients reduce-scattered after every backward and with --fsdp-accumulate: how often
    FSDP reduced (its foreach_reduce calls, one per unit and backward that syncs), the weights."""
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group as group
    real, out = group.foreach_reduce, {}
    for flags in ((), ("--fsdp-accumulate",)):
        calls = []
        group.foreach_reduce = lambda *a, **k: calls.append(1) or real(*a, **k)
        weights, stats = one_update(dist, torch.arange(dist["rank"], 8, dist["world_size"]), flags)
        out[flags] = [*weights], stats, len(calls)
    group.foreach_reduce = real
    if dist["rank"] == 0:
        ((p0, c0), s0, n0), ((p1, c1), s1, n1) = out.values()
        diff = lambda a, b: max((a[k] - b[k]).abs().max().item() for k in a)   # noqa: E731
        report("accumulate", reduces=[n0, n1], policy_diff=diff(p0, p1), critic_diff=diff(c0, c1), stats=[s0, s1])


def early_vs_pass(dist):
    """ppo.learn under FSDP2 on 2 ranks, twice on the same batch, with the critic's first
    mini-batch taken early (its forward giving those rows' values) and with a values pass over
    every row, from the same models: the second call's values (the critic has moved by then)
    and the weights after it."""
    rows = torch.arange(dist["rank"], 8, dist["world_size"])
    real, out = ppo.early_values, {}
    for early in (False, True):
        ppo.early_values = lambda args, critic, e=early: e and real(args, critic)
        args = ppo.parse_args(FLAGS + ["--out", os.path.join(OUT, "unused"), "--mini-batch-prompts", "2"])
        models = ppo.build(args, dist)
        for call in range(2):
            b = {k: (v[rows] if v is not None else None) for k, v in fixed_batch().items()}
            b, _, bad = ppo.learn(b, models, args, args.kl_coef, dist, torch.Generator().manual_seed(call), {})
            ppo.wait_for(*models[4:6])
        out[early] = ([{n: shard.full(p.detach()).clone() for n, p in m.named_parameters()} for m in models[1:4:2]],
                      b["values"] * b["mask"], bad)
    ppo.early_values = real
    (w0, v0, bad0), (w1, v1, bad1) = out[False], out[True]
    local = torch.tensor([(v0 - v1).abs().max().item(), v0.abs().max().item()])
    torch.distributed.all_reduce(local, op=torch.distributed.ReduceOp.MAX)
    if dist["rank"] == 0:
        diff = lambda a, b: max((a[k] - b[k]).abs().max().item() for k in a)   # noqa: E731
        report("early_vs_pass", policy_diff=diff(w0[0], w1[0]), critic_diff=diff(w0[1], w1[1]),
               values_diff=local[0].item(), values_max=local[1].item(), skipped=bad0 + bad1)


def resume_equals_uninterrupted(dist):
    a, b = os.path.join(OUT, "straight"), os.path.join(OUT, "resumed")
    ppo.train(ppo.parse_args(FLAGS + ["--out", a, "--steps", "2", "--save-every", "1"]))
    ppo.train(ppo.parse_args(FLAGS + ["--out", b, "--steps", "1", "--save-every", "1"]))
    ppo.train(ppo.parse_args(FLAGS + ["--out", b, "--steps", "2", "--save-every", "1", "--resume"]))
    if dist["rank"] != 0:
        return
    from transformers import AutoModelForCausalLM
    wa, wb = (AutoModelForCausalLM.from_pretrained(os.path.join(d, "final")).state_dict() for d in (a, b))
    sa, sb = (torch.load(os.path.join(d, "final", "trainer_state.pt"), weights_only=False) for d in (a, b))
    same = lambda x, y: all(torch.equal(x[k], y[k]) for k in x) and x.keys() == y.keys()   # noqa: E731
    steps = lambda s: sorted({int(v["step"]) for v in s["opt_actor"]["state"].values()})  # noqa: E731
    report("resume", policy_equal=same(wa, wb), critic_equal=same(sa["critic"], sb["critic"]),
           adam_equal=all(same(sa["opt_actor"]["state"][k], sb["opt_actor"]["state"][k]) for k in sa["opt_actor"]["state"]),
           adam_steps=steps(sb), dtype=str(next(iter(wb.values())).dtype),
           metrics=[common.read_jsonl(os.path.join(d, "metrics.jsonl")) for d in (a, b)])


def crosses_formats(dist):
    """Rank 0 alone (one process) continues the resumed run to step 3 from its FSDP checkpoint,
    then both ranks (FSDP) to step 4 from that one-process checkpoint."""
    run, one, steps = os.path.join(OUT, "resumed"), dict(ONE), []
    for n, who in ((3, one), (4, dist)):
        if dist["rank"] == 0 or who is dist:
            common.setup_dist = lambda device=None, who=who: who
            ppo.train(ppo.parse_args(FLAGS + ["--out", run, "--steps", str(n), "--save-every", "1", "--resume"]))
        torch.distributed.barrier()
        st = torch.load(os.path.join(run, "final", "trainer_state.pt"), weights_only=False)
        steps.append(sorted({int(v["step"]) for v in st["opt_actor"]["state"].values()}))
    if dist["rank"] == 0:
        names = {n for n, _ in common.load_model("tiny").named_parameters()}
        report("cross", adam_steps=steps, named=set(st["opt_actor"]["state"]) <= names,
               metrics_steps=[m["step"] for m in common.read_jsonl(os.path.join(run, "metrics.jsonl"))])


def report(name, **facts):
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(facts, f)


if __name__ == "__main__":
    # one process group for every run here: ppo.train's own set-up and tear-down become no-ops
    # (a gloo group re-made in the same process can hang in its first barrier)
    info = common.setup_dist("cpu")
    common.setup_dist, common.cleanup_dist = (lambda device=None: info), (lambda d: None)
    fsdp_vs_one_process(info)
    accumulate_vs_each(info)
    early_vs_pass(info)
    resume_equals_uninterrupted(info)
    crosses_formats(info)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
