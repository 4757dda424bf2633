"""Atomic training checkpoints (``last.pt`` / ``best.pt``) and RNG state capture.

A checkpoint is a plain dict (model, optimizer, scheduler, scaler and EMA state dicts, step counters, RNG states,
the resolved config as a plain dict, ...) plus ``"format": CHECKPOINT_FORMAT``. The trainer's ``last.pt`` may be
written within an epoch (``checkpoint_every``): its ``"epoch"`` is then the last epoch completed (-1 within the
first) and ``"in_epoch"`` the position in the next one (batches done, the partial epoch's counts per process, the
batch layout); at an epoch's end ``"in_epoch"`` is None, and a checkpoint without the key is one of an epoch's end.

Writing: ``torch.save`` through :func:`zoo._io.atomic_write` (a temporary file in the target's directory, flush,
``fsync``, ``os.replace`` onto the target, ``fsync`` the directory). A process killed at any moment leaves either
the old checkpoint or the new one, never a partial one (at worst a stray ``.last.pt.tmp-*`` file beside it).

Reading: ``torch.load(..., weights_only=True)``. A checkpoint therefore holds only what PyTorch's restricted
unpickler accepts: ``None``, bools, numbers, strings, bytes, tensors, ``torch.Size`` / ``dtype`` / ``device`` and
dicts, lists, tuples and sets of these. ``save_checkpoint`` checks this before writing (so a bad state fails at the
first save, not at resume) and turns numpy scalars into Python numbers; ``capture_rng_state`` stores numpy's RNG
state as plain Python types for the same reason. Loading never executes arbitrary pickled code.

Every weights file the zoo reads (``resume=``, ``finetune=``, eval.py's ``checkpoint=`` and ``pretrained_file=``)
goes through :func:`checkpoint_unpickling`: the restricted unpickler plus :data:`SAFE_CHECKPOINT_GLOBALS`, the plain
types that the official releases of the zoo's families hold, allowed for that one call (never registered globally).
Anything else raises :class:`UntrustedCheckpointError` (the file, the global it holds, the opt-in); ``trust=True``
(``trust_checkpoint=true`` on the command line) reads the file with the full unpickler, which runs whatever code it
holds. :func:`load_weights_file` reads any weights file that way; safetensors files hold tensors only.
"""

from __future__ import annotations

import argparse
import pickle
import random
import re
import warnings
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo._io import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "SAFE_CHECKPOINT_GLOBALS",
    "UntrustedCheckpointError",
    "capture_rng_state",
    "checkpoint_unpickling",
    "load_checkpoint",
    "load_weights_file",
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

# The one allow-list: globals (beyond tensors and plain Python values, which the restricted unpickler reads anyway)
# that the official releases and training scripts of the zoo's five families pickle into their checkpoints. Passed
# to each load through torch.serialization.safe_globals, never registered process-wide (add_safe_globals).
SAFE_CHECKPOINT_GLOBALS: tuple[type, ...] = (
    # argparse.Namespace: the training arguments, `args`, beside the state dicts.
    # - KAT (Adamdad/kat train.py, timm 1.0), InceptionNeXt (sail-sg/inceptionnext train.py) and NAT/DiNAT
    #   (SHI-Labs/Neighborhood-Attention-Transformer classification/train.py) train with timm's script, whose
    #   utils.CheckpointSaver writes {"epoch", "arch", "state_dict", "optimizer", "version", "args", "state_dict_ema",
    #   "metric", amp scaler state, "saver"}: save_state["args"] = args.
    # - UniRepLKNet (AILab-CVC/UniRepLKNet main.py; utils.save_model from ConvNeXt/DeiT) writes {"model",
    #   "optimizer", "epoch", "scaler", "args", "model_ema"}.
    # The namespaces hold strings, numbers, bools, None, lists and dicts (args.device is a string such as "cuda:0").
    argparse.Namespace,
)
# Not listed, because nothing else in those releases needs it:
# - S4D: state-spaces/s4 example.py, whose backbone zoo.models.sequence follows, saves {"model", "acc", "epoch"}
#   (plain); the released s4-wt103.pt is a bare state dict.
# - PyTorch Lightning .ckpt files of state-spaces/s4 and HazyResearch/safari train.py: their hyper_parameters are
#   the run's omegaconf DictConfig (save_hyperparameters(config)) plus hparams_type. Unpickling it needs DictConfig,
#   ListConfig, ContainerMetadata, Metadata, AnyNode, typing.Any, collections.defaultdict and the builtins dict,
#   list and int as callables, and runs omegaconf's __setstate__: not plain types. Their state dicts (the Lightning
#   module's "model.layers.N...") are not laid out as the example backbone either. They need trust=True.

_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


