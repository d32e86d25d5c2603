"""ppo.py: GAE, losses, KL, masking; a learning test; the script end to end with resume."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import common
import countdown
import optim
import ppo
import sampler
from conftest import REPO


def ragged_mask(B, T, gen):
    lens = torch.randint(1, T + 1, (B,), generator=gen)
    return (torch.arange(T)[None] < lens[:, None]).float()


# ---------------------------------------------------------------- GAE
@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.95, 1.0), (1.0, 0.95), (0.95, 0.95)])
def test_gae_matches_brute_force(gamma, lam):
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    r, v = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    mask = ragged_mask(B, T, g)
    adv, ret = ppo.compute_gae(r, v, mask, gamma, lam)
    for b in range(B):
        n = int(mask[b].sum())
        vv = [v[b, t].item() for t in range(n)] + [0.0]   # V after the last token is 0
        deltas = [r[b, t].item() + gamma * vv[t + 1] - vv[t] for t in range(n)]
        for t in range(T):
            if t >= n:
                assert adv[b, t] == 0 and ret[b, t] == 0
                continue
            want = sum((gamma * lam) ** (l - t) * deltas[l] for l in range(t, n))
            assert adv[b, t].item() == pytest.approx(want, abs=1e-5)
            assert ret[b, t].item() == pytest.approx(want + vv[t], abs=1e-5)


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    r = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    v = torch.tensor([[0.2, 0.4, 0.5, 9.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = ppo.compute_gae(r, v, m)
    assert torch.allclose(adv, torch.tensor([[0.8, 0.6, 0.5, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))


# ---------------------------------------------------------------- losses by hand
def test_policy_loss_hand_values():
    m = torch.ones(1, 4)
    old = torch.zeros(1, 4)
    # ratios 1.1 (inside), 1.5 (clipped for A>0), 0.5 (clipped for A<0), 0.5 (A>0: unclipped side wins)
    logp = torch.log(torch.tensor([[1.1, 1.5, 0.5, 0.5]]))
    A = torch.tensor([[1.0, 2.0, -1.0, 1.0]])
    loss, clipfrac = ppo.policy_loss(logp, old, A, m, clip=0.2)
    want = [-1.1, -2.0 * 1.2, 1.0 * 0.8, -0.5]   # max(-A r, -A clip(r))
    assert loss.item() == pytest.approx(sum(want) / 4, abs=1e-6)
    assert clipfrac.item() == pytest.approx(2 / 4)


def test_value_loss_hand_values():
    m = torch.tensor([[1.0, 1.0, 0.0]])
    v = torch.tensor([[1.0, 2.0, 100.0]])
    v_old = torch.tensor([[0.8, 0.0, 0.0]])
    R = torch.tensor([[0.0, 1.0, 0.0]])
    # token 0: unclipped (1-0)^2 = 1, clipped v -> 1.0 (within 0.5 of 0.8) -> 1; max 1
    # token 1: unclipped (2-1)^2 = 1, clipped v -> 0.5 -> (0.5-1)^2 = 0.25; max 1
    assert ppo.value_loss(v, v_old, R, m, clip=0.5).item() == pytest.approx(0.5 * (1 + 1) / 2)
    v = torch.tensor([[0.0, 2.0, 0.0]])
    v_old = torch.tensor([[0.0, 3.0, 0.0]])
    R = torch.tensor([[0.0, 3.0, 0.0]])
    # token 1: unclipped (2-3)^2 = 1, clipped 2.5 -> 0.25: max = 1; token 0: 0
    assert ppo.value_loss(v, v_old, R, m, clip=0.5).item() == pytest.approx(0.5 * 1 / 2)


def test_kl_kinds():
    lp, ref = torch.tensor([0.0, -1.0]), torch.tensor([-0.5, -0.5])
    d = lp - ref
    assert torch.allclose(ppo.kl_penalty(lp, ref, "k1"), d)
    assert torch.allclose(ppo.kl_penalty(lp, ref, "abs"), d.abs())
    assert torch.allclose(ppo.kl_penalty(lp, ref, "mse"), 0.5 * d ** 2)
    assert torch.allclose(ppo.kl_penalty(lp, ref, "k3"), torch.exp(-d) + d - 1)
    assert (ppo.kl_penalty(lp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError):
        ppo.kl_penalty(lp, ref, "nope")


def test_grpo_and_whiten():
    s = torch.tensor([1.0, 0.0, 0.1, 0.1])
    m = torch.ones(4, 3)
    adv = ppo.grpo_advantages(s, 2, m)
    assert adv[0, 0] > 0 > adv[1, 0] and torch.allclose(adv[2], torch.zeros(3), atol=1e-4)
    x = torch.randn(4, 5)
    mask = torch.tensor([[1, 1, 0, 0, 0]] * 4).float()
    w = ppo.masked_whiten(x, mask)
    assert ppo.masked_mean(w, mask).abs() < 1e-5 and (w[:, 2:] == 0).all()


def test_response_mask_stops_after_first_eos():
    resp = torch.tensor([[5, 6, 1, 7, 1], [5, 5, 5, 5, 5], [1, 4, 4, 4, 4]])
    assert sampler.response_mask(resp, eos_id=1, pad_id=2).tolist() == [
        [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_masked_positions_change_nothing():
    """Padding and post-EOS positions: perturbing them leaves every loss and metric equal."""
    g = torch.Generator().manual_seed(1)
    B, T = 5, 7
    mask = ragged_mask(B, T, g)
    fields = {k: torch.randn(B, T, generator=g) for k in ("logp", "old", "ref", "v", "v_old")}
    scores = torch.rand(B, generator=g)

    def everything(f):
        last = (mask.sum(1).long() - 1)
        rew = torch.zeros(B, T)
        rew[torch.arange(B), last] = scores
        rew = rew - 0.1 * ppo.kl_penalty(f["old"], f["ref"]) * mask
        adv, ret = ppo.compute_gae(rew, f["v_old"] * mask, mask)
        adv = ppo.masked_whiten(adv, mask)
        pl, cf = ppo.policy_loss(f["logp"], f["old"], adv, mask)
        vl = ppo.value_loss(f["v"], f["v_old"], ret, mask)
        kl = ppo.masked_mean(ppo.kl_penalty(f["logp"], f["ref"], "k3"), mask)
        ev = ppo.explained_variance(f["v"], ret, mask)
        return torch.tensor([pl, cf, vl, kl, ev])

    base = everything(fields)
    noisy = {k: torch.where(mask > 0, v, v + 50 * torch.randn(B, T, generator=g)) for k, v in fields.items()}
    assert torch.allclose(base, everything(noisy), atol=1e-5)
    # and a change on a real token does change the result
    poked = dict(fields, logp=fields["logp"] + 0.5 * mask)
    assert not torch.allclose(base, everything(poked))


def test_logprobs_from_logits_match_log_softmax_and_trace():
    """z_t - logsumexp(z) equals log_softmax's gather, values and gradients, from bf16 logits
    at a temperature; the entropy equals -sum p log p; the function traces whole for
    torch.compile (the GPU path compiles it with inductor)."""
    torch.manual_seed(0)
    logits = (torch.randn(2, 5, 50) * 3).bfloat16().requires_grad_(True)
    tgt = torch.randint(50, (2, 5))
    ref_lsm = torch.log_softmax(logits.float() / 0.7, -1)
    want = ref_lsm.gather(-1, tgt[..., None]).squeeze(-1)
    (g_want,) = torch.autograd.grad(want.sum(), logits)
    for fn in (sampler.logprobs_from_logits, torch.compile(sampler.logprobs_from_logits, backend="aot_eager",
                                                       dynamic=True, fullgraph=True)):
        lp, ent = fn(logits, tgt, 0.7, True)
        assert torch.allclose(lp, want, atol=1e-5)
        assert torch.allclose(ent, -(ref_lsm.exp() * ref_lsm).sum(-1), atol=1e-4)
        assert not ent.requires_grad
        (g,) = torch.autograd.grad(lp.sum(), logits)
        assert torch.allclose(g.float(), g_want.float(), atol=1e-2)


def test_token_logprobs_ignore_post_eos_tokens():
    """The real model path: tokens after EOS (pad, attention 0) do not move earlier log-probs."""
    model = common.load_model("tiny")
    tok = common.load_tokenizer("tiny")
    p_ids, p_mask = sampler.encode_prompts(tok, [countdown.make_prompt([1, 2, 3], 6)] * 2, 256)
    resp = torch.tensor([[40, 41, tok.eos_token_id, tok.pad_token_id],
                         [40, 41, tok.eos_token_id, 77]])
    mask = sampler.response_mask(resp, tok.eos_token_id, tok.pad_token_id)
    attn = torch.cat([p_mask, mask.long()], 1)
    with torch.no_grad():
        lp = sampler.token_logprobs(model, torch.cat([p_ids, resp], 1), attn, 4, 8)
    assert torch.allclose(lp[0, :3], lp[1, :3], atol=1e-5)


def ragged_rows(n=10, P=6, R=9, seed=0):
    """A batch of left-padded prompts and right-padded responses of ragged lengths; row 0 uses
    every column, so one micro-batch of all rows runs at full width (the reference)."""
    g = torch.Generator().manual_seed(seed)
    p_len, r_len = torch.randint(1, P + 1, (n,), generator=g), torch.randint(1, R + 1, (n,), generator=g)
    p_len[0], r_len[0] = P, R
    cols = torch.arange(P + R)
    attn = ((cols[None] >= P - p_len[:, None]) & (cols[None] < P + r_len[:, None])).long()
    b = {"seq": torch.randint(5, 200, (n, P + R), generator=g), "attn": attn, "mask": attn[:, P:].float()}
    b.update({k: torch.randn(n, R, generator=g) * b["mask"] for k in ("adv", "returns", "values", "ref_logp")})
    return b


def test_training_passes_give_every_query_a_key(monkeypatch):
    """Left-padded rows: transformers' mask leaves a pad's query with no key, whose -inf
    logsumexp makes cuDNN's attention backward write NaN on Hopper (pytorch#196678; 3.2% of a
    miniature run's updates were lost). The actor's and the critic's passes now give SDPA masks
    in which every query sees at least itself, and the real tokens' log-probs, values and
    gradients stay what 2D masks give."""
    import torch.nn.functional as F
    policy, critic = common.load_model("random:tiny"), ppo.Critic(common.load_model("random:tiny"))
    torch.nn.init.normal_(critic.head.weight, std=0.1)
    b = ragged_rows()
    n, R = b["mask"].shape
    seen, sdpa = [], F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    lp = sampler.token_logprobs(policy, b["seq"], b["attn"], R, n)
    val = ppo.critic_values(critic, b["seq"], b["attn"], R, n)
    (lp * b["mask"]).sum().backward()
    (val * b["mask"]).sum().backward()
    assert seen and all(m is not None and bool(m.any(-1).all()) for m in seen)
    monkeypatch.setattr(sampler, "attention_mask", lambda model, attn, padded=None: attn)    # transformers' own mask
    seen.clear()
    p2, c2 = common.load_model("random:tiny"), ppo.Critic(common.load_model("random:tiny"))
    c2.load_state_dict(critic.state_dict())
    lp2 = sampler.token_logprobs(p2, b["seq"], b["attn"], R, n)
    val2 = ppo.critic_values(c2, b["seq"], b["attn"], R, n)
    (lp2 * b["mask"]).sum().backward()
    (val2 * b["mask"]).sum().backward()
    assert any(not bool(m.any(-1).all()) for m in seen)        # the rows the old masks left empty
    m = b["mask"]
    assert torch.allclose(lp * m, lp2 * m, atol=1e-5) and torch.allclose(val * m, val2 * m, atol=1e-5)
    for a, c in ((policy, p2), (critic, c2)):
        for (name, x), (_, y) in zip(a.named_parameters(), c.named_parameters()):
            assert torch.allclose(x.grad, y.grad, atol=1e-5), name


def test_sorted_cut_micro_batches_change_no_loss_or_gradient():
    """Passes over rows of ragged lengths in micro-batches sorted by length, each cut to the
    columns its rows use, give the log-probs, values, losses and gradients of one full-width
    pass over all rows (fp32 rounding apart), for the actor and the critic, and process fewer
    tokens (perf/pad_waste's counters)."""
    policy, critic = common.load_model("random:tiny"), ppo.Critic(common.load_model("random:tiny"))
    torch.nn.init.normal_(critic.head.weight, std=0.1)       # a zero head would hide the critic's gradients
    b = ragged_rows()
    n, R = b["mask"].shape
    mask, pads = b["mask"], {}
    with torch.no_grad():
        full = sampler.token_logprobs(policy, b["seq"], b["attn"], R, n)
        cut = sampler.token_logprobs(policy, b["seq"], b["attn"], R, 3, pads=pads)
        v_full, v_cut = (ppo.critic_values(critic, b["seq"], b["attn"], R, k) for k in (n, 3))
    assert torch.allclose(full * mask, cut * mask, atol=1e-5)
    assert torch.allclose(v_full * mask, v_cut * mask, atol=1e-5)
    assert pads["real"] == int(b["attn"].sum()) and pads["real"] < pads["processed"] < pads["full"]
    b["old_logp"] = full + 0.05 * torch.randn(n, R) * mask   # ratios != 1: the clipped branch too

    class Recorder:       # an optimizer that keeps the gradients it is handed
        def __init__(self, model):
            self.params, self.grads = list(model.parameters()), None

        def step(self):
            self.grads = [p.grad.clone() for p in self.params]

        def zero_grad(self, set_to_none=True):
            for p in self.params:
                p.grad = None
    for model, loss_fn in ((policy, ppo.actor_loss_fn), (critic, ppo.critic_loss_fn)):
        runs = []
        for micro in (n, 3):
            args = ppo.parse_args(["--micro-batch", str(micro), "--grad-clip", "1e9", "--entropy-coef", "0.01"])
            fn = loss_fn(args, 0.001) if loss_fn is ppo.actor_loss_fn else loss_fn(args)
            opt, stats = Recorder(model), {}
            assert ppo.minibatch_step(model, opt, b, torch.arange(n), args, {"ddp": False}, fn, stats)
            runs.append((opt.grads, stats))
        (g1, s1), (g2, s2) = runs
        assert all(torch.allclose(x, y, rtol=1e-4, atol=1e-6) for x, y in zip(g1, g2))
        assert any(x.abs().sum() > 0 for x in g1)
        assert s1.keys() == s2.keys() and all(s1[k] == pytest.approx(s2[k], rel=1e-4, abs=1e-7) for k in s1)


class OnDevice(torch.Tensor):
    """A tensor standing for one on a GPU: counts the host reads that would make the host wait
    for it: item, tolist, bool, float, int, cpu, and indexing it with a CPU index tensor (whose
    pageable copy to the GPU waits). Results of ops on it are OnDevice too; .cpu() gives a plain
    tensor, the host copy."""
    waits = 0
    READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
             torch.Tensor.__int__, torch.Tensor.cpu}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.waits += func in cls.READS or (func is torch.Tensor.__getitem__ and cls.host_index(args[1]))
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        if func is torch.Tensor.cpu:
            return out.as_subclass(torch.Tensor)
        return torch._tensor._convert(out, cls)

    @staticmethod
    def host_index(idx):
        idx = idx if isinstance(idx, tuple) else (idx,)
        return any(type(i) is torch.Tensor and i.dim() > 0 for i in idx)


