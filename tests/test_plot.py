"""plot.py: the study's figures and the accuracy table, from reference CSVs and from run folders."""
import csv
import json
import os
import struct

import numpy as np
import pytest

import plot
import plot_style
import study as vocab  # "study" names the fixture below
from conftest import SHARED

REF = os.path.join(SHARED, "reference")
LLAMA, QWEN = os.path.join(REF, "llama_results.csv"), os.path.join(REF, "qwen_results.csv")
CLAUDE = os.path.join(REF, "claude_accs.csv")
need_ref = pytest.mark.skipif(not os.path.exists(LLAMA), reason="reference CSVs not beside the repo")
HEADER = ("condition,step,avg_verifications,avg_backtracking,avg_subgoals,avg_backwards,total_verifications,"
          "total_backtracking,total_subgoals,total_backwards,accuracy,response_length")


def last_step_accuracy(path):
    """Independent of plot.py: {condition: accuracy at its largest step} (the last row of that step)."""
    best = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            step = float(r["step"])
            if r["condition"] not in best or step >= best[r["condition"]][0]:
                best[r["condition"]] = (step, float(r["accuracy"]))
    return {c: a for c, (_, a) in best.items()}


def table_values(md):
    """{(section, condition): (final step, final acc, best acc)} parsed from results.md."""
    out, section = {}, None
    for line in md.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("| ") and not line.startswith(("| condition", "| ---")):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[(section, cells[0])] = (int(cells[1]), float(cells[2]), float(cells[3]))
    return out


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def assert_real_png(path, min_width=800, min_height=300):
    """Exists, is a PNG at least README-wide, and is not blank (many distinct colors)."""
    import matplotlib.image
    w, h = png_size(path)
    assert w >= min_width and h >= min_height, (path, w, h)
    q = (matplotlib.image.imread(path)[..., :3] * 255).astype(np.uint32)
    rgb = (q[..., 0] << 16) | (q[..., 1] << 8) | q[..., 2]
    assert len(np.unique(rgb)) > 50, f"{path} looks blank"
    assert (rgb != 0xFFFFFF).mean() > 0.02, f"{path} is nearly all white"


