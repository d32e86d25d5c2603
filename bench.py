"""
Speed and memory of the pieces PPO spends its time in, measured in one run so that every
figure is a ratio against ceilings taken on the same machine (README, "Speed").

    python bench.py                                   # GPU: Qwen2.5-3B shape, random weights
    python bench.py --parts ppo                       # only the PPO step (study shape)
    python bench.py --parts ppo --ngpu 1,2,4          # the same step at 1, 2 and 4 GPUs: scaling table
    python bench.py --parts ppo --ngpu 1,1:study      # forced lengths against the study's lengths
    python bench.py --model tiny --device cpu         # CPU smoke run (CI), seconds

Parts (--parts, comma-separated):
  ceilings    device-to-device copy bandwidth (bytes read + written) and the bf16 matmul rate
  generate    tokens/s of the built-in engine and of transformers `generate` at several batch
              sizes, forced lengths, against the floor: per decode step max(bytes / bandwidth,
              FLOPs / matmul rate) with bytes = 2N + live KV cache, FLOPs = 2N per sequence
  correct     engine vs transformers: greedy tokens on 64 prompts, and the engine's sampled
              log-probs vs the training forward's (mean absolute difference)
  train       forward+backward tokens/s and MFU (6N FLOPs per token) of the actor's loss, with
              and without gradient checkpointing, PPO's loss, compiled layers, a no-grad pass
              (--train-configs); the optimizer step (fp32 master on GPU / CPU)
  profile     kernel times of a few eager decode steps at 512 sequences (where the step goes)
  ppo         one PPO step of the study's shape (ppo.py): each phase's time, the peak GPU and
              host memory, tokens/s, padding waste. --ngpu 1,2,4 runs it at each world size
              (torchrun, FSDP2, when > 1) and prints a scaling table; an item N:study or
              N:forced sets that run's lengths. --lengths forced: every response --ppo-len
              tokens; study: lengths drawn from the study's (sampler.STUDY_LENGTHS, mean 331 of
              a --ppo-study-len cap of 1,024). --concurrent: runs share the machine, each on its
              own GPUs and their share of the CPU cores, starting in order as GPUs free up.
The table is printed last; every figure goes to --out (JSON).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

import common

SETTINGS = [
    # (flag, default, type, help)
    ("model", "random:qwen2.5-3b", str, "architecture: random:<arch> (no weights needed), tiny, or a folder"),
    ("device", None, str, "cuda | cpu (default: cuda if available)"),
    ("parts", "ceilings,generate,correct,train", str, "what to measure (see above); 'all' adds ppo"),
    ("batch_sizes", "64,256,512,1024", str, "generation batch sizes (1024: a PPO step of the study in one batch)"),
    ("hf_batch_sizes", "64,512", str, "batch sizes at which transformers generate is timed too"),
    ("engine_variants", "triton,sdpa,bmm", str, "engine variants timed side by side: decode attention "
     "(Engine attn=: triton | sdpa | bmm), ':eager' without the compiled elementwise pieces (Engine compile=False)"),
    ("prompt_len", 128, int, "prompt tokens per sequence in the generation benchmark"),
    ("new_tokens", 512, int, "forced response tokens in the generation benchmark"),
    ("train_configs", "ckpt:8,ckpt:16,nockpt:4,nockpt:8", str, "train part: kind:micro-batch[+option...] items (bench_train: kinds ckpt, "
     "nockpt, fwd; options ppo, compile, cudnn, profile)"),
    ("train_seq", 640, int, "train part: tokens per sequence (prompt + response)"),
    ("ppo_prompts", 256, int, "ppo part: prompts per step"),
    ("ppo_samples", 4, int, "ppo part: samples per prompt"),
    ("ppo_len", 512, int, "ppo part: forced response tokens"),
    ("ppo_steps", 2, int, "ppo part: steps run (the last one is reported: the first captures graphs)"),
    ("ppo_args", "", str, "ppo part: extra ppo.py flags, e.g. '--micro-batch 8 --no-grad-ckpt'"),
    ("ngpu", "1", str, "ppo part: world sizes, comma-separated (torchrun when > 1); N:study / N:forced "
                       "sets that run's lengths"),
    ("lengths", "forced", str, "ppo part: response lengths of runs without their own: forced (--ppo-len "
                               "each) | study (drawn: sampler.STUDY_LENGTHS up to --ppo-study-len)"),
    ("ppo_study_len", 1024, int, "ppo part: the length cap of --lengths study (the study's 1,024)"),
    ("concurrent", False, bool, "ppo part: runs share the machine (own GPUs and cores each) instead of "
                                "one after another"),
    ("out", "out/bench/bench.json", str, "where the full figures go"),
]


# on a CPU (a smoke run: under a minute), settings left at their GPU defaults take these
CPU_SIZES = dict(batch_sizes="4,8", hf_batch_sizes="8", prompt_len=16, new_tokens=12, engine_variants="sdpa,bmm",
                 train_configs="nockpt:2", train_seq=32, ppo_prompts=2, ppo_samples=2, ppo_len=8, ppo_steps=1,
                 ppo_study_len=32)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_settings(ap, SETTINGS)
    a = ap.parse_args(argv)
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    known = {"ceilings", "generate", "correct", "train", "ppo", "profile"}
    a.parts = known - {"profile"} if a.parts == "all" else set(a.parts.split(","))
    if a.parts - known:
        ap.error(f"--parts: unknown {sorted(a.parts - known)}; known: {sorted(known)} or all")
    if a.device == "cpu" and a.model.startswith("random:") and a.model != "random:tiny":
        ap.error("--device cpu: use --model tiny (a 3B model on a CPU takes hours)")
    if common.model_name_problem(a.model):
        ap.error(f"--model: {common.model_name_problem(a.model)}")
    if a.device == "cpu":   # the GPU sizes would take over 10 minutes here: a smoke run's sizes
        common.fill_defaults(a, CPU_SIZES, common.passed_flags(ap, argv))
    try:
        a.batch_sizes = [int(x) for x in a.batch_sizes.split(",")]
        a.hf_batch_sizes = [int(x) for x in a.hf_batch_sizes.split(",") if x]
    except ValueError:
        ap.error("--batch-sizes and --hf-batch-sizes take comma-separated integers")
    if a.lengths not in ("forced", "study"):
        ap.error("--lengths must be forced or study")
    try:
        a.runs = ppo_runs(a.ngpu, a.lengths)
    except ValueError:
        ap.error(f"--ngpu: comma-separated world sizes, each maybe with :forced or :study, not {a.ngpu!r}")
    if min(a.batch_sizes + a.hf_batch_sizes + [a.prompt_len, a.new_tokens, a.train_seq, a.ppo_prompts, a.ppo_samples,
                                               a.ppo_len, a.ppo_steps, a.ppo_study_len] + [n for n, _ in a.runs]) <= 0:
        ap.error("sizes, lengths, steps and --ngpu must be > 0")
    return a


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device, repeat=1, warmup=True):
    """Median wall time of fn() over `repeat` runs, synchronised (after one warm-up run)."""
    if warmup:
        fn()
    ts = []
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


# ---------------------------------------------------------------------------------
# ceilings and the generation floor

def ceilings(device):
    """Copy bandwidth (bytes read + written per s) and bf16 matmul FLOP/s on random data."""
    big = device.startswith("cuda")
    dt = torch.bfloat16 if big else torch.float32               # the dtype models run in there
    n = (1 << 30) if big else (1 << 24)                       # elements: 2 GiB on a GPU
    src = torch.randn(n, device=device, dtype=dt)
    dst = torch.empty_like(src)
    t = timed(lambda: dst.copy_(src), device, repeat=10)
    m = 8192 if big else 512
    a = torch.randn(m, m, device=device, dtype=dt)
    b = torch.randn(m, m, device=device, dtype=dt)
    tm = timed(lambda: a @ b, device, repeat=10)
    del src, dst
    return {"copy_bytes_per_s": 2 * n * dt.itemsize / t, "matmul_flops_per_s": 2 * m ** 3 / tm}


def model_facts(model):
    c = model.config
    n_kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    n = sum(p.numel() for p in model.parameters())   # a tied embedding (the LM head's matmul) once
    return {"n_params": n, "kv_bytes_per_token": 2 * c.num_hidden_layers * n_kv * head * 2,
            "weight_bytes": n * 2, "head_dim": head}


def generation_floor(facts, ceil, B, P, R):
    """Seconds for B sequences x R new tokens after P prompt tokens at the floor."""
    total = 0.0
    for i in range(R):
        by = facts["weight_bytes"] + B * (P + i) * facts["kv_bytes_per_token"]
        fl = 2 * facts["n_params"] * B
        total += max(by / ceil["copy_bytes_per_s"], fl / ceil["matmul_flops_per_s"])
    return total


def random_prompts(B, P, vocab, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (B, P), generator=g)
    return ids.to(device), torch.ones_like(ids).to(device)


def bench_generate(model, tok, args, ceil, res):
    from engine import Engine, fused_attention_fits
    import sampler
    facts = model_facts(model)
    P, R = args.prompt_len, args.new_tokens
    fits = fused_attention_fits(facts["head_dim"])
    variants = [v for v in args.engine_variants.split(",") if fits or not v.startswith("triton")]
    if len(variants) < len(args.engine_variants.split(",")):
        print("generate: no Triton here (or a head_dim its kernel does not take): the triton variant is left out")
    rows = []
    for B in args.batch_sizes:
        ids, mask = random_prompts(B, P, model.config.vocab_size, args.device)
        row = {"batch": B, "floor_tok_s": B * R / generation_floor(facts, ceil, B, P, R)}
        for v in variants:
            attn, _, how = v.partition(":")
            eng = Engine(model, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, attn=attn,
                         compile=False if how == "eager" else None)
            t0 = time.perf_counter()
            eng.generate(ids, mask, R, temperature=1.0, force_len=R)      # compiles, captures the graphs
            sync(args.device)
            row[f"first_call_s/{v}"] = time.perf_counter() - t0
            t = timed(lambda: eng.generate(ids, mask, R, temperature=1.0, force_len=R), args.device, repeat=1)
            row[f"engine_tok_s/{v}"] = B * R / t
            eng.release()
        best = max(variants, key=lambda v: row[f"engine_tok_s/{v}"])
        row.update(best_variant=best, engine_tok_s=row[f"engine_tok_s/{best}"], engine_s=B * R / row[f"engine_tok_s/{best}"])
        if B in args.hf_batch_sizes:
            fn = lambda: sampler.hf_generate(model, tok, ids, mask, R, 1.0, force_len=R)
            th = timed(fn, args.device, warmup=args.device == "cpu")   # a GPU warm-up would cost a minute
            row.update(hf_tok_s=B * R / th, hf_s=th, speedup_vs_hf=th / row["engine_s"])
        row["frac_of_floor"] = row["engine_tok_s"] / row["floor_tok_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    res["generate"] = {"prompt_len": P, "new_tokens": R, **facts, "rows": rows}


# ---------------------------------------------------------------------------------
# correctness on the GPU shape

def bench_correct(model, tok, args, res):
    """Greedy tokens vs transformers on 64 prompts, and sampled log-probs vs training's.
    In bf16 both sides round differently, so on the GPU an fp32 copy of the model is the
    referee: how often does transformers-bf16 itself agree with fp32?"""
    from engine import Engine
    import sampler
    n, P, R = 64, 64, 64 if args.device.startswith("cuda") else 16
    ids, mask = random_prompts(n, P, model.config.vocab_size, args.device, seed=1)
    mask[: n // 2, : P // 4] = 0                                  # some left padding
    ids = torch.where(mask > 0, ids, torch.full_like(ids, tok.pad_token_id))
    eng = Engine(model, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    got = eng.generate(ids, mask, R, temperature=0, force_len=R).tokens
    want, _ = sampler.hf_generate(model, tok, ids, mask, R, 0.0, force_len=R)
    torch.manual_seed(0)
    out = eng.generate(ids, mask, R, temperature=1.0, force_len=R)
    eng.release()
    seq, attn = torch.cat([ids, out.tokens], 1), torch.cat([mask, out.mask.long()], 1)
    with torch.no_grad():
        lp = sampler.token_logprobs(model, seq, attn, R, 16)
    r = {"prompts": n, "new_tokens": R, **greedy_agreement(got, want, "engine_vs_hf"),
         "logp_mean_abs_diff": (lp - out.logp).abs().mean().item(),
         "logp_max_abs_diff": (lp - out.logp).abs().max().item()}
    if model.dtype != torch.float32:
        ref = common.load_model(args.model, torch.float32, args.device)
        ref.load_state_dict(model.state_dict())
        want32, _ = sampler.hf_generate(ref, tok, ids, mask, R, 0.0, force_len=R)
        with torch.no_grad():
            lp32 = sampler.token_logprobs(ref, seq, attn, R, 16)
        r.update(greedy_agreement(got, want32, "engine_vs_fp32"), **greedy_agreement(want, want32, "hf_vs_fp32"),
                 logp_engine_vs_fp32=(out.logp - lp32).abs().mean().item(),
                 logp_hf_bf16_vs_fp32=(lp - lp32).abs().mean().item())
        del ref
    res["correct"] = r
    print(json.dumps(r), flush=True)


def greedy_agreement(a, b, name):
    same = a == b
    n, R = a.shape
    prefix = torch.where(same.all(1), torch.full((n,), R, device=a.device), (~same).float().argmax(1))
    return {f"{name}/rows_identical": int(same.all(1).sum()), f"{name}/tokens_equal": same.float().mean().item(),
            f"{name}/mean_identical_prefix": prefix.float().mean().item()}


def profile_decode(model, tok, args, B=512, L=384, steps=4):
    """Where a decode step goes at B sequences reading L cache slots (mid-way through a
    128 + 512 generation): the kernel table of a few eager steps (the same kernels a graph
    replays), and the time of one graph replay against the floor's time for that step."""
    from engine import Engine
    from torch.profiler import profile, ProfilerActivity
    ids, mask = random_prompts(B, args.prompt_len, model.config.vocab_size, args.device)
    mode, out = (False, 0, 1.0, ()), {"batch": B, "slots": L}
    cuda = args.device.startswith("cuda")
    for graphs in (False, True) if cuda else (False,):
        eng = Engine(model, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, graphs=graphs)
        eng._allocate(B, L + 64)
        eng.generate(ids, mask, 2, temperature=1.0, force_len=2)  # fills the state; the cache stays L + 64 wide
        eng.slot.fill_(L - 4 * steps - 8)                   # write slots below L, read L
        if not graphs:
            for _ in range(2):   # compiled kernels autotune on their first calls at a new shape
                eng._decode(B, L, mode)
            sync(args.device)
            with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
                for _ in range(steps):
                    eng._decode(B, L, mode)
                sync(args.device)
            key = "device_time_total" if cuda else "self_cpu_time_total"
            out["table"] = prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70)
            out["kernel_ms_per_step"] = sum(getattr(e, key) for e in prof.key_averages()) / steps / 1e3
            print(out["table"], flush=True)
        else:
            eng._step(B, L, mode)                            # capture
            out["graph_ms_per_step"] = 1e3 * timed(lambda: [eng._step(B, L, mode) for _ in range(steps)],
                                                     args.device) / steps
        eng.release()
    eng = Engine(model, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    eng.generate(ids, mask, 1, temperature=1.0, force_len=1)
    # the prompts' forward pass (not in the floor, which counts decode steps only)
    out["prefill_s"] = timed(lambda: eng.generate(ids, mask, 1, temperature=1.0, force_len=1), args.device)
    eng.release()
    facts = model_facts(model)
    out["floor_ms_per_step"] = 1e3 * max((facts["weight_bytes"] + B * L * facts["kv_bytes_per_token"]) / args.ceil["copy_bytes_per_s"],
                                         2 * facts["n_params"] * B / args.ceil["matmul_flops_per_s"])
    print(json.dumps({k: v for k, v in out.items() if k != "table"}), flush=True)
    return out


# ---------------------------------------------------------------------------------
# training passes and the optimizer step

def bench_train(model, args, ceil, res):
    """Tokens/s and MFU of each --train-configs item: kind:micro[+option...]. kind: ckpt or
    nockpt (forward + backward, with or without checkpointing; 6N FLOPs a token) or fwd (a
    no-grad log-prob pass as old/reference log-probs; 2N). Options: ppo (the actor's loss as
    ppo.py computes it: entropy bonus with its gradient, clipped surrogate, fp32 gradient sums),
    compile (each decoder layer through torch.compile), cudnn (cuDNN attention left on where
    gradients flow; no-grad fwd items keep it on anyway, as ppo.py's passes do), profile
    (the top GPU ops of one timed call into train_profile_<item>/ beside --out, ':' and '+' as '_')."""
    n_params = sum(p.numel() for p in model.parameters())
    L, rows = args.train_seq, []
    R = L // 2
    for spec in args.train_configs.split(","):
        kind, micro, *opts = spec.replace("+", ":").split(":")
        micro = int(micro)
        if kind == "ckpt":
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()
        set_compiled(model, "compile" in opts)
        model.train(kind != "fwd")
        ids, mask = random_prompts(micro, L, model.config.vocab_size, args.device, seed=2)
        step = train_pass(model, kind, opts, ids, mask, R, micro)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            t = timed(step, args.device, repeat=3)
            if "profile" in opts:
                folder = os.path.join(os.path.dirname(os.path.abspath(args.out)), "train_profile_" + spec.replace(":", "_").replace("+", "_"))
                with common.profiled(True, folder, cuda=args.device.startswith("cuda")):
                    step()
        except torch.OutOfMemoryError:
            rows.append({"config": spec, "oom": True})
            model.zero_grad(set_to_none=True)
            continue
        tok_s = micro * L / t
        flops = (2 if kind == "fwd" else 6) * n_params * tok_s
        row = {"config": spec, "tok_s": tok_s, "mfu_vs_measured": flops / ceil["matmul_flops_per_s"],
               "mfu_vs_peak": common.mfu(flops, args.device),
               "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else 0.0}
        rows.append(row)
        print(json.dumps(row), flush=True)
        model.zero_grad(set_to_none=True)
    model.gradient_checkpointing_disable()
    set_compiled(model, False)
    res["train"] = {"seq_len": L, "n_params": n_params, "rows": rows, "optimizer": bench_optimizer(model, args)}


def set_compiled(model, on):
    """Each decoder layer through torch.compile (common.compile_layers, as ppo.py --compile), or
    back to eager. Dynamo's caches are cleared first: a graph traced for an earlier item (with
    cuDNN attention on or off, which its guards do not check) must not time a later one."""
    import torch._dynamo
    torch._dynamo.reset()
    if on:
        common.compile_layers(model)
    else:
        for layer in model.model.layers:
            layer._compiled_call_impl = None


def train_pass(model, kind, opts, ids, mask, R, micro):
    """The function bench_train times: one micro-batch of ids [micro, L] as `kind` and `opts` say."""
    import contextlib

    import optim
    import ppo
    import sampler
    params = [p for p in model.parameters() if p.requires_grad]
    acc = [None]

    def step():   # as in ppo.py: cuDNN attention off where gradients flow, on in no-grad passes
        with contextlib.nullcontext() if "cudnn" in opts or kind == "fwd" else common.no_cudnn_attention():
            if kind == "fwd":
                with torch.no_grad():
                    sampler.token_logprobs(model, ids, mask, R, micro)
                return
            if "ppo" not in opts:
                sampler.token_logprobs(model, ids, mask, R, micro).mean().backward()
                return
            logp, ent = sampler.token_logprobs(model, ids, mask, R, micro, entropy=True, entropy_grad=True)
            m = torch.ones_like(logp)
            pg, _ = ppo.policy_loss(logp, logp.detach() + 0.01, torch.ones_like(logp), m)
            (pg - 0.001 * ppo.masked_mean(ent, m)).backward()
            acc[0] = optim.accumulate_fp32(params, acc[0])
    return step


def bench_optimizer(model, args):
    """Seconds per MasterAdamW step: fp32 master + Adam states on the CPU (for-each or
    fused loop) or on the GPU (fused kernel)."""
    import optim
    out = {}
    if any(p.dtype == torch.float32 for p in model.parameters()):
        return out                                                # fp32 models use plain AdamW
    variants = [("cpu_foreach", "cpu", False), ("cpu_fused", "cpu", True)]
    if args.device.startswith("cuda"):
        variants.append(("cuda_fused", args.device, True))
    for name, dev, fused in variants:
        opt = optim.MasterAdamW(model.parameters(), device=dev, fused=fused, lr=1e-6)

        def step():
            for p in model.parameters():
                p.grad = torch.randn_like(p) * 1e-3
            opt.step()
        out[f"step_s_{name}"] = timed(step, args.device, repeat=2)
        del opt
        model.zero_grad(set_to_none=True)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(json.dumps({"optimizer": out}), flush=True)
    return out


# ---------------------------------------------------------------------------------
# one PPO step of the study's shape, through ppo.py itself, at one or more world sizes

def ppo_runs(spec, lengths):
    """--ngpu's runs as (world size, lengths) pairs.

    >>> ppo_runs("1,2,4,1:study", "forced")
    [(1, 'forced'), (2, 'forced'), (4, 'forced'), (1, 'study')]
    """
    runs = []
    for item in spec.split(","):
        n, _, mode = item.partition(":")
        if (mode or lengths) not in ("forced", "study"):
            raise ValueError(item)
        runs.append((int(n), mode or lengths))
    return runs


def bench_ppo(args, ceil, res):
    """Every --ngpu run, one after another or (--concurrent) side by side; one row each."""
    here = os.path.dirname(os.path.abspath(__file__))
    data = os.path.join(os.path.dirname(os.path.abspath(args.out)), "countdown")
    if not os.path.exists(os.path.join(data, "test.jsonl")):
        subprocess.run([sys.executable, os.path.join(here, "countdown.py"), "--out", data, "--n-train", "2000",
                        "--n-test", "64"], check=True, stdout=subprocess.DEVNULL)
    cuda = args.device.startswith("cuda")
    visible = (os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if os.environ.get("CUDA_VISIBLE_DEVICES")
               else [str(i) for i in range(torch.cuda.device_count())]) if cuda else []
    if cuda and max(n for n, _ in args.runs) > len(visible):
        common.die(f"--ngpu: {max(n for n, _ in args.runs)} GPUs asked, {len(visible)} visible", "bench.py")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pending, running, free = list(args.runs), [], list(range(len(visible)))
    while pending or running:
        n = pending[0][0] if pending else 0
        if pending and (not running or (args.concurrent and cuda and n <= len(free))):
            gpus = sorted(free)[:n] if cuda else []
            free = [g for g in free if g not in gpus]
            running.append(launch_ppo(args, *pending.pop(0), data, here, [visible[g] for g in gpus],
                                      share(cores, gpus, len(visible)) if args.concurrent else None) + (gpus,))
            continue
        done = [r for r in running if r[0].poll() is not None]
        if not done:
            time.sleep(1)
            continue
        proc, row, log, gpus = done[0]
        running.remove(done[0])
        free += gpus
        if proc.returncode:   # the other runs go on (an OOM at one world size leaves the rest)
            with open(log) as f:
                tail = f.readlines()[-40:]
            sys.stderr.write("".join(tail))
            print(f"[{row['ngpu']}gpu_{row['lengths']}] FAILED (exit {proc.returncode}); log: {log}", flush=True)
            res.setdefault("failed", []).append({**row, "exit": proc.returncode, "log_tail": tail[-5:]})
            continue
        new = ppo_row(row, ceil, args)   # replaces a row of the same run from an earlier call
        res["ppo"] = [r for r in res.get("ppo", []) if (r["ngpu"], r.get("lengths")) != (new["ngpu"], new["lengths"])]
        res["ppo"].append(new)
        common.write_json(args.out, res)       # each run's row kept, should a later one be cut short
        print(json.dumps(new), flush=True)


def share(cores, gpus, n_visible):
    """The CPU cores that go with these GPUs: an equal, contiguous block per GPU."""
    per = max(1, len(cores) // max(1, n_visible))
    return [c for g in gpus for c in cores[g * per:(g + 1) * per]] or cores


def launch_ppo(args, n, lengths, data, here, gpus, cores):
    """Start one ppo.py run (torchrun when n > 1) in the background, its output to a log
    file beside --out. Returns (process, what its row needs, log path)."""
    tag = f"{n}gpu_{lengths}"
    out = os.path.join(os.path.dirname(os.path.abspath(args.out)), f"ppo_{tag}")
    R = args.ppo_len if lengths == "forced" else args.ppo_study_len
    flags = ["--model", args.model, "--data", data, "--out", out, "--steps", args.ppo_steps,
             "--prompts-per-step", args.ppo_prompts, "--samples-per-prompt", args.ppo_samples,
             "--max-response-len", R, *(["--force-response-len", R] if lengths == "forced" else
                                        ["--force-lengths", "study"]),
             "--eval-every", 0, "--log-rollouts-every", 0, "--save-every", 0, "--no-save-final", "--overwrite",
             "--device", args.device.split(":")[0], *args.ppo_args.split()]
    launch = [sys.executable] if n == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    cmd = launch + [os.path.join(here, "ppo.py")] + [str(f) for f in flags]
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ",".join(gpus)} if gpus else {}))
    log = out + ".log"
    os.makedirs(os.path.dirname(log), exist_ok=True)
    print(f"[{tag}] {' '.join(cmd)}" + (f"  (GPUs {','.join(gpus)}, {len(cores)} cores)" if cores else ""),
          flush=True)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=here, env=env, stdout=f, stderr=subprocess.STDOUT,
                                preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
    return proc, {"ngpu": n, "lengths": lengths, "out": out, "cmd": cmd[len(launch):]}, log


