"""
Pretraining curation, as in the study's last experiment: label math web documents for the four
reasoning behaviors, build a behavior-rich set and a behavior-minimal control matched in
document count and length, rewrite each document as question / thinking / answer, and cut
both sets to the same token budget for continued pretraining with sft.py.

Offline, CPU, on the test fixture (seconds; rules backend, tiny tokenizer):
    python curate_pretrain.py --source tests/fixtures/math_docs.jsonl --backend rules \\
        --tokenizer tiny --token-budget 2000 --out out/curate_fixture
    python sft.py --model tiny --data out/curate_fixture/rich.jsonl --out out/cpt_tiny_rich \\
        --epochs 3 --batch-size 8 --micro-batch 8 --max-len 512 --lr 2e-3

The real thing (the study: Qwen-2.5-32B labels 200k documents of OpenWebMath and FineMath,
8.3M tokens per set, then continued pretraining of Llama-3.2-3B and PPO). Needs
`pip install datasets` and a GPU server for the 32B model (2 x 80GB, tensor parallel):
    vllm serve Qwen/Qwen2.5-32B-Instruct --tensor-parallel-size 2 --max-model-len 16384 --port 8000
    # 1. label 200k documents (100k from each corpus); one process, 64 requests in flight ...
    python curate_pretrain.py --stage label --source open-web-math,finemath --n-docs 200000 \\
        --backend openai --base-url http://localhost:8000/v1 --api-model Qwen/Qwen2.5-32B-Instruct \\
        --concurrency 64 --out data/curated
    # ... or several processes (e.g. one per vllm server), each with its own --shard i/n:
    for i in 0 1 2 3; do python curate_pretrain.py --stage label --source open-web-math,finemath \\
        --n-docs 200000 --backend openai --base-url http://localhost:8000/v1 \\
        --api-model Qwen/Qwen2.5-32B-Instruct --concurrency 32 --shard $i/4 --out data/curated & done; wait
    # 2. frequencies (figure 7), selection, rewriting, 8.3M tokens of each set in Llama's tokens
    python curate_pretrain.py --stage stats,select,rewrite,pack --backend openai \\
        --base-url http://localhost:8000/v1 --api-model Qwen/Qwen2.5-32B-Instruct --concurrency 64 \\
        --tokenizer llama-3.2-3b --token-budget 8300000 --out data/curated
    # 3. continued pretraining on each set, then PPO from each result
    python sft.py --model llama-3.2-3b --data data/curated/rich.jsonl --out out/cpt_llama_rich \\
        --epochs 1 --pack --max-len 4096 --overlong truncate --grad-ckpt
    python sft.py --model llama-3.2-3b --data data/curated/minimal.jsonl --out out/cpt_llama_minimal \\
        --epochs 1 --pack --max-len 4096 --overlong truncate --grad-ckpt
    python ppo.py --model llama-3.2-3b --init out/cpt_llama_rich/final --data data/countdown --out out/ppo_llama_rich
    python ppo.py --model llama-3.2-3b --init out/cpt_llama_minimal/final --data data/countdown --out out/ppo_llama_minimal
Any stage can be rerun or resumed: label and rewrite append whole records and skip what is
done; stats, select and pack are cheap, deterministic and write atomically. Claude instead
of a local server: --backend anthropic (ANTHROPIC_API_KEY in the environment). A local
Hugging Face model can do the rewriting: --rewrite-model PATH (labels still come from
--backend). Keys come only from the environment and are never printed or written.
The text side of it (the offline rules labeller and framing, the LLM prompts and the parsing
of their replies) is curate_text.py.

Stages (--stage, comma-separated, or all) and what each writes under --out:
  label    labels.jsonl (labels.shardIofN.jsonl with --shard): {"id", "source", "text",
           "n_chars", "labels": {verification, backtracking, subgoal, backward: bool},
           "solves_problem": bool, "labeler"}, appended as documents finish.
  stats    stats.json: fraction of documents with each behavior, any, none, solving a
           problem, and (after pack) the same for the two sets; also printed as a table.
  select   selected.jsonl: rich documents (backtracking or verification first, then the
           other behaviors) paired one to one with the behavior-free document nearest in
           length (within --length-tolerance); as many pairs as the token budget needs (x
           --oversample). No pair at all stops the run here (exit 2), naming what to loosen.
  rewrite  rewrites.jsonl: each selected document as question / <think> / <answer>, labelled
           again; rewrites that lost or gained a behavior are reported and dropped.
  pack     rich.jsonl and minimal.jsonl ({"text", "id", "tokens"}), each cut to the token
           budget (the last document truncated to fit); pack.json with the figures.
"""
import argparse
import bisect
import glob
import hashlib
import json
import math
import os
import re
import sys