def legend_labels(fig):
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def write_csv(path, rows):
    with open(path, "w") as f:
        f.write(HEADER + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return str(path)


def steps_rows(cond, steps, acc0, beh=(0.5, 1.0, 0.2, 0.1)):
    return [[cond, s, *(b + s / 100 for b in beh), 0, 0, 0, 0, round(acc0 + s / 1000, 4), 100 + s]
            for s in steps]


# ---------------------------------------------------------------------------------
# the study's reference CSVs (acceptance: every condition, table = last-step values)

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """plot.py run once on the study's CSVs, with its own settings: figures 1-3 and the table."""
    out = tmp_path_factory.mktemp("study")
    rc = plot.main(["--csv", LLAMA, QWEN, "--out", str(out)])
    assert rc == 0
    return out


@need_ref
def test_reference_table_equals_last_step_accuracy(study):
    table = table_values((study / "results.md").read_text())
    for path in (LLAMA, QWEN):
        want = last_step_accuracy(path)
        rows = {r[0]: r for r in plot.accuracy_rows(plot.load_csv_source(path))}
        assert set(rows) == set(want)  # every condition, the one-row base_70b included
        assert {c for s, c in table if s == os.path.basename(path)} == set(want)
        for cond, acc in want.items():
            assert rows[cond][2] == acc  # exact, from the loader
            assert abs(table[(os.path.basename(path), cond)][1] - acc) <= 5e-4  # as printed
    # the study's headline numbers (DESIGN.md) at step 250
    assert abs(table[("llama_results.csv", "base_ppo")][1] - 0.34) < 0.005
    assert abs(table[("llama_results.csv", "owmathqa2_ppo")][1] - 0.49) < 0.005
    assert table[("qwen_results.csv", "base_ppo")][0] == 240  # its last logged step, not 250


@need_ref
def test_reference_figures_exist_and_read(study):
    assert sorted(os.listdir(study)) == sorted(
        [f"{s}.{e}" for s in ("accuracy", "length", "behaviors_llama_results", "behaviors_qwen_results")
         for e in ("png", "svg")] + ["results.md"])
    for stem in ("accuracy", "length", "behaviors_llama_results", "behaviors_qwen_results"):
        assert_real_png(study / (stem + ".png"))
        assert os.path.getsize(study / (stem + ".svg")) > 10_000


@need_ref
def test_reference_figures_show_every_condition():
    sources = [plot.load_csv_source(LLAMA), plot.load_csv_source(QWEN)]
    conds = set(sources[0]["curves"]) | set(sources[1]["curves"])
    colors = plot_style.assign_colors(conds)
    for column in ("accuracy", "response_length"):
        fig = plot.fig_lines(sources, column, column, column, colors)
        assert set(legend_labels(fig)) == conds
        assert [ax.get_title() for ax in fig.axes] == ["llama_results.csv", "qwen_results.csv"]
        assert fig.get_suptitle() == column
    for src in sources:
        fig = plot.fig_behaviors(src, colors)
        assert set(legend_labels(fig)) == set(src["curves"])
        assert [ax.get_title() for ax in fig.axes] == [e.title for e in vocab.BEHAVIORS.values()]


def test_legend_sits_outside_the_axes_and_inside_the_figure():
    """Drawn figures: with many long names, one panel (legend at the right) and two (below)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    names = list(vocab.CONDITIONS) + ["human_cot", "a_very_long_unknown_condition_name"]
    src = {"name": "x.csv", "slug": "x", "curves": plot.curves_from_rows(
        [dict(condition=c, step=s, accuracy=s / 10) for c in names for s in range(5)])}
    colors = plot_style.assign_colors(names)
    for sources in ([src], [src, dict(src, name="y.csv")]):
        fig = plot.fig_lines(sources, "accuracy", "accuracy", "t", colors)
        r = FigureCanvasAgg(fig).get_renderer()
        fig.draw(r)
        leg = fig.legends[0].get_window_extent(r)
        assert leg.x0 >= 0 and leg.y0 >= 0 and leg.x1 <= fig.bbox.width + 1 and leg.y1 <= fig.bbox.height + 1
        for ax in fig.axes:
            box = ax.get_tightbbox(r)  # the axes with its tick labels and axis labels
            assert leg.y1 <= box.y0 + 1 or leg.x0 >= box.x1 - 1, "legend overlaps a panel"
        assert len(legend_labels(fig)) == len(names)


# ---------------------------------------------------------------------------------
# our runs

def make_run(root, name, condition=None, val=True, steps_csv=True, torn=False):
    d = root / name
    d.mkdir()
    if condition:
        (d / "config.json").write_text(json.dumps({"condition": condition, "steps": 30}))
    lines = []
    for s in range(0, 31, 5):
        rec = {"step": s, "acc": s / 100, "response_length/mean": 50 + s}
        if val and s % 10 == 0:
            rec["val/acc"] = 0.1 + s / 50
        lines.append(json.dumps(rec))
    text = "\n".join(lines) + "\n" + ('{"step": 35, "val/a' if torn else "")
    (d / "metrics.jsonl").write_text(text)
    if steps_csv:
        (d / "classify").mkdir()
        write_csv(d / "classify" / "steps.csv", steps_rows(condition or name, [0, 10, 20, 30], 0.0))
    return str(d)


def test_runs_mode_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(plot_style, "FORMATS", ("png",))  # speed: the study fixture covers SVG and DPI
    monkeypatch.setattr(plot_style, "DPI", 80)
    runs = tmp_path / "out"
    runs.mkdir()
    a = make_run(runs, "ppo-a", condition="all_strategies", torn=True)
    b = make_run(runs, "ppo-empty_cot", val=False, steps_csv=False)
    ref = write_csv(tmp_path / "ref.csv", steps_rows("all_strategies", [0, 50, 100], 0.3)
                    + steps_rows("dots", [0, 50, 100], 0.2))
    prim = tmp_path / "summary.json"
    prim.write_text(json.dumps({"settings": {"backend": "symbolic", "n": 10}, "conditions": {  # gen_priming.py's
        "all_strategies": {"records": 10, "correct_rate": 0.6, "mean_completion_tokens": 300.0,
                           "behaviors": {"verification": 1.5, "backtracking": 2.0, "subgoal": 1.0, "backward": 0.5}},
        "empty_cot": {"records": 10, "correct_rate": 0.4, "mean_completion_tokens": 12.0,
                      "behaviors": {"verification": 0, "backtracking": 0, "subgoal": 0, "backward": 0}},
        "dots": {"records": 10, "correct_rate": 0.6, "mean_completion_tokens": 300.0, "behaviors": None}}}))
    got = plot.load_priming(str(prim))
    assert set(got) == {"all_strategies", "empty_cot", "dots"} and got["dots"]["behaviors"] is None
    assert got["all_strategies"]["tokens"] == 300.0 and got["empty_cot"]["correct"] == 0.4
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"sets": {
        "curated": {"n_docs": 1200, "frequency": {"verification": 0.4, "backtracking": 0.3, "subgoal": 0.5, "backward": 0.2}},
        "control": {"n_docs": 1200, "counts": {"verification": 12, "backtracking": 0, "subgoal": 24, "backward": 0}}}}))
    base = write_csv(tmp_path / "base.csv", steps_rows("qwen2.5-3b", [0], 0.01) + steps_rows("llama-3.2-3b", [0], 0.0))
    out = tmp_path / "figs"
    rc = plot.main(["--runs", a, b, "--reference", ref, "--priming", str(prim), "--stats", str(stats),
                    "--base", base, "--out", str(out)])
    assert rc == 0
    for stem in ("accuracy", "length", "behaviors", "priming", "corpus", "base_models"):
        assert_real_png(out / (stem + ".png"), min_width=400, min_height=200)
    table = table_values((out / "results.md").read_text())
    assert table[("our runs", "all_strategies")] == (30, pytest.approx(0.7), pytest.approx(0.7))  # val/acc wins
    assert table[("our runs", "ppo-empty_cot")][:2] == (30, pytest.approx(0.3))  # no val/acc: acc
    assert "| all_strategies | 30 | 0.700 | 0.700 | 30 | 0.400 |" in (out / "results.md").read_text()
    # the torn last line was ignored, not cut off: the run may still be writing it
    assert open(os.path.join(a, "metrics.jsonl")).read().endswith('"val/a')


def test_runs_curves_colors_and_overlay(tmp_path):
    a = make_run(tmp_path, "ppo-a", condition="all_strategies")
    b = make_run(tmp_path, "ppo-empty_cot", steps_csv=False)
    src = plot.load_runs_source([a, b])
    assert set(src["curves"]) == {"all_strategies", "ppo-empty_cot"}
    x, y = src["curves"]["all_strategies"]["accuracy"]
    assert list(x) == [0, 10, 20, 30] and list(y) == pytest.approx([0.1, 0.3, 0.5, 0.7])
    assert list(src["curves"]["all_strategies"]["response_length"][1]) == [50, 55, 60, 65, 70, 75, 80]
    assert "avg_backtracking" in src["curves"]["all_strategies"]
    assert "avg_backtracking" not in src["curves"]["ppo-empty_cot"]
    ref = {"name": "ref.csv", "curves": plot.curves_from_rows(
        [dict(condition=c, step=s, accuracy=0.5) for c in ("all_strategies", "dots") for s in (0, 100)])}
    colors = plot_style.assign_colors(list(src["curves"]) + list(ref["curves"]))
    fig = plot.fig_lines([src], "accuracy", "accuracy", "t", colors, reference=ref)
    lines = fig.axes[0].get_lines()
    dashed = [l for l in lines if l.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_color() == vocab.CONDITIONS["all_strategies"].color  # dots: not in the runs
    solid = {l.get_label(): l.get_color() for l in lines if l.get_linestyle() == "-"}
    assert solid == {"all_strategies": vocab.CONDITIONS["all_strategies"].color, "ppo-empty_cot": vocab.CONDITIONS["empty_cot"].color}
    assert {"all_strategies", "ppo-empty_cot"} <= set(legend_labels(fig))


def test_two_runs_of_one_condition_are_told_apart(tmp_path):
    a = make_run(tmp_path, "seed0", condition="dots")
    b = make_run(tmp_path, "seed1", condition="dots")
    src = plot.load_runs_source([a, b])
    assert set(src["curves"]) == {"dots (seed0)", "dots (seed1)"}
    assert set(plot_style.assign_colors(src["curves"]).values()) == {vocab.CONDITIONS["dots"].color}


# ---------------------------------------------------------------------------------
# colors, schemas, missing pieces, bad input

def test_colors_fixed_aliases_and_fallback():
    names = ["base_ppo", "none", "no_positive_all_strategies", "owmathqa2_ppo", "owmathqa_none_ppo1",
             "ppo-backtracking_subgoal", "human_cot", "base_70b", "zzz"]
    c = plot_style.assign_colors(names)
    assert c["base_ppo"] == c["none"] == vocab.CONDITIONS["base"].color
    assert c["no_positive_all_strategies"] == vocab.CONDITIONS["no_positive"].color
    assert c["owmathqa2_ppo"] == vocab.CONDITIONS["curated"].color and c["owmathqa_none_ppo1"] == vocab.CONDITIONS["control"].color
    assert c["ppo-backtracking_subgoal"] == vocab.CONDITIONS["backtracking_subgoal"].color
    unknown = [c[n] for n in ("human_cot", "base_70b", "zzz")]
    assert len(set(unknown)) == 3 and not set(unknown) & {c.color for c in vocab.CONDITIONS.values()}
    assert plot_style.assign_colors(names) == c  # deterministic
    assert plot_style.assign_colors(["human_cot"])["human_cot"] == c["human_cot"]  # stable across invocations
    assert len({c.color for c in vocab.CONDITIONS.values()}) == len(vocab.CONDITIONS)


def test_priming_schemas(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"dots": {"records": 20, "correct": 5, "mean_tokens": 100,
                                      "avg_verifications": 0.0, "avg_backtracking": 0.0},
                             "all_strategies": {"correct_frac": 0.25, "behaviors": {"verification": {"mean": 2.0}}},
                             "n_total": 40}))
    got = plot.load_priming(str(p))
    assert got["dots"]["correct"] == 0.25 and got["dots"]["tokens"] == 100
    assert got["dots"]["behaviors"] == {"verification": 0.0, "backtracking": 0.0}
    assert got["all_strategies"]["behaviors"] == {"verification": 2.0}
    p.write_text(json.dumps([{"condition": "empty_cot", "correct_rate": 0.1}]))
    assert plot.load_priming(str(p))["empty_cot"]["correct"] == 0.1
    if os.path.exists(CLAUDE):
        assert plot.load_priming(CLAUDE)["empty_cot"]["correct"] == pytest.approx(0.19026666)
    p.write_text(json.dumps({"dots": {"records": 3}}))
    with pytest.raises(plot.DataError, match="no condition with correctness"):
        plot.load_priming(str(p))


def test_base_models_from_several_classify_folders(tmp_path):
    for name, beh in (("base-qwen", (1.0, 2.0, 0.5, 0.1)), ("base-llama", (0.1, 0.2, 0.3, 0.0))):
        (tmp_path / name / "classify").mkdir(parents=True)
        write_csv(tmp_path / name / "classify" / "steps.csv", steps_rows("base", [0, 10], 0.0, beh))
    got = plot.load_base([str(tmp_path / n / "classify" / "steps.csv") for n in ("base-qwen", "base-llama")])
    assert got == {"base-qwen:base": {"verification": 1.0, "backtracking": 2.0, "subgoal": 0.5, "backward": 0.1},
                   "base-llama:base": {"verification": 0.1, "backtracking": 0.2, "subgoal": 0.3, "backward": 0.0}}


def test_corpus_stats_schemas(tmp_path):
    p = tmp_path / "stats.json"
    p.write_text(json.dumps({"n_docs": 10, "counts": {"verification": 5, "backward": 1}}))
    assert plot.load_corpus_stats(str(p)) == {"corpus": {"n_docs": 10, "frequency": {"verification": 0.5, "backward": 0.1}}}
    p.write_text(json.dumps({"rich": {"n_docs": 4, "frequency": {"avg_backtracking": 0.75}}}))
    assert plot.load_corpus_stats(str(p))["rich"]["frequency"] == {"backtracking": 0.75}
    p.write_text(json.dumps({"sets": {}}))
    with pytest.raises(plot.DataError, match="no behavior frequencies"):
        plot.load_corpus_stats(str(p))


def test_missing_optional_pieces_are_skipped(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(plot_style, "DPI", 60)
    csv_path = write_csv(tmp_path / "s.csv", [["x", 0, "", "", "", "", "", "", "", "", 0.5, ""],
                                              ["x", 10, "", "", "", "", "", "", "", "", 0.6, ""]])
    out = tmp_path / "figs"
    rc = plot.main(["--csv", csv_path, "--priming", str(tmp_path / "nope.json"), "--stats",
                    str(tmp_path / "nope2.json"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0
    assert "skip priming" in err and "skip corpus" in err and "skip behaviors" in err and "skip length" in err
    assert sorted(os.listdir(out)) == ["accuracy.png", "accuracy.svg", "results.md"]
    assert table_values((out / "results.md").read_text())[("s.csv", "x")] == (10, 0.6, 0.6)


def test_run_folder_without_data_is_noted(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    a = make_run(tmp_path, "ok", steps_csv=False)
    src = plot.load_runs_source([str(tmp_path / "empty"), a])
    assert list(src["curves"]) == ["ok"]
    assert "no metrics.jsonl or steps.csv" in capsys.readouterr().err


@pytest.mark.parametrize("content, msg", [
    ("condition,accuracy\nx,0.5\n", "no column step"),
    (HEADER + "\nx,0,1,1,1,1,1,1,1,1,abc,1\n", ":2: column accuracy: 'abc' is not a number"),
    (HEADER + "\n,0,1,1,1,1,1,1,1,1,0.1,1\n", ":2: empty condition"),
    (HEADER + "\n", "no rows"),
])
def test_bad_csv_gives_clear_error(tmp_path, capsys, content, msg):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    assert plot.main(["--csv", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and str(p) in err and msg in err


def test_bad_runs_and_json(tmp_path, capsys):
    assert plot.main(["--runs", str(tmp_path / "out/ppo-*"), "--out", str(tmp_path / "o")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    d = tmp_path / "r"
    d.mkdir()
    (d / "metrics.jsonl").write_text('{"step": 0, "acc": 0.1}\nnot json\n{"step": 2, "acc": 0.3}\n')
    assert plot.main(["--runs", str(d), "--out", str(tmp_path / "o")]) == 2
    assert "metrics.jsonl:2: malformed JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plot.main(["--out", str(tmp_path / "o")])  # nothing to plot


@pytest.mark.parametrize("what", ["missing priming", "csv without data columns", "base without behaviors"])
def test_no_figure_written_is_exit_2_with_one_line(tmp_path, capsys, what):
    """A run that drew nothing must not end like one that did."""
    steps_only = tmp_path / "steps.csv"
    steps_only.write_text("condition,step\nx,0\n")
    argv = {"missing priming": ["--priming", str(tmp_path / "nope.json")],
            "csv without data columns": ["--csv", str(steps_only)],
            "base without behaviors": ["--base", str(steps_only)]}[what]
    out = tmp_path / "figs"
    assert plot.main(argv + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"plot.py: error: no figure written to {out}")
    assert sum("error" in line for line in err) == 1
    assert not out.exists() or os.listdir(out) == []


def test_metrics_step_that_is_not_a_number(tmp_path, capsys):
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.jsonl").write_text('{"step": 0, "acc": 0.1}\n{"step": "ten", "acc": 0.2}\n')
    assert plot.main(["--runs", str(d), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl:2: expected an object with a numeric \"step\"" in err and "Traceback" not in err


def test_import_has_no_side_effects():
    import subprocess
    import sys
    code = "import plot, sys; assert 'matplotlib.pyplot' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=plot.os.path.dirname(plot.__file__), check=True)


def test_study_tables_resolve_to_a_pinned_cached_copy(tmp_path, monkeypatch):
    """`study:<table>` names the study's published CSV; it is fetched once at a pinned commit
    into the cache (here pre-filled, so no network) and plot reads it like a path."""
    import shutil
    import common
    ref = os.path.join(SHARED, "reference", "llama_results.csv")
    if not os.path.exists(ref):
        pytest.skip("no local copy of the study's table")
    monkeypatch.setattr(common, "CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "study" / common.STUDY_COMMIT[:12] / "llama_results.csv"
    cached.parent.mkdir(parents=True)
    shutil.copy(ref, cached)
    assert common.study_table("study:llama_results") == str(cached)
    assert common.study_table("some/path.csv") == "some/path.csv"
    with pytest.raises(common.DataError, match="unknown table"):
        common.study_table("study:gpt5_results")
    assert plot.main(["--csv", "study:llama_results", "--out", str(tmp_path / "figs")]) in (0, None)
    assert (tmp_path / "figs" / "accuracy.png").exists()


@need_ref
@pytest.mark.parametrize("model,table", [("qwen2.5-3b", "qwen_results"), ("llama-3.2-3b", "llama_results"),
                                         (None, "llama_results")])
def test_reference_study_picks_the_runs_model(tmp_path, monkeypatch, capsys, model, table):
    """`--reference study`: the study's table of the model the runs trained (here from a
    pre-filled cache, so no network), its curves dashed behind ours."""
    import shutil
    import common
    monkeypatch.setattr(common, "CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(plot_style, "FORMATS", ("png",))
    cache = tmp_path / "cache" / "study" / common.STUDY_COMMIT[:12]
    cache.mkdir(parents=True)
    for t in ("llama_results", "qwen_results"):
        shutil.copy(os.path.join(REF, f"{t}.csv"), cache / f"{t}.csv")
    run = make_run(tmp_path, "ppo-all", condition="all_strategies")
    if model:
        cfg = json.loads(open(os.path.join(run, "config.json")).read())
        open(os.path.join(run, "config.json"), "w").write(json.dumps({**cfg, "model": model}))
    assert plot.main(["--runs", run, "--reference", "study", "--out", str(tmp_path / "figs")]) == 0
    assert f"--reference study: study:{table}" in capsys.readouterr().err
    want = last_step_accuracy(str(cache / f"{table}.csv"))["all_strategies"]
    assert f"| all_strategies | 30 | 0.700 | 0.700 | 30 | {want:.3f} |" in (tmp_path / "figs" / "results.md").read_text()
