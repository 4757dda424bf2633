"""Evaluation of a trained classifier: the run behind ``eval.py``.

- :func:`load_model_for_eval` rebuilds a model from a train.py checkpoint (``last.pt`` / ``best.pt`` or a run
  directory), from an export directory (``config.json`` + ``model.safetensors``), or from a registered model name
  plus a local weights file.
- :func:`evaluate_classifier` computes top-1/top-5, mean loss, per-class accuracy, the confusion matrix,
  throughput and peak memory over a loader.
- :func:`save_confusion_matrix_png` draws the confusion matrix (matplotlib, imported only there).
- :func:`run_eval` glues them together for ``configs/eval.yaml`` and writes ``metrics.json`` and
  ``confusion_matrix.png``.

Imports only torch, numpy, timm and zoo.data at module level (matplotlib is imported inside the plotting
function).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo._io import atomic_write
from zoo.data.datasets import dataset_classes
from zoo.data.loaders import _subset  # the same fixed permutation as train.py's data.eval_subset
from zoo.data.registry import DATASETS, canonical_name, create_dataset
from zoo.training.model_args import build_model_kwargs, plain

__all__ = ["load_model_for_eval", "evaluate_classifier", "flatten_positions", "save_confusion_matrix_png", "run_eval"]

_EXPORT_FILES = ("config.json", "model.safetensors")
# the `amp` setting of train.py and eval.py: autocast dtype (None: fp32)
AMP_DTYPES = {None: None, "none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} was asked for, but CUDA is not available on this machine")
    return device


def _is_export_dir(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in _EXPORT_FILES)


def _square(size: Any) -> Any:
    """``[8, 8]`` / ``(8, 8)`` -> 8; other values unchanged."""
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
        return int(size[0])
    return size


def _describe(model: nn.Module, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` completed with the model's num_classes / in_chans where the model knows them."""
    out = dict(args)
    for key in ("num_classes", "in_chans"):
        value = getattr(model, key, None)
        if isinstance(value, int) and out.get(key) is None:
            out[key] = value
    if "img_size" in out:
        out["img_size"] = _square(out["img_size"])
    return out


