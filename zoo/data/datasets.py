"""Image-classification datasets: scikit-learn's digits (offline), CIFAR-10/100 (torchvision) and ImageNet
(an ImageFolder tree), each with its transforms.

Only torch and the standard library are imported at module level; scikit-learn, torchvision and ``timm.data``
are imported inside the functions that need them (``import zoo`` must not pull in scikit-learn).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["DatasetInfo", "DATASETS", "create_dataset", "default_img_size", "canonical_name", "canonical_split"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a training loop need to know about a dataset.

    ``native_size`` is the side of the images as stored; ``mean``/``std`` are per channel, in [0, 1] units, and
    are the constants the transforms normalise with. ``vocab_size``: token tasks (items of token ids), the number
    of token ids (the models' ``vocab_size``); None for the others.
    """

    name: str
    num_classes: int
    in_chans: int
    native_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    vocab_size: int | None = None


DATASETS: dict[str, DatasetInfo] = {
    # mean/std of the digits train split (1437 images, values / 16) at native 8x8 resolution.
    "digits": DatasetInfo("digits", 10, 1, 8, (0.3054,), (0.3761,)),
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    # timm's IMAGENET_DEFAULT_MEAN / IMAGENET_DEFAULT_STD.
    "imagenet": DatasetInfo("imagenet", 1000, 3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # Sequence tasks (zoo.data.sequences): pixel sequences [S*S, C] and the copying task. native_size is the
    # image side (the sequence has native_size**2 positions); for copying, the sequence length M + L + M.
    "sdigits": DatasetInfo("sdigits", 10, 1, 8, (0.3054,), (0.3761,)),
    "smnist": DatasetInfo("smnist", 10, 1, 28, (0.1307,), (0.3081,)),
    "scifar": DatasetInfo("scifar", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # grey sCIFAR: luma of the RGB pixels; state-spaces' example normalises with 122.6 / 255 and 61.0 / 255
    "scifargray": DatasetInfo("scifargray", 10, 1, 32, (0.4808,), (0.2392,)),
    # one-hot inputs over a vocabulary of 10 (in_chans), 10 classes: see zoo.data.sequences.COPYING_DEFAULTS
    "copying": DatasetInfo("copying", 10, 10, 120, (0.0,), (1.0,)),
    # token tasks (ids [L]; in_chans 1 is a placeholder): ListOps (18 tokens, pad 0, 10 classes, lengths up to 2000
    # + <eos>; the short variant up to 100) and associative recall (vocabulary 20, 42 tokens, 20 classes)
    "listops": DatasetInfo("listops", 10, 1, 2001, (0.0,), (1.0,), vocab_size=18),
    "listopsshort": DatasetInfo("listopsshort", 10, 1, 100, (0.0,), (1.0,), vocab_size=18),
    "assocrecall": DatasetInfo("assocrecall", 20, 1, 42, (0.0,), (1.0,), vocab_size=20),
}

_DEFAULT_IMG_SIZE = {
    "digits": 8,
    "cifar10": 32,
    "cifar100": 32,
    "imagenet": 224,
    "sdigits": 8,
    "smnist": 28,
    "scifar": 32,
    "scifargray": 32,
    "copying": 120,
    "listops": 2001,
    "listopsshort": 100,
    "assocrecall": 42,
}
_DEFAULT_ROOT = {"cifar10": "data", "cifar100": "data", "imagenet": os.path.join("data", "imagenet")}
_EVAL_CROP_PCT = {"cifar10": 1.0, "cifar100": 1.0, "imagenet": 0.875}
_SPLITS = {"train": "train", "test": "test", "val": "test"}
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

# Digits augmentation: torchvision RandomAffine arguments and their defaults (a small random translation/rotation).
_DIGITS_AUGMENT_DEFAULTS: dict[str, Any] = {"degrees": 10.0, "translate": (0.1, 0.1), "scale": None, "shear": None}
# create_transform arguments that the dataset sets itself, or that change the output type: not accepted in augment.
_TIMM_RESERVED = {
    "input_size",
    "is_training",
    "mean",
    "std",
    "crop_pct",
    "crop_mode",
    "crop_border_pixels",
    "use_prefetcher",
    "normalize",
    "separate",
    "naflex",
    "patch_size",
    "max_seq_len",
    "patchify",
    "patchify_channels_last",
    "patchify_flatten",
    "tf_preprocessing",
    "no_aug",
}


def canonical_name(name: str) -> str:
    """Return the key of ``DATASETS`` for ``name`` (case, ``-`` and ``_`` ignored); ``ValueError`` if unknown."""
    key = str(name).strip().lower().replace("-", "").replace("_", "")
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
    """The image side ``create_dataset`` uses when ``img_size`` is None (digits 8, CIFAR 32, ImageNet 224)."""
    return _DEFAULT_IMG_SIZE[canonical_name(name)]


def create_dataset(
    name: str,
    split: str,
    root: str | None = None,
    download: bool = False,
    img_size: int | None = None,
    is_training: bool = False,
    augment: dict | None = None,
) -> Dataset:
    """Create one split of a dataset; items are ``(image [C, S, S] float tensor, int label)`` for the image
    datasets, ``(sequence [L, C], label)`` for the sequence tasks (see :mod:`zoo.data.sequences`).

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

    Raises:
        ValueError: unknown name, split, augment key or a bad ``img_size``.
        FileNotFoundError: CIFAR/ImageNet files missing (the message names the expected path).
    """
    key = canonical_name(name)
    split = canonical_split(split)
    size = _DEFAULT_IMG_SIZE[key] if img_size is None else int(img_size)
    if size <= 0:
        raise ValueError(f"img_size must be a positive int, got {img_size!r}")
    enabled, options = _split_augment(augment)
    augmenting = is_training and enabled
    if key == "digits":
        return _create_digits(split, size, augmenting, options)
    if key in ("sdigits", "smnist", "scifar", "scifargray", "copying", "listops", "listopsshort", "assocrecall"):
        from zoo.data.sequences import create_sequence_dataset

        return create_sequence_dataset(key, split, root, download, img_size, augmenting, options)
    transform = _timm_transform(key, size, is_training, enabled, options)
    root = _DEFAULT_ROOT[key] if root is None else os.fspath(root)
    if key in ("cifar10", "cifar100"):
        return _create_cifar(key, split, root, download, transform)
    return _create_imagenet(split, root, download, transform)


# ----------------------------------------------------------------------------------------------------------- augment


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


# ------------------------------------------------------------------------------------------------------------ digits


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The digits images as float tensors [N, 1, 8, 8] in [0, 1] and int64 labels, split 80/20 (stratified)."""
    from sklearn.datasets import load_digits  # lazy: zoo must not import scikit-learn at import time
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=0.2, random_state=0, stratify=digits.target
    )

    def to_tensors(x, y):
        images = torch.as_tensor(x, dtype=torch.float32).div_(16.0).unsqueeze(1).contiguous()
        return images, torch.as_tensor(y, dtype=torch.int64)

    return {"train": to_tensors(x_train, y_train), "test": to_tensors(x_test, y_test)}


class DigitsDataset(Dataset):
    """scikit-learn's 8x8 handwritten digits, resized to ``img_size`` and normalised; optional RandomAffine.

    The resize happens once, up front; the augmentation (if any) is applied per item to the resized [0, 1] image,
    with the empty background (0) as fill, before normalisation. It draws from torch's global RNG (per worker).
    """

    def __init__(self, split: str, img_size: int = 16, augment: dict[str, Any] | None = None):
        images, labels = _digits_arrays()[canonical_split(split)]
        if img_size != images.shape[-1]:
            images = F.interpolate(
                images, size=(img_size, img_size), mode="bilinear", align_corners=False, antialias=True
            )
        info = DATASETS["digits"]
        self.images = images.contiguous()
        self.targets = labels
        self.img_size = img_size
        self.classes = [str(i) for i in range(info.num_classes)]
        self._mean = torch.tensor(info.mean).view(-1, 1, 1)
        self._std = torch.tensor(info.std).view(-1, 1, 1)
        self.transform = None
        if augment is not None:
            from torchvision.transforms import InterpolationMode, RandomAffine

            self.transform = RandomAffine(**augment, interpolation=InterpolationMode.BILINEAR, fill=0.0)
        else:  # no per-item work: normalise once
            self.images = (self.images - self._mean) / self._std

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = (self.transform(image) - self._mean) / self._std
        return image, int(self.targets[index])


def _create_digits(split: str, size: int, augmenting: bool, options: dict[str, Any]) -> DigitsDataset:
    unknown = sorted(set(options) - set(_DIGITS_AUGMENT_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown digits augment option(s) {unknown}: expected 'enabled' or {sorted(_DIGITS_AUGMENT_DEFAULTS)}"
        )
    return DigitsDataset(split, size, {**_DIGITS_AUGMENT_DEFAULTS, **options} if augmenting else None)


# ------------------------------------------------------------------------------------------------- timm transforms


def _timm_transform(key: str, size: int, is_training: bool, enabled: bool, options: dict[str, Any]):
    from timm.data import create_transform

    allowed = set(inspect.signature(create_transform).parameters) - _TIMM_RESERVED
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"unknown {key} augment option(s) {unknown}: expected 'enabled' or create_transform arguments "
            f"{sorted(allowed)}"
        )
    info = DATASETS[key]
    if is_training:
        return create_transform(
            input_size=size, is_training=True, no_aug=not enabled, mean=info.mean, std=info.std, **options
        )
    # Eval ignores augment: resize to size / crop_pct and centre-crop size (crop_pct 1.0 for CIFAR keeps it all).
    return create_transform(
        input_size=size, is_training=False, mean=info.mean, std=info.std, crop_pct=_EVAL_CROP_PCT[key]
    )


# ------------------------------------------------------------------------------------------------------------- CIFAR


def _create_cifar(key: str, split: str, root: str, download: bool, transform) -> Dataset:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if key == "cifar10" else CIFAR100
    folder = os.path.join(root, cls.base_folder)
    if not download:
        needed = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        missing = [name for name in needed if not os.path.isfile(os.path.join(folder, name))]
        if missing:
            raise FileNotFoundError(
                f"{key} files not found: expected {folder!r} to contain {needed} (missing: {missing}). "
                f"Set data.download=true (download=True) to download {cls.filename} into {root!r}, or get it from "
                f"{_CIFAR_URL} and extract it there (root={root!r})."
            )
    try:
        return cls(root, train=(split == "train"), transform=transform, download=download)
    except RuntimeError as error:  # torchvision's md5 check failed
        raise RuntimeError(
            f"{key} files in {folder!r} failed torchvision's integrity (md5) check ({error}). Delete the folder "
            f"and set data.download=true, or re-extract {cls.filename} from {_CIFAR_URL}."
        ) from error


# ---------------------------------------------------------------------------------------------------------- ImageNet


def _create_imagenet(split: str, root: str, download: bool, transform) -> Dataset:
    from torchvision.datasets import ImageFolder

    folder = os.path.join(root, "train" if split == "train" else "val")
    if not os.path.isdir(folder):
        extra = " (ImageNet cannot be downloaded automatically: data.download does not apply)" if download else ""
        raise FileNotFoundError(
            f"imagenet split {split!r} not found: expected the folder {folder!r}. Layout: "
            f"{os.path.join(root, 'train', '<class>', '*.JPEG')} and {os.path.join(root, 'val', '<class>', '*.JPEG')}, "
            f"one sub-folder per class with the same class names in both{extra}."
        )
    return ImageFolder(folder, transform=transform)


def dataset_classes(dataset: Dataset) -> list[str] | None:
    """The class names of a dataset (or of the dataset under a ``Subset``), or None if it has none."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    classes = getattr(dataset, "classes", None)
    return list(classes) if classes is not None else None


def replace_num_classes(info: DatasetInfo, num_classes: int) -> DatasetInfo:
    """``info`` with ``num_classes`` replaced (e.g. by the number of class folders of a small ImageFolder tree)."""
    return dataclasses.replace(info, num_classes=int(num_classes))
