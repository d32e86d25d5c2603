"""Countdown: evaluator, solver, reward, prompts and the task generator."""
import json
import subprocess
import sys
import time
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

import countdown as cd
from conftest import REPO

NUMS, TARGET = [1, 3, 19, 44], 76  # (44 - 19) * 3 + 1


def resp(answer):
    return f"Let me try. 44 - 19 = 25.</think>\n<answer>{answer}</answer>"


# ---------------------------------------------------------------- reward: each case
@pytest.mark.parametrize("answer,expected", [
    ("(44 - 19) * 3 + 1", 1.0),
    ("1 + 3 * (44 - 19)", 1.0),          # order of the numbers is free
    ("(44 - 19) * 3 - 1", 0.1),          # wrong value
    ("(44 - 19) * 3 + 1 + 1", 0.1),      # a number reused
    ("(44 - 19) * 3", 0.1),              # a number missing
    ("(44 - 19) * 4", 0.1),              # a number not in the task (and 1, 3 missing)
    ("(45 - 20) * 3 + 1", 0.1),          # right value, wrong numbers
    ("-(19 - 44) * 3 + 1", 0.1),         # unary minus
    ("+(44 - 19) * 3 + 1", 0.1),         # unary plus
    ("(44.0 - 19) * 3 + 1", 0.1),        # decimal
    ("(44 - 19) ** 1 * 3 + 1", 0.1),     # power
    ("__import__('os').system('true')", 0.1),
    ("abs(44 - 19) * 3 + 1", 0.1),       # a call
    ("x = (44 - 19) * 3 + 1", 0.1),      # a name
    ("1 / (44 - 44) + 3 + 19", 0.1),     # division by zero
    ("((44 - 19) * 3 + 1", 0.1),         # unbalanced
    ("(44 - 19)) * 3 + 1", 0.1),
    ("", 0.1),                           # empty tag is a (bad) answer
    (" \n (44 - 19)\n*3 +\t1 \n", 1.0),  # whitespace and newlines inside the tag
])
def test_score_cases(answer, expected):
    assert cd.score(resp(answer), NUMS, TARGET) == expected


def test_division_must_be_exact():
    # 7 / 2 * 4 = 14 exactly; float-free evaluation keeps it exact
    assert cd.score("<answer>7 / 2 * 4</answer>", [7, 2, 4], 14) == 1.0
    assert cd.score("<answer>(1 / 3) * 3 * 30</answer>", [1, 3, 3, 30], 30) == 1.0
    assert cd.evaluate("10 / 4") == Fraction(5, 2)


def test_last_answer_counts():
    two = "<answer>(44 - 19) * 3 + 1</answer> hmm no <answer>44 + 19 + 3 + 1</answer>"
    assert cd.score(two, NUMS, TARGET) == 0.1
    two_rev = "<answer>44 + 19 + 3 + 1</answer> wait <answer>(44 - 19) * 3 + 1</answer>"
    assert cd.score(two_rev, NUMS, TARGET) == 1.0


def test_no_answer_and_prompt_example():
    assert cd.score("I think it is (44 - 19) * 3 + 1", NUMS, TARGET) == 0.0
    assert cd.score("<answer>(44 - 19) * 3 + 1", NUMS, TARGET) == 0.0  # never closed
    # The prompt contains an example answer tag; the reward sees only the response.
    prompt = cd.make_prompt(NUMS, TARGET)
    assert "<answer> (1 + 2) / 3 </answer>" in prompt
    assert cd.score("no tags here", NUMS, TARGET) == 0.0
    assert cd.score(prompt + "no tags here", NUMS, TARGET) == 0.1  # the example is judged if passed in


@pytest.mark.parametrize("response", [
    "<answer>" + "(" * 10000 + "1" + ")" * 10000 + "</answer>",
    "<answer>" + "(" * 10000 + "</answer>",
    "x" * 100000,
    "<answer>" * 20000 + "</answer>" * 10,
    "<answer>" + "1+" * 50000 + "1</answer>",
    "<answer>" + "9" * 5000 + "</answer>",
])
def test_score_adversarial_fast(response):
    t0 = time.perf_counter()
    s = cd.score(response, NUMS, TARGET)
    assert s in (0.0, 0.1)
    assert time.perf_counter() - t0 < 0.05


def test_evaluate_rejects_and_accepts():
    assert cd.evaluate("2 - 3 - 4") == -5  # left associative
    assert cd.evaluate("2 / 4 / 2") == Fraction(1, 4)
    assert cd.evaluate("2 + 3 * 4") == 14
    for bad in ["2 ** 3", "-2", "2 * -3", "1.5", "1e3", "abs(2)", "a + 1", "1 / 0", "(1", "1)",
                "", "()", "1 2", "[1]", "1 // 2", "1 % 2", None, 12]:
        assert cd.evaluate(bad) is None, bad


# ---------------------------------------------------------------- property tests
def _trees(depth):
    leaf = st.integers(0, 50).map(lambda n: (str(n), Fraction(n)))
    if depth == 0:
        return leaf

    def combine(args):
        (ea, va), op, (eb, vb) = args
        if op == "/" and vb == 0:
            return (f"({ea}) + ({eb})", va + vb)
        val = {"+": va + vb, "-": va - vb, "*": va * vb, "/": va / vb if vb else None}[op]
        return (f"({ea}) {op} ({eb})", val)
    sub = _trees(depth - 1)
    return st.one_of(leaf, st.tuples(sub, st.sampled_from("+-*/"), sub).map(combine))


