"""Tensor-core implicit GEMM for the large depthwise kernels (K >= 13: UniRepLKNet's 13 / 15 / 17, RepLKNet's 31),
stride 1, dilation 1, both layouts: forward, input gradient and weight / bias gradient.

Forward (and input gradient, the same with the flipped kernel): per channel and kernel row i, the row convolution
is a GEMM with a banded Toeplitz matrix,

    Y_c[rows, w] += X_c[rows + i - p_h, w'] @ T_{c,i}[w', w],   T_{c,i}[w', w] = W[c, 0, i, w' - w + p_w] in the band

A program owns a block of channels (the batch dimension of a 3-D ``tl.dot``) x BLOCK_G images x BLOCK_R map rows
(the GEMM's rows) x BLOCK_N output columns; the band's input columns are cut into chunks of BLOCK_K starting at
its first column on the map, and the kernel rows and column chunks that miss the map are skipped (a 31 x 31
kernel on a 14 x 14 map runs 27 of its 31 rows and one chunk per row). T is gathered from the weight
(L1-resident) per (row, chunk), in the dtype of x: no table is built on the host.

Weight gradient: for a block of channels and a chunk of map rows (n, r), over their columns w,

    dW_c[i, j] = sum_{(n, r, w)} X_c[n, r, w + j - p_w] dY_c[n, r - i + p_h, w]

is one GEMM [j, w] @ [w, i] per map row with both operands gathered (im2col along one axis each); a spare row
j = KW of the first operand is all ones, so the same GEMM gives the bias gradient (sum of dY) at [KW, p_h]. Each
program writes its partial sums; the last program of a channel block (an atomic ticket per channel block, one per
program) adds them in a fixed order and writes dW and db in the weight's dtype: deterministic, one launch.

Precision: bf16 / fp16 operands with fp32 accumulation (the weight is rounded to the dtype of x, as autocast
does); fp32 operands on 3xTF32 (``input_precision="tf32x3"``: products to about fp32 accuracy on the tensor
cores)."""

from __future__ import annotations

import torch
from torch import Tensor

from zoo.kernels._backend import INTERPRETER, cdiv, launchable, next_power_of_2, ticket_counters, tl, triton
from zoo.kernels.dwconv._common import (
    DWCONV_BENCHMARKS,
    index,
    layout_of,
    make_configs,
    meta_strides,
    named_strides,
    needs_int64,
    positions_per_program,
    strides4,
    taps_on_map,
)

