"""The training run behind ``train.py``: data, model, optimiser, loop, evaluation, checkpoints, export.

``train(cfg)`` takes the resolved Hydra config (``configs/train.yaml``) and returns the run summary. Everything a
run needs to continue exactly after a kill is in ``RUN_DIR/last.pt``, written atomically at every epoch end and,
with ``checkpoint_every`` / ``checkpoint_every_minutes``, within an epoch: model, optimiser, scaler, EMA, epoch,
step, RNG states, metric history and the config (the schedule is a function of the step), plus, within an epoch,
the position in it (``in_epoch``: batches done, the partial epoch's counts). A resumed run goes on at the next
batch; the batches already done are skipped by index, never loaded.

``log_interval_s`` (default 30 s) logs one progress line per interval (step, images/s, the epoch's ETA) to the
run's log, whether or not the progress bar shows.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import os
import random
import sys
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from zoo._io import atomic_write
from zoo.data import create_loaders
from zoo.data.loaders import SkipCounter
from zoo.data.registry import DatasetInfo
from zoo.kernels._backend import available_cpus
from zoo.training.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    resolve_checkpoint_path,
    restore_rng_state,
    save_checkpoint,
)
from zoo.training.distributed import (
    all_gather_object,
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
)
from zoo.training.evaluation import AMP_DTYPES, call_model, evaluate_classifier, flatten_positions, unpack_batch
from zoo.training.export import export_model
from zoo.training.finetune import freeze, inherited_model_args, load_finetune_weights, read_source
from zoo.training.graphed import CAPTURABLE_OPTIMIZERS, GraphedUpdates, host_learning_rates
from zoo.training.model_args import build_model_kwargs
from zoo.training.optim import create_optimizer
from zoo.training.report import save_run_report
from zoo.training.step import precompile

log = logging.getLogger("zoo.train")


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch; with ``deterministic``, make torch pick deterministic kernels only."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def build_model(
    cfg: Any, info: DatasetInfo, img_size: int | None, inherited: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The model of ``cfg.model`` with the data-derived arguments it takes; returns (model, model kwargs).

    The arguments come from :func:`zoo.training.model_args.build_model_kwargs` (as in eval.py): the ones the model
    config's ``data_args`` lists, from ``info``, ``img_size`` and ``cfg.data.patch_size``; then ``inherited``,
    the architecture arguments of a fine-tuning source (patch size, depth, ...); then the config's ``kwargs``.
    """
    import zoo

    kwargs = build_model_kwargs(cfg.model, info, img_size, cfg.data.get("patch_size"), inherited)
    return zoo.create_model(cfg.model.name, **kwargs), kwargs


def _criterion(cfg: Any, num_classes: int) -> tuple[nn.Module, Any]:
    """(training loss, timm Mixup or None) from ``cfg.mixup``."""
    m = cfg.mixup
    if m.mixup_alpha > 0 or m.cutmix_alpha > 0:
        mixup = Mixup(
            mixup_alpha=m.mixup_alpha,
            cutmix_alpha=m.cutmix_alpha,
            prob=m.prob,
            switch_prob=m.switch_prob,
            label_smoothing=m.label_smoothing,
            num_classes=num_classes,
        )
        return SoftTargetCrossEntropy(), mixup
    if m.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=m.label_smoothing), None
    return nn.CrossEntropyLoss(), None


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl and metrics.csv rewritten from the whole history (atomic), so a resumed run never
    duplicates or loses an epoch."""
    atomic_write(run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    atomic_write(run_dir / "metrics.csv", _csv_text(history))


def _csv_text(history: list[dict[str, Any]]) -> str:
    import io

    if not history:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[-1]))
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


class _Logger:
    """Per-epoch metrics to an optional experiment tracker (``logger=wandb``; offline by default)."""

    def __init__(self, cfg: Any, run_dir: Path, config: dict[str, Any]) -> None:
        self.run = None
        if cfg.logger.name == "none":
            return
        if cfg.logger.name != "wandb":
            raise ValueError(f"logger must be none or wandb, got {cfg.logger.name!r}")
        try:
            import wandb
        except ImportError as error:
            raise ImportError('logger=wandb needs the wandb package: pip install -e ".[wandb]"') from error
        self.run = wandb.init(
            project=cfg.logger.project,
            mode=cfg.logger.mode,
            dir=str(run_dir),
            config=config,
            name=run_dir.name,
            resume="allow",
            id=run_dir.name,
        )

    def log(self, row: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log(row, step=row["step"])

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def _config_container(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def train(cfg: Any) -> dict[str, Any] | None:
    """Run the training described by ``cfg`` (see ``configs/train.yaml``); returns the summary dict.

    Under ``torchrun`` every process trains its shard (DistributedDataParallel); rank 0 alone writes the run
    directory (checkpoints, metrics, report, export) and gets the summary; the other ranks get None.
    """
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, ctx)
    finally:
        cleanup(ctx)


@dataclass
class _Run:
    """One training run: what :func:`_set_up` builds, and the progress that a checkpoint stores (``start_epoch``,
    ``step``, the best accuracies and the metric history), which :func:`_resume` restores and the epochs advance."""

    cfg: Any
    ctx: Any
    run_dir: Path
    img_size: int | None
    train_loader: Any
    eval_loader: Any
    info: DatasetInfo
    model: nn.Module
    model_kwargs: dict[str, Any]
    frozen: list[str]
    train_model: nn.Module  # what the loop calls: the model, wrapped in DDP and/or torch.compile
    ddp_model: nn.Module  # the DDP wrapper (for no_sync), or the model
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    ema: ModelEmaV3 | None
    criterion: nn.Module
    mixup: Mixup | None
    config: dict[str, Any] = field(default_factory=dict)
    logger: _Logger | None = None
    show_progress: bool = False
    start_epoch: int = 0
    step: int = 0
    best_top1: float = -1.0
    best_ema_top1: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # this epoch's undecodable train images (data.skip_corrupt)
    # a mid-epoch checkpoint's position, this rank's part (see _resume), until the epoch it interrupted goes on
    in_epoch: dict[str, Any] | None = None
    last_checkpoint_time: float = field(default_factory=time.monotonic)  # for checkpoint_every_minutes
    graphed: GraphedUpdates | None = None  # cuda_graph=true: the updates by CUDA-graph replay
    precompile: bool = False  # precompile=true on CUDA, until the first batch has precompiled the step's kernels

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES[self.cfg.amp]

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "last.pt"

    def current_lr(self) -> float:
        """The largest learning rate of the optimiser's groups (groups with layer decay have smaller ones)."""
        if self.graphed is not None:  # the groups hold device tensors; their values are kept on the host too
            return max(self.graphed.learning_rates())
        return max(group["lr"] for group in self.optimizer.param_groups)


