"""
The study in miniature, with no API key and no download: the priming experiment end to end
(priming -> manipulation checks -> PPO -> behavior counts -> tables, curves and a reading) with
models trained from scratch, spread over every visible GPU.

    python mini.py                                  # runs/mini/results.md (4 H100s: ~25 minutes, estimated: README)
    python mini.py --smoke --out /tmp/mini          # CPU smoke test: a few steps (CI, ~1 minute)
    python mini.py --checks-only --seeds 0          # priming and the manipulation checks, no PPO update
    python mini.py --conditions base all_strategies empty_cot --seeds 0 1 2 3
    python mini.py --ppo-steps 500 --base-size '{"hidden_size": 512, "num_hidden_layers": 8}'   # any setting

The base is NOT a pretrained LM (nothing is downloaded): it is a Llama of the `tiny` family
(the same locally built tokenizer; --base-size, ~10M parameters) with random weights,
given a behaviour-free "pretraining" by sft.py on arithmetic text in the miniature's task range
(numbers 1..24, targets 10..25: the study's priming range): single search steps ("13 + 2 = 15.",
one intermediate result and a number, as a search has them), bare calculations that name some
numbers and combine them, and Countdown prompts answered by one such calculation and an <answer>
(right only by chance): it never checks a result against the target, never tries again, never
names a goal and never works backwards (`arithmetic_corpus`; the tests check it with
behavior_rules.py's rules). The aim: a base that reads a prompt's numbers, computes right and writes the
answer format, as the study's Llama-3.2-3B does, but shows none of the four behaviors.

Stages (each a real script run as a subprocess with its command printed; a stage whose output
exists is skipped, so a killed run resumes where it stopped (under the settings that made it, kept in
OUT/mini_settings.json: a changed one is refused, except that a larger --ppo-steps extends every
run from its last checkpoint); every log sits in its run folder;
jobs run --jobs per GPU side by side, each given one GPU by CUDA_VISIBLE_DEVICES):
  1. countdown.py: train and test tasks, 3 numbers in 1..24, targets 10..25 (7,640 such tasks
     are solvable; 4 numbers would make search matter more, a random expression hits the target
     0.5% of the time against 3.4%, but their traces are twice as long: out of this budget).
  2. `mini.py --make-base` and sft.py: the base's random init, its arithmetic corpus and its
     pretraining; mini_checks.py: its single-step arithmetic. Meanwhile gen_priming.py --backend
     symbolic writes each condition's traces on train tasks (the test tasks stay unseen): the
     same tasks and number of records for every condition (no_positive takes the wrong
     all_strategies traces, so it needs extra tasks; empty_cot and dots derive from
     all_strategies, as in the study).
  3. per condition and seed, one chain each: sft.py primes the base on the condition's traces
     (once per condition, by the first of its seeds to get there; every condition with the same
     optimizer steps x sequences; `base` is not primed), then ppo.py runs from the primed model,
     validating before its first update (step 0: the "before PPO" accuracy and the checks'
     samples) and every eval_every steps after, with the same code on the same test tasks;
     classify.py --backend rules counts the behaviors in its logged rollouts.
  4. the manipulation checks (mini_checks.py), printed with their thresholds and which fail as
     soon as every run has validated at step 0, before any PPO result is printed.
  5. OUT/results.md + results.json (mini_report.py): the checks, validation accuracy before and after PPO (mean
     +- std and min-max over seeds) beside the study's Llama-3.2-3B, behavior counts at PPO's
     start and end, the curves (plot.py, OUT/figures) and a reading computed from the numbers.
Every setting is a flag (SETTINGS below; --help lists them) and is the same for every
condition: only the priming data differ. Nothing is tuned per condition or after seeing a condition's result.
"""
import argparse
import json
import os
import queue
import random
import shlex
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import basics
import countdown
import mini_checks
import mini_report
from gen_priming import ALL_CONDITIONS, CONDITIONS
from symbolic import PHRASES, fmt_list
from pipeline import resume_or_overwrite, run, stop_children_on_signals

REPO = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------------------------
# settings: GPU defaults, each a flag (--help lists them); SMOKE below replaces them for the CPU
# smoke test. Fixed before any condition's result was seen; the same for every condition.

