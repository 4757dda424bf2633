"""ListOps (Nangia & Bowman 2018) as the Long Range Arena generates it (google-research/long-range-arena
``lra_benchmarks/data/listops.py``), tokenised as state-spaces/s4 reads LRA's files.

Rules (LRA's ``generate_tree``): a node at depth < ``max_depth`` is an operator with probability 0.25 (else, and
always at ``max_depth``, a value 0-9 drawn uniformly); an operator takes 2..``max_args`` arguments (uniform), each
a node one level deeper, and is one of MIN, MAX, MED (the median of the arguments, rounded down), SM (their sum
modulo 10), drawn uniformly. The root is at depth 1. A tree's length is its token count (operator, arguments,
closing bracket); LRA keeps the trees with ``min_length < length < max_length`` (500-2000) and no duplicates.
The target is the value of the expression (10 classes).

Tokens: LRA's source strings are ``( ( [MAX 2 ) 9 ) ] )``-like; state-spaces' tokeniser drops the parentheses,
renames ``]`` to ``X`` and appends ``<eos>``. Ids here are fixed (``LISTOPS_VOCAB``: ``<pad>`` = 0, ``<unk>``,
``<eos>``, the four operators, ``X``, the digits: 18 tokens, as state-spaces' vocabulary; state-spaces numbers
them by frequency in its train split instead).

Generation is deterministic by seed (Python's ``random.Random``); the test split is drawn first, then
validation, then train, all distinct, so that changing the train size keeps the evaluation splits. The splits are
cached in one file under ``root`` (written atomically: :func:`zoo._io.atomic_write`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from zoo._io import atomic_write

__all__ = [
    "LISTOPS_VOCAB",
    "ListOpsConfig",
    "ListOpsDataset",
    "generate_listops",
    "listops_tokenize",
    "listops_value",
    "pad_collate",
]

log = logging.getLogger(__name__)

LISTOPS_OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
LISTOPS_VOCAB = ("<pad>", "<unk>", "<eos>", *LISTOPS_OPERATORS, "X", *(str(v) for v in range(10)))
_ID = {token: index for index, token in enumerate(LISTOPS_VOCAB)}
PAD, EOS, END = _ID["<pad>"], _ID["<eos>"], _ID["X"]
_OPS = tuple(_ID[op] for op in LISTOPS_OPERATORS)
_DIGIT0 = _ID["0"]
VALUE_P = 0.25  # LRA: a node below max_depth is an operator with probability VALUE_P
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ListOpsConfig:
    """Generator settings; the defaults are LRA's (96k/2k/2k sequences of 500-2000 tokens)."""

    n_train: int = 96000
    n_val: int = 2000
    n_test: int = 2000
    min_length: int = 500
    max_length: int = 2000
    max_depth: int = 10
    max_args: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_train", "n_val", "n_test"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"ListOps {name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_depth < 1 or self.max_args < 2:
            raise ValueError(f"ListOps needs max_depth >= 1 and max_args >= 2, got {self.max_depth}, {self.max_args}")
        if not 0 <= self.min_length < self.max_length - 1:
            raise ValueError(
                f"ListOps keeps lengths with min_length < length < max_length: need 0 <= min_length < "
                f"max_length - 1, got {self.min_length}, {self.max_length}"
            )

    def cache_name(self) -> str:
        return "listops-" + "-".join(f"{k}{v}" for k, v in asdict(self).items()) + ".pt"


class _TooLong(Exception):
    pass


def _tree(rng: random.Random, depth: int, cfg: ListOpsConfig, out: list[int]) -> int:
    """Append one node's tokens to ``out`` and return its value (LRA's draw order: children, then the operator)."""
    if len(out) >= cfg.max_length:
        raise _TooLong
    r = rng.random() if depth < cfg.max_depth else 1.0
    if r > VALUE_P:
        value = rng.choice(range(10))
        out.append(_DIGIT0 + value)
        return value
    at = len(out)
    out.append(PAD)  # the operator, drawn after its arguments
    values = [_tree(rng, depth + 1, cfg, out) for _ in range(rng.randint(2, cfg.max_args))]
    op = rng.choice(_OPS)
    out[at] = op
    out.append(END)
    if op == _OPS[0]:
        return min(values)
    if op == _OPS[1]:
        return max(values)
    if op == _OPS[2]:
        values.sort()
        mid = len(values) // 2
        return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) // 2  # int(np.median(...))
    return sum(values) % 10


