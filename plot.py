"""
The study's figures, drawn from our run folders and from any CSV with the reference columns.

    # the study's own numbers: accuracy, behaviors and length for every condition, plus results.md
    python plot.py --csv study:llama_results study:qwen_results \
        --out out/figs/study
    # our PPO runs, with the study's curves of their model (Qwen or Llama) dashed behind them
    python plot.py --runs out/ppo-* --reference study --out out/figs
    # priming sets, base models (classify.py's sampling mode: --out out/base-qwen writes
    # out/base-qwen/classify/steps.csv), pretraining corpus
    python plot.py --priming data/priming/summary.json --stats data/curated/stats.json \
        --base out/base-qwen/classify/steps.csv out/base-llama/classify/steps.csv --out out/figs
    python plot.py --priming study:claude_accs --out out/figs/study

Writes into --out (each figure as .png and .svg):
    accuracy             accuracy vs PPO step; one panel per source, one line per condition
    behaviors            mean count of each behavior per response vs step (a panel each); with
                         several sources, one behaviors_<source>.png each (e.g. behaviors_runs)
    length               mean response length vs step
    priming              priming sets: fraction correct, behavior mix, mean length
    base_models          base models' behavior counts, side by side
    corpus               pretraining-corpus behavior frequencies
    results.md           final and best accuracy per condition (also printed)
    --html PATH          the run report (report.py): curves, a browser of the runs' responses with
                         each counted behavior highlighted, settings; one self-contained HTML file
A figure whose data is missing is skipped with a one-line note. Every condition keeps one color
in every figure (the study's conditions and behaviors: study.py; other names get a fixed color
from plot_style.FALLBACK).

Inputs
  steps CSV (--csv, --base, --reference, and any steps.csv inside a run folder, as classify.py writes):
      condition,step,avg_verifications,avg_backtracking,avg_subgoals,avg_backwards,
      total_verifications,total_backtracking,total_subgoals,total_backwards,accuracy,response_length
    `condition` and `step` are required; any other column may be missing or empty. A repeated
    (condition, step) keeps its last row. --base uses each condition's first step (one row per model).
  run folder (--runs): metrics.jsonl (one object per step: "step" and "val/acc" or "acc"; the
    response length as "response_length/mean" or "response_length" if logged), config.json (its
    "condition"; else the folder name names the run) and any steps.csv below the folder
    (classify/steps.csv first) for the behaviors.
  priming summary (--priming), as gen_priming.py writes it (the "conditions" wrapper is optional):
      {"conditions": {"<condition>": {"records": N, "correct_rate": 0.43,
          "mean_completion_tokens": 312.5,  # or mean_tokens
          "behaviors": {"verification": 1.2, "backtracking": 2.0, "subgoal": 0.9, "backward": 0.1}}}}
    ("behaviors" may be null: unknown); "correct" as a count with "records" also works;
    or a CSV with condition,average_score (the study's claude_accs.csv; correctness only).
  corpus stats (--stats), as curate_pretrain.py writes it:
      {"sets": {"<set>": {"n_docs": N, "frequency": {"verification": f, "backtracking": f,
          "subgoal": f, "backward": f}}}}
    where f is the fraction of the set's documents that show the behavior; one set may also sit
    at the top level ({"n_docs": N, "frequency": {...}}), and "counts" (documents per behavior)
    with n_docs works in place of "frequency".
"""
import argparse
import csv
import json
import math
import os
import re
import subprocess
import sys

import numpy as np

import common
import study
from common import DataError, atomic_write_text
from plot_style import PANEL_H, PANEL_W, RC, add_legend, assign_colors, canonical, collect_handles, figure, order_key, save
from study import BEHAVIORS

