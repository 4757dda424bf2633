"""Weight and bias gradients of the depthwise convolution.

Each program reduces a block of taps x a block of channels over a chunk of output positions, in registers (each
input element is read once per tap block, not once per tap); the per-program partial sums are added by a second
pass (no atomics, deterministic). The bias gradient is the extra "tap" whose input is 1."""

from __future__ import annotations

import torch
from torch import Tensor

from zoo.kernels._backend import INTERPRETER, tl, triton
from zoo.kernels.dwconv._checks import same_padding
from zoo.kernels.dwconv._common import (
    DWCONV_BENCHMARKS,
    average_trips,
    gradient,
    layout_of,
    layout_specs,
    make_configs,
    meta_strides,
    named_strides,
    needs_int64,
    positions_per_program,
    store_wgrad_sums,
    strides4,
    taps_on_map,
    wgrad_tile_sums,
)


@triton.jit
def _dwconv_wgrad_kernel(
    x_ptr,
    dy_ptr,
    partial_ptr,
    n_positions,
    positions_per_program,
    C,
    H,
    W,
    Ho,
    Wo,
    x_n,
    x_c,
    x_h,
    x_w,
    g_n,
    g_c,
    g_h,
    g_w,
    KH,
    KW,
    dil_h,
    dil_w,
    pad_h,
    pad_w,
    STRIDE_H: tl.constexpr,
    STRIDE_W: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Partial weight and bias gradients: ``partial[chunk, c, tap]`` for taps 0..KH*KW - 1 and the bias sum at
    ``partial[chunk, c, KH*KW]`` (written by the programs of the first tap block)."""
    chunk = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    tap = tl.program_id(2) * BLOCK_T + tl.arange(0, BLOCK_T)
    c_mask = c < C
    p_begin = chunk * positions_per_program
    p_end = tl.minimum(p_begin + positions_per_program, n_positions)
    sums, bias_sums = wgrad_tile_sums(
        x_ptr,
        dy_ptr,
        p_begin,
        p_end,
        c,
        c_mask,
        tap,
        H,
        W,
        Ho,
        Wo,
        x_n,
        x_c,
        x_h,
        x_w,
        g_n,
        g_c,
        g_h,
        g_w,
        KH,
        KW,
        dil_h,
        dil_w,
        pad_h,
        pad_w,
        STRIDE_H,
        STRIDE_W,
        INT64,
        BLOCK_T,
        BLOCK_P,
        BLOCK_C,
    )
    store_wgrad_sums(
        partial_ptr,
        chunk.to(tl.int64) * C + c,
        KH * KW + 1,
        KH * KW,
        tap,
        c_mask,
        sums,
        bias_sums,
        tl.program_id(2) == 0,
    )


WGRAD_TILE = ("BLOCK_T", "BLOCK_P", "BLOCK_C")
if INTERPRETER:
    WGRAD_CONFIGS = {
        "channels_last": make_configs(((4, 8, 4, 1),), WGRAD_TILE),
        "nchw": make_configs(((4, 8, 4, 1),), WGRAD_TILE),
    }
else:
    WGRAD_CONFIGS = {
        "channels_last": make_configs(((8, 16, 32, 4), (4, 32, 32, 4), (16, 16, 32, 8), (8, 32, 32, 8)), WGRAD_TILE),
        "nchw": make_configs(((8, 128, 1, 4), (4, 128, 2, 4), (16, 64, 1, 4)), WGRAD_TILE),
    }
_WGRAD_KEY = ["C", "KH", "KW", "STRIDE_H", "STRIDE_W", "Wo"]
_dwconv_wgrad = {
    layout: triton.autotune(configs, key=_WGRAD_KEY)(_dwconv_wgrad_kernel) for layout, configs in WGRAD_CONFIGS.items()
}


def weight_grad(
    x: Tensor, grad_output: Tensor, weight: Tensor, stride: tuple[int, int], dilation: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """(d weight, d bias) of the depthwise convolution, reduced in float32 and returned in the dtype of ``weight``
    (the bias gradient whether or not there is a bias)."""
    n, channels, h, w = x.shape
    kernel = (weight.shape[2], weight.shape[3])
    out_h, out_w = grad_output.shape[2], grad_output.shape[3]
    taps = kernel[0] * kernel[1]
    n_positions = n * out_h * out_w
    per_program = positions_per_program(n_positions, triton.cdiv(channels, 32) * triton.cdiv(taps, 8))
    chunks = triton.cdiv(n_positions, per_program)
    partial = torch.empty((chunks, channels, taps + 1), dtype=torch.float32, device=x.device)
    padding = same_padding(kernel, dilation)

    def grid(meta):
        return (chunks, triton.cdiv(channels, meta["BLOCK_C"]), triton.cdiv(taps, meta["BLOCK_T"]))

    _dwconv_wgrad[layout_of(x)][grid](
        x,
        grad_output,
        partial,
        n_positions,
        per_program,
        channels,
        h,
        w,
        out_h,
        out_w,
        *strides4(x),
        *strides4(grad_output),
        kernel[0],
        kernel[1],
        dilation[0],
        dilation[1],
        padding[0],
        padding[1],
        STRIDE_H=stride[0],
        STRIDE_W=stride[1],
        INT64=needs_int64(x, grad_output),
    )
    sums = partial.sum(0)
    return gradient(sums[:, :taps], weight), gradient(sums[:, taps], weight)


def aot_specs() -> list:
    """Coverage compile specs of the weight-gradient kernel (see :func:`zoo.kernels.dwconv._common.layout_specs`)."""
    return layout_specs(_dwconv_wgrad_kernel, WGRAD_CONFIGS, ("x_ptr", "dy_ptr", "partial_ptr"), [{}])


def benchmark_specs() -> list:
    """Loop-report specs of the weight-gradient kernel at the benchmarked shapes (both layouts): the launcher's
    arguments there and the useful multiply-adds per program. The first configuration of the K = 7, 56 x 56 case
    is compiled in the tests too (``ci``)."""
    from zoo.kernels._aot import Work, launch_spec

    specs = []
    for n, c, h, k in DWCONV_BENCHMARKS:
        case = f"B{n}xC{c}x{h}x{h}xK{k}"
        positions, taps, pad = n * h * h, k * k, (k - 1) // 2
        on_map = taps_on_map(h, k)
        macs = n * c * on_map**2
        size = dict(KH=k, KW=k, dil_h=1, dil_w=1, pad_h=pad, pad_w=pad)
        stride = dict(STRIDE_H=1, STRIDE_W=1, INT64=False)
        for layout in ("channels_last", "nchw"):
            strides = meta_strides((n, c, h, h), layout)
            per_program = positions_per_program(positions, triton.cdiv(c, 32) * triton.cdiv(taps, 8))
            chunks = triton.cdiv(positions, per_program)
            ci = (k, h) == (7, 56)
            for config in WGRAD_CONFIGS[layout]:
                block_t, block_p, block_c = (config.kwargs[name] for name in WGRAD_TILE)
                programs = chunks * triton.cdiv(c, block_c) * triton.cdiv(taps, block_t)
                trips = average_trips(positions, per_program, block_p)
                work = Work(
                    case,
                    "MAC",
                    macs / programs,
                    (trips,),
                    f"MACs = {macs} (as the forward); programs = {chunks} chunks of {per_program} positions x "
                    f"cdiv({c}, {block_c}) x cdiv({taps} taps, {block_t}) = {programs}; loop over a chunk's "
                    f"positions in steps of {block_p}: {trips:g}",
                )
                args = dict(
                    x_ptr="*bf16",
                    dy_ptr="*bf16",
                    partial_ptr="*fp32",
                    n_positions=positions,
                    positions_per_program=per_program,
                    C=c,
                    H=h,
                    W=h,
                    Ho=h,
                    Wo=h,
                    **named_strides(("x", "g"), strides),
                    **size,
                    **stride,
                    **config.kwargs,
                )
                label = f"T{block_t},P{block_p},C{block_c},w{config.num_warps}"
                specs.append(
                    launch_spec(
                        f"_dwconv_wgrad_kernel[bf16,{layout},{label}]@{case}",
                        _dwconv_wgrad_kernel,
                        args,
                        num_warps=config.num_warps,
                        num_stages=config.num_stages,
                        work=work,
                        ci=ci,
                    )
                )
                ci = False
    return specs
