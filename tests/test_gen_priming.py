"""Tests of gen_priming.py and its symbolic writer (symbolic.py: behaviors, derived sets, resume, the
--n 1000 acceptance run) and the API backends against a local fake server."""
import doctest
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import countdown
import gen_priming as gp
import study
import symbolic
from common import read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "sk-test-NEVER-PRINT-ME-0123456789"
RECORD_KEYS = {"id", "prompt", "completion", "nums", "target", "condition", "correct", "behaviors"}


def records(out, cond):
    return read_jsonl(os.path.join(out, f"{cond}.jsonl"))


def marker_counts(completion):
    """Behavior sentences found by symbolic.MARKERS (one match per sentence)."""
    sents = [s for s in re.split(r"(?<=\.)\s+", gp.thinking(completion)) if s.strip()]
    return {b: sum(bool(re.search(p, s, re.I)) for s in sents) for b, p in symbolic.MARKERS.items()}


def assert_no_key(out_dir, *texts):
    for t in texts:
        assert KEY not in t
    for root, _, files in os.walk(out_dir):
        for f in files:
            with open(os.path.join(root, f), encoding="utf-8", errors="replace") as fh:
                assert KEY not in fh.read(), f"key leaked into {f}"


# ---------------------------------------------------------------------------------
# symbolic backend

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("priming"))
    assert gp.main(["--condition", ",".join(gp.ALL_CONDITIONS), "--n", "60", "--out", out]) == 0
    return out


def test_record_format(small):
    for cond in gp.ALL_CONDITIONS:
        recs = records(small, cond)
        assert len(recs) == 60 and len({r["id"] for r in recs}) == 60
        for r in recs:
            assert set(r) == RECORD_KEYS and r["condition"] == cond
            assert r["prompt"] == countdown.make_prompt(r["nums"], r["target"], "base")
            assert r["completion"].count("</think>") == 1
            assert r["completion"].endswith("</answer>")
            expr = countdown.extract_answer(r["completion"])
            assert r["correct"] == countdown.check_equation(expr, r["nums"], r["target"])
            assert countdown.score(r["completion"], r["nums"], r["target"]) in (0.1, 1.0)
            assert set(r["behaviors"]) == set(study.BEHAVIORS)


def test_exactly_the_conditions_behaviors(small):
    judging = re.compile(r"too (high|low|big|small)|\bis not\b|equals|match|correct|wrong|"
                         r"close|short of|the target|works|verif|check", re.I)
    for cond, wanted in gp.DIRECT.items():
        for r in records(small, cond):
            # the recorded counts are the sentences actually written, and nothing else shows
            assert marker_counts(r["completion"]) == r["behaviors"], r["completion"]
            assert all(r["behaviors"][b] == 0 for b in study.BEHAVIORS if b not in wanted)
            if "verification" not in wanted:
                assert not judging.search(gp.thinking(r["completion"])), r["completion"]


def test_five_numbers_and_any_budget():
    rng = __import__("random").Random(5)  # solvable or not: the writer copes either way
    tasks = [{"id": f"r{i}", "nums": [rng.randint(1, 99) for _ in range(5)],
              "target": rng.randint(10, 25)} for i in range(40)]
    for cond, wanted in gp.DIRECT.items():
        for t in tasks:
            for budget in (1, 9):
                r = symbolic.write_symbolic(t, cond, 0, budget)
                assert marker_counts(r["completion"]) == r["behaviors"]
                assert all(r["behaviors"][b] == 0 for b in study.BEHAVIORS if b not in wanted)
                assert countdown.score(r["completion"], t["nums"], t["target"]) > 0


def test_phrasing_varies(small):
    openings = {gp.thinking(r["completion"]).strip().split(".")[0].split(" ")[0]
                for r in records(small, "all_strategies")}
    assert len(openings) >= 3  # several wordings of the same move, picked by the seed


def test_derived_conditions(small):
    base = {r["id"]: r for r in records(small, "all_strategies")}
    count = gp.token_counter("tiny")
    for e, d in zip(records(small, "empty_cot"), records(small, "dots")):
        b = base[e["id"]]
        assert gp.thinking(e["completion"]) == "" and e["correct"] == b["correct"]
        assert countdown.extract_answer(e["completion"]) == countdown.extract_answer(b["completion"])
        assert set(gp.thinking(d["completion"])) <= {"."}
        assert count([gp.thinking(d["completion"])]) == count([gp.thinking(b["completion"])])
    extra = {r["id"]: r for r in read_jsonl(os.path.join(small, "extra", "all_strategies.jsonl"))}
    for r in records(small, "no_positive"):
        src = base.get(r["id"]) or extra[r["id"]]
        assert not r["correct"] and r["completion"] == src["completion"]


