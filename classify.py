"""
Count the four cognitive behaviors (verification, backtracking, subgoal setting, backward
chaining) in Countdown reasoning, per response and per logged step.

    # offline rules (default, no key): a PPO run folder -> out/ppo-qwen/classify/{classified.jsonl,steps.csv}
    python classify.py --input out/ppo-qwen --split val     # its test-set samples (default: val/ if there)
    # a priming file (its "completion" field) or any JSONL with response|completion + nums + target
    python classify.py --input data/priming/all_strategies.jsonl --out out/cls-prim
    # the study's judge: gpt-4o-mini, one request per behavior (OPENAI_API_KEY from the environment)
    python classify.py --backend openai --input out/ppo-qwen   # --prompts study:PATH: the study's own questions
    python classify.py --backend openai --batch --input out/ppo-qwen      # Batch API: half price, hours
    python classify.py --backend openai --base-url http://localhost:8000/v1 --judge-model Qwen/Qwen2.5-32B-Instruct ...
    python classify.py --backend anthropic --input ...                    # ANTHROPIC_API_KEY
    # sampling mode (the study's base-model analysis, figure 4): sample, score, classify
    python classify.py --model qwen2.5-3b --data data/countdown/test.jsonl --samples 200 --out out/base-qwen
    python classify.py --model tiny --data data/countdown/test.jsonl --samples 8 --max-new-tokens 32 --out out/base-tiny
    # how well the rules agree with hand labels / with the symbolic writer's recorded counts
    python classify.py --eval tests/fixtures/hand_traces.jsonl
    python gen_priming.py --condition all --n 1000 --out /tmp/prim && python classify.py --eval /tmp/prim

Outputs: OUT/classified.jsonl (each input record plus "verification", "backtracking",
"subgoal", "backward" and "classifier"; an LLM count that could not be read is null and
named in "missing"; also in "failed" if its request failed after its retries: a rerun asks
it again) and OUT/steps.csv with the columns of the study's CSVs, one row per
(condition, step). Behavior columns average the classified records (--sample-per-step of
them per step, 200 as the study); accuracy and response_length average every input record of
that step. A run folder's records: rollouts/, or with --split val the test-set samples ppo.py
writes to val/ every 10th step, which is what the study classified (auto: val/ if there).

The rules backend (`count_behaviors`) reads the arithmetic: it rewrites verbal arithmetic as
symbols ("multiply 3 by 9, which is 27" -> "3 * 9 = 27"), finds each equation, follows the
chain of results (which numbers are used up, which result is the latest, recomputing whole
expressions), and counts, once per distinct occurrence:
  verification  a result judged against the target or a goal: "67, not 76", "too high",
                "that works", "Check: ..." (verdicts on one result count once)
  backtracking  a path left in words ("that fails", "back to 25", "start over") or a new attempt
                that goes back to numbers already used instead of building on its last result
                (a re-derivation after the target was reached is a check, not a backtrack)
  subgoal       a number set as a goal ("aim for 90", "subgoal: 6", "if I can get 40"), or named
                as needed ("the rest must make 11") outside a backward step
  backward      a step from the target toward the inputs: "58 = 56 + 2", "74 - 50 = 24",
                "76 / 4 = 19", splitting a number a backward step asked for, "working backwards"
Convention shared with gen_priming.py's symbolic writer: a number that a backward step asks
for ("58 = 56 + 2, so the rest must make 56") counts as backward chaining, not also as a
subgoal. Agreement (presence / exact, per behavior) is printed by `--eval`; see README.
"""
import argparse
import ast
import csv
import glob
import hashlib
import io
import json
import os
import random
import re
import sys
import threading
import time
import uuid
from bisect import bisect_right
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from fractions import Fraction

from tqdm import tqdm

import common
import countdown
from common import DataError

# ---------------------------------------------------------------------------------
# settings: the flags and their defaults, (flag, default, type, help); `--help` lists them all
SETTINGS = [
    ("backend", "rules", str, "rules (offline patterns) | openai | anthropic (LLM judge)"),
    ("input", None, str, "run folder (val/ or rollouts/step_*.jsonl), priming file, folder of JSONL, or any JSONL"),
    ("split", "auto", str, "run folder: val (ppo.py's test-set samples: what the study classified), rollouts, or auto (val if there, else rollouts)"),
    ("out", None, str, "output folder (default: INPUT/classify for a folder, INPUT_STEM.classify for a file)"),
    ("condition", None, str, "condition name for steps.csv (default: record's condition, run config, or file name)"),
    ("sample_per_step", 200, int, "classify this many random records per (condition, step), as the study; 0: all"),
    ("seed", 0, int, "seed of the per-step sample and of sampling mode"),
    ("length_tokenizer", None, str, "tokenizer for response_length when records lack 'length' (default: words)"),
    ("judge_model", None, str, "LLM judge (default: gpt-4o-mini for openai, claude-3-5-haiku-20241022 for anthropic)"),
    ("prompts", "ours", str, "LLM judge's questions: ours, or study:PATH (read from a checkout of the study's repository)"),
    ("base_url", None, str, "API base URL (default: $OPENAI_BASE_URL or https://api.openai.com/v1; Anthropic: https://api.anthropic.com)"),
    ("batch", False, bool, "openai only: use the Batch API (upload, create, poll, download)"),
    ("concurrency", 8, int, "LLM requests in flight at once"),
    ("max_retries", 6, int, "retries of a request after 429 / 5xx / network errors"),
    ("backoff", 1.0, float, "first retry wait in seconds; doubles each retry (Retry-After wins)"),
    ("timeout", 120.0, float, "seconds before an HTTP request is abandoned (then retried)"),
    ("max_tokens", 512, int, "judge's answer length limit"),
    ("tag_retries", 1, int, "re-asks when an answer has no <count>N</count> (then recorded as missing)"),
    ("poll", 30.0, float, "Batch API: seconds between status polls"),
    ("max_chars", 16000, int, "responses longer than this are cut (head and tail kept) before judging"),
    ("model", None, str, "sampling mode: model alias, hub id or checkpoint folder to sample from first"),
    ("data", "data/countdown/test.jsonl", str, "sampling mode: task JSONL"),
    ("samples", 200, int, "sampling mode: tasks taken from --data"),
    ("per_task", 1, int, "sampling mode: responses per task"),
    ("max_new_tokens", 1024, int, "sampling mode: response length limit (ppo.py's default)"),
    ("temperature", 1.0, float, "sampling mode: temperature (0: greedy)"),
    ("template", "base", str, "sampling mode: prompt template (countdown.TEMPLATES)"),
    ("gen_batch", 32, int, "sampling mode: prompts per generate call"),
    ("device", None, str, "sampling mode: cuda | cpu (default: cuda if available)"),
    ("eval", None, str, "print agreement of the rules with labelled JSONL ('labels' or 'behaviors') and exit"),
]
BEHAVIORS = ("verification", "backtracking", "subgoal", "backward")
CSV_COLUMNS = ["condition", "step", "avg_verifications", "avg_backtracking", "avg_subgoals",
               "avg_backwards", "total_verifications", "total_backtracking", "total_subgoals",
               "total_backwards", "accuracy", "response_length"]
AVG_COLUMN = dict(zip(BEHAVIORS, CSV_COLUMNS[2:6]))
TOTAL_COLUMN = dict(zip(BEHAVIORS, CSV_COLUMNS[6:10]))
DEFAULT_JUDGE = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-20241022"}
# US$ per million (input, output) tokens, list prices; the Batch API bills half.
PRICES = {"gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00), "gpt-4.1-mini": (0.40, 1.60),
          "gpt-4.1-nano": (0.10, 0.40), "claude-3-5-haiku-20241022": (0.80, 4.00),
          "claude-3-5-sonnet-20241022": (3.00, 15.00), "claude-sonnet-4-20250514": (3.00, 15.00)}
ANTHROPIC_VERSION = "2023-06-01"


# =================================================================================
# rules backend
# =================================================================================
# Pipeline: thinking text -> lower case, unicode and verbal arithmetic rewritten as symbols
# ("multiply 3 by 9, which is 27" -> "3 * 9 = 27") -> sentences, equations and cue phrases
# with their positions -> one pass in reading order that follows the chain of results.
# Speed: Python's re tries every alternative of a pattern at every character, so the cue
# phrases are not searched one pattern at a time; one scan visits word starts, and only the
# phrases whose first word (first three letters) is there are tried (`_scan`).

_N = r"(\d+(?:\.\d+)?)"
_WORDNUM = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())}
_WORDNUM.update({w: 10 * (i + 3) for i, w in enumerate("thirty forty fifty sixty seventy eighty ninety".split())})
_WN = r"((?:%s)(?:-(?:one|two|three|four|five|six|seven|eight|nine))?)" % "|".join(sorted(_WORDNUM, key=len, reverse=True))
_OPWORD = r"(plus|minus|times|multiplied by|divided by)"
_OPS_GUARD = ("add", "sum", "subtract", "take", "took", "remov", "multipl", "product", "divid", "differen")

_VERBAL = [((0, 1), "{0} + {1}"), ((2, 3), "{1} - {0}"), ((4, 5), "{0} * {1}"), ((6, 7), "{0} / {1}"),
           ((8, 9), "{0} - {1}"), ((10,), "@ + {0}"), ((11,), "@ - {0}"), ((12,), "@ * {0}"), ((13,), "@ / {0}")]


def _verbal(m):
    """Symbols for a verbal operation matched by the rewrite above ('@': the last result)."""
    g = m.groups()
    for idx, form in _VERBAL:
        if g[idx[0]] is not None:
            return form.format(*(g[i] for i in idx))
    return m.group()