MIN_KERNEL = 13  # smaller kernels waste most of a tensor-core tile on the band's zeros: the direct kernels take them
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _dot(a, b, acc, EXACT_DOT: tl.constexpr):
    """acc + a @ b accumulated in fp32: bf16 / fp16 operands on the tensor cores, fp32 operands on 3xTF32; EXACT_DOT
    (the interpreter, whose bf16 dot multiplies the bit patterns) in fp32 (bf16 and fp16 products are exact in
    fp32, so only the order of the sums differs from the GPU)."""
    if EXACT_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif a.dtype == tl.float32:
        return tl.dot(a, b, acc, input_precision="tf32x3")
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _igemm_conv_kernel(
    src_ptr,
    w_ptr,
    b_ptr,
    dst_ptr,
    N,
    C,
    H,
    W,
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
    pad_h,
    pad_w,
    FLIP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    INT64: tl.constexpr,
    EXACT_DOT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Forward (src = x, dst = y) or input gradient (FLIP: src = dy, dst = dx, the kernel flipped) at stride 1 on
    an H x W map. One program per (image, row tile, column tile, channel block), channel blocks fastest."""
    pid = tl.program_id(0)
    c_blocks = tl.cdiv(C, BLOCK_C)
    row_tiles = tl.cdiv(H, BLOCK_R)
    col_tiles = tl.cdiv(W, BLOCK_N)
    cb = pid % c_blocks
    rest = pid // c_blocks
    tw = rest % col_tiles
    rest = rest // col_tiles
    th = rest % row_tiles
    n0 = (rest // row_tiles) * BLOCK_G
    r0 = th * BLOCK_R
    w0 = tw * BLOCK_N
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = (c < C)[:, None, None]
    m = tl.arange(0, BLOCK_G * BLOCK_R)  # GEMM rows: BLOCK_G images x BLOCK_R map rows
    n = n0 + m // BLOCK_R
    rows = r0 + m % BLOCK_R
    kk = tl.arange(0, BLOCK_K)
    ww = tl.arange(0, BLOCK_N)
    # kernel rows with some output row of the tile on the map; input-column chunks of the band on the map
    r_last = tl.minimum(r0 + BLOCK_R, H) - 1
    i_lo = tl.maximum(pad_h - r_last, 0)
    i_hi = tl.minimum(H + pad_h - r0, KH)
    col_lo = tl.maximum(w0 - pad_w, 0)  # the band's first input column on the map
    col_hi = tl.minimum(tl.minimum(w0 + BLOCK_N, W) + pad_w, W)
    chunks = tl.cdiv(col_hi - col_lo, BLOCK_K)
    m_ok = (n < N)[None, :, None]
    src = src_ptr + (index(n, INT64) * s_n)[None, :, None] + (index(c, INT64) * s_c)[:, None, None]
    w_base = w_ptr + (index(c, INT64) * (KH * KW))[:, None, None]
    j0 = (col_lo - w0 + pad_w) + kk[:, None] - ww[None, :]  # tap of T[w', w] in the first chunk
    acc = tl.zeros((BLOCK_C, BLOCK_G * BLOCK_R, BLOCK_N), dtype=tl.float32)
    for i in range(i_lo, i_hi):
        in_rows = rows + i - pad_h
        row_ok = m_ok & ((in_rows >= 0) & (in_rows < H))[None, :, None]
        src_row = src + (index(in_rows, INT64) * s_h)[None, :, None]
        if FLIP:
            w_row = w_base + (KH - 1 - i) * KW + (KW - 1)
        else:
            w_row = w_base + i * KW
        for q in range(0, chunks):
            in_cols = col_lo + q * BLOCK_K + kk
            col_ok = ((in_cols >= 0) & (in_cols < W))[None, None, :]
            a = tl.load(src_row + (index(in_cols, INT64) * s_w)[None, None, :], mask=c_ok & row_ok & col_ok, other=0.0)
            j = j0 + q * BLOCK_K
            tap_ok = ((j >= 0) & (j < KW))[None, :, :]
            if FLIP:
                t = tl.load(w_row - j[None, :, :], mask=c_ok & tap_ok, other=0.0)
            else:
                t = tl.load(w_row + j[None, :, :], mask=c_ok & tap_ok, other=0.0)
            acc = _dot(a, t.to(a.dtype), acc, EXACT_DOT)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c < C, other=0.0).to(tl.float32)[:, None, None]
    out_cols = w0 + ww
    offsets = (
        (index(n, INT64) * d_n + index(rows, INT64) * d_h)[None, :, None]
        + (index(c, INT64) * d_c)[:, None, None]
        + (index(out_cols, INT64) * d_w)[None, None, :]
    )
    mask = c_ok & m_ok & (rows < H)[None, :, None] & (out_cols < W)[None, None, :]
    tl.store(dst_ptr + offsets, acc.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _igemm_wgrad_kernel(
    x_ptr,
    dy_ptr,
    partial_ptr,
    counter_ptr,
    dw_ptr,
    db_ptr,
    n_rows,
    rows_per_program,
    chunks,
    C,
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
    KH,
    KW,
    pad_h,
    pad_w,
    INT64: tl.constexpr,
    EXACT_DOT: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """Weight and bias gradients at stride 1. Program (chunk, channel block): acc[c, j, i] = sum over the chunk's
    map rows (n, r) and their columns w of x[n, c, r, w + j - pad_w] dy[n, c, r - i + pad_h, w] (row j = KW of the
    first operand is 1: acc[c, KW, pad_h] = sum of dy), written to ``partial[chunk, c, i KW + j]`` (the bias at
    KH KW); the last program of the channel block (atomic ticket on ``counter[block]``, reset to 0 after) adds the
    chunks in order and writes dw, db in their dtype."""
    chunk = tl.program_id(0)
    cb = tl.program_id(1)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = (c < C)[:, None, None]
    jj = tl.arange(0, BLOCK_J)
    ii = tl.arange(0, BLOCK_I)
    ww = tl.arange(0, BLOCK_W)
    row_begin = chunk * rows_per_program
    row_end = tl.minimum(row_begin + rows_per_program, n_rows)
    x_base = x_ptr + (index(c, INT64) * x_c)[:, None, None]
    g_base = dy_ptr + (index(c, INT64) * g_c)[:, None, None]
    is_tap_j = (jj < KW)[None, :, None]
    is_bias_j = (jj == KW)[None, :, None]
    is_tap_i = (ii < KH)[None, None, :]
    ones = is_bias_j.to(tl.float32).to(x_ptr.dtype.element_ty)  # the bias row (b is 0 where it should not count)
    acc = tl.zeros((BLOCK_C, BLOCK_J, BLOCK_I), dtype=tl.float32)
    for row in range(row_begin, row_end):  # one map row (n, r) per step: its image and row are scalars
        n = row // H
        r = row - n * H
        g_rows = r - ii + pad_h  # [I]
        b_row_ok = is_tap_i & ((g_rows >= 0) & (g_rows < H))[None, None, :]
        x_row = x_base + index(n, INT64) * x_n + index(r, INT64) * x_h
        g_row = g_base + index(n, INT64) * g_n + (index(g_rows, INT64) * g_h)[None, None, :]
        for w0 in range(0, W, BLOCK_W):
            w = w0 + ww
            # a[c, j, w] = x[n, c, r, w + j - pad_w] (1 in the bias row)
            cols = w[None, :] + jj[:, None] - pad_w  # [J, W]
            a_ok = ((cols >= 0) & (cols < W))[None, :, :]
            a = tl.load(x_row + (index(cols, INT64) * x_w)[None, :, :], mask=c_ok & is_tap_j & a_ok, other=ones)
            # b[c, w, i] = dy[n, c, r - i + pad_h, w]
            b_ok = c_ok & b_row_ok & (w < W)[None, :, None]
            b = tl.load(g_row + (index(w, INT64) * g_w)[None, :, None], mask=b_ok, other=0.0)
            acc = _dot(a, b.to(a.dtype), acc, EXACT_DOT)
    # partial[chunk, c, i KW + j] = acc[c, j, i]; the bias sum at KH KW
    taps = KH * KW
    row = (index(chunk, INT64) * C + c) * (taps + 1)
    tap = ii[None, None, :] * KW + jj[None, :, None]
    tap = tl.where(is_bias_j & (ii == pad_h)[None, None, :], taps, tap)
    keep = c_ok & is_tap_i & (is_tap_j | (is_bias_j & (ii == pad_h)[None, None, :]))
    tl.store(partial_ptr + row[:, None, None] + tap, acc, mask=keep)
    tl.debug_barrier()  # every thread's partial sums are written before the ticket
    ticket = tl.atomic_add(counter_ptr + cb, 1)
    if ticket == chunks - 1:
        c_row = index(c, INT64) * (taps + 1)
        for t0 in range(0, taps + 1, BLOCK_T):
            t = t0 + tl.arange(0, BLOCK_T)
            ok = (c < C)[:, None] & (t < taps + 1)[None, :]
            total = tl.zeros((BLOCK_C, BLOCK_T), dtype=tl.float32)
            for k in range(chunks):
                offsets = index(k, INT64) * C * (taps + 1) + c_row[:, None] + t[None, :]
                total += tl.load(partial_ptr + offsets, mask=ok, other=0.0, cache_modifier=".cg")
            tl.store(
                dw_ptr + (index(c, INT64) * taps)[:, None] + t[None, :],
                total.to(dw_ptr.dtype.element_ty),
                mask=ok & (t < taps)[None, :],
            )
            bias = tl.sum(tl.where((t == taps)[None, :], total, 0.0), axis=1)
            tl.store(db_ptr + c, bias.to(db_ptr.dtype.element_ty), mask=(c < C) & (t0 + BLOCK_T > taps))
        tl.atomic_xchg(counter_ptr + cb, 0)  # ready for the next launch


# One small configuration under the interpreter (CPU tests); on the GPU, configurations autotuned per layout. One
# pipeline stage: the loops' bounds are runtime values (clipped to the map), and the software pipeline's prologue
# and bookkeeping cost more instructions than they hide (the static report: about 250 instead of 385 per 16 HMMA);
# several resident programs per SM hide the load latency instead.
_CONV_TILE = ("BLOCK_C", "BLOCK_G", "BLOCK_R", "BLOCK_N", "BLOCK_K")
_WGRAD_TILE = ("BLOCK_C", "BLOCK_W")


if INTERPRETER:
    _CONV_CONFIGS = {
        layout: make_configs(((2, 2, 8, 16, 16, 1),), _CONV_TILE, num_stages=1) for layout in ("channels_last", "nchw")
    }
    _WGRAD_CONFIGS = {
        layout: make_configs(((2, 16, 1),), _WGRAD_TILE, num_stages=1) for layout in ("channels_last", "nchw")
    }
else:
    # (channels, images, rows, columns, band chunk, warps): 64 GEMM rows (4 images of a small map, or 4 row tiles
    # of 16); channels_last vectors of 8 or 4 channels, NCHW a channel per warp (fewer channels than warps would
    # repeat the GEMM in the spare warps: the 3-D dot spreads its warps over channels first). The last, small one is
    # the only one for fp32 operands (3xTF32 holds hi / lo parts) and for maps without a unit stride or with
    # 64-bit offsets (one address per element): the larger tiles spill there.
    _CONV_CONFIGS = {
        "channels_last": make_configs(
            ((8, 4, 16, 16, 16, 8), (4, 4, 16, 32, 16, 4), (4, 1, 16, 16, 16, 4)), _CONV_TILE, num_stages=1
        ),
        "nchw": make_configs(
            ((8, 4, 16, 16, 16, 8), (4, 4, 16, 16, 16, 4), (4, 1, 16, 16, 16, 4)), _CONV_TILE, num_stages=1
        ),
    }
    # (channels, columns per step, warps)
    _WGRAD_CONFIGS = {
        "channels_last": make_configs(((8, 16, 4), (8, 32, 4), (16, 16, 8)), _WGRAD_TILE, num_stages=1),
        "nchw": make_configs(((4, 16, 4), (4, 32, 4), (8, 16, 4)), _WGRAD_TILE, num_stages=1),
    }


def _prune_conv_configs(configs: list, named_args: dict, **kwargs) -> list:
    """The autotuner's candidates for one launch: all of them for bf16 / fp16 maps with a unit stride and 32-bit
    offsets, else the last (smallest) configuration."""
    args = {**named_args, **kwargs}
    unit_stride = 1 in (args["s_c"], args["s_w"]) and 1 in (args["d_c"], args["d_w"])
    if args["src_ptr"].dtype == torch.float32 or args["INT64"] or not unit_stride:
        return configs[-1:]
    return configs


def _wgrad_candidates(configs: list, int64: bool) -> list:
    """The weight gradient's configurations for a launch: with 64-bit offsets (one 64-bit address per element)
    those of at most 32 elements per warp (the 8-channel x 32-column tile spilled 8-32 bytes at k = 31 under
    Triton 3.6), else all."""
    if not int64:
        return configs
    return [c for c in configs if c.kwargs["BLOCK_C"] * c.kwargs["BLOCK_W"] <= 32 * c.num_warps]


def _prune_wgrad_configs(configs: list, named_args: dict, **kwargs) -> list:
    """The autotuner's candidates for one weight-gradient launch (:func:`_wgrad_candidates`)."""
    return _wgrad_candidates(configs, {**named_args, **kwargs}["INT64"])


_REDUCE_BLOCK = 64 if INTERPRETER else 256  # taps per step of the last program's reduction

_CONV_KEY = ["C", "H", "W", "KH", "KW", "FLIP", "s_c", "s_w", "d_c", "d_w", "INT64"]
_WGRAD_KEY = ["C", "H", "W", "KH", "KW", "INT64"]
_conv = {
    layout: triton.autotune(configs, key=_CONV_KEY, prune_configs_by={"early_config_prune": _prune_conv_configs})(
        _igemm_conv_kernel
    )
    for layout, configs in _CONV_CONFIGS.items()
}
_wgrad = {
    layout: triton.autotune(configs, key=_WGRAD_KEY, prune_configs_by={"early_config_prune": _prune_wgrad_configs})(
        _igemm_wgrad_kernel
    )
    for layout, configs in _WGRAD_CONFIGS.items()
}


# ----------------------------------------------------------------------------------------------------------------
# Launchers (ops.py validates the tensors and allocates the outputs)
# ----------------------------------------------------------------------------------------------------------------


def supports(
    kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int], layout: str, dtype: torch.dtype
) -> bool:
    """Whether this path takes the convolution: both kernel sizes >= 13, stride 1, dilation 1, a Triton float
    dtype, either layout."""
    return (
        min(kernel) >= MIN_KERNEL
        and tuple(stride) == (1, 1)
        and tuple(dilation) == (1, 1)
        and layout in ("channels_last", "nchw")
        and dtype in _DTYPES
    )


