"""Export a trained model in timm's local-dir / Hugging Face Hub layout.

``out_dir/model.safetensors`` holds the state dict, ``out_dir/config.json`` the config timm's
``load_model_config_from_path`` reads::

    {"architecture": "kat_t", "num_classes": 7, "num_features": 192, "global_pool": "token",
     "model_args": {"img_size": [32, 32], "num_classes": 7, ...}, "pretrained_cfg": {"input_size": [3, 32, 32], ...}}

so that, after ``import zoo``, ``timm.create_model("local-dir:" + out_dir, pretrained=True)`` rebuilds the
architecture with ``model_args`` and loads the weights. (timm reads the config whatever ``pretrained`` is, but it
loads the weights only with ``pretrained=True``.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from timm.models import get_pretrained_cfg, split_model_name_tag

from zoo._io import atomic_write
from zoo._timm import save_config_for_hf

__all__ = ["export_model"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_SOURCE_KEYS = ("url", "file", "hf_hub_id", "hf_hub_filename", "source", "state_dict", "architecture")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def _cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors, each with its own storage.

    safetensors refuses tensors that share memory (tied weights, views); a copy per key keeps every key, so timm's
    strict ``load_state_dict`` finds them all (tied parameters simply receive the same values twice).
    """
    out = {}
    for key, value in model.state_dict().items():
        value = value.detach()
        out[key] = torch.empty_like(value, device="cpu", memory_format=torch.contiguous_format).copy_(value)
    return out


def _timm_config(model: torch.nn.Module, model_args: dict[str, Any]) -> dict[str, Any] | None:
    """The config timm's own ``save_config_for_hf`` writes for ``model`` (None when it cannot describe it)."""
    if not isinstance(getattr(model, "pretrained_cfg", None), dict) or "architecture" not in model.pretrained_cfg:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CONFIG_NAME
        save_config_for_hf(model, path, model_args=dict(model_args) or None)
        return json.loads(path.read_text())


@contextlib.contextmanager
def _without_channel_warnings():
    """Silence timm's "Pretrained mean / std does not match N channels" while it writes the config of a model
    whose input channels differ from its architecture's pretrained cfg (a 1-channel model of an RGB architecture:
    timm averages the cfg's mean and std). For callers that give their own mean and std, which replace those."""

    def keep(record: logging.LogRecord) -> bool:
        return "does not match" not in record.getMessage()

    logger = logging.getLogger("timm.data.model_config")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _fallback_config(model: torch.nn.Module, architecture: str, model_args: dict[str, Any]) -> dict[str, Any]:
    """A config for a model timm did not build: the architecture's registered pretrained cfg, the model's sizes."""
    default = get_pretrained_cfg(architecture)
    pretrained_cfg = default.to_dict(remove_source=True) if default is not None else {}
    try:  # timm >= 1.0.31: in_chans, num_classes, global_pool (and img_size where recorded) of the model
        from timm.models import get_model_args

        args = get_model_args(model, model_args)
    except ImportError:  # timm 1.0.29 and 1.0.30 do not have it
        args = dict(model_args)
    num_classes = getattr(model, "num_classes", None)
    in_chans = args.get("in_chans", getattr(model, "in_chans", None))
    if isinstance(num_classes, int):
        args.setdefault("num_classes", num_classes)
        pretrained_cfg["num_classes"] = num_classes
    size = tuple(pretrained_cfg.get("input_size") or (3, 224, 224))
    if isinstance(in_chans, int):
        args.setdefault("in_chans", in_chans)
        size = (in_chans, *size[1:])
    if args.get("img_size") is not None:
        img_size = args["img_size"]
        size = (size[0], *((img_size, img_size) if isinstance(img_size, int) else tuple(img_size)))
    pretrained_cfg["input_size"] = size
    pretrained_cfg["custom_load"] = False
    config: dict[str, Any] = {"architecture": architecture, "num_classes": num_classes}
    num_features = getattr(model, "num_features", None)
    if num_features is not None:
        config["num_features"] = num_features
    if args:
        config["model_args"] = args
    config["pretrained_cfg"] = pretrained_cfg
    return config


