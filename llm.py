"""
The LLM APIs that gen_priming.py, classify.py and curate_pretrain.py call, through the official
SDKs: Anthropic's Messages and Message Batches (`anthropic`), and OpenAI's chat completions,
Files and Batches (`openai`, which also reaches any OpenAI-compatible server, e.g. `vllm serve`,
through --base-url); and the resumable job runner the three scripts share.

    c = Client("openai", "Qwen/Qwen2.5-32B-Instruct", "http://localhost:8000/v1")
    c.chat("You are terse.", "2 + 2?", max_tokens=8, temperature=0.0)        # -> "4"
    for rid, text in c.batch({"q1": ("You are terse.", "2 + 2?", 8, 0.0)}, "out/batch.json"): ...

Keys come only from the environment (ANTHROPIC_API_KEY, OPENAI_API_KEY; *_BASE_URL for the
server) and go only into the SDK client; every message that leaves this module has them blanked
(common.redact_keys). Retries are the SDKs' own (--max-retries, --timeout; --retry-base scales
their backoff), and a reply the SDK would accept but we cannot use (JSON cut short, lacking the
fields we read, text the caller's parse() rejects) is retried the same way as a 5xx. A server on
this machine (127.0.0.1, localhost, ::1) is reached without any HTTP(S)_PROXY of the environment.

The three scripts' API flags are defined here once (settings(), check(), client()): --backend,
--api-model (the API's model id; --model, where a script has it, is a Hugging Face model),
--base-url, --concurrency, --max-retries, --retry-base, --timeout, and --batch / --poll.
"""
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, as_completed, wait

from common import DataError, append_jsonl, redact_keys, write_json

PUBLIC = {"anthropic": "https://api.anthropic.com", "openai": "https://api.openai.com/v1"}
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
BATCH_MAX = 10000        # requests per batch (Anthropic allows 100k, OpenAI 50k)
# The Anthropic API version our requests are written for. The 2.x SDK's default, 2026-10-21,
# refuses any temperature, and the study sets one (0.5 for the priming traces, 0 for judging and
# labelling); the 2.x SDK has no temperature argument either, so chat() sends it in extra_body.
ANTHROPIC_VERSION = "2023-06-01"
SDK_FIRST_WAIT = 0.5     # both SDKs' first retry wait (INITIAL_RETRY_DELAY); --retry-base replaces it
NO_REPLY = "no reply (connection lost or timed out)"
# what we read of each JSON reply, by path: a 2xx reply without it is unreadable (and retried)
FIELDS = ((r"/messages/batches(/[^/]+)?$", ("id", "processing_status")),
          (r"/batches(/[^/]+)?$", ("id", "status")),
          (r"/files$", ("id",)))
TURN = r"/(messages|chat/completions)$"   # one chat turn: its text must read (and parse)
UNREADABLE = (ValueError, KeyError, TypeError, IndexError, AttributeError)
STOPPED = {"anthropic": "AnthropicError", "openai": "OpenAIError"}   # the SDKs' base errors


class Retryable(Exception):
    """A request that failed after its retries (429, 5xx, overload, network, unreadable reply):
    worth asking again later; a re-run does."""


class ApiError(Exception):
    """A refusal that retrying will not fix (bad key, unknown model, bad request)."""


def reply(obj):
    """(text, input tokens, output tokens) of a Messages or chat-completions reply body (a
    dict); raises on a malformed one.

    >>> reply({"content": [{"type": "text", "text": "4"}], "usage": {"input_tokens": 9, "output_tokens": 1}})
    ('4', 9, 1)
    >>> reply({"choices": [{"message": {"content": "4"}}], "usage": {"prompt_tokens": 9, "completion_tokens": 1}})
    ('4', 9, 1)
    """
    u = obj.get("usage") or {}
    if "choices" in obj:
        text = obj["choices"][0]["message"]["content"]
    else:
        text = "".join(b["text"] for b in obj["content"] if b.get("type") == "text")
    if not isinstance(text, str):
        raise TypeError("no text in the reply")
    return (text, u.get("input_tokens", u.get("prompt_tokens")) or 0,
            u.get("output_tokens", u.get("completion_tokens")) or 0)


