"""A sign of life on long epochs (``log_interval_s``): progress lines with the step, batch, images/s, loss, lr and
the epoch's ETA, in the run's log beside the epoch lines, whether or not a terminal shows the progress bar."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hydra")  # the entry points' dependency
from hydra import compose, initialize_config_dir  # noqa: E402

from tests.test_train import ROOT, TINY  # noqa: E402  (the tiny KAT on 256 digits: 8 batches of 32 per epoch)
from zoo.training.trainer import train  # noqa: E402

LINE = re.compile(
    r"epoch (?P<epoch>\d+)/(?P<epochs>\d+), step (?P<step>\d+), batch (?P<batch>\d+)/(?P<batches>\d+): "
    r"(?P<rate>\d+\.\d) images/s, loss (?P<loss>\d+\.\d{4}), lr (?P<lr>\d\.\d\de[+-]\d\d), "
    r"epoch ETA (?P<eta>\d+:[0-5]\d:[0-5]\d)"
)
# A tiny interval: a line after every batch, whatever the machine's speed.
EVERY_BATCH = "log_interval_s=1e-9"


def _compose(run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=[*TINY, f"run_dir={run_dir}", *overrides])


def _progress_lines(messages: list[str]) -> list[dict]:
    """The fields of the progress lines among ``messages`` (checked to be whole lines of the format)."""
    lines = [message for message in messages if "images/s" in message]
    matches = [LINE.fullmatch(line) for line in lines]
    assert all(matches), [line for line, match in zip(lines, matches, strict=True) if not match]
    return [match.groupdict() for match in matches]


def test_progress_lines_carry_step_batch_rate_loss_lr_and_eta(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="zoo.train")
    train(_compose(tmp_path / "run", "epochs=2", "accum_steps=2", EVERY_BATCH))
    messages = [record.getMessage() for record in caplog.records if record.name == "zoo.train"]
    lines = _progress_lines(messages)
    assert {line["epoch"] for line in lines} == {"1", "2"}
    for line in lines:
        epoch, batch = int(line["epoch"]), int(line["batch"])
        assert (line["epochs"], line["batches"]) == ("2", "8")
        assert 1 <= batch <= 8
        assert int(line["step"]) == 4 * (epoch - 1) + batch // 2  # 2 batches per update, 4 updates per epoch
        assert float(line["rate"]) > 0 and float(line["loss"]) > 0 and float(line["lr"]) > 0
    for epoch in ("1", "2"):
        batches = [int(line["batch"]) for line in lines if line["epoch"] == epoch]
        assert batches == sorted(set(batches))  # one line per interval, in order
    last = [line for line in lines if line["batch"] == "8"]
    assert last and all(line["eta"] == "0:00:00" for line in last)  # nothing left of the epoch
    # the progress lines of an epoch come before its epoch line, in the same log
    epoch_lines = [i for i, message in enumerate(messages) if message.startswith("epoch 1/2: {")]
    first_progress = next(i for i, message in enumerate(messages) if "images/s" in message)
    assert len(epoch_lines) == 1 and first_progress < epoch_lines[0]


def test_no_progress_lines_with_log_interval_0(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="zoo.train")
    train(_compose(tmp_path / "run", "epochs=1", "log_interval_s=0"))
    messages = [record.getMessage() for record in caplog.records if record.name == "zoo.train"]
    assert any(message.startswith("epoch 1/1: {") for message in messages)
    assert _progress_lines(messages) == []


def test_progress_lines_reach_the_run_log_without_a_terminal(tmp_path):
    """train.py with stdout and stderr piped (no terminal: no progress bar, progress=auto): the progress lines go
    to the run's train.log and the console with the epoch lines, and the summary stays the last stdout line."""
    run_dir = tmp_path / "run"
    command = [sys.executable, str(ROOT / "train.py"), *TINY, "progress=auto", "epochs=1", EVERY_BATCH]
    command += [f"run_dir={run_dir}", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log_lines = (run_dir / "train.log").read_text().splitlines()
    logged = [line.split(" - ", 1)[-1] for line in log_lines if "images/s" in line]  # without the record prefix
    fields = _progress_lines(logged)
    assert fields and all(line["epoch"] == "1" and line["batches"] == "8" for line in fields)
    assert any("epoch 1/1: {" in line for line in log_lines)
    console = result.stdout + result.stderr
    assert any("images/s" in line and "epoch ETA" in line for line in console.splitlines())
    assert "it/s" not in result.stderr  # no tqdm bar without a terminal
    assert json.loads(result.stdout.strip().splitlines()[-1])["epochs"] == 1
