"""
The study in miniature on one GPU, with no API key and no download: the priming experiment
end to end (priming -> PPO -> behavior counts -> table and figures) with models trained from
scratch.

    python mini.py                                  # one H100: ~11 minutes (measured), runs/mini/results.md
    python mini.py --smoke --out /tmp/mini          # CPU smoke test: a few steps (CI, ~1 minute)
    python mini.py --conditions base all_strategies empty_cot --seeds 0 1 2 3 --jobs 8

The base is NOT a pretrained LM (nothing is downloaded): it is a Llama of the `tiny` family
(the same locally built tokenizer; SETTINGS["base_size"] sets its shape, ~10M parameters by
default) with random weights, given a short behaviour-free "pretraining" by sft.py on
arithmetic text over numbers in the Countdown range: equations ("23 + 19 = 42",
"(7 * 6) - 5 = 37"), bare calculations that name some numbers and combine them one step at a
time, and Countdown prompts answered by one such calculation and an <answer> (right only by
chance): it never checks a result against the target, never tries again, never names a goal
and never works backwards (`arithmetic_corpus`; the tests check it with classify.py's rules).
The aim: a base that reads the numbers of a prompt and writes numbers, operators and the
answer format, as the study's base Llama-3.2-3B does, but shows none of the four behaviors.

Stages (each a real script run as a subprocess with its command printed; a stage whose output
exists is skipped, so a killed run resumes; every log sits in the run folder it belongs to):
  1. countdown.py: train and test tasks, 3 numbers each (SETTINGS["task_sizes"]; the study
     mixed 3 and 4, out of reach for a model this small).
  2. `mini.py --make-base`: the base's random init and its arithmetic corpus; sft.py
     "pretrains" it (two passes over the corpus, packed rows) into OUT/base/final. Meanwhile
     gen_priming.py --backend symbolic writes each condition's traces: the same task stream
     and the same number of records for every condition (no_positive takes the wrong
     all_strategies traces, so it needs extra tasks; empty_cot and dots are derived from
     all_strategies, as in the study).
  3. per condition (a pool of --jobs jobs side by side on the one GPU): sft.py primes the base
     on the condition's traces, every condition with the same optimizer steps x sequences per
     step, so each sees the same number of examples (token counts differ as the traces do:
     empty_cot is ~15 tokens a trace, dots as long as all_strategies); classify.py samples the
     primed model on the validation tasks (accuracy and behaviors before PPO). The `base` row
     is not primed.
  4. per condition and seed (the same pool): ppo.py from the primed model (the base for `base`)
     with identical settings on the same 3-number tasks; the seed sets the prompts drawn and the
     sampling, so the spread over seeds is PPO's (each condition is primed once, as in the
     study); classify.py --backend rules counts the behaviors in the logged rollouts.
  5. mean over seeds per step (OUT/results/mini_seed_mean.csv), plot.py figures next to the
     study's Llama-3.2-3B curves (OUT/figures), and OUT/results.md + OUT/results.json: validation
     accuracy before and after PPO (mean +- std and min-max over seeds) and behavior counts at
     the start and end of PPO, beside the study's table.
A model this small on 3-number tasks tests whether the study's pattern shows up at all; it is
not the study's scale (3B models, 250 PPO steps of 256 prompts).
"""
import argparse
import csv
import json
import math
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import countdown
from gen_priming import CONDITIONS
from symbolic import PHRASES, fmt_list
from pipeline import resume_or_overwrite, run, stop_children_on_signals

REPO = os.path.dirname(os.path.abspath(__file__))
BEHAVIORS = {"verification": "avg_verifications", "backtracking": "avg_backtracking",
             "subgoal": "avg_subgoals", "backward": "avg_backwards"}  # classify.py's columns

