"""Atomic training checkpoints (``last.pt`` / ``best.pt``) and RNG state capture.

A checkpoint is a plain dict (model, optimizer, scheduler, scaler and EMA state dicts, step counters, RNG states,
the resolved config as a plain dict, ...) plus ``"format": CHECKPOINT_FORMAT``.

Writing: ``torch.save`` through :func:`zoo._io.atomic_write` (a temporary file in the target's directory, flush,
``fsync``, ``os.replace`` onto the target, ``fsync`` the directory). A process killed at any moment leaves either
the old checkpoint or the new one, never a partial one (at worst a stray ``.last.pt.tmp-*`` file beside it).

Reading: ``torch.load(..., weights_only=True)``. A checkpoint therefore holds only what PyTorch's restricted
unpickler accepts: ``None``, bools, numbers, strings, bytes, tensors, ``torch.Size`` / ``dtype`` / ``device`` and
dicts, lists, tuples and sets of these. ``save_checkpoint`` checks this before writing (so a bad state fails at the
first save, not at resume) and turns numpy scalars into Python numbers; ``capture_rng_state`` stores numpy's RNG
state as plain Python types for the same reason. Loading never executes arbitrary pickled code.
"""

from __future__ import annotations

import pickle
import random
import warnings
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo._io import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "capture_rng_state",
    "load_checkpoint",
    "resolve_checkpoint_path",
    "restore_rng_state",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = 1
"""Version of the checkpoint layout written by :func:`save_checkpoint` (stored under the key ``"format"``)."""


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: corrupt, truncated, not a zoo checkpoint, or of another format."""


# --------------------------------------------------------------------------------------------------- paths


def resolve_checkpoint_path(path: str | Path, filename: str = "last.pt") -> Path:
    """The checkpoint file for ``path``: ``path`` itself, or ``path / filename`` when ``path`` is a directory.

    The result need not exist (so this also names where to save).
    """
    path = Path(path).expanduser()
    return path / filename if path.is_dir() else path


# -------------------------------------------------------------------------------------------------- saving

_LEAF_TYPES = (type(None), bool, int, float, complex, str, bytes, bytearray, torch.dtype, torch.device)
_MAPPING_TYPES = (dict, OrderedDict, Counter)
_SEQUENCE_TYPES = (list, tuple, set)


def _sanitize(obj: Any, where: str) -> Any:
    """A copy of ``obj``'s containers with numpy scalars made Python numbers; TypeError for what
    ``torch.load(weights_only=True)`` would refuse. Tensors are not copied."""
    kind = type(obj)
    if kind in _LEAF_TYPES or kind is torch.Size:
        return obj
    if isinstance(obj, torch.Tensor):  # Tensor and Parameter
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if kind in _MAPPING_TYPES:
        return kind({k: _sanitize(v, f"{where}[{k!r}]") for k, v in obj.items()})
    if kind in _SEQUENCE_TYPES:
        return kind(_sanitize(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(
        f"checkpoint state {where} is a {kind.__module__}.{kind.__qualname__}, which torch.load(weights_only=True) "
        "cannot read back; store plain Python types, tensors, or dicts/lists/tuples of them "
        "(e.g. a config through OmegaConf.to_container(cfg, resolve=True), a numpy array as a tensor)"
    )


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` (plus ``"format": CHECKPOINT_FORMAT``) to ``path`` atomically; return the path written.

    ``path`` is a file name, or an existing directory (then ``path / "last.pt"``). The parent directory is created.
    The file is written under a temporary name in the same directory, flushed, fsynced and renamed over the
    target, so an interrupted or killed save leaves the previous checkpoint intact.

    Raises:
        TypeError: ``state`` is not a dict, or holds an object that ``torch.load(weights_only=True)`` cannot read
            (checked before anything is written; the message names the key).
    """
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    state = _sanitize({**state, "format": CHECKPOINT_FORMAT}, "state")
    target = resolve_checkpoint_path(path)
    atomic_write(target, lambda f: torch.save(state, f))
    return target


# ------------------------------------------------------------------------------------------------- loading


