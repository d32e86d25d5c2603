"""
Countdown: the task, an exact solver, the prompt templates and the reward.

A task is a handful of numbers and a target; the model must write an equation that
uses every number exactly once with + - * / and parentheses and equals the target.
This file is both a script (writes task JSONL) and the module every other stage
imports for scoring.

    python countdown.py --out data/countdown --n-train 200000 --n-test 1024 --seed 0
    python countdown.py --out data/tiny --n-train 2000 --n-test 128 --sizes 3
    python countdown.py --source Jiayi-Pan/Countdown-Tasks-3to4 --out data/countdown
    python countdown.py --source tasks.parquet --out data/countdown --n-train 2000 --n-test 100

Writes train.jsonl and test.jsonl, one {"id","nums","target","solution"} per line.
Generated (the default, --source generate): no test task appears in train (same sorted
numbers and target). With --source (a hub data set name for datasets.load_dataset, or a
local .parquet / .jsonl / .json file or a folder of them, with columns nums and target):
the study's split, the first 327,680 rows as train and the next 1,024 as test, as its
examples/data_preprocess/countdown.py does (no de-duplication there, so none here: the
script prints how many test tasks also occur in train). ids are train-<row> / test-<row>
with the source's row number; solution is computed with solve() (a progress bar; about
20 s for the study's 328k tasks) and is null where no equation exists.

The reward, score(response, nums, target), has two rule sets (REWARD_RULES):
  strict (score's default): the last <answer>...</answer> of the response alone (the
    prompt is never judged; the answer may span lines); integers, binary + - * / and
    parentheses only, evaluated exactly over fractions.Fraction; 1.0 if it uses each
    number exactly once and equals the target exactly, 0.1 for any other answer tag,
    0.0 for none.
  study: what TinyZero's compute_score (verl/utils/reward_score/countdown.py) returns for
    prompt + response, computed without eval: the text after the first "Assistant:"
    (else after the first "<|im_start|>assistant"; neither: 0.0); its last line only, so
    an answer followed by a newline is no answer; the last <answer>...</answer> on that
    line; 0.1 unless the digit runs are exactly the task's numbers (so "1.5" uses the
    numbers 1 and 5) and the answer is digits, + - * / ( ) . and blanks; then the value
    Python's eval gives (unary signs, decimals, true division to floats, int-literal
    rules such as "01" being an error), 1.0 if within 1e-5 of the target, else 0.1.
    Deliberate differences: "**" and "//" score 0.1 instead of being evaluated (9**9**9
    would hang a run), and so do answers beyond the caps below, where CPython's own
    result depends on its version and stack depth anyway.
Python's eval is never used.
"""
import argparse
import operator
import os
import re
import time
from fractions import Fraction
from functools import lru_cache
from itertools import combinations
from math import gcd

import basics