# ---------------------------------------------------------------------------------
# settings: GPU defaults (one H100); SMOKE below overrides them for the CPU smoke test
SETTINGS = dict(
    out="runs/mini",                 # where data, runs, figures and results go
    conditions=["base", *CONDITIONS],  # `base`: PPO from the unprimed base; the rest: gen_priming.py's eight
    seeds=[0, 1, 2],                 # PPO runs per condition (each condition is primed once)
    jobs=None,                       # runs side by side (one GPU shared): None = 9 on a GPU, 2 on a CPU
    device=None,                     # cuda | cpu (None: cuda if available)
    dtype="bf16",                    # GPU compute: bf16 with fp32 master weights + AdamW states (sft.py bf16-mixed,
                                     # ppo.py --dtype bf16); fp32 (no tensor cores) saturated an H100 at 9 runs
    n_train=20000, n_test=256,       # Countdown tasks (countdown.py)
    task_sizes="3",                  # 3-number tasks for PPO and priming
    base_size=dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=6,  # ~9.8M parameters
                   num_attention_heads=6, num_key_value_heads=2),
    base_docs=80000, base_epochs=2,  # arithmetic documents (~15M tokens), passes over them (~1800 steps): a 0.9M
                                     # model on CPU first copied the prompt's numbers after 750-1000 steps of 16 rows
    base_format_frac=0.5,            # share of documents that are a prompt + one forward calculation + <answer>
    base_len=512, base_batch=32, base_lr=1e-3,  # packed rows of 512 tokens, 32 a step, cosine to 0.1 x lr
    priming_n=1000,                  # traces per condition (the study: ~1000)
    priming_budget=2,                # symbolic search attempts before it gives up (~60% correct traces)
    sft_steps=150, sft_batch=32,     # priming SFT: 4800 sequences = ~5 epochs of 1000, as the study's 5 epochs
    sft_lr=5e-4, sft_max_len=576,    # the longest traces are ~540 tokens with the prompt
    ppo_steps=30, ppo_prompts=32, ppo_samples=4,  # PPO: steps x prompts x samples (2 updates a step)
    ppo_response_len=416,            # the longest primed traces are ~405 tokens
    ppo_actor_lr=2e-5, ppo_critic_lr=1e-4,      # far above the study's 1e-6 / 1e-5 (a 3B model)
    ppo_micro=32,                    # sequences per forward/backward (64: 9 runs x ~10 GB overflow an 80 GB GPU)
    ppo_engine=None,                 # ppo.py --engine (None: ppo.py's default)
    ppo_save_every=10,               # PPO checkpoints (a killed run resumes from the last one: ppo.py --resume)
    log_rollouts_every=5,            # rollouts logged at step 1 and every N steps (classified)
    val_size=128, val_samples=4,     # validation: tasks x samples at temperature 1 (before and after PPO)
    reference="../shared/reference/llama_results.csv",  # the study's Llama-3.2-3B per-step table
)
SMOKE = dict(out="runs/mini-smoke", conditions=["base", "all_strategies", "empty_cot"], seeds=[0],
             jobs=2, device="cpu", n_train=200, n_test=16,
             base_size=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1),
             base_docs=64, base_epochs=1, base_len=256, base_batch=8, priming_n=16, sft_steps=2, sft_batch=4,
             ppo_steps=2, ppo_prompts=4, ppo_samples=2, ppo_response_len=32, ppo_micro=8,
             log_rollouts_every=1, val_size=4, val_samples=1)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())  # defaults are in the help texts
    ap.add_argument("--out", default=None, help=f"output folder (default: {SETTINGS['out']}, smoke: {SMOKE['out']})")
    ap.add_argument("--smoke", action="store_true", help="CPU smoke test: a few steps, one seed, two conditions, tiny sizes")
    ap.add_argument("--jobs", type=int, default=None, help="runs side by side (default: 9 on a GPU, 2 on a CPU)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help=f"seeds (default: {SETTINGS['seeds']})")
    ap.add_argument("--conditions", nargs="+", default=None,
                    help=f"conditions: base (no priming) and/or {', '.join(CONDITIONS)} (default: all)")
    ap.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available; smoke: cpu)")
    ap.add_argument("--force", action="store_true", help="re-run stages whose outputs exist")
    ap.add_argument("--make-base", action="store_true",
                    help="the stage that writes the base's random init and arithmetic corpus into OUT, then exits")
    a = ap.parse_args(argv)
    s = dict(SETTINGS, **(SMOKE if a.smoke else {}))
    s.update({k: v for k, v in vars(a).items() if k in s and v is not None})
    bad = [c for c in s["conditions"] if c != "base" and c not in CONDITIONS]
    if bad:
        ap.error(f"unknown condition(s) {bad}; choose from base, {', '.join(CONDITIONS)}")
    if s["jobs"] is not None and s["jobs"] < 1:
        ap.error("--jobs must be >= 1")
    s["out"], s["smoke"] = os.path.abspath(s["out"]), a.smoke
    return a, s


