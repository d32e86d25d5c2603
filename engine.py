"""
The built-in rollout engine: a decoder for the policy being trained, written directly in
PyTorch so that a decode step is a handful of large kernels replayed from a CUDA graph.

    from engine import Engine
    eng = Engine(policy, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    out = eng.generate(prompt_ids, prompt_mask, max_new=512, temperature=1.0)
    out.tokens, out.mask, out.logp          # [N, R] each: ids, 1 up to and incl. EOS, log-probs

    python engine.py --model tiny --device cpu --check       # a smoke test: samples, speed, greedy vs transformers
    python engine.py --model qwen2.5-3b --n 256 --max-new 512 --prompt "..."

Why: transformers' `generate` spends most of a decode step in Python (README, "Speed"). Here, per step, the GPU runs: embed -> per layer (RMSNorm, q/k/v, RoPE, write K/V
into a preallocated cache, attention over the cache, o, RMSNorm, MLP) -> LM head -> sampling
-> bookkeeping (EOS, stop sequences, output buffers, positions), all captured once per
(batch size, cache-length bucket, sampling mode) in a CUDA graph and replayed.

- Weights are the training model's own tensors (no copy): an optimizer step that updates them
  in place (AdamW, MasterAdamW's copy_) is seen by the next rollout for free.
- The KV cache is [layers] x [B, kv_heads, L, head_dim], left-padded like the prompts. Slot s
  holds the token at column s of the padded sequence, so all rows advance together and one
  scalar `slot` indexes the step. On a GPU with Triton, attention is one kernel per layer
  (`attend_fused`) that writes the step's k and v and reads the cache only up to the live
  slot; SDPA and the batched-matmul path read the first `bucket` slots, rounded up to
  `block`, not the whole preallocated length.
- Sampling on the GPU: temperature, top-k, top-p, then the exponential-race trick
  (argmax p_i / E_i with E_i ~ Exp(1) draws i with probability p_i) instead of
  torch.multinomial. Returned log-probs are those of the distribution actually sampled from.
- On a GPU the small elementwise pieces of a layer (RoPE on q and k, residual add + RMSNorm,
  SiLU x up) go through torch.compile: one fused kernel each, compiled in the first call
  (~20 s), then captured in the graphs like the rest.
  `TORCH_COMPILE_DISABLE=1` (PyTorch's own switch) runs them eagerly, e.g. where Triton
  cannot build kernels; ppo.py's fused log-probs follow the same switch.
- Finished rows stop costing: every `check_every` steps the host looks at how many rows are
  live, stops when none are, and halves the batch (moving live rows and their cache to the
  front) when at most half are live.
- Architectures: Llama-style decoders as transformers builds them (Llama, Qwen2, Qwen3's
  q/k norms, Mistral without sliding windows). Anything else raises `Unsupported`, and
  ppo.py falls back to transformers `generate`.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class Unsupported(ValueError):
    pass


@dataclass
class Output:
    tokens: torch.Tensor   # [N, R] long, pad after the stop
    mask: torch.Tensor     # [N, R] float, 1 up to and including EOS / the stop sequence
    logp: torch.Tensor     # [N, R] float, sampler log-probs (0 where mask is 0)
    steps: int             # decode steps run (R at most)


def check_supported(model):
    """Raise Unsupported unless model is a decoder this engine can run."""
    cfg = model.config
    if getattr(cfg, "model_type", None) not in ("llama", "qwen2", "qwen3", "mistral"):
        raise Unsupported(f"model_type {getattr(cfg, 'model_type', None)!r}")
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(model, "lm_head"):
        raise Unsupported(f"{type(model).__name__}: no .model.layers / .lm_head")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise Unsupported(f"hidden_act {cfg.hidden_act}")
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", False):
        raise Unsupported("sliding-window attention")
    rope = getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", "llama3", "linear"):
        raise Unsupported(f"rope scaling {rope}")  # dynamic variants change with length
    a = inner.layers[0].self_attn
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        if not hasattr(a, name):
            raise Unsupported(f"attention without {name}")


def rms_norm(x, weight, eps):
    """transformers' LlamaRMSNorm: normalise in fp32, scale in the weight's dtype."""
    dt = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dt)


def rotate(x, cos, sin):
    """RoPE, half-split convention. x [..., D]; cos/sin broadcast to it."""
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), -1) * sin


# The small elementwise pieces of a layer. Eager they are ~14 kernel launches a layer; on a
# GPU the engine runs them through torch.compile, which fuses each into one kernel (at 512
# sequences these launches were ~2.5 ms of a 12.3 ms decode step: bench.py --parts profile).

def rope_heads(qkv, cos, sin, n_q, n_kv, q_w, k_w, eps):
    """qkv [B, T, Hq + 2 Hkv, D] -> q [B, Hq, T, D], k and v [B, Hkv, T, D], RoPE on q and k
    (one pass over both). q_w, k_w: Qwen3's per-head RMSNorm weights before RoPE, or None.
    cos, sin: [B, T, D]."""
    qk = qkv[:, :, :n_q + n_kv]
    if q_w is not None:
        qk = torch.cat([rms_norm(qk[:, :, :n_q], q_w, eps), rms_norm(qk[:, :, n_q:], k_w, eps)], 2)
    qk = rotate(qk, cos[:, :, None], sin[:, :, None]).transpose(1, 2)
    return qk[:, :n_q], qk[:, n_q:], qkv[:, :, n_q + n_kv:].transpose(1, 2)


def add_norm(x, y, weight, eps):
    """Residual add, then RMSNorm: returns the new residual stream and its normalised copy."""
    x = x + y
    return x, rms_norm(x, weight, eps)


def silu_mul(gate, up):
    return F.silu(gate) * up


def sample(logits, temperature, top_k, top_p, greedy, seed=None):
    """Next tokens and their log-probs from logits [B, V].

    temperature: 0-dim tensor (so a captured graph can change it); top_k 0 and top_p 1.0 are
    off. Returns tok [B] and logp [B], the log-prob of tok under the distribution sampled.
    The full log-softmax is never written out: log p(tok) = z[tok] - logsumexp(z).
    seed: a 0-dim int64 tensor; where given, on a GPU with Triton and with no top-k/top-p,
    one fused kernel (`_sample_kernel`) samples from the logits as they are (one read of [B, V]
    instead of ~10 passes over an fp32 copy) and then advances the seed.
    """
    if seed is not None and triton is not None and logits.is_cuda and top_k == 0 and top_p >= 1.0:
        return sample_fused(logits, temperature, greedy, seed)
    logits = logits.float()
    z = logits if greedy else logits / temperature
    if top_k > 0 and not greedy:
        kth = torch.topk(z, top_k, -1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0 and not greedy:
        srt, idx = torch.sort(z, -1, descending=True)
        probs = torch.softmax(srt, -1)
        drop = (probs.cumsum(-1) - probs) >= top_p          # keep the smallest prefix reaching p
        z = torch.full_like(z, float("-inf")).scatter(-1, idx, srt.masked_fill(drop, float("-inf")))
    if greedy:
        tok = z.argmax(-1)
    else:  # exponential race: argmax_i z_i - log E_i = argmax_i p_i / E_i ~ Categorical(p)
        tok = (z - torch.empty_like(z).exponential_().log_()).argmax(-1)
    return tok, z.gather(-1, tok[:, None]).squeeze(-1) - torch.logsumexp(z, -1)


try:  # Triton (GPU extra, ships with CUDA builds of PyTorch): the fused sampler below
    import triton
    import triton.language as tl
except ImportError:
    triton = None

if triton is not None:
    @triton.jit
    def _race(logits, row, stride, inv_t, cols, u, m, s, best, best_i, V: tl.constexpr,
              GREEDY: tl.constexpr):
        """One column per lane: update each lane's running logsumexp (max m, sum s of
        exp(z - m)) and the winner of its exponential race (key z - log E with E = -log u ~
        Exp(1); greedy: key z). Strict >: a lane keeps its first column of equal keys."""
        ok = cols < V
        z = tl.load(logits + row * stride + cols, mask=ok, other=float("-inf")).to(tl.float32) * inv_t
        m_new = tl.maximum(m, z)
        s = tl.where(ok, s * tl.exp(m - m_new) + tl.exp(z - m_new), s)
        m = tl.where(ok, m_new, m)
        if GREEDY:
            key = z
        else:
            key = tl.where(ok, z - tl.log(-tl.log(u)), float("-inf"))
        take = key > best
        return m, s, tl.where(take, key, best), tl.where(take, cols, best_i)

    @triton.jit
    def _sample_kernel(logits, stride, temperature, seed, tok_out, logp_out, V: tl.constexpr,
                       GREEDY: tl.constexpr, BLOCK: tl.constexpr):
        """One program per row, one pass over its V logits, BLOCK columns at a time as four
        quarters of Q lanes; one Philox call (seed, row * blocks * Q + block * Q + lane) gives
        a lane its four uniforms (tl.rand4x: a quarter of the RNG's work of one call per
        column, 0.46 -> 0.35 ms at [512, 152k] on an H100). The lanes' states are combined at
        the end; ties go to the lowest column, as torch.argmax."""
        row = tl.program_id(0).to(tl.int64)
        if GREEDY:
            inv_t = 1.0
        else:
            inv_t = 1.0 / tl.load(temperature)
        s0 = tl.load(seed)
        Q: tl.constexpr = BLOCK // 4
        lane = tl.arange(0, Q).to(tl.int64)
        m = tl.full([Q], float("-inf"), tl.float32)
        s = tl.zeros([Q], tl.float32)
        best = tl.full([Q], float("-inf"), tl.float32)
        best_i = tl.zeros([Q], tl.int64)
        blocks = (V + BLOCK - 1) // BLOCK
        for start in range(0, V, BLOCK):
            u0, u1, u2, u3 = tl.rand4x(s0, (row * blocks * Q + start // 4 + lane).to(tl.uint32))
            m, s, best, best_i = _race(logits, row, stride, inv_t, start + lane, u0, m, s, best, best_i, V, GREEDY)
            m, s, best, best_i = _race(logits, row, stride, inv_t, start + Q + lane, u1, m, s, best, best_i, V, GREEDY)
            m, s, best, best_i = _race(logits, row, stride, inv_t, start + 2 * Q + lane, u2, m, s, best, best_i, V, GREEDY)
            m, s, best, best_i = _race(logits, row, stride, inv_t, start + 3 * Q + lane, u3, m, s, best, best_i, V, GREEDY)
        mx = tl.max(m, 0)
        lse = mx + tl.log(tl.sum(tl.where(m > float("-inf"), s * tl.exp(m - mx), 0.0), 0))
        tok = tl.min(tl.where(best == tl.max(best, 0), best_i, V), 0)
        z_tok = tl.load(logits + row * stride + tok).to(tl.float32) * inv_t
        tl.store(tok_out + row, tok)
        tl.store(logp_out + row, z_tok - lse)


def sample_fused(logits, temperature, greedy, seed, block=1024):
    """sample()'s fused path: tok [B] and logp [B] from logits [B, V] (any float dtype)."""
    B, V = logits.shape
    tok = torch.empty(B, dtype=torch.long, device=logits.device)
    logp = torch.empty(B, dtype=torch.float32, device=logits.device)
    _sample_kernel[(B,)](logits, logits.stride(0), temperature, seed, tok, logp, V=V,
                         GREEDY=bool(greedy), BLOCK=block, num_warps=8)
    seed.add_(1)
    return tok, logp


