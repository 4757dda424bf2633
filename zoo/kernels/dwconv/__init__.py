"""Depthwise 2-D convolution and the fused InceptionNeXt token mixer.

``dwconv2d(x, weight, bias, stride, dilation)``: per channel c,

    y[n, c, o_h, o_w] = bias[c] + sum_{i, j} weight[c, 0, i, j] * x[n, c, o_h s_h - p_h + i d_h, o_w s_w - p_w + j d_w]

with zero "same" padding p = d (k - 1) / 2 per axis (odd kernels), stride s in {1, 2}, dilation d >= 1: what
``nn.Conv2d(C, C, k, stride, padding=p, dilation=d, groups=C)`` computes. Zeros outside the map keep their meaning
when the kernel is larger than the map.

``inception_dwconv2d(x, ...)``: InceptionNeXt's mixer (docs/semantics.md §2.2). The channels split into (C - 3 gc, gc,
gc, gc): identity, a square k x k conv, a 1 x band conv and a band x 1 conv, each depthwise with bias and "same"
padding, concatenated back. The fused kernel writes every slice of the output in one launch (no split, no cat).

The Triton kernels read any strides (NCHW and channels_last without a layout copy; the output takes the memory
format of the input), load fp32/bf16/fp16 and accumulate in fp32. Per call (``ops._path``, docs/design.md §12):
kernels of 13 and more along both axes at stride 1 without dilation run an implicit GEMM on the tensor cores
(``_igemm``); k x k, 1 x k and k x 1
kernels up to 11 at stride 1 a register-blocked kernel with the kernel size a compile-time constant (``_direct``);
the rest the generic kernel (``_generic``). Weight gradients (``_wgrad``, ``_igemm``, the mixer's) are one launch
each: every program writes its partial sums, and the one that draws the last ticket adds them in a fixed order
(deterministic, no per-element atomics). Forward one launch, backward two (the generic fallback, for shapes the
models do not use, adds a per-call transpose of the weights).

Layout of this package (the kernel contract, docs/design.md §2): ``reference`` (the meaning), ``_checks`` (input
validation), ``_common`` (shared tile routines, launcher and spec helpers), one module per kernel family
(``_direct``, ``_generic``, ``_wgrad``, ``_igemm``, ``_inception`` the mixer), each with its configurations,
launcher and ahead-of-time specs, and ``ops`` (the choice of kernel per call, the registered ops and the public
functions).
"""

from __future__ import annotations

from zoo.kernels.dwconv import _direct, _generic, _igemm, _inception, _wgrad
from zoo.kernels.dwconv._common import DWCONV_BENCHMARKS, INCEPTION_BENCHMARKS, taps_on_map
from zoo.kernels.dwconv.ops import (
    autocast_input,
    dwconv2d,
    dwconv2d_backward,
    dwconv2d_forward,
    dwconv2d_grads,
    inception_dwconv2d,
    inception_dwconv2d_backward,
    inception_dwconv2d_forward,
)
from zoo.kernels.dwconv.reference import dwconv2d_reference, inception_dwconv2d_reference

__all__ = [
    "autocast_input",
    "DWCONV_BENCHMARKS",
    "INCEPTION_BENCHMARKS",
    "aot_specs",
    "benchmark_specs",
    "dwconv2d",
    "dwconv2d_backward",
    "dwconv2d_forward",
    "dwconv2d_grads",
    "dwconv2d_reference",
    "inception_dwconv2d",
    "inception_dwconv2d_backward",
    "inception_dwconv2d_forward",
    "inception_dwconv2d_reference",
    "taps_on_map",
]

# every module that compiles kernels: its coverage specs and loop-report specs (zoo/kernels/_aot.py)
_KERNEL_MODULES = (_direct, _generic, _wgrad, _igemm, _inception)


def aot_specs() -> list:
    """Compile specs (zoo/kernels/_aot.py) of every depthwise-convolution kernel: each module's coverage specs
    (every compiled variant) followed by its loop-report specs."""
    return [spec for module in _KERNEL_MODULES for spec in module.aot_specs()] + benchmark_specs()


def benchmark_specs() -> list:
    """Loop-report specs (zoo/kernels/_aot.py --loops) of every depthwise-convolution kernel at the benchmarked
    shapes."""
    return [spec for module in _KERNEL_MODULES for spec in module.benchmark_specs()]