def load_checkpoint(path: str | Path, map_location: Any = "cpu", filename: str = "last.pt") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (with ``weights_only=True``).

    Args:
        path: a checkpoint file, or a run directory (then ``path / filename``).
        map_location: passed to ``torch.load`` (default: every tensor on the CPU).
        filename: the file to read inside a run directory (``"last.pt"`` or ``"best.pt"``).

    Returns:
        The saved dict, ``"format"`` key included.

    Raises:
        FileNotFoundError: no such file (the message names the path looked for).
        CheckpointError: the file is corrupt or truncated, holds objects the restricted unpickler refuses, is not
            a dict with a ``"format"`` key (not a zoo checkpoint), or has another format.
    """
    file = resolve_checkpoint_path(path, filename)
    if not file.is_file():
        raise FileNotFoundError(2, f"no checkpoint at {file}", str(file))
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as e:  # zip errors, EOFError, UnpicklingError, RuntimeError from the reader, ...
        reason = _load_error_reason(e)
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in reason:
            raise CheckpointError(
                f"{file} is not a zoo checkpoint: it holds Python objects that weights_only loading refuses ({reason})"
            ) from e
        raise CheckpointError(f"{file} is corrupt or truncated: {reason}") from e
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{file} is not a zoo checkpoint: expected a dict with a 'format' key, got {type(state).__name__}"
        )
    if "format" not in state:
        raise CheckpointError(
            f"{file} is not a zoo checkpoint: the dict has no 'format' key (expected format {CHECKPOINT_FORMAT}, "
            "as written by zoo.training.save_checkpoint); to fine-tune from foreign weights use finetune=PATH"
        )
    fmt = state["format"]
    if fmt != CHECKPOINT_FORMAT:
        newer = isinstance(fmt, int) and not isinstance(fmt, bool) and fmt > CHECKPOINT_FORMAT
        why = "a newer zoo wrote it; upgrade zoo" if newer else "unknown format"
        raise CheckpointError(
            f"{file} has checkpoint format {fmt!r}, this zoo reads format {CHECKPOINT_FORMAT} ({why})"
        )
    return state


def _load_error_reason(e: Exception) -> str:
    """A one-line reason from a ``torch.load`` error (the ``WeightsUnpickler error`` line of its long message)."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        rest = text.split(marker, 1)[1].strip()
        text = rest.split("\n\n", 1)[0] if rest else text
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[0] if lines else "(no message)"
    return f"{type(e).__name__}: {line if len(line) <= 300 else line[:297] + '...'}"


# ----------------------------------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict:
    """The state of Python's ``random``, numpy's global RNG, torch's CPU RNG and every CUDA device's RNG.

    Everything is plain Python or tensors, so the result can go into a checkpoint (``weights_only`` loading).
    Keys: ``"python"``, ``"numpy"``, ``"torch"`` and, where CUDA is available, ``"cuda"`` (one state per device).
    """
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(np_state["bit_generator"]),
            "state": {
                "key": [int(k) for k in np_state["state"]["key"]],
                "pos": int(np_state["state"]["pos"]),
            },
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Restore RNG states captured by :func:`capture_rng_state`, so later draws repeat those after the capture.

    Keys absent from ``state`` are left alone. CUDA states are restored for the devices both runs have; a
    different device count, or CUDA states without CUDA, gives a warning.
    """
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state(
            {
                "bit_generator": s["bit_generator"],
                "state": {"key": np.asarray(s["state"]["key"], dtype=np.uint32), "pos": int(s["state"]["pos"])},
                "has_gauss": int(s["has_gauss"]),
                "gauss": float(s["gauss"]),
            }
        )
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"]).cpu())
    if state.get("cuda"):
        cuda_states = list(state["cuda"])
        if not torch.cuda.is_available():
            warnings.warn("checkpoint holds CUDA RNG states but CUDA is not available; not restored", stacklevel=2)
            return
        count = torch.cuda.device_count()
        if count != len(cuda_states):
            warnings.warn(
                f"checkpoint holds RNG states for {len(cuda_states)} CUDA devices, this machine has {count}; "
                f"restoring the first {min(count, len(cuda_states))}",
                stacklevel=2,
            )
        for i, s in enumerate(cuda_states[:count]):
            torch.cuda.set_rng_state(torch.as_tensor(s).cpu(), i)
