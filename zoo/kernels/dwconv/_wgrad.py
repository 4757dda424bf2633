"""Weight and bias gradients of the depthwise convolution: one launch, deterministic.

    dw[c, 0, i, j] = sum_{n, h, w} dy[n, c, h, w] x[n, c, h s_h - p_h + i d_h, w s_w - p_w + j d_w]    (0 off the map)
    db[c] = sum_{n, h, w} dy[n, c, h, w]

A program owns a block of channels, a strip of output rows (flattened over batch and height) and a block of KR
kernel rows (all of them for the kernel sizes the models use). Its tile is [BLOCK_S rows, BLOCK_C channels]: each
thread walks its row along the columns, TILE_W output columns at a time, and keeps the accumulators of all its
taps (KR x KW, constexpr, unrolled) for its channels in registers. Per column tile it loads the TILE_W output
gradients and, per kernel row, the input row segment under them with its halo ((TILE_W - 1) s + KW columns, each
loaded once: a sliding window in registers) and issues every multiply-add those values take part in. Rows and
channels off the tensor read a cached run of zeros (their base pointers are redirected once per row step), so no
column tile masks rows or channels. At stride and dilation 1 (EDGES) the first tile of a row starts at column 0 and
the last ends at the last column: the window columns off the map are known at compile time, neither loaded nor
multiplied, and every tile loads without masks (from 7 x 7 at 8-column tiles the first and last tiles share one
masked copy of the tile instead, which compiles five times faster); an NCHW row of at most ``WHOLE_ROW_MAX``
columns (the 14 x 14 and 7 x 7 stages) is a single tile with both borders known at compile time (WHOLE_ROW: no
column loop). Otherwise (stride 2, dilation, some narrow maps) the border tiles mask their columns and the interior
ones do not; dilation along the columns is handled by walking them in phases (columns w, w + d, w + 2d, ... in one
tile), so the window still slides by whole columns. No runtime division or modulo in the column loops. NCHW runs the
same kernel: its unit stride is then along the row, where a thread's window lies (immediate load offsets);
channels_last loads vectors along the channels.

Every program writes its fp32 partial sums (its taps and, for the first kernel-row block, the sum of dy) to
``partial[strip, tap, c]``, then takes a ticket (one acq_rel atomic per program on its channel block's counter,
``ticket_counters``); the last program of a channel block adds the partials of all strips in a fixed order (so
the result does not depend on which program comes last: deterministic), writes dw and db in the weight's dtype
and resets the counter to zero for the next launch. One launch in all: no memset, no torch reduction or dtype copy afterwards.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zoo.kernels._backend import (
    INTERPRETER,
    cached_zeros,
    cdiv,
    launchable,
    ticket_counters,
    tl,
    tracing_kernels,
    triton,
)
from zoo.kernels.dwconv._checks import output_size, pair, same_padding, tap_dilation
from zoo.kernels.dwconv._common import (
    DWCONV_BENCHMARKS,
    MAXNREG,
    index,
    meta_strides,
    needs_int64,
    strides4,
    taps_on_map,
)


@triton.jit
def _floor_div(a, b):
    """floor(a / b) of scalars, b > 0 (Triton's // truncates toward zero)."""
    q = a // b
    return tl.where(q * b > a, q - 1, q)


@triton.jit
def _column_tile(
    acc,
    acc_bias,
    g_base,
    x_bases,
    w0,
    dy_from,
    W,
    Wo,
    g_w,
    x_w,
    dil_w,
    pad_w,
    KR: tl.constexpr,
    KW: tl.constexpr,
    STRIDE_W: tl.constexpr,
    TILE_W: tl.constexpr,
    INT64: tl.constexpr,
    MASKED: tl.constexpr,
    SKIP_LO: tl.constexpr,
    SKIP_HI: tl.constexpr,
    DY_FROM: tl.constexpr,
):
    """One step along the row: output columns w0 + t d (t < TILE_W); returns the updated (acc, acc_bias).

    The base pointers already point at zeros for the rows and channels off the tensor. A MASKED tile (the general
    border) checks every column; otherwise the tile loads without masks, except that the first SKIP_LO and last
    SKIP_HI columns of the window are known to be off the map (the first and last tiles of a row at stride and
    dilation 1): they are not loaded and their multiply-adds are not issued; with DY_FROM the output columns
    before ``dy_from`` (already covered by an earlier tile) read zeros."""
    NU: tl.constexpr = (TILE_W - 1) * STRIDE_W + KW  # input columns under the tile (the window)
    dys = ()
    for t in tl.static_range(TILE_W):
        ow = w0 + t * dil_w
        if MASKED and DY_FROM:
            dy = tl.load(g_base + index(ow, INT64) * g_w, mask=(ow < Wo) & (ow >= dy_from), other=0.0)
        elif MASKED:
            dy = tl.load(g_base + index(ow, INT64) * g_w, mask=ow < Wo, other=0.0)
        elif DY_FROM:
            dy = tl.load(g_base + index(ow, INT64) * g_w, mask=ow >= dy_from, other=0.0)
        else:
            dy = tl.load(g_base + index(ow, INT64) * g_w)
        dys = dys + (dy.to(tl.float32),)
        acc_bias += dys[t]
    col0 = w0 * STRIDE_W - pad_w
    updated = ()
    for r in tl.static_range(KR):
        xs = ()
        for u in tl.static_range(NU):
            col = col0 + u * dil_w
            if MASKED:
                x = tl.load(x_bases[r] + index(col, INT64) * x_w, mask=(col >= 0) & (col < W), other=0.0)
                xs = xs + (x.to(tl.float32),)
            elif u < SKIP_LO or u >= NU - SKIP_HI:
                xs = xs + (0.0,)  # off the map: never read
            else:
                xs = xs + (tl.load(x_bases[r] + index(col, INT64) * x_w).to(tl.float32),)
        for j in tl.static_range(KW):
            a = acc[r * KW + j]
            for t in tl.static_range(TILE_W):
                if MASKED or (t * STRIDE_W + j >= SKIP_LO and t * STRIDE_W + j < NU - SKIP_HI):
                    a += dys[t] * xs[t * STRIDE_W + j]
            updated = updated + (a,)
    return updated, acc_bias


# one strip (a small batch on a small map) and several would be two specialisations, two compiles of one tile; so
# would dilations of 1 and 2 (UniRepLKNet's branches), and specialised at 1 the masked path spilled (docs/design.md
# §18)
@triton.jit(do_not_specialize=["strips", "dil_h", "dil_w"])
def _dwconv_wgrad_kernel(
    x_ptr,
    dy_ptr,
    zx_ptr,
    zg_ptr,
    partial_ptr,
    dw_ptr,
    db_ptr,
    counter_ptr,
    rows,
    rows_per_strip,
    strips,
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
    zx_c,
    zg_c,
    dil_h,
    dil_w,
    pad_h,
    pad_w,
    KH: tl.constexpr,
    KW: tl.constexpr,
    KR: tl.constexpr,
    STRIDE_H: tl.constexpr,
    STRIDE_W: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    TILE_W: tl.constexpr,
    EDGES: tl.constexpr,
    WHOLE_ROW: tl.constexpr,
    MERGED: tl.constexpr,
):
    """Grid (kernel-row blocks, channel blocks, strips); see the module docstring. ``zx_ptr`` / ``zg_ptr``: zeros
    of x's / dy's dtype spanning a row (channel stride ``zx_c`` / ``zg_c``: 1 in channels_last, else 0); the rows
    and channels that fall off the tensor read them, so interior tiles need no masks."""
    TAPS: tl.constexpr = KH * KW
    NU: tl.constexpr = (TILE_W - 1) * STRIDE_W + KW
    row_block = tl.program_id(0)
    channel_block = tl.program_id(1)
    strip = tl.program_id(2)
    c = channel_block * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    i0 = row_block * KR  # first kernel row of this program
    row_begin = strip * rows_per_strip
    row_end = tl.minimum(row_begin + rows_per_strip, rows)

    acc = ()
    for _tap in tl.static_range(KR * KW):
        acc = acc + (tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32),)
    acc_bias = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
    for r0 in range(row_begin, row_end, BLOCK_S):
        row = r0 + tl.arange(0, BLOCK_S)
        row_ok = row < row_end
        n = row // Ho
        oh = row - n * Ho
        g_ok = row_ok[:, None] & c_mask[None, :]
        g_real = dy_ptr + (index(n, INT64) * g_n + index(oh, INT64) * g_h)[:, None] + (index(c, INT64) * g_c)[None, :]
        g_base = tl.where(g_ok, g_real, zg_ptr + (c * zg_c)[None, :])
        x_bases = ()
        for r in tl.static_range(KR):
            ih = oh * STRIDE_H - pad_h + (i0 + r) * dil_h
            ih_ok = row_ok & (ih >= 0) & (ih < H)
            if KH % KR != 0:
                ih_ok = ih_ok & (i0 + r < KH)
            x_real = (
                x_ptr + (index(n, INT64) * x_n + index(ih, INT64) * x_h)[:, None] + (index(c, INT64) * x_c)[None, :]
            )
            x_bases = x_bases + (tl.where(ih_ok[:, None] & c_mask[None, :], x_real, zx_ptr + (c * zx_c)[None, :]),)
        PAD: tl.constexpr = (KW - 1) // 2
        # MERGED (EDGES from 7 x 7, see merged_borders): the first and last tiles come after the interior ones, in
        # one masked copy of the tile
        if WHOLE_ROW or (EDGES and not MERGED):
            # stride and dilation 1. EDGES: a row at least TILE_W + PAD wide (the launcher checks that these tiles
            # leave no gap): a first tile at column 0 (the PAD window columns left of the map skipped), interior
            # tiles, and a last tile ending at the last column (the PAD columns right of the map skipped; the
            # output columns an earlier tile covered read zeros). WHOLE_ROW: the first tile is the whole row
            # (TILE_W == W == Wo), the PAD columns on both sides skipped.
            FIRST_HI: tl.constexpr = PAD if WHOLE_ROW else 0
            acc, acc_bias = _column_tile(
                acc, acc_bias, g_base, x_bases, 0, 0, W, Wo, g_w, x_w, 1, PAD, KR, KW, 1, TILE_W, INT64, False, PAD,
                FIRST_HI, False,
            )  # fmt: skip
        if EDGES:
            covered = ((W - PAD) // TILE_W) * TILE_W
            for w0 in range(TILE_W, covered, TILE_W):
                acc, acc_bias = _column_tile(
                    acc, acc_bias, g_base, x_bases, w0, 0, W, Wo, g_w, x_w, 1, PAD, KR, KW, 1, TILE_W, INT64, False, 0,
                    0, False,
                )  # fmt: skip
            if MERGED:  # the first tile (column 0) and the last (ending at the last column), masked
                for border in range(0, tl.where(covered < W, 2, 1)):
                    acc, acc_bias = _column_tile(
                        acc, acc_bias, g_base, x_bases, border * (W - TILE_W), border * covered, W, Wo, g_w, x_w, 1,
                        PAD, KR, KW, 1, TILE_W, INT64, True, 0, 0, True,
                    )  # fmt: skip
            elif covered < W:
                acc, acc_bias = _column_tile(
                    acc, acc_bias, g_base, x_bases, W - TILE_W, covered, W, Wo, g_w, x_w, 1, PAD, KR, KW, 1, TILE_W,
                    INT64, False, 0, PAD, True,
                )  # fmt: skip
        elif not WHOLE_ROW:
            for phase in range(0, dil_w):
                # tiles w0 = phase + m step; the interior ones (every column of the window on the map, every output
                # column < Wo) load without masks: m in [m_lo, m_hi)
                step = TILE_W * dil_w
                tiles = tl.maximum(_floor_div(Wo - phase + step - 1, step), 0)
                m_lo = tl.minimum(
                    _floor_div(tl.maximum(pad_w - phase * STRIDE_W, 0) + step * STRIDE_W - 1, step * STRIDE_W), tiles
                )
                last_x = _floor_div(W - 1 + pad_w - (NU - 1) * dil_w - phase * STRIDE_W, step * STRIDE_W)
                last_y = _floor_div(Wo - 1 - (TILE_W - 1) * dil_w - phase, step)
                m_hi = tl.maximum(tl.minimum(tl.minimum(last_x, last_y) + 1, tiles), m_lo)
                # the border tiles, m in [0, m_lo) and [m_hi, tiles), in one loop (one masked copy of the tile
                # in the code: the coalescing pass's compile time grows with the square of the code's memory
                # operations), then the interior
                for i in range(0, m_lo + tiles - m_hi):
                    w0 = phase + tl.where(i < m_lo, i, m_hi + i - m_lo) * step
                    acc, acc_bias = _column_tile(
                        acc, acc_bias, g_base, x_bases, w0, 0, W, Wo, g_w, x_w, dil_w, pad_w, KR, KW, STRIDE_W, TILE_W,
                        INT64, True, 0, 0, False,
                    )  # fmt: skip
                for w0 in range(phase + m_lo * step, phase + m_hi * step, step):
                    acc, acc_bias = _column_tile(
                        acc, acc_bias, g_base, x_bases, w0, 0, W, Wo, g_w, x_w, dil_w, pad_w, KR, KW, STRIDE_W, TILE_W,
                        INT64, False, 0, 0, False,
                    )  # fmt: skip

    # this program's partial sums: partial[strip, tap, c] (tap TAPS: the bias)
    out = partial_ptr + strip.to(tl.int64) * ((TAPS + 1) * C) + c
    for r in tl.static_range(KR):
        for j in tl.static_range(KW):
            tap = (i0 + r) * KW + j
            tl.store(out + tap * C, tl.sum(acc[r * KW + j], axis=0), mask=c_mask & (tap < TAPS))
    tl.store(out + TAPS * C, tl.sum(acc_bias, axis=0), mask=c_mask & (row_block == 0))

    # the last program of this channel block adds every strip's partials in a fixed order
    tl.debug_barrier()  # every thread's partial stores come before the ticket (release)
    ticket = tl.atomic_add(counter_ptr + channel_block, 1, sem="acq_rel", scope="gpu")
    if ticket == tl.num_programs(0) * strips - 1:
        s = tl.arange(0, BLOCK_S)
        for tap in range(0, TAPS + 1):
            total = tl.zeros((BLOCK_C,), dtype=tl.float32)
            for s0 in range(0, strips, BLOCK_S):
                sums = tl.load(
                    partial_ptr + (s0 + s).to(tl.int64)[:, None] * ((TAPS + 1) * C) + tap * C + c[None, :],
                    mask=((s0 + s) < strips)[:, None] & c_mask[None, :],
                    other=0.0,
                    cache_modifier=".cg",
                )
                total += tl.sum(sums, axis=0)
            tl.store(dw_ptr + c * TAPS + tap, total.to(dw_ptr.dtype.element_ty), mask=c_mask & (tap < TAPS))
            tl.store(db_ptr + c, total.to(db_ptr.dtype.element_ty), mask=c_mask & (tap == TAPS))
        tl.atomic_xchg(counter_ptr + channel_block, 0)  # ready for the next launch


# ----------------------------------------------------------------------------------------------------------------
# Configurations
# ----------------------------------------------------------------------------------------------------------------


def _config(
    kernel: tuple[int, int], layout: str, out_w: int, stride_w: int, element_size: int, whole_row: bool
) -> dict:
    """Tile of a kernel size, layout and element size: BLOCK_S rows x BLOCK_C channels (4 warps), TILE_W output
    columns per step (8 or 7, whichever wastes fewer columns of the row; 4 beyond 49 taps a program, but for
    channels_last 11 x 11; 4 or 3 at stride 2; the whole row when ``whole_row``, see :data:`WHOLE_ROW_MAX`, and
    for a k x 1 kernel on a narrower row), KR
    kernel rows per program (all of them up to 9 x 9 and the bands, 6 of 11 at 11 x 11, then one: the generic case),
    num_warps. A thread keeps the accumulators of all its taps for its channels in registers; the channels per
    thread shrink as the taps grow (channels_last: 8 channels = one 16-byte bf16 vector at 3 x 3 and the 1 x k
    bands, 2 channels at 7 x 7 and for the k x 1 bands from k = 5) and never pass one 16-byte vector (fp32: 4)."""
    kh, kw = kernel
    kr = kh if kh <= 11 and kw <= 11 else 1
    if kr * kw > 100:  # 11 x 11: two programs of 6 and 5 kernel rows (121 accumulators a thread spilled)
        kr = cdiv(kr, 2)
    if INTERPRETER:
        return _whole_narrow_rows(dict(BLOCK_S=4, BLOCK_C=4, TILE_W=3, KR=kr, num_warps=1), kw, out_w, whole_row)
    taps = kr * kw
    per_thread = 8 if taps <= 11 else 4 if taps <= 25 else 2 if taps <= 49 else 1  # channels x rows per thread
    if kw == 1 and kr > 3:  # tall bands: the compiler hoists every kernel row's loads; 4 or 8 channels spilled
        per_thread = 2
    per_thread = min(per_thread, 16 // element_size)  # at most one 16-byte vector (fp32: 4 channels)
    if layout == "nchw":
        per_thread = max(1, per_thread // 2)  # scalar loads along the row: fewer registers per element
    tile_w = 8 if taps <= 49 or (taps <= 66 and layout == "channels_last") else 4  # NCHW 11 x 11 spills at 8
    if stride_w == 2:  # a window of 2 TILE_W + KW - 2 columns
        tile_w = 4 if taps <= 9 else 3
    if tile_w == 8 and cdiv(out_w, 7) * 7 < cdiv(out_w, 8) * 8:
        tile_w = 7
    config = dict(BLOCK_S=16, BLOCK_C=8 * per_thread, TILE_W=tile_w, KR=kr, num_warps=4)
    return _whole_narrow_rows(config, kw, out_w, whole_row)


def _whole_narrow_rows(config: dict, kw: int, out_w: int, whole_row: bool) -> dict:
    """``config`` with a tile of the whole row when ``whole_row``, and for a k x 1 kernel on a row narrower than
    the tile (it reads no column off the map, so the first tile is the whole row and the launcher takes the
    unmasked EDGES path)."""
    if whole_row or (kw == 1 and out_w < config["TILE_W"]):
        config["TILE_W"] = out_w
    return config


def merged_borders(taps: int, tile_w: int) -> bool:
    """Whether an EDGES program computes the first and last tiles of a row with one masked copy of the tile (MERGED;
    their skipped window columns read zeros) instead of two unmasked ones: from 7 x 7 at 8-column tiles (the 56 x 56
    stages), where that compiles in 8 s instead of 41 on this machine's CPU (the coalescing pass's time grows with
    the cube of the code's size) for 5-15% more instructions per multiply-add; smaller kernels compile fast enough,
    and 5 x 5, or 7 x 7 at 7-column tiles, spill when merged. The interpreter (3-column tiles) merges from 7 x 7 too,
    so that the tests run both forms."""
    return taps > 25 and (tile_w >= 8 or INTERPRETER)


# NCHW rows at most this wide (at stride and dilation 1) are one column tile: both borders' off-map window columns
# are then known at compile time and the row step has no column loop (the 14 x 14 and 7 x 7 stages). Not in
# channels_last, whose threads hold up to 8 channels: a 14-column tile there reached 255 registers at 7 x 7 for a
# loop already within the target. Under the interpreter the tiny tiles take it on maps up to 4 wide (the tests).
WHOLE_ROW_MAX = 4 if INTERPRETER else 16
PROGRAMS = 512  # about two waves of two programs per SM on an H100
MIN_TILES = 8  # column tiles of BLOCK_S rows per program at least (the partial sums and the ticket amortised)


def _strips(rows: int, block_s: int, tiles_per_step: int, programs_per_strip: int) -> tuple[int, int]:
    """(rows per strip, strips): about PROGRAMS programs, each taking whole steps of ``block_s`` rows and at least
    MIN_TILES column tiles."""
    steps = cdiv(rows, block_s)
    if INTERPRETER:
        per_strip = 1  # several strips even on tiny test inputs
    else:
        per_strip = cdiv(steps, max(1, cdiv(PROGRAMS, programs_per_strip)))
        per_strip = min(steps, max(per_strip, cdiv(MIN_TILES, tiles_per_step)))
    return per_strip * block_s, cdiv(steps, per_strip)


def _plan(x_shape, x_strides, g_shape, g_strides, kernel, stride, dilation, element_size: int) -> dict:
    """Everything a launch decides from the shapes and strides: the configuration, the grid, the strips, the
    zero rows' sizes and channel strides."""
    n, channels, h, w = x_shape
    out_h, out_w = g_shape[2], g_shape[3]
    layout = "channels_last" if x_strides[1] == 1 and channels > 1 else "nchw"
    whole_row = layout == "nchw" and stride[1] == 1 and dilation[1] == 1 and out_w == w <= WHOLE_ROW_MAX
    config = _config(kernel, layout, out_w, stride[1], element_size, whole_row)
    pad_w = dilation[1] * (kernel[1] - 1) // 2
    tile_w = config["TILE_W"]
    # the first tile, the interior ones and the last tile (ending at the last column) cover the row without a gap
    covered = (w - pad_w) // tile_w * tile_w
    edges = stride[1] == 1 and dilation[1] == 1 and w >= tile_w + pad_w and covered >= w - tile_w
    config["EDGES"] = edges and not whole_row
    config["WHOLE_ROW"] = whole_row
    config["MERGED"] = config["EDGES"] and merged_borders(config["KR"] * kernel[1], tile_w)
    row_blocks = cdiv(kernel[0], config["KR"])
    channel_blocks = cdiv(channels, config["BLOCK_C"])
    tiles_per_step = cdiv(out_w, config["TILE_W"])
    rows_per_strip, strips = _strips(max(n * out_h, 1), config["BLOCK_S"], tiles_per_step, row_blocks * channel_blocks)
    zx_c = 1 if x_strides[1] == 1 else 0  # channels_last: the zeros keep the channel vector contiguous
    zg_c = 1 if g_strides[1] == 1 else 0
    span = channels + config["BLOCK_C"]
    zeros = (span * zx_c + w * abs(x_strides[3]) + 1, span * zg_c + out_w * abs(g_strides[3]) + 1)
    # Register bound: ptxas's own choice for the models' paths (EDGES, whole rows: given 255 it took up to twice the
    # registers for the same code, fewer programs per SM); 255 for the general masked path and fp32, where its own
    # choice (72 to 128 registers) spilled 16-24 bytes (NCHW K = 31 on sm_90, channels_last fp32 3 x 3 on sm_80)
    general = not (config["EDGES"] or config["WHOLE_ROW"])
    options = {"maxnreg": MAXNREG} if general or element_size == 4 else {}
    return dict(
        layout=layout,
        config=config,
        options=options,
        grid=(row_blocks, channel_blocks, strips),
        rows_per_strip=rows_per_strip,
        strips=strips,
        zx_c=zx_c,
        zg_c=zg_c,
        zeros=zeros,
    )


_ZEROS: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def _zeros(device: torch.device, dtype: torch.dtype, size: int) -> Tensor:
    """A cached run of zeros (read only): what the rows and channels off the tensor read (allocated in the graph
    of a traced call)."""
    if tracing_kernels():
        return torch.zeros(size, dtype=dtype, device=device)
    return cached_zeros(_ZEROS, (device, dtype), size, 1 << 16, dtype, device)


def weight_grad(
    x: Tensor, grad_output: Tensor, weight: Tensor, stride: tuple[int, int], dilation: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """(d weight ``[C, 1, kh, kw]``, d bias ``[C]``) of the depthwise convolution, reduced in float32 in one
    deterministic launch and returned in the dtype of ``weight`` (the bias gradient whether or not there is a
    bias). ``x``, ``grad_output``: any strides (validated by the caller)."""
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    kernel = (weight.shape[2], weight.shape[3])
    channels = x.shape[1]
    dw = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)
    db = torch.empty(channels, dtype=weight.dtype, device=weight.device)
    plan = _plan(
        x.shape, x.stride(), grad_output.shape, grad_output.stride(), kernel, stride, dilation, x.element_size()
    )
    grid, strips = plan["grid"], plan["strips"]
    partial = torch.empty((strips, kernel[0] * kernel[1] + 1, channels), dtype=torch.float32, device=x.device)
    padding = same_padding(kernel, dilation)
    config = plan["config"]
    launchable(_dwconv_wgrad_kernel)[grid](
        x,
        grad_output,
        _zeros(x.device, x.dtype, plan["zeros"][0]),
        _zeros(x.device, grad_output.dtype, plan["zeros"][1]),
        partial,
        dw,
        db,
        ticket_counters(x.device, grid[1]),
        x.shape[0] * grad_output.shape[2],
        plan["rows_per_strip"],
        strips,
        channels,
        x.shape[2],
        x.shape[3],
        grad_output.shape[2],
        grad_output.shape[3],
        *strides4(x),
        *strides4(grad_output),
        plan["zx_c"],
        plan["zg_c"],
        dilation[0],
        dilation[1],
        padding[0],
        padding[1],
        KH=kernel[0],
        KW=kernel[1],
        STRIDE_H=stride[0],
        STRIDE_W=stride[1],
        INT64=needs_int64(x, grad_output),
        **config,
        **plan["options"],
    )
    return dw, db


# ----------------------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (zoo/kernels/_aot.py)
# ----------------------------------------------------------------------------------------------------------------

# The kernel sizes with a variant of their own (the models': square 3..11, the 1 x k and k x 1 bands) and one of the
# generic case (K >= 13: one kernel row per program).
SQUARE_SIZES = (3, 5, 7, 9, 11)
BAND_SIZES = (3, 5, 7, 9, 11)
GENERIC_SIZE = 13


def _variants() -> list[tuple[int, int]]:
    squares = [(k, k) for k in SQUARE_SIZES]
    bands = [(1, k) for k in BAND_SIZES] + [(k, 1) for k in BAND_SIZES]
    return squares + bands + [(GENERIC_SIZE, GENERIC_SIZE)]


def _args(n, c, h, w, kernel, stride, dilation, layout, dtype, strided, weight_dtype=None) -> tuple[dict, dict, str]:
    """(arguments as the launcher passes them, its plan, a label) for a call on an [n, c, h, w] input."""
    dilation = tap_dilation(kernel, dilation)
    out_h = output_size(h, kernel[0], stride[0], dilation[0])
    out_w = output_size(w, kernel[1], stride[1], dilation[1])
    x_strides = meta_strides((n, c, h, w), layout)
    g_strides = meta_strides((n, c, out_h, out_w), layout)
    if strided:  # a view with odd strides (every stride a runtime value), offsets in 64 bits
        x_strides = tuple(3 * s + (s != 1) for s in x_strides)
    element_size = {"fp32": 4, "bf16": 2, "fp16": 2}[dtype]
    plan = _plan((n, c, h, w), x_strides, (n, c, out_h, out_w), g_strides, kernel, stride, dilation, element_size)
    config = dict(plan["config"])
    num_warps = config.pop("num_warps")
    pad = same_padding(kernel, dilation)
    args = dict(
        x_ptr=f"*{dtype}",
        dy_ptr=f"*{dtype}",
        zx_ptr=f"*{dtype}",
        zg_ptr=f"*{dtype}",
        partial_ptr="*fp32",
        dw_ptr=f"*{weight_dtype or dtype}",
        db_ptr=f"*{weight_dtype or dtype}",
        counter_ptr="*i32",
        rows=n * out_h,
        rows_per_strip=plan["rows_per_strip"],
        strips=plan["strips"],
        C=c,
        H=h,
        W=w,
        Ho=out_h,
        Wo=out_w,
        **{f"x_{a}": v for a, v in zip("nchw", x_strides, strict=True)},
        **{f"g_{a}": v for a, v in zip("nchw", g_strides, strict=True)},
        zx_c=plan["zx_c"],
        zg_c=plan["zg_c"],
        dil_h=dilation[0],
        dil_w=dilation[1],
        pad_h=pad[0],
        pad_w=pad[1],
        KH=kernel[0],
        KW=kernel[1],
        STRIDE_H=stride[0],
        STRIDE_W=stride[1],
        INT64=strided,
        **config,
    )
    label = f"K{kernel[0]}x{kernel[1]},S{config['BLOCK_S']},C{config['BLOCK_C']},W{config['TILE_W']},w{num_warps}"
    label += ",row" if config["WHOLE_ROW"] else "" if config["EDGES"] else ",masked"  # one tile / general borders
    return args, {**plan, "num_warps": num_warps}, label


# compiled by the tests (``ci``; each compile takes seconds), channels_last at 32 x 32: (kernel, dtype, strided)
_CI = (((3, 3), "bf16", False), ((3, 3), "fp32", False), ((3, 3), "fp16", False), ((7, 7), "bf16", True))


def aot_specs() -> list:
    """Compile specs of every variant of the weight-gradient kernel: each constexpr kernel size (square 3..11, the
    1 x k and k x 1 bands, the generic K = 13) in both layouts, bf16, at a model-like shape (the JIT's
    specialisations of a contiguous activation: unit strides constant, sizes divisible by 16), NCHW on a 14 x 14
    map (one tile per row) and on a 6 x 6 map at dilation 2 (the general masked border path); K = 3 and 7 also
    with 7-column tiles (a 28 x 28 map), a strided input with stride 2, dilation 2 and 64-bit offsets, in fp32 and
    fp16, and with an fp32 weight under bf16 activations. Compiled by the tests (``ci``): channels_last at 32 x
    32, K = 3 in bf16, fp32 and fp16, K = 7 strided at stride 2."""
    from zoo.kernels._aot import launch_spec

    specs = []
    for layout in ("channels_last", "nchw"):
        for kernel in _variants():
            sizes = (32, 14) if layout == "nchw" else (32,)  # 14: one tile per row (NCHW only)
            cases = [("bf16", None, (1, 1), (1, 1), False, size) for size in sizes]
            cases.append(("bf16", None, (1, 1), (2, 2), False, 6))
            cases.append(("bf16", None, (1, 1), (1, 1), False, 7))  # a 7 x 7 stage: the masked path, undilated
            if kernel in ((3, 3), (7, 7)):
                cases += [("bf16", None, (1, 1), (1, 1), False, 28), ("bf16", None, (2, 2), (2, 2), True, 32)]
                cases += [("fp32", None, (1, 1), (1, 1), False, 32), ("fp16", None, (1, 1), (1, 1), False, 32)]
                cases += [("bf16", "fp32", (1, 1), (1, 1), False, 32)]
            for dtype, weight_dtype, stride, dilation, strided, size in cases:
                args, launch, label = _args(
                    64, 96, size, size, kernel, stride, dilation, layout, dtype, strided, weight_dtype
                )
                flags = "" if stride == (1, 1) else ",stride2"
                flags += ("" if dilation == (1, 1) else ",dil2") + (",strided" if strided else "")
                flags += f",dw_{weight_dtype}" if weight_dtype else ""
                specs.append(
                    launch_spec(
                        f"_dwconv_wgrad_kernel[{dtype},{layout},{label}{flags}]",
                        _dwconv_wgrad_kernel,
                        args,
                        num_warps=launch["num_warps"],
                        **launch["options"],
                        ci=layout == "channels_last"
                        and size == 32
                        and not weight_dtype
                        and (kernel, dtype, strided) in _CI,
                    )
                )
    return specs


def _column_tiles(w: int, out_w: int, kernel_w: int, stride_w: int, dilation_w: int, tile_w: int) -> tuple[int, ...]:
    """(border, interior) column tiles of a row step on the general (masked) path, summed over the phases: the trip
    counts of the kernel's two column loops (the same arithmetic; the border loop takes both ends of the row)."""
    pad = dilation_w * (kernel_w - 1) // 2
    window = (tile_w - 1) * stride_w + kernel_w
    counts = [0, 0]
    for phase in range(dilation_w):
        step = tile_w * dilation_w
        tiles = max(-(-(out_w - phase) // step), 0)
        lo = min(-(-max(pad - phase * stride_w, 0) // (step * stride_w)), tiles)
        last_x = (w - 1 + pad - (window - 1) * dilation_w - phase * stride_w) // (step * stride_w)
        last_y = (out_w - 1 - (tile_w - 1) * dilation_w - phase) // step
        hi = max(min(min(last_x, last_y) + 1, tiles), lo)
        counts = [counts[0] + lo + tiles - hi, counts[1] + hi - lo]
    return tuple(counts)


def benchmark_specs() -> list:
    """Loop-report specs of the weight-gradient kernel at the benchmarked shapes (both layouts; K = 13 and 31 run
    the generic variant, one kernel row per program): the launcher's arguments there and the useful
    multiply-adds per program (taps on the map, :func:`taps_on_map`). Loops: the row steps of a strip and, inside,
    its column tiles; the last program of each channel block adds the strips' partial
    sums (taps x strip chunks, averaged over the programs). The K = 3, 56 x 56 specs (both layouts) are compiled
    by the tests too (``ci``)."""
    from zoo.kernels._aot import Work, launch_spec

    specs = []
    for n, c, h, k in DWCONV_BENCHMARKS:
        case = f"B{n}xC{c}x{h}x{h}xK{k}"
        macs = n * c * taps_on_map(h, k) ** 2
        for layout in ("channels_last", "nchw"):
            args, launch, label = _args(n, c, h, h, (k, k), (1, 1), (1, 1), layout, "bf16", False)
            config = launch["config"]
            row_blocks, channel_blocks, strips = launch["grid"]
            programs = row_blocks * channel_blocks * strips
            steps = cdiv(n * h, config["BLOCK_S"]) / strips
            if config["WHOLE_ROW"]:  # one column tile per row step: no column loop
                columns = ()
            elif config["EDGES"]:  # the interior tiles' loop; MERGED, then the first and last tiles' loop
                covered = (h - (k - 1) // 2) // config["TILE_W"] * config["TILE_W"]
                columns = (covered // config["TILE_W"] - 1,) + ((2 if covered < h else 1,) if config["MERGED"] else ())
            else:  # the masked path: the border loop (both ends of the row), then the interior loop
                columns = _column_tiles(h, h, k, 1, 1, config["TILE_W"])
            taps = (k * k + 1) / (strips * row_blocks)  # the last program of a channel block: every tap
            chunks = cdiv(strips, config["BLOCK_S"])
            if config["EDGES"] or config["WHOLE_ROW"]:
                trips = ((steps, taps), (*columns, chunks))
            else:  # inside the row loop, the loop over the dilation's column phases (one here) holds the column loops
                trips = ((steps, taps), (1, chunks), columns)
            work = Work(
                case,
                "MAC",
                macs / programs,
                trips,
                f"MACs = N C (taps on map per axis)^2 = {n} x {c} x {taps_on_map(h, k)}^2 = {macs}; programs = "
                f"{row_blocks} kernel-row blocks x cdiv({c}, {config['BLOCK_C']}) x {strips} strips = {programs}; "
                f"loops: row steps cdiv({n * h}, {config['BLOCK_S']}) / {strips} = {steps:g}; column tiles of "
                f"{config['TILE_W']} in loops {columns} (EDGES: the interior ones, (h - pad) // TILE_W - 1, then "
                f"from 7 x 7 at 8-column tiles the first and last of the row, else those are in the row loop; the "
                f"masked path: the borders, then the interior); the reduction "
                f"({k * k + 1} taps, once per channel "
                f"block: {taps:.3g} per program) x cdiv({strips}, {config['BLOCK_S']}) = {chunks} strip chunks",
            )
            specs.append(
                launch_spec(
                    f"_dwconv_wgrad_kernel[bf16,{layout},{label}]@{case}",
                    _dwconv_wgrad_kernel,
                    args,
                    num_warps=launch["num_warps"],
                    **launch["options"],
                    work=work,
                    ci=(k, h) == (3, 56),  # K = 3 compiles fastest: CI's compile budget
                )
            )
    return specs
