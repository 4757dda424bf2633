"""No weights path runs code from a file without the opt-in (issue 25, part 1).

A planted file whose unpickling creates a marker file is refused on every path that reads weights (the load
helpers, ``finetune=``, ``resume=``, eval.py's ``checkpoint=`` and ``pretrained_file=``, timm's
``pretrained_cfg_overlay`` file, the ListOps cache) and the marker never appears; with ``trust_checkpoint=true`` /
``trust=True`` the file loads (and the marker appears: that is what trusting a file means). Official-style
checkpoints holding the allow-listed types load without the opt-in.
"""

from __future__ import annotations

import argparse
import pickle
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("hydra")  # the entry points' dependency (the GPU machine runs the kernel tests without it)
import zoo  # noqa: E402
from tests.test_eval import TINY_KWARGS, _eval_cfg  # noqa: E402
from tests.test_train import _compose  # noqa: E402
from zoo.training.checkpoint import (  # noqa: E402
    SAFE_CHECKPOINT_GLOBALS,
    CheckpointError,
    UntrustedCheckpointError,
    load_checkpoint,
    load_weights_file,
)
from zoo.training.evaluation import load_model_for_eval, run_eval  # noqa: E402
from zoo.training.finetune import read_source  # noqa: E402
from zoo.training.trainer import train  # noqa: E402

# The tiny KAT of tests/test_train.py's TINY as the Python API builds it (digits: 8 px, 4 px patches, 1 channel).
MODEL_KWARGS = dict(img_size=8, patch_size=4, in_chans=1, num_classes=10, **TINY_KWARGS)


class Payload:
    """An object whose unpickling runs code, as a malicious weights file would: it creates the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _refused(error: pytest.ExceptionInfo, file: Path) -> None:
    """The refusal names the file, the global found and both forms of the opt-in."""
    message = str(error.value)
    assert str(file) in message and "pickled global exec" in message
    assert "trust_checkpoint=true" in message and "trust=True" in message


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A tiny kat_t trained one epoch on digits (tests/test_train.py's TINY)."""
    summary = train(_compose(tmp_path_factory.mktemp("safe") / "run", "epochs=1"))
    state = load_checkpoint(summary["checkpoint"])
    return {"dir": Path(summary["run_dir"]), "model": state["model"], "state": state}


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "payload-ran"


def _planted_checkpoint(run: dict, directory: Path, marker: Path) -> Path:
    """A copy of the run directory whose last.pt also holds the payload (the file a run would resume from)."""
    copy = directory / "planted-run"
    shutil.copytree(run["dir"], copy)
    torch.save({**run["state"], "payload": Payload(marker)}, copy / "last.pt")
    return copy


# ---------------------------------------------------------------------------------------------- the helpers


