"""
Countdown: the task, an exact solver, the prompt templates and the reward.

A task is a handful of numbers and a target; the model must write an equation that
uses every number exactly once with + - * / and parentheses and equals the target.
This file is both a script (writes task JSONL) and the module every other stage
imports for scoring.

    python countdown.py --out data/countdown --n-train 200000 --n-test 1024 --seed 0
    python countdown.py --out data/tiny --n-train 2000 --n-test 128 --sizes 3

Writes train.jsonl and test.jsonl, one {"id","nums","target","solution"} per line.
No test task appears in train (same sorted numbers and target).

The reward follows TinyZero / the study: 1.0 for a correct equation in the last
<answer>...</answer> of the response, 0.1 for an answer tag whose content is wrong
or invalid, 0.0 for no answer tag. Expressions are parsed by a small recursive-descent
parser over exact rationals (fractions.Fraction); Python's eval is never used.
"""
import argparse
import os
import re
import time
from fractions import Fraction
from functools import lru_cache
from itertools import combinations
from math import gcd

# ---------------------------------------------------------------------------------
# settings (the CLI flags; defaults are the study's task distribution)
DEFAULTS = dict(
    out="data/countdown",    # output folder for train.jsonl / test.jsonl
    n_train=10000,           # number of training tasks
    n_test=1024,             # number of test tasks (never repeated in train)
    seed=0,                  # RNG seed; the same seed gives the same files
    sizes="3,4",             # how many numbers a task has; each size gets an equal share
    num_min=1, num_max=99,   # range of the input numbers (inclusive)
    target_min=10, target_max=100,  # range of the target (inclusive)
)
MAX_EXPR_CHARS = 1000        # evaluate() refuses longer expressions (a real answer is ~20 chars)
MAX_EXPR_DEPTH = 64          # ... and deeper parenthesis nesting

# ---------------------------------------------------------------------------------
# exact evaluator: integers, binary + - * /, parentheses; nothing else

_TOKEN = re.compile(r"\s*(?:(\d+)|(.))", re.S)


class _ParseError(Exception):
    pass


def _tokenize(expr):
    toks = []
    for m in _TOKEN.finditer(expr):
        num, op = m.group(1), m.group(2)
        if num is not None:
            toks.append(int(num))
        elif op is not None:
            if op not in "+-*/()":
                raise _ParseError(op)
            toks.append(op)
    return toks


class _Parser:
    # expr := term (('+'|'-') term)* ; term := atom (('*'|'/') atom)* ; atom := INT | '(' expr ')'
    def __init__(self, toks):
        self.toks, self.i, self.depth = toks, 0, 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self):
        tok = self.peek()
        self.i += 1
        return tok

    def expr(self):
        val = self.term()
        while self.peek() in ("+", "-"):
            op, rhs = self.take(), self.term()
            val = val + rhs if op == "+" else val - rhs
        return val

    def term(self):
        val = self.atom()
        while self.peek() in ("*", "/"):
            op, rhs = self.take(), self.atom()
            if op == "*":
                val = val * rhs
            elif rhs == 0:
                raise _ParseError("division by zero")
            else:
                val = val / rhs
        return val

    def atom(self):
        tok = self.take()
        if isinstance(tok, int):
            return Fraction(tok)
        if tok == "(":
            self.depth += 1
            if self.depth > MAX_EXPR_DEPTH:
                raise _ParseError("too deep")
            val = self.expr()
            if self.take() != ")":
                raise _ParseError("unbalanced")
            self.depth -= 1
            return val
        raise _ParseError(f"unexpected {tok!r}")


def evaluate(expr):
    """Exact value of an arithmetic expression, or None if it is not a plain one.

    >>> evaluate("(44 - 19) * 3 + 1")
    Fraction(76, 1)
    >>> evaluate("7 / 2")
    Fraction(7, 2)
    >>> [evaluate(s) for s in ["2**3", "-1 + 2", "1.5 * 2", "abs(3)", "1/0", "(1 + 2"]]
    [None, None, None, None, None, None]
    """
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        return None
    try:
        toks = _tokenize(expr)
        if any(isinstance(t, int) and t > 10**12 for t in toks):
            return None  # absurd literals: no Countdown number is this big
        p = _Parser(toks)
        val = p.expr()
        if p.i != len(toks):
            return None
        return val
    except (_ParseError, IndexError, ZeroDivisionError, RecursionError):
        return None


def numbers_in(expr):
    """Integer literals of an expression, in order. >>> numbers_in("(12 + 3) * 4")
    [12, 3, 4]"""
    return [int(x) for x in re.findall(r"\d+", expr)]