def unreadable(path, text, parse=None):
    """None if a 2xx reply to `path` holds what we read of it, else what is wrong with it.

    >>> unreadable("/v1/batches/b1", '{"id": "b1", "status": "completed"}'), unreadable("/v1/batches/b1", "{}")
    (None, 'lacks id, status')
    >>> unreadable("/v1/messages", '{"content": [{"ty'), unreadable("/v1/chat/completions", '{}')
    ('JSONDecodeError', 'KeyError')
    """
    try:
        if re.search(TURN, path):
            out = reply(json.loads(text))[0]
            if parse:
                parse(out)
            return None
        keys = next((k for pattern, k in FIELDS if re.search(pattern, path)), None)
        obj = json.loads(text) if keys else {}
    except UNREADABLE as e:
        return type(e).__name__
    missing = [k for k in keys or () if not isinstance(obj, dict) or obj.get(k) is None]
    return f"lacks {', '.join(missing)}" if missing else None


def error_text(body, redact):
    """The API's own error message from a JSON error body, else the start of the body;
    redacted before it is cut (a key echoed where the text is cut must not leave a piece).

    >>> error_text('{"error": {"type": "x", "message": "bad key sk-ab12cd34"}}', lambda t: t.replace("sk-ab12cd34", "[k]"))
    'bad key [k]'
    """
    try:
        err = json.loads(body).get("error")
        msg = err.get("message") if isinstance(err, dict) else err
        return redact(str(msg)[:20000])[:300]
    except (ValueError, AttributeError):
        return redact(body[:20000])[:200]


def _sdk_client(provider, key, base, max_retries, retry_base, timeout, hooks):
    """The provider's SDK client with our retries, timeout and hooks. Its retry loop is kept;
    only its backoff is scaled so that the first wait is retry_base (the SDKs fix it at 0.5 s:
    fault tests would take minutes), a positive Retry-After from the server still wins."""
    import httpx2
    if provider == "anthropic":
        import anthropic as sdk
        base_cls = sdk.Anthropic
    else:
        import openai as sdk
        base_cls = sdk.OpenAI

    class Sdk(base_cls):
        def _calculate_retry_timeout(self, remaining_retries, options, response_headers=None):
            wait = super()._calculate_retry_timeout(remaining_retries, options, response_headers)
            after = self._parse_retry_after_header(response_headers)
            return wait if after is not None and after > 0 else wait * retry_base / SDK_FIRST_WAIT

    local = httpx2.URL(base).host in LOOPBACK   # a local server: never through an environment proxy
    http = sdk.DefaultHttpxClient(trust_env=not local, event_hooks=hooks)
    headers = {"anthropic-version": ANTHROPIC_VERSION} if provider == "anthropic" else None
    return Sdk(api_key=key, base_url=base, max_retries=max_retries, timeout=timeout, http_client=http,
               default_headers=headers)