SETTINGS = [
    # (flag, default, type, help)
    ("out", "runs/mini", str, "where data, runs, checks, figures and results go"),
    ("smoke", False, bool, "CPU smoke test: SMOKE's tiny sizes (listed below) where no flag sets them"),
    ("force", False, bool, "re-run stages whose outputs exist"),
    ("checks_only", False, bool, "stop after the manipulation checks: the base, the priming and each run's "
                                 "validation before PPO (ppo.py --steps 0, into OUT/checks/), no PPO update: "
                                 "for calibrating the miniature"),
    ("make_base", False, bool, "the stage that writes the base's random init and arithmetic corpus into "
                               "--out, then exits (mini.py runs it with the resolved --base-* settings)"),
    ("conditions", ["base", *CONDITIONS], list, "base (PPO from the unprimed base) and/or gen_priming.py's "
                                                f"conditions: {', '.join(ALL_CONDITIONS)}"),
    ("seeds", [0, 1, 2], list[int], "PPO runs per condition, one per seed (each condition is primed once)"),
    ("gpus", None, list[int], "GPU ids the jobs spread over; None: every visible one"),
    ("jobs", None, int, "jobs side by side per GPU; None: 9 on a GPU, 2 on a CPU"),
    ("device", None, str, "cuda | cpu; None: cuda if available"),
    ("dtype", "bf16", str, "GPU compute: bf16 = bf16 compute with fp32 master weights and AdamW states "
                           "(sft.py --precision bf16-mixed, ppo.py --dtype bf16)"),
    ("reference", "study:llama_results", str, "the study's Llama-3.2-3B per-step table (common.study_table): "
                                              "study:llama_results (downloaded once) or a CSV path; "
                                              "unreachable: results without the study's columns"),
    ("n_train", 7300, int, "Countdown training tasks (countdown.py); 7,640 exist in the task range (no_positive "
                           "needs priming_n wrong traces: about half the tasks give one)"),
    ("n_test", 256, int, "Countdown test tasks: PPO's validation, never primed on"),
    ("task_sizes", "3", str, "numbers per task (countdown.py --sizes)"),
    ("num_range", [1, 24], basics.json_value, "task numbers [min, max] as JSON, every stage (the study's priming range)"),
    ("target_range", [10, 25], basics.json_value, "targets [min, max] as JSON, every stage (the study's priming range)"),
    ("base_size", dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                       num_key_value_heads=2), basics.json_value,
     "the base's architecture as JSON: overrides of the tiny family's config (~9.8M parameters)"),
    ("base_docs", 80000, int, "documents in the base's arithmetic pretraining corpus"),
    ("base_epochs", 2, int, "base pretraining: passes over the corpus"),
    ("base_format_frac", 0.4, float, "share of documents that are a prompt + one forward calculation + <answer>"),
    ("base_restate", 0.0, float, 'share of calculations restated as one equation, "So (16 - 4) + 10 = 22." '
                                 "(0.5 measured: closing checks right more often, numbers used less: "
                                 "docs/mini/calibration2.md)"),
    ("base_len", 512, int, "base pretraining: packed rows of this many tokens"),
    ("base_batch", 32, int, "base pretraining: rows per step"),
    ("base_lr", 1e-3, float, "base pretraining: peak learning rate (cosine to 0.1 x it)"),
    ("arith_lines", 1000, int, 'the base\'s arithmetic check: held-out "a op b =" lines (mini_checks.py)'),
    ("priming_n", 3000, int, "priming traces per condition (the study: ~1000; 1,000 left 10 of 34 checks failing: "
                             "docs/mini/calibration3.md)"),
    ("priming_budget", 2, int, "symbolic search attempts before it gives up (3 in 5 traces correct)"),
    ("sft_steps", 900, int, "priming SFT steps, every condition (900 x 32 = 28,800 sequences: ~10 epochs of 3,000; 600 left 1-2 checks failing: docs/mini/calibration4.md)"),
    ("sft_batch", 32, int, "priming SFT sequences per step"),
    ("sft_lr", 5e-4, float, "priming SFT learning rate"),
    ("sft_max_len", 608, int, "priming SFT sequence length (the longest traces are ~590 tokens with the prompt)"),
    ("ppo_steps", 350, int, "PPO steps, 2 updates a step: the most that fit 25 minutes on 4 H100s (at the study's 250 "
                            "8 of 9 curves still rose; at 350, 6: README); a re-run with more extends every run"),
    ("ppo_prompts", 64, int, "PPO prompts per step"),
    ("ppo_samples", 4, int, "PPO samples per prompt"),
    ("ppo_response_len", 480, int, "PPO response tokens (the longest priming traces are ~460)"),
    ("ppo_actor_lr", 2e-5, float, "PPO actor learning rate (far above the study's 1e-6, for a 3B model; 5x rose no faster, 15x "
                                    "collapsed: docs/mini/lr_probe)"),
    ("ppo_critic_lr", 1e-4, float, "PPO critic learning rate (far above the study's 1e-5, for a 3B model)"),
    ("ppo_micro", 64, int, "PPO sequences per forward/backward (the loss is the same for any: a token-mean over "
                           "the mini-batch; 64: ~6.4 GB a run, 7 runs share an 80 GB GPU)"),
    ("ppo_engine", None, str, "ppo.py --engine; None: ppo.py's default"),
    ("ppo_save_every", 10, int, "PPO checkpoints every N steps (a killed run resumes from the last: ppo.py --resume)"),
    ("log_rollouts_every", 10, int, "rollouts logged at step 1 and every N steps (classified)"),
    ("eval_every", 25, int, "validation at step 0 and every N steps (the curves)"),
    ("val_size", 128, int, "validation tasks, before and after PPO"),
    ("val_samples", 4, int, "validation samples per task, at temperature 1"),
]
BASE_SETTINGS = ("base_size", "base_docs", "base_format_frac", "base_restate", "num_range", "target_range")  # make_base's
SMOKE = dict(out="runs/mini-smoke", conditions=["base", "all_strategies", "empty_cot"], seeds=[0],
             jobs=2, device="cpu", n_train=200, n_test=16,
             base_size=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1),
             base_docs=64, base_epochs=1, base_len=256, base_batch=8, arith_lines=16, priming_n=16,
             sft_steps=2, sft_batch=4, ppo_steps=2, ppo_prompts=4, ppo_samples=2, ppo_response_len=32,
             ppo_micro=8, log_rollouts_every=1, eval_every=1, val_size=4, val_samples=1)