# ---------------------------------------------------------------------------------
# answer extraction and reward

def extract_answer(response):
    """Content of the last <answer>...</answer> in the response, stripped, or None.

    >>> extract_answer("<answer>1+2</answer> no wait <answer> 3 * 4 </answer>")
    '3 * 4'
    >>> extract_answer("<think>hmm</think>") is None
    True
    """
    if not isinstance(response, str):
        return None
    end = response.rfind("</answer>")
    if end < 0:
        return None
    start = response.rfind("<answer>", 0, end)
    if start < 0:
        return None
    return response[start + len("<answer>"):end].strip()


def check_equation(expr, nums, target):
    """True if expr uses each number of nums exactly once and equals target exactly.

    >>> check_equation("(44 - 19) * 3 + 1", [44, 19, 3, 1], 76)
    True
    >>> check_equation("44 + 19", [44, 19, 3], 63)   # 3 unused
    False
    """
    if expr is None or sorted(numbers_in(expr)) != sorted(nums):
        return False
    val = evaluate(expr)
    return val is not None and val == target


def score(response, nums, target, format_score=0.1, correct_score=1.0):
    """The study's reward, judged on the response text alone (never the prompt).

    >>> score("... </think> <answer>(44 - 19) * 3 + 1</answer>", [1, 3, 19, 44], 76)
    1.0
    >>> score("<answer>44 + 19 + 3 + 1</answer>", [1, 3, 19, 44], 76)
    0.1
    >>> score("I give up", [1, 3, 19, 44], 76)
    0.0
    """
    try:
        expr = extract_answer(response)
        if expr is None:
            return 0.0
        return correct_score if check_equation(expr, nums, target) else format_score
    except Exception:  # the reward must never take a training run down
        return 0.0


# ---------------------------------------------------------------------------------
# exhaustive solver over exact rationals
# Values are fractions normalised to (num, den) int pairs (den > 0, lowest terms): exact,
# hashable, and several times faster than Fraction. Any expression tree splits at its
# root into two groups of numbers A and B; we enumerate the values of the smaller group
# A forward and ask, for each operator, which value B would need (t = a + w -> w = t - a),
# then solve B for that value recursively. Groups of one or two numbers are dictionary
# lookups, so a 4-number task costs a few hundred of them instead of ~4k evaluations.