# ---------------------------------------------------------------------------------
# settings
SETTINGS = [
    # (flag, default, type, help)
    ("csv", [], list, "steps CSVs with the reference columns (one panel each)"),
    ("runs", [], list, "run folders (metrics.jsonl, config.json, steps.csv)"),
    ("reference", None, str, "steps CSV whose accuracy curves are overlaid, dashed; study: the study's own "
     "for the runs' model (or name it: study:llama_results, study:qwen_results; any CSV flag takes study:<table>)"),
    ("priming", None, str, "gen_priming.py summary.json, or a condition,average_score CSV"),
    ("base", [], list, "steps CSVs of base models (first step per condition)"),
    ("stats", None, str, "curate_pretrain.py stats.json (behavior frequency per set)"),
    ("out", "out/figs", str, "output folder for the figures and results.md"),   # out/ is git-ignored
    ("html", None, str, "also write the run report (report.py) of --runs to this HTML file"),
]

# metrics.jsonl keys, first found wins
ACC_KEYS = ("val/acc", "val/accuracy", "acc", "accuracy")
LENGTH_KEYS = ("val/response_length", "val/length", "response_length/mean", "response_length",
               "val/mean_length", "mean_length", "length")
# priming summary keys, first found wins
CORRECT_KEYS = ("correct_rate", "correct_frac", "frac_correct", "accuracy", "average_score", "correct")
TOKENS_KEYS = ("mean_completion_tokens", "mean_tokens", "mean_length", "response_length")
BEHAVIOR_DICT_KEYS = ("behaviors", "behavior_means", "mean_behaviors", "behaviors_mean")

