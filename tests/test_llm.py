"""llm.py: the SDK clients against the local fake server (tests/fake_llm_server.py): faults
retried inside the SDKs' own loop and fast under a small --retry-base, keys never in a message,
no environment proxy for a local server, batches resumed from their state file; and the job
runner (skip what is done, append as finished, failed items skipped, a fatal error stops)."""
import json
import os
import threading
import time

import pytest

import llm

KEY = "sk-Qz7vK2mWx9TpL4rNc8Hj3Bf6Yd"
ASK = ("You write Countdown solutions.", "Numbers: [3, 5]\nTarget: 8", 64, 0.5)


def no_key_run(text, key=KEY):
    return not any(key[i:i + 6] in text for i in range(len(key) - 5))


def client(srv, provider="openai", **kw):
    kw.setdefault("retry_base", 0.001)
    url = srv.url + ("/v1" if provider == "openai" else "")
    return llm.Client(provider, "fake-model", url, log=kw.pop("log", lambda m: None), **kw)


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


@pytest.mark.parametrize("at", [80, 200, 300, 400])
def test_error_text_is_redacted_before_it_is_cut(at):
    """A server echoing the key where the message is cut must not leave its first characters."""
    plain = "upstream said: " + "x" * (at - 25) + KEY + " (rejected)"
    as_json = json.dumps({"error": {"message": plain}})
    blank = lambda t: t.replace(KEY, "[key]")   # a redactor that knows only the whole key
    for body in (plain, as_json):
        assert no_key_run(llm.error_text(body, blank))


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_every_fault_is_retried_by_the_sdk_fast_and_logged_without_the_key(provider, server, keys):
    faults = ["429", "500", "overloaded", "malformed", "hollow", "drop", "cut", "echo@80", "echo@300",
              "malformed_echo@80"]
    srv, lines = server(faults=list(faults)), []
    c = client(srv, provider, max_retries=len(faults), log=lines.append)
    t = time.time()
    assert c.chat(*ASK).endswith("<answer>3 + 5</answer>")
    assert time.time() - t < 5   # the SDKs' own first wait (0.5 s, doubling) would take ~25 s
    assert srv.served_faults == faults and (c.usage["requests"], c.usage["retries"]) == (11, 10)
    assert (c.usage["input_tokens"], c.usage["output_tokens"]) == (812, 40)
    assert [line.split("; retry ")[1] for line in lines] == [f"{i}/10" for i in range(1, 11)]
    text = "\n".join(lines)
    for why in ("HTTP 429", "HTTP 500", "unreadable reply (JSONDecodeError)", "unreadable reply (KeyError)",
                "no reply", "reply cut short", "[redacted]"):
        assert why in text, why
    assert no_key_run(text)


def test_spent_retries_and_refusals_raise_without_the_key(server, keys):
    """The unreadable 200 and the 500 that echo the key at the cut: Retryable once the retries
    are spent; a 401 echoing the wrong key: ApiError at once. No message holds 6 key characters."""
    srv = server(faults=["malformed_echo@80", "echo@200"], echo_401=True)
    c = client(srv, max_retries=0)
    for why in ("unreadable reply", "HTTP 500"):
        with pytest.raises(llm.Retryable) as e:
            c.chat(*ASK)
        assert why in str(e.value) and "gave up after 0 retries" in str(e.value) and no_key_run(str(e.value))
    os.environ["OPENAI_API_KEY"] = "sk-Wm4Rt8Yp2Kx6Vb9Nq3Lz7Hc5Jf"
    with pytest.raises(llm.ApiError) as e:
        client(srv, max_retries=5).chat(*ASK)
    assert "HTTP 401" in str(e.value) and no_key_run(str(e.value), "sk-Wm4Rt8Yp2Kx6Vb9Nq3Lz7Hc5Jf")


def test_a_reply_parse_rejects_is_retried_like_a_5xx(server, keys):
    srv, seen = server(), []

    def parse(text):
        seen.append(text)
        if len(seen) < 3:
            raise ValueError("not yet")
        return len(text)
    c = client(srv, max_retries=3)
    assert c.chat(*ASK, parse=parse) == len(seen[-1]) and len(seen) == 4   # 3 in the hook, once for the caller
    assert c.usage["retries"] == 2