def generate_listops(cfg: ListOpsConfig) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Draw the splits: ``{split: (tokens uint8 [total], offsets int64 [n + 1], targets int64 [n])}``; sequence i
    is ``tokens[offsets[i]:offsets[i + 1]]`` (without ``<eos>``)."""
    rng = random.Random(cfg.seed)
    seen: set[bytes] = set()
    result = {}
    for split in ("test", "val", "train"):
        n = int(getattr(cfg, f"n_{split}"))
        chunks, lengths, targets = [], [], []
        while len(targets) < n:
            out: list[int] = []
            try:
                value = _tree(rng, 1, cfg, out)
            except _TooLong:
                continue
            if not cfg.min_length < len(out) < cfg.max_length:
                continue
            data = bytes(out)
            digest = hashlib.blake2b(data, digest_size=16).digest()
            if digest in seen:
                continue
            seen.add(digest)
            chunks.append(data)
            lengths.append(len(out))
            targets.append(value)
        tokens = (
            torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)
            if chunks
            else torch.zeros(0, dtype=torch.uint8)
        )
        offsets = torch.zeros(n + 1, dtype=torch.int64)
        offsets[1:] = torch.tensor(lengths, dtype=torch.int64).cumsum(0) if n else offsets[1:]
        result[split] = (tokens.clone(), offsets, torch.tensor(targets, dtype=torch.int64))
    return result


def _load_or_generate(cfg: ListOpsConfig, root: str | os.PathLike | None) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    if root is None:
        return generate_listops(cfg)
    path = Path(root) / "listops" / cfg.cache_name()
    if path.is_file():
        stored = torch.load(path, weights_only=True)
        return {split: tuple(stored[split]) for split in SPLITS}
    log.info("generating ListOps (%s) into %s", cfg, path)
    data = generate_listops(cfg)
    atomic_write(path, lambda f: torch.save({split: list(data[split]) for split in SPLITS}, f))
    return data


_CACHE: dict[tuple[ListOpsConfig, str | None], dict[str, tuple[Tensor, Tensor, Tensor]]] = {}


class ListOpsDataset(Dataset):
    """One split of ListOps: items ``(token ids int64 [length + 1] ending in <eos>, target int)``; variable lengths:
    batch with ``collate_fn`` (pads with 0 and returns the lengths).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: cache directory (the file ``<root>/listops/listops-<settings>.pt``); None: generate in memory only.
        **settings: :class:`ListOpsConfig` fields (LRA's defaults).
    """

    def __init__(self, split: str = "train", root: str | os.PathLike | None = "data", **settings) -> None:
        if split not in SPLITS:
            raise ValueError(f"ListOps split must be one of {SPLITS}, got {split!r}")
        self.config = ListOpsConfig(**settings)
        key = (self.config, None if root is None else os.fspath(root))
        if key not in _CACHE:
            _CACHE.clear()  # keep one generated set in memory
            _CACHE[key] = _load_or_generate(self.config, root)
        self.tokens, self.offsets, self.targets = _CACHE[key][split]
        self.split = split
        self.classes = [str(v) for v in range(10)]

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        x = torch.empty(stop - start + 1, dtype=torch.int64)
        x[:-1] = self.tokens[start:stop]
        x[-1] = EOS
        return x, int(self.targets[index])

    @staticmethod
    def collate_fn(batch: list[tuple[Tensor, Any]]) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`pad_collate` with pad id 0 (``<pad>``)."""
        return pad_collate(batch, PAD)


def pad_collate(batch: list[tuple[Tensor, Any]], padding_id: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Batch variable-length token sequences: ``(ids [B, L_max] int64 padded with padding_id at the end, targets
    [B] int64, lengths [B] int64)``."""
    sequences, targets = zip(*batch, strict=True)
    lengths = torch.tensor([len(x) for x in sequences], dtype=torch.int64)
    ids = torch.nn.utils.rnn.pad_sequence(list(sequences), batch_first=True, padding_value=padding_id)
    return ids, torch.as_tensor(targets, dtype=torch.int64), lengths


def listops_tokenize(source: str, eos: bool = True) -> list[int]:
    """Token ids of an LRA ListOps source string (``"( ( [MAX 2 ) 9 ) ]"``; parentheses dropped, ``]`` -> ``X``),
    with ``<eos>`` appended; unknown tokens map to ``<unk>``."""
    words = source.translate({ord("]"): ord("X"), ord("("): None, ord(")"): None}).split()
    return [_ID.get(w, _ID["<unk>"]) for w in words] + ([EOS] if eos else [])


def listops_value(ids: list[int] | Tensor) -> int:
    """Evaluate a token-id sequence (prefix notation, ``X`` closing an operator; pad and ``<eos>`` ignored)."""
    stack: list[list] = []
    result = None
    for i in ids.tolist() if isinstance(ids, Tensor) else ids:
        token = LISTOPS_VOCAB[i]
        if token in ("<pad>", "<eos>"):
            continue
        if token in LISTOPS_OPERATORS:
            stack.append([token])
            continue
        if token == "X":
            op, *args = stack.pop()
            ordered = sorted(args)
            value = {
                "[MIN": min(args),
                "[MAX": max(args),
                "[SM": sum(args) % 10,
                "[MED": int((ordered[(len(args) - 1) // 2] + ordered[len(args) // 2]) / 2),
            }[op]
        else:
            value = int(token)
        if stack:
            stack[-1].append(value)
        else:
            result = value
    if result is None or stack:
        raise ValueError("not a complete ListOps expression")
    return result
