"""GELU followed by global response normalisation, in two launches each way: UniRepLKNet's ``act`` (ConvNeXt V2's
GRN after the exact GELU).

For ``h`` of shape [B, H, W, C] (NHWC, the first Linear's output), with ``a = GELU(h)`` (exact, erf):

    Gx[b, c] = ||a[b, :, :, c]||_2,     Nx[b, c] = Gx[b, c] / (mean_c Gx[b, c] + eps),
    y = a * (1 + gamma * Nx) + beta     (beta optional: the deployed form has none)

computed in float32 and rounded once to ``out_dtype`` (default: the dtype of ``h``; under autocast the block asks
for autocast's dtype, which is what the second Linear reads). The modules (``nn.GELU`` then ``GRN``) make about
seven passes over the 4C-wide hidden tensor forward and a dozen backward, and under autocast write GRN's result in
float32; here the forward reads ``h`` twice and writes ``y`` once, the backward reads ``h`` and ``dy`` twice and
writes ``dh`` once (docs/design.md §22).

Layout of this file (the kernel contract, docs/design.md §2): the reference, the Triton kernels, the launchers, the
registered op.
"""

from __future__ import annotations

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
    once_differentiable,
    requested_backend,
    resolve_backend,
    ticket_counters,
    tl,
    triton,
    triton_op,
)
from zoo.kernels._gelu import gelu, gelu_and_slope
from zoo.kernels._sample_tiles import (
    MAX_BATCH,
    blocks,
    chunk_rows,
    geometry,
    load_row,
    load_tile,
    merged_positions,
    positions_per_chunk,
    store_row,
    store_tile,
    tile_pointers,
)

__all__ = ["gelu_grn", "gelu_grn_reference", "gelu_grn_forward", "gelu_grn_backward"]

GRN_EPS = 1e-6  # GRN's constant (ConvNeXt V2, UniRepLKNet)


def check_gelu_grn_inputs(
    h: Tensor, gamma: Tensor, beta: Tensor | None, eps: float, out_dtype: torch.dtype | None
) -> None:
    """Raise ``TypeError``/``ValueError`` naming what was expected when the inputs do not fit the op."""
    if not isinstance(h, Tensor) or not h.is_floating_point():
        raise TypeError(f"h must be a floating-point torch.Tensor, got {getattr(h, 'dtype', type(h))}")
    if h.dim() != 4:
        raise ValueError(f"h must be [B, H, W, C] (NHWC), got shape {list(h.shape)}")
    channels = h.shape[-1]
    for name, t in (("gamma", gamma), ("beta", beta)):
        if t is None and name == "beta":
            continue
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got {getattr(t, 'dtype', type(t))}")
        if t.numel() != channels or (t.dim() and t.shape[-1] != channels):
            raise ValueError(
                f"{name} must hold C = {channels} values ([C] or [1, 1, 1, C], C the last dimension of h), got "
                f"shape {list(t.shape)}"
            )
        if t.device != h.device:
            raise ValueError(f"{name} must be on the device of h ({h.device}), got {t.device}")
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    if out_dtype is not None and not (isinstance(out_dtype, torch.dtype) and out_dtype.is_floating_point):
        raise TypeError(f"out_dtype must be None or a floating-point torch.dtype, got {out_dtype!r}")


# ----------------------------------------------------------------------------------------------------------------
# 1. Reference
# ----------------------------------------------------------------------------------------------------------------