def test_same_seed_same_files_and_resume_after_kill(tmp_path):
    argv = ["--condition", "only_backtracking,dots", "--n", "40"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    gp.main(argv + ["--out", a])
    gp.main(argv + ["--out", b])
    names = ["only_backtracking.jsonl", "all_strategies.jsonl", "dots.jsonl"]
    read = lambda d, f: open(os.path.join(d, f), "rb").read()
    assert all(read(a, f) == read(b, f) for f in names)
    # a "killed" run: 13 whole lines and a torn 14th; the rerun completes it exactly
    path = os.path.join(b, "only_backtracking.jsonl")
    lines = read(b, "only_backtracking.jsonl").splitlines(keepends=True)
    with open(path, "wb") as f:
        f.write(b"".join(lines[:13]) + lines[13][:25])
    gp.main(argv + ["--out", b])
    assert all(read(a, f) == read(b, f) for f in names)
    gp.main(argv + ["--out", b])  # nothing left to do: nothing changes
    assert all(read(a, f) == read(b, f) for f in names)


def test_resume_refuses_other_tasks(tmp_path):
    out = str(tmp_path)
    gp.main(["--condition", "only_backtracking", "--n", "5", "--out", out, "--seed", "1"])
    for flag, value in [("--seed", "2"), ("--budget", "7"), ("--target-max", "30")]:
        assert gp.main(["--condition", "only_backtracking", "--n", "5", "--out", out, "--seed", "1",
                        flag, value]) == 2  # one line on stderr, no traceback
    with pytest.raises(gp.DataError, match="written with --target-max "):
        gp.check_stamp(gp.parse_args(["--out", out, "--seed", "1", "--target-max", "30"]))
    # same settings, larger n: resumes
    gp.main(["--condition", "only_backtracking", "--n", "8", "--out", out, "--seed", "1"])
    assert len(records(out, "only_backtracking")) == 8


def test_budget_controls_correctness():
    tasks = gp.make_tasks(150, 7)
    rate = {b: sum(symbolic.write_symbolic(t, "all_strategies", 0, b)["correct"] for t in tasks) / 150
            for b in (1, 3, 12)}
    assert rate[1] < rate[3] < rate[12]
    one = [symbolic.write_symbolic(t, "only_backtracking", 0, 1) for t in tasks]
    assert all(r["behaviors"]["backtracking"] == 0 for r in one)  # one attempt, nothing to undo


def test_tasks_file_and_template(tmp_path):
    tasks = str(tmp_path / "tasks.jsonl")
    with open(tasks, "w") as f:
        for i, (nums, t) in enumerate([([3, 2, 4], 24), ([44, 19, 3, 1], 76), ([1, 2, 3], 6)]):
            f.write(json.dumps({"id": f"t{i}", "nums": nums, "target": t}) + "\n")
    out = str(tmp_path / "out")
    gp.main(["--tasks", tasks, "--condition", "backtracking_backward", "--n", "3",
             "--out", out, "--template", "qwen-instruct"])
    recs = records(out, "backtracking_backward")
    assert [r["id"] for r in recs] == ["t0", "t1", "t2"]
    assert all(r["prompt"].startswith("<|im_start|>system") for r in recs)


@pytest.mark.parametrize("content, msg", [
    ("", "tasks.jsonl: no tasks (an empty file)"),
    ('{"nums": [1, 2, 3], "target": 6}\n{oops\n', "tasks.jsonl:2: malformed JSON"),
    ('{"nums": [1, 2, 3]}\n', "tasks.jsonl:1: record lacks target"),
    ('{"nums": ["a", 2, 3], "target": 6}\n', 'tasks.jsonl:1: "nums" must be a list of whole numbers'),
])
def test_bad_tasks_file_is_one_line(tmp_path, capfd, content, msg):
    p = tmp_path / "tasks.jsonl"
    p.write_text(content)
    assert gp.main(["--tasks", str(p), "--n", "3", "--condition", "only_backtracking",
                    "--out", str(tmp_path / "o")]) == 2
    err = capfd.readouterr().err
    assert msg in err.strip().splitlines()[-1] and "Traceback" not in err


def test_damaged_condition_file_is_named_not_a_traceback(tmp_path, capfd):
    argv = ["--condition", "only_backtracking", "--n", "5", "--out", str(tmp_path)]
    assert gp.main(argv) == 0
    path = tmp_path / "only_backtracking.jsonl"
    first, *rest = path.read_text().splitlines(True)
    path.write_text(first + "{oops\n" + "".join(rest))  # not a torn last line: someone's edit
    capfd.readouterr()
    assert gp.main(argv) == 2
    err = capfd.readouterr().err
    assert "only_backtracking.jsonl:2: malformed JSON" in err and "Traceback" not in err


def test_acceptance_n1000(tmp_path):
    out = str(tmp_path)
    t0 = time.process_time()  # CPU time: other jobs on a shared machine cannot make it flaky
    assert gp.main(["--condition", "all", "--n", "1000", "--out", out]) == 0
    assert time.process_time() - t0 < 45
    s = json.load(open(os.path.join(out, "summary.json")))["conditions"]
    assert sorted(s) == sorted(gp.CONDITIONS)
    assert all(s[c]["records"] == 1000 for c in gp.CONDITIONS)
    assert all(s["all_strategies"]["behaviors"][b] >= 1 for b in study.BEHAVIORS)
    for cond, wanted in ((c, w) for c, w in gp.DIRECT.items() if c in gp.CONDITIONS):
        for b in study.BEHAVIORS:
            mean = s[cond]["behaviors"][b]
            assert mean >= 1 if b in wanted else mean == 0, (cond, b, mean)
        assert 0 < s[cond]["correct_rate"] < 1
    assert all(gp.thinking(r["completion"]) == "" for r in records(out, "empty_cot"))
    ratio = s["dots"]["mean_completion_tokens"] / s["all_strategies"]["mean_completion_tokens"]
    assert abs(ratio - 1) < 0.05
    assert s["no_positive"]["correct_rate"] == 0


# ---------------------------------------------------------------------------------
# command line

@pytest.mark.parametrize("argv, words", [
    (["--condition", "bogus"], "--condition: unknown condition 'bogus'"),
    (["--n", "0"], "--n must be at least 1"),
    (["--budget", "0"], "--budget must be at least 1"),
    (["--sizes", "2,3"], "--sizes must lie in 3..5"),
    (["--sizes", "three"], "--sizes must be comma-separated"),
    (["--batch"], "--batch needs --backend anthropic or openai"),
    (["--tasks", "/no/such/file.jsonl"], "--tasks: no such file"),
    (["--backend", "anthropic"], "needs ANTHROPIC_API_KEY"),
    (["--template", "nope"], "--template"),
    (["--prompts", "theirs"], "--prompts must be ours or study:PATH"),
    (["--prompts", "study:/tmp"], "applies to --backend anthropic or openai"),
    (["--condition", "negative_controls"], "choose from all_strategies"),
])
def test_bad_flags_say_which_and_why(argv, words, capsys, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(SystemExit) as e:
        gp.parse_args(argv)
    assert e.value.code == 2 and words in capsys.readouterr().err


def test_every_flag_has_help():
    ap = gp.build_parser()
    flags = [a for a in ap._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in flags} == {row[0] for row in gp.SETTINGS}  # one flag per setting, and back
    assert all(a.help and len(a.help) > 10 for a in flags)


def test_import_has_no_side_effects(tmp_path):
    r = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {REPO!r}); "
                        "import gen_priming"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "" and os.listdir(tmp_path) == []


def test_doctests():
    assert doctest.testmod(gp).failed == 0
    assert doctest.testmod(symbolic).failed == 0


# ---------------------------------------------------------------------------------
# API backends against the local fake server

FAULTS = ["429", "500", "overloaded", "malformed"]


def check_api_records(out, cond, n):
    recs = records(out, cond)
    assert len(recs) == n and len({r["id"] for r in recs}) == n
    for r in recs:
        assert set(r) == RECORD_KEYS and r["behaviors"] is None
        assert r["completion"].startswith("\nLet me try") and "<think>" not in r["completion"]
        assert r["correct"] == (r["target"] % 2 == 0)  # the fake answers even targets right
    return recs


@pytest.mark.parametrize("backend", ["anthropic", "openai"])
def test_api_retries_on_429_500_overload_and_bad_body(backend, server, tmp_path, monkeypatch, capfd):
    srv = server(faults=list(FAULTS))
    env = "ANTHROPIC_API_KEY" if backend == "anthropic" else "OPENAI_API_KEY"
    monkeypatch.setenv(env, KEY)
    url = srv.url if backend == "anthropic" else srv.url + "/v1"
    out = str(tmp_path)
    rc = gp.main(["--backend", backend, "--base-url", url, "--condition",
                  "backtracking_verification", "--n", "12", "--out", out, "--retry-base", "0.001",
                  "--concurrency", "3"])
    cap = capfd.readouterr()
    assert rc == 0
    assert srv.served_faults == FAULTS and cap.err.count("retry") == len(FAULTS)
    assert "[redacted]" in cap.err  # the 500 echoed the key; we printed it blanked
    check_api_records(out, "backtracking_verification", 12)
    assert srv.completions == 12
    assert_no_key(out, cap.out, cap.err)


def test_api_derived_conditions(server, tmp_path, monkeypatch):
    srv = server()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out = str(tmp_path)
    assert gp.main(["--backend", "openai", "--base-url", srv.url + "/v1", "--condition",
                    "empty_cot,dots,no_positive", "--n", "10", "--out", out]) == 0
    assert len(records(out, "no_positive")) == 10
    assert all(not r["correct"] for r in records(out, "no_positive"))
    assert all(gp.thinking(r["completion"]) == "" for r in records(out, "empty_cot"))
    s = json.load(open(os.path.join(out, "summary.json")))["conditions"]
    assert s["all_strategies"]["behaviors"] is None and s["dots"]["records"] == 10


def test_api_model_is_sent_and_stamped(server, tmp_path, monkeypatch):
    """--api-model names the API's model; settings.json records the model that wrote (named or
    the default), and a folder stamped before the flag was renamed ("model": null, the default)
    still resumes."""
    srv = server()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out, stamp = str(tmp_path), os.path.join(str(tmp_path), "settings.json")
    argv = ["--backend", "openai", "--base-url", srv.url + "/v1", "--condition", "only_backtracking",
            "--n", "2", "--out", out]
    assert gp.main(argv + ["--api-model", "m-1"]) == 0
    assert {b["model"] for b in srv.bodies} == {"m-1"}
    old = json.load(open(stamp))
    assert old["api_model"] == "m-1" and "model" not in old
    assert gp.main(argv) == 2  # the default model would mix two runs: refused
    del old["api_model"]
    with open(stamp, "w") as f:
        json.dump({**old, "model": None}, f)
    assert gp.main(argv) == 0 and gp.main(argv + ["--api-model", "m-1"]) == 2


def test_bad_key_stops_cleanly(server, tmp_path, monkeypatch, capfd):
    srv = server()
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY + "-wrong")
    rc = gp.main(["--backend", "anthropic", "--base-url", srv.url, "--condition",
                  "only_backtracking", "--n", "4", "--out", str(tmp_path), "--retry-base", "0"])
    cap = capfd.readouterr()
    assert rc == 2 and "HTTP 401" in cap.err and "invalid x-api-key" in cap.err
    assert KEY not in cap.err and KEY not in cap.out


