"""
How every figure of plot.py and report.py looks: the matplotlib style and sizes, saving, the
legend placed outside the panels, and one color per condition (the study's conditions have
theirs in study.py; other names get a stable one from FALLBACK) in one legend order.
"""
import hashlib
import os
import re

import numpy as np

import study
from study import CONDITIONS

FORMATS = ("png", "svg")     # every figure is saved in each of these formats
DPI = 150                    # PNG resolution; 150 dpi x ~11 in = ~1600 px, still crisp at 800 px
PANEL_W, PANEL_H = 5.6, 4.0  # inches per line-plot panel
RC = {                       # matplotlib style for every figure
    "font.size": 13, "axes.titlesize": 14, "axes.labelsize": 13, "legend.fontsize": 12,
    "figure.titlesize": 15,
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
    "legend.frameon": False, "svg.hashsalt": "cognitive-behaviors", "lines.linewidth": 1.6,
}
# the study's conditions have their colors in study.py; other names get one of these, distinct
# from those and from each other
FALLBACK = ["#e6ab02", "#c51b7d", "#00665e", "#800000", "#000080", "#a6d854", "#cab2d6", "#d9b77e"]


# ---------------------------------------------------------------------------------
# colors and order

def canonical(name):
    """The study condition a name stands for (`ppo-empty_cot` -> `empty_cot`), or None."""
    n = re.sub(r"\s*\(.*\)$", "", str(name)).strip().lower().replace("-", "_")
    names = study.alias_map()
    for cand in (n, re.sub(r"^ppo_", "", n), re.sub(r"_ppo\d*$", "", n)):
        if cand in names:
            return names[cand]
    known = [k for k in names if n.endswith("_" + k)]
    return names[max(known, key=len)] if known else None


def assign_colors(names):
    """{name: color}: the study's conditions get their own; other names a FALLBACK color chosen
    from a hash of the name (stable across runs), moving on to the next free one on a clash."""
    colors, used = {}, set()
    for name in sorted(set(names), key=str):
        c = canonical(name)
        if c is not None:
            colors[name] = CONDITIONS[c].color
    for name in sorted(set(names) - set(colors), key=str):
        start = int(hashlib.md5(str(name).encode()).hexdigest(), 16) % len(FALLBACK)
        for i in range(len(FALLBACK)):
            color = FALLBACK[(start + i) % len(FALLBACK)]
            if color not in used:
                break
        colors[name] = color
        used.add(color)
    return colors


def order_key(name):
    """Legend and table order: the study's conditions in study.py's order, then the rest by name."""
    c = canonical(name)
    return (list(CONDITIONS).index(c), str(name)) if c else (len(CONDITIONS), str(name))


# ---------------------------------------------------------------------------------
# figures, legends, files

def figure(w, h):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    return Figure(figsize=(w, h), layout="constrained")


def save(fig, out_dir, name):
    import matplotlib
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    with matplotlib.rc_context(RC):
        for ext in FORMATS:
            p = os.path.join(out_dir, f"{name}.{ext}")
            fig.savefig(p, dpi=DPI, metadata={"Date": None} if ext == "svg" else None)
            fig.set_layout_engine("none")  # the layout is settled: later formats reuse it (faster)
            paths.append(p)
    return paths


def legend_width(labels, ncol, fs):
    """Width in inches of a legend of `ncol` columns (filled top to bottom, then left to right)."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath
    text = TextToPath()
    widths = [text.get_text_width_height_descent(l, FontProperties(size=fs), ismath=False)[0]
              for l in labels]
    per_col, extra = divmod(len(labels), ncol)  # matplotlib's split: the first columns get one more
    sizes = [per_col + (i < extra) for i in range(ncol) if per_col + (i < extra)]
    starts = np.cumsum([0] + sizes)
    cols = [max(widths[a:b]) for a, b in zip(starts[:-1], starts[1:])]
    return (sum(cols) + len(cols) * 3.0 * fs + (len(cols) - 1) * 1.5 * fs + 2 * fs) / 72


def add_legend(fig, handles, labels, max_cols=4):
    """One legend outside the panels: below them in as many columns as fit the figure's width
    (the figure grows taller to hold it), or, when that would take many rows, a column at the
    right (the figure grows wider)."""
    if not handles:
        return
    import matplotlib
    from matplotlib.font_manager import FontProperties
    fs = FontProperties(size=matplotlib.rcParams["legend.fontsize"]).get_size_in_points()
    w, h, n = fig.get_figwidth(), fig.get_figheight(), len(labels)
    row_in = 1.55 * fs / 72  # one legend row: the text plus label spacing
    ncol = next((c for c in range(min(max_cols, n), 0, -1) if legend_width(labels, c, fs) <= 0.97 * w), 1)
    rows = -(-n // ncol)
    if rows > 5 and ncol < min(max_cols, n):
        fig.set_size_inches(w + legend_width(labels, 1, fs), max(h, n * row_in + 1.0))
        fig.legend(handles, labels, loc="outside right upper", ncol=1, handlelength=2.2)
    else:
        fig.set_figheight(h + rows * row_in + 0.2)
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, handlelength=2.2,
                   columnspacing=1.5)


def collect_handles(axes):
    """(handles, labels) of the lines drawn on axes, one per label, in legend order."""
    seen = {}
    for ax in axes:
        for h, l in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(l, h)
    labels = sorted(seen, key=order_key)
    return [seen[l] for l in labels], labels
