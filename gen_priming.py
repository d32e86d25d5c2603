"""
Priming traces: Countdown solutions written to show chosen reasoning behaviors.

The study primed base models with small SFT sets of Countdown reasoning traces, each set
written to show exactly one combination of four behaviors (verification, backtracking,
subgoal setting, backward chaining), plus three controls. This script writes those sets.

    # offline (default): a seeded symbolic search rendered as prose; eight sets, ~10 s CPU
    python gen_priming.py --condition all --n 1000 --out data/priming --seed 0

    # Claude, as in the study (key read from the environment only); --batch halves the price
    ANTHROPIC_API_KEY=... python gen_priming.py --backend anthropic --condition all --n 1000
    ANTHROPIC_API_KEY=... python gen_priming.py --backend anthropic --batch --condition all

    # the study's own system prompts, read from a checkout of its repository
    git clone https://github.com/kanishkg/cognitive-behaviors /tmp/cb
    ANTHROPIC_API_KEY=... python gen_priming.py --backend anthropic --prompts study:/tmp/cb ...

    # any OpenAI-compatible server, e.g. a local `vllm serve Qwen/Qwen2.5-32B-Instruct`
    python gen_priming.py --backend openai --base-url http://localhost:8000/v1 \
        --model Qwen/Qwen2.5-32B-Instruct --condition all_strategies --n 200 --concurrency 32

Writes <out>/<condition>.jsonl, one record per task:
{"id","prompt","completion","nums","target","condition","correct","behaviors"}, where the
prompt is countdown.make_prompt(...) (ending in "<think>") and the completion is the thinking,
then "</think>\\n<answer>EXPR</answer>". `behaviors` holds the counts the symbolic writer wrote
(null for API traces: run classify.py on them). <out>/summary.json gives per condition the
record count, correctness rate, mean completion tokens and mean count of each behavior.
Runs resume: records already in a file (by task id) are skipped; each record is appended
whole as soon as it exists, so a killed run loses nothing and duplicates nothing.
<out>/settings.json keeps the settings that shape the records (backend, model, seed, task
source, template, budget); resuming under other ones is refused rather than mixed.

Conditions: all_strategies, only_backtracking, backtracking_verification,
backtracking_subgoal, backtracking_backward are written directly. negative_control, the
study's control with no behavior at all (a straight forward calculation, "Step 1: a + b = c",
ending in the answer), is written directly too but only when named: `all` means the eight
sets the study primed with, and its results tables have no negative_control run. empty_cot (thinking
emptied, answer kept), dots (thinking replaced by "." placeholders of the same token count
under --tokenizer) and no_positive (all_strategies traces whose answer is wrong; extra tasks
are solved, into <out>/extra/, until n wrong ones exist) are derived from all_strategies,
which is written first whenever one of them is asked for. --budget sets how often the
symbolic search gives up: the default 3 gives about 50% correct traces (the study's Claude
traces were right 19-44% of the time: `plot.py --priming study:claude_accs`).

What each behavior looks like in the symbolic writer's text. One sentence is one instance;
no sentence shows two behaviors; PHRASES below lists every wording under the behavior it
counts for, and MARKERS gives a regex per behavior that finds exactly those sentences.
- backtracking: explicitly leaves the current path and names the state it returns to: the
  start ("Let me go back to the start: 44, 19, 3 and 1."), an intermediate state ("Backtrack
  to 25, 3 and 1."), or an earlier need of a backward chain ("Return to needing 6 from 3, 2
  and 1."). Always contains "back to", "backtrack", "return to" or "start over".
- verification: compares a computed value with the target: "76 is not 77; it is 1 too
  low.", "24 equals the target 24.", a final "Verifying: (3 * 2) * 4 = 24, which matches the
  target." and, when the search gives up, "... the closest attempt was ... off by 3".
  Conditions without verification never judge a value in words: a failed attempt is
  followed directly by a backtracking sentence (or by the answer once the budget is spent).
- subgoal: names an intermediate number derived from the target, then the search works
  forward toward it: "Subgoal: make 6 from 3, 2 and 1, since 6 * 4 = 24." Always contains
  "subgoal", "intermediate goal" or "aim for".
- backward: reasons from the target (or a needed value) back to what the step before needs:
  "Working backwards from 24: if the last step is 6 * 4 = 24, then 3, 2 and 1 must make 6."
  Always contains "backwards" or "reverse".
Neutral sentences (the opening, arithmetic steps, the answer) use none of these words.

API backends send, per task, a system prompt for the condition and a user turn with the task;
temperature and max tokens default to the study's (0.5 and 1024). --prompts ours (default)
uses this file's own wording (system_prompt: the format, the behaviors to show and avoid, and
symbolic examples) with a short "Numbers: [...]\nTarget: N" user turn. --prompts study:PATH
reads the study's system prompts from PATH/generate_cot_datasets/api_gen.py (parsed, never
run) and sends the study's user turn (the base template's question, countdown.py).
"""
import argparse
import ast
import hashlib
import json
import math
import os
import random
import sys
import time
from collections import deque
from fractions import Fraction
from functools import lru_cache
from itertools import combinations

import countdown
import llm
import study
from common import DataError, read_jsonl, read_jsonl_tolerant, write_json, write_jsonl
from study import BEHAVIORS

# ---------------------------------------------------------------------------------
# settings (the CLI flags; defaults follow the study's priming sets)
DEFAULTS = dict(
    backend="symbolic",        # symbolic (offline search) | anthropic | openai
    condition="all",           # a condition name, a comma-separated list, or all
    n=1000,                    # records per condition
    out="data/priming",        # output folder: <condition>.jsonl and summary.json
    seed=0,                    # seeds the task stream and every trace's wording and search order
    tasks=None,                # optional task JSONL ({"id","nums","target"}) instead of generating
    sizes="3,4",               # how many numbers a generated task has; each size an equal share
    target_min=10, target_max=25,  # target range of generated tasks (the study's priming range)
    num_min=1, num_max=24,     # range of the input numbers of generated tasks (the study's: tasks/countdown.py)
    template="base",           # prompt template (countdown.TEMPLATES) stored in each record
    tokenizer="tiny",          # tokenizer that measures lengths (dots matching, summary)
    budget=3,                  # symbolic: complete attempts before giving up (3: ~50% correct)
    width=2,                   # symbolic: steps tried from an intermediate state before going back
    model=None,                # API model id (default per backend, see DEFAULT_MODEL)
    base_url=None,             # API base URL (default: env ANTHROPIC_BASE_URL / OPENAI_BASE_URL)
    # API sampling as in the study: generate_cot_datasets/api_gen.py (kanishkg/cognitive-behaviors
    # and TinyZero) sends max_tokens=1024 (line 182) and temperature=0.5 (line 183)
    max_tokens=1024,           # API: longest completion
    temperature=0.5,           # API: sampling temperature
    prompts="ours",            # API: system prompts: ours, or study:PATH (a checkout of the study's repo)
    concurrency=8,             # API: requests in flight at once
    max_retries=8,             # API: retries of one request on 429 / 5xx / overload / bad body
    retry_base=1.0,            # API: first backoff in seconds, doubled on each retry
    timeout=600.0,             # API: seconds before one HTTP request is abandoned (and retried)
    batch=False,               # anthropic: use Message Batches (half price, results within 24 h)
    poll=30.0,                 # anthropic --batch: seconds between status polls
)
DEFAULT_MODEL = {"anthropic": "claude-sonnet-4-5", "openai": "gpt-4o"}  # the study (api_gen.py:181):
# claude-3-5-sonnet-20241022, which Anthropic has retired; pass it with --model where it still answers
MAX_EXTRA = 20                 # no_positive: give up after solving this many x n extra tasks
TASK_CHUNK = 256               # generated tasks come in seeded chunks so the stream is prefix-stable
MAX_NEED = 200                 # symbolic: largest intermediate number a subgoal or chain may need
HEURISTIC = 0.5                # symbolic: weight of "result near the goal" against random order