_REWRITES = [  # (substrings that must occur for the rewrite to run, pattern, replacement), in order
    (("<answer>",), re.compile(r"<answer>.*?</answer>", re.S), " "),
    (("think>", "answer>"), re.compile(r"</?think>|</?answer>"), "\n"),
    (("×", "✕", "✖", "⋅", "·"), re.compile(r"[×✕✖⋅·]"), " * "),
    (("x",), re.compile(r"(\d) ?x ?(?=\(?\d)"), r"\1 * "),
    (("÷",), re.compile(r"÷"), " / "),
    (("−", "–"), re.compile(r"[−–]"), "-"),
    (("—", "\u2026"), re.compile(r"[—\u2026]"), ", "),
    (("**", "__", "`"), re.compile(r"\*\*|__|`"), ""),                        # markdown emphasis / code
    (("- ", "* ", "• ", ". ", ") ", "step "),
     re.compile(r"^[ \t]*(?:[-*•]|\d+[.)]|step \d+:)[ \t]+", re.M), ""),      # list bullets, "step 1:"
    (_OPS_GUARD, re.compile(  # verbal operations; the two-operand forms are tried first
        r"\b(?:(?:add|adding|added|sum of|summing)\s+%s\s+(?:and|to|with|plus)\s+%s|"
        r"(?:subtract|subtracting|subtracted|take|taking|took|remove|removing)\s+%s\s+from\s+%s|"
        r"(?:multiply|multiplying|multiplied|product of)\s+%s\s+(?:by|and|with|times)\s+%s|"
        r"(?:divide|dividing|divided)\s+%s\s+by\s+%s|(?:difference (?:of|between))\s+%s\s+and\s+%s|"
        r"(?:then |and )?(?:add|adding|plus)\s+%s(?!\s+(?:and|to|with)\s+\d)|"
        r"(?:then |and )?(?:subtract|subtracting|take away|taking away)\s+%s(?!\s+from\s+\d)|"
        r"(?:then |and )?(?:multiply|multiplying)\s+(?:it |that |this |the result )?by\s+%s|"
        r"(?:then |and )?(?:divide|dividing)\s+(?:it |that |this |the result )?by\s+%s)" % ((_N,) * 14)),
     _verbal),
    (("multiplied", "times", "divided", "plus", "minus"),
     re.compile(r"\b(multiplied by|times|divided by|plus)\b|(?<=[\d)])\s+(minus)\b"),
     lambda m: {"multiplied by": " *", "times": "*", "divided by": "/", "plus": "+", "minus": " -"}[m.group(1) or m.group(2)]),
    ((" ", ","), re.compile(r"([\d)@])\s*,?\s*(?:(?:which|that|this|it|and (?:that|this|it))\s+)?(?:is|equals|equal to|"
                            r"gives(?: us| me)?|makes|yields|results in|leaves(?: us| me)?(?: with)?|comes to|"
                            r"brings (?:it|us|me|this) to|evaluates to|comes out (?:to|at)|to get|to make|we get|"
                            r"i get|you get|gets us|gets me|get|=>|->|→|==)\s+(?:indeed |exactly |just |only |"
                            r"still |now |actually )?(?=[(\d])"), r"\1 = "),
]
_WORD_ARITH = re.compile(r"\b%s\s+%s\s+(%s|\d+)\b|\b(\d+)\s+%s\s+%s\b" % (_WN, _OPWORD, _WN[1:-1], _OPWORD, _WN))

_TERM = r"(?:\(\s*)*-?(?:@|\d+(?:\.\d+)?)(?:\s*\))*"
_EXPR = r"%s(?:\s*[-+*/]\s*%s)*" % (_TERM, _TERM)
_RUN = re.compile(r"(?<![\w.])%s(?:\s*=\s*%s)+" % (_EXPR, _EXPR))
_SPAN = re.compile(r"[-+*/()@\d][-+*/()@\d .]*=[-+*/()@\d =.]*")  # arithmetic stretches with an "=" (fast to find)
_SENT = re.compile(r"[.!?;\n](?:(?<=[;\n])|(?=\s))\s*")  # a sentence ends at . ! ? before a space, ; or newline
_NUMTOK = re.compile(r"@|\d+(?:\.\d+)?|[-+*/(]")
_IS_EXPR = re.compile(r"[\d)]\s*[-+*/]|@")
_IS_NUM = re.compile(r"-?\d+(?:\.\d+)?")
_IS_FRAC = re.compile(r"-?\d+/\d+")

# Cue phrases, one list per kind. Each alternative starts with a literal word, a group of
# literal words "(?:a|b c)" or a class of symbols "[...]"; phrases that start with a number
# are in _NUM_CUES (a pattern that starts with a digit class is found fast by re itself).
_CUES = {
    "judge": [  # a verdict on a result
        r"(?:that|this|it|which) (?:works|worked|checks out|is correct|is right)\b", r"works!", r"correct\b",
        r"incorrect\b", r"bingo\b", r"got it\b", r"there we go\b", r"perfect\b", r"success",
        r"exactly (?:the target|what (?:i|we) |right)", r"what (?:we|i) (?:want|need|wanted|needed)\b",
        r"match(?:es|ed)?\b", r"hits? the target", r"(?:reached|reaches|hit|hits|equals|gives|is|that's|that is|"
        r"this is|it's) (?:the|our) (?:target|goal)\b", r"target!", r"[✓✔✗✘❌✅]", r"not it\b", r"no good\b",
        r"no[.!]", r"yes[.!]", r"not (?:the|our) (?:target|goal)\b"],
    "announce": [  # "let me check": the verification of the equations that follow
        r"(?:double|check|checks|checking|verify|verifying|verified|verification|confirm|confirms|confirming|"
        r"confirmed|sanity)\b"],
    "compare": [  # a comparison; counts only right after a computed result
        r"too (?:high|low|big|small|large|much|little|many|few|far)\b", r"over(?:shoot|shoots|shot|shooting)\b",
        r"undershoot", r"(?:greater|less|more|bigger|smaller|higher|lower|larger|fewer|short) than\b",
        r"short of\b", r"far (?:from|off|away)\b", r"(?:close|closer|near) to\b", r"off by\b",
        r"still not\b", r"not (?:enough|quite|close|right|there|equal)\b",
        r"(?:just|way|slightly|bit|little) (?:over|under|above|below|off)\b",
        r"(?:above|below|under|over) the target\b", r"(?:closest|nearest)\b",
        r"(?:not|isn't|doesn't|does not|didn't|did not|won't|wouldn't|can't) (?:get|reach|hit|make|equal|give)"
        r"(?: us| me)? (?:the target|there)\b"],
    "target": [  # an explicit comparison with a number: kept when the number is the target
        r"(?:not|isn't|doesn't equal|does not equal|doesn't give|does not give|doesn't reach|does not reach|"
        r"didn't reach|didn't give|won't reach|wouldn't give|doesn't make|doesn't hit|instead of|rather than|"
        r"short of|exactly|indeed|match|matches|than)\s+%s(?![\d.]\d)" % _N, r"(?:≠|!=)\s*%s" % _N],
    "backtrack": [
        r"(?:doesn't|does not|didn't|did not|won't|will not|wouldn't|would not|isn't going to|is not going to|"
        r"not going to|can't|cannot) (?:work|help|lead|get us|get me|be it|do it)\b", r"not work(?:ing)?\b",
        r"no luck\b", r"dead[- ]end\b", r"(?:that|this|it) fails\b", r"failed\b", r"scrap\b", r"scratch that\b",
        r"abandon", r"discard", r"give up on\b", r"drop (?:this|that|it)\b",
        r"try (?:again|another|something|a different|different|other|one more|the other|instead|a new)\b",
        r"another (?:approach|way|idea|option|combination|attempt|path|strategy|possibility|route|try|pairing|"
        r"ordering|tack)\b", r"(?:different|new|other) (?:approach|way|combination|strategy|path|idea|order|"
        r"operation|pairing|route|tack)\b", r"something else\b", r"start (?:over|again|fresh)\b",
        r"from scratch\b", r"(?:go|going) back\b", r"back to\b", r"(?:return|returning) to\b", r"revert", r"backtrack", r"step back\b", r"rethink",
        r"reconsider", r"on second thought", r"instead\b", r"alternatively\b", r"what (?:about|if)\b",
        r"how about\b", r"wait\b", r"redo\b", r"undo\b"],
    "backward": [
        r"(?:work|works|working|worked) (?:it |this )?back(?:wards?)?\b", r"backwards?\b", r"in reverse\b",
        r"reverse\b", r"(?:start|starting|begin|beginning|think|thinking|reason|reasoning|go|going|work|working) "
        r"(?:from|with|at) (?:the )?(?:target|answer|goal|end|result)\b",
        r"from the (?:target|answer|goal|end) (?:back|down)", r"the last step\b",
        r"(?:start|starting|begin|beginning) (?:from|at) %s(?!,| and|\d)" % _N],
    "subgoal_set": [  # a goal set explicitly: always a subgoal
        r"(?:subgoal|subgoals|sub-goal|sub-goals|intermediate (?:goal|target|step|value|result|number|total)|"
        r"stepping stone|milestone)\b[^.!?\n\d]{0,40}?%s" % _N,
        r"(?:aim|aiming|shoot|shooting|go|going|head|heading|work|working) (?:for|toward|towards) "
        r"(?:a |an |the number )?%s" % _N,
        r"(?:first,?|plan:|plan is to|goal is to|let me first|let's first|i'll first|we'll first)\s+(?:to\s+)?"
        r"(?:get|make|reach|form|produce|build|create|obtain|hit)\s+(?:to\s+)?(?:a |an |the number |a total of )?%s" % _N,
        r"if (?:i|we) (?:can |could )?(?:first )?(?:get|make|reach|have|form|obtain|produce|build) (?:a |an )?%s" % _N,
        r"(?:get|make|reach|build|form|produce) (?:a |an )?%s (?:first|out of)\b" % _N],
    "subgoal_need": [  # a number named as needed: a subgoal unless a backward step names it
        r"(?:need|needs|needed|want|wants|require|requires|must|have to|has to|should|try to|trying to|let me|"
        r"let's|i'll|we'll|i will|we will)\s+(?:to\s+)?(?:get|make|reach|form|produce|build|create|obtain|hit|"
        r"have|find|come up with|end up with|arrive at)\s+(?:to\s+)?(?:a |an |the number |a total of |exactly )?%s" % _N,
        r"(?:need|needs|needed|want|wants|wanted)\s+(?:a |an |the |another )?%s" % _N,
        r"(?:get|make|reach|build|form|produce) (?:a |an )?%s (?:from|using|with)\b" % _N,
        r"(?:rest|remaining|other|others)\b(?: \w+)?(?: numbers?| ones?)?\s+(?:must |should |need to |needs to |"
        r"have to |has to |to |would |can |could |will )?(?:make|give|equal|produce|be|add up to|come to|sum to|"
        r"reach|form)\s+(?:a |an )?%s" % _N],
}


