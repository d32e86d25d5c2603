"""classify.py: the rules against hand labels and the symbolic writer, speed, the per-step
CSV, input forms, sampling mode, and the LLM judges against a local server that speaks
the OpenAI (chat completions, Batch API) and Anthropic (Messages) wire formats."""
import csv
import doctest
import json
import os
import re
import threading
import timeit
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given, settings, strategies as st

import behavior_rules
import classify
import study
from conftest import REPO, SHARED

HAND = os.path.join(REPO, "tests", "fixtures", "hand_traces.jsonl")
DIRECT = ("all_strategies", "only_backtracking", "backtracking_verification",
          "backtracking_subgoal", "backtracking_backward")
KEY = "sk-test-0123456789abcdef"


def test_doctests():
    assert doctest.testmod(classify).failed == 0


# ---------------------------------------------------------------- agreement
def test_hand_traces_presence_at_least_80_percent():
    recs = classify.read_records(HAND)
    assert len(recs) == 40 and all(set(r["labels"]) == set(study.BEHAVIORS) for r in recs)
    res = behavior_rules.agreement(classify.eval_samples(recs))["all"]
    for b in study.BEHAVIORS:
        assert res[b]["tp"] + res[b]["fn"] >= 5, f"fixture has too few {b} traces"
        assert res[b]["presence"] / res[b]["n"] >= 0.80, (b, dict(res[b]))


def test_heldout_hand_traces_floor():
    """20 more traces, written and labelled after the rules existed and never tuned on (the
    README reports their agreement). A floor, so a change that overfits the writer shows up."""
    res = behavior_rules.agreement(classify.eval_samples(classify.read_records(
        os.path.join(REPO, "tests", "fixtures", "hand_traces_heldout.jsonl"))))["all"]
    for b in study.BEHAVIORS:
        assert res[b]["presence"] / res[b]["n"] >= 0.75, (b, dict(res[b]))


@pytest.fixture(scope="module")
def writer_traces():
    gp = pytest.importorskip("gen_priming")
    tasks = gp.make_tasks(150, seed=3)
    return [gp.write_symbolic(t, c, seed=3) for c in DIRECT for t in tasks]


def test_agrees_with_symbolic_writer(writer_traces):
    """The acceptance figure uses 1,000 traces per condition (see the README's command); 150 here."""
    res = behavior_rules.agreement(classify.eval_samples(writer_traces))
    assert set(res) == set(DIRECT)
    for cond, by_b in res.items():
        for b, c in by_b.items():
            assert c["presence"] / c["n"] >= 0.95, (cond, b, dict(c))
            assert c["exact"] / c["n"] >= 0.80, (cond, b, dict(c))


def _yardstick():
    """Seconds of a fixed pure-Python loop; about 10 us on an idle 2020s server core."""
    return min(timeit.repeat("sum(range(1000))", number=200, repeat=5)) / 200


def test_throughput_2000_per_second_on_one_core(writer_traces):
    """>= 2,000 responses/s of CPU time, scaled by how much slower than a reference core this
    machine runs a fixed loop right now (a loaded CI box must not fail the test)."""
    recs = writer_traces[::2] + classify.read_records(HAND)
    rate = behavior_rules.throughput(classify.eval_samples(recs), repeat=3)
    slowdown = max(1.0, _yardstick() / 10e-6)
    assert rate * slowdown >= 2000, (rate, slowdown)


_PIECES = list("0123456789 +-*/=().,;:!?\nabcx@") + [
    "not ", "back to ", "subgoal ", "backwards ", "try again", "too high", "check", " is ", " need ",
    "<answer>", "</answer>", "1/2", "-7", "23/0"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=120).map("".join))
def test_never_crashes_and_counts_are_small(text):
    c = behavior_rules.count_behaviors(text, [1, 2, 3, 4], 10)
    assert set(c) == set(study.BEHAVIORS)
    assert all(isinstance(v, int) and 0 <= v <= len(text) for v in c.values())


def test_zero_denominator_is_not_a_value():
    """'x = 23/0' (a tiny model wrote it in the pipeline) is skipped, not a crash."""
    text = "44 + 19 = 23/0, so 44 + 19 = 63. 63 + 3 = 66. Not 76, go back."
    assert behavior_rules.count_behaviors(text, [44, 19, 3, 1], 76)["verification"] >= 0
    assert [e["value"] for e in behavior_rules.find_equations(behavior_rules.normalize(text))] == [63, 66]


