"""
What several stages share, and nothing else: model/tokenizer loading and aliases, the
tiny offline model, random-initialised models of real shapes, distributed setup, checkpoint
and run folders, the flags that mean the same in every script, the one-line-per-step log,
and the redaction of API keys. JSON / JSONL files and settings tables live in basics.py
(re-exported here).

    python common.py --make-tiny      # build the tiny model now (normally done on first use)
    python common.py --count qwen2.5-3b llama-3.2-3b   # parameter counts of the 3B shapes
"""
import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time

# the files-and-flags layer, re-exported: the stages call common.write_jsonl, common.DataError, ...
from basics import (DataError, add_settings, append_jsonl, atomic_write_text, fill_defaults,  # noqa: F401
                    passed_flags, read_jsonl, read_jsonl_tolerant, write_json, write_jsonl)

REPO = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("CBM_CACHE", os.path.join(REPO, ".cache"))  # where `tiny` is built

# --model aliases -> hub ids. `tiny` is built locally; `random:<alias>` is that
# architecture with random weights (for benchmarks: throughput does not depend on weights).
ALIASES = {
    "qwen2.5-3b": "Qwen/Qwen2.5-3B",
    "qwen2.5-3b-instruct": "Qwen/Qwen2.5-3B-Instruct",
    "qwen2.5-32b-instruct": "Qwen/Qwen2.5-32B-Instruct",
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
    "llama-3.1-70b": "meta-llama/Llama-3.1-70B",
}

# Published config.json values of the two 3B models the study trains (same shapes, no download).
ARCH_CONFIGS = {
    "qwen2.5-3b": dict(model_type="qwen2", hidden_size=2048, intermediate_size=11008,
                       num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                       vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                       rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
                       bos_token_id=151643, eos_token_id=151643),
    "llama-3.2-3b": dict(model_type="llama", hidden_size=3072, intermediate_size=8192,
                         num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
                         head_dim=128, vocab_size=128256, max_position_embeddings=131072,
                         rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         hidden_act="silu", bos_token_id=128000, eos_token_id=128001,
                         rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                           high_freq_factor=4.0,
                                           original_max_position_embeddings=8192)),
}

# The tiny model: a small Llama. Big enough to learn Countdown formatting on a CPU in
# minutes, small enough for CI. Sizes are arguments so a GPU user can grow it.
TINY = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048)
TINY_VOCAB = 1024
SPECIAL = dict(bos="<|bos|>", eos="<|endoftext|>", pad="<|pad|>", unk="<|unk|>")
TAGS = ["<think>", "</think>", "<answer>", "</answer>"]  # whole tokens in the tiny vocabulary


# ---------------------------------------------------------------------------------
# checkpoint folders and run folders (JSON / JSONL files: basics.py)

def atomic_save_dir(path, save_fn):
    """save_fn(tmp_dir) fills a temporary folder, which then replaces path.

    The old folder is moved aside before the rename and deleted after, so at every
    moment either the old or the new complete folder exists under a known name.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(path))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 folders; a checkpoint reads like any other
    try:
        save_fn(tmp)
        old = None
        if os.path.exists(path):
            old = path + ".old"
            if os.path.exists(old):
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prune_checkpoints(out_dir, keep):
    """Delete all but the newest `keep` checkpoints of out_dir/ckpt (keep <= 0: delete none).
    Each leaves in one rename to a `.tmp-` name first, so a kill mid-delete never leaves half a
    checkpoint under a step's name; remove_orphans clears the rest at the next start."""
    root = os.path.join(out_dir, "ckpt")
    steps = sorted(d for d in os.listdir(root) if d.startswith("step_") and d[5:].isdigit()) \
        if os.path.isdir(root) else []
    for d in steps[:len(steps) - keep] if keep > 0 else []:
        gone = os.path.join(root, ".tmp-deleted-" + d)
        os.replace(os.path.join(root, d), gone)
        shutil.rmtree(gone, ignore_errors=True)


def remove_orphans(parent):
    """Undo what a kill during atomic_save_dir left in parent: `.tmp-*` folders are deleted;
    `X.old` is renamed back to X if X is missing (killed between the two renames), else deleted."""
    if not os.path.isdir(parent):
        return
    for name in os.listdir(parent):
        p = os.path.join(parent, name)
        if name.startswith(".tmp-") and os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        elif name.startswith(".tmp-"):          # a file atomic_write_text did not get to rename
            os.remove(p)
        elif name.endswith(".old") and os.path.isdir(p):
            if os.path.exists(p[:-4]):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.replace(p, p[:-4])