# the conditions, as study.py defines them: those written directly (condition -> the behaviors
# its traces show; negative_control is api_gen.py's NEGATIVE_CONTROL, forward steps straight to
# the answer) and those derived from BASE's traces
DIRECT = {c.name: set(c.behaviors) for c in study.CONDITIONS.values() if c.priming == "written"}
DERIVED = tuple(c.name for c in study.CONDITIONS.values() if c.priming == "derived")
BASE = study.CONDITIONS[DERIVED[0]].derived_from  # all_strategies: every derived set is built from it
CONDITIONS = study.priming_sets()  # the study's eight (`--condition all`)
CONTROLS = tuple(c.name for c in study.CONDITIONS.values() if c.priming and c.optional)  # written when named
ALL_CONDITIONS = CONDITIONS + CONTROLS


def log(msg):
    """Progress-bar-safe message on stderr (llm.py has blanked any API key in it)."""
    from tqdm import tqdm
    tqdm.write(str(msg), file=sys.stderr)


# ---------------------------------------------------------------------------------
# tasks

def make_tasks(n, seed, sizes=(3, 4), num_range=(1, 99), target_range=(10, 25)):
    """The first n tasks of a seeded stream; asking for more later extends the same list.

    Tasks come from countdown.generate_tasks in chunks, each chunk excluding the earlier
    ones, so ids (p<seed>-<index>) name the same task whatever n is (resume relies on it).
    >>> a, b = make_tasks(3, 0), make_tasks(5, 0)
    >>> a == b[:3], a[0]["id"]
    (True, 'p0-000000')
    """
    tasks, seen, chunk = [], set(), 0
    while len(tasks) < n:
        got = countdown.generate_tasks(TASK_CHUNK, (seed << 20) + chunk, sizes=tuple(sizes),
                                       num_range=num_range, target_range=target_range,
                                       exclude=set(seen))
        for t in got:
            seen.add(countdown.task_key(t["nums"], t["target"]))
            tasks.append({"id": f"p{seed}-{len(tasks):06d}", "nums": t["nums"],
                          "target": t["target"]})
        chunk += 1
    return tasks[:n]


def load_tasks(args, n):
    """n tasks from --tasks (fewer if the file is short) or from the seeded stream."""
    if not args.tasks:
        return make_tasks(n, args.seed, args.sizes, (args.num_min, args.num_max),
                          (args.target_min, args.target_max))
    recs = read_jsonl(args.tasks, required=("nums", "target"), check=_task_problem)
    if not recs:
        raise DataError(f"{args.tasks}: no tasks (an empty file)")
    return [{"id": str(r.get("id", f"t{i:06d}")), "nums": [int(x) for x in r["nums"]],
             "target": int(r["target"])} for i, r in enumerate(recs[:n])]


def _task_problem(r):
    whole = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and x == int(x)
    if not (isinstance(r["nums"], list) and r["nums"] and all(map(whole, r["nums"])) and whole(r["target"])):
        return '"nums" must be a list of whole numbers and "target" a whole number'
    return None


def make_record(task, condition, completion, template, behaviors):
    """A priming record in the format of docs/DESIGN.md; `correct` is judged from the answer tag."""
    expr = countdown.extract_answer(completion)
    return {"id": task["id"], "prompt": countdown.make_prompt(task["nums"], task["target"], template),
            "completion": completion, "nums": list(task["nums"]), "target": task["target"],
            "condition": condition,
            "correct": countdown.check_equation(expr, task["nums"], task["target"]),
            "behaviors": behaviors}


# ---------------------------------------------------------------------------------
# symbolic writer: phrase lists. A key's prefix before the dot names the behavior a
# sentence counts for; neutral keys count for nothing. The writer picks one wording per
# sentence with its seeded RNG so that no single sentence is learned by rote.

PHRASES = {
    "open": ["We have {nums} and need to reach {t}.",
             "The numbers are {nums}; I need {t}.",
             "I have to combine {nums} into {t}, using each number once.",
             "Task: make {t} from {nums}.",
             "Let me find a way to get {t} from {nums}."],
    "step.try": ["Let me try {shown}, which leaves {left}.",
                 "Try {shown}. Now I have {left}.",
                 "{shown}; the numbers left are {left}.",
                 "Suppose {shown}. That leaves {left}.",
                 "First combine: {shown}, so I have {left}."],
    "step.then": ["Then {shown}.", "Next, {shown}.", "Now {shown}.", "And {shown}.", "{shown}."],
    "answer": ["So the answer is {expr}.", "The equation is {expr}.", "My answer: {expr}.",
               "So I will write {expr}."],
    "verification.hit": ["{v} equals the target {t}.",
                         "That is exactly {t}, the target.",
                         "Check: {v} = {t}, which matches the target.",
                         "{v} is the target number, so this works."],
    "verification.high": ["{v} is not {t}; it is {d} too high.",
                          "That overshoots: {v} is {d} more than {t}.",
                          "{v} is above the target {t} by {d}.",
                          "Compared with {t}, {v} is too big by {d}."],
    "verification.low": ["{v} is not {t}; it is {d} too low.",
                         "That falls short: {v} is {d} less than {t}.",
                         "{v} is below the target {t} by {d}.",
                         "Compared with {t}, {v} is too small by {d}."],
    "verification.final": ["Let me verify the whole equation: {expr} = {t}, and each number is "
                           "used exactly once, so it is correct.",
                           "Double-check: {expr} evaluates to {t}, the target, using every "
                           "number once.",
                           "Verifying: {expr} = {t}, which matches the target."],
    "verification.closest": ["I have not hit {t} exactly; the closest attempt was {expr} = {v}, "
                             "off by {d}.",
                             "No exact match for {t} within my attempts; the nearest was "
                             "{expr} = {v}, {d} away.",
                             "Checking my attempts against {t}, none matched; {expr} = {v} "
                             "came closest (off by {d})."],
    "backtracking.start": ["Let me go back to the start: {nums}.",
                           "Back to the original numbers {nums}.",
                           "I'll abandon this path and return to {nums}.",
                           "Let me backtrack to the beginning with {nums}.",
                           "Start over from {nums}."],
    "backtracking.state": ["Let me go back to {state} and try a different step.",
                           "Backtrack to {state}.",
                           "Return to {state} and pick another combination.",
                           "Going back to {state}.",
                           "Undo that step; back to {state}."],
    "backtracking.need": ["Let me go back to making {need} from {state} another way.",
                          "Backtrack: {need} from {state}, a different option.",
                          "Return to needing {need} from {state}.",
                          "Going back to the point where {state} had to make {need}."],
    "subgoal.set": ["Subgoal: make {s} from {rest}, since {rel} = {w}.",
                    "Let me set an intermediate goal of {s} using {rest}; then {rel} = {w}.",
                    "I'll aim for {s} first with {rest}, because {rel} = {w}.",
                    "A useful subgoal is {s}: if {rest} can make {s}, then {rel} = {w}."],
    "subgoal.name": ["So my subgoal is {s} from {rest}.",
                     "That makes {s} an intermediate goal for {rest}.",
                     "I'll aim for {s} with {rest} first."],
    "backward.first": ["Working backwards from {w}: if the last step is {rel} = {w}, then {rest} "
                       "must make {s}.",
                       "Reasoning backwards: {w} = {rel}, so {rest} would have to produce {s}.",
                       "In reverse: to end on {w} by {how}, I need {s} from {rest}.",
                       "Thinking backwards, {w} could come from {rel}; that requires {s} from "
                       "{rest}."],
    "backward.next": ["Continuing backwards: {w} = {rel}, so {rest} must give {s}.",
                      "One more step in reverse: {w} could be {rel}, which needs {s} from {rest}.",
                      "Backwards again: reaching {w} by {how} means {rest} must make {s}."],
}

