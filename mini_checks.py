"""
The manipulation checks of mini.py: does the miniature produce the models that the study's
claim is about, before any PPO result is looked at? Each check has a threshold fixed here.

  base   single-step arithmetic ("a op b =", numbers in the task range, and one intermediate
         result with a number, as a search step has them) >= 97% exact, greedy, on lines drawn
         with another seed than the pretraining corpus; and no behavior in its samples.
  primed sampled at temperature 1 on held-out tasks (PPO's own validation before its first
         update): >= 90% of responses close </answer> within the response budget; >= 90% of
         answers use exactly the task's numbers; >= 95% of the arithmetic statements in the
         thinking are right; behavior counts match the priming set's (behavior_rules.py's rules on
         both), within 0.2 + 30% of the set's mean per behavior.

    python mini_checks.py --model runs/mini/base/final --out runs/mini/base/arithmetic.json

(the one stage that needs a model: the base's arithmetic; mini.py runs it and computes the
rest from PPO's step-0 validation files.)
"""
import argparse
import os
import random
import re

import countdown
import study

BEHAVIORS = tuple(study.BEHAVIORS)
THRESHOLDS = dict(base_arithmetic=0.97, base_behaviors=0.05, closes=0.90, numbers=0.90, arithmetic=0.95,
                  behaviors_abs=0.2, behaviors_rel=0.3)


def combine(rng, a, b):
    """(a op b as text, value) with an integer, non-negative value; op drawn from those that give one.

    >>> combine(random.Random(1), 12, 4)
    ('12 * 4', 48)
    """
    ops = ["+", "*"] + (["-"] if a >= b else []) + (["/"] if b and a % b == 0 else [])
    op = rng.choice(ops)
    return f"{a} {op} {b}", int(countdown.evaluate(f"{a} {op} {b}"))


MAX_VALUE = 100  # operands and results of a search step: 99.9% of the priming traces' statements


def search_step(rng, num_range):
    """(expression, value) of one step of a search over a task's numbers: half the time two
    numbers, else an intermediate result (two numbers combined) and a number, either order;
    redrawn until operands and result are <= MAX_VALUE, as a search towards a target keeps them.

    >>> search_step(random.Random(0), (1, 24))
    ('3 + 16', 19)
    """
    n = lambda: rng.randint(*num_range)  # noqa: E731
    while True:
        a, b = n(), n()
        if rng.random() < 0.5:
            a = combine(rng, a, n())[1]
            a, b = (a, b) if a >= b or rng.random() < 0.5 else (b, a)
        expr, val = combine(rng, a, b)
        if max(a, b, val) <= MAX_VALUE:
            return expr, val


def arithmetic_lines(n, seed, num_range):
    """n distinct (prompt "a op b =", value) pairs of search steps.

    >>> arithmetic_lines(2, seed=0, num_range=(1, 24))
    [('3 + 16 =', 19), ('4 + 20 =', 24)]
    """
    rng, seen, out = random.Random(seed), set(), []
    for _ in range(100 * n):
        expr, val = search_step(rng, num_range)
        if expr not in seen:
            seen.add(expr)
            out.append((f"{expr} =", val))
        if len(out) == n:
            break
    return out


_FIRST_INT = re.compile(r"\s*(-?\d+)")


def base_arithmetic(model_path, n, seed, num_range, device, batch=256):
    """Share of `arithmetic_lines` the model completes right, greedy; and a few examples."""
    import torch
    import common
    from sampler import encode_prompts, hf_generate
    model = common.load_model(model_path, torch.float32, device).eval()
    tok = common.load_tokenizer(model_path)  # left padding: the answer follows each prompt directly
    lines, right, wrong = arithmetic_lines(n, seed, num_range), 0, []
    for i in range(0, len(lines), batch):
        part = lines[i:i + batch]
        ids, mask = encode_prompts(tok, [p for p, _ in part], 64)
        resp, _ = hf_generate(model, tok, ids.to(device), mask.to(device), 8, temperature=0.0)
        for (prompt, val), text in zip(part, tok.batch_decode(resp, skip_special_tokens=True)):
            m = _FIRST_INT.match(text)
            ok = bool(m) and int(m.group(1)) == val
            right += ok
            if not ok and len(wrong) < 10:
                wrong.append(f"{prompt}{text.split('.')[0]}  (right: {val})")
    return {"accuracy": right / len(lines), "n": len(lines), "wrong_examples": wrong}


def thinking(response):
    """The part of a response before </think> (all of it if there is none)."""
    return response.split("</think>", 1)[0]


def arithmetic_statements(response):
    """(right, all) arithmetic statements ("a op b = c", "c = a op b", chains) in the thinking;
    a statement on the previous result ("that + 3 = 9") is skipped, as its operand is unnamed.

    >>> arithmetic_statements("3 * 9 = 27, 27 + 15 = 41. 12 = 7 + 5</think><answer>3 * 9 + 15</answer>")
    (2, 3)
    """
    import behavior_rules
    right = total = 0
    for eq in behavior_rules.find_equations(behavior_rules.normalize(thinking(response))):
        if "@" in eq["expr"]:
            continue
        val = countdown.evaluate(eq["expr"])
        total += 1
        right += val is not None and abs(float(val) - float(eq["value"])) < 1e-9
    return right, total


def uses_numbers(rec):
    """Whether the response's answer uses each of the task's numbers exactly once, right or not.

    >>> uses_numbers({"nums": [3, 5, 7], "response": "<answer>(7 - 3) * 5</answer>"})
    True
    """
    ans = countdown.extract_answer(rec["response"]) or ""
    return sorted(countdown.numbers_in(ans)) == sorted(rec["nums"])


