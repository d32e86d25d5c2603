"""
Sampling from a policy, in one place: Countdown tasks -> prompts -> responses from the rollout
engine (engine.py, CUDA graphs; vLLM; or transformers generate) -> decoded, scored records.
ppo.py's rollouts and validation, classify.py's sampling mode and mini.py all sample through
here, so a model is sampled and scored the same way before, during and after training.

    import common, sampler
    model, tok = common.load_model("tiny"), common.load_tokenizer("tiny")
    recs = sampler.sample_tasks(model, tok, tasks, n_samples=4, temperature=1.0,
                                opts=sampler.options(max_response_len=256))
    # [{"step", "id", "nums", "target", "prompt", "response", "reward", "correct", "length"}, ...]

Also here: the pieces PPO's loss needs from a sample, namely the response masks (up to and
including the first EOS), token log-probs of logits / T recomputed by the training model, and
the critic (the initial model's trunk with a scalar head) with its values pass.
"""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import countdown
from shard import unwrap

# The sampling flags, one home: ppo.py lists them among its own; other callers take
# options(), these defaults with their own changes.
SETTINGS = [
    # (flag, default, type, help)
    ("template", "base", str, "prompt template: base | qwen-instruct"),
    ("reward", "study", str, "reward rules: study (TinyZero's compute_score on prompt + response) | strict (our exact parser, response only)"),
    ("max_prompt_len", 256, int, "prompt tokens (longer prompts are an error)"),
    ("max_response_len", 1024, int, "response tokens; longer responses are cut"),
    ("engine", "builtin", str, "rollout generator: builtin (engine.py: CUDA graphs) | hf (transformers generate) | vllm"),
    ("stop", None, str, "a string that ends a response like EOS does, e.g. '</answer>' (builtin and vllm engines)"),
    ("vllm_mem", 0.3, float, "--engine vllm: fraction of GPU memory vLLM may take (weights + KV cache)"),
    ("force_response_len", 0, int, "benchmarking: ignore EOS and always generate this many tokens"),
    ("force_lengths", None, str, "benchmarking: ignore EOS and end each response at a length drawn from "
                                 "a distribution: study (sampler.STUDY_LENGTHS, scaled to --max-response-len)"),
]


def options(**changes):
    """The sampling settings (SETTINGS' defaults, seed 0) with changes, for callers without
    ppo.py's flags.

    >>> o = options(max_response_len=64); (o.engine, o.max_response_len, o.reward)
    ('builtin', 64, 'study')
    """
    import types
    opts = {name: default for name, default, *_ in SETTINGS}
    unknown = set(changes) - set(opts) - {"seed"}
    if unknown:
        raise TypeError(f"unknown sampling options {sorted(unknown)}; known: {sorted(opts)}, seed")
    return types.SimpleNamespace(**{**opts, "seed": 0, **changes})


def option_checks(a):
    """(ok, message) pairs for the sampling settings, for a script's parse_args."""
    return [
        (a.template in countdown.TEMPLATES, f"--template must be one of {sorted(countdown.TEMPLATES)}"),
        (a.reward in countdown.REWARD_RULES, f"--reward must be one of {', '.join(countdown.REWARD_RULES)}"),
        (a.engine in ("builtin", "hf", "vllm"), "--engine must be builtin, hf or vllm"),
        (a.stop is None or a.engine != "hf", "--stop needs --engine builtin or vllm"),
        (0 < a.vllm_mem < 1, "--vllm-mem must lie in (0, 1)"),
        (min(a.max_prompt_len, a.max_response_len) > 0, "--max-prompt-len and --max-response-len must be > 0"),
        (a.force_response_len >= 0, "--force-response-len must be >= 0"),
        (a.force_lengths in (None, "study"), "--force-lengths must be study (or left out)"),
        (not (a.force_lengths and a.force_response_len), "--force-lengths and --force-response-len exclude each other"),
        (not a.force_lengths or a.engine != "vllm", "--force-lengths needs --engine builtin or hf"),
    ]


