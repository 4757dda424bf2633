"""Benchmark the zoo's ops (PyTorch reference, eager and under torch.compile, against the Triton kernels) and
models (training and inference images/s with each backend, beside their timm peers).

On a GPU, times with ``triton.testing.do_bench`` (median, CUDA events), reports achieved GB/s and the fraction
of the memory-bandwidth bound (measured device-to-device copy bandwidth, and the datasheet figure where the
device is known), writes ``benchmarks/results/<device>-<date>.json`` and regenerates ``benchmarks/README.md``.
On a CPU it runs small sizes (a smoke test: CI runs it; the Triton rows go through the interpreter and mean
nothing as timings).

    PYTHONPATH=. python scripts/benchmark.py                 # GPU: full sizes, writes the results file
    python scripts/benchmark.py --small --out /tmp/bench      # CPU smoke test

``scripts/gpu_check.py`` reuses the pieces: each ``bench_<op>`` takes ``cases`` (names, or case tuples),
``impls`` (which implementations) and ``kernels`` (other kernel packages, e.g. a frozen baseline, timed beside this
checkout's); ``TIMING`` sets how long each measurement runs; ``bench_model`` times one model; ``render_markdown``
builds the table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import fnmatch
import functools
import importlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

if not torch.cuda.is_available():  # the Triton rows run through the interpreter on a CPU-only machine
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from zoo.kernels._backend import launchable, once_differentiable  # noqa: E402
from zoo.kernels.batch_norm_add import BN_ADD_STAGES, batch_norm_add, batch_norm_add_reference  # noqa: E402
from zoo.kernels.batch_norm_se import batch_norm_se, batch_norm_se_reference  # noqa: E402
from zoo.kernels.dwconv import dwconv2d_reference, inception_dwconv2d_reference  # noqa: E402
from zoo.kernels.fftconv import fftconv_reference  # noqa: E402
from zoo.kernels.gelu_grn import GRN_STAGES, gelu_grn, gelu_grn_reference  # noqa: E402
from zoo.kernels.norm_rational import (  # noqa: E402
    layer_norm_group_rational,
    layer_norm_group_rational_reference,
)
from zoo.kernels.rational import group_rational, group_rational_reference  # noqa: E402
from zoo.kernels.ssm import s4d_kernel_reference  # noqa: E402
from zoo.training.step import TrainStep, precompile  # noqa: E402

# Model rows' training modes: the row's mode -> TrainStep's mode
TRAIN_MODES = {"train": "eager", "train-compile": "compile", "train-graph": "graph"}

ROOT = Path(__file__).resolve().parents[1]
DATASHEET_BANDWIDTH_GBPS = {  # HBM bandwidth from the vendors' datasheets, by device-name substring
    "H100 80GB HBM3": 3350.0,
    "H100 PCIe": 2000.0,
    "H200": 4800.0,
    "A100-SXM4-80GB": 2039.0,
    "A100-SXM4-40GB": 1555.0,
}


@dataclass
class OpRow:
    op: str
    case: str
    dtype: str
    pass_: str  # "fwd" or "fwd+bwd"
    impl: str  # "reference", "reference+compile", "triton"
    ms: float  # eager: one call after another, launch overhead included
    graph_ms: float | None  # device time: CUDA-graph replays, no launch gaps (GPU only)
    bytes_moved: int
    gbps: float  # from the device time where there is one
    fraction_of_copy_bw: float | None = None
    fraction_of_datasheet_bw: float | None = None
    note: str = ""
    host_us: float | None = None  # host time per eager call (GPU only: _host_us)


@dataclass
class ModelRow:
    group: str  # the family; "vs peer" compares with the timm rows of the same group
    model: str
    backend: str  # "triton", "torch" (the zoo's backends; "-deployed": re-parameterised form) or "timm" (a peer)
    mode: str  # "infer" (forward, no grad) or a training step (TRAIN_MODES: "train", "train-compile", "train-graph")
    batch: int
    img_size: int
    dtype: str  # the autocast dtype
    ms: float  # one step, eager
    images_per_s: float
    note: str = ""


@dataclass
class Results:
    device: str
    torch: str
    triton: str
    python: str
    commit: str
    date: str
    copy_bandwidth_gbps: float | None
    datasheet_bandwidth_gbps: float | None
    ops: list[OpRow] = field(default_factory=list)
    models: list[ModelRow] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ timing


@dataclass
class Timing:
    """How long each measurement runs (milliseconds are do_bench's warm-up and repetition budgets)."""

    warmup_ms: int = 50  # ops, eager
    rep_ms: int = 200
    graph_rep_ms: int = 200  # ops, CUDA-graph replays
    graph_max_ms: float | None = None  # no graph replays for calls slower than this (eager ms): launch gaps vanish
    model_warmup_ms: int = 2000  # models: steps of tens of ms, many of each
    model_rep_ms: int = 4000
    cpu_warmup: bool = True  # CPU: one untimed call first, then cpu_samples timed calls (median)
    cpu_samples: int = 3
    once: bool = False  # each timed function runs once, untimed (NaN, no graph or host time): compile-only runs


TIMING = Timing()  # read at every call: replace it (scripts/gpu_check.py does) to shorten or lengthen the runs
# The compiled-reference rows' torch.compile backend, read at every call. The CPU smoke test sets "aot_eager":
# Dynamo and AOT autograd trace each reference as for Inductor (a graph break still fails the row), without
# Inductor's C++ code generation (about a minute of the smoke run; the ops' and models' compile tests run Inductor).
COMPILE_BACKEND = "inductor"


def compiled_reference(fn: Callable) -> Callable:
    """``torch.compile(fn, fullgraph=True)`` with :data:`COMPILE_BACKEND`: the function of a
    ``reference+compile`` row."""
    return torch.compile(fn, fullgraph=True, backend=COMPILE_BACKEND)


def _time_ms(
    fn: Callable[[], object], device: torch.device, warmup_ms: int | None = None, rep_ms: int | None = None
) -> float:
    """Median milliseconds of ``fn``: CUDA events via do_bench on a GPU, wall clock on a CPU (``TIMING`` gives
    the budgets not passed); NaN after a single untimed call with ``TIMING.once``."""
    if TIMING.once:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return math.nan
    if device.type == "cuda":
        warmup_ms = TIMING.warmup_ms if warmup_ms is None else warmup_ms
        rep_ms = TIMING.rep_ms if rep_ms is None else rep_ms
        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    if TIMING.cpu_warmup:
        fn()  # warm-up (compilation, caches)
    samples = []
    for _ in range(max(1, TIMING.cpu_samples)):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def _graph_ms(fn: Callable[[], object], device: torch.device, eager_ms: float | None = None) -> float | None:
    """Median milliseconds of CUDA-graph replays of ``fn``: the device time without host launch overhead. None on a
    CPU, and for calls slower than ``TIMING.graph_max_ms`` (given ``eager_ms``), where launch gaps do not count."""
    if device.type != "cuda" or TIMING.once:
        return None
    if TIMING.graph_max_ms is not None and eager_ms is not None and eager_ms > TIMING.graph_max_ms:
        return None
    fn()  # compile / autotune outside the capture
    return float(triton.testing.do_bench_cudagraph(fn, rep=TIMING.graph_rep_ms, return_mode="median"))


HOST_CALLS = 32  # calls per host-time sample: few enough launches that the GPU's queue never fills


def _host_us(fn: Callable[[], object], device: torch.device, samples: int = 5) -> float | None:
    """Median host microseconds per eager call of ``fn`` (Python, dispatch, launches): ``HOST_CALLS`` calls queued
    without waiting, timed on the host clock, the device drained between samples. While the queue has room the
    host never waits for the GPU, so this is the host's cost whatever the device time. None on a CPU and with
    ``TIMING.once``."""
    if device.type != "cuda" or TIMING.once:
        return None
    fn()
    times = []
    for _ in range(samples):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(HOST_CALLS):
            fn()
        times.append((time.perf_counter() - start) / HOST_CALLS * 1e6)
    torch.cuda.synchronize(device)
    return statistics.median(times)


def copy_bandwidth_gbps(device: torch.device) -> float | None:
    """Device-to-device copy bandwidth (bytes read + written), the practical memory-bound ceiling."""
    if device.type != "cuda":
        return None
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device).random_()  # 1 GiB, far beyond L2
    dst = torch.empty_like(src)
    ms = _time_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() / (ms * 1e-3) / 1e9


# ------------------------------------------------------------------------------------------------ ops


def _pick_cases(all_cases: list[tuple], cases: Sequence[str | tuple] | None) -> list[tuple]:
    """The cases to run: all of ``all_cases`` (None), those whose name matches a pattern of ``cases`` (fnmatch
    patterns or exact names), and any case tuple given in ``cases`` itself (the format of ``<op>_cases``)."""
    if cases is None:
        return all_cases
    patterns = [c for c in cases if isinstance(c, str)]
    explicit = [tuple(c) for c in cases if not isinstance(c, str)]
    return explicit + [c for c in all_cases if any(fnmatch.fnmatchcase(c[0], p) for p in patterns)]