def _launch_conv(src: Tensor, weight: Tensor, bias: Tensor | None, dst: Tensor, flip: bool) -> None:
    n, channels, h, w = dst.shape
    kh, kw = weight.shape[2], weight.shape[3]

    def grid(meta):
        tiles = cdiv(n, meta["BLOCK_G"]) * cdiv(h, meta["BLOCK_R"]) * cdiv(w, meta["BLOCK_N"])
        return (tiles * cdiv(channels, meta["BLOCK_C"]),)

    launchable(_conv[layout_of(src)])[grid](
        src,
        weight,
        weight if bias is None else bias,
        dst,
        n,
        channels,
        h,
        w,
        *strides4(src),
        *strides4(dst),
        kh,
        kw,
        (kh - 1) // 2,
        (kw - 1) // 2,
        FLIP=flip,
        HAS_BIAS=bias is not None,
        INT64=needs_int64(src, dst),
        EXACT_DOT=INTERPRETER,
    )


def forward(x: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, stride, dilation) -> None:
    """Write the convolution of ``x`` into ``y`` (preallocated, x's shape). Only for what :func:`supports` takes:
    ``stride`` and ``dilation`` are (1, 1) (the launcher's common signature)."""
    if y.numel():
        _launch_conv(x, weight, bias, y, flip=False)