import common
import curate_text
from llm import ApiError, client, run_jobs
from llm import check as check_api, settings as api_settings
from study import BEHAVIORS

# ---------------------------------------------------------------------------------
# settings (the CLI flags)
# settings: one (flag, default, type, help) row each; `--help` lists them; the API flags are llm.py's
SETTINGS = [
    ("stage", "all", str, "label, stats, select, rewrite, pack (comma-separated) or all"),
    ("source", "open-web-math", str, "open-web-math, finemath, a hub dataset id, or a local .jsonl/.parquet/folder; "
                                     "comma-separated for several"),
    ("n_docs", 200_000, int, "documents to label, split evenly over the sources (the study: 200k)"),
    ("text_field", "text", str, "field holding the document text"),
    ("shuffle_buffer", 10_000, int, "hub streams: shuffle buffer for a random sample (0: stream order)"),
    ("seed", 0, int, "seed of the stream shuffle and of the selection order"),
    ("out", "data/curated", str, "output folder"),
    ("rewrite_model", None, str, "local Hugging Face model (folder, hub id, alias) that rewrites instead of --backend"),
    ("device", None, str, "device of --rewrite-model (default cuda if available)"),
    ("max_doc_chars", 12_000, int, "documents are cut to this many characters before an LLM reads them"),
    ("max_tokens", 5120, int, "longest rewrite in tokens (API max_tokens, or new tokens of --rewrite-model); the study's"),
    ("temperature", 0.0, float, "rewrite sampling temperature; the study's (relabel_pretrain_qa.py); labelling uses 0 too"),
    ("shard", "0/1", str, "label stage: this process takes documents i, i+n, i+2n, ... of the stream (i/n)"),
    ("limit", 0, int, "label at most this many new documents in this run (0: no limit)"),
    ("token_budget", 8_300_000, int, "tokens per set (the study: 8.3M)"),
    ("tokenizer", "llama-3.2-3b", str, "tokenizer that measures the budget (the model you will train): alias, hub id, "
                                       "folder, tiny"),
    ("oversample", 1.5, float, "select this many times the budget (rewrites get dropped, lengths change)"),
    ("chars_per_token", 4.0, float, "select: estimate of characters per token of the source text"),
    ("length_tolerance", 0.5, float, "select: largest length difference of a rich/minimal pair, in log2(characters) "
                                     "(0.5: a factor of 1.41)"),
]
SOURCES = {  # --source short names -> (hub dataset, config)
    "open-web-math": ("open-web-math/open-web-math", None),
    # the study's config: pretraining_analysis/relabel_pretrain.py:72 of kanishkg/cognitive-behaviors
    # (and relabel_olmo_pretrain_qa.py:136 of its TinyZero branch) loads finemath-4plus
    "finemath": ("HuggingFaceTB/finemath", "finemath-4plus"),
}
DEFAULT_MODEL = {"openai": "Qwen/Qwen2.5-32B-Instruct", "anthropic": "claude-sonnet-4-6"}  # 4-5: end of life 30 Nov 2026
STAGES = ("label", "stats", "select", "rewrite", "pack")

# ---------------------------------------------------------------------------------
# reading documents and our own append-only logs

def log(msg):
    print(f"[curate] {msg}", file=sys.stderr, flush=True)


def doc_id(prefix, text):
    """A stable id from the text (duplicates share one).

    >>> doc_id("owm", "x = 1")
    'owm-34bce5f775de97f5'
    """
    return f"{prefix}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]}"


def _need_datasets():
    try:
        import datasets
    except ImportError:
        raise common.DataError("streaming a Hugging Face dataset needs the `datasets` package: pip "
                               "install datasets (or pass a local .jsonl/.parquet file as --source)")
    return datasets


def _local_files(path):
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.jsonl")) + glob.glob(os.path.join(path, "*.parquet")))
        if not files:
            raise common.DataError(f"{path}: no .jsonl or .parquet files")
        return files
    return [path]


