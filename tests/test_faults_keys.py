"""No piece of an API key is ever printed or written: gen_priming, classify's judge and
curate_pretrain run against the local fake server (tests/fake_llm_server.py) through every
fault it serves (429 with Retry-After, 500 echoing the key, 529/503, a cut JSON body, a
hollow one, a dropped connection, a body cut mid-read, and servers that echo the key just
before the points where error text is cut: 80, 200, 300 and 400 characters), and with a
wrong key that the server echoes back. Everything they print and every file they write is
scanned for any 6 consecutive characters of a key."""
import os

import pytest

import classify
import study
import curate_pretrain as cp
import gen_priming as gp
from conftest import REPO

KEY = "sk-Qz7vK2mWx9TpL4rNc8Hj3Bf6Yd"
WRONG = "sk-Wm4Rt8Yp2Kx6Vb9Nq3Lz7Hc5Jf"
FAULTS = ["429", "500", "overloaded", "malformed", "hollow", "drop", "cut",
          "echo@80", "echo@200", "echo@300", "echo@400", "malformed_echo@80"]
FIXTURE = os.path.join(REPO, "tests", "fixtures", "math_docs.jsonl")


def key_runs(key, n=6):
    return {key[i:i + n] for i in range(len(key) - n + 1)}


def scan(tmp_path, cap, keys=(KEY, WRONG)):
    """Assert no run of 6 characters of any key in the captured output or any file written."""
    texts = {"stdout": cap.out, "stderr": cap.err}
    for root, _, files in os.walk(tmp_path):
        for f in files:
            with open(os.path.join(root, f), encoding="utf-8", errors="replace") as fh:
                texts[os.path.join(root, f)] = fh.read()
    for where, text in texts.items():
        leaked = sorted(r for k in keys for r in key_runs(k) if r in text)
        assert not leaked, f"{where} holds key characters {leaked[:3]}"


@pytest.mark.parametrize("backend", ["anthropic", "openai"])
def test_gen_priming_through_every_fault(backend, server, tmp_path, monkeypatch, capfd):
    srv = server(faults=list(FAULTS))
    monkeypatch.setenv("ANTHROPIC_API_KEY" if backend == "anthropic" else "OPENAI_API_KEY", KEY)
    out = str(tmp_path / "out")
    rc = gp.main(["--backend", backend, "--base-url", srv.url + ("/v1" if backend == "openai" else ""),
                  "--condition", "only_backtracking", "--n", "6", "--out", out, "--retry-base", "0.001",
                  "--max-retries", "20", "--concurrency", "3"])
    cap = capfd.readouterr()
    assert rc == 0, cap.err
    assert srv.served_faults == FAULTS and len(gp.read_jsonl(os.path.join(out, "only_backtracking.jsonl"))) == 6
    assert "[redacted]" in cap.err
    scan(tmp_path, cap)


def test_gen_priming_batch_through_every_fault(server, tmp_path, monkeypatch, capfd):
    """The first batch poll gets the hollow reply ("" lets the create through)."""
    faults = ["", "hollow", "429", "overloaded", "malformed", "drop", "cut", "echo@200", "malformed_echo@80"]
    srv = server(batch_faults=list(faults))
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    out = str(tmp_path / "out")
    rc = gp.main(["--backend", "anthropic", "--batch", "--base-url", srv.url, "--condition", "only_backtracking",
                  "--n", "4", "--out", out, "--poll", "0.01", "--retry-base", "0.001", "--max-retries", "20"])
    cap = capfd.readouterr()
    assert rc == 0, cap.err
    assert srv.served_faults == faults[1:] and len(srv.batches) == 1
    assert len(gp.read_jsonl(os.path.join(out, "only_backtracking.jsonl"))) == 4
    scan(tmp_path, cap)


def _records(tmp_path, n=3):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(f'{{"id": "r{i}", "response": "<think>44 + 19 = 63, not 76.</think>", '
                            f'"nums": [44, 19, 3, 1], "target": 76}}\n' for i in range(n)))
    return str(path)


def test_classify_through_every_fault(server, tmp_path, monkeypatch, capfd):
    srv = server(faults=list(FAULTS))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out = tmp_path / "out"
    rc = classify.main(["--backend", "openai", "--base-url", srv.url + "/v1", "--input", _records(tmp_path),
                        "--out", str(out), "--retry-base", "0.001", "--max-retries", "20", "--concurrency", "2"])
    cap = capfd.readouterr()
    assert rc == 0, cap.err
    recs = classify.read_records(str(out / "classified.jsonl"))
    assert srv.served_faults == FAULTS
    assert all(r[b] == 1 for r in recs for b in study.BEHAVIORS) and not any("missing" in r for r in recs)
    assert "[redacted]" in cap.err
    scan(tmp_path, cap)


def test_classify_retries_spent_on_echoing_server(server, tmp_path, monkeypatch, capfd):
    """Every retry of one request echoes the key right at a cut; the count is recorded missing."""
    srv = server(faults=["echo@400", "malformed_echo@80", "echo@200"])
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    rc = classify.main(["--backend", "openai", "--base-url", srv.url + "/v1", "--input", _records(tmp_path, 1),
                        "--out", str(tmp_path / "out"), "--retry-base", "0.001", "--max-retries", "2",
                        "--concurrency", "1"])
    cap = capfd.readouterr()
    assert rc == 0, cap.err
    rec = classify.read_records(str(tmp_path / "out" / "classified.jsonl"))[0]
    assert rec["verification"] is None and rec["failed"] == ["verification"]
    scan(tmp_path, cap)


def test_curate_through_every_fault(server, tmp_path, monkeypatch, capfd):
    srv = server(faults=list(FAULTS))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out = tmp_path / "out"
    rc = cp.main(["--source", FIXTURE, "--out", str(out), "--tokenizer", "tiny", "--token-budget", "600",
                  "--backend", "openai", "--base-url", srv.url + "/v1", "--retry-base", "0.001",
                  "--max-retries", "20", "--concurrency", "4"])
    cap = capfd.readouterr()
    assert rc == 0, cap.err
    assert srv.served_faults == FAULTS
    assert len(cp.read_log(str(out / "labels.jsonl"))) == len(cp.common.read_jsonl(FIXTURE))
    assert os.path.getsize(out / "rich.jsonl") > 0 and "[redacted]" in cap.err
    scan(tmp_path, cap)


@pytest.mark.parametrize("tool", ["gen_priming/anthropic", "gen_priming/openai", "classify", "curate"])
def test_wrong_key_echoed_back_is_never_printed(tool, server, tmp_path, monkeypatch, capfd):
    srv = server(echo_401=True)
    monkeypatch.setenv("ANTHROPIC_API_KEY", WRONG)
    monkeypatch.setenv("OPENAI_API_KEY", WRONG)
    out, oa = str(tmp_path / "out"), srv.url + "/v1"
    if tool.startswith("gen_priming"):
        backend = tool.split("/")[1]
        rc = gp.main(["--backend", backend, "--base-url", oa if backend == "openai" else srv.url,
                      "--condition", "only_backtracking", "--n", "2", "--out", out])
    elif tool == "classify":
        rc = classify.main(["--backend", "openai", "--base-url", oa, "--input", _records(tmp_path), "--out", out])
    else:
        rc = cp.main(["--source", FIXTURE, "--out", out, "--stage", "label", "--backend", "openai", "--base-url", oa])
    cap = capfd.readouterr()
    last = cap.err.strip().splitlines()[-1]
    assert rc == 2 and "error: " in last and "401" in last and "Traceback" not in cap.err, cap.err
    scan(tmp_path, cap)
