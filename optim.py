"""
The optimiser of PPO's bf16 models: AdamW over fp32 master weights (on the GPU, or on the CPU
with the step in a background thread), and the fp32 gradient sums it is fed.

Why fp32 masters: an update of lr 1e-6 vanishes when added to bf16 weights (8-bit mantissa).
Why fp32 sums: a bf16 .grad rounds at every micro-batch; veRL reduces gradients in fp32 too.
Used by ppo.py; bench.py times the step.
"""
import os

import torch


class MasterAdamW:
    """AdamW over fp32 master copies of low-precision parameters.

    Updates of lr 1e-6 vanish when added to bf16 weights (8-bit mantissa), so the step
    happens on fp32 copies, which may live on the CPU (`device="cpu"`) to fit a 3B policy,
    a 3B critic and a reference on one 80GB GPU; the result is copied back into the model.

    background=True (CPU master, GPU model): step() copies the gradients out and returns;
    the CPU AdamW and the copy back run in a thread while the GPU works on the other model
    (a 3B step is ~7 s of CPU). Call wait() before this model's weights are used again.
    At most one step runs in the background at a time: they would share the same cores.
    """
    _running = None   # the MasterAdamW whose step is in flight

    def __init__(self, params, device, fused=True, background=False, **kw):
        self.params = [p for p in params if p.requires_grad]
        self.master = [p.detach().to(device=device, dtype=torch.float32, copy=True)
                       for p in self.params]
        pin = device == "cpu" and self.params[0].is_cuda
        self.master = [m.pin_memory() if pin else m for m in self.master]
        for m in self.master:
            m.requires_grad_(True)
        # pinned low-precision staging: gradients come down and weights go up through it by
        # DMA, without a pageable bounce (2 bytes/param of host memory)
        self.stage = [torch.empty(p.shape, dtype=p.dtype, pin_memory=True) if pin else None
                      for p in self.params]
        # fused: one kernel (GPU) or one vectorised loop (CPU) over all parameters; measured
        # with bench.py against the default for-each implementation
        self.opt = torch.optim.AdamW(self.master, fused=fused or None, **kw)
        self.param_groups = self.opt.param_groups
        self.background, self.thread, self.error = background, None, None

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, grads=None):
        """grads: fp32 gradients, one per parameter (accumulate_fp32); default: the .grad fields."""
        MasterAdamW.wait_all()
        src = grads if grads is not None else [p.grad for p in self.params]
        stage = self.stage
        if grads is not None and stage[0] is not None:   # fp32 gradients come down through fp32 pinned
            stage = MasterAdamW.fp32_staging(self.params)
        grads = []
        for g, m, s in zip(src, self.master, stage):
            if g is None:
                grads.append(None)
            elif s is not None:
                grads.append(s.copy_(g, non_blocking=True))
            else:
                grads.append(g.to(m.device))
        if self.params[0].is_cuda:
            torch.cuda.synchronize()   # gradients are down; the caller may free or reuse them
        if not self.background:
            return self._apply(grads)
        import threading
        self.thread = threading.Thread(target=self._apply, args=(grads,), daemon=True)
        MasterAdamW._running = self
        self.thread.start()

    @torch.no_grad()
    def _apply(self, grads):
        try:
            for m, g in zip(self.master, grads):
                m.grad = None if g is None else g.float()
            self.opt.step()
            side = torch.cuda.Stream(self.params[0].device) if self.stage[0] is not None else None
            for p, m, s in zip(self.params, self.master, self.stage):
                m.grad = None  # 4 bytes/param of host memory we need not keep between steps
                if s is None:
                    p.copy_(m)
                else:          # through the staging buffer, then DMA it up (rounded on the CPU if bf16)
                    s.copy_(m)
                    with torch.cuda.stream(side):
                        p.copy_(s, non_blocking=True)
            if side is not None:
                side.synchronize()
        except BaseException as e:   # re-raised by wait() in the main thread
            self.error = e

    def wait(self):
        """Block until this optimiser's background step (if any) has written the weights."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
            if MasterAdamW._running is self:
                MasterAdamW._running = None
        if self.error is not None:
            e, self.error = self.error, None
            raise RuntimeError("background optimizer step failed") from e

    _gflat = None   # fp32 pinned staging for fp32 gradients, shared by every MasterAdamW

    @staticmethod
    def fp32_staging(params):
        """Views of one pinned fp32 buffer shaped like params. One buffer serves the actor and the
        critic: only one step is in flight at a time (wait_all), and 4 bytes/param of pinned host
        memory per model would not fit a 3B actor + critic on a 128 GB host (measured: killed)."""
        need = sum(p.numel() for p in params)
        if MasterAdamW._gflat is None or MasterAdamW._gflat.numel() < need:
            MasterAdamW._gflat = None
            MasterAdamW._gflat = torch.empty(need, dtype=torch.float32, pin_memory=True)
        return [v.view(p.shape) for v, p in
                zip(MasterAdamW._gflat[:need].split([p.numel() for p in params]), params)]

    @staticmethod
    def wait_all():
        if MasterAdamW._running is not None:
            MasterAdamW._running.wait()

    def state_dict(self):
        self.wait()
        return {"opt": self.opt.state_dict(), "master": [m.detach() for m in self.master]}

    def load_state_dict(self, sd):
        self.wait()
        self.opt.load_state_dict(sd["opt"])
        with torch.no_grad():
            for p, m, saved in zip(self.params, self.master, sd["master"]):
                m.copy_(saved)
                p.copy_(saved)


def make_optimizer(module, lr, args, device, sharded=False):
    """Plain AdamW for fp32 models (sharded: FSDP's fp32 shards, fused on the GPU); MasterAdamW
    (fp32 master, maybe on CPU) for bf16 ones."""
    kw = dict(lr=lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)
    params = list(module.parameters())
    if all(p.dtype == torch.float32 for p in params):   # FSDP's shards: the states are sharded alike
        fused = sharded and str(device).startswith("cuda")
        return torch.optim.AdamW([p for p in params if p.requires_grad], fused=fused or None, **kw)
    where = args.optim_device
    if where == "auto" and not str(device).startswith("cuda"):
        where = "cpu"
    if where == "auto":
        # fp32 master + 2 Adam states = 12 bytes/param for the actor and the critic
        n = sum(p.numel() for p in params)
        total = torch.cuda.get_device_properties(device).total_memory
        where = "cuda" if 2 * 12 * n < 0.45 * total else "cpu"
    if where == "cpu":  # torchrun sets OMP_NUM_THREADS=1; the CPU Adam step needs the cores (those
        # this process may run on: bench.py --concurrent gives each run its share)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(torch.get_num_threads(), cores // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    # on the CPU the step runs in the background, hidden behind the other model's GPU work
    return MasterAdamW(params, device=device if where == "cuda" else "cpu",
                       background=where == "cpu" and str(device).startswith("cuda"), **kw)


def set_lr(opt, base_lr, step, warmup):
    lr = base_lr * min(1.0, (step + 1) / warmup) if warmup else base_lr
    for g in opt.param_groups:
        g["lr"] = lr
    return lr


def accumulate_fp32(params, acc):
    """acc[i] += params[i].grad in fp32, then drop .grad: the sum over micro-batches of bf16
    weights' gradients is kept in fp32 (a bf16 .grad would round at every micro-batch).
    acc: None on the first micro-batch. Returns the list of fp32 sums."""
    if acc is None:
        acc = [None if p.grad is None else p.grad.float() for p in params]
    else:
        for i, p in enumerate(params):
            if p.grad is not None:
                acc[i] = p.grad.float() if acc[i] is None else acc[i].add_(p.grad)
    for p in params:
        p.grad = None
    return acc


def all_reduce_mean_(tensors, dist):
    """Average fp32 tensors over the ranks in place (one flat buffer: one collective)."""
    import torch.distributed as tdist
    live = [t for t in tensors if t is not None]
    flat = torch.cat([t.reshape(-1) for t in live])
    tdist.all_reduce(flat)
    flat /= dist["world_size"]
    for t, v in zip(live, torch.split(flat, [t.numel() for t in live])):
        t.copy_(v.view_as(t))


def clip_fp32_(grads, max_norm):
    """Scale grads in place to a total L2 norm <= max_norm (as clip_grad_norm_); returns the norm."""
    live = [g for g in grads if g is not None]
    norm = torch.nn.utils.get_total_norm(live, 2.0)
    torch._foreach_mul_(live, torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return norm
