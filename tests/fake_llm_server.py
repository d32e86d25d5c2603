"""
A local stand-in for the APIs gen_priming.py, classify.py (its judge) and curate_pretrain.py
talk to, for their tests (no network, no key).

It listens on 127.0.0.1 (a free port) in a thread and speaks the wire formats of:
- Anthropic Messages:        POST /v1/messages
- Anthropic Message Batches: POST /v1/messages/batches, GET /v1/messages/batches/<id>,
                             GET /v1/messages/batches/<id>/results (JSONL)
- OpenAI chat completions:   POST /v1/chat/completions
- OpenAI Batch API:          POST /v1/files (multipart), POST /v1/batches, GET /v1/batches/<id>,
                             GET /v1/files/<id>/content (JSONL)
Requests are checked the way the real services check them (the key, as x-api-key or as a
bearer token, which is how the anthropic SDK sends it; a version header; required fields;
cached system block) and rejected with the real error shapes. Scripted
faults are served, in order, to the first requests:
    "429"          429 with Retry-After: 0
    "500"          500 whose JSON error message echoes the caller's key
    "overloaded"   Anthropic's 529 (503 on the OpenAI route)
    "malformed"    200 whose JSON body is cut off
    "hollow"       200 with valid JSON that lacks every expected field ({})
    "drop"         the connection closes before any reply
    "cut"          200 whose body stops short of its content-length, then the connection closes
    "echo@N"       500 with a plain-text body that echoes the key from character N - 10 on, so a
                   message cut at N would end with the key's first 10 characters
    "malformed_echo@N"  the same in an unreadable 200 body
so tests can check that no part of a key is ever printed. With echo_401 a wrong key is
echoed back in the 401 message (as real APIs echo part of it). Answers are right for even
targets and wrong for odd ones; classify's judge gets <count>1</count>; curate_pretrain's
labelling and rewriting requests get the rules' labels and the document framed.

    srv = FakeLLM(key="sk-test", faults=["429", "500", "overloaded", "malformed"]).start()
    ... run gen_priming against srv.url ...
    srv.stop()
"""
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import countdown


def answer_text(user):
    """What the fake model writes for a 'Numbers: [..]\\nTarget: N' user turn (or the study's
    'Using the numbers [..], create an equation that equals N.'). It opens with a redundant
    <think>, as real models sometimes do (gen_priming strips it). A judge's question (asking
    for <count> tags) gets a count of 1; a curate_pretrain document its labels or rewrite."""
    if "<count>" in user:
        return "I see one instance. <count>1</count>"
    doc = re.search(r"<document>\n(.*)\n</document>", user, re.S)
    if doc:
        import curate_text
        if user.startswith("<document>"):  # labelling
            labels, solves = curate_text.rule_labels(doc.group(1))
            return json.dumps({**labels, "solves_problem": solves})
        q, t, a = curate_text.frame_document(doc.group(1))
        return f"<question>{q or '?'}</question>\n<think>{t or '...'}</think>\n<answer>{a or '?'}</answer>"
    nums = [int(x) for x in re.search(r"(?:Numbers:|Using the numbers) \[([^\]]*)\]", user).group(1).split(",")]
    target = int(re.search(r"(?:Target:|equals) (\d+)", user).group(1))
    expr = countdown.solve(nums, target) if target % 2 == 0 else " + ".join(map(str, nums))
    return (f"<think>Let me try {expr}. Let me go back to the start and check it again.</think>\n"
            f"<answer>{expr}</answer>")


def message(model, text, n=0):
    return {"id": f"msg_{n:04d}", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 812, "output_tokens": 40,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 790}}


