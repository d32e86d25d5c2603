"""curate_pretrain.py: rule labels against the fixture's known labels, the offline pipeline end
to end, resume and sharding of the label stage (with a real kill), both LLM wire formats
against a local server (with 429/500 and unreadable replies), the HF rewriter's plumbing,
and continued pretraining of the tiny model on the rich set with sft.py."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import common
import curate_pretrain as cp
import curate_text
import llm
import study
from conftest import REPO

FIXTURE = os.path.join(REPO, "tests", "fixtures", "math_docs.jsonl")
DOCS = common.read_jsonl(FIXTURE, required=("id", "text", "labels", "solves_problem"))
SECRET = "sk-test-DO-NOT-LEAK-7f3a9c"
BUDGET = 1200  # tokens of the tiny tokenizer per set


def run(out, *flags, rc=0):
    got = cp.main(["--source", FIXTURE, "--out", str(out), "--tokenizer", "tiny", "--token-budget",
                   str(BUDGET), "--length-tolerance", "1.0", *flags])
    assert got == rc


def ids_in(out):
    return [r["id"] for p in cp.label_files(str(out)) for r in common.read_jsonl(p)]


def all_text(out):
    return "".join(open(p, encoding="utf-8").read() for p in glob.glob(os.path.join(str(out), "*")))


# ---------------------------------------------------------------- rules vs the fixture

def agreement():
    """Per label: fraction of fixture documents where the rules give the known label."""
    hits = dict.fromkeys([*study.BEHAVIORS, "solves_problem"], 0)
    for d in DOCS:
        labels, solves = curate_text.rule_labels(d["text"])
        for k in study.BEHAVIORS:
            hits[k] += labels[k] == d["labels"][k]
        hits["solves_problem"] += solves == d["solves_problem"]
    return {k: v / len(DOCS) for k, v in hits.items()}


def test_fixture_covers_every_behavior_and_none():
    assert 45 <= len(DOCS) <= 60 and len({d["id"] for d in DOCS}) == len(DOCS)
    for k in study.BEHAVIORS:
        assert sum(d["labels"][k] for d in DOCS) >= 5, k
    assert sum(not any(d["labels"].values()) for d in DOCS) >= 10
    assert sum(not d["solves_problem"] for d in DOCS) >= 5


def test_rule_labels_agree_with_fixture():
    acc = agreement()
    print("rules vs fixture labels:", {k: round(v, 3) for k, v in acc.items()})
    assert all(v >= 0.95 for v in acc.values()), acc


def test_docstring_examples():
    import doctest
    assert doctest.testmod(cp).failed == 0
    assert doctest.testmod(curate_text).failed == 0


def test_frame_keeps_the_documents_words():
    for d in DOCS:
        q, t, a = curate_text.frame_document(d["text"])
        assert " ".join(f"{q} {t} {a}".split()) == " ".join(d["text"].split())


# ---------------------------------------------------------------- offline end to end

@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """The whole offline pipeline on the fixture, once for the tests that read its output."""
    out = tmp_path_factory.mktemp("curate")
    run(out, "--backend", "rules")
    return out


def test_offline_end_to_end(offline, capsys):
    tmp_path = offline
    stats = json.load(open(tmp_path / "stats.json"))
    # the stats are the fixture's known frequencies, up to the rules' disagreements (<= 1 doc each)
    n = len(DOCS)
    assert stats["n_docs"] == n
    for k in study.BEHAVIORS:
        known = sum(d["labels"][k] for d in DOCS) / n
        assert abs(stats["frequency"][k] - known) <= 1 / n + 1e-9, k
    known_none = sum(not any(d["labels"].values()) for d in DOCS) / n
    assert abs(stats["frequency"]["none"] - known_none) <= 1 / n + 1e-9
    assert abs(stats["solves_problem"] - sum(d["solves_problem"] for d in DOCS) / n) <= 1 / n + 1e-9
    run(tmp_path, "--stage", "stats")
    assert "verification" in capsys.readouterr().out  # the printed table

    tok = common.load_tokenizer("tiny")
    known = {d["id"]: d for d in DOCS}
    for s in ("rich", "minimal"):
        recs = common.read_jsonl(tmp_path / f"{s}.jsonl", required=("text",))
        lens = [len(tok(r["text"], add_special_tokens=False)["input_ids"]) for r in recs]
        assert abs(sum(lens) - BUDGET) <= max(lens), (s, sum(lens))  # within one document
        assert stats["sets"][s]["n_docs"] == len(recs)
        for r in recs:  # the rich set has behaviors, the control none (by the fixture's labels)
            assert any(known[r["id"]]["labels"].values()) == (s == "rich"), r["id"]
    # rich documents with backtracking or verification come first
    sel = common.read_jsonl(tmp_path / "selected.jsonl")
    rich = [r for r in sel if r["set"] == "rich"]
    prio = [cp.rich_priority(r["labels"]) for r in rich]
    assert prio == sorted(prio) and prio[0] == 0
    # pairs are within the length tolerance
    by_pair = {}
    for r in sel:
        by_pair.setdefault(r["pair"], []).append(r["n_chars"])
    assert all(len(v) == 2 and cp.length_gap(*v) <= 1.0 for v in by_pair.values())

    # a second run redoes nothing and duplicates nothing
    before = {p: open(p).read() for p in glob.glob(str(tmp_path / "*.jsonl"))}
    run(tmp_path, "--backend", "rules")
    after = {p: open(p).read() for p in glob.glob(str(tmp_path / "*.jsonl"))}
    assert before == after


def test_label_limit_resume_and_torn_line(tmp_path):
    run(tmp_path, "--stage", "label", "--limit", "20")
    assert len(ids_in(tmp_path)) == 20
    with open(tmp_path / "labels.jsonl", "a") as f:
        f.write('{"id": "fx-99", "text": "cut sho')  # killed mid-write
    run(tmp_path, "--stage", "label", "--limit", "15")
    run(tmp_path, "--stage", "label")
    ids = ids_in(tmp_path)
    assert len(ids) == len(set(ids)) == len(DOCS) and set(ids) == {d["id"] for d in DOCS}


def test_shards_split_the_stream(tmp_path):
    for i in range(3):
        run(tmp_path, "--stage", "label", "--shard", f"{i}/3")
    files = cp.label_files(str(tmp_path))
    assert len(files) == 3
    parts = [{r["id"] for r in common.read_jsonl(p)} for p in files]
    assert sum(map(len, parts)) == len(DOCS) and set().union(*parts) == {d["id"] for d in DOCS}
    run(tmp_path, "--stage", "stats")
    assert json.load(open(tmp_path / "stats.json"))["n_docs"] == len(DOCS)
    with pytest.raises(SystemExit):
        cp.parse_args(["--shard", "0/2", "--stage", "all"])


def test_missing_datasets_package_is_explained(tmp_path, monkeypatch, capsys):
    import builtins
    real_import = builtins.__import__

    def no_datasets(name, *a, **k):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_datasets)
    assert cp.main(["--stage", "label", "--source", "open-web-math", "--n-docs", "3", "--out", str(tmp_path)]) == 2
    assert "pip install datasets" in capsys.readouterr().err


def test_hub_sources_are_the_studys_corpora_and_configs(monkeypatch):
    """finemath is read with the config the study labelled: finemath-4plus
    (pretraining_analysis/relabel_pretrain.py:72 of kanishkg/cognitive-behaviors)."""
    calls = []

    class Stream(list):
        def shuffle(self, seed, buffer_size):
            return self

    class FakeDatasets:
        @staticmethod
        def load_dataset(hub, config, split, streaming):
            calls.append((hub, config, split, streaming))
            return Stream([{"text": f"document {i} of {hub}"} for i in range(5)])
    monkeypatch.setattr(cp, "_need_datasets", lambda: FakeDatasets)
    got = [list(cp.iter_source(name, 3, "text", 100, 0)) for name in ("finemath", "open-web-math")]
    assert calls == [("HuggingFaceTB/finemath", "finemath-4plus", "train", True),
                     ("open-web-math/open-web-math", None, "train", True)]
    assert [len(g) for g in got] == [3, 3] and got[0][0][1] == "document 0 of HuggingFaceTB/finemath"


# ---------------------------------------------------------------- a fake LLM on 127.0.0.1

class FakeLLM:
    """Speaks chat completions (POST /v1/chat/completions) or the Anthropic Messages API
    (POST /v1/messages). It labels with the rules and rewrites by framing the document's own
    text; for the minimal set it slips a check into every other rewrite (to be dropped).
    `script` lists the first replies: an HTTP status, or "garbage" (200, unreadable)."""

    def __init__(self, kind, script=(), delay=0.0):
        self.kind, self.script, self.delay = kind, list(script), delay
        self.calls, self.lock = [], threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                status, reply = fake.answer(self.path, self.headers, body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                if status == 429:
                    self.send_header("retry-after", "0")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{port}" + ("/v1" if kind == "openai" else "")

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def error(self, status, msg):
        if self.kind == "anthropic":
            return status, {"type": "error", "error": {"type": "api_error", "message": msg}}
        return status, {"error": {"message": msg, "type": "server_error", "code": status}}

    def answer(self, path, headers, body):
        time.sleep(self.delay)
        if self.kind == "openai":
            ok = path == "/v1/chat/completions" and headers.get("authorization") == f"Bearer {SECRET}"
            system, user = body["messages"][0]["content"], body["messages"][1]["content"]
        else:
            key = headers.get("x-api-key") or (headers.get("authorization") or "").removeprefix("Bearer ")
            ok = path == "/v1/messages" and key == SECRET and headers.get("anthropic-version") == llm.ANTHROPIC_VERSION
            system, user = "".join(b["text"] for b in body["system"]), body["messages"][0]["content"]
        if not ok:  # like the real APIs, echo part of what was sent
            return self.error(401, f"invalid x-api-key / bearer {headers.get('x-api-key') or headers.get('authorization')}")
        with self.lock:
            self.calls.append(body)
            step = self.script.pop(0) if self.script else None
        if isinstance(step, int):
            return self.error(step, "rate limited" if step == 429 else "internal error")
        doc = re.search(r"<document>\n(.*)\n</document>", user, re.S).group(1)
        if step == "garbage":
            text = "I am not sure."
        elif "<question>" in system:
            q, t, a = curate_text.frame_document(doc)
            if user.startswith(curate_text.AVOID) and len(doc) % 2:
                t += " Let's check this once more."
            text = f"<question>{q or '?'}</question>\n<think>{t or '...'}</think>\n<answer>{a or '?'}</answer>"
        else:
            labels, solves = curate_text.rule_labels(doc)
            text = json.dumps({**labels, "solves_problem": solves})
        if self.kind == "anthropic":
            return 200, {"id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                         "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                         "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 10}}
        return 200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}


@pytest.fixture
def fake(request, monkeypatch):
    kind = request.param
    monkeypatch.setenv("OPENAI_API_KEY" if kind == "openai" else "ANTHROPIC_API_KEY", SECRET)
    server = FakeLLM(kind, script=[429, 500, "garbage"])
    yield server
    server.close()


@pytest.mark.parametrize("fake", ["openai", "anthropic"], indirect=True)
def test_llm_backends_wire_format(tmp_path, fake, capfd):
    api = ["--backend", fake.kind, "--base-url", fake.base, "--retry-base", "0.01", "--concurrency", "4"]
    run(tmp_path, "--stage", "label,stats,select,rewrite", *api)
    assert fake.calls[0]["model"] == cp.DEFAULT_MODEL[fake.kind]
    assert fake.calls[0]["temperature"] == 0.0  # labelling
    ids = ids_in(tmp_path)
    assert sorted(ids) == sorted(d["id"] for d in DOCS)  # the 429, 500 and garbage were retried
    got = {r["id"]: r["labels"] for r in common.read_jsonl(tmp_path / "labels.jsonl")}
    assert got == {d["id"]: curate_text.rule_labels(d["text"])[0] for d in DOCS}
    rew = common.read_jsonl(tmp_path / "rewrites.jsonl")
    sel = common.read_jsonl(tmp_path / "selected.jsonl")
    assert sorted((r["set"], r["id"]) for r in rew) == sorted((r["set"], r["id"]) for r in sel)
    for r in rew:  # rich rewrites keep their behaviors; minimal ones that gained a check are dropped
        assert r["kept"] == (not r["lost"] and not r["gained"])
        assert r["text"].startswith("Question: ") and "<think>" in r["text"]
        if r["set"] == "minimal" and r["gained"]:
            assert r["gained"] == ["verification"] and not r["kept"]
    report = json.load(open(tmp_path / "rewrite.json"))
    assert report["rich"]["kept"] == report["rich"]["rewritten"] > 0
    dropped = sum(r["set"] == "minimal" and not r["kept"] for r in rew)
    assert dropped > 0 and report["minimal"]["gained"]["verification"] == dropped
    err = capfd.readouterr()
    assert "HTTP 429" in err.err and "HTTP 500" in err.err and "unreadable reply" in err.err
    assert SECRET not in err.out + err.err and SECRET not in all_text(tmp_path)


@pytest.mark.parametrize("fake", ["anthropic"], indirect=True)
def test_refused_key_stops_without_leaking(tmp_path, fake, monkeypatch, capfd):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET + "-wrong")
    run(tmp_path, "--stage", "label", "--backend", "anthropic", "--base-url", fake.base, rc=2)
    err = capfd.readouterr()
    assert "HTTP 401" in err.err and SECRET[:6] not in err.out + err.err  # the server echoed it


def test_killed_label_run_neither_loses_nor_duplicates(tmp_path, monkeypatch):
    server = FakeLLM("openai", delay=0.03)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    flags = ["--stage", "label", "--source", FIXTURE, "--backend", "openai", "--base-url", server.base,
             "--concurrency", "2", "--out", str(tmp_path)]
    path = tmp_path / "labels.jsonl"
    try:
        with open(tmp_path / "err.txt", "w") as err:
            p = subprocess.Popen([sys.executable, os.path.join(REPO, "curate_pretrain.py"), *flags],
                                 stdout=err, stderr=err, env=dict(os.environ, PYTHONPATH=REPO))
            t0 = time.time()
            while time.time() - t0 < 30 and p.poll() is None:
                if path.exists() and path.read_text().count("\n") >= 10:
                    break
                time.sleep(0.02)
            assert p.poll() is None, "the run finished before it could be killed"
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        partial = path.read_text().count("\n")
        assert 10 <= partial < len(DOCS)
        with open(path, "a") as f:
            f.write('{"id": "fx-01", "source": "x", "te')  # as if killed mid-write
        assert cp.main(flags) == 0  # the restart
    finally:
        server.close()
    ids = ids_in(tmp_path)
    assert len(ids) == len(set(ids)) == len(DOCS) and set(ids) == {d["id"] for d in DOCS}
    assert len(server.calls) < 2 * len(DOCS)  # the finished labels were not redone
    assert SECRET not in (tmp_path / "err.txt").read_text()


# ---------------------------------------------------------------- HF rewriter, sft.py

def test_hf_rewriter_plumbing(tmp_path):
    """The tiny model writes garbage: every rewrite must be reported and dropped."""
    run(tmp_path, "--stage", "label,select", "--backend", "rules", "--token-budget", "40")
    sel = common.read_jsonl(tmp_path / "selected.jsonl")
    assert len(sel) == 2
    run(tmp_path, "--stage", "rewrite", "--backend", "rules", "--rewrite-model", "tiny",
        "--max-tokens", "8", "--device", "cpu")
    rew = common.read_jsonl(tmp_path / "rewrites.jsonl")
    assert len(rew) == len(sel) and all(r["rewriter"] == "hf:tiny" and not r["kept"] for r in rew)
    assert all(r["reason"] == "unparseable" for r in rew)


SFT = os.path.join(REPO, "sft.py")


@pytest.mark.skipif(not os.path.exists(SFT), reason="sft.py is not in this checkout yet")
def test_sft_continues_pretraining_on_rich_set(offline, tmp_path):
    data, out = offline, tmp_path / "cpt"
    cmd = [sys.executable, SFT, "--model", "tiny", "--data", str(data / "rich.jsonl"), "--out", str(out),
           "--max-steps", "8", "--batch-size", "4", "--micro-batch", "4", "--max-len", "128",
           "--overlong", "truncate", "--lr", "3e-3", "--warmup-frac", "0", "--eval-every", "0",
           "--device", "cpu", "--no-save"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"))  # 2 busy cores
    assert r.returncode == 0, r.stderr[-2000:]
    losses = [m["loss"] for m in common.read_jsonl(out / "metrics.jsonl") if "loss" in m]
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.3, losses


# ---------------------------------------------------------------- select on small corpora, data problems

FILL = "The sum of the numbers is computed term by term and written down. "  # no behavior
RICH = "We verify the result by plugging it back in. "                      # verification


def _docs(path, lengths):
    """A corpus of (kind, n_chars) documents: kind "rich" or "plain"."""
    with open(path, "w") as f:
        for i, (kind, n) in enumerate(lengths):
            text = ((RICH if kind == "rich" else "") + FILL * 200)[:n - 1] + "."
            f.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")
    return str(path)


def test_select_pairs_documents_across_length_bucket_edges(tmp_path, capsys):
    """Each pair straddles an edge of the old fixed buckets (2^10.5, 2^11, 2^11.5 characters):
    nearest-length matching pairs all three, where the buckets paired none and the run went on
    to rewrite nothing and fail at pack."""
    src = _docs(tmp_path / "docs.jsonl", [("rich", 1440), ("plain", 1460), ("rich", 2040), ("plain", 2060),
                                          ("rich", 2890), ("plain", 2900)])
    assert cp.main(["--source", src, "--out", str(tmp_path / "o"), "--tokenizer", "tiny", "--token-budget", "5000"]) == 0
    sel = common.read_jsonl(tmp_path / "o" / "selected.jsonl")
    assert sorted(r["n_chars"] for r in sel if r["set"] == "rich") == [1440, 2040, 2890]
    assert all(cp.length_gap(a["n_chars"], b["n_chars"]) < 0.02 for a in sel for b in sel
               if a["pair"] == b["pair"] and a["set"] != b["set"])
    assert os.path.getsize(tmp_path / "o" / "rich.jsonl") > 0


def test_select_without_pairs_stops_there_naming_the_setting(tmp_path, capsys):
    src = _docs(tmp_path / "docs.jsonl", [("rich", 500), ("rich", 600), ("plain", 4000)])
    out = tmp_path / "o"
    assert cp.main(["--source", src, "--out", str(out), "--tokenizer", "tiny", "--token-budget", "200"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("curate_pretrain: error: select: no pairs") and "--length-tolerance 0.5" in err
    assert "needs --length-tolerance 2.74" in err                       # log2(4000 / 600)
    assert not (out / "selected.jsonl").exists() and not (out / "rewrites.jsonl").exists()
    assert cp.main(["--source", src, "--out", str(out), "--tokenizer", "tiny", "--token-budget", "200",
                    "--stage", "select,rewrite,pack", "--length-tolerance", "2.74"]) == 0  # loosened: a pair
    assert len(common.read_jsonl(out / "selected.jsonl")) == 2
    plain = _docs(tmp_path / "plain.jsonl", [("plain", 500), ("plain", 600)])
    assert cp.main(["--source", plain, "--out", str(tmp_path / "p"), "--tokenizer", "tiny"]) == 2
    assert "none of the 2 labelled documents shows a behavior" in capsys.readouterr().err


def test_select_pairs_a_few_hundred_documents():
    """300 documents of log-normal lengths, 40% behavior-free: nearly every behavior-free one
    finds a rich partner within the tolerance."""
    import math
    import random
    rng = random.Random(0)
    no = dict.fromkeys(study.BEHAVIORS, False)
    docs = [dict(id=f"d{i}", n_chars=int(math.exp(rng.gauss(7, 1))),
                 labels=no if rng.random() < 0.4 else dict(no, backtracking=True)) for i in range(300)]
    pairs, unmatched = cp.select_pairs(docs, 1e12, 4.0, 0.5, 0)
    n_min = sum(cp.rich_priority(d["labels"]) is None for d in docs)
    n_chars = {d["id"]: d["n_chars"] for d in docs}
    assert len(pairs) >= 0.95 * n_min and unmatched == len(docs) - n_min - len(pairs)
    assert all(cp.length_gap(n_chars[r], n_chars[m]) <= 0.5 for r, m in pairs)
    assert len({m for _, m in pairs}) == len(pairs)                      # each used once


REW = json.dumps({"id": "a", "set": "rich", "pair": 0, "text": "t", "kept": True, "reason": "ok", "lost": [], "gained": []})


@pytest.mark.parametrize("content, stage, msg", [
    ("", "all", "no documents"),
    ('{"text": "x = 1. We verify it."}\n{oops\n', "all", "docs.jsonl:2: malformed JSON"),
    ('{"id": "a", "body": "x"}\n', "all", "docs.jsonl:1: record lacks text"),
    ('{"id": "a", "n_chars": 3, "text": "x"}\n', "select", "labels.jsonl:1: record lacks labels"),
    ('{"id": "a", "n_chars": 3, "text": "x", "labels": {"verification": true}, "solves_problem": false}\n',
     "select", "labels.jsonl:1: record lacks labels of verification"),
    ("", "pack", "rewrites.jsonl is missing; run --stage rewrite first"),
    ('{"id": "a"}\n', "pack", "rewrites.jsonl:1: record lacks set, pair, text, kept"),
    (REW + "\n{oops\n" + REW + "\n", "pack", "rewrites.jsonl:2: malformed JSON"),  # not a torn tail
])
def test_data_problems_are_one_line_with_file_and_line(tmp_path, capsys, content, stage, msg):
    out = tmp_path / "o"
    out.mkdir()
    name = {"all": "docs.jsonl", "select": "labels.jsonl", "pack": "rewrites.jsonl"}[stage]
    if content or stage != "pack":
        (out if stage != "all" else tmp_path).joinpath(name).write_text(content)
    (out / "selected.jsonl").write_text("")
    assert cp.main(["--source", str(tmp_path / "docs.jsonl"), "--out", str(out), "--tokenizer", "tiny",
                    "--stage", stage]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("curate_pretrain: error: ") and msg in last and "Traceback" not in err


def test_parquet_without_the_text_column(tmp_path, capsys):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"body": ["x = 1"]}), str(tmp_path / "docs.parquet"))
    assert cp.main(["--source", str(tmp_path / "docs.parquet"), "--out", str(tmp_path / "o"), "--stage", "label"]) == 2
    assert "docs.parquet: no column 'text' (columns: body; --text-field?)" in capsys.readouterr().err