_NUM_CUES = {
    "compare": re.compile(r"\d\d* (?:too many|too few|short|over|under|more than|less than|above|below|off|away from)\b"),
    "subgoal_set": re.compile(r"(\d+)(?<!\d\d{6}),? (?:is |as |would be |becomes )?(?:an? |the |my |our )?"
                              r"(?:good |useful |first |natural )?(?:sub-?goal|intermediate (?:goal|target))"),
}


def _leads(alt):
    """Lookup keys of an alternative: the first three letters of each word it can start
    with, or its symbols. >>> sorted(_leads("(?:that|this) works"))
    ['tha', 'thi']"""
    if alt.startswith("["):
        return set(alt[1:alt.index("]")])
    if alt.startswith("(?:"):
        words = alt[3:alt.index(")")].split("|")
    else:
        words = [alt]
    keys = set()
    for w in words:
        m = re.match(r"[a-z']+|≠|!=", w)
        if m is None:
            raise ValueError(f"cue {alt!r} must start with a literal word")
        keys.add(m.group()[:3])
    return keys


def _compile_cues(cues):
    """{lead key: [(kind, anchored pattern)]} for `_scan`."""
    table = {}
    for kind, alts in cues.items():
        by_key = {}
        for alt in alts:
            for key in _leads(alt):
                by_key.setdefault(key, []).append(alt)
        for key, group in by_key.items():
            table.setdefault(key, []).append((kind, re.compile("|".join(f"(?:{a})" for a in group))))
    return table


def _trie_regex(keys):
    """One pattern that finds, at word starts only, any of the lead keys: a three-letter key
    starts a longer word, a shorter one is a whole word. Written as a trie whose top-level
    branches each open with a literal character, which lets re skip to those characters
    (the word-start test comes right after the first one).

    >>> _trie_regex(["no", "not", "wai"]).findall("no note, await wait")
    ['no', 'not', 'wai']
    """
    trie = {}
    for k in keys:
        node = trie
        for ch in k:
            node = node.setdefault(ch, {})
        node[""] = len(k) >= 3

    def emit(node):
        alts = [re.escape(ch) + emit(sub) for ch, sub in sorted(node.items()) if ch]
        if "" in node:
            alts.append("" if node[""] else "(?![a-z'])")
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
    return re.compile("|".join(re.escape(ch) + r"(?<![a-z'].)" + emit(sub) for ch, sub in sorted(trie.items())))


_CUE_TABLE = _compile_cues(_CUES)
_LEAD_RX = _trie_regex(_CUE_TABLE)
_VERB_LEADS = _trie_regex(["add", "sum", "sub", "tak", "too", "rem", "mul", "pro", "div", "dif", "plu"])


def _scan(text):
    """{kind: [match]} of the cue phrases: at each word start whose first letters begin some
    phrase (`_LEAD_RX`), only those phrases are tried."""
    hits = {kind: [] for kind in _CUES}
    table = _CUE_TABLE
    for m in _LEAD_RX.finditer(text):
        start = m.start()
        for kind, rx in table[m.group()]:
            hit = rx.match(text, start)
            if hit:
                hits[kind].append(hit)
    for kind, rx in _NUM_CUES.items():
        hits[kind] += rx.finditer(text)
        hits[kind].sort(key=lambda h: h.start())
    return hits


def _first_group(m):
    return next((g for g in m.groups() if g is not None), None)


def _wordnum(w):
    """'forty-two' -> 42. >>> _wordnum('forty-two')
    42"""
    head, _, tail = w.partition("-")
    return _WORDNUM[head] + (_WORDNUM[tail] if tail else 0)


def _word_arith(m):
    g = m.groups()
    if g[0] is not None:
        rhs = g[2] if g[2].isdigit() else str(_wordnum(g[2]))
        return f"{_wordnum(g[0])} {g[1]} {rhs}"
    return f"{g[3]} {g[4]} {_wordnum(g[5])}"


def normalize(response, edits=None):
    """Lower-cased thinking text with arithmetic in symbols; the final <answer> is dropped.
    edits: a list that receives, per rewrite that changed the text, its edits
    [(start, end, new length)] in the text before it (see `_to_original`).

    >>> normalize("Multiply 3 by 9, which is 27, then add 15 to get 42.<answer>3*9+15</answer>")
    '3 * 9 = 27, then @ + 15 = 42. '
    >>> normalize("Fourteen times three is 42")
    '14 * 3 = 42'
    """
    text = response.lower()
    if edits is not None and len(text) != len(response):   # "İ" lower-cases to two characters
        edits.append(_lower_edits(response, text))
    if any(w in text for w in ("plus", "minus", "times", "multiplied", "divided")):
        text = _sub_tracked(_WORD_ARITH, _word_arith, text, edits)
    has = text.__contains__
    for guard, pat, rep in _REWRITES:
        if any(map(has, guard)):
            if guard is _OPS_GUARD:
                text = _sub_at(text, _VERB_LEADS, pat, rep, edits)
            else:
                text = pat.sub(rep, text) if edits is None else _sub_tracked(pat, rep, text, edits)
    return text


def _sub_at(text, leads, pat, rep, edits=None):
    """pat.sub(rep, text) with pat tried only where `leads` matches: much faster for a
    pattern that is a long alternation of words (re would try it at every character)."""
    out, last, layer = [], 0, []
    for m in leads.finditer(text):
        if m.start() < last:
            continue
        hit = pat.match(text, m.start())
        if hit:
            r = rep(hit)
            out += [text[last:hit.start()], r]
            _edit(layer, text, hit.start(), hit.end(), r)
            last = hit.end()
    if edits is not None and layer:
        edits.append(layer)
    return "".join(out) + text[last:] if out else text


# ---- offsets: spans found in the normalized text, mapped back to the response as written
def _edit(layer, text, start, end, new):
    """Record that text[start:end] becomes `new`, trimmed to the characters that change
    (a common head and tail stay where they are: "9, which is " -> "9 = " moves only
    ", which is" -> " =")."""
    old = text[start:end]
    if old == new:
        return
    a, n = 0, min(len(old), len(new))
    while a < n and old[a] == new[a]:
        a += 1
    c = 0
    while c < n - a and old[-1 - c] == new[-1 - c]:
        c += 1
    layer.append((start + a, end - c, len(new) - a - c))


def _sub_tracked(pat, rep, text, edits):
    """pat.sub(rep, text), recording its edits in `edits` (a list) if given."""
    if edits is None:
        return pat.sub(rep, text)
    out, last, layer = [], 0, []
    for m in pat.finditer(text):
        r = rep(m) if callable(rep) else m.expand(rep)
        out += [text[last:m.start()], r]
        _edit(layer, text, m.start(), m.end(), r)
        last = m.end()
    if layer:
        edits.append(layer)
    return "".join(out) + text[last:] if out else text


def _lower_edits(response, lowered):
    """Edits of str.lower() for the characters whose lower case is not one character."""
    layer = [(i, i + 1, len(ch.lower())) for i, ch in enumerate(response) if len(ch.lower()) != 1]
    if len(response) + sum(n - 1 for _, _, n in layer) != len(lowered):  # never seen: one edit then
        layer = [(0, len(response), len(lowered))]
    return layer


def _to_original(edits, pos, end=False):
    """A position in the normalized text -> the position in the response it came from. A
    start inside rewritten text maps to the start of what it replaced, an end (exclusive) to
    its end, so a span over rewritten text covers the words it was written as.

    >>> e = []; t = normalize("Multiply 3 by 9, which is 27.", e); t
    '3 * 9 = 27.'
    >>> _to_original(e, t.index("="), False), _to_original(e, len("3 * 9 = 27"), True)
    (15, 28)
    """
    for layer in reversed(edits):
        shift = 0                       # new position - old position, before the edit
        for start, stop, n in layer:
            new = start + shift
            if (pos <= new) if end else (pos < new):
                break
            if (pos <= new + n) if end else (pos < new + n):
                pos = stop if end else start
                shift = None
                break
            shift += n - (stop - start)
        if shift is not None:
            pos -= shift
    return pos


def _number(s):
    """Exact value of a numeric literal: an int, or a Fraction for '3.5' or '65/9'; None for
    a zero denominator (models do write '23/0').
    >>> _number("65/9"), _number("12"), _number("23/0")
    (Fraction(65, 9), 12, None)"""
    try:
        return int(s)
    except ValueError:
        try:
            return Fraction(s)
        except ZeroDivisionError:
            return None