class UsageExit(SystemExit):
    """SystemExit with status 2 whose str() is the message (already printed by die)."""

    def __init__(self, msg):
        super().__init__(2)
        self.msg = msg

    def __str__(self):
        return self.msg


def die(msg, prog=None):
    """A one-line error on stderr and exit status 2 (argparse's convention), no traceback."""
    prog = prog or os.path.basename(sys.argv[0] or "python")
    print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
    raise UsageExit(msg)


RUN_PARTS = ("ckpt", "final", "metrics.jsonl", "rollouts", "val")   # what a training run writes


def claim_run_dir(out, resume, overwrite, parts=RUN_PARTS, mutate=True):
    """Apply --resume / --overwrite to a run folder before anything is written. Without either
    flag a folder holding a run is refused (a new run never splices into an old one); every
    rank checks, so all stop together. With mutate (rank 0): clear what a kill left
    half-written, and --overwrite deletes the old run's parts."""
    found = [p for p in parts if os.path.exists(os.path.join(out, p))]
    if found and not (resume or overwrite):
        die(f"--out {out} already holds a run ({', '.join(found)}); pass --resume to continue it, "
            "--overwrite to start afresh, or choose another --out")
    if not mutate:
        return
    remove_orphans(out)
    remove_orphans(os.path.join(out, "ckpt"))
    for p in found if overwrite else []:
        p = os.path.join(out, p)
        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)


def check_same_settings(out, cfg, free=()):
    """Refuse to --resume a run under other settings than it was started with: the two halves
    would be one run's log from two configurations. cfg: this run's settings; free: names that
    may change (length, logging, speed knobs)."""
    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = json.load(f)
    diff = [k for k in cfg if k not in free and k in old and old[k] != cfg[k]]
    if diff:
        die(f"--resume: {path} was written with other settings ("
            + ", ".join(f"--{k.replace('_', '-')} {old[k]!r} -> {cfg[k]!r}" for k in diff)
            + "); resume with the same settings, or pass --overwrite")


# ---------------------------------------------------------------------------------
# the study's published tables (per-step behaviors and accuracy, priming-set correctness)

STUDY_REPO = "kanishkg/cognitive-behaviors"
STUDY_COMMIT = "9c90d333c6e3b5eafe801cb4cadd5ee973cc8291"   # pinned: the figures never shift under us
STUDY_TABLES = ("llama_results", "qwen_results", "claude_accs")


def study_table(spec):
    """`study:<table>` -> a local copy of the study's results/<table>.csv, downloaded once from
    its public repository at STUDY_COMMIT into CACHE/study/; any other spec is a path, returned
    as is. The tables are the study authors'; we fetch them, never ship them."""
    if not spec or not spec.startswith("study:"):
        return spec
    name = spec.split(":", 1)[1].removesuffix(".csv")
    if name not in STUDY_TABLES:
        raise DataError(f"{spec}: unknown table; the study publishes {', '.join(STUDY_TABLES)}")
    path = os.path.join(CACHE, "study", STUDY_COMMIT[:12], f"{name}.csv")
    if not os.path.exists(path):
        import httpx2   # the HTTP client of the LLM SDKs (requirements.txt)
        url = f"https://raw.githubusercontent.com/{STUDY_REPO}/{STUDY_COMMIT}/results/{name}.csv"
        try:
            r = httpx2.get(url, timeout=60, follow_redirects=True)
            r.raise_for_status()
            atomic_write_text(path, r.text)
        except httpx2.HTTPError as e:
            raise DataError(f"{spec}: could not download {url} ({e}); pass a local copy's path instead")
    return path


# ---------------------------------------------------------------------------------
# the tiny model

