"""The dataset registry: each dataset's name, its :class:`DatasetInfo` and the function that builds its splits.

A dataset module registers its datasets when it is imported, by decorating a builder::

    @register_dataset(DatasetInfo("digits", 10, 1, 8, (0.3054,), (0.3761,)))
    def _build_digits(request: DatasetRequest) -> Dataset: ...

and :func:`create_dataset` looks the name up. ``zoo/data/__init__.py`` imports every dataset module, and any
import of a ``zoo.data`` module runs it first, so the registry is complete before anyone can ask it for a dataset.

The modules of ``zoo.data`` import this one and never the reverse: it imports nothing of ``zoo.data`` (only the
standard library and torch's ``Dataset`` type), which keeps the package free of import cycles.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetRequest",
    "canonical_name",
    "canonical_split",
    "create_dataset",
    "default_img_size",
    "register_dataset",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a training loop need to know about a dataset.

    ``native_size`` is the side of the images as stored (the default ``img_size``; for the sequence tasks see
    :mod:`zoo.data.sequences`); ``mean``/``std`` are per channel, in [0, 1] units, and are the constants the
    transforms normalise with. ``vocab_size``: token tasks (items of token ids), the number of token ids (the
    models' ``vocab_size``); None for the others.
    """

    name: str
    num_classes: int
    in_chans: int
    native_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    vocab_size: int | None = None


@dataclass(frozen=True)
class DatasetRequest:
    """What :func:`create_dataset` asks a builder for: one split of one dataset, already checked.

    ``name`` is the registered (canonical) name, ``split`` ``"train"`` or ``"test"``, ``img_size`` a positive int
    (the dataset's ``native_size`` unless given). ``augment`` is False when the config disabled augmentation
    (``augment={"enabled": False}``); ``augment_options`` are the other keys of the config's ``augment``, which
    the builder validates. ``root`` is None when not given (each builder has its default). ``skip_corrupt``:
    image-file datasets return a ``SkippedSample`` marker for an undecodable file instead of raising.
    """

    name: str
    split: str
    root: str | None
    download: bool
    img_size: int
    is_training: bool
    augment: bool = True
    augment_options: dict[str, Any] = field(default_factory=dict)
    skip_corrupt: bool = False

    @property
    def info(self) -> DatasetInfo:
        """The registered :class:`DatasetInfo` of ``name``."""
        return DATASETS[self.name]

    @property
    def augmenting(self) -> bool:
        """Whether the split gets the training augmentation: a training split with augmentation enabled."""
        return self.is_training and self.augment


Builder = Callable[[DatasetRequest], Dataset]

DATASETS: dict[str, DatasetInfo] = {}
"""Every registered dataset's :class:`DatasetInfo`, by canonical name (filled by :func:`register_dataset`)."""

_BUILDERS: dict[str, Builder] = {}
_SPLITS = {"train": "train", "test": "test", "val": "test"}


def _normalise(name: str) -> str:
    return str(name).strip().lower().replace("-", "").replace("_", "")


def _qualified_name(builder: Builder) -> str:
    return f"{getattr(builder, '__module__', '?')}.{getattr(builder, '__qualname__', repr(builder))}"


def register_dataset(*infos: DatasetInfo) -> Callable[[Builder], Builder]:
    """Decorator: register the decorated builder for the datasets ``infos`` describe (one builder may serve
    several names; it reads ``request.name``). The builder gets a :class:`DatasetRequest` and returns the split.

    Names are registered in canonical form (lower case, no ``-`` or ``_``: ``"listopsshort"``), and looked up
    ignoring case, ``-`` and ``_`` (``"listops_short"`` works).

    Raises:
        ValueError: no info, a name that is not in canonical form, or a name another builder already has (the
            same builder registering again, e.g. after ``importlib.reload``, replaces itself).
    """
    if not infos:
        raise ValueError("register_dataset needs at least one DatasetInfo")

    def decorator(builder: Builder) -> Builder:
        for info in infos:
            if info.name != _normalise(info.name):
                raise ValueError(f"register dataset {info.name!r} as {_normalise(info.name)!r} (the canonical form)")
            existing = _BUILDERS.get(info.name)
            if existing is not None and _qualified_name(existing) != _qualified_name(builder):
                raise ValueError(
                    f"dataset {info.name!r} is already registered by {_qualified_name(existing)}; "
                    f"{_qualified_name(builder)} cannot take it over"
                )
            DATASETS[info.name] = info
            _BUILDERS[info.name] = builder
        return builder

    return decorator