def _written_in(value, expr):
    """True if a fractional value appears written as p/q in expr (then it is one operand).
    >>> _written_in(Fraction(51, 14), "51/14 + 3")
    True"""
    return isinstance(value, Fraction) and value.denominator != 1 and f"{value.numerator}/{value.denominator}" in expr


def _operands(expr):
    """Number literals of an expression, unary minus included; '@' is the last result.
    >>> _operands("20 - -18 * (@ + 2)")
    ['20', '-18', '@', '2']"""
    out, prev = [], None
    for t in _NUMTOK.findall(expr):
        if t[0].isdigit() or t == "@":
            out.append("-" + t if prev == "unary" else t)
            prev = "num"
        else:
            prev = "unary" if t == "-" and prev in (None, "op") else "op"
    return out


def _part(p):
    """What one side of an "=" is: "num", "frac" (p/q, a value on a right-hand side), "expr" or None."""
    if p.isdigit():
        return "num"
    p = _balanced(p).strip()
    if _IS_NUM.fullmatch(p.strip("()")):
        return "num"
    if _IS_FRAC.fullmatch(p):
        return "frac"
    return "expr" if _IS_EXPR.search(p) else None


def _balanced(expr):
    """Strip unmatched outer parentheses. >>> _balanced('(44 - 19')
    '44 - 19'"""
    if "(" not in expr and ")" not in expr:
        return expr
    while expr.count("(") > expr.count(")") and expr.startswith("("):
        expr = expr[1:].lstrip()
    while expr.count(")") > expr.count("(") and expr.endswith(")"):
        expr = expr[:-1].rstrip()
    return expr


def find_equations(text):
    """Equations in normalized text: dicts with pos (where its run of "="s starts), kind
    ("fwd": expr = value, "dec": value = expr), ops (operand literals; '@' is the previous
    result), value, expr, and start, end (its own two sides in the text).

    >>> [(e["kind"], e["ops"], e["value"]) for e in find_equations("58 = 56 + 2, and 12 - 4 = 8")]
    [('dec', ['56', '2'], 58), ('fwd', ['12', '4'], 8)]
    """
    out = []
    if "=" not in text:
        return out
    for span in _SPAN.finditer(text):
        if "=" not in span.group():
            continue
        for m in _RUN.finditer(text, span.start(), span.end()):
            raw = m.group().split("=")
            parts = [p.strip() for p in raw]
            kinds = [_part(p) for p in parts]
            ends, o = [], m.start()            # (start, end) of each stripped side
            for p in raw:
                ends.append((o + len(p) - len(p.lstrip()), o + len(p.rstrip())))
                o += len(p) + 1
            for i in range(len(parts) - 1):
                (lhs, a), (rhs, b) = (parts[i], kinds[i]), (parts[i + 1], kinds[i + 1])
                if a in ("expr", "frac") and b in ("num", "frac") and not (a == "frac" and b == "frac"):
                    kind, expr, val = ("fwd", lhs, rhs)
                elif a == "num" and b in ("expr", "frac"):
                    kind, expr, val = ("dec", rhs, lhs)
                else:
                    continue
                value = _number(_balanced(val).strip("() "))
                if value is not None:
                    out.append(dict(pos=m.start(), kind=kind, expr=expr, value=value, ops=_operands(expr),
                                    start=ends[i][0], end=ends[i + 1][1]))
    return out


def _node_values(expr):
    """Values of the operation nodes of a plain expression (leaves left out), or None.
    The rules recompute whole expressions this way to recognise a restatement of values
    already derived. >>> sorted(_node_values("(12 - 4) * 7 + 2"))
    [8, 56, 58]
    """
    toks = re.findall(r"\d+|[-+*/()]", expr)
    pos, nodes = [0], []

    def atom():
        t = toks[pos[0]] if pos[0] < len(toks) else None
        pos[0] += 1
        if t == "(":
            v = chain(("+", "-"))
            pos[0] += 1  # ")"
            return v
        return Fraction(int(t))

    def chain(ops):
        sub = (lambda: chain(("*", "/"))) if ops == ("+", "-") else atom
        v = sub()
        while pos[0] < len(toks) and toks[pos[0]] in ops:
            op = toks[pos[0]]
            pos[0] += 1
            w = sub()
            v = v + w if op == "+" else v - w if op == "-" else v * w if op == "*" else v / w
            nodes.append(v)
        return v

    try:
        chain(("+", "-"))
    except (ValueError, TypeError, ZeroDivisionError, IndexError, RecursionError):
        return None
    return {int(v) if v.denominator == 1 else v for v in nodes}


def follow_chain(eqs, nums, target, gone_back=()):
    """Mark each equation in place and return eqs. Flags:
    "chain"    a computed step of an attempt (the others are plans and backward steps);
    "restart"  a chain step that starts a new attempt: it goes back to numbers already used
               instead of building on the last result (not flagged once the target has been
               reached: re-derivations then are checks);
    "backward" it starts from the target ("58 = 56 + 2", "74 - 50 = 24") or splits a number
               a backward step asked for;
    "plan"     a relation with an operand not yet made ("since 6 * 4 = 24" before any 6 exists).
    gone_back: positions of phrases that leave a path ("start over"); the next step starts a
    new attempt whatever numbers it uses.

    >>> eqs = find_equations(normalize("44 + 19 = 63, 63 + 3 = 66. 44 - 19 = 25, 25 * 3 = 75"))
    >>> [e["restart"] for e in follow_chain(eqs, [44, 19, 3, 1], 76)]
    [False, False, True, False]
    """
    inputs = Counter(_number(str(n)) for n in nums)
    whole_set, goal = sorted(inputs.elements()), _number(str(target))
    produced, used = {}, {}            # value -> times made / times used in this attempt
    latest, reached, last_pos = None, False, -1
    needed, attempt = set(), set()     # numbers backward steps or plans asked for; this attempt's values
    gone_back = sorted(gone_back)
    for e in eqs:
        ops = [latest if o == "@" else _number(o) for o in e["ops"]]
        ops = [o for o in ops if o is not None]
        e.update(chain=False, restart=False, backward=False, plan=False)
        value, implicit = e["value"], "@" in e["ops"]
        unknown = [o for o in ops if o not in inputs and o not in produced]
        if e["kind"] == "dec" or (unknown and not implicit and (value == goal or value in needed)):
            e["backward"] = e["kind"] == "dec" and (value == goal or value in needed)
            e["plan"] = not e["backward"]
            needed.update(unknown)
            attempt.add(value)
            continue
        if goal in ops and goal not in inputs and goal not in produced:
            e["backward"] = True
            needed.add(value)
            attempt.add(value)
            continue
        e["chain"], whole = True, sorted(ops) == whole_set
        nodes = (_node_values(e["expr"]) or set()) if whole else set()
        restart = False
        k = bisect_right(gone_back, e["pos"]) - 1
        if k >= 0 and gone_back[k] > last_pos:       # told: this step starts afresh
            used, attempt = {}, set()
        elif latest is not None and not implicit and latest not in ops and not _written_in(latest, e["expr"]):
            if whole:   # a whole candidate: new unless it restates values already computed
                restart = not (nodes | {value}) & (produced.keys() | attempt | needed)
            else:       # it reuses a number this attempt has already used up
                restart = any(ops.count(v) > inputs.get(v, 0) + produced.get(v, 0) - used.get(v, 0)
                              for v in ops if v in inputs or v in produced)
        if restart:
            used, attempt = {}, set()
            e["restart"] = not reached
        for v in ops:
            used[v] = used.get(v, 0) + 1
        produced[value] = produced.get(value, 0) + 1
        attempt |= nodes
        attempt.add(value)
        latest, reached, last_pos = value, reached or value == goal, e["pos"]
    return eqs


class _Doc:
    """A normalized text with its sentence starts, equations and cue matches."""

    def __init__(self, text, nums, target):
        self.text = text
        self.sent = [0] + [m.end() for m in _SENT.finditer(text)]
        self.cues = _scan(text)
        eqs = find_equations(text)
        first = eqs[0]["pos"] if eqs else len(text)
        self.eqs = follow_chain(eqs, nums, target, [m.start() for m in self.cues["backtrack"] if m.start() > first])

    def sentence(self, pos):
        return bisect_right(self.sent, pos) - 1


def _verification(doc, target):
    """Spans (start, end) of distinct verifications, each the phrase that judges. Verdicts on
    the same result count once: each is keyed by the equation it judges (the last one before
    it; for a "check:" announcement, the last one of its own sentence)."""
    eqs, cues = doc.eqs, doc.cues
    eq_pos = [e["pos"] for e in eqs]
    eq_sent = [doc.sentence(p) for p in eq_pos]
    found = [(m.start(), kind, m.end()) for kind in ("judge", "announce", "compare") for m in cues[kind]]
    found += [(m.start(), "target", m.end()) for m in cues["target"] if _number(_first_group(m)) == target]
    out, seen = [], set()
    for pos, kind, end in sorted(found):
        s = doc.sentence(pos)
        k = bisect_right(eq_pos, pos) - 1             # the result on the table: the last one so far,
        if (k < 0 or eq_sent[k] != s) and k + 1 < len(eqs) and eq_sent[k + 1] == s:
            k += 1                                    # or the first one later in the same sentence
        if kind == "announce":                        # "check:" covers its sentence's equations
            while k + 1 < len(eqs) and eq_sent[k + 1] == s:
                k += 1
        if kind in ("announce", "compare"):
            ok = k >= 0 and eq_sent[k] >= s - 1
        else:
            ok = k >= 0 or kind == "target"
        key = k if k >= 0 else ("sentence", s)
        if ok and key not in seen:
            seen.add(key)
            out.append((pos, end))
    return out


