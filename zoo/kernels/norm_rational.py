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

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.kernels._backend import (
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
    requested_backend,
    resolve_backend,
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
# Forward: a program walks a chunk of rows, BLOCK_M whole rows at a time (BLOCK_C >= C columns in registers):
# normalises them, applies F and stores y, the rows' mean and 1 / std. Backward: program p walks a chunk of rows,
# BLOCK_M at a time: u and F'(u) from x and the saved statistics, du = dy F'(u), dx from du by LayerNorm's backward
# (two row sums), and keeps per column the sums of du xhat, du and the ten coefficient terms; it writes them as
# partial[p, 12, C]. The second kernel adds the partials of a block of columns per program (the LayerNorm
# gradients), and the program that draws the last ticket adds the columns of each group (the rational's
# coefficients).
# ----------------------------------------------------------------------------------------------------------------

PARTIAL_ROWS = 12  # d norm_weight, d norm_bias, then the ten coefficient terms of rational.py's _backward_terms


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
    BLOCK_C: tl.constexpr,
    APPROX: tl.constexpr,
):
    """A chunk of rows, BLOCK_M at a time; the per-column parameters (the LayerNorm's, each column's group
    coefficients) are loaded once per program."""
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    inv_c = 1.0 / C
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    beta = tl.load(beta_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    a0, a1, a2, a3, a4, a5 = _numerator_coefficients(a_ptr)
    b0, b1, b2, b3 = _denominator_coefficients(b_ptr, cols // group_size, col_mask)
    b0, b1, b2, b3 = b0[None, :], b1[None, :], b2[None, :], b3[None, :]
    row_begin = tl.program_id(0).to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_begin + rows_per_program, n_rows)
    for row_start in range(row_begin, row_end, BLOCK_M):
        rows = row_start + tl.arange(0, BLOCK_M)
        row_mask = rows < row_end
        mask = row_mask[:, None] & col_mask[None, :]
        x = _load_tile(x_ptr, rows, cols, stride_xr, stride_xc, mask).to(tl.float32)
        mean = tl.sum(x, axis=1) * inv_c
        centred = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) * inv_c + eps)
        u = centred * rstd[:, None] * w + beta
        p, q, _au = _numerator_denominator(u, a0, a1, a2, a3, a4, a5, b0, b1, b2, b3)
        y = p * _reciprocal(q, APPROX)
        tl.store(y_ptr + rows[:, None] * C + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(mean_ptr + rows, mean, mask=row_mask)
        tl.store(rstd_ptr + rows, rstd, mask=row_mask)


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
    BLOCK_C: tl.constexpr,
    APPROX: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < C
    inv_c = 1.0 / C
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    beta = tl.load(beta_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    a0, a1, a2, a3, a4, a5 = _numerator_coefficients(a_ptr)
    da2, da3, da4, da5 = 2.0 * a2, 3.0 * a3, 4.0 * a4, 5.0 * a5
    b0, b1, b2, b3 = _denominator_coefficients(b_ptr, cols // group_size, col_mask)
    b0, b1, b2, b3 = b0[None, :], b1[None, :], b2[None, :], b3[None, :]
    db1, db2, db3 = 2.0 * b1, 3.0 * b2, 4.0 * b3
    zero = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    acc_w, acc_beta = zero, zero
    acc_a0, acc_a1, acc_a2, acc_a3, acc_a4, acc_a5 = zero, zero, zero, zero, zero, zero
    acc_b0, acc_b1, acc_b2, acc_b3 = zero, zero, zero, zero
    row_begin = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_begin + rows_per_program, n_rows)
    for row_start in range(row_begin, row_end, BLOCK_M):
        rows = row_start + tl.arange(0, BLOCK_M)
        row_mask = rows < row_end
        mask = row_mask[:, None] & col_mask[None, :]
        x = _load_tile(x_ptr, rows, cols, stride_xr, stride_xc, mask).to(tl.float32)
        dy = _load_tile(dy_ptr, rows, cols, stride_dyr, stride_dyc, mask).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=row_mask, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        du, t0, t1, t2, t3, t4, t5, t6, t7, t8, t9 = _backward_terms(
            xhat * w + beta, dy, a0, a1, a2, a3, a4, a5, da2, da3, da4, da5, b0, b1, b2, b3, db1, db2, db3, APPROX
        )  # masked elements: dy = 0, so du and every term are 0
        acc_w += du * xhat
        acc_beta += du
        acc_a0 += t0
        acc_a1 += t1
        acc_a2 += t2
        acc_a3 += t3
        acc_a4 += t4
        acc_a5 += t5
        acc_b0 += t6
        acc_b1 += t7
        acc_b2 += t8
        acc_b3 += t9
        # LayerNorm's backward: dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = du w
        dxhat = du * w
        mean_dxhat = tl.sum(dxhat, axis=1) * inv_c
        mean_dxhat_xhat = tl.sum(dxhat * xhat, axis=1) * inv_c
        dx = (dxhat - mean_dxhat[:, None] - xhat * mean_dxhat_xhat[:, None]) * rstd[:, None]
        tl.store(dx_ptr + rows[:, None] * C + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=mask)
    out = partial_ptr + pid.to(tl.int64) * 12 * C + cols
    tl.store(out, tl.sum(acc_w, axis=0), mask=col_mask)
    tl.store(out + C, tl.sum(acc_beta, axis=0), mask=col_mask)
    tl.store(out + 2 * C, tl.sum(acc_a0, axis=0), mask=col_mask)
    tl.store(out + 3 * C, tl.sum(acc_a1, axis=0), mask=col_mask)
    tl.store(out + 4 * C, tl.sum(acc_a2, axis=0), mask=col_mask)
    tl.store(out + 5 * C, tl.sum(acc_a3, axis=0), mask=col_mask)
    tl.store(out + 6 * C, tl.sum(acc_a4, axis=0), mask=col_mask)
    tl.store(out + 7 * C, tl.sum(acc_a5, axis=0), mask=col_mask)
    tl.store(out + 8 * C, tl.sum(acc_b0, axis=0), mask=col_mask)
    tl.store(out + 9 * C, tl.sum(acc_b1, axis=0), mask=col_mask)
    tl.store(out + 10 * C, tl.sum(acc_b2, axis=0), mask=col_mask)
    tl.store(out + 11 * C, tl.sum(acc_b3, axis=0), mask=col_mask)


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

# A tile is BLOCK_M rows of BLOCK_C >= C columns, 1024 elements (256 on the interpreter): 8 per thread in the
# forward (4 warps: a row's two sums cost few instructions per element), 4 in the backward (8 warps: it keeps twelve
# fp32 sums per element and nine per-column parameters in registers).
_TILE = 256 if INTERPRETER else 1024
_FWD_WARPS = 4
_BWD_WARPS = 8
# Programs per SM, each a chunk of rows: the backward's partial sums are 12 C floats per program, so few of them;
# the forward's programs take about 60 registers a thread, so several share an SM and hide each other's loads.
_BWD_PROGRAMS_PER_SM = 2
_FWD_PROGRAMS_PER_SM = 4
_INTERPRETER_SMS = 3  # several programs on small test inputs
_H200_SMS = 132  # the AOT specs' GPU, and traced graphs without one
_BLOCK_P, _BLOCK_CC = (16, 32) if INTERPRETER else (64, 64)


def _tiles(channels: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_C): the whole row (a power of two >= C) and as many rows as fill the tile."""
    block_c = max(16, next_power_of_2(channels))
    return max(1, _TILE // block_c), block_c


_SM_COUNT: dict[torch.device, int] = {}


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``, looked up once per device; the interpreter's stand-in on CPU tensors,
    an H200's for fake CUDA tensors traced without a GPU (tests/kernels/test_traced_ops.py)."""
    sms = _SM_COUNT.get(device)
    if sms is None:
        if device.type == "cuda" and torch.cuda.is_available():
            sms = torch.cuda.get_device_properties(device).multi_processor_count
        else:
            sms = _INTERPRETER_SMS if INTERPRETER else _H200_SMS
        _SM_COUNT[device] = sms
    return sms


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
    block_m, block_c = _tiles(channels)
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
            BLOCK_C=block_c,
            APPROX=not INTERPRETER,
            num_warps=_FWD_WARPS,
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
    block_m, block_c = _tiles(channels)
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
            BLOCK_C=block_c,
            APPROX=not INTERPRETER,
            num_warps=_BWD_WARPS,
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
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: Tensor):
        return *layer_norm_group_rational_backward(grad_output, *ctx.saved_tensors), None, None


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
        block_m, block_c = _tiles(channels)
        variants = [("fp32", "bf16", "bf16")]
        if channels == 768:
            variants += [("bf16", "bf16", "bf16"), ("fp32", "fp32", "fp32")]
        for x_dtype, y_dtype, dy_dtype in variants:
            training = (x_dtype, y_dtype) == ("fp32", "bf16")
            case = f"B128xL197x{channels}" + ("" if training else f"-{x_dtype}")
            label = f"{x_dtype}->{y_dtype},C{channels}"
            ci = training and channels == 768
            elements = n_rows * channels
            fwd_rows = _rows_per_program(n_rows, block_m, _H200_SMS * _FWD_PROGRAMS_PER_SM)
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
                BLOCK_C=block_c,
                APPROX=True,
            )
            specs.append(
                launch_spec(
                    f"_norm_rational_fwd_kernel[{label}]@{case}",
                    _norm_rational_fwd_kernel,
                    dict(common, y_ptr=f"*{y_dtype}", rows_per_program=fwd_rows, eps=1e-6),
                    num_warps=_FWD_WARPS,
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
            rows_per_program = _rows_per_program(n_rows, block_m, _H200_SMS * _BWD_PROGRAMS_PER_SM)
            bwd_programs = cdiv(n_rows, rows_per_program)
            trips = n_rows / bwd_programs / block_m
            specs.append(
                launch_spec(
                    f"_norm_rational_bwd_kernel[{label}]@{case}",
                    _norm_rational_bwd_kernel,
                    dict(
                        common,
                        dy_ptr=f"*{dy_dtype}",
                        dx_ptr=f"*{x_dtype}",
                        partial_ptr="*fp32",
                        rows_per_program=rows_per_program,
                        stride_dyr=channels,
                        stride_dyc=1,
                    ),
                    num_warps=_BWD_WARPS,
                    work=Work(
                        case,
                        "element",
                        elements / bwd_programs,
                        (trips,),
                        f"{elements} elements / {bwd_programs} programs (2 per SM of an H200) of {rows_per_program} "
                        f"rows, in steps of {block_m}: {trips:g}",
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