def _tiny_corpus():
    """Text the tiny BPE is trained on: prompts, reasoning phrases and arithmetic, built
    from the task generator so the vocabulary fits Countdown. Deterministic."""
    import countdown
    words = ("Let me try another approach. Let's check: that works, so the answer is. "
             "That does not reach the target, go back and start over. Subgoal: get to a number "
             "that we need first. Working backwards from the target, we need to make. "
             "First, then, now, so, but, if, we, can, use, the, numbers, remaining, left, with, "
             "result, gives, equals, close, far, too, high, low, multiply, divide, add, subtract, "
             "instead, again, verify, correct, wrong, not, is, are, this, done, step, get, from")
    tasks = countdown.generate_tasks(400, seed=12345)
    lines = [words] * 20
    for t in tasks:
        lines.append(countdown.make_prompt(t["nums"], t["target"]))
        lines.append(f"{t['solution']} = {t['target']} </think>\n<answer> {t['solution']} </answer>")
    return lines


def build_tiny_tokenizer():
    """A byte-level BPE (so any text round-trips) with digits split one per token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=list(SPECIAL.values()),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_tiny_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL["bos"], eos_token=SPECIAL["eos"],
        pad_token=SPECIAL["pad"], unk_token=SPECIAL["unk"], model_max_length=2048)
    fast.add_tokens(TAGS)  # whole tokens: the model learns the format faster
    fast.padding_side = "left"  # generation pads on the left; training code pads explicitly
    return fast


def build_tiny(path=None, seed=0, **overrides):
    """Create the tiny model + tokenizer as a normal Hugging Face folder and return its path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    path = path or os.path.join(CACHE, "tiny")
    tok = build_tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **{**TINY, **overrides})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)

    def save(tmp):
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    atomic_save_dir(path, save)
    return path


def tiny_path():
    """Path of the tiny model folder, building it on first use."""
    path = os.path.join(CACHE, "tiny")
    if not os.path.exists(os.path.join(path, "config.json")):
        build_tiny(path)
    return path


# ---------------------------------------------------------------------------------
# model loading

def model_name_problem(name):
    """Why `name` cannot be a model (None if it can), decided before any hub call: an alias,
    `tiny`, `random:<arch>`, an existing folder, or a hub id `org/name`.

    >>> model_name_problem("qwen2.5-3b") is None and model_name_problem("Qwen/Qwen2.5-3B") is None
    True
    >>> model_name_problem("llama3").startswith("unknown model 'llama3'")
    True
    """
    if name in ALIASES or name == "tiny" or os.path.isdir(name):
        return None
    if name.startswith("random:"):
        arch = name.split(":", 1)[1]
        return None if arch in ARCH_CONFIGS or arch == "tiny" else \
            f"unknown architecture {arch!r} in {name!r}; known: {', '.join(sorted(ARCH_CONFIGS))}, tiny"
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name and name.count("/") != 1:
        return f"model folder {name!r} does not exist"
    if name.count("/") != 1:
        return (f"unknown model {name!r}: not an alias ({', '.join(sorted(ALIASES))}, tiny, "
                f"random:<{'|'.join(sorted(ARCH_CONFIGS))}|tiny>), a folder or a hub id org/name")
    return None


def resolve_model(name):
    """Alias, hub id or local folder -> what from_pretrained takes."""
    if name == "tiny":
        return tiny_path()
    if os.path.isdir(name):
        return name
    if name in ALIASES:
        return ALIASES[name]
    problem = model_name_problem(name)
    if problem:
        raise FileNotFoundError(problem)
    return name  # a hub id


def attn_implementation(device="cuda"):
    """flash_attention_2 when flash-attn is installed and we are on a GPU, else sdpa."""
    if str(device).startswith("cuda"):
        try:
            import flash_attn  # noqa: F401
            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def random_config(arch):
    """transformers config of a named architecture (ARCH_CONFIGS) or the tiny one."""
    from transformers import AutoConfig
    if arch == "tiny":
        return AutoConfig.from_pretrained(tiny_path())
    if arch not in ARCH_CONFIGS:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCH_CONFIGS)} and tiny")
    kw = dict(ARCH_CONFIGS[arch])
    return AutoConfig.for_model(kw.pop("model_type"), **kw)


def count_params(arch):
    """Parameter count of an architecture without allocating it (meta device)."""
    import torch
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(random_config(arch))
    return sum(p.numel() for p in model.parameters())


