"""Image-classification datasets: scikit-learn's digits (offline), CIFAR-10/100 (torchvision) and ImageNet
(an ImageFolder tree), each with its transforms; registered with :mod:`zoo.data.registry` on import.

Only torch and the standard library are imported at module level; scikit-learn, torchvision and ``timm.data``
are imported inside the functions that need them (``import zoo`` must not pull in scikit-learn).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import os
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from zoo.data.registry import DatasetInfo, DatasetRequest, canonical_split, register_dataset

__all__ = [
    "CIFAR10_INFO",
    "CIFAR100_INFO",
    "DIGITS_INFO",
    "CorruptImageError",
    "SkippedSample",
    "IMAGENET_INFO",
    "DigitsDataset",
    "ImageFolderDataset",
    "dataset_classes",
    "replace_num_classes",
]

# mean/std of the digits train split (1437 images, values / 16) at native 8x8 resolution.
DIGITS_INFO = DatasetInfo("digits", 10, 1, 8, (0.3054,), (0.3761,))
CIFAR10_INFO = DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_INFO = DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
# timm's IMAGENET_DEFAULT_MEAN / IMAGENET_DEFAULT_STD.
IMAGENET_INFO = DatasetInfo("imagenet", 1000, 3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

_DEFAULT_ROOT = {"cifar10": "data", "cifar100": "data", "imagenet": os.path.join("data", "imagenet")}
_EVAL_CROP_PCT = {"cifar10": 1.0, "cifar100": 1.0, "imagenet": 0.875}
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
        info = DIGITS_INFO
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


@register_dataset(DIGITS_INFO)
def _build_digits(request: DatasetRequest) -> DigitsDataset:
    """Digits: ``augment`` options are RandomAffine arguments (over ``_DIGITS_AUGMENT_DEFAULTS``)."""
    options = request.augment_options
    unknown = sorted(set(options) - set(_DIGITS_AUGMENT_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown digits augment option(s) {unknown}: expected 'enabled' or {sorted(_DIGITS_AUGMENT_DEFAULTS)}"
        )
    augment = {**_DIGITS_AUGMENT_DEFAULTS, **options} if request.augmenting else None
    return DigitsDataset(request.split, request.img_size, augment)


# ------------------------------------------------------------------------------------------------- timm transforms


def _timm_transform(request: DatasetRequest):
    """timm's train transform (augment options: ``create_transform`` arguments) or eval transform (resize and
    centre crop) for a CIFAR / ImageNet split, normalising with the dataset's mean and std."""
    from timm.data import create_transform

    key, size, options, info = request.name, request.img_size, request.augment_options, request.info
    allowed = set(inspect.signature(create_transform).parameters) - _TIMM_RESERVED
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"unknown {key} augment option(s) {unknown}: expected 'enabled' or create_transform arguments "
            f"{sorted(allowed)}"
        )
    if request.is_training:
        return create_transform(
            input_size=size, is_training=True, no_aug=not request.augment, mean=info.mean, std=info.std, **options
        )
    # Eval ignores augment: resize to size / crop_pct and centre-crop size (crop_pct 1.0 for CIFAR keeps it all).
    return create_transform(
        input_size=size, is_training=False, mean=info.mean, std=info.std, crop_pct=_EVAL_CROP_PCT[key]
    )


# ------------------------------------------------------------------------------------------------------------- CIFAR


@register_dataset(CIFAR10_INFO, CIFAR100_INFO)
def _build_cifar(request: DatasetRequest) -> Dataset:
    """CIFAR-10 / CIFAR-100 through torchvision, with timm's transforms."""
    transform = _timm_transform(request)
    root = _DEFAULT_ROOT[request.name] if request.root is None else os.fspath(request.root)
    return _create_cifar(request.name, request.split, root, request.download, transform)


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

_CORRUPT_PREFIX = "cannot read image file "
# The worker's traceback ends with "<module>.CorruptImageError: cannot read image file '<path>': <reason>".
_CORRUPT_LINE = re.compile(r"CorruptImageError: " + _CORRUPT_PREFIX + r"('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"): ")


