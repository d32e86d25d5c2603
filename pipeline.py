"""
The whole study in miniature, every stage in order, on the tiny model (CPU, offline):

    bash setup.sh && .venv/bin/python pipeline.py              # ~10 minutes on 2 CPU cores
    .venv/bin/python pipeline.py --smoke                        # even smaller (CI)
    .venv/bin/python pipeline.py --out runs/mine --conditions all_strategies empty_cot dots

Stages: Countdown tasks -> symbolic priming traces per condition -> SFT of the tiny model on
each -> PPO from each primed model -> behavior counts of the logged rollouts -> figures and a
results table. Each stage is the real script run as a subprocess with the flags printed, so
you can copy a line and scale it up (a GPU, a 3B model: see README "Reproducing the study on
GPUs"). A stage whose output already exists is skipped, so a killed pipeline resumes.
"""
import argparse
import os
import shlex
import subprocess
import sys
import time

import common

# ---------------------------------------------------------------------------------
# settings: everything the pipeline does is decided here (each a flag; --help lists them)
SETTINGS = [
    # (flag, default, type, help)
    ("out", "runs/pipeline", str, "where data, runs and figures go"),
    ("model", "tiny", str, "--model of every stage: alias, hub id, local folder or tiny"),
    ("conditions", ["all_strategies", "empty_cot"], list, "priming conditions (gen_priming.py names)"),
    ("smoke", False, bool, "the smallest settings (CI smoke test): SMOKE's sizes where no flag sets them"),
    ("force", False, bool, "re-run stages whose outputs exist"),
    ("n_train", 2000, int, "Countdown training tasks"),
    ("n_test", 64, int, "Countdown test tasks"),
    ("task_sizes", "3", str, "numbers per task (4 are out of reach for a 0.9M model)"),
    ("priming_n", 400, int, "priming traces per condition"),
    ("priming_budget", 2, int, "attempts before the trace writer gives up (1 would never backtrack)"),
    ("sft_epochs", 2, int, "SFT epochs (the study: 5)"),
    ("sft_batch", 4, int, "SFT batch (the study: 64)"),
    ("sft_lr", 2e-3, float, "SFT learning rate"),
    ("sft_max_len", 512, int, "SFT sequence length; longer traces are dropped (counted in the SFT log)"),
    ("ppo_steps", 8, int, "PPO steps"),
    ("ppo_prompts", 16, int, "PPO prompts per step"),
    ("ppo_samples", 4, int, "PPO samples per prompt"),
    ("ppo_response_len", 320, int, "PPO response tokens (the traces are ~300)"),
    ("ppo_actor_lr", 1e-4, float, "PPO actor learning rate (tiny models need far larger steps than 3B ones)"),
    ("ppo_critic_lr", 1e-4, float, "PPO critic learning rate"),
    ("eval_every", 4, int, "PPO validation every N steps"),
    ("val_size", 32, int, "PPO validation tasks"),
]
SMOKE = dict(n_train=200, n_test=16, priming_n=24, sft_epochs=1, ppo_steps=2, ppo_prompts=4,
             ppo_response_len=64, eval_every=2, val_size=8)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = common.add_settings(ap, SETTINGS).parse_args(argv)
    return common.fill_defaults(a, SMOKE, common.passed_flags(ap, argv)) if a.smoke else a


# A child starts through this trampoline: it asks Linux to send it SIGTERM when its parent dies
# (PR_SET_PDEATHSIG; kept across exec, so even a SIGKILLed pipeline takes its stages down),
# gives up if the parent is already gone, then becomes the stage's command.
_TRAMPOLINE = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
               "os.getppid() == 1 and sys.exit(143); os.execv(sys.argv[1], sys.argv[1:])")
_CHILDREN = set()   # live stages (Popen); each leads its own process group


def run_child(argv, **kw):
    """subprocess.run for a stage: the child (and what it starts, e.g. torchrun's ranks) leads
    its own process group, which goes down with the pipeline (stop_children, PR_SET_PDEATHSIG)."""
    p = subprocess.Popen([sys.executable, "-c", _TRAMPOLINE, *argv], start_new_session=True, **kw)
    _CHILDREN.add(p)
    try:
        p.wait()
    except BaseException:            # Ctrl-C or SystemExit here: the stage must not run on
        stop_children()
        raise
    finally:
        _CHILDREN.discard(p)
    return p


def stop_children(signum=None, frame=None):
    """SIGTERM every live stage's process group (SIGKILL after 10 s); as a signal handler it
    then exits with 128 + the signal's number."""
    import signal
    for p in list(_CHILDREN):
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in list(_CHILDREN):
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
    if signum is not None:
        os._exit(128 + signum)


def stop_children_on_signals():
    """Call once from the main thread: SIGTERM / SIGHUP take every running stage down first."""
    import signal
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, stop_children)


