"""Sequence tasks: images read as pixel sequences (sDigits, sMNIST, sCIFAR in colour and grey), the copying task,
ListOps (:mod:`zoo.data.listops`) and associative recall.

Items are ``(sequence [L, C] float tensor, target)``: an int class label for the pixel sequences (L = S*S pixels
in row-major order, C channels, normalised per channel), and for the copying task one-hot inputs [L, A] with the
targets [M] (int64) that the model must output at the last M positions. The token tasks yield ``(token ids [L]
int64, int target)``: ListOps with variable lengths (its ``collate_fn``, :func:`pad_collate`, pads with id 0 and
adds the lengths: batches ``(ids [B, L_max], targets [B], lengths [B])``), associative recall with a fixed
length. As for the image datasets, scikit-learn and torchvision are imported only inside the functions that need
them. S4 trains its pixel-sequence tasks without augmentation: these datasets take none.

Every task here is registered with :mod:`zoo.data.registry` on import (ListOps too: its generator and dataset
live in :mod:`zoo.data.listops`, which imports nothing of this module; ``pad_collate`` is defined there).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from zoo.data.datasets import CIFAR10_INFO, DIGITS_INFO, DigitsDataset, _create_cifar
from zoo.data.listops import LISTOPS_VOCAB, ListOpsDataset, pad_collate
from zoo.data.registry import DatasetInfo, DatasetRequest, register_dataset

__all__ = [
    "ASSOC_RECALL_DEFAULTS",
    "AssocRecallDataset",
    "COPYING_DEFAULTS",
    "CopyingDataset",
    "LISTOPS_PRESETS",
    "PixelSequences",
    "assoc_recall_example",
    "copying_batch",
    "pad_collate",
]

# state-spaces/s4's copying task defaults: 100 noise positions, 10 tokens to memorise, vocabulary 10 (0 = blank,
# 1..8 = tokens, 9 = marker); 10,000 train and 1,000 test sequences, generated from a seed.
COPYING_DEFAULTS: dict[str, int] = {
    "l_noise": 100,
    "l_memorize": 10,
    "n_tokens": 10,
    "n_train": 10000,
    "n_test": 1000,
    "seed": 0,
}
# ListOps generator settings per dataset name (zoo.data.listops.ListOpsConfig): LRA's, and a short variant that
# trains in CPU minutes (lengths 50-100, a few thousand sequences).
LISTOPS_PRESETS: dict[str, dict[str, int]] = {
    "listops": {"n_train": 96000, "n_val": 2000, "n_test": 2000, "min_length": 500, "max_length": 2000, "seed": 0},
    "listopsshort": {"n_train": 5000, "n_val": 500, "n_test": 1000, "min_length": 50, "max_length": 100, "seed": 0},
}
# Associative recall as HazyResearch/safari's ICL synthetics (configs/dataset/icl_synthetics.yaml): vocabulary 20
# (18 symbols + the query marker "=>" + the no-op "."), 40 input tokens (20 key-value pairs), 5,000 train and 500
# test sequences.
ASSOC_RECALL_DEFAULTS: dict[str, int] = {"vocab_size": 20, "seq_len": 40, "n_train": 5000, "n_test": 500, "seed": 0}

# Pixel sequences [S*S, C]: native_size is the image side (the sequence has native_size**2 positions). sDigits
# and sCIFAR normalise as digits and CIFAR-10 do; grey sCIFAR uses the luma of the RGB pixels (state-spaces'
# example normalises with 122.6 / 255 and 61.0 / 255).
SDIGITS_INFO = dataclasses.replace(DIGITS_INFO, name="sdigits")
SMNIST_INFO = DatasetInfo("smnist", 10, 1, 28, (0.1307,), (0.3081,))
SCIFAR_INFO = dataclasses.replace(CIFAR10_INFO, name="scifar")
SCIFARGRAY_INFO = DatasetInfo("scifargray", 10, 1, 32, (0.4808,), (0.2392,))
# The copying task: one-hot inputs over its vocabulary (in_chans), one class per token; native_size is the
# sequence length M + L + M.
COPYING_INFO = DatasetInfo(
    "copying",
    num_classes=COPYING_DEFAULTS["n_tokens"],
    in_chans=COPYING_DEFAULTS["n_tokens"],
    native_size=COPYING_DEFAULTS["l_noise"] + 2 * COPYING_DEFAULTS["l_memorize"],
    mean=(0.0,),
    std=(1.0,),
)
# Token tasks (ids [L]; in_chans 1 is a placeholder; native_size the longest sequence): ListOps (18 tokens, pad 0,
# 10 classes, lengths up to 2000 + <eos>; the short variant up to 100) and associative recall (one class per
# vocabulary id; seq_len tokens, "=>" and the query key).
LISTOPS_INFO = DatasetInfo("listops", 10, 1, 2001, (0.0,), (1.0,), vocab_size=len(LISTOPS_VOCAB))
LISTOPSSHORT_INFO = DatasetInfo("listopsshort", 10, 1, 100, (0.0,), (1.0,), vocab_size=len(LISTOPS_VOCAB))
ASSOCRECALL_INFO = DatasetInfo(
    "assocrecall",
    num_classes=ASSOC_RECALL_DEFAULTS["vocab_size"],
    in_chans=1,
    native_size=ASSOC_RECALL_DEFAULTS["seq_len"] + 2,
    mean=(0.0,),
    std=(1.0,),
    vocab_size=ASSOC_RECALL_DEFAULTS["vocab_size"],
)

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_MNIST_URL = "https://yann.lecun.com/exdb/mnist/"


class PixelSequences(Dataset):
    """Wraps an image dataset whose items are ``(image [C, S, S], label)`` (or PIL images with ``to_tensor``):
    each image becomes the pixel sequence [S*S, C], row by row, normalised with ``mean``/``std``."""

    def __init__(
        self,
        images: Dataset,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        size: int | None = None,
        to_tensor: bool = False,
        gray: bool = False,
    ) -> None:
        self.images = images
        self.size = size
        self.to_tensor = to_tensor
        self.gray = gray
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.classes = getattr(images, "classes", None)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label = self.images[index]
        if self.to_tensor:
            from torchvision.transforms.functional import pil_to_tensor

            image = pil_to_tensor(image).float().div_(255.0)
        if self.gray and image.shape[0] == 3:  # ITU-R 601-2 luma, as torchvision's Grayscale
            image = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).unsqueeze(0)
        if self.size is not None and image.shape[-1] != self.size:
            image = F.interpolate(
                image[None], size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
            )[0]
        sequence = image.flatten(1).transpose(0, 1)  # [S*S, C]
        return (sequence - self.mean) / self.std, int(label)


def copying_batch(
    batch_size: int, l_noise: int, l_memorize: int, n_tokens: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """A batch of the copying task (state-spaces/s4 ``torch_copying_data``): ``(x [B, M+L+M], y [B, M])`` int64.

    x = M tokens drawn uniformly from 1..A-2, then L blanks (0), then M markers (A-1); y = the M tokens, which the
    model must output at the last M positions (A = ``n_tokens``, L = ``l_noise``, M = ``l_memorize``).
    """
    if n_tokens < 3 or l_memorize < 1 or l_noise < 0 or batch_size < 1:
        raise ValueError(
            f"copying task needs n_tokens >= 3, l_memorize >= 1, l_noise >= 0, batch_size >= 1; got "
            f"{n_tokens}, {l_memorize}, {l_noise}, {batch_size}"
        )
    tokens = torch.randint(1, n_tokens - 1, (batch_size, l_memorize), generator=generator)
    blanks = torch.zeros(batch_size, l_noise, dtype=torch.int64)
    markers = torch.full((batch_size, l_memorize), n_tokens - 1, dtype=torch.int64)
    return torch.cat([tokens, blanks, markers], dim=1), tokens


class CopyingDataset(Dataset):
    """``n`` copying-task sequences generated up front from ``seed`` (deterministic): items are ``(one-hot x
    [M+L+M, A] float32, y [M] int64)``, or token ids x [M+L+M] with ``one_hot=False``."""

    def __init__(
        self, n: int, l_noise: int = 100, l_memorize: int = 10, n_tokens: int = 10, seed: int = 0, one_hot: bool = True
    ) -> None:
        if int(n) < 1:
            raise ValueError(f"the copying task needs n >= 1 sequences, got {n!r}")
        generator = torch.Generator().manual_seed(int(seed))
        self.inputs, self.targets = copying_batch(int(n), int(l_noise), int(l_memorize), int(n_tokens), generator)
        self.n_tokens = int(n_tokens)
        self.one_hot = bool(one_hot)
        self.classes = [str(i) for i in range(self.n_tokens)]

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x = self.inputs[index]
        if self.one_hot:
            x = F.one_hot(x, self.n_tokens).float()
        return x, self.targets[index]


def _assoc_vocab(vocab_size: int) -> tuple[list[str], list[str], list[str]]:
    """safari's ``Vocab``: the symbols "0".."V-3" plus "=>" and ".", sorted as strings (ids = sorted positions);
    keys are the first half of the sorted symbols, values the second half."""
    symbols = sorted(str(v) for v in range(vocab_size - 2))
    vocab = sorted(symbols + ["=>", "."])
    return vocab, symbols[: len(symbols) // 2], symbols[len(symbols) // 2 :]


def assoc_recall_example(rng: np.random.Generator, vocab_size: int = 20, seq_len: int = 40) -> list[int]:
    """One associative-recall sequence (safari's ``generate_assoc_recall``, one key per pair, ``allow_dot=False``):
    a random key -> value map (keys and values from disjoint halves of the symbols), seq_len / 2 pairs ``k v``
    drawn from it, then ``=>``, a key that occurs in the pairs and its value: seq_len + 3 token ids."""
    vocab, keys, values = _assoc_vocab(vocab_size)
    ids = {token: index for index, token in enumerate(vocab)}
    kv_map = {k: rng.choice(values) for k in keys}
    sequence, present = [], []
    for _ in range(seq_len // 2):
        k = rng.choice(keys)
        sequence += [k, kv_map[k]]
        present.append(k)
    k = rng.choice(keys)
    while k not in present:
        k = rng.choice(present)
    return [ids[t] for t in sequence + ["=>", k, kv_map[k]]]


class AssocRecallDataset(Dataset):
    """Associative recall (H3 / Hyena synthetics, HazyResearch/safari ``src/dataloaders/synthetics.py``): items are
    ``(token ids [seq_len + 2] int64, target int)``: the pairs, ``=>`` and the query key; the target is the key's
    value (classes = the vocabulary ids; predict it from the last position: ``global_pool="last"``).

    ``n`` distinct sequences drawn from ``np.random.default_rng(seed)`` (safari: the test split comes from the
    same generator after the train split; here from its own seed).
    """

    def __init__(self, n: int, vocab_size: int = 20, seq_len: int = 40, seed: int = 0) -> None:
        if int(n) < 1 or int(vocab_size) < 6 or int(seq_len) < 2:
            raise ValueError(
                f"associative recall needs n >= 1, vocab_size >= 6, seq_len >= 2; got {n}, {vocab_size}, {seq_len}"
            )
        rng = np.random.default_rng(int(seed))
        examples: dict[tuple[int, ...], None] = {}
        while len(examples) < int(n):
            examples.setdefault(tuple(assoc_recall_example(rng, int(vocab_size), int(seq_len))))
        data = torch.tensor(list(examples), dtype=torch.int64)
        self.inputs, self.targets = data[:, :-1].contiguous(), data[:, -1].contiguous()
        self.vocab = _assoc_vocab(int(vocab_size))[0]
        self.classes = list(self.vocab)

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.inputs[index], int(self.targets[index])


def _check_no_augment(request: DatasetRequest) -> None:
    if request.augmenting and request.augment_options:
        raise ValueError(
            f"{request.name} is a sequence task and takes no augmentation options, got "
            f"{sorted(request.augment_options)}; leave data.augment empty"
        )


def _create_mnist(split: str, root: str):
    from torchvision.datasets import MNIST

    raw = os.path.join(root, "MNIST", "raw")
    missing = [name for name in _MNIST_FILES if not os.path.isfile(os.path.join(raw, name))]
    if missing:
        raise FileNotFoundError(
            f"smnist reads MNIST through torchvision: expected the uncompressed files {list(_MNIST_FILES)} in "
            f"{raw!r} (missing: {missing}). Get them from {_MNIST_URL} (or torchvision.datasets.MNIST(root, "
            f"download=True)) and un-gzip them there (root={root!r})."
        )
    return MNIST(root, train=(split == "train"), download=False)


@register_dataset(SDIGITS_INFO, SMNIST_INFO, SCIFAR_INFO, SCIFARGRAY_INFO)
def _build_pixel_sequences(request: DatasetRequest) -> PixelSequences:
    """sDigits (bundled), sMNIST (torchvision's files under ``<root>/MNIST/raw``), sCIFAR in colour and grey
    (CIFAR-10 as for ``"cifar10"``); ``root`` default ``"data"``."""
    _check_no_augment(request)
    key, split, size, info = request.name, request.split, request.img_size, request.info
    if key == "sdigits":
        return PixelSequences(DigitsDataset(split, size), (0.0,), (1.0,))  # DigitsDataset normalises already
    root = "data" if request.root is None else os.fspath(request.root)
    if key == "smnist":
        if request.download:
            from torchvision.datasets import MNIST

            MNIST(root, train=(split == "train"), download=True)
        base = _create_mnist(split, root)
        return PixelSequences(base, info.mean, info.std, size, to_tensor=True)
    try:
        base = _create_cifar("cifar10", split, root, request.download, transform=None)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{key} reads CIFAR-10: {error}") from error
    return PixelSequences(base, info.mean, info.std, size, to_tensor=True, gray=(key == "scifargray"))


@register_dataset(COPYING_INFO)
def _build_copying(request: DatasetRequest) -> CopyingDataset:
    """The copying task with ``COPYING_DEFAULTS``; the splits draw from different seeds."""
    _check_no_augment(request)
    c = COPYING_DEFAULTS
    n = c["n_train"] if request.split == "train" else c["n_test"]
    seed = c["seed"] * 2 + (request.split == "test")
    return CopyingDataset(n, c["l_noise"], c["l_memorize"], c["n_tokens"], seed=seed)


@register_dataset(LISTOPS_INFO, LISTOPSSHORT_INFO)
def _build_listops(request: DatasetRequest) -> ListOpsDataset:
    """ListOps with the generator settings ``LISTOPS_PRESETS[name]``, cached under ``root`` (default ``"data"``)."""
    _check_no_augment(request)
    root = "data" if request.root is None else os.fspath(request.root)
    return ListOpsDataset(request.split, root, **LISTOPS_PRESETS[request.name])


@register_dataset(ASSOCRECALL_INFO)
def _build_assoc_recall(request: DatasetRequest) -> AssocRecallDataset:
    """Associative recall with ``ASSOC_RECALL_DEFAULTS``; the splits draw from different seeds."""
    _check_no_augment(request)
    c = ASSOC_RECALL_DEFAULTS
    n = c["n_train"] if request.split == "train" else c["n_test"]
    return AssocRecallDataset(n, c["vocab_size"], c["seq_len"], seed=c["seed"] * 2 + (request.split == "test"))
