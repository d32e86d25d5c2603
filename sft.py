"""
Supervised fine-tuning of a Hugging Face causal LM: priming on reasoning traces
({"prompt", "completion"} records, loss on the completion only) and continued
pretraining ({"text"} records, loss on every token). One file for a CPU, one GPU and
several GPUs under torchrun (DDP, or FSDP2 with --fsdp).

CPU, tiny model (about a minute; OMP_NUM_THREADS=1 is much faster on a busy CPU):
    python gen_priming.py --condition all_strategies --n 2000 --out data/priming --sizes 3 --budget 1
    python sft.py --model tiny --data data/priming/all_strategies.jsonl --eval-frac 0.05 \\
        --out out/sft_tiny --batch-size 4 --micro-batch 4 --max-steps 200 --lr 2e-3 \\
        --min-lr-frac 1 --grad-clip 0.5 --max-len 384     # held-out loss 6.4 -> 0.9

One GPU (the study's priming: 5 epochs, batch 64, max length 2048):
    python sft.py --model llama-3.2-3b --data data/priming/all_strategies.jsonl \\
        --eval-frac 0.05 --out out/prime_llama_all --grad-ckpt

Several GPUs (DDP; add --fsdp to shard weights, gradients and optimizer states):
    torchrun --standalone --nproc_per_node=2 sft.py --model llama-3.2-3b \\
        --data data/priming/all_strategies.jsonl --eval-frac 0.05 --out out/prime_llama_all

Continue a killed run from its last checkpoint (same data order, same result):
    python sft.py ...same flags... --resume

Then PPO or more SFT from the result: --init out/prime_llama_all/final

Throughput, MFU and peak memory of a Qwen2.5-3B-shaped model (random weights, random
tokens of a fixed length, batch 64 x 1024 tokens; nothing is saved):
    python sft.py --model random:qwen2.5-3b --synthetic 1024 --max-steps 8 --batch-size 64 \\
        --micro-batch 4 --grad-ckpt --no-save --out out/bench_sft_1gpu
    torchrun --standalone --nproc_per_node=2 sft.py --model random:qwen2.5-3b --synthetic 1024 \\
        --max-steps 8 --batch-size 64 --micro-batch 4 --grad-ckpt --no-save --out out/bench_sft_ddp
    (the same with --fsdp --out out/bench_sft_fsdp: weights, gradients and AdamW states sharded)
Each step prints tok/s (all GPUs together), mfu (per GPU, 6N FLOPs per token against the
dense bf16 peak) and mem_gb (peak allocated on rank 0); the first step is warm-up.
Memory: bf16-mixed keeps fp32 weights + gradients + AdamW states, 16 bytes a parameter
(~49 GB for 3.1B) on every GPU under DDP, 1/N of it under FSDP; fp32 logits over a 152k
vocabulary add ~5 GB per 4k tokens of micro-batch.

Precision: on a GPU the default is bf16-mixed: fp32 master weights and AdamW states, bf16
compute (autocast; FSDP2's MixedPrecisionPolicy under --fsdp). Pure bf16 weights
(--precision bf16) halve memory but round away most updates at lr 1e-5. CPU runs in fp32.

Loss: summed over the loss tokens of the whole global batch and divided by their count,
so the result does not depend on --micro-batch or the number of GPUs.
Writes out/RUN/config.json, metrics.jsonl, ckpt/step_XXXXXX/ (HF folder + resume.pt +
trainer_state.json, written last) and final/ (HF folder).
"""
import argparse
import contextlib
import math
import os
import random
import sys
import time
from functools import lru_cache

import common
import shard

