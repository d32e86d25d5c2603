"""countdown.py --source: the study's task set and split, from a local copy (tests run offline)."""
import json
import os
import subprocess
import sys

import pytest

import countdown as cd
from conftest import REPO

N_ROWS, N_TRAIN, N_TEST = 2200, 2000, 100


@pytest.fixture(scope="module")
def rows():
    """Rows shaped like Jiayi-Pan/Countdown-Tasks-3to4 (columns target, nums): solvable tasks
    from our generator, plus one the solver cannot do (its solution must come out null)."""
    tasks = cd.generate_tasks(N_ROWS - 1, seed=11)
    out = [{"target": t["target"], "nums": t["nums"]} for t in tasks]
    out.insert(N_TRAIN + 7, {"target": 1000, "nums": [1, 1, 1]})  # a test row with no solution
    return out


@pytest.fixture(scope="module")
def parquet(rows, tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path_factory.mktemp("src") / "countdown.parquet"
    pq.write_table(pa.table({"target": [r["target"] for r in rows],
                             "nums": [r["nums"] for r in rows]}), path)
    return str(path)


def run_cli(tmp_path, *args):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")  # no download, no ~/.cache
    return subprocess.run([sys.executable, "countdown.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def read(path):
    return [json.loads(line) for line in open(path)]


def check_split(out, rows):
    train, test = read(out / "train.jsonl"), read(out / "test.jsonl")
    assert len(train) == N_TRAIN and len(test) == N_TEST
    assert [t["id"] for t in train] == [f"train-{i}" for i in range(N_TRAIN)]
    assert [t["id"] for t in test] == [f"test-{i}" for i in range(N_TRAIN, N_TRAIN + N_TEST)]
    # first rows train, the next ones test, in the source's order
    assert [(t["nums"], t["target"]) for t in train + test] == \
        [(r["nums"], r["target"]) for r in rows[:N_TRAIN + N_TEST]]
    assert all(set(t) == {"id", "nums", "target", "solution"} for t in train + test)
    unsolved = [t for t in train + test if t["solution"] is None]
    assert [t["id"] for t in unsolved] == [f"test-{N_TRAIN + 7}"]
    for t in train + test:
        if t["solution"] is not None:
            resp = f"</think>\n<answer>{t['solution']}</answer>"
            assert cd.score(resp, t["nums"], t["target"]) == 1.0
            assert cd.score(resp, t["nums"], t["target"], rules="study",
                            prompt=cd.make_prompt(t["nums"], t["target"])) == 1.0
    return train, test


def test_source_parquet_gives_the_study_split(tmp_path, rows, parquet):
    r = run_cli(tmp_path, "--source", parquet, "--out", str(tmp_path / "cd"),
                "--n-train", str(N_TRAIN), "--n-test", str(N_TEST))
    assert r.returncode == 0, r.stderr
    assert f"wrote {N_TRAIN} train + {N_TEST} test" in r.stdout
    assert "1 without a solution (null)" in r.stdout
    check_split(tmp_path / "cd", rows)


def test_source_jsonl_json_and_folder(tmp_path, rows, parquet):
    jsonl = tmp_path / "tasks.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    js = tmp_path / "tasks.json"
    js.write_text(json.dumps(rows))
    folder = tmp_path / "folder"
    folder.mkdir()
    os.symlink(parquet, folder / "train.parquet")
    for i, src in enumerate([jsonl, js, folder]):
        out = tmp_path / f"out{i}"
        r = run_cli(tmp_path, "--source", str(src), "--out", str(out),
                    "--n-train", str(N_TRAIN), "--n-test", str(N_TEST))
        assert r.returncode == 0, (src, r.stderr)
        check_split(out, rows)


def test_source_defaults_are_the_studys_counts(tmp_path, parquet):
    args = cd._parse_args(["--n-train", "5"])  # no --source: today's generator and its defaults
    assert args.source == "generate" and (args.n_train, args.n_test) == (5, cd.GENERATED_SPLIT[1]) == (5, 1_024)
    assert cd.STUDY_SPLIT == (327_680, 1_024) and cd.STUDY_SOURCE == "Jiayi-Pan/Countdown-Tasks-3to4"
    r = run_cli(tmp_path, "--source", parquet, "--out", str(tmp_path / "cd"))
    assert r.returncode == 2
    assert f"{parquet} has {N_ROWS} rows, fewer than the {327_680 + 1_024} requested" in r.stderr


def _one_line_error(r, *needles):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("usage: countdown.py") or last.startswith("countdown.py: error: --source")
    for n in needles:
        assert n in last, last


def test_source_errors_are_one_line(tmp_path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq
    missing = tmp_path / "nope.parquet"
    _one_line_error(run_cli(tmp_path, "--source", str(missing), "--n-train", "1", "--n-test", "1"),
                    str(missing), "no such file")
    _one_line_error(run_cli(tmp_path, "--source", str(tmp_path / "no_dir") + "/", "--n-train", "1"),
                    "no such file")
    no_target = tmp_path / "no_target.parquet"
    pq.write_table(pa.table({"nums": [r["nums"] for r in rows]}), no_target)
    _one_line_error(run_cli(tmp_path, "--source", str(no_target), "--n-train", "1", "--n-test", "1"),
                    str(no_target), "no column target")
    small = tmp_path / "small.parquet"
    pq.write_table(pa.table({"target": [24], "nums": [[4, 6]]}), small)
    _one_line_error(run_cli(tmp_path, "--source", str(small), "--n-train", "1", "--n-test", "1"),
                    str(small), "has 1 rows, fewer than the 2 requested")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"target": 2.5, "nums": [1, 2]}\n')
    _one_line_error(run_cli(tmp_path, "--source", str(bad), "--n-train", "1", "--n-test", "0"),
                    str(bad), "row 0")


def test_source_hub_name_offline_is_one_line(tmp_path):
    """The hub path is the real datasets.load_dataset call; offline it fails in one line."""
    _one_line_error(run_cli(tmp_path, "--source", cd.STUDY_SOURCE, "--out", str(tmp_path / "cd")),
                    cd.STUDY_SOURCE, "load_dataset failed")
