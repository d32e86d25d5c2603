"""study.py, the study's vocabulary: every script reads the behaviors and conditions from it, so a
fifth behavior is one entry there plus its rules function (behavior_rules.RULES)."""
import csv
import doctest
import json
import os
import re

import pytest

import behavior_rules
import classify
import gen_priming
import plot
import plot_style
import study
from conftest import SHARED


def test_doctests():
    for module in (study, behavior_rules):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_vocabulary_is_consistent():
    assert list(study.BEHAVIORS) == ["verification", "backtracking", "subgoal", "backward"]
    assert set(behavior_rules.RULES) == set(study.BEHAVIORS)
    assert all(name == b.name for name, b in study.BEHAVIORS.items())
    assert all(name == c.name for name, c in study.CONDITIONS.items())
    colors = [b.color for b in study.BEHAVIORS.values()]
    assert len(set(colors)) == len(colors)
    names = [n for c in study.CONDITIONS.values() for n in (c.name, *c.aliases)]
    assert len(set(names)) == len(names) == len(study.alias_map())   # no name stands for two conditions
    for c in study.CONDITIONS.values():
        assert set(c.behaviors) <= set(study.BEHAVIORS), c.name
        assert c.family in ("base", "primed", "control", "pretraining"), c.name
        assert c.priming in ("", "written", "derived"), c.name
        assert (c.priming == "derived") == bool(c.derived_from), c.name
        if c.derived_from:
            assert study.CONDITIONS[c.derived_from].priming == "written", c.name
        assert (c.family == "primed") == (c.priming == "written" and bool(c.behaviors)), c.name
    assert gen_priming.CONDITIONS == study.priming_sets() and len(study.priming_sets()) == 8
    assert {c: sorted(b) for c, b in gen_priming.DIRECT.items()} == {
        "all_strategies": sorted(study.BEHAVIORS), "only_backtracking": ["backtracking"],
        "backtracking_verification": ["backtracking", "verification"],
        "backtracking_subgoal": ["backtracking", "subgoal"], "backtracking_backward": ["backtracking", "backward"],
        "negative_control": []}


def test_steps_columns_are_the_study_csv_header():
    ref = os.path.join(SHARED, "reference", "llama_results.csv")
    if not os.path.exists(ref):
        pytest.skip("reference CSVs not beside the repo")
    with open(ref) as f:
        assert f.readline().strip().split(",") == study.steps_columns()


def test_conditions_keep_their_color_under_any_alias():
    for c in study.CONDITIONS.values():
        for name in (c.name, *c.aliases, f"ppo-{c.name}", f"{c.name} (seed1)"):
            assert plot_style.canonical(name) == c.name, name
            assert plot_style.assign_colors([name])[name] == c.color, name


# ---------------------------------------------------------------- a fifth behavior
RESTATE = re.compile(r"let me restate")


@pytest.fixture
def fifth_behavior(monkeypatch):
    """"restating", added in one place: its entry in study.BEHAVIORS and its rules function."""
    monkeypatch.setitem(study.BEHAVIORS, "restating", study.Behavior(
        "restating", "Restating", "avg_restatements", "total_restatements", "#937860",
        study.Definition("restating: the reasoning restates the task", "'let me restate: make 76'",
                         "the task as given"),
        show="restating: restate the task", avoid="do not restate the task",
        doc="the author restates the problem.", doc_avoid="restate the problem"))
    monkeypatch.setitem(behavior_rules.RULES, "restating",
                        lambda doc, target: [m.span() for m in RESTATE.finditer(doc.text)])


def test_a_fifth_behavior_is_counted_written_and_drawn(tmp_path, fifth_behavior, monkeypatch):
    restates = [0, 1, 2, 3]
    recs = [{"step": step, "nums": [44, 19, 3, 1], "target": 76, "condition": "all_strategies",
             "response": "Let me restate: make 76. " * k + "44 + 19 = 63. That's not 76.",
             "correct": False, "length": 20}
            for step in (0, 10) for k in restates]
    data = tmp_path / "restating.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "cls"
    assert classify.main(["--input", str(data), "--out", str(out)]) == 0
    classified = classify.read_records(str(out / "classified.jsonl"))
    assert [r["restating"] for r in classified] == restates * 2
    assert all(r["verification"] == 1 for r in classified)      # the four others still counted
    with open(out / "steps.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == study.steps_columns()
    assert {"avg_restatements", "total_restatements"} <= set(rows[0])
    assert [(r["step"], float(r["avg_restatements"]), float(r["total_restatements"])) for r in rows] == [
        ("0", 1.5, 6.0), ("10", 1.5, 6.0)]
    assert "restating: the reasoning restates" in classify.judge_prompt("restating", "x", [1, 2], 3)  # the judge asks too

    monkeypatch.setattr(plot_style, "FORMATS", ("png",))
    monkeypatch.setattr(plot_style, "DPI", 60)
    figs = tmp_path / "figs"
    assert plot.main(["--csv", str(out / "steps.csv"), "--out", str(figs)]) == 0
    assert (figs / "behaviors.png").is_file()
    src = plot.load_csv_source(str(out / "steps.csv"))
    fig = plot.fig_behaviors(src, plot_style.assign_colors(src["curves"]))
    assert [ax.get_title() for ax in fig.axes] == [
        "Verification", "Backtracking", "Subgoal setting", "Backward chaining", "Restating"]
    (line,) = fig.axes[4].get_lines()
    assert list(line.get_ydata()) == [1.5, 1.5]


def test_a_behavior_without_rules_is_refused(monkeypatch):
    monkeypatch.setitem(study.BEHAVIORS, "restating", study.BEHAVIORS["subgoal"])
    with pytest.raises(KeyError, match="restating"):
        behavior_rules.count_behaviors("44 + 19 = 63", [44, 19, 3, 1], 76)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7])
def test_behavior_grid_follows_the_number_of_behaviors(n, monkeypatch):
    """One panel per behavior, and the lowest panel of each column carries the step axis."""
    entries = list(study.BEHAVIORS.values())
    fake = {f"b{i}": entries[i % 4] for i in range(n)}
    monkeypatch.setattr(study, "BEHAVIORS", fake)
    monkeypatch.setattr(plot, "BEHAVIORS", fake)
    fig, panels = plot.behavior_panels()
    assert len(fig.axes) == len(panels) == n
    labelled = [ax for ax in fig.axes if ax.get_xlabel() == "PPO step"]
    assert len(labelled) == min(n, 2 if n <= 4 else 3)
    for ax in labelled:   # nothing below it in its column
        box = ax.get_subplotspec()
        assert not any(o.get_subplotspec().colspan == box.colspan and o.get_subplotspec().rowspan.start > box.rowspan.start
                       for o in fig.axes)
