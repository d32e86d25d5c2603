"""sampler.py: tasks -> records, in one place. The records have ppo.py's fields, come grouped
by task in task order, are scored with the study's rules on prompt + response (the EOS text
kept), and do not depend on how the tasks are batched; greedy sampling repeats itself."""
import pytest
import torch

import common
import countdown
import sampler


@pytest.fixture(scope="module")
def tiny():
    return common.load_model("tiny"), common.load_tokenizer("tiny")


TASKS = countdown.generate_tasks(5, seed=3, sizes=(3,))


def test_records_have_ppo_fields_and_the_studys_scores(tiny):
    model, tok = tiny
    torch.manual_seed(0)
    seen = []
    recs = sampler.sample_tasks(model, tok, TASKS, n_samples=3, temperature=1.0, step=7,
                                opts=sampler.options(max_response_len=12), batch_tasks=2,
                                reward_fn=lambda r, t, prompt="": seen.append((r, prompt)) or 0.1)
    assert len(recs) == 15 and all(set(r) == {"step", "id", "nums", "target", "prompt", "response", "reward",
                                              "correct", "length"} for r in recs)
    assert [r["id"] for r in recs] == [t["id"] for t in TASKS for _ in range(3)]      # grouped, in order
    assert all(r["step"] == 7 and 1 <= r["length"] <= 12 and r["reward"] == 0.1 and not r["correct"] for r in recs)
    assert all(r["prompt"] == countdown.make_prompt(r["nums"], r["target"], "base") for r in recs)
    # the reward sees the prompt and the raw response: EOS text kept where the sample ended with it
    assert [p for _, p in seen] == [r["prompt"] for r in recs]
    ended = [(raw, r) for (raw, _), r in zip(seen, recs) if raw.endswith(tok.eos_token)]
    assert all(raw == r["response"] + tok.eos_token for raw, r in ended)
    # the default reward: countdown.score with the study's rules on prompt + response
    recs = sampler.sample_tasks(model, tok, TASKS, 2, 1.0, sampler.options(max_response_len=12))
    assert all(r["reward"] == countdown.score(r["response"], r["nums"], r["target"], rules="study",
                                              prompt=r["prompt"]) for r in recs)


def test_greedy_repeats_and_batching_changes_nothing(tiny):
    model, tok = tiny
    opts = sampler.options(max_response_len=10)
    a = sampler.sample_tasks(model, tok, TASKS, 1, 0.0, opts, batch_tasks=5)
    b = sampler.sample_tasks(model, tok, TASKS, 1, 0.0, opts, batch_tasks=2)
    c = sampler.sample_tasks(model, tok, TASKS, 1, 0.0, sampler.options(max_response_len=10, engine="hf"))
    assert a == b == c            # the built-in engine and transformers agree on the CPU (fp32)


def test_options_and_their_checks():
    o = sampler.options(template="qwen-instruct", seed=3)
    assert (o.template, o.seed, o.reward, o.engine) == ("qwen-instruct", 3, "study", "builtin")
    with pytest.raises(TypeError, match="max_new_tokens"):
        sampler.options(max_new_tokens=5)
    bad = [msg for ok, msg in sampler.option_checks(sampler.options(reward="lenient", engine="hf", stop="</answer>"))
           if not ok]
    assert any("--reward" in m for m in bad) and any("--stop" in m for m in bad)
    assert all(ok for ok, _ in sampler.option_checks(sampler.options()))


def test_study_lengths_follow_the_studys_curve_and_both_engines_honour_them(tiny):
    """--force-lengths study: lengths drawn with the study's shape (mean ~331 of a 1,024 cap,
    median ~354, a tail to the cap), scaled to shorter caps; the built-in engine and transformers
    both end each response exactly at its drawn length, whatever EOS says."""
    torch.manual_seed(0)
    L = sampler.draw_lengths(20000, 1024).float()
    assert abs(L.mean().item() - 331) < 10 and abs(L.median().item() - 354) < 10
    assert L.min() >= 24 and L.max() > 900 and (L <= 1024).all()
    assert sampler.draw_lengths(5, 32, u=torch.tensor([0.0, 0.5, 1.0, 0.9, 0.1])).tolist() == [1, 11, 32, 16, 4]
    model, tok = tiny
    got = []
    for engine in ("builtin", "hf"):
        torch.manual_seed(0)
        b = sampler.sample_batch(model, tok, TASKS, 3, 1.0, sampler.options(max_response_len=40, engine=engine,
                                                                          force_lengths="study"))
        torch.manual_seed(0)
        assert b["lengths"].tolist() == sampler.draw_lengths(15, 40).tolist()
        assert b["mask"].sum(1).tolist() == b["lengths"].tolist()
        got.append(b["lengths"].tolist())
    assert got[0] == got[1] and len(set(got[0])) > 3
    bad = [msg for ok, msg in sampler.option_checks(sampler.options(force_lengths="study", force_response_len=8))
           if not ok]
    assert any("--force-lengths" in m for m in bad)


def test_doctests():
    """The examples in the docstrings of the rollout and training-pass helpers, and of the
    modules around them, hold (sampler.span, micro_batches, attention_mask, ...)."""
    import doctest

    import bench
    import engine
    import shard
    for module in (sampler, engine, shard, bench):
        assert doctest.testmod(module).failed == 0, module.__name__
