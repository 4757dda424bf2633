"""zoo.data sequence tasks: sDigits (bundled), sMNIST and sCIFAR (colour and grey) from tiny files in the real
formats, the copying task, the errors and the loaders. No network."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from tests.data.test_data import _fake_cifar, skip_cifar_md5  # noqa: F401  (a fixture)
from zoo.data import DATASETS, create_dataset, create_loaders
from zoo.data.sequences import COPYING_DEFAULTS, CopyingDataset, copying_batch


def test_sdigits_are_the_digits_as_pixel_sequences():
    seq = create_dataset("sdigits", "train")
    images = create_dataset("digits", "train", img_size=8)
    assert len(seq) == 1437 and len(create_dataset("sdigits", "test")) == 360
    x, y = seq[7]
    assert x.shape == (64, 1) and x.dtype == torch.float32 and y == images[7][1]
    torch.testing.assert_close(x, images[7][0].reshape(64, 1))  # row by row, same normalisation
    assert create_dataset("sdigits", "test", img_size=16)[0][0].shape == (256, 1)
    info = DATASETS["sdigits"]
    assert (info.num_classes, info.in_chans, info.native_size) == (10, 1, 8)


def test_sequence_tasks_take_no_augmentation():
    assert create_dataset("sdigits", "train", is_training=True, augment={})[0][0].shape == (64, 1)
    with pytest.raises(ValueError, match="no augmentation"):
        create_dataset("sdigits", "train", is_training=True, augment={"degrees": 5})


def _write_idx(path, array: np.ndarray) -> None:
    """An IDX file as MNIST ships it (uncompressed): magic (0, 0, 0x08 = uint8, ndim), big-endian dims, bytes."""
    with open(path, "wb") as f:
        f.write(struct.pack(">I", 0x0800 + array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def _fake_mnist(root, n_train=6, n_test=4):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out[split] = (images, labels)
    return out


def test_smnist_from_local_files(tmp_path):
    expected = _fake_mnist(tmp_path)
    info = DATASETS["smnist"]
    for split in ("train", "test"):
        ds = create_dataset("smnist", split, root=tmp_path)
        images, labels = expected[split]
        assert len(ds) == len(labels)
        x, y = ds[1]
        assert x.shape == (784, 1) and y == int(labels[1])
        ref = (torch.from_numpy(images[1]).float().reshape(784, 1) / 255 - info.mean[0]) / info.std[0]
        torch.testing.assert_close(x, ref)


@pytest.mark.parametrize("name", ["scifar", "scifar_gray"])
def test_scifar_from_local_files(tmp_path, skip_cifar_md5, name):  # noqa: F811
    expected = _fake_cifar(tmp_path, "cifar10")
    ds = create_dataset(name, "test", root=str(tmp_path))
    images, labels = expected["test"]
    info = DATASETS["scifargray" if name == "scifar_gray" else "scifar"]
    assert len(ds) == len(labels) and info.in_chans == (1 if name == "scifar_gray" else 3)
    x, y = ds[2]
    pixels = torch.from_numpy(images[2]).float().reshape(1024, 3) / 255  # HWC: row by row, channels last
    if name == "scifar_gray":
        pixels = pixels @ torch.tensor([[0.299], [0.587], [0.114]])
    assert x.shape == (1024, info.in_chans) and y == labels[2]
    torch.testing.assert_close(x, (pixels - torch.tensor(info.mean)) / torch.tensor(info.std), atol=1e-5, rtol=1e-5)
    assert len(create_dataset(name, "train", root=tmp_path)) == 30


def test_missing_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST.raw.*train-images-idx3-ubyte"):
        create_dataset("smnist", "train", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="scifar reads CIFAR-10.*cifar-10-batches-py"):
        create_dataset("scifar", "test", root=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        create_dataset("scifar10", "test")


def test_copying_batch_structure():
    x, y = copying_batch(5, l_noise=7, l_memorize=4, n_tokens=6, generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 4 + 7 + 4) and y.shape == (5, 4) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, :4], y) and (y >= 1).all() and (y <= 4).all()
    assert not x[:, 4:11].any() and (x[:, 11:] == 5).all()
    with pytest.raises(ValueError, match="n_tokens >= 3"):
        copying_batch(1, 3, 2, 2)


def test_copying_dataset_is_deterministic_by_seed():
    a, b, c = (CopyingDataset(20, 5, 3, 6, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.inputs, b.inputs) and not torch.equal(a.inputs, c.inputs)
    x, y = a[3]
    assert x.shape == (11, 6) and torch.equal(x.argmax(-1), a.inputs[3]) and torch.equal(y, a.targets[3])
    tokens = CopyingDataset(4, 5, 3, 6, one_hot=False)
    assert tokens[0][0].shape == (11,)


def test_copying_splits_and_loaders():
    c = COPYING_DEFAULTS
    train = create_dataset("copying", "train")
    test = create_dataset("copying", "test")
    assert len(train) == c["n_train"] and len(test) == c["n_test"]
    assert not torch.equal(train.inputs[: len(test)], test.inputs)  # different seeds
    length = c["l_noise"] + 2 * c["l_memorize"]
    info = DATASETS["copying"]
    assert (info.num_classes, info.in_chans, info.native_size) == (c["n_tokens"], c["n_tokens"], length)
    train_loader, test_loader, _ = create_loaders("copying", batch_size=8, train_subset=32, eval_subset=16)
    x, y = next(iter(train_loader))
    assert x.shape == (8, length, c["n_tokens"]) and y.shape == (8, c["l_memorize"])


def test_pixel_sequence_loaders():
    train, test, info = create_loaders("sdigits", batch_size=50, eval_batch_size=64)
    assert info == DATASETS["sdigits"]
    x, y = next(iter(train))
    assert x.shape == (50, 64, 1) and y.shape == (50,) and y.dtype == torch.int64
    assert sum(len(y) for _, y in test) == 360
