"""The repository explains itself: every command that README.md, docs/DESIGN.md and the scripts'
module docstrings show runs as written from a fresh clone. Each `python X.py ...`,
`.venv/bin/python X.py ...` or `torchrun ... X.py ...` names a script that exists, every
`--flag` it passes appears in that script's `--help`, and its arguments get through the
script's own parser (types and choices; checked by parsing them with `--help` last, so nothing
runs). No text points a user at a folder or a DESIGN.md outside the repository, and
docs/DESIGN.md's layout names every top-level file."""
import ast
import functools
import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("README.md", "docs/DESIGN.md")
PYTHONS = {"python", "python3", ".venv/bin/python", ".venv/bin/python3"}
# Flags inside one quoted value that belong to another script: (script, flag) -> that script.
FORWARDED = {("bench.py", "--ppo-args"): "ppo.py"}
FLAG = re.compile(r"--[A-Za-z0-9][\w-]*")
OUTSIDE = re.compile(r"\.\./shared|shared/reference|DESIGN\.md")
PLACEHOLDER = re.compile(r"\.\.\.|<[^>]*>|\bPATH\b")

# Run in one process per script: its `--help`, then each command's arguments with `--help`
# appended. argparse converts and checks every argument before it reaches the trailing --help,
# so a bad choice or type exits 2 and a good command prints the help and runs nothing.
DRIVER = r"""
import contextlib, io, json, runpy, sys
script, argvs = sys.argv[1], json.loads(sys.argv[2])
out = []
for argv in [[]] + argvs:
    sys.argv = [script, *argv, "--help"]
    so, se = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:
            code, _ = 1, se.write(repr(e))
    out.append([code, so.getvalue(), se.getvalue()[-400:]])
print("\n@@JSON@@" + json.dumps(out))
"""


def read(rel):
    with open(os.path.join(REPO, rel), encoding="utf-8") as f:
        return f.read()


def scripts():
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "*.py")))


def module_docstring(rel):
    return ast.get_docstring(ast.parse(read(rel)), clean=False) or ""


def logical_lines(text):
    """Lines with backslash continuations joined and shell comments cut.

    >>> logical_lines("python a.py --x \\\\\\n    --y 1   # note\\n# only a comment")
    ['python a.py --x  --y 1']
    """
    text = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in text.splitlines():
        line = re.sub(r"(^|\s)#.*", "", line).strip()
        if line:
            out.append(line)
    return out


def invocations(line):
    """(script, args) for each Python script a shell line runs (env assignments skipped).

    >>> invocations("FOO=1 python a.py --x 1 && torchrun --nproc_per_node=2 b.py --y")
    [('a.py', ['--x', '1']), ('b.py', ['--y'])]
    >>> invocations("for i in 0 1; do python c.py --shard $i/2 & done; wait")
    [('c.py', ['--shard', '$i/2'])]
    """
    try:
        words = shlex.split(line, posix=True)
    except ValueError:
        return []
    found, cmd = [], []
    for w in words + [";"]:
        if w in (";", "&&", "||", "|", "&", "do", "then") or w.endswith(";"):
            if w.endswith(";") and w != ";":
                cmd.append(w[:-1])
            found += _invocation(cmd)
            cmd = []
        else:
            cmd.append(w)
    return found


def _invocation(words):
    while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
        words = words[1:]
    if not words or words[0] not in PYTHONS | {"torchrun"}:
        return []
    rest = words[1:]
    if words[0] == "torchrun":   # its own options come before the script
        rest = rest[next((i for i, w in enumerate(rest) if not w.startswith("-")), len(rest)):]
    if not rest or rest[0] == "-m":
        return []
    return [(rest[0], rest[1:])]


def command(rel, line, script, args, parse=True):
    """One command to check: where it is written, the line, the script, its arguments, and
    whether to parse them too (not where a placeholder stands in for a value)."""
    return dict(rel=rel, line=line, script=script, args=[re.sub(r"\$\w+", "0", a) for a in args],
                parse=parse and not any(PLACEHOLDER.search(a) for a in args))


def bash_commands(rel, text):
    out = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S):
        for line in logical_lines(block):
            out += [command(rel, line, s, a) for s, a in invocations(line)]
    return out


def readme_commands():
    return [c for rel in DOCS if os.path.exists(os.path.join(REPO, rel)) for c in bash_commands(rel, read(rel))]


def docstring_commands():
    out = []
    for rel in scripts():
        for line in logical_lines(module_docstring(rel)):
            if re.match(r"^(?:[A-Z_]+=\S+\s+)*(?:python3?|\.venv/bin/python3?|torchrun|for)\s", line):
                out += [command(rel, line, s, a) for s, a in invocations(line)]
    return out


def inline_commands(rel, text):
    """`X.py --flag ...` code spans in prose: their flags must exist (values are often left out,
    so they are not parsed)."""
    out = []
    for span in re.findall(r"`([^`\n]+)`", text):
        m = re.match(r"^(?:(?:python3?|\.venv/bin/python3?)\s+)?(\w+\.py)\s+(--.*)$", span)
        if m:
            out.append(command(rel, f"`{span}`", m.group(1), shlex.split(m.group(2)), parse=False))
    return out