def _iter_local(path, field):
    """(id or None, text) of a local JSONL or parquet file, in order."""
    if path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise common.DataError("reading parquet needs pyarrow: pip install pyarrow") from None
        f = pq.ParquetFile(path)
        if field not in f.schema_arrow.names:
            raise common.DataError(f"{path}: no column {field!r} (columns: {', '.join(f.schema_arrow.names)}; --text-field?)")
        for batch in f.iter_batches(columns=[field]):
            for text in batch.column(0).to_pylist():
                yield None, text
        return
    for rec in common.read_jsonl(path, required=(field,)):
        yield rec.get("id"), rec[field]


def iter_source(name, n, field, shuffle_buffer, seed):
    """Yield (id, text) of the first n documents of one source (short name, hub id or path)."""
    if os.path.exists(name):
        prefix = os.path.splitext(os.path.basename(name.rstrip("/")))[0]
        stream = (d for f in _local_files(name) for d in _iter_local(f, field))
    else:
        datasets = _need_datasets()
        hub, config = SOURCES.get(name, (name, None))
        try:
            ds = datasets.load_dataset(hub, config, split="train", streaming=True)
        except Exception as e:   # offline, unknown name, no access: one line, not the hub's traceback
            raise common.DataError(f"--source {name}: could not open {hub}"
                                   f"{' (' + config + ')' if config else ''} on the hub: "
                                   f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        if shuffle_buffer:
            ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer)
        prefix = name.split("/")[-1]
        stream = ((None, r[field]) for r in ds)
    for i, (rid, text) in enumerate(stream):
        if i >= n:
            return
        if isinstance(text, str) and text.strip():
            yield (str(rid) if rid is not None else doc_id(prefix, text)), text


def iter_documents(args):
    """(index, source, id, text) over all sources, --n-docs split evenly between them."""
    names = [s.strip() for s in args.source.split(",") if s.strip()]
    index = 0
    for j, name in enumerate(names):
        n = args.n_docs // len(names) + (1 if j < args.n_docs % len(names) else 0)
        for did, text in iter_source(name, n, args.text_field, args.shuffle_buffer, args.seed):
            yield index, name, did, text
            index += 1


def repair_tail(path):
    """Cut a torn last line (a run killed mid-write) off an append-only JSONL file."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        end = pos = f.seek(0, 2)
        while pos > 0:
            step = min(1 << 16, pos)
            f.seek(pos - step)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                pos = pos - step + nl + 1
                break
            pos -= step
        if pos != end:
            f.truncate(pos)
            log(f"{path}: dropped a torn last line ({end - pos} bytes)")


def iter_jsonl(path, required=()):
    """Records of a JSONL file, streamed (files here may be gigabytes); a bad line, or a record
    without the `required` fields, is a DataError naming file and line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise common.DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
                lacks = [k for k in required if k not in rec] if isinstance(rec, dict) else ["(not a JSON object)"]
                if lacks or "labels" in required and not (isinstance(rec["labels"], dict) and set(BEHAVIORS) <= set(rec["labels"])):
                    raise common.DataError(f"{path}:{lineno}: record lacks {', '.join(lacks) or 'labels of ' + ', '.join(BEHAVIORS)}")
                yield rec


def read_log(path, required=()):
    """Whole records of one of our append-only logs: a torn last line (a killed run) is cut
    off, any other bad line is named by file and line."""
    repair_tail(path)
    return list(iter_jsonl(path, required)) if os.path.exists(path) else []


def label_files(out):
    return sorted(glob.glob(os.path.join(out, "labels*.jsonl")))


def iter_labels(out, fields=None, desc=None):
    """Labelled documents of every labels*.jsonl in out, each id once; `fields` keeps only
    those keys (select reads lengths first, texts later); `desc` shows a progress bar."""
    from tqdm import tqdm
    seen = set()
    bar = tqdm(desc=desc, unit="doc", disable=desc is None, leave=False, dynamic_ncols=True)
    required = ("id",) + tuple(fields or ("text", "n_chars", "labels", "solves_problem"))
    try:
        for path in label_files(out):
            for rec in iter_jsonl(path, required):
                bar.update(1)
                if rec["id"] not in seen:
                    seen.add(rec["id"])
                    yield {k: rec[k] for k in fields} if fields else rec
    finally:  # also on a bad line: the error message then starts a clean line
        bar.close()


def make_labeller(args, llm=None):
    """text -> ({behavior: bool}, solves_problem), and the labeller's name for records."""
    if args.backend == "rules":
        return curate_text.rule_labels, "rules"
    def label(text):
        system, user = curate_text.label_messages(text, args.max_doc_chars)
        return llm.chat(system, user, max_tokens=200, temperature=0.0, parse=curate_text.parse_label_reply)
    return label, f"{args.backend}:{llm.model}"