def test_anthropic_batch_resubmits_errored(server, tmp_path, monkeypatch, capfd):
    srv = server(batch_faults=["429", "overloaded", "malformed"], batch_errored=3)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    out = str(tmp_path)
    rc = gp.main(["--backend", "anthropic", "--batch", "--base-url", srv.url, "--condition",
                  "backtracking_subgoal", "--n", "10", "--out", out, "--poll", "0.01",
                  "--retry-base", "0.001"])
    cap = capfd.readouterr()
    assert rc == 0 and srv.served_faults == ["429", "overloaded", "malformed"]
    assert len(srv.batches) == 2 and len(srv.batches["msgbatch_0001"]["requests"]) == 3
    check_api_records(out, "backtracking_subgoal", 10)
    assert not os.path.exists(os.path.join(out, "backtracking_subgoal.jsonl.pending.json"))
    assert_no_key(out, cap.out, cap.err)


def test_openai_batch_api(server, tmp_path, monkeypatch, capfd):
    # --batch means one thing with either provider: here OpenAI's Batch API (upload, create,
    # poll, download) writes the traces, with a 429 on the upload retried
    srv = server(batch_faults=["429"], batch_polls=2)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out = str(tmp_path)
    rc = gp.main(["--backend", "openai", "--batch", "--base-url", srv.url + "/v1", "--condition",
                  "only_backtracking", "--n", "6", "--out", out, "--poll", "0.01", "--retry-base", "0.001"])
    cap = capfd.readouterr()
    assert rc == 0 and srv.served_faults == ["429"] and srv.completions == 0
    paths = [p for _, p, s in srv.requests if s == 200]
    assert paths[:2] == ["/v1/files", "/v1/batches"] and paths.count("/v1/batches/batch_0000") == 2
    assert "/v1/files/batch_0000-out/content" in paths
    check_api_records(out, "only_backtracking", 6)
    assert not os.path.exists(os.path.join(out, "only_backtracking.jsonl.pending.json"))
    assert_no_key(out, cap.out, cap.err)


