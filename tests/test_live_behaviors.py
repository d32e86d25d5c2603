"""Live behavior metrics: ppo.py counts the four behaviors in every step's rollouts, and the
spans behavior_rules.behavior_spans marks are exactly the occurrences count_behaviors counts."""
import csv
import os
import random

import pytest
import torch

import behavior_rules
import classify
import study
import common
import countdown
import symbolic
import ppo
import sampler

CONDS = ("all_strategies", "only_backtracking", "backtracking_backward", "backtracking_subgoal",
         "negative_control")


def trace(task, i):
    """A symbolic priming trace for task (its thinking and answer): text with every behavior."""
    cond = CONDS[i % len(CONDS)]
    return symbolic.write_symbolic(task, cond, seed=i, budget=1 + i % 3)["completion"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny PPO run (3 steps, every step's rollouts logged) whose rollout texts are symbolic
    priming traces for the drawn tasks, scored by the study's reward: the tiny random model's
    own text shows no behavior, and these show all four, right and wrong answers mixed. The
    swap happens after sampling, so the training tensors are the model's own."""
    tmp = tmp_path_factory.mktemp("live")
    data = tmp / "data"
    common.write_jsonl(str(data / "train.jsonl"), countdown.generate_tasks(64, seed=0, sizes=(3,)))
    common.write_jsonl(str(data / "test.jsonl"), countdown.generate_tasks(4, seed=1, sizes=(3,)))
    real, calls = sampler.sample_batch, [0]

    def sample_batch(*a, **kw):
        b = real(*a, **kw)
        texts = [trace(t, calls[0] * 1000 + i) for i, t in enumerate(b["tasks"])]
        calls[0] += 1
        b["texts"] = texts
        b["score_list"] = [countdown.score(x, t["nums"], t["target"]) for x, t in zip(texts, b["tasks"])]
        b["scores"] = torch.tensor(b["score_list"])
        return b

    out = tmp / "run"
    args = ppo.parse_args(["--model", "tiny", "--data", str(data), "--out", str(out), "--steps", "3",
                           "--prompts-per-step", "8", "--samples-per-prompt", "4", "--mini-batch-prompts", "8",
                           "--max-response-len", "8", "--micro-batch", "32", "--eval-every", "0",
                           "--log-rollouts-every", "1", "--save-every", "0", "--no-save-final",
                           "--device", "cpu"])
    sampler.sample_batch = sample_batch
    try:
        ppo.train(args)
    finally:
        sampler.sample_batch = real
    return out


def test_live_metrics_equal_classify_steps_csv(run):
    """metrics.jsonl's behavior/<name> at each step equals classify.py's steps.csv (every
    rollout classified) on the same rollouts; the rates and the correct / incorrect splits
    equal the same sums computed here from the rollout files."""
    assert classify.main(["--input", str(run), "--split", "rollouts", "--sample-per-step", "0"]) == 0
    with open(run / "classify" / "steps.csv") as f:
        rows = {int(r["step"]): r for r in csv.DictReader(f)}
    metrics = {m["step"]: m for m in common.read_jsonl(str(run / "metrics.jsonl"))}
    assert sorted(rows) == sorted(metrics) == [1, 2, 3]
    seen_splits = set()
    for step, m in metrics.items():
        row = rows[step]
        for b in study.BEHAVIORS:
            assert m[f"behavior/{b}"] == pytest.approx(float(row[study.BEHAVIORS[b].avg_column]), abs=1e-6), (step, b)
        assert m["acc"] == pytest.approx(float(row["accuracy"]), abs=1e-6)
        recs = common.read_jsonl(str(run / "rollouts" / f"step_{step:06d}.jsonl"))
        for split, keep in (("", lambda r: True), ("/correct", lambda r: r["correct"]),
                            ("/incorrect", lambda r: not r["correct"])):
            part = [behavior_rules.count_behaviors(r["response"], r["nums"], r["target"]) for r in recs if keep(r)]
            for b in study.BEHAVIORS:
                if not part:
                    assert f"behavior/{b}{split}" not in m
                    continue
                seen_splits.add(split)
                assert m[f"behavior/{b}{split}"] == pytest.approx(sum(c[b] for c in part) / len(part))
                assert m[f"behavior/{b}_rate{split}"] == pytest.approx(sum(c[b] > 0 for c in part) / len(part))
        assert 0 <= m["time/behaviors"] < m["time/step"]
        assert not any(k.startswith("_") for k in m)       # the sums and counts stay internal
    assert seen_splits == {"", "/correct", "/incorrect"}
    assert any(m["behavior/backtracking"] > 0 and m["behavior/verification"] > 0 for m in metrics.values())


def test_span_counts_equal_count_behaviors_on_a_run(run):
    """Every response of the run (rollouts) and of a symbolic priming set: one span per counted
    occurrence, inside the text, and the behavior text the span marks is where the rules saw it."""
    recs = [r for f in sorted((run / "rollouts").iterdir()) for r in common.read_jsonl(str(f))]
    rng = random.Random(0)
    tasks = countdown.generate_tasks(40, seed=2)
    recs += [{"response": trace(t, i), "nums": t["nums"], "target": t["target"]} for i, t in enumerate(tasks)]
    # the same traces as a model might write them: capitals, unicode operators, verbal arithmetic
    for r in recs[-40:]:
        text = r["response"].replace("*", "×").replace(" - ", " − ")
        text = text.replace("Let me", "LET ME").replace(" = ", rng.choice([" = ", " equals ", " gives ", ", which is "]))
        recs.append({**r, "response": "İ " + text})
    total = 0
    for r in recs:
        counts = behavior_rules.count_behaviors(r["response"], r["nums"], r["target"])
        spans = behavior_rules.behavior_spans(r["response"], r["nums"], r["target"])
        assert {b: sum(s[2] == b for s in spans) for b in study.BEHAVIORS} == counts, r["response"]
        assert all(0 <= a < z <= len(r["response"]) for a, z, _ in spans)
        assert spans == sorted(spans, key=lambda s: (s[0], s[1], list(study.BEHAVIORS).index(s[2])))
        total += len(spans)
    assert total > 200


DRIVER = '''
import sys, torch, torch.distributed as tdist
import countdown, ppo, sampler
sys.path.insert(0, sys.argv[1])
from test_live_behaviors import trace
real, calls = sampler.sample_batch, [0]
def sample_batch(*a, **kw):
    b = real(*a, **kw)
    rank = tdist.get_rank()
    b["texts"] = [trace(t, calls[0] * 1000 + 100 * rank + i) for i, t in enumerate(b["tasks"])]
    calls[0] += 1
    b["score_list"] = [countdown.score(x, t["nums"], t["target"]) for x, t in zip(b["texts"], b["tasks"])]
    b["scores"] = torch.tensor(b["score_list"])
    return b
sampler.sample_batch = sample_batch
ppo.train(ppo.parse_args(sys.argv[2:]))
'''


def test_torchrun_two_ranks_log_the_global_means(tmp_path):
    """Under torchrun each rank counts its own responses; the correct / incorrect splits differ
    in size between ranks, so a mean of the ranks' means would be off. ppo.py all-reduces sums
    and counts instead: the logged values are the means over every rank's responses (rank 0
    logs the gathered rollouts, rank by rank)."""
    import subprocess
    import sys
    from conftest import REPO
    data = tmp_path / "data"
    common.write_jsonl(str(data / "train.jsonl"), countdown.generate_tasks(64, seed=0, sizes=(3,)))
    common.write_jsonl(str(data / "test.jsonl"), countdown.generate_tasks(4, seed=1, sizes=(3,)))
    (tmp_path / "drive.py").write_text(DRIVER)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(tmp_path / "drive.py"), os.path.join(REPO, "tests"), "--model", "tiny", "--data", str(data),
                        "--out", str(out), "--steps", "2", "--prompts-per-step", "8", "--samples-per-prompt", "4",
                        "--mini-batch-prompts", "8", "--max-response-len", "8", "--micro-batch", "32",
                        "--eval-every", "0", "--log-rollouts-every", "1", "--save-every", "0", "--no-save-final",
                        "--device", "cpu"], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    naive_differs = False
    for m in common.read_jsonl(str(out / "metrics.jsonl")):
        recs = common.read_jsonl(str(out / "rollouts" / f"step_{m['step']:06d}.jsonl"))
        halves = (recs[:len(recs) // 2], recs[len(recs) // 2:])        # rank 0's, rank 1's
        for split, keep in (("", lambda r: True), ("/correct", lambda r: r["correct"]),
                            ("/incorrect", lambda r: not r["correct"])):
            per_rank = [[behavior_rules.count_behaviors(r["response"], r["nums"], r["target"]) for r in h if keep(r)]
                        for h in halves]
            every = per_rank[0] + per_rank[1]
            for b in study.BEHAVIORS:
                if not every:
                    assert f"behavior/{b}{split}" not in m
                    continue
                assert m[f"behavior/{b}{split}"] == pytest.approx(sum(c[b] for c in every) / len(every), abs=1e-12)
                if all(per_rank):
                    naive = sum(sum(c[b] for c in p) / len(p) for p in per_rank) / 2
                    naive_differs |= abs(naive - m[f"behavior/{b}{split}"]) > 1e-6
    assert naive_differs    # the splits' sizes did differ by rank: the test tells the two apart
