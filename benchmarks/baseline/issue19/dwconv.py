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
format of the input), load fp32/bf16/fp16 and accumulate in fp32. The weight gradient is reduced in registers
over a block of taps and a chunk of output positions per program (each input element is read once per tap
block, not once per tap); the per-program partial sums are added by a second pass (no atomics, deterministic).
The bias gradient is the extra "tap" whose input is 1.

Layout of this file (the kernel contract, docs/design.md §2): the references, the Triton kernels, the launchers, the
registered ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.kernels._backend import (
    INTERPRETER,
    TRITON_DTYPES,
    check_float_tensor,
    check_triton_device,
    check_triton_dtypes,
    device_guard,
    dispatch_triton,
    resolve_backend,
    tl,
    triton,
)

__all__ = [
    "dwconv2d",
    "dwconv2d_backward",
    "dwconv2d_forward",
    "dwconv2d_reference",
    "inception_dwconv2d",
    "inception_dwconv2d_backward",
    "inception_dwconv2d_forward",
    "inception_dwconv2d_reference",
]


# ----------------------------------------------------------------------------------------------------------------
# Input checks (shared by the references and the launchers)
# ----------------------------------------------------------------------------------------------------------------


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def _check_weight(name: str, weight: Tensor, channels: int, shape: tuple[int, int] | None = None) -> tuple[int, int]:
    """Check a depthwise weight ``[channels, 1, kh, kw]`` with odd kernel sizes; return (kh, kw)."""
    check_float_tensor(name, weight)
    expected = f"[{channels}, 1, kh, kw]" if shape is None else f"[{channels}, 1, {shape[0]}, {shape[1]}]"
    if weight.dim() != 4 or weight.shape[0] != channels or weight.shape[1] != 1:
        raise ValueError(
            f"{name} must have shape {expected} (depthwise: one filter per channel), got {list(weight.shape)}"
        )
    kh, kw = weight.shape[2], weight.shape[3]
    if shape is not None and (kh, kw) != shape:
        raise ValueError(f"{name} must have shape {expected}, got {list(weight.shape)}")
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(
            f"{name}: 'same' padding needs odd kernel sizes, got {kh} x {kw} (weight {list(weight.shape)})"
        )
    return kh, kw


def _check_bias(name: str, bias: Tensor | None, channels: int) -> None:
    if bias is None:
        return
    check_float_tensor(name, bias)
    if bias.shape != (channels,):
        raise ValueError(f"{name} must have shape [{channels}], got {list(bias.shape)}")


def _check_same_device(x: Tensor, **others: Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} must be on the device of x ({x.device}), got {t.device}")