# ---------------------------------------------------------------------------------
# settings: the flags and their defaults, the study's priming SFT: TinyZero's
# slurm_scripts/sft.sh (5 epochs, batch 64, max length 2048) on verl/trainer/config/
# sft_trainer.yaml (lr 1e-5, betas 0.9/0.95, weight decay 0.01, 10% warm-up, cosine to 0).
SETTINGS = [
    # (flag, default, type, help)
    common.SHARED["model"],
    common.SHARED["init"],
    ("data", None, str, "training JSONL: {prompt, completion} or {text} records"),
    ("eval_data", None, str, "held-out JSONL (same formats)"),
    ("eval_frac", 0.0, float, "without --eval-data: fraction of --data held out"),
    ("eval_max", 512, int, "score at most this many held-out examples"),
    ("eval_every", 50, int, "held-out loss every N steps (0: at the end only)"),
    ("out", "out/sft", str, "run folder (config.json, metrics.jsonl, ckpt/, final/)"),
    ("epochs", 5, int, "passes over the training data"),
    ("max_steps", 0, int, "if > 0: exactly this many steps (overrides --epochs)"),
    ("batch_size", 64, int, "global batch: sequences per optimizer step, all GPUs"),
    ("micro_batch", 4, int, "sequences per forward/backward per GPU (gradient accumulation fills the rest)"),
    ("max_len", 2048, int, "longest sequence in tokens (prompt + completion + EOS)"),
    ("overlong", "drop", str, "sequences longer than --max-len: drop | truncate (keep their first tokens)"),
    ("pack", False, bool, "pack short examples into max-len rows (no cross-attention)"),
    ("lr", 1e-5, float, "peak learning rate (AdamW)"),
    ("min_lr_frac", 0.0, float, "the cosine ends at lr x this"),
    ("warmup_frac", 0.1, float, "linear warm-up over this fraction of the steps (at least 1 step)"),
    ("weight_decay", 0.01, float, "AdamW weight decay (every parameter, as the study's AdamW)"),
    ("beta1", 0.9, float, "AdamW beta1"),
    ("beta2", 0.95, float, "AdamW beta2"),
    ("grad_clip", 1.0, float, "max global gradient norm (0: off)"),
    ("precision", "auto", str, "auto (bf16-mixed on GPU: fp32 weights, bf16 compute; fp32 on CPU) | "
                               "bf16-mixed | bf16 | fp32"),
    ("grad_ckpt", False, bool, "gradient checkpointing (less memory, ~30%% more compute)"),
    ("fsdp", False, bool, "under torchrun: shard with FSDP2 instead of DDP"),
    ("save_every", 100, int, "checkpoint every N steps (0: final/ only)"),
    common.SHARED["keep"],
    ("save", True, bool, "write checkpoints and final/ (--no-save: neither, for benchmarks)"),
    common.SHARED["resume"],
    common.SHARED["overwrite"],
    ("stop_after", 0, int, "testing: exit after step N as if killed (no final/)"),
    ("synthetic", 0, int, "benchmark: ignore --data, train on random token sequences of this length"),
    ("seed", 0, int, "seed of data order, eval split and synthetic data"),
    ("device", None, str, "cpu or cuda (default: cuda if available)"),
    common.SHARED["wandb"],
]
IGNORE = -100  # label of positions that carry no loss

# ---------------------------------------------------------------------------------
# data: records -> examples (ids, labels) -> rows -> padded micro-batches


def record_kind(rec):
    """'pc' (prompt/completion), 'text', or None (neither)."""
    has_pc = "prompt" in rec or "completion" in rec
    if has_pc and "text" in rec:
        return "both"
    return "pc" if has_pc else "text" if "text" in rec else None


def load_records(path):
    """(records, kind) from a JSONL file; every error names file:line."""
    recs = common.read_jsonl(path)
    if not recs:
        raise common.DataError(f"{path}: no records (the file is empty)")
    with open(path, encoding="utf-8") as f:  # line number of each record (blank lines skipped)
        linenos = [i for i, line in enumerate(f, 1) if line.strip()]
    kind0, line0 = None, None
    for rec, ln in zip(recs, linenos):
        kind = record_kind(rec)
        where = f"{path}:{ln}"
        if kind is None:
            raise common.DataError(f"{where}: record has neither prompt/completion nor text "
                                   f"(keys: {', '.join(sorted(rec)) or 'none'})")
        if kind == "both":
            raise common.DataError(f"{where}: record has both text and prompt/completion; use one")
        keys = ("prompt", "completion") if kind == "pc" else ("text",)
        for k in keys:
            if k not in rec:
                raise common.DataError(f"{where}: record has {'prompt' if k == 'completion' else 'completion'} but no {k}")
            if not isinstance(rec[k], str):
                raise common.DataError(f"{where}: {k} must be a string, got {type(rec[k]).__name__}")
        if kind == "text" and not rec["text"]:
            raise common.DataError(f"{where}: text is empty")
        if kind0 is None:
            kind0, line0 = kind, ln
        elif kind != kind0:
            name = {"pc": "prompt/completion", "text": "text"}
            raise common.DataError(f"{where}: a {name[kind]} record in a file of {name[kind0]} records "
                                   f"(line {line0}); a file holds one kind, not both")
    return recs, kind0


