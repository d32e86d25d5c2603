"""
mini.py's results: every finished run's numbers -> results.json, results.md (the checks, the
accuracy and behavior tables beside the study's, a reading computed from the numbers), the
seed-mean CSVs and plot.py's figures. `report` is the entry (mini.py calls it); the rest are
its pieces, pure where they can be (spread, seed_means, reading).
"""
import csv
import json
import math
import os

import mini_checks
import study as study_py
from pipeline import run

REPO = os.path.dirname(os.path.abspath(__file__))
BEHAVIORS = {b: e.avg_column for b, e in study_py.BEHAVIORS.items()}  # steps.csv's columns (study.py)
PRIMED = ["all_strategies", "only_backtracking", "backtracking_verification", "backtracking_subgoal",
          "backtracking_backward"]   # the behavior-primed conditions, compared with the controls below
CONTROLS = ["empty_cot", "dots", "base"]



def spread(values):
    """mean, sample std, min, max and n of the finite values (None if there are none)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": m, "std": sd, "min": min(xs), "max": max(xs), "n": len(xs)}


def fmt_spread(sp, digits=3):
    """"0.310 ± 0.040 (0.270–0.350)" over seeds; one seed: "0.310"; none: "-"."""
    if not sp:
        return "-"
    f = lambda x: f"{x:.{digits}f}"  # noqa: E731
    return f(sp["mean"]) if sp["n"] == 1 else f"{f(sp['mean'])} ± {f(sp['std'])} ({f(sp['min'])}–{f(sp['max'])})"


def read_run(run):
    """One run's numbers: its validation curve (before PPO = step 0, after = the last step),
    the share of answers using the task's numbers then, and the classified rollouts' behavior
    means, length and accuracy per logged step."""
    import common
    from plot import read_metrics, read_steps_csv
    d = os.path.join(run, "ppo")
    curve = {int(r["step"]): r["val/acc"] for r in read_metrics(os.path.join(d, "metrics.jsonl")) if "val/acc" in r}
    rows = sorted(read_steps_csv(os.path.join(d, "classify", "steps.csv")), key=lambda r: r["step"])
    at = lambda r: {"step": int(r["step"]), "accuracy": r.get("accuracy"), "length": r.get("response_length"),  # noqa: E731
                    **{b: r.get(col) for b, col in BEHAVIORS.items()}}
    last = max(curve) if curve else None
    def numbers(step):   # None where the samples are gone (a copy of the run without its val/)
        path = os.path.join(d, "val", f"step_{step:06d}.jsonl")
        recs = common.read_jsonl(path) if step is not None and os.path.exists(path) else []
        return sum(map(mini_checks.uses_numbers, recs)) / len(recs) if recs else None
    skipped = [r["step"] for r in read_metrics(os.path.join(d, "metrics.jsonl")) if r.get("skipped_updates")]
    return {"val_curve": curve, "val_before": curve.get(0), "val_after": curve.get(last), "val_after_step": last,
            "numbers_before": numbers(0 if 0 in curve else None), "numbers_end": numbers(last),
            "skipped_steps": skipped, "start": at(rows[0]), "end": at(rows[-1]), "steps": rows}


def seed_means(steps_by_cond):
    """{cond: [steps.csv rows of every seed]} -> rows averaged per (condition, step) over seeds."""
    out = []
    for cond, rows in steps_by_cond.items():
        for step in sorted({r["step"] for r in rows}):
            same = [r for r in rows if r["step"] == step]
            cols = {k for r in same for k in r} - {"condition", "step"}
            means = {k: spread(r.get(k) for r in same) for k in sorted(cols)}
            out.append({"condition": cond, "step": int(step),
                        **{k: round(v["mean"], 6) if v else "" for k, v in means.items()}})
    return out


def study_rows(path, conds):
    """{canonical condition: {"start": row at step 0, "end": row at the last step}} of the study's CSV."""
    from plot import canonical, read_steps_csv
    table = {}
    for r in read_steps_csv(path):
        c = canonical(r["condition"])
        if c in conds:
            t = table.setdefault(c, {"start": r, "end": r})
            t["start"] = min(t["start"], r, key=lambda x: x["step"])
            t["end"] = max(t["end"], r, key=lambda x: x["step"])
    return table