def _pick_impls(impls: dict[str, Callable], only: Collection[str] | None) -> dict[str, Callable]:
    """``impls`` restricted to the names in ``only`` (all of them for None)."""
    return impls if only is None else {name: fn for name, fn in impls.items() if name in only}


def _kernel_modules(kernels: Mapping[str, str] | None, module: str) -> list[tuple[str, object]]:
    """(implementation label, module) for each kernels package: ``zoo.kernels.<module>`` as "triton" by default;
    ``kernels`` maps labels to other packages with the same modules (a frozen baseline: scripts/gpu_check.py)."""
    packages = {"triton": "zoo.kernels"} if kernels is None else kernels
    return [(label, importlib.import_module(f"{package}.{module}")) for label, package in packages.items()]


def _op_rows(
    op: str,
    case: str,
    dtype: torch.dtype,
    device: torch.device,
    impls: dict[str, Callable],
    inputs: tuple[torch.Tensor, ...],
    grad_inputs: tuple[torch.Tensor, ...],
    dy: torch.Tensor | None,
    moved: dict[str, int],
    flops: dict[str, int] | None = None,
    passes: tuple[str, ...] = ("fwd", "fwd+bwd"),
    host_impls: Collection[str] = (),
    around: Mapping[str, Callable[[], contextlib.AbstractContextManager]] | None = None,
) -> list[OpRow]:
    """Rows of one case: ``impl(*inputs)`` forward (no grad) and forward+backward (the gradients of
    ``grad_inputs`` for the output gradient ``dy``), eager and (on a GPU) as CUDA-graph replays. With ``flops``
    (the useful floating-point operations of each pass), the note gives the achieved TFLOP/s. The host time per
    call is measured for the Triton implementations and those in ``host_impls``. ``around`` maps implementations
    to a context each of their passes runs in, backward included (a launch setting being swept)."""
    rows = []
    for impl, fn in impls.items():
        enter = (around or {}).get(impl, contextlib.nullcontext)

        def forward(fn=fn, enter=enter):
            with enter(), torch.no_grad():
                return fn(*inputs)

        def forward_backward(fn=fn, enter=enter):
            with enter():
                return torch.autograd.grad(fn(*inputs), grad_inputs, dy)

        for pass_, run in (("fwd", forward), ("fwd+bwd", forward_backward)):
            if pass_ not in passes:
                continue
            ms = _time_ms(run, device)
            graph_ms = _graph_ms(run, device, ms)
            host_us = _host_us(run, device) if impl.startswith("triton") or impl in host_impls else None
            triton_impl = impl.startswith("triton") or impl in (around or {})  # a Triton op under a setting
            notes = ["interpreter"] if triton_impl and device.type == "cpu" else []
            if host_us is not None:
                notes.append(f"host {host_us:.0f} us/call")
            if flops:
                notes.append(f"{flops[pass_] / ((graph_ms or ms) * 1e-3) / 1e12:.1f} TFLOP/s")
            gbps = moved[pass_] / ((graph_ms or ms) * 1e-3) / 1e9
            rows.append(
                OpRow(
                    op,
                    case,
                    str(dtype).removeprefix("torch."),
                    pass_,
                    impl,
                    ms,
                    graph_ms,
                    moved[pass_],
                    gbps,
                    note=", ".join(notes),
                    host_us=host_us,
                )
            )
    return rows


def rational_cases(small: bool) -> list[tuple[str, tuple[int, ...], int]]:
    """(case name, shape of x, groups): KAT's MLP inputs at batch 128 (ViT-B widths 768 and 3072)."""
    if small:
        return [("B2xL17x48", (2, 17, 48), 8)]
    return [("B128xL197x768", (128, 197, 768), 8), ("B128xL197x3072", (128, 197, 3072), 8)]


def bench_rational(
    small: bool,
    dtype: torch.dtype,
    device: torch.device,
    compile_reference: bool,
    *,
    cases: Sequence[str | tuple] | None = None,
    impls: Collection[str] | None = None,
    kernels: Mapping[str, str] | None = None,
) -> list[OpRow]:
    """Rows for zoo::group_rational: reference (eager, compiled) and Triton, forward and forward+backward.

    ``cases``, ``impls``, ``kernels``: which cases (names or tuples) and implementations to run, and the kernel
    packages to time as Triton implementations (default: this checkout's, "triton")."""
    rows = []
    for case, shape, groups in _pick_cases(rational_cases(small), cases):
        x = torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
        a = torch.randn(1, 6, device=device, requires_grad=True)
        b = torch.randn(groups, 4, device=device, requires_grad=True)
        dy = torch.randn(shape, dtype=dtype, device=device)
        run: dict[str, Callable] = {"reference": group_rational_reference}
        for label, mod in _kernel_modules(kernels, "rational"):
            run[label] = lambda x, a, b, mod=mod: mod.group_rational(x, a, b, backend="triton")
        if compile_reference:
            run["reference+compile"] = compiled_reference(group_rational_reference)
        element = x.element_size() * x.numel()
        rows += _op_rows(
            "group_rational",
            case,
            dtype,
            device,
            _pick_impls(run, impls),
            (x, a, b),
            (x, a, b),
            dy,
            {"fwd": 2 * element, "fwd+bwd": 5 * element},
        )
    return rows


def gelu_grn_cases(small: bool) -> list[tuple[str, tuple[int, ...]]]:
    """(case name, shape of h): UniRepLKNet-T's GELU + GRN at its four stages, batch 128, 224 px (NHWC, 4 C)."""
    if small:
        return [("B2x5x7x40", (2, 5, 7, 40))]
    return [(f"B128x{side}x{side}x{channels}", (128, side, side, channels)) for side, channels in GRN_STAGES]


