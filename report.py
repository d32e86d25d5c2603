"""
A run report: ONE self-contained HTML file per run or set of runs, to read in any browser
(no server, no network: the data, the figures, the script and the style are all inline).

    python report.py --runs out/ppo-qwen --out out/ppo-qwen/report.html
    python report.py --runs out/ppo-* --reference study:llama_results --out out/report.html
    python plot.py --runs out/ppo-* --out out/figs --html out/figs/report.html     # the same, beside the figures
    python report.py --bench /tmp/report-bench      # a synthetic study-scale set: file size and load time
    python report.py --screenshot docs/figures/report.png --input out/report.html  # headless Chromium

What it holds:
  - accuracy, response length and behavior curves per run (the study's dashed beside them with
    --reference: study for the runs' model, or a steps CSV such as study:llama_results);
    behaviors come from the run's classify/steps.csv, or from ppo.py's live metrics
    (behavior/<name> in metrics.jsonl) where it has none; the live split by correct /
    incorrect responses too;
  - a browser of sampled responses per step, from the runs' rollouts/ and val/ step files:
    every behavior the rules classifier counted (behavior_rules.behavior_spans) highlighted in its
    color, filters for run, split, step, correct / incorrect, behavior present and text,
    20 responses a page;
  - each run's resolved settings (config.json).
At most --per-step responses of each (run, split, step) file are kept (a seeded sample, in file
order; 200, as the study classified). Each file's responses are one gzip-compressed block
(base64) that the page unpacks only when it is shown (DecompressionStream: any browser from
2023 on), so a study-scale report (25 logged steps x 200 responses x 9 conditions) opens in
about a second; `--bench` measures it. The numbers are in README "The run report".
The page itself (its HTML, style and script) is report_page.html beside this file, filled in
by render().
"""
import argparse
import base64
import glob
import gzip
import html
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import behavior_rules
import classify
import common
import plot
import study
from common import DataError
from plot_style import RC, add_legend, assign_colors, collect_handles, order_key

# ---------------------------------------------------------------------------------
# settings
PER_STEP = 200               # responses kept per (run, split, step) file (the study classified 200)
PAGE = 20                    # responses per page of the browser
SPLITS = ("rollouts", "val")  # step-file folders of a run that the browser shows
JOBS = min(4, os.cpu_count() or 1)  # processes that read, classify and pack the step files
SVG_RC = {"svg.fonttype": "none"}   # figures keep their text as text: smaller, and selectable
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
LIVE_KEY = "behavior/{}"      # ppo.py's live metric of a behavior's mean count per response
STEP_FILE = re.compile(r"step_(\d+)\.jsonl$")
PAGE_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "report_page.html")  # page, style, script
SETTINGS = [
    # (flag, default, type, help)
    ("runs", [], list, "run folders (config.json, metrics.jsonl, rollouts/, val/, classify/)"),
    ("csv", [], list, "steps CSVs whose curves are drawn too (no responses)"),
    ("reference", None, str, "steps CSV dashed beside the runs: study (the study's own for the runs' model), "
     "study:llama_results, study:qwen_results, or a path"),
    ("out", None, str, "the HTML file (default: RUN/report.html for one run, else report.html)"),
    ("per_step", PER_STEP, int, "responses kept per (run, split, step) file (0: all)"),
    ("splits", ",".join(SPLITS), str, "step-file folders to browse, comma-separated"),
    ("title", None, str, "page title"),
    ("jobs", JOBS, int, "worker processes that pack the step files"),
    ("bench", None, str, "write a synthetic study-scale set into this folder and measure its report"),
    ("bench_conditions", 6, int, "--bench: runs (conditions)"),
    ("bench_prose", False, bool, "--bench: shuffle each response's words (less compressible)"),
    ("screenshot", None, str, "save a PNG screenshot of --input's response browser to this path"),
    ("input", None, str, "--screenshot: the report to photograph"),
    ("behavior", None, str, "--screenshot: show only responses with this behavior"),
]


