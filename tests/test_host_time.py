"""scripts/host_time.py: an op's host time through Triton's real launch path, without a GPU (a stand-in sm_90
driver whose launch call does nothing). Asserts the rows and that the kernels went through the compiler, never
the timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_host_time_runs_the_compiled_launch_path_without_a_gpu(tmp_path):
    cache = tmp_path / "triton-cache"
    env = dict(os.environ, TRITON_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "scripts/host_time.py", "--ops", "host_probe", "--calls", "3", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in proc.stdout.splitlines()]
    rows = [r for r in rows if r and r[0] == "host_probe"]
    assert {(r[3], r[4]) for r in rows} == {
        ("fwd", "triton-launch"),
        ("fwd", "fast-launch"),
        ("fwd", "triton"),
        ("fwd+bwd", "triton"),
        ("fwd", "torch"),
        ("fwd+bwd", "torch"),
    }
    assert all(float(r[5]) > 0 for r in rows)
    (written,) = tmp_path.glob("*-host-time.json")
    results = json.loads(written.read_text())
    assert results["triton"] and results["torch"] and results["settings"]["calls"] == 3
    assert [(r["pass_"], r["impl"], r["host_us"]) for r in results["rows"]] == [(r[3], r[4], float(r[5])) for r in rows]
    # the empty kernel was compiled for the stand-in sm_90 GPU: launched through Triton's JIT, not the interpreter
    assert list(cache.rglob("*.cubin"))
