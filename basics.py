"""
The bottom layer, which imports nothing of ours: bad-input errors, JSON / JSONL files written
atomically, and the settings tables every script turns into flags. countdown.py and common.py
both stand on it (common.py's tiny model needs countdown.py's tasks, so neither may import the
other's way back). The stages reach these names as common.X too.
"""
import argparse
import contextlib
import copy
import glob
import json
import os
import tempfile
import typing


# ---------------------------------------------------------------------------------
# JSONL and atomic file I/O

class DataError(ValueError):
    """Bad input data; the message names the file and line."""


def read_jsonl(path, required=(), check=None):
    """List of dicts from a JSONL file; blank lines are skipped. Errors name file:line.

    `required` lists keys every record must have; `check(rec)` may return a problem (str).
    """
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            missing = [k for k in required if k not in rec]
            if missing:
                raise DataError(f"{path}:{lineno}: record lacks {', '.join(missing)}")
            problem = check(rec) if check else None
            if problem:
                raise DataError(f"{path}:{lineno}: {problem}")
            out.append(rec)
    return out


def atomic_write_text(path, text):
    """Write to a temporary file beside path, then rename: readers never see half a file. The
    temporary files of earlier writers of path that were killed mid-write go too."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    prefix = ".tmp-" + os.path.basename(path) + "."   # + mkstemp's 8 random characters
    fd, tmp = tempfile.mkstemp(dir=d, prefix=prefix)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs should read like any other
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    for stale in glob.glob(os.path.join(glob.escape(d), glob.escape(prefix) + "?" * 8)):   # path's alone
        with contextlib.suppress(FileNotFoundError):
            os.remove(stale)


def write_jsonl(path, records):
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def append_jsonl(path, records):
    """Append whole records (one write call, flushed): a killed run leaves at most a
    truncated last line, which `read_jsonl_tolerant` drops."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl_tolerant(path):
    """Records of an append-only log we wrote ourselves; a torn last line (killed
    mid-write) is dropped and the file truncated to its last whole line."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    good = data[: data.rfind(b"\n") + 1]
    if len(good) != len(data):
        with open(path, "r+b") as f:
            f.truncate(len(good))
    recs = []
    for i, line in enumerate(good.decode("utf-8", errors="replace").splitlines(), 1):
        if line.strip():
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError as e:   # damaged in the middle: not ours to guess
                raise DataError(f"{path}:{i}: malformed JSON ({e.msg}); fix or delete the file") from None
    return recs



# ---------------------------------------------------------------------------------
# settings tables -> flags

def add_settings(ap, settings):
    """Add one flag per (name, default, type, help) row: bool rows get --x / --no-x, list rows
    take one or more values (--x a b c; list[int]: each an int), other types one value.

    >>> ap = add_settings(argparse.ArgumentParser(), [("max_len", 8, int, "tokens"), ("pack", False, bool, "pack"),
    ...                                               ("names", ["a"], list, "names"), ("seeds", [0], list[int], "")])
    >>> vars(ap.parse_args(["--max-len", "4", "--pack", "--names", "b", "c", "--seeds", "1", "2"]))
    {'max_len': 4, 'pack': True, 'names': ['b', 'c'], 'seeds': [1, 2]}
    """
    for name, default, typ, help_ in settings:
        flag = "--" + name.replace("_", "-")
        if typ is bool:
            ap.add_argument(flag, default=default, action=argparse.BooleanOptionalAction, help=help_)
        elif typ is list or typing.get_origin(typ) is list:   # a copy: the run never changes the table's list
            ap.add_argument(flag, default=None if default is None else list(default), nargs="+",
                            type=(typing.get_args(typ) or (None,))[0], help=help_)
        else:
            ap.add_argument(flag, default=default, type=typ, help=help_)
    return ap


def json_value(text):
    """The type of a settings row whose value is a dict or a list of fixed shape: the flag's
    value read as JSON (mini.py --base-size '{"hidden_size": 64}').

    >>> json_value('[1, 24]'), json_value('{"hidden_size": 64}')
    ([1, 24], {'hidden_size': 64})
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg}): {text!r}") from None


def settings_argv(settings, values, names):
    """The flags that hand values of these rows to a child process, which add_settings' parser
    reads back to the same values (JSON rows as JSON, lists as several values; no None).

    >>> rows = [("docs", 1, int, ""), ("span", [1, 2], json_value, ""), ("seeds", [0], list[int], ""),
    ...         ("pack", True, bool, "")]
    >>> settings_argv(rows, {"docs": 7, "span": (1, 24), "seeds": [0, 1], "pack": False}, [r[0] for r in rows])
    ['--docs', '7', '--span', '[1,24]', '--seeds', '0', '1', '--no-pack']
    """
    typ, out = {row[0]: row[2] for row in settings}, []
    for k in names:
        v, flag = values[k], k.replace("_", "-")
        if typ[k] is bool:
            out.append(("--" if v else "--no-") + flag)
        elif typ[k] is json_value:
            out += ["--" + flag, json.dumps(v, separators=(",", ":"))]
        else:
            out += ["--" + flag, *([str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)])]
    return out


def fill_defaults(args, values, given):
    """Set each name in values on args unless its flag was given (`given`: passed_flags'
    names): the sizes of a smaller run (a CPU, a smoke test) that leave what the user passed
    alone, even where the user passed the default's own value.

    >>> import types
    >>> vars(fill_defaults(types.SimpleNamespace(steps=250, lr=0.5), {"steps": 2, "lr": 0.1}, given={"lr"}))
    {'steps': 2, 'lr': 0.5}
    """
    for k, v in values.items():
        if k not in given:
            setattr(args, k, v)
    return args


def passed_flags(ap, argv=None):
    """The dests of the flags argv gives (sys.argv[1:] if None), whatever their values.

    >>> ap = argparse.ArgumentParser(); _ = ap.add_argument("--steps", type=int, default=250)
    >>> passed_flags(ap, ["--steps", "250"]), passed_flags(ap, [])
    ({'steps'}, set())
    """
    probe = copy.deepcopy(ap)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
    return set(vars(probe.parse_args(argv)))
