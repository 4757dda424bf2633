"""What the CPU benchmark scripts record about the machine and the checkout, and how they summarise timings:
one copy for scripts/benchmark_cpu.py, scripts/benchmark_onnx.py and scripts/train_defaults.py."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``'s model name), or what ``platform`` knows elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def slug(text: str) -> str:
    """``text`` as a file-name part: lower case, runs of other characters as one ``-``, at most 60 characters."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def commit() -> str:
    """The checkout's short commit hash, with ``-dirty`` where tracked files differ from it (a result measured on
    uncommitted code says so), or ``"unknown"`` outside a git checkout."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7", "--exclude", "*"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load() -> list[float]:
    """The 1-, 5- and 15-minute load averages, rounded: recorded beside every timing."""
    return [round(v, 2) for v in os.getloadavg()]


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values`` by the nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def write_results(out: Path, results: dict, kind: str) -> Path:
    """Write ``results`` (a dict with ``device`` and ``date``) as ``out/<device>-<date>-<kind>.json``; its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{slug(results['device'])}-{results['date']}-{kind}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path