def chat_completion(model, text, n=0):
    return {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": 1700000000,
            "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 812, "completion_tokens": 40, "total_tokens": 852}}


def anthropic_error(kind, msg):
    return {"type": "error", "error": {"type": kind, "message": msg}}


def openai_error(kind, msg):
    return {"error": {"message": msg, "type": kind, "param": None, "code": None}}


def check_anthropic_params(p):
    """The error message the real Messages API would give for these params, or None."""
    if not isinstance(p.get("model"), str) or not isinstance(p.get("max_tokens"), int):
        return "model and max_tokens are required"
    msgs = p.get("messages")
    if not msgs or msgs[-1].get("role") != "user" or not isinstance(msgs[-1].get("content"), str):
        return "messages: the last message must be a user turn"
    sysblocks = p.get("system")
    if not (isinstance(sysblocks, list) and sysblocks and sysblocks[-1].get("type") == "text"
            and sysblocks[-1].get("cache_control") == {"type": "ephemeral"}):
        return "system: expected text blocks, the last with cache_control ephemeral"
    return None


class FakeLLM:
    def __init__(self, key, faults=(), delay=0.0, batch_polls=1, batch_errored=0,
                 batch_faults=(), echo_401=False):
        self.key, self.delay, self.echo_401 = key, delay, echo_401
        self.faults = list(faults)              # for completion requests, served in order
        self.batch_faults = list(batch_faults)  # for batch create/poll/results requests
        self.batch_polls = batch_polls          # polls before a batch reports "ended"
        self.batch_errored = batch_errored      # requests of the first batch that error
        self.lock = threading.Lock()
        self.served_faults, self.completions, self.batches, self.files = [], 0, {}, {}
        self.requests = []                      # (method, path, status)
        self.bodies = []                        # parsed bodies of completion requests (batched ones too)

    # -- life cycle -------------------------------------------------------------------
    def start(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output quiet
                pass

            def do_POST(self):
                fake.handle(self, "POST")

            def do_GET(self):
                fake.handle(self, "GET")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    # -- plumbing -----------------------------------------------------------------------
    def send(self, h, status, obj=None, raw=None, headers=()):
        body = raw if raw is not None else json.dumps(obj)
        data = body.encode()
        h.send_response(status)
        h.send_header("content-type", "application/json")
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        with self.lock:
            self.requests.append((h.command, h.path, status))

    def fault(self, h, queue, openai):
        """Serve the next scripted fault from queue, if any; True if one was served."""
        with self.lock:
            kind = queue.pop(0) if queue else None
            if kind:
                self.served_faults.append(kind)
        if not kind:  # "" in a queue: this request is served normally
            return False
        err = openai_error if openai else anthropic_error
        if kind == "429":
            self.send(h, 429, err("rate_limit_error", "Rate limit reached; slow down"),
                      headers=[("retry-after", "0")])
        elif kind == "500":  # echoes the key: the client must never print it
            self.send(h, 500, err("api_error", f"Internal server error (caller key {self.key})"))
        elif kind == "overloaded":  # Anthropic's 529; OpenAI-compatible servers send 503
            self.send(h, 503 if openai else 529, err("overloaded_error", "Overloaded"))
        elif kind == "malformed":
            self.send(h, 200, raw='{"id": "msg_0001", "type": "message", "content": [{"ty')
        elif kind == "hollow":
            self.send(h, 200, {})
        elif kind in ("drop", "cut"):
            if kind == "cut":
                h.send_response(200)
                h.send_header("content-type", "application/json")
                h.send_header("content-length", "4000")
                h.end_headers()
                h.wfile.write(b'{"id": "msg_0001", "type": "mess')
            h.wfile.flush()
            h.close_connection = True
            with self.lock:
                self.requests.append((h.command, h.path, kind))
        elif "@" in kind:  # echo@N, malformed_echo@N: the key from character N - 10 on, in plain text
            what, at = kind.split("@")
            text = ("upstream said: " + "x" * 4000)[:int(at) - 10] + self.key + " (request rejected)"
            self.send(h, 200 if what == "malformed_echo" else 500, raw=text)
        return True

    def handle(self, h, method):
        if self.delay:
            time.sleep(self.delay)
        n = int(h.headers.get("content-length") or 0)
        body = h.rfile.read(n) if n else b""
        path = h.path.split("?")[0]
        if path == "/v1/chat/completions" and method == "POST":
            return self.chat(h, body)
        if path.startswith(("/v1/files", "/v1/batches")):
            return self.openai_batches(h, method, path, body)
        sent = h.headers.get("x-api-key") or (h.headers.get("authorization") or "").removeprefix("Bearer ")
        if sent != self.key:
            echo = f": {sent}" if self.echo_401 else ""
            return self.send(h, 401, anthropic_error("authentication_error", "invalid x-api-key" + echo))
        if not h.headers.get("anthropic-version"):
            return self.send(h, 400, anthropic_error("invalid_request_error",
                                                     "anthropic-version header is required"))
        if path == "/v1/messages" and method == "POST":
            return self.messages(h, body)
        if path == "/v1/messages/batches" and method == "POST":
            return self.batch_create(h, body)
        m = re.fullmatch(r"/v1/messages/batches/(\w+)(/results)?", path)
        if m and method == "GET":
            return self.batch_get(h, m.group(1), bool(m.group(2)))
        self.send(h, 404, anthropic_error("not_found_error", f"no route {method} {path}"))

    # -- endpoints ------------------------------------------------------------------------
    def messages(self, h, body):
        if self.fault(h, self.faults, openai=False):
            return
        p = json.loads(body)
        bad = check_anthropic_params(p)
        if bad:
            return self.send(h, 400, anthropic_error("invalid_request_error", bad))
        with self.lock:
            self.bodies.append(p)
            self.completions += 1
            k = self.completions
        self.send(h, 200, message(p["model"], answer_text(p["messages"][-1]["content"]), k))

    def chat(self, h, body):
        if h.headers.get("authorization") != f"Bearer {self.key}":
            echo = f" provided: {h.headers.get('authorization')}" if self.echo_401 else ""
            return self.send(h, 401, openai_error("invalid_request_error", "Incorrect API key" + echo))
        if self.fault(h, self.faults, openai=True):
            return
        p = json.loads(body)
        msgs = p.get("messages") or []
        if not isinstance(p.get("model"), str) or [m.get("role") for m in msgs] != ["system", "user"]:
            return self.send(h, 400, openai_error("invalid_request_error", "bad messages"))
        with self.lock:
            self.bodies.append(p)
            self.completions += 1
            k = self.completions
        self.send(h, 200, chat_completion(p["model"], answer_text(msgs[-1]["content"]), k))

    def openai_batches(self, h, method, path, body):
        """OpenAI's Batch API: upload the JSONL, create, poll (batch_polls), download."""
        if h.headers.get("authorization") != f"Bearer {self.key}":
            return self.send(h, 401, openai_error("invalid_request_error", "Incorrect API key"))
        if self.fault(h, self.batch_faults, openai=True):
            return
        m = re.fullmatch(r"/v1/(files|batches)(?:/([\w-]+))?(/content)?", path)
        kind, oid, content = m.groups() if m else (None, None, None)
        if kind == "files" and method == "POST" and oid is None:
            data = body.split(b"Content-Type: application/jsonl\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
            with self.lock:
                fid = f"file-{len(self.files)}"
                self.files[fid] = data
            return self.send(h, 200, {"id": fid, "object": "file", "purpose": "batch", "bytes": len(data)})
        if kind == "batches" and method == "POST" and oid is None:
            lines = [json.loads(x) for x in self.files[json.loads(body)["input_file_id"]].decode().splitlines()]
            with self.lock:
                bid = f"batch_{len(self.batches):04d}"
                self.batches[bid] = {"requests": lines, "polls": 0}
                self.bodies += [x["body"] for x in lines]
            return self.send(h, 200, self.openai_batch_object(bid))
        if kind == "batches" and method == "GET" and oid in self.batches:
            with self.lock:
                self.batches[oid]["polls"] += 1
            return self.send(h, 200, self.openai_batch_object(oid))
        if kind == "files" and content and oid in self.files:
            return self.send(h, 200, raw=self.files[oid].decode())
        self.send(h, 404, openai_error("invalid_request_error", f"no route {method} {path}"))

    def openai_batch_object(self, bid):
        b, n = self.batches[bid], len(self.batches[bid]["requests"])
        done = b["polls"] >= self.batch_polls
        if done and f"{bid}-out" not in self.files:
            self.files[f"{bid}-out"] = "".join(json.dumps({
                "id": f"r{i}", "custom_id": x["custom_id"], "error": None,
                "response": {"status_code": 200, "request_id": f"q{i}", "body": chat_completion(
                    x["body"]["model"], answer_text(x["body"]["messages"][-1]["content"]), i)}}) + "\n"
                for i, x in enumerate(b["requests"])).encode()
        return {"id": bid, "object": "batch", "endpoint": "/v1/chat/completions", "completion_window": "24h",
                "input_file_id": "file-0", "created_at": 0, "status": "completed" if done else "in_progress",
                "output_file_id": f"{bid}-out" if done else None,
                "request_counts": {"total": n, "completed": n if done else 0, "failed": 0}}

    def batch_create(self, h, body):
        if self.fault(h, self.batch_faults, openai=False):
            return
        reqs = json.loads(body).get("requests") or []
        for r in reqs:
            bad = (None if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(r.get("custom_id")))
                   else "custom_id must match ^[a-zA-Z0-9_-]{1,64}$")
            bad = bad or check_anthropic_params(r.get("params") or {})
            if bad:
                return self.send(h, 400, anthropic_error("invalid_request_error", bad))
        with self.lock:
            bid = f"msgbatch_{len(self.batches):04d}"
            self.batches[bid] = {"requests": reqs, "polls": 0}
            self.bodies += [r["params"] for r in reqs]
        self.send(h, 200, self.batch_object(bid))

    def batch_object(self, bid):
        b = self.batches[bid]
        ended = b["polls"] >= self.batch_polls
        n = len(b["requests"])
        return {"id": bid, "type": "message_batch",
                "processing_status": "ended" if ended else "in_progress",
                "request_counts": {"processing": 0 if ended else n, "succeeded": n if ended else 0,
                                   "errored": 0, "canceled": 0, "expired": 0},
                "created_at": "2025-01-01T00:00:00Z", "expires_at": "2025-01-02T00:00:00Z",
                "ended_at": "2025-01-01T00:10:00Z" if ended else None,
                "cancel_initiated_at": None, "archived_at": None,
                "results_url": f"{self.url}/v1/messages/batches/{bid}/results" if ended else None}

    def batch_get(self, h, bid, results):
        if self.fault(h, self.batch_faults, openai=False):
            return
        if bid not in self.batches:
            return self.send(h, 404, anthropic_error("not_found_error", f"no batch {bid}"))
        if not results:
            with self.lock:
                self.batches[bid]["polls"] += 1
            return self.send(h, 200, self.batch_object(bid))
        lines = []
        for i, r in enumerate(self.batches[bid]["requests"]):
            if bid == "msgbatch_0000" and i < self.batch_errored:
                res = {"type": "errored", "error": anthropic_error("api_error", "Internal error")}
            else:
                text = answer_text(r["params"]["messages"][-1]["content"])
                res = {"type": "succeeded", "message": message(r["params"]["model"], text, i)}
            lines.append(json.dumps({"custom_id": r["custom_id"], "result": res}))
        self.send(h, 200, raw="\n".join(lines) + "\n")