def canonical_name(name: str) -> str:
    """The registered name of ``name`` (case, ``-`` and ``_`` ignored).

    Raises:
        ValueError: an unknown name; the message lists the registered names and the closest ones.
    """
    key = _normalise(name)
    if key in DATASETS:
        return key
    close = difflib.get_close_matches(key, list(DATASETS), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown dataset {name!r}: expected one of {sorted(DATASETS)}.{hint}")


def canonical_split(split: str) -> str:
    """Return ``"train"`` or ``"test"`` (``"val"`` is an alias of ``"test"``); ``ValueError`` otherwise."""
    key = str(split).strip().lower()
    if key not in _SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {sorted(_SPLITS)} ('val' is an alias of 'test')")
    return _SPLITS[key]


def default_img_size(name: str) -> int:
    """The image side ``create_dataset`` uses when ``img_size`` is None: the dataset's ``native_size`` (digits 8,
    CIFAR 32, ImageNet 224)."""
    return DATASETS[canonical_name(name)].native_size


def create_dataset(
    name: str,
    split: str,
    root: str | None = None,
    download: bool = False,
    img_size: int | None = None,
    is_training: bool = False,
    augment: dict | None = None,
    skip_corrupt: bool = False,
) -> Dataset:
    """Create one split of a registered dataset; items are ``(image [C, S, S] float tensor, int label)`` for the
    image datasets (:mod:`zoo.data.datasets`), ``(sequence [L, C], label)`` or ``(token ids [L], label)`` for the
    sequence tasks (:mod:`zoo.data.sequences`).

    Args:
        name: ``"digits"``, ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``; sequence tasks ``"sdigits"``,
            ``"smnist"``, ``"scifar"``, ``"scifar_gray"`` (pixel sequences; MNIST files under
            ``<root>/MNIST/raw``, CIFAR-10 as for ``"cifar10"``; no augmentation), ``"copying"``, ``"listops"``
            (LRA's generator, cached under ``root``, default ``"data"``), ``"listops_short"`` and ``"assoc_recall"``.
        split: ``"train"`` or ``"test"`` (``"val"`` is an alias of ``"test"``; for ImageNet both read ``<root>/val``).
        root: data directory. Ignored for digits (bundled with scikit-learn); CIFAR default ``"data"`` (files in
            ``<root>/cifar-10-batches-py`` or ``<root>/cifar-100-python``); ImageNet default ``"data/imagenet"``
            (``<root>/train/<class>/*.JPEG`` and ``<root>/val/<class>/*.JPEG``).
        download: CIFAR only: download the archive into ``root`` if missing (needs internet).
        img_size: output side S; default ``default_img_size(name)``.
        is_training: apply the training augmentation (and, for CIFAR/ImageNet, timm's random-resized crop).
        augment: augmentation options, used only when ``is_training``. ``None`` or ``{}`` gives the defaults;
            ``{"enabled": False}`` disables augmentation. Digits: RandomAffine arguments ``degrees``, ``translate``,
            ``scale``, ``shear``. CIFAR/ImageNet: keyword arguments of ``timm.data.create_transform`` such as
            ``auto_augment``, ``re_prob``, ``hflip``, ``scale``, ``color_jitter``, ``interpolation``.
        skip_corrupt: ImageNet (ImageFolder): an undecodable image gives a ``SkippedSample`` marker (dropped by
            ``zoo.data.loaders.skipping_collate``) instead of raising ``CorruptImageError``. Ignored elsewhere.

    Raises:
        ValueError: unknown name, split, augment key or a bad ``img_size``.
        FileNotFoundError: CIFAR/ImageNet files missing (the message names the expected path).
    """
    key = canonical_name(name)
    split = canonical_split(split)
    size = DATASETS[key].native_size if img_size is None else int(img_size)
    if size <= 0:
        raise ValueError(f"img_size must be a positive int, got {img_size!r}")
    enabled, options = _split_augment(augment)
    request = DatasetRequest(
        key, split, root, bool(download), size, bool(is_training), enabled, options, bool(skip_corrupt)
    )
    return _BUILDERS[key](request)


def _split_augment(augment: Mapping | None) -> tuple[bool, dict[str, Any]]:
    """Copy ``augment`` into a plain dict (lists from a config become tuples) and pop its ``enabled`` flag."""
    if augment is None:
        return True, {}
    if not isinstance(augment, Mapping):
        raise ValueError(f"augment must be a dict (or None), got {type(augment).__name__}")
    options = {str(k): _to_plain(v) for k, v in augment.items()}
    enabled = bool(options.pop("enabled", True))
    return enabled, options


def _to_plain(value: Any) -> Any:
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return tuple(_to_plain(v) for v in value)
    return value