def make_example(prompt_ids, completion_ids, eos_id):
    """(ids, labels): prompt positions get IGNORE, completion + EOS are targets.

    For text records pass prompt_ids=[] and the text as completion. The first token never
    carries loss (nothing precedes it; in a packed row it would be predicted across examples).
    """
    ids = list(prompt_ids) + list(completion_ids) + [eos_id]
    labels = [IGNORE] * len(prompt_ids) + list(completion_ids) + [eos_id]
    labels[0] = IGNORE
    return ids, labels


def tokenize_records(recs, kind, tok, max_len, overlong="drop"):
    """Examples [(ids, labels)] and a report line about over-long ones (or None).

    No special prefix (no BOS), as the study's SFT dataset tokenizes (add_special_tokens=False,
    verl/utils/dataset/sft_dataset.py) and as PPO's prompts are; completions are tokenized
    alone and followed by EOS.
    """
    if kind == "pc":
        p = tok([r["prompt"] for r in recs], add_special_tokens=False)["input_ids"]
        c = tok([r["completion"] for r in recs], add_special_tokens=False)["input_ids"]
    else:
        p = [[] for _ in recs]
        c = tok([r["text"] for r in recs], add_special_tokens=False)["input_ids"]
    out, n_long, n_lost = [], 0, 0
    for pi, ci in zip(p, c):
        ids, labels = make_example(pi, ci, tok.eos_token_id)
        if len(ids) > max_len:
            n_long += 1
            if overlong == "drop":
                continue
            ids, labels = ids[:max_len], labels[:max_len]
        if all(x == IGNORE for x in labels):
            n_lost += 1  # the prompt alone fills max_len: nothing left to learn from
            continue
        out.append((ids, labels))
    msg = None
    if n_long:
        msg = (f"{n_long} of {len(recs)} sequences are longer than --max-len {max_len} tokens: "
               + ("dropped (--overlong truncate keeps their first tokens)" if overlong == "drop"
                  else f"truncated to {max_len} tokens"
                  + (f"; {n_lost} had no completion left and were dropped" if n_lost else "")))
    return out, msg


def pack_examples(examples, max_len):
    """Rows: lists of examples whose lengths sum to <= max_len (best fit, longest first)."""
    import bisect
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i][0]))
    rows, free = [], []  # free: sorted (space left, row index)
    for i in order:
        n = len(examples[i][0])
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, r = free.pop(k)
        else:
            space, r = max_len, len(rows)
            rows.append([])
        rows[r].append(examples[i])
        bisect.insort(free, (space - n, r))
    return rows


def row_len(row):
    return sum(len(ids) for ids, _ in row)


def collate(rows, pad_id, packed=False):
    """Rows (lists of (ids, labels)) -> tensors, right-padded to the longest row.

    input_ids, labels, position_ids: [B, T]; attention_mask [B, T] (None when packed: then
    position_ids restart at 0 for every example and transformers builds a block-diagonal
    causal mask from them, so examples in a row never attend to each other).
    """
    import torch
    T = max(row_len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(rows), T), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, row in enumerate(rows):
        t = 0
        for e_ids, e_labels in row:
            n = len(e_ids)
            ids[b, t:t + n] = torch.tensor(e_ids)
            labels[b, t:t + n] = torch.tensor(e_labels)
            pos[b, t:t + n] = torch.arange(n)
            t += n
        mask[b, :t] = 1
        pos[b, t:] = torch.arange(T - t)  # the padding forms its own "example" at the end
    return dict(input_ids=ids, labels=labels, position_ids=pos,
                attention_mask=None if packed else mask)


