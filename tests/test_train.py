"""train.py end to end through Hydra on tiny data: summary, files, export, exact resume after SIGKILL, errors."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

pytest.importorskip("hydra")  # the entry points' dependency (the GPU machine runs the kernel tests without it)
from hydra import compose, initialize_config_dir  # noqa: E402

import zoo  # noqa: E402,F401  (registers the zoo's models with timm)
from tests.data.test_data import _fake_cifar, _image_folder, skip_cifar_md5  # noqa: F401  (a fixture)
from zoo.training.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from zoo.training.evaluation import evaluate_classifier  # noqa: E402
from zoo.training.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# A small KAT (2 blocks of 32 dims) on a digits subset: seconds per epoch on a CPU.
TINY = [
    "model=kat_t",
    "+model.kwargs.depth=2",
    "+model.kwargs.embed_dim=32",
    "+model.kwargs.num_heads=2",
    "data.train_subset=256",
    "data.eval_subset=128",
    "batch_size=32",
    "progress=false",
    "sched.warmup_epochs=1",
    "device=cpu",  # exact resume and the 2-process gloo run are CPU promises, also on a GPU machine
]


def _compose(run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=[*TINY, f"run_dir={run_dir}", *overrides])


def _cli(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *TINY, f"run_dir={run_dir}", f"hydra.run.dir={run_dir}", *overrides]


def _model_state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_train_writes_checkpoints_metrics_and_an_export(tmp_path):
    run_dir = tmp_path / "run"
    summary = train(_compose(run_dir, "epochs=2"))
    assert summary["epochs"] == 2 and summary["run_dir"] == str(run_dir)
    assert summary["checkpoint"] == str(run_dir / "last.pt")
    assert 0 <= summary["final_top1"] <= summary["best_top1"] <= 100
    for name in (
        "last.pt",
        "best.pt",
        "metrics.jsonl",
        "metrics.csv",
        "export/model.safetensors",
        "export/config.json",
    ):
        assert (run_dir / name).is_file(), name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1]["top1"] == summary["final_top1"]
    assert (run_dir / "metrics.csv").read_text().splitlines()[0].startswith("epoch,step,train_loss,top1")
    # the export rebuilds the trained model through timm's local-dir loader
    checkpoint = load_checkpoint(run_dir / "last.pt")
    rebuilt = timm.create_model(f"local-dir:{run_dir / 'export'}", pretrained=True).eval()
    trained = timm.create_model(
        "kat_t", img_size=8, patch_size=4, in_chans=1, num_classes=10, depth=2, embed_dim=32, num_heads=2
    ).eval()
    trained.load_state_dict(checkpoint["model"])
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), trained(x))


def test_summary_is_the_last_stdout_line(tmp_path):
    run_dir = tmp_path / "cli"
    result = subprocess.run(_cli(run_dir, "epochs=1"), capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"best_top1", "final_top1", "epochs", "run_dir", "checkpoint"} <= set(summary)
    assert Path(summary["checkpoint"]).is_file()


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    overrides = ("epochs=6", "deterministic=true", "ema.enabled=true", "mixup.mixup_alpha=0.2", "data.train_subset=512")
    # Bitwise on one machine, given one configuration: CPU reductions split over threads round differently for
    # another thread count, so the killed and resumed processes run on as many threads as this reference run.
    reference = train(_compose(tmp_path / "reference", *overrides))
    same_threads = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    run_dir = tmp_path / "killed"
    process = subprocess.Popen(
        _cli(run_dir, *overrides), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=same_threads
    )
    deadline = time.time() + 240
    while not (run_dir / "last.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # somewhere inside the second epoch (or while writing its checkpoint)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = load_checkpoint(run_dir / "last.pt")["epoch"]
    assert killed_at < 5, "the run finished before it was killed; the test did not test resuming"
    result = subprocess.run(
        _cli(tmp_path / "unused", *overrides, f"resume={run_dir}"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=same_threads,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["run_dir"] == str(run_dir)
    resumed, uninterrupted = load_checkpoint(run_dir / "last.pt"), load_checkpoint(Path(reference["checkpoint"]))
    for part in ("model", "ema"):
        assert all(torch.equal(resumed[part][k], uninterrupted[part][k]) for k in uninterrupted[part]), part
    moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in uninterrupted["optimizer"]["state"].values()]
    resumed_moments = [(s["exp_avg"], s["exp_avg_sq"]) for s in resumed["optimizer"]["state"].values()]
    assert all(
        torch.equal(a, b)
        for pair, other in zip(moments, resumed_moments, strict=True)
        for a, b in zip(pair, other, strict=True)
    )

    def without_timing(history):
        return [{k: v for k, v in row.items() if k != "images_per_s"} for row in history]

    assert without_timing(resumed["history"]) == without_timing(uninterrupted["history"])
    assert resumed["best_top1"] == uninterrupted["best_top1"]
    assert summary["final_top1"] == reference["final_top1"]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]


def test_corrupt_and_mismatched_checkpoints_are_errors(tmp_path):
    bad = tmp_path / "bad" / "last.pt"
    bad.parent.mkdir()
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train(_compose(tmp_path / "x", "epochs=1", f"resume={bad}"))
    good = train(_compose(tmp_path / "good", "epochs=1"))
    with pytest.raises(CheckpointError, match="does not match"):
        train(_compose(tmp_path / "y", "epochs=2", "model.kwargs.embed_dim=64", f"resume={good['run_dir']}"))
    with pytest.raises(FileNotFoundError):
        train(_compose(tmp_path / "z", "epochs=1", f"resume={tmp_path / 'nowhere'}"))


def test_the_run_directory_keeps_the_log_also_when_resumed(tmp_path):
    """The run directory's train.log holds the run's log lines wherever the directory is (``run_dir=`` outside
    Hydra's output directory; the root logger at pytest's WARNING), a resumed run appends to it (here one that had
    finished: it says there is nothing to train), and a handler already writing there (Hydra's own) is not
    doubled."""
    run_dir = tmp_path / "run"
    train(_compose(run_dir, "epochs=1"))
    first = (run_dir / "train.log").read_text().splitlines()
    assert sum("epoch 1/1: {" in line for line in first) == 1

    hydra_like = logging.FileHandler(run_dir / "train.log")
    logging.getLogger().addHandler(hydra_like)
    try:
        summary = train(_compose(tmp_path / "elsewhere", "epochs=1", f"resume={run_dir}"))
    finally:
        logging.getLogger().removeHandler(hydra_like)
        hydra_like.close()
    assert summary["run_dir"] == str(run_dir)
    lines = (run_dir / "train.log").read_text().splitlines()
    assert lines[: len(first)] == first
    finished = [line for line in lines[len(first) :] if "has trained 1 epochs (epochs=1): nothing to train" in line]
    assert len(finished) == 1
    assert logging.getLogger().handlers.count(hydra_like) == 0 and not any(
        isinstance(h, logging.FileHandler) and h.baseFilename == str(run_dir / "train.log")
        for h in logging.getLogger().handlers
    ), "the run's handler outlived the run"


def test_the_run_log_with_logging_unconfigured(tmp_path):
    """train() called from Python with logging left as it is: the run's train.log gets the zoo's INFO lines, and
    stderr shows warnings (as Python's last-resort handler would), not INFO lines; nothing stays attached."""
    script = (
        "import logging, sys\n"
        "from pathlib import Path\n"
        "from zoo.training.trainer import _logging_to\n"
        "log = logging.getLogger('zoo.train')\n"
        f"with _logging_to(Path({str(tmp_path / 'train.log')!r})):\n"
        "    log.info('an info line')\n"
        "    log.warning('a warning line')\n"
        "assert logging.getLogger().handlers == [] and logging.getLogger('zoo').level == logging.NOTSET\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "train.log").read_text()
    assert "an info line" in written and "a warning line" in written
    assert "a warning line" in result.stderr and "an info line" not in result.stderr


def test_bad_names_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="closest names: .*kat_t"):
        train(_compose(tmp_path / "a", "epochs=1", "model.name=kat_tt"))
    with pytest.raises(ValueError, match="digits"):
        train(_compose(tmp_path / "b", "epochs=1", "data.name=digitz"))
    with pytest.raises(FileNotFoundError, match="data.download=true"):
        train(_compose(tmp_path / "c", "epochs=1", "data=cifar10", f"data.root={tmp_path / 'empty'}"))
    with pytest.raises(ValueError, match="amp must be one of"):
        train(_compose(tmp_path / "d", "epochs=1", "amp=fp8"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epochs=0", r"epochs must be a whole number >= 1, got 0"),
        ("batch_size=2.5", r"batch_size must be a whole number >= 1, got 2.5"),
        ("eval_batch_size=0", r"eval_batch_size must be a whole number >= 1 \(or null\), got 0"),
        ("accum_steps=0", r"accum_steps must be a whole number >= 1, got 0"),
        ("num_workers=-1", r"num_workers must be a whole number >= 0, got -1"),
        ("log_interval_s=-5", r"log_interval_s must be a number >= 0, got -5"),
        ("checkpoint_every=true", r"checkpoint_every must be a whole number >= 0, got True"),
        ("grad_clip=0", r"grad_clip must be null or a positive number, got 0"),
    ],
)
def test_settings_out_of_range_are_clear_errors_before_any_work(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        train(_compose(tmp_path / "run", "epochs=1", override))
    assert not (tmp_path / "run").exists()


def test_cuda_graph_says_what_it_needs(tmp_path):
    """cuda_graph=true refuses, before any work and in one message, everything a captured update cannot do."""
    overrides = ("epochs=1", "cuda_graph=true", "accum_steps=2", "amp=fp16", "optim=sgd")
    expected = "cuda_graph=true needs a CUDA device .*; accum_steps=1 .*; amp=bf16 or null .*; optim adam or adamw"
    with pytest.raises(ValueError, match=expected):
        train(_compose(tmp_path / "run", *overrides))
    assert not (tmp_path / "run").exists()


def test_train_on_tiny_cifar10_files(tmp_path, skip_cifar_md5):  # noqa: F811
    _fake_cifar(tmp_path / "cifar", "cifar10")  # torchvision's binary layout: 5 x 6 train, 5 test images
    summary = train(
        _compose(
            tmp_path / "run",
            "data=cifar10",
            f"data.root={tmp_path / 'cifar'}",
            "epochs=1",
            "batch_size=8",
            "amp=bf16",
            "grad_clip=1.0",
            "accum_steps=2",
        )
    )
    assert 0 <= summary["final_top1"] <= 100
    assert load_checkpoint(Path(summary["checkpoint"]))["step"] == 1  # 3 batches of 8, accumulated by 2


def test_train_on_tiny_image_folder(tmp_path):
    _image_folder(tmp_path / "imagenet")  # 3 classes: train 4 each, val 2 each
    summary = train(
        _compose(
            tmp_path / "run",
            "data=imagenet",
            f"data.root={tmp_path / 'imagenet'}",
            "epochs=1",
            "batch_size=4",
            "data.img_size=32",
            "data.patch_size=8",
            "optim=sgd",
            "sched=constant",
            "mixup.cutmix_alpha=1.0",
            "mixup.label_smoothing=0.1",
        )
    )
    rebuilt = zoo.create_model(f"local-dir:{Path(summary['run_dir']) / 'export'}")  # weights by default
    assert rebuilt.num_classes == 3 and rebuilt.patch_embed.patch_size == (8, 8)


def test_wandb_is_optional(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ImportError, match=r'pip install -e ".\[wandb\]"'):
        train(_compose(tmp_path / "w", "epochs=1", "logger=wandb"))


def test_list_valued_model_arguments_reach_the_model_as_python_lists(tmp_path):
    """``+model.kwargs.depths=[...]`` from the command line is an OmegaConf ListConfig: the model, the checkpoint
    and the export must get a plain list."""
    from zoo.data import DATASETS
    from zoo.training.trainer import build_model

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["model=nat_m", "+model.kwargs.depths=[1,1,1,1]", f"run_dir={tmp_path}"])
    model, kwargs = build_model(cfg, DATASETS["digits"], 32, {})
    assert type(kwargs["depths"]) is list and kwargs["depths"] == [1, 1, 1, 1]
    assert [len(level.blocks) for level in model.levels] == [1, 1, 1, 1]
    json.dumps(kwargs)  # what the export's config.json holds: a ListConfig here is a TypeError


def test_every_registered_model_has_a_config():
    configs = {p.stem for p in (ROOT / "configs" / "model").glob("*.yaml")}
    assert set(zoo.list_models()) <= configs


def test_two_process_ddp_gives_one_summary_and_one_checkpoint(tmp_path):
    """torchrun with 2 CPU processes (gloo): rank 0 alone prints and writes; accuracy close to one process with
    the same global batch."""
    single = train(_compose(tmp_path / "single", "epochs=2", "batch_size=32", "data.eval_subset=127"))
    run_dir = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *_cli(run_dir, "epochs=2", "batch_size=16", "data.eval_subset=127", "accum_steps=2")[1:],
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1
    summary = json.loads(summaries[0])
    assert summary["run_dir"] == str(run_dir) and sorted(p.name for p in run_dir.glob("*.pt")) == ["best.pt", "last.pt"]
    state = load_checkpoint(run_dir / "last.pt")
    assert state["step"] == 2 * (256 // 64)  # global batch 16 x 2 processes x 2 accumulated = 64
    assert len(state["rng"]) == 2  # each process's RNG state, for an exact resume
    assert abs(summary["final_top1"] - single["final_top1"]) <= 15.0
    # The top-1 is reduced over the two shards (64 + 63 images) as counts: a whole number of the 127 images (a mean
    # of the two shards' percentages would not be), and one process evaluating the saved weights agrees to within
    # one image (the shards batch other images together, on one thread each: a near-tie may round the other way).
    correct = summary["final_top1"] * 127 / 100
    assert correct == pytest.approx(round(correct), abs=1e-6), correct
    from zoo.data import create_loaders

    model = timm.create_model("kat_t", **state["model_args"])
    model.load_state_dict(state["model"])
    _, eval_loader, _ = create_loaders("digits", img_size=8, batch_size=32, eval_subset=127, train_subset=256)
    assert abs(evaluate_classifier(model, eval_loader, 10, "cpu")["top1"] - summary["final_top1"]) <= 100 / 127 + 1e-9
    assert (run_dir / "report.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "model,experiment,drop_path", [("kat_t", "kat_imagenet", 0.1), ("kat_b", "kat_b_imagenet", 0.4)]
)
def test_paper_recipes_compose(model, experiment, drop_path):
    """The KAT ImageNet recipe (docs/semantics.md §1.5) overrides the defaults; the command line still overrides
    the recipe."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", f"experiment={experiment}", "run_dir=x", "optim.lr=5e-4"])
    assert (cfg.data.name, cfg.epochs, cfg.batch_size, cfg.amp) == ("imagenet", 300, 128, "bf16")
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.sched.name) == ("adamw", 5e-4, 0.05, "cosine")
    assert (cfg.mixup.mixup_alpha, cfg.mixup.cutmix_alpha, cfg.mixup.label_smoothing) == (0.8, 1.0, 0.1)
    assert cfg.data.augment == {"auto_augment": "rand-m9-mstd0.5", "re_prob": 0.25}
    assert cfg.ema.enabled and cfg.model.kwargs.drop_path_rate == drop_path


def test_precompile_runs_once_on_cuda_by_default_and_leaves_the_run_unchanged(tmp_path, monkeypatch):
    from zoo.training import trainer

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert trainer._precompiles(_compose(tmp_path), cuda)
    assert not trainer._precompiles(_compose(tmp_path), cpu)
    assert not trainer._precompiles(_compose(tmp_path, "precompile=false"), cuda)
    assert not trainer._precompiles(_compose(tmp_path, "compile=true"), cuda)

    # forced on the CPU (where the pass compiles nothing): one pass, before the first update, that changes nothing
    plain = train(_compose(tmp_path / "plain", "epochs=1", "deterministic=true"))
    calls = []

    def counted(forward_loss, model, workers=None):
        calls.append(workers)
        return trainer_precompile(forward_loss, model, workers)

    trainer_precompile = trainer.precompile
    monkeypatch.setattr(trainer, "_precompiles", lambda cfg, device: True)
    monkeypatch.setattr(trainer, "precompile", counted)
    precompiled = train(_compose(tmp_path / "precompiled", "epochs=1", "deterministic=true"))
    assert len(calls) == 1 and calls[0] >= 1
    assert precompiled["final_top1"] == plain["final_top1"]
    before, after = _model_state(Path(plain["checkpoint"])), _model_state(Path(precompiled["checkpoint"]))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