def behavior_means(recs, text_key="response"):
    """Mean count per response of each behavior (behavior_rules.py's rules)."""
    import behavior_rules
    sums = dict.fromkeys(BEHAVIORS, 0)
    for r in recs:
        for b, c in behavior_rules.count_behaviors(r[text_key], r["nums"], r["target"]).items():
            sums[b] += c
    return {b: sums[b] / max(1, len(recs)) for b in BEHAVIORS}


def measure(recs):
    """The numbers the checks read off sampled records {nums, target, response}."""
    right = total = 0
    for r in recs:
        a, b = arithmetic_statements(r["response"])
        right, total = right + a, total + b
    n = max(1, len(recs))
    return {"n": len(recs), "closes": sum("</answer>" in r["response"] for r in recs) / n,
            "numbers": sum(map(uses_numbers, recs)) / n,
            "arithmetic": right / total if total else None, "statements": total,
            "behaviors": behavior_means(recs)}


def behaviors_match(model, priming):
    """Per behavior: the model's mean count lies within 0.2 + 30% of the priming set's.

    >>> behaviors_match({"verification": 0.1, "backtracking": 0.7}, {"verification": 0.0, "backtracking": 0.9})
    True
    >>> behaviors_match({"verification": 0.5, "backtracking": 0.9}, {"verification": 0.0, "backtracking": 0.9})
    False
    """
    t = THRESHOLDS
    return all(abs(model[b] - priming[b]) <= t["behaviors_abs"] + t["behaviors_rel"] * priming[b] for b in model)


def _fmt_b(means):
    return " / ".join(f"{means[b]:.2f}" for b in BEHAVIORS)


def check_rows(base_arith, measured, priming_means):
    """[(model, check, measured as text, threshold as text, passed)] for the base and each primed
    condition. measured: {condition: measure(...)} ("base" among them); priming_means:
    {condition: behavior_means of its priming set}."""
    t, rows = THRESHOLDS, []
    if base_arith is not None:
        rows.append(("base", "single-step arithmetic, greedy", f"{base_arith['accuracy']:.3f} of {base_arith['n']}",
                     f">= {t['base_arithmetic']}", base_arith["accuracy"] >= t["base_arithmetic"]))
    if "base" in measured:
        m = measured["base"]["behaviors"]
        rows.append(("base", "no behavior (v / b / s / w per response)", _fmt_b(m),
                     f"each <= {t['base_behaviors']}", max(m.values()) <= t["base_behaviors"]))
    for cond, m in measured.items():
        if cond == "base":
            continue
        ar = m["arithmetic"]
        rows += [(cond, "closes </answer> within the budget", f"{m['closes']:.3f}", f">= {t['closes']}",
                  m["closes"] >= t["closes"]),
                 (cond, "answer uses exactly the task's numbers", f"{m['numbers']:.3f}", f">= {t['numbers']}",
                  m["numbers"] >= t["numbers"]),
                 (cond, "arithmetic statements right", "-" if ar is None else f"{ar:.3f} of {m['statements']}",
                  f">= {t['arithmetic']}", ar is None or ar >= t["arithmetic"])]
        if cond in priming_means:
            p = priming_means[cond]
            rows.append((cond, "behaviors match the priming set (model vs set)", f"{_fmt_b(m['behaviors'])} vs {_fmt_b(p)}",
                         f"within {t['behaviors_abs']} + {t['behaviors_rel']} x set", behaviors_match(m["behaviors"], p)))
    return rows


def checks_markdown(rows):
    """The checks table, then one line naming every failed check (or saying that all pass)."""
    lines = ["| model | check | measured | threshold | pass |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {m} | {c} | {v} | {th} | {'yes' if ok else '**NO**'} |" for m, c, v, th, ok in rows]
    failed = [f"{m}: {c} ({v})" for m, c, v, _, ok in rows if not ok]
    lines += ["", f"**{len(failed)} of {len(rows)} checks FAIL:** " + "; ".join(failed) if failed
              else f"All {len(rows)} checks pass."]
    return "\n".join(lines) + "\n"


SETTINGS = [
    # (flag, default, type, help): the CLI of the base's arithmetic check
    ("model", None, str, "the base model folder (required)"),
    ("out", None, str, "JSON file for the result (required)"),
    ("n", 1000, int, "arithmetic lines"),
    ("seed", 12345, int, "seed of the lines (the pretraining corpus uses 0)"),
    ("num_min", 1, int, "smallest task number"),
    ("num_max", 24, int, "largest task number"),
    ("device", None, str, "cuda | cpu; None: cuda if available"),
]


def main(argv=None):
    import common
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = common.add_settings(ap, SETTINGS).parse_args(argv)
    if a.model is None or a.out is None:
        ap.error("--model and --out are required")
    if not os.path.isdir(a.model):
        common.die(f"--model {a.model}: no such folder", "mini_checks.py")
    if a.n < 1 or a.num_min < 1 or a.num_max < a.num_min:
        common.die("--n must be >= 1 and 1 <= --num-min <= --num-max", "mini_checks.py")
    import torch
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    res = base_arithmetic(a.model, a.n, a.seed, (a.num_min, a.num_max), device)
    common.write_json(a.out, res)
    print(f"base arithmetic: {res['accuracy']:.3f} of {res['n']} lines right (greedy)")
    for w in res["wrong_examples"]:
        print("  wrong:", w)


if __name__ == "__main__":
    main()