def note(msg):
    print(f"plot.py: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------
# reading data

def _number(text, where):
    if text is None or str(text).strip() == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise DataError(f"{where}: {text!r} is not a number") from None


def read_steps_csv(path):
    """Rows of a steps CSV: {"condition": str, "step": float, <column>: float (nan if empty)}."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c for c in (reader.fieldnames or []) if c]
        missing = [c for c in ("condition", "step") if c not in cols]
        if missing:
            raise DataError(f"{path}: not a steps CSV: no column {' or '.join(missing)} "
                            f"(columns: {', '.join(cols) or 'none'}; expected {','.join(study.steps_columns())})")
        rows = []
        for lineno, r in enumerate(reader, 2):
            cond = (r.get("condition") or "").strip()
            if not cond:
                raise DataError(f"{path}:{lineno}: empty condition")
            row = {"condition": cond}
            for c in cols:
                if c != "condition":
                    row[c] = _number(r.get(c), f"{path}:{lineno}: column {c}")
            if math.isnan(row["step"]):
                raise DataError(f"{path}:{lineno}: empty step")
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _xy(xs, ys):
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    keep = ~np.isnan(y)
    return x[keep], y[keep]


def curves_from_rows(rows):
    """{condition: {column: (steps, values)}} sorted by step; a repeated step keeps its last
    row; empty cells are left out of a column's curve, and empty columns are dropped."""
    by_cond = {}
    for r in rows:
        by_cond.setdefault(r["condition"], {})[r["step"]] = r
    out = {}
    for cond, by_step in by_cond.items():
        xs = sorted(by_step)
        cols = {c for r in by_step.values() for c in r} - {"condition", "step"}
        curves = {c: _xy(xs, [by_step[x].get(c, math.nan) for x in xs]) for c in sorted(cols)}
        out[cond] = {c: xy for c, xy in curves.items() if len(xy[0])}
    return out


def load_csv_source(path):
    """A source: {"name", "slug", "curves"} from a steps CSV."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return {"name": os.path.basename(path), "slug": re.sub(r"[^\w.-]+", "_", stem),
            "curves": curves_from_rows(read_steps_csv(path))}


def read_metrics(path):
    """metrics.jsonl records; a torn last line (a run still writing) is ignored, never cut off."""
    with open(path, encoding="utf-8") as f:
        lines = [l for l in f.read().split("\n")]
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # the last line, still being written
            raise DataError(f"{path}:{i + 1}: malformed JSON") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), (int, float)):
            raise DataError(f"{path}:{i + 1}: expected an object with a numeric \"step\"")
        out.append(rec)
    return out


def metric_curve(records, keys):
    """(steps, values) of the first key in `keys` that any record has, or None."""
    for k in keys:
        pts = [(r["step"], r[k]) for r in records if isinstance(r.get(k), (int, float))]
        if pts:
            return _xy(*zip(*sorted(pts)))
    return None


def find_steps_csv(run_dir):
    """classify/steps.csv if present, else the first steps.csv below the run (checkpoints skipped)."""
    first = os.path.join(run_dir, "classify", "steps.csv")
    if os.path.isfile(first):
        return first
    for root, dirs, files in os.walk(run_dir):
        dirs[:] = sorted(d for d in dirs if d not in ("ckpt", "final", "rollouts"))
        if "steps.csv" in files:
            return os.path.join(root, "steps.csv")
    return None


def load_run(run_dir):
    """(condition, curves) of one run folder, or (condition, None) if it holds no data yet."""
    cond = common.run_condition(run_dir)
    curves = {}
    steps_csv = find_steps_csv(run_dir)
    if steps_csv:
        by_cond = curves_from_rows(read_steps_csv(steps_csv))
        if cond in by_cond or len(by_cond) == 1:
            curves.update(by_cond.get(cond) or next(iter(by_cond.values())))
        else:
            note(f"{steps_csv}: conditions {sorted(by_cond)}, none is {cond!r}; its behaviors are left out")
    metrics = os.path.join(run_dir, "metrics.jsonl")
    if os.path.isfile(metrics):
        recs = read_metrics(metrics)
        for col, keys in (("accuracy", ACC_KEYS), ("response_length", LENGTH_KEYS)):
            xy = metric_curve(recs, keys)
            if xy is not None:
                curves[col] = xy  # the run's own log wins over the classified samples
    return cond, (curves or None)


def load_runs_source(run_dirs):
    """A source from run folders; two runs of one condition are told apart by folder name."""
    runs = []
    for d in run_dirs:
        if not os.path.isdir(d):
            raise DataError(f"{d}: no such run folder (not a directory)")
        cond, curves = load_run(d)
        if curves is None:
            note(f"{d}: no metrics.jsonl or steps.csv with data yet; run left out")
        else:
            runs.append((cond, os.path.basename(os.path.normpath(d)), curves))
    counts = {}
    for cond, _, _ in runs:
        counts[cond] = counts.get(cond, 0) + 1
    curves = {(f"{c} ({folder})" if counts[c] > 1 else c): cv for c, folder, cv in runs}
    return {"name": "our runs", "slug": "runs", "curves": curves} if curves else None


def _first(d, keys):
    for k in keys:
        if isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool):
            return float(d[k]), k
    return None, None


def _behavior_means(entry):
    """{behavior: mean} from a priming entry (nested dict, or avg_* columns at its top level)."""
    src = next((entry[k] for k in BEHAVIOR_DICT_KEYS if isinstance(entry.get(k), dict)), entry)
    out = {}
    for b, e in BEHAVIORS.items():
        v = next((src[k] for k in (b, e.avg_column, b + "_mean", "mean_" + b) if k in src), None)
        if isinstance(v, dict):
            v = v.get("mean")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[b] = float(v)
    return out or None


def _priming_entry(cond, entry, path):
    correct, key = _first(entry, CORRECT_KEYS)
    n, _ = _first(entry, ("records", "n", "n_records", "count"))
    if correct is not None and correct > 1:  # a count of correct traces
        if not n:
            raise DataError(f"{path}: {cond}: {key}={correct} is not a fraction and no record count is given")
        correct = correct / n
    tokens, _ = _first(entry, TOKENS_KEYS)
    return {"correct": correct, "tokens": tokens, "records": n, "behaviors": _behavior_means(entry)}


def load_priming(path):
    """{condition: {"correct", "tokens", "records", "behaviors"}} (None where unknown), from a
    gen_priming.py summary.json or a condition,average_score CSV such as claude_accs.csv."""
    if path.endswith(".csv"):
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
        key = next((k for k in CORRECT_KEYS if rows and k in rows[0]), None)
        if not rows or "condition" not in rows[0] or key is None:
            raise DataError(f"{path}: expected columns condition and one of {', '.join(CORRECT_KEYS)}")
        return {r["condition"]: {"correct": _number(r[key], f"{path}: {r['condition']}"),
                                 "tokens": None, "records": None, "behaviors": None} for r in rows}
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON ({e.msg})") from None
    if isinstance(obj, dict) and isinstance(obj.get("conditions"), (dict, list)):
        obj = obj["conditions"]
    if isinstance(obj, list):
        obj = {str(e.get("condition")): e for e in obj if isinstance(e, dict)}
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected an object of conditions")
    out = {c: _priming_entry(c, e, path) for c, e in obj.items() if isinstance(e, dict)}
    out = {c: e for c, e in out.items() if e["correct"] is not None or e["behaviors"] or e["tokens"]}
    if not out:
        raise DataError(f"{path}: no condition with correctness, behaviors or length "
                        f"(expected {{condition: {{correct_rate, mean_tokens, behaviors: {{...}}}}}})")
    return out


def _frequencies(name, s, path):
    n = s.get("n_docs", s.get("n"))
    n = int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0 else None
    freq = next((s[k] for k in ("frequency", "frequencies", "fraction", "behavior_frequency")
                 if isinstance(s.get(k), dict)), None)
    if freq is None and isinstance(s.get("counts"), dict) and n:
        freq = {k: v / n for k, v in s["counts"].items() if isinstance(v, (int, float))}
    if freq is None:
        return None
    out = {}
    for b, e in BEHAVIORS.items():
        v = next((freq[k] for k in (b, e.avg_column) if k in freq), None)
        if v is not None:
            out[b] = _number(v, f"{path}: {name}: {b}")
    return {"n_docs": n, "frequency": out} if out else None


def load_corpus_stats(path):
    """{set: {"n_docs", "frequency": {behavior: fraction}}} from a curate_pretrain.py stats.json."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object")
    if isinstance(obj.get("sets"), dict):
        sets = obj["sets"]
    elif any(k in obj for k in ("frequency", "frequencies", "counts")):
        sets = {obj.get("name", "corpus"): obj}
    else:
        sets = obj
    out = {name: _frequencies(name, s, path) for name, s in sets.items() if isinstance(s, dict)}
    out = {k: v for k, v in out.items() if v}
    if not out:
        raise DataError(f"{path}: no behavior frequencies (expected "
                        '{"sets": {name: {"n_docs": N, "frequency": {behavior: fraction}}}})')
    return out