@pytest.mark.parametrize("text,expected", [
    ("Try 44 + 19 = 63. 63 * 3 = 189, too high. Go back to 63: 63 + 3 = 66. 66 + 1 = 67. Not 76.",
     dict(verification=2, backtracking=1, subgoal=0, backward=0)),
    ("44 - 19 = 25, 25 * 3 = 75, 75 + 1 = 76. Let me double-check: 44 - 19 = 25, 25 * 3 = 75, "
     "75 + 1 = 76. Yes.", dict(verification=1, backtracking=0, subgoal=0, backward=0)),   # a recheck, not a restart
    ("Since 76 = 75 + 1, and 75 = 25 * 3, I get 25 from 44 - 19 = 25.",
     dict(verification=0, backtracking=0, subgoal=0, backward=2)),
    ("My intermediate goal is 75. 44 - 19 = 25, 25 * 3 = 75, 75 + 1 = 76.",
     dict(verification=0, backtracking=0, subgoal=1, backward=0)),
    ("We need to create an equation that equals 76 using each number exactly once.",
     dict(verification=0, backtracking=0, subgoal=0, backward=0)),                      # the task, restated
])
def test_rules_on_small_cases(text, expected):
    assert behavior_rules.count_behaviors(text, [44, 19, 3, 1], 76) == expected


def test_a_checks_recomputation_and_a_backward_step_on_a_task_number_are_no_restart():
    # the closing check recomputes an earlier attempt one step at a time: a check, not a second
    # backtrack (counted 2 before behavior_rules read announced checks as recomputations)
    text = ("44 + 19 = 63, 63 + 3 = 66. 66 is too low. Start over: 44 - 19 = 25, 25 * 3 = 75. Too low. "
            "The closest attempt was (44 - 19) * 3, off by 1: 44 - 19 = 25, 25 * 3 = 75.")
    assert behavior_rules.count_behaviors(text, [44, 19, 3, 1], 76) == \
        dict(verification=3, backtracking=1, subgoal=0, backward=0)
    # after "in reverse", 12 + 8 = 20 starts from the target (also a task number): a backward step,
    # not a forward attempt that a later step abandons (backtracking 1 before)
    text = "In reverse: to end on 12 by subtracting 8, I need 12 + 8 = 20 from 2 and 12. 12 * 2 = 24. 24 - 8 = 16."
    assert behavior_rules.count_behaviors(text, [8, 2, 12], 12) == \
        dict(verification=0, backtracking=0, subgoal=0, backward=1)


# ---------------------------------------------------------------- spans (what the run report marks)
def _check_spans(text, nums, target):
    spans = behavior_rules.behavior_spans(text, nums, target)
    counts = behavior_rules.count_behaviors(text, nums, target)
    assert {b: sum(s[2] == b for s in spans) for b in study.BEHAVIORS} == counts, text
    assert all(0 <= a < z <= len(text) for a, z, _ in spans), (text, spans)
    assert spans == sorted(spans, key=lambda s: (s[0], s[1], list(study.BEHAVIORS).index(s[2])))
    assert behavior_rules.normalize(text, []) == behavior_rules.normalize(text)   # tracking the edits changes nothing
    return spans


def test_spans_equal_counts_on_symbolic_and_hand_traces(writer_traces):
    recs = writer_traces + classify.read_records(HAND)
    n = sum(len(_check_spans(classify.response_of(r), r["nums"], r["target"])) for r in recs)
    assert n > len(recs)


@pytest.mark.parametrize("text,want", [
    ("44 + 19 = 63. That's not 76. Let me try another way.",
     [("not 76", "verification"), ("try another", "backtracking")]),
    # verbal arithmetic and upper case: the span covers the words as written
    ("Since 76 EQUALS 75 PLUS 1, I need 75 first.", [("76 EQUALS 75 PLUS 1", "backward")]),
    ("Multiply 25 by 3, which is 75. Then add 1 to get 76. That works!", [("That works", "verification")]),
    # unicode operators, dashes, markdown; "İ" lower-cases to two characters
    ("İİ **Subgoal: 75.** 44 − 19 = 25, 25 × 3 = 75 — too low? No: 75 + 1 = 76.",
     [("Subgoal: 75", "subgoal"), ("too low", "verification")]),
    ("44 + 19 = 63 <answer>not 76</answer> Wait, go back: 44 - 19 = 25.", [("Wait", "backtracking")]),
])
def test_span_offsets_point_into_the_text_as_written(text, want):
    spans = _check_spans(text, [44, 19, 3, 1], 76)
    assert [(text[a:z], b) for a, z, b in spans] == want


_SPAN_PIECES = _PIECES + ["İ", "×", "÷", "−", "—", "**", "- ", "1. ", "Multiply 3 by 9", ", which is ",
                          "Twenty times three", " plus ", "THAT WORKS", "Aim for 12", "76 = 75 + 1"]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(_SPAN_PIECES), max_size=80).map("".join))
def test_spans_equal_counts_on_any_text(text):
    _check_spans(text, [3, 9, 12, 1], 76)