def test_a_local_server_is_reached_past_an_environment_proxy(server, keys, monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")   # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    srv = server()
    for provider in ("anthropic", "openai"):
        assert "<answer>" in client(srv, provider, max_retries=0).chat(*ASK)


def test_missing_key_is_an_api_error_except_for_a_local_server(monkeypatch, server):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    for provider, url in (("anthropic", None), ("openai", None)):
        with pytest.raises(llm.ApiError, match=f"set {provider.upper()}_API_KEY"):
            llm.Client(provider, "m", url)
    assert llm.Client("openai", "m", "http://127.0.0.1:9/v1").base == "http://127.0.0.1:9/v1"


def test_anthropic_batch_resumes_from_its_state_file(server, keys, tmp_path):
    """A state file names the batch to collect: nothing is submitted again; what did not
    succeed is left out; a state file that is not ours is a one-line DataError."""
    srv = server(batch_errored=1, batch_polls=2)
    reqs = {f"t{i}": ("sys", f"Numbers: [1, {i}]\nTarget: {i + 1}", 16, 0.5) for i in range(3)}
    state = str(tmp_path / "state.json")
    first = client(srv, "anthropic").batch(reqs, state, poll=0.001)
    assert next(first)[0] in reqs and len(srv.batches) == 1   # submitted, collected, then "killed"
    assert json.load(open(state))[0]["ids"] == {"r0": "t0", "r1": "t1", "r2": "t2"}
    again = dict(client(srv, "anthropic").batch({"other": reqs["t0"]}, state, poll=0.001))
    assert sorted(again) == ["t1", "t2"] and len(srv.batches) == 1   # r0 errored: left out
    assert srv.bodies[0]["temperature"] == 0.5 and srv.bodies[0]["system"][0]["cache_control"]
    with open(state, "w") as f:
        f.write('{"batch_id": "x"}')
    with pytest.raises(llm.DataError, match="state.json: not a list of batches"):
        list(client(srv, "anthropic").batch(reqs, state))


def _jobs(tmp_path):
    return [{"id": f"j{i}"} for i in range(8)], str(tmp_path / "out.jsonl")


@pytest.mark.parametrize("concurrency", [1, 3])
def test_run_jobs_skips_done_appends_and_counts_failures(tmp_path, concurrency):
    items, path = _jobs(tmp_path)

    def work(it):
        if it["id"] == "j5":
            raise llm.Retryable("HTTP 529: overloaded (gave up after 2 retries)")
        return {"id": it["id"], "x": 1}
    logged = []
    n = llm.run_jobs(items + items[:2], work, path, concurrency, key=lambda it: it["id"], done={"j0"},
                     log=logged.append)
    recs = [json.loads(line) for line in open(path)]
    assert n == (6, 1) and sorted(r["id"] for r in recs) == ["j1", "j2", "j3", "j4", "j6", "j7"]
    assert len(logged) == 1 and "skipped j5" in logged[0] and "re-run" in logged[0]


def test_run_jobs_fatal_error_keeps_what_finished_and_stops_the_rest(tmp_path):
    items, path = _jobs(tmp_path)
    stopped, started = threading.Event(), []

    def work(it):
        started.append(it["id"])
        if it["id"] == "j3":
            raise llm.ApiError("HTTP 401: invalid key")
        return {"id": it["id"]}
    with pytest.raises(llm.ApiError):
        llm.run_jobs(iter(items), work, path, 1, stop=stopped.set)
    assert stopped.is_set() and started == ["j0", "j1", "j2", "j3"]
    assert [json.loads(line)["id"] for line in open(path)] == ["j0", "j1", "j2"]


def test_stop_ends_retries_of_requests_in_flight(server, keys):
    srv, lines = server(faults=["500"] * 50), []
    c = client(srv, max_retries=50, retry_base=0.05, log=lines.append)
    box = []
    t = threading.Thread(target=lambda: box.append(pytest.raises(Exception, c.chat, *ASK)))
    t.start()
    time.sleep(0.3)
    c.stop()
    t.join(timeout=10)
    assert not t.is_alive() and 0 < len(lines) < 50 and srv.completions == 0
    assert not isinstance(box[0].value, (llm.Retryable, llm.ApiError))   # the SDK's own, unretried


def test_doctests():
    import doctest
    res = doctest.testmod(llm)
    assert res.attempted >= 5 and res.failed == 0


API_FLAGS = ["--backend", "openai", "--api-model", "m-1", "--base-url", "http://127.0.0.1:9/v1",
             "--concurrency", "3", "--max-retries", "2", "--retry-base", "0.5", "--timeout", "9"]


@pytest.mark.parametrize("script, extra", [("gen_priming", []), ("classify", ["--input", "x"]),
                                           ("curate_pretrain", [])])
def test_the_three_scripts_take_the_same_api_flags(script, extra, capsys):
    """gen_priming, classify and curate_pretrain read llm.settings' rows: the same names, the same
    help and the same checks (--model, where a script has one, is a Hugging Face model)."""
    parse = __import__(script).parse_args
    a = parse(API_FLAGS + extra)
    assert (a.backend, a.api_model, a.base_url, a.concurrency, a.max_retries, a.retry_base, a.timeout) == \
        ("openai", "m-1", "http://127.0.0.1:9/v1", 3, 2, 0.5, 9.0)
    for bad, words in [(["--backoff", "1"], "unrecognized arguments: --backoff"),
                       (["--concurrency", "0"], "--concurrency must be at least 1"),
                       (["--backend", "gpt"], "--backend must be ")]:
        with pytest.raises(SystemExit) as e:
            parse(API_FLAGS + extra + bad)
        assert e.value.code == 2 and words in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--help"])
    shown = "".join(capsys.readouterr().out.split())   # argparse wraps lines (also at hyphens)
    for name, _, _, help_ in llm.settings("x", "does", {})[2:]:   # the rows no script words its own
        assert "".join(help_.split()) in shown, (script, name)


def test_default_anthropic_models_are_current_in_the_sdk():
    # claude-sonnet-4-5 (our default until 2026-11) reaches end of life on 30 Nov 2026 and
    # claude-3-5-haiku-20241022 is gone from the SDK's model list: a default must be neither
    import typing

    import anthropic.types.model
    from anthropic._data import DEPRECATED_MODELS

    import classify
    import curate_pretrain
    import gen_priming
    known = set(typing.get_args(typing.get_args(anthropic.types.model.Model)[0]))
    for name, model in [("gen_priming", gen_priming.DEFAULT_MODEL["anthropic"]),
                        ("classify", classify.DEFAULT_JUDGE["anthropic"]),
                        ("curate_pretrain", curate_pretrain.DEFAULT_MODEL["anthropic"])]:
        assert model in known and model not in DEPRECATED_MODELS, (name, model)