def _file_label(path):
    """A short name for a file: its stem, or its run folder's name for a plain steps.csv."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem != "steps":
        return stem
    parts = [p for p in os.path.abspath(path).split(os.sep)[:-1] if p != "classify"]
    return parts[-1] if parts else stem


def load_base(paths):
    """{model: {behavior: mean count}} from steps CSVs: each condition's first logged step.
    A condition named in two files is prefixed with its file's (or run folder's) name."""
    per_file = []
    for p in paths:
        curves = curves_from_rows(read_steps_csv(p))
        per_file.append((_file_label(p), {c: {b: float(cv[e.avg_column][1][0]) for b, e in BEHAVIORS.items()
                                              if e.avg_column in cv} for c, cv in curves.items()}))
    seen = {}
    for _, models in per_file:
        for m in models:
            seen[m] = seen.get(m, 0) + 1
    out = {}
    for label, models in per_file:
        for m, v in models.items():
            name = f"{label}:{m}" if seen[m] > 1 else m
            while name in out:
                name += "'"
            if v:
                out[name] = v
    return out


# ---------------------------------------------------------------------------------
# figures

def draw_curves(ax, curves, column, colors):
    """One line per condition that has `column` (one or two points get markers); returns their names."""
    drawn = []
    for cond in sorted(curves, key=order_key):
        if column not in curves[cond]:
            continue
        x, y = curves[cond][column]
        ax.plot(x, y, color=colors[cond], label=cond, marker="o" if len(x) <= 2 else None, markersize=5)
        drawn.append(cond)
    return drawn


def overlay_reference(ax, reference, column, drawn, colors):
    """Dashed reference curves for the conditions drawn on ax (matched by canonical name)."""
    n = 0
    for c, cv in reference["curves"].items():
        match = [d for d in drawn if canonical(c) is not None and canonical(d) == canonical(c)]
        if match and column in cv:
            ax.plot(*cv[column], color=colors[match[0]], linestyle="--", alpha=0.55)
            n += 1
    return n


def fig_lines(sources, column, ylabel, title, colors, reference=None):
    """Figure of `column` vs step, one panel per source that has it, or None if none does."""
    import matplotlib
    from matplotlib.lines import Line2D
    srcs = [s for s in sources if any(column in cv for cv in s["curves"].values())]
    if not srcs:
        return None
    with matplotlib.rc_context(RC):
        fig = figure(PANEL_W * len(srcs) + 0.4, PANEL_H + 0.4)
        axes = fig.subplots(1, len(srcs), sharey=True, squeeze=False)[0]
        for ax, src in zip(axes, srcs):
            drawn = draw_curves(ax, src["curves"], column, colors)
            if reference is not None and not overlay_reference(ax, reference, column, drawn, colors):
                note(f"{title}: no condition of {src['name']} is in {reference['name']}; no overlay")
            ax.set_title(src["name"] if len(srcs) > 1 else f"{title}: {src['name']}")
            ax.set_xlabel("PPO step")
        axes[0].set_ylim(0, axes[0].get_ylim()[1])  # after all panels: the shared top fits them all
        axes[0].set_ylabel(ylabel)
        handles, labels = collect_handles(axes)
        if reference is not None:
            handles += [Line2D([], [], color="gray"), Line2D([], [], color="gray", linestyle="--")]
            labels += ["solid: the panel's data", f"dashed: {reference['name']}"]
        add_legend(fig, handles, labels)
        if len(srcs) > 1:
            fig.suptitle(title)
    return fig


def behavior_panels():
    """A grid with one panel per behavior (study.BEHAVIORS order; two columns, three from five
    behaviors on), titled and labelled; call inside rc_context(RC). Returns (fig, [(ax, steps.csv
    column), ...])."""
    n = len(BEHAVIORS)
    cols = 2 if n <= 4 else 3
    rows = -(-n // cols)
    fig = figure(cols * PANEL_W, rows * PANEL_H + 0.5)
    grid = fig.subplots(rows, cols, sharex=True, squeeze=False)
    for ax in grid.ravel()[n:]:
        ax.remove()
    for ax in grid[:, 0]:
        ax.set_ylabel("mean count per response")
    for c in range(min(cols, n)):   # the lowest panel of each column carries the step axis
        bottom = grid[(n - 1 - c) // cols, c]
        bottom.set_xlabel("PPO step")
        bottom.xaxis.set_tick_params(labelbottom=True)
    axes = grid.ravel()[:n]
    for ax, e in zip(axes, BEHAVIORS.values()):
        ax.set_title(e.title)
    return fig, [(ax, e.avg_column) for ax, e in zip(axes, BEHAVIORS.values())]


def fig_behaviors(src, colors, ref=None, title=None):
    """2x2 panels, one per behavior: mean count per response vs step, one line per condition;
    ref: a reference source whose curves are dashed beside the conditions drawn."""
    import matplotlib
    from matplotlib.lines import Line2D
    curves = src["curves"]
    if not any(e.avg_column in cv for cv in curves.values() for e in BEHAVIORS.values()):
        return None
    with matplotlib.rc_context(RC):
        fig, panels = behavior_panels()
        overlaid = 0
        for ax, col in panels:
            drawn = draw_curves(ax, curves, col, colors)
            if ref is not None:
                overlaid += overlay_reference(ax, ref, col, drawn, colors)
            if not drawn:
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="gray")
            ax.set_ylim(bottom=0)
        handles, labels = collect_handles([ax for ax, _ in panels])
        if overlaid:
            handles += [Line2D([], [], color="gray"), Line2D([], [], color="gray", linestyle="--")]
            labels += ["solid: our runs", f"dashed: {ref['name']}"]
        add_legend(fig, handles, labels)
        fig.suptitle(title or f"Behaviors during PPO: {src['name']}")
    return fig


def grouped_bars(ax, groups, bars, colors, width=0.8):
    """Vertical bars: len(groups) ticks, one bar per entry of `bars` ({label: [value per group]})."""
    n = len(bars)
    x = np.arange(len(groups))
    for i, (label, vals) in enumerate(bars.items()):
        ax.bar(x + (i - (n - 1) / 2) * width / n, vals, width / n * 0.95,
               color=colors[label], label=label)
    ax.set_xticks(x, groups)
    ax.grid(axis="x", visible=False)


def fig_bar_groups(data, ylabel, title, colors, label_of=lambda k: k):
    """Bars grouped by behavior, one bar per entry of data ({name: {behavior: value}})."""
    import matplotlib
    names = sorted(data, key=order_key)
    titles = [e.title.replace(" ", "\n") for e in BEHAVIORS.values()]  # two lines: ticks stay apart
    bars = {label_of(n): [data[n].get(b, math.nan) for b in BEHAVIORS] for n in names}
    bar_colors = {label_of(n): colors[n] for n in names}
    with matplotlib.rc_context(RC):
        fig = figure(min(2 * PANEL_W, max(7.0, 1.6 + 0.25 * len(names) * 4)), PANEL_H + 0.7)
        ax = fig.subplots()
        grouped_bars(ax, titles, bars, bar_colors)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        add_legend(fig, *ax.get_legend_handles_labels())
    return fig


def _behavior_mix(ax, priming, conds):
    """Stacked horizontal bars: each condition's mean count of each behavior per trace."""
    y, left = np.arange(len(conds)), np.zeros(len(conds))
    for b, e in BEHAVIORS.items():
        v = np.array([(priming[c]["behaviors"] or {}).get(b, 0.0) for c in conds])
        ax.barh(y, v, left=left, color=e.color, label=e.title, height=0.7)
        left += v
    for i, c in enumerate(conds):
        if priming[c]["behaviors"] is None:
            ax.text(0, i, " not counted", va="center", color="gray")
    ax.set_xlabel("mean count per trace")
    ax.set_title("behavior mix")


