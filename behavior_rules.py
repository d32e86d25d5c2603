"""
The offline behavior counter: the four behaviors (study.BEHAVIORS) counted in one Countdown
response by rules, with no model and no key. classify.py --backend rules runs it over files,
ppo.py over every rollout (live metrics), report.py highlights the spans it counts.

It reads the arithmetic: it rewrites verbal arithmetic as symbols ("multiply 3 by 9, which is
27" -> "3 * 9 = 27"), finds each equation, follows the chain of results (which numbers are used
up, which result is the latest, recomputing whole expressions), and counts, once per distinct
occurrence:
  verification  a result judged against the target or a goal: "67, not 76", "too high",
                "that works", "Check: ..." (verdicts on one result count once)
  backtracking  a path left in words ("that fails", "back to 25", "start over") or a new attempt
                that goes back to numbers already used instead of building on its last result
                (a re-derivation after the target was reached is a check, not a backtrack)
  subgoal       a number set as a goal ("aim for 90", "subgoal: 6", "if I can get 40"), or named
                as needed ("the rest must make 11") outside a backward step
  backward      a step from the target toward the inputs: "58 = 56 + 2", "74 - 50 = 24",
                "76 / 4 = 19", splitting a number a backward step asked for, "working backwards"
Convention shared with the symbolic writer (symbolic.py): a number that a backward step asks
for ("58 = 56 + 2, so the rest must make 56") counts as backward chaining, not also as a
subgoal. `agreement` measures the rules against labelled traces (classify.py --eval; see README).

Each behavior's rules function sits in RULES: (doc, target) -> [(start, end)] spans in doc.text,
one per occurrence, where doc is a `Doc` (the normalized text, its sentence starts, equations
followed along the chain, cue-phrase matches). A fifth behavior in study.py needs one there.
"""
import re
import time
from bisect import bisect_right
from collections import Counter
from fractions import Fraction
from typing import NamedTuple

from study import BEHAVIORS

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
_CLOSEST = re.compile(r"closest|nearest")  # the compare cues that announce a check of an earlier attempt
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


def _inside(pos, spans):
    return any(a <= pos < b for a, b in spans)


def follow_chain(eqs, nums, target, gone_back=(), checks=(), backs=()):
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
    checks: (start, end) spans announced as a check ("let me verify: ...", "... came closest:
    ..."); a step inside one is a chain step that neither restarts nor moves the attempt on (a
    recomputation, right or wrong, not a new attempt).
    backs: (start, end) spans after a "working backwards" phrase; a step there on the target or a
    needed number is a backward step ("to end on 12 by subtracting 8, I need 12 + 8 = 20") even
    when that number is also one of the task's.

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
        if _inside(e["pos"], checks):
            e["chain"] = True       # a check's recomputation (right or not), not a new attempt
            continue
        value, implicit = e["value"], "@" in e["ops"]
        unknown = [o for o in ops if o not in inputs and o not in produced]
        if e["kind"] == "dec" or (unknown and not implicit and (value == goal or value in needed)):
            e["backward"] = e["kind"] == "dec" and (value == goal or value in needed)
            e["plan"] = not e["backward"]
            needed.update(unknown)
            attempt.add(value)
            continue
        back = _inside(e["pos"], backs)
        if any((o == goal or o in needed) and (back or (o not in inputs and o not in produced)) for o in ops):
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


