"""mini.py: the smoke run end to end on the CPU, and its pure helpers."""
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest

import basics
import behavior_rules
import countdown
import mini
import mini_checks
import mini_report
import plot
from conftest import REPO, SHARED

CONDS = ("base", "all_strategies", "empty_cot")  # mini.SMOKE's conditions


def test_spread_over_seeds():
    sp = mini_report.spread([0.2, 0.4, None, float("nan"), 0.3])
    assert sp["n"] == 3 and sp["min"] == 0.2 and sp["max"] == 0.4
    assert sp["mean"] == pytest.approx(0.3) and sp["std"] == pytest.approx(0.1)  # sample std
    assert mini_report.spread([0.5]) == {"mean": 0.5, "std": 0.0, "min": 0.5, "max": 0.5, "n": 1}
    assert mini_report.spread([None, float("nan")]) is None
    assert mini_report.fmt_spread(sp) == "0.300 ± 0.100 (0.200–0.400)"
    assert mini_report.fmt_spread(mini_report.spread([0.5])) == "0.500" and mini_report.fmt_spread(None) == "-"


def test_seed_means_average_each_step_over_seeds():
    rows = [{"condition": "a", "step": 1.0, "accuracy": 0.1, "avg_backtracking": 1.0},
            {"condition": "a", "step": 1.0, "accuracy": 0.3, "avg_backtracking": math.nan},
            {"condition": "a", "step": 5.0, "accuracy": 0.5}]
    out = mini_report.seed_means({"a": rows})
    assert out[0] == {"condition": "a", "step": 1, "accuracy": 0.2, "avg_backtracking": 1.0}
    assert out[1] == {"condition": "a", "step": 5, "accuracy": 0.5}


def test_uses_numbers_counts_answers_that_read_the_prompt():
    recs = [{"nums": [3, 5, 7], "response": "...<answer>(7 - 3) * 5</answer>"},   # wrong value, right numbers
            {"nums": [3, 5, 7], "response": "<answer>3 + 5</answer>"},             # 7 unused
            {"nums": [3, 5, 7], "response": "no answer"}]
    assert [mini_checks.uses_numbers(r) for r in recs] == [True, False, False]


def test_arithmetic_corpus_is_behavior_free_and_well_formed():
    docs = mini.arithmetic_corpus(400, seed=3, format_frac=0.25, restate=0.5)
    assert docs == mini.arithmetic_corpus(400, seed=3, format_frac=0.25, restate=0.5)  # deterministic
    worked = [d["text"] for d in docs if "<think>" in d["text"]]
    assert 60 < len(worked) < 140
    for text in worked:
        prompt, response = text.rsplit("<think>", 1)
        m = re.search(r"numbers \[([^\]]*)\], create an equation that equals (\d+)", prompt)
        nums, target = [int(x) for x in m.group(1).split(",")], int(m.group(2))
        assert len(nums) == 3 and all(1 <= x <= 24 for x in nums) and 10 <= target <= 25  # the tasks' range
        assert prompt + "<think>" == countdown.make_prompt(nums, target)
        assert countdown.score(response, nums, target) >= 0.1, response  # every number used once
        assert not any(behavior_rules.count_behaviors(response, nums, target).values()), response
    fwd = dec = restated = 0
    for d in docs:
        for lhs, rhs in re.findall(r"(?<![\d)] )([\d()+\-*/ ]+?) = (\d+)\.", d["text"]):
            assert countdown.evaluate(lhs) == int(rhs), d["text"]  # the arithmetic is right
            fwd += 1
            restated += lhs.lstrip().startswith("(") and f"So {lhs.strip()} = {rhs}." in d["text"]
        for val, expr in re.findall(r"(?:^|\. )(\d+) = ([\d()+\-*/ ]+?)\.", d["text"]):
            if any(o in expr for o in "+-*/"):
                assert countdown.evaluate(expr) == int(val), d["text"]  # ... read from its value too
                dec += 1
    assert fwd > 500 and dec > 50 and restated > 100  # nested restatements ("So (16 - 4) + 10 = 22.") are right