@pytest.mark.parametrize("cache", [True, False])
def test_update_waits_for_the_device_a_fixed_number_of_times(monkeypatch, cache):
    """A mini-batch's update and the log-prob / value passes queue all their micro-batches
    without the host waiting for the GPU in between: spans and masks are read from a host copy,
    indices reach the GPU from pinned memory (sampler.device_rows, here a stand-in), and the
    losses' finiteness and the stats stay on the device. So the host reads device tensors as
    often with 10 micro-batches as with 2. Before, it read them ~10 times per micro-batch (span's
    tolist twice, the mask's bool or transformers' check of a 2D mask, the loss's bool, each
    stat's float). cache=False (gradient checkpointing, FSDP) is where transformers checks
    explicit position_ids for packed sequences, a wait per pad-free forward. Each mini-batch
    adds one read per learner: finiteness and stats together, to decide on the step (before,
    three more: the micro-batch order's lengths, the token count's CPU index, the stats apart)."""
    monkeypatch.setattr(sampler, "device_rows", lambda rows, like: rows.as_subclass(OnDevice))
    policy, critic = common.load_model("random:tiny"), ppo.Critic(common.load_model("random:tiny"))
    for m in (policy, critic.trunk):
        m.config.use_cache = cache
    b = ragged_rows()
    n, R = b["mask"].shape
    b["old_logp"] = torch.zeros(n, R)
    b = {k: v.as_subclass(OnDevice) for k, v in b.items()}

    class Sgd:
        def __init__(self, model):
            self.inner = torch.optim.SGD(model.parameters(), lr=1e-3)
            self.step, self.zero_grad = self.inner.step, self.inner.zero_grad
    waits = {}
    for micro, mini in ((5, 10), (1, 10), (5, 2)):
        args = ppo.parse_args(["--micro-batch", str(micro), "--prompts-per-step", "10", "--mini-batch-prompts",
                               str(mini), "--samples-per-prompt", "1"])
        learners = [("actor", policy, Sgd(policy), ppo.actor_loss_fn(args, 0.001)),
                    ("critic", critic, Sgd(critic), ppo.critic_loss_fn(args))]
        OnDevice.waits = 0
        one = {"ddp": False, "world_size": 1}
        stats, bad = ppo.update(learners, b, args, one, list(ppo.minibatches(n, args, one, torch.Generator())), {})
        with torch.no_grad():
            host = b["attn"].cpu()
            sampler.token_logprobs(policy, b["seq"], b["attn"], R, micro, host=host)
            ppo.critic_values(critic, b["seq"], b["attn"], R, micro, host=host)
        waits[micro, mini] = OnDevice.waits
        assert bad == 0 and {"clipfrac", "approx_kl"} <= set(stats["actor"]) and stats["critic"]["losses/value"] > 0
    assert waits[1, 10] == waits[5, 10], waits
    assert waits[5, 2] - waits[5, 10] == 4 * 2, waits     # 4 more mini-batches x 2 learners x 1 read


