"""The built-in engine against transformers: same greedy tokens, same log-probs, and
samples that follow the softmax (chi-square). CPU, tiny model with random weights scaled
up so that its outputs vary from token to token (a fresh init repeats one token)."""
import math
import random

import pytest
import torch

import common
import countdown
import sampler
from engine import Engine, sample


@pytest.fixture(scope="module")
def tok():
    return common.load_tokenizer("tiny")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = common.load_model("random:tiny").eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    return m


def prompts(tok, n, seed=0):
    rng = random.Random(seed)
    texts = [countdown.make_prompt([rng.randint(1, 99) for _ in range(rng.choice([3, 4]))],
                                   rng.randint(10, 99), "base") for _ in range(n)]
    return sampler.encode_prompts(tok, texts, 512)


def hf_greedy(model, ids, mask, n, eos, pad=2):
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                         eos_token_id=eos, pad_token_id=pad)
    return out[:, ids.shape[1]:]


def needs_triton_interpreter():
    """Skip unless Triton runs here through its CPU interpreter (GPU images ship Triton;
    locally: pip install triton, TRITON_INTERPRET=1). CI's CPU build of PyTorch has none."""
    import os
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("set TRITON_INTERPRET=1 (and install triton) to run the GPU kernels on CPU")
    pytest.importorskip("triton")


@pytest.mark.parametrize("attn", ["bmm", "sdpa", "triton"])
def test_greedy_equals_transformers_on_64_prompts(model, tok, attn):
    if attn == "triton":
        needs_triton_interpreter()
    ids, mask = prompts(tok, 64)
    want = hf_greedy(model, ids, mask, 40, eos=tok.eos_token_id)   # rows that write EOS stop there
    eng = Engine(model, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, attn=attn)
    out = eng.generate(ids, mask, 40, temperature=0)
    assert out.tokens.shape == (64, 40)
    assert len(set(want[:, 10].tolist())) > 5           # the model does not just repeat itself
    assert torch.equal(out.tokens, want)
    assert torch.equal(out.mask, sampler.response_mask(want, tok.eos_token_id, tok.pad_token_id))
    assert out.mask.sum() > 64 * 30                      # most rows run the full 40 tokens


def test_stops_per_row_and_compacts(model, tok):
    """A common token as 'EOS': rows stop at different steps, the batch is compacted every 4
    steps, and every row still matches transformers up to and including its EOS."""
    ids, mask = prompts(tok, 64, seed=1)
    free = hf_greedy(model, ids, mask, 40, eos=None)
    eos = int(torch.mode(free[:, 5:].flatten()).values)   # frequent enough to stop many rows
    want = hf_greedy(model, ids, mask, 40, eos=eos)
    eng = Engine(model, eos_id=eos, pad_id=tok.pad_token_id, check_every=4)
    out = eng.generate(ids, mask, 40, temperature=0)
    lengths = out.mask.sum(1).long()
    assert 0 < (lengths < 40).sum() < 64                   # some rows stopped early, some not
    for i in range(64):
        n = int(lengths[i])
        assert torch.equal(out.tokens[i, :n], want[i, :n])
        assert n == 40 or out.tokens[i, n - 1] == eos
        assert (out.tokens[i, n:] == tok.pad_token_id).all()
    assert out.steps < 40 or (lengths == 40).any()


def test_stop_sequence_ends_a_row(model, tok):
    ids, mask = prompts(tok, 16, seed=2)
    free = Engine(model, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id).generate(ids, mask, 30, temperature=0)
    stop = free.tokens[0, 6:8].tolist()                    # a 2-token sequence row 0 emits
    out = Engine(model, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id).generate(
        ids, mask, 30, temperature=0, stop_seqs=[stop])
    n = int(out.mask[0].sum())
    assert n <= 8 and out.tokens[0, n - 2:n].tolist() == stop
    assert torch.equal(out.tokens[0, :n], free.tokens[0, :n])


def test_logprobs_match_training_forward(model, tok):
    ids, mask = prompts(tok, 32, seed=3)
    torch.manual_seed(0)
    out = Engine(model, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id).generate(ids, mask, 24, temperature=1.0)
    seq = torch.cat([ids, out.tokens], 1)
    attn = torch.cat([mask, out.mask.long()], 1)
    with torch.no_grad():
        lp = sampler.token_logprobs(model, seq, attn, 24, 8)
    diff = ((lp - out.logp).abs() * out.mask).sum() / out.mask.sum()
    assert diff < 1e-4                                      # fp32: rounding only
    assert (out.logp[out.mask > 0] < 0).all()


