"""
What curate_pretrain.py reads in a math document and writes from it, as text: its labels (which
reasoning behaviors it shows, and whether it works a problem to a result) and its rewrite as
question / thinking / answer. Each both ways: offline (the `rules` backend: phrase rules for the
labels, the document's own paragraphs cut into three parts for the rewrite) and through an LLM
(the system prompts, the rewrite request, and the parsing of the replies). Pure functions of
text; the behaviors and their wording come from study.BEHAVIORS.
"""
import json
import re

from study import BEHAVIORS


# ---------------------------------------------------------------------------------
# offline labels: phrases of each behavior (the `rules` backend; a behavior without phrases
# here is never found by it)

CUES = {
    "verification": [
        r"\b(let'?s|let us|we can|I'?ll|we'?ll|now) (double[- ])?check\b", r"\bdouble[- ]check",
        r"\bsanity check", r"(^|[.!?]\s+)check:", r"\bto (check|verify|confirm|make sure)\b",
        r"\bverif(y|ies|ied|ying|ication)\b", r"\b(plug|plugging|substitute|substituting) (\w+ )?back in",
        r"\b(which|this|that|it) (matches|agrees with|checks out)\b", r"\bas expected\b",
        r"\b(which|this|that) confirms\b", r"\b(we can )?make sure\b",
    ],
    "backtracking": [
        r"\b(that|this|it|which) (doesn'?t|does not|won'?t|will not|didn'?t|did not) work\b",
        r"\b(try|trying|tried) (a |an )?(different|another|something else|again)\b",
        r"\b(let'?s|let me|we|I) (go|went) back\b", r"\bgoing back to\b", r"\bstart(ing)? over\b",
        r"\b(scratch|scrap) that\b", r"\bdead end\b", r"\bon second thought\b",
        r"\b(that|this|it) (was|is) (wrong|a mistake|not right|incorrect)\b",
        r"\b(I|we) made (a|an) (mistake|error)\b", r"(^|[.!?]\s+)Wait\b",
        r"\b(did not|didn'?t|does not|doesn'?t) (lead|get us|get me) anywhere\b",
        r"\b(guess|attempt|approach|idea) (fails|failed)\b", r"\bthat guess fails\b",
    ],
    "subgoal": [
        r"\bsub-?goals?\b", r"\b(first|next|then),? (we|I) (need|want|have) to\b",
        r"\b(we|I) (first|then|next) (need|have|want) to\b",
        r"\b(our|the|my) (first|next|immediate|intermediate) (goal|aim|task)\b",
        r"\b(step one|the first step) is to\b", r"\bbreak (it|this|the problem|the task) (down |up )?into\b",
        r"\b(the|our|my) plan( is)?\b[:,]?", r"\bonce (we|I) (have|know|find)\b[^.]{0,80}\b(we|I) can\b",
        r"\b(we|I) need to handle (two|three|several|the) cases\b",
    ],
    "backward": [
        r"\b(work|working|worked|reason|reasoning) backwards?\b", r"\bbackwards? from\b",
        r"\b(start|begin)(ning|s)? (from|with|at) the (end|goal|answer|conclusion|target|result|desired)",
        r"\bundo (each|the|every) (step|operation)", r"\breverse the (steps|operations)\b",
        r"\bfor (this|that|it|the \w+) to (be|equal|hold|work)\b[^.]{0,40}\b(we|I) (need|must)\b",
    ],
}
SOLVED = [  # a stated conclusion anywhere in the document
    r"\b(the )?(final )?answer is\b", r"\btherefore\b", r"\bthus\b", r"\bhence\b",
    r"\bso (the|its|her|his|their) \w+( \w+)? (is|are|was|equals)\b", r"\bso,? [a-zA-Z] ?=",
    r"\bthe solutions? (is|are)\b", r"\bso there are\b", r"\\boxed", r"∎|\bQ\.?E\.?D\b",
    r"\b(which|this) proves\b", r"\b(holds|is true) for (all|every)\b",
]
RESULT = [  # ... or a last sentence that states a result
    r"=", r"^(so|since|therefore|thus|hence)\b",
    r"\b(is|are|was|were|be|equals?|gives|get|got|have|has) (about |approximately |exactly )?[-$]?\d",
]
_CUES = {k: re.compile("|".join(f"(?:{p})" for p in v), re.I | re.M) for k, v in CUES.items()}
_SOLVED = re.compile("|".join(f"(?:{p})" for p in SOLVED), re.I)
_RESULT = re.compile("|".join(f"(?:{p})" for p in RESULT), re.I)