def test_pad_free_rows_give_the_same_log_probs_without_a_mask():
    """Rows with no pad at all get no mask and no position_ids (SDPA's causal path, no check in
    transformers): the same log-probs and values as with the all-ones mask and positions."""
    policy, critic = common.load_model("random:tiny"), ppo.Critic(common.load_model("random:tiny"))
    torch.nn.init.normal_(critic.head.weight, std=0.1)
    g = torch.Generator().manual_seed(0)
    seq, attn = torch.randint(5, 200, (3, 12), generator=g), torch.ones(3, 12, dtype=torch.long)
    assert sampler.attention_mask(policy, attn) is None
    with torch.no_grad():
        lp = sampler.token_logprobs(policy, seq, attn, 5, 3)
        ref = sampler.logprobs_from_logits(policy(input_ids=seq, attention_mask=attn).logits[:, -6:-1], seq[:, -5:])[0]
        val = ppo.critic_values(critic, seq, attn, 5, 3)
        val_ref = critic(seq, attn, sampler.position_ids(attn), 5, padded=True)
    assert torch.allclose(lp, ref, atol=1e-6) and torch.allclose(val, val_ref, atol=1e-6)


def test_training_passes_run_without_cudnn_attention_and_give_it_back():
    """PPO's update runs forward and backward (a checkpointed layer recomputes its forward in
    backward) with cuDNN attention off (pytorch#196678: NaN query gradients); the rest of the
    step (generation, log-probs, values) keeps the default kernels: after the update the switch
    is as before. Fails if the guard is dropped or left on."""
    was = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        policy, b = common.load_model("random:tiny"), ragged_rows()
        n, R = b["mask"].shape
        with torch.no_grad():
            b["old_logp"] = sampler.token_logprobs(policy, b["seq"], b["attn"], R, n)
        seen = {"forward": [], "backward": []}
        args = ppo.parse_args(["--micro-batch", "3"])
        inner = ppo.actor_loss_fn(args, 0.001)

        def spy(model, batch, m):
            seen["forward"].append(torch.backends.cuda.cudnn_sdp_enabled())
            loss, stats = inner(model, batch, m)
            loss.register_hook(lambda g: seen["backward"].append(torch.backends.cuda.cudnn_sdp_enabled()))
            return loss, stats
        opt = torch.optim.SGD(policy.parameters(), lr=0.0)
        assert ppo.minibatch_step(policy, opt, b, torch.arange(n), args, {"ddp": False}, spy, {})
        assert seen["forward"] and seen["backward"] and not any(seen["forward"] + seen["backward"])
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)


