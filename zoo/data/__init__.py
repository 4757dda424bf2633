"""Datasets and loaders for training image classifiers and sequence models (see ``create_dataset`` and
``create_loaders``).

Every dataset is registered in :mod:`zoo.data.registry` by the module that defines it; importing the modules
below registers them all, so any import of ``zoo.data`` (or of one of its modules) sees the complete registry.
"""

from zoo.data import datasets, sequences  # noqa: F401  (register the image datasets and the sequence tasks)
from zoo.data.datasets import CorruptImageError
from zoo.data.loaders import EpochRandomSampler, TooManyCorruptImagesError, create_loaders, epoch_generator
from zoo.data.registry import DATASETS, DatasetInfo, create_dataset, default_img_size, register_dataset

__all__ = [
    "CorruptImageError",
    "TooManyCorruptImagesError",
    "DatasetInfo",
    "DATASETS",
    "create_dataset",
    "create_loaders",
    "epoch_generator",
    "EpochRandomSampler",
    "default_img_size",
    "register_dataset",
]