def compile_layers(model, limit=64, backend="inductor"):
    """Each decoder layer of model through torch.compile, in place (nn.Module.compile), so that
    the elementwise work between the matmuls (RMSNorm, RoPE, SiLU, residual adds) fuses. On an
    H100 at the Qwen2.5-3B shape this took the PPO actor's forward + backward from 48% to 63%
    MFU and a no-grad log-prob pass from 56% to 76% (bench.py --parts train; README, Speed).
    All layers share one graph per variant (grad mode, mask or none, the first shape or any):
    the recompile limit is raised to `limit` so that no variant falls back to eager. The passes
    must run with use_cache=False (a cache would make each layer a graph of its own). SDPA's
    kernel is fixed when a graph is traced; training passes trace theirs inside
    no_cudnn_attention, and grad mode is part of every graph's guard. backend: torch.compile's
    (tests trace with "aot_eager": no code generation). Returns the layer count."""
    import torch
    from transformers.modeling_layers import GradientCheckpointingLayer
    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, limit)
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.compile(backend=backend)
    return len(layers)


@contextlib.contextmanager
def no_cudnn_attention():
    """Within: SDPA never takes PyTorch's cuDNN attention kernel (memory-efficient attention
    instead). For passes whose backward runs: wrap forward AND backward (a checkpointed layer
    recomputes its forward inside backward, and a forward's kernel picks its backward's).
    cuDNN's backward writes NaN into the query gradient on H100/H200 (PyTorch >= 2.11) when a
    mask is passed, the key length is 64 modulo 128 and some query row's logsumexp is below
    -ln(FLT_MAX) ~ -88.7 (https://github.com/pytorch/pytorch/issues/196678); its forward, dK
    and dV are right, so generation and no-grad passes keep it. Evidence on 4 H100s (PyTorch
    2.11, the miniature, 27 runs side by side): with cuDNN everywhere, 172 of 5,313 PPO steps
    (3.2%) skipped their update (NaN in actor and critic at once) and one run stopped; with it
    off everywhere, none of ~4,300 steps did, but steps took 2.5-4x as long, generation too
    (all_strategies 0.56 -> 7.25 s), which no other change of that run touched (cause not
    isolated on a GPU): hence off only where gradients flow."""
    import torch
    was = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield was
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)


def load_model(name, dtype=None, device="cpu", init=None):
    """A causal LM: weights from `init` if given, else from `name`.

    name: alias, hub id, local folder, or `random:<arch>` (random weights of a known shape).
    dtype: torch dtype; default bf16 on GPU, fp32 on CPU. Training passes run inside
    no_cudnn_attention().
    """
    import torch
    from transformers import AutoModelForCausalLM
    dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
    attn = attn_implementation(device)
    src = init or name
    if src.startswith("random:"):
        cfg = random_config(src.split(":", 1)[1])
        cfg._attn_implementation = attn
        # seeded apart from the caller's RNG: every call, on every rank, gives the same weights,
        # so PPO's policy, reference and critic trunk start equal (step-1 KL exactly 0)
        cuda = [torch.device(device).index or 0] if str(device).startswith("cuda") else []
        with torch.random.fork_rng(devices=cuda), torch.device(device):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        return model
    model = AutoModelForCausalLM.from_pretrained(resolve_model(src), dtype=dtype,
                                                 attn_implementation=attn)
    return model.to(device)


def load_tokenizer(name):
    """Tokenizer for an alias, hub id or folder; pad token set (eos if the model has none).
    `random:<arch>` gets the tiny tokenizer (benchmarks force lengths, text is irrelevant)."""
    from transformers import AutoTokenizer
    if name.startswith("random:"):
        name = "tiny"
    tok = AutoTokenizer.from_pretrained(resolve_model(name))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


# ---------------------------------------------------------------------------------
# distributed setup (plain python or torchrun), nanoGPT style

def setup_dist(device=None):
    """Returns a dict: ddp, rank, local_rank, world_size, master, device.

    Under torchrun (RANK set) it initialises the process group (nccl on GPU, gloo on CPU)
    and pins each rank to its GPU; otherwise it is a single process.
    """
    import torch
    ddp = int(os.environ.get("RANK", -1)) != -1
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if ddp:
        import torch.distributed as dist
        rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
        world = int(os.environ["WORLD_SIZE"])
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    else:
        rank, local_rank, world = 0, 0, 1
    cap = os.environ.get("CBM_GPU_MEM_GB")  # emulate a smaller card (e.g. 80 on an H200)
    if cap and device.startswith("cuda"):
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, float(cap) * 2**30 / total),
                                                   torch.device(device).index or 0)
    return dict(ddp=ddp, rank=rank, local_rank=local_rank, world_size=world,
                master=rank == 0, device=device)


