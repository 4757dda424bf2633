"""Checkpoints within an epoch (``checkpoint_every``, ``checkpoint_every_minutes``): a run killed with SIGKILL
mid-epoch and resumed ends bit-exactly as an uninterrupted run, the done batches are skipped unread."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

pytest.importorskip("hydra")  # the entry points' dependency
from hydra import compose, initialize_config_dir  # noqa: E402

from tests.test_train import ROOT, TINY  # noqa: E402  (the tiny KAT on 256 digits: 8 batches of 32 per epoch)
from zoo.data.loaders import EpochRandomSampler  # noqa: E402
from zoo.training import trainer  # noqa: E402
from zoo.training.checkpoint import CheckpointError, load_checkpoint  # noqa: E402

# Random draws everywhere (mixup, EMA, accumulation over 2 batches: 4 updates per epoch), deterministic CPU kernels.
EXACT = ("epochs=3", "deterministic=true", "ema.enabled=true", "mixup.mixup_alpha=0.2", "accum_steps=2")
BATCHES_PER_EPOCH = 8

# train.py's entry point, with the training loop's per-batch unpacking wrapped so that the process SIGKILLs itself
# when it is about to run batch number ZOO_TEST_KILL_AT_BATCH (counted over the run, from 1): a real kill, at a
# known place, between two checkpoints.
KILLER = """
import os, signal, sys

import zoo.training.trainer as trainer
from zoo.cli import train

kill_at = int(os.environ["ZOO_TEST_KILL_AT_BATCH"])
unpack = trainer.unpack_batch
calls = 0


def unpack_or_die(batch):
    global calls
    calls += 1
    if calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return unpack(batch)