# ---------------------------------------------------------------------------------
# the base: random init + behaviour-free arithmetic corpus

def _combine(rng, a, b):
    """(a op b as text, value) with an integer, non-negative value; op drawn from those that give one."""
    ops = ["+", "*"] + (["-"] if a >= b else []) + (["/"] if b and a % b == 0 else [])
    op = rng.choice(ops)
    return f"{a} {op} {b}", int(countdown.evaluate(f"{a} {op} {b}"))


def _equation(rng):
    """One line of arithmetic: "23 + 19 = 42." or, a third of the time, "(7 * 6) - 5 = 37."."""
    n = lambda: rng.randint(1, 99)  # noqa: E731
    expr, val = _combine(rng, n(), n())
    if rng.random() < 1 / 3:
        if rng.random() < 0.5:
            e2, val = _combine(rng, val, n())
            expr = f"({expr}) {e2.split(' ', 1)[1]}"
        else:
            c = n()
            e2, val = _combine(rng, c, val)
            expr = f"{c} {e2.split()[1]} ({expr})"
    return f"{expr} = {val}."


def _calculation(rng):
    """(task sentence, steps, expression) of one forward calculation over 2-4 numbers: the
    task in the symbolic writer's neutral opening words, the numbers in a random order, each
    step on the last result; the target is drawn apart, so the result hits it only by chance."""
    nums = [rng.randint(1, 99) for _ in range(rng.choice((2, 3, 3, 4)))]
    target = rng.randint(10, 100)
    order = rng.sample(nums, len(nums))
    expr, val, steps = str(order[0]), order[0], []
    for x in order[1:]:
        step, val = _combine(rng, val, x)
        steps.append(f"{step} = {val}.")
        expr = f"{expr if expr.isdigit() else '(' + expr + ')'} {step.split()[1]} {x}"
    opening = rng.choice(PHRASES["open"]).format(nums=fmt_list(nums), t=target)
    return nums, target, " ".join([opening] + steps), expr


def _worked(rng):
    """A Countdown prompt answered by one forward calculation and its <answer>, no comment on it."""
    nums, target, text, expr = _calculation(rng)
    return countdown.make_prompt(nums, target) + f"\n{text}\n</think>\n<answer>{expr}</answer>"