def _train(cfg: Any, ctx: Any) -> dict[str, Any] | None:
    """The run of :func:`train` in an initialised (possibly distributed) context: set up, resume, then per epoch
    train and evaluate/checkpoint; rank 0 exports and returns the summary. Rank 0 logs to the run directory's
    ``train.log`` from the moment it is known (:func:`_logging_to`)."""
    with ExitStack() as stack:
        return _train_logged(cfg, ctx, stack)


def _train_logged(cfg: Any, ctx: Any, stack: ExitStack) -> dict[str, Any] | None:
    run, resume_state = _set_up(cfg, ctx, stack)
    if resume_state is not None:
        _resume(run, resume_state)
        if ctx.is_main and run.start_epoch >= cfg.epochs:
            log.info(
                "%s has trained %d epochs (epochs=%d): nothing to train (a larger epochs= goes on)",
                run.run_dir,
                run.start_epoch,
                cfg.epochs,
            )
    # The schedule is a function of the step (lr, warmup, per-layer lr_scale): set it for the first update; a
    # resumed run may change epochs or the schedule.
    run.scheduler.step_update(num_updates=run.step)

    run.show_progress = ctx.is_main and (sys.stderr.isatty() if cfg.progress == "auto" else bool(cfg.progress))
    run.ddp_model = run.train_model
    if cfg.compile:  # every family traces as one graph (tests/training/test_train_step.py); DDP splits its graph
        run.train_model = torch.compile(run.train_model, fullgraph=not ctx.enabled)
    # the first batch compiles the step's Triton kernels in parallel before its update (eager and graph updates;
    # compiled ones get theirs from Inductor)
    run.precompile = _precompiles(cfg, run.device)
    if cfg.get("cuda_graph"):
        run.graphed = GraphedUpdates(
            run.model,
            run.optimizer,
            lambda outputs, targets: run.criterion(*flatten_positions(outputs, targets)),
            amp_dtype=run.amp_dtype,
            grad_clip=cfg.grad_clip,
            capture_batch=cfg.batch_size,
        )
    run.config = _config_container(cfg)
    run.logger = _Logger(cfg, run.run_dir, run.config) if ctx.is_main else None

    for epoch in range(run.start_epoch, cfg.epochs):
        seen, loss_sum, seconds = _train_one_epoch(run, epoch)
        _evaluate_and_checkpoint(run, epoch, seen, loss_sum, seconds)

    if not ctx.is_main:
        return None
    return _finish(run)


# ------------------------------------------------------------------------------------------------------------ set-up


# The numeric settings of configs/train.yaml and the least value each takes: (least, whole number, may be null).
# Checked before any work, so that a bad value is one clear error, not an assertion deep in timm or torch.
_SETTING_BOUNDS = {
    "epochs": (1, True, False),
    "batch_size": (1, True, False),
    "eval_batch_size": (1, True, True),
    "accum_steps": (1, True, False),
    "num_workers": (0, True, False),
    "img_size": (1, True, True),
    "cuda_graph_sync": (1, True, False),
    "log_interval_s": (0, False, False),
    "checkpoint_every": (0, True, False),
    "checkpoint_every_minutes": (0, False, False),
}


def _check_settings(cfg: Any) -> None:
    """Raise ``ValueError`` naming the first setting out of its range (``_SETTING_BOUNDS``), an unknown ``amp``, or
    a ``grad_clip`` that is not null or positive."""
    if cfg.amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of null, bf16, fp16; got {cfg.amp!r}")
    for key, (least, whole, nullable) in _SETTING_BOUNDS.items():
        value = cfg.get(key)
        if value is None and nullable:
            continue
        number = isinstance(value, int) if whole else isinstance(value, (int, float))
        if isinstance(value, bool) or not number or not value >= least:  # `not >=`: NaN fails too
            kind = "a whole number" if whole else "a number"
            null = " (or null)" if nullable else ""
            raise ValueError(f"{key} must be {kind} >= {least}{null}, got {value!r}")
    if cfg.grad_clip is not None and not (isinstance(cfg.grad_clip, (int, float)) and cfg.grad_clip > 0):
        raise ValueError(f"grad_clip must be null or a positive number, got {cfg.grad_clip!r}")