class Client:
    """Chat turns and batches for one model of one provider ("anthropic" or "openai").

    Our additions sit in the SDK's HTTP client (httpx2 event hooks), inside its retry loop: each
    attempt is counted (usage["requests"], usage["retries"]), each retry is logged with what went
    wrong, and a 2xx reply we cannot use raises there, so the SDK retries it like a dropped
    connection. usage also sums the tokens of every reply read."""

    def __init__(self, provider, model, base_url=None, max_retries=6, retry_base=1.0, timeout=300.0, log=None):
        env = provider.upper()
        key = os.environ.get(f"{env}_API_KEY") or None
        self.provider, self.model, self.max_retries = provider, model, max_retries
        self.base = (base_url or os.environ.get(f"{env}_BASE_URL") or PUBLIC[provider]).rstrip("/")
        if not key and (provider == "anthropic" or self.base == PUBLIC["openai"]):
            raise ApiError(f"set {env}_API_KEY in the environment"
                           + (" (or --base-url for a local server)" if provider == "openai" else ""))
        self._keys = [key] if key else []
        self.usage, self._lock = Counter(), threading.Lock()
        self._local, self._stop = threading.local(), threading.Event()   # _local: this thread's attempt
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        hooks = {"request": [self._sent], "response": [self._received]}
        # a server started without --api-key (vllm serve) ignores it; the SDK wants one: vLLM's "EMPTY"
        self.sdk = _sdk_client(provider, key or "EMPTY", self.base, max_retries, retry_base, timeout, hooks)

    def redact(self, text):
        return redact_keys(text, self._keys)

    def count(self, **kw):
        with self._lock:
            self.usage.update(kw)

    def stop(self):
        """Make no further attempts: a request in flight ends with its current one, unlogged
        (run_jobs calls this when a run stops on an error, so its threads do not linger)."""
        self._stop.set()

    # -- the hooks: every HTTP attempt passes here ------------------------------------

    def _sent(self, request):
        """Count the attempt; a retry is logged with what went wrong with the one before."""
        if self._stop.is_set():   # the SDKs pass their own base error on, unretried
            raise getattr(sys.modules[self.provider], STOPPED[self.provider])("stopped: the run has ended")
        n = int(request.headers.get("x-stainless-retry-count") or 0)
        self.count(requests=1, retries=int(n > 0))
        if n:
            why = getattr(self._local, "why", None) or NO_REPLY
            self.log(f"{request.method} {request.url.path}: {why}; retry {n}/{self.max_retries}")
        self._local.why = None

    def _received(self, response):
        """Keep why an attempt failed; a 2xx body cut short or unreadable raises (retried)."""
        import httpx2
        try:
            response.read()
        except httpx2.HTTPError:
            self._local.why = "reply cut short"
            raise
        status, text = response.status_code, response.text
        if status >= 400:
            self._local.why = f"HTTP {status}: {error_text(text, self.redact)}"
        elif status < 300:
            bad = unreadable(response.request.url.path, text, getattr(self._local, "parse", None))
            if bad:
                self._local.why = f"unreadable reply ({bad}): {self.redact(text[:20000])[:80]!r}"
                raise httpx2.DecodingError(self._local.why, request=response.request)

    def _call(self, fn, *args, **kw):
        """fn(*args, **kw), an SDK call; its failure as ours, with a message free of keys:
        Retryable once the SDK's retries are spent, ApiError for a refusal."""
        sdk = sys.modules[self.provider]
        try:
            return fn(*args, **kw)
        except sdk.APIStatusError as e:
            why = getattr(self._local, "why", None) or f"HTTP {e.status_code}"
            if e.status_code not in (408, 409, 429) and e.status_code < 500:
                raise ApiError(why) from None
        except sdk.APIConnectionError:   # also a timeout, and a reply _received found unreadable
            why = getattr(self._local, "why", None) or NO_REPLY
        raise Retryable(f"{why} (gave up after {self.max_retries} retries)")

    # -- one turn ------------------------------------------------------------------------

    def body(self, system, user, max_tokens, temperature):
        """One turn's request in the provider's format (a batch request holds the same). For
        Anthropic the system prompt is a cached block, the prefix every request shares (the API
        ignores the mark below its minimum cacheable length)."""
        turn = {"model": self.model, "max_tokens": max_tokens, "temperature": temperature,
                "messages": [{"role": "user", "content": user}]}
        if system and self.provider == "anthropic":
            turn["system"] = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
        elif system:
            turn["messages"].insert(0, {"role": "system", "content": system})
        return turn

    def chat(self, system, user, max_tokens=1024, temperature=0.0, parse=None):
        """The reply text to one turn, or parse(text): a text that parse() rejects (raising
        ValueError, KeyError, TypeError, IndexError or AttributeError) is retried like a 5xx."""
        api = self.sdk.messages if self.provider == "anthropic" else self.sdk.chat.completions
        body = self.body(system, user, max_tokens, temperature)
        if self.provider == "anthropic":   # no such argument in the 2.x SDK (ANTHROPIC_VERSION)
            body["extra_body"] = {"temperature": body.pop("temperature")}
        self._local.parse = parse
        try:
            raw = self._call(api.with_raw_response.create, **body)
        finally:
            self._local.parse = None
        text, n_in, n_out = reply(raw.http_response.json())
        self.count(input_tokens=n_in, output_tokens=n_out)
        return parse(text) if parse else text

    # -- batches: half price, answered within 24 hours -----------------------------------

    def batch(self, requests, state, poll=30.0):
        """Yield (id, reply text) for requests {id: (system, user, max_tokens, temperature)}
        through the provider's batch API, as each batch is collected; requests without a usable
        answer are left out (the caller asks again). The batch ids are written to `state` (JSON)
        as soon as each is created: while it exists, a call collects its batches (a killed run
        resumes polling instead of paying twice) and submits nothing. The caller deletes it once
        what was yielded is stored."""
        entries = _read_state(state)
        if entries:
            self.log(f"resuming batch {', '.join(e['batch_id'] for e in entries)} from {state}")
        items = [] if entries else list(requests.items())
        for i in range(0, len(items), BATCH_MAX):
            chunk = items[i:i + BATCH_MAX]
            ids = {f"r{j}": rid for j, (rid, _) in enumerate(chunk)}   # Anthropic's custom_id: [\w-]{1,64}
            bid = self._submit([(cid, self.body(*req)) for cid, (_, req) in zip(ids, chunk)])
            entries.append({"batch_id": bid, "ids": ids})
            write_json(state, entries)
            self.log(f"submitted batch {bid} ({len(chunk)} requests)")
        for e in entries:
            answers = self._answers(self._wait(e["batch_id"], poll))
            got = {e["ids"][cid]: text for cid, text in answers.items() if cid in e["ids"]}
            if len(got) < len(e["ids"]):
                self.log(f"batch {e['batch_id']}: {len(e['ids']) - len(got)} of {len(e['ids'])} requests "
                         "got no usable answer")
            yield from got.items()

    def _submit(self, reqs):
        """Create one batch of [(custom id, request body)]; its id."""
        if self.provider == "anthropic":
            batch = self._call(self.sdk.messages.batches.create,
                               requests=[{"custom_id": cid, "params": body} for cid, body in reqs])
            return batch.id
        lines = "".join(json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                                    "body": body}) + "\n" for cid, body in reqs)
        f = self._call(self.sdk.files.create, file=("batch.jsonl", lines.encode(), "application/jsonl"),
                       purpose="batch")
        return self._call(self.sdk.batches.create, input_file_id=f.id, endpoint="/v1/chat/completions",
                          completion_window="24h").id

    def _wait(self, batch_id, poll):
        """Poll a batch until it has ended; then the text of its results (JSONL; "" if none)."""
        last = None
        while True:
            if self.provider == "anthropic":
                b = self._call(self.sdk.messages.batches.retrieve, batch_id)
                status, ended = b.processing_status, b.processing_status == "ended"
            else:
                b = self._call(self.sdk.batches.retrieve, batch_id)
                status, ended = b.status, b.status in ("completed", "failed", "expired", "cancelled")
            counts = b.request_counts.to_dict() if b.request_counts else {}
            if (status, counts) != last:
                self.log(f"batch {batch_id}: {status} {counts}")
                last = (status, counts)
            if ended:
                break
            time.sleep(poll)
        if self.provider == "anthropic":
            raw = self._call(self.sdk.messages.batches.with_raw_response.results, batch_id)
            return raw.http_response.text
        return self._call(self.sdk.files.content, b.output_file_id).text if b.output_file_id else ""

    def _answers(self, results):
        """{custom id: text} of a batch's result lines that succeeded and read; a torn, failed
        or unreadable line is left out (its request is asked again)."""
        out = {}
        for line in results.splitlines():
            try:
                r = json.loads(line)
                if self.provider == "anthropic":
                    ok, body = r["result"]["type"] == "succeeded", r["result"].get("message")
                else:
                    ok, body = r["response"]["status_code"] == 200, r["response"].get("body")
                if ok:
                    text, n_in, n_out = reply(body)
                    self.count(input_tokens=n_in, output_tokens=n_out)
                    out[r["custom_id"]] = text
            except UNREADABLE:
                continue
        return out