def input_grad(grad_output: Tensor, weight: Tensor, dx: Tensor, stride, dilation) -> None:
    """Write the input gradient into ``dx`` (preallocated): the convolution of ``grad_output`` with the flipped
    kernel (stride and dilation (1, 1), as :func:`supports` requires)."""
    if dx.numel():
        _launch_conv(grad_output, weight, None, dx, flip=True)


def _chunks(n_rows: int, width: int, channels: int) -> tuple[int, int]:
    """(map rows per program, chunks) of the weight gradient over ``n_rows`` rows (images x rows) of ``width``
    columns: the same for every configuration (the partial buffer does not depend on the tile)."""
    per_program = cdiv(positions_per_program(n_rows * width, cdiv(channels, 8)), width)
    return per_program, cdiv(n_rows, per_program)


def _tap_blocks(kh: int, kw: int) -> tuple[int, int]:
    """(BLOCK_J, BLOCK_I): the GEMM's tap dimensions, powers of two >= 16 with a spare row j = kw (the bias)."""
    return max(16, next_power_of_2(kw + 1)), max(16, next_power_of_2(kh))


def weight_grad(x: Tensor, grad_output: Tensor, weight: Tensor, stride, dilation) -> tuple[Tensor, Tensor]:
    """(dw, db) in the dtype of ``weight`` (dw with its shape, db [C]): one launch, deterministic (stride and
    dilation (1, 1), as :func:`supports` requires)."""
    n, channels, h, w = x.shape
    kh, kw = weight.shape[2], weight.shape[3]
    dw = torch.empty_like(weight, memory_format=torch.contiguous_format)
    db = torch.empty(channels, dtype=weight.dtype, device=weight.device)
    if x.numel() == 0:
        return dw.zero_(), db.zero_()
    per_program, chunks = _chunks(n * h, w, channels)
    partial = torch.empty((chunks, channels, kh * kw + 1), dtype=torch.float32, device=x.device)
    counters = ticket_counters(x.device, channels)  # one per channel block, blocks of at least one channel
    block_j, block_i = _tap_blocks(kh, kw)

    def grid(meta):
        return (chunks, cdiv(channels, meta["BLOCK_C"]))

    launchable(_wgrad[layout_of(x)])[grid](
        x,
        grad_output,
        partial,
        counters,
        dw,
        db,
        n * h,
        per_program,
        chunks,
        channels,
        h,
        w,
        *strides4(x),
        *strides4(grad_output),
        kh,
        kw,
        (kh - 1) // 2,
        (kw - 1) // 2,
        INT64=needs_int64(x, grad_output, partial),
        EXACT_DOT=INTERPRETER,
        BLOCK_J=block_j,
        BLOCK_I=block_i,
        BLOCK_T=_REDUCE_BLOCK,
    )
    return dw, db