if triton is not None:
    @triton.jit
    def _attend_kernel(q, k_new, v_new, K, V, ok, slot, out, s_qb, s_qh, s_kb, s_kh, s_vb, s_vh,
                       s_cb, s_ch, s_cl, s_ob, s_oh, s_ok, scale, N_KV: tl.constexpr, G: tl.constexpr,
                       GP: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr):
        """One program per (row b, key/value head j). Writes this step's k and v at `slot` of
        the cache, then attends the group's G query heads (padded to GP rows for tl.dot) to the
        row's usable slots before `slot` (ok[b, n]) and to the new token, which starts the
        online softmax (so no row is empty). The loop ends at the live slot, not at the bucket."""
        b = tl.program_id(0) // N_KV
        j = tl.program_id(0) % N_KV
        s = tl.load(slot)
        d = tl.arange(0, D)
        heads = j * G + tl.arange(0, GP)
        real = tl.arange(0, GP) < G
        qv = tl.load(q + b * s_qb + heads[:, None] * s_qh + d[None, :], mask=real[:, None], other=0.0)  # [GP, D]
        kn = tl.load(k_new + b * s_kb + j * s_kh + d)                                 # [D]
        vn = tl.load(v_new + b * s_vb + j * s_vh + d)
        base = b * s_cb + j * s_ch
        tl.store(K + base + s * s_cl + d, kn)
        tl.store(V + base + s * s_cl + d, vn)
        m = tl.sum(qv.to(tl.float32) * kn.to(tl.float32)[None, :], 1) * scale        # [GP] running max
        l = tl.full([GP], 1.0, tl.float32)                                            # running sum of exp
        acc = tl.zeros([GP, D], tl.float32) + vn.to(tl.float32)[None, :]
        for start in range(0, s, BLOCK):
            n = start + tl.arange(0, BLOCK)
            live = n < s
            use = tl.load(ok + b * s_ok + n, mask=live, other=0) != 0                 # [BLOCK]
            kb = tl.load(K + base + n[:, None] * s_cl + d[None, :], mask=live[:, None], other=0.0)
            sc = tl.dot(qv, tl.trans(kb)) * scale                                     # [GP, BLOCK] fp32
            sc = tl.where(use[None, :], sc, float("-inf"))
            m_new = tl.maximum(m, tl.max(sc, 1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(sc - m_new[:, None])
            l = l * alpha + tl.sum(p, 1)
            vb = tl.load(V + base + n[:, None] * s_cl + d[None, :], mask=live[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(vb.dtype), vb)
            m = m_new
        o = acc / l[:, None]
        tl.store(out + b * s_ob + heads[:, None] * s_oh + d[None, :], o.to(out.dtype.element_ty), mask=real[:, None])


def attend_fused(q, k, v, K, V, ok, slot, block=64, warps=4, stages=2):
    """The decode step's attention in one Triton kernel (`_attend_kernel`): writes k, v
    [B, Hkv, 1, D] into the caches K, V [rows, Hkv, slots, D] at the 0-dim `slot`, and returns
    softmax(q K^T / sqrt(D)) V for q [B, Hq, 1, D] over the usable slots (ok [rows, slots]
    bool) up to and including `slot`, as [B, Hq, D] in q's dtype. Grouped-query heads share
    one read of K and V, and only slots before the live one are read."""
    B, Hq, _, D = q.shape
    n_kv = k.shape[1]
    G = Hq // n_kv
    assert q.stride(-1) == k.stride(-1) == v.stride(-1) == K.stride(-1) == V.stride(-1) == 1
    assert K.stride() == V.stride()
    out = torch.empty(B, Hq, D, dtype=q.dtype, device=q.device)
    _attend_kernel[(B * n_kv,)](
        q, k, v, K, V, ok, slot, out, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        v.stride(0), v.stride(1), K.stride(0), K.stride(1), K.stride(2), out.stride(0), out.stride(1), ok.stride(0),
        D ** -0.5, N_KV=n_kv, G=G, GP=max(16, triton.next_power_of_2(G)), D=D, BLOCK=block,
        num_warps=warps, num_stages=stages)
    return out


# per-row state, [rows, ...] each: moved together when the batch is compacted
ROW_BUFFERS = ("valid", "tok", "pos", "done", "length", "limit", "out_tok", "out_logp")


def fused_attention_fits(head_dim):
    """Whether `attend_fused` runs here: Triton, and a head_dim that tl.dot and tl.arange take."""
    return triton is not None and 16 <= head_dim <= 256 and head_dim & (head_dim - 1) == 0


def decode_attention(device, grouped, dtype=torch.bfloat16, head_dim=128):
    """The decode step's attention, 'triton', 'sdpa' or 'bmm', where Engine is not told.

    On a GPU with Triton, fp16/bf16 and a head_dim tl.dot takes (a power of two, 16-256):
    `attend_fused`, one kernel that also writes the step's k and v, reads K and V once for
    a group of query heads and stops at the live slot. At Qwen2.5-3B shape on an H100 it takes
    2.66 ms a step (36 layers, 512 rows, 384 slots: 2.7 TB/s, 91% of the copy ceiling)
    against 3.01 for cuDNN's SDPA and the cache writes, 4.26 for the two batched matmuls
    (docs/bench/h100_gen_micro_s13.log). Otherwise: SDPA with a mask over grouped-query heads
    has one fused kernel, cuDNN's (fp16/bf16 only), which PyTorch prefers on Hopper and newer
    (compute capability >= 9) while it is enabled; elsewhere it falls back to the unfused math
    kernel (pytorch#181528), which made the miniature's generation 4-12x slower while cuDNN
    attention was off (docs/mini/h100x4_s9). The two batched matmuls read K and V once, so
    they take every other case with groups; there the prefill gives SDPA every head.

    >>> decode_attention(torch.device("cpu"), grouped=True), decode_attention(torch.device("cpu"), False)
    ('sdpa', 'sdpa')
    """
    if device.type != "cuda":
        return "sdpa"
    half = dtype in (torch.float16, torch.bfloat16)
    if half and fused_attention_fits(head_dim):
        return "triton"
    if not grouped:
        return "sdpa"
    hopper = torch.cuda.get_device_capability(device)[0] >= 9
    return "sdpa" if hopper and half and torch.backends.cuda.cudnn_sdp_enabled() else "bmm"


class Engine:
    """Generation for one model; see the module docstring. Not thread-safe."""

    def __init__(self, model, eos_id, pad_id, block=64, check_every=16, graphs=None, min_batch=8,
                 attn=None, compile=None):
        check_supported(model)
        if attn not in ("bmm", "sdpa", "triton", None):
            raise ValueError(f"attn must be triton, bmm or sdpa, not {attn!r}")
        self.model, self.eos_id, self.pad_id = model, eos_id, pad_id
        self.cfg = model.config
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.block, self.check_every, self.min_batch = block, check_every, min_batch
        self.graphs_on = (self.device.type == "cuda") if graphs is None else graphs
        c = self.cfg
        self.n_heads = c.num_attention_heads
        self.n_kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        # decode attention: two batched matmuls, or PyTorch's SDPA (None: decode_attention)
        self.groups = self.n_heads // self.n_kv                # query heads per key/value head
        if attn == "triton" and not fused_attention_fits(self.head_dim):
            raise ValueError(f"attn='triton' needs Triton and a head_dim of 16-256, a power of two (not {self.head_dim})")
        self.attn = attn or decode_attention(self.device, self.groups > 1, self.dtype, self.head_dim)
        self.layers = list(model.model.layers)
        # norms[i]: the RMSNorm in front of layer i; norms[-1]: the final one (before the LM head)
        self.norms = [layer.input_layernorm for layer in self.layers] + [model.model.norm]
        # compile (default: on a GPU with Triton): fuse the elementwise pieces. Shapes are
        # PyTorch's automatic dynamic: a second batch size recompiles once with the batch
        # dimension symbolic, while head counts and head_dim stay constants (dynamic=True made
        # them symbolic too, and the RoPE kernel took 12.5 us for 2.4 MB). A string is a
        # torch.compile backend (tests trace with "aot_eager": quick, no code generation).
        if compile is None:   # TORCH_COMPILE_DISABLE=1 sets dynamo's disable flag
            from torch._dynamo import config as dynamo_config
            compile = self.device.type == "cuda" and triton is not None and not dynamo_config.disable
        on = compile
        backend = on if isinstance(on, str) else "inductor"
        wrap = ((lambda f: torch.compile(f, fullgraph=True, backend=backend)) if on
                else (lambda f: f))
        self.rope_heads, self.add_norm, self.silu_mul = map(wrap, (rope_heads, add_norm, silu_mul))
        self.cap = (0, 0)          # (rows, slots) of the allocated cache
        self.graphs, self.pool, self.stop_tensors = {}, None, {}
        self.wqkv, self.bqkv = [], []   # fused q/k/v projections (_fuse_qkv)

    # ------------------------------------------------------------------ buffers
    def cache_bytes(self, rows, slots):
        return 2 * len(self.layers) * rows * self.n_kv * slots * self.head_dim * self.dtype.itemsize

    def _allocate(self, rows, slots):
        """(Re)allocate the KV cache and the per-row state; drops captured graphs."""
        if rows <= self.cap[0] and slots <= self.cap[1]:
            return
        self.release()
        rows, slots = max(rows, self.cap[0]), max(slots, self.cap[1])
        slots = math.ceil(slots / self.block) * self.block
        kw = dict(device=self.device, dtype=self.dtype)
        shape = (rows, self.n_kv, slots, self.head_dim)
        self.k = [torch.zeros(shape, **kw) for _ in self.layers]
        self.v = [torch.zeros(shape, **kw) for _ in self.layers]
        dev = self.device
        self.valid = torch.zeros(rows, slots, dtype=torch.bool, device=dev)   # key slot usable
        self.tok = torch.zeros(rows, dtype=torch.long, device=dev)            # token to feed
        self.pos = torch.zeros(rows, dtype=torch.long, device=dev)            # its position id
        self.done = torch.zeros(rows, dtype=torch.bool, device=dev)
        self.length = torch.zeros(rows, dtype=torch.long, device=dev)        # tokens kept so far
        self.limit = torch.zeros(rows, dtype=torch.long, device=dev)         # a row stops at this length
        self.slot = torch.zeros((), dtype=torch.long, device=dev)             # its cache slot
        self.col = torch.zeros((), dtype=torch.long, device=dev)              # output column
        self.temperature = torch.ones((), dtype=torch.float32, device=dev)
        self.seed = torch.zeros((), dtype=torch.long, device=dev)            # fused sampler's RNG
        self.eos_on = torch.ones((), dtype=torch.bool, device=dev)
        self.out_tok = torch.zeros(rows, slots, dtype=torch.long, device=dev)
        self.out_logp = torch.zeros(rows, slots, dtype=torch.float32, device=dev)
        rot = self.model.model.rotary_emb                                    # HF's, scaling included
        freqs = torch.arange(slots, device=dev, dtype=torch.float32)[:, None] * rot.inv_freq.float()[None]
        emb = torch.cat((freqs, freqs), -1)
        scale = getattr(rot, "attention_scaling", 1.0)
        self.cos, self.sin = (emb.cos() * scale).to(self.dtype), (emb.sin() * scale).to(self.dtype)
        self.cap = (rows, slots)

    def release(self):
        """Free the cache and the graphs (training can have the memory back)."""
        self.graphs, self.pool = {}, None
        for name in ("k", "v", "cos", "sin", *ROW_BUFFERS):
            self.__dict__.pop(name, None)
        self.wqkv, self.bqkv = [], []
        self.cap = (0, 0)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ the model
    def _fuse_qkv(self):
        """Concatenate each layer's q/k/v weights (and biases) into one matrix, so that a step
        runs one projection GEMM instead of three small ones (k/v have few columns). A copy
        (Qwen2.5-3B: 0.38 GB), refreshed at every generate() since training changes the
        weights between calls; ~0.2 ms of copying on an H100."""
        for i, layer in enumerate(self.layers):
            a = layer.self_attn
            ws = [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]
            bs = [a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]
            if len(self.wqkv) <= i:
                self.wqkv.append(torch.empty(sum(w.shape[0] for w in ws), ws[0].shape[1],
                                             dtype=ws[0].dtype, device=ws[0].device))
                self.bqkv.append(None if bs[0] is None else torch.empty(self.wqkv[i].shape[0],
                                                                         dtype=bs[0].dtype, device=bs[0].device))
            torch.cat(ws, out=self.wqkv[i])
            if bs[0] is not None:
                torch.cat(bs, out=self.bqkv[i])

    def _qkv(self, i, h, cos, sin):
        """Layer i: normed h [B, T, H] -> q [B, Hq, T, D], k/v [B, Hkv, T, D] with RoPE applied."""
        a = self.layers[i].self_attn
        qkv = F.linear(h, self.wqkv[i], self.bqkv[i])
        qkv = qkv.view(*h.shape[:2], self.n_heads + 2 * self.n_kv, self.head_dim)
        qn, kn = getattr(a, "q_norm", None), getattr(a, "k_norm", None)   # Qwen3
        if qn is None:
            return self.rope_heads(qkv, cos, sin, self.n_heads, self.n_kv, None, None, 0.0)
        return self.rope_heads(qkv, cos, sin, self.n_heads, self.n_kv, qn.weight, kn.weight,
                               qn.variance_epsilon)

    def _mlp_block(self, i, x, attn_out):
        """Layer i after attention: residual stream x [B, T, H], attention output [B, T, Hq*D]
        -> the new residual stream and its RMSNorm for what comes next (layer i+1's input
        norm, or the final norm)."""
        layer, nxt = self.layers[i], self.norms[i + 1]
        ln = layer.post_attention_layernorm
        x, h = self.add_norm(x, layer.self_attn.o_proj(attn_out), ln.weight, ln.variance_epsilon)
        m = layer.mlp
        y = m.down_proj(self.silu_mul(m.gate_proj(h), m.up_proj(h)))
        return self.add_norm(x, y, nxt.weight, nxt.variance_epsilon)

    def _first_norm(self, x):
        ln = self.norms[0]
        return rms_norm(x, ln.weight, ln.variance_epsilon)

    def _prefill(self, ids, mask, rows):
        """Run prompts ids [b, P] (left-padded) through the model, fill cache rows `rows`
        (a slice) at slots [0, P), and return last-position logits [b, V]."""
        b, P = ids.shape
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        cos, sin = self.cos[pos], self.sin[pos]                    # [b, P, D]
        causal = torch.ones(P, P, dtype=torch.bool, device=ids.device).tril()
        # a padded query attends to itself too, so no row of the softmax is empty (no NaN)
        allow = (causal & mask.bool()[:, None, None, :]) | torch.eye(P, dtype=torch.bool, device=ids.device)
        G = self.groups
        x = self.model.model.embed_tokens(ids)
        h = self._first_norm(x)
        for i in range(len(self.layers)):
            q, k, v = self._qkv(i, h, cos, sin)                      # q [b, Hq, P, D], k/v [b, Hkv, P, D]
            self.k[i][rows, :, :P] = k
            self.v[i][rows, :, :P] = v
            if self.attn == "bmm" and G > 1:   # no fused kernel for masked GQA: give SDPA every head
                o = F.scaled_dot_product_attention(q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1),
                                                   attn_mask=allow)
            else:
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=allow, enable_gqa=G > 1)
            x, h = self._mlp_block(i, x, o.transpose(1, 2).reshape(b, P, -1))
        return self.model.lm_head(h[:, -1])                        # [b, V], model dtype

    def _decode(self, B, L, mode):
        """One decode step for rows [0, B) reading slots [0, L): feeds self.tok at self.slot,
        samples the next token, records it at self.col, advances. Graph-capturable."""
        tok, pos, slot = self.tok[:B], self.pos[:B], self.slot
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # [B, 1, D]
        hide = None   # the fused kernel reads self.valid and the slot itself
        if self.attn != "triton":
            keys = self.valid[:B, :L] & (torch.arange(L, device=tok.device) <= slot)  # [B, L]
            # once for all layers: SDPA wants an additive mask (a boolean one is converted on
            # every call), the bmm path a boolean to fill with
            hide = ~keys[:, None, None, :]                             # [B, 1, 1, L]
            if self.attn == "sdpa":
                hide = torch.zeros(hide.shape, dtype=self.dtype, device=tok.device).masked_fill_(hide, float("-inf"))
        x = self.model.model.embed_tokens(tok[:, None])           # [B, 1, H]
        h = self._first_norm(x)
        for i in range(len(self.layers)):
            q, k, v = self._qkv(i, h, cos, sin)
            o = self._attend(i, q, k, v, L, hide)
            x, h = self._mlp_block(i, x, o.reshape(B, 1, self.n_heads * self.head_dim))
        logits = self.model.lm_head(h[:, 0])                       # [B, V], model dtype
        self._record(*sample(logits, self.temperature, mode[1], mode[2], mode[0], self.seed), B, mode)

    def _attend(self, i, q, k, v, L, hide):
        """Layer i's decode attention: writes this step's k, v [B, Hkv, 1, D] into the cache at
        self.slot and attends q [B, Hq, 1, D] to slots [0, L) (hide: SDPA's additive mask, or
        the bmm path's boolean one, [B, 1, 1, L]). Returns [B, Hq, ..., D]."""
        B, slot, G, D = q.shape[0], self.slot, self.groups, self.head_dim
        if self.attn == "triton":
            return attend_fused(q, k, v, self.k[i], self.v[i], self.valid, slot)
        self.k[i][:B].index_copy_(2, slot.view(1), k)
        self.v[i][:B].index_copy_(2, slot.view(1), v)
        K, V = self.k[i][:B, :, :L], self.v[i][:B, :, :L]           # [B, Hkv, L, D]
        if self.attn == "sdpa":
            return F.scaled_dot_product_attention(q, K, V, attn_mask=hide, enable_gqa=G > 1)
        # grouped-query attention as two batched matmuls that read K and V once:
        # q [B, Hkv, G, D] x K [B, Hkv, L, D]^T -> scores [B, Hkv, G, L], in the model's
        # dtype (softmax accumulates in fp32 inside): 3 passes over the scores, not 10
        s = torch.matmul(q.reshape(B, self.n_kv, G, D) * D ** -0.5, K.transpose(-1, -2))
        p = torch.softmax(s.masked_fill_(hide, float("-inf")), -1)
        return torch.matmul(p, V)                                   # [B, Hkv, G, D]

    def _record(self, new, logp, B, mode):
        """Write sampled tokens at self.col (pad once a row is done), count lengths, mark rows
        that just emitted EOS or a stop sequence as done, and advance."""
        done = self.done[:B]
        live = ~done
        new = torch.where(done, torch.full_like(new, self.pad_id), new)
        logp = torch.where(done, torch.zeros_like(logp), logp)
        self.out_tok[:B].index_copy_(1, self.col.view(1), new[:, None])
        self.out_logp[:B].index_copy_(1, self.col.view(1), logp[:, None])
        self.length[:B].add_(live.long())
        stop = ((new == self.eos_id) & self.eos_on) | (self.length[:B] >= self.limit[:B])
        for seq in (self._stop_tensor(s) for s in mode[3]):      # stop token sequences
            m = len(seq)
            cols = (self.col - torch.arange(m - 1, -1, -1, device=new.device)).clamp(min=0)
            hit = (self.out_tok[:B].index_select(1, cols) == seq).all(-1) & (self.col >= m - 1)
            stop = stop | hit
        done.copy_(done | (stop & live))
        self.tok[:B].copy_(new)
        self.pos[:B].add_(1)
        self.slot.add_(1)
        self.col.add_(1)

    def _stop_tensor(self, seq):
        # kept for the engine's life: a captured graph reads this memory on every replay
        if seq not in self.stop_tensors:
            self.stop_tensors[seq] = torch.tensor(seq, dtype=torch.long, device=self.device)
        return self.stop_tensors[seq]

    # ------------------------------------------------------------------ graphs
    def _step(self, B, L, mode):
        if not self.graphs_on:
            return self._decode(B, L, mode)
        key = (B, L, mode)
        g = self.graphs.get(key)
        if g is None:
            g = self._capture(B, L, mode)
            self.graphs[key] = g
        g.replay()

    def _capture(self, B, L, mode):
        """Warm up on a side stream (cuBLAS picks its kernels), then capture one step.
        Warm-up and capture advance slot/col/pos and write outputs, so save and restore them."""
        state = [self.slot, self.col] + [getattr(self, n) for n in ROW_BUFFERS]
        saved = [t.clone() for t in state]
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            self._decode(B, L, mode)
        torch.cuda.current_stream().wait_stream(s)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, pool=self.pool):
            self._decode(B, L, mode)
        for t, v in zip(state, saved):
            t.copy_(v)
        return g

    # ------------------------------------------------------------------ the loop
    def _bucket(self, n_slots):
        return min(self.cap[1], math.ceil(n_slots / self.block) * self.block)

    def _compact(self, B, rows, res, R):
        """Move live rows to the front; write finished rows' outputs out. Returns new B, rows."""
        done = self.done[:B]
        fin = done.nonzero().squeeze(-1)
        self._write_out(res, rows[fin], fin, R)
        live = (~done).nonzero().squeeze(-1)
        nb = B
        while nb // 2 >= max(len(live), self.min_batch) and nb > self.min_batch:
            nb //= 2
        # padding rows (already done) fill the batch up to nb; they cost but are masked
        fill = fin[:nb - len(live)]
        keep = torch.cat([live, fill])
        for buf in self.k + self.v:
            buf[:nb] = buf[keep]
        for name in ROW_BUFFERS:
            buf = getattr(self, name)
            buf[:nb] = buf[keep]
        return nb, rows[keep]

    @torch.no_grad()
    def generate(self, prompt_ids, prompt_mask, max_new, temperature=1.0, top_k=0, top_p=1.0,
                 force_len=0, stop_seqs=(), prefill_rows=64, lengths=None):
        """Sample (temperature > 0) or greedy-decode max_new tokens after left-padded prompts.

        prompt_ids, prompt_mask: [N, P]. stop_seqs: token-id lists that end a row (like EOS).
        force_len > 0: ignore EOS and stop sequences (benchmarks). lengths [N]: ignore them too
        and end row i after lengths[i] tokens (benchmarks of varied lengths). Returns Output.
        """
        N, P = prompt_ids.shape
        R = max_new
        self._allocate(max(N, self.min_batch), P + R)
        self._fuse_qkv()
        dev = self.device
        force_len = force_len or lengths is not None
        stops = () if force_len else tuple(tuple(int(t) for t in s) for s in stop_seqs)
        greedy = temperature <= 0
        mode = (greedy, 0 if greedy else int(top_k), 1.0 if greedy else float(top_p), stops)
        self.temperature.fill_(max(temperature, 1e-6))
        self.seed.fill_(int(torch.randint(2 ** 31 - 1, ())))  # from torch's generator: manual_seed repeats a run
        self.eos_on.fill_(not force_len)
        B = N if N >= self.min_batch else self.min_batch               # tiny batches: pad rows
        ids = prompt_ids.to(dev)
        mask = prompt_mask.to(dev)
        if B > N:
            ids = torch.cat([ids, ids[:1].expand(B - N, P)])
            mask = torch.cat([mask, mask[:1].expand(B - N, P)])
        self.valid[:B].zero_()
        self.valid[:B, :P] = mask.bool()
        self.valid[:B, P:] = True
        self.done[:B] = False
        self.done[N:B] = True                                          # padding rows
        self.length[:B] = 0
        self.limit[:B] = R
        if lengths is not None:
            self.limit[:N] = lengths.to(dev).clamp(1, R)
        self.pos[:B] = mask.long().sum(-1) - 1    # _record advances it to token 0's position
        self.slot.fill_(P - 1)                    # ... and this to token 0's cache slot
        self.col.fill_(0)
        toks, lps = [], []
        for i in range(0, B, prefill_rows):       # prefill in chunks of rows; sample token 0
            r = slice(i, min(B, i + prefill_rows))
            tok, lp = sample(self._prefill(ids[r], mask[r], r), self.temperature, mode[1], mode[2], greedy, self.seed)
            toks.append(tok)
            lps.append(lp)
        self._record(torch.cat(toks), torch.cat(lps), B, mode)
        return self._loop(N, B, P, R, mode)

    def _write_out(self, res, dst, src, R):
        res["tok"][dst] = self.out_tok[src, :R]
        res["logp"][dst] = self.out_logp[src, :R]
        res["len"][dst] = self.length[src]

    def _loop(self, N, B, P, R, mode):
        dev = self.device
        res = {"tok": torch.full((N + B, R), self.pad_id, dtype=torch.long, device=dev),
               "logp": torch.zeros(N + B, R, device=dev),
               "len": torch.zeros(N + B, dtype=torch.long, device=dev)}
        rows = torch.arange(B, device=dev)
        steps = 1
        for i in range(1, R):
            if i % self.check_every == 0:
                n_live = int((~self.done[:B]).sum())
                if n_live == 0:
                    break
                if n_live <= B // 2 and B > self.min_batch:
                    B, rows = self._compact(B, rows, res, R)
            self._step(B, self._bucket(P + i + 1), mode)
            steps += 1
        self._write_out(res, rows, torch.arange(B, device=dev), R)
        mask = (torch.arange(R, device=dev)[None] < res["len"][:N, None]).float()
        return Output(tokens=res["tok"][:N], mask=mask, logp=res["logp"][:N] * mask, steps=steps)


