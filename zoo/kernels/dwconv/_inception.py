"""The fused InceptionNeXt token mixer (docs/semantics.md §2.2): identity on the first C - 3 gc channels, a
square, a 1 x band and a band x 1 depthwise convolution on gc channels each.

Channels go in groups of LANES: the largest power of two up to 8 that divides both C - 3 gc and gc, so every
slice is whole groups (InceptionNeXt-T: 8 at stages 2-4, 4 at stage 1 where gc = 12; atto 2) and a group is one
vector per thread and position (16 bytes of bf16 at LANES = 8); no group straddles two slices, nothing is masked
per channel.

Forward (and input gradient: the same kernel with the taps flipped and no bias): one launch over (blocks of
anchors) x (parts). A part is a run of steps of one slice: of the identity, copied IDG groups per step (the threads
of a warp copy 32-byte runs of each position's channels), or of one branch, convolved CG groups per step; the
launcher picks the steps per part so that the grid fills the GPU (a program that walked every channel of its
anchors would be a long serial chain, and there would be fewer such programs than SMs from 28 x 28 on). A thread
owns one anchor, a strip of T outputs along the axis its branch slides on (a row strip for the identity, the
square and the 1 x band branch; a column strip for the band x 1 branch) x one group, and keeps the strip's
outputs in registers while the input window passes once per kernel row: each loaded vector feeds up to (taps
along the strip) FMAs. Kernel sizes and strip lengths are constexprs (the taps along a row unroll; a strip that
spans the whole map, ``FULL_*``, drops the taps on the zero padding at compile time). The weights are read from
the module's own tensors once per program, group and kernel row, out of the tap loops: no table to build or cache
(docs/design.md §12, the mixer's "Weights" paragraph, for the trade-off).

Weight and bias gradients: one launch over (chunks of strip blocks) x (the groups of the three branches). A thread
sums dy x (shifted x) for every tap of its group over its strips in registers; the program reduces over its
threads once and writes fp32 partials; the last program of a group (one acq_rel ticket per program) adds the
chunks' partials in chunk order and writes the gradients in the weights' dtype: deterministic, no atomics on data,
no extra launch. The tickets are a cached per-(device, stream) counter that this last program resets.

channels_last activations whose strides are multiples of LANES take the vector path (``VEC = LANES``: spatial
strides are passed in units of LANES so the compiler sees the alignment); NCHW and any other strides run the same
kernels one element at a time (``VEC = 1``), with no layout copy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator

import torch
from torch import Tensor

from zoo.kernels._backend import (
    H200_SMS,
    INTERPRETER,
    cdiv,
    check_triton_device,
    device_guard,
    launchable,
    next_power_of_2,
    sm_count,
    ticket_counters,
    tl,
    triton,
)
from zoo.kernels.dwconv._checks import check_inception_inputs
from zoo.kernels.dwconv._common import (
    INCEPTION_BENCHMARKS,
    MAXNREG,
    check_grad_output,
    check_triton_dtype,
    empty_like_format,
    index,
    meta_strides,
    named_strides,
    needs_int64,
    strides4,
    taps_on_map,
    to_f32,
)

# ----------------------------------------------------------------------------------------------------------------
# Triton routines
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _row_anchors(pid, N, H, W, TW: tl.constexpr, FULL_W: tl.constexpr, BLOCK_A: tl.constexpr):
    """Anchors of row strips (1 x TW outputs): (image, row, first column, valid) of a program's BLOCK_A anchors,
    flattened over (image, row, strip)."""
    q = pid * BLOCK_A + tl.arange(0, BLOCK_A)
    if FULL_W:
        t = q
        c0 = q * 0
        strips = 1
    else:
        strips = tl.cdiv(W, TW)
        t = q // strips
        c0 = (q % strips) * TW
    return t // H, t % H, c0, q < N * H * strips


@triton.jit
def _column_anchors(pid, N, H, W, TH: tl.constexpr, FULL_H: tl.constexpr, BLOCK_A: tl.constexpr):
    """Anchors of column strips (TH x 1 outputs): (image, first row, column, valid), flattened over (image, strip,
    column)."""
    q = pid * BLOCK_A + tl.arange(0, BLOCK_A)
    col = q % W
    t = q // W
    if FULL_H:
        return t, t * 0, col, q < N * W
    else:
        strips = tl.cdiv(H, TH)
        return t // strips, (t % strips) * TH, col, q < N * W * strips


@triton.jit
def _row_weights(w_ptr, lane, ki, KX: tl.constexpr, KA: tl.constexpr, FLIP: tl.constexpr):
    """Kernel row ki of a group's weights (row KX - 1 - ki, reversed, with FLIP) as fp32 [1, CH] rows, one per tap
    along the row, from the module's [gc, 1, KX, KA] tensor (``lane``: the channels' indices in the slice)."""
    taps = ()
    for kj in tl.static_range(KA):
        if FLIP:
            tap = (KX - 1 - ki) * KA + (KA - 1 - kj)
        else:
            tap = ki * KA + kj
        taps = taps + (tl.load(w_ptr + lane * (KX * KA) + tap).to(tl.float32)[None, :],)
    return taps


@triton.jit
def _strip_conv(
    src_ptr,
    base,
    ch_off,
    cross,
    pos0,
    valid,
    cross_len,
    along_len,
    s_cross,
    s_along,
    w_ptr,
    b_ptr,
    lane,
    KX: tl.constexpr,
    KA: tl.constexpr,
    T: tl.constexpr,
    FULL: tl.constexpr,
    FLIP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    VEC: tl.constexpr,
    BLOCK_A: tl.constexpr,
    CH: tl.constexpr,
):
    """One strip of T outputs (fp32 [BLOCK_A, CH] each) of a KX x KA kernel whose second axis runs along the strip:
    output j = bias + sum over (ki, kj) of w[ki, kj] src[cross + ki - KX // 2, pos0 + j + kj - KA // 2] (zero off
    the map). The strip's window is walked once per kernel row: each loaded vector updates the up to KA outputs
    it reaches (a sliding window in registers). FLIP reads the taps reversed (the input gradient). The weights
    (channels ``lane`` of the slice) are loaded once per kernel row, out of the window loop.

    The kernel rows are a loop, not unrolled: unrolled, the compiler issues every row's window loads and weights
    up front (a 3 x 3 strip of 7 at 8 channels: 27 16-byte loads and 72 weights at once), and the square branch's
    input gradient spilled at 255 registers."""
    init = tl.zeros((BLOCK_A, CH), dtype=tl.float32)
    if HAS_BIAS:
        init += tl.load(b_ptr + lane).to(tl.float32)[None, :]
    acc = ()
    for _j in tl.static_range(T):
        acc = acc + (init,)
    for ki in tl.range(0, KX, loop_unroll_factor=1):
        taps = _row_weights(w_ptr, lane, ki, KX, KA, FLIP)
        rr = cross + (ki - KX // 2)
        row_ok = valid & (rr >= 0) & (rr < cross_len)
        row_base = base + (ki - KX // 2) * s_cross
        for m in tl.static_range(T + KA - 1):
            # window column m - KA // 2 relative to pos0; a whole-map strip skips the padding at compile time
            if (not FULL) or (m - KA // 2 >= 0 and m - KA // 2 < T):
                if FULL:
                    ok = row_ok
                else:
                    cc = pos0 + (m - KA // 2)
                    ok = row_ok & (cc >= 0) & (cc < along_len)
                offsets = (row_base + (m - KA // 2) * s_along) * VEC
                v = to_f32(tl.load(src_ptr + offsets[:, None] + ch_off[None, :], mask=ok[:, None], other=0.0))
                updated = ()
                for j in tl.static_range(T):
                    if m - j >= 0 and m - j < KA:  # tap (ki, m - j) of output j
                        updated = updated + (tl.fma(taps[m - j], v, acc[j]),)
                    else:
                        updated = updated + (acc[j],)
                acc = updated
    return acc


@triton.jit
def _store_strip(
    dst_ptr,
    base,
    ch_off,
    pos0,
    valid,
    along_len,
    d_along,
    values,
    T: tl.constexpr,
    FULL: tl.constexpr,
    VEC: tl.constexpr,
):
    """Store T outputs of a strip (each [BLOCK_A, CH]) in dst's dtype."""
    for j in tl.static_range(T):
        if FULL:
            ok = valid
        else:
            ok = valid & (pos0 + j < along_len)
        offsets = (base + j * d_along) * VEC
        tl.store(dst_ptr + offsets[:, None] + ch_off[None, :], values[j].to(dst_ptr.dtype.element_ty), mask=ok[:, None])