def token_loss_sum(logits, labels):
    """(sum of next-token cross-entropy over positions whose label is not IGNORE, count).

    logits [B, T, V] (any float dtype; computed in fp32), labels [B, T]: labels[:, t] is the
    target predicted from position t - 1.
    """
    import torch.nn.functional as F
    logits = logits[:, :-1].float()                # [B, T-1, V]
    target = labels[:, 1:]                         # [B, T-1]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")
    return loss, int((target != IGNORE).sum())


def n_targets(row):
    """Loss tokens in a row: what token_loss_sum counts (every example's first label is IGNORE)."""
    return sum(sum(1 for x in labels if x != IGNORE) for _, labels in row)


@lru_cache(maxsize=4)
def _epoch_perm(n, seed, epoch):
    import numpy as np
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def batch_rows(step, n_rows, batch_size, seed):
    """Indices of the rows of optimizer step `step` (0-based): a fresh shuffle every epoch,
    the last partial batch of an epoch dropped. A pure function of the step, so a resumed
    run sees exactly the data an uninterrupted one would."""
    per_epoch = n_rows // batch_size
    epoch, k = divmod(step, per_epoch)
    return _epoch_perm(n_rows, seed, epoch)[k * batch_size:(k + 1) * batch_size]


def rank_micro_batches(idx, rows, rank, world, micro):
    """This rank's share of a global batch, as lists of rows of at most `micro` rows.

    Rows are sorted by length first (less padding, and an even token load across ranks).
    """
    idx = sorted(idx, key=lambda i: -row_len(rows[i]))[rank::world]
    return [[rows[i] for i in idx[j:j + micro]] for j in range(0, len(idx), micro)]


def lr_at(step, total, lr, warmup, min_frac):
    """Linear warm-up over `warmup` steps, then cosine from lr down to lr * min_frac."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return lr * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def split_eval(recs, frac, seed):
    """(train records, held-out records): a seeded random `frac` of them held out (at least 1)."""
    perm = _epoch_perm(len(recs), seed, 2**31)  # a stream no epoch uses
    n_eval = max(1, int(round(len(recs) * frac)))
    return [recs[i] for i in perm[n_eval:]], [recs[i] for i in perm[:n_eval]]


def load_data(args, tok, log):
    """(train rows, eval rows, kind) as the settings ask; reports what it dropped."""
    if args.synthetic:
        import numpy as np
        rng = np.random.default_rng(args.seed)
        n = max(args.batch_size * 4, 8)
        seqs = rng.integers(0, len(tok), size=(n, args.synthetic)).tolist()
        return [[make_example([], s[:-1], tok.eos_token_id)] for s in seqs], [], "text"
    recs, kind = load_records(args.data)
    eval_recs, ekind = load_records(args.eval_data) if args.eval_data else ([], kind)
    if not args.eval_data and args.eval_frac > 0:
        recs, eval_recs = split_eval(recs, args.eval_frac, args.seed)
        if not recs:
            raise common.DataError(f"{args.data}: --eval-frac {args.eval_frac} leaves no training records")
    train, msg = tokenize_records(recs, kind, tok, args.max_len, args.overlong)
    if msg:
        log(f"train data: {msg}")
    if not train:
        raise common.DataError(f"{args.data}: no usable training sequences left")
    evals = []
    if eval_recs:
        evals, emsg = tokenize_records(eval_recs[:args.eval_max], ekind, tok, args.max_len, args.overlong)
        if emsg:
            log(f"eval data: {emsg}")
    rows = pack_examples(train, args.max_len) if args.pack else [[e] for e in train]
    return rows, [[e] for e in evals], kind


# ---------------------------------------------------------------------------------
# model, optimizer, checkpoints


def build_model(args, info, init):
    """(model to train: plain, DDP or FSDP2-wrapped; the bare HF model; autocast context)."""
    import torch
    bf16_weights = args.precision == "bf16"
    model = common.load_model(args.model, dtype=torch.bfloat16 if bf16_weights else torch.float32,
                              device=info["device"], init=init)
    model.config.use_cache = False
    if args.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    raw = model
    mixed = args.precision == "bf16-mixed"
    autocast = contextlib.nullcontext
    if info["ddp"] and args.fsdp:   # one FSDP unit per decoder layer, then the root
        shard.shard_model(model, torch.bfloat16 if mixed else None)
    else:
        if mixed:
            autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
        if info["ddp"]:
            from torch.nn.parallel import DistributedDataParallel as DDP
            cuda = info["device"].startswith("cuda")
            model = DDP(model, device_ids=[info["local_rank"]] if cuda else None)
    return model, raw, autocast


def make_optimizer(model, args, device):
    """AdamW with weight decay on every parameter, as the study's (verl/trainer/fsdp_sft_trainer.py)."""
    import torch
    params = [p for p in model.parameters() if p.requires_grad]
    fused = str(device).startswith("cuda") and not args.fsdp
    return torch.optim.AdamW(params, lr=args.lr, betas=(args.beta1, args.beta2),
                             weight_decay=args.weight_decay, fused=fused)


