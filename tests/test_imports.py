"""The top-level modules: no import cycle among them (every import counts, a function's too),
each imports on its own in a fresh interpreter, and every script answers --help; the flags
that mean the same everywhere (common.SHARED) are worded the same everywhere."""
import ast
import glob
import importlib
import os
import subprocess
import sys

import pytest

from conftest import REPO

MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "*.py")))


def import_graph():
    """{module: set of our modules it imports}, read from the source (nothing is run)."""
    graph = {}
    for m in MODULES:
        with open(os.path.join(REPO, m + ".py"), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                deps.add(node.module.split(".")[0])
        graph[m] = {d for d in deps if d in MODULES and d != m}
    return graph


def find_cycle(graph):
    """One cycle as a list of modules [a, b, ..., a], or None.

    >>> find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), find_cycle({"a": {"b"}, "b": set()})
    (['a', 'b', 'c', 'a'], None)
    """
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None
    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_our_modules():
    graph = import_graph()
    assert {"common", "countdown", "basics", "sampler", "ppo"} <= set(graph)
    assert "countdown" in graph["common"] and "basics" in graph["countdown"]   # the edges that once made a cycle
    assert "plot" in graph["report"] and "report" not in graph["plot"]   # plot.py --html runs report.py
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_alone_and_scripts_answer_help(module):
    with open(os.path.join(REPO, module + ".py"), encoding="utf-8") as f:
        script = '__name__ == "__main__"' in f.read()
    cmd = [sys.executable, module + ".py", "--help"] if script else [sys.executable, "-c", f"import {module}"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not script or r.stdout.startswith("usage:"), r.stdout[:500]


def test_shared_flags_have_one_wording():
    """A script with --model and --init (or --keep, --wandb, --resume, --overwrite) takes
    common.SHARED's row; --model alone (classify, engine, pipeline, bench) names a model to
    run, not an architecture for --init's weights, and is exempt."""
    import common
    seen = set()
    for m in MODULES:
        if m == "conftest" or "SETTINGS" not in open(os.path.join(REPO, m + ".py")).read():
            continue
        rows = getattr(importlib.import_module(m), "SETTINGS", None)
        if not isinstance(rows, list):
            continue
        names = {r[0]: r for r in rows}
        for name, row in common.SHARED.items():
            if name in names and (name != "model" or "init" in names):
                assert names[name] == row, (m, name)
                seen.add((m, name))
    assert {("ppo", "model"), ("sft", "model"), ("ppo", "keep"), ("sft", "keep"), ("ppo", "wandb"),
            ("sft", "wandb"), ("sft", "init")} <= seen