def cleanup_dist(info):
    if info["ddp"]:
        import torch.distributed as dist
        dist.destroy_process_group()


def all_reduce_mean(values, info):
    """Mean over ranks of a dict of floats (identity on one process)."""
    if not info["ddp"]:
        return dict(values)
    import torch
    import torch.distributed as dist
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=info["device"])
    dist.all_reduce(t)
    return {k: v / info["world_size"] for k, v in zip(keys, t.tolist())}


# ---------------------------------------------------------------------------------
# runs: the shared flags, config, per-step log line, checkpoints

# Flags that mean the same in every script that has them: one row each, one wording. A
# script's SETTINGS table takes the row (SHARED["keep"]) rather than writing its own.
SHARED = {row[0]: row for row in [
    ("model", None, str, "architecture + tokenizer: alias, hub id, local folder, tiny or random:<arch>; "
                         "None: --init's folder, else tiny"),
    ("init", None, str, "checkpoint folder whose weights start the run, e.g. out/RUN/final; None: --model's"),
    ("resume", False, bool, "continue the run in --out from its newest checkpoint (a fresh start if it has none)"),
    ("overwrite", False, bool, "delete the run in --out (checkpoints, final/, logs) and start afresh"),
    ("keep", 2, int, "checkpoints kept in --out/ckpt, the newest; older ones are deleted (final/ apart)"),
    ("wandb", None, str, "also log to this Weights & Biases project; None: off"),
]}


def model_and_init(model, init):
    """What --model means when left out: --init's folder (a checkpoint brings its own
    tokenizer: never another model's with its weights), else tiny.

    >>> model_and_init(None, "out/sft/final"), model_and_init("qwen2.5-3b", "out/sft/final"), model_and_init(None, None)
    ('out/sft/final', 'qwen2.5-3b', 'tiny')
    """
    return model or init or "tiny"


def vocab_problem(tokenizer, weights):
    """Why tokenizer cannot drive the weights `weights` names (None if it can): it has ids past
    their embedding table. --model names the tokenizer and --init the weights; this catches a
    pair that differ, from the config alone, before any weights are loaded."""
    from transformers import AutoConfig
    cfg = random_config(weights.split(":", 1)[1]) if weights.startswith("random:") else \
        AutoConfig.from_pretrained(resolve_model(weights))
    n, v = len(tokenizer), cfg.vocab_size
    return (f"--model's tokenizer has {n} tokens, the model only {v}: give --model the checkpoint's "
            "own folder (or leave --model out)") if n > v else None


def save_config(out_dir, cfg):
    write_json(os.path.join(out_dir, "config.json"), cfg)