def parse_shard(s):
    """'i/n' -> (i, n).

    >>> parse_shard("2/4")
    (2, 4)
    """
    m = re.fullmatch(r"(\d+)/(\d+)", s.strip())
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"--shard wants i/n with 0 <= i < n, got {s!r}")
    return int(m.group(1)), int(m.group(2))


def stage_label(args, llm):
    """Label every document of this shard not yet in any labels*.jsonl; append as we go."""
    i, n = parse_shard(args.shard)
    path = os.path.join(args.out, "labels.jsonl" if n == 1 else f"labels.shard{i}of{n}.jsonl")
    repair_tail(path)
    done = {r["id"] for r in iter_labels(args.out, fields=("id",), desc="done")}
    label, name = make_labeller(args, llm)

    def todo():
        k = 0
        for index, source, did, text in iter_documents(args):
            if args.limit and k >= args.limit:
                return
            if index % n != i or did in done:
                continue
            done.add(did)  # a document repeated in the stream is labelled once
            k += 1
            yield {"id": did, "source": source, "text": text}

    def work(d):
        labels, solves = label(d["text"])
        return {**d, "n_chars": len(d["text"]), "labels": labels, "solves_problem": solves, "labeler": name}
    local = all(os.path.exists(x.strip()) for x in args.source.split(","))
    total = None if local else -(-args.n_docs // n)  # a local file's length is unknown up front
    if args.limit:
        total = min(total or args.limit, args.limit)
    conc = 1 if args.backend == "rules" else args.concurrency
    new, failed = run_jobs(todo(), work, path, conc, desc="label", total=total,
                           flush_every=256 if conc == 1 else 1, log=log, stop=llm and llm.stop)
    if not done:
        raise common.DataError(f"--source {args.source}: no documents (no non-empty {args.text_field!r} field)")
    log(f"label: {new} new documents in {path}, {len(done) - failed} labelled in all"
        + (f", {failed} failed (rerun to retry)" if failed else ""))
    return new, failed


# ---------------------------------------------------------------------------------
# stats

def frequencies(records):
    """Fraction of records showing each behavior, any behavior, none.

    >>> f = frequencies([{"labels": {"verification": True, "backtracking": False, "subgoal": False,
    ...                   "backward": False}}, {"labels": dict.fromkeys(BEHAVIORS, False)}])
    >>> f["verification"], f["any"], f["none"]
    (0.5, 0.5, 0.5)
    """
    n = len(records)
    counts = dict.fromkeys([*BEHAVIORS, "any"], 0)
    for r in records:
        for k in BEHAVIORS:
            counts[k] += bool(r["labels"][k])
        counts["any"] += any(r["labels"][k] for k in BEHAVIORS)
    freq = {k: (v / n if n else 0.0) for k, v in counts.items()}
    freq["none"] = 1.0 - freq["any"] if n else 0.0
    return freq


def corpus_stats(out):
    """stats.json contents: corpus frequencies, and the packed sets' once pack has run."""
    recs = list(iter_labels(out, fields=("labels", "solves_problem"), desc="stats"))
    stats = {"n_docs": len(recs), "frequency": frequencies(recs),
             "solves_problem": sum(r["solves_problem"] for r in recs) / len(recs) if recs else 0.0,
             "sets": {}}
    pack_path = os.path.join(out, "pack.json")
    if os.path.exists(pack_path):
        with open(pack_path) as f:
            pack = json.load(f)
        stats["sets"] = {k: {x: pack[k][x] for x in ("n_docs", "tokens", "frequency")}
                         for k in ("rich", "minimal") if k in pack}
    return stats


def stats_table(stats):
    """The printed table: one row per behavior, a column per population."""
    cols = [("corpus", stats["n_docs"], stats["frequency"])]
    cols += [(k, v["n_docs"], v["frequency"]) for k, v in stats["sets"].items()]
    lines = [f"{'':14s}" + "".join(f"{name:>12s}" for name, _, _ in cols),
             f"{'documents':14s}" + "".join(f"{n:12d}" for _, n, _ in cols)]
    for k in [*BEHAVIORS, "any", "none"]:
        lines.append(f"{k:14s}" + "".join(f"{f[k]:12.3f}" for _, _, f in cols))
    lines.append(f"{'solves_problem':14s}{stats['solves_problem']:12.3f}")
    return "\n".join(lines)


def stage_stats(args, llm=None):
    stats = corpus_stats(args.out)
    common.write_json(os.path.join(args.out, "stats.json"), stats)
    print(stats_table(stats), flush=True)
    return stats


# ---------------------------------------------------------------------------------
# select

def length_gap(a, b):
    """How far apart two document lengths are, in log2(characters).

    >>> length_gap(1000, 1400) < 0.5 < length_gap(1000, 1500)
    True
    """
    return abs(math.log2(max(a, 1) / max(b, 1)))


def nearest(pool, n_chars):
    """Index of the entry of pool (sorted tuples, length first) nearest n_chars, or None."""
    i = bisect.bisect_left(pool, (n_chars,))
    return min((j for j in (i - 1, i) if 0 <= j < len(pool)), key=lambda j: length_gap(pool[j][0], n_chars), default=None)


def stable_rank(key, seed):
    """A seeded, order-free shuffle key."""
    return hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()


def rich_priority(labels):
    """0: backtracking or verification, 1: only other behaviors, None: no behavior.

    >>> rich_priority({"verification": False, "backtracking": True, "subgoal": False, "backward": False})
    0
    """
    if labels["backtracking"] or labels["verification"]:
        return 0
    return 1 if any(labels[k] for k in BEHAVIORS) else None


def select_pairs(docs, token_target, chars_per_token, tolerance, seed):
    """Pair rich documents (in priority order) each with the unused behavior-free document
    nearest in length, if within tolerance (log2 characters), until the rich side's estimated
    tokens reach token_target. Nearest rather than the same fixed bucket: 1440 and 1460
    characters match whatever the bucket edges, so a few hundred documents give pairs.
    docs: [{"id", "n_chars", "labels"}]. Returns ([(rich_id, minimal_id)], n_unmatched).

    >>> no, v = dict.fromkeys(BEHAVIORS, False), dict(dict.fromkeys(BEHAVIORS, False), verification=True)
    >>> docs = [dict(id="a", n_chars=100, labels=v), dict(id="b", n_chars=105, labels=no),
    ...         dict(id="c", n_chars=900, labels=v), dict(id="d", n_chars=30, labels=no),
    ...         dict(id="e", n_chars=1440, labels=v), dict(id="f", n_chars=1460, labels=no)]
    >>> select_pairs(docs, 1e9, 4.0, 0.5, 0)
    ([('e', 'f'), ('a', 'b')], 1)
    """
    rich = sorted((d for d in docs if rich_priority(d["labels"]) is not None),
                  key=lambda d: (rich_priority(d["labels"]), stable_rank(d["id"], seed)))
    pool = sorted((d["n_chars"], stable_rank(d["id"], seed), d["id"]) for d in docs if rich_priority(d["labels"]) is None)
    pairs, unmatched, tokens = [], 0, 0.0
    for d in rich:
        if tokens >= token_target:
            break
        j = nearest(pool, d["n_chars"])
        if j is None or length_gap(pool[j][0], d["n_chars"]) > tolerance:
            unmatched += 1
            continue
        pairs.append((d["id"], pool.pop(j)[2]))
        tokens += d["n_chars"] / chars_per_token
    return pairs, unmatched


def no_pairs_reason(docs, tolerance):
    """Why select_pairs found no pair, and which setting to loosen (one line)."""
    rich = [d["n_chars"] for d in docs if rich_priority(d["labels"]) is not None]
    pool = sorted((d["n_chars"],) for d in docs if rich_priority(d["labels"]) is None)
    if not rich or not pool:
        return (f"select: no pairs: none of the {len(docs)} labelled documents {'shows a behavior' if not rich else 'is behavior-free'}"
                "; label more documents (--n-docs, --source)")
    need = min(length_gap(pool[nearest(pool, n)][0], n) for n in rich)
    return (f"select: no pairs: no rich document (of {len(rich)}) has a behavior-free one (of {len(pool)}) within "
            f"--length-tolerance {tolerance:g} (lengths within a factor of {2 ** tolerance:.2f}); the closest "
            f"pair needs --length-tolerance {math.ceil(need * 100) / 100:g}, or label more documents (--n-docs)")


def stage_select(args, llm=None):
    """selected.jsonl: the rich/minimal pairs with their texts, in pair order."""
    docs = list(iter_labels(args.out, fields=("id", "n_chars", "labels"), desc="select: lengths"))
    if not docs:
        raise common.DataError(f"select: no labels in {args.out}; run --stage label first")
    pairs, unmatched = select_pairs(docs, args.token_budget * args.oversample,
                                    args.chars_per_token, args.length_tolerance, args.seed)
    if not pairs:  # rewriting and packing nothing would only fail later, less clearly
        raise common.DataError(no_pairs_reason(docs, args.length_tolerance))
    where = {}
    for k, (r, m) in enumerate(pairs):
        where[r], where[m] = ("rich", k), ("minimal", k)
    chosen = {}
    for rec in iter_labels(args.out, desc="select: texts"):
        if rec["id"] in where:
            chosen[rec["id"]] = rec
    out = []
    for k, (r, m) in enumerate(pairs):
        for set_name, did in (("rich", r), ("minimal", m)):
            rec = chosen[did]
            out.append({"id": did, "set": set_name, "pair": k, "n_chars": rec["n_chars"],
                        "labels": rec["labels"], "solves_problem": rec["solves_problem"],
                        "text": rec["text"]})
    common.write_jsonl(os.path.join(args.out, "selected.jsonl"), out)
    n_rich_cand = sum(rich_priority(d["labels"]) is not None for d in docs)
    first = sum(rich_priority(chosen[r]["labels"]) == 0 for r, _ in pairs)
    summary = {"pairs": len(pairs), "rich_candidates": n_rich_cand,
               "minimal_candidates": len(docs) - n_rich_cand, "rich_with_backtracking_or_verification": first,
               "rich_without_length_match": unmatched,
               "est_tokens": sum(chosen[r]["n_chars"] for r, _ in pairs) / args.chars_per_token}
    common.write_json(os.path.join(args.out, "select.json"), summary)
    log(f"select: {len(pairs)} pairs ({first} rich documents with backtracking or verification; "
        f"{unmatched} rich documents had no behavior-free partner of their length) -> selected.jsonl")
    if args.token_budget * args.oversample > summary["est_tokens"]:
        log(f"select: only about {summary['est_tokens']:.0f} tokens of rich text where "
            f"{args.token_budget * args.oversample:.0f} were wanted (--token-budget x --oversample); "
            f"label more documents (--n-docs) if pack falls short of the budget")
    return summary


# ---------------------------------------------------------------------------------
# rewrite

class HFRewriter:
    """Rewrites with a local causal LM through transformers (greedy, one document at a time)."""

    def __init__(self, name, device, max_new_tokens):
        import torch
        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tok = common.load_tokenizer(name)
        self.model = common.load_model(name, device=self.device).eval()
        self.max_new_tokens, self.name = max_new_tokens, name

    def __call__(self, system, user):
        tok = self.tok
        if tok.chat_template:
            msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False)
        else:
            ids = tok(f"{system}\n\n{user}\n\n", add_special_tokens=True)["input_ids"]
        room = getattr(self.model.config, "max_position_embeddings", 4096) - self.max_new_tokens
        ids = list(ids)[-max(room, 1):]
        x = self.torch.tensor([ids], device=self.device)
        with self.torch.no_grad():
            y = self.model.generate(x, attention_mask=self.torch.ones_like(x), do_sample=False,
                                    max_new_tokens=self.max_new_tokens, pad_token_id=tok.pad_token_id)
        return tok.decode(y[0, len(ids):], skip_special_tokens=True)


