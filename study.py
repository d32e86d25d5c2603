"""
The study's vocabulary: its four behaviors and its conditions, each defined once here and read
by every script (classify.py and behavior_rules.py count the behaviors, gen_priming.py writes
traces that show them, curate_pretrain.py labels documents for them, plot.py and report.py draw
them).

A fifth behavior needs:
  1. an entry in BEHAVIORS below (name, title, steps.csv columns, color, the judge's definition,
     the priming instructions, the document-labelling definition);
  2. its rules function in behavior_rules.RULES (what the offline counter counts).
Everything else follows: classify.py asks the judge about it and writes its columns, plot.py
adds a panel, gen_priming.py's API prompts ask for it or forbid it, curate_pretrain.py's labels
and rewrites include it. Optional: phrases for curate_pretrain.py's offline document labeller
(curate_text.CUES; without them that labeller never finds it) and for the symbolic
writer (symbolic.PHRASES; without them the writer never shows it: its counts stay 0).

A condition is a set of runs: its priming set (which behaviors the traces show, and how
gen_priming.py makes it), its family, its color in every figure, and its other names (the
study's CSVs and our folder names).

>>> [b.title for b in BEHAVIORS.values()]
['Verification', 'Backtracking', 'Subgoal setting', 'Backward chaining']
>>> steps_columns()[:4]
['condition', 'step', 'avg_verifications', 'avg_backtracking']
>>> priming_sets()[-3:]
('empty_cot', 'dots', 'no_positive')
"""
from dataclasses import dataclass
from typing import NamedTuple


class Definition(NamedTuple):
    """What an LLM judge counts: the behavior, a Countdown example of it, and what it is not."""
    what: str
    example: str
    exclude: str


@dataclass(frozen=True)
class Behavior:
    name: str            # the key in records, metrics (behavior/<name>) and judge requests
    title: str           # figure panel titles and legends
    avg_column: str      # steps.csv: mean count per response (the study's CSV column)
    total_column: str    # steps.csv: summed count
    color: str           # its color in every figure and in the report's highlights
    judge: Definition    # classify.py's LLM judge on Countdown reasoning
    show: str            # gen_priming.py's API prompt: how to show it (a condition that has it)
    avoid: str           # ... and what not to do (a condition without it)
    doc: str             # curate_pretrain.py: the behavior in a math document from the web
    doc_avoid: str       # ... what a behavior-free rewrite must not do ("check results")


BEHAVIORS = {b.name: b for b in (  # name -> entry, in the study's order (its judge asks in this order)
    Behavior(
        "verification", "Verification", "avg_verifications", "total_verifications", "#4c72b0",
        Definition(
            "verification: the reasoning checks a result it has computed against the target (or "
            "against an intermediate number it is aiming for), saying whether the value equals, "
            "misses, overshoots or falls short of it; announcing a check of a finished equation counts too",
            "numbers [75, 6, 3, 2], target 29: '75 + 6 = 81, way above 29' is one verification and "
            "'31 - 2 = 29, which is the target' is another",
            "arithmetic steps that are not compared with anything"),
        show="verification: after computing a result, compare it with the target in words, saying "
             "whether it matches or by how much it misses; check the final equation once more before "
             "answering.",
        avoid="never judge a result in words: do not say that a number matches, misses, is too big, "
              "too small, close or wrong; just compute and move on",
        doc="the author checks an intermediate or final result, e.g. substitutes it back, recomputes "
            "it another way, or compares it with a known value.",
        doc_avoid="check results"),
    Behavior(
        "backtracking", "Backtracking", "avg_backtracking", "total_backtracking", "#dd8452",
        Definition(
            "backtracking: the reasoning gives up on a line of attack and goes back to try a different "
            "one, either saying so ('that fails, let me try something else', 'back to 25') or by "
            "starting again from numbers it had already used after an attempt did not work",
            "numbers [75, 6, 3, 2], target 29: '75 + 6 = 81. 75 - 6 = 69.' starts over once; a later "
            "'That is no good, go back to 25' is a second instance",
            "the first attempt, or re-deriving a finished solution to check it"),
        show="backtracking: when a line of attack is not leading anywhere, say plainly that you are "
             "abandoning it and name where you go back to (the original numbers or an earlier "
             "intermediate state) before trying something else.",
        avoid="do not announce that you are going back or starting over",
        doc="the author abandons an approach that failed or was wrong and goes back to try another.",
        doc_avoid="abandon an approach"),
    Behavior(
        "subgoal", "Subgoal setting", "avg_subgoals", "total_subgoals", "#55a868",
        Definition(
            "subgoal setting: the reasoning names an intermediate number to reach on the way to the "
            "target and then works toward it, e.g. 'first make 100, then subtract 3' or 'if I can get "
            "40, adding 6 finishes it'",
            "numbers [25, 4, 7, 10], target 97: 'a good intermediate goal is 100' is one subgoal",
            "restating the target itself"),
        show="subgoal setting: name an intermediate number to reach first, derived from the target "
             "(for example 'if the other numbers make 6, then 6 * 4 gives 24'), and then work "
             "forward toward that number.",
        avoid="do not name intermediate goals to aim for",
        doc="the author names an intermediate goal to reach on the way to the answer, e.g. \"first "
            "we need to find the width\".",
        doc_avoid="name intermediate goals"),
    Behavior(
        "backward", "Backward chaining", "avg_backwards", "total_backwards", "#8172b3",
        Definition(
            "backward chaining: the reasoning starts from the target and works back toward the given "
            "numbers, splitting the target (or a number a previous backward step needs) into pieces or "
            "undoing an operation on it",
            "numbers [7, 12, 4, 2], target 58: '58 = 56 + 2' is one backward step and '56 = 7 * 8, so "
            "I need 8 from 12 and 4' is another",
            "forward calculations that merely end at the target"),
        show="backward chaining: start from the target and reason in reverse about what the last "
             "step must have been and what it needs, then what the step before that needs, moving "
             "back toward the given numbers.",
        avoid="do not reason backwards from the target; always work forward from the given numbers",
        doc="the author works backwards from the goal or the desired result toward the given facts.",
        doc_avoid="work backwards from the answer"),
)}