def rng_states():
    import numpy as np
    import torch
    return dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_rng_states(s):
    import numpy as np
    import torch
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(path, model, raw, opt, tok, info, args, run_cfg, state):
    """HF folder (+ resume.pt and trainer_state.json, written last, when state is given)."""
    import torch
    import torch.distributed as dist
    sd, osd = shard.gathered_state(model, opt if state else None, args.fsdp and info["ddp"])
    rngs = [rng_states()]
    if info["ddp"] and state:  # every rank's RNG, so a resumed run draws the same numbers
        rngs = [None] * info["world_size"]
        dist.all_gather_object(rngs, rng_states())
    if info["master"]:
        def extra(tmp):
            if state:
                torch.save(dict(optimizer=osd, rng=rngs, **state), os.path.join(tmp, "resume.pt"))
                common.write_json(os.path.join(tmp, "trainer_state.json"), state)  # completeness marker
        common.save_hf(shard.WithState(raw, sd) if sd is not None else raw, tok, path,
                       extra=extra, cfg=run_cfg)
    if info["ddp"]:
        dist.barrier()


# ---------------------------------------------------------------------------------
# training


def forward_loss(model, batch, device, autocast):
    """(sum of token losses, count) of one micro-batch; batch from collate()."""
    b = {k: (v.to(device) if v is not None else None) for k, v in batch.items()}
    with autocast():
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                    position_ids=b["position_ids"], use_cache=False)
    return token_loss_sum(out.logits, b["labels"])


def evaluate(model, rows, args, info, autocast, pad_id):
    """Held-out loss: token-weighted mean over all eval rows, all ranks together."""
    import torch
    if not rows:
        return None
    model.eval()
    share = rows[info["rank"]::info["world_size"]]
    n_micro = math.ceil(math.ceil(len(rows) / info["world_size"]) / args.micro_batch)
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for j in range(n_micro):  # equal count on every rank (FSDP forwards are collective)
            part = share[j * args.micro_batch:(j + 1) * args.micro_batch]
            s, c = forward_loss(model, collate(part or rows[:1], pad_id), info["device"], autocast)
            if part:
                tot, cnt = tot + float(s), cnt + c
    model.train()
    r = common.all_reduce_mean(dict(s=tot, c=cnt), info)
    return r["s"] / max(r["c"], 1e-9)


