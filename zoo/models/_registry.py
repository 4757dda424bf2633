"""The zoo's model registry: timm's registry plus the list of names this package owns."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable

import timm
from torch import nn

_ZOO_MODELS: list[str] = []


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``timm.models.register_model`` that records the name as the zoo's and refuses to replace a timm model."""
    name = fn.__name__
    if name not in _ZOO_MODELS:
        if timm.is_model(name):
            raise RuntimeError(f"timm already has a model named {name!r}; the zoo never overwrites a timm name")
        _ZOO_MODELS.append(name)
    return timm.models.register_model(fn)


def list_models(pattern: str = "*") -> list[str]:
    """The zoo's registered model names matching a shell-style ``pattern`` (e.g. ``"kat_*"``), sorted."""
    return sorted(fnmatch.filter(_ZOO_MODELS, pattern))


def create_model(name: str, pretrained: bool | None = None, **kwargs) -> nn.Module:
    """Create a registered model (the zoo's or timm's) through ``timm.create_model``.

    ``name`` may carry a pretrained tag (``"kat_t.in1k"``) or a timm source prefix (``"local-dir:PATH"``, e.g. a
    training run's ``export/``, or ``"hf-hub:ORG/NAME"``). ``pretrained`` defaults to True for a source prefix
    (its weights are what it is for) and False otherwise. Keyword arguments go to the model (``num_classes``,
    ``img_size``, ``drop_path_rate``, ``backend``, ``pretrained_cfg_overlay=dict(file=PATH)`` for local
    weights, ...).

    Raises:
        ValueError: unknown name; the message lists the closest registered names.
    """
    if pretrained is None:
        pretrained = ":" in name
    if ":" not in name:
        architecture = name.split(".", 1)[0]
        if not timm.is_model(architecture):
            candidates = list_models() + [m for m in timm.list_models() if m not in _ZOO_MODELS]
            close = difflib.get_close_matches(architecture, candidates, n=5, cutoff=0.5)
            hint = f"closest names: {', '.join(close)}" if close else "no close names"
            raise ValueError(f"unknown model {name!r}; {hint}. `zoo.list_models()` lists the zoo's models.")
    return timm.create_model(name, pretrained=pretrained, **kwargs)