def gelu_grn_reference(
    h: Tensor,
    gamma: Tensor,
    beta: Tensor | None = None,
    eps: float = GRN_EPS,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """Plain PyTorch: ``GRN(GELU(h))`` in float32 (float64 for float64 input), rounded once to ``out_dtype``
    (default: the dtype of ``h``). Defines the op's meaning; differentiable through autograd (the norm's gradient
    is zero where a channel's norm is, as ``torch.norm``'s)."""
    check_gelu_grn_inputs(h, gamma, beta, eps, out_dtype)
    channels = h.shape[-1]
    compute_dtype = torch.promote_types(h.dtype, torch.float32)
    with torch.autocast(h.device.type, enabled=False):
        a = F.gelu(h.to(compute_dtype))
        gx = torch.linalg.vector_norm(a, 2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + eps)
        y = (gamma.reshape(channels).to(compute_dtype) * nx + 1) * a
        if beta is not None:
            y = y + beta.reshape(channels).to(compute_dtype)
    return y.to(out_dtype or h.dtype)


# ----------------------------------------------------------------------------------------------------------------
# 2. Triton kernels
#
# Every kernel runs on the grid (chunks, channel blocks, samples) of zoo/kernels/_sample_tiles.py: program (k, j, b)
# walks the positions [k R, (k + 1) R) of sample b (R = rows_per_chunk, a multiple of BLOCK_P) in tiles of BLOCK_P
# positions x BLOCK_C channels, the full tiles without masks and the chunk's last, partial tile masked.
#
# Forward: the sums kernel writes each program's column sums of a^2 and takes a ticket on its sample's counter; the
# program that draws the sample's last ticket adds the chunks' sums in chunk order, writes Gx[b, :] and the sample's
# scale 1 / (mean_c Gx + eps). The apply kernel then writes y = a (1 + gamma Gx scale) + beta.
# Backward: the sums kernel writes the column sums of dy a and dy per program; the sample's last program adds them
# (P, D [B, 2, C]) and writes the sample's coefficient coef = scale^2 / C sum_c gamma P Gx. The apply kernel writes
# dh = (dy (1 + gamma Nx) + a dGx / Gx) GELU'(h), dGx = scale gamma P - coef; its programs (0, j, 0) also add
# d gamma = sum_b Nx P and d beta = sum_b D over the samples, in sample order. Deterministic; no atomics but the
# tickets.
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _squares_tile(
    h_base, rows, row_end, cols, C, stride_hp, stride_hc, MASK_ROWS: tl.constexpr, EVEN_C: tl.constexpr,
    APPROX: tl.constexpr,
):  # fmt: skip
    h = load_tile(tile_pointers(h_base, rows, cols, stride_hp, stride_hc), rows, row_end, cols, C, MASK_ROWS, EVEN_C)
    a = gelu(h, APPROX)
    return a * a


@triton.jit
def _gelu_grn_sums_kernel(
    h_ptr,
    partial_ptr,
    stats_ptr,
    counter_ptr,
    P,
    C,
    rows_per_chunk,
    stride_hb,
    stride_hp,
    stride_hc,
    eps,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
    BLOCK_F: tl.constexpr,
    APPROX: tl.constexpr,
):
    """Column sums of GELU(h)^2 per program (partial[b, k, :]); the sample's last program: the sample's row of
    stats, Gx[b, :] and then its scale 1 / (mean_c Gx + eps)."""
    b = tl.program_id(2)
    chunks = tl.num_programs(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offsets = tl.arange(0, BLOCK_P)
    h_base = h_ptr + b.to(tl.int64) * stride_hb
    row_begin, full_end, row_end = chunk_rows(P, rows_per_chunk, BLOCK_P)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for start in range(row_begin, full_end, BLOCK_P):
        acc += _squares_tile(h_base, start + offsets, row_end, cols, C, stride_hp, stride_hc, False, EVEN_C, APPROX)
    if full_end < row_end:
        acc += _squares_tile(h_base, full_end + offsets, row_end, cols, C, stride_hp, stride_hc, True, EVEN_C, APPROX)
    partial_b = partial_ptr + b.to(tl.int64) * chunks * C
    store_row(partial_b + tl.program_id(0) * C, tl.sum(acc, axis=0), cols, C, EVEN_C)
    tl.debug_barrier()  # every thread's sums come before the ticket (release)
    ticket = tl.atomic_add(counter_ptr + b, 1, sem="acq_rel", scope="gpu")
    if ticket == chunks * tl.num_programs(1) - 1:
        gx_b = stats_ptr + b.to(tl.int64) * (C + 1)
        total = tl.zeros((BLOCK_F,), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_F):
            c = c0 + tl.arange(0, BLOCK_F)
            sums = tl.zeros((BLOCK_F,), dtype=tl.float32)
            for k in range(chunks):
                sums += tl.load(partial_b + k * C + c, mask=c < C, other=0.0, cache_modifier=".cg")
            norms = tl.sqrt_rn(sums)
            tl.store(gx_b + c, norms, mask=c < C)
            total += norms
        tl.store(gx_b + C, tl.div_rn(1.0, tl.sum(total, axis=0) / C + eps))
        tl.atomic_xchg(counter_ptr + b, 0)  # ready for the next launch


@triton.jit
def _apply_tile(
    h_base, y_base, rows, row_end, cols, C, stride_hp, stride_hc, stride_yp, factor, shift, MASK_ROWS: tl.constexpr,
    EVEN_C: tl.constexpr, HAS_BETA: tl.constexpr, APPROX: tl.constexpr,
):  # fmt: skip
    h = load_tile(tile_pointers(h_base, rows, cols, stride_hp, stride_hc), rows, row_end, cols, C, MASK_ROWS, EVEN_C)
    y = gelu(h, APPROX)
    y *= factor
    if HAS_BETA:
        y += shift
    store_tile(tile_pointers(y_base, rows, cols, stride_yp, 1), y, rows, row_end, cols, C, MASK_ROWS, EVEN_C)


@triton.jit
def _gelu_grn_apply_kernel(
    h_ptr,
    y_ptr,
    stats_ptr,
    gamma_ptr,
    beta_ptr,
    P,
    C,
    rows_per_chunk,
    stride_hb,
    stride_hp,
    stride_hc,
    stride_yb,
    stride_yp,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
    HAS_BETA: tl.constexpr,
    APPROX: tl.constexpr,
):
    """y = GELU(h) (1 + gamma Gx scale) + beta over the program's chunk; y has unit channel stride."""
    b = tl.program_id(2)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offsets = tl.arange(0, BLOCK_P)
    gamma = load_row(gamma_ptr, cols, C, EVEN_C)
    stats_b = stats_ptr + b.to(tl.int64) * (C + 1)
    factor = (1.0 + gamma * load_row(stats_b, cols, C, EVEN_C) * tl.load(stats_b + C))[None, :]
    shift = load_row(beta_ptr, cols, C, EVEN_C)[None, :]  # (gamma's row again when HAS_BETA is False: unused)
    h_base = h_ptr + b.to(tl.int64) * stride_hb
    y_base = y_ptr + b.to(tl.int64) * stride_yb
    row_begin, full_end, row_end = chunk_rows(P, rows_per_chunk, BLOCK_P)
    for start in range(row_begin, full_end, BLOCK_P):
        _apply_tile(
            h_base, y_base, start + offsets, row_end, cols, C, stride_hp, stride_hc, stride_yp, factor, shift, False,
            EVEN_C, HAS_BETA, APPROX,
        )  # fmt: skip
    if full_end < row_end:
        _apply_tile(
            h_base, y_base, full_end + offsets, row_end, cols, C, stride_hp, stride_hc, stride_yp, factor, shift, True,
            EVEN_C, HAS_BETA, APPROX,
        )  # fmt: skip


@triton.jit
def _grad_sums_tile(
    h_base, dy_base, rows, row_end, cols, C, stride_hp, stride_hc, stride_dp, stride_dc, MASK_ROWS: tl.constexpr,
    EVEN_C: tl.constexpr, APPROX: tl.constexpr,
):  # fmt: skip
    h = load_tile(tile_pointers(h_base, rows, cols, stride_hp, stride_hc), rows, row_end, cols, C, MASK_ROWS, EVEN_C)
    dy = load_tile(tile_pointers(dy_base, rows, cols, stride_dp, stride_dc), rows, row_end, cols, C, MASK_ROWS, EVEN_C)
    return dy * gelu(h, APPROX), dy


@triton.jit
def _gelu_grn_grad_sums_kernel(
    h_ptr,
    dy_ptr,
    partial_ptr,
    total_ptr,
    coef_ptr,
    stats_ptr,
    gamma_ptr,
    counter_ptr,
    P,
    C,
    rows_per_chunk,
    stride_hb,
    stride_hp,
    stride_hc,
    stride_db,
    stride_dp,
    stride_dc,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
    BLOCK_F: tl.constexpr,
    APPROX: tl.constexpr,
):
    """Column sums of dy GELU(h) and of dy per program (partial[b, k, 0 / 1, :]); the sample's last program: their
    totals over the chunks (total[b, 0 / 1, :]) and coef[b] = scale^2 / C sum_c gamma P Gx."""
    b = tl.program_id(2)
    chunks = tl.num_programs(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offsets = tl.arange(0, BLOCK_P)
    h_base = h_ptr + b.to(tl.int64) * stride_hb
    dy_base = dy_ptr + b.to(tl.int64) * stride_db
    row_begin, full_end, row_end = chunk_rows(P, rows_per_chunk, BLOCK_P)
    acc_p = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc_d = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for start in range(row_begin, full_end, BLOCK_P):
        dya, dy = _grad_sums_tile(
            h_base, dy_base, start + offsets, row_end, cols, C, stride_hp, stride_hc, stride_dp, stride_dc, False,
            EVEN_C, APPROX,
        )  # fmt: skip
        acc_p += dya
        acc_d += dy
    if full_end < row_end:
        dya, dy = _grad_sums_tile(
            h_base, dy_base, full_end + offsets, row_end, cols, C, stride_hp, stride_hc, stride_dp, stride_dc, True,
            EVEN_C, APPROX,
        )  # fmt: skip
        acc_p += dya
        acc_d += dy
    partial_b = partial_ptr + b.to(tl.int64) * chunks * 2 * C
    store_row(partial_b + tl.program_id(0) * 2 * C, tl.sum(acc_p, axis=0), cols, C, EVEN_C)
    store_row(partial_b + tl.program_id(0) * 2 * C + C, tl.sum(acc_d, axis=0), cols, C, EVEN_C)
    tl.debug_barrier()  # every thread's sums come before the ticket (release)
    ticket = tl.atomic_add(counter_ptr + b, 1, sem="acq_rel", scope="gpu")
    if ticket == chunks * tl.num_programs(1) - 1:
        total_b = total_ptr + b.to(tl.int64) * 2 * C
        gx_b = stats_ptr + b.to(tl.int64) * (C + 1)
        weighted = tl.zeros((BLOCK_F,), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_F):
            c = c0 + tl.arange(0, BLOCK_F)
            p_sum = tl.zeros((BLOCK_F,), dtype=tl.float32)
            d_sum = tl.zeros((BLOCK_F,), dtype=tl.float32)
            for k in range(chunks):
                p_sum += tl.load(partial_b + k * 2 * C + c, mask=c < C, other=0.0, cache_modifier=".cg")
                d_sum += tl.load(partial_b + k * 2 * C + C + c, mask=c < C, other=0.0, cache_modifier=".cg")
            tl.store(total_b + c, p_sum, mask=c < C)
            tl.store(total_b + C + c, d_sum, mask=c < C)
            gamma = tl.load(gamma_ptr + c, mask=c < C, other=0.0).to(tl.float32)
            weighted += gamma * p_sum * tl.load(gx_b + c, mask=c < C, other=0.0)
        scale = tl.load(gx_b + C)
        tl.store(coef_ptr + b, tl.sum(weighted, axis=0) * scale * scale / C)
        tl.atomic_xchg(counter_ptr + b, 0)  # ready for the next launch


@triton.jit
def _grad_apply_tile(
    h_base, dy_base, dh_base, rows, row_end, cols, C, stride_hp, stride_hc, stride_dp, stride_dc, stride_gp, factor,
    slope_gx, MASK_ROWS: tl.constexpr, EVEN_C: tl.constexpr, APPROX: tl.constexpr,
):  # fmt: skip
    h = load_tile(tile_pointers(h_base, rows, cols, stride_hp, stride_hc), rows, row_end, cols, C, MASK_ROWS, EVEN_C)
    dy = load_tile(tile_pointers(dy_base, rows, cols, stride_dp, stride_dc), rows, row_end, cols, C, MASK_ROWS, EVEN_C)
    a, slope = gelu_and_slope(h, APPROX)
    dh = (dy * factor + a * slope_gx) * slope
    store_tile(tile_pointers(dh_base, rows, cols, stride_gp, 1), dh, rows, row_end, cols, C, MASK_ROWS, EVEN_C)


@triton.jit
def _gelu_grn_grad_apply_kernel(
    h_ptr,
    dy_ptr,
    dh_ptr,
    total_ptr,
    coef_ptr,
    stats_ptr,
    gamma_ptr,
    dgamma_ptr,
    dbeta_ptr,
    B,
    P,
    C,
    rows_per_chunk,
    stride_hb,
    stride_hp,
    stride_hc,
    stride_db,
    stride_dp,
    stride_dc,
    stride_gb,
    stride_gp,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
    BLOCK_B: tl.constexpr,
    APPROX: tl.constexpr,
):
    """dh = (dy (1 + gamma Nx) + GELU(h) dGx / Gx) GELU'(h) over the program's chunk (dGx / Gx: 0 where Gx = 0);
    dh has unit channel stride. Programs (0, j, 0) also write d gamma and d beta of their channels, summing
    BLOCK_B samples a step (the launcher passes BLOCK_P: two tile-sized accumulators)."""
    b = tl.program_id(2)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offsets = tl.arange(0, BLOCK_P)
    gamma = load_row(gamma_ptr, cols, C, EVEN_C)
    stats_b = stats_ptr + b.to(tl.int64) * (C + 1)
    gx = load_row(stats_b, cols, C, EVEN_C)
    p_sum = load_row(total_ptr + b.to(tl.int64) * 2 * C, cols, C, EVEN_C)
    scale = tl.load(stats_b + C)
    factor = (1.0 + gamma * gx * scale)[None, :]
    d_gx = scale * gamma * p_sum - tl.load(coef_ptr + b)
    slope_gx = tl.where(gx > 0.0, d_gx / tl.where(gx > 0.0, gx, 1.0), 0.0)[None, :]
    h_base = h_ptr + b.to(tl.int64) * stride_hb
    dy_base = dy_ptr + b.to(tl.int64) * stride_db
    dh_base = dh_ptr + b.to(tl.int64) * stride_gb
    row_begin, full_end, row_end = chunk_rows(P, rows_per_chunk, BLOCK_P)
    for start in range(row_begin, full_end, BLOCK_P):
        _grad_apply_tile(
            h_base, dy_base, dh_base, start + offsets, row_end, cols, C, stride_hp, stride_hc, stride_dp, stride_dc,
            stride_gp, factor, slope_gx, False, EVEN_C, APPROX,
        )  # fmt: skip
    if full_end < row_end:
        _grad_apply_tile(
            h_base, dy_base, dh_base, full_end + offsets, row_end, cols, C, stride_hp, stride_hc, stride_dp,
            stride_dc, stride_gp, factor, slope_gx, True, EVEN_C, APPROX,
        )  # fmt: skip
    if (tl.program_id(0) == 0) & (b == 0):
        samples = tl.arange(0, BLOCK_B)
        dgamma = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
        dbeta = tl.zeros((BLOCK_B, BLOCK_C), dtype=tl.float32)
        col_mask = (cols < C)[None, :]
        for b0 in range(0, B, BLOCK_B):
            s = (b0 + samples).to(tl.int64)
            mask = (s < B)[:, None] & col_mask
            stats_s = stats_ptr + s * (C + 1)
            nx = tl.load(stats_s[:, None] + cols[None, :], mask=mask, other=0.0)
            nx *= tl.load(stats_s + C, mask=s < B, other=0.0)[:, None]
            totals = total_ptr + s[:, None] * 2 * C + cols[None, :]
            dgamma += nx * tl.load(totals, mask=mask, other=0.0)
            dbeta += tl.load(totals + C, mask=mask, other=0.0)
        store_row(dgamma_ptr, tl.sum(dgamma, axis=0), cols, C, EVEN_C)
        store_row(dbeta_ptr, tl.sum(dbeta, axis=0), cols, C, EVEN_C)


# ----------------------------------------------------------------------------------------------------------------
# 3. Launchers
# ----------------------------------------------------------------------------------------------------------------

_BLOCK_F = 16 if INTERPRETER else 256  # channels per step of a sample's last program


def _geometry(h: Tensor) -> tuple[int, tuple[int, int, bool], int, int]:
    """(positions, blocks, chunks, rows per chunk) of ``h``."""
    batch, height, width, channels = h.shape
    tile, chunks, rows = geometry(batch, height * width, channels, h.device)
    return height * width, tile, chunks, rows


def _check_triton_inputs(h, gamma, beta, eps, out_dtype) -> None:
    check_gelu_grn_inputs(h, gamma, beta, eps, out_dtype)
    check_triton_dtypes("the Triton GELU + GRN kernels take", {"h": h})
    check_triton_out_dtype("GELU + GRN kernels", out_dtype)
    if h.shape[0] > MAX_BATCH:
        raise ValueError(
            f"the Triton GELU + GRN kernels take at most {MAX_BATCH} samples a call, got {h.shape[0]}; split the "
            "batch or use backend='torch'"
        )
    check_triton_device(h.device)


def gelu_grn_forward(
    h: Tensor,
    gamma: Tensor,
    beta: Tensor | None = None,
    eps: float = GRN_EPS,
    out_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Triton forward: (y, stats): y of the shape of ``h`` in ``out_dtype`` (default: the dtype of ``h``),
    contiguous; ``stats`` float32 [B, C + 1], each sample's norms Gx and then its scale 1 / (mean_c Gx + eps) (for
    the backward). Two launches. Validates its inputs."""
    _check_triton_inputs(h, gamma, beta, eps, out_dtype)
    batch, _height, _width, channels = h.shape
    y = torch.empty(h.shape, dtype=out_dtype or h.dtype, device=h.device)
    if h.numel() == 0:
        stats = torch.zeros(batch, channels + 1, dtype=torch.float32, device=h.device)
        stats[:, channels] = 1.0 / eps
        return y, stats
    positions, (block_p, block_c, even_c), chunks, rows = _geometry(h)
    h, strides = merged_positions(h, 3)
    workspace = torch.empty(batch * (chunks * channels + channels + 1), dtype=torch.float32, device=h.device)
    stats = workspace[: batch * (channels + 1)].view(batch, channels + 1)
    partials = workspace[batch * (channels + 1) :]
    grid = (chunks, cdiv(channels, block_c), batch)
    with device_guard(h.device):
        launchable(_gelu_grn_sums_kernel)[grid](
            h, partials, stats, ticket_counters(h.device, batch), positions, channels, rows, *strides, float(eps),
            BLOCK_P=block_p, BLOCK_C=block_c, EVEN_C=even_c, BLOCK_F=_BLOCK_F, APPROX=not INTERPRETER,
        )  # fmt: skip
        launchable(_gelu_grn_apply_kernel)[grid](
            h, y, stats, gamma.contiguous(), gamma if beta is None else beta.contiguous(), positions, channels, rows,
            *strides, positions * channels, channels,
            BLOCK_P=block_p, BLOCK_C=block_c, EVEN_C=even_c, HAS_BETA=beta is not None, APPROX=not INTERPRETER,
        )  # fmt: skip
    return y, stats


def gelu_grn_backward(
    grad_output: Tensor, h: Tensor, stats: Tensor, gamma: Tensor, beta: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Triton backward: (dh, d gamma, d beta) from the forward's ``stats``. dh has the dtype of ``h``;
    the parameter gradients are summed in float32 (in a fixed order) and returned in their parameters' dtypes and
    shapes (d beta in gamma's when ``beta`` is None). Two launches."""
    _check_triton_inputs(h, gamma, beta, GRN_EPS, None)
    if grad_output.shape != h.shape or grad_output.device != h.device or not grad_output.is_floating_point():
        raise ValueError(
            f"grad_output must be a floating-point tensor of the shape of h {list(h.shape)} on {h.device}, got "
            f"{grad_output.dtype} {list(grad_output.shape)} on {grad_output.device}"
        )
    batch, channels = h.shape[0], h.shape[-1]
    shape = (batch, channels + 1)
    if stats.shape != shape or stats.dtype != torch.float32 or stats.device != h.device:
        raise ValueError(
            f"stats must be the forward's float32 {list(shape)} on {h.device}, got {stats.dtype} "
            f"{list(stats.shape)} on {stats.device}"
        )
    return _launch_backward(grad_output, h, stats.contiguous(), gamma, beta)


def _launch_backward(
    grad_output: Tensor, h: Tensor, stats: Tensor, gamma: Tensor, beta: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`gelu_grn_backward` without checking its inputs: for the eager autograd Function, whose forward checked
    them and made ``stats`` (autograd passes a gradient of the output's shape, dtype and device)."""
    batch, channels = h.shape[0], h.shape[-1]
    dh = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    dgamma = torch.empty_like(gamma, memory_format=torch.contiguous_format)
    dbeta = torch.empty_like(gamma if beta is None else beta, memory_format=torch.contiguous_format)
    if h.numel() == 0:
        return dh, dgamma.zero_(), dbeta.zero_()
    positions, (block_p, block_c, even_c), chunks, rows = _geometry(h)
    h, h_strides = merged_positions(h, 3)
    dy, dy_strides = merged_positions(grad_output, 3)
    workspace = torch.empty(batch * (2 * chunks * channels + 2 * channels + 1), dtype=torch.float32, device=h.device)
    totals = workspace[: 2 * batch * channels]
    coef = workspace[2 * batch * channels : batch * (2 * channels + 1)]
    partials = workspace[batch * (2 * channels + 1) :]
    gamma = gamma.contiguous()
    grid = (chunks, cdiv(channels, block_c), batch)
    with device_guard(h.device):
        launchable(_gelu_grn_grad_sums_kernel)[grid](
            h, dy, partials, totals, coef, stats, gamma, ticket_counters(h.device, batch), positions, channels,
            rows, *h_strides, *dy_strides,
            BLOCK_P=block_p, BLOCK_C=block_c, EVEN_C=even_c, BLOCK_F=_BLOCK_F, APPROX=not INTERPRETER,
        )  # fmt: skip
        launchable(_gelu_grn_grad_apply_kernel)[grid](
            h, dy, dh, totals, coef, stats, gamma, dgamma, dbeta, batch, positions, channels, rows, *h_strides,
            *dy_strides, positions * channels, channels,
            BLOCK_P=block_p, BLOCK_C=block_c, EVEN_C=even_c, BLOCK_B=block_p, APPROX=not INTERPRETER,
        )  # fmt: skip
    return dh, dgamma, dbeta


# ----------------------------------------------------------------------------------------------------------------
# 4. The registered op
# ----------------------------------------------------------------------------------------------------------------


@triton_op("zoo::gelu_grn")
def _gelu_grn_op(
    h: Tensor, gamma: Tensor, beta: Tensor | None, eps: float, out_dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    return gelu_grn_forward(h, gamma, beta, eps, out_dtype)


@_gelu_grn_op.register_fake
def _(h, gamma, beta, eps, out_dtype=None):
    check_gelu_grn_inputs(h, gamma, beta, eps, out_dtype)
    batch, channels = h.shape[0], h.shape[-1]
    return h.new_empty(h.shape, dtype=out_dtype or h.dtype), h.new_empty((batch, channels + 1), dtype=torch.float32)


@triton_op("zoo::gelu_grn_backward")
def _gelu_grn_backward_op(
    grad_output: Tensor, h: Tensor, stats: Tensor, gamma: Tensor, beta: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    return gelu_grn_backward(grad_output, h, stats, gamma, beta)


@_gelu_grn_backward_op.register_fake
def _(grad_output, h, stats, gamma, beta):
    shift = gamma if beta is None else beta
    return h.new_empty(h.shape), gamma.new_empty(gamma.shape), shift.new_empty(shift.shape)


def _setup_context(ctx, inputs, output) -> None:
    h, gamma, beta, _eps, _out_dtype = inputs
    _y, stats = output
    ctx.has_beta = beta is not None
    ctx.save_for_backward(h, stats, gamma, beta)
    ctx.mark_non_differentiable(stats)


def _backward(ctx, grad_output: Tensor, _grad_stats):
    dh, dgamma, dbeta = torch.ops.zoo.gelu_grn_backward(grad_output, *ctx.saved_tensors)
    return dh, dgamma, dbeta if ctx.has_beta else None, None, None


_gelu_grn_op.register_autograd(_backward, setup_context=_setup_context)


class _GeluGRNFunction(torch.autograd.Function):
    """Eager autograd of the Triton path: the launchers called directly (no custom-op dispatch)."""

    @staticmethod
    def forward(ctx, h, gamma, beta, eps, out_dtype):
        y, stats = gelu_grn_forward(h, gamma, beta, eps, out_dtype)
        ctx.has_beta = beta is not None
        ctx.save_for_backward(h, stats, gamma, beta)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        dh, dgamma, dbeta = _launch_backward(grad_output, *ctx.saved_tensors)
        return dh, dgamma, dbeta if ctx.has_beta else None, None, None


def _forward_only(h, gamma, beta, eps, out_dtype) -> Tensor:
    return gelu_grn_forward(h, gamma, beta, eps, out_dtype)[0]


def _registered(h, gamma, beta, eps, out_dtype) -> Tensor:
    return torch.ops.zoo.gelu_grn(h, gamma, beta, eps, out_dtype)[0]


def gelu_grn(
    h: Tensor,
    gamma: Tensor,
    beta: Tensor | None = None,
    eps: float = GRN_EPS,
    out_dtype: torch.dtype | None = None,
    backend: str = "auto",
) -> Tensor:
    """``GRN(GELU(h))`` (exact GELU; GRN as in ConvNeXt V2 and UniRepLKNet) in two launches each way (see the module
    docstring).

    Args:
        h: ``[B, H, W, C]`` (NHWC) float16/bfloat16/float32 (float64 on the reference backend), any strides (a
            layout whose H and W do not merge into one stride is copied first).
        gamma: GRN's scale, C values (``[C]`` or the module's ``[1, 1, 1, C]``).
        beta: GRN's shift, like ``gamma``, or None (the deployed form).
        eps: added to the mean of the norms.
        out_dtype: the result's dtype (default: that of ``h``); the float32 result is rounded to it once.
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see :mod:`zoo.kernels._backend`); on CPU tensors every
            backend but ``"triton"`` runs the reference.

    Returns:
        A tensor of the shape of ``h`` and dtype ``out_dtype``, differentiable in ``h``, ``gamma`` and ``beta``.
    """
    if not isinstance(h, Tensor):
        raise TypeError(f"h must be a torch.Tensor, got {type(h).__name__}")
    args = (h, gamma, beta, eps, out_dtype)
    if resolve_backend(backend, h, TRITON_DTYPES) == "triton" and (
        out_dtype is None or out_dtype in TRITON_DTYPES or requested_backend(backend) == "triton"
    ):  # the launchers validate their inputs
        return dispatch_triton(*args, op=_registered, function=_GeluGRNFunction, launcher=_forward_only)
    return gelu_grn_reference(*args)


# ----------------------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (zoo/kernels/_aot.py; tests/kernels/test_compile_targets.py)
# ----------------------------------------------------------------------------------------------------------------

# UniRepLKNet-T at 224 px, batch 128: (map side, hidden width 4 C) per stage
GRN_STAGES = ((56, 320), (28, 640), (14, 1280), (7, 2560))
_BENCHMARK_BATCH = 128


def aot_specs() -> list:
    """Compile and loop-report specs: the four kernels at UniRepLKNet-T's four stages (B128, 224 px) as the block
    calls them under bf16 autocast (bf16 h, y and dy; float32 gamma and beta); at stage 3 also all-float32 and the
    deployed form's apply kernel (no beta). Useful work: an element of h. Stage 1 is compiled in the tests too
    (``ci``)."""
    from zoo.kernels._aot import Work, launch_spec

    specs = []
    batch = _BENCHMARK_BATCH
    for stage, (side, channels) in enumerate(GRN_STAGES, start=1):
        positions = side * side
        block_p, block_c, even_c = blocks(channels, positions)
        rows = positions_per_chunk(positions, batch * cdiv(channels, block_c), block_p, H200_SMS)
        chunks = cdiv(positions, rows)
        programs = chunks * cdiv(channels, block_c) * batch
        spans = [min(rows, positions - k * rows) for k in range(chunks)]  # the chunks' positions
        full_tiles = sum(span // block_p for span in spans) / chunks
        tail = sum(span % block_p > 0 for span in spans) / chunks
        variants = [("bf16", "bf16")] + ([("fp32", "fp32")] if stage == 3 else [])
        for dtype, out in variants:
            case = f"B{batch}x{side}x{side}x{channels}" + ("" if dtype == "bf16" else f"-{dtype}")
            label = f"{dtype},C{channels}"
            ci = stage == 1 and dtype == "bf16"
            common = dict(
                h_ptr=f"*{dtype}",
                stats_ptr="*fp32",
                P=positions,
                C=channels,
                rows_per_chunk=rows,
                stride_hb=positions * channels,
                stride_hp=channels,
                stride_hc=1,
                BLOCK_P=block_p,
                BLOCK_C=block_c,
                EVEN_C=even_c,
                APPROX=True,
            )
            units = batch * positions * channels / programs
            formula = (
                f"{batch} x {positions} x {channels} elements / {programs} programs ({chunks} chunks of {rows} "
                f"positions x {cdiv(channels, block_c)} channel blocks x {batch} samples), tiles of {block_p} x "
                f"{block_c}: {full_tiles:g} full a program"
            )
            # the sample's last program (1 in chunks x channel blocks) adds the partials: C / BLOCK_F steps of
            # `chunks`; the programs (0, j, 0) of the gradient (1 in chunks x samples) add d gamma over the samples
            finish = cdiv(channels, _BLOCK_F) / (chunks * cdiv(channels, block_c))
            over_samples = cdiv(batch, block_p) / (chunks * batch)
            work = Work(case, "element", units, (full_tiles,), formula + f", {tail:g} partial (its code counted once)")
            finishing = Work(case, "element", units, ((full_tiles, finish), chunks), work.formula)
            summing = Work(case, "element", units, ((full_tiles, over_samples),), work.formula)
            sums = dict(common, counter_ptr="*i32", partial_ptr="*fp32")
            grads = dict(
                common,
                dy_ptr=f"*{dtype}",
                total_ptr="*fp32",
                coef_ptr="*fp32",
                gamma_ptr="*fp32",
                stride_db=positions * channels,
                stride_dp=channels,
                stride_dc=1,
            )
            apply = dict(
                common,
                y_ptr=f"*{out}",
                gamma_ptr="*fp32",
                beta_ptr="*fp32",
                stride_yb=positions * channels,
                stride_yp=channels,
            )
            specs += [
                launch_spec(
                    f"_gelu_grn_sums_kernel[{label}]@{case}",
                    _gelu_grn_sums_kernel,
                    dict(sums, eps=GRN_EPS, BLOCK_F=_BLOCK_F),
                    work=finishing,
                    ci=ci,
                ),
                launch_spec(
                    f"_gelu_grn_apply_kernel[{label}]@{case}",
                    _gelu_grn_apply_kernel,
                    dict(apply, HAS_BETA=True),
                    work=work,
                    ci=ci,
                ),
                launch_spec(
                    f"_gelu_grn_grad_sums_kernel[{label}]@{case}",
                    _gelu_grn_grad_sums_kernel,
                    dict(grads, partial_ptr="*fp32", counter_ptr="*i32", BLOCK_F=_BLOCK_F),
                    work=finishing,
                    ci=ci,
                ),
                launch_spec(
                    f"_gelu_grn_grad_apply_kernel[{label}]@{case}",
                    _gelu_grn_grad_apply_kernel,
                    dict(
                        grads,
                        dh_ptr=f"*{dtype}",
                        dgamma_ptr="*fp32",
                        dbeta_ptr="*fp32",
                        B=batch,
                        stride_gb=positions * channels,
                        stride_gp=channels,
                        BLOCK_B=block_p,
                    ),
                    work=summing,
                    ci=ci,
                ),
            ]
            if stage == 3 and dtype == "bf16":
                specs.append(
                    launch_spec(
                        f"_gelu_grn_apply_kernel[{label},deployed]@{case}",
                        _gelu_grn_apply_kernel,
                        dict(apply, HAS_BETA=False),
                        work=work,
                    )
                )
    return specs