def train_step(model, opt, idx, rows, args, info, autocast, pad_id, lr):
    """One optimizer step over the global batch `idx`; returns (mean loss, grad norm)."""
    import torch
    n_tok = sum(n_targets(rows[i]) for i in idx)  # loss tokens of the whole global batch
    micro = rank_micro_batches(idx, rows, info["rank"], info["world_size"], args.micro_batch)
    local = 0.0
    for j, part in enumerate(micro):
        with shard.grad_sync(model, j == len(micro) - 1), common.no_cudnn_attention():
            s, _ = forward_loss(model, collate(part, pad_id, args.pack), info["device"], autocast)
            # ranks' gradients are averaged, so scale by world size: the sum over ranks of
            # s / n_tok is the token mean of the global batch
            (s * info["world_size"] / max(n_tok, 1)).backward()
        local += float(s.detach()) / max(n_tok, 1)
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip or float("inf"))
    if hasattr(gnorm, "full_tensor"):
        gnorm = gnorm.full_tensor()
    for g in opt.param_groups:
        g["lr"] = lr
    opt.step()
    opt.zero_grad(set_to_none=True)
    loss = common.all_reduce_mean(dict(loss=local), info)["loss"] * info["world_size"]
    return loss, float(gnorm)


class _TqdmStdout:
    """stdout that prints above the progress bar, so the bar and the log lines do not mix."""
    def __init__(self, stream):
        self.stream = stream

    def write(self, s):
        from tqdm import tqdm
        if s.strip():
            tqdm.write(s.rstrip("\n"), file=self.stream)

    def flush(self):
        self.stream.flush()


def resolve(args, info):
    """Fill the automatic settings and check them; returns args."""
    args.device = info["device"]
    if args.precision == "auto":
        args.precision = "bf16-mixed" if info["device"].startswith("cuda") else "fp32"
    if args.precision != "fp32" and not info["device"].startswith("cuda"):
        common.die(f"--precision {args.precision} needs a GPU; use fp32 on the CPU")
    if args.data is None and not args.synthetic:
        common.die("give --data FILE.jsonl (or --synthetic LEN for a benchmark)")
    if args.fsdp and not info["ddp"]:
        print("sft: --fsdp has no effect without torchrun; training on one process", file=sys.stderr)
    per_step = args.micro_batch * info["world_size"]
    if args.batch_size % per_step:
        common.die(f"--batch-size {args.batch_size} must be a multiple of --micro-batch x "
                         f"GPUs = {args.micro_batch} x {info['world_size']}")
    args.grad_accum = args.batch_size // per_step
    return args


def prepare_out(args, info, log):
    """Apply --overwrite / --resume to the run folder: (start step, checkpoint folder or None)."""
    out = args.out
    common.claim_run_dir(out, args.resume, args.overwrite, ("ckpt", "final", "metrics.jsonl"),
                         mutate=info["master"])
    if info["ddp"]:
        import torch.distributed as dist
        dist.barrier()                    # rank 0 has tidied the folder
    start, ckpt = common.latest_ckpt(out)
    if args.resume and not ckpt:
        log(f"--resume: no checkpoint in {out}/ckpt; starting from the beginning")
    path = os.path.join(out, "metrics.jsonl")
    if info["master"] and os.path.exists(path):  # forget log lines after the checkpoint (redone)
        keep = [r for r in common.read_jsonl_tolerant(path) if r.get("step", 0) <= start] if ckpt else []
        common.write_jsonl(path, keep)
    return start, ckpt


def restore(ckpt, model, opt, args, info, data_key):
    """Optimizer state and RNG from a checkpoint (the weights were loaded with the model)."""
    import torch
    state = torch.load(os.path.join(ckpt, "resume.pt"), map_location="cpu", weights_only=False)
    if state["data"] != data_key:
        common.die(f"{ckpt} was written with data/order {state['data']}, this run has "
                         f"{data_key}; resume with the same --data, --batch-size, --seed and steps")
    shard.load_optimizer(model, opt, state["optimizer"], args.fsdp and info["ddp"])
    rngs = state["rng"]
    set_rng_states(rngs[info["rank"]] if info["rank"] < len(rngs) else rngs[0])


