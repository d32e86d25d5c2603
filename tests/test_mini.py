"""mini.py: the smoke run end to end on the CPU, and its pure helpers."""
import json
import math
import os
import re
import subprocess
import sys

import pytest

import behavior_rules
import countdown
import mini
import plot
from conftest import REPO, SHARED

CONDS = ("base", "all_strategies", "empty_cot")  # mini.SMOKE's conditions


def test_spread_over_seeds():
    sp = mini.spread([0.2, 0.4, None, float("nan"), 0.3])
    assert sp["n"] == 3 and sp["min"] == 0.2 and sp["max"] == 0.4
    assert sp["mean"] == pytest.approx(0.3) and sp["std"] == pytest.approx(0.1)  # sample std
    assert mini.spread([0.5]) == {"mean": 0.5, "std": 0.0, "min": 0.5, "max": 0.5, "n": 1}
    assert mini.spread([None, float("nan")]) is None
    assert mini.fmt_spread(sp) == "0.300 ± 0.100 (0.200–0.400)"
    assert mini.fmt_spread(mini.spread([0.5])) == "0.500" and mini.fmt_spread(None) == "-"


def test_seed_means_average_each_step_over_seeds():
    rows = [{"condition": "a", "step": 1.0, "accuracy": 0.1, "avg_backtracking": 1.0},
            {"condition": "a", "step": 1.0, "accuracy": 0.3, "avg_backtracking": math.nan},
            {"condition": "a", "step": 5.0, "accuracy": 0.5}]
    out = mini.seed_means({"a": rows})
    assert out[0] == {"condition": "a", "step": 1, "accuracy": 0.2, "avg_backtracking": 1.0}
    assert out[1] == {"condition": "a", "step": 5, "accuracy": 0.5}


def test_number_use_counts_answers_that_read_the_prompt(tmp_path):
    path = tmp_path / "r.jsonl"
    recs = [{"nums": [3, 5, 7], "response": "...<answer>(7 - 3) * 5</answer>"},   # wrong value, right numbers
            {"nums": [3, 5, 7], "response": "<answer>3 + 5</answer>"},             # 7 unused
            {"nums": [3, 5, 7], "response": "no answer"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert mini.number_use(str(path)) == pytest.approx(1 / 3)


def test_arithmetic_corpus_is_behavior_free_and_well_formed():
    docs = mini.arithmetic_corpus(400, seed=3, format_frac=0.25)
    assert docs == mini.arithmetic_corpus(400, seed=3, format_frac=0.25)  # deterministic
    worked = [d["text"] for d in docs if "<think>" in d["text"]]
    assert 60 < len(worked) < 140
    for text in worked:
        prompt, response = text.rsplit("<think>", 1)
        m = re.search(r"numbers \[([^\]]*)\], create an equation that equals (\d+)", prompt)
        nums, target = [int(x) for x in m.group(1).split(",")], int(m.group(2))
        assert prompt + "<think>" == countdown.make_prompt(nums, target)
        assert countdown.score(response, nums, target) >= 0.1, response  # every number used once
        assert not any(behavior_rules.count_behaviors(response, nums, target).values()), response
    for d in docs:
        for lhs, rhs in re.findall(r"([\d()+\-*/ ]+?) = (\d+)\.", d["text"]):
            assert countdown.evaluate(lhs) == int(rhs), d["text"]  # the arithmetic is right


def test_mini_smoke(tmp_path):
    out = tmp_path / "mini"
    r = subprocess.run([sys.executable, "mini.py", "--smoke", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "mini done" in r.stdout and r.stdout.count(" finished, ") == 2 + 2 * len(CONDS)
    table = (out / "results.md").read_text()
    assert table in r.stdout
    res = json.loads((out / "results.json").read_text())
    assert list(res["summary"]["conditions"]) == list(CONDS)
    assert sorted(x["condition"] for x in res["runs"]) == sorted(CONDS)
    for c in CONDS:
        assert re.search(rf"^\| {c} \| 1 \| \d\.\d{{3}} \| \d\.\d{{3}} \|", table, re.M), c
        run = out / "runs" / f"{c}-s0"
        assert (run / "ppo.log").exists() and (out / "primed" / c / "eval0.log").exists()
        recs = [json.loads(x) for x in (run / "ppo" / "classify" / "classified.jsonl").read_text().splitlines()]
        assert recs and all(r["classifier"] == "rules" and "backtracking" in r for r in recs)
        s = res["summary"]["conditions"][c]
        assert 0 <= s["val_before"]["mean"] <= 1 and 0 <= s["val_after"]["mean"] <= 1
    assert not (out / "primed" / "base" / "sft").exists()  # the base row is not primed
    rows = plot.read_steps_csv(str(out / "results" / "mini_seed_mean.csv"))
    assert {r["condition"] for r in rows} == set(CONDS) and {r["step"] for r in rows} == {1, 2}
    for name in ("accuracy.png", "behaviors_mini_seed_mean.png", "priming.png"):
        assert os.path.getsize(out / "figures" / name) > 200, name
    if os.path.exists(os.path.join(SHARED, "reference", "llama_results.csv")):
        assert "study: step 250" in table and "| base | 1 |" in table
        assert res["study"]["all_strategies"]["end"]["step"] == 250
