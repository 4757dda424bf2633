"""Group-rational activation (GR-KAN, the KAT paper): a "safe Pade" rational function per channel group.

    F(x) = (a0 + a1 x + a2 x^2 + a3 x^3 + a4 x^4 + a5 x^5)
           / (1 + |b0| |x| + |b1| |x|^2 + |b2| |x|^3 + |b3| |x|^4)

acting on the last dimension D of ``x``, split into G contiguous groups of D / G channels: channel d uses the
denominator row ``weight_denominator[d // (D / G)]``; the numerator ``weight_numerator`` [1, 6] is shared by all
groups. Derivatives of |x| and |b| are taken as +1 at exactly 0 (the released kernels' convention; it lets a
denominator initialised at b = 0 learn).

Layout of this file (the kernel contract, docs/design.md §2): the reference, the Triton kernels, the launchers, the
registered op.
"""

from __future__ import annotations

import torch
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
    libdevice,
    next_power_of_2,
    once_differentiable,
    requested_backend,
    resolve_backend,
    ticket_counters,
    tl,
    triton,
    triton_op,
)
from zoo.kernels._cpu_compile import tracing
from zoo.kernels.rational_cpu import group_rational_cpu

NUMERATOR_TERMS = 6  # a0..a5: numerator order m = 5
DENOMINATOR_TERMS = 4  # b0..b3: denominator order n = 4

__all__ = [
    "group_rational",
    "group_rational_reference",
    "group_rational_forward",
    "group_rational_backward",
]