def _load_train_checkpoint(
    file: Path, model_kwargs: dict[str, Any], trust: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    from zoo.training.checkpoint import CheckpointError, load_checkpoint

    state = load_checkpoint(file, trust=trust)
    config = state.get("config")
    if not isinstance(config, dict) or "model" not in config or "data" not in config or "model" not in state:
        raise CheckpointError(f"{file} holds no model weights and train config ('model' and 'config' keys)")
    saved = state.get("model_args")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{file} does not record the arguments its model was built with ('model_args')")
    import zoo

    kwargs = {**saved, **model_kwargs}  # the exact arguments the run built its model with
    model = zoo.create_model(config["model"]["name"], **kwargs)
    img_size = kwargs.get("img_size") or config.get("img_size") or config["data"]["img_size"]
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{file}: the weights do not fit the model its config describes: {error}") from error
    args = {
        "architecture": config["model"]["name"],
        **kwargs,
        "img_size": img_size,
        "data": config["data"]["name"],
        "source": str(file),
        "epoch": state.get("epoch"),
    }
    return model, _describe(model, args)


def _load_export_dir(path: Path, model_kwargs: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    import zoo

    config = json.loads((path / "config.json").read_text())
    model = zoo.create_model(f"local-dir:{path}", **model_kwargs)
    args = {"architecture": config.get("architecture"), **(config.get("model_args") or {}), **model_kwargs}
    input_size = (config.get("pretrained_cfg") or {}).get("input_size")
    if args.get("img_size") is None and input_size:
        args["img_size"] = _square(list(input_size[1:]))
    args["source"] = str(path)
    return model, _describe(model, args)


def _read_pretrained_file(file: Path, trust: bool) -> dict[str, torch.Tensor]:
    """The state dict in ``file``, read by :func:`zoo.training.checkpoint.load_weights_file` (the zoo's unpickling
    policy, not timm's) and picked as timm's file loader picks it: the first of ``state_dict_ema``, ``model_ema``,
    ``state_dict``, ``model`` (EMA weights first), or the whole file; a ``module.`` prefix stripped."""
    from timm.models import clean_state_dict

    from zoo.training.checkpoint import load_weights_file

    checkpoint = load_weights_file(file, trust=trust)
    if isinstance(checkpoint, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(checkpoint.get(key), dict):
                return clean_state_dict(checkpoint[key])
    return clean_state_dict(checkpoint)


def _load_named(name: str, pretrained_file: str | None, model_kwargs: dict[str, Any], trust: bool = False):
    import timm

    import zoo

    if pretrained_file is None:
        raise ValueError(
            f"model={name!r} needs pretrained_file=PATH (a state dict file for it); "
            "to evaluate a training run use checkpoint=PATH instead"
        )
    file = Path(pretrained_file).expanduser()
    if not file.is_file():
        raise FileNotFoundError(2, f"pretrained_file {file} does not exist", str(file))
    # Make the overlay describe the file's classes and channels, so timm neither drops the classifier (it does
    # when num_classes differs from the pretrained cfg's) nor adapts the first conv.
    if ":" not in name and not timm.is_model(name.split(".", 1)[0]):
        zoo.create_model(name)  # an unknown name: the zoo's error (closest names) before the file is read
    # The weights go in as a state dict read here, so that they are unpickled as every zoo path unpickles.
    overlay: dict[str, Any] = {"state_dict": _read_pretrained_file(file, trust)}
    if model_kwargs.get("num_classes") is not None:
        overlay["num_classes"] = int(model_kwargs["num_classes"])
    if model_kwargs.get("in_chans") is not None:
        from timm.models import get_pretrained_cfg

        default = get_pretrained_cfg(name.split(".", 1)[0])
        size = tuple(getattr(default, "input_size", None) or (3, 224, 224))
        overlay["input_size"] = (int(model_kwargs["in_chans"]), *size[1:])
    model = zoo.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **model_kwargs)
    for cfg in (getattr(model, "pretrained_cfg", None), getattr(model, "default_cfg", None)):
        if isinstance(cfg, dict):
            cfg.pop("state_dict", None)  # timm keeps the overlay: not a second copy of the weights on the model
    args = {"architecture": name, **model_kwargs, "source": str(file)}
    return model, _describe(model, args)


def load_model_for_eval(
    checkpoint: str | os.PathLike | None = None,
    model: str | None = None,
    pretrained_file: str | os.PathLike | None = None,
    model_kwargs: dict[str, Any] | None = None,
    trust: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model to evaluate; returns ``(model in eval mode on the CPU, args)``.

    Exactly one source:

    - ``checkpoint`` = a ``last.pt`` / ``best.pt`` written by train.py, or a run directory (its ``last.pt``): the
      model is rebuilt with the arguments the run recorded (``model_args``) and ``state["model"]``
      is loaded strictly. These are the raw weights, not the EMA weights (train.py's ``export/`` holds the EMA
      weights when ``ema.enabled`` was set: evaluate ``RUN_DIR/export`` for those).
    - ``checkpoint`` = an export directory (``config.json`` + ``model.safetensors``, e.g. ``RUN_DIR/export``):
      ``zoo.create_model("local-dir:" + dir)``.
    - ``model`` = a registered name with ``pretrained_file`` = a state dict file (``.pth``, ``.safetensors``):
      ``zoo.create_model(model, pretrained=True, pretrained_cfg_overlay=dict(state_dict=...), **model_kwargs)``
      (the state dict read from the file as timm reads it, EMA weights first).

    Pickled files are read with the restricted unpickler and the allow-list of ``zoo.training.checkpoint``;
    ``trust=True`` (eval.py's ``trust_checkpoint=true``) reads them with the full unpickler, which runs any code
    they hold.

    ``model_kwargs`` are extra model arguments (e.g. ``backend="torch"``; for ``model=`` also ``num_classes``,
    ``in_chans``, ``img_size`` ...). ``args`` holds what the model was built with: ``architecture``, its keyword
    arguments, ``img_size`` (when known), ``num_classes``, ``in_chans`` and ``source``.

    Raises:
        ValueError: none or several sources; ``model`` without ``pretrained_file``; unknown model name.
        FileNotFoundError: a missing file or directory (the message names the path looked for).
        zoo.training.CheckpointError: a file that is not a train.py checkpoint, or weights that do not fit;
            ``UntrustedCheckpointError`` (a subclass) for a file holding objects beyond the allow-list.
    """
    model_kwargs = dict(plain(model_kwargs) or {})
    if checkpoint is not None and model is not None:
        raise ValueError(
            f"give either checkpoint=PATH or model=NAME with pretrained_file=PATH, not both "
            f"(got checkpoint={str(checkpoint)!r}, model={model!r})"
        )
    if checkpoint is None and model is None:
        if pretrained_file is not None:
            raise ValueError(f"pretrained_file={str(pretrained_file)!r} needs model=NAME (the registered architecture)")
        raise ValueError(
            "nothing to evaluate: give checkpoint=PATH (a train.py checkpoint, run directory or export "
            "directory) or model=NAME with pretrained_file=PATH"
        )
    if model is not None:
        file = None if pretrained_file is None else str(pretrained_file)
        built, args = _load_named(str(model), file, model_kwargs, trust)
    else:
        if pretrained_file is not None:
            raise ValueError("pretrained_file goes with model=NAME, not with checkpoint=PATH")
        path = Path(checkpoint).expanduser()
        if not path.exists():
            raise FileNotFoundError(2, f"checkpoint {path} does not exist", str(path))
        if _is_export_dir(path):
            built, args = _load_export_dir(path, model_kwargs)
        elif path.is_dir():
            if not (path / "last.pt").is_file():
                raise FileNotFoundError(
                    2,
                    f"{path} is neither a run directory (no last.pt) nor an export directory "
                    f"(needs {' and '.join(_EXPORT_FILES)})",
                    str(path / "last.pt"),
                )
            built, args = _load_train_checkpoint(path / "last.pt", model_kwargs, trust)
        else:
            built, args = _load_train_checkpoint(path, model_kwargs, trust)
    return built.eval(), args


def flatten_positions(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position predictions of a sequence task (logits [N, M, C] with targets [N, M], e.g. the copying task)
    as N*M independent predictions ([N*M, C], [N*M]); other shapes unchanged."""
    if logits.ndim == 3 and targets.ndim == 2 and logits.shape[:2] == targets.shape:
        return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    return logits, targets


def unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(inputs, targets, lengths or None)`` from a loader's batch: ``(inputs, targets)``, or ``(inputs, targets,
    lengths)`` from a variable-length task's collate (``zoo.data.sequences.pad_collate``)."""
    if len(batch) == 3:
        return batch[0], batch[1], batch[2]
    inputs, targets = batch
    return inputs, targets, None


def call_model(model: nn.Module, inputs: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """``model(inputs)``, or ``model(inputs, lengths=lengths)`` for a padded variable-length batch."""
    return model(inputs) if lengths is None else model(inputs, lengths=lengths)


def _peak_rss_bytes() -> int | None:
    """The process's peak resident set size in bytes (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    loader,
    num_classes: int,
    device: torch.device | str,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    ctx: Any = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``loader`` (batches of ``(images, int targets)``, or ``(token ids, targets,
    lengths)`` for variable-length tasks: the model gets ``lengths=``); the one evaluation loop of the
    zoo (train.py's per-epoch evaluation and eval.py).

    With a distributed context ``ctx`` (torchrun), every count is summed over the ranks' shards, so each rank
    returns the metrics of the whole evaluation set.

    Returns a dict with ``top1``, ``top5`` (percent; top-5 is top-min(5, C)), ``loss`` (mean cross-entropy,
    computed in fp32), ``num_images``, ``class_counts`` and ``per_class_accuracy`` (percent per class; None for a
    class with no image), ``confusion_matrix`` (int64 tensor ``[C, C]`` on the CPU, rows = true class, columns =
    predicted class), ``seconds`` and ``images_per_s`` (wall time of the whole loop, data loading included, CUDA
    synchronised before the clock stops), ``peak_memory_bytes``: on CUDA ``torch.cuda.max_memory_allocated``
    since the start of the loop; on the CPU the process's peak RSS (``resource.getrusage``; whole-process and
    lifetime, so an upper bound for the evaluation; None where ``resource`` is missing).
    """
    device = torch.device(device)
    model.eval()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    matrix = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    correct5 = torch.zeros((), dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    started = time.perf_counter()
    for batch in loader:
        images, targets, lengths = unpack_batch(batch)
        images = images.to(device, non_blocking=True)
        lengths = None if lengths is None else lengths.to(device, non_blocking=True)
        targets = torch.as_tensor(targets).to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext():
            logits = call_model(model, images, lengths)
        logits, targets = flatten_positions(logits.float(), targets)  # sequence tasks: one prediction per position
        if logits.ndim != 2 or logits.shape[1] != num_classes:
            raise ValueError(f"the model returns logits of shape {tuple(logits.shape)}, expected [N, {num_classes}]")
        if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
            raise ValueError(f"targets outside [0, {num_classes}): {targets.min().item()}..{targets.max().item()}")
        loss_sum += nn.functional.cross_entropy(logits, targets, reduction="sum").double()
        top = logits.topk(min(5, num_classes), dim=1).indices
        correct5 = correct5 + (top == targets[:, None]).any(dim=1).sum()
        matrix += torch.bincount(targets * num_classes + top[:, 0], minlength=num_classes * num_classes)
    if ctx is not None and ctx.enabled:
        from zoo.training.distributed import all_reduce_sum

        summed = all_reduce_sum(torch.cat([matrix.double(), torch.stack([correct5.double(), loss_sum])]), ctx)
        matrix, correct5, loss_sum = summed[:-2].round().long(), summed[-2].round().long(), summed[-1]
    total = int(matrix.sum().item())
    correct1 = matrix.view(num_classes, num_classes).diagonal().sum()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    if total == 0:
        raise ValueError("the loader yielded no images")
    matrix = matrix.view(num_classes, num_classes).cpu()
    counts = matrix.sum(dim=1)
    per_class = [100.0 * matrix[c, c].item() / counts[c].item() if counts[c] > 0 else None for c in range(num_classes)]
    return {
        "top1": 100.0 * correct1.item() / total,
        "top5": 100.0 * correct5.item() / total,
        "loss": loss_sum.item() / total,
        "num_images": total,
        "class_counts": counts.tolist(),
        "per_class_accuracy": per_class,
        "confusion_matrix": matrix,
        "seconds": seconds,
        "images_per_s": total / max(seconds, 1e-9),
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if cuda else _peak_rss_bytes(),
    }


def save_confusion_matrix_png(
    matrix: torch.Tensor, path: str | os.PathLike, class_names: list[str] | None = None
) -> Path:
    """Draw ``matrix`` (``[C, C]``, rows = true class) to a PNG at ``path``; returns the path.

    Colours are row-normalised (the fraction of each true class predicted as each class), so rare classes stay
    visible; up to 20 classes every cell also shows its count. Above 20 classes the cell text is left out and
    only about 20 tick labels per axis are drawn, which keeps ~100 classes readable. Uses matplotlib's Agg
    canvas directly (no pyplot, no global backend change).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = torch.as_tensor(matrix).detach().cpu().to(torch.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"matrix must be square [C, C], got shape {tuple(counts.shape)}")
    c = counts.shape[0]
    names = [str(n) for n in class_names] if class_names is not None else [str(i) for i in range(c)]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for a {c}-class matrix")
    rows = counts.sum(dim=1, keepdim=True).clamp(min=1)
    normalised = (counts.double() / rows).numpy()

    side = min(max(5.0, 2.5 + 0.45 * c), 16.0) if c <= 20 else min(8.0 + 0.08 * c, 20.0)
    fig = Figure(figsize=(side + 1.5, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    step = max(1, math.ceil(c / 20))
    ticks = list(range(0, c, step))
    fontsize = 9 if c <= 20 else 7
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels([names[i] for i in ticks], rotation=90 if max(map(len, names)) > 3 else 0, fontsize=fontsize)
    ax.set_yticklabels([names[i] for i in ticks], fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    accuracy = 100.0 * counts.diagonal().sum().item() / max(counts.sum().item(), 1)
    ax.set_title(f"confusion matrix ({c} classes, {counts.sum().item()} images, top-1 {accuracy:.2f}%)")
    if c <= 20:
        for i in range(c):
            for j in range(c):
                value = int(counts[i, j])
                if value:
                    ax.text(
                        j,
                        i,
                        str(value),
                        ha="center",
                        va="center",
                        fontsize=fontsize,
                        color="white" if normalised[i, j] > 0.5 else "black",
                    )
    fig.tight_layout()
    return atomic_write(path, lambda f: fig.savefig(f, format="png"))


def _eval_dataset(cfg: Any, img_size: int):
    """The test split of ``cfg.data`` at ``img_size`` (``data.eval_subset``: the same fixed subset as train.py's),
    its class names and its ``collate_fn`` (None for fixed-size items)."""
    data = cfg.data
    dataset = create_dataset(
        data.name,
        "test",
        root=data.get("root"),
        download=bool(data.get("download", False)),
        img_size=img_size,
        is_training=False,
    )
    class_names = dataset_classes(dataset) or getattr(dataset, "classes", None)
    collate_fn = getattr(dataset, "collate_fn", None)  # variable-length tasks pad their batches
    return _subset(dataset, data.get("eval_subset"), "data.eval_subset"), class_names, collate_fn


def _deploy(model: nn.Module, architecture: Any) -> None:
    """``deploy=true``: re-parameterise ``model`` to its deployed form in place, or a ValueError for a model
    without one."""
    from zoo.deploy.onnx import has_deployed_form

    if not has_deployed_form(model):
        raise ValueError(
            f"deploy=true evaluates a model's deployed (re-parameterised) form; {architecture} has none "
            "(UniRepLKNet and InceptionNeXt have one)"
        )
    model.reparameterize()


def run_eval(cfg: Any) -> dict[str, Any]:
    """Evaluate the model ``cfg`` names (see ``configs/eval.yaml``) on the test split of ``cfg.data``.

    Writes ``cfg.out_dir/metrics.json`` (every metric, per-class accuracy, the confusion matrix as nested lists,
    and what was evaluated) and ``cfg.out_dir/confusion_matrix.png``; returns the summary: ``top1``, ``top5``,
    ``loss``, ``images_per_s``, ``peak_memory_bytes``, ``num_images``, ``out_dir``, ``metrics_file``,
    ``confusion_matrix`` (the PNG's path). The images are made at the model's ``img_size`` (its training size),
    else at ``cfg.data.img_size``; ``cfg.data.eval_subset`` selects the same subset train.py evaluates on.
    """
    from torch.utils.data import DataLoader

    if cfg.amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of null, bf16, fp16; got {cfg.amp!r}")
    if int(cfg.batch_size) <= 0:
        raise ValueError(f"batch_size must be a positive int, got {cfg.batch_size!r}")
    device = _resolve_device(cfg.device)
    model_kwargs = dict(plain(cfg.get("model_kwargs")) or {})
    model_name = plain(cfg.get("model"))
    if isinstance(model_name, dict):  # configs/model/NAME.yaml: data-derived arguments as train.py fills them
        info = DATASETS[canonical_name(cfg.data.name)]
        from_config = build_model_kwargs(model_name, info, cfg.data.get("img_size"), cfg.data.get("patch_size"))
        model_kwargs = {**from_config, **model_kwargs}
        model_name = model_name.get("name")
    trust = bool(cfg.get("trust_checkpoint") or False)
    model, args = load_model_for_eval(
        cfg.get("checkpoint"), model_name, cfg.get("pretrained_file"), model_kwargs, trust=trust
    )
    if cfg.get("deploy"):
        _deploy(model, args.get("architecture"))
    img_size = args.get("img_size")
    if not isinstance(img_size, int):
        img_size = cfg.data.img_size
    dataset, class_names, collate_fn = _eval_dataset(cfg, img_size)
    info = DATASETS[canonical_name(cfg.data.name)]
    num_classes = len(class_names) if class_names else info.num_classes
    model_classes = args.get("num_classes")
    if model_classes is not None and model_classes != num_classes:
        raise ValueError(
            f"the model predicts {model_classes} classes but {cfg.data.name} has {num_classes}: "
            f"evaluate it on the data it was trained for (data=...)"
        )
    if args.get("in_chans") is not None and args["in_chans"] != info.in_chans:
        raise ValueError(f"the model takes {args['in_chans']}-channel images but {cfg.data.name} has {info.in_chans}")
    loader = DataLoader(
        dataset,
        batch_size=int(cfg.batch_size),
        shuffle=False,
        drop_last=False,
        num_workers=int(cfg.num_workers),
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        collate_fn=collate_fn,
    )
    model.to(device)
    metrics = evaluate_classifier(model, loader, num_classes, device, AMP_DTYPES[cfg.amp])

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = save_confusion_matrix_png(metrics["confusion_matrix"], out_dir / "confusion_matrix.png", class_names)
    record = {
        **{k: v for k, v in metrics.items() if k != "confusion_matrix"},
        "confusion_matrix": metrics["confusion_matrix"].tolist(),
        "class_names": list(class_names) if class_names else None,
        "model": {k: v for k, v in args.items()},
        "data": cfg.data.name,
        "eval_subset": cfg.data.get("eval_subset"),
        "img_size": img_size,
        "device": str(device),
        "amp": cfg.amp,
        "batch_size": int(cfg.batch_size),
        "deployed": bool(getattr(model, "deployed", False)),
    }
    metrics_file = atomic_write(out_dir / "metrics.json", json.dumps(record, indent=2, default=str) + "\n")
    return {
        "top1": metrics["top1"],
        "top5": metrics["top5"],
        "loss": metrics["loss"],
        "images_per_s": metrics["images_per_s"],
        "peak_memory_bytes": metrics["peak_memory_bytes"],
        "num_images": metrics["num_images"],
        "out_dir": str(out_dir),
        "metrics_file": str(metrics_file),
        "confusion_matrix": str(png),
    }
