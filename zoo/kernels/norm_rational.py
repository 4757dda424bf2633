"""LayerNorm followed by the group-rational activation, in one pass each way: KAT's ``norm2`` -> ``mlp.act1``.

    y = F(LayerNorm(x; norm_weight, norm_bias, eps))

over the last dimension C of ``x``, F the group-rational activation of :mod:`zoo.kernels.rational` (G groups of C / G
channels). Both are computed in float32 and the result is rounded once to ``out_dtype`` (default: the dtype of
``x``): under autocast the KAT block asks for autocast's dtype, which is what ``fc1`` reads, so that the LayerNorm
output, the activation's float32 result and its cast never reach memory. The backward reads x and dy once and writes
dx, the LayerNorm's weight and bias gradients and the rational's coefficient gradients (a second, small launch adds
the programs' partial sums in a fixed order: deterministic).

Layout of this file (the kernel contract, docs/design.md §2): the reference, the Triton kernels, the launchers, the
registered op.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.kernels._backend import (
    H200_SMS,
    INTERPRETER,
    TRITON_DTYPES,
    cdiv,
    check_triton_device,
    check_triton_dtypes,
    check_triton_out_dtype,
    device_guard,
    dispatch_triton,
    launchable,
    next_power_of_2,
    once_differentiable,
    requested_backend,
    resolve_backend,
    sm_count,
    ticket_counters,
    tl,
    triton,
    triton_op,
)
from zoo.kernels.rational import (
    _as_fp32_contiguous,
    _backward_terms,
    _denominator_coefficients,
    _load_tile,
    _numerator_coefficients,
    _numerator_denominator,
    _reciprocal,
    check_group_rational_inputs,
    group_rational_reference,
)

__all__ = [
    "layer_norm_group_rational",
    "layer_norm_group_rational_reference",
    "layer_norm_group_rational_forward",
    "layer_norm_group_rational_backward",
]

MAX_CHANNELS = 8192  # a row is one tile in registers


def check_layer_norm_group_rational_inputs(
    x: Tensor,
    norm_weight: Tensor,
    norm_bias: Tensor,
    weight_numerator: Tensor,
    weight_denominator: Tensor,
    eps: float,
    out_dtype: torch.dtype | None,
) -> None:
    """Raise ``TypeError``/``ValueError`` naming what was expected when the inputs do not fit the op."""
    check_group_rational_inputs(x, weight_numerator, weight_denominator, out_dtype)
    channels = x.shape[-1]
    for name, t in (("norm_weight", norm_weight), ("norm_bias", norm_bias)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got {getattr(t, 'dtype', type(t))}")
        if t.shape != (channels,):
            raise ValueError(f"{name} must have shape [{channels}] (the last dimension of x), got {list(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{name} must be on the device of x ({x.device}), got {t.device}")
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive number, got {eps!r}")


# ----------------------------------------------------------------------------------------------------------------
# 1. Reference
# ----------------------------------------------------------------------------------------------------------------


def layer_norm_group_rational_reference(
    x: Tensor,
    norm_weight: Tensor,
    norm_bias: Tensor,
    weight_numerator: Tensor,
    weight_denominator: Tensor,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """Plain PyTorch: ``group_rational(layer_norm(x))`` in float32 (float64 for float64 input), rounded once to
    ``out_dtype`` (default: the dtype of ``x``). Defines the op's meaning; differentiable through autograd."""
    check_layer_norm_group_rational_inputs(
        x, norm_weight, norm_bias, weight_numerator, weight_denominator, eps, out_dtype
    )
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    with torch.autocast(x.device.type, enabled=False):
        u = F.layer_norm(
            x.to(compute_dtype), (x.shape[-1],), norm_weight.to(compute_dtype), norm_bias.to(compute_dtype), eps
        )
    return group_rational_reference(u, weight_numerator, weight_denominator, out_dtype or x.dtype)


# ----------------------------------------------------------------------------------------------------------------
# 2. Triton kernels
#
# Forward: a program walks a chunk of rows, BLOCK_M whole rows at a time (each row as two power-of-two parts of
# BLOCK_HI and BLOCK_LO columns, in registers):
# normalises them, applies F and stores y, the rows' mean and 1 / std. Backward: program p walks a chunk of rows,
# BLOCK_M at a time: u and F'(u) from x and the saved statistics, du = dy F'(u), dx from du by LayerNorm's backward
# (two row sums), and keeps per column the sums of du xhat, du and the ten coefficient terms; it writes them as
# partial[p, 12, C]. The second kernel adds the partials of a block of columns per program (the LayerNorm
# gradients), and the program that draws the last ticket adds the columns of each group (the rational's
# coefficients).
# ----------------------------------------------------------------------------------------------------------------

PARTIAL_ROWS = 12  # d norm_weight, d norm_bias, then the ten coefficient terms of rational.py's _backward_terms