def run(cmd, done_marker, force, log=None, env=None):
    """Run one stage unless its output exists; print the command so it can be copied.
    log: a file that gets the stage's stdout and stderr instead of the console (stages that
    run side by side); a failure then quotes its last lines. env: variables set for this stage
    alone (mini.py gives each its GPU). Returns True if it ran."""
    line = " ".join(shlex.quote(str(c)) for c in cmd)
    if os.path.exists(done_marker) and not force:
        print(f"[skip] {line}  (exists: {done_marker})", flush=True)
        return False
    where = "".join(f"{k}={v} " for k, v in (env or {}).items())
    print(f"[run ] {where}{line}" + (f"  > {log}" if log else ""), flush=True)
    t0 = time.time()
    # one thread per stage: the tiny model is too small to gain from more, and on a small
    # shared CPU PyTorch's thread pool oversubscribes the cores
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), **(env or {}))
    argv, cwd = [sys.executable] + [str(c) for c in cmd], os.path.dirname(os.path.abspath(__file__))
    if log:
        os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
        with open(log, "a") as f:
            r = run_child(argv, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    else:
        r = run_child(argv, env=env, cwd=cwd)
    if r.returncode != 0:
        tail = "".join(open(log, errors="replace").readlines()[-15:]) if log else ""
        raise SystemExit(f"stage failed (exit {r.returncode}): {line}"
                         + (f"\nlog: {log}, last lines:\n{tail}" if log else ""))
    print(f"[done] {time.time() - t0:.0f}s" + (f"  {log}" if log else ""), flush=True)
    return True


def resume_or_overwrite(force):
    """A training stage killed half-way continues from its checkpoint; --force starts it afresh."""
    return "--overwrite" if force else "--resume"


def main(argv=None):
    args = parse_args(argv)
    stop_children_on_signals()
    s = vars(args)
    out = os.path.abspath(args.out)
    data, priming = os.path.join(out, "data", "countdown"), os.path.join(out, "data", "priming")
    t0 = time.time()
    run(["countdown.py", "--out", data, "--n-train", s["n_train"], "--n-test", s["n_test"],
         "--sizes", s["task_sizes"]], os.path.join(data, "test.jsonl"), args.force)
    conds = args.conditions
    run(["gen_priming.py", "--backend", "symbolic", "--condition", ",".join(conds), "--n", s["priming_n"],
         "--out", priming, "--sizes", s["task_sizes"], "--budget", s["priming_budget"]], os.path.join(priming, "summary.json"), args.force)
    for c in conds:
        sft_out = os.path.join(out, f"sft-{c}")
        run(["sft.py", "--model", args.model, "--data", os.path.join(priming, f"{c}.jsonl"),
             "--out", sft_out, "--epochs", s["sft_epochs"], "--batch-size", s["sft_batch"],
             "--lr", s["sft_lr"], "--min-lr-frac", 1.0, "--grad-clip", 0.5, "--max-len", s["sft_max_len"],
             "--overlong", "drop", "--eval-frac", "0.1", resume_or_overwrite(args.force)],
            os.path.join(sft_out, "final", "config.json"), args.force)
        ppo_out = os.path.join(out, f"ppo-{c}")
        run(["ppo.py", "--model", args.model, "--init", os.path.join(sft_out, "final"), "--data", data,
             "--out", ppo_out, "--condition", c, "--steps", s["ppo_steps"], "--prompts-per-step", s["ppo_prompts"],
             "--samples-per-prompt", s["ppo_samples"], "--max-response-len", s["ppo_response_len"],
             "--actor-lr", s["ppo_actor_lr"], "--critic-lr", s["ppo_critic_lr"],
             "--mini-batch-prompts", s["ppo_prompts"], "--micro-batch", 16,
             "--eval-every", s["eval_every"], "--val-size", s["val_size"], "--log-rollouts-every", 1,
             "--save-every", 2, "--device", "cpu", resume_or_overwrite(args.force)],
            os.path.join(ppo_out, "final", "config.json"), args.force)
        run(["classify.py", "--backend", "rules", "--input", ppo_out, "--out", os.path.join(ppo_out, "classify"),
             "--condition", c, "--split", "rollouts"], os.path.join(ppo_out, "classify", "steps.csv"), args.force)
    figs = os.path.join(out, "figures")
    run(["plot.py", "--runs", *[os.path.join(out, f"ppo-{c}") for c in conds],
         "--priming", os.path.join(priming, "summary.json"), "--out", figs,
         "--html", os.path.join(figs, "report.html")], "", True)
    table = os.path.join(figs, "results.md")
    if os.path.exists(table):
        print("\n" + open(table).read())
    print(f"pipeline done in {time.time() - t0:.0f}s; figures in {figs}, "
          f"the run report (open it in a browser) in {os.path.join(figs, 'report.html')}")


if __name__ == "__main__":
    main()