def ppo_row(row, ceil, args):
    """The figures of a finished run, from its metrics.jsonl (the last step: the first compiles)."""
    ms = common.read_jsonl(os.path.join(row["out"], "metrics.jsonl"))
    m = ms[-1]
    n = common.count_params(args.model.split(":", 1)[1]) if args.model.startswith("random:") else None
    phases = {k[5:]: v for k, v in m.items() if k.startswith("time/")}
    out = {"ngpu": row["ngpu"], "lengths": row["lengths"], "phases_s": phases, "peak_gb": m.get("mem/peak_gb"),
           "host_gb": m.get("mem/host_peak_gb"), "tokens_per_s": m.get("tokens_per_s"),
           "response_length": m.get("response_length/mean"), "pad_waste": m.get("perf/pad_waste"),
           "pad_waste_unsorted": m.get("perf/pad_waste_unsorted"), "logp_diff": m.get("rollout/logp_diff"),
           "kl_step1": ms[0].get("kl"),   # policy and reference start equal (random: too): exactly 0
           "fsdp": row["ngpu"] > 1 and "--no-fsdp" not in args.ppo_args.split(), "cmd": row["cmd"]}
    if n and m.get("tokens/rank"):   # per-GPU MFU of each pass: 2N (forward) or 6N FLOPs per token
        for phase, f in (("old_logp", 2), ("ref_logp", 2), ("values", 2), ("actor_update", 6), ("critic_update", 6)):
            if phases.get(phase):
                tokens = m.get("tokens/rank_values", m["tokens/rank"]) if phase == "values" else m["tokens/rank"]
                rate = f * n * tokens / phases[phase]
                out[f"mfu_vs_measured/{phase}"] = rate / ceil["matmul_flops_per_s"] if ceil else None
                out[f"mfu_vs_peak/{phase}"] = common.mfu(rate, args.device)
    return out