def export_model(
    model: torch.nn.Module,
    out_dir: str | Path,
    architecture: str,
    model_args: dict | None = None,
    pretrained_cfg: dict | None = None,
) -> Path:
    """Write ``model`` to ``out_dir`` as ``model.safetensors`` + ``config.json`` (timm's local-dir layout).

    Afterwards (and after ``import zoo`` for the zoo's architectures)
    ``timm.create_model("local-dir:" + str(out_dir), pretrained=True)`` rebuilds the model with the same
    weights.

    Args:
        model: the model to export (DDP / DataParallel / ``torch.compile`` wrappers are unwrapped). Built by
            ``timm.create_model`` it carries its construction arguments and pretrained cfg, which timm's
            ``save_config_for_hf`` turns into the config; any other module (e.g. ``KAT(...)`` constructed
            directly) gets the architecture's registered pretrained cfg and its ``num_classes`` / ``in_chans`` /
            ``global_pool``, so every other non-default constructor argument (``img_size``, ...) must be given in
            ``model_args``.
        out_dir: the directory to write (created if missing; existing files of the same names are replaced).
        architecture: the timm model name to rebuild with (``"kat_t"``; a ``.tag`` suffix is recorded as the
            pretrained tag). It wins over the model's own pretrained cfg.
        model_args: keyword arguments for ``timm.create_model`` when rebuilding (JSON types), merged over the
            arguments timm recorded when the model was created (``img_size``, ``num_classes``, ...).
        pretrained_cfg: entries merged into the exported ``pretrained_cfg`` (e.g. ``mean``, ``std``,
            ``label_names``, ``crop_pct``).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: ``architecture`` is not registered with timm, ``model_args`` disagree with the model, or the
            config is not JSON-serializable.

    Each file is written to a temporary name and renamed into place (weights first, then the config), so a kill
    never leaves a partial file; a kill between the two renames leaves the new weights beside the old config.
    """
    out_dir = Path(out_dir).expanduser()
    model = _unwrap(model)
    arch, tag = split_model_name_tag(architecture)
    if not timm.is_model(arch):
        raise ValueError(f"{arch!r} is not a model registered with timm (for the zoo's models, `import zoo` first)")
    model_args = dict(model_args or {})
    for key in ("num_classes", "in_chans"):
        current = getattr(model, key, None)
        if key in model_args and isinstance(current, int) and model_args[key] != current:
            raise ValueError(f"model_args {key}={model_args[key]!r} disagrees with the model's {key}={current}")

    own_normalisation = {"mean", "std"} <= set(pretrained_cfg or {})
    with _without_channel_warnings() if own_normalisation else contextlib.nullcontext():
        config = _timm_config(model, model_args)
    if config is None:
        config = _fallback_config(model, arch, model_args)
    config["architecture"] = arch
    if model_args:  # older timm versions do not merge them themselves
        config["model_args"] = {**config.get("model_args", {}), **model_args}
    exported_cfg = {k: v for k, v in config.get("pretrained_cfg", {}).items() if k not in _SOURCE_KEYS}
    if tag:
        exported_cfg["tag"] = tag
    exported_cfg.update({k: v for k, v in (pretrained_cfg or {}).items() if k not in _SOURCE_KEYS})
    if config.get("num_classes") is not None:
        exported_cfg["num_classes"] = config["num_classes"]
    config["pretrained_cfg"] = exported_cfg
    try:
        text = json.dumps(config, indent=2) + "\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"the exported config is not JSON-serializable ({e}); pass JSON types") from e

    tensors = _cpu_state_dict(model)
    payload = safetensors.torch.save(tensors, metadata={"format": "pt"})
    del tensors
    atomic_write(out_dir / WEIGHTS_NAME, payload)
    atomic_write(out_dir / CONFIG_NAME, text)
    return out_dir
