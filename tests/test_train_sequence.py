"""Sequence tasks end to end: train.py and eval.py through Hydra on sDigits, the copying task, ListOps (padded
variable-length batches) and associative recall (tiny S4D and long-conv models); S4D and long convolutions learning
a short copying task, and S4D beating the majority class on a short ListOps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("hydra")  # the entry points' dependency (the GPU machine runs the kernel tests without it)
from hydra import compose, initialize_config_dir  # noqa: E402

import zoo  # noqa: E402,F401  (registers the zoo's models with timm)
from zoo.data.sequences import copying_batch  # noqa: E402
from zoo.models.sequence import SequenceModel  # noqa: E402
from zoo.training.evaluation import run_eval  # noqa: E402
from zoo.training.optim import create_optimizer  # noqa: E402
from zoo.training.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model=s4d_t",
    "+model.kwargs.d_model=16",
    "+model.kwargs.n_layers=1",
    "+model.kwargs.d_state=8",
    "+model.kwargs.backend=torch",
    "data.train_subset=128",
    "data.eval_subset=64",
    "batch_size=32",
    "progress=false",
    "sched.warmup_epochs=0",
    "device=cpu",
]


def _compose(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def _train_copying(model, l_noise: int, l_memorize: int, n_tokens: int, max_steps: int = 400) -> tuple[float, int]:
    """AdamW (lr 0.01) on batches of 32 fresh copying sequences; every 25 steps the token accuracy on 256 held-out
    sequences, stopping at 99%. Returns (accuracy, steps)."""
    optimizer = create_optimizer(model, "adamw", 0.01, 0.0)
    generator = torch.Generator().manual_seed(0)
    x_test, y_test = copying_batch(256, l_noise, l_memorize, n_tokens, torch.Generator().manual_seed(1))
    accuracy = 0.0
    for step in range(1, max_steps + 1):
        x, y = copying_batch(32, l_noise, l_memorize, n_tokens, generator)
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, n_tokens), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0:
            model.eval()
            with torch.no_grad():
                accuracy = (model(x_test).argmax(-1) == y_test).float().mean().item()
            model.train()
            if accuracy >= 0.99:
                break
    return accuracy, step


def test_train_and_eval_on_sdigits(tmp_path, one_intra_op_thread):
    run_dir = tmp_path / "run"
    summary = train(_compose("train", *TINY, "data=sdigits", "epochs=2", f"run_dir={run_dir}"))
    assert summary["model"] == "s4d_t" and summary["data"] == "sdigits" and summary["epochs"] == 2
    assert 0 <= summary["final_top1"] <= summary["best_top1"] <= 100
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] + 0.5
    # eval.py on the run directory gives the run's last top-1 on the same subset
    out = run_eval(
        _compose(
            "eval",
            "data=sdigits",
            "data.eval_subset=64",
            "batch_size=64",
            "device=cpu",
            f"checkpoint={run_dir}",
            f"out_dir={tmp_path / 'eval'}",
        )
    )
    assert out["num_images"] == 64 and abs(out["top1"] - rows[-1]["top1"]) < 1e-9
    # and on the export (timm's local-dir layout)
    out = run_eval(
        _compose(
            "eval",
            "data=sdigits",
            "data.eval_subset=64",
            "batch_size=64",
            "device=cpu",
            f"checkpoint={run_dir / 'export'}",
            f"out_dir={tmp_path / 'eval2'}",
        )
    )
    assert abs(out["top1"] - rows[-1]["top1"]) < 1e-9
    # and model=s4d_t with a state-dict file, the data-derived arguments from the data config as in train.py
    weights = tmp_path / "weights.pth"
    torch.save(torch.load(run_dir / "last.pt", weights_only=False)["model"], weights)
    tiny = [o for o in TINY if o.startswith("+model.kwargs.")]
    out = run_eval(
        _compose(
            "eval",
            "model=s4d_t",
            *tiny,
            "data=sdigits",
            "data.eval_subset=64",
            "batch_size=64",
            "device=cpu",
            f"pretrained_file={weights}",
            f"out_dir={tmp_path / 'eval3'}",
        )
    )
    assert abs(out["top1"] - rows[-1]["top1"]) < 1e-9


def test_train_py_cli_on_sdigits(tmp_path):
    run_dir = tmp_path / "cli"
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        *TINY,
        "data=sdigits",
        "epochs=1",
        f"run_dir={run_dir}",
        f"hydra.run.dir={run_dir}",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["model"] == "s4d_t" and Path(summary["checkpoint"]).is_file()


def test_copying_recipe_trains_and_evaluates_per_token(tmp_path, one_intra_op_thread):
    run_dir = tmp_path / "copy"
    summary = train(_compose("train", *TINY, "experiment=s4d_copying", "epochs=1", f"run_dir={run_dir}"))
    assert summary["data"] == "copying" and 0 <= summary["final_top1"] <= 100
    out = run_eval(
        _compose(
            "eval",
            "data=copying",
            "data.eval_subset=64",
            "batch_size=64",
            "device=cpu",
            f"checkpoint={run_dir}",
            f"out_dir={tmp_path / 'eval'}",
        )
    )
    assert out["num_images"] == 64 * 10  # one prediction per copied token
    assert abs(out["top1"] - summary["final_top1"]) < 1e-9


def test_s4d_learns_a_short_copying_task(one_intra_op_thread):
    """state-spaces' copying task (10 tokens from 1..8, 100 blanks, 10 markers): >= 99% token accuracy on 256 held-out
    sequences; a 2-layer, 32-channel S4D gets there in about 100 steps of 32 fresh sequences (seconds on a CPU)."""
    torch.manual_seed(0)
    l_noise, l_memorize, n_tokens = 100, 10, 10
    model = SequenceModel(
        num_classes=n_tokens,
        vocab_size=n_tokens,
        d_model=32,
        n_layers=2,
        d_state=64,
        dropout=0.0,
        global_pool="",
        l_output=l_memorize,
        backend="torch",
    )
    accuracy, step = _train_copying(model, l_noise, l_memorize, n_tokens)
    assert accuracy >= 0.99, f"token accuracy {accuracy:.4f} after {step} steps"


def test_scifar_recipe_composes():
    """state-spaces' sCIFAR recipe: lr 0.01, weight decay 0.05, SSM lr 0.001, cosine, 100 epochs, batch 64."""
    cfg = _compose("train", "model=s4d_t", "experiment=s4d_scifar", "run_dir=x", "data=scifar_gray")
    assert (cfg.data.name, cfg.epochs, cfg.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (
        "scifar_gray",
        100,
        64,
        0.01,
        0.05,
    )
    assert cfg.sched.name == "cosine" and cfg.model.kwargs.ssm_lr == 0.001 and cfg.model.kwargs.dropout == 0.1


def test_longconv_learns_a_short_copying_task(one_intra_op_thread):
    """The copying task as above with a 2-layer, 32-channel long-conv model (kernel length 120, no smoothing as in
    safari's recipes: the 7-tap moving average blurs the lag-110 tap the task needs): >= 99% token accuracy on 256
    held-out sequences in about 100 steps (seconds on a CPU)."""
    torch.manual_seed(0)
    l_noise, l_memorize, n_tokens = 100, 10, 10
    model = SequenceModel(
        num_classes=n_tokens,
        vocab_size=n_tokens,
        d_model=32,
        n_layers=2,
        dropout=0.0,
        layer="longconv",
        l_max=120,
        smooth_window=None,
        global_pool="",
        l_output=l_memorize,
        backend="torch",
    )
    assert model.s4_layers[0].kernel.drop.p == 0.1 and model.s4_layers[0].kernel.lam == 0.003  # the defaults
    accuracy, step = _train_copying(model, l_noise, l_memorize, n_tokens)
    assert accuracy >= 0.99, f"token accuracy {accuracy:.4f} after {step} steps"


def test_listops_trains_and_evaluates_with_padded_batches(tmp_path, one_intra_op_thread, monkeypatch):
    """ListOps through train.py and eval.py: padded batches with lengths reach the model in both loops."""
    from zoo.data import sequences

    monkeypatch.setitem(
        sequences.LISTOPS_PRESETS,
        "listopsshort",
        dict(n_train=64, n_val=4, n_test=32, min_length=20, max_length=60, seed=1),
    )
    calls = []
    forward = SequenceModel.forward

    def spy(self, x, lengths=None):
        calls.append(lengths is not None and int(lengths.max()) == x.shape[1] and int(lengths.min()) < x.shape[1])
        return forward(self, x, lengths)

    monkeypatch.setattr(SequenceModel, "forward", spy)
    run_dir = tmp_path / "listops"
    tiny = [o.replace("+model.", "++model.") for o in TINY]  # the recipe sets d_model, n_layers, d_state
    summary = train(
        _compose(
            "train", *tiny, "experiment=s4d_listops_short", "epochs=1", f"data.root={tmp_path}", f"run_dir={run_dir}"
        )
    )
    assert summary["data"] == "listops_short" and 0 <= summary["final_top1"] <= 100
    assert calls and all(calls)
    out = run_eval(
        _compose(
            "eval",
            "data=listops_short",
            f"data.root={tmp_path}",
            "batch_size=16",
            "device=cpu",
            f"checkpoint={run_dir}",
            f"out_dir={tmp_path / 'eval'}",
        )
    )
    assert out["num_images"] == 32 and abs(out["top1"] - summary["final_top1"]) < 1e-9


def test_assoc_recall_trains_with_a_longconv_model(tmp_path, one_intra_op_thread):
    tiny = [
        "model=longconv_t",
        "+model.kwargs.d_model=16",
        "+model.kwargs.n_layers=1",
        "model.kwargs.l_max=42",
        "+model.kwargs.backend=torch",
        "+model.kwargs.global_pool=last",
        "data=assoc_recall",
        "data.train_subset=64",
        "data.eval_subset=32",
        "batch_size=32",
        "progress=false",
        "device=cpu",
    ]
    summary = train(_compose("train", *tiny, "epochs=1", f"run_dir={tmp_path / 'ar'}"))
    assert summary["model"] == "longconv_t" and summary["data"] == "assoc_recall"


def test_s4d_beats_the_majority_class_on_short_listops(tmp_path, one_intra_op_thread):
    """experiment=s4d_listops_short for one epoch (156 steps on 5,000 sequences of 50-100 tokens): the test
    accuracy clearly beats the majority class (16.6% of the test split); measured 33.9% after one epoch, 37% best
    over the recipe's 10 epochs (about 3 minutes on 2 CPU cores)."""
    run_dir = tmp_path / "listops"
    summary = train(
        _compose(
            "train",
            "model=s4d_t",
            "experiment=s4d_listops_short",
            "epochs=1",
            "device=cpu",
            "+model.kwargs.backend=torch",
            "progress=false",
            f"data.root={tmp_path}",
            f"run_dir={run_dir}",
        )
    )
    from zoo.data import create_dataset

    targets = create_dataset("listops_short", "test", root=tmp_path).targets
    majority = 100.0 * torch.bincount(targets).max().item() / len(targets)
    assert majority < 20 and summary["final_top1"] >= majority + 10, (summary["final_top1"], majority)


def test_listops_and_longconv_recipes_compose():
    cfg = _compose("train", "model=s4d_s", "experiment=s4d_listops", "run_dir=x")
    assert (cfg.data.name, cfg.epochs, cfg.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (
        "listops",
        40,
        32,
        0.01,
        0.05,
    )
    k = cfg.model.kwargs
    assert (k.d_state, k.init, k.bidirectional, k.norm, k.prenorm, k.dropout) == (4, "legs", True, "batch", False, 0.0)
    cfg = _compose("train", "model=longconv_t", "experiment=longconv_listops", "run_dir=x")
    k = cfg.model.kwargs
    assert (cfg.data.name, cfg.batch_size, k.d_model, k.n_layers, k.l_max, k.lam, k.kernel_dropout, k.kernel_lr) == (
        "listops",
        50,
        128,
        8,
        2048,
        0.002,
        0.2,
        0.0005,
    )
    cfg = _compose("train", "model=longconv_s", "experiment=longconv_scifar", "run_dir=x")
    k = cfg.model.kwargs
    assert (cfg.data.name, cfg.epochs, k.d_model, k.n_layers, k.lam, k.kernel_lr, k.dropout) == (
        "scifar",
        300,
        512,
        6,
        0.001,
        0.001,
        0.1,
    )