def _value_bars(ax, priming, conds, key, colors):
    """Horizontal bars of one number per condition, labelled with its value ("n/a" if unknown)."""
    v = [priming[c][key] for c in conds]
    bars = ax.barh(np.arange(len(conds)), [x or 0.0 for x in v], color=[colors[c] for c in conds], height=0.7)
    fmt = "{:.2f}" if key == "correct" else "{:.0f}"
    ax.bar_label(bars, labels=["n/a" if x is None else fmt.format(x) for x in v], padding=3)
    if key == "correct":
        ax.set(xlabel="fraction correct", title="correct traces", xlim=(0, 1.12),  # room for labels
               xticks=[0, 0.25, 0.5, 0.75, 1.0])
    else:
        ax.set(xlabel="mean length (tokens)", title="trace length")
        ax.margins(x=0.15)


def fig_priming(priming, colors):
    """Priming sets: fraction correct, behavior mix (stacked), mean length; panels with data only."""
    import matplotlib
    conds = sorted(priming, key=order_key)[::-1]  # top to bottom in legend order
    panels = [p for p in ("correct", "behaviors", "tokens") if any(priming[c][p] for c in conds)]
    with matplotlib.rc_context(RC):
        fig = figure(1.8 + 3.4 * len(panels), max(2.6, 1.2 + 0.38 * len(conds)))
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        for ax, p in zip(axes, panels):
            if p == "behaviors":
                _behavior_mix(ax, priming, conds)
                add_legend(fig, *ax.get_legend_handles_labels())
            else:
                _value_bars(ax, priming, conds, p, colors)
            ax.grid(axis="y", visible=False)
        axes[0].set_yticks(np.arange(len(conds)), conds)
        if len(panels) > 1:
            fig.suptitle("Priming sets")
        else:
            axes[0].set_title("Priming sets: " + axes[0].get_title())
    return fig