class Doc:
    """A normalized text with its sentence starts (`sent`), equations followed along the chain
    (`eqs`, see follow_chain) and cue-phrase matches (`cues`: {kind: [match]}): what a rules
    function reads."""

    def __init__(self, text, nums, target):
        self.text = text
        self.sent = [0] + [m.end() for m in _SENT.finditer(text)]
        self.cues = _scan(text)
        eqs = find_equations(text)
        first = eqs[0]["pos"] if eqs else len(text)
        cues = self.cues["announce"] + [m for m in self.cues["compare"] if _CLOSEST.match(m.group(0))]
        checks = [(m.start(), self.sentence_end(m.start())) for m in cues]
        backs = [(m.start(), self.sentence_end(m.start())) for m in _backward_phrases(self, target)]
        gone_back = [m.start() for m in self.cues["backtrack"] if m.start() > first]
        self.eqs = follow_chain(eqs, nums, target, gone_back, checks, backs)

    def sentence(self, pos):
        return bisect_right(self.sent, pos) - 1

    def sentence_end(self, pos):
        k = self.sentence(pos) + 1
        return self.sent[k] if k < len(self.sent) else len(self.text)


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


def _backtracking(doc, target):
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


# behavior -> its rules function: (doc, target) -> [(start, end)] in doc.text, one per occurrence
RULES = {"verification": _verification, "backtracking": _backtracking, "subgoal": _subgoal, "backward": _backward}


def analyze(response, nums, target, edits=None):
    """{behavior: [positions in the normalized text]} of each counted occurrence, "spans":
    {behavior: [(start, end)]} in the normalized text (the phrase or equation counted), the
    normalized "text" and the "equations" (for debugging a count). edits: see normalize."""
    text = normalize(response if isinstance(response, str) else "", edits)
    target = _number(str(target))
    doc = Doc(text, nums, target)
    missing = [b for b in BEHAVIORS if b not in RULES]
    if missing:
        raise KeyError(f"no rules function for {', '.join(missing)} in behavior_rules.RULES")
    spans = {b: RULES[b](doc, target) for b in BEHAVIORS}
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
    order = list(BEHAVIORS)
    return sorted(out, key=lambda t: (t[0], t[1], order.index(t[2])))


def count_behaviors(response, nums, target):
    """{behavior: count} in one response (the offline rules backend).

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
# agreement with labelled traces (hand labels, or the symbolic writer's counts)
# =================================================================================

class Sample(NamedTuple):
    """One labelled response: its text and task, the counts it should get, and its group."""
    text: str
    nums: list
    target: int
    labels: dict
    group: str = "all"


def agreement(samples, counts_fn=count_behaviors):
    """{group: {behavior: {n, presence, exact, tp, fp, fn, tn}}} of counts_fn against each
    sample's labels. Presence: both zero or both non-zero; exact: equal counts.

    >>> s = Sample("44 + 19 = 63, not 76.", [44, 19, 3, 1], 76, dict.fromkeys(BEHAVIORS, 0))
    >>> c = agreement([s])["all"]["verification"]; c["n"], c["presence"], c["fp"]
    (1, 0, 1)
    """
    res = {}
    for s in samples:
        got = counts_fn(s.text, s.nums, s.target)
        group = res.setdefault(s.group, {})
        for b in BEHAVIORS:
            c = group.setdefault(b, Counter())
            want, have = s.labels[b] > 0, got[b] > 0
            c.update(n=1, exact=int(got[b] == s.labels[b]), presence=int(want == have),
                     tp=int(want and have), fp=int(have and not want), fn=int(want and not have),
                     tn=int(not want and not have))
    return res


def throughput(samples, repeat=3):
    """Responses per second of CPU time (best of `repeat` passes) of the rules."""
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        for s in samples:
            count_behaviors(s.text, s.nums, s.target)
        best = min(best, time.process_time() - t)
    return len(samples) / max(best, 1e-9)


def agreement_table(res):
    lines = [f"{'condition':28s} {'behavior':13s} {'n':>5s} {'presence':>9s} {'exact':>7s}   TP   FP   FN   TN"]
    for cond, by_b in res.items():
        for b in BEHAVIORS:
            c = by_b[b]
            lines.append(f"{cond[:28]:28s} {b:13s} {c['n']:5d} {c['presence'] / c['n']:9.3f} {c['exact'] / c['n']:7.3f} "
                         f"{c['tp']:4d} {c['fp']:4d} {c['fn']:4d} {c['tn']:4d}")
    return "\n".join(lines)