# Regexes (case-insensitive) that find each behavior's sentences in this writer's text:
# split a completion into sentences at whitespace after a period; a sentence matching a
# pattern is one instance. tests/test_gen_priming.py checks that these counts equal the
# recorded ones on every record; classify.py may use them as a starting point.
MARKERS = {
    "backtracking": r"\bback to\b|\bbacktrack|\breturn to\b|\bstart over\b",
    "verification": (r"\bthe target\b|\bis not \d|\btoo (?:high|low|big|small)\b|overshoots|"
                     r"falls short|\bverif|double-check|closest|nearest"),
    "subgoal": r"\bsubgoal\b|intermediate goal|\baim for\b",
    "backward": r"\bbackwards\b|\breverse\b",
}

# How a missing value x and a kept number a can make the needed value w:
# form -> (x from w and a, or None when that form cannot apply; value of the form; "how" words)
FORMS = {
    "{x} + {a}": (lambda w, a: w - a if w > a else None, lambda x, a: x + a, "adding {a}"),
    "{x} - {a}": (lambda w, a: w + a, lambda x, a: x - a, "subtracting {a}"),
    "{a} - {x}": (lambda w, a: a - w if a > w else None, lambda x, a: a - x,
                  "taking something away from {a}"),
    "{x} * {a}": (lambda w, a: w // a if a > 1 and w % a == 0 else None, lambda x, a: x * a,
                  "multiplying by {a}"),
    "{x} / {a}": (lambda w, a: w * a if a > 1 else None, lambda x, a: x / a, "dividing by {a}"),
    "{a} / {x}": (lambda w, a: a // w if a % w == 0 and a // w > 1 else None, lambda x, a: a / x,
                  "dividing {a} by something"),
}
PLAN_KINDS = {  # top-level attempt kinds a condition may use (forward is the neutral fallback)
    "all_strategies": ("combined", "forward", "subgoal", "backward"),
    "only_backtracking": ("forward",),
    "backtracking_verification": ("forward",),
    "backtracking_subgoal": ("subgoal",),
    "backtracking_backward": ("backward",),
}


def fmt(v):
    """A number as written in a trace. >>> fmt(Fraction(6)), fmt(Fraction(7, 2)), fmt(5)
    ('6', '7/2', '5')"""
    v = Fraction(v)
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def fmt_list(values):
    """Numbers as a reader lists them.

    >>> fmt_list([44, 19, 3, 1])
    '44, 19, 3 and 1'
    """
    s = [fmt(v) for v in values]
    return s[0] if len(s) == 1 else ", ".join(s[:-1]) + " and " + s[-1]


def wrap(expr):
    """Parenthesise a compound expression. >>> wrap("3"), wrap("3 + 4")
    ('3', '(3 + 4)')"""
    return expr if expr.isdigit() else f"({expr})"