def _behaviors(means):
    return " / ".join(f"{means[b]:.2f}" if means.get(b) is not None else "-" for b in BEHAVIORS)


def summarize(runs, s):
    """{(cond, seed): read_run(...)} -> per condition: spreads over seeds of every number in the
    tables, and the validation accuracy `late` steps before the end (is the curve flat?)."""
    conds, out = {}, {}
    for (cond, seed), r in runs.items():
        conds.setdefault(cond, []).append(r)
    for cond in [c for c in s["conditions"] if c in conds]:
        rs = conds[cond]
        late = max(0, s["ppo_steps"] - 2 * s["eval_every"])
        slope, se, first = late_slope([r["val_curve"] for r in rs], LATE * s["eval_every"])
        out[cond] = {"n_runs": len(rs), "late_slope": {"per_100_steps": slope, "se": se, "from_step": first},
                     **{k: spread(r[k] for r in rs) for k in ("val_before", "val_after", "numbers_before", "numbers_end")},
                     "val_late": spread(r["val_curve"].get(late) for r in rs), "late_step": late,
                     "val_after_step": max((r["val_after_step"] for r in rs if r["val_after_step"] is not None), default=None),
                     **{k: {b: spread(r[k][b] for r in rs) for b in [*BEHAVIORS, "accuracy", "length"]}
                        for k in ("start", "end")}}
    return out


def _mean(v, key):
    return (v.get(key) or {}).get("mean")


AMPLIFY = 1.1  # a behavior PPO amplifies ends at >= 1.1 x its start (no_positive's 2.99 -> 3.00 is no rise)
FLAT = 0.01  # a validation curve that rises less than this per 100 steps at the end is flat
LATE = 4  # the end of a curve: its last LATE x eval_every steps (at the defaults 5 validations, 100 steps)


def late_slope(curves, window):
    """(rise per 100 steps, its standard error, first step) of validation accuracy over the last
    `window` steps: every seed's validations from (last step - window) on, one straight line per
    seed with its own level and one shared slope (least squares). A flat end: ~0 within 2 SE.
    Five points x 3 seeds weigh a rise against chance far better than two points 50 steps apart
    (at 350 steps those called all 9 conditions flat; this fit, 6 of 9 still rising).

    >>> slope, se, first = late_slope([{0: .1, 50: .2, 100: .3, 150: .4}, {0: .2, 50: .3, 100: .4, 150: .5}], 100)
    >>> round(slope, 6), round(se, 6), first
    (0.2, 0.0, 50)
    """
    last = max(max(c) for c in curves if c)
    first = last - window
    pts = [[(s, a) for s, a in c.items() if s >= first and a is not None] for c in curves]
    pts = [p for p in pts if len(p) >= 2]
    first = min((s for p in pts for s, _ in p), default=first)   # the first validation fitted
    xy = [(s - sum(x for x, _ in p) / len(p), a - sum(y for _, y in p) / len(p)) for p in pts for s, a in p]
    sxx = sum(x * x for x, _ in xy)
    dof = len(xy) - len(pts) - 1
    if not sxx or dof < 1:
        return None, None, first
    slope = sum(x * y for x, y in xy) / sxx
    rss = sum((y - slope * x) ** 2 for x, y in xy)
    return 100 * slope, 100 * math.sqrt(rss / dof / sxx), first