def _read_state(path):
    """The batches a state file lists ([] if there is none)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        try:
            entries = json.load(f)
        except ValueError:
            entries = None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("batch_id"), str)
                                                and isinstance(e.get("ids"), dict) for e in entries):
        raise DataError(f"{path}: not a list of batches this tool wrote; delete it to submit anew "
                        "(what its batches answered is then paid for again)")
    return entries


def run_jobs(items, work, path, concurrency=1, key=None, done=(), desc=None, total=None, initial=0,
             flush_every=1, log=print, stop=None):
    """Apply work(item) -> record to each item whose key(item) is not in `done` (nor seen
    before), `concurrency` at a time in threads (at most twice that many queued, so `items` may
    be a long stream), and append each record to the JSONL file `path` as it finishes, in groups
    of flush_every: a killed run loses at most one group and a re-run skips what is there. An
    item whose request failed after its retries (Retryable) is skipped and counted (a re-run
    asks again); any other error stops the run, after what was finished is written, and calls
    stop() (Client.stop: the requests still in flight give up instead of retrying on).
    Returns (records written, items failed)."""
    from tqdm import tqdm
    seen, buf, n = set(done), [], Counter()
    name = key or (lambda item: item.get("id"))
    bar = tqdm(total=total, initial=initial, desc=desc, unit="rec", file=sys.stderr, leave=False, disable=None)

    def fresh():
        for item in items:
            k = key(item) if key else None
            if k is None or k not in seen:
                seen.add(k)
                yield item

    def finish(item, result):
        try:
            rec = result()
        except Retryable as e:
            n["failed"] += 1
            log(f"{desc or 'job'}: skipped {name(item)} for now (a re-run asks again): {e}")
            return
        buf.append(rec)
        n["done"] += 1
        bar.update(1)
        if len(buf) >= flush_every:
            append_jsonl(path, buf)
            buf.clear()
    pool = ThreadPoolExecutor(max_workers=concurrency) if concurrency > 1 else None
    try:
        if pool is None:
            for item in fresh():
                finish(item, lambda: work(item))
        else:
            pending = {}
            for item in fresh():
                pending[pool.submit(work, item)] = item
                while len(pending) >= 2 * concurrency:
                    ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for f in ready:
                        finish(pending.pop(f), f.result)
            for f in as_completed(list(pending)):
                finish(pending.pop(f), f.result)
    except BaseException:   # Ctrl-C, an ApiError: what was finished is kept (below)
        if stop is not None:
            stop()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if buf:
            append_jsonl(path, buf)
        bar.close()
    return n["done"], n["failed"]


# ---------------------------------------------------------------------------------
# the API flags of the three scripts: one set of names, help texts and checks

def settings(offline, does, models, batch=False, concurrency=8, max_retries=6, retry_base=1.0,
             timeout=300.0, poll=30.0):
    """(name, default, type, help) rows of the API flags, for common.add_settings. `offline`
    names the script's own --backend that needs no API, `does` says what a backend does,
    `models` gives the model per provider when --api-model is unset, and `batch` whether the
    script has --batch and --poll (either provider's batch API). The numbers are defaults a
    script changes where its requests differ (a 1024-token trace takes longer than a count).

    >>> [r[0] for r in settings("rules", "counts the behaviors", {"openai": "gpt-4o-mini"})]
    ['backend', 'api_model', 'base_url', 'concurrency', 'max_retries', 'retry_base', 'timeout']
    >>> settings("rules", "judges", {}, batch=True, poll=5.0)[-1][:2]
    ('poll', 5.0)
    """
    rows = [
        ("backend", offline, str, f"who {does}: {offline} (offline, no key), anthropic (Claude; "
         "ANTHROPIC_API_KEY in the environment) or openai (OpenAI or any compatible server, e.g. "
         "vllm serve; OPENAI_API_KEY)"),
        ("api_model", None, str, "API model id; unset: " + ", ".join(f"{k} {v}" for k, v in models.items())),
        ("base_url", None, str, "API base URL, e.g. http://localhost:8000/v1; unset: env ANTHROPIC_BASE_URL / "
         "OPENAI_BASE_URL, else the public API"),
        ("concurrency", concurrency, int, "API: requests in flight at once"),
        ("max_retries", max_retries, int, "API: retries of a request on 429, 5xx, overload, network "
         "errors or an unreadable reply"),
        ("retry_base", retry_base, float, "API: first retry wait in seconds (the SDK's backoff, doubling, "
         "scaled to start here; a server's Retry-After wins)"),
        ("timeout", timeout, float, "API: seconds before one HTTP request is abandoned (and retried)")]
    if batch:
        rows += [("batch", False, bool, "send the requests through the provider's batch API: Anthropic's "
                  "Message Batches or OpenAI's Batch API (half price; results within 24 h; not every "
                  "OpenAI-compatible server has one)"),
                 ("poll", poll, float, "--batch: seconds between status polls")]
    return rows


def check(args, offline, batch=False):
    """The first problem with the API flags of args (one line naming the flag), else None.

    >>> from argparse import Namespace
    >>> ok = dict(backend="openai", concurrency=8, max_retries=6, retry_base=1.0, timeout=60.0)
    >>> check(Namespace(**ok), "rules"), check(Namespace(**{**ok, "backend": "gpt"}), "rules")
    (None, '--backend must be rules, anthropic or openai')
    >>> check(Namespace(**{**ok, "backend": "rules"}, batch=True, poll=1.0), "rules", batch=True)
    '--batch needs --backend anthropic or openai'
    """
    a = args
    for bad, msg in [
            (a.backend not in (offline, "anthropic", "openai"), f"--backend must be {offline}, anthropic or openai"),
            (a.concurrency < 1, "--concurrency must be at least 1"),
            (a.max_retries < 0 or a.retry_base < 0, "--max-retries and --retry-base must be >= 0"),
            (not a.timeout > 0, "--timeout must be positive"),
            (batch and a.poll < 0, "--poll must be >= 0"),
            (batch and a.batch and a.backend == offline, "--batch needs --backend anthropic or openai")]:
        if bad:
            return msg
    return None


def client(args, models, log=None):
    """The Client that args' API flags describe (--api-model unset: models[--backend])."""
    return Client(args.backend, args.api_model or models[args.backend], args.base_url, args.max_retries,
                  args.retry_base, args.timeout, log=log)
