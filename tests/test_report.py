"""report.py: the run report is one self-contained HTML file; in a real headless Chromium it
renders without console errors, its step browser shows the expected responses under each
filter, and the highlighted spans are exactly the rules classifier's counts."""
import json
import os
import re

import pytest

import behavior_rules
import study
import common
import countdown
import symbolic
import plot
import report
from conftest import SHARED

CONDS = ("all_strategies", "only_backtracking", "backtracking_subgoal", "backtracking_backward", "negative_control")
PER_STEP = 25


def make_run(root, name, steps=(1, 2), n=30, val_steps=(0, 2)):
    """A run folder as ppo.py writes it, with symbolic priming traces as its responses (all four
    behaviors, right and wrong answers) and live behavior metrics in metrics.jsonl."""
    d = root / f"ppo-{name}"
    tasks = countdown.generate_tasks(n, seed=len(name), sizes=(3, 4))
    metrics = []
    for split, these in (("rollouts", steps), ("val", val_steps)):
        for step in these:
            recs = []
            for i, t in enumerate(tasks):
                rec = symbolic.write_symbolic(t, CONDS[i % len(CONDS)], seed=step, budget=1 + i % 3)
                text = rec["completion"]
                if i % 7 == 3:   # as a model might write it: capitals, unicode operators, words
                    text = "Ok. " + text.replace("*", "×").replace(" = ", " equals ").upper()
                reward = countdown.score(text, t["nums"], t["target"])
                recs.append({"step": step, "id": t["id"], "nums": t["nums"], "target": t["target"],
                             "prompt": countdown.make_prompt(t["nums"], t["target"]), "response": text,
                             "reward": reward, "correct": reward >= 1.0, "length": len(text) // 4})
            common.write_jsonl(str(d / split / f"step_{step:06d}.jsonl"), recs)
            if split == "rollouts":
                counts = [behavior_rules.count_behaviors(r["response"], r["nums"], r["target"]) for r in recs]
                metrics.append({"step": step, "acc": sum(r["correct"] for r in recs) / n,
                                "response_length/mean": sum(r["length"] for r in recs) / n,
                                **{f"behavior/{b}": sum(c[b] for c in counts) / n for b in study.BEHAVIORS},
                                **{f"behavior/{b}/correct": 0.5 for b in study.BEHAVIORS}})
    common.write_jsonl(str(d / "metrics.jsonl"), metrics)
    common.write_json(str(d / "config.json"), {"stage": "ppo", "condition": name, "steps": max(steps),
                                               "note": "</script><script>alert(1)</script>"})
    return d


def kept(run_dir, split, step):
    """The records the report keeps of one step file (its seeded sample)."""
    recs = common.read_jsonl(str(run_dir / split / f"step_{step:06d}.jsonl"))
    return report.sample_records(recs, PER_STEP, f"0|{split}|{step}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    return root, [make_run(root, "all_strategies"), make_run(root, "only_backtracking", steps=(1, 2, 3))]


@pytest.fixture(scope="module")
def page(runs):
    root, dirs = runs
    out = root / "report.html"
    stats = report.write_report([str(d) for d in dirs], str(out), per_step=PER_STEP, jobs=1)
    return out, stats


def test_report_is_one_self_contained_file(page, runs):
    out, stats = page
    text = out.read_text()
    assert stats["responses"] == 2 * PER_STEP * (2 + 2) + PER_STEP and stats["chunks"] == 9
    assert stats["figures"] >= 3
    # nothing is fetched: no external script, style, image, font or link to load
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", text)
    assert "@import" not in text and "url(http" not in text
    assert text.count("<script") == 2 + stats["chunks"]  # meta, one block per step file, the code
    assert "<script>alert(1)" not in text                   # config text cannot close the script element
    meta = json.loads(re.search(r'<script id="meta" type="application/json">(.*?)</script>', text, re.S)
                      .group(1))
    assert [r["name"] for r in meta["runs"]] == ["all_strategies", "only_backtracking"]
    chunk = meta["runs"][0]["chunks"][0]
    assert (chunk["split"], chunk["step"], chunk["n"], chunk["total"]) == ("rollouts", 1, PER_STEP, 30)
    assert meta["runs"][0]["config"]["condition"] == "all_strategies"



def test_page_template_is_filled_once_and_completely():
    """report_page.html's {{name}} slots are all filled, and text that looks like a slot in the
    data (a setting, a prompt) is shown as written, never filled in turn."""
    meta = {"title": "t {{meta}}", "generated": "now", "page": 20, "per_step": 1, "behaviors": ["verification"],
            "names": {"verification": "Verification"}, "colors": {"verification": "#123456"},
            "runs": [{"name": "r", "config": {"note": "{{js}}"}, "prompt": "{{blocks}}", "chunks": []}]}
    text = report.render(meta, [], [["r", "0.5", "1 -> 2"]], ['<script id="c0">QQ==</script>'], None)
    with open(report.PAGE_TEMPLATE, encoding="utf-8") as f:
        slots = set(re.findall(r"\{\{(\w+)\}\}", f.read()))
    assert slots >= {"meta", "blocks", "configs", "title"}
    # each as written: the title in <title>, <h1> and the meta JSON; the note and prompt in Settings and the JSON
    left = re.findall(r"\{\{\w+\}\}", text)
    assert {k: left.count(k) for k in set(left)} == {"{{meta}}": 3, "{{js}}": 2, "{{blocks}}": 2}
    assert text.startswith("<!DOCTYPE html>") and text.count('<script id="c0">QQ==</script>') == 1
    assert "DecompressionStream" in text and "--c:#123456" in text

needs_browser = pytest.mark.skipif(
    not report.find_browser() and not os.environ.get("REPORT_BROWSER_REQUIRED"),
    reason="no Chromium here (apt-get install chromium; .ci/run installs it and sets REPORT_BROWSER_REQUIRED)")


def select(b, sel, value):
    """Pick value in a <select> as a user would and wait for the page to draw again."""
    n = b.eval("document.body.dataset.ready")
    b.eval(report.select_js(sel, value))
    b.wait_for(f"document.body.dataset.ready !== '{n}'")


def shown(b):
    """Every card of the current filter, page by page: its text, task and marked spans."""
    out = []
    while True:
        out += b.eval("""[...document.querySelectorAll('.card')].map(c => ({
            text: c.querySelector('pre').textContent, nums: JSON.parse(c.dataset.nums), target: +c.dataset.target,
            run: +c.dataset.run, step: +c.dataset.step, correct: !!c.querySelector('.ok'),
            chips: Object.fromEntries([...c.querySelectorAll('.chip')].map(s => [s.dataset.b, +s.dataset.n])),
            marks: [...c.querySelectorAll('mark')].map(m => {
              let start = 0; for (let n = c.querySelector('pre').firstChild; n !== m; n = n.nextSibling) start += n.textContent.length;
              return {i: m.dataset.i.split(' ').map(Number), b: m.dataset.b.split(' '), start, end: start + m.textContent.length};
            })}))""")
        if b.eval("document.getElementById('next').disabled"):
            return out
        n = b.eval("document.body.dataset.ready")
        b.eval("document.getElementById('next').click()")
        b.wait_for(f"document.body.dataset.ready !== '{n}'")


def spans_of(card):
    """{span index: (start, end, behavior)} rebuilt from the card's marks."""
    spans = {}
    for m in card["marks"]:
        for i, beh in zip(m["i"], m["b"]):
            a, z, _ = spans.get(i, (m["start"], m["end"], beh))
            spans[i] = (min(a, m["start"]), max(z, m["end"]), beh)
    return spans


@needs_browser
def test_report_in_headless_chromium(page, runs, tmp_path):
    out, _ = page
    _, dirs = runs
    with report.Browser() as b:
        b.open("file://" + str(out))
        b.wait_for("document.body.dataset.ready")
        # first view: the first run's first rollout step, a page of 20 of its 25 responses
        assert b.eval("document.querySelectorAll('.card').length") == report.PAGE
        assert b.eval("document.getElementById('status').textContent").startswith(f"1–20 of {PER_STEP} responses")
        assert b.eval("document.querySelectorAll('figure img').length") >= 3
        assert b.eval("[...document.querySelectorAll('figure img')].every(i => i.complete && i.naturalWidth > 0)")
        cards = shown(b)
        assert len(cards) == PER_STEP and {(c["run"], c["step"]) for c in cards} == {(0, 1)}
        want = kept(dirs[0], "rollouts", 1)
        assert [c["text"] for c in cards] == [r["response"] for r in want]   # the text, character for character
        n_spans = 0
        for c, r in zip(cards, want):
            counts = behavior_rules.count_behaviors(r["response"], r["nums"], r["target"])
            spans = spans_of(c)
            assert {k: sum(s[2] == k for s in spans.values()) for k in study.BEHAVIORS} == counts
            assert c["chips"] == counts
            assert sorted(spans.values()) == sorted(behavior_rules.behavior_spans(r["response"], r["nums"], r["target"]))
            n_spans += len(spans)
        assert n_spans > 20

        # filters: step, correct / incorrect, behavior present, run, split, text
        select(b, "f-step", "2")
        want = kept(dirs[0], "rollouts", 2)
        assert len(shown(b)) == len(want)
        select(b, "f-correct", "1")
        cards = shown(b)
        assert len(cards) == sum(r["correct"] for r in want) > 0 and all(c["correct"] for c in cards)
        select(b, "f-correct", "0")
        assert len(shown(b)) == sum(not r["correct"] for r in want) > 0
        select(b, "f-correct", "")
        for beh in study.BEHAVIORS:
            select(b, "f-beh", beh)
            cards = shown(b)
            assert len(cards) == sum(behavior_rules.count_behaviors(r["response"], r["nums"], r["target"])[beh] > 0
                                     for r in want) > 0, beh
            assert all(c["chips"][beh] > 0 for c in cards)
        select(b, "f-beh", "none")
        assert all(not any(c["chips"].values()) for c in shown(b))
        select(b, "f-beh", "")
        select(b, "f-step", "")                                      # every step of the run
        assert len(shown(b)) == 2 * PER_STEP
        select(b, "f-run", "1")
        select(b, "f-step", "3")
        cards = shown(b)
        assert len(cards) == PER_STEP and {(c["run"], c["step"]) for c in cards} == {(1, 3)}
        select(b, "f-split", "val")
        select(b, "f-step", "0")
        assert [c["text"] for c in shown(b)] == [r["response"] for r in kept(dirs[1], "val", 0)]
        select(b, "f-run", "")                                       # all runs, val step 0
        assert len(shown(b)) == 2 * PER_STEP
        n = b.eval("document.body.dataset.ready")
        b.eval("(() => { const t = document.getElementById('f-text'); t.value = 'start over';"
               " t.dispatchEvent(new Event('input')); })()")
        b.wait_for(f"document.body.dataset.ready !== '{n}'")
        cards = shown(b)
        assert cards and all("start over" in c["text"].lower() for c in cards)
        assert b.eval("document.querySelectorAll('#config details').length") == 2
        png = b.screenshot(str(tmp_path / "shot.png"))
        assert os.path.getsize(png) > 10_000
        assert b.errors == []


def test_plot_html_writes_the_report(runs, tmp_path):
    """plot.py --html: the figures and, beside them, the run report."""
    _, dirs = runs
    out = tmp_path / "figs"
    assert plot.main(["--runs", *map(str, dirs), "--out", str(out), "--html", str(out / "report.html")]) == 0
    text = (out / "report.html").read_text()
    assert (out / "accuracy.png").exists() and text.startswith("<!DOCTYPE html>") and len(re.findall(r'id="c\d+"', text)) == 9


@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED, "reference", "qwen_results.csv")),
                    reason="reference CSVs not beside the repo")
def test_reference_study_picks_the_runs_model(runs, tmp_path, monkeypatch, capsys):
    """report.py --reference study, as plot.py's: the study's table of the runs' model (Qwen
    here, from config.json; a pre-filled cache, so no network), dashed beside the runs."""
    import shutil
    _, dirs = runs
    monkeypatch.setattr(common, "CACHE", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "study" / common.STUDY_COMMIT[:12]
    cache.mkdir(parents=True)
    for t in ("llama_results", "qwen_results"):
        shutil.copy(os.path.join(SHARED, "reference", f"{t}.csv"), cache / f"{t}.csv")
    run = tmp_path / "ppo-qwen"
    shutil.copytree(dirs[0], run)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "model": "qwen2.5-3b"}))
    out = tmp_path / "report.html"
    assert report.main(["--runs", str(run), "--reference", "study", "--out", str(out), "--jobs", "1"]) == 0
    assert "--reference study: study:qwen_results" in capsys.readouterr().err
    assert "Dashed: the study (study:qwen_results)." in out.read_text()