def test_master_adamw_keeps_small_updates_that_bf16_loses():
    """lr 1e-6 on bf16 weights: plain bf16 AdamW rounds the update away; the fp32 master
    copy accumulates it. Guards the reason MasterAdamW exists."""
    torch.manual_seed(0)
    w32 = torch.randn(256) * 0.001 + 0.01   # bf16 spacing here is ~6e-5: a 1e-6 step rounds away
    p_plain = torch.nn.Parameter(w32.clone().bfloat16())
    p_master = torch.nn.Parameter(w32.clone().bfloat16())
    plain = torch.optim.AdamW([p_plain], lr=1e-6, weight_decay=0.0)
    master = optim.MasterAdamW([p_master], device="cpu", lr=1e-6, weight_decay=0.0)
    for _ in range(300):
        for p, opt in ((p_plain, plain), (p_master, master)):
            p.grad = torch.ones_like(p)
            opt.step()
            opt.zero_grad()
    drift = lambda p: (w32.bfloat16().float() - p.detach().float()).abs().mean().item()  # noqa: E731
    assert drift(p_plain) == 0.0           # every update was lost to rounding
    assert drift(p_master) > 1e-4          # 300 steps of 1e-6 moved the weights by ~3e-4
    sd = master.state_dict()
    fresh = optim.MasterAdamW([torch.nn.Parameter(w32.clone().bfloat16())], device="cpu", lr=1e-6)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.master[0], master.master[0])