# ---------------------------------------------------------------- files and steps.csv
def _write(path, recs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")


GOOD = "44 - 19 = 25, 25 * 3 = 75, 75 + 1 = 76. That works!</think>\n<answer>(44 - 19) * 3 + 1</answer>"
BAD = "44 + 19 = 63, 63 + 3 = 66. Not 76. Let me try again. 44 * 3 = 132.</think>\n<answer>44 + 19</answer>"


def _rollouts(run, steps=(0, 10), per_step=5, split="rollouts", good=2):
    for s in steps:
        recs = [{"step": s, "id": f"t{i}", "nums": [44, 19, 3, 1], "target": 76, "prompt": "p",
                 "response": GOOD if i < good else BAD, "reward": 1.0 if i < good else 0.1,
                 "correct": i < good, "length": 100 + i} for i in range(per_step)]
        _write(os.path.join(run, split, f"step_{s:06d}.jsonl"), recs)


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_folder_to_steps_csv(tmp_path, capsys):
    run = str(tmp_path / "ppo-x")
    _rollouts(run)
    assert classify.main(["--input", run]) == 0
    out = os.path.join(run, "classify")
    with open(os.path.join(out, "steps.csv")) as f:
        header = f.readline().strip().split(",")
    assert header == study.steps_columns()
    ref = os.path.join(SHARED, "reference", "llama_results.csv")
    if os.path.exists(ref):
        with open(ref) as f:
            assert f.readline().strip().split(",") == header
    rows = _csv(os.path.join(out, "steps.csv"))
    assert [(r["condition"], r["step"]) for r in rows] == [("ppo-x", "0"), ("ppo-x", "10")]
    r = rows[0]
    assert float(r["accuracy"]) == pytest.approx(0.4) and float(r["response_length"]) == pytest.approx(102)
    assert float(r["avg_verifications"]) == pytest.approx((2 * 1 + 3 * 1) / 5)
    assert int(r["total_backtracking"]) == 3
    recs = classify.read_records(os.path.join(out, "classified.jsonl"))
    assert len(recs) == 10 and all(r["classifier"] == "rules" and "backward" in r and "prompt" in r for r in recs)
    assert "ppo-x" in capsys.readouterr().out          # the summary table
    plot = pytest.importorskip("plot")
    assert plot.find_steps_csv(run) == os.path.join(out, "steps.csv")
    assert {r["condition"] for r in plot.read_steps_csv(os.path.join(out, "steps.csv"))} == {"ppo-x"}


def test_sample_per_step_keeps_accuracy_from_all_records(tmp_path):
    run = str(tmp_path / "run")
    _rollouts(run, per_step=5)
    assert classify.main(["--input", run, "--out", str(tmp_path / "o"), "--sample-per-step", "2",
                          "--condition", "mine"]) == 0
    recs = classify.read_records(str(tmp_path / "o" / "classified.jsonl"))
    assert sorted(r["step"] for r in recs) == [0, 0, 10, 10]
    rows = _csv(str(tmp_path / "o" / "steps.csv"))
    assert {r["condition"] for r in rows} == {"mine"}
    assert all(float(r["accuracy"]) == pytest.approx(0.4) for r in rows)


def test_priming_file_and_plain_jsonl(tmp_path):
    prim = str(tmp_path / "prim.jsonl")
    _write(prim, [{"prompt": "p", "completion": GOOD, "nums": [44, 19, 3, 1], "target": 76,
                   "condition": "all_strategies", "correct": True, "behaviors": {}},
                  {"prompt": "p", "completion": BAD, "nums": [44, 19, 3, 1], "target": 76,
                   "condition": "dots", "correct": False, "behaviors": {}}])
    assert classify.main(["--input", prim]) == 0
    rows = _csv(str(tmp_path / "prim.classify" / "steps.csv"))
    assert [(r["condition"], r["step"], r["accuracy"]) for r in rows] == [("all_strategies", "0", "1.0"),
                                                                          ("dots", "0", "0.0")]
    plain = str(tmp_path / "any.jsonl")
    _write(plain, [{"response": GOOD, "nums": [44, 19, 3, 1], "target": 76}])
    assert classify.main(["--input", plain, "--out", str(tmp_path / "p")]) == 0
    row = _csv(str(tmp_path / "p" / "steps.csv"))[0]
    assert (row["condition"], row["step"], row["accuracy"]) == ("any", "0", "1.0")   # scored from the text
    assert float(row["response_length"]) == len(GOOD.split())                         # words without "length"


@pytest.mark.parametrize("line,msg", [('{"nums": [1], "target": 2}', ":2: no \"response\""),
                                      ('{"response": "x", "target": 2}', ":2: needs \"nums\""),
                                      ('{"response": "x", "nums": ["a", 2], "target": 2}', ":2: needs \"nums\""),
                                      ("{oops", ":2: malformed JSON")])
def test_bad_input_names_file_and_line(tmp_path, capsys, line, msg):
    path = str(tmp_path / "bad.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps({"response": "x", "nums": [1], "target": 2}) + "\n" + line + "\n")
    assert classify.main(["--input", path]) == 2
    assert path + msg in capsys.readouterr().err


def test_bad_run_config_and_bad_resume_file_are_one_line(tmp_path, capsys, monkeypatch, fake_api):
    run = str(tmp_path / "run")
    _rollouts(run)
    with open(os.path.join(run, "config.json"), "w") as f:
        f.write("{oops")
    assert classify.main(["--input", run]) == 2
    err = capsys.readouterr().err
    assert "config.json: malformed JSON" in err and "Traceback" not in err
    api = fake_api()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out = tmp_path / "o"
    out.mkdir()
    (out / "classified.jsonl").write_text('{"id": "a"}\n{oops\n{"id": "b"}\n')  # not just a torn tail
    assert classify.main(["--backend", "openai", "--base-url", api.url + "/v1", "--input", _two_records(tmp_path),
                          "--out", str(out)]) == 2
    assert "classified.jsonl:2: malformed JSON" in capsys.readouterr().err


def test_sampling_mode_with_tiny_model(tmp_path):
    data = str(tmp_path / "test.jsonl")
    _write(data, [{"id": "a", "nums": [44, 19, 3, 1], "target": 76}, {"id": "b", "nums": [3, 9, 15], "target": 42}])
    out = str(tmp_path / "base")
    assert classify.main(["--model", "tiny", "--data", data, "--samples", "2", "--per-task", "2",
                          "--max-new-tokens", "6", "--gen-batch", "4", "--out", out, "--device", "cpu"]) == 0
    recs = classify.read_records(os.path.join(out, "rollouts", "step_000000.jsonl"))
    assert len(recs) == 4 and all(set(r) == {"step", "id", "nums", "target", "prompt", "response", "reward",
                                              "correct", "length"} for r in recs)
    assert all(1 <= r["length"] <= 6 and r["reward"] in (0.0, 0.1, 1.0) for r in recs)
    cls = classify.read_records(os.path.join(out, "classify", "classified.jsonl"))
    assert len(cls) == 4 and all(isinstance(r["verification"], int) for r in cls)
    assert _csv(os.path.join(out, "classify", "steps.csv"))[0]["condition"] == "base_tiny"


# ---------------------------------------------------------------- LLM judges over HTTP
class FakeAPI:
    """A local server for both APIs. counts: {behavior: N}; a behavior in `untagged` is
    answered without a count tag; `fail` holds statuses to send before real answers."""

    def __init__(self, untagged=(), fail=(), batch_untagged=()):
        self.counts = dict(verification=2, backtracking=1, subgoal=0, backward=3)
        self.untagged, self.fail, self.batch_untagged = set(untagged), list(fail), set(batch_untagged)
        self.log, self.files, self.batches, self.lock = [], {}, {}, threading.Lock()
        self.bodies = []  # bodies of chat / messages requests
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                api.handle(self, "GET", b"")

            def do_POST(self):
                api.handle(self, "POST", self.rfile.read(int(self.headers.get("Content-Length", 0))))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def answer(self, prompt, batch=False):
        b = re.search(r"contain (\w+)", prompt).group(1)   # "subgoal setting" -> subgoal
        if b in self.untagged or (batch and b in self.batch_untagged):
            return "I think there are a few of them."
        return f"Looking at it... <count>{self.counts[b]}</count>"

    def reply(self, h, status, obj, headers=()):
        body = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def handle(self, h, method, body):
        with self.lock:
            self.log.append((method, h.path, {k.lower(): v for k, v in h.headers.items()}))
            if h.path in ("/v1/chat/completions", "/v1/messages"):
                self.bodies.append(json.loads(body))
            fail = self.fail.pop(0) if self.fail else None
        if fail:
            return self.reply(h, fail, {"error": {"message": f"try later ({fail})"}}, [("Retry-After", "0")])
        if h.path == "/v1/chat/completions":
            req = json.loads(body)
            text = self.answer(req["messages"][-1]["content"])
            return self.reply(h, 200, {"id": "c1", "object": "chat.completion", "model": req["model"],
                                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                    "finish_reason": "stop"}],
                                       "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}})
        if h.path == "/v1/messages":
            req = json.loads(body)
            key = h.headers.get("x-api-key") or h.headers.get("authorization", "").removeprefix("Bearer ")
            if key != KEY or h.headers.get("anthropic-version") != "2023-06-01":
                return self.reply(h, 401, {"type": "error", "error": {"type": "authentication_error"}})
            text = self.answer(req["messages"][-1]["content"])
            return self.reply(h, 200, {"id": "m1", "type": "message", "role": "assistant", "model": req["model"],
                                       "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                                       "usage": {"input_tokens": 120, "output_tokens": 12}})
        if h.path == "/v1/files" and method == "POST":
            assert h.headers["Content-Type"].startswith("multipart/form-data; boundary=")
            assert b'name="purpose"\r\n\r\nbatch' in body
            data = body.split(b"Content-Type: application/jsonl\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
            fid = f"file-{len(self.files)}"
            self.files[fid] = data
            return self.reply(h, 200, {"id": fid, "object": "file", "purpose": "batch", "bytes": len(data)})
        if h.path == "/v1/batches" and method == "POST":
            req = json.loads(body)
            assert req["endpoint"] == "/v1/chat/completions" and req["completion_window"] == "24h"
            out = []
            for line in self.files[req["input_file_id"]].decode().splitlines():
                item = json.loads(line)
                assert item["method"] == "POST" and item["url"] == "/v1/chat/completions"
                text = self.answer(item["body"]["messages"][-1]["content"], batch=True)
                out.append(json.dumps({"id": "r", "custom_id": item["custom_id"], "error": None, "response": {
                    "status_code": 200, "request_id": "q", "body": {
                        "choices": [{"message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": 100, "completion_tokens": 10}}}}))
            self.files["file-out"] = ("\n".join(out) + "\n").encode()
            self.batches["batch-1"] = 0
            return self.reply(h, 200, {"id": "batch-1", "object": "batch", "status": "validating"})
        if h.path == "/v1/batches/batch-1":
            self.batches["batch-1"] += 1
            done = self.batches["batch-1"] >= 2
            return self.reply(h, 200, {"id": "batch-1", "status": "completed" if done else "in_progress",
                                       "output_file_id": "file-out" if done else None,
                                       "request_counts": {"total": 8, "completed": 8 if done else 3, "failed": 0}})
        if h.path == "/v1/files/file-out/content":
            return self.reply(h, 200, self.files["file-out"])
        return self.reply(h, 404, {"error": {"message": f"no route {h.path}"}})

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api():
    apis = []

    def make(**kw):
        apis.append(FakeAPI(**kw))
        return apis[-1]
    yield make
    for a in apis:
        a.close()


def _two_records(tmp_path):
    path = str(tmp_path / "in.jsonl")
    _write(path, [{"id": "a", "response": GOOD, "nums": [44, 19, 3, 1], "target": 76, "correct": True},
                  {"id": "b", "response": BAD, "nums": [44, 19, 3, 1], "target": 76, "correct": False}])
    return path


def _no_key_anywhere(tmp_path, text):
    assert KEY not in text
    for root, _, files in os.walk(tmp_path):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                assert KEY.encode() not in fh.read(), f


def test_openai_chat_retries_missing_tag_and_resume(tmp_path, capsys, monkeypatch, fake_api):
    api = fake_api(untagged={"subgoal"}, fail=[429, 500])
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    args = ["--backend", "openai", "--base-url", api.url + "/v1", "--input", _two_records(tmp_path),
            "--out", str(tmp_path / "o"), "--retry-base", "0.01", "--concurrency", "2"]
    assert classify.main(args) == 0
    out = capsys.readouterr().out
    recs = classify.read_records(str(tmp_path / "o" / "classified.jsonl"))
    assert [r["id"] for r in recs] == ["a", "b"]                      # input order
    for r in recs:
        assert (r["verification"], r["backtracking"], r["backward"]) == (2, 1, 3)
        assert r["subgoal"] is None and r["missing"] == ["subgoal"]  # never silently 0
        assert r["classifier"] == "openai:gpt-4o-mini"
    chats = [e for e in api.log if e[1] == "/v1/chat/completions"]
    assert len(chats) == 2 + 2 * (3 + 2)                               # 2 failures; subgoal asked twice
    assert all(e[2]["authorization"] == f"Bearer {KEY}" for e in chats)
    assert "12 requests (2 retries" in out and "estimated cost $" in out
    row = _csv(str(tmp_path / "o" / "steps.csv"))[0]
    assert row["avg_subgoals"] == "" and float(row["avg_backwards"]) == 3.0
    n = len(api.log)
    assert classify.main(args) == 0                                    # resume: nothing asked again
    assert len(api.log) == n and "2 records already classified" in capsys.readouterr().out
    _no_key_anywhere(tmp_path, out)


def test_openai_fatal_error_is_reported_without_key(tmp_path, capsys, monkeypatch, fake_api):
    api = fake_api(fail=[401])
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert classify.main(["--backend", "openai", "--base-url", api.url + "/v1", "--input", _two_records(tmp_path),
                          "--out", str(tmp_path / "o"), "--concurrency", "1"]) == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and KEY not in err


def test_malformed_replies_are_retried_then_recorded_missing_and_asked_again(tmp_path, capfd, monkeypatch):
    """A 200 whose JSON is cut off, one that lacks its fields, one cut mid-read: retried like a 429;
    once the retries are spent, that count is null and named, the run goes on and ends with exit 0
    and one summary line; the same command again asks only what failed."""
    from fake_llm_server import FakeLLM
    srv = FakeLLM(KEY, faults=["malformed", "hollow", "cut", "malformed"]).start()
    try:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        args = ["--backend", "openai", "--base-url", srv.url + "/v1", "--input", _two_records(tmp_path),
                "--out", str(tmp_path / "o"), "--retry-base", "0.001", "--max-retries", "2", "--concurrency", "1"]
        assert classify.main(args) == 0
        cap = capfd.readouterr()
        a, b = classify.read_records(str(tmp_path / "o" / "classified.jsonl"))
        assert a["verification"] is None and a["missing"] == a["failed"] == ["verification"]
        assert a["backtracking"] == 1 and all(b[x] == 1 for x in study.BEHAVIORS) and "missing" not in b
        assert srv.served_faults == ["malformed", "hollow", "cut", "malformed"]   # 1 + 2 retries, then 1 more
        summary = [l for l in cap.err.splitlines() if "records had requests that failed" in l]
        assert len(summary) == 1 and summary[0].startswith("[classify] 1 of 2 records")
        assert "Traceback" not in cap.err and "1 counts missing, 1 of them after failed requests" in cap.out
        n = srv.completions
        assert classify.main(args) == 0                                         # the rerun
        assert srv.completions == n + 4 and "1 records already classified" in capfd.readouterr().out
        a, b = classify.read_records(str(tmp_path / "o" / "classified.jsonl"))
        assert all(a[x] == 1 for x in study.BEHAVIORS) and "missing" not in a and "failed" not in a
    finally:
        srv.stop()


def test_openai_batch_api(tmp_path, capsys, monkeypatch, fake_api):
    api = fake_api(batch_untagged={"backward"}, fail=[500])
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert classify.main(["--backend", "openai", "--batch", "--base-url", api.url + "/v1", "--poll", "0.01",
                          "--retry-base", "0.01", "--input", _two_records(tmp_path), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    paths = [p for _, p, _ in api.log]
    assert paths[:3] == ["/v1/files", "/v1/files", "/v1/batches"]     # a 500 on upload, retried
    assert paths.count("/v1/batches/batch-1") == 2 and "/v1/files/file-out/content" in paths
    assert paths.count("/v1/chat/completions") == 2                    # untagged batch answers asked again
    recs = classify.read_records(str(tmp_path / "o" / "classified.jsonl"))
    assert all((r["verification"], r["subgoal"], r["backward"]) == (2, 0, 3) and "missing" not in r for r in recs)
    assert "batch API, half price" in out and not os.path.exists(tmp_path / "o" / "batch.json")
    _no_key_anywhere(tmp_path, out)


def test_anthropic_message_batches(tmp_path, capsys, monkeypatch):
    # --batch with the Anthropic judge: Message Batches, the same flag as OpenAI's Batch API
    from fake_llm_server import FakeLLM
    srv = FakeLLM(KEY).start()
    try:
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        assert classify.main(["--backend", "anthropic", "--batch", "--base-url", srv.url, "--poll", "0.01",
                              "--input", _two_records(tmp_path), "--out", str(tmp_path / "o")]) == 0
        out = capsys.readouterr().out
        assert len(srv.batches) == 1 and srv.completions == 0 and len(srv.bodies) == 2 * len(study.BEHAVIORS)
        recs = classify.read_records(str(tmp_path / "o" / "classified.jsonl"))
        assert len(recs) == 2 and all(r[b] == 1 for r in recs for b in study.BEHAVIORS)
        assert "batch API, half price" in out and not os.path.exists(tmp_path / "o" / "batch.json")
        _no_key_anywhere(tmp_path, out)
    finally:
        srv.stop()


def test_anthropic_messages(tmp_path, capsys, monkeypatch, fake_api):
    api = fake_api(fail=[529, 429])
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    assert classify.main(["--backend", "anthropic", "--base-url", api.url, "--retry-base", "0.01",
                          "--input", _two_records(tmp_path), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    recs = classify.read_records(str(tmp_path / "o" / "classified.jsonl"))
    assert all((r["verification"], r["backtracking"], r["subgoal"], r["backward"]) == (2, 1, 0, 3) for r in recs)
    assert recs[0]["classifier"] == "anthropic:claude-haiku-4-5"
    assert "10 requests (2 retries" in out and "960 input + 96 output tokens" in out
    _no_key_anywhere(tmp_path, out)


def test_missing_key_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert classify.main(["--backend", "anthropic", "--input", _two_records(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "ANTHROPIC_API_KEY" in capsys.readouterr().err


def test_api_model_is_the_judge_and_model_is_the_sampled_model(tmp_path, monkeypatch, fake_api):
    """--api-model names the judge (--judge-model, its old name, still works, unlisted); --model
    stays the Hugging Face model of sampling mode."""
    assert classify.parse_args(["--judge-model", "j", "--input", "x"]).api_model == "j"
    a = classify.parse_args(["--api-model", "j", "--model", "tiny"])
    assert (a.api_model, a.model) == ("j", "tiny")
    api = fake_api()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert classify.main(["--backend", "openai", "--base-url", api.url + "/v1", "--api-model", "judge-1",
                          "--input", _two_records(tmp_path), "--out", str(tmp_path / "o")]) == 0
    assert {b["model"] for b in api.bodies} == {"judge-1"}
    recs = classify.read_records(str(tmp_path / "o" / "classified.jsonl"))
    assert {r["classifier"] for r in recs} == {"openai:judge-1"}


# ---------------------------------------------------------------- as the study evaluated behaviors
def test_sample_per_step_defaults_to_the_studys_200(tmp_path):
    """gpt_api_eval.py samples 200 completions per step (num_samples=200; gpt_submit.sh passes 200)."""
    assert classify.parse_args(["--input", "x"]).sample_per_step == 200
    run = str(tmp_path / "run")
    _rollouts(run, per_step=250, good=50)
    assert classify.main(["--input", run, "--out", str(tmp_path / "o")]) == 0
    recs = classify.read_records(str(tmp_path / "o" / "classified.jsonl"))
    assert sorted(Counter(r["step"] for r in recs).items()) == [(0, 200), (10, 200)]
    rows = _csv(str(tmp_path / "o" / "steps.csv"))
    assert all(float(r["accuracy"]) == pytest.approx(0.2) for r in rows)        # from all 250
    assert all(int(r["total_verifications"]) == 200 for r in rows)              # one per classified record
    assert classify.main(["--input", run, "--out", str(tmp_path / "all"), "--sample-per-step", "0"]) == 0
    assert len(classify.read_records(str(tmp_path / "all" / "classified.jsonl"))) == 500


def test_run_folder_split_val_reads_the_test_set_samples(tmp_path, capsys):
    """ppo.py writes the test-set samples of every 10th step to val/; the study classified those
    (--split val). The default (auto) reads val/ where a run has one, as the study judged;
    mini.py and pipeline.py pass --split rollouts."""
    run = str(tmp_path / "ppo-x")
    _rollouts(run, steps=(1, 5), per_step=3)
    assert classify.main(["--input", run, "--out", str(tmp_path / "b"), "--split", "val"]) == 2
    assert "no val/step_*.jsonl" in capsys.readouterr().err
    assert classify.main(["--input", run, "--out", str(tmp_path / "a"), "--split", "auto"]) == 0  # no val/
    assert [r["step"] for r in _csv(str(tmp_path / "a" / "steps.csv"))] == ["1", "5"]
    _rollouts(run, steps=(0, 10, 20), per_step=4, split="val", good=1)
    for split in ("val", "auto"):
        assert classify.main(["--input", run, "--split", split]) == 0
        rows = _csv(os.path.join(run, "classify", "steps.csv"))
        assert [(r["condition"], r["step"]) for r in rows] == [("ppo-x", "0"), ("ppo-x", "10"), ("ppo-x", "20")]
        assert all(float(r["accuracy"]) == pytest.approx(0.25) for r in rows)
    assert classify.main(["--input", run, "--out", str(tmp_path / "c")]) == 0   # default: val/ when there
    assert [r["step"] for r in _csv(str(tmp_path / "c" / "steps.csv"))] == ["0", "10", "20"]
    assert classify.main(["--input", run, "--out", str(tmp_path / "d"), "--split", "rollouts"]) == 0
    assert [r["step"] for r in _csv(str(tmp_path / "d" / "steps.csv"))] == ["1", "5"]
    with pytest.raises(SystemExit):
        classify.parse_args(["--input", run, "--split", "test"])


def test_judge_asks_one_count_question_per_behavior_in_the_studys_order(tmp_path, monkeypatch, fake_api):
    """As gpt_api_eval.py: a system message, then per behavior the puzzle, the reasoning, what to
    count with an example, and the answer as <count>N</count> (<count>0</count> if none)."""
    for b in study.BEHAVIORS:
        q = classify.judge_prompt(b, "RESPONSE-TEXT", [44, 19, 3, 1], 76)
        at = [q.index(x) for x in ("[44, 19, 3, 1]", "76", "RESPONSE-TEXT", study.BEHAVIORS[b].judge.what,
                                   study.BEHAVIORS[b].judge.example, "<count>0</count>")]
        assert at == sorted(at), b
    api = fake_api()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert classify.main(["--backend", "openai", "--base-url", api.url + "/v1", "--input", _two_records(tmp_path),
                          "--out", str(tmp_path / "o"), "--concurrency", "1"]) == 0
    assert len(api.bodies) == 8 and all(b["model"] == "gpt-4o-mini" and b["max_tokens"] == 512 for b in api.bodies)
    assert all([m["role"] for m in b["messages"]] == ["system", "user"] for b in api.bodies)
    assert {b["messages"][0]["content"] for b in api.bodies} == {classify.SYSTEM}
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    assert classify.main(["--backend", "anthropic", "--base-url", api.url, "--input", _two_records(tmp_path),
                          "--out", str(tmp_path / "a"), "--concurrency", "1"]) == 0
    assert [blk["text"] for blk in api.bodies[-1]["system"]] == [classify.SYSTEM]   # a cached block (llm.Client.body)
    assert [m["role"] for m in api.bodies[-1]["messages"]] == ["user"]


# A stand-in for the study's repository: the same file, the judge's questions defined the same
# way (a method returning four f-strings; another analyzer with the same method name), with
# placeholder text. Its first line fails if the file is ever run or imported.
FAKE_GPT_API_EVAL = '''\
import module_that_is_not_installed


class BaseAnalyzer:
    def convert(self, prompt):
        return {"body": {"model": "m", "messages": [
            {"role": "system", "content": "PLACEHOLDER system message."},
            {"role": "user", "content": prompt}]}}


class CountdownAnalyzer(BaseAnalyzer):
    def create_analysis_prompts(self, numbers, target, completion):
        prompts = [
            f"""Q1 with {numbers} and {target}: {completion}. Does it contain verification? {FIELD}""",
            f"""Q2 {numbers}/{target}: {completion}. Does it contain backtracking? <count> </count>""",
            f"""Q3 {completion}. Does it contain subgoal steps like {target//2} or {target!r:>5}?""",
            f"""Q4 {completion}. Does it contain backward chaining from {target}?""",
        ]
        return prompts


class OtherAnalyzer(BaseAnalyzer):
    def create_analysis_prompts(self, completion):
        return [f"wrong {completion}", "wrong", "wrong", "wrong"]
'''


def fake_study_checkout(root, field="{target - 1}"):
    os.makedirs(os.path.join(root, "behavioral_evals"), exist_ok=True)
    with open(os.path.join(root, "behavioral_evals", "gpt_api_eval.py"), "w") as f:
        f.write(FAKE_GPT_API_EVAL.replace("{FIELD}", field))
    return str(root)


def test_study_judge_prompts_from_a_checkout(tmp_path, monkeypatch, fake_api):
    root = fake_study_checkout(tmp_path / "checkout")
    system, theirs = classify.study_judge(root)
    assert system == "PLACEHOLDER system message."
    q = {b: classify.judge_prompt(b, "R", [44, 19, 3, 1], 76, study=theirs) for b in study.BEHAVIORS}
    assert q == {"verification": "Q1 with [44, 19, 3, 1] and 76: R. Does it contain verification? 75",
                 "backtracking": "Q2 [44, 19, 3, 1]/76: R. Does it contain backtracking? <count> </count>",
                 "subgoal": "Q3 R. Does it contain subgoal steps like 38 or    76?",
                 "backward": "Q4 R. Does it contain backward chaining from 76?"}
    api = fake_api()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    args = ["--backend", "openai", "--base-url", api.url + "/v1", "--input", _two_records(tmp_path),
            "--out", str(tmp_path / "o"), "--concurrency", "1"]
    assert classify.main(args + ["--prompts", f"study:{root}"]) == 0
    assert {b["messages"][0]["content"] for b in api.bodies} == {"PLACEHOLDER system message."}
    assert {b["messages"][1]["content"].split(":")[0] for b in api.bodies} >= {"Q1 with [44, 19, 3, 1] and 76"}
    recs = classify.read_records(str(tmp_path / "o" / "classified.jsonl"))
    assert all(r["classifier"] == "openai:gpt-4o-mini+study-prompts" and r["backward"] == 3 for r in recs)
    assert classify.main(args) == 0 and len(api.bodies) == 16  # our prompts: a different judge, asked anew


def test_study_judge_prompts_missing_or_unreadable_is_one_clear_line(tmp_path, monkeypatch, capsys, fake_api):
    api = fake_api()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    args = ["--backend", "openai", "--base-url", api.url + "/v1", "--input", _two_records(tmp_path),
            "--out", str(tmp_path / "o")]
    assert classify.main(args + ["--prompts", f"study:{tmp_path}/nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no behavioral_evals/gpt_api_eval.py there" in err
    bad = fake_study_checkout(tmp_path / "bad", field="{completion.upper()}")
    assert classify.main(args + ["--prompts", f"study:{bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unsupported field {completion.upper()}" in err
    empty = tmp_path / "empty" / "behavioral_evals"
    os.makedirs(empty)
    (empty / "gpt_api_eval.py").write_text("class CountdownAnalyzer:\n    pass\n")
    assert classify.main(args + ["--prompts", f"study:{tmp_path / 'empty'}"]) == 2
    assert "no CountdownAnalyzer.create_analysis_prompts" in capsys.readouterr().err
    assert api.bodies == []                                  # nothing was asked
    with pytest.raises(SystemExit):
        classify.parse_args(["--input", "x", "--prompts", f"study:{tmp_path}"])  # rules: no prompts
