"""The decode step's projections at Qwen2.5-3B shape (M = 512 rows), each as cuBLAS picks it
for three layouts of the same product, and as Inductor's autotuned Triton GEMM: which layout
makes the down projection (K = 11008, N = 2048) run near the matmul ceiling?

    python experiments/gemm_micro.py
"""
import time

import torch
import torch.nn.functional as F

from gen_micro import graph_ms, LAYERS

dev, bf = "cuda", torch.bfloat16
SHAPES = {"down": (11008, 2048), "o": (2048, 2048), "qkv": (2048, 2560), "gate": (2048, 11008)}


def main():
    torch.manual_seed(0)
    for M in (512, 1024, 64):
        for name, (K, N) in SHAPES.items():
            W = [torch.randn(N, K, device=dev, dtype=bf) * 0.02 for _ in range(LAYERS)]   # nn.Linear's [out, in]
            Wt = [w.t().contiguous() for w in W]                                            # [in, out]
            x = torch.randn(M, K, device=dev, dtype=bf)
            flop = 2 * M * K * N * LAYERS
            res = {"linear": graph_ms(lambda: [F.linear(x, w) for w in W]),
                   "x @ Wt (pre-transposed)": graph_ms(lambda: [x @ w for w in Wt]),
                   "(W @ x^T)^T": graph_ms(lambda: [(w @ x.t()).t() for w in W])}
            if M == 512 and name in ("down", "o"):
                t = time.time()
                f = torch.compile(lambda a, b: F.linear(a, b), mode="max-autotune-no-cudagraphs", dynamic=False)
                f(x, W[0])
                res[f"inductor max-autotune ({time.time() - t:.0f}s to tune)"] = graph_ms(lambda: [f(x, w) for w in W])
            for k, ms in res.items():
                print(f"M{M} {name:5s} {k:40s} {ms / LAYERS * 1e3:7.1f} us  {flop / ms / 1e9:6.0f} TFLOP/s", flush=True)


if __name__ == "__main__":
    import argparse
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip()).parse_args()
    main()
