"""Sequence tasks end to end: train.py and eval.py through Hydra on sDigits and the copying task (tiny S4D models),
and S4D learning a short copying task."""

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
    "model=s4d_t", "+model.kwargs.d_model=16", "+model.kwargs.n_layers=1", "+model.kwargs.d_state=8",
    "+model.kwargs.backend=torch", "data.train_subset=128", "data.eval_subset=64", "batch_size=32", "progress=false",
    "sched.warmup_epochs=0", "device=cpu",
]  # fmt: skip


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one intra-op thread (no thread start-up per op, no oversubscription when
    pytest-xdist runs two workers on two cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _compose(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def test_train_and_eval_on_sdigits(tmp_path, one_thread):
    run_dir = tmp_path / "run"
    summary = train(_compose("train", *TINY, "data=sdigits", "epochs=2", f"run_dir={run_dir}"))
    assert summary["model"] == "s4d_t" and summary["data"] == "sdigits" and summary["epochs"] == 2
    assert 0 <= summary["final_top1"] <= summary["best_top1"] <= 100
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] + 0.5
    # eval.py on the run directory gives the run's last top-1 on the same subset
    out = run_eval(_compose("eval", "data=sdigits", "data.eval_subset=64", "batch_size=64", "device=cpu",
                            f"checkpoint={run_dir}", f"out_dir={tmp_path / 'eval'}"))  # fmt: skip
    assert out["num_images"] == 64 and abs(out["top1"] - rows[-1]["top1"]) < 1e-9
    # and on the export (timm's local-dir layout)
    out = run_eval(_compose("eval", "data=sdigits", "data.eval_subset=64", "batch_size=64", "device=cpu",
                            f"checkpoint={run_dir / 'export'}", f"out_dir={tmp_path / 'eval2'}"))  # fmt: skip
    assert abs(out["top1"] - rows[-1]["top1"]) < 1e-9
    # and model=s4d_t with a state-dict file, the data-derived arguments from the data config as in train.py
    weights = tmp_path / "weights.pth"
    torch.save(torch.load(run_dir / "last.pt", weights_only=False)["model"], weights)
    tiny = [o for o in TINY if o.startswith("+model.kwargs.")]
    out = run_eval(_compose("eval", "model=s4d_t", *tiny, "data=sdigits", "data.eval_subset=64", "batch_size=64",
                            "device=cpu", f"pretrained_file={weights}", f"out_dir={tmp_path / 'eval3'}"))  # fmt: skip
    assert abs(out["top1"] - rows[-1]["top1"]) < 1e-9


def test_train_py_cli_on_sdigits(tmp_path):
    run_dir = tmp_path / "cli"
    command = [sys.executable, str(ROOT / "train.py"), *TINY, "data=sdigits", "epochs=1", f"run_dir={run_dir}",
               f"hydra.run.dir={run_dir}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["model"] == "s4d_t" and Path(summary["checkpoint"]).is_file()


def test_copying_recipe_trains_and_evaluates_per_token(tmp_path, one_thread):
    run_dir = tmp_path / "copy"
    summary = train(_compose("train", *TINY, "experiment=s4d_copying", "epochs=1", f"run_dir={run_dir}"))
    assert summary["data"] == "copying" and 0 <= summary["final_top1"] <= 100
    out = run_eval(_compose("eval", "data=copying", "data.eval_subset=64", "batch_size=64", "device=cpu",
                            f"checkpoint={run_dir}", f"out_dir={tmp_path / 'eval'}"))  # fmt: skip
    assert out["num_images"] == 64 * 10  # one prediction per copied token
    assert abs(out["top1"] - summary["final_top1"]) < 1e-9


def test_s4d_learns_a_short_copying_task(one_thread):
    """state-spaces' copying task (10 tokens from 1..8, 100 blanks, 10 markers): >= 99% token accuracy on 256 held-out
    sequences; a 2-layer, 32-channel S4D gets there in about 100 steps of 32 fresh sequences (seconds on a CPU)."""
    torch.manual_seed(0)
    l_noise, l_memorize, n_tokens = 100, 10, 10
    model = SequenceModel(num_classes=n_tokens, vocab_size=n_tokens, d_model=32, n_layers=2, d_state=64, dropout=0.0,
                          global_pool="", l_output=l_memorize, backend="torch")  # fmt: skip
    optimizer = create_optimizer(model, "adamw", 0.01, 0.0)
    generator = torch.Generator().manual_seed(0)
    x_test, y_test = copying_batch(256, l_noise, l_memorize, n_tokens, torch.Generator().manual_seed(1))
    accuracy = 0.0
    for step in range(1, 401):
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
    assert accuracy >= 0.99, f"token accuracy {accuracy:.4f} after {step} steps"


def test_scifar_recipe_composes():
    """state-spaces' sCIFAR recipe: lr 0.01, weight decay 0.05, SSM lr 0.001, cosine, 100 epochs, batch 64."""
    cfg = _compose("train", "model=s4d_t", "experiment=s4d_scifar", "run_dir=x", "data=scifar_gray")
    assert (cfg.data.name, cfg.epochs, cfg.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (
        "scifar_gray", 100, 64, 0.01, 0.05)
    assert cfg.sched.name == "cosine" and cfg.model.kwargs.ssm_lr == 0.001 and cfg.model.kwargs.dropout == 0.1
