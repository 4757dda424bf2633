"""zoo.data: digits (offline), CIFAR-10/100 from tiny files in torchvision's layout, a tiny ImageFolder tree, the
errors, and the epoch-seeded sampler. No network: nothing here downloads."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from zoo.data import DATASETS, DatasetInfo, create_dataset, create_loaders, epoch_generator
from zoo.data.loaders import EpochRandomSampler

# ------------------------------------------------------------------------------------------------------------ digits


def test_digits_sizes_shapes_labels():
    train = create_dataset("digits", "train", img_size=16)
    test = create_dataset("digits", "test", img_size=16)
    assert (len(train), len(test)) == (1437, 360)
    x, y = train[0]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32
    labels = torch.tensor([test[i][1] for i in range(len(test))])
    assert labels.min() == 0 and labels.max() == 9
    assert torch.bincount(labels, minlength=10).min() >= 35  # stratified: ~36 per class
    assert len(create_dataset("digits", "val")) == 360  # alias of test


def test_digits_split_is_deterministic():
    a = create_dataset("digits", "test", img_size=8)
    from zoo.data import datasets

    datasets._digits_arrays.cache_clear()  # reload from scikit-learn and split again
    b = create_dataset("digits", "test", img_size=8)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)


def test_digits_normalisation_at_native_size():
    train = create_dataset("digits", "train", img_size=8)
    assert train.images.shape == (1437, 1, 8, 8)
    assert abs(train.images.mean().item()) < 1e-3
    assert abs(train.images.std().item() - 1.0) < 1e-3


@pytest.mark.parametrize("augment", [None, {}, {"degrees": 0, "translate": (0.2, 0.2)}], ids=str)
def test_digits_augmentation_on(augment):
    train = create_dataset("digits", "train", img_size=16, is_training=True, augment=augment)
    torch.manual_seed(0)
    views = torch.stack([train[5][0] for _ in range(8)])
    assert views.shape == (8, 1, 16, 16)
    assert not all(torch.equal(views[0], v) for v in views[1:])  # random
    plain = create_dataset("digits", "train", img_size=16)[5][0]
    assert not torch.equal(views[0], plain)


def test_digits_augmentation_off():
    plain = create_dataset("digits", "train", img_size=16)
    for kwargs in ({"is_training": True, "augment": {"enabled": False}}, {"is_training": False, "augment": {}}):
        ds = create_dataset("digits", "train", img_size=16, **kwargs)
        assert torch.equal(ds[3][0], plain[3][0]) and torch.equal(ds[3][0], ds[3][0])


def test_digits_unknown_augment_option():
    with pytest.raises(ValueError, match="auto_augment"):
        create_dataset("digits", "train", is_training=True, augment={"auto_augment": "rand-m9"})


def test_digits_loaders():
    train, test, info = create_loaders("digits", batch_size=100, eval_batch_size=64, img_size=12)
    assert info == DATASETS["digits"] and isinstance(info, DatasetInfo)
    assert (info.num_classes, info.in_chans, info.native_size) == (10, 1, 8)
    assert len(train) == 1437 // 100 and len(test) == -(-360 // 64)  # drop_last for train only
    x, y = next(iter(train))
    assert x.shape == (100, 1, 12, 12) and y.shape == (100,) and y.dtype == torch.int64
    assert sum(len(y) for _, y in test) == 360


def test_subsets():
    train, test, _ = create_loaders("digits", batch_size=8, train_subset=40, eval_subset=20)
    assert len(train.dataset) == 40 and len(test.dataset) == 20
    again, _, _ = create_loaders("digits", batch_size=8, train_subset=40)
    assert again.dataset.indices == train.dataset.indices  # fixed permutation
    with pytest.raises(ValueError, match="batch_size 64"):
        create_loaders("digits", batch_size=64, train_subset=40)


# ----------------------------------------------------------------------------------------------------------- sampler


def test_epoch_sampler_is_deterministic_and_ignores_global_rng():
    sampler = EpochRandomSampler(range(50), seed=3)
    sampler.set_epoch(2)
    torch.manual_seed(0)
    first = list(sampler)
    torch.manual_seed(123)
    torch.rand(10)
    again = EpochRandomSampler(range(50), seed=3)
    again.set_epoch(2)
    assert list(again) == first == list(sampler)
    assert sorted(first) == list(range(50))
    sampler.set_epoch(3)
    assert list(sampler) != first
    other_seed = EpochRandomSampler(range(50), seed=4)
    other_seed.set_epoch(2)
    assert list(other_seed) != first
    expected = torch.randperm(50, generator=epoch_generator(3, 2)).tolist()
    assert first == expected


def test_train_loader_order_follows_epoch():
    def labels(seed, epoch):
        train, _, _ = create_loaders("digits", batch_size=16, seed=seed, train_subset=64, augment={"enabled": False})
        train.sampler.set_epoch(epoch)
        return torch.cat([y for _, y in train])

    torch.manual_seed(7)
    a = labels(0, 1)
    torch.manual_seed(8)
    assert torch.equal(a, labels(0, 1))
    assert not torch.equal(a, labels(0, 2))


# ------------------------------------------------------------------------------------------------------------- CIFAR


def _write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _fake_cifar(root, kind, n_train_per_file=6, n_test=5):
    """Write tiny CIFAR files in torchvision's layout; return {split: (uint8 [N, 32, 32, 3], labels)}.

    The real files are Python-2 pickles whose keys torchvision reads (``encoding="latin1"``) as ``str``
    (``"data"``, ``"labels"``, ...); pickles written here with ``str`` keys load the same way.
    """
    rng = np.random.default_rng(0)
    if kind == "cifar10":
        folder, train_files, label_key, classes = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            "labels",
            10,
        )
        meta_file, meta = "batches.meta", {"label_names": [f"class{i}" for i in range(10)]}
        test_file = "test_batch"
    else:
        folder, train_files, label_key, classes = "cifar-100-python", ["train"], "fine_labels", 100
        meta_file, meta = (
            "meta",
            {
                "fine_label_names": [f"fine{i}" for i in range(100)],
                "coarse_label_names": [f"coarse{i}" for i in range(20)],
            },
        )
        test_file = "test"
    os.makedirs(root / folder)
    out = {"train": ([], []), "test": ([], [])}
    for split, files, n in (("train", train_files, n_train_per_file), ("test", [test_file], n_test)):
        for name in files:
            data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
            labels = rng.integers(0, classes, size=n).tolist()
            _write_pickle(root / folder / name, {"data": data, label_key: labels, "coarse_labels": [0] * n})
            out[split][0].append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            out[split][1].extend(labels)
    _write_pickle(root / folder / meta_file, meta)
    return {split: (np.concatenate(images), labels) for split, (images, labels) in out.items()}


@pytest.fixture
def skip_cifar_md5(monkeypatch):
    """torchvision checks each CIFAR file's md5 against the official archive's (``_check_integrity`` and
    ``_load_meta`` both call ``torchvision.datasets.cifar.check_integrity``); our tiny files cannot match, so the
    check is reduced to "the file exists" for this test only. Everything else is the real torchvision class."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_from_local_files(tmp_path, skip_cifar_md5, kind):
    expected = _fake_cifar(tmp_path, kind)
    info = DATASETS[kind]
    test = create_dataset(kind, "test", root=str(tmp_path))
    images, labels = expected["test"]
    assert len(test) == len(labels) == 5 and len(test.classes) == info.num_classes
    for i in range(len(test)):
        x, y = test[i]
        assert x.shape == (3, 32, 32) and y == labels[i]
        # eval at 32 px keeps the whole image (crop_pct 1.0): exactly the normalised pixels
        ref = torch.from_numpy(images[i]).permute(2, 0, 1).float() / 255 - torch.tensor(info.mean)[:, None, None]
        ref = ref / torch.tensor(info.std)[:, None, None]
        torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-5)

    train = create_dataset(
        kind,
        "train",
        root=tmp_path,
        is_training=True,
        augment={"auto_augment": "rand-m9-mstd0.5", "re_prob": 0.25, "scale": [0.5, 1.0]},
    )
    assert len(train) == len(expected["train"][1])
    assert train[0][0].shape == (3, 32, 32) and train[0][1] == expected["train"][1][0]

    train_loader, eval_loader, got = create_loaders(kind, root=str(tmp_path), batch_size=4, img_size=24)
    assert got == info
    x, y = next(iter(train_loader))
    assert x.shape == (4, 3, 24, 24) and y.dtype == torch.int64
    x, y = next(iter(eval_loader))
    assert x.shape == (4, 3, 24, 24) and y.tolist() == labels[:4]