def reading(summary, study):
    """Which of the study's findings the numbers reproduce, computed from them (one line each)."""
    out, have = [], lambda cs: [c for c in cs if c in summary and _mean(summary[c], "val_after") is not None]  # noqa: E731
    primed, controls = have(PRIMED), have(CONTROLS)
    if primed and controls:
        p = {c: _mean(summary[c], "val_after") for c in primed}
        q = {c: _mean(summary[c], "val_after") for c in controls}
        verdict = ("reproduced" if min(p.values()) > max(q.values()) else
                   "partly reproduced" if sum(p.values()) / len(p) > sum(q.values()) / len(q) else "not reproduced")
        out.append(f"- **Behavior-primed above empty_cot / dots / base after PPO: {verdict}.** Behavior-primed "
                   f"{min(p.values()):.3f}–{max(p.values()):.3f} (mean {sum(p.values()) / len(p):.3f}); controls "
                   + ", ".join(f"{c} {v:.3f}" for c, v in q.items()) + "." + (
                       " Study: 0.71–0.77 against 0.34–0.41." if study else ""))
    if have(["no_positive"]) and have(["all_strategies"]):
        a, b = summary["no_positive"]["val_after"], summary["all_strategies"]["val_after"]
        overlap = a["min"] <= b["max"] and b["min"] <= a["max"]
        out.append(f"- **no_positive (wrong traces only) as good as all_strategies: "
                   f"{'reproduced' if overlap else 'not reproduced'}** (seed ranges "
                   f"{'overlap' if overlap else 'do not overlap'}): {fmt_spread(a)} vs {fmt_spread(b)}."
                   + (" Study: 0.735 vs 0.736." if study else ""))
    late = {c: (v["late_slope"]["per_100_steps"], v["late_slope"]["se"]) for c, v in summary.items()
            if (v.get("late_slope") or {}).get("per_100_steps") is not None}
    if late:
        v = summary[next(iter(late))]
        rising = {c: d for c, (d, se) in late.items() if d > FLAT and d > 2 * se}
        up = {c: d for c, (d, se) in late.items() if d > FLAT and c not in rising}
        out.append(f"- **Flat by the end?** Validation accuracy's slope from step {v['late_slope']['from_step']} to "
                   f"{v['val_after_step']} (a line per seed, one slope), per 100 steps: "
                   + (f"still rising by more than {FLAT} and 2 standard errors in {len(rising)} of {len(late)} conditions ("
                      + ", ".join(f"{c} +{d:.3f} ± {late[c][1]:.3f}" for c, d in rising.items())
                      + "): longer PPO would move these numbers." if rising else
                      f"no condition rises by more than {FLAT} and 2 standard errors.")
                   + (f" Up by more than {FLAT} but within 2 standard errors (chance can do it): "
                      + ", ".join(f"{c} +{d:.3f} ± {late[c][1]:.3f}" for c, d in up.items()) + "." if up else ""))
    for b in ("verification", "backtracking"):
        rises = [(c, _mean(v["start"], b), _mean(v["end"], b)) for c, v in summary.items()
                 if c not in CONTROLS and (_mean(v["start"], b) or 0) >= 0.2]
        if rises:
            up = sum(e >= AMPLIFY * st for _, st, e in rises)
            out.append(f"- **PPO amplifies {b}: {'reproduced' if up == len(rises) else 'partly reproduced' if up else 'not reproduced'}** "
                       f"({up} of {len(rises)} conditions that start with it end with {AMPLIFY - 1:.0%} more or beyond): "
                       + ", ".join(f"{c} {st:.2f} -> {e:.2f}" for c, st, e in rises) + ".")
    return out