def make_reward(rules="study"):
    """reward_fn(response, task, prompt) -> float with countdown.score's `rules`. `response` is
    decoded with its special tokens (the EOS text too), as the study's reward manager does.

    >>> make_reward("study")("<answer>1 + 2 + 3</answer><|endoftext|>", {"nums": [1, 2, 3], "target": 6},
    ...                      prompt="User: ... Assistant:")
    1.0
    """
    def reward(response, task, prompt=""):
        return countdown.score(response, task["nums"], task["target"], rules=rules, prompt=prompt)
    return reward


# ---------------------------------------------------------------------------------
# tasks -> records

def sample_batch(model, tokenizer, tasks, k, temperature, opts, reward_fn=None):
    """Sample k responses per task in one generate call and score them. Returns a dict: the
    tensors PPO trains on (seq, attn, mask, gen_logp, scores, lengths, clipped: [N, ...],
    responses grouped by task) and the lists records() writes (tasks, prompts, texts,
    score_list), with the seconds spent generating and scoring."""
    reward_fn = reward_fn or make_reward(opts.reward)
    model = unwrap(model)
    device = next(model.parameters()).device
    reps = [t for t in tasks for _ in range(k)]                       # grouped by prompt
    prompts = [countdown.make_prompt(t["nums"], t["target"], opts.template) for t in reps]
    p_ids, p_mask = encode_prompts(tokenizer, prompts, opts.max_prompt_len)
    p_ids, p_mask = p_ids.to(device), p_mask.to(device)
    t0 = time.time()
    resp, r_mask, gen_logp = generate(model, tokenizer, p_ids, p_mask, opts.max_response_len,
                                      opts, temperature)          # [N, R] each
    t_gen = time.time() - t0
    lengths = r_mask.sum(1).long()
    clipped = (lengths >= resp.shape[1]) & (resp[:, -1] != tokenizer.eos_token_id)  # ran out of length
    # the training passes need only the longest response's width, not --max-response-len
    keep = max(1, int(lengths.max()))
    resp, r_mask = resp[:, :keep], r_mask[:, :keep]
    gen_logp = gen_logp[:, :keep] if gen_logp is not None else None
    texts = [tokenizer.decode(resp[i, :lengths[i]], skip_special_tokens=True) for i in range(len(reps))]
    raw = [tokenizer.decode(resp[i, :lengths[i]]) for i in range(len(reps))]   # EOS text kept, as the study
    score_list = [float(reward_fn(r, t, prompt=p)) for r, t, p in zip(raw, reps, prompts)]   # exact, for the logs
    scores = torch.tensor(score_list, dtype=torch.float32)
    return dict(seq=torch.cat([p_ids, resp], 1), attn=torch.cat([p_mask.float(), r_mask], 1).long(),
                mask=r_mask, gen_logp=gen_logp, scores=scores.to(device), score_list=score_list,
                lengths=lengths, clipped=clipped, texts=texts, tasks=reps, prompts=prompts,
                time_generate=t_gen, time_score=time.time() - t0 - t_gen)


def records(b, step):
    """sample_batch's samples as the records ppo.py writes to rollouts/ and val/."""
    return [{"step": step, "id": t.get("id"), "nums": t["nums"], "target": t["target"],
             "prompt": p, "response": txt, "reward": s, "correct": s >= 1.0, "length": int(n)}
            for t, p, txt, s, n in zip(b["tasks"], b["prompts"], b["texts"], b["score_list"],
                                        b["lengths"].tolist())]