@contextmanager
def _logging_to(path: Path):
    """Also write the log records to ``path`` (appended) while the context is open, unless a handler writes there
    already: Hydra's own ``train.log`` where the run directory is Hydra's output directory. So a run with
    ``run_dir=`` elsewhere, and a resumed run (which goes on in its checkpoint's directory), keep their log beside
    their checkpoints, formatted as Hydra's file log formats them.

    The zoo's loggers log at least INFO meanwhile, so that the file gets the progress and epoch lines also where
    logging was left unconfigured (root level WARNING); there, with no handler at all, warnings still reach stderr
    as Python's last-resort handler would have shown them (a handler on the root logger replaces that one)."""
    root = logging.getLogger()
    target = os.path.realpath(path)
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    handlers: list[logging.Handler] = []
    if not any(os.path.realpath(h.baseFilename) == target for h in files):
        handlers.append(logging.FileHandler(target, mode="a"))
        handlers[0].setFormatter(
            files[0].formatter if files else logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        )
        if not root.handlers:
            handlers.append(logging.StreamHandler(sys.stderr))
            handlers[1].setLevel(logging.WARNING)
    zoo_logger = logging.getLogger("zoo")
    level = zoo_logger.level
    if zoo_logger.getEffectiveLevel() > logging.INFO:
        zoo_logger.setLevel(logging.INFO)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
        zoo_logger.setLevel(level)


def _set_up(cfg: Any, ctx: Any, stack: ExitStack) -> tuple[_Run, dict[str, Any] | None]:
    """Set-up: check the settings, seed, read the fine-tuning source and the checkpoint to resume from, make the
    run directory (rank 0 logs to its ``train.log`` from here on, until ``stack`` closes) and the loaders, then
    the model (fine-tuning weights, frozen parts, device, DDP), optimiser, schedule, GradScaler, EMA and loss.
    Returns the run at step 0 and the checkpoint state (None: a new run).

    Exact resume depends on the order of what draws random numbers here (the model's init, then under DDP the
    per-rank reseed): a resumed run repeats it before :func:`_resume` restores the saved RNG states.
    """
    _check_settings(cfg)
    if cfg.get("cuda_graph"):
        _check_cuda_graph(cfg, ctx)
    seed_everything(cfg.seed, cfg.deterministic)
    if cfg.resume and cfg.finetune:
        raise ValueError("give either resume= (continue a run) or finetune= (start from its weights), not both")
    source = read_source(cfg.finetune, trust=_trust(cfg)) if cfg.finetune else None
    inherited = inherited_model_args(source, cfg.model.name) if source is not None else {}
    img_size = cfg.img_size or inherited.get("img_size") or cfg.data.img_size
    run_dir, resume_state = _run_dir_and_resume_state(cfg, ctx)
    if ctx.is_main:
        stack.enter_context(_logging_to(run_dir / "train.log"))
    train_loader, eval_loader, info = _loaders(cfg, ctx, img_size)

    device = ctx.device
    model, model_args = build_model(cfg, info, img_size, inherited)
    if source is not None:
        fresh = load_finetune_weights(model, source)
        log.info("fine-tuning from %s (left at init: %s)", source.path, fresh or "nothing")
    frozen = freeze(model, cfg.freeze)
    if frozen:
        log.info("frozen: %s", frozen)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    train_model = model
    if ctx.enabled:  # DDP makes every rank start from rank 0's parameters
        device_ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        seed_everything(cfg.seed + ctx.rank, cfg.deterministic)  # each rank its own dropout/augmentation draws

    optim_args = {k: v for k, v in dict(cfg.optim).items() if k not in ("name", "lr", "weight_decay")}
    if cfg.get("cuda_graph"):
        optim_args["capturable"] = True
    optimizer = create_optimizer(
        model, cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, layer_decay=cfg.layer_decay, **optim_args
    )
    updates_per_epoch = max(1, len(train_loader) // cfg.accum_steps)
    sched_args = {k: v for k, v in dict(cfg.sched).items() if k != "name"}
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched.name,
        num_epochs=cfg.epochs,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
        **sched_args,
    )
    if scheduler is None:
        raise ValueError(f"timm has no scheduler {cfg.sched.name!r} (sched.name)")
    scaler = torch.amp.GradScaler(device.type) if AMP_DTYPES[cfg.amp] == torch.float16 else None
    ema = ModelEmaV3(model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup) if cfg.ema.enabled else None
    criterion, mixup = _criterion(cfg, info.num_classes)
    run = _Run(
        cfg=cfg,
        ctx=ctx,
        run_dir=run_dir,
        img_size=img_size,
        train_loader=train_loader,
        eval_loader=eval_loader,
        info=info,
        model=model,
        model_kwargs=model_args,
        frozen=frozen,
        train_model=train_model,
        ddp_model=train_model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        ema=ema,
        criterion=criterion,
        mixup=mixup,
    )
    return run, resume_state


def _check_cuda_graph(cfg: Any, ctx: Any) -> None:
    """Raise ``ValueError`` unless ``cuda_graph=true`` can capture this run's updates (zoo/training/graphed.py)."""
    problems = []
    if ctx.device.type != "cuda":
        problems.append(f"a CUDA device (device={cfg.device} gives {ctx.device})")
    if ctx.enabled:
        problems.append("one process (not torchrun/DDP)")
    if cfg.accum_steps != 1:
        problems.append(f"accum_steps=1 (got {cfg.accum_steps})")
    if cfg.amp == "fp16":
        problems.append("amp=bf16 or null (fp16's GradScaler reads the gradients on the host)")
    if cfg.compile:
        problems.append("compile=false (the graph captures the eager step)")
    if str(cfg.optim.name).lower() not in CAPTURABLE_OPTIMIZERS:
        problems.append(f"optim adam or adamw (got {cfg.optim.name!r})")
    if int(cfg.get("cuda_graph_sync") or 0) < 1:
        problems.append(f"cuda_graph_sync >= 1 (got {cfg.get('cuda_graph_sync')!r})")
    if problems:
        raise ValueError("cuda_graph=true needs " + "; ".join(problems))


