"""The training run behind ``train.py``: data, model, optimiser, loop, evaluation, checkpoints, export.

``train(cfg)`` takes the resolved Hydra config (``configs/train.yaml``) and returns the run summary. Everything a
run needs to continue exactly after a kill is in ``RUN_DIR/last.pt`` (written atomically at every epoch end):
model, optimiser, scheduler, scaler, EMA, epoch, step, RNG states, metric history and the config.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from tqdm import tqdm

from zoo.data import create_loaders
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
from zoo.training.optim import create_optimizer
from zoo.training.report import save_run_report

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
    cfg: Any, info: Any, img_size: int, inherited: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The model of ``cfg.model`` with the data-derived arguments it takes; returns (model, model kwargs).

    ``inherited``: architecture arguments of a fine-tuning source (patch size, depth, ...), which the model
    config's ``kwargs`` override.
    """
    import zoo

    inherited = dict(inherited or {})
    data_args = {
        "img_size": img_size,
        "patch_size": inherited.pop("patch_size", None) or cfg.data.get("patch_size"),
        "in_chans": info.in_chans,
        "num_classes": info.num_classes,
        "vocab_size": getattr(info, "vocab_size", None),
    }
    inherited.pop("img_size", None)
    kwargs = {k: v for k, v in data_args.items() if k in cfg.model.get("data_args", []) and v is not None}
    kwargs.update(inherited)
    kwargs.update(_plain(dict(cfg.model.get("kwargs") or {})))
    return zoo.create_model(cfg.model.name, **kwargs), kwargs


def _plain(value: Any) -> Any:
    """Config containers (OmegaConf's ListConfig / DictConfig from the command line) as plain lists and dicts, so
    model arguments such as ``depths=[1,2,1,1]`` reach the model, the checkpoint and the export as Python values."""
    from collections.abc import Mapping, Sequence

    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


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
    for name, text in (
        ("metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history)),
        ("metrics.csv", _csv_text(history)),
    ):
        tmp = run_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, run_dir / name)


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