def _backtracking(doc):
    """Spans of distinct backtracks (the phrase, or the equation that restarts): cue phrases
    and restarts between two chain steps count once together; nothing before the first
    equation can be abandoned."""
    eqs = doc.eqs
    first_eq = eqs[0]["pos"] if eqs else len(doc.text)
    items = [(m.start(), None, (m.start(), m.end())) for m in doc.cues["backtrack"] if m.start() > first_eq]
    items += [(e["pos"], e["restart"], (e["start"], e["end"])) for e in eqs if e["chain"]]
    out, open_ = [], False
    for pos, restart, span in sorted(items, key=lambda t: t[0]):
        if restart is None:          # a cue phrase
            if not open_:
                out.append(span)
                open_ = True
        else:                        # a chain step closes the gap
            if restart and not open_:
                out.append(span)
            open_ = False
    return out


def _backward_phrases(doc, target):
    return [m for m in doc.cues["backward"]
            if _first_group(m) is None or _number(_first_group(m)) == target]


def _subgoal(doc, target):
    """Spans of subgoals (the phrase), one per sentence: a number other than the target set as a goal
    ("aim for 90", "subgoal: 6", "if I can get 40"), or named as needed ("the rest must make
    11", "I need an 8") outside a backward step (there the need is part of the backward chain)."""
    backward = {doc.sentence(e["pos"]) for e in doc.eqs if e["backward"]}
    backward |= {doc.sentence(m.start()) for m in _backward_phrases(doc, target)}
    cands = [(m, False) for m in doc.cues["subgoal_set"]] + [(m, True) for m in doc.cues["subgoal_need"]]
    out, seen = [], set()
    for m, implied in sorted(cands, key=lambda c: c[0].start()):
        n, s = _first_group(m), doc.sentence(m.start())
        named = not implied and ("goal" in m.group() or "intermediate" in m.group())
        if s in seen or (_number(n) == target and not named) or (implied and s in backward):
            continue
        if re.match(r"\s*(?:numbers?|more numbers|of them|times)\b", doc.text[m.end():]):
            continue
        seen.add(s)
        out.append((m.start(), m.end()))
    return out


def _backward(doc, target):
    """Spans of backward steps: each equation that starts from the target (or splits a
    number a backward step asked for), and each sentence with a "working backwards" phrase
    and no such equation (a bare "Let me work backwards." joins the step that follows it)."""
    steps = [e for e in doc.eqs if e["backward"]]
    out = [(e["start"], e["end"], e["pos"]) for e in steps]
    eq_sent = {doc.sentence(e["pos"]) for e in steps}
    phrases = _backward_phrases(doc, target)
    phrase_sent = {doc.sentence(m.start()) for m in phrases}
    starts, last = doc.sent + [len(doc.text)], None
    for m in phrases:
        s = doc.sentence(m.start())
        if s == last or s in eq_sent:
            continue
        last = s
        bare = not set(re.findall(r"\d+", doc.text[starts[s]:starts[s + 1]])) - {str(target)}
        if bare and (s + 1 in eq_sent or s + 1 in phrase_sent):
            continue
        out.append((m.start(), m.end(), m.start()))
    return [(a, b) for a, b, _ in sorted(out, key=lambda t: (t[2], t[0]))]


def analyze(response, nums, target, edits=None):
    """{behavior: [positions in the normalized text]} of each counted occurrence, "spans":
    {behavior: [(start, end)]} in the normalized text (the phrase or equation counted), the
    normalized "text" and the "equations" (for debugging a count). edits: see normalize."""
    text = normalize(response if isinstance(response, str) else "", edits)
    target = _number(str(target))
    doc = _Doc(text, nums, target)
    spans = {"verification": _verification(doc, target), "backtracking": _backtracking(doc),
             "subgoal": _subgoal(doc, target), "backward": _backward(doc, target)}
    return {**{b: [a for a, _ in spans[b]] for b in BEHAVIORS}, "spans": spans,
            "text": text, "equations": doc.eqs}


def behavior_spans(response, nums, target):
    """[(start, end, behavior)] of every occurrence count_behaviors counts, as character
    offsets into `response` as written (not the normalized text), sorted by start. Per
    behavior there are exactly count_behaviors(...)[behavior] spans; spans of different
    behaviors may overlap.

    >>> text = "44 + 19 = 63. That's not 76. Let me try another way."
    >>> [(text[a:b], k) for a, b, k in behavior_spans(text, [44, 19, 3, 1], 76)]
    [('not 76', 'verification'), ('try another', 'backtracking')]
    """
    if not isinstance(response, str):
        return []
    edits = []
    found = analyze(response, nums, target, edits)
    out = []
    for b in BEHAVIORS:
        for a, z in found["spans"][b]:
            start, end = _to_original(edits, a), _to_original(edits, z, end=True)
            end = max(end, min(start + 1, len(response)))
            out.append((start, end, b))
    return sorted(out, key=lambda t: (t[0], t[1], BEHAVIORS.index(t[2])))


def count_behaviors(response, nums, target):
    """Counts of the four behaviors in one response (the offline rules backend).

    >>> count_behaviors("44 + 19 = 63, 63 + 3 = 66, 66 + 1 = 67. That's not 76. Let me try "
    ...     "another way. 44 - 19 = 25, 25 * 3 = 75, 75 + 1 = 76. That works!", [44, 19, 3, 1], 76)
    {'verification': 2, 'backtracking': 1, 'subgoal': 0, 'backward': 0}
    >>> count_behaviors("Working backwards: 76 = 75 + 1, so I need 75 from 44, 19 and 3. "
    ...     "75 = 25 * 3 and 44 - 19 = 25.", [44, 19, 3, 1], 76)   # the need is part of the chain
    {'verification': 0, 'backtracking': 0, 'subgoal': 0, 'backward': 2}
    >>> count_behaviors("Let me aim for 75 first: 44 - 19 = 25, 25 * 3 = 75, 75 + 1 = 76.",
    ...     [44, 19, 3, 1], 76)
    {'verification': 0, 'backtracking': 0, 'subgoal': 1, 'backward': 0}
    """
    found = analyze(response, nums, target)
    return {b: len(found[b]) for b in BEHAVIORS}


# =================================================================================
# LLM judges: one request per behavior, "<count>N</count>" in the answer
# =================================================================================

DEFINITIONS = {  # behavior -> (what to count, a Countdown example, what not to count)
    "verification": (
        "verification: the reasoning checks a result it has computed against the target (or "
        "against an intermediate number it is aiming for), saying whether the value equals, "
        "misses, overshoots or falls short of it; announcing a check of a finished equation counts too",
        "numbers [75, 6, 3, 2], target 29: '75 + 6 = 81, way above 29' is one verification and "
        "'31 - 2 = 29, which is the target' is another",
        "arithmetic steps that are not compared with anything"),
    "backtracking": (
        "backtracking: the reasoning gives up on a line of attack and goes back to try a different "
        "one, either saying so ('that fails, let me try something else', 'back to 25') or by "
        "starting again from numbers it had already used after an attempt did not work",
        "numbers [75, 6, 3, 2], target 29: '75 + 6 = 81. 75 - 6 = 69.' starts over once; a later "
        "'That is no good, go back to 25' is a second instance",
        "the first attempt, or re-deriving a finished solution to check it"),
    "subgoal": (
        "subgoal setting: the reasoning names an intermediate number to reach on the way to the "
        "target and then works toward it, e.g. 'first make 100, then subtract 3' or 'if I can get "
        "40, adding 6 finishes it'",
        "numbers [25, 4, 7, 10], target 97: 'a good intermediate goal is 100' is one subgoal",
        "restating the target itself"),
    "backward": (
        "backward chaining: the reasoning starts from the target and works back toward the given "
        "numbers, splitting the target (or a number a previous backward step needs) into pieces or "
        "undoing an operation on it",
        "numbers [7, 12, 4, 2], target 58: '58 = 56 + 2' is one backward step and '56 = 7 * 8, so "
        "I need 8 from 12 and 4' is another",
        "forward calculations that merely end at the target"),
}
# One question per behavior, in the order of the study's (behavioral_evals/gpt_api_eval.py,
# CountdownAnalyzer.create_analysis_prompts): the puzzle, the reasoning, what to count with an
# example, then the count between <count> tags (0 if none). The wording is ours.
SYSTEM = "You read the reasoning of language models on arithmetic puzzles and count behaviors in it."
PROMPT = """A language model wrote the reasoning below for a Countdown puzzle: combine the numbers {nums} with +, -, * and / (each number used exactly once) to reach {target}.

<reasoning>
{response}
</reasoning>

Does the reasoning contain {definition}? Example: {example}. Do not count {exclusion}.

Count the distinct instances and give the count between count tags, as in <count>2</count>; if there are none, give <count>0</count>."""
_COUNT = re.compile(r"<count>\s*(\d+)\s*</count>")


def judge_prompt(behavior, response, nums, target, max_chars=16000, study=None):
    """The request text for one behavior: ours, or the study's (study: study_judge()'s
    questions). Over-long responses keep their head and tail.

    >>> "backward chaining" in judge_prompt("backward", "58 = 56 + 2", [7, 12, 4, 2], 58)
    True
    """
    if len(response) > max_chars:
        half = max_chars // 2
        response = response[:half] + "\n[... middle omitted ...]\n" + response[-half:]
    if study:
        code, names = study[behavior]
        return eval(code, {"__builtins__": {}}, dict(zip(names, (list(nums), target, response))))
    definition, example, exclusion = DEFINITIONS[behavior]
    return PROMPT.format(nums=list(nums), target=target, definition=definition, example=example,
                         exclusion=exclusion, response=response)