def test_background_optimizer_steps_match_synchronous_ones():
    """update() alternates two learners' mini-batches; with background=True each CPU AdamW
    step runs in a thread while the other learner computes. The weights must come out exactly
    as with synchronous steps, and a failing background step must raise, not vanish."""
    from types import SimpleNamespace
    args = SimpleNamespace(mini_batch_prompts=2, samples_per_prompt=4, ppo_epochs=2, micro_batch=3,
                           grad_clip=1.0)
    dist = {"world_size": 1, "ddp": False}
    torch.manual_seed(0)
    x, y = torch.randn(16, 32), torch.randn(16, 8)
    b = {"mask": torch.ones(16, 1)}

    def loss_fn(model, b, m):
        loss = ((model(x[m].bfloat16()).float() - y[m]) ** 2).mean()
        return loss, {"loss": loss.detach()}

    def run(background):
        torch.manual_seed(1)
        nets = [torch.nn.Linear(32, 8).bfloat16() for _ in range(2)]
        init = [p.detach().clone() for n in nets for p in n.parameters()]
        opts = [optim.MasterAdamW(n.parameters(), device="cpu", background=background, lr=1e-2) for n in nets]
        learners = [(f"m{i}", n, o, loss_fn) for i, (n, o) in enumerate(zip(nets, opts))]
        timings = {}
        for step in range(3):
            mbs = list(ppo.minibatches(len(x), args, dist, torch.Generator().manual_seed(step)))
            stats, bad = ppo.update(learners, b, args, dist, mbs, timings)
        ppo.wait_for(*opts)
        assert not any(torch.equal(p, q) for p, q in zip(init, (p for n in nets for p in n.parameters())))
        assert bad == 0 and set(stats) == {"m0", "m1"} and "time/optim_wait" in timings
        return [p.detach().clone() for n in nets for p in n.parameters()], opts

    sync, _ = run(False)
    bg, opts = run(True)
    assert all(torch.equal(a, b) for a, b in zip(sync, bg))
    opts[0].opt.step = lambda: 1 / 0                     # a step that fails in its thread
    opts[0].params[0].grad = torch.ones_like(opts[0].params[0])
    opts[0].step()
    with pytest.raises(RuntimeError, match="background optimizer step failed"):
        opts[0].wait()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_torchrun_two_ranks_on_cpu(tmp_path, dtype):
    """The DDP path (--no-fsdp; gloo on the CPU): two ranks shard the prompts, average the gradients and
    stay in sync (shard.check_in_sync compares weight checksums before every checkpoint and
    raises if they differ); rank 0 alone logs and saves. bf16 weights take the other path:
    micro-batch gradients summed in fp32 and all-reduced by ppo itself, then MasterAdamW."""
    data = tmp_path / "data"
    common.write_jsonl(str(data / "train.jsonl"), countdown.generate_tasks(64, seed=0))
    common.write_jsonl(str(data / "test.jsonl"), countdown.generate_tasks(8, seed=1))
    out = str(tmp_path / "run")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "ppo.py", "--model", "tiny", "--data", str(data), "--out", out, "--steps", "2",
                        "--prompts-per-step", "4", "--samples-per-prompt", "2", "--mini-batch-prompts", "2",
                        "--max-response-len", "24", "--save-every", "1", "--eval-every", "0",
                        "--micro-batch", "2", "--dtype", dtype, "--device", "cpu", "--no-fsdp"],
                       cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    metrics = common.read_jsonl(os.path.join(out, "metrics.jsonl"))
    assert [m["step"] for m in metrics] == [1, 2]          # one log line per step, not per rank
    assert json.load(open(os.path.join(out, "config.json")))["world_size"] == 2
    assert os.path.exists(os.path.join(out, "ckpt", "step_000001", "trainer_state.json"))
    assert os.path.exists(os.path.join(out, "final", "model.safetensors"))


