"""The README's first command, at its smallest settings: every stage runs and the figures appear."""
import os
import subprocess
import sys

from conftest import REPO


def test_pipeline_smoke(tmp_path):
    out = tmp_path / "pipe"
    r = subprocess.run([sys.executable, "pipeline.py", "--smoke", "--out", str(out),
                        "--conditions", "all_strategies", "empty_cot"],
                       cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for c in ("all_strategies", "empty_cot"):
        assert (out / f"sft-{c}" / "final" / "model.safetensors").exists()
        assert (out / f"ppo-{c}" / "metrics.jsonl").exists()
        header = (out / f"ppo-{c}" / "classify" / "steps.csv").read_text().splitlines()[0]
        assert header.startswith("condition,step,avg_verifications")
    figs = out / "figures"
    for name in ("accuracy.png", "results.md"):
        assert (figs / name).exists() and os.path.getsize(figs / name) > 200, name
    table = (figs / "results.md").read_text()
    assert "all_strategies" in table and "empty_cot" in table
    assert "pipeline done" in r.stdout