class UntrustedCheckpointError(CheckpointError):
    """A weights file or checkpoint holding a global the restricted unpickler refuses (unpickling it could run
    code). ``file`` is the path, ``found`` the global's dotted name as torch reports it."""

    def __init__(self, file: str | Path, found: str) -> None:
        self.file = Path(file)
        self.found = found
        allowed = ", ".join(f"{kind.__module__}.{kind.__qualname__}" for kind in SAFE_CHECKPOINT_GLOBALS)
        super().__init__(
            f"{self.file} holds the pickled global {found}. Weights and checkpoints are read with the restricted "
            f"unpickler, which takes tensors, plain Python values and {allowed} only, so that loading a file never "
            "runs code from it. If you trust where this file comes from, load it with the full unpickler, which runs "
            "whatever code the file holds: trust_checkpoint=true on the command line, trust=True in Python."
        )


@contextmanager
def checkpoint_unpickling(file: str | Path, trust: bool = False) -> Iterator[bool]:
    """The unpickling policy for reading ``file``: yields the ``weights_only`` value to pass to ``torch.load`` (or
    timm's ``load_state_dict``) inside the block.

    Without ``trust``: ``True``, with :data:`SAFE_CHECKPOINT_GLOBALS` allowed for this block only
    (``torch.serialization.safe_globals``); the restricted unpickler's refusal becomes an
    :class:`UntrustedCheckpointError` naming the file, the global it holds and the opt-in. Other errors pass through
    unchanged: a truncated or corrupt file, or a pickle the restricted unpickler cannot parse (it is refused too,
    e.g. protocol 4's ``Unsupported operand 149``, but names no global). With ``trust``: ``False``, the full unpickler (it runs the file's code).
    """
    if trust:
        yield False
        return
    try:
        with torch.serialization.safe_globals(list(SAFE_CHECKPOINT_GLOBALS)):
            yield True
    except pickle.UnpicklingError as error:
        match = _UNSUPPORTED_GLOBAL.search(str(error))
        if match is None:  # not a refused global: a corrupt pickle, or opcodes the restricted unpickler cannot parse
            raise
        raise UntrustedCheckpointError(file, match.group(1)) from error


def load_weights_file(path: str | Path, *, trust: bool = False, map_location: Any = "cpu") -> Any:
    """Read a weights file or training checkpoint as it is (a state dict, or a dict holding one).

    ``.safetensors`` files hold tensors only and are read onto the CPU; anything else is read by ``torch.load``
    under :func:`checkpoint_unpickling`: tensors, plain Python values and :data:`SAFE_CHECKPOINT_GLOBALS`, or,
    with ``trust=True``, everything (the full unpickler, which runs whatever code the file holds).

    Args:
        path: the file.
        trust: load with the full unpickler (the command line's ``trust_checkpoint=true``).
        map_location: passed to ``torch.load`` (default: every tensor on the CPU).

    Raises:
        FileNotFoundError: no such file.
        UntrustedCheckpointError: the file holds other objects and ``trust`` is not set.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(2, f"no weights file at {file}", str(file))
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    with checkpoint_unpickling(file, trust=trust) as weights_only:
        return torch.load(file, map_location=map_location, weights_only=weights_only)


def load_checkpoint(
    path: str | Path, map_location: Any = "cpu", filename: str = "last.pt", *, trust: bool = False
) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (restricted unpickler: :func:`checkpoint_unpickling`).

    Args:
        path: a checkpoint file, or a run directory (then ``path / filename``).
        map_location: passed to ``torch.load`` (default: every tensor on the CPU).
        filename: the file to read inside a run directory (``"last.pt"`` or ``"best.pt"``).
        trust: read the file with the full unpickler (``trust_checkpoint=true``), which runs any code it holds.

    Returns:
        The saved dict, ``"format"`` key included.

    Raises:
        FileNotFoundError: no such file (the message names the path looked for).
        UntrustedCheckpointError: the file holds objects the restricted unpickler refuses (and ``trust`` is not set).
        CheckpointError: the file is corrupt or truncated, is not a dict with a ``"format"`` key (not a zoo
            checkpoint), or has another format.
    """
    file = resolve_checkpoint_path(path, filename)
    if not file.is_file():
        raise FileNotFoundError(2, f"no checkpoint at {file}", str(file))
    try:
        with checkpoint_unpickling(file, trust=trust) as weights_only:
            state = torch.load(file, map_location=map_location, weights_only=weights_only)
    except UntrustedCheckpointError:
        raise
    except Exception as e:  # zip errors, EOFError, UnpicklingError, RuntimeError from the reader, ...
        raise CheckpointError(f"{file} is corrupt or truncated: {_load_error_reason(e)}") from e
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
