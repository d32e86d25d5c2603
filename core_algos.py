"""
PPO's algorithm as pure tensor functions: masked statistics, GAE, the clipped policy and value
losses, KL estimators, GRPO's group advantages, and the adaptive KL controller. The study's
counterpart is veRL's `verl/trainer/ppo/core_algos.py` (kanishkg/TinyZero); ppo.py runs the
loop around these. Every function is unit-tested against hand values or brute force in
tests/test_ppo.py and tests/test_fidelity.py.

    >>> import torch
    >>> adv, ret = compute_gae(torch.tensor([[0., 0., 1.]]), torch.zeros(1, 3), torch.ones(1, 3))
    >>> adv.tolist(), ret.tolist()       # gamma = lambda = 1: rewards-to-go minus values
    ([[1.0, 1.0, 1.0]], [[1.0, 1.0, 1.0]])
"""
import torch


def masked_mean(x, mask, dim=None):
    """Mean of x over positions where mask is 1 (0 if there are none)."""
    x = torch.where(mask > 0, x, torch.zeros_like(x))  # not x * mask: inf * 0 would be nan
    if dim is None:
        return x.sum() / mask.sum().clamp(min=1)
    return x.sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x, mask, dist=None, eps=1e-8):
    """(x - mean) * rsqrt(var + eps) over the masked positions of the *global* batch, with the
    unbiased variance, as veRL's masked_whiten (verl/utils/torch_functional.py); masked-out
    positions become 0. Under torchrun (dist given) the sums are all-reduced first, so every
    rank whitens with the statistics of all ranks' tokens, as one process would.
    x, mask: [B, T]."""
    x0 = torch.where(mask > 0, x, torch.zeros_like(x))
    stats = torch.stack([mask.sum(), x0.sum(), (x0 * x0).sum()]).double()   # n, sum x, sum x^2
    if dist is not None and dist["ddp"]:
        import torch.distributed as tdist
        stats = stats.to(dist["device"])
        tdist.all_reduce(stats)
    n, sx, sxx = stats.tolist()
    mean = sx / max(n, 1.0)
    var = max(sxx / max(n, 1.0) - mean * mean, 0.0) * (n / (n - 1) if n > 1 else 1.0)   # Bessel
    return torch.where(mask > 0, (x - mean) * (var + eps) ** -0.5, torch.zeros_like(x))


def compute_gae(rewards, values, mask, gamma=1.0, lam=1.0):
    """Generalised advantage estimation over response tokens.

    rewards, values, mask: [B, T] float; mask is 1 on response tokens (a prefix of each row
    when responses are right-padded, but any 0/1 pattern works: masked positions are
    skipped, so the next *valid* token is the successor). Returns (advantages, returns),
    both [B, T], 0 where mask is 0.
        delta_t = r_t + gamma * V_{t+1} - V_t,  A_t = delta_t + gamma * lam * A_{t+1}
    """
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    next_v = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_a = torch.zeros_like(next_v)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        a = delta + gamma * lam * next_a
        adv[:, t] = torch.where(m > 0, a, torch.zeros_like(a))
        next_v = torch.where(m > 0, values[:, t], next_v)   # skip masked positions
        next_a = torch.where(m > 0, a, next_a)
    returns = torch.where(mask > 0, adv + values, torch.zeros_like(adv))
    return adv, returns


def policy_loss(logp, old_logp, advantages, mask, clip=0.2):
    """PPO clipped surrogate, token-mean. Returns (loss, clipfrac).

    loss = mean_t max(-A r, -A clip(r, 1-clip, 1+clip)),  r = exp(logp - old_logp)
    """
    ratio = torch.exp(logp - old_logp)
    l1 = -advantages * ratio
    l2 = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(l1, l2), mask)
    clipfrac = masked_mean((l2 > l1).float(), mask)
    return loss, clipfrac


def value_loss(values, old_values, returns, mask, clip=0.5):
    """Clipped value loss, token-mean: 0.5 * max((v-R)^2, (clip(v, v_old +- clip) - R)^2)."""
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    loss = torch.maximum((values - returns) ** 2, (v_clipped - returns) ** 2)
    return 0.5 * masked_mean(loss, mask)


def kl_penalty(logp, ref_logp, kind="k1"):
    """Per-token KL estimate between policy and reference from sampled-token log-probs.
    k1 = logp - ref; abs = |k1|; mse = 0.5 k1^2; k3 = exp(ref - logp) - (ref - logp) - 1
    (Schulman, http://joschu.net/blog/kl-approx.html)."""
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "abs":
        return d.abs()
    if kind == "mse":
        return 0.5 * d * d
    if kind == "k3":
        return torch.exp(-d) + d - 1.0
    raise ValueError(f"unknown KL kind {kind!r}")


def grpo_advantages(scores, group_size, mask, eps=1e-6):
    """GRPO: each response's score normalised within its prompt's group, on every token.
    scores: [B] with B = prompts * group_size, grouped contiguously. Returns [B, T]."""
    g = scores.view(-1, group_size)
    norm = (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + eps)
    return norm.view(-1, 1) * mask


def explained_variance(values, returns, mask):
    """1 - Var(R - V) / Var(R) over masked tokens (1 = perfect critic, 0 = predicts the mean)."""
    var_r = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    err = returns - values
    var_e = masked_mean((err - masked_mean(err, mask)) ** 2, mask)
    return (1 - var_e / var_r.clamp(min=1e-8)).item()


class AdaptiveKL:
    """Ziegler et al. 2019 proportional controller: coef *= 1 + clip(kl/target - 1, +-0.2) * n/H."""

    def __init__(self, coef, target=None, horizon=10000):
        self.value, self.target, self.horizon = coef, target, horizon

    def update(self, kl, n_samples):
        if self.target is not None:
            err = max(-0.2, min(0.2, kl / self.target - 1.0))
            self.value *= 1.0 + err * n_samples / self.horizon