def inline_commands_of_docs():
    return [c for rel in DOCS if os.path.exists(os.path.join(REPO, rel)) for c in inline_commands(rel, read(rel))]


def forwarded(cmds):
    """The commands a script passes on inside a quoted value (bench.py --ppo-args "...")."""
    out = []
    for c in cmds:
        for flag, value in zip(c["args"], c["args"][1:]):
            target = FORWARDED.get((c["script"], flag))
            if target:
                out.append(dict(c, script=target, args=shlex.split(value)))
    return out


@functools.lru_cache(maxsize=None)
def _run(script, argvs):
    r = subprocess.run([sys.executable, "-c", DRIVER, script, argvs], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "@@JSON@@" in r.stdout, f"{script}: the checker failed: {r.stderr[-500:]}"
    return json.loads(r.stdout.rsplit("@@JSON@@", 1)[1])


@functools.lru_cache(maxsize=None)
def documented_argvs():
    """{script: every argument list the docs pass it}: one checker process per script serves
    every test here."""
    out = {}
    for c in all_commands():
        if c["parse"]:
            out.setdefault(c["script"], set()).add(tuple(c["args"]))
    return out


def all_commands():
    cmds = readme_commands() + docstring_commands() + inline_commands_of_docs()
    return cmds + forwarded(cmds)


def mismatches(cmds):
    """One line per problem: a missing script, a flag its --help lacks, arguments it rejects."""
    cmds = cmds + forwarded(cmds)
    bad, by_script = [], {}
    for c in cmds:
        if not os.path.exists(os.path.join(REPO, c["script"])):
            bad.append(f"{c['rel']}: {c['script']} does not exist: {c['line']}")
        else:
            by_script.setdefault(c["script"], []).append(c)
    for script, these in sorted(by_script.items()):
        mine = {tuple(c["args"]) for c in these if c["parse"]}
        argvs = sorted(mine | documented_argvs().get(script, set()))
        results = _run(script, json.dumps(argvs))
        code, usage, err = results[0]
        assert code == 0 and "usage:" in usage, f"{script} --help: exit {code} {err}"
        flags, parsed = set(FLAG.findall(usage)), dict(zip(argvs, results[1:]))
        for c in these:
            for a in c["args"]:
                f = a.split("=", 1)[0]
                if FLAG.fullmatch(f) and f not in flags:
                    bad.append(f"{c['rel']}: {script} has no {f}: {c['line']}")
            code, _, err = parsed.get(tuple(c["args"]), (0, "", ""))
            if c["parse"] and code != 0:
                bad.append(f"{c['rel']}: {script} rejects it ({err.strip().splitlines()[-1:]}): {c['line']}")
    return sorted(set(bad))


def test_the_checks_see_commands_and_can_fail():
    """The extractors must find the README's commands, and a wrong flag, value or script must be
    reported, or every other test here would pass on nothing."""
    cmds = readme_commands()
    assert len(cmds) >= 25 and len(docstring_commands()) >= 40
    assert {"countdown.py", "ppo.py", "classify.py", "plot.py", "bench.py", "mini.py"} <= {c["script"] for c in cmds}
    assert any(c["script"] == "ppo.py" and "--micro-batch" in c["args"] for c in forwarded(cmds))
    wrong = [command("t", "x", "countdown.py", ["--no-such-flag"]), command("t", "y", "nope.py", []),
             command("t", "z", "countdown.py", ["--n-train", "8x"]),
             command("t", "w", "bench.py", ["--ppo-args", "--steps many"])]
    bad = mismatches(wrong)
    assert [b[:25] for b in bad] == ["t: countdown.py has no --", "t: countdown.py rejects i",
                                    "t: nope.py does not exist", "t: ppo.py rejects it ([\"p"], bad


def test_readme_commands_run_as_written():
    bad = mismatches(readme_commands())
    assert not bad, "\n".join(bad)


def test_docstring_commands_run_as_written():
    bad = mismatches(docstring_commands())
    assert not bad, "\n".join(bad)


def test_inline_commands_in_the_docs_use_real_flags():
    cmds = inline_commands_of_docs()
    assert len(cmds) >= 10
    bad = mismatches(cmds)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("rel", list(DOCS) + ["docstrings"])
def test_nothing_points_outside_the_repository(rel):
    texts = {r: module_docstring(r) for r in scripts()} if rel == "docstrings" else {rel: read(rel)}
    bad = [f"{r}:{i}: {line.strip()}" for r, t in texts.items() for i, line in enumerate(t.splitlines(), 1)
           if OUTSIDE.search(line.replace("docs/DESIGN.md", ""))]
    assert not bad, "\n".join(bad)


def test_design_layout_names_every_file():
    design = read("docs/DESIGN.md")
    missing = [s for s in scripts() + ["report_page.html", "setup.sh", "tests/"] if f"`{s}`" not in design]
    assert not missing, f"docs/DESIGN.md's layout lacks {missing}"


def test_the_helpers_own_examples():
    import doctest
    assert doctest.testmod(sys.modules[__name__]).failed == 0
