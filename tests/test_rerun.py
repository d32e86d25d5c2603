"""Runs that never corrupt: a used --out is refused without --resume / --overwrite, a resume
under other settings is refused, bad flags and bad data are one line with exit 2 before
anything is written, kills leave nothing behind that the next start does not clean, and the
pipeline takes its stages down with it and resumes them."""
import os
import signal
import subprocess
import sys
import time

import pytest

import common
import countdown
import sft
from conftest import REPO

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY_PPO = ["--model", "tiny", "--steps", "1", "--prompts-per-step", "2", "--samples-per-prompt", "2",
            "--mini-batch-prompts", "2", "--max-response-len", "8", "--eval-every", "0", "--device", "cpu"]


def ppo(*args):
    return subprocess.run([sys.executable, "ppo.py", *TINY_PPO, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=ENV)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    common.write_jsonl(str(d / "train.jsonl"), countdown.generate_tasks(16, seed=0))
    common.write_jsonl(str(d / "test.jsonl"), countdown.generate_tasks(4, seed=1))
    return str(d)


def one_line_error(r, *words):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert all(w in lines[-1] for w in words), lines[-1]


def test_ppo_refuses_a_used_out_and_a_resume_under_other_settings(tmp_path, data):
    out = str(tmp_path / "run")
    assert ppo("--data", data, "--out", out).returncode == 0
    before = open(os.path.join(out, "metrics.jsonl")).read()
    r = ppo("--data", data, "--out", out)                       # the same command again
    one_line_error(r, "already holds a run", "metrics.jsonl", "final", "--resume", "--overwrite")
    assert open(os.path.join(out, "metrics.jsonl")).read() == before     # nothing touched
    r = ppo("--data", data, "--out", out, "--resume", "--steps", "2", "--clip", "0.3")
    one_line_error(r, "other settings", "--clip 0.2 -> 0.3")
    assert open(os.path.join(out, "metrics.jsonl")).read() == before
    r = ppo("--data", data, "--out", out, "--resume", "--steps", "2")    # longer: allowed
    assert r.returncode == 0, r.stderr[-2000:]
    assert [m["step"] for m in common.read_jsonl(os.path.join(out, "metrics.jsonl"))] == [1, 2]
    r = ppo("--data", data, "--out", out, "--overwrite", "--clip", "0.3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert [m["step"] for m in common.read_jsonl(os.path.join(out, "metrics.jsonl"))] == [1]


def test_ppo_bad_data_is_one_line_and_writes_nothing(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "train.jsonl").write_text("")
    common.write_jsonl(str(d / "test.jsonl"), countdown.generate_tasks(2, seed=1))
    out = tmp_path / "run"
    one_line_error(ppo("--data", str(d), "--out", str(out)), "train.jsonl: no tasks")
    assert not out.exists() or os.listdir(out) == []
    (d / "train.jsonl").write_text('{"nums": [1, 2], "target": 3}\n{"nums": [1, 2]\n')
    one_line_error(ppo("--data", str(d), "--out", str(out)), "train.jsonl:2")


@pytest.mark.parametrize("flag,value,name", [("--batch-size", "0", "--batch-size"), ("--lr", "-1", "--lr"),
                                             ("--max-steps", "-5", "--max-steps"),
                                             ("--warmup-frac", "2", "--warmup-frac")])
def test_sft_numeric_flags_are_checked_at_parse_time(flag, value, name, capsys):
    with pytest.raises(SystemExit) as e:
        sft.parse_args(["--model", "tiny", "--data", "x.jsonl", flag, value])
    assert e.value.code == 2 and name in capsys.readouterr().err


@pytest.mark.parametrize("script", ["ppo.py", "sft.py"])
def test_unknown_model_fails_at_once_listing_the_aliases(script):
    t = time.time()
    r = subprocess.run([sys.executable, script, "--model", "llama3", "--data", "x"], cwd=REPO,
                       capture_output=True, text=True, timeout=120, env=ENV)
    one_line_error(r, "unknown model 'llama3'", "llama-3.2-3b", "qwen2.5-3b", "tiny")
    assert time.time() - t < 30                       # no hub retries (they took 48 s)


def test_orphans_of_a_killed_save_are_cleaned_and_checkpoints_are_readable(tmp_path, data):
    out = tmp_path / "run"
    assert ppo("--data", data, "--out", str(out), "--save-every", "1", "--steps", "2").returncode == 0
    ckpt = out / "ckpt"
    umask = os.umask(0)
    os.umask(umask)
    assert (os.stat(ckpt / "step_000002").st_mode & 0o777) == 0o777 & ~umask     # not mkdtemp's 0700
    (ckpt / ".tmp-step_000003abc").mkdir()                          # a kill during a save
    os.replace(ckpt / "step_000002", ckpt / "step_000002.old")     # a kill between the two renames
    r = ppo("--data", data, "--out", str(out), "--save-every", "1", "--steps", "3", "--resume")
    assert r.returncode == 0 and "resuming from" in r.stdout and "step_000002" in r.stdout, r.stderr[-2000:]
    assert sorted(os.listdir(ckpt)) == ["step_000002", "step_000003"]


def _alive(pid):
    try:
        return "zombie" not in open(f"/proc/{pid}/status").read().lower()
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_pipeline_takes_its_running_stage_down(tmp_path, sig):
    """pipeline.run's child leads its own process group and goes down with the pipeline:
    by PR_SET_PDEATHSIG when the pipeline is SIGKILLed, by killpg when it gets SIGTERM."""
    pidfile = tmp_path / "stage.pid"
    stage = tmp_path / "stage.py"
    stage.write_text(f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", "import pipeline; pipeline.stop_children_on_signals(); "
                               f"pipeline.run([{str(stage)!r}], '/nonexistent', False)"],
                              cwd=REPO, env={**ENV, "PYTHONPATH": REPO})
    deadline = time.time() + 60
    while not (pidfile.exists() and pidfile.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    assert _alive(child)
    parent.send_signal(sig)
    parent.wait(timeout=30)
    deadline = time.time() + 20
    while _alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the stage outlived the pipeline"


def test_pipeline_resumes_a_stage_killed_after_its_checkpoint(tmp_path):
    """A pipeline killed while SFT ran leaves a checkpoint and a log in the SFT folder; the same
    pipeline command then resumes that stage (it passes --resume) and finishes."""
    out = str(tmp_path / "p")
    cmd = [sys.executable, "pipeline.py", "--smoke", "--out", out, "--conditions", "all_strategies"]
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sft_line = next(l for l in r.stdout.splitlines() if l.startswith("[run ] sft.py"))
    sft_cmd = sft_line[len("[run ] "):].split()
    assert "--resume" in sft_cmd and "--resume" in next(l for l in r.stdout.splitlines()
                                                          if l.startswith("[run ] ppo.py"))
    import shutil
    shutil.rmtree(os.path.join(out, "ppo-all_strategies"))
    sft_dir = os.path.join(out, "sft-all_strategies")
    k = subprocess.run([sys.executable, *[c for c in sft_cmd if c != "--resume"], "--overwrite",
                        "--save-every", "1", "--stop-after", "2"], cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=300)   # the state a kill after SFT's second step leaves
    assert k.returncode == 0 and not os.path.exists(os.path.join(sft_dir, "final")), k.stderr[-2000:]
    assert os.listdir(os.path.join(sft_dir, "ckpt"))
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "sft: resumed from" in r.stdout and "step_000002" in r.stdout
    assert os.path.exists(os.path.join(out, "ppo-all_strategies", "final", "config.json"))


def test_curate_flags_and_an_unreachable_hub_are_one_line():
    for flags, words in ((["--n-docs", "-5"], ["--n-docs"]), (["--oversample", "0.5"], ["--oversample"]),
                         (["--source", "no-such-org/no-such-set", "--stage", "label"], ["no-such-org/no-such-set"])):
        r = subprocess.run([sys.executable, "curate_pretrain.py", *flags, "--out", "/tmp/curate-never"],
                           cwd=REPO, capture_output=True, text=True, timeout=120, env={**ENV, "HF_HUB_OFFLINE": "1"})
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert all(w in r.stderr.strip().splitlines()[-1] for w in words), r.stderr