STUDY_JUDGE = os.path.join("behavioral_evals", "gpt_api_eval.py")  # in a checkout of the study's repository
# what a field of the study's f-strings may hold: its parameters, constants, arithmetic ({target//2})
_SAFE = (ast.JoinedStr, ast.FormattedValue, ast.Constant, ast.Name, ast.Load, ast.BinOp,
         ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod)


def _template(node, names, path):
    """Code that computes a string or f-string node from `names`; other fields are refused."""
    bad = next((n for n in ast.walk(node) if not isinstance(n, _SAFE) or isinstance(n, ast.Name) and n.id not in names), None)
    if bad is not None:
        raise DataError(f"{path}: unsupported field {{{ast.unparse(bad)}}} in the study's prompt")
    return compile(ast.Expression(node), path, "eval")


def study_judge(root):
    """(system message or None, {behavior: (compiled f-string, its parameter names)}) of the study's judge,
    read with ast, never run: the four (f-)strings CountdownAnalyzer.create_analysis_prompts returns, in its
    order (verification, backtracking, subgoal, backward), its parameters (numbers, target, completion)
    standing for ours; and the content of a {"role": "system", "content": ...} message in the file."""
    path = os.path.join(root, STUDY_JUDGE)
    if not os.path.isfile(path):
        raise DataError(f"--prompts study:{root}: no {STUDY_JUDGE} there (give the root of a checkout of the study's repository)")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    fn = next((f for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and c.name == "CountdownAnalyzer"
               for f in c.body if isinstance(f, ast.FunctionDef) and f.name == "create_analysis_prompts"), None)
    lists = [n.elts for n in ast.walk(fn) if isinstance(n, ast.List)] if fn else []
    texts = next((e for e in lists if len(e) == 4 and all(isinstance(x, (ast.JoinedStr, ast.Constant)) for x in e)), None)
    names = [a.arg for a in fn.args.args[1:]] if fn else []
    if texts is None or len(names) != 3:
        raise DataError(f"{path}: no CountdownAnalyzer.create_analysis_prompts(self, numbers, target, completion) "
                        "returning a list of four prompts")
    dicts = ({k.value: v.value for k, v in zip(d.keys, d.values) if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)}
             for d in ast.walk(tree) if isinstance(d, ast.Dict))
    system = next((d["content"] for d in dicts if d.get("role") == "system" and isinstance(d.get("content"), str)), None)
    return system, {b: (_template(t, names, path), names) for b, t in zip(BEHAVIORS, texts)}


def parse_count(text):
    """The number in the last <count>N</count>, or None (then the request is asked again).

    >>> parse_count("two checks: <count> 2 </count>"), parse_count("I found 3.")
    (2, None)
    """
    found = _COUNT.findall(text or "")
    return int(found[-1]) if found else None


class JudgeError(RuntimeError):
    """A judge that cannot run (no key, --batch with anthropic)."""


class Usage:
    """Thread-safe tally of requests, tokens and outcomes; `report` prints the cost."""

    def __init__(self, model, batch=False):
        self.model, self.batch, self.lock, self.n = model, batch, threading.Lock(), Counter()

    def add(self, **kw):
        with self.lock:
            self.n.update(kw)

    def report(self):
        """The tally, with the cost estimated from list prices (Batch API: half)."""
        p, n = PRICES.get(self.model), self.n
        money = (f"${(n['input_tokens'] * p[0] + n['output_tokens'] * p[1]) / 1e6 * (0.5 if self.batch else 1):.4f}"
                 if p else f"unknown (no price for {self.model})")
        return (f"{self.n['requests']} requests ({self.n['retries']} retries, {self.n['no_tag']} answers "
                f"without <count>, {self.n['missing']} counts missing, {self.n['failed']} of them after failed "
                f"requests), {self.n['input_tokens']} input + "
                f"{self.n['output_tokens']} output tokens, estimated cost {money}"
                f"{' (Batch API, half price)' if self.batch else ''}")


def redact(text, secrets=()):
    """Remove API keys (given ones, any 6 characters of them in a row, anything shaped like one).
    >>> redact("bad key sk-abc123XYZ for sk-abc123", ["sk-abc123XYZ"])
    'bad key [key] for [key]'"""
    text = common.redact_keys(text, secrets, "[key]")
    return re.sub(r"\b(?:sk|sk-ant|sk-proj)-[A-Za-z0-9_\-*]{6,}", "[key]", text)