def test_the_load_helpers_refuse_a_payload_and_trust_runs_it(tmp_path, marker):
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(2)}, "payload": Payload(marker)}, evil)
    with pytest.raises(UntrustedCheckpointError) as error:
        load_weights_file(evil)
    _refused(error, evil)
    assert error.value.file == evil and error.value.found == "exec"
    with pytest.raises(UntrustedCheckpointError) as error:
        load_checkpoint(evil)
    _refused(error, evil)
    with pytest.raises(UntrustedCheckpointError):
        read_source(evil)
    assert not marker.exists()
    loaded = load_weights_file(evil, trust=True)
    assert marker.exists() and torch.equal(loaded["model"]["w"], torch.ones(2))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_a_pickle_the_restricted_unpickler_cannot_parse_is_refused(tmp_path, marker):
    """Pickle protocol 4 (FRAME opcodes) is not read at all: refused without naming a global, code never run."""
    evil = tmp_path / "evil4.pth"
    torch.save({"payload": Payload(marker)}, evil, pickle_protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="Unsupported operand"):
        load_weights_file(evil)
    with pytest.raises(CheckpointError, match="corrupt or truncated.*Unsupported operand"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_the_allow_list_is_not_registered_globally(tmp_path):
    path = tmp_path / "official.pth"
    torch.save({"args": argparse.Namespace(lr=1.0)}, path)
    assert load_weights_file(path)["args"].lr == 1.0
    assert not set(SAFE_CHECKPOINT_GLOBALS) & set(torch.serialization.get_safe_globals())
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


# The layouts the official training scripts write (see SAFE_CHECKPOINT_GLOBALS for where each comes from).
ARGS = argparse.Namespace(model="kat_tiny_patch16_224", lr=1e-3, device="cuda:0", model_kwargs={}, mixup=0.8)
OFFICIAL_LAYOUTS = {
    "timm_train_py": lambda sd: {  # KAT, InceptionNeXt, NAT/DiNAT: timm's CheckpointSaver
        "epoch": 299,
        "arch": "kat_tiny_patch16_224",
        "state_dict": sd,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0, 1]}]},
        "version": 2,
        "args": ARGS,
        "state_dict_ema": sd,
        "metric": 74.6,
        "amp_scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
        "saver": {"checkpoint_files": [("checkpoint-299.pth.tar", 74.6)], "best_epoch": 299, "pending": (299, 74.6)},
    },
    "convnext_main_py": lambda sd: {  # UniRepLKNet: utils.save_model
        "model": sd,
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": "best",
        "scaler": {"scale": 65536.0},
        "args": ARGS,
        "model_ema": sd,
    },
    "s4_example_py": lambda sd: {"model": sd, "acc": 88.5, "epoch": 99},  # S4D: state-spaces/s4 example.py
    "state_dict": lambda sd: dict(sd),  # released weights files
}


@pytest.mark.parametrize("layout", sorted(OFFICIAL_LAYOUTS))
def test_official_layouts_load_without_the_opt_in(tmp_path, layout):
    weights = {"w": torch.arange(3.0)}
    path = tmp_path / "official.pth"
    torch.save(OFFICIAL_LAYOUTS[layout](weights), path)
    loaded = load_weights_file(path)
    assert torch.equal(loaded.get("state_dict", loaded.get("model", loaded))["w"], weights["w"])
    if "args" in loaded:
        assert isinstance(loaded["args"], argparse.Namespace) and vars(loaded["args"]) == vars(ARGS)
    assert read_source(path).state_dict.keys() == loaded.keys()  # finetune= reads it too


# ------------------------------------------------------------------------------------------- train.py paths


def test_finetune_refuses_a_payload_and_loads_it_with_trust(tmp_path, run, marker):
    evil = tmp_path / "evil.pth"
    torch.save({"model": run["model"], "epoch": 299, "payload": Payload(marker)}, evil)
    lr0 = ["epochs=1", "optim.lr=0", "sched=constant", f"finetune={evil}"]
    with pytest.raises(UntrustedCheckpointError) as error:
        train(_compose(tmp_path / "refused", *lr0))
    _refused(error, evil)
    assert not marker.exists() and not (tmp_path / "refused").exists()  # refused before anything is written
    summary = train(_compose(tmp_path / "trusted", *lr0, "trust_checkpoint=true"))
    assert marker.exists()
    tuned = load_checkpoint(summary["checkpoint"])["model"]
    assert all(torch.equal(tuned[k], v) for k, v in run["model"].items())


def test_finetune_from_an_official_style_checkpoint_needs_no_opt_in(tmp_path, run):
    official = tmp_path / "official.pth"
    torch.save({"model": run["model"], "args": ARGS, "epoch": 3}, official)
    summary = train(_compose(tmp_path / "a", "epochs=1", "optim.lr=0", "sched=constant", f"finetune={official}"))
    tuned = load_checkpoint(summary["checkpoint"])["model"]
    assert all(torch.equal(tuned[k], v) for k, v in run["model"].items())