def _trust(cfg: Any) -> bool:
    """``cfg.trust_checkpoint``: read ``resume=`` / ``finetune=`` files with the full unpickler (runs their code)."""
    return bool(cfg.get("trust_checkpoint") or False)


def _run_dir_and_resume_state(cfg: Any, ctx: Any) -> tuple[Path, dict[str, Any] | None]:
    """The run directory (created on rank 0; the same on every rank) and the checkpoint to resume from.

    A resumed run goes on in the directory of its checkpoint, whose model must be ``cfg.model.name``.
    """
    run_dir = Path(cfg.run_dir)
    resume_state = None
    if cfg.resume:
        checkpoint_path = resolve_checkpoint_path(cfg.resume)
        resume_state = load_checkpoint(checkpoint_path, trust=_trust(cfg))
        saved_model = resume_state.get("config", {}).get("model", {}).get("name")
        if saved_model != cfg.model.name:
            raise CheckpointError(
                f"{checkpoint_path} was written by a run of model {saved_model!r}, not {cfg.model.name!r}"
            )
        run_dir = checkpoint_path.parent  # a resumed run goes on in its own directory
    run_dir = Path(broadcast_object(str(run_dir), ctx))  # one directory for all ranks (${now:} differs per rank)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, resume_state


def _loaders(cfg: Any, ctx: Any, img_size: int | None) -> tuple[Any, Any, DatasetInfo]:
    """``create_loaders`` for ``cfg.data`` (under torchrun rank 0 downloads first while the others wait); checks
    that an epoch has at least ``accum_steps`` batches."""
    if ctx.enabled and cfg.data.download and not ctx.is_main:
        barrier(ctx)  # rank 0 downloads first (below), the others wait for the files
    train_loader, eval_loader, info = create_loaders(
        cfg.data.name,
        root=cfg.data.root,
        download=cfg.data.download,
        img_size=img_size,
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size or 2 * cfg.batch_size,
        num_workers=cfg.num_workers,
        seed=cfg.seed,
        augment=dict(cfg.data.augment or {}),
        train_subset=cfg.data.train_subset,
        eval_subset=cfg.data.eval_subset,
        distributed=ctx.enabled,
        skip_corrupt=_skip_corrupt(cfg),
    )
    if ctx.enabled and cfg.data.download and ctx.is_main:
        barrier(ctx)
    if len(train_loader) < cfg.accum_steps:
        raise ValueError(
            f"an epoch has {len(train_loader)} batches per process, fewer than accum_steps={cfg.accum_steps}: "
            f"no optimiser step would ever run; lower accum_steps or batch_size"
        )
    return train_loader, eval_loader, info


def _skip_corrupt(cfg: Any) -> bool:
    """``cfg.data.skip_corrupt``: skip (and count) undecodable images instead of stopping the run."""
    return bool(cfg.data.get("skip_corrupt") or False)


def _skip_counter(cfg: Any, loader: Any) -> SkipCounter | None:
    """A :class:`SkipCounter` over one pass of ``loader`` (``data.max_skipped_fraction`` of its sampler's
    samples, default 0.01), or None without ``data.skip_corrupt``."""
    if not _skip_corrupt(cfg):
        return None
    max_fraction = cfg.data.get("max_skipped_fraction")
    return SkipCounter(len(loader.sampler), 0.01 if max_fraction is None else float(max_fraction))


# ------------------------------------------------------------------------------------------------------------ resume


def _resume(run: _Run, state: dict[str, Any]) -> None:
    """Resume: load the checkpoint's model, optimiser, GradScaler and EMA states, take over its epoch, step, best
    accuracies and history, and restore this rank's RNG state last, so that the random draws from here on are
    those of the uninterrupted run."""
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        for name, part in (("scaler", run.scaler), ("ema", run.ema)):
            if (part is None) != (state[name] is None):
                raise ValueError(f"the checkpoint {'has' if part is None else 'has no'} {name} state")
            if part is not None:
                part.load_state_dict(state[name])
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        raise CheckpointError(f"{run.cfg.resume} does not match this run's model or settings: {error}") from error
    run.start_epoch = state["epoch"] + 1
    run.step = state["step"]
    run.best_top1, run.best_ema_top1 = state["best_top1"], state["best_ema_top1"]
    run.history = list(state["history"])
    rng = state["rng"]
    in_epoch = state.get("in_epoch")
    if in_epoch is not None:  # a mid-epoch checkpoint: the RNG state is restored when its epoch goes on
        _check_in_epoch(run, in_epoch)
        run.in_epoch = {**in_epoch["ranks"][run.ctx.rank], "rng": rng[run.ctx.rank], **_in_epoch_common(in_epoch)}
        log.info(
            "resuming epoch %d/%d at batch %d of %d (step %d)",
            run.start_epoch + 1,
            run.cfg.epochs,
            in_epoch["batches_done"] + 1,
            in_epoch["batches"],
            run.step,
        )
        return
    if len(rng) != run.ctx.world_size:
        log.warning(
            "the checkpoint holds the RNG states of %d processes, this run has %d: the random draws "
            "will not repeat those of an uninterrupted run",
            len(rng),
            run.ctx.world_size,
        )
    restore_rng_state(rng[min(run.ctx.rank, len(rng) - 1)])