def parse_args(argv=None):
    """(the flags, the resolved settings: {name: value} of every row, --out made absolute)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter, epilog="--smoke sets, "
                                 f"where no flag does: {shlex.join(basics.settings_argv(SETTINGS, SMOKE, SMOKE))}")
    a = basics.add_settings(ap, SETTINGS).parse_args(argv)
    if a.smoke:
        basics.fill_defaults(a, SMOKE, basics.passed_flags(ap, argv))
    for ok, msg in checks(a):
        if not ok:
            ap.error(msg)
    a.out = os.path.abspath(a.out)
    return a, vars(a).copy()


def checks(a):
    """(condition, message) pairs the resolved settings must meet, checked at parse time."""
    pair = lambda r: isinstance(r, list) and len(r) == 2 and all(type(x) is int for x in r) and r[0] <= r[1]  # noqa: E731
    bad = [c for c in a.conditions if c != "base" and c not in ALL_CONDITIONS]
    return [(not bad, f"--conditions: unknown {bad}; choose from base, {', '.join(ALL_CONDITIONS)}"),
            (a.jobs is None or a.jobs >= 1, "--jobs must be >= 1"),
            (pair(a.num_range) and a.num_range[0] >= 1, "--num-range must be [min, max], integers, 1 <= min <= max"),
            (pair(a.target_range), "--target-range must be [min, max], integers, min <= max"),
            (isinstance(a.base_size, dict), "--base-size must be a JSON object of config fields")]


# ---------------------------------------------------------------------------------
# the base: random init + behaviour-free arithmetic corpus

def _equation(rng, num_range):
    """One line of arithmetic in the forms the priming traces write (values <= MAX_VALUE): a
    search step "13 + 2 = 15.", 40% of the time two steps in one expression "(7 * 3) - 5 = 16."
    or "5 + (7 * 3) = 26.", and 30% of the time read from its value: "15 = 13 + 2."."""
    expr, val = mini_checks.search_step(rng, num_range)
    if rng.random() < 0.4:
        c = rng.randint(*num_range)
        outer = rng.random() < 0.5
        e2, v2 = mini_checks.combine(rng, val, c) if outer else mini_checks.combine(rng, c, val)
        if v2 <= mini_checks.MAX_VALUE:
            op = e2.split()[1]
            expr, val = (f"({expr}) {op} {c}" if outer else f"{c} {op} ({expr})"), v2
    return f"{val} = {expr}." if rng.random() < 0.3 else f"{expr} = {val}."


def _calculation(rng, num_range, target_range, restate=0.0):
    """(nums, target, text, expression, value) of one forward calculation over 2-4 numbers: the
    task in the symbolic writer's neutral opening words, the numbers in a random order, each
    step on the last result; the target is drawn apart, so the result hits it only by chance.
    With probability `restate` the text ends on the whole calculation as one equation
    (`_restatement`)."""
    nums = [rng.randint(*num_range) for _ in range(rng.choice((2, 3, 3, 3, 4)))]
    target = rng.randint(*target_range)
    order = rng.sample(nums, len(nums))
    expr, val, steps = str(order[0]), order[0], []
    for x in order[1:]:
        for _ in range(10):  # a result <= MAX_VALUE where one is at hand, as in the traces
            step, v = mini_checks.combine(rng, val, x)
            if v <= mini_checks.MAX_VALUE:
                break
        val = v
        steps.append(f"{step} = {val}.")
        expr = f"{expr if expr.isdigit() else '(' + expr + ')'} {step.split()[1]} {x}"
    opening = rng.choice(PHRASES["open"]).format(nums=fmt_list(nums), t=target)
    text = " ".join([opening] + steps)
    if restate and rng.random() < restate:
        text += " " + _restatement(expr, val)
    return nums, target, text, expr, val


def _restatement(expr, val):
    """A calculation's steps restated as one equation with the value they reached, the form of
    the priming traces' former closing check ("Verifying: (16 - 4) + 10 = 22, ...") without its
    comparison with the target: it restates, it does not check (behavior_rules.py counts no
    verification in it). Without it a ~10M base saw nested expressions only with values it had
    to compute in one go, and its primed models wrote the target after the closing expression
    whatever the steps had reached.

    >>> _restatement("(16 - 4) + 10", 22)
    'So (16 - 4) + 10 = 22.'
    """
    return f"So {expr} = {val}."


def _worked(rng, num_range, target_range, restate=0.0):
    """A 3-number Countdown prompt answered by one forward calculation and its <answer>, no comment on it."""
    while True:
        nums, target, text, expr, _ = _calculation(rng, num_range, target_range, restate)
        if len(nums) == 3:
            return countdown.make_prompt(nums, target) + f"\n{text}\n</think>\n<answer>{expr}</answer>"


def _paragraph(rng, num_range, target_range, restate=0.0):
    """3-6 bare calculations; with probability `restate`, one of them restated again at the end
    (the expression and value of an attempt further back, as a closing check names them)."""
    calcs = [_calculation(rng, num_range, target_range, restate) for _ in range(rng.randint(3, 6))]
    text = " ".join(c[2] for c in calcs)
    if restate and rng.random() < restate:
        text += " " + _restatement(*rng.choice(calcs)[3:])
    return text


def arithmetic_corpus(n_docs, seed=0, format_frac=0.5, num_range=(1, 24), target_range=(10, 25), restate=0.0):
    """{"text"} documents for the base's "pretraining": format_frac of them a Countdown prompt
    answered by one forward calculation; the rest, half and half, paragraphs of 3-6 bare
    calculations (numbers named, then combined: copying numbers over a short distance first)
    and paragraphs of 3-8 equations. `restate`: the share of calculations restated as one
    equation (`_restatement`; 0 gives the corpus made before it existed). Deterministic."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        u = rng.random()
        if u < format_frac:
            docs.append(_worked(rng, num_range, target_range, restate))
        elif u < (1 + format_frac) / 2:
            docs.append(_paragraph(rng, num_range, target_range, restate))
        else:
            docs.append(" ".join(_equation(rng, num_range) for _ in range(rng.randint(3, 8))))
    return [{"text": d} for d in docs]


