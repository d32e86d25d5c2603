"""sft.py: loss masking and packing, learning on priming traces, kill-and-resume,
bad-input messages, and the script end to end (final/ loads and works as --init).

Everything runs on one CPU thread: on a shared 2-core machine two threads are many
times slower than one.
"""
import contextlib
import json
import os
import subprocess
import sys

import pytest
import torch

import common
import countdown
import sft
from conftest import REPO

ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


_nullctx = contextlib.nullcontext  # forward_loss's autocast context on the CPU


def write_jsonl(path, recs):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    return str(path)


def short_traces(n, seed=0):
    """Short prompt/completion records (for the mechanics tests, where content is irrelevant)."""
    tasks = countdown.generate_tasks(n, seed=seed, sizes=(3,), target_range=(10, 25))
    return [{"prompt": countdown.make_prompt(t["nums"], t["target"]),
             "completion": f"\nLet me try {t['solution']}. That works.\n</think>\n"
                           f"<answer>{t['solution']}</answer>"} for t in tasks]


def metrics(out):
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


def weights(path):
    from safetensors.torch import load_file
    return load_file(os.path.join(path, "model.safetensors"))


# ---------------------------------------------------------------- masking (pure functions)
def loss_of(examples, logits):
    batch = sft.collate([[e] for e in examples], pad_id=0)
    return sft.token_loss_sum(logits[:, :batch["labels"].shape[1]], batch["labels"])


def test_prompt_positions_carry_no_loss():
    g = torch.Generator().manual_seed(0)
    prompt, completion, eos = [5, 6, 7, 8, 9], [10, 11, 12], 1
    logits = torch.randn(2, 9, 32, generator=g)
    base, n = loss_of([sft.make_example(prompt, completion, eos)] * 2, logits)
    assert n == 2 * (len(completion) + 1)  # completion + EOS, per row
    other_prompt = [20, 21, 22, 23, 24]    # what the prompt positions' labels would be
    same, _ = loss_of([sft.make_example(other_prompt, completion, eos)] * 2, logits)
    assert same == base
    changed, _ = loss_of([sft.make_example(prompt, [10, 13, 12], eos)] * 2, logits)
    assert changed != base
    no_eos, _ = loss_of([sft.make_example(prompt, completion, 3)] * 2, logits)
    assert no_eos != base                  # EOS after the completion is a target
    # text records: every token but the first (nothing precedes it) is a target
    ids, labels = sft.make_example([], [4, 5, 6, 7], eos)
    assert ids == [4, 5, 6, 7, eos] and labels == [sft.IGNORE, 5, 6, 7, eos]
    # padding carries no loss: a short row padded in a batch keeps its own loss
    short = sft.make_example([5, 6], [10], eos)
    alone, _ = loss_of([short], logits[:1])
    both, _ = loss_of([short, sft.make_example(prompt, completion, eos)], logits)
    rest, _ = loss_of([sft.make_example(prompt, completion, eos)], logits[1:])
    assert torch.allclose(both, alone + rest)


def test_packing_and_micro_batching_leave_the_loss_unchanged():
    model = common.load_model("tiny").eval()
    exs = [sft.make_example([5, 6, 7, 8], [9, 10, 11], 1), sft.make_example([], [20, 21, 22, 23], 1),
           sft.make_example([30, 31, 32], [33, 34], 1)]
    with torch.no_grad():
        a, na = sft.forward_loss(model, sft.collate([[e] for e in exs], 2), "cpu", _nullctx)
        b, nb = sft.forward_loss(model, sft.collate([exs[:2], exs[2:]], 2, packed=True), "cpu", _nullctx)
    assert na == nb == sum(sft.n_targets([e]) for e in exs)
    assert torch.allclose(a, b, atol=1e-4)   # no attention across packed examples
    rows = sft.pack_examples([sft.make_example([1] * k, [2] * k, 1) for k in (1, 2, 3, 4, 5)], 12)  # lengths 3..11
    assert all(sft.row_len(r) <= 12 for r in rows) and sum(len(r) for r in rows) == 5 and len(rows) == 3
    # the data order: a pure function of the step; each row at most once per epoch
    epoch = [i for s in range(3) for i in sft.batch_rows(s, 13, 4, seed=0)]
    assert len(set(epoch)) == 12 and epoch == [i for s in range(3) for i in sft.batch_rows(s, 13, 4, 0)]
    assert sft.batch_rows(3, 13, 4, 0) != sft.batch_rows(0, 13, 4, 0)  # a new shuffle each epoch


