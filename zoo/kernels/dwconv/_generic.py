"""The generic depthwise-convolution kernel: forward and input gradient for any kernel size, stride, dilation and
strides (the fallback of the specialised paths).

A tile is BLOCK_P positions (flattened over n, row, column) x BLOCK_C channels; the kernel size is a runtime value
and the taps loop in :func:`zoo.kernels.dwconv._common.conv_tile`."""

from __future__ import annotations

from torch import Tensor

from zoo.kernels._backend import INTERPRETER, cdiv, launchable, tl, triton
from zoo.kernels.dwconv._checks import same_padding
from zoo.kernels.dwconv._common import (
    CONV_FLAGS,
    DWCONV_BENCHMARKS,
    conv_tile,
    layout_of,
    layout_specs,
    make_configs,
    meta_strides,
    named_strides,
    needs_int64,
    split_positions,
    strides4,
    taps_on_map,
    tile_offsets,
)


@triton.jit
def _dwconv_kernel(
    src_ptr,
    w_ptr,
    b_ptr,
    dst_ptr,
    n_positions,
    C,
    src_h,
    src_w,
    dst_h,
    dst_w,
    s_n,
    s_c,
    s_h,
    s_w,
    d_n,
    d_c,
    d_h,
    d_w,
    w_c,
    w_h,
    w_w,
    KH,
    KW,
    dil_h,
    dil_w,
    pad_h,
    pad_w,
    STRIDE_H: tl.constexpr,
    STRIDE_W: tl.constexpr,
    TRANSPOSED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Forward (dst = y) or input gradient (TRANSPOSED: src = dy, dst = dx) of the depthwise convolution.
    One program per (position tile, channel block), channel blocks varying fastest: the programs that share
    a tile's rows run together and read them from L2 once."""
    c_blocks = tl.cdiv(C, BLOCK_C)
    p = (tl.program_id(0) // c_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = (tl.program_id(0) % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_mask = p < n_positions
    c_mask = c < C
    n, row, col = split_positions(p, dst_w, dst_h)
    acc = conv_tile(
        src_ptr,
        w_ptr,
        w_c,
        w_h,
        w_w,
        n,
        row,
        col,
        p_mask,
        c,
        c_mask,
        src_h,
        src_w,
        s_n,
        s_c,
        s_h,
        s_w,
        KH,
        KW,
        dil_h,
        dil_w,
        pad_h,
        pad_w,
        STRIDE_H,
        STRIDE_W,
        TRANSPOSED,
        INT64,
        BLOCK_P,
        BLOCK_C,
    )
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    offsets = tile_offsets(n, row, col, c, d_n, d_c, d_h, d_w, INT64)
    tl.store(dst_ptr + offsets, acc.to(dst_ptr.dtype.element_ty), mask=p_mask[:, None] & c_mask[None, :])


# One fixed small configuration under the interpreter (CPU tests); on the GPU, configurations autotuned per layout:
# channels_last tiles span channels (contiguous), NCHW tiles span positions (a row is contiguous).
_TILE = ("BLOCK_P", "BLOCK_C")
if INTERPRETER:
    CONV_CONFIGS = {"channels_last": make_configs(((16, 4, 1),), _TILE), "nchw": make_configs(((16, 4, 1),), _TILE)}
else:
    CONV_CONFIGS = {
        "channels_last": make_configs(((64, 32, 4), (32, 64, 4), (128, 32, 8), (64, 64, 8), (32, 32, 2)), _TILE),
        "nchw": make_configs(((128, 2, 4), (256, 1, 4), (256, 2, 4), (512, 1, 4)), _TILE),
    }
_CONV_KEY = ["C", "KH", "KW", "STRIDE_H", "STRIDE_W", "dst_w", "TRANSPOSED"]
_dwconv = {layout: triton.autotune(configs, key=_CONV_KEY)(_dwconv_kernel) for layout, configs in CONV_CONFIGS.items()}


def generic_conv(
    src: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    dst: Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    transposed: bool,
) -> None:
    """Forward (src = x, dst = y) or input gradient (``transposed``: src = dy, dst = dx, no bias) of the depthwise
    convolution by the generic kernel: any kernel size, stride, dilation and strides (the weight's too: it is read
    in place, [C, 1, kh, kw], with no table to build)."""
    n, channels, dst_h, dst_w = dst.shape
    n_positions = n * dst_h * dst_w
    padding = same_padding(kernel, dilation)

    def grid(meta):
        return (cdiv(n_positions, meta["BLOCK_P"]) * cdiv(channels, meta["BLOCK_C"]),)

    launchable(_dwconv[layout_of(src)])[grid](
        src,
        weight,
        weight if bias is None else bias,
        dst,
        n_positions,
        channels,
        src.shape[2],
        src.shape[3],
        dst_h,
        dst_w,
        *strides4(src),
        *strides4(dst),
        weight.stride(0),
        weight.stride(2),
        weight.stride(3),
        kernel[0],
        kernel[1],
        dilation[0],
        dilation[1],
        padding[0],
        padding[1],
        STRIDE_H=stride[0],
        STRIDE_W=stride[1],
        TRANSPOSED=transposed,
        HAS_BIAS=bias is not None,
        INT64=needs_int64(src, dst),
    )


def aot_specs() -> list:
    """Coverage compile specs of the generic kernel (see :func:`zoo.kernels.dwconv._common.layout_specs`)."""
    return layout_specs(_dwconv_kernel, CONV_CONFIGS, ("src_ptr", "w_ptr", "b_ptr", "dst_ptr"), CONV_FLAGS)


def benchmark_specs() -> list:
    """Loop-report specs of the generic kernel at the benchmarked shapes (both layouts, forward and input
    gradient): the arguments the launcher passes there and the useful multiply-adds per program (the taps that
    land on the map, :func:`taps_on_map`). The first configuration of the K = 7, 56 x 56 case is compiled in the
    tests too (``ci``)."""
    from zoo.kernels._aot import Work, launch_spec

    specs = []
    pointers = dict.fromkeys(("src_ptr", "w_ptr", "b_ptr", "dst_ptr"), "*bf16")
    for n, c, h, k in DWCONV_BENCHMARKS:
        case = f"B{n}xC{c}x{h}x{h}xK{k}"
        positions, pad = n * h * h, (k - 1) // 2
        on_map = taps_on_map(h, k)
        macs = n * c * on_map**2
        size = dict(src_h=h, src_w=h, dst_h=h, dst_w=h, KH=k, KW=k, dil_h=1, dil_w=1, pad_h=pad, pad_w=pad)
        stride = dict(STRIDE_H=1, STRIDE_W=1, INT64=False)
        for layout in ("channels_last", "nchw"):
            strides = meta_strides((n, c, h, h), layout)
            ci = (k, h) == (7, 56)
            for config in CONV_CONFIGS[layout]:
                block_p, block_c = config.kwargs["BLOCK_P"], config.kwargs["BLOCK_C"]
                programs = cdiv(positions, block_p) * cdiv(c, block_c)
                work = Work(
                    case,
                    "MAC",
                    macs / programs,
                    (k, k),
                    f"MACs = N C (taps on map per axis)^2 = {n} x {c} x {on_map}^2 = {macs}; programs = "
                    f"cdiv({positions}, {block_p}) x cdiv({c}, {block_c}) = {programs}; loops kh {k}, kw {k}",
                )
                label = f"P{block_p},C{block_c},w{config.num_warps}"
                for transposed, direction in ((False, "fwd"), (True, "bwd")):
                    args = dict(
                        **pointers,
                        n_positions=positions,
                        C=c,
                        **named_strides(("s", "d"), strides),
                        w_c=k * k,
                        w_h=k,
                        w_w=1,
                        **size,
                        **stride,
                        TRANSPOSED=transposed,
                        HAS_BIAS=not transposed,
                        **config.kwargs,
                    )
                    specs.append(
                        launch_spec(
                            f"_dwconv_kernel[bf16,{layout},{label},{direction}]@{case}",
                            _dwconv_kernel,
                            args,
                            num_warps=config.num_warps,
                            num_stages=config.num_stages,
                            work=work,
                            ci=ci,
                        )
                    )
                ci = False
    return specs