def make_base(s):
    """Write OUT/base/init (random weights, the tiny tokenizer) and OUT/data/pretrain.jsonl."""
    import common
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    path = common.build_tiny(os.path.join(s["out"], "base", "init"), seed=0, **s["base_size"])
    n = sum(p.numel() for p in common.load_model(path).parameters())
    common.write_json(os.path.join(s["out"], "base", "base.json"), {"parameters": n, **s["base_size"]})
    docs = arithmetic_corpus(s["base_docs"], seed=0, format_frac=s["base_format_frac"],
                             num_range=tuple(s["num_range"]), target_range=tuple(s["target_range"]),
                             restate=s["base_restate"])
    common.write_jsonl(os.path.join(s["out"], "data", "pretrain.jsonl"), docs)  # last: the stage's marker
    print(f"base init: {n / 1e6:.2f}M parameters at {path}; corpus: {len(docs)} documents")


# ---------------------------------------------------------------------------------
# stages as command lines: [(name, cmd, done_marker, log)]

# settings a re-run into the same --out may change: where and how much runs, not what it makes
RERUN_FREE = ("out", "force", "checks_only", "make_base", "conditions", "seeds", "gpus", "jobs", "reference")
# and one that may grow: a longer PPO continues every run from its last checkpoint (extend_runs)
RERUN_GROWS = ("ppo_steps",)