# ---------------------------------------------------------------------------------
# the table

def accuracy_rows(source):
    """[(condition, final_step, final_acc, best_step, best_acc)] for every condition with accuracy."""
    rows = []
    for cond in sorted(source["curves"], key=order_key):
        if "accuracy" not in source["curves"][cond]:
            continue
        x, y = source["curves"][cond]["accuracy"]
        i = int(np.argmax(y))
        rows.append((cond, int(x[-1]), float(y[-1]), int(x[i]), float(y[i])))
    return rows


def results_markdown(sources, reference=None):
    """Markdown: per source, final and best accuracy per condition (reference final if given)."""
    ref = {}
    if reference is not None:
        ref = {canonical(c) or c: r for c, *r in accuracy_rows(reference)}
    lines = ["# Accuracy per condition", ""]
    for src in sources:
        rows = accuracy_rows(src)
        if not rows:
            continue
        head = "| condition | final step | final accuracy | best accuracy | best step |"
        rule = "| --- | ---: | ---: | ---: | ---: |"
        if ref:
            head += f" {reference['name']} final |"
            rule += " ---: |"
        lines += [f"## {src['name']}", "", head, rule]
        for cond, fstep, facc, bstep, bacc in rows:
            line = f"| {cond} | {fstep} | {facc:.3f} | {bacc:.3f} | {bstep} |"
            if ref:
                r = ref.get(canonical(cond) or cond)
                line += f" {r[1]:.3f} |" if r else " - |"
            lines.append(line)
        lines.append("")
    return "\n".join(lines) if len(lines) > 2 else ""