def sample_tasks(model, tokenizer, tasks, n_samples=1, temperature=1.0, opts=None, reward_fn=None,
                 batch_tasks=64, step=0, progress=False):
    """n_samples responses to each task (temperature 0: greedy), batch_tasks tasks per
    generate call, scored with reward_fn (default: countdown.score with opts.reward's rules,
    the study's unless changed) -> records (see records()), grouped by task in task order.
    opts: options() or a script's parsed flags; the caller seeds torch for repeatable samples."""
    from tqdm import tqdm
    opts = opts or options()
    batches = range(0, len(tasks), max(1, batch_tasks))
    out = []
    for i in tqdm(batches, desc="sample", unit="batch", disable=not progress):
        b = sample_batch(model, tokenizer, tasks[i:i + batch_tasks], n_samples, temperature, opts, reward_fn)
        out += records(b, step)
    return out


# ---------------------------------------------------------------------------------
# prompts -> token ids -> responses

def encode_prompts(tokenizer, prompts, max_len):
    """Left-padded prompt ids [N, P] and mask [N, P]; an over-long prompt is an error."""
    # no BOS or other special tokens: the study tokenizes prompts with add_special_tokens=False
    # (verl/utils/torch_functional.py, tokenize_and_postprocess_data)
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    if enc.input_ids.shape[1] > max_len:
        raise ValueError(f"a prompt has {enc.input_ids.shape[1]} tokens > --max-prompt-len {max_len}")
    return enc.input_ids, enc.attention_mask


def response_mask(resp, eos_id, pad_id):
    """1 on response tokens up to and including the first EOS, 0 after. resp: [N, R]."""
    is_eos = resp == eos_id
    after = (is_eos.cumsum(1) - is_eos.long()) > 0        # strictly after the first EOS
    return (~after).float()


@torch.no_grad()
def generate(model, tokenizer, prompt_ids, prompt_mask, max_new, opts, temperature=1.0):
    """Responses [N, R], their mask [N, R] (1 up to and including EOS) and the sampler's
    log-probs [N, R] (None from transformers), from the engine that opts.engine names."""
    force = opts.force_response_len
    lengths = draw_lengths(prompt_ids.shape[0], max_new) if getattr(opts, "force_lengths", None) else None
    eng = get_engine(model, tokenizer, opts) if opts.engine != "hf" else None
    if eng is None:
        resp, mask = hf_generate(model, tokenizer, prompt_ids, prompt_mask, max_new, temperature,
                                 max_new if lengths is not None else force)
        if lengths is not None:   # generated to the longest, then cut: the same lengths the engine stops at
            mask = (torch.arange(max_new)[None] < lengths[:, None]).to(mask)
            resp = torch.where(mask > 0, resp, torch.full_like(resp, tokenizer.pad_token_id))
        return resp, mask, None
    stops = [tokenizer.encode(opts.stop, add_special_tokens=False)] if opts.stop else []
    out = eng.generate(prompt_ids, prompt_mask, max_new, temperature=temperature, force_len=force,
                       stop_seqs=stops, **({"lengths": lengths} if lengths is not None else {}))
    if getattr(eng, "release_after", None) is False and eng.device.type == "cuda":
        # keep the cache and graphs only while they are cheap: once a batch's cache has taken
        # over a tenth of the GPU (a 3B model's PPO batch), training wants it back after each call
        need = eng.cache_bytes(prompt_ids.shape[0], prompt_ids.shape[1] + max_new)
        eng.release_after = need > 0.1 * torch.cuda.get_device_properties(eng.device).total_memory
    if getattr(eng, "release_after", False):
        eng.release()
    return out.tokens, out.mask, out.logp


# The study's response lengths, as an inverse CDF for benchmarks (--force-lengths study): the
# quantiles (probability, tokens of a 1,024-token cap) of the mean response length per step of
# the study's Qwen2.5-3B PPO runs, all ten conditions and every logged step (280 rows of its
# results/qwen_results.csv, `plot.py --csv study:qwen_results`): mean 331 tokens, median 354,
# a tail to the cap. Per-step means spread less than single responses do (the study published
# no per-response lengths), so these lengths understate the spread a real step pads over.
STUDY_LENGTHS = [(0.0, 24), (0.1, 131), (0.2, 222), (0.3, 251), (0.4, 336), (0.5, 354), (0.6, 369),
                 (0.7, 389), (0.8, 419), (0.9, 500), (0.95, 586), (0.99, 760), (1.0, 1024)]