def _under_autocast(grn, h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``grn(GELU(h))`` as UniRepLKNet's blocks ran it under autocast (the norm on a float32 copy)."""
    with torch.autocast(h.device.type, dtype=dtype, enabled=dtype != torch.float32):
        return grn(torch.nn.functional.gelu(h))


def bench_gelu_grn(
    small: bool,
    dtype: torch.dtype,
    device: torch.device,
    compile_reference: bool,
    *,
    cases: Sequence[str | tuple] | None = None,
    impls: Collection[str] | None = None,
    kernels: Mapping[str, str] | None = None,
) -> list[OpRow]:
    """Rows for zoo::gelu_grn as UniRepLKNet's blocks run it under autocast: ``dtype`` h in and out, float32 gamma
    and beta. Implementations: the reference (eager, compiled), "triton" (the fused op) and "modules" (``nn.GELU``
    then ``GRN`` under autocast, the blocks' path before the fusion: a float32 result). Bytes: what the
    fused op's two passes each way must move (h read twice and y written; then h and dy read twice and dh
    written), not the modules'. ``kernels`` is accepted for the OPS interface; no frozen baseline has this op."""
    from zoo.layers.unireplknet import GRN

    del kernels
    rows = []
    for case, shape in _pick_cases(gelu_grn_cases(small), cases):
        channels = shape[-1]
        h = torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
        grn = GRN(channels).to(device)
        with torch.no_grad():
            grn.gamma.normal_(std=0.5)
            grn.beta.normal_(std=0.1)
        dy = torch.randn(shape, dtype=dtype, device=device)
        run: dict[str, Callable] = {
            "reference": gelu_grn_reference,
            "triton": lambda h, gamma, beta: gelu_grn(h, gamma, beta, backend="triton"),
            "modules": lambda h, gamma, beta, grn=grn: _under_autocast(grn, h, dtype),
        }
        if compile_reference:
            run["reference+compile"] = compiled_reference(run["reference"])
        element = h.element_size() * h.numel()
        rows += _op_rows(
            "gelu_grn",
            case,
            dtype,
            device,
            _pick_impls(run, impls),
            (h, grn.gamma, grn.beta),
            (h, grn.gamma, grn.beta),
            dy,
            {"fwd": 3 * element, "fwd+bwd": 8 * element},
        )
    return rows


def batch_norm_add_cases(small: bool) -> list[tuple[str, tuple[int, ...]]]:
    """(case name, shape of the input): UniRepLKNet-T's block tail at its four stages, batch 128, 224 px (NCHW
    shapes, channels_last memory)."""
    if small:
        return [("B2x40x5x7", (2, 40, 5, 7))]
    return [(f"B128x{channels}x{side}x{side}", (128, channels, side, side)) for side, channels in BN_ADD_STAGES]


def _tail_modules(bn, y: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``x + gamma * bn(y)``: UniRepLKNet's block tail as its modules run it (a float32 result for ``dtype`` y)."""
    return x + gamma.view(1, -1, 1, 1) * bn(y)


def bench_batch_norm_add(
    small: bool,
    dtype: torch.dtype,
    device: torch.device,
    compile_reference: bool,
    *,
    cases: Sequence[str | tuple] | None = None,
    impls: Collection[str] | None = None,
    kernels: Mapping[str, str] | None = None,
) -> list[OpRow]:
    """Rows for zoo::batch_norm_add as UniRepLKNet's blocks run it in training under autocast: ``dtype`` input (the
    second Linear's output), float32 residual, parameters and result, channels_last. Implementations: the reference
    (eager, compiled), "triton" (the fused op) and "modules" (``nn.BatchNorm2d``, the layer scale's product and the
    add: the blocks' path before the fusion). Bytes: what the fused op's passes must move (the input read twice,
    the residual read and the result written; then the output gradient and the input read twice and the input
    gradient written), not the modules'. ``kernels`` is accepted for the OPS interface; no frozen baseline has this
    op."""
    del kernels
    rows = []
    for case, shape in _pick_cases(batch_norm_add_cases(small), cases):
        channels = shape[1]
        y = torch.randn(shape, dtype=dtype, device=device).to(memory_format=torch.channels_last).requires_grad_()
        x = torch.randn(shape, device=device).to(memory_format=torch.channels_last).requires_grad_()
        bn = torch.nn.BatchNorm2d(channels).to(device)
        gamma = torch.full((channels,), 0.5, device=device, requires_grad=True)
        dy = torch.randn(shape, device=device).to(memory_format=torch.channels_last)
        run: dict[str, Callable] = {
            "reference": lambda y, x, w, b, g, bn=bn: batch_norm_add_reference(
                y, x, bn.running_mean, bn.running_var, w, b, True, 0.1, 1e-5, g
            ),
            "triton": lambda y, x, w, b, g, bn=bn: batch_norm_add(
                y, x, bn.running_mean, bn.running_var, w, b, True, 0.1, 1e-5, g, backend="triton"
            ),
            "modules": lambda y, x, w, b, g, bn=bn: _tail_modules(bn, y, x, g),
        }
        if compile_reference:
            run["reference+compile"] = compiled_reference(run["reference"])
        inputs = (y, x, bn.weight, bn.bias, gamma)
        element = y.numel()
        half, full = y.element_size(), 4
        rows += _op_rows(
            "batch_norm_add",
            case,
            dtype,
            device,
            _pick_impls(run, impls),
            inputs,
            inputs,
            dy,
            {
                "fwd": element * (2 * half + 2 * full),
                "fwd+bwd": element * (2 * half + 2 * full) + element * (2 * half + 2 * full + half),
            },
        )
    return rows


def _norm_se_modules(bn, se, y: torch.Tensor) -> torch.Tensor:
    """``se(bn(y))``: UniRepLKNet's BN after the depthwise convolution and its SE block, as its modules run them
    (under autocast: the SE block's layers in bf16)."""
    with torch.autocast(y.device.type, dtype=y.dtype, enabled=y.dtype != torch.float32):
        return se(bn(y))


def bench_batch_norm_se(
    small: bool,
    dtype: torch.dtype,
    device: torch.device,
    compile_reference: bool,
    *,
    cases: Sequence[str | tuple] | None = None,
    impls: Collection[str] | None = None,
    kernels: Mapping[str, str] | None = None,
) -> list[OpRow]:
    """Rows for zoo::batch_norm_se as UniRepLKNet's blocks run it in training under autocast: ``dtype`` input (the
    depthwise convolution's output) and result, float32 parameters, channels_last, the SE block's width C / 4.
    Implementations: the reference (eager, compiled), "triton" (the fused op) and "modules" (``nn.BatchNorm2d`` and
    the block's ``SEBlock`` under autocast: the blocks' path before the fusion). Bytes: what the fused op's passes
    must move (the input read twice and the result written; then the output gradient and the input read twice and
    the input gradient written), not the modules'. Cases: :func:`batch_norm_add_cases` (the same stages)."""
    del kernels
    from zoo.layers.unireplknet import SEBlock

    rows = []
    for case, shape in _pick_cases(batch_norm_add_cases(small), cases):
        channels = shape[1]
        y = torch.randn(shape, dtype=dtype, device=device).to(memory_format=torch.channels_last).requires_grad_()
        bn = torch.nn.BatchNorm2d(channels).to(device)
        se = SEBlock(channels, max(1, channels // 4)).to(device)
        dy = torch.randn(shape, dtype=dtype, device=device).to(memory_format=torch.channels_last)

        def args(y, w, b, dw, db, uw, ub, bn=bn):
            return (y, bn.running_mean, bn.running_var, w, b, True, 0.1, 1e-5, dw.flatten(1), db, uw.flatten(1), ub)

        run: dict[str, Callable] = {
            "reference": lambda *t, args=args: batch_norm_se_reference(*args(*t)),
            "triton": lambda *t, args=args: batch_norm_se(*args(*t), backend="triton"),
            "modules": lambda y, *_, bn=bn, se=se: _norm_se_modules(bn, se, y),
        }
        if compile_reference:
            run["reference+compile"] = compiled_reference(run["reference"])
        inputs = (y, bn.weight, bn.bias, se.down.weight, se.down.bias, se.up.weight, se.up.bias)
        element = y.numel()
        size = y.element_size()
        rows += _op_rows(
            "batch_norm_se",
            case,
            dtype,
            device,
            _pick_impls(run, impls),
            inputs,
            inputs,
            dy,
            {"fwd": element * 3 * size, "fwd+bwd": element * 3 * size + element * 5 * size},
        )
    return rows


def norm_rational_cases(small: bool) -> list[tuple[str, tuple[int, ...], int]]:
    """(case name, shape of x, groups): KAT's norm2 -> mlp.act1 at batch 128 (kat_t's and kat_b's widths)."""
    if small:
        return [("B2xL17x48", (2, 17, 48), 8)]
    return [("B128xL197x192", (128, 197, 192), 8), ("B128xL197x768", (128, 197, 768), 8)]


def bench_norm_rational(
    small: bool,
    dtype: torch.dtype,
    device: torch.device,
    compile_reference: bool,
    *,
    cases: Sequence[str | tuple] | None = None,
    impls: Collection[str] | None = None,
    kernels: Mapping[str, str] | None = None,
) -> list[OpRow]:
    """Rows for zoo::layer_norm_group_rational as KAT's blocks run it under autocast: float32 x in, ``dtype`` out
    and a ``dtype`` gradient back. Implementations: the reference (eager, compiled), "triton" (the fused op) and
    "triton-unfused" (torch's layer_norm, then the Triton group_rational writing ``dtype``: the blocks' path before
    the fusion). ``kernels`` is accepted for the OPS interface; no frozen baseline has this op."""
    del kernels
    rows = []
    for case, shape, groups in _pick_cases(norm_rational_cases(small), cases):
        channels = shape[-1]
        x = torch.randn(shape, device=device, requires_grad=True)
        params = [
            (1.0 + 0.1 * torch.randn(channels, device=device)).requires_grad_(),
            (0.1 * torch.randn(channels, device=device)).requires_grad_(),
            torch.randn(1, 6, device=device, requires_grad=True),
            torch.randn(groups, 4, device=device, requires_grad=True),
        ]
        dy = torch.randn(shape, dtype=dtype, device=device)

        def unfused(x, weight, bias, a, b):
            u = torch.nn.functional.layer_norm(x, (x.shape[-1],), weight, bias, 1e-6)
            return group_rational(u, a, b, backend="triton", out_dtype=dtype)

        run: dict[str, Callable] = {
            "reference": lambda *t: layer_norm_group_rational_reference(*t, 1e-6, dtype),
            "triton": lambda *t: layer_norm_group_rational(*t, 1e-6, dtype, backend="triton"),
            "triton-unfused": unfused,
        }
        if compile_reference:
            run["reference+compile"] = compiled_reference(run["reference"])
        n = x.numel()
        out = torch.empty((), dtype=dtype).element_size()
        rows += _op_rows(
            "layer_norm_group_rational",
            case,
            dtype,
            device,
            _pick_impls(run, impls),
            (x, *params),
            (x, *params),
            dy,
            # forward: x in float32, y out; backward: x, dy in, dx out (the statistics and partials not counted)
            {"fwd": n * (4 + out), "fwd+bwd": n * (4 + out) + n * (4 + out + 4)},
        )
    return rows


@triton.jit
def _empty_kernel(ptr):
    """Stores one zero: a launch with no work to speak of (the host-time probe's)."""
    tl.store(ptr, 0.0)


class _ProbeFunction(torch.autograd.Function):
    """An op built as the zoo's eager Triton paths are (a torch.autograd.Function whose Python forward and backward
    each allocate their output and make one launch through ``launchable``, the backward marked
    ``once_differentiable``) that does no work: its host time is the overhead every such op pays."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = torch.empty_like(x)
        launchable(_empty_kernel)[(1,)](y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor) -> torch.Tensor:
        dx = torch.empty_like(dy)
        launchable(_empty_kernel)[(1,)](dx)
        return dx


def host_probe_cases(small: bool) -> list[tuple[str]]:
    """One case: a one-element float32 tensor (the probe measures the host, not the device)."""
    del small
    return [("empty",)]


def bench_host_probe(
    small: bool,
    dtype: torch.dtype,
    device: torch.device,
    compile_reference: bool,
    *,
    cases: Sequence[str | tuple] | None = None,
    impls: Collection[str] | None = None,
    kernels: Mapping[str, str] | None = None,
) -> list[OpRow]:
    """Rows that split an eager Triton op's host time into its parts, with ops that do no work (float32, one
    element, whatever ``dtype``): "triton-launch" (forward only) is a bare launch of an empty Triton kernel through
    Triton's ``JITFunction.run``, "fast-launch" the same launch through ``launchable`` (the zoo's ``FastLaunch``,
    docs/design.md §19); "triton" is :class:`_ProbeFunction` (forward: the Function, an allocation and one
    ``launchable`` launch; forward+backward adds the autograd engine calling a Python backward, which makes the
    second launch); "torch" is ``x * 1.0`` (one
    ATen launch forward, one in C++ autograd's backward). Their host times (the note's ``host N us/call``) against
    those of the real ops say how much of an op's host time is Triton's launch, how much the Python autograd, and how
    much the op's own launcher. ``compile_reference`` and ``kernels`` are accepted for the OPS interface."""
    del small, dtype, compile_reference, kernels
    rows = []
    for case in _pick_cases(host_probe_cases(False), cases):
        x = torch.zeros(1, device=device, requires_grad=True)
        dy = torch.ones(1, device=device)
        buffer = torch.zeros(1, device=device)

        def launch(t: torch.Tensor, buffer: torch.Tensor = buffer) -> torch.Tensor:
            _empty_kernel[(1,)](buffer)
            return buffer

        def fast_launch(t: torch.Tensor, buffer: torch.Tensor = buffer) -> torch.Tensor:
            launchable(_empty_kernel)[(1,)](buffer)
            return buffer

        moved = {"fwd": 4, "fwd+bwd": 8}  # the one float stored per launch
        for probes, passes in (
            ({"triton-launch": launch, "fast-launch": fast_launch}, ("fwd",)),
            ({"triton": _ProbeFunction.apply, "torch": lambda t: t * 1.0}, ("fwd", "fwd+bwd")),
        ):
            picked = _pick_impls(probes, impls)
            rows += _op_rows(
                "host_probe", case[0], torch.float32, device, picked, (x,), (x,), dy, moved, passes=passes,
                host_impls=picked,
            )  # fmt: skip
    return rows


def _autocast(fn: Callable, device: torch.device, dtype: torch.dtype) -> Callable:
    """``fn`` run under autocast to ``dtype`` on ``device``'s type."""

    def run(*inputs):
        with torch.autocast(device.type, dtype=dtype):
            return fn(*inputs)

    return run


def mlp_cases(small: bool) -> list[tuple[str, tuple[int, ...], int]]:
    """(case name, shape of x, groups): KAT-T's MLP sub-block (width 192, hidden 768) at batch 128, 197 tokens."""
    if small:
        return [("B1xL5x16", (1, 5, 16), 8)]
    return [("B128xL197x192", (128, 197, 192), 8)]


def bench_mlp(
    small: bool,
    dtype: torch.dtype,
    device: torch.device,
    compile_reference: bool,
    *,
    cases: Sequence[str | tuple] | None = None,
    impls: Collection[str] | None = None,
    kernels: Mapping[str, str] | None = None,
) -> list[OpRow]:
    """Rows for the MLP sub-block of a block, ``mlp(norm2(x))``, as KAT's and ViT's blocks run it under autocast
    (float32 x in, ``dtype`` out): "triton" is KAT's (``KAN.forward_normed``: the LayerNorm + act1 op, fc1, the
    Triton act2, fc2), "vit" is ViT's (LayerNorm, fc1, GELU, fc2: timm's ``Mlp``). The backward computes the
    gradients of x and of every parameter. Their device times differ by what KAT does beyond a ViT (the rational
    units and their coefficient gradients, and act2's passes over the hidden activations): what fusing act2 into
    fc1 / fc2 could save (issue 21). ``compile_reference`` and ``kernels`` are accepted for the OPS interface."""
    del compile_reference, kernels
    from timm.layers import Mlp

    from zoo.layers.kan import KAN

    rows = []
    for case, shape, groups in _pick_cases(mlp_cases(small), cases):
        width = shape[-1]
        torch.manual_seed(0)
        norm = torch.nn.LayerNorm(width, eps=1e-6).to(device)
        kan = KAN(width, 4 * width, num_groups=groups, backend="triton").to(device)
        mlp = Mlp(width, 4 * width, act_layer=torch.nn.GELU).to(device)
        x = torch.randn(shape, device=device, requires_grad=True)
        dy = torch.randn(shape, dtype=dtype, device=device)

        blocks = {
            "triton": (_autocast(lambda t, kan=kan, norm=norm: kan.forward_normed(t, norm), device, dtype), kan),
            "vit": (_autocast(lambda t, mlp=mlp, norm=norm: mlp(norm(t)), device, dtype), mlp),
        }
        n = x.numel()
        out = dy.element_size()
        # the floor without the hidden activations: forward x in (float32), y out; backward dy in, dx out, x again
        moved = {"fwd": n * (4 + out), "fwd+bwd": n * (4 + out) + n * (out + 4 + 4)}
        for label, (fn, module) in _pick_impls(blocks, impls).items():
            params = (*norm.parameters(), *module.parameters())
            rows += _op_rows("mlp", case, dtype, device, {label: fn}, (x,), (x, *params), dy, moved)
    return rows


def dwconv_cases(small: bool) -> list[tuple[str, tuple[int, ...], int]]:
    """(case name, shape of x, kernel size): the issue's depthwise shapes, batch 64, channels_last."""
    if small:
        return [("B2xC8x9x9xK3", (2, 8, 9, 9), 3)]
    return [(f"B64xC{c}x{h}x{h}xK{k}", (64, c, h, h), k) for c, h in ((384, 56), (768, 14)) for k in (3, 7, 13, 31)]


def bench_dwconv(
    small: bool,
    dtype: torch.dtype,
    device: torch.device,
    compile_reference: bool,
    *,
    cases: Sequence[str | tuple] | None = None,
    impls: Collection[str] | None = None,
    kernels: Mapping[str, str] | None = None,
) -> list[OpRow]:
    """Rows for zoo::dwconv2d: PyTorch's own depthwise convolution (the reference, F.conv2d) and Triton.
    (torch.compile lowers a convolution to the same kernel, so there is no compiled-reference row.)

    ``cases``, ``impls``, ``kernels``: which cases (names or tuples) and implementations to run, and the kernel
    packages to time as Triton implementations (default: this checkout's, "triton")."""
    rows = []
    for case, shape, k in _pick_cases(dwconv_cases(small), cases):
        x = torch.randn(shape, dtype=dtype, device=device).contiguous(memory_format=torch.channels_last)
        w = torch.randn(shape[1], 1, k, k, dtype=dtype, device=device)
        b = torch.randn(shape[1], dtype=dtype, device=device)
        leaves = tuple(t.requires_grad_() for t in (x, w, b))
        dy = torch.randn_like(x)
        run: dict[str, Callable] = {"reference": dwconv2d_reference}
        for label, mod in _kernel_modules(kernels, "dwconv"):
            run[label] = lambda x, w, b, mod=mod: mod.dwconv2d(x, w, b, backend="triton")
        element = x.element_size() * x.numel()
        # forward: x in, y out; backward: dy in, dx out (input gradient), x and dy in again (weight gradient)
        moved = {"fwd": 2 * element, "fwd+bwd": 6 * element}
        rows += _op_rows("dwconv2d", case, dtype, device, _pick_impls(run, impls), leaves, leaves, dy, moved)
    return rows


def inception_cases(small: bool) -> list[tuple[str, tuple[int, ...]]]:
    """(case name, shape of x): InceptionNeXt-T's mixer inputs at batch 128, stages 1-4."""
    if small:
        return [("B2xC16x9x9", (2, 16, 9, 9))]
    return [(f"B128xC{c}x{h}x{h}", (128, c, h, h)) for c, h in ((96, 56), (192, 28), (384, 14), (768, 7))]


# The mixer's grid targets (zoo.kernels.dwconv._inception.GridTargets: programs per SM) timed beside the default
# on a GPU, one field changed at a time. They are runtime arguments, so the sweep compiles nothing. At
# InceptionNeXt-T's stages 1-4 (B128, 132 SMs) the forward's programs are 1792 / 448 / 448 / 336 by default, 1792 /
# 448 / 224 / 224 with f1, 1792 / 896 / 672 / 336 with f6 and 4928 / 1344 / 672 / 336 (one step per part) with f64;
# the weight gradient's are 531 / 252 / 126 / 72 by default, 270 / 252 / 126 / 72 with w2, 1062 / 504 / 252 / 144
# with w8b2 and 2115 / 1008 / 504 / 252 with w16b1.
MIXER_GRID_SWEEP = {
    "grid-f1": dict(forward=1),
    "grid-f6": dict(forward=6),
    "grid-f64": dict(forward=64),
    "grid-w2": dict(weight_gradient=2),
    "grid-w8b2": dict(weight_gradient=8, weight_gradient_blocks=2),
    "grid-w16b1": dict(weight_gradient=16, weight_gradient_blocks=1),
}


def grid_sweep_passes(name: str) -> tuple[str, ...]:
    """The passes a ``MIXER_GRID_SWEEP`` setting is timed in: forward+backward alone for the weight gradient's
    targets (the forward does not run that kernel), both passes for the forward's."""
    if any(field.startswith("weight_gradient") for field in MIXER_GRID_SWEEP[name]):
        return ("fwd+bwd",)
    return ("fwd", "fwd+bwd")


def bench_inception(
    small: bool,
    dtype: torch.dtype,
    device: torch.device,
    compile_reference: bool,
    *,
    cases: Sequence[str | tuple] | None = None,
    impls: Collection[str] | None = None,
    kernels: Mapping[str, str] | None = None,
) -> list[OpRow]:
    """Rows for zoo::inception_dwconv2d: the eager split / conv / cat path (reference, also compiled) and the
    fused Triton mixer (square 3, band 11, 1/8 of the channels per branch), channels_last. Also this checkout's
    mixer under each grid target of ``MIXER_GRID_SWEEP`` (implementation "grid-sweep", by default on a GPU only:
    the interpreter ignores the targets; rows labelled by the targets' names: the forward's in both passes, the
    weight gradient's in forward+backward).

    ``cases``, ``impls``, ``kernels``: which cases (names or tuples) and implementations to run, and the kernel
    packages to time as Triton implementations (default: this checkout's, "triton")."""
    from zoo.kernels.dwconv._inception import grid_targets

    rows = []
    for case, shape in _pick_cases(inception_cases(small), cases):
        gc = shape[1] // 8
        x = torch.randn(shape, dtype=dtype, device=device).contiguous(memory_format=torch.channels_last)
        params = [
            torch.randn(gc, 1, 3, 3),
            torch.randn(gc),
            torch.randn(gc, 1, 1, 11),
            torch.randn(gc),
            torch.randn(gc, 1, 11, 1),
            torch.randn(gc),
        ]
        leaves = (x.requires_grad_(), *(p.to(device, dtype).requires_grad_() for p in params))
        dy = torch.randn_like(x)
        run: dict[str, Callable] = {"reference": inception_dwconv2d_reference}
        for label, mod in _kernel_modules(kernels, "dwconv"):
            run[label] = lambda *args, mod=mod: mod.inception_dwconv2d(*args, backend="triton")
        if compile_reference:
            run["reference+compile"] = compiled_reference(inception_dwconv2d_reference)
        element = x.element_size() * x.numel()
        moved = {"fwd": 2 * element, "fwd+bwd": 6 * element}
        rows += _op_rows("inception_dwconv2d", case, dtype, device, _pick_impls(run, impls), leaves, leaves, dy, moved)
        sweep_asked = device.type == "cuda" if impls is None else "grid-sweep" in impls
        checkout = (kernels or {}).get("triton", "zoo.kernels") == "zoo.kernels"  # whose GridTargets it sets
        if "triton" not in run or not sweep_asked or not checkout:
            continue
        for passes in {grid_sweep_passes(name) for name in MIXER_GRID_SWEEP}:
            sweep = {name: run["triton"] for name in MIXER_GRID_SWEEP if grid_sweep_passes(name) == passes}
            rows += _op_rows(
                "inception_dwconv2d",
                case,
                dtype,
                device,
                sweep,
                leaves,
                leaves,
                dy,
                moved,
                passes=passes,
                around={name: functools.partial(grid_targets, **MIXER_GRID_SWEEP[name]) for name in sweep},
            )
    return rows


def ssm_cases(small: bool) -> list[tuple[str, int, int, int]]:
    """(case name, H, N, L): the issue's S4D kernel generation size (N state dimensions = N/2 complex modes)."""
    if small:
        return [("H5xN8xL37", 5, 8, 37)]
    return [("H1024xN64xL16384", 1024, 64, 16384), ("H768xN64xL4096", 768, 64, 4096)]


def bench_ssm(
    small: bool,
    dtype: torch.dtype,
    device: torch.device,
    compile_reference: bool,
    *,
    cases: Sequence[str | tuple] | None = None,
    impls: Collection[str] | None = None,
    kernels: Mapping[str, str] | None = None,
) -> list[OpRow]:
    """Rows for zoo::s4d_kernel (always float32: the parameters and K are float32 whatever ``dtype``): the eager
    reference (complex H x N/2 x L Vandermonde tensor), the same under torch.compile, the Triton kernel.
    Bytes: K written (forward), grad_K read again (backward); the parameters are negligible.

    ``cases``, ``impls``, ``kernels``: which cases (names or tuples) and implementations to run, and the kernel
    packages to time as Triton implementations (default: this checkout's, "triton")."""
    rows = []
    for case, H, N, L in _pick_cases(ssm_cases(small), cases):
        a_imag = torch.pi * torch.arange(N // 2, device=device, dtype=torch.float32).expand(H, -1)  # S4D-Lin
        params = (
            torch.rand(H, device=device) * 4.6 - 6.9,
            torch.randn(H, N // 2, 2, device=device),
            torch.full((H, N // 2), -0.69, device=device),
            a_imag,
        )  # log_dt in [log 1e-3, log 1e-1]
        leaves = tuple(p.clone().requires_grad_() for p in params)
        dy = torch.randn(H, L, device=device)
        run: dict[str, Callable] = {"reference": lambda *p, L=L: s4d_kernel_reference(*p, L)}
        for label, mod in _kernel_modules(kernels, "ssm"):
            run[label] = lambda *p, L=L, mod=mod: mod.s4d_kernel(*p, L, backend="triton")
        if compile_reference:
            run["reference+compile"] = compiled_reference(lambda *p, L=L: s4d_kernel_reference(*p, L))
        rows += _op_rows(
            "s4d_kernel",
            case,
            torch.float32,
            device,
            _pick_impls(run, impls),
            leaves,
            leaves,
            dy,
            {"fwd": 4 * H * L, "fwd+bwd": 8 * H * L},
        )
    return rows


def fftconv_cases(small: bool) -> list[tuple[str, int, int, int, int, bool]]:
    """(case name, B, H, L, kernel length, gated): S4D's convolution (kernel as long as the input; D skip and
    GELU) at B 32, H 768, L 1K-16K; FlashFFTConv's gated setting (B 64, H 768); short kernels (direct path)."""
    if small:
        return [("B2xH3xL37", 2, 3, 37, 37, False), ("B2xH3xL37xK5", 2, 3, 37, 5, True)]
    cases = [(f"B32xH768xL{L}", 32, 768, L, L, False) for L in (1024, 2048, 4096, 8192, 16384)]
    cases += [(f"B64xH768xL{L}-gated", 64, 768, L, L, True) for L in (1024, 4096)]
    cases += [(f"B32xH768xL4096xK{k}", 32, 768, 4096, k, False) for k in (4, 64, 128)]
    return cases


def bench_fftconv(
    small: bool,
    dtype: torch.dtype,
    device: torch.device,
    compile_reference: bool,
    *,
    cases: Sequence[str | tuple] | None = None,
    impls: Collection[str] | None = None,
    kernels: Mapping[str, str] | None = None,
) -> list[OpRow]:
    """Rows for zoo::fftconv (causal, D skip, GELU; gated cases with gate_in and gate_out): the torch.fft
    reference (eager and compiled) and the Triton op (the FFT path, or the direct path for short kernels).
    Bytes: u (and gates) read, y written; backward: dy, u (and gates) read, du (and gate gradients) written.

    ``cases``, ``impls``, ``kernels``: which cases (names or tuples) and implementations to run, and the kernel
    packages to time as Triton implementations (default: this checkout's, "triton")."""
    rows = []
    for case, B, H, L, k_len, gated in _pick_cases(fftconv_cases(small), cases):
        u = torch.randn(B, H, L, device=device, dtype=dtype)
        k = torch.randn(H, k_len, device=device) / k_len**0.5
        D = torch.randn(H, device=device)
        gates = tuple(torch.randn(B, H, L, device=device, dtype=dtype) for _ in range(2 if gated else 0))
        leaves = tuple(t.requires_grad_() for t in (u, k, D, *gates))
        dy = torch.randn_like(u)

        def reference(u, k, D, *gates):
            gate_in, gate_out = gates or (None, None)
            return fftconv_reference(u, k, D, activation="gelu", gate_in=gate_in, gate_out=gate_out)

        def triton_op(u, k, D, *gates, mod):
            gate_in, gate_out = gates or (None, None)
            return mod.fftconv(u, k, D, activation="gelu", gate_in=gate_in, gate_out=gate_out, backend="triton")

        run: dict[str, Callable] = {"reference": reference}
        for label, mod in _kernel_modules(kernels, "fftconv"):
            run[label] = lambda *args, mod=mod: triton_op(*args, mod=mod)
        if compile_reference:
            run["reference+compile"] = compiled_reference(reference)
        element = u.element_size() * u.numel()
        streams = 1 + len(gates)
        rows += _op_rows(
            "fftconv",
            case,
            dtype,
            device,
            _pick_impls(run, impls),
            leaves,
            leaves,
            dy,
            {"fwd": (streams + 1) * element, "fwd+bwd": (3 * streams + 2) * element},
        )
    return rows


def sequence_layer_cases(small: bool) -> list[tuple[str, int, int, int]]:
    """(case name, B, H, L): S4D and LongConv layers of s4d_s / longconv_s's width at LRA-like lengths."""
    if small:
        return [("B2xH8xL37", 2, 8, 37)]
    return [(f"B32xH256xL{L}", 32, 256, L) for L in (1024, 4096)]


def _set_backend(module: torch.nn.Module, backend: str) -> torch.nn.Module:
    """Switch every submodule that has a ``backend`` attribute (the zoo's layers) to ``backend``."""
    for sub in module.modules():
        if hasattr(sub, "backend"):
            sub.backend = backend
    return module


def bench_sequence_layers(
    small: bool,
    dtype: torch.dtype,
    device: torch.device,
    compile_reference: bool,
    *,
    cases: Sequence[str | tuple] | None = None,
    impls: Collection[str] | None = None,
    kernels: Mapping[str, str] | None = None,
) -> list[OpRow]:
    """Rows for the S4D and LongConv layers (bidirectional, LongConv with 2 channels; under autocast ``dtype``):
    the reference backend ("reference", also compiled) and the Triton backend (on a GPU only), forward and
    forward+backward with the gradients of the input and of every parameter. LongConv's rows beside S4D's at the
    same case answer "long conv vs S4D at the same size and length". Bytes: the activations in and out.

    ``cases`` and ``impls`` select as for the ops; the layers run this checkout's kernels only (``kernels`` must be
    None)."""
    from zoo.layers import S4D, LongConv

    if kernels is not None:
        raise ValueError("the layer rows run this checkout's kernels only: kernels must be None")
    rows = []
    for case, B, H, L in _pick_cases(sequence_layer_cases(small), cases):
        u = torch.randn(B, H, L, device=device, requires_grad=True)
        dy = torch.randn(B, H, L, device=device)
        element = 2 * u.numel()  # the autocast dtype's bytes
        for op, layer in (
            ("s4d_layer", S4D(H, d_state=64, bidirectional=True)),
            ("longconv_layer", LongConv(H, L, bidirectional=True)),
        ):
            layer = layer.to(device)

            def forward(u, *params, layer=layer):
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    return layer(u).float()

            def with_backend(backend, fn=forward, layer=layer):
                def call(*args):
                    _set_backend(layer, backend)  # outside the compiled region
                    return fn(*args)

                return call

            run: dict[str, Callable] = {"reference": with_backend("torch")}
            if device.type == "cuda":  # a whole layer through the interpreter takes minutes: GPU only
                run["triton"] = with_backend("triton")
            if compile_reference:
                run["reference+compile"] = with_backend("torch", compiled_reference(forward))
            leaves = (u, *layer.parameters())
            moved = {"fwd": 2 * element, "fwd+bwd": 5 * element}
            rows += _op_rows(op, case, dtype, device, _pick_impls(run, impls), leaves, leaves, dy, moved)
    return rows


def neighborhood_cases(small: bool) -> list[tuple[str, int, tuple[int, ...], int, int, int]]:
    """(case name, B, spatial, heads, head_dim, kernel), each with the relative position bias: NAT's first stage
    (2-D, kernel 7, 56x56, batch 64, 2 and 4 heads of 32), forward and backward."""
    if small:
        return [("B1xL20xH1xD16xK3", 1, (20,), 1, 16, 3)]
    return [(f"B64x56x56xH{h}xD32xK7", 64, (56, 56), h, 32, 7) for h in (2, 4)]


# The long 1-D neighborhood case (GPU only): B, L, heads, head_dim, window; forward, beside dense SDPA.
NA_LONG = (1, 32768, 8, 64, 2049)
NA_LONG_CASE = "B{}xL{}xH{}xD{}xK{}".format(*NA_LONG)


def _flex_na2d(q, k, v, rpb, kernel: int):
    """PyTorch's FlexAttention with a neighbourhood block mask (2-D, dilation 1) and the bias as a score_mod, on
    [B, H, W, heads, D] tensors: the built-in peer of the fused kernel (compile it)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, H, W, heads, D = q.shape
    half = kernel // 2

    def window(i, n):
        return torch.clamp(i - half, 0, n - kernel)

    def mask_mod(b, h, q_idx, kv_idx):
        qi, qj, ki, kj = q_idx // W, q_idx % W, kv_idx // W, kv_idx % W
        si, sj = window(qi, H), window(qj, W)
        return (ki >= si) & (ki < si + kernel) & (kj >= sj) & (kj < sj + kernel)

    def score_mod(score, b, h, q_idx, kv_idx):
        qi, qj, ki, kj = q_idx // W, q_idx % W, kv_idx // W, kv_idx % W
        return score + rpb[h, ki - qi + kernel - 1, kj - qj + kernel - 1]

    block_mask = create_block_mask(mask_mod, None, None, H * W, H * W, device=q.device)
    qf, kf, vf = (t.flatten(1, 2).transpose(1, 2) for t in (q, k, v))  # [B, heads, N, D]
    out = flex_attention(qf, kf, vf, score_mod=score_mod, block_mask=block_mask)
    return out.transpose(1, 2).reshape(q.shape)


def bench_neighborhood(
    small: bool,
    dtype: torch.dtype,
    device: torch.device,
    compile_reference: bool,
    *,
    cases: Sequence[str | tuple] | None = None,
    impls: Collection[str] | None = None,
    kernels: Mapping[str, str] | None = None,
) -> list[OpRow]:
    """Rows for zoo::neighborhood_attention: the reference (gathered windows), FlexAttention with a
    neighbourhood block mask under torch.compile (GPU; the issue's peer), and Triton; and, on a GPU, the 1-D long
    case (L 32768, window 2049, forward) beside dense SDPA, whose FLOP rate (note) is the "speed of light".
    Bytes: q, k, v read and out written (backward: dout, q, k, v, out read, dq, dk, dv written). FLOPs: the useful
    4 B heads N K head_dim of a forward (QK and PV over each window), 2.5x that for forward+backward.

    ``cases``, ``impls``, ``kernels``: which cases (names or tuples) and implementations to run, and the kernel
    packages to time as Triton implementations (default: this checkout's, "triton"). The long 1-D case runs
    where ``cases`` is None or names it (``NA_LONG_CASE``)."""
    import torch.nn.functional as F

    from zoo.kernels.neighborhood import na_reference

    rows = []
    modules = _kernel_modules(kernels, "neighborhood")
    for case, B, spatial, heads, head_dim, kernel in _pick_cases(neighborhood_cases(small), cases):
        shape = (B, *spatial, heads, head_dim)
        q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        rpb = torch.zeros(heads, *(2 * kernel - 1,) * len(spatial), device=device, requires_grad=True)
        dy = torch.randn(shape, device=device, dtype=dtype)
        run: dict[str, Callable] = {
            "reference": lambda q, k, v, rpb, kernel=kernel: na_reference(q, k, v, kernel, rpb=rpb),
        }
        for label, mod in modules:
            run[label] = lambda q, k, v, rpb, kernel=kernel, mod=mod: mod.neighborhood_attention(
                q, k, v, kernel, rpb=rpb, backend="triton"
            )
        if device.type == "cuda" and len(spatial) == 2 and (impls is None or "flex+compile" in impls):
            run["flex+compile"] = torch.compile(lambda q, k, v, rpb, kernel=kernel: _flex_na2d(q, k, v, rpb, kernel))
        element = q.element_size() * q.numel()
        useful = 4 * B * heads * math.prod(spatial) * kernel ** len(spatial) * head_dim
        rows += _op_rows(
            "neighborhood_attention",
            case,
            dtype,
            device,
            _pick_impls(run, impls),
            (q, k, v, rpb),
            (q, k, v, rpb),
            dy,
            {"fwd": 4 * element, "fwd+bwd": 12 * element},
            flops={"fwd": useful, "fwd+bwd": int(2.5 * useful)},
        )
    long_case = cases is None or any(isinstance(c, str) and fnmatch.fnmatchcase(NA_LONG_CASE, c) for c in cases)
    if device.type == "cuda" and long_case:  # 1-D, L 32768, window 2049, forward: NA's FLOP rate vs dense attention's
        B, L, heads, head_dim, window = NA_LONG
        q, k, v = (torch.randn(B, L, heads, head_dim, device=device, dtype=dtype) for _ in range(3))
        case = NA_LONG_CASE
        run = {
            label: (lambda q, k, v, mod=mod: mod.neighborhood_attention(q, k, v, window, backend="triton"))
            for label, mod in modules
        }
        run["sdpa-dense"] = lambda q, k, v: F.scaled_dot_product_attention(
            *(t.transpose(1, 2) for t in (q, k, v))
        ).transpose(1, 2)
        element = q.element_size() * q.numel()
        for impl, fn in _pick_impls(run, impls).items():
            useful = 4 * B * heads * L * (L if impl == "sdpa-dense" else window) * head_dim
            rows += _op_rows(
                "neighborhood_attention",
                case,
                dtype,
                device,
                {impl: fn},
                (q, k, v),
                (),
                None,
                {"fwd": 4 * element},
                flops={"fwd": useful},
                passes=("fwd",),
            )
    return rows


CASES = {
    "rational": rational_cases,
    "norm_rational": norm_rational_cases,
    "gelu_grn": gelu_grn_cases,
    "batch_norm_add": batch_norm_add_cases,
    "batch_norm_se": batch_norm_add_cases,
    "mlp": mlp_cases,
    "host_probe": host_probe_cases,
    "dwconv": dwconv_cases,
    "inception": inception_cases,
    "ssm": ssm_cases,
    "fftconv": fftconv_cases,
    "sequence": sequence_layer_cases,
    "neighborhood": neighborhood_cases,
}


def case_names(op: str, small: bool, device: torch.device) -> list[str]:
    """The names of the cases ``OPS[op]`` runs at this size on ``device`` (in order)."""
    names = [case[0] for case in CASES[op](small)]
    if op == "neighborhood" and device.type == "cuda":
        names.append(NA_LONG_CASE)
    return names


OPS = {
    "rational": bench_rational,
    "norm_rational": bench_norm_rational,
    "gelu_grn": bench_gelu_grn,
    "batch_norm_add": bench_batch_norm_add,
    "batch_norm_se": bench_batch_norm_se,
    "mlp": bench_mlp,
    "host_probe": bench_host_probe,
    "dwconv": bench_dwconv,
    "inception": bench_inception,
    "ssm": bench_ssm,
    "fftconv": bench_fftconv,
    "sequence": bench_sequence_layers,
    "neighborhood": bench_neighborhood,
}

# group -> (registered name, model kwargs, backend label): each zoo model with both backends, then its timm peers.
MODELS = {
    "kat": [
        ("kat_t", {"backend": "triton"}, "triton"),
        ("kat_t", {"backend": "torch"}, "torch"),
        ("vit_tiny_patch16_224", {}, "timm"),
    ],
    "inceptionnext": [
        ("inceptionnext_t", {"backend": "triton"}, "triton"),
        ("inceptionnext_t", {"backend": "torch"}, "torch"),
        ("inceptionnext_t", {"backend": "triton", "deploy": True}, "triton-deployed"),
        ("convnext_tiny", {}, "timm"),
        ("inception_next_tiny", {}, "timm"),
    ],
    "unireplknet": [
        ("unireplknet_t", {"backend": "triton"}, "triton"),
        ("unireplknet_t", {"backend": "triton", "merge_branches": "always"}, "triton-merged"),
        ("unireplknet_t", {"backend": "torch"}, "torch"),
        ("unireplknet_t", {"backend": "triton", "deploy": True}, "triton-deployed"),
        ("unireplknet_t", {"backend": "torch", "deploy": True}, "torch-deployed"),
        ("convnext_tiny", {}, "timm"),
    ],
    "nat": [
        ("nat_m", {"backend": "triton"}, "triton"),
        ("nat_m", {"backend": "torch"}, "torch"),
        ("convnext_tiny", {}, "timm"),
    ],
    # ListOps training throughput (sequences/s): LRA-sized models on token sequences of LISTOPS_LENGTH
    "listops": [
        ("s4d_s", {"backend": "triton", "bidirectional": True}, "triton"),
        ("s4d_s", {"backend": "torch", "bidirectional": True}, "torch"),
        ("longconv_s", {"backend": "triton", "bidirectional": True, "l_max": 2048}, "triton"),
        ("longconv_s", {"backend": "torch", "bidirectional": True, "l_max": 2048}, "torch"),
    ],
}
SEQUENCE_GROUPS = {"listops": dict(vocab_size=18, num_classes=10)}  # token models: the batch is [B, L] ids
LISTOPS_LENGTH = 2000  # LRA ListOps' longest sequences (small runs: 40)
CHANNELS_LAST_GROUPS = {"inceptionnext", "unireplknet"}  # convolutional networks run channels_last (all of them)


def bench_models(
    small: bool,
    dtype: torch.dtype,
    device: torch.device,
    groups: list[str] | None = None,
    batch: int | None = None,
    img_size: int | None = None,
    modes: Sequence[str] = ("train", "infer"),
) -> list[ModelRow]:
    """Images/s of inference and of the training steps in ``modes`` (:func:`bench_model`), under autocast.

    On a CPU the Triton backend would run through the interpreter, and no CUDA graph can be captured: those rows
    are skipped.
    """
    import timm

    import zoo  # noqa: F401  (registers the zoo's models with timm)

    default_batch, default_size = (2, 32) if small else (128, 224)
    batch, img_size = batch or default_batch, img_size or default_size
    rows = []
    for group in groups or list(MODELS):
        group_batch, group_size = batch, img_size
        if group in SEQUENCE_GROUPS:  # sequences: batch 32 of LISTOPS_LENGTH tokens (the images' sizes do not apply)
            group_batch, group_size = (2, 40) if small else (32, LISTOPS_LENGTH)
        for name, kwargs, backend in MODELS[group]:
            if backend.startswith("triton") and device.type == "cpu":
                continue
            rows += bench_model(group, name, kwargs, backend, group_batch, group_size, dtype, device, timm, modes=modes)
    return rows


def bench_model(
    group: str,
    name: str,
    kwargs: dict,
    backend: str,
    batch: int,
    img_size: int,
    dtype: torch.dtype,
    device: torch.device,
    timm=None,
    *,
    sequence: dict | None = None,
    channels_last: bool | None = None,
    size_kwarg: bool | None = None,
    modes: Sequence[str] = ("train", "infer"),
) -> list[ModelRow]:
    """The rows of one model in ``modes``, timed with ``TIMING``'s model budgets: ``"infer"`` (forward, no
    gradients) and the training steps of ``TRAIN_MODES`` (zoo.training.step.TrainStep: forward, cross-entropy,
    backward, AdamW), eager (``"train"``), compiled (``"train-compile"``) and captured in a CUDA graph
    (``"train-graph"``, skipped off CUDA).

    ``sequence`` (token models: the vocabulary and class arguments; ``img_size`` is then the sequence length),
    ``channels_last`` and ``size_kwarg`` (pass ``img_size`` to the constructor) default to what ``group`` is in
    ``SEQUENCE_GROUPS``, ``CHANNELS_LAST_GROUPS`` and KAT's group. A ``backend`` label ending in ``-deployed`` (a
    re-parameterised form, which is for inference) gets its ``"infer"`` row only.
    """
    if backend.endswith("-deployed"):
        modes = [m for m in modes if m == "infer"]
    if timm is None:
        import timm

        import zoo  # noqa: F401  (registers the zoo's models with timm)
    sequence = SEQUENCE_GROUPS.get(group) if sequence is None else sequence
    channels_last = group in CHANNELS_LAST_GROUPS if channels_last is None else channels_last
    size_kwarg = group == "kat" if size_kwarg is None else size_kwarg
    rows = []
    torch.manual_seed(0)
    if sequence:  # img_size is the sequence length
        model = timm.create_model(name, **sequence, **kwargs).to(device)
        x = torch.randint(1, sequence["vocab_size"], (batch, img_size), device=device)
    else:
        size_kwargs = {"img_size": img_size} if size_kwarg else {}
        model = timm.create_model(name, **size_kwargs, **kwargs).to(device)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(memory_format=memory_format)
        x = torch.randn(batch, 3, img_size, img_size, device=device).contiguous(memory_format=memory_format)
    target = torch.randint(0, model.num_classes, (batch,), device=device)

    def infer_step():
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
            return model(x)

    for mode in modes:
        if mode == "train-graph" and device.type != "cuda":
            continue  # no CUDA graph to capture
        if mode == "infer":
            model.eval()
            step = infer_step
            if device.type == "cuda":  # untimed: the Triton kernels compile in parallel threads first
                precompile(infer_step, model)
        elif mode in TRAIN_MODES:  # a fresh optimiser per mode (the graph's must be capturable)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, capturable=mode == "train-graph")
            train_step = TrainStep(model.train(), optimizer, TRAIN_MODES[mode], amp_dtype=dtype)
            if device.type == "cuda":
                train_step.precompile(x, target)

            def step(train_step=train_step):
                return train_step(x, target)
        else:
            raise ValueError(f"unknown model mode {mode!r}: 'infer' or one of {sorted(TRAIN_MODES)}")
        ms = _time_ms(step, device, warmup_ms=TIMING.model_warmup_ms, rep_ms=TIMING.model_rep_ms)
        rows.append(
            ModelRow(
                group, name, backend, mode, batch, img_size, str(dtype).removeprefix("torch."), ms, batch / (ms * 1e-3)
            )
        )
    return rows


# ------------------------------------------------------------------------------------------------ output


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        return (out.stdout.strip() or "unknown") + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def _gbps(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} GB/s"


def render_markdown(results_dir: Path, extra: Iterable[Path] = ()) -> str:
    """The benchmarks/README.md table, regenerated from every results file in ``results_dir`` and the files in
    ``extra`` (results kept elsewhere, e.g. a GPU check's output folder), in the order of their names."""
    lines = [
        "# Benchmarks",
        "",
        "Generated by `scripts/benchmark.py` from the files in `results/` (do not edit by hand). Times are medians:",
        "`eager ms` of calls one after another (`triton.testing.do_bench`; host launch overhead included), `device ms`",
        "of CUDA-graph replays (`do_bench_cudagraph`; the GPU's own time). GB/s, `copy`, `datasheet` and the speed-up",
        "use the device time; bandwidth counts each input read once and each output written once; `copy` is the",
        "fraction of the measured device-to-device copy bandwidth, `datasheet` of the vendor's HBM figure.",
        "",
    ]
    paths = {p.resolve(): p for p in [*results_dir.glob("*.json"), *extra]}
    for path in sorted(paths.values(), key=lambda p: p.name):
        data = json.loads(path.read_text())
        lines += [
            f"## {data['device']} ({data['date']})",
            "",
            f"torch {data['torch']}, triton {data['triton']}, commit {data['commit']}; "
            f"copy bandwidth {_gbps(data['copy_bandwidth_gbps'])}, "
            f"datasheet {_gbps(data['datasheet_bandwidth_gbps'])}. "
            f"File: `results/{path.name}`.",
            "",
        ]
        rows = data["ops"]
        if rows:
            lines += [
                "| op | case | dtype | pass | impl | eager ms | device ms | GB/s | copy | datasheet | triton speed-up "
                "| note |",
                "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
            ]

        def device_ms(r):
            return r["graph_ms"] or r["ms"]

        def pct(value):
            return "" if value is None else f"{100 * value:.0f}%"

        triton_ms = {(r["op"], r["case"], r["dtype"], r["pass_"]): device_ms(r) for r in rows if r["impl"] == "triton"}
        for r in rows:
            key = (r["op"], r["case"], r["dtype"], r["pass_"])
            speedup = f"{device_ms(r) / triton_ms[key]:.2f}x" if key in triton_ms and r["impl"] != "triton" else ""
            graph = "" if r["graph_ms"] is None else f"{r['graph_ms']:.3f}"
            lines.append(
                f"| {r['op']} | {r['case']} | {r['dtype']} | {r['pass_']} | {r['impl']} | {r['ms']:.3f} | {graph} | "
                f"{r['gbps']:.0f} | {pct(r['fraction_of_copy_bw'])} | {pct(r['fraction_of_datasheet_bw'])} | "
                f"{speedup} | {r['note']} |"
            )
        if rows:
            lines.append("")
        if data.get("models"):
            lines += [
                "Models (eager, autocast; convolutional networks channels_last; sequence models (ListOps): `img` is "
                "the sequence length and images/s are sequences/s; `vs peers`: images/s over each timm "
                "peer's in the same mode):",
                "",
                "| model | backend | mode | batch | img | dtype | ms/step | images/s | vs peers |",
                "|---|---|---|---:|---:|---|---:|---|---|",
            ]
            for r in data["models"]:
                group = r.get("group", "kat")  # files written before model groups existed hold KAT rows only
                peers = [
                    p
                    for p in data["models"]
                    if p["backend"] == "timm" and p.get("group", "kat") == group and p["mode"] == r["mode"]
                ]
                ratio = (
                    ""
                    if r["backend"] == "timm"
                    else ", ".join(f"{r['images_per_s'] / p['images_per_s']:.2f}x {p['model']}" for p in peers)
                )
                lines.append(
                    f"| {r['model']} | {r['backend']} | {r['mode']} | {r['batch']} | {r['img_size']} | {r['dtype']} | "
                    f"{r['ms']:.2f} | {r['images_per_s']:.0f} | {ratio} |"
                )
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Results:
    """Run the benchmarks, write the results file and the markdown table, print a summary; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="*", default=sorted(OPS), choices=sorted(OPS), help="ops to time")
    parser.add_argument("--no-models", action="store_true", help="skip the model rows")
    parser.add_argument(
        "--models",
        nargs="*",
        default=sorted(MODELS),
        choices=sorted(MODELS),
        help="model groups to time (each zoo model with both backends and its timm peers)",
    )
    parser.add_argument("--batch", type=int, default=None, help="model batch (default 128 on a GPU, 2 small)")
    parser.add_argument("--img-size", type=int, default=None, help="model image size (default 224, 32 small)")
    parser.add_argument(
        "--model-modes",
        nargs="*",
        default=["train", "infer"],
        choices=["infer", *TRAIN_MODES],
        help="model rows: inference and the training step eager (train), compiled (train-compile) or captured in "
        "a CUDA graph (train-graph, CUDA only)",
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--small", action="store_true", help="tiny sizes (default on a CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile reference rows")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    parser.add_argument(
        "--commit",
        default=None,
        help="commit to record (default: the short hash of HEAD, +dirty for uncommitted changes; "
        "give it where the checkout has no .git)",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="markdown table to regenerate (default: benchmarks/README.md for the default results "
        "folder, else README.md inside --out)",
    )
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    small = args.small or device.type == "cpu"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.machine()}"
    datasheet = next((v for k, v in DATASHEET_BANDWIDTH_GBPS.items() if k in device_name), None)
    copy_bw = copy_bandwidth_gbps(device)
    results = Results(
        device_name,
        torch.__version__,
        triton.__version__,
        platform.python_version(),
        args.commit or _commit(),
        _dt.date.today().isoformat(),
        copy_bw,
        datasheet,
    )
    dtype = getattr(torch, args.dtype)
    for op in args.ops:
        results.ops += OPS[op](small, dtype, device, compile_reference=not args.no_compile)
    if not args.no_models:
        results.models = bench_models(
            small, dtype, device, args.models, args.batch, args.img_size, modes=tuple(args.model_modes)
        )
    for row in results.ops:
        row.fraction_of_copy_bw = row.gbps / copy_bw if copy_bw else None
        row.fraction_of_datasheet_bw = row.gbps / datasheet if datasheet else None

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{_slug(device_name)}-{results.date}.json"
    payload = asdict(results)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    default_out = args.out.resolve() == (ROOT / "benchmarks" / "results").resolve()
    readme = args.readme or (ROOT / "benchmarks" / "README.md" if default_out else args.out / "README.md")
    readme.write_text(render_markdown(args.out))
    print(f"{'op':<16} {'case':<16} {'pass':<8} {'impl':<18} {'eager ms':>9} {'device ms':>9} {'GB/s':>8} {'copy':>6}")
    for r in results.ops:
        frac = "" if r.fraction_of_copy_bw is None else f"{100 * r.fraction_of_copy_bw:.0f}%"
        graph = "" if r.graph_ms is None else f"{r.graph_ms:.3f}"
        print(f"{r.op:<16} {r.case:<16} {r.pass_:<8} {r.impl:<18} {r.ms:>9.3f} {graph:>9} {r.gbps:>8.1f} {frac:>6}")
    for r in results.models:
        print(
            f"{r.model:<22} {r.backend:<15} {r.mode:<6} batch {r.batch:<4} {r.ms:>9.2f} ms {r.images_per_s:>9.0f} img/s"
        )
    print(f"wrote {path} and {readme}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