def _frac(p, q):
    if q < 0:
        p, q = -p, -q
    g = gcd(p, q)
    return (p // g, q // g) if g > 1 else (p, q)


def _wrap(e):
    return e if e.isdigit() else f"({e})"


@lru_cache(maxsize=1 << 16)
def _values(nums):
    """{value: expr} over every expression using each of the sorted tuple nums once."""
    if len(nums) == 1:
        return {(nums[0], 1): str(nums[0])}
    out = {}
    rest = nums[1:]
    for mask in range(1 << len(rest)):  # group A always holds nums[0]; B is non-empty
        a = (nums[0],) + tuple(x for k, x in enumerate(rest) if mask >> k & 1)
        b = tuple(x for k, x in enumerate(rest) if not mask >> k & 1)
        if not b:
            continue
        for (p, q), ea in _values(a).items():
            for (r, s), eb in _values(b).items():
                ea_, eb_ = _wrap(ea), _wrap(eb)
                cands = [(_frac(p * s + r * q, q * s), f"{ea_} + {eb_}"),
                         (_frac(p * r, q * s), f"{ea_} * {eb_}"),
                         (_frac(p * s - r * q, q * s), f"{ea_} - {eb_}"),
                         (_frac(r * q - p * s, q * s), f"{eb_} - {ea_}")]
                if r:
                    cands.append((_frac(p * s, q * r), f"{ea_} / {eb_}"))
                if p:
                    cands.append((_frac(r * q, s * p), f"{eb_} / {ea_}"))
                for v, e in cands:
                    out.setdefault(v, e)
    return out


_HOW = ("{a} + {b}", "{a} - {b}", "{b} - {a}", "{a} * {b}", "{b} / {a}", "{a} / {b}")


def _needs(t, v):
    """[(w, k)]: value w of the other group such that `_HOW[k]` (a = v, b = w) equals t."""
    (tp, tq), (vp, vq) = t, v
    out = [(_frac(tp * vq - vp * tq, tq * vq), 0),    # v + w = t
           (_frac(vp * tq - tp * vq, tq * vq), 1),    # v - w = t
           (_frac(tp * vq + vp * tq, tq * vq), 2)]    # w - v = t
    if vp:
        out.append((_frac(tp * vq, tq * vp), 3))      # v * w = t
        out.append((_frac(tp * vp, tq * vq), 4))      # w / v = t
        if tp:
            out.append((_frac(vp * tq, vq * tp), 5))  # v / w = t  (w != 0 since v, t != 0)
    return out


def _reach(nums, t):
    """An expression over the sorted tuple nums equal to t (a normalised pair), or None."""
    n = len(nums)
    if n <= 2:
        return _values(nums).get(t)
    seen = set()
    for size in range(1, n // 2 + 1):
        for idx in combinations(range(n), size):
            a = tuple(nums[i] for i in idx)
            if a in seen:
                continue
            seen.add(a)
            b = tuple(nums[i] for i in range(n) if i not in idx)
            bvals = _values(b) if len(b) <= 2 else None
            for v, ea in _values(a).items():
                if v == (0, 1) and t == (0, 1):  # 0 * anything = 0: any value of b works
                    eb = next(iter(_values(b).values()))
                    return f"{_wrap(ea)} * {_wrap(eb)}"
                for w, k in _needs(t, v):
                    eb = bvals.get(w) if bvals is not None else _reach(b, w)
                    if eb is not None:
                        return _HOW[k].format(a=_wrap(ea), b=_wrap(eb))
    return None


def solve(nums, target):
    """An expression that uses every number once and equals target, or None.

    >>> solve([44, 19, 3, 1], 76) is not None
    True
    >>> solve([1, 1], 10) is None
    True
    """
    if not nums:
        return None
    return _reach(tuple(sorted(int(x) for x in nums)), (int(target), 1))


# ---------------------------------------------------------------------------------
# prompts (the study's TinyZero templates)

_QUESTION = ("Using the numbers {nums}, create an equation that equals {target}. You can use basic "
             "arithmetic operations (+, -, *, /) and each number can only be used once. Show your "
             "work in <think> </think> tags. And return the final answer in <answer> </answer> "
             "tags, for example <answer> (1 + 2) / 3 </answer>.")
TEMPLATES = {
    "base": ("A conversation between User and Assistant. The user asks a question, and the "
             "Assistant solves it. The assistant first thinks about the reasoning process in the "
             "mind and then provides the user with the answer.\nUser: " + _QUESTION +
             "\nAssistant: Let me solve this step by step.\n<think>"),
    "qwen-instruct": ("<|im_start|>system\nYou are a helpful assistant. You first think about the "
                      "reasoning process in the mind and then provide the user with the answer."
                      "<|im_end|>\n<|im_start|>user\n" + _QUESTION + "<|im_end|>\n"
                      "<|im_start|>assistant\nLet me solve this step by step.\n<think>"),
}


def make_prompt(nums, target, template="base"):
    """The prompt for one task; the model continues after the opening <think>.

    >>> make_prompt([1, 2, 3], 7).endswith("step by step.\\n<think>")
    True
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[template].format(nums=list(nums), target=target)


# ---------------------------------------------------------------------------------
# task generation

def task_key(nums, target):
    """Identity of a task for de-duplication: sorted numbers and target."""
    return (tuple(sorted(nums)), int(target))


def _all_values(cols):
    """Float values of every expression over the columns of cols [B, n] -> [B, K].

    Vectorised over a batch of candidate tasks; used only as a fast filter before the
    exact solver (a float near-hit is confirmed with solve(), so no wrong task gets in).
    """
    import numpy as np
    n = cols.shape[1]
    memo = {}

    def vals(idx):  # idx: tuple of column indices
        if idx in memo:
            return memo[idx]
        if len(idx) == 1:
            out = cols[:, idx[0]:idx[0] + 1]
        else:
            parts = []
            rest = idx[1:]
            for mask in range(1 << len(rest)):
                a = (idx[0],) + tuple(x for k, x in enumerate(rest) if mask >> k & 1)
                b = tuple(x for k, x in enumerate(rest) if not mask >> k & 1)
                if not b:
                    continue
                x = vals(a)[:, :, None]
                y = vals(b)[:, None, :]
                for v in (x + y, x * y, x - y, y - x, x / y, y / x):
                    parts.append(v.reshape(len(cols), -1))
            out = np.concatenate(parts, axis=1)
        memo[idx] = out
        return out

    with np.errstate(divide="ignore", invalid="ignore"):
        return vals(tuple(range(n)))


def generate_tasks(n, seed, sizes=(3, 4), num_range=(1, 99), target_range=(10, 100),
                   exclude=(), progress=None, batch=1024):
    """n distinct solvable tasks, deterministic for a seed.

    Sizes take equal shares; for each task the size is fixed first and the numbers and
    target are redrawn until the task is solvable (redrawing the size too would skew
    toward 4 numbers, which are solvable more often). `exclude` holds task_key()s that
    must not be produced (e.g. the test set when drawing train). Candidates are drawn
    in batches and pre-filtered with float arithmetic; solve() has the final word.
    """
    import numpy as np
    rng = np.random.default_rng(seed)
    seen = set(exclude)
    per_size = [n // len(sizes) + (i < n % len(sizes)) for i in range(len(sizes))]
    tasks = []
    for size, want in zip(sizes, per_size):
        got = 0
        while got < want:
            nums = rng.integers(num_range[0], num_range[1] + 1, size=(batch, size))
            targets = rng.integers(target_range[0], target_range[1] + 1, size=batch)
            if size <= 4:  # above 4 the float table gets large; the exact solver alone is fine
                hit = np.isclose(_all_values(nums.astype(np.float64)), targets[:, None],
                                 rtol=0, atol=1e-6).any(axis=1)
            else:
                hit = np.ones(batch, dtype=bool)
            for row in np.flatnonzero(hit):
                ns, t = [int(x) for x in nums[row]], int(targets[row])
                key = task_key(ns, t)
                if key in seen:
                    continue
                sol = solve(ns, t)
                if sol is None:
                    continue
                seen.add(key)
                tasks.append({"nums": ns, "target": t, "solution": sol})
                got += 1
                if progress is not None:
                    progress.update(1)
                if got == want:
                    break
    order = np.random.default_rng(seed + 1).permutation(len(tasks))  # mix sizes in the file
    tasks = [tasks[i] for i in order]
    return [{"id": f"s{seed}-{i:07d}", **t} for i, t in enumerate(tasks)]


def _parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = DEFAULTS
    ap.add_argument("--out", default=d["out"], help="output folder for train.jsonl and test.jsonl")
    ap.add_argument("--n-train", type=int, default=d["n_train"], help="number of training tasks")
    ap.add_argument("--n-test", type=int, default=d["n_test"], help="number of test tasks (disjoint from train)")
    ap.add_argument("--seed", type=int, default=d["seed"], help="random seed (same seed, same files)")
    ap.add_argument("--sizes", default=d["sizes"], help="comma-separated task sizes, each an equal share")
    ap.add_argument("--num-min", type=int, default=d["num_min"], help="smallest input number")
    ap.add_argument("--num-max", type=int, default=d["num_max"], help="largest input number")
    ap.add_argument("--target-min", type=int, default=d["target_min"], help="smallest target")
    ap.add_argument("--target-max", type=int, default=d["target_max"], help="largest target")
    args = ap.parse_args(argv)
    try:
        args.sizes = tuple(int(s) for s in args.sizes.split(","))
    except ValueError:
        ap.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if any(s < 2 or s > 6 for s in args.sizes):
        ap.error(f"--sizes must lie in 2..6 (the solver is exhaustive), got {args.sizes}")
    if args.n_train < 0 or args.n_test < 0:
        ap.error("--n-train and --n-test must be >= 0")
    if not (1 <= args.num_min <= args.num_max) or not (args.target_min <= args.target_max):
        ap.error("need 1 <= --num-min <= --num-max and --target-min <= --target-max")
    return args


def main(argv=None):
    from tqdm import tqdm
    from common import write_jsonl
    args = _parse_args(argv)
    kw = dict(sizes=args.sizes, num_range=(args.num_min, args.num_max),
              target_range=(args.target_min, args.target_max))
    t0 = time.time()
    with tqdm(total=args.n_train + args.n_test, desc="tasks", unit="task") as bar:
        test = generate_tasks(args.n_test, args.seed + 1_000_003, progress=bar, **kw)
        for t in test:
            t["id"] = "test-" + t["id"]
        train = generate_tasks(args.n_train, args.seed, progress=bar,
                               exclude={task_key(t["nums"], t["target"]) for t in test}, **kw)
        for t in train:
            t["id"] = "train-" + t["id"]
    dt = time.time() - t0
    os.makedirs(args.out, exist_ok=True)
    write_jsonl(os.path.join(args.out, "train.jsonl"), train)
    write_jsonl(os.path.join(args.out, "test.jsonl"), test)
    n = len(train) + len(test)
    print(f"wrote {len(train)} train + {len(test)} test tasks to {args.out} "
          f"in {dt:.1f}s ({n / max(dt, 1e-9):.0f} tasks/s)")


if __name__ == "__main__":
    main()