# ----------------------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (zoo/kernels/_aot.py; tests/kernels/test_compile_targets.py)
# ----------------------------------------------------------------------------------------------------------------

_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _conv_args(dtype: str, n: int, c: int, h: int, w: int, k: int, layout: str, config, flip: bool, strided: bool):
    """The arguments ``_launch_conv`` passes for an [n, c, h, w] map and a k x k kernel (strided: a map with
    arbitrary strides and 64-bit offsets)."""
    strides = meta_strides((n, c, h, w), layout)
    if strided:  # no stride divisible by 16, none equal to 1
        strides = tuple(3 * s + 1 for s in strides)
    return dict(
        src_ptr=f"*{dtype}",
        w_ptr=f"*{dtype}",
        b_ptr=f"*{dtype}",
        dst_ptr=f"*{dtype}",
        N=n,
        C=c,
        H=h,
        W=w,
        **named_strides(("s", "d"), strides),
        KH=k,
        KW=k,
        pad_h=(k - 1) // 2,
        pad_w=(k - 1) // 2,
        FLIP=flip,
        HAS_BIAS=not flip,
        INT64=strided,
        EXACT_DOT=False,
        **config.kwargs,
    )


def _wgrad_args(dtype: str, n: int, c: int, h: int, w: int, k: int, layout: str, config, strided: bool):
    """The arguments ``weight_grad`` passes (strided: arbitrary strides and 64-bit offsets)."""
    strides = meta_strides((n, c, h, w), layout)
    if strided:
        strides = tuple(3 * s + 1 for s in strides)
    per_program, chunks = _chunks(n * h, w, c)
    block_j, block_i = _tap_blocks(k, k)
    return dict(
        x_ptr=f"*{dtype}",
        dy_ptr=f"*{dtype}",
        partial_ptr="*fp32",
        counter_ptr="*i32",
        dw_ptr=f"*{dtype}",
        db_ptr=f"*{dtype}",
        n_rows=n * h,
        rows_per_program=per_program,
        chunks=chunks,
        C=c,
        H=h,
        W=w,
        **named_strides(("x", "g"), strides),
        KH=k,
        KW=k,
        pad_h=(k - 1) // 2,
        pad_w=(k - 1) // 2,
        INT64=strided,
        EXACT_DOT=False,
        BLOCK_J=block_j,
        BLOCK_I=block_i,
        BLOCK_T=_REDUCE_BLOCK,
        **config.kwargs,
    )


