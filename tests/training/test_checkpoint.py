"""Atomic checkpoints: round trip of a full training state, run-dir resolution, corrupt / truncated / foreign
files, atomicity under a failing write, RNG capture and restore."""

from __future__ import annotations

import argparse
import fractions
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from timm.scheduler import CosineLRScheduler

from zoo.training import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    resolve_checkpoint_path,
    restore_rng_state,
    save_checkpoint,
)


def _training_state(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = CosineLRScheduler(optimizer, t_initial=10, warmup_t=2, warmup_lr_init=1e-4)
    torch_scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for step in range(3):
        loss = model(torch.randn(5, 4)).square().mean()
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step(step + 1)
        torch_scheduler.step()
    return model, optimizer, scheduler, torch_scheduler, scaler


def _assert_equal(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_round_trip_of_a_training_state(tmp_path):
    model, optimizer, scheduler, torch_scheduler, scaler = _training_state()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_scheduler": torch_scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "step": 3,
        "epoch": 1,
        "best_metric": np.float64(0.25),  # numpy scalars become Python numbers
        "rng": capture_rng_state(),
        "config": {"model": {"name": "kat_t", "img_size": [32, 32]}, "optim": {"lr": 1e-2, "betas": (0.9, 0.99)}},
    }
    path = save_checkpoint(tmp_path / "run" / "last.pt", state)
    assert path == tmp_path / "run" / "last.pt" and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary left behind

    loaded = load_checkpoint(path)
    assert loaded["format"] == CHECKPOINT_FORMAT
    assert "format" not in state  # the caller's dict is not modified
    assert loaded["best_metric"] == 0.25 and type(loaded["best_metric"]) is float
    for key in ("model", "optimizer", "scheduler", "torch_scheduler", "scaler", "step", "epoch", "config", "rng"):
        _assert_equal(state[key], loaded[key], key)

    # the state dicts load into fresh objects, which then continue exactly like the originals
    model2, optimizer2, scheduler2, torch_scheduler2, scaler2 = _training_state(seed=1)
    model2.load_state_dict(loaded["model"])
    optimizer2.load_state_dict(loaded["optimizer"])
    scheduler2.load_state_dict(loaded["scheduler"])
    torch_scheduler2.load_state_dict(loaded["torch_scheduler"])
    scaler2.load_state_dict(loaded["scaler"])
    assert scaler2.get_scale() == scaler.get_scale()
    x = torch.randn(5, 4)
    for m, o in ((model, optimizer), (model2, optimizer2)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
    scheduler.step(4)
    scheduler2.step(4)
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in optimizer2.param_groups]


def test_run_directory_resolution(tmp_path):
    assert resolve_checkpoint_path(tmp_path) == tmp_path / "last.pt"
    assert resolve_checkpoint_path(tmp_path, "best.pt") == tmp_path / "best.pt"
    assert resolve_checkpoint_path(tmp_path / "x.pt") == tmp_path / "x.pt"
    assert save_checkpoint(tmp_path, {"step": 1}) == tmp_path / "last.pt"
    save_checkpoint(tmp_path / "best.pt", {"step": 2})
    assert load_checkpoint(tmp_path)["step"] == 1
    assert load_checkpoint(str(tmp_path), filename="best.pt")["step"] == 2
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 2


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="last.pt"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"model": torch.nn.Linear(64, 64).state_dict(), "step": 1})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_garbage_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path)


def test_foreign_and_mismatched_files(tmp_path):
    torch.save({"model": {}}, tmp_path / "no_format.pt")
    with pytest.raises(CheckpointError, match="no 'format' key"):
        load_checkpoint(tmp_path / "no_format.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(tmp_path / "list.pt")
    torch.save({"format": CHECKPOINT_FORMAT + 1}, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "newer.pt")
    torch.save({"format": "one"}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="format 'one'"):
        load_checkpoint(tmp_path / "odd.pt")
    torch.save({"format": CHECKPOINT_FORMAT, "ratio": fractions.Fraction(1, 3)}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="pickled global fractions.Fraction.*trust_checkpoint=true"):
        load_checkpoint(tmp_path / "pickled.pt")
    assert load_checkpoint(tmp_path / "pickled.pt", trust=True)["ratio"] == fractions.Fraction(1, 3)


def test_save_refuses_what_weights_only_cannot_load(tmp_path):
    with pytest.raises(TypeError, match=r"state\['config'\]\['args'\] is a argparse.Namespace"):
        save_checkpoint(tmp_path / "last.pt", {"config": {"args": argparse.Namespace(lr=1)}})
    with pytest.raises(TypeError, match="must be a dict"):
        save_checkpoint(tmp_path / "last.pt", [1])
    assert not any(tmp_path.iterdir())


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", {"step": 1, "w": torch.arange(1000)})
    before = path.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")  # a partial write, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(1000)})
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "other.pt", {"step": 2})  # no previous file: no target appears either
    monkeypatch.setattr(torch, "save", real_save)

    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_kill_during_save_leaves_the_previous_checkpoint(tmp_path):
    """SIGKILL a process in the middle of torch.save: the old checkpoint stays intact (at most a stray temp)."""
    path = save_checkpoint(tmp_path / "last.pt", {"step": 1})
    code = f"""
import os, signal, torch
from zoo.training import save_checkpoint
real_save = torch.save
def dying_save(obj, f, *a, **k):
    f.write(b"PK partial")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
save_checkpoint({str(path)!r}, {{"step": 2}})
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".last.pt.tmp-")] == ["last.pt"]


def _draws():
    return (
        [random.random() for _ in range(3)],
        np.random.rand(3).tolist() + [np.random.randn()],
        torch.rand(3).tolist() + torch.randn(1).tolist(),
    )


@pytest.mark.parametrize("which", ["python", "numpy", "torch"])
def test_rng_capture_and_restore(which, tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    np.random.randn()  # leave a cached gaussian in numpy's state
    state = capture_rng_state()
    expected = _draws()
    # through a checkpoint file, as on resume
    save_checkpoint(tmp_path / "last.pt", {"rng": state})
    loaded = load_checkpoint(tmp_path / "last.pt")["rng"]
    _draws()  # move every generator on
    restore_rng_state({which: loaded[which]})
    got = _draws()
    index = ["python", "numpy", "torch"].index(which)
    assert got[index] == expected[index]
    assert got[index - 1] != expected[index - 1]  # the other generators were left alone


def test_rng_restore_all_and_cuda_keys():
    state = capture_rng_state()
    assert set(state) >= {"python", "numpy", "torch"}
    assert ("cuda" in state) == torch.cuda.is_available()
    expected = _draws()
    restore_rng_state(state)
    assert _draws() == expected
    if torch.cuda.is_available():
        a = torch.rand(4, device="cuda")
        restore_rng_state(state)
        torch.rand(4, device="cuda")
        restore_rng_state({"cuda": state["cuda"]})
        assert torch.equal(torch.rand(4, device="cuda"), a)
    else:
        with pytest.warns(UserWarning, match="CUDA is not available"):
            restore_rng_state({"cuda": [torch.get_rng_state()]})