def same_settings_or_exit(s, force):
    """A re-run into an existing --out continues it only under the settings that made it: every
    stage whose output exists is skipped, so a changed setting (say --sft-steps) would silently
    mix old models into new results. OUT/mini_settings.json keeps them (rewritten by --force);
    a difference is one line naming the flags, exit 2."""
    path = os.path.join(s["out"], "mini_settings.json")
    mine = json.loads(json.dumps({k: v for k, v in s.items() if k not in RERUN_FREE}))

    def fail(msg):
        print(f"mini.py: error: {msg}: pass --force to redo it, or another --out", file=sys.stderr)
        raise SystemExit(2)
    if os.path.exists(path) and not force:
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except ValueError:
            fail(f"{path}: malformed JSON")
        if s["checks_only"]:           # runs no PPO: a longer --ppo-steps is not recorded
            mine.update({k: old[k] for k in RERUN_GROWS if k in old and mine[k] > old[k]})
        diff = [k for k in mine if k in old and old[k] != mine[k]
                and not (k in RERUN_GROWS and mine[k] > old[k])]
        if diff:
            fail(f"{s['out']} was made with " + ", ".join(
                f"--{k.replace('_', '-')} {json.dumps(old[k])} (now {json.dumps(mine[k])})" for k in diff))
    basics.write_json(path, mine)


def extend_runs(s, keys):
    """A re-run with a larger --ppo-steps continues every run that stopped short of it from its
    last checkpoint (ppo.py --resume): its final/ (the same state as ckpt/step_N; moved there
    where that checkpoint is gone) and its rollouts' counts (classify/), the two stages' done
    markers, go, so both run again."""
    import common
    for c, seed in keys:
        ppo = os.path.join(run_dir(s, c, seed), "ppo")
        final, counts = os.path.join(ppo, "final"), os.path.join(ppo, "classify")
        try:
            with open(os.path.join(final, "trainer_state.json"), encoding="utf-8") as f:
                done = json.load(f)["step"]
        except (OSError, ValueError, KeyError):
            done = common.latest_ckpt(ppo)[0]     # unfinished, or killed before final/ was written
        if not done or done >= s["ppo_steps"] or not (os.path.isdir(final) or os.path.isdir(counts)):
            continue                              # up to length, never started, or plainly unfinished
        print(f"extending {c} seed {seed}: PPO step {done} -> {s['ppo_steps']}", flush=True)
        ckpt = common.ckpt_dir(ppo, done)
        if os.path.isdir(final) and not os.path.exists(os.path.join(ckpt, "trainer_state.json")):
            os.makedirs(os.path.dirname(ckpt), exist_ok=True)
            shutil.rmtree(ckpt, ignore_errors=True)      # a half-written one
            os.replace(final, ckpt)
        for d in (final, counts):
            shutil.rmtree(d, ignore_errors=True)


def paths(s):
    out = s["out"]
    p = dict(data=os.path.join(out, "data", "countdown"), priming=os.path.join(out, "data", "priming"),
             base=os.path.join(out, "base"))
    p["base_final"] = os.path.join(p["base"], "final")
    p["arith"] = os.path.join(p["base"], "arithmetic.json")
    return p


def prelude(s, p, force):
    """Tasks and the base's corpus in this process; returns the chains of the base and the priming traces."""
    out, lo, hi = s["out"], s["num_range"], s["target_range"]
    run(["countdown.py", "--out", p["data"], "--n-train", s["n_train"], "--n-test", s["n_test"],
         "--sizes", s["task_sizes"], "--num-min", lo[0], "--num-max", lo[1], "--target-min", hi[0],
         "--target-max", hi[1]], os.path.join(p["data"], "test.jsonl"), force)
    run(["mini.py", "--make-base", "--out", out,
         *basics.settings_argv(SETTINGS, s, BASE_SETTINGS)],  # the base's settings as resolved here
        os.path.join(out, "data", "pretrain.jsonl"), force)
    conds = [c for c in s["conditions"] if c != "base"]
    chains = [("base pretraining", [("sft", [
        "sft.py", "--model", os.path.join(p["base"], "init"), "--data", os.path.join(out, "data", "pretrain.jsonl"),
        "--out", p["base"], "--epochs", s["base_epochs"], "--pack", "--max-len", s["base_len"], "--batch-size", s["base_batch"],
        "--micro-batch", s["base_batch"], "--lr", s["base_lr"], "--min-lr-frac", 0.1, "--eval-frac", 0.01,
        "--eval-every", 0, "--save-every", 0, "--device", s["device"], *precision(s), resume_or_overwrite(force)],
        os.path.join(p["base_final"], "config.json"), os.path.join(p["base"], "sft.log")),
        ("arithmetic", ["mini_checks.py", "--model", p["base_final"], "--out", p["arith"], "--n", s["arith_lines"],
                        "--num-min", lo[0], "--num-max", lo[1], "--device", s["device"]],
         p["arith"], os.path.join(p["base"], "arithmetic.log"))])]
    if conds:  # priming tasks from train.jsonl: the test tasks stay unseen
        chains.append(("priming traces", [("gen_priming", [
            "gen_priming.py", "--backend", "symbolic", "--condition", ",".join(conds), "--n", s["priming_n"],
            "--out", p["priming"], "--tasks", os.path.join(p["data"], "train.jsonl"), "--budget", s["priming_budget"],
            "--tokenizer", os.path.join(p["base"], "init")],
            os.path.join(p["priming"], "summary.json"), os.path.join(p["priming"], "gen_priming.log"))]))
    return chains