# ---------------------------------------------------------------------------------
# main

def _parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_settings(ap, SETTINGS)
    args = ap.parse_args(argv)
    if not (args.csv or args.runs or args.priming or args.base or args.stats):
        ap.error("nothing to plot: give --csv, --runs, --priming, --base or --stats")
    return args


def study_reference(run_dirs):
    """`--reference study`: the study's table of the model the runs start from (config.json's
    "model" or "init" naming Qwen: study:qwen_results), else Llama's (study:llama_results)."""
    configs = [common.run_config(d) for d in run_dirs if os.path.isdir(d)]
    qwen = any("qwen" in str(c.get(k, "")).lower() for c in configs for k in ("model", "init"))
    table = "study:qwen_results" if qwen else "study:llama_results"
    note(f"--reference study: {table}")
    return table


def resolve_study_tables(args):
    """`study:<table>` in --csv, --reference, --priming, --base -> the study's published CSV
    (downloaded once at a pinned commit, common.study_table); paths stay paths. `--reference
    study` picks the table of the runs' model (study_reference)."""
    if args.reference == "study":
        args.reference = study_reference(args.runs)
    args.csv = [common.study_table(p) for p in args.csv]
    args.base = [common.study_table(p) for p in args.base]
    args.reference, args.priming = common.study_table(args.reference), common.study_table(args.priming)
    return args


