"""common.py: tiny model, model shapes, JSONL errors, atomic writes, dist setup."""
import json
import os

import pytest
import torch

import common
import countdown


def test_tiny_model_offline_roundtrip(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = common.build_tiny(str(tmp_path / "tiny"))
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "llama"
    assert None not in (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id)
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}) == 3
    prompt = countdown.make_prompt([12, 345, 6], 78)
    ids = tok(prompt).input_ids
    pieces = [tok.decode([i]) for i in ids]
    assert "3" in pieces and "4" in pieces and "5" in pieces and "345" not in pieces  # digits split
    assert all(not (p.strip().isdigit() and len(p.strip()) > 1) for p in pieces)
    assert tok.decode(ids) == prompt  # lossless
    assert "<answer>" in pieces and "</think>" not in tok.tokenize("x")  # tags are whole tokens
    out = model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    assert out.shape == (1, len(ids) + 5)
    # deterministic: a second build gives the same tokenizer and weights
    path2 = common.build_tiny(str(tmp_path / "tiny2"))
    assert AutoTokenizer.from_pretrained(path2)(prompt).input_ids == ids
    m2 = AutoModelForCausalLM.from_pretrained(path2)
    assert torch.equal(m2.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_load_by_alias_and_folder():
    m = common.load_model("tiny")
    tok = common.load_tokenizer("tiny")
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    m2 = common.load_model("x", init=common.tiny_path())
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in m2.parameters())
    assert common.resolve_model("qwen2.5-3b") == "Qwen/Qwen2.5-3B"
    assert common.resolve_model("meta-llama/Llama-3.2-3B") == "meta-llama/Llama-3.2-3B"
    with pytest.raises(FileNotFoundError):
        common.resolve_model("./no/such/folder")


def test_3b_shapes():
    assert round(common.count_params("qwen2.5-3b") / 1e9, 2) == 3.09
    assert round(common.count_params("llama-3.2-3b") / 1e9, 2) == 3.21
    m = common.load_model("random:tiny")
    assert m.config.model_type == "llama"


def test_read_jsonl_errors_name_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(common.DataError, match=r"x\.jsonl:3: malformed JSON"):
        common.read_jsonl(str(p))
    p.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(common.DataError, match=r"x\.jsonl:2: expected a JSON object"):
        common.read_jsonl(str(p))
    p.write_text('{"a": 1}\n{"b": 1}\n')
    with pytest.raises(common.DataError, match=r"x\.jsonl:2: record lacks a"):
        common.read_jsonl(str(p), required=("a",))
    with pytest.raises(common.DataError, match="no such file"):
        common.read_jsonl(str(tmp_path / "missing.jsonl"))


