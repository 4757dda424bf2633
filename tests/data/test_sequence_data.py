"""zoo.data sequence tasks: sDigits (bundled), sMNIST and sCIFAR (colour and grey) from tiny files in the real
formats, the copying task, ListOps (LRA's rules, checked by an independent parser; the cache), associative recall,
padded batches, the errors and the loaders. No network."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from tests.data.test_data import _fake_cifar, skip_cifar_md5  # noqa: F401  (a fixture)
from zoo.data import DATASETS, create_dataset, create_loaders
from zoo.data.listops import LISTOPS_VOCAB, ListOpsConfig, ListOpsDataset, generate_listops, listops_tokenize
from zoo.data.sequences import (
    ASSOC_RECALL_DEFAULTS,
    COPYING_DEFAULTS,
    AssocRecallDataset,
    CopyingDataset,
    copying_batch,
    pad_collate,
)


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


SMALL_LISTOPS = dict(n_train=40, n_val=5, n_test=10, min_length=20, max_length=60, seed=3)


def _parse(tokens: list[str], at: int = 0, depth: int = 1) -> tuple[int, int, int]:
    """Recursive-descent evaluation of a prefix ListOps expression: (value, next position, deepest level), and
    checks LRA's shape rules on the way (2..10 arguments, depth <= 10)."""
    token = tokens[at]
    if token.isdigit():
        return int(token), at + 1, depth
    assert token in ("[MIN", "[MAX", "[MED", "[SM"), token
    args, at, deepest = [], at + 1, depth
    while tokens[at] != "X":
        value, at, d = _parse(tokens, at, depth + 1)
        args.append(value)
        deepest = max(deepest, d)
    assert 2 <= len(args) <= 10, args
    if token == "[MIN":
        value = min(args)
    elif token == "[MAX":
        value = max(args)
    elif token == "[SM":
        value = sum(args) % 10
    else:
        value = int(np.median(args))  # LRA's rule
    return value, at + 1, deepest


def test_listops_follows_lra_rules_and_values_check_out():
    cfg = ListOpsConfig(**SMALL_LISTOPS)
    data = generate_listops(cfg)
    seen = set()
    for split, n in (("train", 40), ("val", 5), ("test", 10)):
        tokens, offsets, targets = data[split]
        assert len(targets) == n and offsets.shape == (n + 1,) and tokens.dtype == torch.uint8
        for i in range(n):
            ids = tokens[offsets[i] : offsets[i + 1]].tolist()
            words = [LISTOPS_VOCAB[t] for t in ids]
            value, end, deepest = _parse(words)
            assert end == len(words) and 20 < len(words) < 60 and deepest <= 10
            assert value == targets[i].item()
            seen.add(tuple(ids))
    assert len(seen) == 55  # no duplicates across the splits
    assert len({int(t) for t in data["train"][2]}) > 3


def test_listops_is_deterministic_and_eval_splits_do_not_depend_on_train_size():
    a = generate_listops(ListOpsConfig(**SMALL_LISTOPS))
    b = generate_listops(ListOpsConfig(**SMALL_LISTOPS))
    c = generate_listops(ListOpsConfig(**{**SMALL_LISTOPS, "n_train": 7}))
    d = generate_listops(ListOpsConfig(**{**SMALL_LISTOPS, "seed": 4}))
    for split in ("train", "val", "test"):
        assert all(torch.equal(x, y) for x, y in zip(a[split], b[split], strict=True))
    assert all(torch.equal(x, y) for x, y in zip(a["test"], c["test"], strict=True))
    assert torch.equal(c["train"][2], a["train"][2][:7])
    assert not torch.equal(a["test"][0][:50], d["test"][0][:50])