def _in_epoch_common(in_epoch: dict[str, Any]) -> dict[str, Any]:
    """The parts of a checkpoint's ``in_epoch`` that all ranks share (not the per-rank counts)."""
    return {k: v for k, v in in_epoch.items() if k != "ranks"}


def _check_in_epoch(run: _Run, in_epoch: dict[str, Any]) -> None:
    """A mid-epoch checkpoint resumes at its next batch only in the same batch layout: the same number of processes,
    batch size, accumulation and batches per epoch (else "the next batch" would be other samples)."""
    now = {
        "world_size": run.ctx.world_size,
        "batch_size": int(run.cfg.batch_size),
        "accum_steps": int(run.cfg.accum_steps),
        "batches": len(run.train_loader),
    }
    differ = {k: (in_epoch.get(k), v) for k, v in now.items() if in_epoch.get(k) != v}
    if differ:
        listing = ", ".join(f"{k} {saved} (now {current})" for k, (saved, current) in differ.items())
        raise CheckpointError(
            f"{run.cfg.resume} was written within an epoch (batch {in_epoch['batches_done']} of "
            f"{in_epoch['batches']}) by a run with {listing}: resume it with the same number of processes, "
            "batch_size, accum_steps and data subset, so that its next batch is the same samples"
        )


def _skip_batches(loader: DataLoader, start: int) -> DataLoader:
    """A loader for the rest of an epoch of ``loader``: its batches from index ``start`` on, in the same order.

    The batches before ``start`` are skipped as lists of indices (the batch sampler's), so none of their samples is
    read. The sampler must already be set to the epoch (``set_epoch``). The copy keeps the loader's workers, collate
    function, worker seeding, pinning and generator."""
    if loader.batch_sampler is None:
        raise ValueError("only a loader that batches (batch_size set, or a batch_sampler) can skip batches")
    return DataLoader(
        loader.dataset,
        batch_sampler=_BatchesFrom(loader.batch_sampler, start),
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers,
        in_order=loader.in_order,
    )


class _BatchesFrom:
    """The batches (index lists) of ``batch_sampler`` from number ``start`` on."""

    def __init__(self, batch_sampler: Any, start: int) -> None:
        self.batch_sampler, self.start = batch_sampler, int(start)

    def __iter__(self):
        return itertools.islice(iter(self.batch_sampler), self.start, None)

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.start)


# --------------------------------------------------------------------------------------------------------- one epoch


