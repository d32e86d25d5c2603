"""
The offline priming-trace writer: Countdown solutions written as prose by a seeded symbolic
search, each trace showing exactly the behaviors of its condition (study.py), and the negative
control's straight calculation. gen_priming.py's default backend; its API backends also show
traces written here as examples in their system prompts.

Why a writer and not a model: it needs no key and no GPU, runs in seconds on a CPU, and knows
what it wrote. Every behavior sentence is counted as it is written (a record's "behaviors"),
so classify.py's rules can be checked against exact counts (`classify.py --eval`).

    >>> r = write_symbolic({"id": "t1", "nums": [3, 2, 4], "target": 24}, "all_strategies", seed=0)
    >>> sorted(r["behaviors"]) == sorted(BEHAVIORS), r["completion"].endswith("</answer>")
    (True, True)

The search (class Writer): an attempt goes forward by pairwise steps, backward by inverse last
steps, or through a subgoal, as its condition allows (PLAN_KINDS); each completed attempt
spends one unit of a budget (gen_priming.py's --budget: the default 3 gives about 50% correct
traces), and a spent budget ends the trace on the closest attempt, which is how wrong traces
arise. The negative control (write_straight) shows only a solution's steps.

What each behavior looks like in the text. One sentence is one instance; no sentence shows
two behaviors; PHRASES lists every wording under the behavior it counts for, and MARKERS
gives a regex per behavior that finds exactly those sentences.
- backtracking: explicitly leaves the current path and names the state it returns to: the
  start ("Let me go back to the start: 44, 19, 3 and 1."), an intermediate state ("Backtrack
  to 25, 3 and 1."), or an earlier need of a backward chain ("Return to needing 6 from 3, 2
  and 1."). Always contains "back to", "backtrack", "return to" or "start over".
- verification: compares a computed value with the target: "76 is not 77; it is 1 too
  low.", "24 equals the target 24.", a final "Verifying (3 * 2) * 4: 3 * 2 = 6, 6 * 4 = 24, which matches the
  target 24." (a step-by-step recomputation) and, when the search gives up, "... the closest
  attempt was ..., off by 3: ...".
  Conditions without verification never judge a value in words: a failed attempt is
  followed directly by a backtracking sentence (or by the answer once the budget is spent).
- subgoal: names an intermediate number derived from the target, then the search works
  forward toward it: "Subgoal: make 6 from 3, 2 and 1, since 6 * 4 = 24." Always contains
  "subgoal", "intermediate goal" or "aim for".
- backward: reasons from the target (or a needed value) back to what the step before needs:
  "Working backwards from 24: if the last step is multiplying by 4, I need 24 / 4 = 6, so 3, 2
  and 1 must make 6." (the needed number computed forward, the operation named first)
  Always contains "backwards" or "reverse".
Neutral sentences (the opening, arithmetic steps, the answer) use none of these words.
"""
import ast
import math
import operator
import random
from collections import deque
from fractions import Fraction
from itertools import combinations

import countdown
import study
from study import BEHAVIORS

BUDGET = 3       # complete attempts before giving up (3: about 50% correct traces)
WIDTH = 2        # steps tried from an intermediate state before going back
MAX_NEED = 200   # largest intermediate number a subgoal or chain may need
HEURISTIC = 0.5  # weight of "result near the goal" against random order


def make_record(task, condition, completion, template, behaviors):
    """A priming record in the format of docs/DESIGN.md; `correct` is judged from the answer tag.
    (Its home is here, beside the writer that makes most records; gen_priming.py's API
    backends make theirs with it too.)"""
    expr = countdown.extract_answer(completion)
    return {"id": task["id"], "prompt": countdown.make_prompt(task["nums"], task["target"], template),
            "completion": completion, "nums": list(task["nums"]), "target": task["target"],
            "condition": condition,
            "correct": countdown.check_equation(expr, task["nums"], task["target"]),
            "behaviors": behaviors}