# -- kill and restart: a real process, SIGKILLed mid-run ------------------------------

def start(args, env_key):
    env = {**os.environ, env_key: KEY, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, os.path.join(REPO, "gen_priming.py"), *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def wait_for(pred, timeout=30):
    t0 = time.time()
    while not pred():
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.02)


def lines(path):
    return open(path).read().count("\n") if os.path.exists(path) else 0


def test_kill_and_restart_loses_and_duplicates_nothing(server, tmp_path):
    srv = server(delay=0.05)
    out, n = str(tmp_path), 40
    path = os.path.join(out, "only_backtracking.jsonl")
    args = ["--backend", "openai", "--base-url", srv.url + "/v1", "--condition",
            "only_backtracking", "--n", str(n), "--out", out, "--concurrency", "2"]
    p = start(args, "OPENAI_API_KEY")
    wait_for(lambda: lines(path) >= 8)
    p.send_signal(signal.SIGKILL)
    out1, err1 = p.communicate()
    assert 8 <= lines(path) < n
    with open(path, "a") as f:  # as if killed in the middle of a write
        f.write('{"id": "p0-0000')
    srv.delay = 0
    p = start(args, "OPENAI_API_KEY")
    out2, err2 = p.communicate(timeout=60)
    assert p.returncode == 0, err2
    check_api_records(out, "only_backtracking", n)
    assert [r["id"] for r in sorted(records(out, "only_backtracking"), key=lambda r: r["id"])] \
        == [t["id"] for t in gp.make_tasks(n, 0)]
    assert_no_key(out, out1, err1, out2, err2)