def note(msg):
    print(f"report.py: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------
# responses: one packed block per (run, split, step) file

def step_files(run_dir, splits=SPLITS):
    """[(split, step, path)] of a run's step files, by split then step."""
    out = []
    for split in splits:
        for p in glob.glob(os.path.join(run_dir, split, "step_*.jsonl")):
            m = STEP_FILE.search(p)
            if m:
                out.append((split, int(m.group(1)), p))
    return sorted(out, key=lambda t: (splits.index(t[0]), t[1]))


def sample_records(recs, n, seed):
    """At most n records, a seeded sample kept in file order (all of them if n <= 0)."""
    if n <= 0 or len(recs) <= n:
        return recs
    keep = sorted(random.Random(seed).sample(range(len(recs)), n))
    return [recs[i] for i in keep]


def pack_rows(recs):
    """Rows the page reads: [id, nums, target, reward, correct (0/1), length, response,
    spans as a flat list start, end, behavior index, ...] (offsets into response)."""
    rows = []
    for r in recs:
        text = classify.response_of(r) or ""
        nums, target = r.get("nums") or [], r.get("target")
        spans = behavior_rules.behavior_spans(text, nums, target) if target is not None else []
        reward = r.get("reward")
        correct = r.get("correct", isinstance(reward, (int, float)) and reward >= 1.0)
        rows.append([r.get("id"), nums, target, reward, int(bool(correct)), r.get("length"), text,
                     [x for a, z, b in spans for x in (a, z, list(study.BEHAVIORS).index(b))]])
    return rows


def pack_file(path, per_step, seed):
    """(summary, base64 of the gzipped rows) of one step file."""
    recs = common.read_jsonl(path)
    kept = sample_records(recs, per_step, seed)
    rows = pack_rows(kept)
    present = [0] * len(study.BEHAVIORS)
    counts = [0] * len(study.BEHAVIORS)
    for row in rows:
        seen = set()
        for k in row[7][2::3]:
            counts[k] += 1
            seen.add(k)
        for k in seen:
            present[k] += 1
    raw = json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode()
    data = gzip.compress(raw, compresslevel=9, mtime=0)
    summary = {"n": len(rows), "total": len(recs), "correct": sum(r[4] for r in rows),
               "present": present, "counts": counts, "raw_bytes": len(raw), "gz_bytes": len(data)}
    return summary, base64.b64encode(data).decode()


def _pack_job(job):
    return pack_file(*job)


def pack_all(jobs, n_jobs=JOBS):
    """pack_file over [(path, per_step, seed)], in worker processes when there are many."""
    if n_jobs > 1 and len(jobs) >= 2 * n_jobs:
        with ProcessPoolExecutor(n_jobs) as ex:
            return list(ex.map(_pack_job, jobs, chunksize=max(1, len(jobs) // (4 * n_jobs))))
    return [pack_file(*j) for j in jobs]


# ---------------------------------------------------------------------------------
# curves and figures (plot.py's readers and styles)

def run_label(run_dirs):
    """{run_dir: label}: its condition, or "condition (folder)" when two runs share one."""
    conds = {d: common.run_condition(d) for d in run_dirs}
    n = {}
    for c in conds.values():
        n[c] = n.get(c, 0) + 1
    return {d: (f"{c} ({os.path.basename(os.path.normpath(d))})" if n[c] > 1 else c) for d, c in conds.items()}


def run_curves(run_dir):
    """(curves, live) of one run: plot.load_run's curves (accuracy, length, classify/steps.csv
    behaviors), the behaviors filled in from ppo.py's live metrics where steps.csv has none;
    live: {split ("correct" | "incorrect"): {behavior column: (steps, values)}} from the live
    metrics."""
    import numpy as np
    _, curves = plot.load_run(run_dir)
    curves = dict(curves or {})
    path = os.path.join(run_dir, "metrics.jsonl")
    recs = plot.read_metrics(path) if os.path.isfile(path) else []
    live = {}
    for b, col in [(b, e.avg_column) for b, e in study.BEHAVIORS.items()]:
        xy = plot.metric_curve(recs, [LIVE_KEY.format(b)])
        if xy is not None and col not in curves:
            curves[col] = xy
        for split in ("correct", "incorrect"):
            xy = plot.metric_curve(recs, [f"{LIVE_KEY.format(b)}/{split}"])
            if xy is not None:
                live.setdefault(split, {})[col] = xy
    curves = {k: v for k, v in curves.items() if len(np.asarray(v[0]))}
    return curves, live


def svg_of(fig):
    import matplotlib
    buf = io.StringIO()
    with matplotlib.rc_context({**RC, **SVG_RC}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def fig_behaviors(curves, colors, ref=None, title="Behaviors during PPO"):
    """2x2 panels (one per behavior): mean count per response vs step, one line per run, the
    reference's dashed beside the runs of its conditions (plot.fig_behaviors)."""
    return plot.fig_behaviors({"curves": curves, "name": ""}, colors, ref, title)


def fig_split(live, colors):
    """Live behaviors in correct (solid) and incorrect (dotted) responses, 2x2 panels."""
    import matplotlib
    from matplotlib.lines import Line2D
    if not live:
        return None
    with matplotlib.rc_context(RC):
        fig, panels = plot.behavior_panels()
        for ax, col in panels:
            for run in sorted(live, key=order_key):
                for split, style in (("correct", "-"), ("incorrect", ":")):
                    xy = live[run].get(split, {}).get(col)
                    if xy is not None:
                        ax.plot(*xy, color=colors[run], linestyle=style, label=run,
                                marker="o" if len(xy[0]) <= 2 else None, markersize=4)
            ax.set_ylim(bottom=0)
        handles, labels = collect_handles([ax for ax, _ in panels])
        handles += [Line2D([], [], color="gray"), Line2D([], [], color="gray", linestyle=":")]
        labels += ["solid: correct responses", "dotted: incorrect responses"]
        add_legend(fig, handles, labels)
        fig.suptitle("Behaviors in correct and incorrect responses (live, every step's rollouts)")
    return fig


def figures(curves, live, reference=None, csvs=()):
    """[(name, caption, svg)] of the report's figures."""
    ref = plot.load_csv_source(common.study_table(reference)) if reference else None
    extra = [plot.load_csv_source(p) for p in csvs]
    sources = ([{"name": "our runs", "slug": "runs", "curves": curves}] if curves else []) + extra
    names = [c for s in sources + ([ref] if ref else []) for c in s["curves"]]
    colors = assign_colors(names)
    out = []
    if sources:
        for col, ylabel, title in (("accuracy", "accuracy", "Accuracy during PPO"),
                                   ("response_length", "mean response length (tokens)", "Response length during PPO")):
            fig = plot.fig_lines(sources, col, ylabel, title, colors, ref)
            if fig is not None:
                out.append((col, title + (" (dashed: " + ref["name"] + ")" if ref else ""), svg_of(fig)))
    for s in sources:
        fig = fig_behaviors(s["curves"], colors, ref, f"Behaviors during PPO: {s['name']}")
        if fig is not None:
            out.append(("behaviors", f"Mean count of each behavior per response: {s['name']}"
                        + (" (live metrics where a run has no classify/steps.csv)" if s["slug"] == "runs" else ""),
                        svg_of(fig)))
    fig = fig_split(live, colors)
    if fig is not None:
        out.append(("behaviors_split", "ppo.py's live counts, split by correct and incorrect responses "
                    "(a split with no response at a step has no point)", svg_of(fig)))
    return out


# ---------------------------------------------------------------------------------
# the page

def summary_rows(curves):
    """Per run: last accuracy, and each behavior at the first and last step with data."""
    rows = []
    for run in sorted(curves, key=order_key):
        cv = curves[run]
        acc = cv.get("accuracy")
        beh = []
        for col in (e.avg_column for e in study.BEHAVIORS.values()):
            xy = cv.get(col)
            beh.append(f"{xy[1][0]:.2f} → {xy[1][-1]:.2f}" if xy is not None else "-")
        rows.append([run, f"{acc[1][-1]:.3f} (step {int(acc[0][-1])})" if acc is not None else "-", *beh])
    return rows


def _json_for_script(obj):
    """JSON safe inside <script>: every "<" written as \\u003c, so no "</script>" or "<!--" in
    the data can end the element or change how it is parsed."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def write_report(runs=(), out="report.html", reference=None, csvs=(), per_step=PER_STEP, splits=SPLITS,
                 title=None, seed=0, jobs=JOBS):
    """Write the report of run folders `runs` (and curves of steps CSVs `csvs`) to `out`;
    returns {"path", "bytes", "responses", "chunks", "raw_bytes", "gz_bytes", "seconds"}."""
    t0 = time.time()
    runs = [r for r in runs]
    for d in runs:
        if not os.path.isdir(d):
            raise DataError(f"{d}: no such run folder (not a directory)")
    if reference == "study":   # the study's table of the runs' model, as plot.py --reference study
        reference = plot.study_reference(runs)
    labels = run_label(runs)
    jobs_list, where = [], []
    meta_runs, curves, live = [], {}, {}
    for i, d in enumerate(runs):
        label = labels[d]
        cv, lv = run_curves(d)
        if cv:
            curves[label] = cv
        if lv:
            live[label] = lv
        cfg = common.run_config(d)
        files = step_files(d, tuple(splits))
        meta_runs.append({"name": label, "folder": os.path.basename(os.path.normpath(d)),
                          "condition": common.run_condition(d), "config": cfg, "chunks": []})
        for split, step, path in files:
            jobs_list.append((path, per_step, f"{seed}|{split}|{step}"))
            where.append((i, split, step))
    packed = pack_all(jobs_list, jobs)
    blocks, prompts = [], {}
    for k, ((i, split, step), (summary, b64)) in enumerate(zip(where, packed)):
        meta_runs[i]["chunks"].append({"id": f"c{k}", "split": split, "step": step, **summary})
        blocks.append(f'<script type="application/octet-stream" id="c{k}">{b64}</script>')
    for i, d in enumerate(runs):       # one prompt per run, to show the template
        for split, step, path in step_files(d, tuple(splits))[:1]:
            with open(path, encoding="utf-8") as f:
                first = f.readline()
            try:
                prompts[i] = json.loads(first).get("prompt")
            except json.JSONDecodeError:
                pass
        meta_runs[i]["prompt"] = prompts.get(i)
    colors = assign_colors([r["name"] for r in meta_runs] + list(curves))
    for r in meta_runs:
        r["color"] = colors[r["name"]]
    figs = figures(curves, live, reference, csvs) if (curves or csvs) else []
    title = title or ("Run report: " + ", ".join(r["name"] for r in meta_runs) if meta_runs else "Run report")
    meta = {"title": title, "generated": time.strftime("%Y-%m-%d %H:%M"), "page": PAGE, "per_step": per_step,
            "behaviors": list(study.BEHAVIORS),
            "names": {b: e.title for b, e in study.BEHAVIORS.items()},
            "colors": {b: e.color for b, e in study.BEHAVIORS.items()}, "runs": meta_runs}
    page = render(meta, figs, summary_rows(curves), blocks, reference)
    common.atomic_write_text(out, page)
    n = sum(c["n"] for r in meta_runs for c in r["chunks"])
    stats = {"path": out, "bytes": os.path.getsize(out), "responses": n, "chunks": len(blocks),
             "raw_bytes": sum(c["raw_bytes"] for r in meta_runs for c in r["chunks"]),
             "gz_bytes": sum(c["gz_bytes"] for r in meta_runs for c in r["chunks"]),
             "figures": len(figs), "seconds": time.time() - t0}
    return stats


def render(meta, figs, rows, blocks, reference):
    e = html.escape
    beh = meta["behaviors"]
    fig_html = "".join(
        f'<figure id="fig-{e(name)}"><img alt="{e(cap)}" src="data:image/svg+xml;base64,'
        f'{base64.b64encode(svg.encode()).decode()}"><figcaption>{e(cap)}</figcaption></figure>'
        for name, cap, svg in figs) or "<p class=muted>No curves: the runs have no metrics.jsonl or steps.csv yet.</p>"
    head = "".join(f"<th>{e(meta['names'][b])}<br><small>first → last step</small></th>" for b in beh)
    table = ("<table class=summary><tr><th>run</th><th>accuracy (last)</th>" + head + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
             + "</table>") if rows else ""
    configs = "".join(
        f"<details><summary>{e(r['name'])}: config.json</summary>"
        + ("<table class=config>" + "".join(f"<tr><td>{e(str(k))}</td><td>{e(json.dumps(v, ensure_ascii=False))}</td></tr>"
                                            for k, v in r["config"].items()) + "</table>" if r["config"] else
           "<p class=muted>no config.json</p>")
        + (f"<p>Prompt of its first logged response:</p><pre class=prompt>{e(r['prompt'])}</pre>" if r.get("prompt") else "")
        + "</details>" for r in meta["runs"]) or "<p class=muted>No run folders.</p>"
    legend = "".join(f'<span class="chip" style="--c:{meta["colors"][b]}">{e(meta["names"][b])}</span>' for b in beh)
    ref_note = f" Dashed: the study ({e(os.path.basename(reference))})." if reference else ""
    options = "".join(f'<option value="{b}">{e(meta["names"][b])}</option>' for b in beh)
    values = {"title": e(meta["title"]), "generated": e(meta["generated"]), "ref_note": ref_note, "table": table,
              "figures": fig_html, "legend": legend, "behavior_options": options, "configs": configs,
              "meta": _json_for_script(meta), "blocks": "".join(blocks)}
    with open(PAGE_TEMPLATE, encoding="utf-8") as f:
        tmpl = f.read()
    tmpl = tmpl[tmpl.index("<!DOCTYPE html>"):]
    # one pass: the filled-in text (responses, settings) is never scanned for {{...}} again
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], tmpl)


# ---------------------------------------------------------------------------------
# a headless Chromium, driven over its DevTools pipe (no extra package, no download)

def find_browser():
    """The Chromium binary ($REPORT_BROWSER, else the first of BROWSERS on PATH), or None."""
    cand = os.environ.get("REPORT_BROWSER")
    if cand:
        return shutil.which(cand) or (cand if os.path.exists(cand) else None)
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


class Browser:
    """Headless Chromium over --remote-debugging-pipe (the DevTools protocol on fds 3 and 4).

        with Browser() as b:
            b.open("file:///tmp/report.html")
            b.eval("document.title"); b.errors   # console errors and uncaught exceptions
    """

    def __init__(self, binary=None, width=1280, height=900):
        self.binary = binary or find_browser()
        if not self.binary:
            raise RuntimeError("no Chromium found (apt-get install chromium, or set REPORT_BROWSER)")
        self.profile = tempfile.mkdtemp(prefix="report-chromium-")
        to_r, self._w = os.pipe()       # we write, it reads fd 3
        self._r, from_w = os.pipe()     # it writes fd 4, we read

        def fds():                      # in the child: the pipe ends onto fds 3 and 4, inheritable
            import fcntl
            a, b = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)
        args = [self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                "--remote-debugging-pipe", f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
                "--allow-file-access-from-files", "about:blank"]
        self.proc = subprocess.Popen(args, preexec_fn=fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, close_fds=False)
        os.close(to_r)
        os.close(from_w)
        self._buf, self._id, self.events, self.errors = b"", 0, [], []
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable", session=True)
            self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                             "mobile": False}, session=True)
        except (OSError, RuntimeError, TimeoutError) as e:
            self.close()
            raise RuntimeError(f"{self.binary} did not start as a headless browser ({e})") from None

    def _read(self, timeout):
        import select
        deadline = time.time() + timeout
        while b"\0" not in self._buf:
            left = deadline - time.time()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        msg = json.loads(msg)
        if msg.get("method") == "Runtime.exceptionThrown":
            d = msg["params"]["exceptionDetails"]
            self.errors.append(d.get("exception", {}).get("description") or d.get("text"))
        elif msg.get("method") == "Runtime.consoleAPICalled" and msg["params"]["type"] in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in msg["params"]["args"]))
        elif msg.get("method") == "Log.entryAdded" and msg["params"]["entry"]["level"] == "error":
            self.errors.append(msg["params"]["entry"]["text"])
        return msg

    def call(self, method, params=None, session=False, timeout=60):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read(timeout)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method, timeout=60):
        for i, m in enumerate(self.events):
            if m.get("method") == method:
                return self.events.pop(i)
        while True:
            m = self._read(timeout)
            if m.get("method") == method:
                return m
            self.events.append(m)

    def open(self, url, timeout=60):
        """Navigate and wait for the load event; returns the seconds it took."""
        t = time.time()
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=True)
        self.wait_event("Page.loadEventFired", timeout)
        return time.time() - t

    def eval(self, expr, timeout=60):
        """The value of a JavaScript expression (awaited if it is a promise)."""
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True},
                      session=True, timeout=timeout)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr[:80]}: {r['exceptionDetails'].get('exception', {}).get('description')}")
        return r["result"].get("value")

    def wait_for(self, expr, timeout=30):
        """Poll until a JavaScript expression is truthy; returns its value."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            v = self.eval(expr)
            if v:
                return v
            time.sleep(0.02)
        raise TimeoutError(f"never true: {expr}")

    def screenshot(self, path, clip=None):
        params = {"format": "png", "captureBeyondViewport": clip is not None}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        data = self.call("Page.captureScreenshot", params, session=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def close(self):
        try:
            self.call("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def select_js(select_id, value):
    """JavaScript that picks `value` in the page's <select id=select_id> as a user would."""
    return (f"(() => {{ const s = document.getElementById({json.dumps(select_id)}); s.value = {json.dumps(str(value))};"
            f" s.dispatchEvent(new Event('change')); return s.value; }})()")


def measure_load(path, browser=None, repeat=3):
    """Seconds to the load event and to the first page of responses drawn (best of `repeat`),
    then to switch to another step (unpack one more block), and the JS heap after that (MB)."""
    with Browser(browser) as b:
        url = "file://" + os.path.abspath(path)
        best, cold = None, None
        for _ in range(repeat):
            t = time.time()
            b.open(url)
            load = time.time() - t
            b.wait_for("document.body.dataset.ready === '1'")
            first = time.time() - t
            cold = cold or first
            best = min(best or (load, first), (load, first), key=lambda x: x[1])
        steps = b.eval("[...document.getElementById('f-step').options].map(o => o.value).filter(v => v)")
        switch = None
        if len(steps) > 1:
            t = time.time()
            b.eval(select_js("f-step", steps[-1]))
            b.wait_for("document.body.dataset.ready === '2'")
            switch = time.time() - t
        t = time.time()                 # every step of the first run: unpack all its blocks
        n = b.eval("document.body.dataset.ready")
        b.eval(select_js("f-step", ""))
        b.wait_for(f"document.body.dataset.ready !== '{n}'")
        every = time.time() - t
        heap = b.call("Runtime.getHeapUsage", session=True)["usedSize"] / 2**20
        everything = None
        if len(b.eval("[...document.getElementById('f-run').options].map(o => o.value)")) > 1:
            t = time.time()             # all runs, all steps: every block unpacked and filtered
            n = b.eval("document.body.dataset.ready")
            b.eval(select_js("f-run", ""))
            b.wait_for(f"document.body.dataset.ready !== '{n}'")
            n = b.eval("document.body.dataset.ready")
            b.eval(select_js("f-step", ""))
            b.wait_for(f"document.body.dataset.ready !== '{n}'")
            everything = time.time() - t
        return {"load_s": best[0], "first_page_s": best[1], "first_page_cold_s": cold, "switch_step_s": switch,
                "all_steps_s": every, "heap_mb": heap, "all_runs_all_steps_s": everything,
                "heap_all_mb": b.call("Runtime.getHeapUsage", session=True)["usedSize"] / 2**20,
                "errors": list(b.errors)}


def screenshot(report, path, width=1200, height=1000, behavior=None, browser=None):
    """A PNG of the report's response browser (the page scrolled to it), for the README."""
    with Browser(browser, width, height) as b:
        b.open("file://" + os.path.abspath(report))
        b.wait_for("document.body.dataset.ready")
        if behavior:
            n = b.eval("document.body.dataset.ready")
            b.eval(select_js("f-beh", behavior))
            b.wait_for(f"document.body.dataset.ready !== '{n}'")
        y = b.eval("document.getElementById('browser').getBoundingClientRect().top + window.scrollY")
        b.screenshot(path, clip={"x": 0, "y": y, "width": width, "height": height})
        errors = b.errors
    try:                                # 64 colors: a third of the bytes, the text as crisp
        from PIL import Image
        Image.open(path).convert("RGB").quantize(64, Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE) \
            .save(path, optimize=True)
    except ImportError:
        pass
    return errors


# ---------------------------------------------------------------------------------
# a synthetic study-scale set: size and load time

def synthetic_runs(root, conditions=6, steps=25, per_step=200, max_tokens=1024, every=10, seed=0, prose=False):
    """Run folders under root shaped like a study-scale PPO run: `steps` logged rollout steps
    (1 and every `every`-th), `per_step` responses each, lengths uniform up to ~max_tokens
    tokens (3.5 characters a token), made of symbolic priming traces (symbolic.py) joined
    to length. prose: their words shuffled within each response, which breaks the repeats
    that gzip finds in templated traces (a pessimistic stand-in for model prose)."""
    import countdown
    import gen_priming
    import symbolic
    rng = random.Random(seed)
    tasks = countdown.generate_tasks(400, seed=seed, sizes=(3, 4))
    conds = list(gen_priming.DIRECT)  # the conditions its symbolic writer writes directly
    names = [f"{conds[i % len(conds)]}" + (f"_{i // len(conds)}" if i >= len(conds) else "") for i in range(conditions)]
    dirs = []
    for ci, name in enumerate(names):
        d = os.path.join(root, f"ppo-{name}")
        dirs.append(d)
        cond = conds[ci % len(conds)]
        logged = [1] + [every * k for k in range(1, steps)]
        metrics = []
        for step in logged:
            recs = []
            for j in range(per_step):
                t = tasks[rng.randrange(len(tasks))]
                want, parts, k = rng.randint(40, max_tokens) * 3.5, [], 0
                while sum(map(len, parts)) < want:
                    parts.append(symbolic.write_symbolic(t, cond, seed=step * 1000 + j * 7 + k)["completion"])
                    k += 1
                text = "".join(parts)[:int(want)]
                if prose:
                    words = text.split(" ")
                    rng.shuffle(words)
                    text = " ".join(words)
                reward = rng.choice([0.0, 0.1, 0.1, 1.0])
                recs.append({"step": step, "id": t["id"], "nums": t["nums"], "target": t["target"],
                             "prompt": countdown.make_prompt(t["nums"], t["target"]), "response": text,
                             "reward": reward, "correct": reward >= 1.0, "length": int(len(text) / 3.5)})
            common.write_jsonl(os.path.join(d, "rollouts", f"step_{step:06d}.jsonl"), recs)
            counts = [behavior_rules.count_behaviors(r["response"], r["nums"], r["target"]) for r in recs[:50]]
            metrics.append({"step": step, "acc": sum(r["correct"] for r in recs) / len(recs),
                            "response_length/mean": sum(r["length"] for r in recs) / len(recs),
                            **{f"behavior/{b}": sum(c[b] for c in counts) / len(counts) for b in study.BEHAVIORS}})
        common.write_jsonl(os.path.join(d, "metrics.jsonl"), metrics)
        common.write_json(os.path.join(d, "config.json"), {"stage": "ppo", "condition": name, "synthetic": True,
                                                           "steps": steps * every, "prompts_per_step": 256})
    return dirs


def bench(root, conditions=6, steps=25, per_step=200, prose=False, reference=None):
    """Write the synthetic set (once), its report, and measure size, build and load time."""
    marker = os.path.join(root, "done.json")
    if not os.path.exists(marker):
        t = time.time()
        dirs = synthetic_runs(root, conditions, steps, per_step, prose=prose)
        common.write_json(marker, {"dirs": dirs, "seconds": time.time() - t})
    with open(marker) as f:
        dirs = json.load(f)["dirs"]
    out = os.path.join(root, "report.html")
    stats = write_report(dirs, out, reference=reference, per_step=per_step)
    raw = sum(os.path.getsize(p) for d in dirs for _, _, p in step_files(d))
    stats["rollout_files_bytes"] = raw
    if find_browser():
        stats.update(measure_load(out))
    else:
        note("no Chromium: load time not measured")
    return stats


# ---------------------------------------------------------------------------------
# command line

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    common.add_settings(ap, SETTINGS)
    a = ap.parse_args(argv)
    if not (a.runs or a.csv or a.bench or a.screenshot):
        ap.error("give --runs (or --csv), --bench DIR, or --screenshot PNG --input REPORT")
    if a.screenshot and not a.input:
        ap.error("--screenshot needs --input REPORT.html")
    if a.out is None:
        a.out = os.path.join(a.runs[0], "report.html") if len(a.runs) == 1 else "report.html"
    a.splits = tuple(s for s in a.splits.split(",") if s)
    return a


def main(argv=None):
    a = parse_args(argv)
    try:
        if a.screenshot:
            errors = screenshot(a.input, a.screenshot, behavior=a.behavior)
            print(f"wrote {a.screenshot}" + (f"; page errors: {errors}" if errors else ""))
            return 1 if errors else 0
        if a.bench:
            s = bench(a.bench, conditions=a.bench_conditions, per_step=a.per_step, prose=a.bench_prose,
                      reference=a.reference)
            print(json.dumps(s, indent=2))
            return 0
        s = write_report(a.runs, a.out, a.reference, a.csv, a.per_step, a.splits, a.title, jobs=a.jobs)
    except (DataError, RuntimeError, TimeoutError) as e:
        print(f"report.py: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {s['path']}: {s['bytes'] / 2**20:.1f} MB, {s['responses']} responses in {s['chunks']} step files, "
          f"{s['figures']} figures, in {s['seconds']:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