# ---------------------------------------------------------------------------------
# settings (the CLI flags and the reward's limits)
STUDY_SOURCE = "Jiayi-Pan/Countdown-Tasks-3to4"  # the study's task set on the hub
STUDY_SPLIT = (327_680, 1_024)  # its first rows are train, the next ones test
GENERATED_SPLIT = (10_000, 1_024)  # train / test tasks generated without --source (test never in train)
SETTINGS = [
    # (flag, default, type, help)
    ("out", "data/countdown", str, "output folder for train.jsonl and test.jsonl"),
    ("source", "generate", str, f"'generate', a hub data set name (the study's: {STUDY_SOURCE}), or a local "
                                ".parquet/.jsonl/.json file or folder with columns nums and target"),
    ("n_train", None, int, f"number of training tasks (default: {GENERATED_SPLIT[0]} generated, "
                           f"{STUDY_SPLIT[0]} with --source)"),
    ("n_test", None, int, f"number of test tasks (default: {GENERATED_SPLIT[1]} generated and disjoint from "
                          f"train, {STUDY_SPLIT[1]} with --source)"),
    ("seed", 0, int, "random seed (same seed, same files; generate only)"),
    ("sizes", "3,4", str, "comma-separated task sizes, each an equal share (generate only)"),
    ("num_min", 1, int, "smallest input number (generate only)"),
    ("num_max", 99, int, "largest input number (generate only)"),
    ("target_min", 10, int, "smallest target (generate only)"),
    ("target_max", 100, int, "largest target (generate only)"),
]
REWARD_RULES = ("study", "strict")  # score(rules=...); see the docstring above
MAX_EXPR_CHARS = 1000        # strict: evaluate() refuses longer expressions (a real answer is ~20 chars)
MAX_EXPR_DEPTH = 64          # ... and deeper parenthesis nesting
# study rules: answers beyond these caps score the format score without being evaluated.
MAX_STUDY_CHARS = 262_144    # answer length with blanks (1,024 tokens of 256 characters)
MAX_STUDY_SYMBOLS = 10_000   # non-blank characters (valid: <=1,000 signs, <=400 parentheses a number)
MAX_STUDY_SIGNS = 1_000      # + - * / signs (CPython 3.11 compiles ~2,990 nested operators)
MAX_STUDY_NEST = 200         # parenthesis depth: CPython's own tokenizer limit (exact)
PY_PARSER_BUDGET = 5_800     # 28 x depth + signs: CPython 3.11's parser overflows near 5,975

# ---------------------------------------------------------------------------------
# exact evaluator (the strict rules): integers, binary + - * /, parentheses; nothing else

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
    """Integer literals (digit runs) of an expression, in order.

    >>> numbers_in("(12 + 3) * 4.5")
    [12, 3, 4, 5]
    """
    return [int(x) for x in re.findall(r"\d+", expr)]


# ---------------------------------------------------------------------------------
# Python arithmetic without eval (the study's rules)
# The study judges an answer with eval() behind a character guard, so any text made of
# digits, + - * / ( ) . and blanks can count. Of those, eval turns into a number exactly
# the expressions of this grammar (anything else is a SyntaxError, a call of a number,
# an empty tuple "()" or Ellipsis "...", none of which survives `abs(value - target)`):
#   sum := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)*
#   factor := ('+'|'-')* atom ; atom := NUMBER | '(' sum ')'   (and no '(' after an atom)
# NUMBER is Python's: 12, 0, 00, 1.5, .5, 5. (but not 01). Values are Python ints and
# floats combined with the operator module, so every result is bit-identical to eval's.
# "\r" is a line break to Python: ignored inside parentheses, an error outside them.

_PY_CHARS = re.compile(r"[0-9+\-*/(). \t\f\r]+")  # the guard's other \d, \s: SyntaxError
_PY_BLANKS = re.compile(r"[ \t\f\r]+")
_PY_TOKEN = re.compile(r"[0-9]+\.?[0-9]*|\.[0-9]+|[^ ]")
_PY_SIGN = {"+": operator.pos, "-": operator.neg}
_PY_ADD = {"+": operator.add, "-": operator.sub}
_PY_MUL = {"*": operator.mul, "/": operator.truediv}
_END = "$"  # sentinel token after the last one


class _NotANumber(Exception):
    pass


def _py_number(tok):
    if "." in tok and tok != ".":
        return float(tok)                 # what Python's parser does with a float literal
    if not tok[0].isdigit():
        raise _NotANumber(tok)
    if tok[0] == "0":
        if tok.strip("0"):
            raise _NotANumber(tok)        # "leading zeros in decimal integer literals"
        return 0                          # "000" is 0 (even past int()'s 4,300-digit limit)
    return int(tok)                       # over 4,300 digits: ValueError, as eval's SyntaxError