def arithmetic_corpus(n_docs, seed=0, format_frac=0.5):
    """{"text"} documents for the base's "pretraining": format_frac of them a Countdown prompt
    answered by one forward calculation; the rest, half and half, paragraphs of 3-6 bare
    calculations (numbers named, then combined: copying numbers over a short distance first)
    and paragraphs of 3-8 equations. Deterministic."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        u = rng.random()
        if u < format_frac:
            docs.append(_worked(rng))
        elif u < (1 + format_frac) / 2:
            docs.append(" ".join(_calculation(rng)[2] for _ in range(rng.randint(3, 6))))
        else:
            docs.append(" ".join(_equation(rng) for _ in range(rng.randint(3, 8))))
    return [{"text": d} for d in docs]


def make_base(s):
    """Write OUT/base/init (random weights, the tiny tokenizer) and OUT/data/pretrain.jsonl."""
    import common
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    path = common.build_tiny(os.path.join(s["out"], "base", "init"), seed=0, **s["base_size"])
    n = sum(p.numel() for p in common.load_model(path).parameters())
    common.write_json(os.path.join(s["out"], "base", "base.json"), {"parameters": n, **s["base_size"]})
    docs = arithmetic_corpus(s["base_docs"], seed=0, format_frac=s["base_format_frac"])
    common.write_jsonl(os.path.join(s["out"], "data", "pretrain.jsonl"), docs)  # last: the stage's marker
    print(f"base init: {n / 1e6:.2f}M parameters at {path}; corpus: {len(docs)} documents")


# ---------------------------------------------------------------------------------
# stages as command lines: [(name, cmd, done_marker, log)]

def prelude(s, force):
    """Tasks, the base and the priming traces; returns the paths the runs need."""
    out = s["out"]
    p = dict(data=os.path.join(out, "data", "countdown"), priming=os.path.join(out, "data", "priming"),
             base=os.path.join(out, "base"))
    p["base_final"] = os.path.join(p["base"], "final")
    run(["countdown.py", "--out", p["data"], "--n-train", s["n_train"], "--n-test", s["n_test"],
         "--sizes", s["task_sizes"]], os.path.join(p["data"], "test.jsonl"), force)
    run(["mini.py", "--make-base", "--out", out, *(["--smoke"] if s["smoke"] else [])],
        os.path.join(out, "data", "pretrain.jsonl"), force)
    conds = [c for c in s["conditions"] if c != "base"]
    chains = [("base pretraining", [("sft", [
        "sft.py", "--model", os.path.join(p["base"], "init"), "--data", os.path.join(out, "data", "pretrain.jsonl"),
        "--out", p["base"], "--epochs", s["base_epochs"], "--pack", "--max-len", s["base_len"], "--batch-size", s["base_batch"],
        "--micro-batch", s["base_batch"], "--lr", s["base_lr"], "--eval-frac", 0.01, "--eval-every", 0,
        "--save-every", 0, "--device", s["device"], *precision(s), resume_or_overwrite(force)],
        os.path.join(p["base_final"], "config.json"), os.path.join(p["base"], "sft.log"))])]
    if conds:
        chains.append(("priming traces", [("gen_priming", [
            "gen_priming.py", "--backend", "symbolic", "--condition", ",".join(conds), "--n", s["priming_n"],
            "--out", p["priming"], "--sizes", s["task_sizes"], "--budget", s["priming_budget"],
            "--tokenizer", os.path.join(p["base"], "init")],
            os.path.join(p["priming"], "summary.json"), os.path.join(p["priming"], "gen_priming.log"))]))
    return p, chains


def precision(s):
    """sft.py's precision flag for s["dtype"] on a GPU (bf16: bf16 compute, fp32 master weights)."""
    return ["--precision", {"bf16": "bf16-mixed"}.get(s["dtype"], s["dtype"])] if s["device"].startswith("cuda") else []


def prime_stages(cond, s, p, force):
    """One condition, before PPO: priming SFT of the base (not for `base`) and its validation
    accuracy and behaviors (classify.py's sampling mode on the PPO validation tasks)."""
    d = os.path.join(s["out"], "primed", cond)
    dev, init = ["--device", s["device"]], primed_model(cond, s, p)
    stages = [] if cond == "base" else [("sft", [
        "sft.py", "--model", p["base_final"], "--data", os.path.join(p["priming"], f"{cond}.jsonl"),
        "--out", os.path.join(d, "sft"), "--max-steps", s["sft_steps"], "--batch-size", s["sft_batch"],
        "--micro-batch", s["sft_batch"], "--lr", s["sft_lr"], "--max-len", s["sft_max_len"], "--overlong", "drop",
        "--save-every", 0, *dev, *precision(s), resume_or_overwrite(force)],
        os.path.join(init, "config.json"), os.path.join(d, "sft.log"))]
    stages.append(("eval0", [
        "classify.py", "--model", init, "--data", os.path.join(p["data"], "test.jsonl"), "--samples", s["val_size"],
        "--per-task", s["val_samples"], "--max-new-tokens", s["ppo_response_len"], "--condition", cond,
        "--gen-batch", s["val_size"] * s["val_samples"], "--sample-per-step", 0, "--out", os.path.join(d, "eval0"), *dev],
        os.path.join(d, "eval0", "classify", "steps.csv"), os.path.join(d, "eval0.log")))
    return stages


