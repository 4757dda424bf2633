"""Run report PNG: a valid image for 1 and many epochs, missing keys tolerated, atomic write, and no matplotlib
import until a report is drawn."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zoo.training.report import save_run_report

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _history(epochs: int, ema: bool = False) -> list[dict]:
    rows = []
    for epoch in range(1, epochs + 1):
        row = {
            "epoch": epoch,
            "step": 22 * epoch,
            "train_loss": 2.3 / epoch + 0.05 * math.sin(epoch),
            "eval_loss": 2.4 / epoch + 0.1,
            "top1": 100 * (1 - 1 / (epoch + 1)),
            "top5": 100 * (1 - 0.2 / epoch),
            "lr": 1e-3 * 0.5 * (1 + math.cos(math.pi * epoch / epochs)) + 1e-6,
            "images_per_s": 1234.5,
        }
        if ema:
            row.update(ema_top1=row["top1"] + 0.5, ema_top5=row["top5"])
        rows.append(row)
    return rows


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC


def test_one_epoch(tmp_path):
    out = save_run_report(_history(1), tmp_path / "report.png", title="kat_t on digits")
    assert out == tmp_path / "report.png"
    assert _is_png(out)


def test_size_grows_with_content(tmp_path):
    small = save_run_report(_history(1), tmp_path / "small.png")
    large = save_run_report(_history(40, ema=True), tmp_path / "large.png", title="a longer run")
    assert _is_png(small) and _is_png(large)
    assert large.stat().st_size > small.stat().st_size


def test_missing_keys_and_odd_values_are_tolerated(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 2.0, "lr": 1e-4},  # no eval yet
        {"epoch": 2, "train_loss": 1.5, "top1": 40.0, "eval_loss": 1.7},  # no top5, no lr
        {"step": 66, "top1": 55.0, "top5": 90.0, "ema_top1": 56.0, "lr": [1e-3, 1e-4]},  # no epoch, per-group lr
        {"epoch": 4, "train_loss": float("nan"), "top1": None, "lr": "n/a"},
        {},
    ]
    out = save_run_report(history, tmp_path / "odd.png")
    assert _is_png(out)


def test_empty_history(tmp_path):
    assert _is_png(save_run_report([], tmp_path / "empty.png"))


def test_str_path_parents_created_and_overwrite(tmp_path):
    target = tmp_path / "a" / "b" / "report.png"
    save_run_report(_history(1), str(target))
    first = target.stat().st_size
    out = save_run_report(_history(30, ema=True), str(target))
    assert out == target and _is_png(target) and target.stat().st_size != first
    assert sorted(os.listdir(target.parent)) == ["report.png"]  # no temporary left behind


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "report.png"
    save_run_report(_history(3), target)
    before = target.read_bytes()

    from matplotlib.figure import Figure

    def boom(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(OSError, match="disk full"):
        save_run_report(_history(10), target)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["report.png"]


def test_import_does_not_import_matplotlib():
    code = (
        "import sys\nimport zoo.training.report, zoo.training\n"
        "assert 'matplotlib' not in sys.modules, sorted(m for m in sys.modules if 'matplotlib' in m)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