def test_batch_killed_while_polling_resumes_the_same_batch(server, tmp_path):
    srv = server(batch_polls=10**9)  # stays "in_progress" until we say so
    out, n = str(tmp_path), 6
    pending = os.path.join(out, "only_backtracking.jsonl.pending.json")
    args = ["--backend", "anthropic", "--batch", "--base-url", srv.url, "--condition",
            "only_backtracking", "--n", str(n), "--out", out, "--poll", "0.02"]
    p = start(args, "ANTHROPIC_API_KEY")
    wait_for(lambda: os.path.exists(pending) and any(r[0] == "GET" for r in srv.requests))
    p.send_signal(signal.SIGKILL)
    out1, err1 = p.communicate()
    srv.batch_polls = 0
    p = start(args, "ANTHROPIC_API_KEY")
    out2, err2 = p.communicate(timeout=60)
    assert p.returncode == 0, err2
    assert len(srv.batches) == 1  # polled again, not paid for twice
    check_api_records(out, "only_backtracking", n)
    assert not os.path.exists(pending)
    assert_no_key(out, out1, err1, out2, err2)


# ---------------------------------------------------------------------------------
# as the study ran it: API sampling settings, the negative control, the study's prompts

def test_api_sampling_defaults_are_the_studys(server, tmp_path, monkeypatch):
    """generate_cot_datasets/api_gen.py:182-183 sends max_tokens=1024, temperature=0.5."""
    defaults = gp.parse_args([])
    assert (defaults.temperature, defaults.max_tokens) == (0.5, 1024)
    srv = server()
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for backend, url, extra in [("anthropic", srv.url, []), ("anthropic", srv.url, ["--batch", "--poll", "0"]),
                                ("openai", srv.url + "/v1", [])]:
        out = str(tmp_path / f"{backend}{len(extra)}")
        assert gp.main(["--backend", backend, "--base-url", url, "--condition", "only_backtracking",
                        "--n", "3", "--out", out, *extra]) == 0
    assert len(srv.bodies) == 9
    assert all(b["temperature"] == 0.5 and b["max_tokens"] == 1024 for b in srv.bodies)
    s = gp.parse_args(["--temperature", "0.9", "--max-tokens", "99"])  # still settable
    assert (s.temperature, s.max_tokens) == (0.9, 99)


