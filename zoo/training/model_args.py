"""The keyword arguments a model is built with, from its model config and the data: the one place where train.py
(:func:`zoo.training.trainer.build_model`) and eval.py (a ``model=NAME`` config) derive them, so the two cannot
disagree about what a model config means.

A model config (``configs/model/NAME.yaml``) lists under ``data_args`` the data-derived arguments its model takes
(:data:`DATA_ARGS`) and under ``kwargs`` its own constructor arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zoo.data.registry import DatasetInfo

__all__ = ["DATA_ARGS", "build_model_kwargs", "plain"]

DATA_ARGS = ("img_size", "patch_size", "in_chans", "num_classes", "vocab_size")
"""The data-derived model arguments a model config may list under ``data_args``."""


def plain(value: Any) -> Any:
    """``value`` as plain Python: OmegaConf containers (``DictConfig``/``ListConfig``, also inside dicts, lists
    and tuples) become resolved dicts and lists, so that config values such as ``depths=[1,2,1,1]`` from the
    command line reach the model, the checkpoint and the export as Python values; anything else is unchanged."""
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


def build_model_kwargs(
    model_cfg: Mapping[str, Any],
    info: DatasetInfo,
    img_size: int | None = None,
    patch_size: int | None = None,
    inherited: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The model's keyword arguments: the data-derived ones ``model_cfg["data_args"]`` lists, then ``inherited``,
    then ``model_cfg["kwargs"]`` (later ones win).

    Args:
        model_cfg: a model config (``name``, ``data_args``, ``kwargs``), plain or OmegaConf.
        info: the data: ``in_chans``, ``num_classes`` and ``vocab_size`` come from it.
        img_size: the image size the data is made at (None: not passed).
        patch_size: the data config's patch size (None: not passed).
        inherited: architecture arguments of a fine-tuning source (patch size, depth, ...). Its ``patch_size``
            replaces ``patch_size``; its ``img_size`` is dropped (the caller has chosen ``img_size``).

    Data-derived arguments that are None are left out (the model's default applies).

    Raises:
        ValueError: ``data_args`` names an argument that is not in :data:`DATA_ARGS`.
    """
    inherited = dict(inherited or {})
    inherited.pop("img_size", None)
    data = {
        "img_size": img_size,
        "patch_size": inherited.pop("patch_size", None) or patch_size,
        "in_chans": info.in_chans,
        "num_classes": info.num_classes,
        "vocab_size": info.vocab_size,
    }
    wanted = list(model_cfg.get("data_args") or [])
    unknown = [name for name in wanted if name not in data]
    if unknown:
        raise ValueError(
            f"model {model_cfg.get('name')!r}: data_args {unknown} are not data-derived arguments; "
            f"expected some of {list(DATA_ARGS)}"
        )
    kwargs = {name: value for name, value in data.items() if name in wanted and value is not None}
    kwargs.update(inherited)
    kwargs.update(plain(dict(model_cfg.get("kwargs") or {})))
    return kwargs