def primed_model(cond, s, p):
    return p["base_final"] if cond == "base" else os.path.join(s["out"], "primed", cond, "sft", "final")


def ppo_stages(cond, seed, s, p, force):
    """One (condition, seed) run: PPO from the primed model, then behavior counts of its rollouts."""
    d = os.path.join(s["out"], "runs", f"{cond}-s{seed}")
    ppo = os.path.join(d, "ppo")
    return [("ppo", [
        "ppo.py", "--model", p["base_final"], "--init", primed_model(cond, s, p), "--data", p["data"], "--out", ppo,
        "--condition", cond, "--seed", seed, "--steps", s["ppo_steps"], "--prompts-per-step", s["ppo_prompts"],
        "--samples-per-prompt", s["ppo_samples"], "--max-response-len", s["ppo_response_len"],
        "--actor-lr", s["ppo_actor_lr"], "--critic-lr", s["ppo_critic_lr"],
        "--mini-batch-prompts", max(1, s["ppo_prompts"] // 2), "--micro-batch", s["ppo_micro"],
        "--eval-every", s["ppo_steps"], "--val-size", s["val_size"], "--val-samples", s["val_samples"],
        "--log-rollouts-every", s["log_rollouts_every"], "--save-every", s["ppo_save_every"], resume_or_overwrite(force), "--no-grad-ckpt",
        "--device", s["device"], *(["--dtype", s["dtype"]] if s["device"].startswith("cuda") else []),
        *(["--engine", s["ppo_engine"]] if s["ppo_engine"] else [])],
        os.path.join(ppo, "final", "config.json"), os.path.join(d, "ppo.log")),
        ("classify", ["classify.py", "--backend", "rules", "--input", ppo, "--out",
                      os.path.join(ppo, "classify"), "--condition", cond, "--sample-per-step", 0, "--split", "rollouts"],
         os.path.join(ppo, "classify", "steps.csv"), os.path.join(d, "classify.log"))]


def run_pool(chains, jobs, force, report=lambda name: "done"):
    """Run chains [(name, stages)] `jobs` at a time, each chain's stages in order; a progress
    line per finished chain. Returns {name: error} of the chains that failed."""
    def chain(stages):
        for _, cmd, marker, log in stages:
            run(cmd, marker, force, log=log)
    failed, t0 = {}, time.time()
    with ThreadPoolExecutor(max_workers=jobs) as ex:
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


# ---------------------------------------------------------------------------------
# results: per run, over seeds, beside the study

def spread(values):
    """mean, sample std, min, max and n of the finite values (None if there are none)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": m, "std": sd, "min": min(xs), "max": max(xs), "n": len(xs)}


def fmt_spread(sp, digits=3):
    """"0.310 ± 0.040 (0.270–0.350)" over seeds; one seed: "0.310"; none: "-"."""
    if not sp:
        return "-"
    f = lambda x: f"{x:.{digits}f}"  # noqa: E731
    return f(sp["mean"]) if sp["n"] == 1 else f"{f(sp['mean'])} ± {f(sp['std'])} ({f(sp['min'])}–{f(sp['max'])})"


def read_run(out, cond, seed):
    """One run's numbers: validation accuracy before (the primed model's) and after PPO, and
    the classified rollouts' behavior means, length and accuracy at PPO's first and last logged step."""
    from plot import read_metrics, read_steps_csv
    before = read_steps_csv(os.path.join(out, "primed", cond, "eval0", "classify", "steps.csv"))[0]
    d = os.path.join(out, "runs", f"{cond}-s{seed}")
    vals = [r for r in read_metrics(os.path.join(d, "ppo", "metrics.jsonl")) if "val/acc" in r]
    rows = sorted(read_steps_csv(os.path.join(d, "ppo", "classify", "steps.csv")), key=lambda r: r["step"])
    at = lambda r: {"step": int(r["step"]), "accuracy": r.get("accuracy"), "length": r.get("response_length"),  # noqa: E731
                    **{b: r.get(col) for b, col in BEHAVIORS.items()}}
    last = os.path.join(d, "ppo", "rollouts", f"step_{int(rows[-1]['step']):06d}.jsonl")
    return {"val_before": before["accuracy"], "val_after": vals[-1]["val/acc"] if vals else None,
            "val_after_step": vals[-1]["step"] if vals else None,
            "numbers_before": number_use(os.path.join(out, "primed", cond, "eval0", "rollouts", "step_000000.jsonl")),
            "numbers_end": number_use(last),
            "before": at(before), "start": at(rows[0]), "end": at(rows[-1]), "steps": rows}


def number_use(path):
    """Share of the responses in a rollout file whose answer uses each of the task's numbers
    exactly once, whatever its value: whether the model reads the prompt at all."""
    import common
    recs = common.read_jsonl(path)
    ok = [sorted(countdown.numbers_in(countdown.extract_answer(r["response"]) or "")) == sorted(r["nums"])
          for r in recs]
    return sum(ok) / len(ok) if ok else None


def seed_means(steps_by_cond):
    """{cond: [steps.csv rows of every seed]} -> rows averaged per (condition, step) over seeds."""
    out = []
    for cond, rows in steps_by_cond.items():
        for step in sorted({r["step"] for r in rows}):
            same = [r for r in rows if r["step"] == step]
            cols = {k for r in same for k in r} - {"condition", "step"}
            means = {k: spread(r.get(k) for r in same) for k in sorted(cols)}
            out.append({"condition": cond, "step": int(step),
                        **{k: round(v["mean"], 6) if v else "" for k, v in means.items()}})
    return out


def study_rows(path, conds):
    """{canonical condition: {"start": row at step 0, "end": row at the last step}} of the study's CSV."""
    from plot import canonical, read_steps_csv
    table = {}
    for r in read_steps_csv(path):
        c = canonical(r["condition"])
        if c in conds:
            t = table.setdefault(c, {"start": r, "end": r})
            t["start"] = min(t["start"], r, key=lambda x: x["step"])
            t["end"] = max(t["end"], r, key=lambda x: x["step"])
    return table


