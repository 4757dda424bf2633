"""The private timm functions the zoo uses: the one place that reaches into timm's ``_``-modules.

Everything else in the zoo uses timm's public API (``timm.models``, ``timm.layers``, ``timm.optim``, ...) and
imports what timm exports only privately from here, so that a timm release that moves or changes one of them
breaks this module alone. setup.cfg bounds timm above by the newest release tested for that reason.

Each function below is a thin wrapper that imports timm's function when first called, not when this module is
imported: timm's first import may happen inside the zoo, and the import hook of ``zoo/__init__.py`` then imports
``zoo.models`` (whose modules import from here) before the importer has finished; a module-level ``from timm...``
here would leave ``zoo.models`` reading a half-initialised module. This module imports only the standard library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["feature_take_indices", "save_config_for_hf"]


def feature_take_indices(
    num_features: int, indices: int | list[int] | tuple[int, ...] | None = None, as_set: bool = False
) -> tuple[list[int], int]:
    """``timm.models._features.feature_take_indices``: the absolute indices of the features to take (None: all;
    an int n: the last n; a list: those, negative ones counted from the end) and the largest of them.

    Why private: timm (up to 1.0.31) exports it from no public module. The ``forward_intermediates`` of the zoo's
    NAT and UniRepLKNet use it so that their ``indices`` follow exactly timm's convention (and its errors) for
    every timm model.
    """
    from timm.models._features import feature_take_indices as take_indices

    return take_indices(num_features, indices, as_set)


def save_config_for_hf(model: Any, config_path: str | Path, model_args: dict[str, Any] | None = None) -> None:
    """``timm.models._hub.save_config_for_hf``: write the ``config.json`` that timm's ``local-dir:`` and
    ``hf-hub:`` loaders read for ``model`` (architecture, num_classes, model_args, pretrained_cfg).

    Why private: timm's public export, ``push_to_hf_hub``, uploads to the Hub; writing the config to a local
    folder exists only in ``timm.models._hub``. zoo.training.export uses it so an exported run has exactly the
    config timm writes and reads. ``config_path`` is passed as a Path (timm 1.0.29 calls its ``open``).
    """
    from timm.models._hub import save_config_for_hf as save_config

    save_config(model, Path(config_path), model_args=model_args)