def results_markdown(summary, study, checks, s, failed=(), skipped=None):
    """results.md: settings, the checks, the accuracy and behavior tables beside the study, the
    reading; failed: runs missing from the tables; skipped: {run: PPO steps whose update was
    skipped (non-finite)}."""
    n_steps, ref = s["ppo_steps"], bool(study)
    b = summary.get("base_model", {})
    lines = ["# The study in miniature: results", "",
             f"Base: a {b.get('parameters', 0) / 1e6:.1f}M-parameter Llama ({b.get('num_hidden_layers')} layers of "
             f"{b.get('hidden_size')}), random init + behaviour-free arithmetic pretraining (not a pretrained LM). "
             f"Tasks: {s['task_sizes']} numbers in {s['num_range'][0]}..{s['num_range'][1]}, targets "
             f"{s['target_range'][0]}..{s['target_range'][1]}. Priming: {s['priming_n']} traces, {s['sft_steps']} steps x "
             f"{s['sft_batch']} sequences. PPO: {n_steps} steps x {s['ppo_prompts']} prompts x {s['ppo_samples']} samples, "
             f"responses up to {s['ppo_response_len']} tokens. Validation: {s['val_size']} test tasks x {s['val_samples']} "
             f"samples at temperature 1, by ppo.py's validation for both before (step 0) and after (step {n_steps}). "
             f"Seeds {s['seeds']}; mean ± std (min–max) over them.", "",
             "Every setting was fixed before this run, the same for every condition: the priming and the traces' "
             "form were calibrated on the manipulation checks alone (docs/mini/calibration3.md), the number of PPO "
             f"steps by speed (by default 350, the most that fit 25 minutes on 4 H100s, as curves still rose at the "
             f"study's 250; this run: {n_steps}), never on one condition's result. Nothing differs between conditions except the priming data (`base`: none).", "",
             *([f"**Runs that failed, missing from every table below: {', '.join(failed)}** (their ppo.log says why).",
                ""] if failed else []),
             *([f"PPO steps whose update was skipped (a non-finite loss or gradient): {sum(skipped.values())} of "
                f"{n_steps * sum(v['n_runs'] for c, v in summary.items() if c != 'base_model')}; per run: "
                + ", ".join(f"{k} {v}" for k, v in skipped.items()) + ".", ""] if skipped else []),
             "## Manipulation checks (before PPO)", "", checks,
             "## Validation accuracy", "",
             f"Numbers used: share of answers that use exactly the task's numbers, right or not (before / after). "
             f"Step {max(0, n_steps - 2 * s['eval_every'])}: the validation {2 * s['eval_every']} steps before the end. "
             f"Slope: the rise per 100 steps over the last {LATE * s['eval_every']} steps, ± its standard error "
             "(late_slope: a line per seed, one slope; a flat curve: ~0).", "",
             f"| condition | seeds | before PPO | after PPO (step {n_steps}) | step {max(0, n_steps - 2 * s['eval_every'])} | "
             "slope | numbers used | " + ("study: step 0 | study: step 250 |" if ref else ""),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if ref else "")]
    for c, v in summary.items():
        if c == "base_model":
            continue
        st = study.get(c) if study else None
        used = f"{fmt_spread(v['numbers_before'], 2)} / {fmt_spread(v['numbers_end'], 2)}"
        sl = v.get("late_slope") or {}
        slope = f"{sl['per_100_steps']:+.3f} ± {sl['se']:.3f}" if sl.get("per_100_steps") is not None else "-"
        lines.append(f"| {c} | {v['n_runs']} | {fmt_spread(v['val_before'])} | {fmt_spread(v['val_after'])} | "
                     f"{fmt_spread(v['val_late'])} | {slope} | {used} |"
                     + (f" {st['start']['accuracy']:.3f} | {st['end']['accuracy']:.3f} |" if st else " - | - |" if ref else ""))
    lines += ["", "## Behaviors per response (verification / backtracking / subgoal / backward)", "",
              f"Classified rollouts (rules) at PPO step 1 (sampled before the first update) and step {n_steps}, "
              "means over seeds (spreads in results.json).", "",
              f"| condition | start | end (step {n_steps}) | " + ("study: step 0 | study: step 250 |" if ref else ""),
              "| --- | --- | --- |" + (" --- | --- |" if ref else "")]
    for c, v in summary.items():
        if c == "base_model":
            continue
        st = study.get(c) if study else None
        mean = lambda key: {b: (v[key][b] or {}).get("mean") for b in BEHAVIORS}  # noqa: E731
        lines.append(f"| {c} | {_behaviors(mean('start'))} | {_behaviors(mean('end'))} |" + (
            f" {_behaviors({b: st['start'][col] for b, col in BEHAVIORS.items()})} |"
            f" {_behaviors({b: st['end'][col] for b, col in BEHAVIORS.items()})} |" if st else " - | - |" if ref else ""))
    caveat = (["", "Some manipulation checks fail (above): the models PPO starts from are not all what the study's "
               "claim is about, so read these findings as this miniature's, not as a test of the claim."]
              if "checks FAIL" in checks else [])
    lines += ["", "## Reading (computed from the tables above)", "",
              *reading({c: v for c, v in summary.items() if c != "base_model"}, study),
              *caveat, "",
              "Figures: figures/accuracy.png (rollouts, validation and the study's), figures/behaviors_*.png, "
              "figures/length.png, figures/priming.png."]
    return "\n".join(lines) + "\n"


