"""Undecodable images in an ImageFolder tree: a clear error naming the file by default (with and without loader
workers), or, with ``skip_corrupt``, skipped, counted and capped by ``max_skipped_fraction`` (issue 25, part 3)."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from tests.data.test_data import _image_folder
from zoo.data import CorruptImageError, TooManyCorruptImagesError, create_loaders
from zoo.data.loaders import SkipCounter


@pytest.fixture
def folder(tmp_path):
    """22 good train images (2 classes) plus a truncated JPEG and a zero-byte PNG: 24, six batches of 4."""
    from PIL import Image

    _image_folder(tmp_path, classes=("ant", "bee"), per_class=(11, 2), size=(16, 16))
    buffer = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG")
    truncated = tmp_path / "train" / "ant" / "truncated.jpg"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    empty = tmp_path / "train" / "bee" / "empty.png"
    empty.write_bytes(b"")
    return tmp_path, {str(truncated), str(empty)}


@pytest.mark.parametrize("num_workers", [0, 1])
def test_default_raises_an_error_naming_the_file(folder, num_workers):
    root, bad = folder
    train_loader, _, _ = create_loaders("imagenet", root=str(root), img_size=16, batch_size=4, num_workers=num_workers)
    with pytest.raises(CorruptImageError) as error:
        for _ in train_loader:
            pass
    assert error.value.path in bad and error.value.path in str(error.value)
    assert "\n" not in str(error.value) and error.value.reason  # one line, not a worker traceback
    assert (error.value.worker_traceback is not None) == (num_workers > 0)
    copy = pickle.loads(pickle.dumps(error.value))
    assert (type(copy), copy.path, str(copy)) == (CorruptImageError, error.value.path, str(error.value))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_skip_corrupt_drops_and_reports_the_files(folder, num_workers):
    root, bad = folder
    train_loader, eval_loader, _ = create_loaders(
        "imagenet", root=str(root), img_size=16, batch_size=4, num_workers=num_workers, skip_corrupt=True
    )
    counter = SkipCounter(len(train_loader.sampler), max_fraction=0.1)
    batches = list(counter.iterate(train_loader))
    assert set(counter.paths) == bad and len(counter.paths) == 2
    assert sum(images.shape[0] for images, _ in batches) == 22
    assert all(images.shape[1:] == (3, 16, 16) and torch.isfinite(images).all() for images, _ in batches)
    eval_counter = SkipCounter(len(eval_loader.sampler))
    assert sum(images.shape[0] for images, _ in eval_counter.iterate(eval_loader)) == 4 and not eval_counter.paths


def test_too_many_skipped_stops_with_the_list_of_files(folder):
    root, bad = folder
    train_loader, _, _ = create_loaders("imagenet", root=str(root), img_size=16, batch_size=4, skip_corrupt=True)
    counter = SkipCounter(len(train_loader.sampler), max_fraction=0.05)  # 1 of 24 allowed, 2 found
    with pytest.raises(TooManyCorruptImagesError) as error:
        list(counter.iterate(train_loader))
    assert set(error.value.paths) == bad and all(path in str(error.value) for path in bad)
    assert pickle.loads(pickle.dumps(error.value)).paths == error.value.paths


def test_training_run_skips_and_counts(folder):
    pytest.importorskip("hydra")
    from tests.test_train import _compose
    from zoo.training.trainer import train

    root, _ = folder
    overrides = [
        "data=imagenet",
        f"data.root={root}",
        "data.img_size=16",
        "data.patch_size=8",
        "data.train_subset=null",
        "data.eval_subset=null",
        "data.skip_corrupt=true",
        "data.max_skipped_fraction=0.1",
        "epochs=1",
        "batch_size=4",
        "sched=constant",
    ]
    summary = train(_compose(root / "run", *overrides))
    assert summary["skipped_images"] == 2 and summary["eval_skipped_images"] == 0
    with pytest.raises(TooManyCorruptImagesError):
        train(_compose(root / "run2", *overrides[:-3], "data.max_skipped_fraction=0.05", "epochs=1", "batch_size=4"))