def test_atomic_writes_and_torn_log(tmp_path):
    p = tmp_path / "out.json"
    common.write_json(str(p), {"a": 1})
    common.write_json(str(p), {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []
    log = tmp_path / "log.jsonl"
    common.append_jsonl(str(log), [{"i": 0}, {"i": 1}])
    with open(log, "a") as f:
        f.write('{"i": 2')  # a write killed halfway
    assert common.read_jsonl_tolerant(str(log)) == [{"i": 0}, {"i": 1}]
    common.append_jsonl(str(log), [{"i": 2}])
    assert common.read_jsonl_tolerant(str(log)) == [{"i": 0}, {"i": 1}, {"i": 2}]
    log.write_text('{"i": 0}\n{"i": 1\n{"i": 2}\n')     # damaged in the middle: named, not a traceback
    with pytest.raises(common.DataError, match=r"log.jsonl:2: malformed JSON"):
        common.read_jsonl_tolerant(str(log))


def test_atomic_save_dir_keeps_old_on_failure(tmp_path):
    d = tmp_path / "ckpt"

    def good(tmp):
        open(os.path.join(tmp, "w.txt"), "w").write("v1")

    def bad(tmp):
        open(os.path.join(tmp, "w.txt"), "w").write("half")
        raise RuntimeError("killed")
    common.atomic_save_dir(str(d), good)
    with pytest.raises(RuntimeError):
        common.atomic_save_dir(str(d), bad)
    assert (d / "w.txt").read_text() == "v1"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_single_process_dist_and_log(tmp_path, capsys):
    info = common.setup_dist(device="cpu")
    assert info == dict(ddp=False, rank=0, local_rank=0, world_size=1, master=True, device="cpu")
    assert common.all_reduce_mean({"a": 2.0}, info) == {"a": 2.0}
    common.log_step(str(tmp_path), 3, {"loss": 1.23456, "lr": 1e-5}, keys=["loss"], total=10)
    line = capsys.readouterr().out.strip()
    assert line.startswith("step 3/10") and "loss 1.235" in line and "lr" not in line
    assert common.read_jsonl(str(tmp_path / "metrics.jsonl"))[0]["lr"] == 1e-5


KEY = "sk-Qz7vK2mWx9TpL4rNc8Hj3Bf6Yd"


def no_key_run(text, key=KEY):
    return not any(key[i:i + 6] in text for i in range(len(key) - 5))


def test_redact_keys_blanks_the_key_and_any_six_of_its_characters():
    text = f"got {KEY}, then {KEY[:12]}, then ...{KEY[9:20]}... and at the end {KEY[:7]}"
    got = common.redact_keys(text, [KEY, ""])
    assert no_key_run(got) and got.count("[redacted]") == 4 and got.startswith("got [redacted], then")
    assert common.redact_keys(f"short {KEY[:5]} stays", [KEY]) == f"short {KEY[:5]} stays"  # 5 is not a run
    assert common.redact_keys("nothing here", []) == "nothing here"


def test_study_table_download_goes_through_httpx2(tmp_path, monkeypatch):
    """A table not in the cache is fetched with httpx2 (no urllib in our code) and written
    whole; a failed download is a DataError naming the table, nothing left in the cache."""
    import httpx2
    monkeypatch.setattr(common, "CACHE", str(tmp_path))
    urls = []

    def fail(url, **kw):
        urls.append(url)
        raise httpx2.ConnectError("no route to host")
    monkeypatch.setattr(httpx2, "get", fail)
    with pytest.raises(common.DataError, match="study:qwen_results: could not download .*no route to host"):
        common.study_table("study:qwen_results")
    assert urls[0].endswith(f"{common.STUDY_COMMIT}/results/qwen_results.csv") and not list(tmp_path.rglob("*.csv"))
    monkeypatch.setattr(httpx2, "get", lambda url, **kw: httpx2.Response(200, text="step,acc\n0,0.1\n",
                                                                         request=httpx2.Request("GET", url)))
    path = common.study_table("study:qwen_results")
    assert open(path).read() == "step,acc\n0,0.1\n" and common.study_table("study:qwen_results") == path


def test_doctests():
    import doctest
    res = doctest.testmod(common)
    assert res.attempted >= 2 and res.failed == 0


def test_no_cudnn_attention_is_scoped_to_what_it_wraps():
    """cuDNN's SDPA backward gives NaN query gradients on Hopper (pytorch#196678; 3.2% of a
    miniature run's updates were skipped); turned off for the whole process it cost the
    miniature 2.5-4x per step. So it is off inside the context (whatever it was before) and
    back as it was after, also after an exception; load_model leaves the switch alone."""
    was = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        for before in (True, False):
            torch.backends.cuda.enable_cudnn_sdp(before)
            with common.no_cudnn_attention() as prior:
                assert prior is before and not torch.backends.cuda.cudnn_sdp_enabled()
            assert torch.backends.cuda.cudnn_sdp_enabled() is before
        torch.backends.cuda.enable_cudnn_sdp(True)
        with pytest.raises(ZeroDivisionError), common.no_cudnn_attention():
            1 / 0
        assert torch.backends.cuda.cudnn_sdp_enabled()
        common.load_model("tiny", device="cpu")
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)


def test_load_model_on_a_gpu_leaves_cudnn_attention_alone(monkeypatch):
    """The old load_model turned cuDNN attention off for the whole process on a GPU, which made
    generation fall back to the math kernel; now only training passes turn it off."""
    calls = []
    monkeypatch.setattr(torch.backends.cuda, "enable_cudnn_sdp", lambda on: calls.append(on))
    with pytest.raises(Exception):           # this machine has no GPU: fails once it needs one
        common.load_model("random:tiny", device="cuda")
    assert calls == []


def test_eta_counts_the_steps_done_since_a_resume(tmp_path, capsys):
    """A run resumed at step 4 that took 50 s for steps 5-9 has ~10 s left for step 10 (the old
    eta divided by all 9 steps and said 5 s, falling further behind the later the resume)."""
    import time
    common.log_step(str(tmp_path), 9, {"loss": 1.0}, keys=["loss"], total=10, t_start=time.time() - 50, start=4)
    assert capsys.readouterr().out.strip().endswith("eta 0m10s")


def test_atomic_write_removes_its_own_stale_temp_files_only(tmp_path):
    """A writer killed between mkstemp and rename leaves `.tmp-<name>.XXXXXXXX`; the next write
    of that name removes it (the kill matrix saw countdown's re-run leave one), and no other
    file's temp (a.jsonl's beside a.json) is touched."""
    stale, other = tmp_path / ".tmp-a.json.k3j9x0qz", tmp_path / ".tmp-a.jsonl.k3j9x0qz"
    stale.write_text("half")
    other.write_text("in flight")
    common.atomic_write_text(str(tmp_path / "a.json"), "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-a.jsonl.k3j9x0qz", "a.json"]
