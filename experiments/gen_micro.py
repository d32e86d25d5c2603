"""Micro-timings of the decode step's pieces at Qwen2.5-3B shape (one GPU), to choose what to
change in engine.py: gate and up projections apart or fused, whether a half-batch's attention
overlaps the other half's MLP on a second stream, the decode attention variants (cuDNN's
SDPA, two batched matmuls, engine.attend_fused in several configurations) and the sampler.
Times are CUDA-graph replays of 36 copies (one per layer), in ms per step. The log of the run
behind the README's figures: docs/bench/h100_gen_micro_s13.log.

    python experiments/gen_micro.py
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import engine  # noqa: E402

H, I, NQ, NKV, D, LAYERS, VOCAB = 2048, 11008, 16, 2, 128, 36, 151936
dev, bf = "cuda", torch.bfloat16


def graph_ms(fn, reps=20):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        g.replay()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps


def weights():
    r = lambda *s: torch.randn(*s, device=dev, dtype=bf) * 0.02
    return [dict(gate=r(I, H), up=r(I, H), gu=r(2 * I, H), down=r(H, I)) for _ in range(LAYERS)]


def mlp_apart(W, x):
    for w in W:
        y = F.linear(F.silu(F.linear(x, w["gate"])) * F.linear(x, w["up"]), w["down"])
    return y


def mlp_fused(W, x):
    for w in W:
        gu = F.linear(x, w["gu"])
        y = F.linear(F.silu(gu[:, :I]) * gu[:, I:], w["down"])
    return y


def attention(K, V, q, bias):
    for k, v in zip(K, V):
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)
    return o


def main():
    torch.manual_seed(0)
    out = {}
    W = weights()
    for B in (512, 256):
        x = torch.randn(B, H, device=dev, dtype=bf)
        out[f"mlp apart B{B}"] = graph_ms(lambda: mlp_apart(W, x))
        out[f"mlp fused B{B}"] = graph_ms(lambda: mlp_fused(W, x))
        out[f"gate only B{B}"] = graph_ms(lambda: [F.linear(x, w["gate"]) for w in W])
        out[f"gate_up B{B}"] = graph_ms(lambda: [F.linear(x, w["gu"]) for w in W])
        L = 384
        K = [torch.randn(B, NKV, L, D, device=dev, dtype=bf) for _ in range(LAYERS)]
        V = [torch.randn(B, NKV, L, D, device=dev, dtype=bf) for _ in range(LAYERS)]
        q = torch.randn(B, NQ, 1, D, device=dev, dtype=bf)
        bias = torch.zeros(B, 1, 1, L, device=dev, dtype=bf)
        out[f"attention B{B} L{L}"] = graph_ms(lambda: attention(K, V, q, bias))
    # overlap: half A's MLP on the current stream, half B's attention on a side stream
    B2 = 256
    xa = torch.randn(B2, H, device=dev, dtype=bf)
    K = [torch.randn(B2, NKV, 384, D, device=dev, dtype=bf) for _ in range(LAYERS)]
    V = [torch.randn(B2, NKV, 384, D, device=dev, dtype=bf) for _ in range(LAYERS)]
    q = torch.randn(B2, NQ, 1, D, device=dev, dtype=bf)
    bias = torch.zeros(B2, 1, 1, 384, device=dev, dtype=bf)
    side = torch.cuda.Stream()

    def both_serial():
        mlp_fused(W, xa)
        attention(K, V, q, bias)

    def both_overlap():
        main_s = torch.cuda.current_stream()
        side.wait_stream(main_s)
        for w, k, v in zip(W, K, V):
            gu = F.linear(xa, w["gu"])
            F.linear(F.silu(gu[:, :I]) * gu[:, I:], w["down"])
            with torch.cuda.stream(side):
                F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)
        main_s.wait_stream(side)

    out["half mlp + half attention, serial"] = graph_ms(both_serial)
    out["half mlp || half attention, 2 streams"] = graph_ms(both_overlap)
    # decode attention, every variant writing this step's k and v into the cache first
    for B, slot in ((512, 383), (512, 600), (1024, 383), (64, 383)):
        slots = 640
        K = [torch.randn(B, NKV, slots, D, device=dev, dtype=bf) for _ in range(LAYERS)]
        V = [torch.randn(B, NKV, slots, D, device=dev, dtype=bf) for _ in range(LAYERS)]
        q = torch.randn(B, NQ, 1, D, device=dev, dtype=bf)
        kn, vn = torch.randn(B, NKV, 1, D, device=dev, dtype=bf), torch.randn(B, NKV, 1, D, device=dev, dtype=bf)
        ok = torch.ones(B, slots, dtype=torch.bool, device=dev)
        st = torch.tensor(slot, device=dev)
        L = (slot + 1 + 63) // 64 * 64
        bias = torch.zeros(B, 1, 1, L, device=dev, dtype=bf)
        hide = torch.zeros(B, 1, 1, L, dtype=torch.bool, device=dev)

        def sdpa():
            for k, v in zip(K, V):
                k.index_copy_(2, st.view(1), kn)
                v.index_copy_(2, st.view(1), vn)
                F.scaled_dot_product_attention(q, k[:, :, :L], v[:, :, :L], attn_mask=bias, enable_gqa=True)

        def bmm():
            for k, v in zip(K, V):
                k.index_copy_(2, st.view(1), kn)
                v.index_copy_(2, st.view(1), vn)
                sc = torch.matmul(q.reshape(B, NKV, NQ // NKV, D) * D ** -0.5, k[:, :, :L].transpose(-1, -2))
                torch.matmul(torch.softmax(sc.masked_fill_(hide, float("-inf")), -1), v[:, :, :L])

        gb = 2 * LAYERS * B * NKV * (slot + 1) * D * 2 / 1e9
        out[f"attn sdpa B{B} slot{slot} ({gb:.2f} GB K+V)"] = graph_ms(sdpa)
        out[f"attn bmm B{B} slot{slot}"] = graph_ms(bmm)
        for blk, w, st_ in ((64, 4, 2), (64, 4, 3), (32, 4, 2), (128, 4, 2), (128, 8, 2), (64, 2, 2), (64, 8, 3)):
            out[f"attn triton B{B} slot{slot} block{blk} warps{w} stages{st_}"] = graph_ms(
                lambda: [engine.attend_fused(q, kn, vn, k, v, ok, st, blk, w, st_) for k, v in zip(K, V)])
    # the sampler
    logits = torch.randn(512, VOCAB, device=dev, dtype=bf)
    temp = torch.ones((), device=dev)
    seed = torch.zeros((), dtype=torch.long, device=dev)
    out["sampler (engine)"] = graph_ms(lambda: engine.sample_fused(logits, temp, False, seed))
    out["sampler greedy (engine)"] = graph_ms(lambda: engine.sample_fused(logits, temp, True, seed))
    for k, v in out.items():
        print(f"{k:45s} {v:8.3f} ms")


if __name__ == "__main__":
    import argparse
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip()).parse_args()
    main()