@given(_trees(4))
@settings(max_examples=300, deadline=None)
def test_evaluate_matches_fraction_arithmetic(tree):
    expr, value = tree
    assert cd.evaluate(expr) == value


@given(st.integers(0, 10**6))
@settings(max_examples=40, deadline=None)
def test_solution_of_generated_task_scores_one(seed):
    task = cd.generate_tasks(1, seed, batch=64)[0]
    sol = cd.solve(task["nums"], task["target"])
    assert sol is not None
    assert cd.score(f"</think>\n<answer>{sol}</answer>", task["nums"], task["target"]) == 1.0


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_score_never_raises(text):
    assert cd.score(text, NUMS, TARGET) in (0.0, 0.1, 1.0)
    assert cd.score("<answer>" + text + "</answer>", NUMS, TARGET) in (0.1, 1.0)


def test_solver_is_exhaustive_small():
    # brute force: every value reachable from the forward enumeration, checked by solve
    import random
    rng = random.Random(0)
    for _ in range(300):
        nums = [rng.randint(1, 9) for _ in range(rng.choice([2, 3, 4]))]
        reach = {Fraction(p, q) for p, q in cd._values(tuple(sorted(nums)))}
        for t in range(0, 40):
            s = cd.solve(nums, t)
            assert (s is not None) == (t in reach), (nums, t, s)
            if s is not None:
                assert cd.check_equation(s, nums, t)
    assert cd.solve([2, 2], 5) is None and cd.solve([5, 5, 5, 5], 6) is not None  # (5*5+5)/5


# ---------------------------------------------------------------- generator
def test_generate_tasks_distribution_and_determinism():
    a = cd.generate_tasks(400, seed=7)
    assert a == cd.generate_tasks(400, seed=7)
    assert a != cd.generate_tasks(400, seed=8)
    sizes = [len(t["nums"]) for t in a]
    assert sizes.count(3) == 200 and sizes.count(4) == 200
    assert len({cd.task_key(t["nums"], t["target"]) for t in a}) == 400
    for t in a:
        assert all(1 <= n <= 99 for n in t["nums"]) and 10 <= t["target"] <= 100
        assert cd.check_equation(t["solution"], t["nums"], t["target"])


def test_make_prompt_templates():
    base = cd.make_prompt([3, 5, 7], 22)
    assert "[3, 5, 7]" in base and "equals 22" in base and base.endswith("<think>")
    assert base == ("A conversation between User and Assistant. The user asks a question, and the Assistant "
                    "solves it. The assistant first thinks about the reasoning process in the mind and then "
                    "provides the user with the answer.\nUser: Using the numbers [3, 5, 7], create an equation "
                    "that equals 22. You can use basic arithmetic operations (+, -, *, /) and each number can "
                    "only be used once. Show your work in <think> </think> tags. And return the final answer in "
                    "<answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>.\nAssistant: Let me "
                    "solve this step by step.\n<think>")      # the study's base template, to the character
    qi = cd.make_prompt([3, 5, 7], 22, template="qwen-instruct")
    assert qi.startswith("<|im_start|>system\nYou are a helpful assistant. You first thinks about") \
        and "<|im_start|>user\n Using the numbers [3, 5, 7]" in qi \
        and qi.endswith("<|im_start|>assistant\nLet me solve this step by step.\n<think>")
    with pytest.raises(ValueError):
        cd.make_prompt([1], 2, template="nope")


def test_cli_writes_disjoint_files(tmp_path):
    out = tmp_path / "cd"
    r = subprocess.run([sys.executable, "countdown.py", "--out", str(out), "--n-train", "600",
                        "--n-test", "100", "--seed", "3"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "wrote 600 train + 100 test" in r.stdout and "tasks/s" in r.stdout
    train = [json.loads(l) for l in open(out / "train.jsonl")]
    test = [json.loads(l) for l in open(out / "test.jsonl")]
    assert len(train) == 600 and len(test) == 100
    assert set(train[0]) == {"id", "nums", "target", "solution"}
    keys = lambda ts: {cd.task_key(t["nums"], t["target"]) for t in ts}  # noqa: E731
    assert not keys(train) & keys(test)
    assert all(cd.score(f"<answer>{t['solution']}</answer>", t["nums"], t["target"]) == 1.0
               for t in train + test)


def test_cli_bad_flag_is_explained():
    r = subprocess.run([sys.executable, "countdown.py", "--sizes", "3,x"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--sizes" in r.stderr


# ---------------------------------------------------------------- reward rule sets
def test_score_default_rules_stay_strict():
    import inspect
    params = inspect.signature(cd.score).parameters
    assert params["rules"].default == "strict" and params["rules"].kind == inspect.Parameter.KEYWORD_ONLY
    assert params["prompt"].default == ""
    assert cd.REWARD_RULES == ("study", "strict") and "study" in cd.REWARD_RULES
    # unary minus: a format error under the strict rules, a correct answer under the study's
    prompt = cd.make_prompt(NUMS, TARGET)
    assert cd.score(resp("-(19 - 44) * 3 + 1"), NUMS, TARGET) == 0.1
    assert cd.score(resp("-(19 - 44) * 3 + 1"), NUMS, TARGET, rules="study", prompt=prompt) == 1.0


def test_doctests():
    import doctest
    assert doctest.testmod(cd).failed == 0