def _label(config) -> str:
    """ "C8,G1,R64,N16,K16,w4" from a configuration."""
    return ",".join(f"{k[6:]}{v}" for k, v in config.kwargs.items()) + f",w{config.num_warps}"


def aot_specs() -> list:
    """Compile specs of every variant the launchers can compile: both layouts; the forward and input-gradient
    kernels in bf16 with every configuration, in fp16 with the first, and (as ``_prune_conv_configs`` leaves
    them) fp32 and maps with arbitrary strides and 64-bit offsets with the last; the weight gradient with every
    configuration in bf16 (strided: those ``_prune_wgrad_configs`` leaves), and the first in fp32 and fp16; each
    at the two tap-block sizes (16: K 13 and 15; 32: K 17 to 31). Plus the benchmark specs (the first configuration
    of the channels_last K = 13, 56 x 56 case is compiled in the tests too, ``ci``)."""
    from zoo.kernels._aot import launch_spec

    specs = []
    for layout in ("channels_last", "nchw"):
        configs = _CONV_CONFIGS[layout]
        variants = [("bf16", config, False, k) for config in configs for k in (13, 31)]
        variants += [("bf16", configs[-1], True, k) for k in (13, 31)]
        variants += [("fp16", configs[0], False, 13), ("fp32", configs[-1], False, 13), ("fp32", configs[-1], True, 31)]
        for dtype, config, strided, k in variants:
            for flip, direction in ((False, "fwd"), (True, "bwd")):
                specs.append(
                    launch_spec(
                        f"_igemm_conv_kernel[{dtype},{layout},{_label(config)},{direction},k{k}"
                        f"{',strided' if strided else ''}]",
                        _igemm_conv_kernel,
                        _conv_args(dtype, 2, 48, 20, 20, k, layout, config, flip, strided),
                        num_warps=config.num_warps,
                        num_stages=config.num_stages,
                        uses_dot=True,
                        ci=False,
                    )
                )
        variants = [
            ("bf16", config, strided, k)
            for strided in (False, True)
            for config in _wgrad_candidates(_WGRAD_CONFIGS[layout], strided)
            for k in (13, 31)
        ]
        variants += [(dtype, _WGRAD_CONFIGS[layout][0], False, k) for dtype in ("fp32", "fp16") for k in (13, 31)]
        for dtype, config, strided, k in variants:
            specs.append(
                launch_spec(
                    f"_igemm_wgrad_kernel[{dtype},{layout},{_label(config)},k{k}{',strided' if strided else ''}]",
                    _igemm_wgrad_kernel,
                    _wgrad_args(dtype, 2, 48, 20, 20, k, layout, config, strided),
                    num_warps=config.num_warps,
                    num_stages=config.num_stages,
                    uses_dot=True,
                    ci=False,
                )
            )
    return specs + benchmark_specs()