trainer.unpack_batch = unpack_or_die
train(config_path=sys.argv.pop(1))
"""


def _compose(run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=[*TINY, f"run_dir={run_dir}", *overrides])


def _record_saves(monkeypatch) -> list[dict]:
    """Record (epoch, step, in_epoch) of every checkpoint the trainer writes (and still write it)."""
    saves = []
    save = trainer.save_checkpoint

    def recording(path, state):
        saves.append({"name": Path(path).name, "epoch": state["epoch"], "step": state["step"], **_position(state)})
        return save(path, state)

    monkeypatch.setattr(trainer, "save_checkpoint", recording)
    return saves


def _position(state: dict) -> dict:
    in_epoch = state["in_epoch"]
    return {"batches_done": None if in_epoch is None else in_epoch["batches_done"]}


def _count_batches(monkeypatch) -> list[int]:
    """Count the batches the training loop runs through the model (a one-element list)."""
    count = [0]
    unpack = trainer.unpack_batch

    def counting(batch):
        count[0] += 1
        return unpack(batch)

    monkeypatch.setattr(trainer, "unpack_batch", counting)
    return count


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same run without mid-epoch checkpoints (the default), never killed; and its saves."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        saves = _record_saves(monkeypatch)
        summary = trainer.train(_compose(tmp_path_factory.mktemp("uninterrupted"), *EXACT))
    return load_checkpoint(Path(summary["checkpoint"])), saves


def test_by_default_checkpoints_are_written_at_epoch_ends_only(uninterrupted):
    _, saves = uninterrupted
    assert [(s["name"], s["epoch"], s["step"], s["batches_done"]) for s in saves if s["name"] == "last.pt"] == [
        ("last.pt", 0, 4, None),
        ("last.pt", 1, 8, None),
        ("last.pt", 2, 12, None),
    ]


def test_checkpoint_every_writes_within_epochs_after_updates(tmp_path, monkeypatch):
    saves = _record_saves(monkeypatch)
    trainer.train(_compose(tmp_path / "run", "epochs=2", "accum_steps=2", "checkpoint_every=2"))
    # 4 updates of 2 batches per epoch: steps 2 and 6 fall within an epoch; steps 4 and 8 end one (written once)
    assert [(s["epoch"], s["step"], s["batches_done"]) for s in saves if s["name"] == "last.pt"] == [
        (-1, 2, 4),
        (0, 4, None),
        (0, 6, 4),
        (1, 8, None),
    ]
    assert all(s["batches_done"] is None for s in saves if s["name"] == "best.pt")


@pytest.mark.parametrize(
    "every,kill_at_batch,completed_epochs,batches_done,step",
    [
        # every 3 updates: step 3 (epoch 1, batch 6), step 6 (epoch 2, batch 4); killed before epoch 2's 7th batch,
        # so step 7 is lost and redone
        ("checkpoint_every=3", BATCHES_PER_EPOCH + 7, 1, 4, 6),
        # every update (a tiny interval): the last one before the kill is step 3, within the first epoch
        ("checkpoint_every_minutes=1e-9", 7, 0, 6, 3),
    ],
)
def test_sigkill_within_an_epoch_then_resume_equals_an_uninterrupted_run(
    uninterrupted, tmp_path, monkeypatch, every, kill_at_batch, completed_epochs, batches_done, step
):
    reference, _ = uninterrupted
    run_dir = tmp_path / "killed"
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    env = {
        **os.environ,
        # bitwise on one machine: CPU reductions split over another thread count round differently
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
        "ZOO_TEST_KILL_AT_BATCH": str(kill_at_batch),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, str(killer), str(ROOT / "configs"), *TINY, *EXACT, every]
    command += [f"run_dir={run_dir}", f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]

    killed = load_checkpoint(run_dir / "last.pt")
    assert killed["in_epoch"] is not None, "the last checkpoint is not one within an epoch"
    assert (killed["epoch"], killed["in_epoch"]["batches_done"], killed["step"]) == (
        completed_epochs - 1,
        batches_done,
        step,
    )
    assert len(killed["history"]) == completed_epochs
    metrics = run_dir / "metrics.jsonl"
    written = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] if metrics.exists() else []
    assert written == list(range(1, completed_epochs + 1))

    # the position belongs to the batch layout: another batch size is refused, not resumed at other samples
    copy = tmp_path / "copy" / "last.pt"
    copy.parent.mkdir()
    shutil.copyfile(run_dir / "last.pt", copy)
    with pytest.raises(CheckpointError, match="within an epoch"):
        trainer.train(_compose(tmp_path / "unused", *EXACT, "batch_size=16", f"resume={copy}"))

    ran = _count_batches(monkeypatch)
    summary = trainer.train(_compose(tmp_path / "unused", *EXACT, every, f"resume={run_dir}"))
    assert summary["run_dir"] == str(run_dir)
    # the resumed run goes on at the next batch: the done ones never reach the model
    assert ran[0] == 3 * BATCHES_PER_EPOCH - (completed_epochs * BATCHES_PER_EPOCH + batches_done)

    resumed = load_checkpoint(run_dir / "last.pt")
    assert resumed["in_epoch"] is None
    assert resumed["step"] == reference["step"] == 12
    for part in ("model", "ema"):
        assert resumed[part].keys() == reference[part].keys()
        assert all(torch.equal(resumed[part][k], reference[part][k]) for k in reference[part]), part
    states = reference["optimizer"]["state"]
    assert resumed["optimizer"]["state"].keys() == states.keys()
    for key, state in states.items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(resumed["optimizer"]["state"][key][name]), torch.as_tensor(value))

    def without_timing(history):
        return [{k: v for k, v in row.items() if k != "images_per_s"} for row in history]

    assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3]
    assert without_timing(resumed["history"]) == without_timing(reference["history"])  # train_loss included
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2, 3]


class _CountingDataset(Dataset):
    def __init__(self, n: int) -> None:
        self.n, self.reads = n, 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        return torch.tensor([float(index)]), index


def test_skipped_batches_are_never_read():
    data = _CountingDataset(50)
    loader = DataLoader(data, batch_size=8, sampler=EpochRandomSampler(data, seed=3), drop_last=True)
    loader.sampler.set_epoch(5)
    full = [targets.tolist() for _, targets in loader]
    assert len(full) == 6
    data.reads = 0
    rest = trainer._skip_batches(loader, 4)
    assert len(rest) == 2
    assert [targets.tolist() for _, targets in rest] == full[4:]
    assert data.reads == 2 * 8