# ---------------------------------------------------------------- learning
def test_sft_on_priming_traces_lowers_loss_and_closes_answers(tmp_path):
    import gen_priming
    from transformers import AutoModelForCausalLM
    # 2000 symbolic all_strategies traces; 3 numbers and one attempt keep them ~230 tokens
    assert gen_priming.main(["--condition", "all_strategies", "--n", "2000", "--out", str(tmp_path / "p"),
                             "--sizes", "3", "--budget", "1"]) in (0, None)
    data = str(tmp_path / "p" / "all_strategies.jsonl")
    out = str(tmp_path / "run")
    sft.main(["--model", "tiny", "--data", data, "--eval-frac", "0.05", "--eval-max", "32",
              "--out", out, "--batch-size", "4", "--micro-batch", "4", "--max-steps", "200",
              "--lr", "2e-3", "--min-lr-frac", "1", "--grad-clip", "0.5", "--warmup-frac", "0.03",
              "--max-len", "384", "--save-every", "0", "--eval-every", "0"])
    ev = [m["eval_loss"] for m in metrics(out) if "eval_loss" in m]
    print(f"held-out loss {ev[0]:.3f} -> {ev[-1]:.3f}")
    assert ev[-1] < 0.5 * ev[0] and ev[-1] < 2.0
    tok = common.load_tokenizer(os.path.join(out, "final"))
    model = AutoModelForCausalLM.from_pretrained(os.path.join(out, "final")).eval()
    train_recs, _ = sft.split_eval(common.read_jsonl(data), 0.05, seed=0)  # the run's own split
    prompts = [r["prompt"] for r in train_recs[:32]]
    enc = tok(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=320, do_sample=True, temperature=0.7,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    closed = sum(countdown.extract_answer(t) is not None for t in texts) / len(texts)
    print(f"closes <answer>...</answer> in {closed:.0%} of {len(texts)} samples")
    assert closed >= 0.6


# ---------------------------------------------------------------- kill and resume
def test_killed_run_resumes_to_the_same_weights(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", short_traces(40))
    flags = ["--model", "tiny", "--data", data, "--eval-frac", "0.1", "--batch-size", "4",
             "--micro-batch", "2", "--max-steps", "7", "--lr", "3e-3", "--save-every", "3",
             "--keep", "1", "--eval-every", "3"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    sft.main(flags + ["--out", a])
    sft.main(flags + ["--out", b, "--stop-after", "5"])   # dies after step 5; newest checkpoint: 3
    assert not os.path.exists(os.path.join(b, "final"))
    assert sorted(os.listdir(os.path.join(b, "ckpt"))) == ["step_000003"]
    assert os.path.exists(os.path.join(b, "ckpt", "step_000003", "trainer_state.json"))
    with pytest.raises(SystemExit, match="--resume"):    # never silently overwrites a run
        sft.main(flags + ["--out", b])
    sft.main(flags + ["--out", b, "--resume"])
    wa, wb = weights(os.path.join(a, "final")), weights(os.path.join(b, "final"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)
    ma, mb = metrics(a), metrics(b)
    assert [m["step"] for m in mb] == list(range(8))       # steps 4-5 were redone, not repeated
    assert [m.get("loss") for m in mb] == pytest.approx([m.get("loss") for m in ma], abs=1e-6)


def test_training_passes_run_without_cudnn_attention(tmp_path, monkeypatch):
    """sft.py's training forward and backward run with cuDNN attention off (pytorch#196678:
    NaN query gradients on Hopper), its evaluation with the default kernels; the switch is as
    before when the run ends. Fails if train_step drops the guard."""
    seen = {"train": [], "eval": [], "backward": []}
    inner = sft.forward_loss

    def spy(model, batch, device, autocast):
        s, n = inner(model, batch, device, autocast)
        seen["train" if torch.is_grad_enabled() else "eval"].append(torch.backends.cuda.cudnn_sdp_enabled())
        if s.requires_grad:
            s.register_hook(lambda g: seen["backward"].append(torch.backends.cuda.cudnn_sdp_enabled()))
        return s, n
    monkeypatch.setattr(sft, "forward_loss", spy)
    was = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        sft.main(["--model", "tiny", "--data", write_jsonl(tmp_path / "d.jsonl", short_traces(20)),
                  "--out", str(tmp_path / "o"), "--eval-frac", "0.2", "--batch-size", "4", "--max-steps", "2",
                  "--save-every", "0", "--eval-every", "1"])
        assert seen["train"] and seen["backward"] and not any(seen["train"] + seen["backward"])
        assert seen["eval"] and all(seen["eval"]) and torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)


# ---------------------------------------------------------------- bad input
def bad_data_message(tmp_path, path, *extra):
    with pytest.raises(SystemExit) as e:
        sft.main(["--model", "tiny", "--data", str(path), "--out", str(tmp_path / "bad"), *extra])
    return str(e.value)


def test_bad_input_gets_clear_messages(tmp_path, capsys):
    assert "no such file" in bad_data_message(tmp_path, tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "empty" in bad_data_message(tmp_path, empty)
    good = json.dumps({"prompt": "p", "completion": "c"})
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + "\n{not json\n")
    assert f"{bad}:2: malformed JSON" in bad_data_message(tmp_path, bad)
    neither = tmp_path / "neither.jsonl"
    neither.write_text(good + "\n\n" + json.dumps({"question": "q"}) + "\n")
    msg = bad_data_message(tmp_path, neither)
    assert f"{neither}:3:" in msg and "neither prompt/completion nor text" in msg
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(good + "\n" + json.dumps({"text": "t"}) + "\n")
    msg = bad_data_message(tmp_path, mixed)
    assert f"{mixed}:2:" in msg and "text record" in msg
    half = tmp_path / "half.jsonl"
    half.write_text(json.dumps({"prompt": "p"}) + "\n")
    assert "no completion" in bad_data_message(tmp_path, half)
    # over-long sequences: dropped or truncated, with a count
    tok = common.load_tokenizer("tiny")
    recs = [{"text": "1 2 3 4 5 6 7 8 9 " * 8}, {"text": "short"}]
    kept, msg = sft.tokenize_records(recs, "text", tok, max_len=32, overlong="drop")
    assert len(kept) == 1 and msg.startswith("1 of 2 sequences are longer than --max-len 32") and "dropped" in msg
    kept, msg = sft.tokenize_records(recs, "text", tok, max_len=32, overlong="truncate")
    assert [len(ids) for ids, _ in kept] == [32, len(kept[1][0])] and "truncated" in msg
    pc = [{"prompt": "1 2 3 4 5 6 7 8 9 " * 8, "completion": "x"}]
    kept, msg = sft.tokenize_records(pc, "pc", tok, max_len=32, overlong="truncate")
    assert kept == [] and "no completion left" in msg
    long_file = write_jsonl(tmp_path / "long.jsonl", pc)
    assert "no usable training sequences" in bad_data_message(tmp_path, long_file, "--max-len", "32")
    assert "dropped" in capsys.readouterr().out


# ---------------------------------------------------------------- the script end to end
def test_script_runs_and_final_works_as_init(tmp_path):
    from transformers import AutoModelForCausalLM
    data = write_jsonl(tmp_path / "d.jsonl", short_traces(24, seed=1))
    out = str(tmp_path / "run")
    r = subprocess.run([sys.executable, "sft.py", "--model", "tiny", "--data", data, "--out", out,
                        "--eval-frac", "0.2", "--batch-size", "4", "--micro-batch", "2",
                        "--max-steps", "3", "--lr", "1e-3", "--save-every", "2"],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    lines = [l for l in r.stdout.splitlines() if l.startswith("step 3/3")]
    assert lines and all(k in lines[0] for k in ("loss", "lr", "tok/s", "eta", "eval_loss"))
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["steps"] == 3 and cfg["grad_accum"] == 2 and cfg["precision"] == "fp32"
    assert [m["step"] for m in metrics(out)] == [0, 1, 2, 3]
    final = os.path.join(out, "final")
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.config.vocab_size == len(common.load_tokenizer(final))
    # final/ as --init: the second run starts from its weights (same held-out split, same loss)
    out2 = str(tmp_path / "run2")
    sft.main(["--model", "tiny", "--init", final, "--data", data, "--out", out2, "--eval-frac", "0.2",
              "--batch-size", "4", "--micro-batch", "4", "--max-steps", "1", "--lr", "1e-3"])
    assert metrics(out2)[0]["eval_loss"] == pytest.approx(metrics(out)[-1]["eval_loss"], abs=1e-5)
    assert json.load(open(os.path.join(out2, "config.json")))["init"] == final


def test_init_alone_brings_its_own_tokenizer(tmp_path, wider_tiny, capsys):
    """--init alone: --model is that folder (its tokenizer, saved in final/); a --model whose
    tokenizer outgrows --init's embeddings stops with one line naming --model."""
    data = write_jsonl(tmp_path / "d.jsonl", short_traces(8, seed=2))
    flags = ["--data", data, "--batch-size", "2", "--micro-batch", "2", "--max-steps", "1", "--device", "cpu"]
    sft.main(["--init", wider_tiny, "--out", str(tmp_path / "run"), *flags])
    assert json.load(open(tmp_path / "run" / "config.json"))["model"] == wider_tiny
    n_tiny = len(common.load_tokenizer("tiny"))
    assert len(common.load_tokenizer(str(tmp_path / "run" / "final"))) == n_tiny + 8
    with pytest.raises(SystemExit) as e:
        sft.main(["--model", wider_tiny, "--init", common.tiny_path(), "--out", str(tmp_path / "bad"), *flags])
    assert e.value.code == 2
    assert f"--model's tokenizer has {n_tiny + 8} tokens, the model only {n_tiny}" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "final").exists()


def test_two_ranks_ddp_and_fsdp_update_as_one_process(tmp_path):
    """Under torchrun (2 CPU ranks, gloo, fp32), DDP and FSDP2 (--fsdp) accumulate two
    micro-batches a rank and sync once (shard.grad_sync): two steps end at one process's
    weights, to within 5% of the distance the weights moved (AdamW's first steps turn fp32
    rounding in near-zero gradients into visible moves; see tests/test_fsdp.py)."""
    from transformers import AutoModelForCausalLM
    flags = ["sft.py", "--model", "tiny", "--synthetic", "24", "--max-steps", "2", "--batch-size", "8",
             "--micro-batch", "2", "--lr", "1e-3", "--eval-every", "0", "--save-every", "0", "--device", "cpu"]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    runs = {"one": [sys.executable] + flags, "ddp": two + flags, "fsdp": two + flags + ["--fsdp"]}
    weights = {}
    for name, cmd in runs.items():
        r = subprocess.run(cmd + ["--out", str(tmp_path / name)], cwd=REPO, capture_output=True, text=True,
                           timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, (name, r.stderr[-3000:])
        weights[name] = AutoModelForCausalLM.from_pretrained(str(tmp_path / name / "final")).state_dict()
    init = common.load_model("tiny").state_dict()
    moved = max((weights["one"][k] - init[k]).abs().max().item() for k in init)
    assert moved > 5e-4
    for name in ("ddp", "fsdp"):
        diff = max((weights[name][k] - weights["one"][k]).abs().max().item() for k in init)
        assert diff < 0.05 * moved, (name, diff, moved)