def _train_one_epoch(run: _Run, epoch: int) -> tuple[int, float, float]:
    """One epoch of training on this process's shard: forward and backward per batch (mixup, AMP, gradient
    accumulation with DDP's all-reduce on the updating micro-step only), an optimiser update every
    ``accum_steps`` batches (unscale, clip, step, schedule, EMA). Frozen modules stay in eval mode.

    Returns this process's (samples seen, summed loss, seconds); ``run.step`` counts the updates.

    With ``cuda_graph=true`` each update is one replay of a captured step (:mod:`zoo.training.graphed`); its losses
    stay on the device and are read (NaN check, progress, the epoch's sum) every ``cuda_graph_sync`` updates and
    whenever a progress line or a checkpoint is due.

    With ``data.skip_corrupt`` the batches carry the paths of the images they dropped: they are stripped and
    counted into ``run.skipped`` (a batch left empty is passed over).

    Within the epoch, after an update: a checkpoint every ``checkpoint_every`` updates or, on rank 0's clock (the
    ranks agree through the per-batch all-reduce that checks the loss), every ``checkpoint_every_minutes``
    (:func:`_save_within_epoch`); a progress line every ``log_interval_s`` seconds (:class:`_ProgressLog`). A run
    resumed from a mid-epoch checkpoint of this epoch (``run.in_epoch``) starts at its next batch, the done ones
    skipped by index (:func:`_skip_batches`), with the partial epoch's counts; this rank's RNG state is restored
    once the loader's iterator exists, because creating it draws a seed from the global RNG, as it did when the
    interrupted epoch began.

    Raises:
        FloatingPointError: a non-finite loss on any process (all processes stop together, writing nothing).
        TooManyCorruptImagesError: more than ``data.max_skipped_fraction`` of the epoch's samples were skipped.
    """
    cfg, ctx, model, optimizer, scaler = run.cfg, run.ctx, run.model, run.optimizer, run.scaler
    device, amp_dtype = run.device, run.amp_dtype
    run.train_loader.sampler.set_epoch(epoch)
    run.train_model.train()
    for name in run.frozen:  # frozen modules stay in eval mode: no dropout, drop-path or BN statistics
        module = getattr(model, name)
        if isinstance(module, nn.Module):
            module.eval()
    batches_per_epoch = len(run.train_loader)
    counter = _skip_counter(cfg, run.train_loader)
    resumed, run.in_epoch = run.in_epoch, None
    start = resumed["batches_done"] if resumed is not None else 0
    batches = iter(_skip_batches(run.train_loader, start) if start else run.train_loader)
    seen, loss_sum, seconds_before = 0, 0.0, 0.0
    if resumed is not None:
        restore_rng_state(resumed["rng"])
        seen, loss_sum, seconds_before = int(resumed["seen"]), float(resumed["loss_sum"]), float(resumed["seconds"])
        if counter is not None:
            counter.paths = list(resumed["skipped"])
            run.skipped = counter.paths
    started = time.perf_counter()
    bar = tqdm(
        batches,
        total=batches_per_epoch,
        initial=start,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not run.show_progress,
        leave=False,
    )
    progress = _ProgressLog(run, epoch, batches_per_epoch, start, seen) if ctx.is_main else None
    every_steps = int(cfg.get("checkpoint_every") or 0)
    every_s = 60.0 * float(cfg.get("checkpoint_every_minutes") or 0.0)
    # graph mode keeps its gradient tensors: the captured step writes them in place (its replays zero them)
    optimizer.zero_grad(set_to_none=run.graphed is None)
    pending, read_seen = 0, seen  # cuda_graph=true: updates whose losses are still on the device; samples read
    for index, batch in enumerate(bar, start=start):
        if counter is not None:
            batch = counter.strip(batch)
            run.skipped = counter.paths
            if batch is None:  # every sample of this batch was undecodable
                continue
        images, targets, lengths = unpack_batch(batch)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        lengths = None if lengths is None else lengths.to(device, non_blocking=True)
        if run.mixup is not None:
            images, targets = run.mixup(images, targets)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        updates = (index + 1) % cfg.accum_steps == 0
        clock_due = every_s > 0 and ctx.is_main and time.monotonic() - run.last_checkpoint_time >= every_s
        shown_loss = None  # the loss the progress bar shows, once it is on the host
        seen += images.shape[0]
        if run.precompile:
            run.precompile = False
            _precompile(run, images, targets, lengths)
        if run.graphed is not None:  # one replay per update; the losses are read every cuda_graph_sync updates
            if lengths is not None:
                raise ValueError("cuda_graph=true takes fixed-length batches; this data pads variable lengths")
            run.graphed(images, targets)
            _after_update(run)
            pending += 1
            step_due = every_steps > 0 and run.step % every_steps == 0
            last_batch = index + 1 == batches_per_epoch
            progress_due = progress is not None and progress.due()
            if clock_due or step_due or last_batch or progress_due or pending >= cfg.cuda_graph_sync:
                total = _read_graphed_losses(run, epoch, pending)
                loss_sum += total
                shown_loss, pending, read_seen = total / (seen - read_seen), 0, seen
        else:
            # DDP: all-reduce gradients only on the micro-step that updates
            sync = run.ddp_model.no_sync() if (ctx.enabled and not updates) else nullcontext()
            with sync:
                with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
                    loss = run.criterion(*flatten_positions(call_model(run.train_model, images, lengths), targets))
                flags = [0.0 if math.isfinite(loss.item()) else 1.0, 1.0 if clock_due else 0.0]
                if ctx.enabled:  # every rank stops together, and checkpoints when rank 0's clock says so
                    flags = all_reduce_sum(flags, ctx)
                finite, clock_due = flags[0] == 0.0, flags[1] > 0.0
                if not finite:
                    raise _non_finite_loss(run, epoch, f"loss is {loss.item()}")
                scaled = loss / cfg.accum_steps
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            if updates:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                _after_update(run)
            shown_loss = loss.item()
            loss_sum += shown_loss * images.shape[0]
        if shown_loss is not None:
            elapsed = time.perf_counter() - started
            bar.set_postfix(
                loss=f"{shown_loss:.3f}", lr=f"{run.current_lr():.2e}", img_s=f"{seen / max(elapsed, 1e-9):.0f}"
            )
            if progress is not None:
                progress.update(index + 1, seen, loss_sum)
        # within the epoch only, and after an update (no gradient is accumulated); the epoch's end checkpoints anyway
        due = clock_due or (every_steps > 0 and run.step % every_steps == 0)
        if updates and due and index + 1 < batches_per_epoch:
            seconds = seconds_before + time.perf_counter() - started
            _save_within_epoch(run, epoch, index + 1, seen, loss_sum, seconds, counter)
    if pending:  # cuda_graph=true, the epoch's last batches skipped as undecodable: their updates' losses
        loss_sum += _read_graphed_losses(run, epoch, pending)
    return seen, loss_sum, seconds_before + time.perf_counter() - started


def _precompiles(cfg: Any, device: torch.device) -> bool:
    """Whether a run precompiles its first update's Triton kernels: ``precompile=true`` (the default), on CUDA (the
    CPU paths compile nothing) and not with ``compile=true`` (Inductor compiles its own kernels)."""
    return bool(cfg.get("precompile", True)) and device.type == "cuda" and not cfg.compile