def test_checks_pass_and_fail_on_their_thresholds():
    good = {"nums": [3, 5, 7], "target": 20,
            "response": "3 + 5 = 8. 8 * 7 = 56. Too big. Let me try again. 7 - 3 = 4. 4 * 5 = 20."
                        "</think><answer>(7 - 3) * 5</answer>"}
    bad = {"nums": [3, 5, 7], "target": 20, "response": "3 + 5 = 9. 9 * 7 = 20</think><answer>9 * 7</answer>"}
    m = mini_checks.measure([good] * 9 + [bad])
    assert m["closes"] == 1.0 and m["numbers"] == pytest.approx(0.9) and m["statements"] == 38
    assert m["arithmetic"] == pytest.approx(36 / 38)   # the bad response's two statements are wrong
    priming = {"all_strategies": mini_checks.behavior_means([good], "response")}
    rows = mini_checks.check_rows({"accuracy": 0.99, "n": 100}, {"all_strategies": m}, priming)
    verdict = {r[1]: r[4] for r in rows}
    assert verdict == {"single-step arithmetic, greedy": True, "closes </answer> within the budget": True,
                       "answer uses exactly the task's numbers": True, "arithmetic statements right": False,
                       "behaviors match the priming set (model vs set)": True}
    table = mini_checks.checks_markdown(rows)
    assert "**1 of 5 checks FAIL:** all_strategies: arithmetic statements right (0.947 of 38)" in table
    assert mini_checks.checks_markdown(rows[:1]).strip().endswith("All 1 checks pass.")


def test_arithmetic_lines_are_right_and_in_range():
    lines = mini_checks.arithmetic_lines(300, seed=5, num_range=(1, 24))
    assert len({p for p, _ in lines}) == 300
    for prompt, val in lines:
        expr = prompt.removesuffix(" =")
        assert countdown.evaluate(expr) == val and max(countdown.numbers_in(expr) + [val]) <= mini_checks.MAX_VALUE


def test_doctests():
    import doctest
    assert doctest.testmod(mini_checks).failed == 0
    assert doctest.testmod(mini).failed == 0
    assert doctest.testmod(mini_report).attempted >= 1 and doctest.testmod(mini_report).failed == 0
    res = doctest.testmod(basics)   # its settings helpers: mini's flags and the --make-base child's
    assert res.attempted >= 6 and res.failed == 0