def _optional(path, what):
    """True if an optional input exists; else a note that its figure is skipped."""
    if path and not os.path.exists(path):
        note(f"skip {what}: {path} does not exist")
        return False
    return bool(path)


def load_inputs(args):
    """Everything the figures need; bad input raises DataError, a missing optional file is noted."""
    args = resolve_study_tables(args)
    sources = [load_csv_source(p) for p in args.csv]
    if args.runs:
        runs = load_runs_source(args.runs)
        if runs is None:
            raise DataError("none of the --runs folders has data yet")
        sources.append(runs)
    ref = load_csv_source(args.reference) if _optional(args.reference, "reference overlay") else None
    priming = load_priming(args.priming) if _optional(args.priming, "priming") else None
    base_paths = [p for p in args.base if _optional(p, "base models from this file")]
    base = load_base(base_paths) if base_paths else None
    stats = load_corpus_stats(args.stats) if _optional(args.stats, "corpus") else None
    return sources, ref, priming, base, stats


def make_figures(sources, ref, priming, base, stats, out):
    """Draw every figure that has data; returns the paths written."""
    names = [c for s in sources + ([ref] if ref else []) for c in s["curves"]]
    names += list(priming or {}) + list(base or {}) + list(stats or {})
    colors = assign_colors(names)
    written = []
    figs = []
    if sources:
        figs += [("accuracy", fig_lines(sources, "accuracy", "accuracy", "Accuracy during PPO", colors, ref)),
                 ("length", fig_lines(sources, "response_length", "mean response length (tokens)",
                                      "Response length during PPO", colors))]
    with_beh = [(s, fig_behaviors(s, colors)) for s in sources]
    with_beh = [(s, f) for s, f in with_beh if f is not None]
    figs += [("behaviors" if len(with_beh) == 1 else f"behaviors_{s['slug']}", f) for s, f in with_beh]
    if sources and not with_beh:
        note("skip behaviors: no behavior columns in any source")
    if priming:
        figs.append(("priming", fig_priming(priming, colors)))
    if base:
        figs.append(("base_models", fig_bar_groups(base, "mean count per response",
                                                   "Behaviors of base models", colors)))
    if stats:
        label = {k: f"{k} (n={v['n_docs']:,})" if v["n_docs"] else k for k, v in stats.items()}
        figs.append(("corpus", fig_bar_groups({k: v["frequency"] for k, v in stats.items()},
                                              "fraction of documents", "Behaviors in the pretraining corpus",
                                              colors, label_of=label.get)))
    for name, fig in figs:
        if fig is None:
            note(f"skip {name}: no --csv or --runs source has this column")
        else:
            written += save(fig, out, name)
    return written


def main(argv=None):
    args = _parse_args(argv)
    try:
        sources, ref, priming, base, stats = load_inputs(args)
        written = make_figures(sources, ref, priming, base, stats, args.out)
    except (DataError, OSError) as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        return 2
    table = results_markdown(sources, ref)
    if table:
        path = os.path.join(args.out, "results.md")
        atomic_write_text(path, table)
        written.append(path)
        print(table)
    if args.html:  # the run report: report.py, run as its own program (it builds on this file's readers)
        cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "report.py"),
               "--out", args.html]
        cmd += ["--runs", *args.runs] if args.runs else []
        cmd += ["--reference", args.reference] if ref and args.reference else []
        cmd += ["--csv", *args.csv] if args.csv else []
        rc = subprocess.run(cmd).returncode
        if rc:
            return rc
        written.append(args.html)
    if written:
        print(f"wrote {len(written)} files to {args.out}: " +
              ", ".join(sorted({os.path.basename(p) for p in written})))
    else:  # results.md needs accuracy curves, so nothing written means no figure either
        print(f"plot.py: error: no figure written to {args.out}: no input had data to draw "
              "(see the notes above)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