def host_at(rows, n=8):
    """Host memory of n ranks from the FSDP runs' peak RSS per rank: a + b / N fitted to two or
    more world sizes (what is sharded shrinks as 1/N, the rest stays), else the one measured
    per-rank figure (an upper bound: it only shrinks with N). (total GB, per-rank GB) or None."""
    pts = sorted({(r["ngpu"], r["host_gb"]) for r in rows if r.get("fsdp") and r.get("host_gb")})
    if not pts:
        return None
    if len({k for k, _ in pts}) < 2:
        return n * pts[-1][1], pts[-1][1]
    xs, ys = [1 / k for k, _ in pts], [v for _, v in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    per = max(0.0, my - b * mx + b / n)
    return n * per, per


def scaling_table(rows):
    """Step time, tokens/s and speed-up (against 1 GPU with the same lengths), peak GPU and
    host memory per rank, padding waste; then the host memory 8 ranks would need."""
    lines = ["GPUs lengths  step s  tokens/s  speed-up  GPU GB/rank  host GB/rank  resp. len  pad waste (unsorted)"]
    for r in rows:
        base = next((b for b in rows if b["ngpu"] == 1 and b["lengths"] == r["lengths"]), None)
        up = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        lines.append(f"{r['ngpu']:>4} {r['lengths']:<7} {r['phases_s'].get('step', 0):7.1f} {r['tokens_per_s']:9,.0f} "
                     f"{up:>9} {r['peak_gb'] or 0:12.1f} {r['host_gb'] or 0:13.1f} {r['response_length'] or 0:10.0f}  "
                     f"{r['pad_waste'] or 0:.3f} ({r['pad_waste_unsorted'] or 0:.3f})")
    h = host_at(rows)
    if h:
        lines.append(f"host memory at 8 ranks (FSDP, from the runs' peak RSS per rank): {h[0]:.1f} GB ({h[1]:.1f} per rank)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------

def table(res):
    """The short summary printed last."""
    lines = []
    c = res.get("ceilings")
    if c:
        lines.append(f"ceilings: copy {c['copy_bytes_per_s'] / 1e12:.2f} TB/s, bf16 matmul "
                     f"{c['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s")
    for r in res.get("generate", {}).get("rows", []):
        hf = f", hf {r['hf_tok_s']:,.0f} tok/s ({r['speedup_vs_hf']:.1f}x)" if "hf_tok_s" in r else ""
        var = ", ".join(f"{k.split('/')[1]} {v:,.0f}" for k, v in r.items() if k.startswith("engine_tok_s/"))
        lines.append(f"generate B={r['batch']}: engine {r['engine_tok_s']:,.0f} tok/s ({var}) = "
                     f"{100 * r['frac_of_floor']:.0f}% of floor {r['floor_tok_s']:,.0f}{hf}")
    k = res.get("correct")
    if k:
        line = (f"correct: greedy rows identical to transformers {k['engine_vs_hf/rows_identical']}/{k['prompts']} "
                f"(tokens {100 * k['engine_vs_hf/tokens_equal']:.1f}%), logp |diff| mean {k['logp_mean_abs_diff']:.4f}")
        if "hf_vs_fp32/tokens_equal" in k:
            line += (f"; vs fp32: engine tokens {100 * k['engine_vs_fp32/tokens_equal']:.1f}%, transformers-bf16 "
                     f"{100 * k['hf_vs_fp32/tokens_equal']:.1f}%; logp |diff| engine {k['logp_engine_vs_fp32']:.4f}, "
                     f"transformers-bf16 {k['logp_hf_bf16_vs_fp32']:.4f}")
        lines.append(line)
    for r in res.get("train", {}).get("rows", []):
        lines.append(f"train {r['config']}: " + ("OOM" if r.get("oom") else
                     f"{r['tok_s']:,.0f} tok/s, MFU {100 * r['mfu_vs_measured']:.0f}% of measured, "
                     f"peak {r['peak_gb']:.1f} GB"))
    o = res.get("train", {}).get("optimizer")
    if o:
        lines.append("optimizer step: " + ", ".join(f"{k[7:]} {v:.2f}s" for k, v in o.items()))
    for r in res.get("ppo", []):
        ph = ", ".join(f"{k} {v:.1f}" for k, v in r["phases_s"].items())
        mf = ", ".join(f"{k.split('/')[1]} {100 * v:.0f}%" for k, v in r.items()
                       if k.startswith("mfu_vs_measured/") and v is not None)
        lines.append(f"ppo {r['ngpu']} GPU, {r.get('lengths', 'forced')} lengths: {ph} s; peak {r['peak_gb']:.1f} GB; "
                     f"MFU {mf}")
    if res.get("ppo"):
        lines.append(scaling_table([r for r in res["ppo"] if "lengths" in r]))
    for r in res.get("failed", []):
        lines.append(f"ppo {r['ngpu']} GPU, {r['lengths']} lengths: FAILED (exit {r['exit']}), log {r['out']}.log")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    res = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
           "model": args.model, "torch": torch.__version__}
    if os.path.exists(args.out):                 # parts run in separate calls add up
        with open(args.out) as f:
            old = json.load(f)
        res = {**old, **res, "ppo": old.get("ppo", [])}
    if args.parts & {"ceilings", "generate", "train", "ppo", "profile"} and "ceilings" not in res or "ceilings" in args.parts:
        res["ceilings"] = ceilings(args.device)
        print(json.dumps(res["ceilings"]), flush=True)
    if args.parts & {"generate", "correct", "train", "profile"}:
        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
        model = common.load_model(args.model, dtype, args.device)
        tok = common.load_tokenizer(args.model)
        if "generate" in args.parts:
            bench_generate(model, tok, args, res["ceilings"], res)
        if "correct" in args.parts:
            bench_correct(model, tok, args, res)
        if "profile" in args.parts:
            args.ceil = res["ceilings"]
            res["profile_decode"] = profile_decode(model, tok, args)
        if "train" in args.parts:
            bench_train(model, args, res["ceilings"], res)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if "ppo" in args.parts:
        res.pop("failed", None)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()           # the runs need GPU 0's memory
        bench_ppo(args, res.get("ceilings"), res)
    common.write_json(args.out, res)
    print(f"\nfull figures: {args.out}\n" + table(res))
    if res.get("failed"):
        sys.exit(1)


if __name__ == "__main__":
    main()