def test_listops_dataset_cache_round_trip(tmp_path):
    ds = ListOpsDataset("test", root=tmp_path, **SMALL_LISTOPS)
    files = list((tmp_path / "listops").iterdir())
    assert len(files) == 1 and files[0].name.endswith(".pt") and not files[0].name.startswith(".")
    x, y = ds[2]
    assert x.dtype == torch.int64 and x[-1].item() == LISTOPS_VOCAB.index("<eos>") and 0 <= y <= 9
    from zoo.data import listops

    listops._CACHE.clear()  # read back from the file, not from memory
    again = ListOpsDataset("test", root=tmp_path, **SMALL_LISTOPS)
    assert torch.equal(again.tokens, ds.tokens) and torch.equal(again.targets, ds.targets)
    assert len(ListOpsDataset("val", root=tmp_path, **SMALL_LISTOPS)) == 5
    assert len(list((tmp_path / "listops").iterdir())) == 1
    with pytest.raises(ValueError, match="split must be one of"):
        ListOpsDataset("dev", root=tmp_path, **SMALL_LISTOPS)
    with pytest.raises(ValueError, match="min_length < length < max_length"):
        ListOpsConfig(min_length=100, max_length=50)


def test_listops_tokenizer_reads_lra_source_strings():
    source = "( ( ( ( [MAX 2 ) ( ( [SM 3 ) 9 ) ] ) ) 4 ) ] )"  # LRA's TSV format
    ids = listops_tokenize(source)
    assert [LISTOPS_VOCAB[i] for i in ids] == ["[MAX", "2", "[SM", "3", "9", "X", "4", "X", "<eos>"]
    assert _parse([LISTOPS_VOCAB[i] for i in ids[:-1]])[0] == 4
    assert len(LISTOPS_VOCAB) == 18 and LISTOPS_VOCAB[0] == "<pad>"


def test_pad_collate_and_listops_loaders(tmp_path, monkeypatch):
    ids, targets, lengths = pad_collate([(torch.tensor([5, 6, 7]), 1), (torch.tensor([8]), 2)])
    assert torch.equal(ids, torch.tensor([[5, 6, 7], [8, 0, 0]])) and torch.equal(lengths, torch.tensor([3, 1]))
    assert torch.equal(targets, torch.tensor([1, 2]))
    from zoo.data import sequences

    monkeypatch.setitem(sequences.LISTOPS_PRESETS, "listopsshort", SMALL_LISTOPS)
    train, test, info = create_loaders("listops_short", root=tmp_path, batch_size=8, train_subset=16)
    assert (info.num_classes, info.vocab_size) == (10, 18)
    x, y, lengths = next(iter(train))
    assert x.shape[0] == 8 and x.shape[1] == lengths.max() and y.shape == (8,)
    for row, n in zip(x, lengths.tolist(), strict=True):
        assert row[n - 1] == LISTOPS_VOCAB.index("<eos>") and not row[n:].any() and row[:n].all()
    assert sum(len(batch[1]) for batch in test) == 10


def test_assoc_recall_construction():
    ds = AssocRecallDataset(50, vocab_size=20, seq_len=40, seed=1)
    vocab = ds.vocab
    assert len(vocab) == 20 and len(ds) == 50 and ds.inputs.shape == (50, 42)
    keys = {vocab.index(k) for k in sorted(str(v) for v in range(18))[:9]}
    for x, y in (ds[i] for i in range(50)):
        pairs = x[:40].view(20, 2).tolist()
        assert all(k in keys and v not in keys for k, v in pairs)
        mapping = {}
        for k, v in pairs:  # one value per key within a sequence
            assert mapping.setdefault(k, v) == v
        assert vocab[x[40]] == "=>" and x[41].item() in mapping and y == mapping[x[41].item()]
    assert len({tuple(r) for r in torch.cat([ds.inputs, ds.targets[:, None]], 1).tolist()}) == 50  # distinct
    again = AssocRecallDataset(50, seed=1)
    assert torch.equal(again.inputs, ds.inputs) and not torch.equal(AssocRecallDataset(50, seed=2).inputs, ds.inputs)
    train, test = create_dataset("assoc_recall", "train"), create_dataset("assoc_recall", "test")
    assert (len(train), len(test)) == (ASSOC_RECALL_DEFAULTS["n_train"], ASSOC_RECALL_DEFAULTS["n_test"])
    info = DATASETS["assocrecall"]
    assert (info.num_classes, info.vocab_size, info.native_size) == (20, 20, 42)
