"""countdown.score(rules="study") against TinyZero's compute_score, re-stated here with eval.

`study_reference` below is the study's verl/utils/reward_score/countdown.py (extract_solution,
validate_equation, evaluate_equation, compute_score) written out again for this test only: it
uses Python's eval exactly as the study does, behind the same character guard. It differs only
where countdown.py deliberately does: "**" and "//" and answers beyond the MAX_STUDY_* caps get
the format score instead of being evaluated. countdown.py itself never calls eval.
"""
import importlib.util
import os
import random
import re
import time
import warnings

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import countdown as cd
from conftest import REPO

BUDGET_S = 0.010  # each call of score() must take less than this

_GUARD = r"^[\d+\-*/().\s]+$"  # the study's evaluate_equation guard, with re.match


def _beyond_caps(eq):
    """countdown.py's deliberate caps, computed independently of countdown.py's parser."""
    signs = sum(eq.count(c) for c in "+-*/")
    symbols = len(eq) - sum(eq.count(c) for c in " \t\f\r")
    depth = deepest = 0
    for ch in eq:
        depth += (ch == "(") - (ch == ")")
        deepest = max(deepest, depth)
    max_depth = min(cd.MAX_STUDY_NEST, (cd.PY_PARSER_BUDGET - signs) // 28)
    return (len(eq) > cd.MAX_STUDY_CHARS or symbols > cd.MAX_STUDY_SYMBOLS
            or signs > cd.MAX_STUDY_SIGNS or deepest > max_depth)


def eval_value(eq):
    """What the study's evaluate_equation returns for an (already stripped) answer, or None;
    with countdown.py's deliberate differences (** and //, the caps) also None."""
    if not re.match(_GUARD, eq) or "**" in eq or "//" in eq or _beyond_caps(eq):
        return None
    with warnings.catch_warnings():  # "2(3)" compiles with a SyntaxWarning
        warnings.simplefilter("ignore")
        try:
            return eval(eq, {"__builtins__": None}, {})
        except Exception:
            return None


def study_extract(text):
    """The study's extract_solution."""
    if "Assistant:" in text:
        text = text.split("Assistant:", 1)[1]
    elif "<|im_start|>assistant" in text:
        text = text.split("<|im_start|>assistant", 1)[1]
    else:
        return None
    text = text.split("\n")[-1]
    matches = list(re.finditer(r"<answer>(.*?)</answer>", text))
    return matches[-1].group(1).strip() if matches else None


def study_reference(text, nums, target, format_score=0.1, correct_score=1.0):
    """The study's compute_score(text, {"target": target, "numbers": nums})."""
    eq = study_extract(text)
    if eq is None:
        return 0
    try:
        if sorted(int(n) for n in re.findall(r"\d+", eq)) != sorted(nums):
            return format_score
    except Exception:
        return format_score
    result = eval_value(eq)
    if result is None:
        return format_score
    try:
        return correct_score if abs(result - target) < 1e-5 else format_score
    except Exception:  # a tuple "()" or Ellipsis "..." has no difference with the target
        return format_score


def _old_module():
    spec = importlib.util.spec_from_file_location(
        "countdown_strict_v1", os.path.join(REPO, "tests", "fixtures", "countdown_strict_v1.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


OLD = _old_module()


def timed_score(*args, **kw):
    """(score, seconds); a slow first call is re-timed twice (a GC pause or a busy CI core is
    not the function's cost) and the fastest of the three counts."""
    best = None
    for _ in range(3):
        t0 = time.perf_counter()
        s = cd.score(*args, **kw)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
        if best < BUDGET_S:
            break
    return s, best


# ---------------------------------------------------------------- the corpus
# Tasks with known solutions, plus a few whose numbers make Python's quirks reachable.
SPECIAL_TASKS = [
    ([1, 5, 2], 3),        # 1.5 * 2: a decimal built from two task numbers
    ([44, 5], 44),         # 44.000005: within 1e-5 of the target
    ([0, 7, 3], 21),       # 00 is a valid literal, 07 is not
    ([3, 3, 5], 5),        # 5 / (3 - 3): division by zero with the right numbers
    ([2, 3, 1], 7),        # 2(3) + 1: a call
    ([10, 4, 4], 10),      # 10 / 4 * 4 = 10.0: true division gives floats
    ([7, 2, 4], 14),       # 7 / 2 * 4 = 14.0
    ([1, 3, 3, 30], 30),   # (1 / 3) * 3 * 30: rounding, 30.0 here
    ([99, 98, 97, 96], 1),  # floats near an integer
]

_WS = ["", "", "", " ", "  ", "\t", "\r", " \r\t", "\f", "\x0b", "\xa0"]


def _spaced(rng, expr):
    """expr with random blanks (tabs, \\r, form feed, odd ones) between its characters."""
    out = []
    for ch in expr:
        if ch == " ":
            ch = rng.choice(_WS[:5])
        out.append(ch)
        if rng.random() < 0.15:
            out.append(rng.choice(_WS))
    return "".join(out)


def _number_mutant(rng, sol, nums):
    nums_in = re.findall(r"\d+", sol)
    if not nums_in:
        return sol
    k = rng.randrange(len(nums_in))
    spans = [m.span() for m in re.finditer(r"\d+", sol)]
    a, b = spans[k]
    n = sol[a:b]
    new = rng.choice([
        "0" + n,                      # leading zero: 044 is a SyntaxError
        "00" + n + ".",               # but 0044. is a float
        n + ".",                      # 44. is 44.0
        n + ".0",                     # an extra number 0
        "." + n,                      # .44
        n + "." + str(rng.choice(nums)),   # a decimal of two numbers
        f"{n} + {n}",                 # reused
        "",                           # missing
        str(int(n) + 1),              # not in the task
        f"{n}({rng.choice(nums)})",   # a call
        f"({n})",
        "\uff11" if n == "1" else n + "\u0661",  # non-ASCII digits match \\d
    ])
    return sol[:a] + new + sol[b:]


def _answer(rng, sol, nums, target):
    kind = rng.randrange(24)
    if kind < 5:
        return _spaced(rng, sol)
    if kind == 5:
        return rng.choice(["-", "+", "--", "- -", "+-+-", "-" * 7]) + "(" + sol + ")"
    if kind == 6:
        k = rng.randint(1, 12)
        return "(" * k + sol + ")" * k
    if kind == 7:
        return sol.replace("(", "( ( ").replace(")", " ) )")
    if kind in (8, 9, 10):
        return _number_mutant(rng, sol, nums)
    if kind == 11:
        return sol.replace(" ", "")
    if kind == 12:
        return rng.choice(["", " ", "()", "...", "(...)", ".", "( )", "-", "1 2"])
    if kind == 13:
        op = rng.choice(["**", "//", "%", "^", "=", ",", "x"])
        return sol.replace(rng.choice(["+", "-", "*", "/"]), op, 1)
    if kind == 14:
        return sol + rng.choice([" + ()", "()", "(1)", " * (0)", ")", "(", " + ...", ".", "..."])
    if kind == 15:
        return f"{sol} = {target}"
    if kind == 16:
        return sol.replace(" + ", " - -").replace(" - ", " + -")
    if kind == 17:
        ops = ["+", "-", "*", "/"]
        return "".join(rng.choice(ops) if ch in ops else ch for ch in sol)
    if kind == 18:  # a random arithmetic string over the task's numbers
        parts = [str(x) for x in rng.sample(nums, len(nums))]
        out = parts[0]
        for p in parts[1:]:
            out = f"{out}{rng.choice(_WS[:5])}{rng.choice('+-*/')}{rng.choice(['', '-', '+'])}{p}"
            if rng.random() < 0.3:
                out = f"({out})"
        return out
    if kind == 19:
        return "\r".join(sol.split(" ")) if rng.random() < 0.5 else f"({sol}\r)"
    if kind == 20:
        return str(target)
    if kind == 21:
        return sol.replace("/", "/ (0 *") + ")" if "/" in sol else sol + "/ 0"
    if kind == 22:
        return "0" * rng.randint(1, 3) + sol
    return sol


_THINK = ["", "Let me try 44 - 19 = 25.", "hmm <answer>wrong</answer> no.", "<|endoftext|>",
          "Assistant: I will check.", "1 + 2 = 3\nso", "<answer>"]


def _response(rng, ans):
    think = rng.choice(_THINK)
    tag = f"<answer>{ans}</answer>"
    kind = rng.randrange(16)
    if kind < 5:
        return f" {think}</think>\n{tag}"
    if kind == 5:
        return f"{think}</think>\n{tag}" + rng.choice(["<|endoftext|>", "<|im_end|>",
                                                      "<|im_end|><|endoftext|>"])
    if kind == 6:
        return f"{think}</think>\n{tag}" + rng.choice(["\n", "\n<|endoftext|>", "\n\n", " \n "])
    if kind == 7:
        return f"{think}</think>\n{tag}" + rng.choice([" That's it.", " <answer>", "</answer>",
                                                      " and <answer>1+1</answer>"])
    if kind == 8:  # the answer on an earlier line
        return f"{think}</think>\n{tag}\n" + rng.choice(["Done.", "<answer>1</answer>", "", "<|endoftext|>"])
    if kind == 9:
        return f"{think}</think>\n" + rng.choice(["<|endoftext|>", "<|im_end|>"]) + tag
    if kind == 10:  # "Assistant:" again, in the response
        return f"{think}</think>\nAssistant: {tag}" + rng.choice(["", "\nAssistant: <answer>0</answer>"])
    if kind == 11:
        return f"{think}</think> <answer>wrong</answer> then {tag}"
    if kind == 12:
        return f"{think}</think> {tag} then <answer>0 + 0</answer>"
    if kind == 13:
        return f"{think}</think>\n<answer>{ans}"  # never closed
    if kind == 14:
        return f"{think}</think>\n<answer>\n{ans}</answer>"  # a newline inside the tag
    return f"{think}</think>\n" + "<answer>" * rng.randint(2, 4) + ans + "</answer>" * rng.randint(1, 3)


def _prompt(rng, nums, target):
    kind = rng.randrange(10)
    if kind < 5:
        return cd.make_prompt(nums, target, "base")
    if kind < 8:
        return cd.make_prompt(nums, target, "qwen-instruct")
    if kind == 8:
        return ""  # no "Assistant:" at all (unless the response has one)
    return "User: say <answer>1</answer>\nAssistant: first\nAssistant: second\n"


def build_corpus(n=6000, seed=1234):
    rng = random.Random(seed)
    tasks = [(t["nums"], t["target"]) for t in cd.generate_tasks(300, seed=seed)] + SPECIAL_TASKS * 20
    cases = []
    for _ in range(n):
        nums, target = rng.choice(tasks)
        sol = cd.solve(nums, target) or " + ".join(map(str, nums))
        if nums == [1, 5, 2]:
            sol = rng.choice(["1.5 * 2", "2 * 1.5", "(1.5) * 2", sol])
        elif nums == [44, 5]:
            sol = rng.choice(["44.000005", "44.00005", "44.0000005", "44. + .5 * 0", sol])
        elif nums == [0, 7, 3]:
            sol = rng.choice(["00 + 7 * 3", "0 + 07 * 3", "000 + 7 * 3", "7 * 3 - 0", sol])
        elif nums == [3, 3, 5]:
            sol = rng.choice(["5 / (3 - 3)", "5 + 3 - 3", "5 * 3 / 3", sol])
        elif nums == [2, 3, 1]:
            sol = rng.choice(["2(3) + 1", "2 * 3 + 1", "(2)(3) + 1", sol])
        cases.append((_prompt(rng, nums, target), _response(rng, _answer(rng, sol, nums, target)),
                      nums, target))
    return cases


CORPUS = build_corpus()


def test_corpus_matches_the_study_and_is_fast():
    times, outcomes, bad = [], {}, []
    for prompt, response, nums, target in CORPUS:
        want = study_reference(prompt + response, nums, target)
        got, dt = timed_score(response, nums, target, rules="study", prompt=prompt)
        times.append(dt)
        outcomes[want] = outcomes.get(want, 0) + 1
        if got != want:
            bad.append((prompt[-40:], response, nums, target, got, want))
    assert not bad, f"{len(bad)} mismatches, e.g. {bad[:3]}"
    assert len(CORPUS) >= 5000
    # the corpus reaches all three outcomes, each many times
    assert min(outcomes.get(0, 0), outcomes.get(0.1, 0), outcomes.get(1.0, 0)) > 500, outcomes
    print(f"\n{len(times)} cases: max {max(times) * 1e3:.3f} ms, mean {sum(times) / len(times) * 1e3:.4f} ms")
    assert max(times) < BUDGET_S


def test_corpus_strict_rules_unchanged():
    for prompt, response, nums, target in CORPUS:
        old = OLD.score(response, nums, target)
        assert cd.score(response, nums, target) == old, response
        assert cd.score(response, nums, target, rules="strict", prompt=prompt) == old, response


def test_corpus_reaches_python_quirks():
    """The corpus holds answers where the study and the strict rules part ways."""
    quirks = {"decimal": 0, "unary": 0, "float_close": 0, "syntax": 0, "newline_after": 0}
    for prompt, response, nums, target in CORPUS:
        study = cd.score(response, nums, target, rules="study", prompt=prompt)
        strict = cd.score(response, nums, target)
        eq = study_extract(prompt + response)
        if eq is None:
            quirks["newline_after"] += strict > 0 and study == 0
            continue
        quirks["decimal"] += study == 1.0 and strict < 1.0 and "." in eq
        quirks["unary"] += study == 1.0 and strict < 1.0 and "." not in eq
        value = cd.py_value(eq)
        quirks["float_close"] += study == 1.0 and isinstance(value, float) and value != target
        quirks["syntax"] += study == 0.1 and strict == 1.0
    assert all(v > 5 for v in quirks.values()), quirks


# ---------------------------------------------------------------- hand-picked cases
@pytest.mark.parametrize("response,expected", [
    ("<answer>(44 - 19) * 3 + 1</answer>", 1.0),
    ("<answer>(44 - 19) * 3 + 1</answer><|endoftext|>", 1.0),            # EOS text after it
    ("<answer>(44 - 19) * 3 + 1</answer>\n", 0.0),                       # last line is empty
    ("<answer>(44 - 19) * 3 + 1</answer>\n<|endoftext|>", 0.0),
    ("<answer>(44 - 19) * 3 + 1</answer> <answer>1</answer>", 0.1),      # the last one counts
    ("-(19 - 44) * 3 + 1", 0.0),                                         # no tag
    ("<answer>-(19 - 44) * 3 + 1</answer>", 1.0),                        # unary minus is fine
    ("<answer>+(44 - 19) * 3 + 1.</answer>", 1.0),                       # 1. is 1.0
    ("<answer>(44 - 19) * 3 + 01</answer>", 0.1),                        # 01: SyntaxError
    ("<answer>(44 - 19) * 3(1)</answer>", 0.1),                          # 3(1): a call
    ("<answer>(44 - 19) * 3 + 1 + ()</answer>", 0.1),
    ("<answer>(44 - 19) ** 3 + 1</answer>", 0.1),                        # ** is never evaluated
    ("<answer>((44 - 19)\r* 3 + 1)</answer>", 1.0),                      # \r inside parentheses
    ("<answer>(44 - 19)\r* 3 + 1</answer>", 0.1),                        # \r outside: a new line
    ("<answer>(44 - 19) * 3 + 1</answer", 0.0),
    ("Assistant: <answer>1</answer>", 0.1),  # a second "Assistant:": the split is at the first
])
def test_study_cases(response, expected):
    nums, target = [1, 3, 19, 44], 76
    prompt = cd.make_prompt(nums, target)
    assert cd.score(" </think>\n" + response, nums, target, rules="study", prompt=prompt) == expected
    assert study_reference(prompt + " </think>\n" + response, nums, target) == expected


def test_study_needs_the_prompt_and_ignores_its_example():
    nums, target = [1, 3, 19, 44], 76
    good = "</think>\n<answer>(44 - 19) * 3 + 1</answer>"
    assert cd.score(good, nums, target, rules="study") == 0.0  # no "Assistant:" without the prompt
    for template in cd.TEMPLATES:
        prompt = cd.make_prompt(nums, target, template)
        assert "<answer> (1 + 2) / 3 </answer>" in prompt
        assert cd.score(good, nums, target, rules="study", prompt=prompt) == 1.0
        assert cd.score("no tags", nums, target, rules="study", prompt=prompt) == 0.0


def test_study_scores_are_configurable_and_never_raise():
    p = cd.make_prompt([1, 2], 3)
    assert cd.score("<answer>1+2</answer>", [1, 2], 3, 0.2, 2.0, rules="study", prompt=p) == 2.0
    assert cd.score("<answer>1-2</answer>", [1, 2], 3, 0.2, 2.0, rules="study", prompt=p) == 0.2
    for bad in [None, 12, b"<answer>1+2</answer>"]:
        assert cd.score(bad, [1, 2], 3, rules="study", prompt=p) == 0.0
    assert cd.score("<answer>1+2</answer>", None, 3, rules="study", prompt=p) == 0.1
    assert cd.score("<answer>1+2</answer>", [1, 2], "3", rules="study", prompt=p) == 0.1
    with pytest.raises(ValueError):
        cd.score("x", [1], 1, rules="eval")


# ---------------------------------------------------------------- Python's limits and ours
@pytest.mark.parametrize("depth", [0, 1, 50, 100, 150, 164, 171, 190, 199, 200])
def test_within_the_caps_eval_agrees(depth):
    """Inside the caps CPython parses and compiles every layout of signs and parentheses, so
    py_value never calls something a number that eval would reject (and vice versa)."""
    signs = min(cd.MAX_STUDY_SIGNS, cd.PY_PARSER_BUDGET - 28 * depth)
    if signs < 0:
        return
    k = max(signs - depth, 0)
    layouts = ["(" * depth + "-" * signs + "1" + ")" * depth,
               "-" * signs + "(" * depth + "1" + ")" * depth,
               "(-" * min(depth, signs) + "-" * (signs - min(depth, signs)) + "1" + ")" * depth,
               "-(" * min(depth, signs) + "(" * (depth - min(depth, signs)) + "-" * k + "1" + ")" * depth,
               "(1+" * min(depth, signs) + "(" * (depth - min(depth, signs)) + "-" * k + "1" + ")" * depth]
    for s in layouts:
        assert not _beyond_caps(s), (depth, s[:20])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = eval(s, {"__builtins__": None}, {})  # must not raise
        assert repr(cd.py_value(s)) == repr(want)


def test_beyond_the_caps():
    assert cd.py_value("(" * 200 + "7" + ")" * 200) == 7
    assert cd.py_value("(" * 201 + "7" + ")" * 201) is None          # Python's own limit
    assert cd.py_value("-" * 1000 + "7") == 7
    assert cd.py_value("-" * 1001 + "7") is None                      # ours (eval: -7)
    assert cd.py_value("(" * 200 + "-" * 200 + "7" + ")" * 200) == 7
    assert cd.py_value("(" * 200 + "-" * 202 + "7" + ")" * 200) is None  # ours, near the parser's
    assert cd.py_value("1 +" + " " * (cd.MAX_STUDY_CHARS - 4) + "1") == 2
    assert cd.py_value("1 +" + " " * (cd.MAX_STUDY_CHARS - 3) + "1") is None
    assert cd.py_value("0" * 5000 + " + 7") == 7                      # eval's 000...0 is 0


ADVERSARIAL = [
    "<answer>" * 30000 + "1",
    "<answer>" * 30000 + "</answer>" * 30000,
    "<answer>" + "(" * 100000 + "</answer>",
    "<answer>" + "(" * 200 + "1" + ")" * 200 + "</answer>",
    "<answer>" + "-" * 100000 + "1</answer>",
    "<answer>" + "(-" * 5000 + "1" + ")" * 5000 + "</answer>",
    "<answer>" + "1 " * 100000 + "</answer>",
    "<answer>" + "1+" * 4999 + "1</answer>",
    "<answer>" + "9" * 4000 + "*" + "9" * 4000 + "</answer>",
    "<answer>" + "9" * 4000 + "/" + "." + "0" * 1000 + "1</answer>",
    "<answer>1 +" + " " * 1_000_000 + "1</answer>",
    "<answer>" + "\r" * 200000 + "1</answer>",
    "<answer>(" + "\r " * 100000 + "1)</answer>",
    "Assistant:" * 100000 + "<answer>1</answer>",
    "\n" * 100000 + "Assistant: <answer>1</answer>",
    "x" * 2_000_000,
    "<answer>" + "()" * 50000 + "</answer>",
    "<answer>9**9**9**9</answer>",
    "<answer>" + "1." * 50000 + "</answer>",
    "<answer>" + "+".join(["(" * 171 + "1" + ")" * 171] * 29) + "</answer>",     # ~10k symbols, all parsed
    "<answer>" + "+".join(["(" * 171 + "1\r" + ")" * 171] * 29) + "</answer>",
    "<answer>1 +" + " " * (262_144 - 4) + "1</answer>",                         # the longest answer evaluated
    "<answer>(" + "1\r+" * 990 + "1)</answer>",
]


@pytest.mark.parametrize("i", range(len(ADVERSARIAL)))
def test_study_adversarial_fast(i):
    text = ADVERSARIAL[i]
    nums = [1] if i != 8 else [int("9" * 4000)] * 2
    got, dt = timed_score("Assistant: " + text, nums, 1, rules="study")
    assert got in (0.0, 0.1, 1.0)
    assert dt < BUDGET_S, f"{dt * 1e3:.1f} ms"
    if len(text) < 300_000 and "<answer>" * 100 not in text:  # the study's regex is quadratic there
        assert got == study_reference("Assistant: " + text, nums, 1)


# ---------------------------------------------------------------- fuzz
_FRAGMENTS = ["<answer>", "</answer>", "<answer", "answer>", "Assistant:", "<|im_start|>assistant",
              "\n", "\r", " ", "\t", "1", "2", "3", "0", "12", "+", "-", "*", "/", "(", ")", ".",
              "**", "//", "<|endoftext|>", "x", "\xa0", "\uff11"]


@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=40).map("".join),
       st.lists(st.integers(0, 12), min_size=1, max_size=4), st.integers(-3, 30))
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_study_score_fuzz(text, nums, target):
    got, dt = timed_score(text, nums, target, rules="study")
    assert got == study_reference(text, nums, target)
    assert dt < BUDGET_S


@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=60).map("".join))
@settings(max_examples=2000, deadline=None)
def test_study_answer_matches_the_regex(text):
    assert cd.study_answer(text) == study_extract(text)


_EXPR_ALPHABET = "0123456789+-*/(). \t\r\f"


def _exprs():
    lit = st.one_of(st.integers(0, 10**6).map(str),
                    st.from_regex(r"0*[0-9]{0,3}\.?[0-9]{0,3}", fullmatch=True))
    blank = st.sampled_from(["", "", " ", "\t", "\r", "\f", " \r "])
    sign = st.sampled_from(["", "", "-", "+", "--", "- +"])
    return st.recursive(
        st.tuples(sign, lit).map("".join),
        lambda sub: st.one_of(
            st.tuples(sub, blank, st.sampled_from("+-*/"), blank, sub).map("".join),
            st.tuples(sign, st.just("("), blank, sub, blank, st.just(")")).map("".join),
            st.tuples(sub, st.sampled_from(["(", ")", ".", "()", "(1)", " 1", "**2", "//2"])).map("".join)),
        max_leaves=12)


@given(st.one_of(st.text(alphabet=_EXPR_ALPHABET, max_size=40), _exprs()))
@settings(max_examples=5000, deadline=None)
def test_py_value_matches_eval(expr):
    want = eval_value(expr.strip())
    want = want if type(want) in (int, float) else None
    assert repr(cd.py_value(expr)) == repr(want)
