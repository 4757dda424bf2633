"""eval.py end to end through Hydra on a tiny training run: checkpoint, run directory, export and
``model=NAME pretrained_file=PATH`` give the training run's top-1; metrics, confusion matrix, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("hydra")  # the entry points' dependency (the GPU machine runs the kernel tests without it)
from hydra import compose, initialize_config_dir  # noqa: E402

import zoo  # noqa: E402,F401  (registers the zoo's models with timm)
from zoo.training.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from zoo.training.evaluation import (  # noqa: E402
    evaluate_classifier,
    load_model_for_eval,
    run_eval,
    save_confusion_matrix_png,
)
from zoo.training.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_KWARGS = {"depth": 2, "embed_dim": 32, "num_heads": 2}
TRAIN = [
    "model=kat_t",
    "+model.kwargs.depth=2",
    "+model.kwargs.embed_dim=32",
    "+model.kwargs.num_heads=2",
    "data.train_subset=256",
    "data.eval_subset=128",
    "batch_size=32",
    "progress=false",
    "epochs=1",
    "device=cpu",
]
# train.py evaluates with eval_batch_size = 2 * batch_size: the same batches give bit-identical logits.
EVAL = ["data.eval_subset=128", "batch_size=64", "device=cpu"]


def _compose(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def _eval_cfg(out_dir: Path, *overrides: str):
    return _compose("eval", *EVAL, f"out_dir={out_dir}", *overrides)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    train(_compose("train", *TRAIN, f"run_dir={run_dir}"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"dir": run_dir, "top1": rows[-1]["top1"], "top5": rows[-1]["top5"], "loss": rows[-1]["eval_loss"]}


def _check_outputs(summary: dict, out_dir: Path) -> dict:
    assert summary["out_dir"] == str(out_dir) and summary["num_images"] == 128
    assert Path(summary["metrics_file"]) == out_dir / "metrics.json"
    assert Path(summary["confusion_matrix"]) == out_dir / "confusion_matrix.png"
    assert (out_dir / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["images_per_s"] > 0 and summary["peak_memory_bytes"] > 0
    metrics = json.loads((out_dir / "metrics.json").read_text())
    matrix = torch.tensor(metrics["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 128
    assert metrics["class_counts"] == matrix.sum(dim=1).tolist()
    assert metrics["top1"] == pytest.approx(100.0 * matrix.diagonal().sum().item() / 128)
    # per-class accuracies weighted by class counts average to top-1
    weighted = sum(a * n for a, n in zip(metrics["per_class_accuracy"], metrics["class_counts"], strict=True) if n)
    assert weighted / 128 == pytest.approx(metrics["top1"])
    return metrics


@pytest.mark.parametrize("source", ["last.pt", "best.pt", ".", "export"])
def test_eval_reproduces_the_training_top1(run, tmp_path, source):
    out_dir = tmp_path / "out"
    summary = run_eval(_eval_cfg(out_dir, f"checkpoint={run['dir'] / source}"))
    assert summary["top1"] == pytest.approx(run["top1"], abs=1e-9)
    assert summary["top5"] == pytest.approx(run["top5"], abs=1e-9)
    assert summary["loss"] == pytest.approx(run["loss"], rel=1e-5)
    metrics = _check_outputs(summary, out_dir)
    assert metrics["model"]["architecture"] == "kat_t" and metrics["img_size"] == 8


def test_load_model_for_eval_returns_the_build_arguments(run):
    model, args = load_model_for_eval(checkpoint=run["dir"])
    assert not model.training
    assert {"img_size": 8, "patch_size": 4, "in_chans": 1, "num_classes": 10, **TINY_KWARGS}.items() <= args.items()
    trained = load_checkpoint(run["dir"] / "last.pt")["model"]
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    exported, export_args = load_model_for_eval(checkpoint=run["dir"] / "export")
    assert {"img_size": 8, "in_chans": 1, "num_classes": 10}.items() <= export_args.items()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), exported(x))


def test_model_with_pretrained_file(run, tmp_path):
    weights = tmp_path / "kat_tiny.pth"
    torch.save(load_checkpoint(run["dir"] / "last.pt")["model"], weights)
    # as in train.py: img_size, patch_size, in_chans and num_classes come from the data config
    kwargs = [f"+model.kwargs.{k}={v}" for k, v in TINY_KWARGS.items()]
    out_dir = tmp_path / "out"
    summary = run_eval(_eval_cfg(out_dir, "model=kat_t", f"pretrained_file={weights}", *kwargs))
    assert summary["top1"] == pytest.approx(run["top1"], abs=1e-9)
    _check_outputs(summary, out_dir)
    # the Python API takes a plain name and every argument explicitly
    model, args = load_model_for_eval(
        model="kat_t",
        pretrained_file=weights,
        model_kwargs=dict(img_size=8, patch_size=4, in_chans=1, num_classes=10, **TINY_KWARGS),
    )
    assert {"architecture": "kat_t", "img_size": 8, "num_classes": 10, "in_chans": 1}.items() <= args.items()
    trained = load_checkpoint(run["dir"] / "last.pt")["model"]
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


def test_deploy_evaluates_the_re_parameterised_form(run, tmp_path):
    """deploy=true folds an InceptionNeXt (random weights, digits at 32 px) after loading: the same predictions as its
    training form, metrics.json says so; a model without a deployed form is a clear error."""
    from tests.helpers import randomise

    small = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), in_chans=1, num_classes=10)
    weights = tmp_path / "atto.pth"
    torch.save(randomise(zoo.create_model("inceptionnext_a", **small)).state_dict(), weights)
    kwargs = ["+model.kwargs.depths=[1,1,1,1]", "+model.kwargs.dims=[16,32,64,128]", "data.img_size=32"]
    summaries = {}
    for deploy in (False, True):
        out_dir = tmp_path / f"deploy-{deploy}"
        cfg = _eval_cfg(out_dir, "model=inceptionnext_a", f"pretrained_file={weights}", *kwargs, f"deploy={deploy}")
        summaries[deploy] = run_eval(cfg)
        assert json.loads((out_dir / "metrics.json").read_text())["deployed"] is deploy
    # the same predictions up to rounding: an image whose two best logits tie within it may flip
    assert summaries[True]["top1"] == pytest.approx(summaries[False]["top1"], abs=100 / 128 + 1e-9)
    assert summaries[True]["loss"] == pytest.approx(summaries[False]["loss"], rel=1e-4)
    with pytest.raises(ValueError, match="deploy=true evaluates .* kat_t has none"):
        run_eval(_eval_cfg(tmp_path / "o", f"checkpoint={run['dir']}", "deploy=true"))


def test_evaluate_classifier_counts_exactly():
    class Fixed(nn.Module):  # logits favour class (x + offset), second choice class x
        def forward(self, x):
            pred, offset = x[:, 0].long(), x[:, 1].long()
            logits = torch.zeros(x.shape[0], 4)
            logits[torch.arange(x.shape[0]), pred] = 1.0
            logits[torch.arange(x.shape[0]), (pred + offset) % 4] += 2.0
            return logits

    # true classes 0,0,1,1,2 (class 3 absent); predictions 0,1,1,1,0; second choices: 0 for the 2nd image
    images = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 0], [2, 2]], dtype=torch.float32)
    targets = torch.tensor([0, 0, 1, 1, 2])
    loader = [(images[:3], targets[:3]), (images[3:], targets[3:])]
    m = evaluate_classifier(Fixed(), loader, 4, "cpu")
    expected = torch.zeros(4, 4, dtype=torch.int64)
    for t, p in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 0)]:
        expected[t, p] += 1
    assert m["confusion_matrix"].dtype == torch.int64 and torch.equal(m["confusion_matrix"], expected)
    assert m["top1"] == pytest.approx(60.0) and m["top5"] == pytest.approx(100.0)
    assert m["per_class_accuracy"] == [50.0, 100.0, 0.0, None] and m["class_counts"] == [2, 2, 1, 0]
    assert m["num_images"] == 5 and m["images_per_s"] > 0 and m["peak_memory_bytes"] > 0
    with pytest.raises(ValueError, match=r"expected \[N, 3\]"):
        evaluate_classifier(Fixed(), loader, 3, "cpu")


def test_confusion_matrix_png_for_many_classes(tmp_path):
    matrix = torch.randint(0, 5, (100, 100)) + 50 * torch.eye(100, dtype=torch.int64)
    path = save_confusion_matrix_png(matrix, tmp_path / "cm.png", [f"class_{i}" for i in range(100)])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="square"):
        save_confusion_matrix_png(torch.zeros(2, 3), tmp_path / "bad.png")


def test_bad_inputs_give_clear_errors(run, tmp_path):
    with pytest.raises(ValueError, match="nothing to evaluate"):
        load_model_for_eval()
    with pytest.raises(ValueError, match="not both"):
        load_model_for_eval(checkpoint=run["dir"], model="kat_t", pretrained_file="x.pth")
    with pytest.raises(ValueError, match="needs pretrained_file"):
        load_model_for_eval(model="kat_t")
    with pytest.raises(ValueError, match="needs model=NAME"):
        load_model_for_eval(pretrained_file="x.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_for_eval(checkpoint=tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_for_eval(model="kat_t", pretrained_file=tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        load_model_for_eval(checkpoint=tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_model_for_eval(checkpoint=tmp_path / "junk.pt")
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="unknown model 'kat_tt'"):
        load_model_for_eval(model="kat_tt", pretrained_file=weights)
    with pytest.raises(ValueError, match="amp must be"):
        run_eval(_eval_cfg(tmp_path / "o", f"checkpoint={run['dir']}", "amp=fp8"))
    small = tmp_path / "small.pth"
    five = zoo.create_model("kat_t", img_size=8, patch_size=4, in_chans=1, num_classes=5, **TINY_KWARGS)
    torch.save(five.state_dict(), small)
    kwargs = [f"+model.kwargs.{k}={v}" for k, v in {**TINY_KWARGS, "num_classes": 5}.items()]
    with pytest.raises(ValueError, match="predicts 5 classes but digits has 10"):
        run_eval(_eval_cfg(tmp_path / "o", "model=kat_t", f"pretrained_file={small}", *kwargs))


def test_cli_summary_is_the_last_stdout_line(run, tmp_path):
    out_dir = tmp_path / "cli"
    command = [sys.executable, str(ROOT / "eval.py"), f"checkpoint={run['dir']}", *EVAL, f"hydra.run.dir={out_dir}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["top1"] == pytest.approx(run["top1"], abs=1e-9)
    assert summary["out_dir"] == str(out_dir) and Path(summary["metrics_file"]).is_file()
    assert Path(summary["confusion_matrix"]).is_file()