@triton.jit
def _part_groups(part, part_steps, steps, G: tl.constexpr):
    """Groups [lo, hi) of part ``part`` of a slice walked in ``steps`` steps of G groups, ``part_steps`` steps per
    part. ``part_steps`` is a runtime value (not specialised), so each part's walk stays a loop in the compiled
    code, which the static report weighs by its trips (a provable single trip would be unrolled into the part's
    set-up code)."""
    lo = part * part_steps
    return lo * G, tl.minimum(lo + part_steps, steps) * G


@triton.jit
def _strips(block, N, H, W, s_n, s_h, s_w, d_n, d_h, d_w, ROWS: tl.constexpr, T: tl.constexpr, FULL: tl.constexpr,
            INT64: tl.constexpr, BLOCK_A: tl.constexpr):  # fmt: skip
    """A block of row strips (ROWS) or column strips as (source offset, destination offset, cross coordinate,
    first position along the strip, valid, cross extent, along extent, source cross / along strides, destination
    along stride)."""
    if ROWS:
        n, cross, pos0, valid = _row_anchors(block, N, H, W, T, FULL, BLOCK_A)
        sbase = index(n, INT64) * s_n + index(cross, INT64) * s_h + index(pos0, INT64) * s_w
        dbase = index(n, INT64) * d_n + index(cross, INT64) * d_h + index(pos0, INT64) * d_w
        return sbase, dbase, cross, pos0, valid, H, W, s_h, s_w, d_w
    else:
        n, pos0, cross, valid = _column_anchors(block, N, H, W, T, FULL, BLOCK_A)
        sbase = index(n, INT64) * s_n + index(pos0, INT64) * s_h + index(cross, INT64) * s_w
        dbase = index(n, INT64) * d_n + index(pos0, INT64) * d_h + index(cross, INT64) * d_w
        return sbase, dbase, cross, pos0, valid, W, H, s_w, s_h, d_h