def test_mini_smoke(tmp_path):
    out = tmp_path / "mini"
    ref = os.path.join(SHARED, "reference", "llama_results.csv")
    r = subprocess.run([sys.executable, "mini.py", "--smoke", "--out", str(out),
                        *(["--reference", ref] if os.path.exists(ref) else [])],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "mini done" in r.stdout and r.stdout.count(" finished, ") == 2 + len(CONDS)
    table = (out / "results.md").read_text()
    assert table in r.stdout
    # the checks are computed and printed before any PPO result (whether they pass is not asserted)
    checks = json.loads((out / "checks.json").read_text())
    models = {row["model"] for row in checks["rows"]}
    assert models == set(CONDS) and all(isinstance(row["passed"], bool) for row in checks["rows"])
    assert len(checks["rows"]) == 2 + 4 * (len(CONDS) - 1)
    assert checks["base_arithmetic"]["n"] == mini.SMOKE["arith_lines"]
    assert re.search(r"checks FAIL|checks pass", (out / "checks.md").read_text())
    assert r.stdout.index("## Manipulation checks") < r.stdout.index("# The study in miniature: results")
    assert (out / "checks.md").read_text() in table
    res = json.loads((out / "results.json").read_text())
    assert list(res["summary"]) == ["base_model", *CONDS]
    assert sorted(x["condition"] for x in res["runs"]) == sorted(CONDS)
    for c in CONDS:
        assert re.search(rf"^\| {c} \| 1 \| \d\.\d{{3}} \| \d\.\d{{3}} \|", table, re.M), c
        assert re.search(rf"^\| {c} \| .* \| [+-]\d\.\d{{3}} ± \d\.\d{{3}} \| ", table, re.M), c   # the late slope
        run = out / "runs" / f"{c}-s0"
        assert (run / "ppo.log").exists() and (run / "ppo" / "val" / "step_000000.jsonl").exists()
        recs = [json.loads(x) for x in (run / "ppo" / "classify" / "classified.jsonl").read_text().splitlines()]
        assert recs and all(r["classifier"] == "rules" and "backtracking" in r for r in recs)
        s = res["summary"][c]
        assert 0 <= s["val_before"]["mean"] <= 1 and 0 <= s["val_after"]["mean"] <= 1
        one = next(x for x in res["runs"] if x["condition"] == c)
        assert set(one["val_curve"]) == {"0", "1", "2"}  # before PPO and after, by ppo.py's validation
    assert not (out / "primed" / "base" / "sft").exists()  # the base row is not primed
    rows = plot.read_steps_csv(str(out / "results" / "mini_seed_mean.csv"))
    assert {r["condition"] for r in rows} == set(CONDS) and {r["step"] for r in rows} == {1, 2}
    val = plot.read_steps_csv(str(out / "results" / "mini_val_seed_mean.csv"))
    assert {r["step"] for r in val} == {0, 1, 2}
    for name in ("accuracy.png", "behaviors_mini_seed_mean.png", "priming.png"):
        assert os.path.getsize(out / "figures" / name) > 200, name
    if os.path.exists(ref):
        assert "study: step 250" in table and "| base | 1 |" in table
        assert res["study"]["all_strategies"]["end"]["step"] == 250
    longer_ppo_extends_every_run(out, ref)
    one_run_fails_and_the_rest_are_still_reported(out, ref)


def longer_ppo_extends_every_run(out, ref):
    """The same command with a larger --ppo-steps continues each finished run from its last
    checkpoint (step 2 -> 3) and re-reports; nothing before PPO runs again. Before, a finished
    run was skipped (its final/ existed) and a changed --ppo-steps was refused. Two runs are
    left as a kill or a clean-up leaves them: base without final/ (killed after its last
    checkpoint: its behavior counts must be redone too), empty_cot without ckpt/ (final/ holds the
    same state and must become the checkpoint it resumes from, not a restart from step 0)."""
    shutil.rmtree(out / "runs" / "base-s0" / "ppo" / "final")
    shutil.rmtree(out / "runs" / "empty_cot-s0" / "ppo" / "ckpt")
    before = {p: os.path.getmtime(p) for p in (out / "base" / "final" / "config.json",
                                              out / "primed" / "all_strategies" / "sft" / "final" / "config.json")}
    mini.main(["--smoke", "--out", str(out), "--ppo-steps", "3",
               *(["--reference", ref] if os.path.exists(ref) else [])])
    assert {p: os.path.getmtime(p) for p in before} == before
    res = json.loads((out / "results.json").read_text())
    for one in res["runs"]:
        run = out / "runs" / f"{one['condition']}-s0" / "ppo"
        steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == [0, 1, 2, 3], steps                  # resumed at 3: no step twice, none lost
        assert set(one["val_curve"]) == {"0", "1", "2", "3"}
        assert json.loads((run / "final" / "trainer_state.json").read_text())["step"] == 3
        assert max(json.loads(x)["step"] for x in (run / "classify" / "classified.jsonl").read_text().splitlines()) == 3
    log = (out / "runs" / "empty_cot-s0" / "ppo.log").read_text()
    assert "resuming from" in log.split("step 2/2")[-1] and "ckpt/step_000002" in log


def one_run_fails_and_the_rest_are_still_reported(out, ref):
    """The same command again, with one run failing (as one did on 4 H100s, after 113 of 200
    steps): results.md covers the other runs and names the failed one, then mini stops with its
    error. Before, one failure left no results at all. Here the run failed before it sampled
    at step 0: its checks are named as not measured, not scored 0.000 and failed."""
    real = mini.run_pool
    os.remove(out / "runs" / "empty_cot-s0" / "ppo" / "val" / "step_000000.jsonl")

    def one_fails(chains, *a, **k):
        failed = real(chains, *a, **k)       # every stage is done: each is skipped
        return {**failed, "empty_cot seed 0": "stage failed: boom"} if any(n == "empty_cot seed 0" for n, _ in chains) \
            else failed
    mini.run_pool = one_fails
    try:
        with pytest.raises(SystemExit, match=f"1 of {len(CONDS)} jobs failed"):
            mini.main(["--smoke", "--out", str(out), "--ppo-steps", "3",   # as longer_ppo_extends_every_run left it
                       *(["--reference", ref] if os.path.exists(ref) else [])])
    finally:
        mini.run_pool = real
    table = (out / "results.md").read_text()
    assert "Runs that failed, missing from every table below: empty_cot seed 0" in table
    acc = table[table.index("## Validation accuracy"):]                  # the checks still list every model
    assert not re.search(r"^\| empty_cot \|", acc, re.M) and re.search(r"^\| base \| 1 \|", acc, re.M)
    res = json.loads((out / "results.json").read_text())
    assert "empty_cot" not in res["summary"] and res["failed"] == ["empty_cot seed 0"]
    checks = (out / "checks.md").read_text()
    assert "Not measured (no sample before PPO: its runs failed): empty_cot." in checks
    assert "| empty_cot |" not in checks and json.loads((out / "checks.json").read_text())["not_measured"] == ["empty_cot"]


def test_gpu_slots_spread_jobs_over_gpus():
    s = dict(mini.parse_args([])[1], device="cuda", gpus=[0, 1, 2, 3], jobs=2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in mini.gpu_slots(s)] == ["0", "1", "2", "3"] * 2
    assert mini.gpu_slots(dict(s, device="cpu", jobs=3)) == [{}, {}, {}]


def test_shared_stage_runs_once(tmp_path, monkeypatch):
    """Chains that share a stage (a condition's priming, one per seed) run it once, on the slot of
    the first chain that gets there; every chain's own stages run with its slot's env."""
    calls = []

    def fake_run(cmd, marker, force, log=None, env=None):
        if os.path.exists(marker) and not force:
            return False
        calls.append((cmd[0], env["CUDA_VISIBLE_DEVICES"]))
        open(marker, "w").close()
        return True
    monkeypatch.setattr(mini, "run", fake_run)
    shared = ("sft", ["prime"], str(tmp_path / "primed"), None)
    chains = [(f"seed {i}", [shared, ("ppo", [f"ppo{i}"], str(tmp_path / f"ppo{i}"), None)]) for i in range(3)]
    assert mini.run_pool(chains, [{"CUDA_VISIBLE_DEVICES": g} for g in "01"], force=True) == {}
    assert [c for c, _ in calls].count("prime") == 1 and sorted(c for c, _ in calls if c != "prime") == [
        "ppo0", "ppo1", "ppo2"]


def test_make_base_stage_gets_the_resolved_base_settings(tmp_path, monkeypatch):
    # the base is made in a child process: the base's settings as resolved here (flags and
    # --smoke's sizes) must reach it, though the child gets no --smoke
    cmds = []
    monkeypatch.setattr(mini, "run", lambda cmd, *a, **k: cmds.append(cmd))
    _, s = mini.parse_args(["--smoke", "--out", str(tmp_path), "--base-docs", "7", "--base-restate", "0.5",
                            "--target-range", "[12, 20]"])
    s["device"] = "cpu"
    mini.prelude(s, mini.paths(s), force=False)
    make = next(c for c in cmds if "--make-base" in c)
    assert "--smoke" not in make
    _, child = mini.parse_args([str(x) for x in make[1:]])
    same = lambda d: json.loads(json.dumps({k: d[k] for k in mini.BASE_SETTINGS}))  # noqa: E731  (tuples as lists)
    assert same(child) == same(s)
    assert child["base_docs"] == 7 and child["base_restate"] == 0.5 and child["target_range"] == [12, 20]
    assert child["base_size"] == mini.SMOKE["base_size"] != mini.parse_args([])[1]["base_size"]


def test_every_setting_is_a_flag():
    defaults = {name: default for name, default, _, _ in mini.SETTINGS}
    _, s = mini.parse_args([])
    assert {k: v for k, v in s.items() if k != "out"} == {k: v for k, v in defaults.items() if k != "out"}
    # --smoke fills SMOKE's sizes where no flag set them; flags keep their values, typed
    _, s = mini.parse_args(["--smoke", "--ppo-steps", "7", "--seeds", "4", "5", "--gpus", "1",
                            "--base-size", '{"hidden_size": 32}', "--num-range", "[2, 20]"])
    assert s["ppo_steps"] == 7 and s["seeds"] == [4, 5] and s["gpus"] == [1]
    assert s["base_size"] == {"hidden_size": 32} and s["num_range"] == [2, 20]
    assert s["sft_steps"] == mini.SMOKE["sft_steps"] and s["device"] == "cpu" and s["smoke"] is True
    # a flag given with the default's own value stays (--smoke replaced it before)
    _, s = mini.parse_args(["--smoke", "--seeds", "0", "1", "2", "--ppo-steps", "200"])
    assert s["seeds"] == [0, 1, 2] and s["ppo_steps"] == 200 and s["sft_steps"] == mini.SMOKE["sft_steps"]
    # every resolved setting survives the trip to a child process's flags
    names = [k for k, v in s.items() if v is not None]
    _, back = mini.parse_args(basics.settings_argv(mini.SETTINGS, s, names))
    assert {k: back[k] for k in names} == {k: s[k] for k in names}


def test_rerun_with_changed_settings_is_refused(tmp_path, capsys):
    """Stages whose outputs exist are skipped, so re-running into the same --out with another
    --sft-steps would silently reuse the old primed models (a run primed at 600 steps would
    have reported as 900). Where and how much runs may change; what the runs make may not,
    unless --force redoes it."""
    out = str(tmp_path / "m")
    _, s = mini.parse_args(["--smoke", "--out", out])
    mini.same_settings_or_exit(s, force=False)                       # first run: recorded
    _, again = mini.parse_args(["--smoke", "--out", out, "--seeds", "7", "--gpus", "1", "--jobs", "3",
                                "--checks-only", "--conditions", "base"])
    mini.same_settings_or_exit(again, force=False)                   # placement and scope: free
    with pytest.raises(SystemExit) as e:                             # main stops before any stage
        mini.main(["--smoke", "--out", out, "--sft-steps", "5"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "--sft-steps 2 (now 5)" in err and "--force" in err and not os.path.exists(os.path.join(out, "data"))
    _, changed = mini.parse_args(["--smoke", "--out", out, "--sft-steps", "5"])
    mini.same_settings_or_exit(changed, force=True)                  # --force: redone, recorded anew
    mini.same_settings_or_exit(changed, force=False)
    _, longer = mini.parse_args(["--smoke", "--out", out, "--sft-steps", "5", "--ppo-steps", "9"])
    mini.same_settings_or_exit(longer, force=False)                  # PPO may grow (extend_runs) ...
    _, probe = mini.parse_args(["--smoke", "--out", out, "--sft-steps", "5", "--ppo-steps", "20", "--checks-only"])
    mini.same_settings_or_exit(probe, force=False)                   # (not where no PPO runs: --checks-only)
    assert json.load(open(os.path.join(out, "mini_settings.json")))["ppo_steps"] == 9
    with pytest.raises(SystemExit) as e:                             # ... but not shrink
        mini.same_settings_or_exit(changed, force=False)
    assert e.value.code == 2 and "--ppo-steps 9 (now 2)" in capsys.readouterr().err
    with open(os.path.join(out, "mini_settings.json"), "w") as f:
        f.write("{oops")
    with pytest.raises(SystemExit) as e:
        mini.same_settings_or_exit(changed, force=False)
    assert e.value.code == 2 and "mini_settings.json: malformed JSON" in capsys.readouterr().err


def test_calibrated_defaults():
    """The GPU defaults the calibrations fixed before any PPO result (docs/mini/calibration3.md,
    calibration4.md): 3,000 traces on 7,300 train tasks, 900 priming steps (600 failed
    all_strategies' arithmetic check twice: 0.948, 0.949), 3 seeds; PPO's 350 steps were set by
    speed (the most that fit 25 minutes on 4 H100s), not by any condition's result."""
    _, s = mini.parse_args([])
    assert (s["priming_n"], s["n_train"], s["sft_steps"], s["sft_batch"]) == (3000, 7300, 900, 32)
    assert (s["ppo_steps"], s["ppo_prompts"], s["ppo_samples"], s["seeds"]) == (350, 64, 4, [0, 1, 2])


@pytest.mark.parametrize("argv", [["--num-range", "[3]"], ["--num-range", "[1,"], ["--target-range", "[9, 2]"],
                                  ["--base-size", "[64]"], ["--seeds", "x"], ["--conditions", "nope"], ["--jobs", "0"]])
def test_bad_settings_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        mini.parse_args(argv)
    assert e.value.code == 2 and argv[0] in capsys.readouterr().err


def test_mini_checks_cli_needs_model_and_out(capsys):
    with pytest.raises(SystemExit) as e:
        mini_checks.main(["--out", "x.json"])
    assert e.value.code == 2 and "--model and --out are required" in capsys.readouterr().err


def test_checks_only_validates_before_ppo_and_stops(tmp_path):
    # --checks-only: priming and each run's step-0 validation (ppo.py --steps 0) into OUT/checks/,
    # the checks, and nothing of PPO: no update, no checkpoint, no runs/ a later full run would skip
    out = tmp_path / "mini"
    r = subprocess.run([sys.executable, "mini.py", "--smoke", "--out", str(out), "--checks-only"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "mini checks done" in r.stdout and "## Manipulation checks" in r.stdout
    assert "# The study in miniature: results" not in r.stdout and not (out / "results.md").exists()
    checks = json.loads((out / "checks.json").read_text())
    assert {row["model"] for row in checks["rows"]} == set(CONDS)
    assert not (out / "runs").exists()
    for c in CONDS:
        ppo = out / "checks" / f"{c}-s0" / "ppo"
        assert (ppo / "val" / "step_000000.jsonl").exists()
        assert not (ppo / "final").exists() and not any(ppo.glob("ckpt*")), c


def test_checks_only_validates_like_the_runs_step_0():
    # --checks-only's validation must draw the samples a full run's step 0 draws: the same
    # primed model, tasks, seed, response budget, validation size and samples
    _, s = mini.parse_args(["--smoke", "--out", "/tmp/x"])
    p = mini.paths(s)

    def flags(checks_only):
        cmd = mini.ppo_stages("all_strategies", 1, {**s, "checks_only": checks_only}, p, False)[0][1]
        return {k: cmd[i + 1] for i, k in enumerate(cmd) if k in (
            "--model", "--init", "--data", "--seed", "--max-response-len", "--val-size", "--val-samples", "--device")}
    full, val = flags(False), flags(True)
    assert len(full) == 8 and full == val


def test_flatness_fits_a_slope_over_the_last_validations():
    """A curve still rises where its slope over the last LATE x eval_every steps (a line per seed,
    one shared slope) beats FLAT and 2 standard errors. The 350-step run's two-point test (step
    300 vs 350, +0.016 to +0.027 against an SE of 0.017) called every condition flat; a fit over
    steps 250-350 finds all_strategies rising at 0.034 ± 0.009 per 100 steps."""
    steps = range(0, 375, 25)
    wiggle = lambda seed, s: 0.01 * ((s // 25 + seed) % 3 - 1)  # noqa: E731  (-0.01, 0, +0.01 in turn)
    curves = {"up": [{s: 0.3 + 0.0004 * s + wiggle(k, s) for s in steps} for k in range(3)],
              "noise": [{s: 0.3 + 2 * wiggle(k, s) for s in steps} for k in range(3)],
              "flat": [{s: 0.3 for s in steps} for _ in range(3)]}
    summary = {}
    for c, cs in curves.items():
        slope, se, first = mini_report.late_slope(cs, mini_report.LATE * 25)
        summary[c] = {"late_slope": {"per_100_steps": slope, "se": se, "from_step": first}, "val_after_step": 350,
                      "start": {}, "end": {}}
    assert summary["up"]["late_slope"]["from_step"] == 250
    assert abs(summary["up"]["late_slope"]["per_100_steps"] - 0.04) < 0.01
    line = next(x for x in mini_report.reading(summary, {}) if "Flat by the end" in x)
    assert "from step 250 to 350" in line and "in 1 of 3 conditions (up +0.0" in line
    assert "noise +" not in line.split("(chance")[0] and "flat +" not in line
    # two points per seed leave no degree of freedom for the error: no verdict rather than a wrong one
    assert mini_report.late_slope([{0: 0.1, 25: 0.2}], 100)[0] is None


def test_amplified_means_ten_percent_more_not_any_more():
    """no_positive's verification went 2.99 -> 3.00 in the 200-step run: the reading called that
    amplification ('partly reproduced'); a rise is now >= AMPLIFY x the start."""
    summary = {c: {"start": {"verification": {"mean": a}}, "end": {"verification": {"mean": b}}}
               for c, a, b in (("no_positive", 2.99, 3.00), ("all_strategies", 2.70, 2.50))}
    line = next(x for x in mini_report.reading(summary, {}) if "amplifies verification" in x)
    assert "not reproduced" in line and "0 of 2" in line
    summary["all_strategies"]["end"]["verification"]["mean"] = 3.0     # > 1.1 x 2.70
    assert "partly reproduced** (1 of 2" in next(x for x in mini_report.reading(summary, {}) if "amplifies verification" in x)
