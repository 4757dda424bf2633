"""Train/eval DataLoaders with a deterministic, resumable shuffle: the order of epoch ``e`` is a pure function of
``(seed, e)``, independent of the global RNG state."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sized

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, default_collate

from zoo.data.datasets import SkippedSample, dataset_classes, replace_num_classes
from zoo.data.registry import DATASETS, DatasetInfo, canonical_name, create_dataset

__all__ = [
    "create_loaders",
    "epoch_generator",
    "EpochRandomSampler",
    "ShardSampler",
    "SkipCounter",
    "TooManyCorruptImagesError",
    "seed_worker",
    "skipping_collate",
    "strip_skipped",
]

_SEED_STRIDE = 1000003
_SEED_MASK = (1 << 63) - 1


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The train sampler's shuffling generator for ``epoch``: a fresh CPU ``torch.Generator`` seeded with
    ``seed * 1000003 + epoch`` (deterministic for a given ``(seed, epoch)``; does not touch the global RNG)."""
    generator = torch.Generator()
    generator.manual_seed((int(seed) * _SEED_STRIDE + int(epoch)) & _SEED_MASK)
    return generator


class EpochRandomSampler(Sampler[int]):
    """A random permutation of ``range(len(data_source))`` drawn from ``epoch_generator(seed, epoch)``.

    Call ``set_epoch(epoch)`` before each epoch (as with ``DistributedSampler``); iterating twice without it gives
    the same order again.
    """

    def __init__(self, data_source: Sized, seed: int = 0):
        self.data_source = data_source
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(len(self.data_source), generator=epoch_generator(self.seed, self.epoch))
        return iter(order.tolist())

    def __len__(self) -> int:
        return len(self.data_source)


class ShardSampler(Sampler[int]):
    """Evaluation sampler for distributed runs: rank ``r`` of ``w`` gets indices ``r, r + w, r + 2w, ...`` in order,
    without padding, so that summing correct counts and sample counts over ranks (all_reduce) gives the exact
    accuracy over the whole split. ``set_epoch`` is accepted and ignored."""

    def __init__(self, data_source: Sized, num_replicas: int, rank: int):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.data_source = data_source
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)

    def set_epoch(self, epoch: int) -> None:
        """No-op (the evaluation order is fixed)."""

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.data_source), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.data_source), self.num_replicas))


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed ``random`` and NumPy from the worker's torch seed (which DataLoader
    derives from its base seed and the worker id), so augmentations that use them are reproducible."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


# ------------------------------------------------------------------------------------------- skipping corrupt images

SKIPPED_KEY = "skipped"


def skipping_collate(samples: list) -> dict:
    """Collate for ``skip_corrupt`` loaders: drop the ``SkippedSample`` markers and carry their paths with the
    batch, ``{"batch": default_collate(good samples) or None, "skipped": [paths]}``, so that the count reaches
    the main process from any worker (the loop strips it with :func:`strip_skipped`)."""
    good = [sample for sample in samples if not isinstance(sample, SkippedSample)]
    skipped = [sample.path for sample in samples if isinstance(sample, SkippedSample)]
    return {"batch": default_collate(good) if good else None, SKIPPED_KEY: skipped}


def strip_skipped(batch) -> tuple[object | None, list[str]]:
    """``(batch, skipped paths)`` from a loader's batch: a :func:`skipping_collate` batch is unwrapped (its batch
    is None when every sample was skipped); any other batch is returned as is, with no paths."""
    if isinstance(batch, dict) and SKIPPED_KEY in batch:
        return batch["batch"], list(batch[SKIPPED_KEY])
    return batch, []


class TooManyCorruptImagesError(RuntimeError):
    """More than ``max_skipped_fraction`` of an epoch's samples were undecodable; ``paths`` lists them."""

    def __init__(self, paths: list[str], total: int, max_fraction: float):
        self.paths, self.total, self.max_fraction = list(paths), int(total), float(max_fraction)
        listing = "\n".join(f"  {path}" for path in self.paths)
        super().__init__(
            f"{len(self.paths)} of {self.total} samples could not be decoded, more than data.max_skipped_fraction="
            f"{self.max_fraction} allows; fix or remove these files:\n{listing}"
        )

    def __reduce__(self):
        return (type(self), (self.paths, self.total, self.max_fraction))


class SkipCounter:
    """Counts the samples a ``skip_corrupt`` loader skipped in one pass over ``total`` samples, and stops (raises
    :class:`TooManyCorruptImagesError` with the list of files) as soon as more than ``max_fraction`` of them
    have been skipped."""

    def __init__(self, total: int, max_fraction: float = 0.01):
        self.total = int(total)
        self.max_fraction = float(max_fraction)
        self.paths: list[str] = []

    def strip(self, batch):
        """The batch without its skipped paths (None if all its samples were skipped), after counting them."""
        batch, paths = strip_skipped(batch)
        if paths:
            self.paths.extend(paths)
            if len(self.paths) > self.max_fraction * self.total:
                raise TooManyCorruptImagesError(self.paths, self.total, self.max_fraction)
        return batch

    def iterate(self, loader):
        """The loader's batches, stripped and counted, leaving out batches with no sample left."""
        for batch in loader:
            batch = self.strip(batch)
            if batch is not None:
                yield batch