def check_group_rational_inputs(
    x: Tensor, weight_numerator: Tensor, weight_denominator: Tensor, out_dtype: torch.dtype | None = None
) -> None:
    """Raise ``TypeError``/``ValueError`` naming what was expected when the inputs do not fit the op."""
    if out_dtype is not None and not (isinstance(out_dtype, torch.dtype) and out_dtype.is_floating_point):
        raise TypeError(f"out_dtype must be None or a floating-point torch.dtype, got {out_dtype!r}")
    for name, t in (("x", x), ("weight_numerator", weight_numerator), ("weight_denominator", weight_denominator)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
    if weight_numerator.shape != (1, NUMERATOR_TERMS):
        raise ValueError(
            f"weight_numerator must have shape [1, {NUMERATOR_TERMS}] (shared by all groups), "
            f"got {list(weight_numerator.shape)}"
        )
    if (
        weight_denominator.dim() != 2
        or weight_denominator.shape[1] != DENOMINATOR_TERMS
        or not weight_denominator.shape[0]
    ):
        raise ValueError(
            f"weight_denominator must have shape [num_groups, {DENOMINATOR_TERMS}], got {list(weight_denominator.shape)}"
        )
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension (channels last), got a 0-d tensor")
    groups = weight_denominator.shape[0]
    if x.shape[-1] % groups:
        raise ValueError(
            f"the last dimension of x ({x.shape[-1]}) must be divisible by num_groups ({groups}); "
            f"x has shape {list(x.shape)}"
        )
    if not x.device == weight_numerator.device == weight_denominator.device:
        raise ValueError(
            f"x and the coefficients must be on one device, got x on {x.device}, weight_numerator on "
            f"{weight_numerator.device}, weight_denominator on {weight_denominator.device}"
        )


# ----------------------------------------------------------------------------------------------------------------
# 1. Reference
# ----------------------------------------------------------------------------------------------------------------


def _abs_unit_slope_at_zero(t: Tensor) -> Tensor:
    """|t| whose derivative is +1 at t = 0 (autograd's abs'(0) is 0; docs/semantics.md §1.2 wants +1)."""
    return t * torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def group_rational_reference(
    x: Tensor, weight_numerator: Tensor, weight_denominator: Tensor, out_dtype: torch.dtype | None = None
) -> Tensor:
    """Plain-PyTorch group-rational activation; defines the meaning of the op and serves as its CPU path.

    Args:
        x: any shape ``[..., D]``, floating point; D divisible by ``num_groups``.
        weight_numerator: ``[1, 6]`` coefficients a0..a5, shared by all groups.
        weight_denominator: ``[num_groups, 4]`` coefficients b0..b3, one row per group.
        out_dtype: the result's dtype (default: that of ``x``), rounded to once from the float32 result.

    Returns:
        ``F(x)`` with the shape of ``x`` and dtype ``out_dtype``. Arithmetic is in float32 (float64 for float64 inputs);
        gradients flow through autograd with the +1-at-zero convention for |x| and |b|.
    """
    check_group_rational_inputs(x, weight_numerator, weight_denominator, out_dtype)
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    groups = weight_denominator.shape[0]
    xg = x.to(compute_dtype).unflatten(-1, (groups, x.shape[-1] // groups))  # [..., G, D/G]
    a = weight_numerator.to(compute_dtype).reshape(NUMERATOR_TERMS)
    b = _abs_unit_slope_at_zero(weight_denominator.to(compute_dtype)).unsqueeze(-1)  # [G, 4, 1]
    ax = _abs_unit_slope_at_zero(xg)
    numerator = sum(a[i] * xg**i for i in range(NUMERATOR_TERMS))
    denominator = 1 + sum(b[:, j] * ax ** (j + 1) for j in range(DENOMINATOR_TERMS))
    return (numerator / denominator).flatten(-2).to(out_dtype or x.dtype)


# ----------------------------------------------------------------------------------------------------------------
# 2. Triton kernels
#
# Forward: program (i, j) covers BLOCK_N rows x BLOCK_D columns of the [N, D] view of x, columns spanning groups
# (each column gathers its group's |b| from the [G, 4] table, which stays in L1).
# Backward: program (r, c) covers `rows_per_program` rows of BLOCK_D columns of ONE group
# (c = group * col_blocks + column block), so it reduces its coefficient gradients over the whole block in
# registers and writes one partial sum of 10 values; the last program of each group adds the group's partials,
# and the last group the numerator's (tickets; no atomics on data, deterministic): one launch.
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _numerator_coefficients(a_ptr):
    """The six shared numerator coefficients, fp32 scalars."""
    a0 = tl.load(a_ptr + 0)
    a1 = tl.load(a_ptr + 1)
    a2 = tl.load(a_ptr + 2)
    a3 = tl.load(a_ptr + 3)
    a4 = tl.load(a_ptr + 4)
    a5 = tl.load(a_ptr + 5)
    return a0, a1, a2, a3, a4, a5


@triton.jit
def _denominator_coefficients(b_ptr, group, mask):
    """|b0|..|b3| of ``group`` (a scalar or a vector of group indices), fp32."""
    b0 = tl.abs(tl.load(b_ptr + group * 4 + 0, mask=mask, other=0.0))
    b1 = tl.abs(tl.load(b_ptr + group * 4 + 1, mask=mask, other=0.0))
    b2 = tl.abs(tl.load(b_ptr + group * 4 + 2, mask=mask, other=0.0))
    b3 = tl.abs(tl.load(b_ptr + group * 4 + 3, mask=mask, other=0.0))
    return b0, b1, b2, b3


@triton.jit
def _numerator_denominator(x, a0, a1, a2, a3, a4, a5, b0, b1, b2, b3):
    """P(x) and Q(x) by Horner's rule, fp32."""
    ax = tl.abs(x)
    p = a0 + x * (a1 + x * (a2 + x * (a3 + x * (a4 + x * a5))))
    q = 1.0 + ax * (b0 + ax * (b1 + ax * (b2 + ax * b3)))
    return p, q, ax


@triton.jit
def _reciprocal(q, APPROX: tl.constexpr):
    """1 / q for the denominator q >= 1. ``APPROX`` (GPU launches): ``div.approx`` (MUFU.RCP and a multiply, 2 ulp
    like ``div.full``, four instructions fewer per element; beyond 2^126, where the float32 numerator has
    overflowed too, it gives 0 instead of a tiny quotient). Otherwise ``div.full`` (the interpreter, which has no
    libdevice)."""
    if APPROX:
        return libdevice.fast_dividef(1.0, q)
    return 1.0 / q


@triton.jit
def _backward_terms(
    x, dy, a0, a1, a2, a3, a4, a5, da2, da3, da4, da5, b0, b1, b2, b3, db1, db2, db3, APPROX: tl.constexpr
):
    """dy x F'(x) and the ten per-element terms of the coefficient gradients, dL/da_i = dy x^i / Q (i = 0..5) and
    dL/d|b_j| = -dy F |x|^(j+1) / Q (j = 0..3), fp32. From the powers x^2..x^5 computed once (|x|^3 = |x^3|): P, Q,
    P' and dQ/d|x| are sums of coefficient x power products (``da_i`` = i a_i, ``db_j`` = (j + 1) |b_j|), and a
    caller's ``acc += term`` is one FFMA (docs/design.md §21). Elements with dy = 0 (masked) give zeros."""
    ax = tl.abs(x)
    x2 = x * x
    x3 = x2 * x
    x4 = x2 * x2
    x5 = x4 * x
    ax3 = tl.abs(x3)
    p = a0 + a1 * x + a2 * x2 + a3 * x3 + a4 * x4 + a5 * x5
    q = 1.0 + b0 * ax + b1 * x2 + b2 * ax3 + b3 * x4  # >= 1
    dp = a1 + da2 * x + da3 * x2 + da4 * x3 + da5 * x4
    dq_dax = b0 + db1 * ax + db2 * x2 + db3 * ax3
    dq = tl.where(x < 0, -dq_dax, dq_dax)  # d|x|/dx = +1 at x = 0
    inv_q = _reciprocal(q, APPROX)
    f = p * inv_q
    g = dy * inv_q  # dL/dP
    h = g * f
    return (dp - f * dq) * g, g, g * x, g * x2, g * x3, g * x4, g * x5, -h * ax, -h * x2, -h * ax3, -h * x4


@triton.jit
def _load_tile(ptr, rows, cols, stride_rows, stride_cols, mask):
    """Load a [rows, cols] tile of a strided 2-D view (64-bit offsets: any strides, any size)."""
    offsets = rows.to(tl.int64)[:, None] * stride_rows + cols.to(tl.int64)[None, :] * stride_cols
    return tl.load(ptr + offsets, mask=mask, other=0.0)


@triton.jit
def _tile_sum(acc):
    return tl.sum(tl.sum(acc, axis=1), axis=0)


@triton.jit
def _group_rational_fwd_kernel(
    x_ptr,
    y_ptr,
    a_ptr,
    b_ptr,
    n_rows,
    D,
    group_size,
    stride_xr,
    stride_xc,
    TILE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    APPROX: tl.constexpr,
):
    BLOCK_N: tl.constexpr = TILE // BLOCK_D
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < D
    mask = (rows < n_rows)[:, None] & col_mask[None, :]
    a0, a1, a2, a3, a4, a5 = _numerator_coefficients(a_ptr)
    b0, b1, b2, b3 = _denominator_coefficients(b_ptr, cols // group_size, col_mask)
    x = _load_tile(x_ptr, rows, cols, stride_xr, stride_xc, mask)
    p, q, _ax = _numerator_denominator(
        x.to(tl.float32), a0, a1, a2, a3, a4, a5, b0[None, :], b1[None, :], b2[None, :], b3[None, :]
    )
    tl.store(
        y_ptr + rows[:, None] * D + cols[None, :], (p * _reciprocal(q, APPROX)).to(y_ptr.dtype.element_ty), mask=mask
    )


@triton.jit
def _finish_group(partial_ptr, numerator_ptr, b_ptr, db_ptr, group, partials_per_group, BLOCK: tl.constexpr):
    """The last program of ``group``: add the group's partial sums (``partials_per_group`` contiguous rows of 10) in
    a fixed order, store the denominator part times sign(b) (+1 at 0) as the group's gradient, in the weights'
    dtype, and the numerator part (shared by all groups) to ``numerator_ptr[group, :6]`` for the last group. The
    partials are other programs' stores: read from L2 (``.cg``), after the ticket's acquire."""
    k = tl.arange(0, 16)
    acc = tl.zeros((BLOCK, 16), dtype=tl.float32)
    base = partial_ptr + group.to(tl.int64) * partials_per_group * 10
    for start in range(0, partials_per_group, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        mask = (idx < partials_per_group)[:, None] & (k < 10)[None, :]
        acc += tl.load(base + idx[:, None] * 10 + k[None, :], mask=mask, other=0.0, cache_modifier=".cg")
    total = tl.sum(acc, axis=0)
    is_denominator = (k >= 6) & (k < 10)
    b = tl.load(b_ptr + group * 4 + (k - 6), mask=is_denominator, other=0.0)
    d_denominator = total * tl.where(b < 0, -1.0, 1.0)
    tl.store(db_ptr + group * 4 + (k - 6), d_denominator.to(db_ptr.dtype.element_ty), mask=is_denominator)
    tl.store(numerator_ptr + group * 16 + k, total, mask=k < 6)


@triton.jit
def _finish_numerator(numerator_ptr, da_ptr, groups, BLOCK: tl.constexpr):
    """The last group to finish: add the groups' numerator sums in group order; store them in the weights' dtype."""
    k = tl.arange(0, 16)
    acc = tl.zeros((BLOCK, 16), dtype=tl.float32)
    for start in range(0, groups, BLOCK):
        g = start + tl.arange(0, BLOCK)
        mask = (g < groups)[:, None] & (k < 6)[None, :]
        acc += tl.load(numerator_ptr + g[:, None] * 16 + k[None, :], mask=mask, other=0.0, cache_modifier=".cg")
    tl.store(da_ptr + k, tl.sum(acc, axis=0).to(da_ptr.dtype.element_ty), mask=k < 6)


@triton.jit
def _group_rational_bwd_kernel(
    x_ptr,
    dy_ptr,
    dx_ptr,
    a_ptr,
    b_ptr,
    partial_ptr,
    counter_ptr,
    da_ptr,
    db_ptr,
    n_rows,
    D,
    group_size,
    rows_per_program,
    stride_xr,
    stride_xc,
    stride_dyr,
    stride_dyc,
    TILE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FIN_BLOCK: tl.constexpr,
    APPROX: tl.constexpr,
):
    """dx per element, and the coefficient gradients in the same launch: each program reduces the 10 sums of its
    block (6 numerator, 4 denominator before the sign of b) in registers, writes them to
    ``partial_ptr[pid_c, pid_r, :]`` and takes a ticket on its group's counter (one acq_rel atomic); the program
    that draws the group's last ticket adds the group's partials in a fixed order and writes its denominator
    gradient, then takes a ticket on ``counter_ptr[groups]``; the last group adds the numerator sums
    (deterministic, no atomics on data). Each resets its counter for the next launch.

    The loop body is :func:`_backward_terms` (docs/design.md §21)."""
    BLOCK_N: tl.constexpr = TILE // BLOCK_D
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    col_blocks = tl.cdiv(group_size, BLOCK_D)
    group = pid_c // col_blocks
    cols_in_group = (pid_c % col_blocks) * BLOCK_D + tl.arange(0, BLOCK_D)
    cols = group * group_size + cols_in_group
    col_mask = cols_in_group < group_size
    a0, a1, a2, a3, a4, a5 = _numerator_coefficients(a_ptr)
    b0, b1, b2, b3 = _denominator_coefficients(b_ptr, group, True)
    # P'(x) = a1 + 2 a2 x + ... + 5 a5 x^4 and dQ/d|x| = |b0| + 2 |b1| |x| + 3 |b2| x^2 + 4 |b3| |x|^3
    da2, da3, da4, da5 = 2.0 * a2, 3.0 * a3, 4.0 * a4, 5.0 * a5
    db1, db2, db3 = 2.0 * b1, 3.0 * b2, 4.0 * b3
    zero = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    acc_a0, acc_a1, acc_a2, acc_a3, acc_a4, acc_a5 = zero, zero, zero, zero, zero, zero
    acc_b0, acc_b1, acc_b2, acc_b3 = zero, zero, zero, zero
    row_begin = pid_r.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_begin + rows_per_program, n_rows)
    # Software pipelining by hand: the next tile's loads are issued before this tile's arithmetic.
    rows = row_begin + tl.arange(0, BLOCK_N)
    mask = (rows < row_end)[:, None] & col_mask[None, :]
    x_next = _load_tile(x_ptr, rows, cols, stride_xr, stride_xc, mask)
    dy_next = _load_tile(dy_ptr, rows, cols, stride_dyr, stride_dyc, mask)
    for _row_start in range(row_begin, row_end, BLOCK_N):
        x = x_next.to(tl.float32)
        dy = dy_next.to(tl.float32)
        tile_rows = rows
        tile_mask = mask
        rows += BLOCK_N
        mask = (rows < row_end)[:, None] & col_mask[None, :]
        x_next = _load_tile(x_ptr, rows, cols, stride_xr, stride_xc, mask)
        dy_next = _load_tile(dy_ptr, rows, cols, stride_dyr, stride_dyc, mask)
        dx, t0, t1, t2, t3, t4, t5, t6, t7, t8, t9 = _backward_terms(
            x, dy, a0, a1, a2, a3, a4, a5, da2, da3, da4, da5, b0, b1, b2, b3, db1, db2, db3, APPROX
        )
        tl.store(dx_ptr + tile_rows[:, None] * D + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=tile_mask)
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
    out = partial_ptr + (pid_c * tl.num_programs(0) + pid_r) * 10
    tl.store(out + 0, _tile_sum(acc_a0))
    tl.store(out + 1, _tile_sum(acc_a1))
    tl.store(out + 2, _tile_sum(acc_a2))
    tl.store(out + 3, _tile_sum(acc_a3))
    tl.store(out + 4, _tile_sum(acc_a4))
    tl.store(out + 5, _tile_sum(acc_a5))
    tl.store(out + 6, _tile_sum(acc_b0))
    tl.store(out + 7, _tile_sum(acc_b1))
    tl.store(out + 8, _tile_sum(acc_b2))
    tl.store(out + 9, _tile_sum(acc_b3))
    # The last program of the group adds its partials (one ticket per program on the group's counter); the last
    # group to finish adds the groups' numerator sums (a second ticket, on counter[groups]): two short serial steps
    # after the main loop instead of one program walking every partial. Each resets its counter for the next launch.
    tl.debug_barrier()  # every thread's partial stores come before the ticket (release)
    ticket = tl.atomic_add(counter_ptr + group, 1, sem="acq_rel", scope="gpu")
    if ticket == col_blocks * tl.num_programs(0) - 1:
        groups = tl.num_programs(1) // col_blocks
        numerator_ptr = partial_ptr + tl.num_programs(0).to(tl.int64) * tl.num_programs(1) * 10
        _finish_group(partial_ptr, numerator_ptr, b_ptr, db_ptr, group, col_blocks * tl.num_programs(0), FIN_BLOCK)
        tl.atomic_xchg(counter_ptr + group, 0)
        tl.debug_barrier()  # the group's numerator sums come before its ticket
        finished = tl.atomic_add(counter_ptr + groups, 1, sem="acq_rel", scope="gpu")
        if finished == groups - 1:
            _finish_numerator(numerator_ptr, da_ptr, groups, 16)
            tl.atomic_xchg(counter_ptr + groups, 0)


def _configs(tiles_and_warps: tuple[tuple[int, int], ...]) -> list:
    return [triton.Config({"TILE": tile}, num_warps=warps) for tile, warps in tiles_and_warps]


# A program step covers TILE elements: TILE // BLOCK_D rows of BLOCK_D columns (BLOCK_D <= 256 <= TILE).
# Autotuned on the GPU, keyed on the widths (not the batch). The backward keeps ten fp32 accumulators per
# element in registers, so its tiles stay at <= 8 elements per thread (no spills:
# tests/kernels/test_compile_targets.py); at 8 a thread holds about 205 registers (8 resident warps per SM), at 4
# about 110 (16), at 2 (TILE 256 over 4 warps) 64 (32 warps: the loop report's warps/SM): fewer instructions
# per element against more warps to hide the memory's latency, which the autotuner weighs on the GPU (the
# backward measured 37% of copy bandwidth on an H200 with the first five). One fixed small tile under the
# interpreter keeps CPU tests fast.
if INTERPRETER:
    _FWD_CONFIGS = _configs(((256, 1),))
    _BWD_CONFIGS = _configs(((128, 1),))
else:
    _FWD_CONFIGS = _configs(((1024, 4), (2048, 4), (2048, 8), (4096, 4), (4096, 8)))
    _BWD_CONFIGS = _configs(((256, 2), (512, 2), (512, 4), (1024, 4), (1024, 8), (2048, 8), (256, 4)))

_group_rational_fwd = triton.autotune(configs=_FWD_CONFIGS, key=["D", "group_size", "BLOCK_D"])(
    _group_rational_fwd_kernel
)
_group_rational_bwd = triton.autotune(configs=_BWD_CONFIGS, key=["D", "group_size", "BLOCK_D"])(
    _group_rational_bwd_kernel
)


# ----------------------------------------------------------------------------------------------------------------
# 3. Launchers
# ----------------------------------------------------------------------------------------------------------------


def _forward_block_d(width: int) -> int:
    """Columns per forward tile: the whole row up to 256 columns."""
    return min(next_power_of_2(width), 256)


def _backward_block_d(group_size: int) -> int:
    """Columns per backward tile (within one group). The widest power of two from 16 to 128 that divides the group
    leaves no lane idle (groups of 96 in tiles of 32, of 48 in tiles of 16: rows of at least 32 bytes, a whole
    memory sector in 16-bit dtypes). Other groups: one tile up to 64 channels; wider groups in tiles of 128 when
    that leaves at most a quarter of the lanes idle, else of 64 (narrower rows waste memory transactions)."""
    for block in (128, 64, 32, 16):
        if group_size % block == 0:
            return block
    if group_size <= 64:
        return next_power_of_2(group_size)
    for block in (128, 64):
        padded = cdiv(group_size, block) * block
        if 4 * (padded - group_size) <= padded:
            return block
    return 64


# Rows of partial sums the last backward program of a group adds per step.
_FIN_BLOCK = 64

# Elements of x each backward program reduces (rows_per_program * BLOCK_D): enough tiles per program to amortise
# the final reduction, few enough that the grid fills the GPU many times over.
_BWD_ELEMENTS_PER_PROGRAM = 512 if INTERPRETER else 16384


def _check_triton_inputs(
    x: Tensor, weight_numerator: Tensor, weight_denominator: Tensor, out_dtype: torch.dtype | None = None
) -> None:
    check_group_rational_inputs(x, weight_numerator, weight_denominator, out_dtype)
    check_triton_dtypes("the Triton group-rational kernel takes", {"x": x})
    check_triton_out_dtype("group-rational kernel", out_dtype)
    check_triton_device(x.device)


def _as_fp32_contiguous(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()


def _check_block_d(block_d: int, configs: list) -> int:
    """Validate a ``block_d`` override: a power of two no wider than the smallest tile."""
    widest = min(c.kwargs["TILE"] for c in configs)
    if not isinstance(block_d, int) or block_d < 1 or block_d & (block_d - 1) or block_d > widest:
        raise ValueError(f"block_d must be a power of two between 1 and {widest}, got {block_d!r}")
    return block_d


def group_rational_forward(
    x: Tensor,
    weight_numerator: Tensor,
    weight_denominator: Tensor,
    out_dtype: torch.dtype | None = None,
    block_d: int | None = None,
) -> Tensor:
    """Triton forward: F(x), shape of ``x``, dtype ``out_dtype`` (default: that of ``x``), contiguous. Validates its
    inputs.

    ``block_d`` (columns per tile, a power of two) overrides the default choice; for tuning experiments.
    """
    _check_triton_inputs(x, weight_numerator, weight_denominator, out_dtype)
    width = x.shape[-1]
    y = torch.empty(x.shape, dtype=out_dtype or x.dtype, device=x.device)
    if x.numel() == 0:
        return y
    x2 = x.reshape(-1, width)  # a view where the strides allow one (any column stride is fine)
    a, b = _as_fp32_contiguous(weight_numerator), _as_fp32_contiguous(weight_denominator)
    block_d = _forward_block_d(width) if block_d is None else _check_block_d(block_d, _FWD_CONFIGS)
    n_rows = x2.shape[0]

    def grid(meta):
        return (cdiv(n_rows, meta["TILE"] // block_d), cdiv(width, block_d))

    with device_guard(x.device):
        launchable(_group_rational_fwd)[grid](
            x2,
            y,
            a,
            b,
            n_rows,
            width,
            width // weight_denominator.shape[0],
            x2.stride(0),
            x2.stride(1),
            BLOCK_D=block_d,
            APPROX=not INTERPRETER,
        )
    return y


def group_rational_backward(
    grad_output: Tensor, x: Tensor, weight_numerator: Tensor, weight_denominator: Tensor, block_d: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton backward: (dx, d weight_numerator, d weight_denominator).

    dx has the dtype of ``x`` (``grad_output`` may have another: that of the forward's ``out_dtype``); the
    coefficient gradients are accumulated in float32 and returned in the dtype of their coefficients. ``block_d``
    overrides the column tile (tuning experiments).
    """
    _check_triton_inputs(x, weight_numerator, weight_denominator)
    if grad_output.shape != x.shape:
        raise ValueError(f"grad_output must have the shape of x {list(x.shape)}, got {list(grad_output.shape)}")
    if grad_output.device != x.device:
        raise ValueError(f"grad_output must be on the device of x ({x.device}), got {grad_output.device}")
    if not grad_output.is_floating_point():
        raise TypeError(f"grad_output must have a floating-point dtype, got {grad_output.dtype}")
    if block_d is not None:
        _check_block_d(block_d, _BWD_CONFIGS)
    return _launch_backward(grad_output, x, weight_numerator, weight_denominator, block_d)


def _launch_backward(
    grad_output: Tensor, x: Tensor, weight_numerator: Tensor, weight_denominator: Tensor, block_d: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`group_rational_backward` without checking its inputs: for the eager autograd Function, whose forward
    checked them (autograd passes a gradient of the output's shape, dtype and device)."""
    width = x.shape[-1]
    groups = weight_denominator.shape[0]
    group_size = width // groups
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    d_numerator = torch.empty_like(weight_numerator, memory_format=torch.contiguous_format)
    d_denominator = torch.empty_like(weight_denominator, memory_format=torch.contiguous_format)
    if x.numel() == 0:
        return dx, d_numerator.zero_(), d_denominator.zero_()
    x2 = x.reshape(-1, width)
    dy2 = grad_output.reshape(-1, width)
    a, b = _as_fp32_contiguous(weight_numerator), _as_fp32_contiguous(weight_denominator)
    block_d = _backward_block_d(group_size) if block_d is None else block_d
    col_blocks = cdiv(group_size, block_d)
    n_rows = x2.shape[0]
    rows_per_program = max(1, _BWD_ELEMENTS_PER_PROGRAM // block_d)
    row_programs = cdiv(n_rows, rows_per_program)
    # [groups x col_blocks, row_programs, 10] partial sums, then [groups, 16] numerator sums per group
    partials = torch.empty(groups * (col_blocks * row_programs * 10 + 16), dtype=torch.float32, device=x.device)
    with device_guard(x.device):
        launchable(_group_rational_bwd)[(row_programs, groups * col_blocks)](
            x2,
            dy2,
            dx,
            a,
            b,
            partials,
            ticket_counters(x.device, groups + 1),
            d_numerator,
            d_denominator,
            n_rows,
            width,
            group_size,
            rows_per_program,
            x2.stride(0),
            x2.stride(1),
            dy2.stride(0),
            dy2.stride(1),
            BLOCK_D=block_d,
            FIN_BLOCK=_FIN_BLOCK,
            APPROX=not INTERPRETER,
        )
    return dx, d_numerator, d_denominator


# ----------------------------------------------------------------------------------------------------------------
# 4. The registered op
# ----------------------------------------------------------------------------------------------------------------


@triton_op("zoo::group_rational")
def _group_rational_op(
    x: Tensor, weight_numerator: Tensor, weight_denominator: Tensor, out_dtype: torch.dtype | None = None
) -> Tensor:
    return group_rational_forward(x, weight_numerator, weight_denominator, out_dtype)


@_group_rational_op.register_fake
def _(x: Tensor, weight_numerator: Tensor, weight_denominator: Tensor, out_dtype: torch.dtype | None = None) -> Tensor:
    check_group_rational_inputs(x, weight_numerator, weight_denominator, out_dtype)
    return x.new_empty(x.shape, dtype=out_dtype or x.dtype)


@triton_op("zoo::group_rational_backward")
def _group_rational_backward_op(
    grad_output: Tensor, x: Tensor, weight_numerator: Tensor, weight_denominator: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    return group_rational_backward(grad_output, x, weight_numerator, weight_denominator)


@_group_rational_backward_op.register_fake
def _(grad_output: Tensor, x: Tensor, weight_numerator: Tensor, weight_denominator: Tensor):
    return (
        x.new_empty(x.shape),
        weight_numerator.new_empty(weight_numerator.shape),
        weight_denominator.new_empty(weight_denominator.shape),
    )


def _setup_context(ctx, inputs, output) -> None:
    x, weight_numerator, weight_denominator, _out_dtype = inputs
    ctx.save_for_backward(x, weight_numerator, weight_denominator)


def _backward(ctx, grad_output: Tensor):
    x, weight_numerator, weight_denominator = ctx.saved_tensors
    return *torch.ops.zoo.group_rational_backward(grad_output, x, weight_numerator, weight_denominator), None


_group_rational_op.register_autograd(_backward, setup_context=_setup_context)


class _GroupRationalFunction(torch.autograd.Function):
    """Eager autograd of the Triton path: the launchers are called directly, skipping two custom-op dispatches
    per call (host time matters: the op is memory-bound and short). ``torch.compile`` traces the registered op
    ``zoo::group_rational`` instead; both run the same launchers."""

    @staticmethod
    def forward(
        ctx, x: Tensor, weight_numerator: Tensor, weight_denominator: Tensor, out_dtype: torch.dtype | None
    ) -> Tensor:
        ctx.save_for_backward(x, weight_numerator, weight_denominator)
        return group_rational_forward(x, weight_numerator, weight_denominator, out_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        return *_launch_backward(grad_output, *ctx.saved_tensors), None


def group_rational(
    x: Tensor,
    weight_numerator: Tensor,
    weight_denominator: Tensor,
    backend: str = "auto",
    *,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """Group-rational activation F(x) over the last dimension of ``x`` (see the module docstring).

    Args:
        x: ``[..., D]`` float16/bfloat16/float32 (float64 on the reference backend); any strides.
        weight_numerator: ``[1, 6]``, shared by all groups; kept in float32 under autocast.
        weight_denominator: ``[num_groups, 4]``; D must be divisible by ``num_groups``.
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see :mod:`zoo.kernels._backend`); on CPU tensors
            ``"auto"`` runs the fused CPU path of :mod:`zoo.kernels.rational_cpu` (same results, one pass where a
            C++ compiler is available), ``"torch"`` the reference.
        out_dtype: the result's dtype, default that of ``x``. The float32 result is rounded to it once, so that
            ``group_rational(x, a, b, out_dtype=torch.bfloat16)`` equals ``group_rational(x, a, b).bfloat16()``
            without the second pass (KAN's first activation writes what autocast's ``fc1`` reads); the gradient of
            ``x`` keeps the dtype of ``x``.

    Returns:
        A tensor of the shape of ``x`` and dtype ``out_dtype``; differentiable in the three tensors.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if resolve_backend(backend, x, TRITON_DTYPES) == "triton" and (
        out_dtype is None or out_dtype in TRITON_DTYPES or requested_backend(backend) == "triton"
    ):  # the launchers validate their inputs
        return dispatch_triton(
            x,
            weight_numerator,
            weight_denominator,
            out_dtype,
            op=torch.ops.zoo.group_rational,
            function=_GroupRationalFunction,
            launcher=group_rational_forward,
        )
    if x.device.type == "cpu" and requested_backend(backend) == "auto" and not tracing():
        check_group_rational_inputs(x, weight_numerator, weight_denominator, out_dtype)
        if x.numel():  # the fused CPU path (zoo/kernels/rational_cpu.py)
            return group_rational_cpu(x, weight_numerator, weight_denominator).to(out_dtype or x.dtype)
    return group_rational_reference(x, weight_numerator, weight_denominator, out_dtype)


# ----------------------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (zoo/kernels/_aot.py; tests/kernels/test_compile_targets.py)
# ----------------------------------------------------------------------------------------------------------------


KAT_WIDTHS = (192, 384, 768, 1536, 3072)  # the dims and 4x MLP widths of kat_t/s/b, in 8 groups


def aot_specs() -> list:
    """Compile specs (zoo/kernels/_aot.py): every autotune configuration of the forward and backward kernels at the
    column tiles the KAT widths use, for bf16 (the training dtype), and at the widest tile for fp32/fp16; one
    spec per kernel with no stride specialisation (non-contiguous inputs). The backward's last program adds the
    coefficient gradients' partial sums itself (no second kernel)."""
    from zoo.kernels._aot import KernelSpec

    fwd_block_ds = sorted({_forward_block_d(width) for width in KAT_WIDTHS})
    bwd_block_ds = sorted({_backward_block_d(width // 8) for width in KAT_WIDTHS})
    # The JIT's launch-time specialisations of contiguous ViT activations: D, row strides and the row count of
    # a backward program are multiples of 16, the column stride is 1, the pointers 16-byte aligned.
    contiguous = {
        "n_rows": "i32",
        "D": "i32:16",
        "group_size": "i32:16",
        "rows_per_program": "i32:16",
        "stride_xr": "i32:16",
        "stride_xc": "i32:1",
        "stride_dyr": "i32:16",
        "stride_dyc": "i32:1",
    }
    strided = dict.fromkeys(contiguous, "i32")

    specs = []
    for dtype in ("bf16", "fp32", "fp16"):
        pointers = dict.fromkeys(("x_ptr", "y_ptr", "dy_ptr", "dx_ptr"), f"*{dtype}:16")
        pointers.update(dict.fromkeys(("a_ptr", "b_ptr", "partial_ptr", "da_ptr", "db_ptr"), "*fp32:16"))
        pointers["counter_ptr"] = "*i32:16"
        for kernel, configs, block_ds, constexprs in (
            (_group_rational_fwd_kernel, _FWD_CONFIGS, fwd_block_ds, {"APPROX": True}),
            (_group_rational_bwd_kernel, _BWD_CONFIGS, bwd_block_ds, {"APPROX": True, "FIN_BLOCK": _FIN_BLOCK}),
        ):
            if dtype != "bf16":
                block_ds = block_ds[-1:]
            variants = [("", contiguous, config, block_d) for config in configs for block_d in block_ds]
            if dtype == "bf16":
                variants.append((",strided", strided, configs[0], block_ds[-1]))
            for label, ints, config, block_d in variants:
                signature = {
                    name: pointers.get(name) or ints[name]
                    for name in kernel.arg_names
                    if name in pointers or name in ints
                }
                specs.append(
                    KernelSpec(
                        name=f"{kernel.__name__}[{dtype},T{config.kwargs['TILE']},D{block_d},"
                        f"w{config.num_warps}{label}]",
                        fn=kernel,
                        signature=signature,
                        constexprs={**config.kwargs, "BLOCK_D": block_d, **constexprs},
                        num_warps=config.num_warps,
                    )
                )
    return specs + benchmark_specs()


RATIONAL_BENCHMARKS = ((128 * 197, 768, 8), (128 * 197, 3072, 8))  # scripts/benchmark.py: rational_cases


def benchmark_specs() -> list:
    """Loop-report specs (zoo/kernels/_aot.py --loops): every autotune configuration of the forward and backward
    kernels at KAT's benchmarked MLP inputs (B 128 x L 197 rows of D channels, 8
    groups, bf16, contiguous), with the arguments the launchers pass and the useful work of a program: the
    elements of x it covers (idle lanes of a column tile wider than a group are cost); the backward loops over
    its rows in steps of TILE / BLOCK_D. The first configuration of each kernel at D 768 is compiled in the tests
    too (``ci``)."""
    from zoo.kernels._aot import Work, launch_spec

    specs = []
    pointers = dict.fromkeys(("x_ptr", "y_ptr", "dy_ptr", "dx_ptr"), "*bf16")
    pointers.update(dict.fromkeys(("a_ptr", "b_ptr", "partial_ptr", "da_ptr", "db_ptr"), "*fp32"))
    pointers["counter_ptr"] = "*i32"
    for n_rows, width, groups in RATIONAL_BENCHMARKS:
        case = f"B128xL197x{width}"
        group_size = width // groups
        elements = n_rows * width
        block_d = _forward_block_d(width)
        for index, config in enumerate(_FWD_CONFIGS):
            tile = config.kwargs["TILE"]
            programs = cdiv(n_rows, tile // block_d) * cdiv(width, block_d)
            args = dict(
                **{name: pointers[name] for name in ("x_ptr", "y_ptr", "a_ptr", "b_ptr")},
                n_rows=n_rows,
                D=width,
                group_size=group_size,
                stride_xr=width,
                stride_xc=1,
                TILE=tile,
                BLOCK_D=block_d,
                APPROX=True,
            )
            specs.append(
                launch_spec(
                    f"_group_rational_fwd_kernel[bf16,T{tile},D{block_d},w{config.num_warps}]@{case}",
                    _group_rational_fwd_kernel,
                    args,
                    num_warps=config.num_warps,
                    num_stages=config.num_stages,
                    work=Work(
                        case, "element", elements / programs, (), f"elements = {elements}; programs = {programs}"
                    ),
                    ci=index == 0 and width == 768,
                )
            )
        block_d = _backward_block_d(group_size)
        col_blocks = cdiv(group_size, block_d)
        rows_per_program = max(1, _BWD_ELEMENTS_PER_PROGRAM // block_d)
        row_programs = cdiv(n_rows, rows_per_program)
        for index, config in enumerate(_BWD_CONFIGS):
            tile = config.kwargs["TILE"]
            programs = row_programs * groups * col_blocks
            lengths = [min(rows_per_program, n_rows - start) for start in range(0, n_rows, rows_per_program)]
            trips = sum(cdiv(length, tile // block_d) for length in lengths) / row_programs
            args = dict(
                **{
                    name: pointers[name]
                    for name in (
                        "x_ptr",
                        "dy_ptr",
                        "dx_ptr",
                        "a_ptr",
                        "b_ptr",
                        "partial_ptr",
                        "counter_ptr",
                        "da_ptr",
                        "db_ptr",
                    )
                },
                n_rows=n_rows,
                D=width,
                group_size=group_size,
                rows_per_program=rows_per_program,
                stride_xr=width,
                stride_xc=1,
                stride_dyr=width,
                stride_dyc=1,
                TILE=tile,
                BLOCK_D=block_d,
                FIN_BLOCK=_FIN_BLOCK,
                APPROX=True,
            )
            partials_per_group = col_blocks * row_programs
            final_trips = cdiv(partials_per_group, _FIN_BLOCK)
            formula = (
                f"elements = {elements}; programs = {row_programs} row chunks of {rows_per_program} x {groups} groups "
                f"x {col_blocks} column blocks of {block_d} ({group_size} channels per group) = {programs}; loop over "
                f"a chunk's rows in steps of {tile // block_d}: {trips:g}; the last program of each group loops over "
                f"cdiv({partials_per_group}, {_FIN_BLOCK}) = {final_trips} blocks of its partials ({groups} of the "
                f"{programs} programs), the last group once over the groups' numerator sums"
            )
            specs.append(
                launch_spec(
                    f"_group_rational_bwd_kernel[bf16,T{tile},D{block_d},w{config.num_warps}]@{case}",
                    _group_rational_bwd_kernel,
                    args,
                    num_warps=config.num_warps,
                    num_stages=config.num_stages,
                    work=Work(
                        case,
                        "element",
                        elements / programs,
                        ((trips, groups * final_trips / programs, 1 / programs),),
                        formula,
                    ),
                    ci=index == 0 and width == 768,
                )
            )
    return specs