def val_seed_means(runs):
    """Validation accuracy per (condition, step), mean over seeds: a steps CSV's rows."""
    by = {}
    for (cond, _), r in runs.items():
        for step, acc in r["val_curve"].items():
            by.setdefault((cond, step), []).append(acc)
    return [{"condition": c, "step": st, "accuracy": round(sum(v) / len(v), 6)} for (c, st), v in sorted(by.items())]


def study_reference(s):
    """The study's table as a local path, or None (with a note) where it is out of reach."""
    import common
    try:
        path = common.study_table(s["reference"])
    except common.DataError as e:
        print(f"note: {e}; results without the study's columns", flush=True)
        return None
    if not os.path.isabs(path):
        path = os.path.join(REPO, path)
    if not os.path.exists(path):
        print(f"note: no study table at {path}; results without the study's columns", flush=True)
        return None
    return path


def report(s, p, dirs, checks, failed=()):
    """Numbers of every finished run (dirs: {(condition, seed): its folder}) -> results.json, results.md, the seed-mean CSVs
    (rollouts and validation), a filtered copy of the study's CSV and plot.py's figures. failed:
    the names of runs that did not finish, named in results.md."""
    import common
    from classify import write_steps_csv
    res = os.path.join(s["out"], "results")
    runs = {k: read_run(d) for k, d in dirs.items()}
    steps = {}
    for (cond, _), r in runs.items():
        steps.setdefault(cond, []).extend(r.pop("steps"))
    ours, val = os.path.join(res, "mini_seed_mean.csv"), os.path.join(res, "mini_val_seed_mean.csv")
    write_steps_csv(ours, seed_means(steps))
    write_steps_csv(val, val_seed_means(runs))
    ref, study, csvs = study_reference(s), {}, [ours, val]
    if ref:
        study = study_rows(ref, set(s["conditions"]))
        csvs.append(filter_csv(ref, set(s["conditions"]), os.path.join(res, "study_llama-3.2-3b.csv")))
    with open(os.path.join(p["base"], "base.json")) as f:
        summary = {"base_model": json.load(f), **summarize(runs, s)}
    common.write_json(os.path.join(s["out"], "results.json"), {
        "settings": s, "summary": summary, "study": study, "failed": list(failed),
        "runs": [{"condition": k[0], "seed": k[1], **v} for k, v in runs.items()]})
    figs = os.path.join(s["out"], "figures")
    priming = os.path.join(p["priming"], "summary.json")
    run(["plot.py", "--csv", *csvs, *(["--priming", priming] if os.path.exists(priming) else []),
         "--out", figs], "", True, log=os.path.join(figs, "plot.log"))
    run(["report.py", "--runs", *[os.path.join(d, "ppo") for d in dirs.values()],  # the run report
         *(["--reference", ref] if ref else []), "--title", "mini.py: the priming study in miniature",
         "--out", os.path.join(s["out"], "report.html")], "", True, log=os.path.join(s["out"], "report.log"))
    skipped = {f"{c} seed {seed}": len(r["skipped_steps"]) for (c, seed), r in runs.items() if r["skipped_steps"]}
    table = results_markdown(summary, study, checks, s, failed=list(failed), skipped=skipped)
    common.atomic_write_text(os.path.join(s["out"], "results.md"), table)
    return table


def filter_csv(path, conds, dest):
    """The rows of a steps CSV whose condition stands for one of conds, renamed to it
    (plot.canonical: base_ppo -> base), so that figures share one legend entry."""
    import common
    from plot import canonical
    with open(path, encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    keep = [rows[0]] + [[canonical(r[0])] + r[1:] for r in rows[1:] if r and canonical(r[0]) in conds]
    common.atomic_write_text(dest, "\n".join(",".join(r) for r in keep) + "\n")
    return dest
