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
    python classify.py --backend openai --base-url http://localhost:8000/v1 --api-model Qwen/Qwen2.5-32B-Instruct ...
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

The rules backend is behavior_rules.py (what it counts, and how, is described there);
`--eval` prints its agreement (presence / exact, per behavior) with labelled traces; see README.
The behaviors, their columns and the judge's definitions are study.py's.
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
import time

from tqdm import tqdm

import behavior_rules
import common
import countdown
import llm
import study
from common import DataError
from study import BEHAVIORS

# ---------------------------------------------------------------------------------
# settings: the flags and their defaults, (flag, default, type, help); `--help` lists them all
DEFAULT_JUDGE = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}  # 3.5 Haiku: gone from the SDK's models
SETTINGS = [
    ("input", None, str, "run folder (val/ or rollouts/step_*.jsonl), priming file, folder of JSONL, or any JSONL"),
    ("split", "auto", str, "run folder: val (ppo.py's test-set samples: what the study classified), rollouts, or auto (val if there, else rollouts)"),
    ("out", None, str, "output folder (default: INPUT/classify for a folder, INPUT_STEM.classify for a file)"),
    ("condition", None, str, "condition name for steps.csv (default: record's condition, run config, or file name)"),
    ("sample_per_step", 200, int, "classify this many random records per (condition, step), as the study; 0: all"),
    ("seed", 0, int, "seed of the per-step sample and of sampling mode"),
    ("length_tokenizer", None, str, "tokenizer for response_length when records lack 'length' (default: words)"),
    # a judge's answer is short (--max-tokens 512): a request still waiting after 2 minutes is stuck
    *llm.settings("rules", "counts the behaviors", DEFAULT_JUDGE, batch=True, timeout=120.0),
    ("prompts", "ours", str, "LLM judge's questions: ours, or study:PATH (read from a checkout of the study's repository)"),
    ("max_tokens", 512, int, "judge's answer length limit"),
    ("tag_retries", 1, int, "re-asks when an answer has no <count>N</count> (then recorded as missing)"),
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
# US$ per million (input, output) tokens, list prices; the Batch API bills half.
PRICES = {"gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00), "gpt-4.1-mini": (0.40, 1.60),
          "gpt-4.1-nano": (0.10, 0.40), "claude-3-5-haiku-20241022": (0.80, 4.00),
          "claude-3-5-sonnet-20241022": (3.00, 15.00), "claude-sonnet-4-20250514": (3.00, 15.00)}


# =================================================================================
# LLM judges: one request per behavior, "<count>N</count>" in the answer
# =================================================================================

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
    if study and behavior in study:  # the study asks about its four behaviors only
        code, names = study[behavior]
        return eval(code, {"__builtins__": {}}, dict(zip(names, (list(nums), target, response))))
    what, example, exclusion = BEHAVIORS[behavior].judge
    return PROMPT.format(nums=list(nums), target=target, definition=what, example=example,
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


class Usage:
    """Tally of the judge's requests, retries and tokens (its llm.Client counts them) and of
    the outcomes judge_counts adds; `report` prints the cost."""

    def __init__(self, model, client, batch=False):
        self.model, self.batch, self.add, self.n = model, batch, client.count, client.usage

    def report(self):
        """The tally, with the cost estimated from list prices (Batch API: half)."""
        p, n = PRICES.get(self.model), self.n
        money = (f"${(n['input_tokens'] * p[0] + n['output_tokens'] * p[1]) / 1e6 * (0.5 if self.batch else 1):.4f}"
                 if p else f"unknown (no price for {self.model})")
        return (f"{self.n['requests']} requests ({self.n['retries']} retries, {self.n['no_tag']} answers "
                f"without <count>, {self.n['missing']} counts missing, {self.n['failed']} of them after failed "
                f"requests), {self.n['input_tokens']} input + "
                f"{self.n['output_tokens']} output tokens, estimated cost {money}"
                f"{' (batch API, half price)' if self.batch else ''}")


class Judge:
    """An LLM judge through llm.Client: OpenAI-compatible chat completions (and the Batch API)
    or Anthropic's Messages API; its key comes from the environment there."""

    def __init__(self, backend, model, cfg, study=None):
        self.backend, self.model, self.cfg = backend, model, cfg
        self.system, self.study = study or (SYSTEM, None)  # study: study_judge()
        self.name = f"{backend}:{model}" + ("+study-prompts" if self.study else "")
        self.llm = llm.Client(backend, model, cfg.base_url, cfg.max_retries, cfg.retry_base, cfg.timeout,
                              log=lambda m: print(f"[classify] {m}", file=sys.stderr, flush=True))
        self.usage = Usage(model, self.llm, cfg.batch)

    @classmethod
    def from_args(cls, args):
        """The judge of --backend, --api-model and --prompts."""
        study = study_judge(args.prompts[len("study:"):]) if args.prompts != "ours" else None
        return cls(args.backend, args.api_model or DEFAULT_JUDGE[args.backend], args, study)

    def request(self, behavior, rec):
        """(system, user, max tokens, temperature) of the question about one behavior of rec."""
        prompt = judge_prompt(behavior, response_of(rec), rec["nums"], rec["target"], self.cfg.max_chars, self.study)
        return self.system, prompt, self.cfg.max_tokens, 0


def judge_counts(judge, rec, first_answers=None):
    """(counts, missing, failed) for one record: one prompt per behavior; an answer without a
    count tag is asked again up to --tag-retries times, then the count is None and named in
    missing; so is one whose request failed after its retries (also named in failed: a rerun
    asks it again). first_answers: {behavior: answer text} already in hand (Batch API)."""
    counts, missing, failed = {}, [], []
    for b in BEHAVIORS:
        req = judge.request(b, rec)
        given = [first_answers[b]] if first_answers and first_answers.get(b) is not None else []
        n, answers = None, 0
        while given or answers < 1 + judge.cfg.tag_retries:
            try:
                text = given.pop() if given else judge.llm.chat(*req)
            except llm.Retryable as e:
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


def batch_run(judge, todo, out_dir):
    """{"<record key>:<behavior>": answer text} of todo's questions through the batch API;
    OUT/batch.json keeps the batch id until the run ends, so a killed run resumes polling it."""
    reqs = {f"{record_key(rec)}:{b}": judge.request(b, rec) for rec in todo for b in BEHAVIORS}
    return dict(judge.llm.batch(reqs, os.path.join(out_dir, "batch.json"), judge.cfg.poll))


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
        cond = common.run_condition(path)
        return files, {f: cond for f in files}
    files = sorted(f for f in glob.glob(os.path.join(path, "*.jsonl")) if os.path.basename(f) != "classified.jsonl")
    if not files:
        raise DataError(f"{path}: no rollouts/step_*.jsonl and no *.jsonl inside")
    return files, {f: os.path.splitext(os.path.basename(f))[0] for f in files}


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
            row[BEHAVIORS[b].avg_column] = _mean(vals)
            row[BEHAVIORS[b].total_column] = sum(vals) if vals else ""
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
    w = csv.DictWriter(buf, fieldnames=study.steps_columns(), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
    common.atomic_write_text(path, buf.getvalue())


def summary_table(rows):
    """The printed summary: one line per (condition, step)."""
    head = f"{'condition':28s} {'step':>5s} " + "".join(f"{b[:5]:>7s} " for b in BEHAVIORS) + f"{'acc':>6s} {'len':>7s}"
    lines = [head, "-" * len(head)]
    fmt = lambda v, w, p: f"{v:{w}.{p}f}" if isinstance(v, (int, float)) else f"{'-':>{w}s}"
    for r in rows:
        lines.append(f"{r['condition'][:28]:28s} {r['step']:5d} " + " ".join(fmt(r[BEHAVIORS[b].avg_column], 7, 3) for b in BEHAVIORS)
                     + f" {fmt(r['accuracy'], 6, 3)} {fmt(r['response_length'], 7, 1)}")
    return "\n".join(lines)


# =================================================================================
# classification runs
# =================================================================================

def _labelled(rec, counts, name, missing=()):
    return {**rec, **counts, "classifier": name, **({"missing": list(missing)} if missing else {})}


def classify_rules(items, progress=True):
    """[(classified record, condition, step)] with the rules backend."""
    return [(_labelled(rec, behavior_rules.count_behaviors(response_of(rec), rec["nums"], rec["target"]), "rules"), cond, step)
            for rec, cond, step in tqdm(items, desc="rules", unit="resp", disable=not progress, mininterval=1.0)]


def _classified(path, name):
    """{record key: record} of what judge `name` wrote to OUT/classified.jsonl, a later line
    replacing an earlier one (a record asked again); a torn last line (a killed run) is cut off."""
    try:
        common.read_jsonl_tolerant(path)
    except ValueError:
        pass  # a bad line before the last: read_jsonl names it
    recs = common.read_jsonl(path) if os.path.exists(path) else []
    return {record_key(r): r for r in recs if r.get("classifier") == name}


def classify_llm(items, judge, out_dir):
    """Classify with an LLM judge (chat requests or, with --batch, the Batch API). Records
    already in OUT/classified.jsonl from the same judge are skipped unless a request of theirs
    failed; each new one is appended as soon as it is done."""
    name = judge.name
    out_path = os.path.join(out_dir, "classified.jsonl")
    done = {k: r for k, r in _classified(out_path, name).items() if not r.get("failed")}  # resume
    todo = list({record_key(r): r for r, _, _ in items if record_key(r) not in done}.values())
    print(f"{len(done)} records already classified by {name}, {len(todo)} to go", flush=True)
    answers = batch_run(judge, todo, out_dir) if judge.cfg.batch and todo else {}

    def work(rec):
        key = record_key(rec)
        first = {b: answers[f"{key}:{b}"] for b in BEHAVIORS if f"{key}:{b}" in answers} if judge.cfg.batch else None
        counts, missing, failed = judge_counts(judge, rec, first)
        return {**_labelled(rec, counts, name, missing), **({"failed": failed} if failed else {})}

    if todo:
        llm.run_jobs(todo, work, out_path, max(1, judge.cfg.concurrency), desc=judge.model, total=len(todo),
                     stop=judge.llm.stop)
        done = _classified(out_path, name)
    state = os.path.join(out_dir, "batch.json")
    if os.path.exists(state):
        os.remove(state)
    print(judge.usage.report(), flush=True)
    failed = sum(bool(done[record_key(r)].get("failed")) for r in todo)
    if failed:
        print(f"[classify] {failed} of {len(todo)} records had requests that failed after retries: those counts "
              'are null, named in "missing" and "failed"; run the same command again to ask them again', file=sys.stderr)
    return [(done[record_key(r)], cond, step) for r, cond, step in items]


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

def eval_samples(records, group=None):
    """behavior_rules.Sample of each record with "labels" (hand) or "behaviors" (the symbolic
    writer's counts); others are skipped. Group: the record's "condition", else `group`."""
    return [behavior_rules.Sample(response_of(r), r["nums"], r["target"], r.get("labels") or r["behaviors"],
                                  str(r.get("condition", group or "all")))
            for r in records if r.get("labels") or r.get("behaviors")]


def run_eval(path):
    """Print the rules' agreement with labelled JSONL (a file or a folder of them) and their speed."""
    files, default = input_files(path)
    samples = [s for f in files for s in eval_samples(read_records(f), default[f])]
    res = behavior_rules.agreement(samples)
    print(behavior_rules.agreement_table(res))
    print(f"rules throughput: {behavior_rules.throughput(samples):.0f} responses/s of CPU time on one core "
          f"({len(samples)} responses, mean {sum(len(s.text) for s in samples) / max(1, len(samples)):.0f} chars)")
    return res


# =================================================================================
# command line
# =================================================================================

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_settings(ap, SETTINGS)
    ap.add_argument("--judge-model", dest="api_model", help=argparse.SUPPRESS)  # the old name of --api-model
    a = ap.parse_args(argv)
    api = llm.check(a, "rules", batch=True)  # the API flags' problem, if any
    for bad, msg in [
            (api is not None, api),
            (a.template not in countdown.TEMPLATES, f"--template must be one of {sorted(countdown.TEMPLATES)}"),
            (a.split not in ("auto", "val", "rollouts"), "--split must be auto, val or rollouts"),
            (a.prompts != "ours" and not (a.prompts.startswith("study:") and len(a.prompts) > 6 and a.backend != "rules"),
             "--prompts must be ours or study:PATH, and study:PATH needs --backend openai or anthropic"),
            (min(a.samples, a.per_task, a.gen_batch) < 1 or a.sample_per_step < 0 or a.tag_retries < 0,
             "--samples, --per-task, --gen-batch must be >= 1; --sample-per-step, --tag-retries >= 0"),
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
    except (DataError, llm.ApiError, llm.Retryable) as e:  # Retryable: a batch's retries spent
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