def test_check_in_sync_catches_ranks_that_drifted(tmp_path):
    """check_in_sync passes on equal weights and raises on every rank once one differs."""
    script = tmp_path / "drift.py"
    script.write_text(
        "import sys, torch, common, shard\n"
        "d = common.setup_dist('cpu')\n"
        "torch.manual_seed(0)\n"
        "m = torch.nn.Linear(4, 4)\n"
        "shard.check_in_sync([m], d)\n"
        "with torch.no_grad():\n"
        "    m.weight[0, 0] += 1e-6 * d['rank']\n"
        "try:\n"
        "    shard.check_in_sync([m], d)\n"
        "except RuntimeError as e:\n"
        "    open(sys.argv[1] + str(d['rank']), 'w').write(str('DDP lost sync' in str(e)))\n"
        "common.cleanup_dist(d)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), str(tmp_path / "caught")], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    # one file per rank (their stdout lines would interleave)
    assert [(tmp_path / f"caught{k}").read_text() for k in (0, 1)] == ["True", "True"]


# ---------------------------------------------------------------- learning test
def test_ppo_learns_a_simple_reward(tmp_path):
    """Reward = share of digits in a short response. A random tiny model starts near 0;
    PPO (critic, GAE, clipping, KL) must push the mean reward to >= 0.8."""
    data = tmp_path / "data"
    tasks = countdown.generate_tasks(64, seed=0)
    common.write_jsonl(str(data / "train.jsonl"), tasks)
    common.write_jsonl(str(data / "test.jsonl"), tasks[:4])

    def digit_share(text, task, prompt=""):
        text = text.replace("<|endoftext|>", "")     # ppo decodes with the EOS text, as the study
        chars = [c for c in text if not c.isspace()]
        return sum(c.isdigit() for c in chars) / max(1, len(chars)) if chars else 0.0

    args = ppo.parse_args(["--model", "tiny", "--data", str(data), "--out", str(tmp_path / "run"),
                           "--steps", "20", "--prompts-per-step", "16", "--samples-per-prompt", "4",
                           "--max-response-len", "6", "--actor-lr", "3e-3", "--critic-lr", "3e-3",
                           "--mini-batch-prompts", "8", "--micro-batch", "64", "--eval-every", "0",
                           "--log-rollouts-every", "0", "--save-every", "0", "--device", "cpu"])
    ppo.train(args, reward_fn=digit_share)
    rec = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
    first = rec[0]["score/mean"]
    last = max(r["score/mean"] for r in rec[-3:])
    assert first < 0.3 and last >= 0.8, (first, [round(r["score/mean"], 2) for r in rec])


def test_non_finite_updates_are_skipped_shown_and_stop_the_run(tmp_path, capsys):
    """A step whose loss is NaN takes no update, says so on its console line (on 4 H100s such
    steps were silent: 3.2% of them), and max_bad_steps of them in a row stop the run."""
    data = tmp_path / "data"
    tasks = countdown.generate_tasks(16, seed=0)
    common.write_jsonl(str(data / "train.jsonl"), tasks)
    common.write_jsonl(str(data / "test.jsonl"), tasks[:4])
    calls = []

    def nan_first_step(text, task, prompt=""):    # 4 prompts x 2 samples a step
        calls.append(1)
        return float("nan") if len(calls) <= 8 or nan_first_step.always else 0.0
    flags = ["--model", "tiny", "--data", str(data), "--prompts-per-step", "4", "--samples-per-prompt", "2",
             "--max-response-len", "6", "--mini-batch-prompts", "4", "--eval-every", "0", "--log-rollouts-every",
             "0", "--save-every", "0", "--max-bad-steps", "2", "--device", "cpu"]
    nan_first_step.always = False
    ppo.train(ppo.parse_args(flags + ["--steps", "3", "--out", str(tmp_path / "a")]), reward_fn=nan_first_step)
    rec = common.read_jsonl(str(tmp_path / "a" / "metrics.jsonl"))
    assert [r["skipped_updates"] > 0 for r in rec] == [True, False, False]
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("step ")]
    assert ["skipped_updates" in l for l in lines] == [True, False, False], lines
    nan_first_step.always = True
    with pytest.raises(SystemExit, match="2 consecutive steps had a non-finite loss"):
        ppo.train(ppo.parse_args(flags + ["--steps", "3", "--out", str(tmp_path / "b")]), reward_fn=nan_first_step)


# ---------------------------------------------------------------- the script, end to end
def run_ppo(*extra, out, data, init):
    cmd = [sys.executable, "ppo.py", "--model", "tiny", "--init", init, "--data", data, "--out", out,
           "--prompts-per-step", "8", "--samples-per-prompt", "2", "--max-response-len", "64",
           "--save-every", "2", "--eval-every", "2", "--val-size", "4", "--log-rollouts-every", "2",
           "--device", "cpu", *extra]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout


