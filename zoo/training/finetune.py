"""Fine-tuning: start a run from trained weights (``finetune=PATH`` in train.py).

A source is one of: a checkpoint written by train.py (``last.pt``/``best.pt``, or its run directory), an export
directory (``config.json`` + ``model.safetensors``), or any other weights file of the same architecture (an
official release: a state dict or a training checkpoint holding one), which goes through the model family's
``checkpoint_filter_fn``.

Pickled files are read with the restricted unpickler and the allow-list of ``zoo.training.checkpoint``
(``SAFE_CHECKPOINT_GLOBALS``: what the official checkpoints hold besides tensors and plain values); a file holding
anything else is refused (``UntrustedCheckpointError``) unless ``trust=True`` (``trust_checkpoint=true``).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Model arguments never inherited from a source: those set by the data, regularisation, and the kernel backend.
NOT_INHERITED = (
    "num_classes",
    "in_chans",
    "drop_rate",
    "drop_path_rate",
    "proj_drop_rate",
    "attn_drop_rate",
    "pos_drop_rate",
    "patch_drop_rate",
    "backend",
)


@dataclass
class FinetuneSource:
    """Weights to start from, and what is known of the model that produced them."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    architecture: str | None = None  # registered model name, when the source records it
    model_args: dict[str, Any] = field(default_factory=dict)  # constructor arguments (img_size, patch_size, ...)


def read_source(path: str | Path, trust: bool = False) -> FinetuneSource:
    """Read a fine-tuning source (see the module docstring).

    ``trust=True`` reads pickled files with the full unpickler, which runs any code they hold (the command line's
    ``trust_checkpoint=true``). Raises FileNotFoundError / ValueError, and ``UntrustedCheckpointError`` for a file
    holding objects beyond the allow-list without ``trust``.
    """
    from zoo.training.checkpoint import load_checkpoint, load_weights_file

    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"finetune={path}: no such file or directory")
    if path.is_dir() and (path / "config.json").is_file():  # an export
        from safetensors.torch import load_file

        config = json.loads((path / "config.json").read_text())
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"finetune={path}: the export has config.json but no {weights.name}")
        args = dict(config.get("model_args") or {})
        return FinetuneSource(path, load_file(str(weights)), config.get("architecture"), args)
    # each file is read once; a checkpoint file is recognised by its "format" key below
    state = load_checkpoint(path, trust=trust) if path.is_dir() else load_weights_file(path, trust=trust)
    if isinstance(state, dict) and "format" in state and "model" in state:  # a train.py checkpoint
        model_cfg = (state.get("config") or {}).get("model", {})
        args = dict(state.get("model_args") or {})  # the constructor arguments the run built its model with
        return FinetuneSource(path, state["model"], model_cfg.get("name"), args)
    return FinetuneSource(path, state)


def inherited_model_args(source: FinetuneSource, model_name: str) -> dict[str, Any]:
    """Architecture arguments the new model takes over from the source (not the data-derived ones)."""
    if source.architecture is not None and source.architecture != model_name:
        raise ValueError(
            f"finetune={source.path} holds a {source.architecture!r} model, but model={model_name!r} was asked for"
        )
    return {k: v for k, v in source.model_args.items() if k not in NOT_INHERITED}


def load_finetune_weights(model: nn.Module, source: FinetuneSource) -> list[str]:
    """Load ``source`` into ``model``: the family's checkpoint filter (containers, position-embedding and patch
    resampling), the first convolution adapted to the model's input channels, the classifier left at its fresh
    init when its shape differs. Returns the names left at their init (the classifier, or nothing).

    Raises ValueError when other weights are missing or do not fit.
    """
    state = source.state_dict
    family = importlib.import_module(type(model).__module__)
    filter_fn = getattr(family, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    own = model.state_dict()
    first_conv = model.pretrained_cfg.get("first_conv") if hasattr(model, "pretrained_cfg") else None
    if first_conv and f"{first_conv}.weight" in state:
        key = f"{first_conv}.weight"
        want = own[key].shape[1]
        if state[key].shape[1] != want:
            state[key] = adapt_input_channels(state[key], want)
    classifiers = model.pretrained_cfg.get("classifier", "head") if hasattr(model, "pretrained_cfg") else "head"
    classifiers = (classifiers,) if isinstance(classifiers, str) else tuple(classifiers)
    reset = []
    for name in list(state):
        if name.startswith(classifiers) and (name not in own or own[name].shape != state[name].shape):
            del state[name]
            reset.append(name)
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(classifiers)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"finetune={source.path} does not fit {type(model).__name__}: missing {missing[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )
    return sorted(set(reset) | {k for k in result.missing_keys if k.startswith(classifiers)})


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A first-layer kernel [out, c, ...] for ``channels`` inputs: the sum over the source's channels, split
    equally over the new ones, so an image whose channels are all equal gives the same response as before."""
    summed = weight.float().sum(dim=1, keepdim=True)
    return (summed.repeat(1, channels, *([1] * (weight.dim() - 2))) / channels).to(weight.dtype)


def freeze(model: nn.Module, what: str | list[str] | None) -> list[str]:
    """Freeze top-level children of ``model``: ``"backbone"`` (all but the classifier) or a list of names.
    Returns the frozen names."""
    if not what:
        return []
    children = dict(model.named_children())
    if what == "backbone":
        classifier = model.pretrained_cfg.get("classifier", "head") if hasattr(model, "pretrained_cfg") else "head"
        head_root = classifier.split(".")[0]
        names = [n for n in children if n != head_root]
    else:
        names = [what] if isinstance(what, str) else list(what)
        unknown = [n for n in names if n not in children]
        if unknown:
            raise ValueError(f"freeze: no top-level modules {unknown}; the model has {list(children)}")
    for name in names:
        children[name].requires_grad_(False)
    for attribute in ("cls_token", "pos_embed", "reg_token"):  # top-level parameters of ViTs belong to the backbone
        parameter = getattr(model, attribute, None)
        if isinstance(parameter, nn.Parameter) and what == "backbone":
            parameter.requires_grad_(False)
            names.append(attribute)
    return names