def setup(args):
    """Everything a run needs, as a namespace: dist info, data, model, optimizer, schedule."""
    import types
    import torch
    info = common.setup_dist(args.device)
    args = resolve(args, info)
    log = (lambda m: print(f"sft: {m}", flush=True)) if info["master"] else (lambda m: None)
    start, ckpt = prepare_out(args, info, log)
    torch.manual_seed(args.seed)
    tok = common.load_tokenizer(args.model)
    problem = common.vocab_problem(tok, ckpt or args.init or args.model)
    if problem:
        common.die(problem)
    rows, eval_rows, kind = load_data(args, tok, log)
    per_epoch = len(rows) // args.batch_size
    if per_epoch == 0:
        raise common.DataError(f"{args.data}: {len(rows)} training rows, fewer than one batch "
                               f"(--batch-size {args.batch_size})")
    total = args.max_steps or args.epochs * per_epoch
    if args.init:
        log(common.init_report(args.init))
    model, raw, autocast = build_model(args, info, ckpt or args.init)
    opt = make_optimizer(model, args, info["device"])
    data_key = dict(n_rows=len(rows), batch_size=args.batch_size, seed=args.seed, total=total)
    if ckpt:
        restore(ckpt, model, opt, args, info, data_key)
        log(f"resumed from {ckpt} (step {start} of {total})")
    n_params = sum(p.numel() for p in raw.parameters())
    warmup = max(1, int(args.warmup_frac * total))
    cfg = dict(stage="sft", **vars(args), kind=kind, world_size=info["world_size"], n_params=n_params,
               train_rows=len(rows), eval_rows=len(eval_rows), steps_per_epoch=per_epoch, steps=total,
               warmup_steps=warmup)
    if info["master"]:
        common.save_config(args.out, cfg)
    log(f"{n_params / 1e6:.1f}M parameters, {len(rows)} train rows ({kind}), {len(eval_rows)} eval, "
        f"{total} steps of {args.batch_size} ({args.grad_accum} x {args.micro_batch} x "
        f"{info['world_size']}), {args.precision} on {info['device']}")
    return types.SimpleNamespace(args=args, info=info, log=log, tok=tok, rows=rows, eval_rows=eval_rows,
                                 model=model, raw=raw, autocast=autocast, opt=opt, start=start,
                                 total=total, warmup=warmup, per_epoch=per_epoch, n_params=n_params,
                                 cfg=cfg, data_key=data_key)