def make_rewriter(args, llm):
    """(system, user) -> reply text, or None for the rules backend; and its name."""
    if args.rewrite_model:
        r = HFRewriter(args.rewrite_model, args.device, args.max_tokens)
        return r, f"hf:{args.rewrite_model}"
    if args.backend == "rules":
        return None, "rules"
    return (lambda s, u: llm.chat(s, u, max_tokens=args.max_tokens, temperature=args.temperature),
            f"{args.backend}:{llm.model}")


def rewrite_one(item, rewriter, name, labeller, max_chars):
    """One selected document -> its rewrite record (kept or dropped, with the reason)."""
    if rewriter is None:
        parts = curate_text.frame_document(item["text"])
    else:
        system, user = curate_text.rewrite_messages(item["text"], item["set"], item["labels"], max_chars)
        parts = curate_text.parse_rewrite_reply(rewriter(system, user))
    rec = {"id": item["id"], "set": item["set"], "pair": item["pair"], "source_labels": item["labels"],
           "rewriter": name, "text": None, "labels": None, "kept": False, "lost": [], "gained": []}
    if parts is None:
        return dict(rec, reason="unparseable")
    q, t, a = parts
    text = curate_text.FRAME.format(q=q, t=t, a=a)
    labels, _ = labeller(text)
    keep, lost, gained = curate_text.rewrite_verdict(item["labels"], labels)
    return dict(rec, text=text, labels=labels, kept=keep, lost=lost, gained=gained,
                reason="ok" if keep else "behaviors changed")


