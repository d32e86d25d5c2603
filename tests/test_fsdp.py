"""ppo.py under FSDP2 (two CPU ranks, gloo, fp32), in one torchrun launch (tests/fsdp_driver.py):
one update agrees with one process, a run resumed half-way ends bit-identical to an
uninterrupted one, and its final/ loads with from_pretrained; and the checkpoint format
crosses between FSDP and one process both ways."""
import json
import os
import subprocess
import sys

import pytest

import common
import countdown
from conftest import REPO


@pytest.fixture(scope="module")
def driven(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    data = tmp / "data"
    common.write_jsonl(str(data / "train.jsonl"), countdown.generate_tasks(32, seed=0, sizes=(3,)))
    common.write_jsonl(str(data / "test.jsonl"), countdown.generate_tasks(4, seed=1, sizes=(3,)))
    common.tiny_path()   # built once here, not by two ranks at the same time
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        os.path.join("tests", "fsdp_driver.py"), str(tmp), str(data)],
                       cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return tmp, data


def test_one_fsdp_update_agrees_with_one_process(driven):
    """Two ranks with half the rows each (micro-batches of 3: other groupings than one process's)
    against one process with all of them: the same losses and gradient norms to fp32 rounding,
    and the same weights after AdamW to within 5% of a step. AdamW's first step is
    lr * g / (|g| + eps), which turns fp32 noise in near-zero gradients into visible moves:
    one process against itself with micro-batches of 3 and of 8 differs by 1.7% of a step."""
    f = json.loads((driven[0] / "fsdp_vs_one.json").read_text())
    for learner in ("actor", "critic"):
        a, b = f["stats"][learner], f["stats1"][learner]
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (learner, k)
    assert f["moved"] > 5e-4                                   # lr 1e-3: the update is there
    assert f["policy_diff"] < 0.05 * f["moved"] and f["critic_diff"] < 0.05 * f["moved"]


def test_fsdp_accumulate_reduces_once_a_mini_batch_to_the_same_update(driven):
    """--fsdp-accumulate: a mini-batch of two backwards per rank reduce-scatters half as often
    (once, after the last) and gives the same losses, gradient norms and weights (to fp32
    rounding: the two micro-batches' gradients are summed before the ranks', not after)."""
    f = json.loads((driven[0] / "accumulate.json").read_text())
    each, once = f["reduces"]
    assert once > 0 and each == 2 * once
    for learner in ("actor", "critic"):
        a, b = (s[learner] for s in f["stats"])
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7) for k in a), learner
    assert f["policy_diff"] < 1e-4 and f["critic_diff"] < 1e-4


def test_early_critic_values_agree_with_a_values_pass_under_fsdp(driven):
    """ppo.learn on 2 ranks (FSDP2), the critic's first mini-batch taken early on each rank's
    own rows, against a values pass over every row: the second call's values (the critic has
    learnt by then) to fp32 rounding, the weights to within 5% of a step (AdamW's first steps
    turn rounding in near-zero gradients into visible moves; see the test above)."""
    f = json.loads((driven[0] / "early_vs_pass.json").read_text())
    assert f["values_max"] > 1e-3 and f["values_diff"] < 1e-5 and f["skipped"] == 0
    assert f["policy_diff"] < 1e-4 and f["critic_diff"] < 1e-4       # lr 1e-3, two updates


def test_resumed_fsdp_run_equals_an_uninterrupted_one(driven):
    """2 steps straight vs 1 step + --resume to 2, both on two FSDP ranks: final weights
    (loaded with from_pretrained, fp32: the masters), critic and AdamW states bit-identical,
    the same metrics at every step."""
    f = json.loads((driven[0] / "resume.json").read_text())
    assert f["policy_equal"] and f["critic_equal"] and f["adam_equal"]
    assert f["adam_steps"] == [2] and f["dtype"] == "torch.float32"
    straight, resumed = f["metrics"]
    assert [m["step"] for m in resumed] == [0, 1, 2]
    drop = ("time/", "tokens_per_s", "mem/", "eta")            # wall-clock figures differ
    strip = lambda m: {k: v for k, v in m.items() if not k.startswith(drop)}   # noqa: E731
    assert [strip(m) for m in straight] == [strip(m) for m in resumed]
    assert straight[-1]["kl"] != 0 and "perf/pad_waste" in straight[-1]


def test_checkpoints_cross_between_fsdp_and_one_process(driven):
    """One process resumes the FSDP run's checkpoint (name-keyed AdamW states, fp32 weights),
    and two FSDP ranks resume the one process's; the AdamW step count carries over."""
    f = json.loads((driven[0] / "cross.json").read_text())
    assert f["adam_steps"] == [[3], [4]] and f["named"] and f["metrics_steps"] == [0, 1, 2, 3, 4]


def test_master_adamw_state_crosses_the_name_keyed_format():
    """A bf16 model's MasterAdamW (one GPU's path) saved name-keyed with its fp32 masters comes
    back exactly; from an FSDP checkpoint (no masters: its weights are fp32) the masters come
    from the callback, never from the rounded bf16 weights."""
    import torch
    import optim
    import shard
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)).bfloat16()
    opt = optim.MasterAdamW(model.parameters(), device="cpu", lr=1e-3)
    for _ in range(2):
        model(torch.randn(4, 8).bfloat16()).float().sum().backward()
        opt.step()
        opt.zero_grad()
    _, saved, masters = shard.checkpoint_state(model, opt, fsdp=False)
    assert set(saved["state"]) == set(masters) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    fresh = optim.MasterAdamW(model.parameters(), device="cpu", lr=1e-3)
    shard.restore_optimizer(model, fresh, saved, lambda: masters, fsdp=False)
    assert all(torch.equal(a, b) for a, b in zip(fresh.master, opt.master))
    assert all(torch.equal(fresh.opt.state[a]["exp_avg_sq"], opt.opt.state[b]["exp_avg_sq"])
               for a, b in zip(fresh.master, opt.master))
    fp32 = {k: v + 1e-4 for k, v in masters.items()}          # what an FSDP run's fp32 folder holds
    shard.restore_optimizer(model, fresh, saved, lambda: fp32, fsdp=False)
    assert all(torch.equal(m, fp32[n]) for m, n in zip(fresh.master, ["0.weight", "0.bias", "1.weight", "1.bias"]))


def test_replica_memory_is_freed_between_rollouts_and_refilled():
    """shard.release frees a replica's weights (its tensors stay, empty) unless an engine keeps
    CUDA graphs over them; refresh fills them again with the model's current weights."""
    import torch
    import shard
    model, rep = common.load_model("tiny"), common.load_model("random:tiny")
    rep._rollout_engine = type("Engine", (), {"release_after": False})()
    shard.release(rep)                                     # graphs kept: nothing freed
    assert all(p.untyped_storage().size() > 0 for p in rep.parameters())
    rep._rollout_engine.release_after = True
    shard.release(rep)
    assert all(p.untyped_storage().size() == 0 for p in rep.parameters())
    shard.refresh(rep, model)
    assert all(torch.equal(a, b) for a, b in zip(rep.parameters(), model.parameters()))
