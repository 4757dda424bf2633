"""``torch.compile`` for the CPU paths: a function written once in PyTorch, run as one fused C++ loop where that works.

The CPU paths (the group-rational activation, zoo/kernels/rational_cpu.py; UniRepLKNet's GELU + GRN,
zoo/layers/unireplknet.py) write their math as plain PyTorch functions and call :func:`run`, which executes one of
them either way:

* **compiled** (the default where it works, for calls on at least ``COMPILE_MIN_ELEMENTS`` elements): compiled once
  per (kind, dtypes, thread count) by ``torch.compile``'s CPU backend (Inductor, dynamic shapes: one compile serves
  every size), which fuses the elementwise passes and reductions into a few vectorised loops. It needs a C++
  compiler; the first call of each kind pays the compile (seconds; Inductor's disk cache shortens it in later
  processes);
* **eager** (no compiler, ``torch.compile`` unavailable, a failed compile, ``ZOO_CPU_COMPILE=0``, or a small call):
  the same function runs op by op.

Inside ``torch.compile`` / ``torch.export`` (a user compiling the model) and under ``torch.jit.trace`` (:func:`tracing`)
the callers take their references instead: those ops are what the tracers record (Inductor fuses them itself).

A compile that fails before any has worked (no C++ compiler, say) switches compiling off for the process, with a
warning; a later failure (a recompile limit on an unusual shape, say) runs that call eagerly.
"""

from __future__ import annotations

import os
import types
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["COMPILE_ENV_VAR", "COMPILE_MIN_ELEMENTS", "compile_enabled", "run", "tracing"]

COMPILE_ENV_VAR = "ZOO_CPU_COMPILE"  # "0": never torch.compile the CPU paths (read at every call)
# Calls on fewer elements run eagerly: the compile (seconds, once per process and kind) pays back only on large
# activations (KAT-T at 224 px, batch 8: 0.3M and 1.2M elements), while the eager passes over a small one take well
# under a millisecond; training on the 8 px digits (at most 0.25M elements a call) and the tests never compile.
COMPILE_MIN_ELEMENTS = 1 << 18

_COMPILED: dict[tuple, Callable] = {}
_COMPILE_FAILED: list[str] = []  # the first failure's message; non-empty: compiling is off for this process
_COMPILE_WORKED: list[str] = []  # non-empty once a compiled call returned: later failures are per call


def tracing() -> bool:
    """Whether torch.compile / torch.export or torch.jit.trace is tracing the caller."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def compile_enabled() -> bool:
    """Whether the CPU paths use ``torch.compile`` now: not switched off by ``ZOO_CPU_COMPILE=0``, no compile has
    failed in this process, and ``torch.compile`` is supported here."""
    if os.environ.get(COMPILE_ENV_VAR, "1").strip() == "0" or _COMPILE_FAILED:
        return False
    return torch._dynamo.is_dynamo_supported()


def _compiled(kind: str, fn: Callable, args: tuple[Tensor, ...]) -> Callable:
    """``fn`` compiled once per (kind, dtypes, thread count): Inductor's C++ loops take their thread count when they
    are generated. Each key compiles its own copy of ``fn`` (a new code object): Dynamo keeps its compiled entries,
    and their recompile limit, per code object."""
    key = (kind, *(t.dtype for t in args), torch.get_num_threads())
    compiled = _COMPILED.get(key)
    if compiled is None:
        copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        compiled = _COMPILED[key] = torch.compile(copy, dynamic=True, fullgraph=True)
    return compiled


def run(kind: str, fn: Callable, *args: Tensor):
    """``fn(*args)`` compiled when :func:`compile_enabled` and the call is large (``COMPILE_MIN_ELEMENTS`` elements
    in its first argument), eagerly otherwise; ``kind`` names the function (one compile per kind). The arguments
    are detached and made contiguous first: one compiled graph per dtype, no grad or stride guards."""
    args = tuple(t.detach().contiguous() for t in args)
    if args[0].numel() >= COMPILE_MIN_ELEMENTS and compile_enabled():
        try:
            out = _compiled(kind, fn, args)(*args)
            if not _COMPILE_WORKED:
                _COMPILE_WORKED.append(kind)
            return out
        except Exception as error:  # noqa: BLE001 - any compile failure falls back to the same math, eagerly
            if not _COMPILE_WORKED:
                _COMPILE_FAILED.append(f"{type(error).__name__}: {error}")
                warnings.warn(
                    f"torch.compile of a CPU path ({kind}) failed ({_COMPILE_FAILED[0][:300]}); running it eagerly "
                    f"(set {COMPILE_ENV_VAR}=0 to skip the attempt)",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return fn(*args)
