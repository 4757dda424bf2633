"""Datasets and loaders for training image classifiers (see ``create_dataset`` and ``create_loaders``)."""

from zoo.data.datasets import DATASETS, DatasetInfo, create_dataset, default_img_size
from zoo.data.loaders import EpochRandomSampler, create_loaders, epoch_generator

__all__ = [
    "DatasetInfo",
    "DATASETS",
    "create_dataset",
    "create_loaders",
    "epoch_generator",
    "EpochRandomSampler",
    "default_img_size",
]