def _precompile(run: _Run, images: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor | None) -> None:
    """``precompile=true``: compile the Triton kernels of an update on this batch's shapes in parallel threads
    before the update runs (:func:`zoo.training.step.precompile`; the model's state is left as it was)."""
    amp_dtype = run.amp_dtype

    def forward_loss() -> torch.Tensor:
        with torch.autocast(run.device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            return run.criterion(*flatten_positions(call_model(run.model, images, lengths), targets))

    # the processes of a node share its cores (LOCAL_WORLD_SIZE, set by torchrun; else the whole world)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE") or run.ctx.world_size)
    started = time.perf_counter()
    queued = precompile(forward_loss, run.model, workers=max(1, available_cpus() // max(1, processes)))
    if run.ctx.is_main and queued:
        log.info("precompile: %d Triton kernels compiled or loaded from the cache in %.1f s", queued,
                 time.perf_counter() - started)  # fmt: skip


def _after_update(run: _Run) -> None:
    """After an optimiser update: count it, set the next update's learning rates, update the EMA weights."""
    run.step += 1
    run.scheduler.step_update(num_updates=run.step)
    if run.ema is not None:
        run.ema.update(run.model, step=run.step)


def _read_graphed_losses(run: _Run, epoch: int, pending: int) -> float:
    """cuda_graph=true: the summed loss (x batch size) of the last ``pending`` updates, read from the device; raises
    ``FloatingPointError`` if one of them was NaN or inf."""
    total, non_finite = run.graphed.read()
    if non_finite:
        raise _non_finite_loss(run, epoch, f"a loss was NaN or inf within the last {pending} updates")
    return total


def _non_finite_loss(run: _Run, epoch: int, what: str) -> FloatingPointError:
    """The error that stops a run whose loss went NaN or inf (``what`` says which), naming the last checkpoint."""
    checkpoint_path = run.checkpoint_path
    last_good = str(checkpoint_path) if checkpoint_path.exists() else "none (no epoch finished yet)"
    return FloatingPointError(
        f"{what} at epoch {epoch + 1}, step {run.step} (lr {run.current_lr():.3e}; NaN or inf on at least one "
        f"process); stopping without writing anything. Last good checkpoint: {last_good}"
    )


class _ProgressLog:
    """Progress lines of one epoch on rank 0, one every ``log_interval_s`` seconds (0: none), to the ``zoo.train``
    logger (the run's ``train.log`` and the console, as the epoch lines), whether or not the tqdm bar shows::

        epoch 3/300, step 2807, batch 305/1251: 2391.4 images/s, loss 6.5162, lr 1.64e-04, epoch ETA 0:06:35

    images/s is the rate of all processes (this one's times the world size) since the epoch, or its resumption,
    started; the ETA extrapolates it to the epoch's remaining batches; the loss is the epoch's mean so far."""

    def __init__(self, run: _Run, epoch: int, batches: int, start: int, seen: int) -> None:
        self.run, self.epoch, self.batches, self.start, self.seen_at_start = run, epoch, batches, start, seen
        self.interval = float(run.cfg.get("log_interval_s") or 0.0)
        self.started = self.last = time.perf_counter()

    def due(self) -> bool:
        """Whether the next :meth:`update` logs a line."""
        return self.interval > 0 and time.perf_counter() - self.last >= self.interval

    def update(self, done: int, seen: int, loss_sum: float) -> None:
        """After batch number ``done`` of the epoch (``seen`` samples, ``loss_sum`` their summed loss): log a line
        if ``log_interval_s`` has passed since the last one (or the epoch's start)."""
        if not self.due():
            return
        now = self.last = time.perf_counter()
        elapsed = max(now - self.started, 1e-9)
        batches_per_s = (done - self.start) / elapsed
        eta = (self.batches - done) / batches_per_s if batches_per_s > 0 else math.inf
        images_per_s = (seen - self.seen_at_start) * self.run.ctx.world_size / elapsed
        log.info(
            "epoch %d/%d, step %d, batch %d/%d: %.1f images/s, loss %.4f, lr %.2e, epoch ETA %s",
            self.epoch + 1,
            self.run.cfg.epochs,
            self.run.step,
            done,
            self.batches,
            images_per_s,
            loss_sum / max(seen, 1),
            self.run.current_lr(),
            _duration(eta),
        )


def _duration(seconds: float) -> str:
    """``H:MM:SS`` (hours unbounded), or ``unknown`` for an infinite or NaN time."""
    if not math.isfinite(seconds):
        return "unknown"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _save_within_epoch(
    run: _Run, epoch: int, batches_done: int, seen: int, loss_sum: float, seconds: float, counter: SkipCounter | None
) -> None:
    """Checkpoint ``last.pt`` within ``epoch``, after its first ``batches_done`` batches and an optimiser update (so
    no gradient is accumulated). Every rank's RNG state and partial-epoch counts (samples seen, summed loss, skipped
    images) are gathered; rank 0 writes. ``epoch`` in the file stays the last epoch completed (``epoch - 1``: -1
    within the first), the metric history that of the completed epochs; ``in_epoch`` holds the position and the
    batch layout that it depends on (:func:`_check_in_epoch`)."""
    cfg, ctx = run.cfg, run.ctx
    mine = {
        "rng": capture_rng_state(),
        "seen": int(seen),
        "loss_sum": float(loss_sum),
        "skipped": list(counter.paths) if counter is not None else [],
    }
    gathered = all_gather_object(mine, ctx)
    run.last_checkpoint_time = time.monotonic()
    if not ctx.is_main:
        return
    in_epoch = {
        "batches_done": int(batches_done),
        "batches": len(run.train_loader),
        "world_size": ctx.world_size,
        "batch_size": int(cfg.batch_size),
        "accum_steps": int(cfg.accum_steps),
        "seconds": float(seconds),
        "ranks": [{k: part[k] for k in ("seen", "loss_sum", "skipped")} for part in gathered],
    }
    state = _checkpoint_state(run, epoch - 1, [part["rng"] for part in gathered], in_epoch)
    save_checkpoint(run.checkpoint_path, state)
    log.info(
        "epoch %d/%d: checkpoint at step %d, batch %d/%d: %s",
        epoch + 1,
        cfg.epochs,
        run.step,
        batches_done,
        in_epoch["batches"],
        run.checkpoint_path,
    )


def _checkpoint_state(run: _Run, epoch: int, rng: list[dict], in_epoch: dict[str, Any] | None) -> dict[str, Any]:
    """What ``last.pt`` holds: model, optimiser, scaler and EMA states, ``epoch`` (the last one completed, 0-based),
    the step, best accuracies, metric history, every rank's RNG state, the config and model arguments, and
    ``in_epoch`` (None at an epoch's end; the position within the next epoch otherwise)."""
    return {
        "model": run.model.state_dict(),
        "optimizer": host_learning_rates(run.optimizer.state_dict()),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "ema": run.ema.state_dict() if run.ema is not None else None,
        "epoch": epoch,
        "step": run.step,
        "best_top1": run.best_top1,
        "best_ema_top1": run.best_ema_top1,
        "history": run.history,
        "rng": rng,
        "config": run.config,
        "model_args": run.model_kwargs,
        "in_epoch": in_epoch,
    }


# ------------------------------------------------------------------------------------------ evaluate and checkpoint


def _evaluate_and_checkpoint(run: _Run, epoch: int, seen: int, loss_sum: float, train_seconds: float) -> None:
    """Evaluate and checkpoint after an epoch: sum the training counts over the processes, evaluate the model
    (and the EMA weights) on the whole eval split, append the epoch's metrics to the history, gather every rank's
    RNG state; rank 0 writes ``last.pt`` (and ``best.pt`` when the raw top-1 improved), the metric files, the
    report and the tracker's row. All ranks wait for rank 0 at the end."""
    cfg, ctx, info = run.cfg, run.ctx, run.info
    skipped_here = run.skipped
    seen, loss_sum, skipped = all_reduce_sum([seen, loss_sum, len(skipped_here)], ctx)
    run.skipped = []
    eval_counter = _skip_counter(cfg, run.eval_loader)
    eval_loader = run.eval_loader if eval_counter is None else eval_counter.iterate(run.eval_loader)
    metrics = evaluate_classifier(
        run.model, eval_loader, info.num_classes, run.device, run.amp_dtype, cfg.channels_last, ctx
    )
    row = {
        "epoch": epoch + 1,
        "step": run.step,
        "train_loss": loss_sum / max(seen, 1),
        "top1": metrics["top1"],
        "top5": metrics["top5"],
        "eval_loss": metrics["loss"],
        "lr": run.current_lr(),
        "images_per_s": seen / max(train_seconds, 1e-9),
    }
    if eval_counter is not None:  # data.skip_corrupt: the epoch's skipped images, summed over the processes
        row["skipped"] = int(skipped)
        row["eval_skipped"] = int(all_reduce_sum([len(eval_counter.paths)], ctx)[0])
        for split, paths in (("train", skipped_here), ("eval", eval_counter.paths)):
            if paths:
                log.warning("epoch %d: skipped %d undecodable %s image(s): %s", epoch + 1, len(paths), split, paths)
    if run.ema is not None:
        ema_counter = _skip_counter(cfg, run.eval_loader)
        ema_loader = run.eval_loader if ema_counter is None else ema_counter.iterate(run.eval_loader)
        ema_metrics = evaluate_classifier(
            run.ema.module, ema_loader, info.num_classes, run.device, run.amp_dtype, cfg.channels_last, ctx
        )
        row.update(ema_top1=ema_metrics["top1"], ema_top5=ema_metrics["top5"])
        run.best_ema_top1 = max(run.best_ema_top1, row["ema_top1"])
    run.history.append(row)
    improved = row["top1"] > run.best_top1  # best.pt: the best raw weights (what eval.py and finetune= load)
    run.best_top1 = max(run.best_top1, row["top1"])
    rng = all_gather_object(capture_rng_state(), ctx)
    run.last_checkpoint_time = time.monotonic()
    if ctx.is_main:
        state = _checkpoint_state(run, epoch, rng, None)
        save_checkpoint(run.checkpoint_path, state)
        if improved:
            save_checkpoint(run.run_dir / "best.pt", state)
        _write_metrics(run.run_dir, run.history)
        save_run_report(run.history, run.run_dir / "report.png", title=f"{cfg.model.name} on {cfg.data.name}")
        run.logger.log(row)
        log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs, json.dumps(row))
    barrier(ctx)


# ------------------------------------------------------------------------------------------------------------ finish


def _finish(run: _Run) -> dict[str, Any]:
    """Finish on rank 0: close the tracker, export the better of the raw and EMA weights of the last epoch to
    ``RUN_DIR/export`` (timm's local-dir layout) and return the run's summary."""
    cfg, info, ema = run.cfg, run.info, run.ema
    run.logger.finish()
    final = run.history[-1] if run.history else {"top1": float("nan")}
    use_ema = ema is not None and final.get("ema_top1", -1.0) >= final["top1"]
    export_dir = export_model(
        ema.module if use_ema else run.model,
        run.run_dir / "export",
        architecture=cfg.model.name,
        model_args=run.model_kwargs,
        pretrained_cfg={
            "input_size": [info.in_chans, run.img_size, run.img_size],
            "mean": list(info.mean),
            "std": list(info.std),
            "num_classes": info.num_classes,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
        },
    )
    return {
        "best_top1": run.best_top1,
        "final_top1": final["top1"],
        "best_ema_top1": run.best_ema_top1 if ema is not None else None,
        "exported_weights": "ema" if use_ema else "model",
        "epochs": cfg.epochs,
        "run_dir": str(run.run_dir),
        "checkpoint": str(run.checkpoint_path),
        "export": str(export_dir),
        "model": cfg.model.name,
        "data": cfg.data.name,
        **(_skipped_summary(run.history) if _skip_corrupt(cfg) else {}),
    }


def _skipped_summary(history: list[dict[str, Any]]) -> dict[str, int]:
    """The summary's counts of skipped undecodable images (``data.skip_corrupt``), summed over the epochs."""
    return {
        "skipped_images": sum(int(row.get("skipped", 0)) for row in history),
        "eval_skipped_images": sum(int(row.get("eval_skipped", 0)) for row in history),
    }