def draw_lengths(n, max_len, u=None):
    """n response lengths from STUDY_LENGTHS, scaled from its 1,024-token cap to max_len (at
    least 1). u: uniform draws in [0, 1] (default: from torch's generator).

    >>> draw_lengths(3, 1024, u=torch.tensor([0.0, 0.5, 1.0])).tolist()
    [24, 354, 1024]
    >>> draw_lengths(2, 512, u=torch.tensor([0.5, 0.95])).tolist()
    [177, 293]
    """
    u = torch.rand(n) if u is None else u
    ps = torch.tensor([p for p, _ in STUDY_LENGTHS])
    ts = torch.tensor([float(t) for _, t in STUDY_LENGTHS])
    i = torch.searchsorted(ps, u, right=True).clamp(1, len(ps) - 1)   # u lies in [ps[i-1], ps[i]]
    frac = (u - ps[i - 1]) / (ps[i] - ps[i - 1])
    tokens = ts[i - 1] + frac * (ts[i] - ts[i - 1])
    return (tokens * max_len / 1024).round().long().clamp(1, max_len)


def get_engine(model, tokenizer, opts):
    """The model's engine, made on first use and kept on the model (it holds no weights);
    None (use transformers) for an architecture engine.py does not run."""
    eng = getattr(model, "_rollout_engine", None)
    if eng is None:
        import engine
        if opts.engine == "vllm":
            eng = engine.VLLMEngine(model, tokenizer, opts)
        else:
            try:
                eng = engine.Engine(model, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
            except engine.Unsupported as e:
                print(f"engine.py does not run this model ({e}): sampling with transformers generate")
                opts.engine = "hf"
                return None
            eng.release_after = False
        model._rollout_engine = eng
    return eng


@torch.no_grad()
def hf_generate(model, tokenizer, prompt_ids, prompt_mask, max_new, temperature=1.0, force_len=0):
    """Sample (temperature > 0) or greedy-decode responses with the HF KV-cache generator.

    Returns resp [N, R] (R = max_new; padded with pad id after EOS) and its mask [N, R].
    force_len > 0 ignores EOS (benchmarks need fixed lengths).
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    # Every sampling knob is set explicitly: transformers otherwise applies top_k=50 and
    # whatever a checkpoint's generation_config.json says (Qwen-instruct: top_k 20,
    # top_p 0.8, repetition penalty), and PPO needs samples from the policy itself.
    kw = dict(do_sample=temperature > 0, max_new_tokens=max_new, pad_token_id=pad,
              eos_token_id=None if force_len else eos, repetition_penalty=1.0)
    if force_len:
        kw.update(min_new_tokens=max_new)
    if temperature > 0:
        kw.update(temperature=temperature, top_k=0, top_p=1.0)
    was_training = model.training
    model.eval()
    out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **kw)
    model.train(was_training)
    resp = out[:, prompt_ids.shape[1]:]
    if resp.shape[1] < max_new:
        resp = F.pad(resp, (0, max_new - resp.shape[1]), value=pad)
    mask = torch.ones_like(resp, dtype=torch.float) if force_len else response_mask(resp, eos, pad)
    resp = torch.where(mask > 0, resp, torch.full_like(resp, pad))
    return resp, mask


def position_ids(attn):
    return (attn.long().cumsum(-1) - 1).clamp(min=0)


def attention_mask(model, attn, padded=None):
    """What a training or log-prob pass passes as attention_mask for attn [B, L] (1: token, 0:
    pad). Through SDPA: None where no row has a pad (causal only: SDPA's is_causal), else a
    boolean [B, 1, L, L] mask (causal, real keys only) in which each pad query also sees
    itself. Other attention implementations get attn itself (flash_attention_2 drops pads).
    padded: whether any row has a pad, where the caller knows it from a host copy of attn
    (None: read from attn, which waits for the GPU). A mask built here also spares
    transformers' own check of a 2D mask, which would wait.
    transformers' own mask leaves a left pad's query with no key at all (a -inf logsumexp),
    the edge case attention kernels get wrong: cuDNN's backward writes NaN on such rows
    (pytorch#196678). This is defence in depth, not the fix: that kernel fails on any row whose
    logsumexp is below -88.7, real ones too, so training passes run inside
    common.no_cudnn_attention. Real queries never see a pad either way, so nothing that is kept
    changes. A 4D mask is used as given: a model with sliding-window layers would lose its
    window here (Llama and Qwen2.5 as configured use none). pass_inputs pairs it with the
    position_ids.

    >>> sdpa = type("M", (), {"config": type("C", (), {"_attn_implementation": "sdpa"})})()
    >>> attention_mask(sdpa, torch.tensor([[0, 1, 1]]))[0, 0].int().tolist()
    [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    >>> attention_mask(sdpa, torch.tensor([[1, 1, 1]])) is None
    True
    """
    impl = getattr(getattr(model, "module", model).config, "_attn_implementation", None)
    if impl != "sdpa":
        return attn
    if padded is None:
        padded = not bool(attn.all())
    if not padded:
        return None
    L = attn.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=attn.device).tril()
    return causal & (attn.bool()[:, None, None, :] | torch.eye(L, dtype=torch.bool, device=attn.device))


def pass_inputs(model, attn, padded=None, positions=None):
    """attention_mask and position_ids (positions, or from attn) for a pass over attn
    (attention_mask): pad-free rows get neither, so that transformers checks nothing on the
    host (with the cache off it would look for packed sequences in explicit position_ids)."""
    am = attention_mask(model, attn, padded)
    return {"attention_mask": am,
            "position_ids": None if am is None else position_ids(attn) if positions is None else positions}


def logprobs_from_logits(logits, targets, temperature=1.0, entropy=False, entropy_grad=False):
    """log p(targets) [b, n] from logits [b, n, V] (any float dtype), in fp32, with
    z = logits / temperature: z_t - logsumexp(z). entropy=True adds H = logsumexp(z) -
    sum_i p_i z_i [b, n], differentiable if entropy_grad (the entropy bonus), else detached
    (logged only). On a GPU token_logprobs runs this compiled: the fp32 copy of [b, n, V] is
    never written, forward or backward (eager: ~6 passes over 2.5 GB per micro-batch of
    8 x 512 tokens at a 152k vocabulary)."""
    z = logits.float() / temperature
    lse = torch.logsumexp(z, -1)
    logp = z.gather(-1, targets[..., None]).squeeze(-1) - lse
    if not entropy:
        return logp, None
    if entropy_grad:
        return logp, lse - (torch.softmax(z, -1) * z).sum(-1)
    zd = z.detach()
    return logp, lse.detach() - (torch.softmax(zd, -1) * zd).sum(-1)


_compiled = {}
# The compiled log-probs pay at a real LM's vocabulary (128-152k: GBs of fp32 logits never
# written); at the tiny family's 592 they are a few MB, and the compile (forward and backward)
# is what a miniature PPO run waits on: its first actor update took 74 s, the next ones 0.7 s
# (experiments/mini_ppo_profile.sh, 9 runs side by side on one H200).
COMPILE_VOCAB = 32768


def compiled(fn):
    """fn through torch.compile (dynamic shapes), made once per function."""
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=True)
    return _compiled[fn]


# ---------------------------------------------------------------------------------
# passes over a batch of prompt + response rows: sorted micro-batches, cut to what they use

def device_rows(rows, like):
    """The CPU index tensor rows, ready to index tensors on like's device without the host
    waiting: indexing a CUDA tensor with a CPU index copies the index from pageable memory,
    which waits for everything queued on the GPU; from pinned memory the copy does not."""
    if like.is_cuda and not rows.is_cuda:
        return rows.pin_memory().to(like.device, non_blocking=True)
    return rows


def micro_batches(lengths, micro, rows=None):
    """Index tensors of micro-batches of at most `micro` rows: `rows` (default: all) sorted by
    `lengths` (longest first; each row's response length), so that rows of like length run
    together and each micro-batch pads only to its own longest row (span). The count is
    ceil(rows / micro) whatever the lengths: under FSDP every rank runs as many passes.
    One micro-batch keeps the rows' order.

    >>> [m.tolist() for m in micro_batches(torch.tensor([1, 5, 2, 4]), 2)]
    [[1, 3], [2, 0]]
    """
    rows = torch.arange(len(lengths)) if rows is None else rows
    if len(rows) > micro:
        rows = rows[torch.argsort(lengths[rows.to(lengths.device)].cpu(), descending=True, stable=True)]
    return [rows[i:i + micro] for i in range(0, len(rows), micro)]


def span(attn, n_resp):
    """(lo, r): the columns that rows attn [b, P + n_resp] (prompts left-padded, responses
    right-padded) use: lo, the first with a token in any row (at most P - 1: the last prompt
    column predicts the first response token), and r, the response columns up to the last
    token of the longest response (at least 1). Cutting seq[:, lo:P + r] drops only columns
    no row attends to, so log-probs and values of the rows' tokens are unchanged.

    >>> span(torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0]]), 3)
    (1, 2)
    """
    P = attn.shape[1] - n_resp
    used = attn.sum(0).nonzero().flatten().tolist()
    lo = min(used[0], P - 1) if used else P - 1
    r = max(1, used[-1] - P + 1) if used else 1
    return lo, r


def micro_view(b, m):
    """Rows m (a CPU index tensor) of a batch b (seq and attn [N, P + R], per-token fields
    shaped like b["mask"] [N, R]) cut to the columns they use (span): seq and attn
    [b, lo:P + r], the per-token fields [b, :r]; other fields left out. Only columns no row
    attends to go: a loss over the rows' tokens is unchanged. b["attn_host"], attn on the CPU
    if b has it (ppo.update copies it once), gives the span without waiting for the GPU; the
    view gets its cut as "attn_host"."""
    R = b["mask"].shape[1]
    P = b["attn"].shape[1] - R
    host = b["attn_host"][m] if "attn_host" in b else b["attn"][m].cpu()
    lo, r = span(host, R)
    md = device_rows(m, b["attn"])
    rows = lambda x: x[md if x.device == md.device else m]     # noqa: E731
    v = {k: rows(b[k])[:, lo:P + r] for k in ("seq", "attn")}
    v["attn_host"] = host[:, lo:P + r]
    v.update({k: rows(x)[:, :r] for k, x in b.items() if torch.is_tensor(x) and x.shape == b["mask"].shape})
    return v


def count_padding(pads, attn, n_resp, chunks):
    """Add to pads {"processed", "real", "full"} the tokens a pass over attn's rows in these
    micro-batches processes (each cut to its span), the real ones among them, and what one
    pass at the batch's full width would have processed. perf/pad_waste = 1 - real / processed."""
    if pads is None:
        return
    P = attn.shape[1] - n_resp
    for rows in chunks:
        a = attn[rows]
        lo, r = span(a, n_resp)
        pads["processed"] = pads.get("processed", 0) + len(rows) * (P - lo + r)
        pads["real"] = pads.get("real", 0) + int(a.sum())
        pads["full"] = pads.get("full", 0) + len(rows) * attn.shape[1]


def over_micro_batches(fn, seq, attn, n_resp, micro, pads=None, host=None):
    """fn(seq, attn, r, host) -> tensors [b, r], run on micro-batches of rows of like response
    length (micro_batches), each cut to the columns it uses (span: r response columns; host:
    the cut attn on the CPU), put back together: a list of [N, n_resp] tensors in the rows' own
    order, 0 past each micro-batch's longest response. pads: count_padding's counters.
    host: attn on the CPU (None: one copy here). Micro-batches, spans and padding are read
    from it, so the loop queues every pass without waiting for the GPU in between."""
    N, P = seq.shape[0], seq.shape[1] - n_resp
    host = attn.cpu() if host is None else host
    chunks = micro_batches(host[:, P:].sum(1), micro)
    count_padding(pads, host, n_resp, chunks)
    outs = []
    for rows in chunks:
        h, rd = host[rows], device_rows(rows, seq)
        lo, r = span(h, n_resp)
        outs.append([F.pad(x, (0, n_resp - r))
                     for x in fn(seq[rd, lo:P + r], attn[rd][:, lo:P + r], r, h[:, lo:P + r])])
    res = [torch.cat([o[k] for o in outs]) for k in range(len(outs[0]))]
    if len(chunks) == 1:
        return res                                  # one micro-batch keeps the rows' order
    order = device_rows(torch.cat(chunks), res[0])
    back = torch.empty_like(order).scatter_(0, order, torch.arange(N, device=order.device))
    return [x[back] for x in res]


def token_logprobs(model, seq, attn, n_resp, micro, temperature=1.0, entropy=False, entropy_grad=False,
                   pads=None, host=None):
    """Log-probs of the last n_resp tokens of seq [N, L] under model, in micro-batches of rows
    of like response length, each cut to the columns it uses (over_micro_batches).
    Returns logp [N, n_resp] (and entropy [N, n_resp] if asked), 0 past each micro-batch's
    longest response. Grad flows if enabled. pads: count_padding's counters; host: attn on
    the CPU (over_micro_batches)."""
    def fn(s, a, r, h):
        logits = model(input_ids=s, **pass_inputs(model, a, padded=not bool(h.all())), use_cache=False,
                       logits_to_keep=r + 1).logits[:, :-1]                 # [b, r, V]
        f = compiled(logprobs_from_logits) if logits.is_cuda and logits.shape[-1] >= COMPILE_VOCAB \
            else logprobs_from_logits
        lp, ent = f(logits, s[:, -r:], temperature, entropy, entropy_grad)
        return (lp, ent) if entropy else (lp,)
    res = over_micro_batches(fn, seq, attn, n_resp, micro, pads, host)
    return (res[0], res[1]) if entropy else res[0]


# ---------------------------------------------------------------------------------
# the critic: PPO's value model and its pass

class Critic(nn.Module):
    """The initial model's transformer trunk with a scalar value head instead of the LM head."""

    def __init__(self, lm):
        super().__init__()
        self.trunk = lm.base_model
        self.head = nn.Linear(lm.config.hidden_size, 1, dtype=torch.float32,
                              device=next(lm.parameters()).device)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask, position_ids, n_resp, padded=None):
        """padded: whether any row has a pad, if the caller knows it from a host copy
        (sampler.pass_inputs); a bool, as DDP and FSDP move tensor arguments to the GPU."""
        h = self.trunk(input_ids=input_ids, **pass_inputs(self.trunk, attention_mask, padded, position_ids),
                       use_cache=False).last_hidden_state   # [B, L, H]
        # the value of the state *before* each response token: positions -n_resp-1 .. -2
        # [B, n_resp]; a copy, not a view: FSDP2 warns that in-place ops on a view would skip its hook
        return self.head(h[:, -n_resp - 1:-1].float()).squeeze(-1).clone()


def critic_values(critic, seq, attn, n_resp, micro, pads=None, host=None):
    """Values [N, n_resp] in micro-batches of rows of like length, each cut to the columns it
    uses (host: attn on the CPU, over_micro_batches)."""
    return over_micro_batches(lambda s, a, r, h: (critic(s, a, position_ids(a), r, not bool(h.all())),),
                              seq, attn, n_resp, micro, pads, host)[0]
