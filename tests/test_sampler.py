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