def run_config(run_dir):
    """A run's config.json as a dict ({} if it has none); malformed JSON is a DataError."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except ValueError as e:   # bad JSON, or bytes that are not UTF-8
        raise DataError(f"{path}: malformed JSON ({getattr(e, 'msg', e)})") from None
    return cfg if isinstance(cfg, dict) else {}


def run_condition(run_dir):
    """A run's condition: config.json's "condition", else the folder name.

    >>> run_condition("/no/such/out/ppo-qwen/")
    'ppo-qwen'
    """
    return str(run_config(run_dir).get("condition") or os.path.basename(os.path.normpath(run_dir)))


def log_step(out_dir, step, metrics, keys=None, total=None, t_start=None, start=0):
    """Append metrics to out_dir/metrics.jsonl and print one console line.

    keys: which metrics go on the console line (all go to the file). The eta is the time since
    t_start per step done since then: start is the step a resumed run began from.
    """
    rec = {"step": step, **{k: (float(v) if hasattr(v, "__float__") else v) for k, v in metrics.items()}}
    append_jsonl(os.path.join(out_dir, "metrics.jsonl"), [rec])
    parts = [f"step {step}" + (f"/{total}" if total else "")]
    for k in keys or metrics:
        v = metrics.get(k)
        if isinstance(v, float):
            parts.append(f"{k} {v:.4g}")
        elif v is not None:
            parts.append(f"{k} {v}")
    if t_start is not None and total:
        el = time.time() - t_start
        parts.append(f"eta {fmt_time(el / max(step - start, 1) * (total - step))}")
    print(" | ".join(parts), flush=True)
    return rec


@contextlib.contextmanager
def profiled(on, out_dir, rank=0, cuda=False, rows=40):
    """Profile the block when `on` (torch.profiler): out_dir/rank<r>.txt gets the top `rows` ops
    by their own GPU time (cuda: the block runs on a GPU; else CPU time), collectives (nccl*)
    included, so one PPO step shows where it goes on each rank. A no-op when off."""
    if not on:
        yield
        return
    import torch
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda) as prof:
        yield
        if cuda:
            torch.cuda.synchronize()   # the block's kernels finish inside the profile
    table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                      row_limit=rows)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, f"rank{rank}.txt"), table + "\n")


def fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def ckpt_dir(out_dir, step):
    return os.path.join(out_dir, "ckpt", f"step_{step:06d}")


def latest_ckpt(out_dir):
    """(step, path) of the newest complete checkpoint under out_dir/ckpt, or (0, None)."""
    root = os.path.join(out_dir, "ckpt")
    if not os.path.isdir(root):
        return 0, None
    steps = sorted(int(d[5:]) for d in os.listdir(root)
                   if d.startswith("step_") and d[5:].isdigit()
                   and os.path.exists(os.path.join(root, d, "trainer_state.json")))
    return (steps[-1], ckpt_dir(out_dir, steps[-1])) if steps else (0, None)


def save_hf(model, tokenizer, path, extra=None, cfg=None):
    """Save model + tokenizer as a Hugging Face folder (safetensors), atomically.

    extra(tmp) may write resume state beside the weights; cfg (the run's resolved
    settings) is written as run_config.json so the next stage can report it.
    """
    def save(tmp):
        m = model.module if hasattr(model, "module") else model
        m.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if cfg is not None:
            write_json(os.path.join(tmp, "run_config.json"), cfg)
        if extra is not None:
            extra(tmp)
    atomic_save_dir(path, save)


def init_report(init):
    """One line about the run that produced a checkpoint (from its run_config.json)."""
    if not init or not os.path.isdir(init):
        return None
    p = os.path.join(init, "run_config.json")
    if not os.path.exists(p):
        return f"init {init}"
    with open(p) as f:
        c = json.load(f)
    keys = [k for k in ("stage", "model", "init", "data", "steps", "epochs") if k in c]
    return f"init {init} (from " + ", ".join(f"{k}={c[k]}" for k in keys) + ")"


def mfu(flops_per_s, device):
    """Model FLOPs utilisation against the GPU's dense bf16 peak (None if unknown)."""
    import torch
    if not str(device).startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    peak = 989e12 if ("H100" in name or "H200" in name) else 312e12 if "A100" in name else None
    return flops_per_s / peak if peak else None


# ---------------------------------------------------------------------------------
# keys: blanked out of everything the LLM clients (llm.py) print or raise

def redact_keys(text, keys, mark="[redacted]"):
    """text with each key blanked, and with every run of 6 or more characters that also occurs
    in a key (a key cut short, a fragment a server echoed): redact first, cut after.

    >>> redact_keys("bad key sk-abc123XYZ; was sk-abc1", ["sk-abc123XYZ"])
    'bad key [redacted]; was [redacted]'
    """
    text, keys = str(text), [k for k in keys if k]
    for k in keys:
        text = text.replace(k, mark)
    grams = {k[i:i + 6] for k in keys for i in range(len(k) - 5)}
    hit = [False] * len(text)
    for i in range(len(text) - 5):
        if text[i:i + 6] in grams:
            hit[i:i + 6] = [True] * 6
    out = [mark if h and not (i and hit[i - 1]) else "" if h else c for i, (c, h) in enumerate(zip(text, hit))]
    return "".join(out)


def _main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--make-tiny", action="store_true", help="(re)build the tiny model in the cache")
    ap.add_argument("--count", nargs="*", default=[], help="print parameter counts of these architectures")
    args = ap.parse_args()
    if args.make_tiny:
        print("tiny model at", build_tiny())
    for arch in args.count:
        print(f"{arch}: {count_params(arch) / 1e9:.2f}B parameters")
    if not args.make_tiny and not args.count:
        ap.print_help(sys.stderr)


if __name__ == "__main__":
    _main()