def chi_square_z(observed, expected, min_count=5.0):
    """Wilson-Hilferty normal score of Pearson's chi-square (bins with expected < min_count
    merged into one); z > 3.1 is p < 0.001."""
    big = expected >= min_count
    obs = torch.cat([observed[big], observed[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    chi2 = float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum())
    k = int(keep.sum()) - 1
    return ((chi2 / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))


def test_samples_follow_the_softmax(model, tok):
    """Token 0 comes from the prefill path, token 1 from the decode path: both must be
    distributed as the model's softmax (at temperature 0.7, to check the scaling too)."""
    n, T = 4000, 0.7
    enc = tok(["Using the numbers 3 7 12, create"], return_tensors="pt")   # short: cheap forwards
    ids, mask = enc.input_ids.expand(n, -1).contiguous(), enc.attention_mask.expand(n, -1).contiguous()
    torch.manual_seed(123)
    out = Engine(model, eos_id=-1, pad_id=tok.pad_token_id).generate(ids, mask, 2, temperature=T)
    V = model.config.vocab_size
    with torch.no_grad():
        p0 = torch.softmax(model(input_ids=ids[:1], attention_mask=mask[:1]).logits[0, -1] / T, -1)
        seq = torch.cat([ids, out.tokens[:, :1]], 1)
        logits = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[:, -1] / T
        p1 = torch.softmax(logits, -1).sum(0)               # expected counts, row by row
    assert p0.max() > 0.02                                  # a peaked, not a flat, distribution
    for obs_tokens, expected in ((out.tokens[:, 0], p0 * n), (out.tokens[:, 1], p1)):
        observed = torch.bincount(obs_tokens, minlength=V).float()
        assert chi_square_z(observed, expected) < 3.1
    # and the test can fail: the same counts against a different temperature's softmax
    wrong = torch.softmax(T * torch.log(p0), -1) * n
    assert chi_square_z(torch.bincount(out.tokens[:, 0], minlength=V).float(), wrong) > 3.1


def test_top_k_and_top_p_truncate():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(4000, -1)
    t = torch.tensor(1.0)
    tok, lp = sample(logits, t, 2, 1.0, False)
    assert set(tok.tolist()) == {0, 1}
    assert torch.allclose(lp[tok == 0], torch.log(torch.tensor(0.5 / 0.8)))
    tok, _ = sample(logits, t, 0, 0.7, False)               # 0.5 + 0.3 reach 0.7
    assert set(tok.tolist()) == {0, 1}
    tok, _ = sample(logits, t, 0, 0.5, False)               # 0.5 alone reaches 0.5
    assert set(tok.tolist()) == {0}
    tok, lp = sample(logits, t, 0, 1.0, True)
    assert (tok == 0).all() and torch.allclose(lp, torch.log(torch.tensor(0.5)))


def test_weights_are_shared_with_training(model, tok):
    """An in-place update of the training weights is seen by the next generate call."""
    import copy
    m = copy.deepcopy(model)
    eng = Engine(m, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    ids, mask = prompts(tok, 8, seed=5)
    a = eng.generate(ids, mask, 12, temperature=0).tokens
    with torch.no_grad():
        m.lm_head.weight.mul_(-1)                            # lm_head is tied to the embedding
    b = eng.generate(ids, mask, 12, temperature=0).tokens
    assert not torch.equal(a, b)
    assert torch.equal(b, hf_greedy(m, ids, mask, 12, eos=None))


def test_fused_sampler_in_triton_interpreter(monkeypatch):
    """The GPU's fused sampling kernel, run by Triton's CPU interpreter where Triton is
    installed (GPU images; locally: pip install triton, TRITON_INTERPRET=1): samples follow
    softmax(z / T) (chi-square), log-probs are log_softmax's, greedy is argmax (first of ties),
    and the seed advances."""
    needs_triton_interpreter()
    from engine import sample_fused
    g = torch.Generator().manual_seed(0)
    V, n, t = 40, 800, torch.tensor(0.7)
    row = torch.randn(V, generator=g)
    logits = row.to(torch.bfloat16).expand(n, V).contiguous()
    seed = torch.tensor(123)
    tok, lp = sample_fused(logits, t, False, seed, block=16)     # 3 blocks, the last one partial
    assert int(seed) == 124
    z = logits[0].float() / t
    expected = torch.softmax(z, -1) * n
    assert chi_square_z(torch.bincount(tok, minlength=V).float(), expected) < 3.1
    assert torch.allclose(lp, torch.log_softmax(z, -1)[tok], atol=1e-5)
    tok2, _ = sample_fused(logits, t, False, seed, block=16)
    assert (tok2 != tok).any()                                  # a new seed, new draws
    tied = torch.zeros(4, V)
    tied[:, [7, 30]] = 5.0                                     # a tie: the lower index wins
    tok, lp = sample_fused(tied, t, True, seed, block=16)
    assert tok.tolist() == [7] * 4
    assert torch.allclose(lp, torch.log_softmax(tied[0], -1)[7].expand(4), atol=1e-5)


def test_fused_attention_in_triton_interpreter():
    """The decode step's attention kernel: writes this step's k and v at the slot (and nothing
    else), and equals SDPA over the usable slots up to the slot, with grouped heads, k and v
    of different layouts (as _qkv makes them), a head count that is not a power of two, and
    the first slot (nothing before it)."""
    needs_triton_interpreter()
    from engine import attend_fused
    torch.manual_seed(0)
    for B, Hq, Hkv, D, slots, slot in [(3, 8, 2, 16, 40, 33), (2, 6, 2, 32, 20, 5), (2, 4, 4, 16, 70, 0)]:
        q = torch.randn(B, Hq, 1, D)
        k = torch.randn(B, Hkv, 1, D)
        v = torch.randn(B, 1, Hkv + 3, D)[:, :, 1:Hkv + 1].transpose(1, 2)   # strided like _qkv's v
        K, V = torch.randn(B + 1, Hkv, slots, D), torch.randn(B + 1, Hkv, slots, D)
        ok = torch.rand(B + 1, slots) > 0.3
        want_K, want_V = K.clone(), V.clone()
        want_K[:B, :, slot], want_V[:B, :, slot] = k[:, :, 0], v[:, :, 0]
        o = attend_fused(q, k, v, K, V, ok, torch.tensor(slot), block=16)
        assert torch.equal(K, want_K) and torch.equal(V, want_V)
        keys = ok[:B].clone()
        keys[:, slot], keys[:, slot + 1:] = True, False
        G = Hq // Hkv
        want = torch.nn.functional.scaled_dot_product_attention(
            q, want_K[:B].repeat_interleave(G, 1), want_V[:B].repeat_interleave(G, 1), attn_mask=keys[:, None, None])
        assert o.shape == (B, Hq, D)
        assert torch.allclose(o, want[:, :, 0], atol=1e-5), (o - want[:, :, 0]).abs().max()


def test_qwen3_norms_and_compiled_pieces_match_transformers(tok):
    """A Qwen3-shaped decoder (per-head q/k RMSNorm before RoPE): greedy tokens equal
    transformers', eager and with the fused pieces traced by torch.compile (fullgraph, dynamic
    shapes; the GPU default compiles them with inductor)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      max_position_embeddings=1024)
    m = Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    ids, mask = prompts(tok, 16)
    want = hf_greedy(m, ids, mask, 20, eos=None)
    assert len(set(want[:, 5].tolist())) > 3
    for comp in (False, "aot_eager"):
        eng = Engine(m, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, compile=comp)
        assert torch.equal(eng.generate(ids, mask, 20, temperature=0).tokens, want), comp
        # another batch size: the compiled pieces recompile with a symbolic batch dimension
        assert torch.equal(eng.generate(ids[:8], mask[:8], 20, temperature=0).tokens, want[:8]), comp


def test_command_line_smoke_run():
    import subprocess
    import sys
    from conftest import REPO
    r = subprocess.run([sys.executable, "engine.py", "--model", "tiny", "--device", "cpu", "--n", "2",
                        "--max-new", "8", "--check"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("--- sample ") == 2 and "greedy tokens equal transformers': True" in r.stdout


def test_decode_attention_avoids_the_math_fallback(monkeypatch):
    """With Triton, GPUs decode with the fused kernel (fp16/bf16, a head_dim tl.dot takes).
    Without it: masked grouped-query SDPA has a fused kernel only in cuDNN on Hopper+ while it
    is on (and only in fp16/bf16); elsewhere it falls back to the unfused math kernel
    (pytorch#181528), so the engine decodes with its two batched matmuls there. Without
    groups, or on the CPU, SDPA stays."""
    import engine
    from engine import decode_attention
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    monkeypatch.setattr(engine, "triton", object())
    was = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        got = [decode_attention(gpu, g, dt, d) for g, dt, d in
               [(True, torch.bfloat16, 128), (False, torch.float16, 64), (True, torch.bfloat16, 96),
                (True, torch.bfloat16, 8), (True, torch.float32, 128)]]
        assert got == ["triton", "triton", "sdpa", "sdpa", "bmm"]
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)
    monkeypatch.setattr(engine, "triton", None)
    was = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        for cap, cudnn, grouped, want in [((9, 0), True, True, "sdpa"), ((9, 0), False, True, "bmm"),
                                          ((8, 0), True, True, "bmm"), ((10, 0), True, True, "sdpa"),
                                          ((8, 0), False, False, "sdpa")]:
            monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=cap: c)
            torch.backends.cuda.enable_cudnn_sdp(cudnn)
            assert decode_attention(gpu, grouped) == want, (cap, cudnn, grouped)
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:                                          # cuDNN attention takes fp16/bf16 only
        assert [decode_attention(gpu, True, dt) for dt in (torch.float16, torch.float32)] == ["sdpa", "bmm"]
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)
    assert decode_attention(torch.device("cpu"), True) == "sdpa"