def rule_labels(text):
    """Which behaviors a document shows, by phrase, and whether it works a problem to a
    conclusion (a concluding phrase, or a last sentence that states a value).
    Returns ({behavior: bool}, solves_problem).

    >>> labels, solves = rule_labels("Check: 3(6) + 7 = 25, which matches. So x = 6.")
    >>> labels["verification"], labels["backtracking"], solves
    (True, False, True)
    >>> rule_labels("That doesn't work, so let's try a different substitution.")[0]["backtracking"]
    True
    >>> rule_labels("First we need to find the width; once we know it, we can get the area.")[0]["subgoal"]
    True
    >>> rule_labels("Work backwards from 100: before doubling it was 50.")[0]["backward"]
    True
    >>> rule_labels("A group is a set with an associative operation.")
    ({'verification': False, 'backtracking': False, 'subgoal': False, 'backward': False}, False)
    """
    labels = {k: k in _CUES and bool(_CUES[k].search(text)) for k in BEHAVIORS}
    last = re.split(r"(?<=[.!?])\s+", text.strip())[-1]
    solves = (bool(re.search(r"\d|=", text)) and not last.endswith("?")
              and bool(_SOLVED.search(text) or _RESULT.search(last)))
    return labels, solves


# ---------------------------------------------------------------------------------
# LLM prompts and the parsing of their replies

DEFINITIONS = "\n".join(f"- {b.name}: {b.doc}" for b in BEHAVIORS.values())
_KEYS = [*BEHAVIORS, "solves_problem"]
LABEL_SYSTEM = f"""You read a math document from the web and say which reasoning behaviors \
its author shows in the text itself.
{DEFINITIONS}
- solves_problem: the document works a problem or proof through to a stated result.
Reply with one JSON object and nothing else: {{"{_KEYS[0]}": true or false, \
{", ".join(f'"{k}": ...' for k in _KEYS[1:])}}}"""
REWRITE_SYSTEM = f"""You rewrite a math document from the web as one worked problem in three \
parts: <question>the problem the document works on</question> <think>the reasoning, step by \
step, in the first person</think> <answer>the final result</answer>. Use only the content of \
the document: keep its mathematics and do not invent new results. The reasoning behaviors \
are:
{DEFINITIONS}
Reply with the three tagged parts and nothing else."""
KEEP = "The document shows {present}. The thinking must show each of them where the document does{absent}."
_DONTS = [b.doc_avoid for b in BEHAVIORS.values()]
AVOID = f"The thinking must go straight through: it must not {', '.join(_DONTS[:-1])} or {_DONTS[-1]}."
FRAME = "Question: {q}\n\n<think>\n{t}\n</think>\n\n<answer>\n{a}\n</answer>"  # training text