@dataclass(frozen=True)
class Condition:
    name: str
    family: str              # "base" (no priming), "primed" (traces that show behaviors), "control"
                             # (priming without the behaviors) or "pretraining" (curated corpus)
    color: str               # its color in every figure (the order below is the legend order)
    behaviors: tuple = ()    # behaviors its priming traces show
    priming: str = ""        # how gen_priming.py makes its priming set: "written", "derived"
                             # (from `derived_from`'s traces), or "" (none)
    derived_from: str = ""
    optional: bool = False   # a priming set made only when named: not one of the study's eight
    aliases: tuple = ()      # other names: the study's CSVs, our folder names


_ALL = tuple(BEHAVIORS)
CONDITIONS = {c.name: c for c in (  # name -> entry; the legend and table order
    Condition("base", "base", "#333333", aliases=("none", "base_ppo")),
    Condition("all_strategies", "primed", "#1f77b4", _ALL, "written"),
    Condition("only_backtracking", "primed", "#d62728", ("backtracking",), "written"),
    Condition("backtracking_verification", "primed", "#ff7f0e", ("backtracking", "verification"), "written"),
    Condition("backtracking_subgoal", "primed", "#2ca02c", ("backtracking", "subgoal"), "written"),
    Condition("backtracking_backward", "primed", "#9467bd", ("backtracking", "backward"), "written"),
    # controls: the thinking emptied (answer kept), replaced by "." placeholders of the same length,
    # all_strategies traces with wrong answers only, and a straight calculation with no behavior
    Condition("empty_cot", "control", "#8c564b", (), "derived", "all_strategies"),
    Condition("dots", "control", "#e377c2", (), "derived", "all_strategies"),
    Condition("no_positive", "control", "#17becf", _ALL, "derived", "all_strategies",
              aliases=("no_positive_all_strategies",)),
    Condition("negative_control", "control", "#7f7f7f", (), "written", optional=True),
    # continued pretraining on a behavior-rich corpus and on its behavior-minimal match
    Condition("curated", "pretraining", "#bcbd22", aliases=("rich", "behavior_rich", "owmathqa2_ppo")),
    Condition("control", "pretraining", "#a6a6a6", aliases=("minimal", "behavior_minimal", "owmathqa_none_ppo1")),
)}


def steps_columns():
    """steps.csv's columns, as the study's CSVs: condition, step, the behaviors' means, their
    totals, accuracy, response_length (read at call time: a behavior added later is included)."""
    return (["condition", "step"] + [b.avg_column for b in BEHAVIORS.values()]
            + [b.total_column for b in BEHAVIORS.values()] + ["accuracy", "response_length"])


def priming_sets():
    """The study's eight priming sets (gen_priming.py `--condition all`), in the order above:
    the written ones come before those derived from them."""
    return tuple(c.name for c in CONDITIONS.values() if c.priming and not c.optional)


def alias_map():
    """{every name of a condition: its name}. >>> alias_map()["base_ppo"]
    'base'"""
    return {n: c.name for c in CONDITIONS.values() for n in (c.name, *c.aliases)}