def _subset(dataset: Dataset, n: int | None, what: str) -> Dataset:
    """The first ``n`` indices of a fixed permutation (seed 0) of ``dataset``; all of it if ``n`` is None or larger."""
    if n is None:
        return dataset
    n = int(n)
    if n <= 0:
        raise ValueError(f"{what} must be a positive number of samples or None, got {n}")
    if n >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))
    return Subset(dataset, order[:n].tolist())


def create_loaders(
    name: str,
    root: str | None = None,
    download: bool = False,
    img_size: int | None = None,
    batch_size: int = 64,
    eval_batch_size: int | None = None,
    num_workers: int = 0,
    seed: int = 0,
    augment: dict | None = None,
    train_subset: int | None = None,
    eval_subset: int | None = None,
    distributed: bool = False,
    skip_corrupt: bool = False,
) -> tuple[DataLoader, DataLoader, DatasetInfo]:
    """Create the train and eval loaders of a dataset and return ``(train_loader, eval_loader, info)``.

    The train loader shuffles with ``EpochRandomSampler(train_set, seed)`` (or, with ``distributed=True``,
    ``DistributedSampler(train_set, seed=seed)``); call ``train_loader.sampler.set_epoch(epoch)`` before each epoch.
    It drops the last incomplete batch; the eval loader keeps it and does not shuffle (distributed: each rank gets
    a disjoint, unpadded shard, see ``ShardSampler``). Arguments ``name``, ``root``, ``download``, ``img_size`` and
    ``augment`` are as in ``create_dataset`` (the train split gets ``is_training=True``, the test split never
    augments). ``train_subset``/``eval_subset`` keep the first N samples of a fixed permutation (seed 0) for tiny
    runs. ``eval_batch_size`` defaults to ``batch_size``. ``info`` is ``DATASETS[name]``, except that for an
    ImageFolder (ImageNet) tree ``num_classes`` is the number of class folders found. Datasets with a
    ``collate_fn`` (variable-length token tasks) batch with it: ``(ids, targets, lengths)``.

    An undecodable image of an ImageFolder tree raises ``CorruptImageError`` naming the file. With
    ``skip_corrupt=True`` both loaders batch with :func:`skipping_collate` instead: each batch is a dict
    ``{"batch": (images, targets) or None, "skipped": [paths]}``; strip it with :func:`strip_skipped` or
    :class:`SkipCounter`.

    Raises:
        ValueError: as ``create_dataset``; bad batch sizes; a train split smaller than one batch (the train loader
            would be empty); train and val class folders that differ; ``distributed=True`` without an initialised
            process group.
        FileNotFoundError: as ``create_dataset``.
    """
    key = canonical_name(name)
    eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
    for label, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if int(value) <= 0:
            raise ValueError(f"{label} must be a positive int, got {value!r}")
    if int(num_workers) < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers!r}")

    common = dict(root=root, download=download, img_size=img_size, skip_corrupt=bool(skip_corrupt))
    train_set = create_dataset(key, "train", is_training=True, augment=augment, **common)
    eval_set = create_dataset(key, "test", is_training=False, **common)

    info = DATASETS[key]
    if key == "imagenet":
        train_classes, eval_classes = dataset_classes(train_set), dataset_classes(eval_set)
        if train_classes != eval_classes:
            only_train = sorted(set(train_classes) - set(eval_classes))[:5]
            only_eval = sorted(set(eval_classes) - set(train_classes))[:5]
            raise ValueError(
                f"imagenet train and val class folders differ ({len(train_classes)} vs {len(eval_classes)} classes; "
                f"only in train: {only_train}, only in val: {only_eval}): labels would not match"
            )
        info = replace_num_classes(info, len(train_classes))

    collate_fn = getattr(train_set, "collate_fn", None)  # variable-length tasks: (ids, targets, lengths) batches
    if skip_corrupt and collate_fn is None:
        collate_fn = skipping_collate
    train_set = _subset(train_set, train_subset, "train_subset")
    eval_set = _subset(eval_set, eval_subset, "eval_subset")

    if distributed:
        import torch.distributed as dist
        from torch.utils.data import DistributedSampler

        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group "
                "(call torch.distributed.init_process_group first, e.g. under torchrun)"
            )
        world, rank = dist.get_world_size(), dist.get_rank()
        train_sampler: Sampler = DistributedSampler(
            train_set, num_replicas=world, rank=rank, shuffle=True, seed=int(seed)
        )
        eval_sampler: Sampler = ShardSampler(eval_set, world, rank)
    else:
        train_sampler = EpochRandomSampler(train_set, seed)
        eval_sampler = ShardSampler(eval_set, 1, 0)

    per_rank = len(train_sampler)
    if per_rank < batch_size:
        raise ValueError(
            f"batch_size {batch_size} is larger than the {per_rank} training samples per process "
            f"({len(train_set)} in all): with drop_last=True the train loader would yield no batch; "
            f"lower batch_size or raise train_subset"
        )

    loader_args = dict(
        num_workers=int(num_workers),
        worker_init_fn=seed_worker,
        pin_memory=torch.cuda.is_available(),
        # no persistent workers: each epoch's worker seeds are drawn from the global RNG when the epoch starts,
        # so a resumed run (RNG restored) gets the same augmentations
        persistent_workers=False,
        collate_fn=collate_fn,
    )
    train_loader = DataLoader(
        train_set, batch_size=int(batch_size), sampler=train_sampler, drop_last=True, **loader_args
    )
    eval_loader = DataLoader(
        eval_set, batch_size=int(eval_batch_size), sampler=eval_sampler, drop_last=False, **loader_args
    )
    return train_loader, eval_loader, info
