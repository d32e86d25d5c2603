"""
FSDP2 (torch.distributed.fsdp.fully_shard) for the training scripts, in one place: how a model
is sharded, how its full weights and optimizer state are gathered for a checkpoint and put
back on resume (under any number of ranks), and the full-weight replica that rollouts read.
sft.py --fsdp and ppo.py under torchrun use it, and ppo.py its collectives over the ranks.

    model = shard.shard_model(model, torch.bfloat16)         # fp32 shards, bf16 compute
    opt = torch.optim.AdamW(model.parameters(), fused=True)  # its states sharded like the params
    sd, osd = shard.gathered_state(model, opt, fsdp=True)    # full CPU copies (collective)

Layout: one FSDP unit per decoder layer (the model's `_no_split_modules`), then the root. Each
rank holds 1/N of every parameter (the fp32 master weights themselves), of its gradient and of
its AdamW states, on its GPU; a unit's full weights exist, in the compute dtype, only while it
computes (all-gathered, then freed), and gradients are reduce-scattered in fp32.
Memory per rank for a 3B model: 16 bytes a parameter / N (~6 GB at N = 8), instead of the
fp32 masters and AdamW states of the whole model on every rank.
"""
import copy

import torch

_IMPL = ("foreach", "fused", "capturable", "differentiable")   # how a step runs, not what it holds


def shard_model(model, compute_dtype=None, full_precision=()):
    """fully_shard every decoder layer of model (any `_no_split_modules` class of it or of a
    submodule), the modules in full_precision (computed in their own dtype: e.g. a critic's
    fp32 value head), then the root. compute_dtype: the dtype the all-gathered weights take
    (None: the parameters' own, and gradients are reduced in it too; else they are reduced in
    fp32). Returns model."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype,
                              reduce_dtype=torch.float32 if compute_dtype is not None else None)
    blocks = set()
    for m in model.modules():
        blocks |= set(getattr(m, "_no_split_modules", None) or [])
    for m in model.modules():
        if type(m).__name__ in blocks:
            fully_shard(m, mp_policy=mp)
    for m in full_precision:
        fully_shard(m, mp_policy=MixedPrecisionPolicy())
    fully_shard(model, mp_policy=mp)
    return model


def grad_sync(model, sync):
    """The context of one micro-batch's backward: do the ranks' gradients meet in it (sync) or
    accumulate on each rank until a later backward? FSDP2: set_requires_gradient_sync
    (unsynced, a unit keeps its whole gradient in the reduce dtype, fp32: 4 bytes a parameter
    on every rank, until the backward that syncs reduce-scatters the sum once); DDP: no_sync();
    one process: nothing to do."""
    import contextlib
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)
    elif not sync and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def unwrap(model):
    """The model inside a DDP wrapper (the model itself otherwise: FSDP2 shards in place)."""
    return model.module if hasattr(model, "module") else model


def is_sharded(model):
    """Whether model's parameters are FSDP2 shards (DTensors)."""
    from torch.distributed.tensor import DTensor
    return model is not None and any(isinstance(p, DTensor) for p in model.parameters())