@triton.jit
def _branch_part(
    src_ptr,
    dst_ptr,
    w_ptr,
    b_ptr,
    block,
    N,
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
    first,
    part,
    part_steps,
    steps,
    KX: tl.constexpr,
    KA: tl.constexpr,
    ROWS: tl.constexpr,
    T: tl.constexpr,
    FULL: tl.constexpr,
    FLIP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    LANES: tl.constexpr,
    VEC: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_A: tl.constexpr,
    CG: tl.constexpr,
):
    """Part ``part`` of one branch (channels from ``first``, a multiple of LANES; a KX x KA kernel sliding along
    row strips, ROWS, or column strips) for one block of strips: its run of ``part_steps`` of the branch's
    ``steps`` steps of CG groups of LANES channels (CG divides the branch's groups: no masks)."""
    CH: tl.constexpr = LANES * CG
    ch = tl.arange(0, CH)
    sbase, dbase, cross, pos0, valid, cross_len, along_len, s_cross, s_along, d_along = _strips(
        block, N, H, W, s_n, s_h, s_w, d_n, d_h, d_w, ROWS, T, FULL, INT64, BLOCK_A
    )
    lo, hi = _part_groups(part, part_steps, steps, CG)
    for g0 in range(lo, hi, CG):
        lane = g0 * LANES + ch
        c = (first // LANES + g0) * LANES + ch
        acc = _strip_conv(
            src_ptr, sbase, index(c, INT64) * s_c, cross, pos0, valid, cross_len, along_len, s_cross, s_along, w_ptr,
            b_ptr, lane, KX, KA, T, FULL, FLIP, HAS_BIAS, VEC, BLOCK_A, CH,
        )  # fmt: skip
        _store_strip(dst_ptr, dbase, index(c, INT64) * d_c, pos0, valid, along_len, d_along, acc, T, FULL, VEC)


@triton.jit
def _identity_part(
    src_ptr, dst_ptr, block, N, H, W, s_n, s_c, s_h, s_w, d_n, d_c, d_h, d_w, id_groups, part, part_steps, id_steps,
    TW: tl.constexpr, FULL_W: tl.constexpr, LANES: tl.constexpr, VEC: tl.constexpr, INT64: tl.constexpr,
    BLOCK_A: tl.constexpr, IDG: tl.constexpr,
):  # fmt: skip
    """Part ``part`` of the identity slice (its run of ``part_steps`` of ``id_steps`` steps of IDG groups) for one
    block of row strips, copied in [anchors, IDG, LANES] tiles so that the threads of a warp copy whole runs of each
    position's channels (channels_last: 32 contiguous bytes of bf16 per position, not one 8- or 16-byte vector per
    thread at positions TW apart); the mask is per group. A strip's TW positions unroll (at 32 channels a step they
    spilled at stage 1)."""
    group = tl.arange(0, IDG)
    lane = tl.arange(0, LANES)
    sbase, dbase, _, c0, valid, _, _, _, _, _ = _strips(
        block, N, H, W, s_n, s_h, s_w, d_n, d_h, d_w, True, TW, FULL_W, INT64, BLOCK_A
    )
    lo, hi = _part_groups(part, part_steps, id_steps, IDG)
    for g0 in range(lo, hi, IDG):
        g = g0 + group
        c = (g[:, None] * LANES + lane[None, :])[None, :, :]
        g_ok = (g < id_groups)[:, None][None, :, :]
        for j in tl.static_range(TW):
            ok = valid if FULL_W else valid & (c0 + j < W)
            mask = ok[:, None, None] & g_ok
            src = src_ptr + ((sbase + j * s_w) * VEC)[:, None, None] + index(c, INT64) * s_c
            values = tl.load(src, mask=mask)
            dst = dst_ptr + ((dbase + j * d_w) * VEC)[:, None, None] + index(c, INT64) * d_c
            tl.store(dst, values, mask=mask)


# The sizes, and the strides but the channels' (in units of VEC, so the vectors' alignment is known without them),
# compile without their divisibility by 16: otherwise two stages whose constexprs agree compile twice (the weight
# gradient at InceptionNeXt-T's stages 2 and 3: gc 24 and 48; the same code). part_steps is often 1 (always at
# 7 x 7): specialised, the parts' loops would be inlined.
_SIZES = ("N", "H", "W", "C", "id_channels", "gc")


@triton.jit(
    do_not_specialize=["part_steps"],
    do_not_specialize_on_alignment=[*_SIZES, "s_n", "s_h", "s_w", "d_n", "d_h", "d_w"],
)
def _inception_kernel(
    src_ptr,
    dst_ptr,
    w_hw,
    b_hw,
    w_w,
    b_w,
    w_h,
    b_h,
    N,
    H,
    W,
    C,
    id_channels,
    gc,
    part_steps,
    s_n,
    s_c,
    s_h,
    s_w,
    d_n,
    d_c,
    d_h,
    d_w,
    SQUARE: tl.constexpr,
    BAND: tl.constexpr,
    FLIP: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    LANES: tl.constexpr,
    VEC: tl.constexpr,
    TW: tl.constexpr,
    TH: tl.constexpr,
    FULL_W: tl.constexpr,
    FULL_H: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_A: tl.constexpr,
    CG: tl.constexpr,
    IDG: tl.constexpr,
):
    """One part of the mixer for one block of anchors: forward (src x, dst y) or input gradient (FLIP: src dy, dst
    dx, no bias; the identity slice of dx is that of dy). Channels in groups of LANES (a power of two that divides
    C - 3 gc and gc: every slice is whole groups). Spatial strides in units of VEC channels (VEC = LANES:
    channels_last with LANES-aligned strides and s_c = d_c = 1; else 1).

    The grid is (blocks of anchors) x (parts), parts fastest, so that the parts of a block run side by side and
    L2 serves the lines they share once. The identity slice is walked in steps of IDG groups, each branch in steps
    of CG groups; a part is a run of ``part_steps`` steps of one of them: the identity's parts, then the square's,
    the 1 x band's and the band x 1's. A thread walks one part's groups, not every channel: the launcher sets
    ``part_steps`` so that the grid fills the GPU (programs that each walked all channels would be long serial
    chains, and too few at 28 x 28 and below)."""
    pid = tl.program_id(0)
    steps = gc // (LANES * CG)  # of each branch
    branch_parts = tl.cdiv(steps, part_steps)
    # the identity in as many parts as a branch (or one per step, if it has fewer): its steps are cheaper
    id_groups = id_channels // LANES
    id_steps = tl.cdiv(id_groups, IDG)
    id_part_steps = tl.maximum(tl.cdiv(id_steps, branch_parts), 1)
    id_parts = tl.cdiv(id_steps, id_part_steps)
    block = pid // (id_parts + 3 * branch_parts)
    part = pid - block * (id_parts + 3 * branch_parts)
    # one part per program, chosen by an if / elif chain: nothing is live from one part's code into another's
    if part < id_parts:
        _identity_part(
            src_ptr, dst_ptr, block, N, H, W, s_n, s_c, s_h, s_w, d_n, d_c, d_h, d_w, id_groups, part, id_part_steps,
            id_steps, TW, FULL_W, LANES, VEC, INT64, BLOCK_A, IDG,
        )  # fmt: skip
    elif part < id_parts + branch_parts:
        _branch_part(
            src_ptr, dst_ptr, w_hw, b_hw, block, N, H, W, s_n, s_c, s_h, s_w, d_n, d_c, d_h, d_w, id_channels,
            part - id_parts, part_steps, steps, SQUARE, SQUARE, True, TW, FULL_W, FLIP, HAS_BIAS, LANES, VEC, INT64,
            BLOCK_A, CG,
        )  # fmt: skip
    elif part < id_parts + 2 * branch_parts:
        _branch_part(
            src_ptr, dst_ptr, w_w, b_w, block, N, H, W, s_n, s_c, s_h, s_w, d_n, d_c, d_h, d_w, id_channels + gc,
            part - id_parts - branch_parts, part_steps, steps, 1, BAND, True, TW, FULL_W, FLIP, HAS_BIAS, LANES, VEC,
            INT64, BLOCK_A, CG,
        )  # fmt: skip
    else:
        _branch_part(
            src_ptr, dst_ptr, w_h, b_h, block, N, H, W, s_n, s_c, s_h, s_w, d_n, d_c, d_h, d_w, id_channels + 2 * gc,
            part - id_parts - 2 * branch_parts, part_steps, steps, 1, BAND, False, TH, FULL_H, FLIP, HAS_BIAS, LANES,
            VEC, INT64, BLOCK_A, CG,
        )  # fmt: skip


@triton.jit
def _strip_wgrad(
    x_ptr,
    g_ptr,
    xbase,
    gbase,
    x_ch,
    g_ch,
    cross,
    pos0,
    valid,
    cross_len,
    along_len,
    x_cross,
    x_along,
    g_along,
    shift,
    sums,
    bias_sum,
    KX: tl.constexpr,
    KA: tl.constexpr,
    T: tl.constexpr,
    FULL: tl.constexpr,
    VEC: tl.constexpr,
):
    """Add one strip's contributions to the per-thread tap sums (KX * KA fp32 [BLOCK_A, CH], the taps of a KX x KA
    kernel whose second axis runs along the strip) and to the bias sum: sum over the strip's T outputs of
    dy[j] x[cross + ki - KX // 2 + shift, pos0 + j + kj - KA // 2] (``shift``: one row of a taller kernel). The T output gradients stay in registers while the
    input window passes once per kernel row."""
    dys = ()
    for j in tl.static_range(T):
        if FULL:
            ok = valid
        else:
            ok = valid & (pos0 + j < along_len)
        dy = to_f32(
            tl.load(g_ptr + ((gbase + j * g_along) * VEC)[:, None] + g_ch[None, :], mask=ok[:, None], other=0.0)
        )
        dys = dys + (dy,)
        bias_sum += dy
    for ki in tl.static_range(KX):
        rr = cross + (ki - KX // 2 + shift)
        row_ok = valid & (rr >= 0) & (rr < cross_len)
        row_base = xbase + (ki - KX // 2 + shift) * x_cross
        for m in tl.static_range(T + KA - 1):
            if (not FULL) or (m - KA // 2 >= 0 and m - KA // 2 < T):
                if FULL:
                    ok = row_ok
                else:
                    cc = pos0 + (m - KA // 2)
                    ok = row_ok & (cc >= 0) & (cc < along_len)
                offsets = (row_base + (m - KA // 2) * x_along) * VEC
                v = to_f32(tl.load(x_ptr + offsets[:, None] + x_ch[None, :], mask=ok[:, None], other=0.0))
                updated = ()
                for t in tl.static_range(KX * KA):
                    if t // KA == ki and m - t % KA >= 0 and m - t % KA < T:  # output m - kj meets tap t
                        updated = updated + (tl.fma(dys[m - t % KA], v, sums[t]),)
                    else:
                        updated = updated + (sums[t],)
                sums = updated
    return sums, bias_sum


@triton.jit
def _group_sums(
    x_ptr,
    g_ptr,
    group,
    shift,
    chunk,
    chunks,
    N,
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
    KX: tl.constexpr,
    KA: tl.constexpr,
    T: tl.constexpr,
    FULL: tl.constexpr,
    ROWS: tl.constexpr,
    MAXT: tl.constexpr,
    LANES: tl.constexpr,
    VEC: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_A: tl.constexpr,
):
    """The per-thread tap sums (MAXT fp32 [BLOCK_A, LANES]: the KX x KA taps, then zeros) and bias sum of one group
    of LANES channels over one chunk of the strip blocks (ROWS: row strips, else column strips); x is read
    ``shift`` rows off (one row of a square kernel at a time)."""
    ch = tl.arange(0, LANES)
    c = group * LANES + ch
    x_ch = index(c, INT64) * x_c
    g_ch = index(c, INT64) * g_c
    if ROWS:
        strips = N * H * (1 if FULL else tl.cdiv(W, T))
    else:
        strips = N * W * (1 if FULL else tl.cdiv(H, T))
    blocks = tl.cdiv(strips, BLOCK_A)
    per_chunk = tl.cdiv(blocks, chunks)
    sums = ()
    for _t in tl.static_range(KX * KA):
        sums = sums + (tl.zeros((BLOCK_A, LANES), dtype=tl.float32),)
    bias_sum = tl.zeros((BLOCK_A, LANES), dtype=tl.float32)
    for block in range(chunk * per_chunk, tl.minimum(blocks, (chunk + 1) * per_chunk)):
        if ROWS:
            n, cross, pos0, valid = _row_anchors(block, N, H, W, T, FULL, BLOCK_A)
            xbase = index(n, INT64) * x_n + index(cross, INT64) * x_h + index(pos0, INT64) * x_w
            gbase = index(n, INT64) * g_n + index(cross, INT64) * g_h + index(pos0, INT64) * g_w
            sums, bias_sum = _strip_wgrad(
                x_ptr, g_ptr, xbase, gbase, x_ch, g_ch, cross, pos0, valid, H, W, x_h, x_w, g_w, shift, sums, bias_sum, KX,
                KA, T, FULL, VEC,
            )  # fmt: skip
        else:
            n, pos0, cross, valid = _column_anchors(block, N, H, W, T, FULL, BLOCK_A)
            xbase = index(n, INT64) * x_n + index(pos0, INT64) * x_h + index(cross, INT64) * x_w
            gbase = index(n, INT64) * g_n + index(pos0, INT64) * g_h + index(cross, INT64) * g_w
            sums, bias_sum = _strip_wgrad(
                x_ptr, g_ptr, xbase, gbase, x_ch, g_ch, cross, pos0, valid, W, H, x_w, x_h, g_h, shift, sums, bias_sum, KX,
                KA, T, FULL, VEC,
            )  # fmt: skip
    for _t in tl.static_range(KX * KA, MAXT):
        sums = sums + (tl.zeros((BLOCK_A, LANES), dtype=tl.float32),)
    return sums, bias_sum


@triton.jit
def _store_gradients(
    dw_ptr,
    db_ptr,
    total,
    k,
    lane0,
    tap0,
    with_bias,
    TAPS: tl.constexpr,
    DW_TAPS: tl.constexpr,
    MAXT: tl.constexpr,
    LANES: tl.constexpr,
):
    """Write one group's channels (from ``lane0`` of the slice) of a branch's weight gradient, taps tap0 .. tap0 +
    TAPS - 1 of its DW_TAPS, and (``with_bias``) its bias gradient, in their dtype. ``total``: fp32 [ROW], tap t
    of lane l at t * 8 + l, the bias at MAXT * 8 + l."""
    lane = lane0 + k % 8
    tap = k // 8
    in_slice = k % 8 < LANES
    tl.store(dw_ptr + lane * DW_TAPS + tap0 + tap, total.to(dw_ptr.dtype.element_ty), mask=in_slice & (tap < TAPS))
    tl.store(db_ptr + lane, total.to(db_ptr.dtype.element_ty), mask=in_slice & (tap == MAXT) & with_bias)


@triton.jit(  # chunks: 1 on a small batch, more on a large one (one compile)
    do_not_specialize=["chunks"],
    do_not_specialize_on_alignment=[*_SIZES, "x_n", "x_h", "x_w", "g_n", "g_h", "g_w"],
)
def _inception_wgrad_kernel(
    x_ptr,
    g_ptr,
    partial_ptr,
    counter_ptr,
    dw_hw,
    db_hw,
    dw_w,
    db_w,
    dw_h,
    db_h,
    N,
    H,
    W,
    C,
    id_channels,
    gc,
    chunks,
    x_n,
    x_c,
    x_h,
    x_w,
    g_n,
    g_c,
    g_h,
    g_w,
    SQUARE: tl.constexpr,
    BAND: tl.constexpr,
    TW: tl.constexpr,
    TH: tl.constexpr,
    FULL_W: tl.constexpr,
    FULL_H: tl.constexpr,
    ROW: tl.constexpr,
    SPLIT: tl.constexpr,
    LANES: tl.constexpr,
    VEC: tl.constexpr,
    INT64: tl.constexpr,
    BLOCK_A: tl.constexpr,
    FIN_BLOCK: tl.constexpr,
):
    """Weight and bias gradients of the three branches in one launch. Program (chunk, slot); the slots are the
    LANES-channel groups of the square branch's slice (one slot per group and kernel row with SPLIT), then the
    1 x band's, then the band x 1's. Each program
    writes its group's fp32 partial sums over its chunk ([slot, chunk, ROW]: tap t of lane l at t * 8 + l, the
    bias after the most taps of a branch) and takes a ticket (one acq_rel atomic); the last program of a group adds
    the chunks' partials in chunk order and writes the gradients in the weights' dtype, then resets the ticket."""
    # SPLIT: one program per row of the square kernel (its tap sums would not fit in registers)
    SQ_TAPS: tl.constexpr = SQUARE if SPLIT else SQUARE * SQUARE
    MAXT: tl.constexpr = SQ_TAPS if SQ_TAPS > BAND else BAND
    ROWS_PER_GROUP: tl.constexpr = SQUARE if SPLIT else 1
    chunk = tl.program_id(0)
    slot = tl.program_id(1)
    groups = gc // LANES
    square_slots = groups * ROWS_PER_GROUP
    if slot < square_slots:
        lane0 = (slot // ROWS_PER_GROUP) * LANES  # the group's first channel in its slice
        kernel_row = slot % ROWS_PER_GROUP
        if SPLIT:
            sums, bias_sum = _group_sums(
                x_ptr, g_ptr, (id_channels + lane0) // LANES, kernel_row - SQUARE // 2, chunk, chunks, N, H, W, x_n,
                x_c, x_h, x_w, g_n, g_c, g_h, g_w, 1, SQUARE, TW, FULL_W, True, MAXT, LANES, VEC, INT64, BLOCK_A,
            )  # fmt: skip
        else:
            sums, bias_sum = _group_sums(
                x_ptr, g_ptr, (id_channels + lane0) // LANES, 0, chunk, chunks, N, H, W, x_n, x_c, x_h, x_w, g_n, g_c,
                g_h, g_w, SQUARE, SQUARE, TW, FULL_W, True, MAXT, LANES, VEC, INT64, BLOCK_A,
            )  # fmt: skip
    elif slot < square_slots + groups:
        lane0 = (slot - square_slots) * LANES
        kernel_row = 0
        sums, bias_sum = _group_sums(
            x_ptr, g_ptr, (id_channels + gc + lane0) // LANES, 0, chunk, chunks, N, H, W, x_n, x_c, x_h, x_w, g_n, g_c,
            g_h, g_w, 1, BAND, TW, FULL_W, True, MAXT, LANES, VEC, INT64, BLOCK_A,
        )  # fmt: skip
    else:
        lane0 = (slot - square_slots - groups) * LANES
        kernel_row = 0
        sums, bias_sum = _group_sums(
            x_ptr, g_ptr, (id_channels + 2 * gc + lane0) // LANES, 0, chunk, chunks, N, H, W, x_n, x_c, x_h, x_w, g_n,
            g_c, g_h, g_w, 1, BAND, TH, FULL_H, False, MAXT, LANES, VEC, INT64, BLOCK_A,
        )  # fmt: skip
    ch = tl.arange(0, LANES)
    row = partial_ptr + (slot.to(tl.int64) * chunks + chunk) * ROW
    for t in tl.static_range(MAXT):
        tl.store(row + t * 8 + ch, tl.sum(sums[t], axis=0))
    tl.store(row + MAXT * 8 + ch, tl.sum(bias_sum, axis=0))
    tl.debug_barrier()  # every thread's partials are written before the ticket is taken
    ticket = tl.atomic_add(counter_ptr + slot, 1, sem="acq_rel", scope="gpu")
    if ticket == chunks - 1:  # the last program of this group: every chunk's partials are visible
        k = tl.arange(0, ROW)
        total = tl.zeros((FIN_BLOCK, ROW), dtype=tl.float32)
        rows = partial_ptr + slot.to(tl.int64) * chunks * ROW
        for start in range(0, chunks, FIN_BLOCK):
            q = start + tl.arange(0, FIN_BLOCK)
            mask = (q < chunks)[:, None] & ((k % 8 < LANES) & (k // 8 <= MAXT))[None, :]  # the written columns
            # from L2 (.cg): the other programs' partials, visible after the ticket's acquire
            total += tl.load(rows + q[:, None] * ROW + k[None, :], mask=mask, other=0.0, cache_modifier=".cg")
        total = tl.sum(total, axis=0)
        if slot < square_slots:
            _store_gradients(
                dw_hw, db_hw, total, k, lane0, kernel_row * SQ_TAPS, kernel_row == 0, SQ_TAPS, SQUARE * SQUARE, MAXT,
                LANES,
            )  # fmt: skip
        elif slot < square_slots + groups:
            _store_gradients(dw_w, db_w, total, k, lane0, 0, True, BAND, BAND, MAXT, LANES)
        else:
            _store_gradients(dw_h, db_h, total, k, lane0, 0, True, BAND, BAND, MAXT, LANES)
        tl.store(counter_ptr + slot, 0)  # ready for the next launch


# ----------------------------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------------------------

# One anchor and one group per thread, BLOCK_A x CG = 32 x warps (the interpreter runs the same tiles).
_WARPS = 4
# The forward on a GPU: up to 64 contiguous bytes of bf16 per position and branch step (4 groups of 8 channels).
_GPU_MAX_GROUPS_PER_STEP = 4
_MAX_GROUPS_PER_STEP = 16 if INTERPRETER else _GPU_MAX_GROUPS_PER_STEP


@dataclasses.dataclass(frozen=True)
class GridTargets:
    """How many programs the launchers aim at on a GPU, per SM. Each sets runtime arguments of the compiled kernels
    (the forward's ``part_steps``, the weight gradient's ``chunks``, neither specialised), so another value
    recompiles nothing: ``scripts/benchmark.py`` times a few (``bench_inception``'s grid sweep) beside these
    defaults, which are heuristics not yet tuned on a GPU. The interpreter (CPU tests) ignores them: few large
    programs are fastest there, and its small targets still give several parts and chunks on small test inputs.

    ``forward``: programs of the mixer kernel (forward and input gradient): the most steps per part that still
    give this many per SM, else one step per part: about one wave where three programs fit an SM (168 registers a
    thread at stage 1; two fit at stages 2-4, 192-250 registers: docs/design.md §12, "Occupancy").

    ``weight_gradient`` and ``weight_gradient_blocks``: chunks of strip blocks per group for this many programs per
    SM, each reducing at least that many blocks of strips where the map allows. A program's final reduction over
    its threads costs about 2200 instructions, so 4 blocks give 3.2 / 3.2 / 3.5 / 3.6 instructions per useful MAC
    at InceptionNeXt-T's stages 1-4 (sm_90) against 2.9 / 2.4 / 2.7 / 2.8 at 16 blocks; but 16 left 63 / 36 / 36
    programs at stages 2-4, so at most half of the 132 SMs worked (4 blocks: 252 / 126 / 72 programs,
    1.5-2.7x fewer instructions per busy SM at stages 2-4)."""

    forward: int = 3
    weight_gradient: int = 4
    weight_gradient_blocks: int = 4

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GridTargets.{name} must be a positive int, got {value!r}")


# Read at every eager launch; grid_targets() replaces it for a while. A graph fixes the grid it was traced or
# captured with (torch.compile's traced kernels, CUDA graphs): a later change reaches it only through a new one.
GRID = GridTargets()


@contextlib.contextmanager
def grid_targets(**targets: int) -> Iterator[None]:
    """Launch with other :class:`GridTargets` (fields as keywords) inside the ``with`` block, forward and backward
    alike (``scripts/benchmark.py``'s grid sweep). Not thread-safe: a process-wide setting for measuring."""
    global GRID
    saved = GRID
    GRID = dataclasses.replace(saved, **targets)
    try:
        yield
    finally:
        GRID = saved


_FIN_BLOCK = 4 if INTERPRETER else 16


# The mixer's one configuration: its tiles are fixed by the launcher (nothing to tune); the register bound keeps
# ptxas from trading registers for occupancy (the stage-3 forward and the fp32 input gradient spilled on sm_80).
_mixer_kernel = triton.autotune([triton.Config({}, num_warps=_WARPS, maxnreg=MAXNREG)], key=[])(_inception_kernel)


@functools.lru_cache(maxsize=64)
def _strip_length(size: int, longest: int = 8) -> tuple[int, bool]:
    """Outputs per thread along an axis of the map (4..``longest``, the fewest padded positions; ties go to 7, then
    to 8, 6, 5, 4), and whether the strip is the whole axis (maps of at most 8: the taps on the padding vanish at
    compile time)."""
    if size <= 8:
        return size, True
    length = min((t for t in (7, 8, 6, 5, 4) if t <= longest), key=lambda t: cdiv(size, t) * t - size)
    return length, False


def _wgrad_geometry(geometry: dict, h: int, w: int) -> dict:
    """The weight gradient's constexprs: the mixer's, with strips of at most 7 at 8 channels per group. A strip of
    8 (maps 16-64 wide, 96: InceptionNeXt at 256 and 384 px) holds 8 output gradients, a 17- or 18-vector window
    and the tap sums of 8 channels: 255 registers and 8-16 bytes spilled on sm_80 and sm_90, where 7 takes 243-246
    registers and whole-map strips of 8 (their padded taps compiled away) 222."""
    if geometry["LANES"] < 8:
        return geometry
    (tw, full_w), (th, full_h) = _strip_length(w, 7), _strip_length(h, 7)
    return dict(geometry, TW=tw, FULL_W=full_w, TH=th, FULL_H=full_h)


def _lanes(id_channels: int, gc: int, itemsize: int = 2) -> int:
    """Channels per group: the largest power of two up to one 16-byte vector (8 of bf16 / fp16, 4 of fp32) that
    divides the identity width and gc (every slice is whole groups: no group straddles two of them)."""
    lanes = 16 // itemsize
    while id_channels % lanes or gc % lanes:
        lanes //= 2
    return lanes


def _vec(lanes: int, *tensors: Tensor) -> int:
    """LANES when the channels of every tensor are contiguous and its other strides are multiples of LANES (the
    kernels then read and write vectors of LANES channels), else 1 (any strides, one element at a time)."""
    aligned = all(
        t.stride(1) == 1 and all(s % lanes == 0 for s in (t.stride(0), t.stride(2), t.stride(3))) for t in tensors
    )
    return lanes if aligned else 1


def _strides(t: Tensor, vec: int) -> tuple[int, int, int, int]:
    n, c, h, w = strides4(t)
    return (n // vec, 1, h // vec, w // vec) if vec > 1 else (n, c, h, w)


def _geometry(x: Tensor, gc: int, square: int, *others: Tensor) -> dict:
    """The constexprs shared by both kernels: channels per group (at most 4 for squares over 3, whose window and
    weights would not fit in registers with 8), strip lengths, whole-map strips, the vector path, 64-bit
    offsets."""
    _, channels, h, w = x.shape
    tw, full_w = _strip_length(w)
    th, full_h = _strip_length(h)
    lanes = _lanes(channels - 3 * gc, gc, max(t.element_size() for t in (x, *others)))
    lanes = min(lanes, 4) if square > 3 else lanes
    vec = _vec(lanes, x, *others)
    return dict(
        LANES=lanes if vec > 1 else 1,  # one element at a time: more channels per thread would only cost registers
        VEC=vec,
        TW=tw,
        TH=th,
        FULL_W=full_w,
        FULL_H=full_h,
        INT64=needs_int64(x, *others),
    )


def _strip_counts(n: int, h: int, w: int, geometry: dict) -> tuple[int, int]:
    """(row strips, column strips) of a map."""
    rows = n * h * (1 if geometry["FULL_W"] else cdiv(w, geometry["TW"]))
    columns = n * w * (1 if geometry["FULL_H"] else cdiv(h, geometry["TH"]))
    return rows, columns


def _mixer_config(groups: int, max_cg: int) -> tuple[int, int]:
    """(BLOCK_A, CG): one anchor and one group per thread, CG groups of a position side by side in a warp (the
    largest power of two up to ``max_cg`` that divides a branch's groups: no partly idle steps, no masks), so that
    a warp reads and writes runs of CG x LANES contiguous channels per position on the vector path rather than
    one vector per position (a 32-byte sector per 16 bytes used at CG 1, LANES 8)."""
    cg = 1
    while 2 * cg <= max_cg and groups % (2 * cg) == 0:
        cg *= 2
    return 32 * _WARPS // cg, cg


def _identity_groups(lanes: int, vec: int, id_groups: int, cg: int) -> int:
    """Groups of the identity slice copied per step: 32 bytes of bf16 per position (16 channels, a power of two
    of groups, no more than the slice has) on the vector path; on the element path (NCHW, VEC = 1) the CG of the
    branches (there the positions, not the channels, are contiguous)."""
    if vec == 1:
        return cg
    return max(1, min(16 // lanes, next_power_of_2(max(id_groups, 1))))


def _mixer_parts(id_groups: int, idg: int, groups: int, cg: int, part_steps: int) -> tuple[int, int]:
    """(identity parts, parts per branch) of a block of anchors, as the kernel counts them: each branch's steps of
    CG groups in runs of ``part_steps``; the identity's steps of IDG groups in as many parts as a branch has (one
    per step if it has fewer)."""
    branch_parts = cdiv(groups // cg, part_steps)
    id_steps = cdiv(id_groups, idg)
    return cdiv(id_steps, max(cdiv(id_steps, branch_parts), 1)), branch_parts


def _programs_per_block(id_groups: int, idg: int, groups: int, cg: int, part_steps: int) -> int:
    id_parts, branch_parts = _mixer_parts(id_groups, idg, groups, cg, part_steps)
    return id_parts + 3 * branch_parts


def _part_steps(blocks: int, id_groups: int, idg: int, groups: int, cg: int, target: int) -> int:
    """Steps per part: the most that still give ``target`` programs (longer programs amortise what each program
    sets up: its anchors, the window's addresses and masks), else one (as many programs as there can be)."""
    for part_steps in range(max(groups // cg, 1), 1, -1):
        if blocks * _programs_per_block(id_groups, idg, groups, cg, part_steps) >= target:
            return part_steps
    return 1


def _launch_part_steps(blocks: int, id_groups: int, idg: int, groups: int, cg: int, device: torch.device) -> int:
    """The launch's steps per part (:func:`_part_steps`): for :data:`GRID`'s programs per SM of ``device``; under
    the interpreter for one program (a whole slice per program)."""
    target = 1 if INTERPRETER else GRID.forward * sm_count(device)
    return _part_steps(blocks, id_groups, idg, groups, cg, target)


def _launch_mixer(
    src: Tensor, dst: Tensor, weights, biases, gc: int, square: int, band: int, flip: bool, geometry: dict
) -> None:
    """One launch of the mixer kernel (``geometry``: :func:`_geometry` of at least ``src`` and ``dst``)."""
    n, channels, h, w = dst.shape
    strips = max(_strip_counts(n, h, w, geometry))
    lanes = geometry["LANES"]
    id_groups = (channels - 3 * gc) // lanes
    block_a, cg = _mixer_config(gc // lanes, _MAX_GROUPS_PER_STEP)
    idg = _identity_groups(lanes, geometry["VEC"], id_groups, cg)
    w_hw, w_w, w_h = weights
    b_hw, b_w, b_h = (w_hw if b is None else b for b in biases)
    blocks = cdiv(strips, block_a)
    part_steps = _launch_part_steps(blocks, id_groups, idg, gc // lanes, cg, dst.device)
    launchable(_mixer_kernel)[(blocks * _programs_per_block(id_groups, idg, gc // lanes, cg, part_steps),)](
        src,
        dst,
        w_hw,
        b_hw,
        w_w,
        b_w,
        w_h,
        b_h,
        n,
        h,
        w,
        channels,
        channels - 3 * gc,
        gc,
        part_steps,
        *_strides(src, geometry["VEC"]),
        *_strides(dst, geometry["VEC"]),
        SQUARE=square,
        BAND=band,
        FLIP=flip,
        HAS_BIAS=biases[0] is not None,
        BLOCK_A=block_a,
        CG=cg,
        IDG=idg,
        **geometry,
    )


def inception_dwconv2d_forward(
    x: Tensor,
    weight_hw: Tensor,
    bias_hw: Tensor | None,
    weight_w: Tensor,
    bias_w: Tensor | None,
    weight_h: Tensor,
    bias_h: Tensor | None,
) -> Tensor:
    """Triton forward of :func:`inception_dwconv2d`: one launch writes all four channel slices (the output in the
    memory format of ``x``)."""
    gc, square, band = check_inception_inputs(x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h)
    check_triton_dtype(
        x=x, weight_hw=weight_hw, weight_w=weight_w, weight_h=weight_h, bias_hw=bias_hw, bias_w=bias_w, bias_h=bias_h
    )
    check_triton_device(x.device)
    y = empty_like_format(x, x.shape)
    if y.numel():
        weights = tuple(t.contiguous() for t in (weight_hw, weight_w, weight_h))
        biases = tuple(None if b is None else b.contiguous() for b in (bias_hw, bias_w, bias_h))
        with device_guard(x.device):
            _launch_mixer(x, y, weights, biases, gc, square, band, False, _geometry(x, gc, square, y))
    return y


def _wgrad_chunks(strips: int, block_a: int, slots: int, sms: int, grid: GridTargets | None = None) -> int:
    """Chunks of strip blocks per group: enough programs to fill a GPU of ``sms`` SMs (``grid``'s targets, by
    default :data:`GRID`), each with at least its minimum of blocks of strips where the map allows (the program's
    final reduction over its threads then weighs less)."""
    grid = GRID if grid is None else grid
    target = 24 if INTERPRETER else grid.weight_gradient * sms
    blocks = 1 if INTERPRETER else grid.weight_gradient_blocks
    return max(1, min(cdiv(target, slots), cdiv(strips, block_a * blocks)))


def _wgrad_layout(square: int, band: int, gc: int, lanes: int) -> tuple[bool, int, int]:
    """(SPLIT, slots, ROW) of the weight gradient: the square branch's groups run one kernel row per program when
    its tap sums would pass 96 registers per thread (k = 5 at 4 or 8 channels per group); a partial row holds 8
    lanes x (the most taps of a program + the bias), a power of two."""
    split = square * square * lanes > 96
    groups = gc // lanes
    slots = groups * (square if split else 1) + 2 * groups
    return split, slots, next_power_of_2(8 * (max(square if split else square * square, band) + 1))


def inception_dwconv2d_backward(
    grad_output: Tensor, x: Tensor, weight_hw: Tensor, weight_w: Tensor, weight_h: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Triton backward of :func:`inception_dwconv2d`: (dx, d weight_hw, d bias_hw, d weight_w, d bias_w,
    d weight_h, d bias_h), the weight gradients in the weights' dtype. Two launches: the input gradient (the
    mixer kernel with the taps flipped), and the weight and bias gradients of the three branches (reduced to
    their final values inside that launch)."""
    check_inception_inputs(x, weight_hw, None, weight_w, None, weight_h, None)
    check_triton_dtype(x=x, weight_hw=weight_hw, weight_w=weight_w, weight_h=weight_h)
    check_triton_device(x.device)
    check_grad_output(grad_output, x.shape, x)
    return launch_inception_backward(grad_output, x, weight_hw, weight_w, weight_h)


def launch_inception_backward(
    grad_output: Tensor, x: Tensor, weight_hw: Tensor, weight_w: Tensor, weight_h: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`inception_dwconv2d_backward` without validating its inputs: for the eager autograd Function, whose
    forward validated them (autograd passes a gradient of the output's shape, dtype and device). Host time counts
    here: the late stages' mixers are short."""
    gc, square, band = weight_hw.shape[0], weight_hw.shape[2], weight_w.shape[3]
    dx = empty_like_format(x, x.shape)
    weights = tuple(t.contiguous() for t in (weight_hw, weight_w, weight_h))
    if x.numel() == 0:
        zeros = [(torch.zeros_like(wt), wt.new_zeros(gc)) for wt in weights]
        return (dx, *zeros[0], *zeros[1], *zeros[2])
    grads = [(torch.empty_like(wt), torch.empty(gc, dtype=wt.dtype, device=wt.device)) for wt in weights]
    n, channels, h, w = x.shape
    geometry = _geometry(x, gc, square, grad_output, dx)  # dx: x's format, so its vector path agrees with x's
    wgrad_geometry = _wgrad_geometry(geometry, h, w)
    vec = geometry["VEC"]
    block_a = 32 * _WARPS
    split, slots, row = _wgrad_layout(square, band, gc, geometry["LANES"])
    chunks = _wgrad_chunks(min(_strip_counts(n, h, w, wgrad_geometry)), block_a, slots, sm_count(x.device))
    partial = torch.empty((slots, chunks, row), dtype=torch.float32, device=x.device)
    with device_guard(x.device):
        _launch_mixer(grad_output, dx, weights, (None, None, None), gc, square, band, True, geometry)
        launchable(_inception_wgrad_kernel)[(chunks, slots)](
            x,
            grad_output,
            partial,
            ticket_counters(x.device, slots),
            *grads[0],
            *grads[1],
            *grads[2],
            n,
            h,
            w,
            channels,
            channels - 3 * gc,
            gc,
            chunks,
            *_strides(x, vec),
            *_strides(grad_output, vec),
            SQUARE=square,
            BAND=band,
            ROW=row,
            SPLIT=split,
            BLOCK_A=block_a,
            FIN_BLOCK=_FIN_BLOCK,
            num_warps=_WARPS,
            maxnreg=MAXNREG,  # unbounded, ptxas held stage 1's strips of 8 to 128 registers and spilled 40 bytes
            **wgrad_geometry,
        )
    return (dx, *grads[0], *grads[1], *grads[2])


# ----------------------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (zoo/kernels/_aot.py)
# ----------------------------------------------------------------------------------------------------------------


def _spec_geometry(
    n: int, c: int, h: int, w: int, gc: int, layout: str, dtype: str, square: int
) -> tuple[dict, tuple[int, ...]]:
    """The launchers' constexprs and the (VEC-scaled) strides for a contiguous tensor of this shape and layout."""
    tw, full_w = _strip_length(w)
    th, full_h = _strip_length(h)
    lanes = _lanes(c - 3 * gc, gc, 4 if dtype == "fp32" else 2) if layout == "channels_last" else 1
    lanes = min(lanes, 4) if square > 3 else lanes
    vec = lanes
    strides = meta_strides((n, c, h, w), layout)
    strides = (strides[0] // vec, 1, strides[2] // vec, strides[3] // vec) if vec > 1 else strides
    geometry = dict(LANES=lanes, VEC=vec, TW=tw, TH=th, FULL_W=full_w, FULL_H=full_h, INT64=False)
    return geometry, strides


def _forward_args(dtype: str, shape: tuple, gc: int, layout: str, kernels: tuple, flip: bool, cg: int) -> dict:
    """The arguments ``_launch_mixer`` passes (pointers as types)."""
    n, c, h, w = shape
    geometry, strides = _spec_geometry(n, c, h, w, gc, layout, dtype, kernels[0])
    return dict(
        src_ptr=f"*{dtype}",
        dst_ptr=f"*{dtype}",
        **dict.fromkeys(("w_hw", "b_hw", "w_w", "b_w", "w_h", "b_h"), f"*{dtype}"),
        N=n,
        H=h,
        W=w,
        C=c,
        id_channels=c - 3 * gc,
        gc=gc,
        part_steps="i32",
        **named_strides(("s", "d"), strides),
        SQUARE=kernels[0],
        BAND=kernels[1],
        FLIP=flip,
        HAS_BIAS=not flip,
        BLOCK_A=128 // cg,
        CG=cg,
        IDG=_identity_groups(geometry["LANES"], geometry["VEC"], (c - 3 * gc) // geometry["LANES"], cg),
        **geometry,
    )


def _wgrad_args(dtype: str, shape: tuple, gc: int, layout: str, kernels: tuple) -> dict:
    """The arguments the backward passes to the weight-gradient kernel (pointers as types)."""
    n, c, h, w = shape
    geometry, strides = _spec_geometry(n, c, h, w, gc, layout, dtype, kernels[0])
    geometry = _wgrad_geometry(geometry, h, w)
    split, slots, row = _wgrad_layout(*kernels, gc, geometry["LANES"])
    return dict(
        x_ptr=f"*{dtype}",
        g_ptr=f"*{dtype}",
        partial_ptr="*fp32",
        counter_ptr="*i32",
        **dict.fromkeys(("dw_hw", "db_hw", "dw_w", "db_w", "dw_h", "db_h"), f"*{dtype}"),
        N=n,
        H=h,
        W=w,
        C=c,
        id_channels=c - 3 * gc,
        gc=gc,
        chunks=_wgrad_chunks(min(_strip_counts(n, h, w, geometry)), 128, slots, H200_SMS, GridTargets()),
        **named_strides(("x", "g"), strides),
        SQUARE=kernels[0],
        BAND=kernels[1],
        ROW=row,
        SPLIT=split,
        BLOCK_A=128,
        FIN_BLOCK=16,
        **geometry,
    )


def aot_specs() -> list:
    """Coverage compile specs (bf16, the training dtype, unless named): the forward / input-gradient kernel and the
    weight-gradient kernel for channels_last with 8, 4 and 2 channels per group, strips of 7 and 8 and whole-map
    strips, 1 to 4 groups per step (the identity's up to 8), and NCHW (one element at a time); fp32 and fp16 once
    each. The benchmark shapes are in :func:`benchmark_specs`."""
    from zoo.kernels._aot import launch_spec

    specs = []
    # (dtype, layout, shape, gc, (square, band), compiled in the tests): InceptionNeXt-T's stages 1 (gc = 12: 3
    # groups of 4, one per step) and 3 (6 groups of 8, two per step), a whole-map 7 x 7 stage (12 groups, four per
    # step), atto's split (groups of 2, band 9), NCHW, fp32 (groups of 4), square 5 with band 7 (the weight
    # gradient one kernel row per program), stages 1 and 2 at 256 px (strips of 8; at 8 channels per group the
    # weight gradient's of 4, _wgrad_geometry); the groups per step are the launcher's
    cases = [
        ("bf16", "channels_last", (8, 96, 56, 56), 12, (3, 11), True),
        ("bf16", "channels_last", (8, 96, 64, 64), 12, (3, 11), True),
        ("bf16", "channels_last", (8, 192, 32, 32), 24, (3, 11), True),
        ("bf16", "channels_last", (8, 384, 14, 14), 48, (3, 11), False),
        ("bf16", "channels_last", (8, 768, 7, 7), 96, (3, 11), True),
        ("bf16", "channels_last", (8, 40, 56, 56), 10, (3, 9), False),
        ("bf16", "nchw", (8, 96, 28, 28), 12, (3, 11), True),
        ("fp32", "channels_last", (8, 192, 28, 28), 24, (3, 11), True),
        ("fp16", "channels_last", (8, 192, 13, 13), 24, (5, 7), True),
    ]
    for dtype, layout, shape, gc, kernels, ci in cases:
        label = f"{dtype},{layout},{shape[2]}x{shape[3]},gc{gc},k{kernels[0]}-{kernels[1]}"
        geometry = _spec_geometry(*shape, gc, layout, dtype, kernels[0])[0]
        cg = _mixer_config(gc // geometry["LANES"], _GPU_MAX_GROUPS_PER_STEP)[1]
        for flip, direction in ((False, "fwd"), (True, "bwd")):
            specs.append(
                launch_spec(
                    f"_inception_kernel[{label},{direction},A{128 // cg},G{cg},w4]",
                    _inception_kernel,
                    _forward_args(dtype, shape, gc, layout, kernels, flip, cg),
                    num_warps=_WARPS,
                    ci=ci,
                    maxnreg=MAXNREG,
                )
            )
        specs.append(
            launch_spec(
                f"_inception_wgrad_kernel[{label},A128,w4]",
                _inception_wgrad_kernel,
                _wgrad_args(dtype, shape, gc, layout, kernels),
                num_warps=4,
                ci=ci,
                maxnreg=MAXNREG,
            )
        )
    return specs


def benchmark_specs() -> list:
    """Loop-report specs (zoo/kernels/_aot.py --loops) at InceptionNeXt-T's four mixer stages (bf16,
    channels_last, square 3, band 11, gc = C / 8): the forward and the input gradient with the groups per step the
    launcher picks (and 1 where that differs), and the weight gradient. Work: the multiply-adds of the taps that
    land on the map, N gc (3x3 + 1x11 + 11x1 taps on the map), per program of the launch's grid; trips: each
    loop's trip count per program, in code order."""
    from zoo.kernels._aot import Work, launch_spec

    specs = []
    kernels = (3, 11)
    threads = 128
    for n, c, h in INCEPTION_BENCHMARKS:
        w = h
        shape = (n, c, h, w)
        case = f"B{n}xC{c}x{h}x{w}"
        gc = c // 8
        macs = n * gc * (taps_on_map(h, 3) * taps_on_map(w, 3) + h * taps_on_map(w, 11) + taps_on_map(h, 11) * w)
        geometry, _ = _spec_geometry(n, c, h, w, gc, "channels_last", "bf16", kernels[0])
        lanes = geometry["LANES"]
        groups = gc // lanes
        rows, columns = _strip_counts(n, h, w, geometry)
        strips = max(rows, columns)
        cg_chosen = _mixer_config(groups, _GPU_MAX_GROUPS_PER_STEP)[1]
        id_groups = (c - 3 * gc) // lanes
        for cg in sorted({1, cg_chosen}):
            idg = _identity_groups(lanes, geometry["VEC"], id_groups, cg)
            blocks = cdiv(strips, threads // cg)
            id_steps, steps = cdiv(id_groups, idg), groups // cg
            part_steps = _part_steps(blocks, id_groups, idg, groups, cg, GridTargets().forward * H200_SMS)
            id_parts, branch_parts = _mixer_parts(id_groups, idg, groups, cg, part_steps)
            parts = id_parts + 3 * branch_parts
            programs = blocks * parts
            # each part's loop sits in a region its guard skips in the other parts' programs
            identity = {"entered": id_parts / parts, "trips": id_steps / id_parts}
            branch = {"entered": branch_parts / parts, "trips": steps / branch_parts}
            work = Work(
                case,
                "MAC",
                macs / programs,
                ((identity, branch, branch, branch), (kernels[0],)),
                f"MACs = N gc (3x3 + 1x11 + 11x1 taps on map) = {macs}; programs = cdiv({strips} strips of "
                f"{geometry['TW']} x 1 / 1 x {geometry['TH']} outputs, {threads // cg} per block) = {blocks} blocks "
                f"x {parts} parts (the identity's {id_steps} steps of {idg} groups of {lanes} channels in {id_parts}, "
                f"each branch's {steps} steps of {cg} groups in {branch_parts}) = {programs}; loops: identity, square, "
                f"1 x band, band x 1, each entered in its parts' programs (trips per entry: {id_steps / id_parts:g}, "
                f"{steps / branch_parts:g}); in the identity's, the {geometry['TW']} positions of a strip",
            )
            for flip, direction in ((False, "fwd"), (True, "bwd")):
                specs.append(
                    launch_spec(
                        f"_inception_kernel[bf16,channels_last,{direction},A{threads // cg},G{cg},w4]@{case}",
                        _inception_kernel,
                        _forward_args("bf16", shape, gc, "channels_last", kernels, flip, cg),
                        num_warps=_WARPS,
                        work=work,
                        ci=c == 96 and cg == cg_chosen,
                        maxnreg=MAXNREG,
                    )
                )
        args = _wgrad_args("bf16", shape, gc, "channels_last", kernels)
        chunks = args["chunks"]
        rows, columns = _strip_counts(n, h, w, _wgrad_geometry(geometry, h, w))
        blocks = [cdiv(rows, threads), cdiv(rows, threads), cdiv(columns, threads)]
        per_chunk = [
            sum(min(b, (q + 1) * cdiv(b, chunks)) - min(b, q * cdiv(b, chunks)) for q in range(chunks)) / chunks
            for b in blocks
        ]
        trips = [t / 3 for t in per_chunk]  # a third of the programs run each branch's loop
        trips.append(cdiv(chunks, 16) / chunks)  # the last program of a group adds the chunks' partials
        programs = chunks * _wgrad_layout(*kernels, gc, lanes)[1]
        work = Work(
            case,
            "MAC",
            macs / programs,
            (tuple(trips),),
            f"MACs = {macs} (as the forward); programs = {chunks} chunks x 3 x {groups} groups of {lanes} channels "
            f"= {programs}; loops: the strip blocks of a chunk of each branch ({per_chunk}, a third of the programs "
            f"each), the final sum (one program in {chunks}): {trips}",
        )
        specs.append(
            launch_spec(
                f"_inception_wgrad_kernel[bf16,channels_last,A128,w4]@{case}",
                _inception_wgrad_kernel,
                args,
                num_warps=4,
                work=work,
                ci=c == 96,
                maxnreg=MAXNREG,
            )
        )
    return specs