def test_resume_refuses_a_payload_and_loads_it_with_trust(tmp_path, run, marker):
    planted = _planted_checkpoint(run, tmp_path, marker)
    with pytest.raises(UntrustedCheckpointError) as error:
        train(_compose(tmp_path / "unused", "epochs=1", f"resume={planted}"))
    _refused(error, planted / "last.pt")
    assert not marker.exists()
    summary = train(_compose(tmp_path / "unused", "epochs=1", f"resume={planted}", "trust_checkpoint=true"))
    assert marker.exists() and summary["run_dir"] == str(planted)


# -------------------------------------------------------------------------------------------- eval.py paths


def test_eval_checkpoint_refuses_a_payload_and_loads_it_with_trust(tmp_path, run, marker):
    planted = _planted_checkpoint(run, tmp_path, marker)
    for source in (planted, planted / "last.pt"):  # a run directory and a file
        with pytest.raises(UntrustedCheckpointError) as error:
            run_eval(_eval_cfg(tmp_path / "refused", f"checkpoint={source}"))
        _refused(error, planted / "last.pt")
        with pytest.raises(UntrustedCheckpointError):
            load_model_for_eval(checkpoint=source)
    assert not marker.exists()
    summary = run_eval(_eval_cfg(tmp_path / "trusted", f"checkpoint={planted}", "trust_checkpoint=true"))
    assert marker.exists() and 0 <= summary["top1"] <= 100


def test_eval_pretrained_file_refuses_a_payload_and_loads_it_with_trust(tmp_path, run, marker):
    evil = tmp_path / "evil.pth"
    torch.save({"model": run["model"], "payload": Payload(marker)}, evil)
    kwargs = [f"+model.kwargs.{k}={v}" for k, v in TINY_KWARGS.items()]
    with pytest.raises(UntrustedCheckpointError) as error:
        run_eval(_eval_cfg(tmp_path / "refused", "model=kat_t", f"pretrained_file={evil}", *kwargs))
    _refused(error, evil)
    with pytest.raises(UntrustedCheckpointError):
        load_model_for_eval(model="kat_t", pretrained_file=evil, model_kwargs=MODEL_KWARGS)
    assert not marker.exists()
    cfg = _eval_cfg(tmp_path / "trusted", "model=kat_t", f"pretrained_file={evil}", "trust_checkpoint=true", *kwargs)
    assert 0 <= run_eval(cfg)["top1"] <= 100
    assert marker.exists()


def test_eval_pretrained_file_reads_official_style_checkpoints(tmp_path, run):
    official = tmp_path / "official.pth"
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in run["model"].items()}
    torch.save({**OFFICIAL_LAYOUTS["timm_train_py"](run["model"]), "state_dict_ema": ema}, official)
    model, _ = load_model_for_eval(model="kat_t", pretrained_file=official, model_kwargs=MODEL_KWARGS)
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())  # EMA weights first, as timm reads
    assert "state_dict" not in model.pretrained_cfg  # no second copy of the weights kept on the model


# ------------------------------------------------------------------------------------- timm and the caches


def test_timm_overlay_file_refuses_a_payload(tmp_path, marker):
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": Payload(marker)}, evil)
    with pytest.raises((pickle.UnpicklingError, RuntimeError), match="exec"):  # timm's own loader, weights_only
        zoo.create_model("kat_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(evil)), **MODEL_KWARGS)
    assert not marker.exists()


def test_listops_cache_refuses_a_payload(tmp_path, marker):
    from zoo.data.listops import ListOpsConfig, ListOpsDataset

    settings = dict(n_train=4, n_val=2, n_test=2, min_length=5, max_length=30)
    cache = tmp_path / "listops" / ListOpsConfig(**settings).cache_name()
    cache.parent.mkdir()
    torch.save({"train": Payload(marker)}, cache)
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        ListOpsDataset("train", root=tmp_path, **settings)
    assert not marker.exists()