def step_metrics(R, step, loss, gnorm, lr, dt, ntok):
    """The per-step log record (eval loss added by the caller)."""
    import torch
    m = dict(loss=loss, lr=lr, gnorm=gnorm, epoch=step / R.per_epoch, tokens=ntok, **{"tok/s": ntok / dt})
    u = common.mfu(6 * R.n_params * ntok / dt / R.info["world_size"], R.info["device"])
    if u is not None:
        m["mfu"] = u  # per GPU, 6N FLOPs per token
    if R.info["device"].startswith("cuda"):
        m["mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return m


def save_step(R, done):
    """Checkpoint after `done` steps (HF folder + resume state), then prune old ones."""
    state = dict(step=done, epoch=(done - 1) // R.per_epoch, batch_in_epoch=(done - 1) % R.per_epoch + 1,
                 data=R.data_key)
    save_checkpoint(common.ckpt_dir(R.args.out, done), R.model, R.raw, R.opt, R.tok, R.info, R.args,
                    dict(R.cfg, steps=done), state)
    if R.info["master"]:
        common.prune_checkpoints(R.args.out, R.args.keep)


def train(args):
    """Run SFT as `args` says; returns the final/ folder (None when stopped or not saving)."""
    from tqdm import tqdm
    R = setup(args)
    args, info, out, master = R.args, R.info, R.args.out, R.info["master"]
    ev = lambda: evaluate(R.model, R.eval_rows, args, info, R.autocast, R.tok.pad_token_id)  # noqa: E731
    run = None
    if master and args.wandb:
        import wandb
        run = wandb.init(project=args.wandb, name=os.path.basename(os.path.abspath(out)),
                         config=R.cfg, resume="allow")
    R.model.train()
    if R.eval_rows and R.start == 0:  # the held-out loss before training, as step 0
        m0 = dict(eval_loss=ev())
        if master:
            common.log_step(out, 0, m0, keys=["eval_loss"])
    keys = ["loss", "eval_loss", "lr", "gnorm", "tok/s", "mfu", "mem_gb"]
    bar = tqdm(total=R.total, initial=R.start, desc="sft", unit="step", disable=not master)
    t_start = time.time()
    with contextlib.redirect_stdout(_TqdmStdout(sys.stdout)) if master else contextlib.nullcontext():
        for step in range(R.start, R.total):
            idx = batch_rows(step, len(R.rows), args.batch_size, args.seed)
            lr = lr_at(step, R.total, args.lr, R.warmup, args.min_lr_frac)
            t0 = time.time()
            loss, gnorm = train_step(R.model, R.opt, idx, R.rows, args, info, R.autocast,
                                     R.tok.pad_token_id, lr)
            m = step_metrics(R, step, loss, gnorm, lr, time.time() - t0,
                             sum(row_len(R.rows[i]) for i in idx))
            done = step + 1
            if R.eval_rows and ((args.eval_every and done % args.eval_every == 0) or done == R.total):
                m["eval_loss"] = ev()
            if master:  # eta from the steps this process has done
                common.log_step(out, done, m, keys=keys, total=R.total, t_start=t_start, start=R.start)
                if run:
                    run.log(m, step=done)
            bar.update(1)
            if args.save and args.save_every and done % args.save_every == 0 and done < R.total:
                save_step(R, done)
            if args.stop_after and args.stop_after <= done < R.total:
                R.log(f"--stop-after {args.stop_after}: stopping as if killed")
                bar.close()
                common.cleanup_dist(info)
                return None
    bar.close()
    final = None
    if args.save:
        final = os.path.join(out, "final")
        save_checkpoint(final, R.model, R.raw, R.opt, R.tok, info, args, R.cfg, None)
        R.log(f"saved {final}")
    if run:
        run.finish()
    common.cleanup_dist(info)
    return final


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_settings(ap, SETTINGS)
    args = ap.parse_args(argv)
    args.model = common.model_and_init(args.model, args.init)
    for ok, msg in checks(args):
        if not ok:
            ap.error(msg)
    return args


def checks(a):
    """(condition, message) pairs every run must meet, checked at parse time."""
    return [
        (min(a.epochs, a.batch_size, a.micro_batch, a.max_len, a.eval_max, a.keep) > 0,
         "--epochs, --batch-size, --micro-batch, --max-len, --eval-max, --keep must be > 0"),
        (min(a.max_steps, a.eval_every, a.save_every, a.stop_after, a.synthetic) >= 0,
         "--max-steps, --eval-every, --save-every, --stop-after, --synthetic must be >= 0"),
        (a.lr > 0 and a.weight_decay >= 0 and a.grad_clip >= 0,
         "--lr must be > 0, --weight-decay and --grad-clip >= 0"),
        (0 <= a.min_lr_frac <= 1 and 0 <= a.warmup_frac <= 1 and 0 <= a.eval_frac < 1,
         "--min-lr-frac and --warmup-frac must lie in [0, 1], --eval-frac in [0, 1)"),
        (0 <= a.beta1 < 1 and 0 <= a.beta2 < 1, "--beta1 and --beta2 must lie in [0, 1)"),
        (not (a.resume and a.overwrite), "--resume and --overwrite exclude each other"),
        (a.overlong in ("drop", "truncate"), "--overlong must be drop or truncate"),
        (a.precision in ("auto", "bf16-mixed", "bf16", "fp32"), "--precision must be auto, bf16-mixed, bf16 or fp32"),
        *[(common.model_name_problem(m) is None, f"--{k}: {common.model_name_problem(m)}")
          for k, m in (("model", a.model), ("init", a.init)) if m is not None],
    ]


def main(argv=None):
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # "Loading weights" bars would break the per-step lines
    try:
        train(args)
    except common.DataError as e:      # one line naming the file and line, exit 2
        common.die(f"bad data: {e}", "sft.py")


if __name__ == "__main__":
    main()