# ---------------------------------------------------------------------------------
# phrase lists. A key's prefix before the dot names the behavior a
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
    # the closing check recomputes the equation step by step ({steps}: "16 - 4 = 12, 12 + 10 =
    # 22"), each step one operation, as the search wrote them: a nested "(16 - 4) + 10 = 22"
    # asked a ~10M model to evaluate in one go, and its primed models wrote the target after
    # whatever expression they had reached (docs/mini/calibration2.md)
    "verification.final": ["Let me verify the whole equation {expr}: {steps}, the target, and each "
                           "number is used exactly once, so it is correct.",
                           "Double-check {expr}: {steps}, which is {t}, the target, using every "
                           "number once.",
                           "Verifying {expr}: {steps}, which matches the target {t}."],
    "verification.closest": ["I have not hit {t} exactly; the closest attempt was {expr}, off by {d}: "
                             "{steps}.",
                             "No exact match for {t} within my attempts; the nearest was {expr}, "
                             "{d} away: {steps}.",
                             "Checking my attempts against {t}, none matched; {expr} came closest, "
                             "off by {d}: {steps}."],
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
    # a backward step names the operation first and computes the number it needs forward
    # ({inv}: "25 - 11 = 14"): "25 = 14 + 11" asked a ~10M model to write 14 before the 11 it
    # comes from, and its primed models wrote numbers the task does not have (calibration3.md)
    "backward.first": ["Working backwards from {w}: if the last step is {how}, I need {inv}, so "
                       "{rest} must make {s}.",
                       "Reasoning backwards: reaching {w} by {how} needs {inv}, so {rest} would "
                       "have to produce {s}.",
                       "In reverse: to end on {w} by {how}, I need {inv} from {rest}.",
                       "Thinking backwards, {w} could come from {how}, which requires {inv} from "
                       "{rest}."],
    "backward.next": ["Continuing backwards: reaching {w} by {how} needs {inv}, so {rest} must "
                      "give {s}.",
                      "One more step in reverse: {w} by {how} needs {inv} from {rest}.",
                      "Backwards again: reaching {w} by {how} means {inv}, and {rest} must make {s}."],
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
# form -> (x from w and a, or None when that form cannot apply; value of the form; "how" words;
#          the forward step that computes x from w and a)
FORMS = {
    "{x} + {a}": (lambda w, a: w - a if w > a else None, lambda x, a: x + a, "adding {a}", "{w} - {a}"),
    "{x} - {a}": (lambda w, a: w + a, lambda x, a: x - a, "subtracting {a}", "{w} + {a}"),
    "{a} - {x}": (lambda w, a: a - w if a > w else None, lambda x, a: a - x,
                  "taking something away from {a}", "{a} - {w}"),
    "{x} * {a}": (lambda w, a: w // a if a > 1 and w % a == 0 else None, lambda x, a: x * a,
                  "multiplying by {a}", "{w} / {a}"),
    "{x} / {a}": (lambda w, a: w * a if a > 1 else None, lambda x, a: x / a, "dividing by {a}", "{w} * {a}"),
    "{a} / {x}": (lambda w, a: a // w if a % w == 0 and a // w > 1 else None, lambda x, a: a / x,
                  "dividing {a} by something", "{a} / {w}"),
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


OPS = {ast.Add: ("+", operator.add), ast.Sub: ("-", operator.sub), ast.Mult: ("*", operator.mul),
       ast.Div: ("/", operator.truediv)}


def recompute(expr):
    """An expression's operations in the order a person checks them, innermost first.

    >>> recompute("(16 - 4) + 10"), recompute("(12 / 3) * (2 + 4)")
    ('16 - 4 = 12, 12 + 10 = 22', '12 / 3 = 4, 2 + 4 = 6, 4 * 6 = 24')
    >>> recompute("5 + (3 - 3)")   # a zero operand: only the node's own operation runs
    '3 - 3 = 0, 5 + 0 = 5'
    """
    steps = []

    def value(node):
        if isinstance(node, ast.Constant):
            return Fraction(node.value)
        a, b = value(node.left), value(node.right)
        sym, op = OPS[type(node.op)]
        v = op(a, b)
        steps.append(f"{fmt(a)} {sym} {fmt(b)} = {fmt(v)}")
        return v
    value(ast.parse(expr, mode="eval").body)
    return ", ".join(steps)


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
# the search. Items are (value, expr) pairs; a "leaf" is the last two
# numbers of an attempt, where the writer takes whichever operation lands on the current
# goal (else the closest), completes the equation and, with verification, judges it.
# Every leaf spends one unit of the budget; when it runs out the writer answers with its
# closest attempt, which is how wrong traces arise.

class Writer:
    """One trace for one task under one condition: a seeded, budgeted search whose moves
    are all written out as sentences; self.counts tallies the behavior sentences."""

    def __init__(self, nums, target, condition, rng, budget, width):
        self.nums, self.target, self.rng = list(nums), target, rng
        self.on, self.kinds = set(study.CONDITIONS[condition].behaviors), PLAN_KINDS[condition]
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
            for form, (solve_x, *_) in FORMS.items():
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
                    rel=form.format(x=x, a=kept[0]), inv=FORMS[form][3].format(w=fmt(w), a=fmt(kept[0])) + f" = {fmt(x)}")

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
                self.say("verification.final", newline=True, expr=expr, steps=recompute(expr), t=self.target)
        else:
            d, expr, value = self.best
            if verify:
                self.say("verification.closest", newline=True, expr=expr, steps=recompute(expr), v=fmt(value),
                         t=self.target, d=fmt(d))
        self.say("answer", newline=not verify, expr=expr)
        body = "\n".join(" ".join(p) for p in self.paras)
        return f"\n{body}\n</think>\n<answer>{expr}</answer>"


# ---------------------------------------------------------------------------------
# the negative control. The search is silent; only the steps of the
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


def write_symbolic(task, condition, seed=0, budget=BUDGET, width=WIDTH, template="base"):
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
    if not study.CONDITIONS[condition].behaviors:
        completion, counts = write_straight(task["nums"], task["target"], rng)
    else:
        completion, counts = Writer(task["nums"], task["target"], condition, rng, budget, width).write()
    return make_record(task, condition, completion, template, counts)