def rewrite_report(recs):
    """Per set: kept, dropped as unparseable, dropped for lost / gained behaviors."""
    rep = {}
    for s in ("rich", "minimal"):
        rs = [r for r in recs if r["set"] == s]
        rep[s] = {"rewritten": len(rs), "kept": sum(r["kept"] for r in rs),
                  "unparseable": sum(r["reason"] == "unparseable" for r in rs),
                  "lost": {k: sum(k in r["lost"] for r in rs) for k in BEHAVIORS},
                  "gained": {k: sum(k in r["gained"] for r in rs) for k in BEHAVIORS}}
    return rep


SELECT_FIELDS = ("id", "set", "pair", "text", "labels")                     # a selected.jsonl record
REWRITE_FIELDS = ("id", "set", "pair", "text", "kept", "reason", "lost", "gained")  # a rewrites.jsonl record


def stage_rewrite(args, llm):
    """rewrites.jsonl: one record per selected document (resumes by set and id)."""
    sel_path, path = os.path.join(args.out, "selected.jsonl"), os.path.join(args.out, "rewrites.jsonl")
    if not os.path.exists(sel_path):
        raise common.DataError(f"{sel_path} is missing; run --stage select first")
    done = {(r["set"], r["id"]) for r in read_log(path, REWRITE_FIELDS)}
    todo = [r for r in iter_jsonl(sel_path, SELECT_FIELDS) if (r["set"], r["id"]) not in done]
    labeller, _ = make_labeller(args, llm)
    rewriter, name = make_rewriter(args, llm)
    conc = 1 if (rewriter is None or args.rewrite_model) else args.concurrency
    run_jobs(todo, lambda it: rewrite_one(it, rewriter, name, labeller, args.max_doc_chars),
             path, conc, desc="rewrite", total=len(todo), flush_every=64 if conc == 1 else 1, log=log,
             stop=llm and llm.stop)
    selected = {(r["set"], r["id"]) for r in iter_jsonl(sel_path)}
    recs = [r for r in read_log(path, REWRITE_FIELDS) if (r["set"], r["id"]) in selected]
    rep = rewrite_report(recs)
    common.write_json(os.path.join(args.out, "rewrite.json"), rep)
    for s, v in rep.items():
        lost = ", ".join(f"{k} {n}" for k, n in v["lost"].items() if n) or "none"
        gained = ", ".join(f"{k} {n}" for k, n in v["gained"].items() if n) or "none"
        log(f"rewrite {s}: {v['kept']}/{v['rewritten']} kept; dropped: {v['unparseable']} unparseable, "
            f"lost [{lost}], gained [{gained}]")
    return rep