@triton.jit
def _column_parameters(w_ptr, beta_ptr, b_ptr, cols, col_mask, group_size):
    """A part's per-column parameters, fp32 rows [1, part]: the LayerNorm's weight and bias and |b0|..|b3| of each
    column's group (0 on masked columns)."""
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    beta = tl.load(beta_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    b0, b1, b2, b3 = _denominator_coefficients(b_ptr, cols // group_size, col_mask)
    return w, beta, b0[None, :], b1[None, :], b2[None, :], b3[None, :]


@triton.jit
def _row_sums(hi, lo, BLOCK_M: tl.constexpr, BLOCK_HI: tl.constexpr, BLOCK_LO: tl.constexpr):
    """Sums of the rows of a tile held as two parts [BLOCK_M, BLOCK_HI] and [BLOCK_M, BLOCK_LO], BLOCK_LO dividing
    BLOCK_HI: runs of BLOCK_HI / BLOCK_LO columns of the first part are added in registers, then to the second part,
    so that each row is reduced across lanes once."""
    folded = tl.sum(tl.reshape(hi, (BLOCK_M, BLOCK_LO, BLOCK_HI // BLOCK_LO)), axis=2)
    return tl.sum(folded + lo, axis=1)


@triton.jit
def _norm_rational_fwd_kernel(
    x_ptr,
    y_ptr,
    mean_ptr,
    rstd_ptr,
    w_ptr,
    beta_ptr,
    a_ptr,
    b_ptr,
    n_rows,
    C,
    group_size,
    rows_per_program,
    stride_xr,
    stride_xc,
    eps,
    BLOCK_M: tl.constexpr,
    BLOCK_HI: tl.constexpr,
    BLOCK_LO: tl.constexpr,
    APPROX: tl.constexpr,
):
    """A chunk of rows, BLOCK_M at a time, each row as two parts: columns [0, BLOCK_HI) (all < C) and
    [BLOCK_HI, BLOCK_HI + BLOCK_LO) (masked at C); the per-column parameters are loaded once per program."""
    hi = tl.arange(0, BLOCK_HI)
    lo = BLOCK_HI + tl.arange(0, BLOCK_LO)
    lo_in = (lo < C)[None, :]
    inv_c = 1.0 / C
    a0, a1, a2, a3, a4, a5 = _numerator_coefficients(a_ptr)
    w_hi, beta_hi, b0_hi, b1_hi, b2_hi, b3_hi = _column_parameters(w_ptr, beta_ptr, b_ptr, hi, hi < C, group_size)
    w_lo, beta_lo, b0_lo, b1_lo, b2_lo, b3_lo = _column_parameters(w_ptr, beta_ptr, b_ptr, lo, lo < C, group_size)
    row_begin = tl.program_id(0).to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_begin + rows_per_program, n_rows)
    for row_start in range(row_begin, row_end, BLOCK_M):
        rows = row_start + tl.arange(0, BLOCK_M)
        row_mask = rows < row_end
        mask_hi = row_mask[:, None] & (hi < BLOCK_HI)[None, :]
        mask_lo = row_mask[:, None] & lo_in
        x_hi = _load_tile(x_ptr, rows, hi, stride_xr, stride_xc, mask_hi).to(tl.float32)
        x_lo = _load_tile(x_ptr, rows, lo, stride_xr, stride_xc, mask_lo).to(tl.float32)
        mean = _row_sums(x_hi, x_lo, BLOCK_M, BLOCK_HI, BLOCK_LO) * inv_c
        centred_hi = x_hi - mean[:, None]  # masked rows: x = 0, mean = 0
        centred_lo = tl.where(lo_in, x_lo - mean[:, None], 0.0)
        variance = _row_sums(centred_hi * centred_hi, centred_lo * centred_lo, BLOCK_M, BLOCK_HI, BLOCK_LO) * inv_c
        rstd = 1.0 / tl.sqrt(variance + eps)
        u_hi = centred_hi * rstd[:, None] * w_hi + beta_hi
        u_lo = centred_lo * rstd[:, None] * w_lo + beta_lo
        p_hi, q_hi, _au = _numerator_denominator(u_hi, a0, a1, a2, a3, a4, a5, b0_hi, b1_hi, b2_hi, b3_hi)
        p_lo, q_lo, _au = _numerator_denominator(u_lo, a0, a1, a2, a3, a4, a5, b0_lo, b1_lo, b2_lo, b3_lo)
        y_rows = y_ptr + rows[:, None] * C
        tl.store(y_rows + hi[None, :], (p_hi * _reciprocal(q_hi, APPROX)).to(y_ptr.dtype.element_ty), mask=mask_hi)
        tl.store(y_rows + lo[None, :], (p_lo * _reciprocal(q_lo, APPROX)).to(y_ptr.dtype.element_ty), mask=mask_lo)
        tl.store(mean_ptr + rows, mean, mask=row_mask)
        tl.store(rstd_ptr + rows, rstd, mask=row_mask)


# fmt: off
@triton.jit
def _norm_rational_bwd_part(
    x_ptr, dy_ptr, rows, cols, mask, stride_xr, stride_xc, stride_dyr, stride_dyc, mean, rstd, w, beta,
    a0, a1, a2, a3, a4, a5, da2, da3, da4, da5, b0, b1, b2, b3, APPROX: tl.constexpr,
):
    """One part of a tile: xhat, dxhat = dy F'(u) w and the twelve per-element terms of the parameter gradients
    (du xhat, du, then rational.py's ten), zeros where masked (dy = 0 there)."""
    x = _load_tile(x_ptr, rows, cols, stride_xr, stride_xc, mask).to(tl.float32)
    dy = _load_tile(dy_ptr, rows, cols, stride_dyr, stride_dyc, mask).to(tl.float32)
    xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
    du, t0, t1, t2, t3, t4, t5, t6, t7, t8, t9 = _backward_terms(
        xhat * w + beta, dy, a0, a1, a2, a3, a4, a5, da2, da3, da4, da5, b0, b1, b2, b3, 2.0 * b1, 3.0 * b2, 4.0 * b3,
        APPROX,
    )
    return xhat, du * w, du * xhat, du, t0, t1, t2, t3, t4, t5, t6, t7, t8, t9
# fmt: on


@triton.jit
def _store_column_sums(out, cols, col_mask, C, s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11):
    """Column sums of the twelve accumulators of a part: row k of the program's [12, C] partial block."""
    tl.store(out + cols, tl.sum(s0, axis=0), mask=col_mask)
    tl.store(out + C + cols, tl.sum(s1, axis=0), mask=col_mask)
    tl.store(out + 2 * C + cols, tl.sum(s2, axis=0), mask=col_mask)
    tl.store(out + 3 * C + cols, tl.sum(s3, axis=0), mask=col_mask)
    tl.store(out + 4 * C + cols, tl.sum(s4, axis=0), mask=col_mask)
    tl.store(out + 5 * C + cols, tl.sum(s5, axis=0), mask=col_mask)
    tl.store(out + 6 * C + cols, tl.sum(s6, axis=0), mask=col_mask)
    tl.store(out + 7 * C + cols, tl.sum(s7, axis=0), mask=col_mask)
    tl.store(out + 8 * C + cols, tl.sum(s8, axis=0), mask=col_mask)
    tl.store(out + 9 * C + cols, tl.sum(s9, axis=0), mask=col_mask)
    tl.store(out + 10 * C + cols, tl.sum(s10, axis=0), mask=col_mask)
    tl.store(out + 11 * C + cols, tl.sum(s11, axis=0), mask=col_mask)


@triton.jit
def _norm_rational_bwd_kernel(
    x_ptr,
    dy_ptr,
    dx_ptr,
    mean_ptr,
    rstd_ptr,
    w_ptr,
    beta_ptr,
    a_ptr,
    b_ptr,
    partial_ptr,
    n_rows,
    C,
    group_size,
    rows_per_program,
    stride_xr,
    stride_xc,
    stride_dyr,
    stride_dyc,
    BLOCK_M: tl.constexpr,
    BLOCK_HI: tl.constexpr,
    BLOCK_LO: tl.constexpr,
    APPROX: tl.constexpr,
):
    pid = tl.program_id(0)
    hi = tl.arange(0, BLOCK_HI)
    lo = BLOCK_HI + tl.arange(0, BLOCK_LO)
    lo_in = (lo < C)[None, :]
    inv_c = 1.0 / C
    a0, a1, a2, a3, a4, a5 = _numerator_coefficients(a_ptr)
    da2, da3, da4, da5 = 2.0 * a2, 3.0 * a3, 4.0 * a4, 5.0 * a5
    w_hi, beta_hi, b0_hi, b1_hi, b2_hi, b3_hi = _column_parameters(w_ptr, beta_ptr, b_ptr, hi, hi < C, group_size)
    w_lo, beta_lo, b0_lo, b1_lo, b2_lo, b3_lo = _column_parameters(w_ptr, beta_ptr, b_ptr, lo, lo < C, group_size)
    zero_hi = tl.zeros((BLOCK_M, BLOCK_HI), dtype=tl.float32)
    zero_lo = tl.zeros((BLOCK_M, BLOCK_LO), dtype=tl.float32)
    h0, h1, h2, h3, h4, h5, h6, h7, h8, h9, h10, h11 = (zero_hi,) * 12
    l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11 = (zero_lo,) * 12
    row_begin = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_begin + rows_per_program, n_rows)
    for row_start in range(row_begin, row_end, BLOCK_M):
        rows = row_start + tl.arange(0, BLOCK_M)
        row_mask = rows < row_end
        mask_hi = row_mask[:, None] & (hi < BLOCK_HI)[None, :]
        mask_lo = row_mask[:, None] & lo_in
        mean = tl.load(mean_ptr + rows, mask=row_mask, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
        xhat_hi, dxhat_hi, t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11 = _norm_rational_bwd_part(
            x_ptr, dy_ptr, rows, hi, mask_hi, stride_xr, stride_xc, stride_dyr, stride_dyc, mean, rstd, w_hi,
            beta_hi, a0, a1, a2, a3, a4, a5, da2, da3, da4, da5, b0_hi, b1_hi, b2_hi, b3_hi, APPROX,
        )  # fmt: skip
        h0, h1, h2, h3 = h0 + t0, h1 + t1, h2 + t2, h3 + t3
        h4, h5, h6, h7 = h4 + t4, h5 + t5, h6 + t6, h7 + t7
        h8, h9, h10, h11 = h8 + t8, h9 + t9, h10 + t10, h11 + t11
        xhat_lo, dxhat_lo, t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11 = _norm_rational_bwd_part(
            x_ptr, dy_ptr, rows, lo, mask_lo, stride_xr, stride_xc, stride_dyr, stride_dyc, mean, rstd, w_lo,
            beta_lo, a0, a1, a2, a3, a4, a5, da2, da3, da4, da5, b0_lo, b1_lo, b2_lo, b3_lo, APPROX,
        )  # fmt: skip
        l0, l1, l2, l3 = l0 + t0, l1 + t1, l2 + t2, l3 + t3
        l4, l5, l6, l7 = l4 + t4, l5 + t5, l6 + t6, l7 + t7
        l8, l9, l10, l11 = l8 + t8, l9 + t9, l10 + t10, l11 + t11
        # LayerNorm's backward: dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
        mean_dxhat = _row_sums(dxhat_hi, dxhat_lo, BLOCK_M, BLOCK_HI, BLOCK_LO) * inv_c
        mean_dxhat_xhat = _row_sums(dxhat_hi * xhat_hi, dxhat_lo * xhat_lo, BLOCK_M, BLOCK_HI, BLOCK_LO) * inv_c
        dx_hi = (dxhat_hi - mean_dxhat[:, None] - xhat_hi * mean_dxhat_xhat[:, None]) * rstd[:, None]
        dx_lo = (dxhat_lo - mean_dxhat[:, None] - xhat_lo * mean_dxhat_xhat[:, None]) * rstd[:, None]
        dx_rows = dx_ptr + rows[:, None] * C
        tl.store(dx_rows + hi[None, :], dx_hi.to(dx_ptr.dtype.element_ty), mask=mask_hi)
        tl.store(dx_rows + lo[None, :], dx_lo.to(dx_ptr.dtype.element_ty), mask=mask_lo)
    out = partial_ptr + pid.to(tl.int64) * 12 * C
    _store_column_sums(out, hi, hi < C, C, h0, h1, h2, h3, h4, h5, h6, h7, h8, h9, h10, h11)
    _store_column_sums(out, lo, lo < C, C, l0, l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11)


@triton.jit
def _norm_rational_grads_kernel(
    partial_ptr,
    column_ptr,
    counter_ptr,
    b_ptr,
    dw_ptr,
    dbeta_ptr,
    da_ptr,
    db_ptr,
    programs,
    C,
    group_size,
    groups,
    BLOCK_P: tl.constexpr,
    BLOCK_CC: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    """Program (j, k) adds partial row k of every backward program over columns [j BLOCK_CC, (j + 1) BLOCK_CC) in
    program order: k = 0, 1 are the LayerNorm's weight and bias gradients; k >= 2 go to ``column_ptr[k - 2, :]``.
    The program that draws the last ticket sums each group's columns of those (``BLOCK_G`` >= the group size) in
    column order: the denominator gradients times sign(b) (+1 at 0), and the numerator's summed over groups."""
    cols = tl.program_id(0) * BLOCK_CC + tl.arange(0, BLOCK_CC)
    k = tl.program_id(1)
    col_mask = cols < C
    acc = tl.zeros((BLOCK_P, BLOCK_CC), dtype=tl.float32)
    for start in range(0, programs, BLOCK_P):
        p = start + tl.arange(0, BLOCK_P)
        mask = (p < programs)[:, None] & col_mask[None, :]
        acc += tl.load(partial_ptr + (p.to(tl.int64) * 12 + k)[:, None] * C + cols[None, :], mask=mask, other=0.0)
    total = tl.sum(acc, axis=0)
    if k == 0:
        tl.store(dw_ptr + cols, total.to(dw_ptr.dtype.element_ty), mask=col_mask)
    elif k == 1:
        tl.store(dbeta_ptr + cols, total.to(dbeta_ptr.dtype.element_ty), mask=col_mask)
    else:
        tl.store(column_ptr + (k - 2) * C + cols, total, mask=col_mask)
    tl.debug_barrier()  # every thread's column sums come before the ticket (release)
    ticket = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")
    if ticket == tl.num_programs(0) * tl.num_programs(1) - 1:
        terms = tl.arange(0, 16)
        in_group = tl.arange(0, BLOCK_G)
        numerator = tl.zeros((16,), dtype=tl.float32)
        for group in range(groups):
            c = group * group_size + in_group
            mask = (terms < 10)[:, None] & (in_group < group_size)[None, :]
            sums = tl.load(column_ptr + terms[:, None] * C + c[None, :], mask=mask, other=0.0, cache_modifier=".cg")
            group_total = tl.sum(sums, axis=1)
            numerator += tl.where(terms < 6, group_total, 0.0)
            is_denominator = (terms >= 6) & (terms < 10)
            b = tl.load(b_ptr + group * 4 + (terms - 6), mask=is_denominator, other=0.0)
            d_denominator = group_total * tl.where(b < 0, -1.0, 1.0)
            tl.store(db_ptr + group * 4 + (terms - 6), d_denominator.to(db_ptr.dtype.element_ty), mask=is_denominator)
        tl.store(da_ptr + terms, numerator.to(da_ptr.dtype.element_ty), mask=terms < 6)
        tl.atomic_xchg(counter_ptr, 0)  # ready for the next launch


# ----------------------------------------------------------------------------------------------------------------
# 3. Launchers
# ----------------------------------------------------------------------------------------------------------------

# Elements of a tile per thread: 12 in the forward (a row's two sums over many elements), 6 in the backward (it
# keeps twelve fp32 sums per element and nine per-column parameters in registers: 240-255 registers, two programs
# per SM). Tiles of 4 warps, more for rows too wide for that (docs/design.md §21).
_FWD_PER_THREAD = 2 if INTERPRETER else 12
_BWD_PER_THREAD = 2 if INTERPRETER else 6
# Programs per SM, each a chunk of rows: the backward's partial sums are 12 C floats per program, so few of them;
# the forward's programs take about 125 registers a thread, so 3-4 share an SM and hide each other's loads.
_BWD_PROGRAMS_PER_SM = 2
_FWD_PROGRAMS_PER_SM = 4
_INTERPRETER_SMS = 3  # several programs on small test inputs
_BLOCK_P, _BLOCK_CC = (16, 32) if INTERPRETER else (64, 64)


@functools.cache
def _tiles(channels: int, per_thread: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_HI, BLOCK_LO, num_warps). A row is two power-of-two parts, the largest power of two < C and
    the rest rounded up to one: at C = 3 x 2^k (KAT's widths) both are full and no lane idles, where one power of
    two >= C would leave a quarter idle. BLOCK_M is the power of two of rows that gives 4 warps about
    ``per_thread`` elements a thread each; rows wider than that take more warps (at most 16)."""
    block_hi = max(1, next_power_of_2(channels) // 2)
    block_lo = max(1, next_power_of_2(channels - block_hi))
    width = block_hi + block_lo
    block_m = max(1, next_power_of_2(4 * 32 * per_thread // width + 1) // 2)
    num_warps = min(16, max(4, next_power_of_2(cdiv(block_m * width, 32 * per_thread))))
    return block_m, block_hi, block_lo, num_warps


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; the interpreter's stand-in on CPU tensors, an H200's for fake CUDA
    tensors traced without a GPU (tests/kernels/test_traced_ops.py)."""
    return sm_count(device, _INTERPRETER_SMS if INTERPRETER else H200_SMS)


def _programs(device: torch.device, n_rows: int, block_m: int, per_sm: int) -> tuple[int, int]:
    """(programs, rows per program, a multiple of BLOCK_M): about ``per_sm`` programs per SM, each a chunk of rows
    (its per-column parameters loaded once; the backward's partial sums written once)."""
    rows = _rows_per_program(n_rows, block_m, _sm_count(device) * per_sm)
    return cdiv(n_rows, rows), rows


def _rows_per_program(n_rows: int, block_m: int, programs: int) -> int:
    return cdiv(cdiv(n_rows, programs), block_m) * block_m


def _check_triton_inputs(x, norm_weight, norm_bias, weight_numerator, weight_denominator, eps, out_dtype) -> None:
    check_layer_norm_group_rational_inputs(
        x, norm_weight, norm_bias, weight_numerator, weight_denominator, eps, out_dtype
    )
    check_triton_dtypes("the Triton LayerNorm + group-rational kernel takes", {"x": x})
    check_triton_out_dtype("LayerNorm + group-rational kernel", out_dtype)
    if x.shape[-1] > MAX_CHANNELS:
        raise ValueError(f"the Triton kernel normalises rows of at most {MAX_CHANNELS} channels, got {x.shape[-1]}")
    check_triton_device(x.device)


def layer_norm_group_rational_forward(
    x: Tensor,
    norm_weight: Tensor,
    norm_bias: Tensor,
    weight_numerator: Tensor,
    weight_denominator: Tensor,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton forward: (y, mean, rstd): y of the shape of ``x`` in ``out_dtype`` (default: the dtype of ``x``),
    contiguous; the float32 mean and 1 / std of each row (for the backward). Validates its inputs."""
    _check_triton_inputs(x, norm_weight, norm_bias, weight_numerator, weight_denominator, eps, out_dtype)
    channels = x.shape[-1]
    y = torch.empty(x.shape, dtype=out_dtype or x.dtype, device=x.device)
    x2 = x.reshape(-1, channels)
    n_rows = x2.shape[0]
    mean = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    if n_rows == 0:
        return y, mean, rstd
    block_m, block_hi, block_lo, num_warps = _tiles(channels, _FWD_PER_THREAD)
    programs, rows_per_program = _programs(x.device, n_rows, block_m, _FWD_PROGRAMS_PER_SM)
    with device_guard(x.device):
        launchable(_norm_rational_fwd_kernel)[(programs,)](
            x2,
            y,
            mean,
            rstd,
            norm_weight.contiguous(),
            norm_bias.contiguous(),
            _as_fp32_contiguous(weight_numerator),
            _as_fp32_contiguous(weight_denominator),
            n_rows,
            channels,
            channels // weight_denominator.shape[0],
            rows_per_program,
            x2.stride(0),
            x2.stride(1),
            float(eps),
            BLOCK_M=block_m,
            BLOCK_HI=block_hi,
            BLOCK_LO=block_lo,
            APPROX=not INTERPRETER,
            num_warps=num_warps,
        )
    return y, mean, rstd


def layer_norm_group_rational_backward(
    grad_output: Tensor,
    x: Tensor,
    mean: Tensor,
    rstd: Tensor,
    norm_weight: Tensor,
    norm_bias: Tensor,
    weight_numerator: Tensor,
    weight_denominator: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Triton backward: (dx, d norm_weight, d norm_bias, d weight_numerator, d weight_denominator), from the
    forward's ``mean`` and ``rstd``. dx has the dtype of ``x``; the parameter gradients are summed in float32 (in a
    fixed order) and returned in their parameters' dtypes. Two launches."""
    _check_triton_inputs(x, norm_weight, norm_bias, weight_numerator, weight_denominator, 1.0, None)
    if grad_output.shape != x.shape or grad_output.device != x.device or not grad_output.is_floating_point():
        raise ValueError(
            f"grad_output must be a floating-point tensor of the shape of x {list(x.shape)} on {x.device}, got "
            f"{grad_output.dtype} {list(grad_output.shape)} on {grad_output.device}"
        )
    return _launch_backward(grad_output, x, mean, rstd, norm_weight, norm_bias, weight_numerator, weight_denominator)


def _launch_backward(
    grad_output: Tensor,
    x: Tensor,
    mean: Tensor,
    rstd: Tensor,
    norm_weight: Tensor,
    norm_bias: Tensor,
    weight_numerator: Tensor,
    weight_denominator: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`layer_norm_group_rational_backward` without checking its inputs: for the eager autograd Function,
    whose forward checked them and made ``mean`` and ``rstd`` (autograd passes a gradient of the output's shape,
    dtype and device)."""
    channels = x.shape[-1]
    groups = weight_denominator.shape[0]
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    grads = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (norm_weight, norm_bias)]
    grads += [
        torch.empty_like(t, memory_format=torch.contiguous_format) for t in (weight_numerator, weight_denominator)
    ]
    x2 = x.reshape(-1, channels)
    dy2 = grad_output.reshape(-1, channels)
    n_rows = x2.shape[0]
    if n_rows == 0:
        return dx, *(g.zero_() for g in grads)
    block_m, block_hi, block_lo, num_warps = _tiles(channels, _BWD_PER_THREAD)
    programs, rows_per_program = _programs(x.device, n_rows, block_m, _BWD_PROGRAMS_PER_SM)
    partials = torch.empty(programs * 12 * channels + 10 * channels, dtype=torch.float32, device=x.device)
    b = _as_fp32_contiguous(weight_denominator)
    with device_guard(x.device):
        launchable(_norm_rational_bwd_kernel)[(programs,)](
            x2,
            dy2,
            dx,
            mean,
            rstd,
            norm_weight.contiguous(),
            norm_bias.contiguous(),
            _as_fp32_contiguous(weight_numerator),
            b,
            partials,
            n_rows,
            channels,
            channels // groups,
            rows_per_program,
            x2.stride(0),
            x2.stride(1),
            dy2.stride(0),
            dy2.stride(1),
            BLOCK_M=block_m,
            BLOCK_HI=block_hi,
            BLOCK_LO=block_lo,
            APPROX=not INTERPRETER,
            num_warps=num_warps,
        )
        launchable(_norm_rational_grads_kernel)[(cdiv(channels, _BLOCK_CC), PARTIAL_ROWS)](
            partials,
            partials[programs * 12 * channels :],
            ticket_counters(x.device, 1),
            b,
            *grads,
            programs,
            channels,
            channels // groups,
            groups,
            BLOCK_P=_BLOCK_P,
            BLOCK_CC=_BLOCK_CC,
            BLOCK_G=max(16, next_power_of_2(channels // groups)),
        )
    return dx, *grads


# ----------------------------------------------------------------------------------------------------------------
# 4. The registered op
# ----------------------------------------------------------------------------------------------------------------


@triton_op("zoo::layer_norm_group_rational")
def _norm_rational_op(
    x: Tensor,
    norm_weight: Tensor,
    norm_bias: Tensor,
    weight_numerator: Tensor,
    weight_denominator: Tensor,
    eps: float,
    out_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    return layer_norm_group_rational_forward(
        x, norm_weight, norm_bias, weight_numerator, weight_denominator, eps, out_dtype
    )


@_norm_rational_op.register_fake
def _(x, norm_weight, norm_bias, weight_numerator, weight_denominator, eps, out_dtype=None):
    check_layer_norm_group_rational_inputs(
        x, norm_weight, norm_bias, weight_numerator, weight_denominator, eps, out_dtype
    )
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return (
        x.new_empty(x.shape, dtype=out_dtype or x.dtype),
        x.new_empty(rows, dtype=torch.float32),
        x.new_empty(rows, dtype=torch.float32),
    )


@triton_op("zoo::layer_norm_group_rational_backward")
def _norm_rational_backward_op(
    grad_output: Tensor,
    x: Tensor,
    mean: Tensor,
    rstd: Tensor,
    norm_weight: Tensor,
    norm_bias: Tensor,
    weight_numerator: Tensor,
    weight_denominator: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return layer_norm_group_rational_backward(
        grad_output, x, mean, rstd, norm_weight, norm_bias, weight_numerator, weight_denominator
    )


@_norm_rational_backward_op.register_fake
def _(grad_output, x, mean, rstd, norm_weight, norm_bias, weight_numerator, weight_denominator):
    return (
        x.new_empty(x.shape),
        *(t.new_empty(t.shape) for t in (norm_weight, norm_bias, weight_numerator, weight_denominator)),
    )


def _setup_context(ctx, inputs, output) -> None:
    x, norm_weight, norm_bias, weight_numerator, weight_denominator, _eps, _out_dtype = inputs
    _y, mean, rstd = output
    ctx.save_for_backward(x, mean, rstd, norm_weight, norm_bias, weight_numerator, weight_denominator)
    ctx.mark_non_differentiable(mean, rstd)


def _backward(ctx, grad_output: Tensor, _grad_mean, _grad_rstd):
    return *torch.ops.zoo.layer_norm_group_rational_backward(grad_output, *ctx.saved_tensors), None, None


_norm_rational_op.register_autograd(_backward, setup_context=_setup_context)


class _NormRationalFunction(torch.autograd.Function):
    """Eager autograd of the Triton path: the launchers called directly (no custom-op dispatch)."""

    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, weight_numerator, weight_denominator, eps, out_dtype):
        y, mean, rstd = layer_norm_group_rational_forward(
            x, norm_weight, norm_bias, weight_numerator, weight_denominator, eps, out_dtype
        )
        ctx.save_for_backward(x, mean, rstd, norm_weight, norm_bias, weight_numerator, weight_denominator)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        return *_launch_backward(grad_output, *ctx.saved_tensors), None, None


def _forward_only(x, norm_weight, norm_bias, weight_numerator, weight_denominator, eps, out_dtype) -> Tensor:
    return layer_norm_group_rational_forward(
        x, norm_weight, norm_bias, weight_numerator, weight_denominator, eps, out_dtype
    )[0]


def _registered(x, norm_weight, norm_bias, weight_numerator, weight_denominator, eps, out_dtype) -> Tensor:
    return torch.ops.zoo.layer_norm_group_rational(
        x, norm_weight, norm_bias, weight_numerator, weight_denominator, eps, out_dtype
    )[0]


def layer_norm_group_rational(
    x: Tensor,
    norm_weight: Tensor,
    norm_bias: Tensor,
    weight_numerator: Tensor,
    weight_denominator: Tensor,
    eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
    backend: str = "auto",
) -> Tensor:
    """``group_rational(layer_norm(x, (C,), norm_weight, norm_bias, eps), weight_numerator, weight_denominator)``
    in one pass each way (see the module docstring).

    Args:
        x: ``[..., C]`` float16/bfloat16/float32 (float64 on the reference backend), any strides; C divisible by
            the number of groups, at most 8192 on the Triton path.
        norm_weight, norm_bias: ``[C]``, the LayerNorm's affine parameters.
        weight_numerator, weight_denominator: the rational's ``[1, 6]`` and ``[G, 4]`` coefficients.
        eps: the LayerNorm's epsilon.
        out_dtype: the result's dtype (default: that of ``x``); the float32 result is rounded to it once.
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see :mod:`zoo.kernels._backend`); on CPU tensors every
            backend but ``"triton"`` runs the reference.

    Returns:
        A tensor of the shape of ``x`` and dtype ``out_dtype``, differentiable in the five tensors.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    args = (x, norm_weight, norm_bias, weight_numerator, weight_denominator, eps, out_dtype)
    if resolve_backend(backend, x, TRITON_DTYPES) == "triton" and (
        out_dtype is None or out_dtype in TRITON_DTYPES or requested_backend(backend) == "triton"
    ):  # the launchers validate their inputs
        return dispatch_triton(*args, op=_registered, function=_NormRationalFunction, launcher=_forward_only)
    return layer_norm_group_rational_reference(*args)


# ----------------------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (zoo/kernels/_aot.py; tests/kernels/test_compile_targets.py)
# ----------------------------------------------------------------------------------------------------------------

NORM_WIDTHS = (192, 384, 768)  # kat_t/s/b: norm2 -> mlp.act1 over the embedding, 8 groups
_BENCHMARK_ROWS = 128 * 197  # batch 128 of 197 tokens


def aot_specs() -> list:
    """Compile and loop-report specs: the three kernels at KAT's widths for B128 x L197 tokens, 8 groups, as the KAT
    block calls them under bf16 autocast (float32 residual stream in, bf16 out, bf16 gradient in); at width 768 also
    an all-bf16 and an all-float32 variant. Useful work: an element of x; the gradient kernel's unit is a partial
    sum added. The training case at width 768 is compiled in the tests too (``ci``)."""
    from zoo.kernels._aot import Work, launch_spec

    specs = []
    n_rows = _BENCHMARK_ROWS
    for channels in NORM_WIDTHS:
        groups = 8
        block_m, block_hi, block_lo, fwd_warps = _tiles(channels, _FWD_PER_THREAD)
        bwd_block_m, _hi, _lo, bwd_warps = _tiles(channels, _BWD_PER_THREAD)
        variants = [("fp32", "bf16", "bf16")]
        if channels == 768:
            variants += [("bf16", "bf16", "bf16"), ("fp32", "fp32", "fp32")]
        for x_dtype, y_dtype, dy_dtype in variants:
            training = (x_dtype, y_dtype) == ("fp32", "bf16")
            case = f"B128xL197x{channels}" + ("" if training else f"-{x_dtype}")
            label = f"{x_dtype}->{y_dtype},C{channels}"
            ci = training and channels == 768
            elements = n_rows * channels
            fwd_rows = _rows_per_program(n_rows, block_m, H200_SMS * _FWD_PROGRAMS_PER_SM)
            programs = cdiv(n_rows, fwd_rows)
            common = dict(
                x_ptr=f"*{x_dtype}",
                mean_ptr="*fp32",
                rstd_ptr="*fp32",
                w_ptr="*fp32",
                beta_ptr="*fp32",
                a_ptr="*fp32",
                b_ptr="*fp32",
                n_rows=n_rows,
                C=channels,
                group_size=channels // groups,
                stride_xr=channels,
                stride_xc=1,
                BLOCK_M=block_m,
                BLOCK_HI=block_hi,
                BLOCK_LO=block_lo,
                APPROX=True,
            )
            specs.append(
                launch_spec(
                    f"_norm_rational_fwd_kernel[{label}]@{case}",
                    _norm_rational_fwd_kernel,
                    dict(common, y_ptr=f"*{y_dtype}", rows_per_program=fwd_rows, eps=1e-6),
                    num_warps=fwd_warps,
                    work=Work(
                        case,
                        "element",
                        elements / programs,
                        (n_rows / programs / block_m,),
                        f"{elements} elements / {programs} programs (4 per SM of an H200) of {fwd_rows} rows, in "
                        f"steps of {block_m}",
                    ),
                    ci=ci,
                )
            )
            rows_per_program = _rows_per_program(n_rows, bwd_block_m, H200_SMS * _BWD_PROGRAMS_PER_SM)
            bwd_programs = cdiv(n_rows, rows_per_program)
            trips = n_rows / bwd_programs / bwd_block_m
            specs.append(
                launch_spec(
                    f"_norm_rational_bwd_kernel[{label}]@{case}",
                    _norm_rational_bwd_kernel,
                    dict(
                        common,
                        BLOCK_M=bwd_block_m,
                        dy_ptr=f"*{dy_dtype}",
                        dx_ptr=f"*{x_dtype}",
                        partial_ptr="*fp32",
                        rows_per_program=rows_per_program,
                        stride_dyr=channels,
                        stride_dyc=1,
                    ),
                    num_warps=bwd_warps,
                    work=Work(
                        case,
                        "element",
                        elements / bwd_programs,
                        (trips,),
                        f"{elements} elements / {bwd_programs} programs (2 per SM of an H200) of {rows_per_program} "
                        f"rows, in steps of {bwd_block_m}: {trips:g}",
                    ),
                    ci=ci,
                )
            )
            if not training:
                continue
            grid = cdiv(channels, _BLOCK_CC) * PARTIAL_ROWS
            specs.append(
                launch_spec(
                    f"_norm_rational_grads_kernel[C{channels}]@{case}",
                    _norm_rational_grads_kernel,
                    dict(
                        partial_ptr="*fp32",
                        column_ptr="*fp32",
                        counter_ptr="*i32",
                        b_ptr="*fp32",
                        dw_ptr="*fp32",
                        dbeta_ptr="*fp32",
                        da_ptr="*fp32",
                        db_ptr="*fp32",
                        programs=bwd_programs,
                        C=channels,
                        group_size=channels // groups,
                        groups=groups,
                        BLOCK_P=_BLOCK_P,
                        BLOCK_CC=_BLOCK_CC,
                        BLOCK_G=max(16, next_power_of_2(channels // groups)),
                    ),
                    work=Work(
                        case,
                        "partial",
                        bwd_programs * PARTIAL_ROWS * channels / grid,
                        ((cdiv(bwd_programs, _BLOCK_P), groups / grid),),
                        f"partial sums = {bwd_programs} programs x {PARTIAL_ROWS} x {channels} over {grid} programs, "
                        f"each in steps of {_BLOCK_P} programs; the last one loops over the {groups} groups",
                    ),
                    ci=ci,
                )
            )
    return specs