class Judge:
    """An LLM judge over plain HTTP: OpenAI-compatible chat completions (and the Batch API)
    or Anthropic's Messages API. The key comes from the environment and goes only into
    request headers."""

    def __init__(self, backend, model, base_url, api_key, cfg, usage=None, batch=False, study=None):
        self.backend, self.model, self.key, self.cfg = backend, model, api_key, cfg
        self.system, self.study = study or (SYSTEM, None)  # study: study_judge()
        self.name = f"{backend}:{model}" + ("+study-prompts" if self.study else "")
        self.base, self.usage = base_url.rstrip("/"), usage or Usage(model, batch)
        self.rng = random.Random()   # backoff jitter only

    @classmethod
    def from_args(cls, args):
        """Model, URL and key per backend; a missing key is an error where one is needed."""
        if args.backend == "openai":
            base = args.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
            key = os.environ.get("OPENAI_API_KEY")
            if not key and "api.openai.com" in base:
                raise JudgeError("set OPENAI_API_KEY in the environment (or --base-url for a local server)")
        else:
            base = args.base_url or os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"
            key = os.environ.get("ANTHROPIC_API_KEY")
            if not key:
                raise JudgeError("set ANTHROPIC_API_KEY in the environment")
        model = args.judge_model or DEFAULT_JUDGE[args.backend]
        study = study_judge(args.prompts[len("study:"):]) if args.prompts != "ours" else None
        return cls(args.backend, model, base, key, args, batch=args.batch, study=study)

    def headers(self, content_type="application/json"):
        h = {"Content-Type": content_type} if content_type else {}
        if self.backend == "anthropic":
            h.update({"x-api-key": self.key or "", "anthropic-version": ANTHROPIC_VERSION})
        elif self.key:
            h["Authorization"] = f"Bearer {self.key}"
        return h

    def body(self, prompt):
        """The JSON body of one request (also a Batch API line's body)."""
        body = {"model": self.model, "max_tokens": self.cfg.max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": prompt}]}
        if self.system and self.backend == "anthropic":
            body["system"] = self.system
        elif self.system:
            body["messages"].insert(0, {"role": "system", "content": self.system})
        return body

    def read(self, data):
        """(text, input tokens, output tokens) of a response body; raises on a malformed one."""
        u = data.get("usage") or {}
        if self.backend == "anthropic":
            text = "".join(b["text"] for b in data["content"] if b.get("type") == "text")
        else:
            text = data["choices"][0]["message"]["content"]
        if not isinstance(text, str):
            raise TypeError("no text in the reply")
        return text, u.get("input_tokens", u.get("prompt_tokens", 0)), u.get("output_tokens", u.get("completion_tokens", 0))

    def send(self, url, body=None, parse=json.loads, content_type="application/json"):
        """parse(reply text) of one API call (GET without a body, else POST of JSON or bytes) by
        common.http_call, retried by common.with_retries on 429 / 5xx / network errors and on
        replies parse() cannot read (backoff with jitter; Retry-After wins). Retries spent:
        common.Retryable; a refusal (bad key, bad request): common.ApiError."""
        red = lambda text: redact(text, [self.key])
        headers = self.headers(content_type if body is not None else None)

        def once():
            self.usage.add(requests=1)
            return common.http_call(url, body, headers, self.cfg.timeout, parse, redact=red)
        return common.with_retries(once, f"{'GET' if body is None else 'POST'} {url}", self.cfg.max_retries,
                                   self.cfg.backoff, self.rng, log=lambda m: print(f"[classify] {m}", file=sys.stderr),
                                   on_retry=lambda: self.usage.add(retries=1), redact=red)

    def ask(self, prompt):
        """The judge's answer text to one prompt."""
        url = self.base + ("/v1/messages" if self.backend == "anthropic" else "/chat/completions")
        text, n_in, n_out = self.send(url, self.body(prompt), lambda t: self.read(json.loads(t)))
        self.usage.add(input_tokens=n_in, output_tokens=n_out)
        return text


def judge_counts(judge, rec, first_answers=None):
    """(counts, missing, failed) for one record: one prompt per behavior; an answer without a
    count tag is asked again up to --tag-retries times, then the count is None and named in
    missing; so is one whose request failed after its retries (also named in failed: a rerun
    asks it again). first_answers: {behavior: answer text} already in hand (Batch API)."""
    response, counts, missing, failed = response_of(rec), {}, [], []
    for b in BEHAVIORS:
        prompt = judge_prompt(b, response, rec["nums"], rec["target"], judge.cfg.max_chars, judge.study)
        given = [first_answers[b]] if first_answers and first_answers.get(b) is not None else []
        n, answers = None, 0
        while given or answers < 1 + judge.cfg.tag_retries:
            try:
                text = given.pop() if given else judge.ask(prompt)
            except common.Retryable as e:
                print(f"[classify] {e}: {b} of record {rec.get('id', record_key(rec))} recorded as missing", file=sys.stderr)
                judge.usage.add(failed=1)
                failed.append(b)
                break
            answers += 1
            n = parse_count(text)
            if n is not None:
                break
            judge.usage.add(no_tag=1)
        if n is None:
            judge.usage.add(missing=1)
            missing.append(b)
        counts[b] = n
    return counts, missing, failed


def _multipart(fields, name, filename, data):
    """(body, content type) of a multipart/form-data upload with one file."""
    boundary = "----classify" + uuid.uuid4().hex
    out = io.BytesIO()
    for k, v in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
              f"Content-Type: application/jsonl\r\n\r\n".encode())
    out.write(data + f"\r\n--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def batch_submit(judge, records):
    """Upload one request per (record, behavior) and create a batch; returns its id."""
    lines = []
    for rec in records:
        for b in BEHAVIORS:
            prompt = judge_prompt(b, response_of(rec), rec["nums"], rec["target"], judge.cfg.max_chars, judge.study)
            lines.append(json.dumps({"custom_id": f"{record_key(rec)}:{b}", "method": "POST",
                                     "url": "/v1/chat/completions", "body": judge.body(prompt)}))
    body, ctype = _multipart({"purpose": "batch"}, "file", "classify_batch.jsonl", "\n".join(lines).encode() + b"\n")
    file_id = judge.send(judge.base + "/files", body, lambda t: json.loads(t)["id"], ctype)
    req = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    return judge.send(judge.base + "/batches", req, lambda t: json.loads(t)["id"])


def batch_wait(judge, batch_id):
    """Poll a batch until it ends; returns its final object."""
    while True:
        batch = judge.send(f"{judge.base}/batches/{batch_id}", parse=lambda t: {**json.loads(t)})  # an object, else retried
        counts = batch.get("request_counts") or {}
        print(f"batch {batch_id}: {batch.get('status')} ({counts.get('completed', 0)}/{counts.get('total', '?')} done)", flush=True)
        if batch.get("status") in ("completed", "failed", "expired", "cancelled"):
            return batch
        time.sleep(judge.cfg.poll)


def batch_answers(judge, batch):
    """{custom_id: answer text} of a finished batch (failed requests and unreadable lines are
    left out: they are asked again one by one)."""
    out = {}
    fid = batch.get("output_file_id")
    for line in (judge.send(f"{judge.base}/files/{fid}/content", parse=str) if fid else "").splitlines():
        try:
            item = json.loads(line)
            if item["response"]["status_code"] == 200:
                text, n_in, n_out = judge.read(item["response"]["body"])
                judge.usage.add(input_tokens=n_in, output_tokens=n_out)
                out[item["custom_id"]] = text
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            continue
    return out


# =================================================================================
# records: input, resume, per-step aggregation
# =================================================================================

def response_of(rec):
    """The text to classify: "response" (rollouts) or "completion" (priming)."""
    r = rec.get("response", rec.get("completion"))
    return r if isinstance(r, str) else ""


def record_key(rec):
    """Identity of a record for resume: its id, step, condition, text and task."""
    raw = json.dumps([rec.get("id"), rec.get("step"), rec.get("condition"), response_of(rec),
                      rec.get("nums"), rec.get("target")], sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(raw.encode("utf-8")).hexdigest()[:20]


def read_records(path):
    """Records of one JSONL file, checked: each needs response|completion, nums and target.
    Errors name file:line."""
    return common.read_jsonl(path, check=_record_problem)


def _record_problem(rec):
    if not isinstance(rec.get("response", rec.get("completion")), str):
        return "no \"response\" or \"completion\" text"
    num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
    if not isinstance(rec.get("nums"), list) or not all(map(num, rec["nums"])) or not num(rec.get("target")):
        return "needs \"nums\" (a list of numbers) and \"target\" (a number)"
    return None


def input_files(path, split="rollouts"):
    """(files, default condition per file) for a run folder (its val/ or rollouts/ step
    files, see --split), a folder of step files or of other JSONL, or a file."""
    if os.path.isfile(path):
        return [path], {path: os.path.splitext(os.path.basename(path))[0]}
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such file or folder")
    run = {d: sorted(glob.glob(os.path.join(path, d, "step_*.jsonl"))) for d in ("val", "rollouts")}
    if split == "val" and not run["val"]:
        raise DataError(f"{path}: no val/step_*.jsonl (ppo.py writes them at its validation steps); --split rollouts?")
    files = run["val"] if split != "rollouts" and run["val"] else run["rollouts"]
    files = files or sorted(glob.glob(os.path.join(path, "step_*.jsonl")))
    if files:
        cond = run_condition(path)
        return files, {f: cond for f in files}
    files = sorted(f for f in glob.glob(os.path.join(path, "*.jsonl")) if os.path.basename(f) != "classified.jsonl")
    if not files:
        raise DataError(f"{path}: no rollouts/step_*.jsonl and no *.jsonl inside")
    return files, {f: os.path.splitext(os.path.basename(f))[0] for f in files}


def run_condition(run_dir):
    """A run's condition: config.json's "condition", else the folder name (as plot.py reads it)."""
    cfg = os.path.join(run_dir, "config.json")
    if os.path.isfile(cfg):
        with open(cfg, encoding="utf-8") as f:
            try:
                c = json.load(f)
            except ValueError as e:
                raise DataError(f"{cfg}: malformed JSON ({e})") from None
        if isinstance(c, dict) and c.get("condition"):
            return str(c["condition"])
    return os.path.basename(os.path.normpath(run_dir))


def load_input(path, condition=None, split="rollouts"):
    """[(record, condition, step)] of every record under path, in file order."""
    files, default = input_files(path, split)
    step = lambda rec: int(rec["step"]) if isinstance(rec.get("step"), (int, float)) else 0
    return [(rec, str(condition or rec.get("condition") or default[f]), step(rec))
            for f in files for rec in read_records(f)]


def sample_per_step(items, n, seed=0):
    """At most n items per (condition, step), drawn reproducibly; file order is kept.

    >>> items = [({}, "c", s) for s in (0, 0, 0, 10)]
    >>> [s for _, _, s in sample_per_step(items, 2)]
    [0, 0, 10]
    """
    if not n:
        return list(items)
    groups = {}
    for i, (_, cond, step) in enumerate(items):
        groups.setdefault((cond, step), []).append(i)
    keep = set()
    for (cond, step), idx in groups.items():
        keep.update(idx if len(idx) <= n else random.Random(f"{seed}|{cond}|{step}").sample(idx, n))
    return [it for i, it in enumerate(items) if i in keep]


def _mean(xs):
    return sum(xs) / len(xs) if xs else ""


def aggregate(classified, items, length_fn):
    """steps.csv rows: behavior columns over the classified records of each (condition,
    step); accuracy and response_length over all its input records."""
    groups = {}
    for rec, cond, step in items:
        g = groups.setdefault((cond, step), {"acc": [], "len": [], "cls": []})
        correct = rec.get("correct")
        if not isinstance(correct, bool):
            correct = countdown.score(response_of(rec), rec["nums"], rec["target"]) >= 1.0
        g["acc"].append(float(correct))
        g["len"].append(length_fn(rec))
    for rec, cond, step in classified:
        groups[(cond, step)]["cls"].append(rec)
    rows = []
    for (cond, step), g in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        row = {"condition": cond, "step": step}
        for b in BEHAVIORS:
            vals = [r[b] for r in g["cls"] if isinstance(r.get(b), (int, float))]
            row[AVG_COLUMN[b]] = _mean(vals)
            row[TOTAL_COLUMN[b]] = sum(vals) if vals else ""
        row["accuracy"], row["response_length"] = _mean(g["acc"]), _mean(g["len"])
        rows.append(row)
    return rows


def length_function(tokenizer_name=None):
    """Response length of a record: its "length" (tokens, from ppo.py), else tokens under
    --length-tokenizer, else whitespace-separated words."""
    tok = common.load_tokenizer(tokenizer_name) if tokenizer_name else None

    def length(rec):
        if isinstance(rec.get("length"), (int, float)):
            return rec["length"]
        text = response_of(rec)
        return len(tok.encode(text, add_special_tokens=False)) if tok else len(text.split())
    return length


def write_steps_csv(path, rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
    common.atomic_write_text(path, buf.getvalue())


def summary_table(rows):
    """The printed summary: one line per (condition, step)."""
    head = f"{'condition':28s} {'step':>5s} {'verif':>7s} {'backt':>7s} {'subgo':>7s} {'backw':>7s} {'acc':>6s} {'len':>7s}"
    lines = [head, "-" * len(head)]
    fmt = lambda v, w, p: f"{v:{w}.{p}f}" if isinstance(v, (int, float)) else f"{'-':>{w}s}"
    for r in rows:
        lines.append(f"{r['condition'][:28]:28s} {r['step']:5d} " + " ".join(fmt(r[AVG_COLUMN[b]], 7, 3) for b in BEHAVIORS)
                     + f" {fmt(r['accuracy'], 6, 3)} {fmt(r['response_length'], 7, 1)}")
    return "\n".join(lines)


# =================================================================================
# classification runs
# =================================================================================

def _labelled(rec, counts, name, missing=()):
    return {**rec, **counts, "classifier": name, **({"missing": list(missing)} if missing else {})}


def classify_rules(items, progress=True):
    """[(classified record, condition, step)] with the rules backend."""
    return [(_labelled(rec, count_behaviors(response_of(rec), rec["nums"], rec["target"]), "rules"), cond, step)
            for rec, cond, step in tqdm(items, desc="rules", unit="resp", disable=not progress, mininterval=1.0)]


def _run_pool(judge, todo, out_path, done, work):
    """Run work(rec) -> classified record over todo with --concurrency threads, appending
    each result to out_path as it arrives; a fatal error stops the run (resume later)."""
    with ThreadPoolExecutor(max_workers=max(1, judge.cfg.concurrency)) as pool:
        futures = [pool.submit(work, rec) for rec in todo]
        try:
            for fut in tqdm(as_completed(futures), total=len(futures), desc=judge.model, unit="resp"):
                rec = fut.result()
                common.append_jsonl(out_path, [rec])
                done[record_key(rec)] = rec
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def classify_llm(items, judge, out_dir):
    """Classify with an LLM judge (chat requests or, with --batch, the Batch API). Records
    already in OUT/classified.jsonl from the same judge are skipped unless a request of theirs
    failed; each new one is appended as soon as it is done."""
    name = judge.name
    out_path = os.path.join(out_dir, "classified.jsonl")
    try:
        common.read_jsonl_tolerant(out_path)  # cuts a torn last line (a killed run)
    except ValueError:
        pass  # a bad line before the last: read_jsonl names it
    done = {record_key(r): r for r in (common.read_jsonl(out_path) if os.path.exists(out_path) else [])
            if r.get("classifier") == name and not r.get("failed")}  # resume
    todo = list({record_key(r): r for r, _, _ in items if record_key(r) not in done}.values())
    print(f"{len(done)} records already classified by {name}, {len(todo)} to go", flush=True)
    answers = batch_run(judge, todo, out_dir) if judge.cfg.batch and todo else {}

    def work(rec):
        key = record_key(rec)
        first = {b: answers[f"{key}:{b}"] for b in BEHAVIORS if f"{key}:{b}" in answers} if judge.cfg.batch else None
        counts, missing, failed = judge_counts(judge, rec, first)
        return {**_labelled(rec, counts, name, missing), **({"failed": failed} if failed else {})}

    if todo:
        _run_pool(judge, todo, out_path, done, work)
    state = os.path.join(out_dir, "batch.json")
    if os.path.exists(state):
        os.remove(state)
    print(judge.usage.report(), flush=True)
    failed = sum(bool(done[record_key(r)].get("failed")) for r in todo)
    if failed:
        print(f"[classify] {failed} of {len(todo)} records had requests that failed after retries: those counts "
              'are null, named in "missing" and "failed"; run the same command again to ask them again', file=sys.stderr)
    return [(done[record_key(r)], cond, step) for r, cond, step in items]


def batch_run(judge, todo, out_dir):
    """Submit (or, after a restart, find again via OUT/batch.json) one batch for todo, wait
    for it, and return its answers."""
    if judge.backend != "openai":
        raise JudgeError("--batch is implemented for the OpenAI Batch API (--backend openai)")
    state = os.path.join(out_dir, "batch.json")
    batch_id = None
    if os.path.exists(state):
        with open(state) as f:
            batch_id = json.load(f).get("batch_id")
        print(f"resuming batch {batch_id}", flush=True)
    if not batch_id:
        batch_id = batch_submit(judge, todo)
        common.write_json(state, {"batch_id": batch_id, "requests": 4 * len(todo)})
    batch = batch_wait(judge, batch_id)
    if batch.get("status") != "completed":
        print(f"batch {batch_id} ended {batch.get('status')}: its answers are asked again one by one", flush=True)
    return batch_answers(judge, batch)


def classify(args, items):
    """Classify items with args.backend into args.out; write classified.jsonl and steps.csv."""
    os.makedirs(args.out, exist_ok=True)
    todo = sample_per_step(items, args.sample_per_step, args.seed)
    t0 = time.time()
    done = classify_rules(todo) if args.backend == "rules" else classify_llm(todo, Judge.from_args(args), args.out)
    common.write_jsonl(os.path.join(args.out, "classified.jsonl"), [r for r, _, _ in done])  # input order
    dt = time.time() - t0
    rows = aggregate(done, items, length_function(args.length_tokenizer))
    write_steps_csv(os.path.join(args.out, "steps.csv"), rows)
    print(summary_table(rows))
    print(f"classified {len(done)} of {len(items)} records with {args.backend} in {dt:.1f}s "
          f"({len(done) / max(dt, 1e-9):.0f}/s); wrote {args.out}/classified.jsonl and steps.csv", flush=True)
    return rows


# =================================================================================
# sampling mode: responses from a model before any training (the study's figure 4)
# =================================================================================

def run_sampling(args):
    """Sample from args.model into the run folder args.out (rollouts/step_000000.jsonl, the
    records ppo.py writes, scored with the study's reward; and config.json naming the
    condition) through sampler.py, as ppo.py validates; returns the folder."""
    import torch
    import sampler
    from common import load_model, load_tokenizer, read_jsonl, write_json
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    tasks = read_jsonl(args.data, required=("nums", "target"))[:args.samples]
    tok = load_tokenizer(args.model)
    model = load_model(args.model, device=device)
    opts = sampler.options(template=args.template, max_response_len=args.max_new_tokens, seed=args.seed)
    recs = sampler.sample_tasks(model, tok, tasks, args.per_task, args.temperature, opts,
                                batch_tasks=max(1, args.gen_batch // args.per_task), progress=True)
    cond = args.condition or "base_" + re.sub(r"[^\w.-]+", "_", os.path.basename(os.path.normpath(args.model)))
    common.write_jsonl(os.path.join(args.out, "rollouts", "step_000000.jsonl"), recs)
    write_json(os.path.join(args.out, "config.json"), {**vars(args), "stage": "classify-sample", "condition": cond})
    acc = sum(r["correct"] for r in recs) / max(1, len(recs))
    print(f"sampled {len(recs)} responses from {args.model}: accuracy {acc:.3f}", flush=True)
    return args.out


# =================================================================================
# agreement with labelled traces (hand labels, or the symbolic writer's counts)
# =================================================================================

def agreement(records, counts_fn=count_behaviors):
    """{condition: {behavior: {n, presence, exact, tp, fp, fn, tn}}} of counts_fn against each
    record's "labels" (hand) or "behaviors" (symbolic writer); records without either are
    skipped. Presence: both zero or both non-zero; exact: equal counts."""
    res = {}
    for rec in records:
        labels = rec.get("labels") or rec.get("behaviors")
        if not labels:
            continue
        got = counts_fn(response_of(rec), rec["nums"], rec["target"])
        cond = res.setdefault(str(rec.get("condition", rec.get("_file", "all"))), {})
        for b in BEHAVIORS:
            c = cond.setdefault(b, Counter())
            want, have = labels[b] > 0, got[b] > 0
            c.update(n=1, exact=int(got[b] == labels[b]), presence=int(want == have),
                     tp=int(want and have), fp=int(have and not want), fn=int(want and not have),
                     tn=int(not want and not have))
    return res


def throughput(records, repeat=3):
    """Responses per second of CPU time (best of `repeat` passes) of the rules backend."""
    texts = [(response_of(r), r["nums"], r["target"]) for r in records]
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        for x in texts:
            count_behaviors(*x)
        best = min(best, time.process_time() - t)
    return len(texts) / max(best, 1e-9)


def agreement_table(res):
    lines = [f"{'condition':28s} {'behavior':13s} {'n':>5s} {'presence':>9s} {'exact':>7s}   TP   FP   FN   TN"]
    for cond, by_b in res.items():
        for b in BEHAVIORS:
            c = by_b[b]
            lines.append(f"{cond[:28]:28s} {b:13s} {c['n']:5d} {c['presence'] / c['n']:9.3f} {c['exact'] / c['n']:7.3f} "
                         f"{c['tp']:4d} {c['fp']:4d} {c['fn']:4d} {c['tn']:4d}")
    return "\n".join(lines)


def run_eval(path):
    """Print the rules' agreement with labelled JSONL (a file or a folder of them) and their speed."""
    files, default = input_files(path)
    records = [{**rec, "_file": default[f]} for f in files for rec in read_records(f)]
    res = agreement(records)
    print(agreement_table(res))
    print(f"rules throughput: {throughput(records):.0f} responses/s of CPU time on one core "
          f"({len(records)} responses, mean {sum(len(response_of(r)) for r in records) / max(1, len(records)):.0f} chars)")
    return res


# =================================================================================
# command line
# =================================================================================

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_settings(ap, SETTINGS)
    a = ap.parse_args(argv)
    for bad, msg in [
            (a.backend not in ("rules", "openai", "anthropic"), "--backend must be rules, openai or anthropic"),
            (a.batch and a.backend != "openai", "--batch works with --backend openai (the OpenAI Batch API)"),
            (a.template not in countdown.TEMPLATES, f"--template must be one of {sorted(countdown.TEMPLATES)}"),
            (a.split not in ("auto", "val", "rollouts"), "--split must be auto, val or rollouts"),
            (a.prompts != "ours" and not (a.prompts.startswith("study:") and len(a.prompts) > 6 and a.backend != "rules"),
             "--prompts must be ours or study:PATH, and study:PATH needs --backend openai or anthropic"),
            (min(a.concurrency, a.samples, a.per_task, a.gen_batch) < 1 or a.sample_per_step < 0 or a.tag_retries < 0,
             "--concurrency, --samples, --per-task, --gen-batch must be >= 1; --sample-per-step, --tag-retries >= 0"),
            (a.eval is None and a.model is None and a.input is None,
             "give --input (what to classify), --model (sample first), or --eval")]:
        if bad:
            ap.error(msg)
    if a.out is None and a.eval is None:
        if a.model is not None:
            a.out = os.path.join("out", "base-" + re.sub(r"[^\w.-]+", "_", os.path.basename(os.path.normpath(a.model))))
        elif os.path.isdir(a.input):
            a.out = os.path.join(a.input, "classify")
        else:
            a.out = os.path.splitext(a.input)[0] + ".classify"
    return a


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.eval:
            run_eval(args.eval)
            return 0
        if args.model:
            run_dir = run_sampling(args)
            args.input, args.out = run_dir, os.path.join(run_dir, "classify")
        items = load_input(args.input, args.condition, args.split)
        if not items:
            raise DataError(f"{args.input}: no records")
        classify(args, items)
    except (DataError, JudgeError, common.ApiError, common.Retryable) as e:  # Retryable: a batch's retries spent
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