# ---------------------------------------------------------------------------------
# pack

def cut_to_budget(lengths, budget):
    """How many documents to take, and the tokens of the last one, so that the total is the
    budget: whole documents while they fit, then the next one truncated to the remainder.

    >>> cut_to_budget([5, 5, 5], 12)
    (3, 2)
    >>> cut_to_budget([5, 5], 100)
    (2, 5)
    >>> cut_to_budget([5, 5], 10)
    (2, 5)
    """
    total = 0
    for k, n in enumerate(lengths):
        if total + n >= budget:
            return k + 1, budget - total
        total += n
    return len(lengths), (lengths[-1] if lengths else 0)


def pack_set(recs, tok, budget):
    """{"text", "id", "tokens"} records holding `budget` tokens of recs (in their order)."""
    from tqdm import tqdm
    lengths, ids = [], []
    for k in tqdm(range(0, len(recs), 256), desc="tokens", unit="batch", leave=False):
        enc = tok([r["text"] for r in recs[k:k + 256]], add_special_tokens=False)["input_ids"]
        ids += enc
        lengths += [len(e) for e in enc]
    n, last = cut_to_budget(lengths, budget)
    out = [{"text": r["text"], "id": r["id"], "tokens": ln} for r, ln in zip(recs[:n], lengths[:n])]
    if out and last < lengths[n - 1]:
        text = tok.decode(ids[n - 1][:last])
        out[-1] = {"text": text, "id": recs[n - 1]["id"],
                   "tokens": len(tok(text, add_special_tokens=False)["input_ids"]), "truncated": True}
    return out