def parse_label_reply(text):
    """({behavior: bool}, solves_problem) from an LLM's JSON reply; ValueError if unreadable.

    >>> parse_label_reply('Sure. {"verification": true, "backtracking": "no", "subgoal": 0, '
    ...                   '"backward": false, "solves_problem": "yes"}')
    ({'verification': True, 'backtracking': False, 'subgoal': False, 'backward': False}, True)
    """
    m = re.search(r"\{[^{}]*\}", text, re.S)
    if not m:
        raise ValueError("no JSON object in the reply")
    obj = {k.lower().strip(): v for k, v in json.loads(m.group(0)).items()}

    def truth(k):
        v = obj[k]
        if isinstance(v, str):
            if v.strip().lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError(f"{k}: {v!r} is not yes/no")
            return v.strip().lower() in ("true", "yes", "1")
        return bool(v)
    try:
        return {k: truth(k) for k in BEHAVIORS}, truth("solves_problem")
    except KeyError as e:
        raise ValueError(f"reply lacks {e}") from None


def parse_rewrite_reply(text):
    """(question, thinking, answer) from tagged LLM output, or None if a part is missing.

    >>> parse_rewrite_reply("<question>2+2?</question>\\n<think>Add them.</think><answer>4</answer>")
    ('2+2?', 'Add them.', '4')
    >>> parse_rewrite_reply("<think>no question</think>") is None
    True
    """
    parts = [re.search(rf"<{tag}>(.*?)</{tag}>", text, re.S) for tag in ("question", "think", "answer")]
    if not all(parts):
        return None
    q, t, a = (p.group(1).strip() for p in parts)
    return (q, t, a) if q and t and a else None


def frame_document(text):
    """The document's own text cut into (question, thinking, answer), inventing nothing:
    first and last paragraph around the middle ones, else first and last sentence.

    >>> frame_document("Solve x + 1 = 3.\\n\\nSubtract 1.\\n\\nSo x = 2.")
    ('Solve x + 1 = 3.', 'Subtract 1.', 'So x = 2.')
    >>> frame_document("Find x. We subtract. Then divide. So x = 2.")
    ('Find x.', 'We subtract. Then divide.', 'So x = 2.')
    >>> frame_document("Just one sentence.")
    ('', 'Just one sentence.', '')
    """
    paras = [p.strip() for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    if len(paras) >= 3:
        return paras[0], "\n\n".join(paras[1:-1]), paras[-1]
    sents = [s for s in re.split(r"(?<=[.?!])\s+", " ".join(paras)) if s]
    if len(sents) >= 3:
        return sents[0], " ".join(sents[1:-1]), sents[-1]
    if len(sents) == 2:
        return sents[0], "", sents[1]
    return "", " ".join(sents), ""


def _document(text, max_chars):
    """The document as an LLM reads it: cut to max_chars, between <document> tags."""
    return f"<document>\n{text[:max_chars]}\n</document>"


def label_messages(text, max_chars):
    """(system, user) of one labelling request.

    >>> label_messages("x = 1. Check: 1 = 1.", 6)[1]
    '<document>\\nx = 1.\\n</document>'
    """
    return LABEL_SYSTEM, _document(text, max_chars)


def rewrite_messages(text, set_name, labels, max_chars):
    """(system, user) of one rewrite request: keep the source's behaviors (rich) or none."""
    present = [k for k in BEHAVIORS if labels[k]]
    if set_name == "rich" and present:
        absent = [k for k in BEHAVIORS if not labels[k]]
        rule = KEEP.format(present=", ".join(present),
                           absent=f"; it must not add {', '.join(absent)}" if absent else "")
    else:
        rule = AVOID
    return REWRITE_SYSTEM, f"{rule}\n\n{_document(text, max_chars)}"


# ---------------------------------------------------------------------------------
# a rewrite's verdict

def rewrite_verdict(source, new):
    """(keep, lost, gained): a rewrite is kept only if it shows exactly the source's behaviors.

    >>> v = dict.fromkeys(BEHAVIORS, False)
    >>> rewrite_verdict(dict(v, verification=True), dict(v, backward=True))
    (False, ['verification'], ['backward'])
    """
    lost = [k for k in BEHAVIORS if source[k] and not new[k]]
    gained = [k for k in BEHAVIORS if new[k] and not source[k]]
    return not lost and not gained, lost, gained
