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
        --api-model Qwen/Qwen2.5-32B-Instruct --condition all_strategies --n 200 --concurrency 32

Writes <out>/<condition>.jsonl, one record per task:
{"id","prompt","completion","nums","target","condition","correct","behaviors"}, where the
prompt is countdown.make_prompt(...) (ending in "<think>") and the completion is the thinking,
then "</think>\\n<answer>EXPR</answer>". `behaviors` holds the counts the symbolic writer wrote
(null for API traces: run classify.py on them). <out>/summary.json gives per condition the
record count, correctness rate, mean completion tokens and mean count of each behavior.
Runs resume: records already in a file (by task id) are skipped; each record is appended
whole as soon as it exists, so a killed run loses nothing and duplicates nothing.
<out>/settings.json keeps the settings that shape the records (backend, API model, seed, task
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

The symbolic writer, and what each behavior looks like in its text, is symbolic.py.

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
import sys
import time
from functools import lru_cache

import common
import countdown
import llm
import study
import symbolic
from common import DataError, read_jsonl, read_jsonl_tolerant, write_json, write_jsonl
from study import BEHAVIORS
from symbolic import make_record, write_symbolic

# the conditions, as study.py defines them: those written directly (condition -> the behaviors
# its traces show; negative_control is api_gen.py's NEGATIVE_CONTROL, forward steps straight to
# the answer) and those derived from BASE's traces
DIRECT = {c.name: set(c.behaviors) for c in study.CONDITIONS.values() if c.priming == "written"}
DERIVED = tuple(c.name for c in study.CONDITIONS.values() if c.priming == "derived")
BASE = study.CONDITIONS[DERIVED[0]].derived_from  # all_strategies: every derived set is built from it
CONDITIONS = study.priming_sets()  # the study's eight (`--condition all`)
CONTROLS = tuple(c.name for c in study.CONDITIONS.values() if c.priming and c.optional)  # written when named
ALL_CONDITIONS = CONDITIONS + CONTROLS

# The study's system prompts (--prompts study:PATH) are read from this file of a checkout of
# its repository (github.com/kanishkg/cognitive-behaviors, or kanishkg/TinyZero, which holds it too).
STUDY_API_GEN = os.path.join("generate_cot_datasets", "api_gen.py")
DEFAULT_MODEL = {"anthropic": "claude-sonnet-4-6", "openai": "gpt-4o"}  # the study (api_gen.py:181):
# claude-3-5-sonnet-20241022, which Anthropic has retired; pass it with --api-model where it still answers.
# Our default until 2026-11 was claude-sonnet-4-5 (end of life 30 Nov 2026, the anthropic SDK's
# DEPRECATED_MODELS); a settings.json from before api_model was stamped meant it:
STAMPED_BEFORE = {"anthropic": "claude-sonnet-4-5", "openai": "gpt-4o"}

# ---------------------------------------------------------------------------------
# settings: the flags, (name, default, type, help); defaults follow the study's priming sets
SETTINGS = [
    ("condition", "all", str, f"condition(s), comma-separated, or all (the study's eight: "
     f"{', '.join(CONDITIONS)}); also {', '.join(CONTROLS)}"),
    ("n", 1000, int, "records per condition"),
    ("out", "data/priming", str, "output folder (resumed if it already holds records of this run)"),
    ("seed", 0, int, "seed of the task stream and of each trace's wording and search order"),
    ("tasks", None, str, "task JSONL ({id, nums, target} per line) to use instead of generated tasks"),
    ("sizes", "3,4", str, "comma-separated task sizes (3..5), each an equal share"),
    # the study's priming range; its input numbers as its tasks/countdown.py draws them
    ("target_min", 10, int, "smallest target of generated tasks"),
    ("target_max", 25, int, "largest target of generated tasks"),
    ("num_min", 1, int, "smallest input number of generated tasks"),
    ("num_max", 24, int, "largest input number of generated tasks"),
    ("template", "base", str, f"prompt template stored in each record: {', '.join(sorted(countdown.TEMPLATES))}"),
    ("tokenizer", "tiny", str, "tokenizer for lengths (dots matching, summary): alias, hub id or folder"),
    ("budget", symbolic.BUDGET, int, "symbolic: complete attempts before giving up with a wrong answer "
     "(lower: fewer correct)"),
    ("width", symbolic.WIDTH, int, "symbolic: steps tried from an intermediate state before going further back"),
    # API sampling as in the study: generate_cot_datasets/api_gen.py (kanishkg/cognitive-behaviors
    # and TinyZero) sends max_tokens=1024 (line 182) and temperature=0.5 (line 183)
    ("max_tokens", 1024, int, "API: longest completion in tokens"),
    ("temperature", 0.5, float, "API: sampling temperature"),
    ("prompts", "ours", str, "API: system prompts: ours, or study:PATH to read the study's from "
     f"PATH/{STUDY_API_GEN} (PATH: a checkout of its repository)"),
    # a 1024-token completion from a busy API can take minutes (the timeout); runs are long
    # and unattended, so a request waits out more overload (8 retries)
    *llm.settings("symbolic", "writes the traces", DEFAULT_MODEL, batch=True,
                  max_retries=8, timeout=600.0),
]
MAX_EXTRA = 20                 # no_positive: give up after solving this many x n extra tasks
TASK_CHUNK = 256               # generated tasks come in seeded chunks so the stream is prefix-stable


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
        self.llm = llm.client(args, DEFAULT_MODEL, log=log)
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
        """Records from the provider's batch API; what a batch did not answer goes into the next
        one (at most --max-retries more). Batch ids live in <file>.pending.json until their
        records are on disk, so a killed run resumes polling instead of paying for the same work."""
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
                                         else ["api_model", "base_url"])
    stamp = json.loads(json.dumps({k: getattr(args, k) for k in keys}))  # tuples -> lists
    if "api_model" in stamp:  # the model that writes, whether named or the default
        stamp["api_model"] = args.api_model or DEFAULT_MODEL[args.backend]
    if args.backend != "symbolic":
        stamp["prompts"] = prompts_id(prompts)
    path = os.path.join(args.out, "settings.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if "model" in old:  # written before --model became --api-model (unset then: null)
            old.setdefault("api_model", old["model"] or STAMPED_BEFORE.get(old.get("backend")))
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
    """One flag per row of SETTINGS (the API flags are llm.py's)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return common.add_settings(ap, SETTINGS)


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
    api = llm.check(a, "symbolic", batch=True)  # the API flags' problem, if any
    checks = [(a.n >= 1, "--n must be at least 1"),
              (all(3 <= s <= 5 for s in a.sizes), f"--sizes must lie in 3..5, got {a.sizes}"),
              (1 <= a.num_min <= a.num_max, "need 1 <= --num-min <= --num-max"),
              (1 <= a.target_min <= a.target_max, "need 1 <= --target-min <= --target-max"),
              (a.budget >= 1, "--budget must be at least 1 (one attempt)"),
              (a.width >= 1, "--width must be at least 1"),
              (api is None, api),
              (a.max_tokens >= 1, "--max-tokens must be at least 1"),
              (a.template in countdown.TEMPLATES,
               f"--template must be one of {', '.join(sorted(countdown.TEMPLATES))}, got {a.template!r}"),
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