def precision(s):
    """sft.py's precision flag for s["dtype"] on a GPU (bf16: bf16 compute, fp32 master weights)."""
    return ["--precision", {"bf16": "bf16-mixed"}.get(s["dtype"], s["dtype"])] if s["device"].startswith("cuda") else []


def prime_stages(cond, s, p, force):
    """One condition's priming SFT of the base."""
    d = os.path.join(s["out"], "primed", cond)
    return [("sft", [
        "sft.py", "--model", p["base_final"], "--data", os.path.join(p["priming"], f"{cond}.jsonl"),
        "--out", os.path.join(d, "sft"), "--max-steps", s["sft_steps"], "--batch-size", s["sft_batch"],
        "--micro-batch", s["sft_batch"], "--lr", s["sft_lr"], "--max-len", s["sft_max_len"], "--overlong", "drop",
        "--save-every", 0, "--device", s["device"], *precision(s), resume_or_overwrite(force)],
        os.path.join(primed_model(cond, s, p), "config.json"), os.path.join(d, "sft.log"))]


def primed_model(cond, s, p):
    return p["base_final"] if cond == "base" else os.path.join(s["out"], "primed", cond, "sft", "final")


def run_dir(s, cond, seed):
    """A (condition, seed) run's folder; --checks-only runs validate only, apart from the PPO runs."""
    return os.path.join(s["out"], "checks" if s["checks_only"] else "runs", f"{cond}-s{seed}")


def ppo_argv(cond, seed, s, p, out):
    """ppo.py and the flags a (condition, seed) run and its --checks-only validation share: the
    models, the tasks, the validation (the same samples either way) and the device. On a GPU,
    --no-compile: each of the 27 runs would wait on the compiler for layers of ~10M parameters,
    where the fused elementwise work is a small share (not measured at this size)."""
    return ["ppo.py", "--model", p["base_final"], "--init", primed_model(cond, s, p), "--data", p["data"], "--out", out,
            "--condition", cond, "--seed", seed, "--max-response-len", s["ppo_response_len"],
            "--val-size", s["val_size"], "--val-samples", s["val_samples"], "--device", s["device"],
            *(["--dtype", s["dtype"], "--no-compile"] if s["device"].startswith("cuda") else []),
            *(["--engine", s["ppo_engine"]] if s["ppo_engine"] else [])]