def full(t):
    """The whole tensor of a DTensor (an all-gather: collective), else t."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def gathered_state(model, opt, fsdp):
    """(model state dict or None, optimizer state dict or None) as full CPU tensors.

    Under FSDP both are gathered from the shards (a collective: every rank calls it; rank 0
    gets the tensors, the others empty dicts), the optimizer's keyed by parameter name;
    otherwise the model saves itself and the optimizer's own state_dict is used.
    """
    if not fsdp:
        return None, (opt.state_dict() if opt is not None else None)
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    o = StateDictOptions(full_state_dict=True, cpu_offload=True)
    osd = get_optimizer_state_dict(model, opt, options=o) if opt is not None else None
    return get_model_state_dict(model, options=o), osd


def load_optimizer(model, opt, state, fsdp):
    """Put a saved optimizer state back: under FSDP a full, name-keyed one (gathered_state's),
    each rank keeping its shard; else the optimizer's own format."""
    if not fsdp:
        return opt.load_state_dict(state)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(model, opt, optim_state_dict=live_impl(state, opt),
                             options=StateDictOptions(full_state_dict=True))


def live_impl(state, opt):
    """A saved optimizer state with each group's implementation switches (fused, foreach, ...)
    taken from the live optimizer: a state saved on GPUs (fused) resumes on a CPU and back."""
    groups = [{**g, **{k: live[k] for k in _IMPL if k in live}}
              for g, live in zip(state["param_groups"], opt.param_groups)]
    return {**state, "param_groups": groups}


def named_optim_state(state, names):
    """A torch optimizer's state_dict, whose parameters are numbered in `names`' order, keyed by
    parameter name instead: the format gathered_state writes under FSDP, so one checkpoint
    format serves one process, DDP and FSDP at any number of ranks.

    >>> sd = {"state": {1: {"step": 3}}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}
    >>> named_optim_state(sd, ["a", "b"])
    {'state': {'b': {'step': 3}}, 'param_groups': [{'lr': 0.1, 'params': ['a', 'b']}]}
    """
    return {"state": {names[i]: s for i, s in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}


def indexed_optim_state(state, names):
    """named_optim_state's inverse: parameters numbered in `names`' order.

    >>> indexed_optim_state({"state": {"b": {"step": 3}}, "param_groups": [{"params": ["a", "b"]}]}, ["a", "b"])
    {'state': {1: {'step': 3}}, 'param_groups': [{'params': [0, 1]}]}
    """
    idx = {n: i for i, n in enumerate(names)}
    missing = [n for g in state["param_groups"] for n in g["params"] if n not in idx]
    if missing:
        raise ValueError(f"the saved optimizer state has parameters this model lacks: {missing[:3]}")
    return {"state": {idx[n]: s for n, s in state["state"].items()},
            "param_groups": [{**g, "params": [idx[n] for n in g["params"]]} for g in state["param_groups"]]}


def checkpoint_state(model, opt, fsdp):
    """(full model state dict or None, optimizer state keyed by parameter name, {name: fp32
    master} or None) of a bare model (not DDP-wrapped) and its optimizer, in the format every
    run writes, one process, DDP or FSDP: under FSDP gathered from the shards (collective; the
    weights are the fp32 masters), else the model saves itself and a MasterAdamW's fp32
    copies come separately."""
    from optim import MasterAdamW
    if fsdp:
        return (*gathered_state(model, opt, True), None)
    names = [n for n, p in model.named_parameters() if p.requires_grad]   # the optimizers' order
    if isinstance(opt, MasterAdamW):
        sd = opt.state_dict()
        return None, named_optim_state(sd["opt"], names), dict(zip(names, sd["master"]))
    return None, named_optim_state(opt.state_dict(), names), None


def restore_optimizer(model, opt, saved, masters, fsdp):
    """Put checkpoint_state's optimizer state back into opt, whichever way the run that wrote it
    was sharded, at any number of ranks. masters(): {name: fp32 weight} for a MasterAdamW
    (called only for one). A state saved before states were keyed by name loads as it is."""
    from optim import MasterAdamW
    if fsdp:
        return load_optimizer(model, opt, saved, True)
    if "opt" in saved or any(not isinstance(n, str) for g in saved["param_groups"] for n in g["params"]):
        return opt.load_state_dict(saved)                              # the earlier format
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if isinstance(opt, MasterAdamW):
        m = masters()
        return opt.load_state_dict({"opt": live_impl(indexed_optim_state(saved, names), opt.opt),
                                    "master": [m[n].float() for n in names]})
    opt.load_state_dict(live_impl(indexed_optim_state(saved, names), opt))


class WithState:
    """What common.save_hf needs from a model, with explicit (gathered) weights."""
    def __init__(self, model, state_dict):
        alias = ({n for n, _ in model.named_parameters(remove_duplicate=False)}
                 - {n for n, _ in model.named_parameters()})  # tied copies, e.g. lm_head.weight
        self.model = model
        self.state_dict = {k: v for k, v in state_dict.items() if k not in alias}

    def save_pretrained(self, path, **kw):
        self.model.save_pretrained(path, state_dict=self.state_dict, **kw)


# ---------------------------------------------------------------------------------
# the rollout replica: full weights for the engine and transformers generate

def replica(model, dtype):
    """A plain (unsharded) copy of a sharded Hugging Face model, in dtype on the model's
    device, for generation: the engine reads whole weight matrices, which FSDP keeps only
    while a unit computes. Bf16 on a GPU: 2 bytes a parameter (6 GB for 3B) on every rank.
    Filled by refresh()."""
    from transformers import AutoModelForCausalLM
    cfg = copy.deepcopy(model.config)
    cfg.use_cache = True
    device = next(model.parameters()).device
    with torch.device(device):
        r = AutoModelForCausalLM.from_config(cfg, dtype=dtype,
                                             attn_implementation=model.config._attn_implementation)
    r.requires_grad_(False).eval()
    refresh(r, model)
    return r


@torch.no_grad()
def refresh(rep, model):
    """Copy the sharded model's current weights into its replica, one parameter at a time
    (each shard cast to the replica's dtype first, then all-gathered: in bf16, half the bytes
    of fp32), into memory release() freed if it did. In place otherwise, so the engine's
    captured CUDA graphs keep reading the right memory. Collective: every rank calls it, at
    the same point."""
    src = dict(model.named_parameters())
    for name, p in rep.named_parameters():
        if p.untyped_storage().size() == 0:
            p.untyped_storage().resize_(p.numel() * p.element_size())
        p.copy_(full(src[name].detach().to(p.dtype)))


def release(rep):
    """Free the replica's weights until the next refresh(), giving training their memory (2
    bytes a parameter: 6 GB for 3B) back, where nothing holds their addresses: engine.py's
    CUDA graphs do, unless the engine dropped them after its rollout (it does once its cache
    is large, as for a 3B model's PPO batch); transformers generate and vLLM (fed the weights
    before each rollout) hold none."""
    eng = getattr(rep, "_rollout_engine", None)
    if eng is not None and getattr(eng, "release_after", True) is False:
        return
    for p in rep.parameters():
        p.untyped_storage().resize_(0)


# ---------------------------------------------------------------------------------
# collectives over the ranks (identities on one process)

def global_sum(t, dist):
    """t summed over the ranks (t itself on one process)."""
    if not dist["ddp"]:
        return t
    import torch.distributed as tdist
    t = t.to(dist["device"]).clone()
    tdist.all_reduce(t)
    return t


def host_peak_gb():
    """This process's peak resident host memory (Linux reports kB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def all_reduce_max(values, dist):
    """The largest over ranks of a dict of floats (identity on one process)."""
    if not dist["ddp"]:
        return dict(values)
    import torch.distributed as tdist
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=dist["device"])
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return dict(zip(keys, t.tolist()))


def gather_list(items, dist):
    """Every rank's list, concatenated in rank order, on every rank."""
    if not dist["ddp"]:
        return items
    import torch.distributed as tdist
    out = [None] * dist["world_size"]
    tdist.all_gather_object(out, items)
    return [x for part in out for x in part]


def check_in_sync(models, dist):
    """Under torchrun: raise unless every rank holds the same weights. DDP keeps them equal
    only if every rank takes every optimizer step on the same all-reduced gradients; a
    difference would otherwise drift on silently. One float64 checksum per model, compared
    across ranks before each checkpoint (collective: all ranks call it; a background optimizer
    step must have landed first)."""
    if not dist["ddp"] or is_sharded(models[0]):   # FSDP: one copy of each weight, nothing to drift
        return
    import torch.distributed as tdist
    sums = torch.stack([torch.stack([p.detach().double().sum() for p in unwrap(m).parameters()]).sum()
                        for m in models if m is not None]).to(dist["device"])
    every = [torch.empty_like(sums) for _ in range(dist["world_size"])]
    tdist.all_gather(every, sums)
    if any(not torch.equal(e, every[0]) for e in every):
        raise RuntimeError(f"ranks' weights differ (checksums {[e.tolist() for e in every]}): "
                           "DDP lost sync; not saving a checkpoint from rank 0 alone")