def _conv_trips(n: int, h: int, w: int, k: int, config) -> tuple[float, float, int]:
    """(mean kernel rows per program, mean column chunks per kernel row, programs) of the forward at an
    [n, ., h, w] map: the clipping of ``_igemm_conv_kernel``, tile by tile."""
    block_g, block_r, block_n, block_k = (config.kwargs[name] for name in ("BLOCK_G", "BLOCK_R", "BLOCK_N", "BLOCK_K"))
    pad = (k - 1) // 2
    rows = [max(0, min(h + pad - r0, k) - max(pad - (min(r0 + block_r, h) - 1), 0)) for r0 in range(0, h, block_r)]
    chunks = []
    for w0 in range(0, w, block_n):
        col_lo, col_hi = max(w0 - pad, 0), min(min(w0 + block_n, w) + pad, w)
        chunks.append(cdiv(col_hi - col_lo, block_k))
    mean_rows = sum(rows) / len(rows)
    return mean_rows, sum(chunks) / len(chunks), cdiv(n, block_g) * len(rows) * len(chunks)


def benchmark_specs() -> list:
    """Loop-report specs (zoo/kernels/_aot.py --loops) at the K >= 13 benchmark shapes (B64 C384 56x56 and
    B64 C768 14x14 at K 13 and 31, bf16, both layouts): every configuration of the forward, input gradient and
    weight gradient with the launchers' arguments. A program's useful work is its share of the multiply-adds of
    the taps that land on the map (:func:`taps_on_map`); trips: the forward's kernel rows and column chunks after
    the clipping, the weight gradient's steps over its chunk of positions (and the last program's reduction, one
    program of each channel block's ``chunks``)."""
    from zoo.kernels._aot import Work, launch_spec

    specs = []
    for n, c, h, k in DWCONV_BENCHMARKS:
        if k < MIN_KERNEL:
            continue
        case = f"B{n}xC{c}x{h}x{h}xK{k}"
        on_map = taps_on_map(h, k)
        macs = n * c * on_map**2
        for layout in ("channels_last", "nchw"):
            representative = (layout, h, k) == ("channels_last", 56, 13)
            for config in _CONV_CONFIGS[layout]:
                mean_rows, mean_chunks, tiles = _conv_trips(n, h, h, k, config)
                programs = tiles * cdiv(c, config.kwargs["BLOCK_C"])
                work = Work(
                    case,
                    "MAC",
                    macs / programs,
                    (mean_rows, mean_chunks),
                    f"MACs = N C (taps on map per axis)^2 = {n} x {c} x {on_map}^2 = {macs}; programs = {tiles} "
                    f"tiles x cdiv({c}, {config.kwargs['BLOCK_C']}) = {programs}; loops: kernel rows "
                    f"{mean_rows:g}, column chunks {mean_chunks:g} (clipped to the map)",
                )
                for flip, direction in ((False, "fwd"), (True, "bwd")):
                    specs.append(
                        launch_spec(
                            f"_igemm_conv_kernel[bf16,{layout},{_label(config)},{direction}]@{case}",
                            _igemm_conv_kernel,
                            _conv_args("bf16", n, c, h, h, k, layout, config, flip, False),
                            num_warps=config.num_warps,
                            num_stages=config.num_stages,
                            uses_dot=True,
                            work=work,
                            ci=representative and config is _CONV_CONFIGS[layout][0],
                        )
                    )
            per_program, chunks = _chunks(n * h, h, c)
            for config in _WGRAD_CONFIGS[layout]:
                block_c, block_w = config.kwargs["BLOCK_C"], config.kwargs["BLOCK_W"]
                programs = chunks * cdiv(c, block_c)
                rows = n * h / chunks
                steps = cdiv(h, block_w)
                tap_steps = cdiv(k * k + 1, _REDUCE_BLOCK)
                work = Work(
                    case,
                    "MAC",
                    macs / programs,
                    ((rows, tap_steps / chunks), (steps, chunks)),
                    f"MACs = {macs} (as the forward); programs = {chunks} chunks of {per_program} map rows x "
                    f"cdiv({c}, {block_c}) = {programs}; loops: {rows:g} rows x {steps} column steps of {block_w}; "
                    f"the last program of a channel block (1 in {chunks}): {tap_steps} tap steps x {chunks} chunks",
                )
                specs.append(
                    launch_spec(
                        f"_igemm_wgrad_kernel[bf16,{layout},{_label(config)}]@{case}",
                        _igemm_wgrad_kernel,
                        _wgrad_args("bf16", n, c, h, h, k, layout, config, False),
                        num_warps=config.num_warps,
                        num_stages=config.num_stages,
                        uses_dot=True,
                        work=work,
                        ci=representative and config is _WGRAD_CONFIGS[layout][0],
                    )
                )
    return specs