def test_negative_control_is_a_straight_calculation_with_no_behavior():
    behavior_rules = pytest.importorskip("behavior_rules")
    tasks = gp.make_tasks(300, 11)
    recs = [symbolic.write_symbolic(t, "negative_control", seed=4) for t in tasks]
    step = re.compile(r"Step (\d+): (\d+) ([-+*/]) (\d+) = (\d+)\.")
    for r in recs:
        lines = gp.thinking(r["completion"]).strip().split("\n")
        steps = [step.fullmatch(x) for x in lines[1:-1]]
        assert all(steps) and [int(m.group(1)) for m in steps] == list(range(1, len(r["nums"])))
        assert r["behaviors"] == dict.fromkeys(study.BEHAVIORS, 0)
        assert marker_counts(r["completion"]) == r["behaviors"]
        assert behavior_rules.count_behaviors(r["completion"], r["nums"], r["target"]) == r["behaviors"], r["completion"]
        if r["correct"]:
            assert int(steps[-1].group(5)) == r["target"]
    assert sum(r["correct"] for r in recs) / len(recs) > 0.97  # straight to the answer
    assert len({r["completion"].split("\n")[1].split(" ")[0] for r in recs}) >= 3  # worded variously


def test_negative_control_is_written_on_request_only(tmp_path):
    """mini.py runs base + gen_priming.CONDITIONS: the control must not join that set."""
    assert "negative_control" not in gp.CONDITIONS and len(gp.CONDITIONS) == 8
    assert gp.ALL_CONDITIONS == gp.CONDITIONS + ("negative_control",)
    assert gp.parse_args(["--condition", "all"]).conditions == list(gp.CONDITIONS)
    out = str(tmp_path)
    assert gp.main(["--condition", "negative_control,empty_cot", "--n", "20", "--out", out]) == 0
    assert sorted(f for f in os.listdir(out) if f.endswith(".jsonl")) == [
        "all_strategies.jsonl", "empty_cot.jsonl", "negative_control.jsonl"]
    s = json.load(open(os.path.join(out, "summary.json")))["conditions"]
    assert s["negative_control"]["records"] == 20
    assert s["negative_control"]["behaviors"] == dict.fromkeys(study.BEHAVIORS, 0.0)


def test_negative_control_system_prompt_asks_for_no_behavior():
    text = gp.system_prompt("negative_control")
    assert gp.STRAIGHT_TEXT in text and gp.SEARCH_TEXT not in text
    assert all(study.BEHAVIORS[b].avoid in text for b in study.BEHAVIORS)
    assert "Show this reasoning habit" not in text and "Show these reasoning habits" not in text
    for c in ("all_strategies", "only_backtracking"):  # the other prompts keep their search paragraph
        assert gp.SEARCH_TEXT in gp.system_prompt(c) and gp.STRAIGHT_TEXT not in gp.system_prompt(c)


# A stand-in for the study's repository: the same file and the same way of defining the
# prompts (an Enum of condition names, a dict of SystemPrompt(prompt_text=...) keyed by its
# members), with placeholder text. Its first line fails if the file is ever run or imported.
FAKE_API_GEN = '''\
import module_that_is_not_installed
from enum import Enum


class Kind(Enum):
{members}


class SystemPrompt:
    pass


class Generator:
    def __init__(self):
        self.system_prompts = {{
{entries}
        }}
        self.other = {{"model": "some-model", "max_tokens": 1}}
'''