def stage_pack(args, llm=None):
    """rich.jsonl, minimal.jsonl and pack.json; then stats.json with the sets filled in."""
    path = os.path.join(args.out, "rewrites.jsonl")
    if not os.path.exists(path):
        raise common.DataError(f"{path} is missing; run --stage rewrite first")
    selected = {(r["set"], r["id"]) for r in iter_jsonl(os.path.join(args.out, "selected.jsonl"), SELECT_FIELDS)}
    kept = sorted((r for r in read_log(path, REWRITE_FIELDS)
                   if r["kept"] and (r["set"], r["id"]) in selected), key=lambda r: r["pair"])
    tok = common.load_tokenizer(args.tokenizer)
    summary = {}
    for s in ("rich", "minimal"):
        recs = [r for r in kept if r["set"] == s]
        packed = pack_set(recs, tok, args.token_budget)
        common.write_jsonl(os.path.join(args.out, f"{s}.jsonl"), packed)
        labels = {r["id"]: r for r in recs}
        tokens = sum(r["tokens"] for r in packed)
        summary[s] = {"n_docs": len(packed), "tokens": tokens, "budget": args.token_budget,
                      "frequency": frequencies([labels[r["id"]] for r in packed]),
                      "truncated_last": bool(packed and packed[-1].get("truncated"))}
        log(f"pack {s}: {len(packed)} documents, {tokens} tokens (budget {args.token_budget})")
        if tokens < args.token_budget - 1:
            log(f"pack {s}: short of the budget by {args.token_budget - tokens} tokens: label "
                f"more documents or raise --oversample")
    summary["tokenizer"] = args.tokenizer
    common.write_json(os.path.join(args.out, "pack.json"), summary)
    stage_stats(args)
    return summary


# ---------------------------------------------------------------------------------
# command line

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_settings(ap, SETTINGS)
    # the API flags (llm.py's); 16 in flight: labelling reads 200k documents, and a vllm server
    # serves many requests at once
    common.add_settings(ap, api_settings("rules", "labels and rewrites", DEFAULT_MODEL, concurrency=16))
    args = ap.parse_args(argv)
    args.stages = list(STAGES) if args.stage == "all" else [s.strip() for s in args.stage.split(",")]
    bad = [s for s in args.stages if s not in STAGES]
    if bad:
        ap.error(f"unknown stage {bad[0]!r}; choose from {', '.join(STAGES)} or all")
    try:
        shard = parse_shard(args.shard)
    except ValueError as e:
        ap.error(str(e))
    if shard[1] > 1 and args.stages != ["label"]:
        ap.error("--shard is for --stage label only; run the other stages once, after every shard")
    a = args
    api = check_api(a, "rules")  # the API flags' problem, if any
    for ok, msg in [
        (api is None, api),
        (min(a.n_docs, a.max_doc_chars, a.max_tokens, a.token_budget) > 0,
         "--n-docs, --max-doc-chars, --max-tokens, --token-budget must be > 0"),
        (min(a.shuffle_buffer, a.limit) >= 0, "--shuffle-buffer, --limit must be >= 0"),
        (a.temperature >= 0, "--temperature must be >= 0"),
        (a.oversample >= 1 and a.chars_per_token > 0 and a.length_tolerance >= 0,
         "--oversample must be >= 1, --chars-per-token > 0, --length-tolerance >= 0"),
    ]:
        if not ok:
            ap.error(msg)
    return args


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    common.remove_orphans(args.out)   # temporary files a kill left before their rename
    common.write_json(os.path.join(args.out, "config.json"), vars(args))  # no keys in here
    run = {"label": stage_label, "stats": stage_stats, "select": stage_select,
           "rewrite": stage_rewrite, "pack": stage_pack}
    try:
        llm = None if args.backend == "rules" else client(args, DEFAULT_MODEL, log=log)
        for s in args.stages:
            run[s](args, llm)
    except (ApiError, common.DataError) as e:  # one line, exit 2: a refused request, bad or missing data
        why = "the API refused a request (not retried): " if isinstance(e, ApiError) else ""
        print(f"curate_pretrain: error: {why}{e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