def test_script_runs_and_resumes(tmp_path):
    data = tmp_path / "data"
    r = subprocess.run([sys.executable, "countdown.py", "--out", str(data), "--n-train", "200",
                        "--n-test", "16"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    init = str(tmp_path / "init")   # stands in for an SFT checkpoint: a plain HF folder
    common.save_hf(common.load_model("tiny"), common.load_tokenizer("tiny"), init)
    out = str(tmp_path / "run")
    run_ppo("--steps", "4", out=out, data=str(data), init=init)
    metrics = common.read_jsonl(os.path.join(out, "metrics.jsonl"))
    assert [m["step"] for m in metrics] == [0, 1, 2, 3, 4]    # step 0: validation before training
    metrics = metrics[1:]
    for key in ["score/mean", "acc", "format_rate", "response_length/mean", "response_length/clip_ratio",
                "kl", "kl_coef", "losses/policy", "losses/value", "clipfrac", "approx_kl", "entropy",
                "explained_variance", "grad_norm/actor", "grad_norm/critic", "lr/actor", "lr/critic",
                "time/generate", "time/old_logp", "time/ref_logp", "time/values", "time/actor_update",
                "time/critic_update", "tokens_per_s", "mem/peak_gb"]:
        assert key in metrics[0], key
    assert "val/acc" in metrics[1] and "val/acc_greedy" in metrics[3]
    assert metrics[1]["time/validate"] > 0 and "time/validate" not in metrics[0]   # validation steps only
    rolls = common.read_jsonl(os.path.join(out, "rollouts", "step_000002.jsonl"))
    assert len(rolls) == 16 and set(rolls[0]) >= {"step", "id", "nums", "target", "prompt", "response",
                                                   "reward", "correct", "length"}
    for r in rolls:   # the study's rules by default, on prompt + response
        assert r["reward"] == countdown.score(r["response"], r["nums"], r["target"], rules="study",
                                              prompt=r["prompt"])
    assert os.path.exists(os.path.join(out, "final", "model.safetensors"))
    assert os.path.exists(os.path.join(out, "ckpt", "step_000004", "trainer_state.json"))
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["init"] == init and cfg["prompts_per_step"] == 8
    stdout = run_ppo("--steps", "6", "--resume", "--profile-step", "5", out=out, data=str(data), init=init)
    prof = open(os.path.join(out, "profile", "rank0.txt")).read()   # one step's ops, by their own time
    assert "Self CPU" in prof and "aten::" in prof and not os.path.exists(os.path.join(out, "profile", "rank1.txt"))
    assert "resuming from" in stdout and "step 5/6" in stdout and "step 1/6" not in stdout
    metrics = common.read_jsonl(os.path.join(out, "metrics.jsonl"))
    assert [m["step"] for m in metrics] == [0, 1, 2, 3, 4, 5, 6]
    assert json.load(open(os.path.join(out, "final", "trainer_state.json")))["step"] == 6
    # killed after its last checkpoint, before final/: the resume runs no step but writes final/
    # (before, it ran nothing and left no final/, so pipeline.py and mini.py ran it forever)
    shutil.rmtree(os.path.join(out, "final"))
    run_ppo("--steps", "6", "--resume", out=out, data=str(data), init=init)
    assert json.load(open(os.path.join(out, "final", "trainer_state.json")))["step"] == 6
    assert [m["step"] for m in common.read_jsonl(os.path.join(out, "metrics.jsonl"))] == [0, 1, 2, 3, 4, 5, 6]


def test_bad_flags_are_explained():
    r = subprocess.run([sys.executable, "ppo.py", "--adv-estimator", "reinforce"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--adv-estimator" in r.stderr
    r = subprocess.run([sys.executable, "ppo.py", "--data", "/nonexistent", "--device", "cpu"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode != 0 and "/nonexistent/train.jsonl: no such file" in r.stderr
    # --steps 0 is the validation before training alone (mini.py --checks-only), so it needs one
    r = subprocess.run([sys.executable, "ppo.py", "--steps", "0", "--eval-every", "0"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--steps 0 validates before training only" in r.stderr
    r = subprocess.run([sys.executable, "ppo.py", "--steps", "2", "--profile-step", "3"], cwd=REPO,
                       capture_output=True, text=True)     # a step the run never reaches: no silent no-op
    assert r.returncode == 2 and "--profile-step must be a step of the run" in r.stderr


def test_init_alone_brings_its_own_tokenizer(tmp_path, wider_tiny):
    """--init alone: --model is that folder (its tokenizer, never tiny's); a --model whose
    tokenizer outgrows --init's embeddings stops at once, naming --model."""
    data = tmp_path / "data"
    common.write_jsonl(str(data / "train.jsonl"), countdown.generate_tasks(8, seed=0, sizes=(3,)))
    common.write_jsonl(str(data / "test.jsonl"), countdown.generate_tasks(2, seed=1, sizes=(3,)))
    flags = ["--data", str(data), "--steps", "1", "--prompts-per-step", "2", "--samples-per-prompt", "2",
             "--max-response-len", "4", "--eval-every", "0", "--log-rollouts-every", "0", "--device", "cpu"]
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "ppo.py", "--init", wider_tiny, "--out", str(out), *flags], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.load(open(out / "config.json"))["model"] == wider_tiny
    n_tiny = len(common.load_tokenizer("tiny"))
    assert len(common.load_tokenizer(str(out / "final"))) == n_tiny + 8
    r = subprocess.run([sys.executable, "ppo.py", "--model", wider_tiny, "--init", common.tiny_path(),
                        "--out", str(tmp_path / "bad"), *flags], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and f"--model's tokenizer has {n_tiny + 8} tokens, the model only {n_tiny}" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad" / "final").exists()


def test_compiled_layers_train_as_eager_ones(tmp_path, monkeypatch):
    """--compile (decoder layers through torch.compile; on by default on one GPU) changes no
    number: two steps with compiled, checkpointed layers end with the weights and metrics of
    eager ones. Traced with aot_eager (the same graphs, no code generation) to stay quick."""
    import torch._dynamo
    data = tmp_path / "data"
    tasks = countdown.generate_tasks(32, seed=0)
    common.write_jsonl(str(data / "train.jsonl"), tasks)
    common.write_jsonl(str(data / "test.jsonl"), tasks[:4])
    compiled = []
    real = common.compile_layers
    monkeypatch.setattr(common, "compile_layers", lambda m: compiled.append(real(m, backend="aot_eager")))
    runs = {}
    for name, flags in (("eager", ["--no-grad-ckpt"]), ("compiled", ["--compile", "--grad-ckpt"])):
        torch._dynamo.reset()
        args = ppo.parse_args(["--model", "tiny", "--data", str(data), "--out", str(tmp_path / name),
                               "--steps", "2", "--prompts-per-step", "4", "--samples-per-prompt", "2",
                               "--max-response-len", "12", "--micro-batch", "3", "--eval-every", "0",
                               "--log-rollouts-every", "0", "--save-every", "0", "--device", "cpu",
                               "--actor-lr", "1e-2", "--critic-lr", "1e-2", *flags])
        ppo.train(args)
        runs[name] = (common.load_model(str(tmp_path / name / "final")).state_dict(),
                      common.read_jsonl(str(tmp_path / name / "metrics.jsonl")))
    assert compiled == [4, 4, 4]             # the tiny model's 4 layers in policy, critic and reference
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2   # grad and no-grad passes
    init = common.load_model("tiny").state_dict()
    (w0, m0), (w1, m1) = runs["eager"], runs["compiled"]
    assert max((w0[k] - init[k]).abs().max().item() for k in w0) > 1e-3    # the updates moved the weights
    assert max((w0[k] - w1[k]).abs().max().item() for k in w0) < 1e-5
    for key in ("losses/policy", "losses/value", "kl", "entropy", "grad_norm/actor", "grad_norm/critic"):
        assert abs(m0[-1][key] - m1[-1][key]) < 1e-4, key


@pytest.mark.parametrize("epochs", [1, 2])
def test_critic_first_minibatch_gives_the_values_the_pass_would(tmp_path, monkeypatch, epochs):
    """At lambda = 1 the critic's first mini-batch trains before the advantages exist and its
    forward supplies those rows' values, so the values pass takes only the other rows. Two steps
    end with the weights and metrics of runs whose values pass takes every row (veRL's way),
    with one PPO epoch or two (the second epoch's critic steps read the filled values)."""
    data = tmp_path / "data"
    tasks = countdown.generate_tasks(32, seed=0)
    common.write_jsonl(str(data / "train.jsonl"), tasks)
    common.write_jsonl(str(data / "test.jsonl"), tasks[:4])
    rows_valued, values = [], []
    real, real_adv = ppo.critic_values, ppo.advantages
    monkeypatch.setattr(ppo, "critic_values", lambda critic, seq, *a: rows_valued.append(len(seq)) or real(critic, seq, *a))
    monkeypatch.setattr(ppo, "advantages", lambda b, *a: values.append(b["values"] * b["mask"]) or real_adv(b, *a))
    runs = {}
    for name, early in (("pass", False), ("early", True)):
        monkeypatch.setattr(ppo, "early_values", lambda args, critic, early=early: early and critic is not None)
        rows_valued.clear()
        values.clear()
        args = ppo.parse_args(["--model", "tiny", "--data", str(data), "--out", str(tmp_path / name),
                               "--steps", "2", "--prompts-per-step", "4", "--samples-per-prompt", "2",
                               "--mini-batch-prompts", "2", "--max-response-len", "12", "--micro-batch", "3",
                               "--eval-every", "0", "--log-rollouts-every", "0", "--save-every", "0",
                               "--device", "cpu", "--actor-lr", "1e-2", "--critic-lr", "1e-2",
                               "--ppo-epochs", str(epochs)])
        ppo.train(args, reward_fn=lambda text, task, prompt="": (len(text) % 5) / 4)   # returns vary
        runs[name] = (rows_valued[:] + [values[-1]], common.read_jsonl(str(tmp_path / name / "metrics.jsonl")),
                      torch.load(str(tmp_path / name / "final" / "trainer_state.pt"), weights_only=False)["critic"],
                      common.load_model(str(tmp_path / name / "final")).state_dict())
    assert runs["pass"][0][:-1] == [8, 8] and runs["early"][0][:-1] == [4, 4]   # 8 rows a step, 2 mini-batches
    v0, v1 = runs["pass"][0][-1], runs["early"][0][-1]     # step 2's values (the critic has learnt)
    assert v0.abs().max() > 1e-2 and (v0 - v1).abs().max() < 1e-5
    (_, m0, c0, w0), (_, m1, c1, w1) = runs["pass"], runs["early"]
    for a, b in ((w0, w1), (c0, c1)):
        assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-5
    for key in ("losses/value", "explained_variance", "losses/policy", "grad_norm/critic", "grad_norm/actor"):
        assert abs(m0[-1][key] - m1[-1][key]) < 1e-4, key
    assert m1[-1]["losses/value"] > 0


def test_doctests_of_the_ppo_modules():
    """The examples in ppo.py, core_algos.py, sampler.py, engine.py, bench.py and shard.py run
    (among them: --compile's default, on for one GPU only; GAE at lambda = 1)."""
    import doctest

    import bench
    import core_algos
    import engine
    import shard
    for m in (ppo, core_algos, sampler, engine, bench, shard):
        res = doctest.testmod(m)
        assert res.attempted >= 1 and res.failed == 0, m.__name__


def test_update_keeps_the_models_alternating_after_an_early_critic_step(monkeypatch):
    """With the critic's first mini-batch taken early, the later mini-batches put the critic
    first, so actor and critic still alternate and each CPU optimizer step overlaps the other
    model's GPU work (actor, actor in a row left the second waiting: 0.9 s a step on an H100)."""
    calls = []
    monkeypatch.setattr(ppo, "learner_step", lambda learner, *a: calls.append(learner[0]) or 0)
    learners = [("actor", None, None, None), ("critic", None, None, None)]
    mbs = [torch.arange(2), torch.arange(2, 4), torch.arange(4, 6)]
    stats, bad = ppo.update(learners, {}, None, {}, mbs, {}, taken={"critic": ({"losses/value": 3.0}, 1)})
    order = ["critic"] + calls                                   # the early step, then update()'s
    assert order == ["critic", "actor"] * 3 and bad == 1 and stats["critic"]["losses/value"] == 1.0
    calls.clear()
    ppo.update(learners, {}, None, {}, mbs, {})
    assert calls == ["actor", "critic"] * 3