class CorruptImageError(RuntimeError):
    """An image file of an ImageFolder dataset that cannot be decoded (truncated, empty, not an image).

    ``path`` names the file, ``reason`` says what the decoder reported. Raised by ``__getitem__``; a DataLoader
    worker's copy reaches the main process as this same type with the same one-line message (the worker's
    traceback is kept in ``worker_traceback``), and the error pickles.
    """

    # DataLoader re-raises a worker's exception as ``type(message=text)`` when the type has a ``message``
    # attribute; __init__ turns that text back into the path, the reason and the one-line message.
    message = "an image file could not be decoded"

    def __init__(self, path: str | None = None, reason: str | None = None, *, message: str | None = None):
        self.worker_traceback = None
        if message is not None:  # re-raised from a DataLoader worker
            self.worker_traceback = message
            found = list(_CORRUPT_LINE.finditer(message))
            if found:
                path = ast.literal_eval(found[-1].group(1))
                reason = message[found[-1].end() :].strip()
        self.path = path
        self.reason = reason
        text = f"{_CORRUPT_PREFIX}{path!r}: {reason}" if path is not None else str(message)
        super().__init__(text)

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


@dataclasses.dataclass(frozen=True)
class SkippedSample:
    """What an ImageFolder dataset with ``skip_corrupt`` returns for an undecodable image: the marker that
    :func:`zoo.data.loaders.skipping_collate` drops from the batch, recording ``path``."""

    path: str
    reason: str


class ImageFolderDataset(Dataset):
    """torchvision's ``ImageFolder`` (same ``classes``, ``class_to_idx``, ``samples``, ``targets``) whose
    ``__getitem__`` turns a decoding error into :class:`CorruptImageError` naming the file, or, with
    ``skip_corrupt``, returns a :class:`SkippedSample` marker; good images take the same path as ImageFolder."""

    def __init__(self, root: str, transform=None, skip_corrupt: bool = False):
        from torchvision.datasets import ImageFolder  # lazy: torchvision only where it is needed

        folder = ImageFolder(root, transform=transform)
        self.root = folder.root
        self.loader = folder.loader
        self.classes = folder.classes
        self.class_to_idx = folder.class_to_idx
        self.samples = folder.samples
        self.targets = folder.targets
        self.transform = transform
        self.skip_corrupt = bool(skip_corrupt)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            sample = self.loader(path)
        except (OSError, ValueError, SyntaxError) as error:  # PIL: truncated, empty or unidentified files
            reason = f"{type(error).__name__}: {error}"
            if self.skip_corrupt:
                return SkippedSample(path, reason)
            raise CorruptImageError(path, reason) from error
        if self.transform is not None:
            sample = self.transform(sample)
        return sample, target


@register_dataset(IMAGENET_INFO)
def _build_imagenet(request: DatasetRequest) -> Dataset:
    """ImageNet as an ImageFolder tree (``<root>/train``, ``<root>/val``), with timm's transforms."""
    transform = _timm_transform(request)
    root = _DEFAULT_ROOT["imagenet"] if request.root is None else os.fspath(request.root)
    return _create_imagenet(request.split, root, request.download, transform, request.skip_corrupt)


def _create_imagenet(split: str, root: str, download: bool, transform, skip_corrupt: bool = False) -> Dataset:
    folder = os.path.join(root, "train" if split == "train" else "val")
    if not os.path.isdir(folder):
        extra = " (ImageNet cannot be downloaded automatically: data.download does not apply)" if download else ""
        raise FileNotFoundError(
            f"imagenet split {split!r} not found: expected the folder {folder!r}. Layout: "
            f"{os.path.join(root, 'train', '<class>', '*.JPEG')} and {os.path.join(root, 'val', '<class>', '*.JPEG')}, "
            f"one sub-folder per class with the same class names in both{extra}."
        )
    return ImageFolderDataset(folder, transform=transform, skip_corrupt=skip_corrupt)


def dataset_classes(dataset: Dataset) -> list[str] | None:
    """The class names of a dataset (or of the dataset under a ``Subset``), or None if it has none."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    classes = getattr(dataset, "classes", None)
    return list(classes) if classes is not None else None


def replace_num_classes(info: DatasetInfo, num_classes: int) -> DatasetInfo:
    """``info`` with ``num_classes`` replaced (e.g. by the number of class folders of a small ImageFolder tree)."""
    return dataclasses.replace(info, num_classes=int(num_classes))