def _py_sum(toks, i, depth, max_depth):
    """Parse and evaluate a sum starting at toks[i]: (value, index after it).
    One Python frame per parenthesis level; unary and binary chains are loops."""
    total, add = None, None
    while True:
        prod, mul = None, None
        while True:
            signs = []
            while toks[i] in _PY_SIGN:
                signs.append(_PY_SIGN[toks[i]])
                i += 1
            if toks[i] == "(":
                if depth >= max_depth:
                    raise _NotANumber("too deep")
                val, i = _py_sum(toks, i + 1, depth + 1, max_depth)
                if toks[i] != ")":
                    raise _NotANumber("unbalanced")
            else:
                val = _py_number(toks[i])
            i += 1
            if toks[i] == "(":
                raise _NotANumber("a call")  # 2(3): calling a number is a TypeError
            for sign in reversed(signs):     # the innermost sign first, as Python does
                val = sign(val)
            prod = val if mul is None else mul(prod, val)
            mul = _PY_MUL.get(toks[i])
            if mul is None:
                break
            i += 1
        total = prod if add is None else add(total, prod)
        add = _PY_ADD.get(toks[i])
        if add is None:
            return total, i
        i += 1


def py_value(expr):
    """The number Python's eval gives for expr.strip(), computed without eval; None where
    eval would raise or give something that is not a number, and for "**" and "//" and
    answers past the MAX_STUDY_* caps.

    >>> [py_value(s) for s in ["(44 - 19) * 3 + 1", "7 / 2", "-(-3)", "+-2", "1.5 * 2", ".5 + 5."]]
    [76, 3.5, 3, -2, 3.0, 5.5]
    >>> [py_value(s) for s in ["00 + 7", "0.1 + 0.2", "(1\\r+ 2)"]]
    [7, 0.30000000000000004, 3]
    >>> [py_value(s) for s in ["01 + 7", "1 / 0", "2(3)", "(1)(2)", "()", "...", "1 2", "2 ** 3", "1\\r+ 2"]]
    [None, None, None, None, None, None, None, None, None]
    """
    if not isinstance(expr, str):
        return None
    s = expr.strip()
    if len(s) > MAX_STUDY_CHARS or not _PY_CHARS.fullmatch(s) or "**" in s or "//" in s:
        return None
    symbols = len(s) - s.count(" ") - s.count("\t") - s.count("\f") - s.count("\r")
    signs = s.count("+") + s.count("-") + s.count("*") + s.count("/")
    if symbols > MAX_STUDY_SYMBOLS or signs > MAX_STUDY_SIGNS:
        return None
    if "\r" not in s:
        toks = _PY_TOKEN.findall(" ".join(s.split()))
    else:  # a line break: fine inside parentheses, the end of the expression outside
        toks = _PY_TOKEN.findall(_PY_BLANKS.sub(lambda m: "\r" if "\r" in m[0] else " ", s))
        depth, kept = 0, []
        for tok in toks:
            depth += (tok == "(") - (tok == ")")
            if tok != "\r":
                kept.append(tok)
            elif depth <= 0:
                return None
        toks = kept
    toks.append(_END)
    max_depth = min(MAX_STUDY_NEST, (PY_PARSER_BUDGET - signs) // 28)
    try:
        val, i = _py_sum(toks, 0, 0, max_depth)
    except (_NotANumber, ArithmeticError, ValueError, RecursionError):  # 1/0, 10**400/1, ...
        return None
    return val if toks[i] == _END else None


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


def study_answer(text):
    """The answer TinyZero's extract_solution takes from prompt + response, or None: after
    the first "Assistant:" (else "<|im_start|>assistant"), the last line, the last match of
    <answer>(.*?)</answer> there (matches are found left to right without overlap),
    stripped. Linear time (the regex itself is quadratic on a line of unclosed tags).

    >>> study_answer("User: ... <answer> (1 + 2) / 3 </answer>\\nAssistant: <answer> 8 - 1 </answer>")
    '8 - 1'
    >>> study_answer("Assistant: <answer>1<answer>2</answer>3</answer> <answer>4</answer")
    '1<answer>2'
    >>> [study_answer(t) for t in ["<answer>1</answer>", "Assistant: <answer>1</answer>\\n"]]
    [None, None]
    """
    if not isinstance(text, str):
        return None
    for marker in ("Assistant:", "<|im_start|>assistant"):
        at = text.find(marker)
        if at >= 0:
            break
    else:
        return None
    line = text[max(at + len(marker), text.rfind("\n") + 1):]
    close = line.rfind("</answer>")
    last_open = line.rfind("<answer>", 0, close) if close >= 0 else -1
    if last_open < 0:
        return None
    # The last match holds the last <answer> that has a </answer> after it; it starts at
    # the first <answer> after the </answer> that precedes that one.
    before = line.rfind("</answer>", 0, last_open)
    start = line.find("<answer>", before + len("</answer>") if before >= 0 else 0)
    end = line.find("</answer>", start + len("<answer>"))
    return line[start + len("<answer>"):end].strip()


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


def _study_score(text, nums, target, format_score, correct_score):
    expr = study_answer(text)
    if expr is None:
        return 0.0
    val = py_value(expr)  # None for everything eval would not turn into a number
    try:
        if val is None or sorted(numbers_in(expr)) != sorted(nums):
            return format_score
        return correct_score if abs(val - target) < 1e-5 else format_score
    except Exception:  # unsortable nums, an odd target: the study's try/except gives the format score
        return format_score


def score(response, nums, target, format_score=0.1, correct_score=1.0, *, rules="strict", prompt=""):
    """The reward of a response; rules (REWARD_RULES) picks the rule set (module docstring).
    "strict" judges the response alone; "study" judges prompt + response as TinyZero does.

    >>> score("... </think> <answer>(44 - 19) * 3 + 1</answer>", [1, 3, 19, 44], 76)
    1.0
    >>> score("<answer>44 + 19 + 3 + 1</answer>", [1, 3, 19, 44], 76)
    0.1
    >>> score("I give up", [1, 3, 19, 44], 76)
    0.0
    >>> p = make_prompt([1, 3, 19, 44], 76)
    >>> [score(r, [1, 3, 19, 44], 76, rules="study", prompt=p) for r in
    ...  ["</think> <answer>-(19 - 44) * 3 + 1</answer>", "</think> <answer>(44 - 19) * 3 + 1</answer>\\n"]]
    [1.0, 0.0]
    >>> score("</think> <answer>-(19 - 44) * 3 + 1</answer>", [1, 3, 19, 44], 76)  # strict: no unary minus
    0.1
    """
    if rules not in REWARD_RULES:
        raise ValueError(f"unknown reward rules {rules!r}; choose one of {REWARD_RULES}")
    try:
        if rules == "study":
            return _study_score(prompt + response, nums, target, format_score, correct_score)
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
    # the study's wording, its grammar and the space before "Using" included
    # (TinyZero examples/data_preprocess/countdown.py, make_prefix)
    "qwen-instruct": ("<|im_start|>system\nYou are a helpful assistant. You first thinks about the "
                      "reasoning process in the mind and then provides the user with the answer."
                      "<|im_end|>\n<|im_start|>user\n " + _QUESTION + "<|im_end|>\n"
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


# ---------------------------------------------------------------------------------
# the study's task set (a hub data set or a local copy)

_LOCAL_EXTS = (".parquet", ".jsonl", ".json")


def load_task_rows(source, n):
    """The first n rows of a task set as [(nums, target)], through datasets.load_dataset:
    a hub name (e.g. STUDY_SOURCE), or a local .parquet / .jsonl / .json file or a folder
    of them, with columns nums and target. Raises ValueError with a one-line message."""
    source = os.path.expanduser(source)
    local = os.path.exists(source) or source.lower().endswith(_LOCAL_EXTS) or \
        source.startswith((".", "/", "~")) or source.count("/") > 1  # hub names: owner/name
    if local and not os.path.exists(source):
        raise ValueError(f"{source}: no such file or folder")
    import datasets
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        if os.path.isfile(source):
            kind = "parquet" if source.lower().endswith(".parquet") else "json"
            ds = datasets.load_dataset(kind, data_files=source, split="train")
        else:
            ds = datasets.load_dataset(source, split="train")
    except Exception as e:  # offline, a bad file, no train split: one line, no traceback
        msg = (str(e).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"{source}: datasets.load_dataset failed ({type(e).__name__}: {msg})")
    missing = [c for c in ("nums", "target") if c not in ds.column_names]
    if missing:
        raise ValueError(f"{source}: no column {' or '.join(missing)} (it has {ds.column_names})")
    if len(ds) < n:
        raise ValueError(f"{source} has {len(ds)} rows, fewer than the {n} requested "
                         "(--n-train + --n-test)")
    cols = ds[:n]
    rows = []
    for i, (nums, target) in enumerate(zip(cols["nums"], cols["target"])):
        try:
            rows.append(([_whole(x) for x in nums], _whole(target)))
        except (TypeError, ValueError):
            raise ValueError(f"{source}: row {i} is not whole numbers: nums={nums!r} "
                             f"target={target!r}") from None
    return rows


def _whole(x):
    if isinstance(x, str) or int(x) != x:
        raise ValueError(x)
    return int(x)


def study_split(rows, n_train, progress=None):
    """Train and test task records from rows (nums, target): the first n_train rows are
    train, the rest test, as the study splits; ids name the source row; solution by solve()
    (None where there is none, and for more than 6 numbers, past the exhaustive solver)."""
    out = []
    for row, (nums, target) in enumerate(rows):
        split = "train" if row < n_train else "test"
        out.append({"id": f"{split}-{row}", "nums": nums, "target": target,
                    "solution": solve(nums, target) if len(nums) <= 6 else None})
        if progress is not None:
            progress.update(1)
    return out[:n_train], out[n_train:]


def _parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    basics.add_settings(ap, SETTINGS)
    args = ap.parse_args(argv)
    generated = args.source == "generate"
    split = GENERATED_SPLIT if generated else STUDY_SPLIT
    args.n_train = split[0] if args.n_train is None else args.n_train
    args.n_test = split[1] if args.n_test is None else args.n_test
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
    if not generated:
        try:
            args.rows = load_task_rows(args.source, args.n_train + args.n_test)
        except ValueError as e:
            ap.error(f"--source: {e}")
    return args


def main(argv=None):
    from tqdm import tqdm
    args = _parse_args(argv)
    kw = dict(sizes=args.sizes, num_range=(args.num_min, args.num_max),
              target_range=(args.target_min, args.target_max))
    t0 = time.time()
    generated = args.source == "generate"
    with tqdm(total=args.n_train + args.n_test, desc="tasks" if generated else "solving", unit="task") as bar:
        if generated:
            test = generate_tasks(args.n_test, args.seed + 1_000_003, progress=bar, **kw)
            for t in test:
                t["id"] = "test-" + t["id"]
            train = generate_tasks(args.n_train, args.seed, progress=bar,
                                   exclude={task_key(t["nums"], t["target"]) for t in test}, **kw)
            for t in train:
                t["id"] = "train-" + t["id"]
        else:
            train, test = study_split(args.rows, args.n_train, progress=bar)
    dt = time.time() - t0
    os.makedirs(args.out, exist_ok=True)
    basics.write_jsonl(os.path.join(args.out, "train.jsonl"), train)
    basics.write_jsonl(os.path.join(args.out, "test.jsonl"), test)
    n = len(train) + len(test)
    print(f"wrote {len(train)} train + {len(test)} test tasks to {args.out} "
          f"in {dt:.1f}s ({n / max(dt, 1e-9):.0f} tasks/s)")
    if not generated:
        seen = {task_key(t["nums"], t["target"]) for t in train}
        print(f"from {args.source}: rows 0-{len(train) - 1} train, rows {len(train)}-{n - 1} test; "
              f"{sum(task_key(t['nums'], t['target']) in seen for t in test)} test tasks also in "
              f"train; {sum(t['solution'] is None for t in train + test)} without a solution (null)")


if __name__ == "__main__":
    main()