def check_dwconv2d_inputs(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: int | Sequence[int], dilation: int | Sequence[int]
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Validate the inputs of :func:`dwconv2d`; return ((kh, kw), stride, dilation) as pairs."""
    check_float_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor [N, C, H, W] (any memory format), got shape {list(x.shape)}")
    channels = x.shape[1]
    kernel = _check_weight("weight", weight, channels)
    _check_bias("bias", bias, channels)
    _check_same_device(x, weight=weight, bias=bias)
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if any(s not in (1, 2) for s in stride):
        raise ValueError(f"stride must be 1 or 2 per axis, got {stride}")
    if any(d < 1 for d in dilation):
        raise ValueError(f"dilation must be >= 1 per axis, got {dilation}")
    return kernel, stride, dilation


def same_padding(kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """Zero padding per axis that keeps the size at stride 1: d (k - 1) / 2 (k odd)."""
    return dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2


def _output_size(size: int, kernel: int, stride: int, dilation: int) -> int:
    padding = dilation * (kernel - 1) // 2
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def check_inception_inputs(
    x: Tensor,
    weight_hw: Tensor,
    bias_hw: Tensor | None,
    weight_w: Tensor,
    bias_w: Tensor | None,
    weight_h: Tensor,
    bias_h: Tensor | None,
) -> tuple[int, int, int]:
    """Validate the inputs of :func:`inception_dwconv2d`; return (branch channels gc, square size, band size)."""
    check_float_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor [N, C, H, W] (any memory format), got shape {list(x.shape)}")
    check_float_tensor("weight_hw", weight_hw)
    if weight_hw.dim() != 4:
        raise ValueError(f"weight_hw must have shape [gc, 1, k, k], got {list(weight_hw.shape)}")
    gc = weight_hw.shape[0]
    square, _ = _check_weight("weight_hw", weight_hw, gc)
    if weight_hw.shape[3] != square:
        raise ValueError(f"weight_hw must be square [gc, 1, k, k], got {list(weight_hw.shape)}")
    check_float_tensor("weight_w", weight_w)
    band = weight_w.shape[3] if weight_w.dim() == 4 else -1
    _check_weight("weight_w", weight_w, gc, (1, band))
    _check_weight("weight_h", weight_h, gc, (band, 1))
    biases = {"bias_hw": bias_hw, "bias_w": bias_w, "bias_h": bias_h}
    for name, bias in biases.items():
        _check_bias(name, bias, gc)
    if len({b is None for b in biases.values()}) > 1:
        raise ValueError("bias_hw, bias_w and bias_h must all be tensors or all be None")
    if 3 * gc > x.shape[1] or gc == 0:
        raise ValueError(
            f"x has {x.shape[1]} channels (shape {list(x.shape)}); the three branches take 3 x gc = {3 * gc} of them "
            f"(gc = weight_hw.shape[0]): need 0 < 3 gc <= C"
        )
    _check_same_device(x, weight_hw=weight_hw, weight_w=weight_w, weight_h=weight_h, **biases)
    return gc, square, band


# ----------------------------------------------------------------------------------------------------------------
# 1. References
# ----------------------------------------------------------------------------------------------------------------


def dwconv2d_reference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    """Depthwise convolution with zero "same" padding: ``F.conv2d(..., groups=C)`` in the dtype of ``x``.

    Args:
        x: ``[N, C, H, W]``, any memory format.
        weight: ``[C, 1, kh, kw]`` with odd kh, kw; bias: ``[C]`` or None.
        stride: 1 or 2 (per axis); dilation: >= 1 (per axis).
    """
    kernel, stride, dilation = check_dwconv2d_inputs(x, weight, bias, stride, dilation)
    bias = None if bias is None else bias.to(x.dtype)
    padding = same_padding(kernel, dilation)
    return F.conv2d(x, weight.to(x.dtype), bias, stride, padding, dilation, groups=x.shape[1])


def inception_dwconv2d_reference(
    x: Tensor,
    weight_hw: Tensor,
    bias_hw: Tensor | None,
    weight_w: Tensor,
    bias_w: Tensor | None,
    weight_h: Tensor,
    bias_h: Tensor | None,
) -> Tensor:
    """InceptionNeXt's mixer as the paper writes it: split, three depthwise convolutions, concatenate."""
    gc, _, _ = check_inception_inputs(x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h)
    x_id, x_hw, x_w, x_h = torch.split(x, (x.shape[1] - 3 * gc, gc, gc, gc), dim=1)
    return torch.cat(
        (
            x_id,
            dwconv2d_reference(x_hw, weight_hw, bias_hw),
            dwconv2d_reference(x_w, weight_w, bias_w),
            dwconv2d_reference(x_h, weight_h, bias_h),
        ),
        dim=1,
    )


# ----------------------------------------------------------------------------------------------------------------
# 2. Triton kernels
#
# A tile is BLOCK_P positions (flattened over n, row, column: small maps fill a tile) x BLOCK_C channels. The same
# tile routine computes the forward ("gather": output position o reads the input at o s - p + k d) and the input
# gradient ("scatter" read backwards: input position i reads the output gradient at (i + p - k d) / s where that is
# an integer in range), looping over the taps; the shifted loads hit L1/L2.
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _split_positions(p, width, height):
    """Flattened position -> (image, row, column)."""
    col = p % width
    rest = p // width
    return rest // height, rest % height, col


@triton.jit
def _index(v, INT64: tl.constexpr):
    """Offset arithmetic in 64 bits only for tensors whose offsets reach 2^31 (the launcher decides)."""
    if INT64:
        return v.to(tl.int64)
    else:
        return v


@triton.jit
def _conv_tile(
    src_ptr,
    w_ptr,
    w_stride,
    w_channel,
    w_mask,
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
    STRIDE_H: tl.constexpr,
    STRIDE_W: tl.constexpr,
    TRANSPOSED: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """fp32 [BLOCK_P, BLOCK_C]: sum over taps of weight[tap, w_channel] * src[..., c] at the tap's position (zero
    outside the map); src is read where ``c_mask``, the weights where ``w_mask`` (0 elsewhere).

    ``w_ptr`` is a [taps, w_stride] table (channels contiguous: one vector load per tap). Forward
    (TRANSPOSED=False): src is x, (row, col) an output position. Input gradient (TRANSPOSED=True): src is the
    output gradient, (row, col) an input position."""
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    base = src_ptr + (_index(n, INT64) * s_n)[:, None] + (_index(c, INT64) * s_c)[None, :]
    for kh in range(KH):
        if TRANSPOSED:
            shifted = row + pad_h - kh * dil_h
            r = shifted // STRIDE_H
            row_ok = (shifted >= 0) & (r * STRIDE_H == shifted) & (r < src_h)
        else:
            r = row * STRIDE_H - pad_h + kh * dil_h
            row_ok = (r >= 0) & (r < src_h)
        row_ok = row_ok & p_mask
        row_offset = _index(r, INT64) * s_h
        for kw in range(KW):
            if TRANSPOSED:
                shifted_w = col + pad_w - kw * dil_w
                q = shifted_w // STRIDE_W
                ok = row_ok & (shifted_w >= 0) & (q * STRIDE_W == shifted_w) & (q < src_w)
            else:
                q = col * STRIDE_W - pad_w + kw * dil_w
                ok = row_ok & (q >= 0) & (q < src_w)
            offsets = row_offset + _index(q, INT64) * s_w
            values = tl.load(base + offsets[:, None], mask=ok[:, None] & c_mask[None, :], other=0.0)
            weights = tl.load(w_ptr + (kh * KW + kw) * w_stride + w_channel, mask=w_mask, other=0.0)
            acc += values.to(tl.float32) * weights.to(tl.float32)[None, :]
    return acc


@triton.jit
def _tile_offsets(n, row, col, c, d_n, d_c, d_h, d_w, INT64: tl.constexpr):
    offsets = _index(n, INT64) * d_n + _index(row, INT64) * d_h + _index(col, INT64) * d_w
    return offsets[:, None] + (_index(c, INT64) * d_c)[None, :]


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
    n, row, col = _split_positions(p, dst_w, dst_h)
    acc = _conv_tile(
        src_ptr,
        w_ptr,
        C,
        c,
        c_mask,
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
    offsets = _tile_offsets(n, row, col, c, d_n, d_c, d_h, d_w, INT64)
    tl.store(dst_ptr + offsets, acc.to(dst_ptr.dtype.element_ty), mask=p_mask[:, None] & c_mask[None, :])


@triton.jit
def _wgrad_tile_sums(
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
    STRIDE_H: tl.constexpr,
    STRIDE_W: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """(fp32 [BLOCK_T, BLOCK_C], fp32 [BLOCK_C]): for each tap of the block, the sum over output positions
    p_begin..p_end of dy[p, c] * x[p shifted by the tap, c]; and the sum of dy (the bias gradient). Accumulated
    elementwise in registers ([BLOCK_T, BLOCK_P, BLOCK_C]: one load of dy per tap block), reduced over positions
    once at the end."""
    kh = tap // KW
    kw = tap % KW
    is_tap = tap < KH * KW
    c_offsets = (_index(c, INT64) * x_c)[None, None, :]
    acc = tl.zeros((BLOCK_T, BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc_bias = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for start in range(p_begin, p_end, BLOCK_P):
        p = start + tl.arange(0, BLOCK_P)
        p_mask = p < p_end
        n, row, col = _split_positions(p, Wo, Ho)
        g_offsets = _tile_offsets(n, row, col, c, g_n, g_c, g_h, g_w, INT64)
        dy = tl.load(dy_ptr + g_offsets, mask=p_mask[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
        acc_bias += dy
        r = row[None, :] * STRIDE_H - pad_h + kh[:, None] * dil_h  # [BLOCK_T, BLOCK_P]
        q = col[None, :] * STRIDE_W - pad_w + kw[:, None] * dil_w
        ok = is_tap[:, None] & p_mask[None, :] & (r >= 0) & (r < H) & (q >= 0) & (q < W)
        offsets = (_index(n, INT64) * x_n)[None, :] + _index(r, INT64) * x_h + _index(q, INT64) * x_w
        values = tl.load(
            x_ptr + offsets[:, :, None] + c_offsets, mask=ok[:, :, None] & c_mask[None, None, :], other=0.0
        )
        acc += values.to(tl.float32) * dy[None, :, :]
    return tl.sum(acc, axis=1), tl.sum(acc_bias, axis=0)


@triton.jit
def _store_wgrad_sums(partial_ptr, row, row_stride, taps, tap, c_mask, sums, bias_sums, with_bias):
    """Write one program's sums into ``partial[row, tap]`` (rows of ``row_stride``); column ``taps`` takes the
    bias sum when ``with_bias``."""
    offsets = row[None, :] * row_stride + tap[:, None]
    tl.store(partial_ptr + offsets, sums, mask=(tap < taps)[:, None] & c_mask[None, :])
    if with_bias:
        tl.store(partial_ptr + row * row_stride + taps, bias_sums, mask=c_mask)


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
    sums, bias_sums = _wgrad_tile_sums(
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
    _store_wgrad_sums(
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


@triton.jit
def _inception_branch(branch, square, band, w_hw, w_w, w_h, b_hw, b_w, b_h):
    """(kh, kw, weight table, bias) of conv branch 1 (square), 2 (1 x band), 3 (band x 1)."""
    if branch == 1:
        kh = square
        kw = square
        w_ptr = w_hw
        b_ptr = b_hw
    elif branch == 2:
        kh = 1
        kw = band
        w_ptr = w_w
        b_ptr = b_w
    else:
        kh = band
        kw = 1
        w_ptr = w_h
        b_ptr = b_h
    return kh, kw, w_ptr, b_ptr


@triton.jit
def _branch_window(branch, C, id_channels, gc, local_block, BLOCK_C: tl.constexpr):
    """Channels of one program of conv branch ``branch`` (1..3): its slice [first, first + gc) of the tensor,
    walked in blocks that start at a multiple of 8 (so channels_last loads stay aligned 16-byte vectors however
    the slices fall). Returns (first, c, load mask: whole 8-channel groups of the window, exact mask: the
    slice)."""
    first = id_channels + (branch - 1) * gc
    start = (first // 8) * 8
    end = ((first + gc + 7) // 8) * 8
    c = start + local_block * BLOCK_C + tl.arange(0, BLOCK_C)
    return first, c, (c < end) & (c < C), (c >= first) & (c < first + gc)  # never past the last channel


@triton.jit
def _inception_kernel(
    src_ptr,
    dst_ptr,
    w_hw,
    b_hw,
    w_w,
    b_w,
    w_h,
    b_h,
    n_positions,
    H,
    W,
    C,
    id_channels,
    gc,
    square,
    band,
    s_n,
    s_c,
    s_h,
    s_w,
    d_n,
    d_c,
    d_h,
    d_w,
    TRANSPOSED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One launch for the whole mixer: each position tile has the channel blocks of the identity slice, then
    those of each conv branch (1 square, 2 1 x band, 3 band x 1); each program writes its channels of dst.
    Forward (src x, dst y) or input gradient (TRANSPOSED: src dy, dst dx; the identity slice of dx is the
    identity slice of dy). Loads cover whole aligned 8-channel groups (vectorised); the lanes outside a slice
    are computed and dropped, only the slice is stored."""
    id_blocks = tl.cdiv(id_channels, BLOCK_C)
    conv_blocks = tl.cdiv(gc + 14, BLOCK_C)  # an aligned window spans at most gc + 14 channels
    blocks = id_blocks + 3 * conv_blocks  # channel blocks vary fastest (see _dwconv_kernel)
    block = tl.program_id(0) % blocks
    p = (tl.program_id(0) // blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = p < n_positions
    n, row, col = _split_positions(p, W, H)
    if block < id_blocks:
        c = block * BLOCK_C + tl.arange(0, BLOCK_C)
        group_mask = p_mask[:, None] & ((c < ((id_channels + 7) // 8) * 8) & (c < C))[None, :]
        values = tl.load(src_ptr + _tile_offsets(n, row, col, c, s_n, s_c, s_h, s_w, INT64), mask=group_mask)
        tl.store(
            dst_ptr + _tile_offsets(n, row, col, c, d_n, d_c, d_h, d_w, INT64),
            values,
            mask=p_mask[:, None] & (c < id_channels)[None, :],
        )
    else:
        branch = (block - id_blocks) // conv_blocks + 1
        first, c, load_mask, exact = _branch_window(
            branch, C, id_channels, gc, (block - id_blocks) % conv_blocks, BLOCK_C
        )
        if tl.sum(exact.to(tl.int32), axis=0) > 0:
            kh, kw, w_ptr, b_ptr = _inception_branch(branch, square, band, w_hw, w_w, w_h, b_hw, b_w, b_h)
            w_channel = c - first  # contiguous (vector loads); lanes outside the slice are masked by `exact`
            acc = _conv_tile(
                src_ptr,
                w_ptr,
                gc,
                w_channel,
                exact,
                n,
                row,
                col,
                p_mask,
                c,
                load_mask,
                H,
                W,
                s_n,
                s_c,
                s_h,
                s_w,
                kh,
                kw,
                1,
                1,
                kh // 2,
                kw // 2,
                1,
                1,
                TRANSPOSED,
                INT64,
                BLOCK_P,
                BLOCK_C,
            )
            if HAS_BIAS and not TRANSPOSED:
                acc += tl.load(b_ptr + w_channel, mask=exact, other=0.0).to(tl.float32)[None, :]
            offsets = _tile_offsets(n, row, col, c, d_n, d_c, d_h, d_w, INT64)
            tl.store(dst_ptr + offsets, acc.to(dst_ptr.dtype.element_ty), mask=p_mask[:, None] & exact[None, :])


@triton.jit
def _inception_wgrad_kernel(
    x_ptr,
    dy_ptr,
    partial_ptr,
    n_positions,
    positions_per_program,
    H,
    W,
    C,
    id_channels,
    gc,
    square,
    band,
    x_n,
    x_c,
    x_h,
    x_w,
    g_n,
    g_c,
    g_h,
    g_w,
    INT64: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Partial weight and bias gradients of the three branches: ``partial[branch - 1, chunk, c, tap]`` (taps
    0..kh*kw - 1, then the bias sum; rows padded to max(square^2, band) + 1 columns); program axis 1 = (branch - 1)
    * channel blocks + channel block (aligned windows, as in the forward), axis 2 = tap block."""
    max_taps = tl.maximum(square * square, band)
    conv_blocks = tl.cdiv(gc + 14, BLOCK_C)
    chunk = tl.program_id(0)
    branch = tl.program_id(1) // conv_blocks + 1
    first, c, load_mask, exact = _branch_window(branch, C, id_channels, gc, tl.program_id(1) % conv_blocks, BLOCK_C)
    tap_block = tl.program_id(2)
    tap = tap_block * BLOCK_T + tl.arange(0, BLOCK_T)
    kh, kw, _w, _b = _inception_branch(branch, square, band, x_ptr, x_ptr, x_ptr, x_ptr, x_ptr, x_ptr)
    if (tap_block * BLOCK_T < kh * kw) & (tl.sum(exact.to(tl.int32), axis=0) > 0):
        p_begin = chunk * positions_per_program
        p_end = tl.minimum(p_begin + positions_per_program, n_positions)
        sums, bias_sums = _wgrad_tile_sums(
            x_ptr,
            dy_ptr,
            p_begin,
            p_end,
            c,
            load_mask,
            tap,
            H,
            W,
            H,
            W,
            x_n,
            x_c,
            x_h,
            x_w,
            g_n,
            g_c,
            g_h,
            g_w,
            kh,
            kw,
            1,
            1,
            kh // 2,
            kw // 2,
            1,
            1,
            INT64,
            BLOCK_T,
            BLOCK_P,
            BLOCK_C,
        )
        row = ((branch - 1).to(tl.int64) * tl.num_programs(0) + chunk) * gc + tl.where(exact, c - first, 0)
        _store_wgrad_sums(partial_ptr, row, max_taps + 1, kh * kw, tap, exact, sums, bias_sums, tap_block == 0)


# One fixed small configuration under the interpreter (CPU tests); on the GPU, configurations autotuned per layout:
# channels_last tiles span channels (contiguous), NCHW tiles span positions (a row is contiguous).
def _configs(rows: tuple[tuple[int, ...], ...], names: tuple[str, ...]) -> list:
    return [triton.Config(dict(zip(names, row[:-1], strict=True)), num_warps=row[-1]) for row in rows]


_TILE = ("BLOCK_P", "BLOCK_C")
_WGRAD_TILE = ("BLOCK_T", "BLOCK_P", "BLOCK_C")
if INTERPRETER:
    _CONV_CONFIGS = {"channels_last": _configs(((16, 4, 1),), _TILE), "nchw": _configs(((16, 4, 1),), _TILE)}
    _INCEPTION_CONFIGS = _CONV_CONFIGS
    _WGRAD_CONFIGS = {
        "channels_last": _configs(((4, 8, 4, 1),), _WGRAD_TILE),
        "nchw": _configs(((4, 8, 4, 1),), _WGRAD_TILE),
    }
    _INCEPTION_WGRAD_CONFIGS = _WGRAD_CONFIGS
else:
    _CONV_CONFIGS = {
        "channels_last": _configs(((64, 32, 4), (32, 64, 4), (128, 32, 8), (64, 64, 8), (32, 32, 2)), _TILE),
        "nchw": _configs(((128, 2, 4), (256, 1, 4), (256, 2, 4), (512, 1, 4)), _TILE),
    }
    # the mixer kernels hold more state (two code paths, branch windows): the tiles that stay free of spills
    _INCEPTION_CONFIGS = {
        "channels_last": _configs(((64, 32, 4), (32, 64, 4)), _TILE),
        "nchw": _CONV_CONFIGS["nchw"],
    }
    _WGRAD_CONFIGS = {
        "channels_last": _configs(((8, 16, 32, 4), (4, 32, 32, 4), (16, 16, 32, 8), (8, 32, 32, 8)), _WGRAD_TILE),
        "nchw": _configs(((8, 128, 1, 4), (4, 128, 2, 4), (16, 64, 1, 4)), _WGRAD_TILE),
    }
    _INCEPTION_WGRAD_CONFIGS = {
        "channels_last": _configs(((4, 32, 32, 4), (16, 16, 32, 8), (8, 32, 32, 8), (8, 16, 16, 4)), _WGRAD_TILE),
        "nchw": _WGRAD_CONFIGS["nchw"],
    }

_CONV_KEY = ["C", "KH", "KW", "STRIDE_H", "STRIDE_W", "dst_w", "TRANSPOSED"]
_WGRAD_KEY = ["C", "KH", "KW", "STRIDE_H", "STRIDE_W", "Wo"]
_INCEPTION_KEY = ["id_channels", "gc", "square", "band", "W", "TRANSPOSED"]
_INCEPTION_WGRAD_KEY = ["gc", "square", "band", "W"]
_dwconv = {layout: triton.autotune(configs, key=_CONV_KEY)(_dwconv_kernel) for layout, configs in _CONV_CONFIGS.items()}
_dwconv_wgrad = {
    layout: triton.autotune(configs, key=_WGRAD_KEY)(_dwconv_wgrad_kernel) for layout, configs in _WGRAD_CONFIGS.items()
}
_inception = {
    layout: triton.autotune(configs, key=_INCEPTION_KEY)(_inception_kernel)
    for layout, configs in _INCEPTION_CONFIGS.items()
}
_inception_wgrad = {
    layout: triton.autotune(configs, key=_INCEPTION_WGRAD_KEY)(_inception_wgrad_kernel)
    for layout, configs in _INCEPTION_WGRAD_CONFIGS.items()
}


# ----------------------------------------------------------------------------------------------------------------
# 3. Launchers
# ----------------------------------------------------------------------------------------------------------------


def _layout(x: Tensor) -> str:
    """Which tile family suits ``x``: "channels_last" when channels are the contiguous dimension."""
    return "channels_last" if x.stride(1) == 1 and x.shape[1] > 1 else "nchw"


def _memory_format(x: Tensor) -> torch.memory_format:
    """The memory format of the outputs: channels_last for a channels_last input, else contiguous."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _empty_like_format(x: Tensor, shape: Sequence[int], dtype: torch.dtype | None = None) -> Tensor:
    return torch.empty(tuple(shape), dtype=dtype or x.dtype, device=x.device, memory_format=_memory_format(x))


def _check_triton_dtype(**tensors: Tensor | None) -> None:
    check_triton_dtypes("the Triton depthwise-convolution kernels take", tensors)


def _check_grad_output(grad_output: Tensor, expected_shape: Sequence[int], x: Tensor) -> None:
    check_float_tensor("grad_output", grad_output)
    if tuple(grad_output.shape) != tuple(expected_shape):
        raise ValueError(
            f"grad_output must have the output's shape {list(expected_shape)}, got {list(grad_output.shape)}"
        )
    if grad_output.device != x.device:
        raise ValueError(f"grad_output must be on the device of x ({x.device}), got {grad_output.device}")
    _check_triton_dtype(grad_output=grad_output)


def _weight_table(weight: Tensor) -> Tensor:
    """The weight as a contiguous [kh * kw, C] table: a tap's weights for a block of channels are one load."""
    return weight.reshape(weight.shape[0], -1).t().contiguous()


def _needs_int64(*tensors: Tensor) -> bool:
    """Whether some element offset of these tensors reaches 2^31 (the kernels then compute offsets in 64 bits)."""
    return any(
        sum((size - 1) * abs(step) for size, step in zip(t.shape, t.stride(), strict=True)) >= 2**31 - 1
        for t in tensors
        if t.numel()
    )


def _positions_per_program(n_positions: int, parallel_programs: int) -> int:
    """Output positions each weight-gradient program reduces: enough programs to fill a GPU several times
    (about 1000), each reducing at least 512 positions so the partial sums stay small."""
    if INTERPRETER:
        return 16  # several chunks even on tiny test inputs
    chunks = max(1, min(triton.cdiv(1024, parallel_programs), triton.cdiv(n_positions, 512)))
    return triton.cdiv(n_positions, chunks)


def _gradient(sums: Tensor, weight: Tensor) -> Tensor:
    """A weight ([C, taps] -> the weight's shape) or bias gradient in the weight's dtype, in its own memory (the
    registered op's outputs must not alias one another)."""
    shape = weight.shape if sums.dim() == 2 else sums.shape
    return sums.to(weight.dtype, copy=True).reshape(shape)


def _strides(t: Tensor) -> tuple[int, int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _launch_conv(
    src: Tensor,
    w_table: Tensor,
    bias: Tensor | None,
    dst: Tensor,
    kernel,
    stride,
    dilation,
    transposed: bool,
    layout: str,
) -> None:
    n, channels, dst_h, dst_w = dst.shape
    n_positions = n * dst_h * dst_w
    padding = same_padding(kernel, dilation)

    def grid(meta):
        return (triton.cdiv(n_positions, meta["BLOCK_P"]) * triton.cdiv(channels, meta["BLOCK_C"]),)

    _dwconv[layout][grid](
        src,
        w_table,
        w_table if bias is None else bias,
        dst,
        n_positions,
        channels,
        src.shape[2],
        src.shape[3],
        dst_h,
        dst_w,
        *_strides(src),
        *_strides(dst),
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
        INT64=_needs_int64(src, dst),
    )


def dwconv2d_forward(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    """Triton forward of :func:`dwconv2d`; the output has the dtype and memory format of ``x``."""
    kernel, stride, dilation = check_dwconv2d_inputs(x, weight, bias, stride, dilation)
    _check_triton_dtype(x=x, weight=weight, bias=bias)
    check_triton_device(x.device)
    n, channels, h, w = x.shape
    out_shape = (
        n,
        channels,
        _output_size(h, kernel[0], stride[0], dilation[0]),
        _output_size(w, kernel[1], stride[1], dilation[1]),
    )
    y = _empty_like_format(x, out_shape)
    if y.numel():
        with device_guard(x.device):
            _launch_conv(x, _weight_table(weight), bias, y, kernel, stride, dilation, False, _layout(x))
    return y


def dwconv2d_backward(
    grad_output: Tensor,
    x: Tensor,
    weight: Tensor,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton backward of :func:`dwconv2d`: (dx, d weight, d bias).

    dx has the dtype and memory format of ``x``; the weight and bias gradients are reduced in float32 and
    returned in the dtype of ``weight`` (the bias gradient is computed whether or not there is a bias)."""
    kernel, stride, dilation = check_dwconv2d_inputs(x, weight, None, stride, dilation)
    _check_triton_dtype(x=x, weight=weight)
    check_triton_device(x.device)
    n, channels, h, w = x.shape
    out_h = _output_size(h, kernel[0], stride[0], dilation[0])
    out_w = _output_size(w, kernel[1], stride[1], dilation[1])
    _check_grad_output(grad_output, (n, channels, out_h, out_w), x)
    dx = _empty_like_format(x, x.shape)
    taps = kernel[0] * kernel[1]
    if grad_output.numel() == 0:
        return dx.zero_(), torch.zeros_like(weight), weight.new_zeros(channels)
    layout = _layout(x)
    n_positions = n * out_h * out_w
    per_program = _positions_per_program(n_positions, triton.cdiv(channels, 32) * triton.cdiv(taps, 8))
    chunks = triton.cdiv(n_positions, per_program)
    partial = torch.empty((chunks, channels, taps + 1), dtype=torch.float32, device=x.device)
    padding = same_padding(kernel, dilation)

    def grid(meta):
        return (chunks, triton.cdiv(channels, meta["BLOCK_C"]), triton.cdiv(taps, meta["BLOCK_T"]))

    with device_guard(x.device):
        _launch_conv(grad_output, _weight_table(weight), None, dx, kernel, stride, dilation, True, layout)
        _dwconv_wgrad[layout][grid](
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
            *_strides(x),
            *_strides(grad_output),
            kernel[0],
            kernel[1],
            dilation[0],
            dilation[1],
            padding[0],
            padding[1],
            STRIDE_H=stride[0],
            STRIDE_W=stride[1],
            INT64=_needs_int64(x, grad_output),
        )
    sums = partial.sum(0)
    return dx, _gradient(sums[:, :taps], weight), _gradient(sums[:, taps], weight)


def inception_dwconv2d_forward(
    x: Tensor,
    weight_hw: Tensor,
    bias_hw: Tensor | None,
    weight_w: Tensor,
    bias_w: Tensor | None,
    weight_h: Tensor,
    bias_h: Tensor | None,
) -> Tensor:
    """Triton forward of :func:`inception_dwconv2d`: one launch writes all four channel slices."""
    gc, square, band = check_inception_inputs(x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h)
    _check_triton_dtype(
        x=x, weight_hw=weight_hw, weight_w=weight_w, weight_h=weight_h, bias_hw=bias_hw, bias_w=bias_w, bias_h=bias_h
    )
    check_triton_device(x.device)
    y = _empty_like_format(x, x.shape)
    if y.numel():
        with device_guard(x.device):
            _launch_inception(
                x,
                y,
                (weight_hw, weight_w, weight_h),
                (bias_hw, bias_w, bias_h),
                gc,
                square,
                band,
                transposed=False,
                layout=_layout(x),
            )
    return y


def _launch_inception(
    src: Tensor, dst: Tensor, weights, biases, gc: int, square: int, band: int, transposed: bool, layout: str
) -> None:
    n, channels, h, w = dst.shape
    n_positions = n * h * w
    id_channels = channels - 3 * gc
    w_hw, w_w, w_h = (_weight_table(t) for t in weights)
    b_hw, b_w, b_h = (w_hw if b is None else b for b in biases)

    def grid(meta):
        blocks = triton.cdiv(id_channels, meta["BLOCK_C"]) + 3 * triton.cdiv(gc + 14, meta["BLOCK_C"])
        return (triton.cdiv(n_positions, meta["BLOCK_P"]) * blocks,)

    _inception[layout][grid](
        src,
        dst,
        w_hw,
        b_hw,
        w_w,
        b_w,
        w_h,
        b_h,
        n_positions,
        h,
        w,
        channels,
        id_channels,
        gc,
        square,
        band,
        *_strides(src),
        *_strides(dst),
        TRANSPOSED=transposed,
        HAS_BIAS=biases[0] is not None,
        INT64=_needs_int64(src, dst),
    )


def inception_dwconv2d_backward(
    grad_output: Tensor, x: Tensor, weight_hw: Tensor, weight_w: Tensor, weight_h: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Triton backward of :func:`inception_dwconv2d`: (dx, d weight_hw, d bias_hw, d weight_w, d bias_w,
    d weight_h, d bias_h); two launches (input gradient; weight and bias gradients of all three branches)."""
    gc, square, band = check_inception_inputs(x, weight_hw, None, weight_w, None, weight_h, None)
    _check_triton_dtype(x=x, weight_hw=weight_hw, weight_w=weight_w, weight_h=weight_h)
    check_triton_device(x.device)
    _check_grad_output(grad_output, x.shape, x)
    dx = _empty_like_format(x, x.shape)
    weights = (weight_hw, weight_w, weight_h)
    if x.numel() == 0:
        zeros = [(torch.zeros_like(wt), wt.new_zeros(gc)) for wt in weights]
        return (dx, *zeros[0], *zeros[1], *zeros[2])
    layout = _layout(x)
    n, channels, h, w = x.shape
    n_positions = n * h * w
    max_taps = max(square * square, band)
    per_program = _positions_per_program(n_positions, 3 * triton.cdiv(gc, 32) * triton.cdiv(max_taps, 8))
    chunks = triton.cdiv(n_positions, per_program)
    partial = torch.empty((3, chunks, gc, max_taps + 1), dtype=torch.float32, device=x.device)

    def grid(meta):
        return (chunks, 3 * triton.cdiv(gc + 14, meta["BLOCK_C"]), triton.cdiv(max_taps, meta["BLOCK_T"]))

    with device_guard(x.device):
        _launch_inception(
            grad_output, dx, weights, (None, None, None), gc, square, band, transposed=True, layout=layout
        )
        _inception_wgrad[layout][grid](
            x,
            grad_output,
            partial,
            n_positions,
            per_program,
            h,
            w,
            channels,
            channels - 3 * gc,
            gc,
            square,
            band,
            *_strides(x),
            *_strides(grad_output),
            INT64=_needs_int64(x, grad_output),
        )
    sums = partial.sum(1)
    grads = []
    for index, wt in enumerate(weights):
        taps = wt.shape[2] * wt.shape[3]
        grads += [_gradient(sums[index, :, :taps], wt), _gradient(sums[index, :, taps], wt)]
    return (dx, *grads)


# ----------------------------------------------------------------------------------------------------------------
# 4. The registered ops
# ----------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("zoo::dwconv2d", mutates_args=())
def _dwconv2d_op(x: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], dilation: list[int]) -> Tensor:
    return dwconv2d_forward(x, weight, bias, stride, dilation)


@_dwconv2d_op.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], dilation: list[int]) -> Tensor:
    kernel, stride, dilation = check_dwconv2d_inputs(x, weight, bias, stride, dilation)
    n, channels, h, w = x.shape
    out_shape = (
        n,
        channels,
        _output_size(h, kernel[0], stride[0], dilation[0]),
        _output_size(w, kernel[1], stride[1], dilation[1]),
    )
    return _empty_like_format(x, out_shape)


@torch.library.custom_op("zoo::dwconv2d_backward", mutates_args=())
def _dwconv2d_backward_op(
    grad_output: Tensor, x: Tensor, weight: Tensor, stride: list[int], dilation: list[int]
) -> tuple[Tensor, Tensor, Tensor]:
    return dwconv2d_backward(grad_output, x, weight, stride, dilation)


@_dwconv2d_backward_op.register_fake
def _(grad_output: Tensor, x: Tensor, weight: Tensor, stride: list[int], dilation: list[int]):
    return _empty_like_format(x, x.shape), torch.empty_like(weight), weight.new_empty(weight.shape[0])


def _dwconv2d_setup_context(ctx, inputs, output) -> None:
    x, weight, bias, stride, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias, ctx.stride, ctx.dilation = bias is not None, stride, dilation


def _dwconv2d_autograd_backward(ctx, grad_output: Tensor):
    x, weight = ctx.saved_tensors
    dx, dw, db = torch.ops.zoo.dwconv2d_backward(grad_output, x, weight, ctx.stride, ctx.dilation)
    return dx, dw, db if ctx.has_bias else None, None, None


_dwconv2d_op.register_autograd(_dwconv2d_autograd_backward, setup_context=_dwconv2d_setup_context)


@torch.library.custom_op("zoo::inception_dwconv2d", mutates_args=())
def _inception_op(
    x: Tensor,
    weight_hw: Tensor,
    bias_hw: Tensor | None,
    weight_w: Tensor,
    bias_w: Tensor | None,
    weight_h: Tensor,
    bias_h: Tensor | None,
) -> Tensor:
    return inception_dwconv2d_forward(x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h)


@_inception_op.register_fake
def _(x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h) -> Tensor:
    check_inception_inputs(x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h)
    return _empty_like_format(x, x.shape)


@torch.library.custom_op("zoo::inception_dwconv2d_backward", mutates_args=())
def _inception_backward_op(
    grad_output: Tensor, x: Tensor, weight_hw: Tensor, weight_w: Tensor, weight_h: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return inception_dwconv2d_backward(grad_output, x, weight_hw, weight_w, weight_h)


@_inception_backward_op.register_fake
def _(grad_output, x, weight_hw, weight_w, weight_h):
    grads = []
    for weight in (weight_hw, weight_w, weight_h):
        grads += [torch.empty_like(weight), weight.new_empty(weight.shape[0])]
    return (_empty_like_format(x, x.shape), *grads)


def _inception_setup_context(ctx, inputs, output) -> None:
    x, weight_hw, bias_hw, weight_w, _bias_w, weight_h, _bias_h = inputs
    ctx.save_for_backward(x, weight_hw, weight_w, weight_h)
    ctx.has_bias = bias_hw is not None


def _inception_autograd_backward(ctx, grad_output: Tensor):
    grads = torch.ops.zoo.inception_dwconv2d_backward(grad_output, *ctx.saved_tensors)
    dx, dw_hw, db_hw, dw_w, db_w, dw_h, db_h = grads
    if not ctx.has_bias:
        db_hw = db_w = db_h = None
    return dx, dw_hw, db_hw, dw_w, db_w, dw_h, db_h


_inception_op.register_autograd(_inception_autograd_backward, setup_context=_inception_setup_context)


class _DwConv2dFunction(torch.autograd.Function):
    """Eager autograd of the Triton path: the launchers are called directly (fewer dispatches per call);
    ``torch.compile`` traces the registered op ``zoo::dwconv2d``; both run the same launchers."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, dilation):
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.stride, ctx.dilation = bias is not None, stride, dilation
        return dwconv2d_forward(x, weight, bias, stride, dilation)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        dx, dw, db = dwconv2d_backward(grad_output, x, weight, ctx.stride, ctx.dilation)
        return dx, dw, db if ctx.has_bias else None, None, None


class _InceptionFunction(torch.autograd.Function):
    """Eager autograd of the fused mixer (see :class:`_DwConv2dFunction`)."""

    @staticmethod
    def forward(ctx, x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h):
        ctx.save_for_backward(x, weight_hw, weight_w, weight_h)
        ctx.has_bias = bias_hw is not None
        return inception_dwconv2d_forward(x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        dx, dw_hw, db_hw, dw_w, db_w, dw_h, db_h = inception_dwconv2d_backward(grad_output, *ctx.saved_tensors)
        if not ctx.has_bias:
            db_hw = db_w = db_h = None
        return dx, dw_hw, db_hw, dw_w, db_w, dw_h, db_h


def _autocast_input(x: Tensor) -> Tensor:
    """Under autocast, the activation goes to the autocast dtype (as for ``F.conv2d``); the weights stay in their
    dtype (the kernels read them and accumulate in float32), so their gradients keep it too."""
    device_type = x.device.type
    if device_type in ("cuda", "cpu") and x.is_floating_point() and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        if x.dtype != dtype and x.dtype != torch.float64:
            return x.to(dtype)
    return x


def dwconv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    backend: str = "auto",
) -> Tensor:
    """Depthwise 2-D convolution with zero "same" padding (see the module docstring).

    Args:
        x: ``[N, C, H, W]`` float16/bfloat16/float32 (float64 on the reference backend), NCHW or channels_last or
            any strides; the output has the memory format of ``x``.
        weight: ``[C, 1, kh, kw]``, odd kh and kw (square or band kernels); bias: ``[C]`` or None.
        stride: 1 or 2 per axis; dilation: >= 1 per axis.
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see :mod:`zoo.kernels._backend`).

    Returns:
        ``[N, C, H_out, W_out]`` in the dtype of ``x`` (the autocast dtype under autocast); differentiable in x,
        weight and bias.
    """
    check_float_tensor("x", x)
    x = _autocast_input(x)
    if resolve_backend(backend, x, TRITON_DTYPES) == "triton":  # the launchers validate their inputs
        stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
        return dispatch_triton(
            x,
            weight,
            bias,
            list(stride),
            list(dilation),
            op=torch.ops.zoo.dwconv2d,
            function=_DwConv2dFunction,
            launcher=dwconv2d_forward,
        )
    return dwconv2d_reference(x, weight, bias, stride, dilation)


def inception_dwconv2d(
    x: Tensor,
    weight_hw: Tensor,
    bias_hw: Tensor | None,
    weight_w: Tensor,
    bias_w: Tensor | None,
    weight_h: Tensor,
    bias_h: Tensor | None,
    backend: str = "auto",
) -> Tensor:
    """InceptionNeXt's token mixer: identity on the first C - 3 gc channels, then a square, a 1 x band and a
    band x 1 depthwise convolution on gc channels each (gc = ``weight_hw.shape[0]``), with "same" padding.

    Args:
        x: ``[N, C, H, W]``, NCHW or channels_last (the output keeps the memory format).
        weight_hw ``[gc, 1, k, k]``, weight_w ``[gc, 1, 1, band]``, weight_h ``[gc, 1, band, 1]``; odd k and band.
        bias_hw, bias_w, bias_h: ``[gc]`` each, or all None.
        backend: ``"triton"`` runs one fused kernel (one more for each of the input and weight gradients);
            ``"torch"`` the split / conv / cat reference.
    """
    check_float_tensor("x", x)
    x = _autocast_input(x)
    args = (x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h)
    if resolve_backend(backend, x, TRITON_DTYPES) == "triton":  # the launchers validate their inputs
        return dispatch_triton(
            *args, op=torch.ops.zoo.inception_dwconv2d, function=_InceptionFunction, launcher=inception_dwconv2d_forward
        )
    return inception_dwconv2d_reference(*args)


# ----------------------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (zoo/kernels/_aot.py; tests/kernels/test_compile_targets.py)
# ----------------------------------------------------------------------------------------------------------------


def aot_specs() -> list:
    """Compile specs (zoo/kernels/_aot.py). For bf16 (the training dtype), in both layouts: every autotune
    configuration of every kernel with the launch-time specialisations of a contiguous model activation
    (strides and sizes divisible by 16, the unit stride a constant), forward and input-gradient variants, and
    again with arbitrary strides, 64-bit offsets and stride 2. For fp32 and fp16: the first configuration."""
    from zoo.kernels._aot import KernelSpec

    conv_flags = [dict(TRANSPOSED=False, HAS_BIAS=True), dict(TRANSPOSED=True, HAS_BIAS=False)]
    kernels = (
        (_dwconv_kernel, _CONV_CONFIGS, ("src_ptr", "w_ptr", "b_ptr", "dst_ptr"), conv_flags),
        (
            _inception_kernel,
            _INCEPTION_CONFIGS,
            ("src_ptr", "dst_ptr", "w_hw", "b_hw", "w_w", "b_w", "w_h", "b_h"),
            conv_flags,
        ),
        (_dwconv_wgrad_kernel, _WGRAD_CONFIGS, ("x_ptr", "dy_ptr", "partial_ptr"), [{}]),
        (_inception_wgrad_kernel, _INCEPTION_WGRAD_CONFIGS, ("x_ptr", "dy_ptr", "partial_ptr"), [{}]),
    )
    strides = {f"{t}_{d}" for t in ("s", "d", "x", "g") for d in ("n", "c", "h", "w")}
    divisible = strides | {"C", "n_positions", "positions_per_program"}
    unit_stride = {"channels_last": {"s_c", "d_c", "x_c", "g_c"}, "nchw": {"s_w", "d_w", "x_w", "g_w"}}
    specs = []
    for kernel, config_sets, pointers, flag_sets in kernels:
        for layout, configs in config_sets.items():
            variants = [("bf16", config, flags, False) for config in configs for flags in flag_sets]
            variants += [("bf16", config, flags, True) for config in configs for flags in flag_sets]
            variants += [(dtype, configs[0], flags, False) for dtype in ("fp32", "fp16") for flags in flag_sets]
            for dtype, config, flags, strided in variants:
                constexprs = {**config.kwargs, **flags, "INT64": strided}
                if "STRIDE_H" in kernel.arg_names:
                    constexprs.update(STRIDE_H=2 if strided else 1, STRIDE_W=2 if strided else 1)
                signature = {}
                for name in kernel.arg_names:
                    if name in constexprs:
                        continue
                    if name in pointers:
                        signature[name] = "*fp32:16" if name == "partial_ptr" else f"*{dtype}:16"
                    elif name in unit_stride[layout]:
                        signature[name] = "i32:1"
                    else:
                        signature[name] = "i32:16" if name in divisible and not strided else "i32"
                label = ",".join(f"{k[6:]}{v}" for k, v in config.kwargs.items())  # "BLOCK_P64" -> "P64"
                direction = {True: ",bwd", False: ",fwd"}.get(flags.get("TRANSPOSED"), "")
                specs.append(
                    KernelSpec(
                        name=f"{kernel.__name__}[{dtype},{layout},{label},w{config.num_warps}{direction}"
                        f"{',strided' if strided else ''}]",
                        fn=kernel,
                        signature=signature,
                        constexprs=constexprs,
                        num_warps=config.num_warps,
                    )
                )
    return specs + benchmark_specs()


# The benchmarked shapes (scripts/benchmark.py: dwconv_cases, inception_cases), bf16: (batch, channels, size, k)
# for dwconv2d, (batch, channels, size) for InceptionNeXt-T's four mixer stages (square 3, band 11, gc = C / 8).
DWCONV_BENCHMARKS = tuple((64, c, h, k) for c, h in ((384, 56), (768, 14)) for k in (3, 7, 13, 31))
INCEPTION_BENCHMARKS = ((128, 96, 56), (128, 192, 28), (128, 384, 14), (128, 768, 7))


def taps_on_map(size: int, k: int, dilation: int = 1) -> int:
    """Useful work along one axis of a "same" convolution at stride 1: the (output position, tap) pairs whose
    input lies on the map, not on the zero padding; a 2-D map has the product of its two axes'."""
    pad = dilation * (k - 1) // 2
    return sum(0 <= o - pad + t * dilation < size for o in range(size) for t in range(k))


def _meta_strides(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return torch.empty(shape, device="meta", memory_format=memory_format).stride()


def _named_strides(prefixes: Sequence[str], strides: tuple[int, ...]) -> dict[str, int]:
    return {f"{prefix}_{axis}": stride for prefix in prefixes for axis, stride in zip("nchw", strides, strict=True)}


def _average_trips(n_positions: int, per_program: int, block: int) -> float:
    """Mean trip count of a loop over a program's chunk of positions in steps of ``block`` (the last chunk is
    shorter)."""
    chunks = [min(per_program, n_positions - start) for start in range(0, n_positions, per_program)]
    return sum(triton.cdiv(length, block) for length in chunks) / len(chunks)


def benchmark_specs() -> list:
    """Loop-report specs (zoo/kernels/_aot.py --loops): every autotune configuration of the forward, input
    gradient and weight gradient at the benchmarked shapes, with the arguments the launchers pass there (so the
    JIT's specialisations: pad 1 of k = 3 and the unit dilation become constants, sizes that are multiples of 16
    get the hint) and the useful work of a program: the multiply-adds of the taps that land on the map
    (:func:`taps_on_map`), per program of the launch's grid. dwconv2d in both layouts; the mixer channels_last
    (as the models run it). The first configuration of the K = 7, 56 x 56 case and of the mixer's first stage
    is compiled in the tests too (``ci``)."""
    from zoo.kernels._aot import Work, launch_spec

    specs = []
    pointers = dict.fromkeys(("src_ptr", "w_ptr", "b_ptr", "dst_ptr"), "*bf16")
    for n, c, h, k in DWCONV_BENCHMARKS:
        case = f"B{n}xC{c}x{h}x{h}xK{k}"
        positions, taps, pad = n * h * h, k * k, (k - 1) // 2
        on_map = taps_on_map(h, k)
        macs = n * c * on_map**2
        size = dict(src_h=h, src_w=h, dst_h=h, dst_w=h, KH=k, KW=k, dil_h=1, dil_w=1, pad_h=pad, pad_w=pad)
        stride = dict(STRIDE_H=1, STRIDE_W=1, INT64=False)
        for layout in ("channels_last", "nchw"):
            strides = _meta_strides((n, c, h, h), layout)
            representative = ci = (k, h) == (7, 56)
            for config in _CONV_CONFIGS[layout]:
                block_p, block_c = config.kwargs["BLOCK_P"], config.kwargs["BLOCK_C"]
                programs = triton.cdiv(positions, block_p) * triton.cdiv(c, block_c)
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
                        **_named_strides(("s", "d"), strides),
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
            per_program = _positions_per_program(positions, triton.cdiv(c, 32) * triton.cdiv(taps, 8))
            chunks = triton.cdiv(positions, per_program)
            ci = representative
            for config in _WGRAD_CONFIGS[layout]:
                block_t, block_p, block_c = (config.kwargs[name] for name in _WGRAD_TILE)
                programs = chunks * triton.cdiv(c, block_c) * triton.cdiv(taps, block_t)
                trips = _average_trips(positions, per_program, block_p)
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
                    **_named_strides(("x", "g"), strides),
                    **{name: value for name, value in size.items() if not name.startswith(("src", "dst"))},
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
    specs += _inception_benchmark_specs()
    return specs


def _branch_blocks(id_channels: int, gc: int, channels: int, block_c: int) -> list[int]:
    """Per conv branch, the channel blocks of the mixer whose aligned window meets the branch's slice (the
    others return at once): the programs that run the taps (see ``_branch_window``)."""
    counts = []
    for branch in (1, 2, 3):
        first = id_channels + (branch - 1) * gc
        start = (first // 8) * 8
        blocks = triton.cdiv(gc + 14, block_c)
        counts.append(
            sum(
                any(first <= ch < first + gc and ch < channels for ch in range(lo, lo + block_c))
                for lo in (start + j * block_c for j in range(blocks))
            )
        )
    return counts


def _inception_benchmark_specs() -> list:
    from zoo.kernels._aot import Work, launch_spec

    specs = []
    layout, square, band = "channels_last", 3, 11
    branches = ((square, square), (1, band), (band, 1))  # (kh, kw) of the square, 1 x band and band x 1 branches
    for n, c, h in INCEPTION_BENCHMARKS:
        case = f"B{n}xC{c}x{h}x{h}"
        gc = c // 8
        id_channels = c - 3 * gc
        positions = n * h * h
        macs = sum(n * gc * taps_on_map(h, kh) * taps_on_map(h, kw) for kh, kw in branches)
        strides = _meta_strides((n, c, h, h), layout)
        common = dict(n_positions=positions, H=h, W=h, C=c, id_channels=id_channels, gc=gc, square=square, band=band)
        ci = c == 96
        for config in _INCEPTION_CONFIGS[layout]:
            block_p, block_c = config.kwargs["BLOCK_P"], config.kwargs["BLOCK_C"]
            active = _branch_blocks(id_channels, gc, c, block_c)
            programs = triton.cdiv(positions, block_p) * sum(active)
            runs_kh = sum(a * kh for a, (kh, _) in zip(active, branches, strict=True)) / sum(active)
            runs_taps = sum(a * kh * kw for a, (kh, kw) in zip(active, branches, strict=True)) / sum(active)
            work = Work(
                case,
                "MAC",
                macs / programs,
                (runs_kh, runs_taps / runs_kh),
                f"MACs = N gc (3x3 + 1x11 + 11x1 taps on map) = {macs}; programs = the conv-branch programs whose "
                f"window meets their slice: cdiv({positions}, {block_p}) x {sum(active)} ({active} per branch; "
                f"identity copies and empty windows excluded) = {programs}; loops: kh {runs_kh:g}, kw "
                f"{runs_taps / runs_kh:g} (means over those programs)",
            )
            label = f"P{block_p},C{block_c},w{config.num_warps}"
            for transposed, direction in ((False, "fwd"), (True, "bwd")):
                args = dict(
                    src_ptr="*bf16",
                    dst_ptr="*bf16",
                    **dict.fromkeys(("w_hw", "b_hw", "w_w", "b_w", "w_h", "b_h"), "*bf16"),
                    **common,
                    **_named_strides(("s", "d"), strides),
                    TRANSPOSED=transposed,
                    HAS_BIAS=not transposed,
                    INT64=False,
                    **config.kwargs,
                )
                specs.append(
                    launch_spec(
                        f"_inception_kernel[bf16,{layout},{label},{direction}]@{case}",
                        _inception_kernel,
                        args,
                        num_warps=config.num_warps,
                        num_stages=config.num_stages,
                        work=work,
                        ci=ci,
                    )
                )
            ci = False
        max_taps = max(square * square, band)
        per_program = _positions_per_program(positions, 3 * triton.cdiv(gc, 32) * triton.cdiv(max_taps, 8))
        chunks = triton.cdiv(positions, per_program)
        ci = c == 96
        for config in _INCEPTION_WGRAD_CONFIGS[layout]:
            block_t, block_p, block_c = (config.kwargs[name] for name in _WGRAD_TILE)
            active = _branch_blocks(id_channels, gc, c, block_c)
            tap_blocks = [triton.cdiv(kh * kw, block_t) for kh, kw in branches]
            programs = chunks * sum(a * t for a, t in zip(active, tap_blocks, strict=True))
            trips = _average_trips(positions, per_program, block_p)
            work = Work(
                case,
                "MAC",
                macs / programs,
                (trips,),
                f"MACs = {macs} (as the forward); programs = {chunks} chunks x the (window, tap block) pairs that "
                f"have work ({active} windows, {tap_blocks} tap blocks per branch) = {programs}; loop over a "
                f"chunk's positions in steps of {block_p}: {trips:g}",
            )
            args = dict(
                x_ptr="*bf16",
                dy_ptr="*bf16",
                partial_ptr="*fp32",
                n_positions=positions,
                positions_per_program=per_program,
                **{name: value for name, value in common.items() if name != "n_positions"},
                **_named_strides(("x", "g"), strides),
                INT64=False,
                **config.kwargs,
            )
            label = f"T{block_t},P{block_p},C{block_c},w{config.num_warps}"
            specs.append(
                launch_spec(
                    f"_inception_wgrad_kernel[bf16,{layout},{label}]@{case}",
                    _inception_wgrad_kernel,
                    args,
                    num_warps=config.num_warps,
                    num_stages=config.num_stages,
                    work=work,
                    ci=ci,
                )
            )
            ci = False
    return specs