@pytest.mark.parametrize(("kind", "folder"), [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing_files(tmp_path, kind, folder):
    with pytest.raises(FileNotFoundError) as error:
        create_dataset(kind, "train", root=str(tmp_path / "nowhere"))
    message = str(error.value)
    assert os.path.join(str(tmp_path / "nowhere"), folder) in message
    assert "data.download=true" in message and "https://www.cs.toronto.edu/~kriz/cifar.html" in message


# ---------------------------------------------------------------------------------------------------------- ImageNet


def _image_folder(root, classes=("ant", "bee", "cat"), per_class=(4, 2), size=(40, 30)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class, strict=True):
        for name in classes:
            os.makedirs(root / split / name)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_imagenet_tiny_folder(tmp_path):
    _image_folder(tmp_path)
    train_loader, eval_loader, info = create_loaders(
        "imagenet", root=str(tmp_path), img_size=32, batch_size=4, eval_batch_size=5
    )
    assert info.num_classes == 3 and DATASETS["imagenet"].num_classes == 1000
    assert (info.in_chans, info.mean) == (3, DATASETS["imagenet"].mean)
    assert len(train_loader) == 12 // 4
    x, y = next(iter(train_loader))
    assert x.shape == (4, 3, 32, 32) and set(y.tolist()) <= {0, 1, 2}
    batches = list(eval_loader)
    assert [b[0].shape for b in batches] == [(5, 3, 32, 32), (1, 3, 32, 32)]
    assert torch.cat([b[1] for b in batches]).tolist() == [0, 0, 1, 1, 2, 2]
    assert create_dataset("imagenet", "test", root=tmp_path, img_size=20)[0][0].shape == (3, 20, 20)


def test_imagenet_class_mismatch(tmp_path):
    _image_folder(tmp_path)
    os.rename(tmp_path / "val" / "cat", tmp_path / "val" / "dog")
    with pytest.raises(ValueError, match="class folders differ"):
        create_loaders("imagenet", root=str(tmp_path), batch_size=2)


def test_imagenet_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        create_dataset("imagenet", "val", root=str(tmp_path))
    message = str(error.value)
    assert os.path.join(str(tmp_path), "val") in message and "<class>" in message and ".JPEG" in message


# ------------------------------------------------------------------------------------------------------------ errors


def test_unknown_dataset_suggests_close_matches():
    with pytest.raises(ValueError, match="cifar10") as error:
        create_dataset("cifar1O", "train")
    assert "Did you mean" in str(error.value) and "digits" in str(error.value)  # lists the valid names
    with pytest.raises(ValueError, match="unknown dataset"):
        create_loaders("mnist")
    assert len(create_dataset("Digits", "test")) == 360  # case-insensitive


def test_bad_split():
    with pytest.raises(ValueError, match=r"unknown split 'valid'.*train"):
        create_dataset("digits", "valid")


def test_import_does_not_pull_sklearn():
    import subprocess
    import sys

    code = "import sys, zoo.data; print('sklearn' in {m.split('.')[0] for m in sys.modules})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