def ppo_stages(cond, seed, s, p, force):
    """One (condition, seed) run: PPO from the primed model (validating before its first update:
    the "before PPO" accuracy and the checks' samples), then behavior counts of its rollouts.
    A killed run resumes from its last checkpoint (ppo.py --resume). --checks-only: the
    validation before the first update alone (no update, no checkpoint)."""
    d = run_dir(s, cond, seed)
    ppo, log = os.path.join(d, "ppo"), os.path.join(d, "ppo.log")
    if s["checks_only"]:
        return [("validate", ppo_argv(cond, seed, s, p, ppo) + ["--steps", 0, "--eval-every", 1, "--overwrite"],
                 os.path.join(ppo, "val", "step_000000.jsonl"), log)]
    return [("ppo", ppo_argv(cond, seed, s, p, ppo) + [
        "--steps", s["ppo_steps"], "--prompts-per-step", s["ppo_prompts"], "--samples-per-prompt", s["ppo_samples"],
        "--actor-lr", s["ppo_actor_lr"], "--critic-lr", s["ppo_critic_lr"],
        "--mini-batch-prompts", max(1, s["ppo_prompts"] // 2), "--micro-batch", s["ppo_micro"],
        "--eval-every", s["eval_every"], "--log-rollouts-every", s["log_rollouts_every"],
        "--save-every", s["ppo_save_every"], resume_or_overwrite(force), "--no-grad-ckpt"],
        os.path.join(ppo, "final", "config.json"), log),
        ("classify", ["classify.py", "--backend", "rules", "--input", ppo, "--out", os.path.join(ppo, "classify"),
                      "--condition", cond, "--sample-per-step", 0, "--split", "rollouts"],
         os.path.join(ppo, "classify", "steps.csv"), os.path.join(d, "classify.log"))]


def gpu_slots(s):
    """One env per job slot: --jobs per GPU, the GPUs taken in turn (round-robin), so that the
    first jobs spread over every GPU; on a CPU, --jobs slots with no GPU."""
    if not s["device"].startswith("cuda"):
        return [{}] * (s["jobs"] or 2)
    gpus = s["gpus"]
    if gpus is None:
        vis = os.environ.get("CUDA_VISIBLE_DEVICES")
        if vis:
            gpus = [g.strip() for g in vis.split(",") if g.strip()]
        else:
            import torch
            gpus = list(range(torch.cuda.device_count()))
    if not gpus:
        raise SystemExit("mini.py: no GPU visible; pass --device cpu")
    return [{"CUDA_VISIBLE_DEVICES": str(g)} for _ in range(s["jobs"] or 9) for g in gpus]


def run_pool(chains, slots, force, report=lambda name: "done"):
    """Run chains [(name, stages)] len(slots) at a time, each chain's stages in order with the
    env of the slot it holds (its GPU); a progress line per finished chain. A stage that several
    chains share (the same done marker: a condition's priming, for each of its seeds) runs once:
    the others wait for it, then skip it. Returns {name: error} of the chains that failed."""
    free, locks, ran = queue.Queue(), {}, set()
    for env in slots:
        free.put(env)
    for _, stages in chains:
        for _, _, marker, _ in stages:
            locks.setdefault(marker, threading.Lock())

    def chain(stages):
        env = free.get()
        try:
            for _, cmd, marker, log in stages:
                with locks[marker]:
                    run(cmd, marker, force and marker not in ran, log=log, env=env)
                    ran.add(marker)
        finally:
            free.put(env)
    failed, t0 = {}, time.time()
    with ThreadPoolExecutor(max_workers=len(slots)) as ex:
        futs = {ex.submit(chain, stages): name for name, stages in chains}
        for i, f in enumerate(as_completed(futs), 1):
            name = futs[f]
            try:
                f.result()
                msg = report(name)
            except SystemExit as e:  # pipeline.run's way of saying a stage failed
                failed[name], msg = str(e), "FAILED"
            print(f"[{i}/{len(futs)} finished, {time.time() - t0:.0f}s] {name}: {msg}", flush=True)
    return failed


def failures(failed, n):
    """The message a run with failed jobs stops with: each failed stage's error."""
    return (f"{len(failed)} of {n} jobs failed (finished stages are kept: run the same command again to "
            "resume):\n\n" + "\n\n".join(failed.values()))


def pool(chains, slots, force, report=lambda name: "done"):
    """run_pool, stopping with every failed stage's error (finished stages are kept)."""
    failed = run_pool(chains, slots, force, report)
    if failed:
        raise SystemExit(failures(failed, len(chains)))


# ---------------------------------------------------------------------------------
# the manipulation checks: before any PPO result

def step0_records(s, cond):
    """Every seed's validation samples before PPO's first update (ppo.py's val/step_000000.jsonl)."""
    import common
    recs = []
    for seed in s["seeds"]:
        path = os.path.join(run_dir(s, cond, seed), "ppo", "val", "step_000000.jsonl")
        if os.path.exists(path):
            recs += common.read_jsonl(path)
    return recs


def priming_behaviors(s, p, conds):
    """{condition: mean behavior counts of its priming set} (rules), cached in the priming folder."""
    import common
    path = os.path.join(p["priming"], "behavior_means.json")
    have = json.load(open(path)) if os.path.exists(path) else {}
    todo = [c for c in conds if c != "base" and c not in have]
    for c in todo:
        have[c] = mini_checks.behavior_means(common.read_jsonl(os.path.join(p["priming"], f"{c}.jsonl")), "completion")
    if todo:
        common.write_json(path, have)
    return {c: have[c] for c in conds if c in have}


def run_checks(s, p):
    """Measure every check, write OUT/checks.json and OUT/checks.md, return the markdown. A
    condition none of whose runs sampled before PPO (they failed first) is named as not
    measured, not scored as 0.000."""
    import common
    recs = {c: step0_records(s, c) for c in s["conditions"]}
    measured = {c: mini_checks.measure(r) for c, r in recs.items() if r}
    missing = [c for c, r in recs.items() if not r]
    arith = json.load(open(p["arith"])) if os.path.exists(p["arith"]) else None
    rows = mini_checks.check_rows(arith, measured, priming_behaviors(s, p, list(measured)))
    table = mini_checks.checks_markdown(rows) + (
        f"\nNot measured (no sample before PPO: its runs failed): {', '.join(missing)}.\n" if missing else "")
    common.write_json(os.path.join(s["out"], "checks.json"), {
        "thresholds": mini_checks.THRESHOLDS, "base_arithmetic": arith, "measured": measured,
        "not_measured": missing,
        "rows": [dict(zip(("model", "check", "measured", "threshold", "passed"), r)) for r in rows]})
    common.atomic_write_text(os.path.join(s["out"], "checks.md"), table)
    return table


def main(argv=None):
    a, s = parse_args(argv)
    stop_children_on_signals()
    if a.make_base:
        return make_base(s)
    if s["device"] is None:
        import torch
        s["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    same_settings_or_exit(s, a.force)
    slots, t0 = gpu_slots(s), time.time()
    gpus = sorted({e["CUDA_VISIBLE_DEVICES"] for e in slots if e})
    print(f"mini: {len(s['conditions'])} conditions x {len(s['seeds'])} seeds on {s['device']}"
          + (f" (GPUs {', '.join(gpus)})" if gpus else "") + f", {len(slots)} jobs at a time, into {s['out']}", flush=True)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # many processes, one GPU
    p = paths(s)
    pool(prelude(s, p, a.force), slots, a.force)
    keys = [(c, seed) for seed in s["seeds"] for c in s["conditions"]]
    if not s["checks_only"]:
        extend_runs(s, keys)
    # one chain per run: its condition's priming (run once, by the first of its seeds to get
    # there), then PPO; the checks print as soon as every run has validated before its first update
    checks = ChecksWhenReady(s, p, t0)
    name = lambda c, seed: f"{c} seed {seed}"  # noqa: E731
    failed = run_pool([(name(c, seed), (prime_stages(c, s, p, a.force) if c != "base" else [])
                        + ppo_stages(c, seed, s, p, a.force)) for c, seed in keys], slots, a.force)
    done = [k for k in keys if name(*k) not in failed]
    if s["checks_only"] or not done:
        checks.finish()
        if failed:
            raise SystemExit(failures(failed, len(keys)))
        return print(f"mini checks done in {time.time() - t0:.0f}s: {s['out']}/checks.md, checks.json")
    # a failed run leaves the others' results: reported without it, then the run stops with its
    # error (also when the report itself fails)
    try:
        table = mini_report.report(s, p, {k: run_dir(s, *k) for k in done}, checks.finish(), failed)
        print("\n" + table)
        print(f"mini done in {time.time() - t0:.0f}s: {s['out']}/results.md, results.json, checks.md, figures/, "
              "report.html")
    except (Exception, SystemExit) as e:
        if not failed:
            raise
        print(f"the results of the finished runs could not be written: {e}", flush=True)
    if failed:
        raise SystemExit(failures(failed, len(keys)))


class ChecksWhenReady(threading.Thread):
    """Prints the checks (run_checks) once every run's step-0 validation file exists, while PPO
    goes on; finish() makes sure they were printed and returns their markdown."""

    def __init__(self, s, p, t0):
        super().__init__(daemon=True)
        self.s, self.p, self.t0, self.table, self.stop = s, p, t0, None, threading.Event()
        self.start()

    def ready(self):
        return all(os.path.exists(os.path.join(run_dir(self.s, c, seed), "ppo", "val", "step_000000.jsonl"))
                   for c in self.s["conditions"] for seed in self.s["seeds"])

    def run(self):
        while not self.stop.wait(5):
            if self.ready():
                self.report()
                return

    def report(self):
        self.table = run_checks(self.s, self.p)
        print(f"\n## Manipulation checks (before PPO; {time.time() - self.t0:.0f}s)\n\n{self.table}", flush=True)

    def finish(self):
        self.stop.set()
        self.join()
        if self.table is None:
            self.report()
        return self.table


if __name__ == "__main__":
    main()