def _train(cfg: Any, ctx: Any) -> dict[str, Any] | None:
    if cfg.amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of null, bf16, fp16; got {cfg.amp!r}")
    if cfg.accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1, got {cfg.accum_steps}")
    device = ctx.device
    amp_dtype = AMP_DTYPES[cfg.amp]
    seed_everything(cfg.seed, cfg.deterministic)

    if cfg.resume and cfg.finetune:
        raise ValueError("give either resume= (continue a run) or finetune= (start from its weights), not both")
    resume_state = None
    run_dir = Path(cfg.run_dir)
    source = read_source(cfg.finetune) if cfg.finetune else None
    inherited = inherited_model_args(source, cfg.model.name) if source is not None else {}
    img_size = cfg.img_size or inherited.get("img_size") or cfg.data.img_size
    if cfg.resume:
        checkpoint_path = resolve_checkpoint_path(cfg.resume)
        resume_state = load_checkpoint(checkpoint_path)
        saved_model = resume_state.get("config", {}).get("model", {}).get("name")
        if saved_model != cfg.model.name:
            raise CheckpointError(
                f"{checkpoint_path} was written by a run of model {saved_model!r}, not {cfg.model.name!r}"
            )
        run_dir = checkpoint_path.parent  # a resumed run goes on in its own directory
    run_dir = Path(broadcast_object(str(run_dir), ctx))  # one directory for all ranks (${now:} differs per rank)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

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
    )
    if ctx.enabled and cfg.data.download and ctx.is_main:
        barrier(ctx)
    if len(train_loader) < cfg.accum_steps:
        raise ValueError(
            f"an epoch has {len(train_loader)} batches per process, fewer than accum_steps={cfg.accum_steps}: "
            f"no optimiser step would ever run; lower accum_steps or batch_size"
        )
    model, model_kwargs = build_model(cfg, info, img_size, inherited)
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
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    ema = ModelEmaV3(model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup) if cfg.ema.enabled else None
    criterion, mixup = _criterion(cfg, info.num_classes)

    start_epoch, step, best_top1, best_ema_top1, history = 0, 0, -1.0, -1.0, []
    if resume_state is not None:
        try:
            model.load_state_dict(resume_state["model"])
            optimizer.load_state_dict(resume_state["optimizer"])
            for name, part in (("scaler", scaler), ("ema", ema)):
                if (part is None) != (resume_state[name] is None):
                    raise ValueError(f"the checkpoint {'has' if part is None else 'has no'} {name} state")
                if part is not None:
                    part.load_state_dict(resume_state[name])
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            raise CheckpointError(f"{cfg.resume} does not match this run's model or settings: {error}") from error
        start_epoch = resume_state["epoch"] + 1
        step = resume_state["step"]
        best_top1, best_ema_top1 = resume_state["best_top1"], resume_state["best_ema_top1"]
        history = list(resume_state["history"])
        rng = resume_state["rng"]
        if len(rng) != ctx.world_size:
            log.warning(
                "the checkpoint holds the RNG states of %d processes, this run has %d: the random draws "
                "will not repeat those of an uninterrupted run",
                len(rng),
                ctx.world_size,
            )
        restore_rng_state(rng[min(ctx.rank, len(rng) - 1)])
    # The schedule is a function of the step (lr, warmup, per-layer lr_scale): set it for the first update; a
    # resumed run may change epochs or the schedule.
    scheduler.step_update(num_updates=step)

    show_progress = ctx.is_main and (sys.stderr.isatty() if cfg.progress == "auto" else bool(cfg.progress))
    ddp_model = train_model
    if cfg.compile:
        train_model = torch.compile(train_model)
    config = _config_container(cfg)
    logger = _Logger(cfg, run_dir, config) if ctx.is_main else None
    checkpoint_path = run_dir / "last.pt"

    def current_lr() -> float:
        return max(group["lr"] for group in optimizer.param_groups)

    for epoch in range(start_epoch, cfg.epochs):
        train_loader.sampler.set_epoch(epoch)
        train_model.train()
        for name in frozen:  # frozen modules stay in eval mode: no dropout, drop-path or BN statistics
            module = getattr(model, name)
            if isinstance(module, nn.Module):
                module.eval()
        started = time.perf_counter()
        seen, loss_sum = 0, 0.0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show_progress, leave=False)
        optimizer.zero_grad(set_to_none=True)
        for index, batch in enumerate(bar):
            images, targets, lengths = unpack_batch(batch)
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            lengths = None if lengths is None else lengths.to(device, non_blocking=True)
            if mixup is not None:
                images, targets = mixup(images, targets)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            updates = (index + 1) % cfg.accum_steps == 0
            # DDP: all-reduce gradients only on the micro-step that updates
            sync = ddp_model.no_sync() if (ctx.enabled and not updates) else nullcontext()
            with sync:
                with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
                    loss = criterion(*flatten_positions(call_model(train_model, images, lengths), targets))
                finite = math.isfinite(loss.item())
                if ctx.enabled:  # every rank stops together
                    finite = all_reduce_sum([0.0 if finite else 1.0], ctx)[0] == 0.0
                if not finite:
                    last_good = str(checkpoint_path) if checkpoint_path.exists() else "none (no epoch finished yet)"
                    raise FloatingPointError(
                        f"loss is {loss.item()} at epoch {epoch + 1}, step {step} (lr {current_lr():.3e}; NaN or inf "
                        f"on at least one process); stopping without writing anything. Last good checkpoint: "
                        f"{last_good}"
                    )
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
                step += 1
                scheduler.step_update(num_updates=step)
                if ema is not None:
                    ema.update(model, step=step)
            seen += images.shape[0]
            loss_sum += loss.item() * images.shape[0]
            elapsed = time.perf_counter() - started
            bar.set_postfix(
                loss=f"{loss.item():.3f}", lr=f"{current_lr():.2e}", img_s=f"{seen / max(elapsed, 1e-9):.0f}"
            )
        train_seconds = time.perf_counter() - started
        seen, loss_sum = all_reduce_sum([seen, loss_sum], ctx)
        metrics = evaluate_classifier(model, eval_loader, info.num_classes, device, amp_dtype, cfg.channels_last, ctx)
        row = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": loss_sum / max(seen, 1),
            "top1": metrics["top1"],
            "top5": metrics["top5"],
            "eval_loss": metrics["loss"],
            "lr": current_lr(),
            "images_per_s": seen / max(train_seconds, 1e-9),
        }
        if ema is not None:
            ema_metrics = evaluate_classifier(
                ema.module, eval_loader, info.num_classes, device, amp_dtype, cfg.channels_last, ctx
            )
            row.update(ema_top1=ema_metrics["top1"], ema_top5=ema_metrics["top5"])
            best_ema_top1 = max(best_ema_top1, row["ema_top1"])
        history.append(row)
        improved = row["top1"] > best_top1  # best.pt: the best raw weights (what eval.py and finetune= load)
        best_top1 = max(best_top1, row["top1"])
        rng = all_gather_object(capture_rng_state(), ctx)
        if ctx.is_main:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "ema": ema.state_dict() if ema is not None else None,
                "epoch": epoch,
                "step": step,
                "best_top1": best_top1,
                "best_ema_top1": best_ema_top1,
                "history": history,
                "rng": rng,
                "config": config,
                "model_args": model_kwargs,
            }
            save_checkpoint(checkpoint_path, state)
            if improved:
                save_checkpoint(run_dir / "best.pt", state)
            _write_metrics(run_dir, history)
            save_run_report(history, run_dir / "report.png", title=f"{cfg.model.name} on {cfg.data.name}")
            logger.log(row)
            log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs, json.dumps(row))
        barrier(ctx)

    if not ctx.is_main:
        return None
    logger.finish()
    final = history[-1] if history else {"top1": float("nan")}
    use_ema = ema is not None and final.get("ema_top1", -1.0) >= final["top1"]
    export_dir = export_model(
        ema.module if use_ema else model,
        run_dir / "export",
        architecture=cfg.model.name,
        model_args=model_kwargs,
        pretrained_cfg={
            "input_size": [info.in_chans, img_size, img_size],
            "mean": list(info.mean),
            "std": list(info.std),
            "num_classes": info.num_classes,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
        },
    )
    return {
        "best_top1": best_top1,
        "final_top1": final["top1"],
        "best_ema_top1": best_ema_top1 if ema is not None else None,
        "exported_weights": "ema" if use_ema else "model",
        "epochs": cfg.epochs,
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint_path),
        "export": str(export_dir),
        "model": cfg.model.name,
        "data": cfg.data.name,
    }