def combine(p, q):
    """The ways a person combines two (value, expr) items: larger first, no negative or
    fractional results. Returns [(value, expr, shown)].

    >>> [s for _, _, s in combine((3, "3"), (12, "12"))]
    ['12 + 3 = 15', '12 * 3 = 36', '12 - 3 = 9', '12 / 3 = 4']
    """
    (a, ea), (b, eb) = (p, q) if p[0] >= q[0] else (q, p)
    ea, eb = wrap(ea), wrap(eb)
    out = [(a + b, f"{ea} + {eb}", f"{a} + {b} = {a + b}"),
           (a * b, f"{ea} * {eb}", f"{a} * {b} = {a * b}")]
    if a > b:
        out.append((a - b, f"{ea} - {eb}", f"{a} - {b} = {a - b}"))
    if b > 1 and a % b == 0:
        out.append((a // b, f"{ea} / {eb}", f"{a} / {b} = {a // b}"))
    return out


def outer_step(form, kept):
    """The step that joins a sub-result x with a kept (value, expr) item via form;
    returns f(value, expr) -> (value, expr, shown).

    >>> outer_step("{x} * {a}", (4, "4"))(Fraction(6), "3 + 3")
    (Fraction(24, 1), '(3 + 3) * 4', '6 * 4 = 24')
    """
    a, ea = kept
    apply_ = FORMS[form][1]

    def step(x, ex):
        value = apply_(Fraction(x), Fraction(a))
        return value, form.format(x=wrap(ex), a=wrap(ea)), \
            form.format(x=fmt(x), a=fmt(a)) + f" = {fmt(value)}"
    return step


# ---------------------------------------------------------------------------------
# symbolic writer: the search. Items are (value, expr) pairs; a "leaf" is the last two
# numbers of an attempt, where the writer takes whichever operation lands on the current
# goal (else the closest), completes the equation and, with verification, judges it.
# Every leaf spends one unit of the budget; when it runs out the writer answers with its
# closest attempt, which is how wrong traces arise.

class Writer:
    """One trace for one task under one condition: a seeded, budgeted search whose moves
    are all written out as sentences; self.counts tallies the behavior sentences."""

    def __init__(self, nums, target, condition, rng, budget, width):
        self.nums, self.target, self.rng = list(nums), target, rng
        self.on, self.kinds = DIRECT[condition], PLAN_KINDS[condition]
        self.budget, self.width = budget, width
        self.paras, self.counts = [[]], dict.fromkeys(BEHAVIORS, 0)
        self.best, self.solved = None, None  # (distance, expr, value) / expr

    def say(self, key, newline=False, **kw):
        behavior = key.split(".")[0]
        assert behavior not in BEHAVIORS or behavior in self.on, f"{key} outside condition"
        if newline and self.paras[-1]:
            self.paras.append([])
        text = self.rng.choice(PHRASES[key]).format(**kw)
        self.paras[-1].append(text[0].upper() + text[1:])
        if behavior in BEHAVIORS:
            self.counts[behavior] += 1

    def moves(self, items, goal):
        """Next forward steps [(new_items, shown)], in the order this writer tries them:
        random, nudged toward results near the goal; steps giving the same numbers once."""
        out, seen = [], set()
        for i, j in combinations(range(len(items)), 2):
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            for v, e, shown in combine(items[i], items[j]):
                new = rest + [(v, e)]
                key = tuple(sorted(x for x, _ in new))
                if key not in seen:
                    seen.add(key)
                    score = self.rng.random() + HEURISTIC * abs(math.log(v / goal))
                    out.append((score, len(out), new, shown))
        return [(new, shown) for *_, new, shown in sorted(out)]

    def last_steps(self, items, need):
        """Ways the last step can make `need` from one kept item and the rest:
        [(form, kept, x, rest)] where the rest must make x; shuffled, common forms first."""
        out, seen = [], set()
        for k, kept in enumerate(items):
            rest = items[:k] + items[k + 1:]
            for form, (solve_x, _, _) in FORMS.items():
                x = solve_x(need, kept[0])
                if x is None or not 1 <= x <= MAX_NEED or (kept[0], form) in seen:
                    continue
                seen.add((kept[0], form))
                rare = 0.0 if form in ("{x} + {a}", "{x} - {a}", "{x} * {a}") else 0.4
                out.append((self.rng.random() + rare, len(out), (form, kept, x, rest)))
        return [c for *_, c in sorted(out)]

    def leaf(self, items, goal, finish):
        """Last two numbers: land on goal if possible, finish the equation, judge it."""
        options = combine(*items)
        self.rng.shuffle(options)
        v, expr, shown = min(options, key=lambda o: abs(o[0] - goal))
        self.budget -= 1
        self.say("step.then", shown=shown)
        value = Fraction(v)
        for step in finish:  # the outer steps of a subgoal or backward plan
            value, expr, shown = step(value, expr)
            self.say("step.then", shown=shown)
        d = abs(value - self.target)
        if self.best is None or d < self.best[0]:
            self.best = (d, expr, value)
        if "verification" in self.on:
            key = "hit" if d == 0 else "high" if value > self.target else "low"
            self.say("verification." + key, v=fmt(value), t=self.target, d=fmt(d))
        if d == 0:
            self.solved = expr
        return d == 0

    def forward(self, items, goal, finish, limit):
        """Depth-first over pairwise steps toward goal, at most `limit` steps per state."""
        if len(items) == 2:
            return self.leaf(items, goal, finish)
        for k, (new, shown) in enumerate(self.moves(items, goal)):
            if self.budget <= 0 or k >= limit:
                return False
            if k:
                self.say("backtracking.state", state=fmt_list(v for v, _ in items))
            self.say("step.try", shown=shown, left=fmt_list(v for v, _ in new))
            if self.forward(new, goal, finish, limit):
                return True
        return False

    def backward(self, items, need, finish, limit):
        """Chain from `need` back toward the inputs, one inverse step per level."""
        if len(items) == 2:
            return self.leaf(items, need, finish)
        for k, (form, kept, x, rest) in enumerate(self.last_steps(items, need)):
            if self.budget <= 0 or k >= limit:
                return False
            if k:
                self.say("backtracking.need", need=need, state=fmt_list(v for v, _ in items))
            self.say("backward.next", **self.relation(form, kept, x, rest, need))
            if self.backward(rest, x, [outer_step(form, kept)] + finish, limit):
                return True
        return False

    def relation(self, form, kept, x, rest, w):
        """Fields that subgoal and backward sentences share."""
        return dict(w=w, s=x, rest=fmt_list(v for v, _ in rest), how=FORMS[form][2].format(a=kept[0]),
                    rel=form.format(x=x, a=kept[0]))

    def attempt(self, kind, plan):
        """One top-level attempt; plan is a first forward step or a last-step candidate."""
        if kind == "forward":
            new, shown = plan
            self.say("step.try", shown=shown, left=fmt_list(v for v, _ in new))
            return self.forward(new, self.target, [], self.width)
        form, kept, x, rest = plan
        fields = self.relation(form, kept, x, rest, self.target)
        if kind in ("backward", "combined"):
            self.say("backward.first", **fields)
        if kind == "backward":
            return self.backward(rest, x, [outer_step(form, kept)], self.width)
        self.say("subgoal.name" if kind == "combined" else "subgoal.set", **fields)
        return self.forward(rest, x, [outer_step(form, kept)], self.width)

    def next_kind(self, queues, first):
        """Which kind of attempt comes next (None when nothing is left to try)."""
        if first and "combined" in self.kinds and queues["last"]:
            return "combined"
        kinds = [k for k in self.kinds if queues["forward" if k == "forward" else "last"]]
        if not kinds:  # the condition's own kinds are spent: plain forward steps are neutral
            return "forward" if queues["forward"] else None
        return self.rng.choice(kinds)

    def write(self):
        """Run the search and return (completion, counts)."""
        items = [(v, str(v)) for v in self.nums]
        self.say("open", nums=fmt_list(self.nums), t=self.target)
        queues = {"forward": deque(self.moves(items, self.target)),
                  "last": deque(self.last_steps(items, self.target))}
        first = True
        while self.budget > 0 and self.solved is None:
            kind = self.next_kind(queues, first)
            if kind is None:
                break
            if not first:
                self.say("backtracking.start", newline=True, nums=fmt_list(self.nums))
            first = False
            self.attempt(kind, queues["forward" if kind == "forward" else "last"].popleft())
        if self.best is None:  # every chain stalled before a leaf (rare): one forward attempt
            self.budget = max(self.budget, 1)
            self.say("backtracking.start", newline=True, nums=fmt_list(self.nums))
            self.attempt("forward", queues["forward"].popleft())
        return self.conclude(), dict(self.counts)

    def conclude(self):
        """Final check (or closest-attempt remark) and the answer; returns the completion."""
        verify = "verification" in self.on
        if self.solved is not None:
            expr = self.solved
            if verify:
                self.say("verification.final", newline=True, expr=expr, t=self.target)
        else:
            d, expr, value = self.best
            if verify:
                self.say("verification.closest", newline=True, expr=expr, v=fmt(value),
                         t=self.target, d=fmt(d))
        self.say("answer", newline=not verify, expr=expr)
        body = "\n".join(" ".join(p) for p in self.paras)
        return f"\n{body}\n</think>\n<answer>{expr}</answer>"


# ---------------------------------------------------------------------------------
# symbolic writer: the negative control. The search is silent; only the steps of the
# solution it found are written, one a line ("Step 1: 12 + 3 = 15."), then the answer.

def straight_solution(nums, target, rng):
    """(shown steps, expression) of a forward calculation that uses every number once: a
    seeded depth-first search over combine()'s steps (whole, non-negative numbers), which ends
    on the target, or on the closest value when those steps cannot reach it (about 1 task in
    100 of the generated ones needs a fraction or a negative number; it gets a wrong answer)."""
    best, dead = [], set()  # best: [(distance, steps, expr)]; dead: value sets that cannot finish

    def search(items, steps):
        if len(items) == 1:
            d = abs(items[0][0] - target)
            if not best or d < best[0][0]:
                best[:] = [(d, steps, items[0][1])]
            return d == 0
        key = tuple(sorted(v for v, _ in items))
        if key in dead:
            return False
        pairs = list(combinations(range(len(items)), 2))
        rng.shuffle(pairs)
        for i, j in pairs:
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            options = combine(items[i], items[j])
            rng.shuffle(options)
            if any(search(rest + [(v, e)], steps + [shown]) for v, e, shown in options):
                return True
        dead.add(key)
        return False

    search([(v, str(v)) for v in nums], [])
    return best[0][1], best[0][2]


def write_straight(nums, target, rng):
    """(completion, counts) of a negative-control trace: no behavior, so all counts are 0."""
    steps, expr = straight_solution(nums, target, rng)

    def say(key, **kw):
        text = rng.choice(PHRASES[key]).format(**kw)
        return text[0].upper() + text[1:]
    lines = [say("open", nums=fmt_list(nums), t=target)]
    lines += [f"Step {k}: {shown}." for k, shown in enumerate(steps, 1)]
    lines.append(say("answer", expr=expr))
    return "\n" + "\n".join(lines) + f"\n</think>\n<answer>{expr}</answer>", dict.fromkeys(BEHAVIORS, 0)


def write_symbolic(task, condition, seed=0, budget=DEFAULTS["budget"], width=DEFAULTS["width"],
                   template="base"):
    """One symbolic priming record; the same (task, condition, seed) gives the same record.
    (The negative control always computes its way to the answer: budget and width do not apply.)

    >>> r = write_symbolic({"id": "x", "nums": [3, 2, 4], "target": 24}, "only_backtracking")
    >>> r["completion"].endswith("</answer>"), r["behaviors"]["verification"]
    (True, 0)
    >>> print(write_symbolic({"id": "x", "nums": [3, 2, 4], "target": 24}, "negative_control")["completion"])
    <BLANKLINE>
    I have to combine 3, 2 and 4 into 24, using each number once.
    Step 1: 4 * 3 = 12.
    Step 2: 12 * 2 = 24.
    My answer: (4 * 3) * 2.
    </think>
    <answer>(4 * 3) * 2</answer>
    """
    rng = random.Random(f"{seed}|{condition}|{task['id']}|{task['nums']}|{task['target']}")
    if not DIRECT[condition]:
        completion, counts = write_straight(task["nums"], task["target"], rng)
    else:
        completion, counts = Writer(task["nums"], task["target"], condition, rng, budget, width).write()
    return make_record(task, condition, completion, template, counts)


# ---------------------------------------------------------------------------------
# derived conditions (built from all_strategies records, as the study built them)

def thinking(completion):
    """The text before </think>. >>> thinking("\\nhm\\n</think>\\n<answer>1</answer>")
    '\\nhm\\n'"""
    end = completion.find("</think>")
    return completion if end < 0 else completion[:end]


def after_thinking(completion):
    """'</think>' and what follows (an answer-only tail when there is no tag)."""
    end = completion.find("</think>")
    if end >= 0:
        return completion[end:]
    expr = countdown.extract_answer(completion)
    return "</think>\n" + (f"<answer>{expr}</answer>" if expr is not None else "")


def derive(rec, condition, completion, behaviors):
    return {**rec, "completion": completion, "condition": condition, "behaviors": behaviors}


def empty_cot(rec):
    """The record with its thinking removed and its answer kept."""
    return derive(rec, "empty_cot", after_thinking(rec["completion"]), dict.fromkeys(BEHAVIORS, 0))


def placeholder(n_tokens, count, unit="."):
    """A run of `unit` whose token count is n_tokens (or as close as the tokenizer allows).

    >>> placeholder(7, lambda ts: [len(t) for t in ts])
    '.......'
    """
    k, best = n_tokens, None
    for _ in range(8):  # most tokenizers are near-linear in k: a few corrections converge
        got = count([unit * k])[0]
        if best is None or abs(got - n_tokens) < abs(best[1] - n_tokens):
            best = (k, got)
        if got == n_tokens:
            break
        k = max(0, k + (n_tokens - got) * max(1, k // max(got, 1)))
    return unit * best[0]


def dots(rec, count):
    """The record with its thinking replaced by dots of the same token count."""
    n = count([thinking(rec["completion"])])[0]
    return derive(rec, "dots", placeholder(n, count) + after_thinking(rec["completion"]),
                  dict.fromkeys(BEHAVIORS, 0))


def no_positive(recs, n):
    """The first n records whose answer is wrong, relabelled."""
    return [derive(r, "no_positive", r["completion"], r["behaviors"])
            for r in recs if not r["correct"]][:n]


# ---------------------------------------------------------------------------------
# API backends: system prompts (our own words), HTTP with retries, batches

SYSTEM_COMMON = """\
You write worked solutions to Countdown puzzles; they become training examples for a smaller \
model. A puzzle gives a few numbers and a target; a solution is an arithmetic expression that \
uses every number exactly once, with + - * / and parentheses, and equals the target.

Your output continues a transcript that has just opened a <think> tag. Write your reasoning as \
plain prose (no markdown, no headings, no lists), then the closing </think> tag, then only the \
final expression inside answer tags, and nothing after them:
...your reasoning...
</think>
<answer>(8 - 2) * 4</answer>

"""
SEARCH_TEXT = """\
Search for the solution genuinely, the way a person would with pencil and paper: you do not \
know the answer in advance, you try combinations and keep the arithmetic explicit. If you \
cannot find an exact solution, still answer with your best expression that uses every number \
once.

"""
STRAIGHT_TEXT = """\
Work the solution out silently and write only its calculation, forward from the given numbers: \
one line per operation, "Step 1: a + b = c", each later step using the numbers still unused \
and earlier results, the last step giving the target; then one sentence with the expression. \
Show no search and no reasoning habit at all:
"""
# Examples shown in every system prompt, written by the symbolic writer: (task, seed, budget).
# Three solve their task after 1-3 backtracks and one gives up (the study's traces were
# often wrong). They also bring the prompt near or above the 1024 tokens below which
# Anthropic does not cache a prefix (2048 on Haiku models).
EXAMPLES = [({"id": "ex1", "nums": [56, 26, 96, 89], "target": 23}, 8, 6),
            ({"id": "ex2", "nums": [38, 77, 61], "target": 22}, 28, 6),
            ({"id": "ex3", "nums": [54, 21, 23, 29], "target": 19}, 8, 6),
            ({"id": "ex4", "nums": [70, 44, 6, 8], "target": 22}, 1, 2)]


@lru_cache(maxsize=None)
def system_prompt(condition):
    """The system prompt for a directly written condition: the format, the behaviors to
    show and to avoid, and symbolic examples of the expected shape."""
    use, avoid = DIRECT[condition], [b for b in BEHAVIORS if b not in DIRECT[condition]]
    if use:
        text = SYSTEM_COMMON + SEARCH_TEXT + (
            "Show these reasoning habits, each several times where natural:\n" if len(use) > 1
            else "Show this reasoning habit, several times:\n")
        text += "".join(f"- {BEHAVIORS[b].show}\n" for b in BEHAVIORS if b in use)
        text += "Show no other habit. In particular:\n" if avoid else ""
    else:
        text = SYSTEM_COMMON + STRAIGHT_TEXT
    text += "".join(f"- {BEHAVIORS[b].avoid}.\n" for b in avoid)
    text += ("\nExamples of the shape (word yours freely and differently; do not copy their "
             "sentences):\n")
    for task, seed, budget in EXAMPLES:
        ex = write_symbolic(task, condition, seed=seed, budget=budget)
        text += f"\n{user_message(task)}\n{ex['completion'].strip()}\n"
    return text


def user_message(task):
    """The user turn of an API request (the system prompt explains the format).

    >>> user_message({"nums": [1, 2, 3], "target": 6})
    'Numbers: [1, 2, 3]\\nTarget: 6'
    """
    return f"Numbers: {list(task['nums'])}\nTarget: {task['target']}"


def study_user_message(task):
    """The user turn the study sent with its own system prompts: the task question of the
    base template (countdown.py, as the study's tasks/countdown.py words it), without the
    <think> that opens our records' prompts.

    >>> study_user_message({"nums": [1, 2, 3], "target": 6}).endswith("Let me solve this step by step.")
    True
    """
    return countdown.make_prompt(task["nums"], task["target"], "base").rsplit("\n<think>", 1)[0]


# The study's system prompts (--prompts study:PATH) are read from this file of a checkout of
# its repository (github.com/kanishkg/cognitive-behaviors, or kanishkg/TinyZero, which holds it too).
STUDY_API_GEN = os.path.join("generate_cot_datasets", "api_gen.py")


def study_system_prompts(root):
    """{condition: system prompt} from the study's api_gen.py under root, found with ast and
    never run: a dict literal keyed by members of a class whose values are condition names
    (`Kind.ALL_STRATEGIES = "all_strategies"`, `{Kind.ALL_STRATEGIES: ...}`), each value a
    string or a call with the string as `prompt_text=` or first argument."""
    path = os.path.join(root, STUDY_API_GEN)
    if not os.path.isfile(path):
        raise DataError(f"--prompts study:{root}: no {STUDY_API_GEN} there "
                        "(give the root of a checkout of the study's repository)")
    with open(path, encoding="utf-8") as f:
        try:
            tree = ast.parse(f.read(), path)
        except SyntaxError as e:
            raise DataError(f"{path}: not readable Python ({e.msg}, line {e.lineno})") from None
    members = {(c.name, t.id): a.value.value for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
               for a in c.body if isinstance(a, ast.Assign) and isinstance(a.value, ast.Constant)
               for t in a.targets if isinstance(t, ast.Name)}
    out = {}
    for d in (n for n in ast.walk(tree) if isinstance(n, ast.Dict)):
        for k, v in zip(d.keys, d.values):
            if isinstance(v, ast.Call):  # SystemPrompt(prompt_text="...", ...)
                v = next((kw.value for kw in v.keywords if kw.arg == "prompt_text"), v.args[0] if v.args else None)
            if (isinstance(k, ast.Attribute) and isinstance(k.value, ast.Name)
                    and (k.value.id, k.attr) in members and isinstance(v, ast.Constant) and isinstance(v.value, str)):
                out[members[(k.value.id, k.attr)]] = v.value
    return out


def load_prompts(args):
    """None for our own prompts; else the study's system prompts, checked to hold one for
    every condition this run sends (the derived ones are asked with all_strategies')."""
    if args.prompts == "ours":
        return None
    root = args.prompts[len("study:"):]
    prompts = study_system_prompts(root)
    missing = [c for c in dict.fromkeys(BASE if c in DERIVED else c for c in args.conditions)
               if c not in prompts]
    if missing:
        raise DataError(f"{os.path.join(root, STUDY_API_GEN)}: no system prompt for "
                        f"{', '.join(missing)} (found: {', '.join(sorted(prompts)) or 'none'})")
    return prompts


def prompts_id(prompts):
    """What settings.json records of the prompts: "ours", or "study:" and a hash of them."""
    if prompts is None:
        return "ours"
    return "study:" + hashlib.sha1(json.dumps(prompts, sort_keys=True).encode()).hexdigest()[:12]


def normalize_completion(text):
    """Model output -> completion after the prompt's <think>: drop a repeated opening tag and
    make sure '</think>' precedes the answer.

    >>> normalize_completion("<think>try 1+2</think> <answer>1+2</answer>")
    '\\ntry 1+2</think> <answer>1+2</answer>'
    >>> normalize_completion("1+2=3 <answer>1+2</answer>")
    '\\n1+2=3 \\n</think>\\n<answer>1+2</answer>'
    """
    text = text.strip()
    if text.startswith("<think>"):
        text = text[len("<think>"):].lstrip()
    if "</think>" not in text:
        i = text.rfind("<answer>")
        text = text + "\n</think>" if i < 0 else text[:i] + "\n</think>\n" + text[i:]
    return "\n" + text


class ApiBackend:
    """Claude (Messages API, Message Batches) or any OpenAI-compatible chat server (llm.py)."""

    def __init__(self, args, prompts=None):
        self.args, self.prompts = args, prompts  # prompts: the study's, or None (ours)
        self.llm = llm.Client(args.backend, args.model or DEFAULT_MODEL[args.backend], args.base_url,
                              args.max_retries, args.retry_base, args.timeout, log=log)
        self.failed = 0
        self.flush_every = 1  # a paid-for record goes to disk the moment it arrives

    @property
    def retries(self):
        return self.llm.usage["retries"]

    def stop(self):
        self.llm.stop()

    def request(self, condition, task):
        """(system, user, max tokens, temperature) of one task."""
        system, user = ((self.prompts[condition], study_user_message(task)) if self.prompts
                        else (system_prompt(condition), user_message(task)))
        return system, user, self.args.max_tokens, self.args.temperature

    def record(self, task, condition, text):
        return make_record(task, condition, normalize_completion(text), self.args.template, None)

    def jobs(self, condition, tasks, path):
        """(items, work, concurrency) for llm.run_jobs: one request per task, or, with --batch,
        the records batch_records collects."""
        if self.args.batch:
            return self.batch_records(condition, tasks, path), (lambda rec: rec), 1
        return tasks, (lambda t: self.record(t, condition, self.llm.chat(*self.request(condition, t)))), \
            self.args.concurrency

    def batch_records(self, condition, tasks, path):
        """Records from Message Batches; what a batch did not answer goes into the next one (at
        most --max-retries more). Batch ids live in <file>.pending.json until their records are
        on disk, so a killed run resumes polling instead of paying for the same work."""
        state, by_id, got = path + ".pending.json", {t["id"]: t for t in tasks}, set()
        for _ in range(self.args.max_retries + 1):
            todo = {t["id"]: self.request(condition, t) for t in tasks if t["id"] not in got}
            if not todo and not os.path.exists(state):
                break
            for tid, text in self.llm.batch(todo, state, self.args.poll):
                if tid in by_id and tid not in got:
                    got.add(tid)
                    yield self.record(by_id[tid], condition, text)
            os.remove(state)  # what it answered was appended as it was yielded
        self.failed += len(tasks) - len(got)


class SymbolicBackend:
    def __init__(self, args):
        self.args, self.failed, self.retries = args, 0, 0
        self.flush_every = 64  # cheap to redo, so appends are grouped (fsync is the cost)

    def jobs(self, condition, tasks, path):
        a = self.args
        return tasks, (lambda t: write_symbolic(t, condition, a.seed, a.budget, a.width, a.template)), 1


# ---------------------------------------------------------------------------------
# the resumable run

def check_stamp(args, prompts=None):
    """An out folder holds one run's records. <out>/settings.json keeps the settings that
    shape them; resuming under different ones would mix two runs, so it is refused."""
    keys = ["backend", "seed", "tasks", "sizes", "num_min", "num_max", "target_min",
            "target_max", "template"] + (["budget", "width"] if args.backend == "symbolic"
                                         else ["model", "base_url"])
    stamp = json.loads(json.dumps({k: getattr(args, k) for k in keys}))  # tuples -> lists
    stamp["model"] = stamp.get("model") and (args.model or DEFAULT_MODEL[args.backend])
    if args.backend != "symbolic":
        stamp["prompts"] = prompts_id(prompts)
    path = os.path.join(args.out, "settings.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diff = [k for k in stamp if old.get(k, "ours" if k == "prompts" else None) != stamp[k]]
        if diff:
            was = ", ".join(f"--{k.replace('_', '-')} {old.get(k)!r}" for k in diff)
            raise DataError(f"{args.out} holds records written with {was}; rerun with those "
                            "settings to resume, or choose a new --out")
    else:
        write_json(path, stamp)


def read_records(path):
    """Whole records of a condition file: a torn last line (a killed run) is cut off; any other
    bad line, or a record without the priming fields, is a DataError naming file and line."""
    try:
        read_jsonl_tolerant(path)  # cuts the torn tail
    except ValueError:
        pass  # a bad line before the last: read_jsonl names it
    return read_jsonl(path, required=("id", "completion", "nums", "target", "correct")) if os.path.exists(path) else []


def existing(path, tasks):
    """Records already in path (a torn last line is dropped), checked against the tasks."""
    recs = read_records(path)
    by_id = {t["id"]: t for t in tasks}
    for r in recs:
        t = by_id.get(r.get("id"))
        if t is not None and (r.get("nums") != t["nums"] or r.get("target") != t["target"]):
            raise DataError(f"{path}: record {r['id']} is a different task than this run's "
                            f"(nums/target differ): --seed or task settings changed; use a new --out")
    return recs


def run_condition(backend, condition, tasks, path):
    """Write records for every task not yet in path; returns the records in task order."""
    done = {r["id"] for r in existing(path, tasks)}
    todo = [t for t in tasks if t["id"] not in done]
    items, work, concurrency = backend.jobs(condition, todo, path)
    _, failed = llm.run_jobs(items, work, path, concurrency, key=lambda x: x["id"], done=done, desc=condition,
                             total=len(tasks), initial=len(done), flush_every=backend.flush_every, log=log,
                             stop=getattr(backend, "stop", None))
    backend.failed += failed
    order = {t["id"]: i for i, t in enumerate(tasks)}
    recs = [r for r in existing(path, tasks) if r["id"] in order]
    return sorted(recs, key=lambda r: order[r["id"]])


def fill_no_positive(backend, args, base):
    """The no_positive set: wrong all_strategies traces, first from the n tasks, then from
    extra tasks (solved into <out>/extra/all_strategies.jsonl) until there are n."""
    n, path = args.n, os.path.join(args.out, "extra", f"{BASE}.jsonl")
    limit, end, extra = n * (MAX_EXTRA + 1), n, []
    while len(no_positive(base + extra, n)) < n and end < limit:
        seen = base + extra
        rate = max(0.05, sum(not r["correct"] for r in seen) / len(seen))  # guess the yield
        missing = n - len(no_positive(seen, n))
        end = min(end + math.ceil(missing / rate * 1.2) + 8, limit)
        tasks = load_tasks(args, end)
        if len(tasks) <= n + len(extra):
            break  # a --tasks file ran out
        extra = run_condition(backend, BASE, tasks[n:], path)
    wrong = no_positive(base + extra, n)
    if len(wrong) < n:
        log(f"no_positive: only {len(wrong)} wrong traces after {len(extra)} extra tasks "
            "(lower --budget or supply more tasks)")
    return wrong


@lru_cache(maxsize=4)
def token_counter(name):
    """texts -> token counts under a tokenizer (alias, hub id or folder). A folder with a
    tokenizer.json is read by the `tokenizers` library directly (fast, no transformers)."""
    import common
    path = common.resolve_model(name)
    tj = os.path.join(path, "tokenizer.json")
    if os.path.isfile(tj):
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(tj)
        return lambda texts: [len(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False)]
    tok = common.load_tokenizer(name)
    return lambda texts: [len(x) for x in tok(list(texts), add_special_tokens=False)["input_ids"]]


def summarize(out, count, settings):
    """summary.json over every condition file in out."""
    conds = {}
    for c in ALL_CONDITIONS:
        path = os.path.join(out, f"{c}.jsonl")
        if not os.path.exists(path):
            continue
        recs = read_records(path)
        known = [r["behaviors"] for r in recs if isinstance(r.get("behaviors"), dict)]
        toks = count([r["completion"] for r in recs]) if recs else []
        conds[c] = {
            "records": len(recs),
            "correct_rate": sum(r["correct"] for r in recs) / max(len(recs), 1),
            "mean_completion_tokens": sum(toks) / max(len(toks), 1),
            "behaviors": ({b: sum(k.get(b, 0) for k in known) / len(known) for b in BEHAVIORS}
                          if recs and len(known) == len(recs) else None),  # null: unknown (API)
        }
    write_json(os.path.join(out, "summary.json"), {"settings": settings, "conditions": conds})
    return conds


# ---------------------------------------------------------------------------------
# command line

def build_parser():
    """One flag per setting in DEFAULTS (its default and type come from there)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    def add(name, help, **kw):
        d = DEFAULTS[name]
        if isinstance(d, bool):
            kw["action"] = "store_true"
        elif d is not None and "choices" not in kw:
            kw["type"] = type(d)
        ap.add_argument("--" + name.replace("_", "-"), default=d, help=help, **kw)

    add("backend", "who writes the traces: the offline symbolic search, Claude, or an "
        "OpenAI-compatible server", choices=["symbolic", "anthropic", "openai"])
    add("condition", f"condition(s), comma-separated, or all (the study's eight: {', '.join(CONDITIONS)}); "
        f"also {', '.join(CONTROLS)}")
    add("n", "records per condition")
    add("out", "output folder (resumed if it already holds records of this run)")
    add("seed", "seed of the task stream and of each trace's wording and search order")
    add("tasks", "task JSONL ({id, nums, target} per line) to use instead of generated tasks")
    add("sizes", "comma-separated task sizes (3..5), each an equal share")
    add("target_min", "smallest target of generated tasks")
    add("target_max", "largest target of generated tasks")
    add("num_min", "smallest input number of generated tasks")
    add("num_max", "largest input number of generated tasks")
    add("template", "prompt template stored in each record", choices=sorted(countdown.TEMPLATES))
    add("tokenizer", "tokenizer for lengths (dots matching, summary): alias, hub id or folder")
    add("budget", "symbolic: complete attempts before giving up with a wrong answer "
        "(lower: fewer correct)")
    add("width", "symbolic: steps tried from an intermediate state before going further back")
    add("model", "API model id; unset: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_MODEL.items()))
    add("base_url", "API base URL; unset: env ANTHROPIC_BASE_URL / OPENAI_BASE_URL, else the "
        "public API")
    add("max_tokens", "API: longest completion in tokens")
    add("temperature", "API: sampling temperature")
    add("prompts", "API: system prompts: ours, or study:PATH to read the study's from "
        f"PATH/{STUDY_API_GEN} (PATH: a checkout of its repository)")
    add("concurrency", "API: requests in flight at once")
    add("max_retries", "API: retries of a request on 429, 5xx, overload or a malformed body")
    add("retry_base", "API: first backoff in seconds (the SDK's backoff, doubling, scaled to start "
        "here; a server's Retry-After wins)")
    add("timeout", "API: seconds before one HTTP request is abandoned (and retried)")
    add("batch", "anthropic: use Message Batches (half price; polls until they end)")
    add("poll", "anthropic --batch: seconds between status polls")
    return ap


def parse_args(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    check_args(ap, args)
    return args


def check_args(ap, a):
    """Reject bad settings with a message naming the flag and the reason."""
    names = CONDITIONS if a.condition == "all" else \
        [c.strip() for c in a.condition.split(",") if c.strip()]
    bad = [c for c in names if c not in ALL_CONDITIONS]
    if bad or not names:
        ap.error(f"--condition: unknown condition {bad[0] if bad else a.condition!r}; "
                 f"choose from {', '.join(ALL_CONDITIONS)} or all")
    a.conditions = [c for c in ALL_CONDITIONS if c in names]
    try:
        a.sizes = tuple(int(s) for s in a.sizes.split(","))
    except ValueError:
        ap.error(f"--sizes must be comma-separated integers, got {a.sizes!r}")
    checks = [(a.n >= 1, "--n must be at least 1"),
              (all(3 <= s <= 5 for s in a.sizes), f"--sizes must lie in 3..5, got {a.sizes}"),
              (1 <= a.num_min <= a.num_max, "need 1 <= --num-min <= --num-max"),
              (1 <= a.target_min <= a.target_max, "need 1 <= --target-min <= --target-max"),
              (a.budget >= 1, "--budget must be at least 1 (one attempt)"),
              (a.width >= 1, "--width must be at least 1"),
              (a.concurrency >= 1, "--concurrency must be at least 1"),
              (a.max_retries >= 0 and a.retry_base >= 0,
               "--max-retries and --retry-base must be >= 0"),
              (a.max_tokens >= 1 and a.timeout > 0 and a.poll >= 0,
               "--max-tokens and --timeout must be positive, --poll at least 0"),
              (not a.batch or a.backend == "anthropic", "--batch works only with --backend anthropic"),
              (a.tasks is None or os.path.isfile(a.tasks), f"--tasks: no such file {a.tasks!r}"),
              (a.backend != "anthropic" or os.environ.get("ANTHROPIC_API_KEY"),
               "--backend anthropic needs ANTHROPIC_API_KEY in the environment"),
              (a.prompts == "ours" or (a.prompts.startswith("study:") and len(a.prompts) > 6),
               f"--prompts must be ours or study:PATH, got {a.prompts!r}"),
              (a.prompts == "ours" or a.backend != "symbolic",
               "--prompts study:PATH applies to --backend anthropic or openai (the symbolic "
               "writer uses no prompt)")]
    for ok, msg in checks:
        if not ok:
            ap.error(msg)


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except (llm.ApiError, DataError, llm.Retryable) as e:  # bad key, model id, request, prompts, out folder, data; a batch's retries spent
        log(f"error: {e}")
        return 2


def run(args):
    t0 = time.time()
    prompts = load_prompts(args)
    check_stamp(args, prompts)
    backend = SymbolicBackend(args) if args.backend == "symbolic" else ApiBackend(args, prompts)
    count = token_counter(args.tokenizer)
    tasks = load_tasks(args, args.n)
    if len(tasks) < args.n:
        log(f"--tasks holds only {len(tasks)} tasks; writing {len(tasks)} per condition")
    direct = [c for c in DIRECT if c in args.conditions
              or (c == BASE and any(d in args.conditions for d in DERIVED))]
    recs = {c: run_condition(backend, c, tasks, os.path.join(args.out, f"{c}.jsonl")) for c in direct}
    derived = [c for c in DERIVED if c in args.conditions]
    if derived and len(recs[BASE]) < len(tasks):
        log(f"{BASE} is incomplete ({len(recs[BASE])}/{len(tasks)}): not deriving {derived}; rerun")
    elif derived:
        make = {"empty_cot": lambda: [empty_cot(r) for r in recs[BASE]],
                "dots": lambda: [dots(r, count) for r in recs[BASE]],
                "no_positive": lambda: fill_no_positive(backend, args, recs[BASE])}
        for c in derived:
            write_jsonl(os.path.join(args.out, f"{c}.jsonl"), make[c]())
    settings = {k: v for k, v in vars(args).items() if k not in ("conditions",)}
    conds = summarize(args.out, count, settings)
    for c in args.conditions:
        if c in conds:
            s = conds[c]
            beh = " ".join(f"{b[:5]} {v:.2f}" for b, v in (s["behaviors"] or {}).items())
            print(f"{c:26s} {s['records']:6d} rec  correct {s['correct_rate']:.3f}  "
                  f"tokens {s['mean_completion_tokens']:7.1f}  {beh}")
    print(f"wrote {args.out}/ in {time.time() - t0:.1f}s"
          + (f" ({backend.retries} retries)" if backend.retries else ""))
    if backend.failed:
        log(f"{backend.failed} requests failed after retries; rerun the same command to fill them in")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