def fake_study_checkout(root, conditions):
    members = "".join(f'    {c.upper()} = "{c}"\n' for c in conditions)
    entries = "".join(f'            Kind.{c.upper()}: SystemPrompt(\n'
                      f'                prompt_text="""PLACEHOLDER system prompt for {c}.\n'
                      f'Second line.""",\n                cache_control={{"type": "ephemeral"}}),\n'
                      for c in conditions)
    os.makedirs(os.path.join(root, "generate_cot_datasets"), exist_ok=True)
    with open(os.path.join(root, "generate_cot_datasets", "api_gen.py"), "w") as f:
        f.write(FAKE_API_GEN.format(members=members.rstrip("\n"), entries=entries.rstrip("\n")))
    return str(root)


def test_study_prompts_are_read_from_a_checkout(server, tmp_path, monkeypatch):
    direct = [c for c in gp.DIRECT]
    root = fake_study_checkout(tmp_path / "checkout", direct)
    assert gp.study_system_prompts(root) == {c: f"PLACEHOLDER system prompt for {c}.\nSecond line."
                                             for c in direct}
    srv = server()
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    out = str(tmp_path / "out")
    argv = ["--backend", "anthropic", "--base-url", srv.url, "--condition", "negative_control,dots",
            "--n", "4", "--out", out, "--prompts", f"study:{root}"]
    assert gp.main(argv) == 0
    systems = {b["system"][0]["text"] for b in srv.bodies}
    assert systems == {"PLACEHOLDER system prompt for negative_control.\nSecond line.",
                       "PLACEHOLDER system prompt for all_strategies.\nSecond line."}  # dots: from all_strategies
    users = [b["messages"][-1]["content"] for b in srv.bodies]
    assert all(u.startswith("A conversation between User and Assistant.") and
               u.endswith("Let me solve this step by step.") for u in users)
    rec = records(out, "negative_control")[0]
    assert gp.study_user_message(rec) + "\n<think>" == rec["prompt"]
    stamp = json.load(open(os.path.join(out, "settings.json")))
    assert stamp["prompts"].startswith("study:") and root not in stamp["prompts"]
    assert gp.main(argv[:-2]) == 2  # resuming with our prompts would mix two runs: refused
    n = len(srv.bodies)
    assert gp.main(argv) == 0 and len(srv.bodies) == n  # the same prompts: nothing left to do


def test_study_prompts_missing_path_or_prompt_is_one_clear_line(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    base = ["--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--n", "2",
            "--out", str(tmp_path / "out")]
    assert gp.main(base + ["--condition", "only_backtracking", "--prompts", f"study:{tmp_path}/nope"]) == 2
    err = capfd.readouterr().err.strip()
    assert "\n" not in err and "no generate_cot_datasets/api_gen.py there" in err and "Traceback" not in err
    root = fake_study_checkout(tmp_path / "co", ["only_backtracking", "all_strategies"])
    assert gp.main(base + ["--condition", "backtracking_subgoal,no_positive", "--prompts", f"study:{root}"]) == 2
    err = capfd.readouterr().err.strip()
    assert "\n" not in err and "no system prompt for backtracking_subgoal (found: all_strategies, " in err
    assert not os.path.exists(tmp_path / "out" / "settings.json")  # nothing was started


def test_every_step_is_one_operation_on_numbers_already_written():
    # The traces compute one operation at a time, left to right, from numbers already on the page:
    # the closing check recomputes its equation step by step (not "(16 - 4) + 10 = 22" in one go)
    # and a backward step computes the number it needs forward ("I need 25 - 11 = 14", not
    # "25 = 14 + 11", which writes 14 before the 11 it comes from). A ~10M model primed on the old
    # forms wrote the target after whatever it had reached (docs/mini/calibration3.md).
    import behavior_rules
    for cond in ("all_strategies", "backtracking_verification", "backtracking_backward", "backtracking_subgoal"):
        for i in range(150):
            k = 3 + i % 2
            task = {"id": f"t{i}", "nums": [(7 * i + 5 * j) % 23 + 1 for j in range(k)], "target": 10 + i % 40}
            text = behavior_rules.normalize(symbolic.write_symbolic(task, cond, seed=i)["completion"])
            known = {str(n) for n in task["nums"]} | {str(task["target"])}
            for e in behavior_rules.find_equations(text):
                number = r"-?\d+(?:/\d+)?"   # a fraction "5/2" is one number; "10 / 4" an operation
                seen = known | set(re.findall(number, text[:e["start"]]))
                ops = re.findall(number, e["expr"])
                assert e["kind"] == "fwd" and len(ops) == 2, (cond, e["expr"], text)
                assert set(ops) <= seen, (cond, e["expr"], text)