def _behaviors(means):
    return " / ".join(f"{means[b]:.2f}" if means.get(b) is not None else "-" for b in BEHAVIORS)


def results_markdown(summary, study, s):
    """The table: ours (spread over seeds) beside the study's Llama-3.2-3B, one row per condition."""
    n_steps, ref = s["ppo_steps"], ("the study (Llama-3.2-3B)" if study else None)
    lines = ["# The study in miniature: results", "",
             f"Base: a {summary['base']['parameters'] / 1e6:.1f}M-parameter Llama ({summary['base']['num_hidden_layers']} layers of "
             f"{summary['base']['hidden_size']}), random init + behaviour-free arithmetic pretraining "
             f"(not a pretrained LM). PPO: {n_steps} steps x {s['ppo_prompts']} prompts x {s['ppo_samples']} samples, "
             f"3-number tasks. Validation: {s['val_size']} test tasks x {s['val_samples']} samples at temperature 1. "
             f"Ours: mean ± std (min–max) over seeds {s['seeds']}." + (
                 " Study: one run per condition, 250 PPO steps on 3- and 4-number tasks." if study else ""), "",
             "## Validation accuracy", "",
             "Before PPO: the primed model (one per condition); after: PPO's seeds. Numbers used: share of "
             "answers that use each of the task's numbers once, right or not (before PPO / last logged step).", "",
             "| condition | seeds | before PPO | after PPO | numbers used | "
             + ("study: step 0 | study: step 250 |" if ref else ""),
             "| --- | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if ref else "")]
    for c, v in summary["conditions"].items():
        st = study.get(c) if study else None
        used = f"{fmt_spread(v['numbers_before'], 2)} / {fmt_spread(v['numbers_end'], 2)}"
        lines.append(f"| {c} | {v['n_runs']} | {fmt_spread(v['val_before'])} | {fmt_spread(v['val_after'])} | {used} |"
                     + (f" {st['start']['accuracy']:.3f} | {st['end']['accuracy']:.3f} |" if st else " - | - |" if ref else ""))
    lines += ["", "## Behaviors per response (verification / backtracking / subgoal / backward)", "",
              f"Ours: classified rollouts at PPO step 1 (sampled before the first update) and step {n_steps}, "
              "means over seeds (spreads in results.json).", "",
              f"| condition | start | end (step {n_steps}) | " + ("study: step 0 | study: step 250 |" if ref else ""),
              "| --- | --- | --- |" + (" --- | --- |" if ref else "")]
    for c, v in summary["conditions"].items():
        st = study.get(c) if study else None
        mean = lambda key: {b: (v[key][b] or {}).get("mean") for b in BEHAVIORS}  # noqa: E731
        lines.append(f"| {c} | {_behaviors(mean('start'))} | {_behaviors(mean('end'))} |" + (
            f" {_behaviors({b: st['start'][col] for b, col in BEHAVIORS.items()})} |"
            f" {_behaviors({b: st['end'][col] for b, col in BEHAVIORS.items()})} |" if st else " - | - |" if ref else ""))
    return "\n".join(lines) + "\n"


def summarize(runs, s):
    """{run key: read_run(...)} -> per condition: spreads over seeds of every number in the table."""
    conds = {}
    for (cond, seed), r in runs.items():
        conds.setdefault(cond, []).append(r)
    out = {}
    for cond in [c for c in s["conditions"] if c in conds]:
        rs = conds[cond]
        out[cond] = {"n_runs": len(rs), **{k: spread(r[k] for r in rs[:1]) for k in ("val_before", "numbers_before")},
                     **{k: spread(r[k] for r in rs) for k in ("val_after", "numbers_end")},  # primed once, PPO per seed
                     **{k: {b: spread(r[k][b] for r in rs) for b in [*BEHAVIORS, "accuracy", "length"]}
                        for k in ("start", "end")}}
    return out


def report(s, p, keys):
    """Numbers of every finished run -> results.json, results.md, the seed-mean steps CSV,
    a filtered copy of the study's CSV and plot.py's figures."""
    import common
    from classify import write_steps_csv
    res = os.path.join(s["out"], "results")
    runs = {k: read_run(s["out"], *k) for k in keys}
    steps = {}
    for (cond, _), r in runs.items():
        steps.setdefault(cond, []).extend(r.pop("steps"))
    ours = os.path.join(res, "mini_seed_mean.csv")
    write_steps_csv(ours, seed_means(steps))
    ref = s["reference"] if os.path.isabs(s["reference"]) else os.path.join(REPO, s["reference"])
    study, csvs = {}, [ours]
    if os.path.exists(ref):
        study = study_rows(ref, set(s["conditions"]))
        csvs.append(filter_csv(ref, set(s["conditions"]), os.path.join(res, "study_llama-3.2-3b.csv")))
    else:
        print(f"note: no study table at {ref}; results without the study's columns", flush=True)
    with open(os.path.join(p["base"], "base.json")) as f:
        summary = {"base": json.load(f), "conditions": summarize(runs, s)}
    common.write_json(os.path.join(s["out"], "results.json"), {
        "settings": s, "summary": summary, "study": study,
        "runs": [{"condition": k[0], "seed": k[1], **v} for k, v in runs.items()]})
    figs = os.path.join(s["out"], "figures")
    priming = os.path.join(p["priming"], "summary.json")
    run(["plot.py", "--csv", *csvs, *(["--priming", priming] if os.path.exists(priming) else []),
         "--out", figs], "", True, log=os.path.join(figs, "plot.log"))
    run(["report.py", "--runs", *[os.path.join(s["out"], "runs", f"{c}-s{seed}", "ppo") for c, seed in keys],  # the run report
         *(["--reference", ref] if os.path.exists(ref) else []), "--title", "mini.py: the priming study in miniature",
         "--out", os.path.join(s["out"], "report.html")], "", True, log=os.path.join(s["out"], "report.log"))
    table = results_markdown(summary, study, s)
    common.atomic_write_text(os.path.join(s["out"], "results.md"), table)
    return table


def filter_csv(path, conds, dest):
    """The rows of a steps CSV whose condition stands for one of conds, renamed to it
    (plot.canonical: base_ppo -> base), so that figures share one legend entry."""
    import common
    from plot import canonical
    with open(path, encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    keep = [rows[0]] + [[canonical(r[0])] + r[1:] for r in rows[1:] if r and canonical(r[0]) in conds]
    common.atomic_write_text(dest, "\n".join(",".join(r) for r in keep) + "\n")
    return dest


def main(argv=None):
    a, s = parse_args(argv)
    stop_children_on_signals()
    if a.make_base:
        return make_base(s)
    if s["device"] is None:
        import torch
        s["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    jobs = s["jobs"] or (9 if s["device"].startswith("cuda") else 2)
    t0 = time.time()
    print(f"mini: {len(s['conditions'])} conditions x {len(s['seeds'])} seeds on {s['device']}, "
          f"{jobs} jobs at a time, into {s['out']}", flush=True)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # many processes, one GPU
    p, chains = prelude(s, a.force)
    pool(chains, jobs, a.force)
    pool([(f"{c} before PPO", prime_stages(c, s, p, a.force)) for c in s["conditions"]], jobs, a.force,
         report=lambda name: before_line(s, name.split()[0]))
    keys = [(c, seed) for seed in s["seeds"] for c in s["conditions"]]
    pool([(f"{c} seed {seed}", ppo_stages(c, seed, s, p, a.force)) for c, seed in keys], jobs, a.force,
         report=lambda name: progress(s, name.split()[0], int(name.split()[-1])))
    table = report(s, p, keys)
    print("\n" + table)
    print(f"mini done in {time.time() - t0:.0f}s: {s['out']}/results.md, results.json, figures/, report.html")


def pool(chains, jobs, force, report=lambda name: "done"):
    """run_pool, stopping with every failed stage's error (finished stages are kept)."""
    failed = run_pool(chains, jobs, force, report)
    if failed:
        raise SystemExit(f"{len(failed)} of {len(chains)} jobs failed (finished stages are kept: run the "
                         "same command again to resume):\n\n" + "\n\n".join(failed.values()))


def before_line(s, cond):
    from plot import read_steps_csv
    d = os.path.join(s["out"], "primed", cond, "eval0")
    r = read_steps_csv(os.path.join(d, "classify", "steps.csv"))[0]
    return (f"val acc {r['accuracy']:.3f}, answers using the task's numbers "
            f"{number_use(os.path.join(d, 'rollouts', 'step_000000.jsonl')):.2f}, "
            f"behaviors (v/b/s/w) {_behaviors({b: r[c] for b, c in BEHAVIORS.items()})}")


def progress(s, cond, seed):
    """The one-line summary of a finished run."""
    r = read_run(s["out"], cond, seed)
    after = "-" if r["val_after"] is None else f"{r['val_after']:.3f}"
    return (f"val acc {r['val_before']:.3f} -> {after}; behaviors (v/b/s/w) "
            f"{_behaviors(r['start'])} -> {_behaviors(r['end'])}")


if __name__ == "__main__":
    main()
