"""
Sampling from a policy and the log-probs of what it sampled: prompts -> left-padded ids,
responses from the rollout engine (engine.py, CUDA graphs; vLLM; or transformers generate),
their masks (up to and including the first EOS), and token log-probs of logits / T recomputed
by the training model. Used by ppo.py's rollouts and validation, and by bench.py.
"""
import torch
import torch.nn.functional as F


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
def generate(model, tokenizer, prompt_ids, prompt_mask, max_new, args, temperature=1.0):
    """Responses [N, R], their mask [N, R] (1 up to and including EOS) and the sampler's
    log-probs [N, R] (None from transformers), from the engine that args.engine names."""
    force = args.force_response_len
    eng = get_engine(model, tokenizer, args) if args.engine != "hf" else None
    if eng is None:
        resp, mask = hf_generate(model, tokenizer, prompt_ids, prompt_mask, max_new, temperature, force)
        return resp, mask, None
    stops = [tokenizer.encode(args.stop, add_special_tokens=False)] if args.stop else []
    out = eng.generate(prompt_ids, prompt_mask, max_new, temperature=temperature, force_len=force,
                       stop_seqs=stops)
    if getattr(eng, "release_after", False):  # a 3B model's cache is wanted back by training
        eng.release()
    return out.tokens, out.mask, out.logp


def get_engine(model, tokenizer, args):
    """The model's engine, made on first use and kept on the model (it holds no weights);
    None (use transformers) for an architecture engine.py does not run."""
    eng = getattr(model, "_rollout_engine", None)
    if eng is None:
        import engine
        if args.engine == "vllm":
            eng = engine.VLLMEngine(model, tokenizer, args)
        else:
            try:
                eng = engine.Engine(model, eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
            except engine.Unsupported as e:
                print(f"engine.py does not run this model ({e}): rollouts use transformers generate")
                args.engine = "hf"
                return None
            if eng.device.type == "cuda":   # keep cache + graphs only if they are cheap
                need = eng.cache_bytes(args.prompts_per_step * args.samples_per_prompt,
                                       args.max_prompt_len + args.max_response_len)
                eng.release_after = need > 0.1 * torch.cuda.get_device_properties(eng.device).total_memory
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


def compiled(fn):
    """fn through torch.compile (dynamic shapes), made once per function."""
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=True)
    return _compiled[fn]


def token_logprobs(model, seq, attn, n_resp, micro, temperature=1.0, entropy=False, entropy_grad=False):
    """Log-probs of the last n_resp tokens of seq [N, L] under model, in micro-batches.
    Returns logp [N, n_resp] (and entropy [N, n_resp] if asked). Grad flows if enabled."""
    outs, ents = [], []
    for i in range(0, seq.shape[0], micro):
        s, a = seq[i:i + micro], attn[i:i + micro]
        logits = model(input_ids=s, attention_mask=a, position_ids=position_ids(a),
                       logits_to_keep=n_resp + 1).logits[:, :-1]           # [b, n_resp, V]
        fn = compiled(logprobs_from_logits) if logits.is_cuda else logprobs_from_logits
        lp, ent = fn(logits, s[:, -n_resp:], temperature, entropy, entropy_grad)
        outs.append(lp)
        ents.append(ent)
    logp = torch.cat(outs)
    return (logp, torch.cat(ents)) if entropy else logp