class VLLMEngine:
    """`--engine vllm`: a vLLM engine on the training GPU, fed the training weights before
    every generate call. Written against vLLM 0.11 (V1 engine kept in-process, so that its
    model object can be reached; under torchrun the `external_launcher` executor runs one
    engine per rank). NOT run in this repository's tests or GPU measurements: no vLLM there.

    Memory: vLLM takes `--vllm-mem` of the GPU for its weights and KV cache while it
    generates and is put to sleep (KV cache dropped, weights offloaded) while PPO trains.
    """

    def __init__(self, model, tokenizer, args):
        import os
        import tempfile
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM
        self.model, self.tokenizer = model, tokenizer
        folder = tempfile.mkdtemp(prefix="vllm_init_")       # vLLM starts from a folder
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        ddp = int(os.environ.get("WORLD_SIZE", 1)) > 1
        self.llm = LLM(model=folder, dtype=str(next(model.parameters()).dtype).split(".")[-1],
                       gpu_memory_utilization=args.vllm_mem, enable_sleep_mode=True,
                       max_model_len=args.max_prompt_len + args.max_response_len, seed=args.seed,
                       enable_prefix_caching=False,
                       distributed_executor_backend="external_launcher" if ddp else None)
        self.sleeping = False

    def _push_weights(self):
        """The training model's tensors into vLLM (its loader maps HF names, fuses q/k/v)."""
        weights = [(n, p.detach()) for n, p in self.model.state_dict().items()]
        try:
            runner = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner
            runner.model.load_weights(weights)
        except AttributeError:   # other layouts: ask every worker through the public RPC
            self.llm.collective_rpc(lambda w: w.model_runner.model.load_weights(weights))
        self.llm.reset_prefix_cache()

    @torch.no_grad()
    def generate(self, prompt_ids, prompt_mask, max_new, temperature=1.0, top_k=0, top_p=1.0,
                 force_len=0, stop_seqs=()):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        if self.sleeping:
            self.llm.wake_up()
        self._push_weights()
        prompts = [TokensPrompt(prompt_token_ids=ids[m.bool()].tolist())
                   for ids, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]
        sp = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k if top_k > 0 else -1,
                            max_tokens=max_new, min_tokens=force_len, ignore_eos=bool(force_len),
                            logprobs=0, stop=[self.tokenizer.decode(s) for s in stop_seqs] or None,
                            include_stop_str_in_output=True, detokenize=bool(stop_seqs))
        outs = self.llm.generate(prompts, sp, use_tqdm=False)
        self.llm.sleep(level=1)
        self.sleeping = True
        N, pad = len(outs), self.tokenizer.pad_token_id
        tokens = torch.full((N, max_new), pad, dtype=torch.long)
        logp = torch.zeros(N, max_new)
        for i, o in enumerate(outs):
            c = o.outputs[0]
            ids = list(c.token_ids)[:max_new]
            tokens[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            logp[i, :len(ids)] = torch.tensor([lp[t].logprob for t, lp in zip(ids, c.logprobs)])
        lengths = torch.tensor([min(len(o.outputs[0].token_ids), max_new) for o in outs])
        mask = (torch.arange(max_new)[None] < lengths[:, None]).float()
        dev = prompt_ids.device
        return Output(tokens=tokens.to(dev), mask=mask.to(dev), logp=(logp * mask).to(dev), steps=max_new)

    def release(self):
        pass


# ---------------------------------------------------------------------------------
# the command line: a generation smoke test

SETTINGS = [
    # (flag, default, type, help)
    ("model", "tiny", str, "model to sample from: alias, hub id, local folder, tiny or random:<arch>"),
    ("prompt", None, str, "text to continue (None: a Countdown prompt)"),
    ("n", 4, int, "samples of the prompt, generated as one batch"),
    ("max_new", 64, int, "new tokens per sample at most"),
    ("temperature", 1.0, float, "sampling temperature (0: greedy)"),
    ("check", False, bool, "also decode greedily with transformers generate and say whether the tokens agree"),
    ("device", None, str, "cuda | cpu (default: cuda if available)"),
    ("seed", 0, int, "random seed"),
]


def main(argv=None):
    import argparse
    import time
    import common
    import countdown
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = common.add_settings(ap, SETTINGS).parse_args(argv)
    if common.model_name_problem(a.model) or min(a.n, a.max_new) < 1:
        ap.error(f"--model: {common.model_name_problem(a.model)}" if common.model_name_problem(a.model)
                 else "--n and --max-new must be >= 1")
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok, model = common.load_tokenizer(a.model), common.load_model(a.model, device=device).eval()
    try:
        eng = Engine(model, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    except Unsupported as e:
        common.die(f"--model {a.model}: engine.py does not run it ({e})")
    prompt = a.prompt if a.prompt is not None else countdown.make_prompt([19, 36, 55, 7], 65)
    enc = tok([prompt] * a.n, return_tensors="pt", add_special_tokens=False).to(device)
    torch.manual_seed(a.seed)
    t = time.perf_counter()
    out = eng.generate(enc.input_ids, enc.attention_mask, a.max_new, temperature=a.temperature)
    dt = time.perf_counter() - t            # includes a GPU's graph capture and compilation
    lengths = out.mask.sum(1).long().tolist()
    for i, n in enumerate(lengths):
        print(f"--- sample {i} ({n} tokens)\n{tok.decode(out.tokens[i, :n], skip_special_tokens=True)}")
    print(f"{sum(lengths)} tokens in {dt:.2f}s ({sum(lengths) / dt:,.0f} tok/s, first call) on {device}")
    if a.check:
        ids, mask = enc.input_ids[:1], enc.attention_mask[:1]
        got = eng.generate(ids, mask, a.max_new, temperature=0)
        want = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=a.max_new,
                              pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[0, ids.shape[1]:].tolist()
        mine = got.tokens[0, :int(got.mask[0].sum())].tolist()
        print(f"greedy tokens equal transformers': {mine == want} ({len(mine)} tokens)")
        return 0 if mine == want else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
