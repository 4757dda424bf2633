"""Batch norm, a per-channel scale and a residual add, in two launches each way: the tail of UniRepLKNet's block
(``x + gamma * BN(Linear_2(...))``, with stochastic depth's per-sample mask).

For ``input`` and ``residual`` of shape [N, C, H, W]:

    out = residual + sample_scale[n] * scale[c] * BN(input)[n, c, h, w],
    BN(input) = (input - mean) / sqrt(var + eps) * weight + bias

with ``mean`` and the biased ``var`` over (N, H, W) in training (the running statistics updated in place as
``F.batch_norm`` updates them: a step of ``momentum`` towards the batch's mean and unbiased variance), the running
ones otherwise. Computed in float32 and rounded once to the result's dtype, the promotion of ``residual``'s,
``input``'s and ``scale``'s (the modules' ``x + gamma * bn(y)``: float32 under autocast, where ``input`` is bf16).

The modules make about six passes forward (BN's statistics, BN, the scale, the add: under autocast the last two
write float32) and a dozen backward; here the forward reads ``input`` twice and ``residual`` once and writes
``out``, the backward reads the output gradient and ``input`` twice and writes the input gradient; the residual's
gradient is the output gradient itself (docs/design.md §23).

Layout of this file (the kernel contract, docs/design.md §2): the reference, the Triton kernels, the launchers, the
registered op.
"""

from __future__ import annotations

import torch
from torch import Tensor

from zoo.kernels._backend import (
    H200_SMS,
    TRITON_DTYPES,
    cdiv,
    check_triton_device,
    check_triton_dtypes,
    device_guard,
    dispatch_triton,
    launchable,
    once_differentiable,
    resolve_backend,
    ticket_counters,
    tl,
    triton,
    triton_op,
)
from zoo.kernels._sample_tiles import (
    MAX_BATCH,
    blocks,
    chunk_rows,
    geometry,
    load_row,
    load_tile,
    merged_positions,
    positions_merge,
    positions_per_chunk,
    store_row,
    store_tile,
    tile_pointers,
)

__all__ = ["batch_norm_add", "batch_norm_add_reference", "batch_norm_add_forward", "batch_norm_add_backward"]


def _check_vector(name: str, t: Tensor | None, size: int, device: torch.device, what: str = "C") -> None:
    """Raise unless ``t`` (None passes) is a floating-point tensor of ``size`` values (``what``: their name) on
    ``device``."""
    if t is None:
        return
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {getattr(t, 'dtype', type(t))}")
    if t.numel() != size:
        raise ValueError(f"{name} must hold {what} = {size} values, got shape {list(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} must be on the device of input ({device}), got {t.device}")


def check_batch_norm_inputs(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> None:
    """Raise ``TypeError``/``ValueError`` naming what was expected when the batch norm's inputs do not fit (the
    checks this op and zoo/kernels/batch_norm_se.py share)."""
    if not isinstance(input, Tensor) or not input.is_floating_point():
        raise TypeError(f"input must be a floating-point torch.Tensor, got {getattr(input, 'dtype', type(input))}")
    if input.dim() != 4:
        raise ValueError(f"input must be [N, C, H, W], got shape {list(input.shape)}")
    channels = input.shape[1]
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be tensors or both be None")
    if (weight is None) != (bias is None):
        raise ValueError("weight and bias must both be tensors (an affine batch norm) or both be None")
    for name, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        _check_vector(name, t, channels, input.device)
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {training!r}")
    if not training and running_mean is None:
        raise ValueError("running_mean and running_var are needed when training=False (they normalise the input)")
    if training and (not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0):
        raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
    if not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    if training and input.numel() == channels > 0:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {list(input.shape)} (as "
            "F.batch_norm)"
        )


def check_batch_norm_add_inputs(
    input: Tensor,
    residual: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    scale: Tensor | None,
    sample_scale: Tensor | None,
) -> None:
    """Raise ``TypeError``/``ValueError`` naming what was expected when the inputs do not fit the op."""
    check_batch_norm_inputs(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if not isinstance(residual, Tensor) or not residual.is_floating_point():
        raise TypeError(
            f"residual must be a floating-point torch.Tensor, got {getattr(residual, 'dtype', type(residual))}"
        )
    if residual.shape != input.shape or residual.device != input.device:
        raise ValueError(
            f"residual must have the shape and device of input ({list(input.shape)} on {input.device}), got "
            f"{list(residual.shape)} on {residual.device}"
        )
    _check_vector("scale", scale, input.shape[1], input.device)
    if sample_scale is not None:
        _check_vector("sample_scale", sample_scale, input.shape[0], input.device, "N")


def result_dtype(input: Tensor, residual: Tensor, scale: Tensor | None) -> torch.dtype:
    """The dtype of the op's result: the modules' ``residual + scale * bn(input)`` promotion."""
    dtype = torch.promote_types(residual.dtype, input.dtype)
    return dtype if scale is None else torch.promote_types(dtype, scale.dtype)


# ----------------------------------------------------------------------------------------------------------------
# 1. Reference
# ----------------------------------------------------------------------------------------------------------------


def batch_norm_in(
    compute: torch.dtype,
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """``F.batch_norm(input, ...)`` computed in ``compute`` (float32 or float64; autocast off), the running
    statistics stepped in place in training as ``F.batch_norm`` steps them: the references' batch norm (this op's and
    zoo/kernels/batch_norm_se.py's)."""
    channels = input.shape[1]
    per_channel = (1, channels, 1, 1)
    x = input.to(compute)
    if training:
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        if running_mean is not None and x.numel() > 0:  # (no step for an empty batch, as F.batch_norm)
            count = x.numel() // channels
            with torch.no_grad():
                running_mean.lerp_(mean.reshape(running_mean.shape).to(running_mean.dtype), momentum)
                unbiased = var * (count / (count - 1))
                running_var.lerp_(unbiased.reshape(running_var.shape).to(running_var.dtype), momentum)
    else:
        mean, var = running_mean.reshape(channels).to(compute), running_var.reshape(channels).to(compute)
    z = (x - mean.reshape(per_channel)) * torch.rsqrt(var + eps).reshape(per_channel)
    if weight is not None:
        z = z * weight.reshape(per_channel).to(compute) + bias.reshape(per_channel).to(compute)
    return z


def batch_norm_add_reference(
    input: Tensor,
    residual: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    scale: Tensor | None = None,
    sample_scale: Tensor | None = None,
) -> Tensor:
    """Plain PyTorch: ``residual + sample_scale[n] * scale[c] * F.batch_norm(input, ...)`` in float32 (float64 for
    float64 inputs), rounded once to :func:`result_dtype`. Defines the op's meaning; differentiable through autograd
    in ``input``, ``residual``, ``weight``, ``bias`` and ``scale``; updates the running statistics in training as
    ``F.batch_norm`` does."""
    check_batch_norm_add_inputs(
        input, residual, running_mean, running_var, weight, bias, training, momentum, eps, scale, sample_scale
    )
    channels = input.shape[1]
    compute = torch.promote_types(torch.promote_types(input.dtype, residual.dtype), torch.float32)
    per_channel = (1, channels, 1, 1)
    with torch.autocast(input.device.type, enabled=False):
        z = batch_norm_in(compute, input, running_mean, running_var, weight, bias, training, momentum, eps)
        if scale is not None:
            z = z * scale.reshape(per_channel).to(compute)
        if sample_scale is not None:
            z = z * sample_scale.reshape(-1, 1, 1, 1).to(compute)
        out = residual.to(compute) + z
    return out.to(result_dtype(input, residual, scale))


# ----------------------------------------------------------------------------------------------------------------
# 2. Triton kernels
#
# Every kernel runs on the grid (chunks, channel blocks, samples) of zoo/kernels/_sample_tiles.py over the
# [N, H W, C] view of each tensor (any strides whose H and W merge). Batch statistics span every sample, so the
# reductions finish per channel block: each program writes its partial results, takes a ticket on its channel
# block's counter, and the program that draws the block's last ticket combines the N x chunks partials in a fixed
# order. Deterministic; no atomics but the tickets.
#
# Forward (training): the sums kernel writes each program's mean and sum of squared deviations (M2) of its chunk,
# computed about the chunk's first row (a shift from the data itself, so that a mean far from zero costs no
# precision); the block's last program combines them (Chan et al.'s pairwise formula, in two passes: the mean,
# then M2 = sum M2_i + n_i (mean_i - mean)^2), writes mean and 1 / sqrt(var + eps) and steps the running statistics.
# The apply kernel writes out = residual + (input - mean) a + c with a, c per (sample, channel) from the statistics, weight,
# bias, scale and sample_scale (in eval, it reads the running statistics itself: one launch).
# Backward: the sums kernel writes each program's sums of u = sample_scale dy and u (input - mean); the block's
# last program adds them (S1, S2), writes the parameters' gradients and the coefficients of
# dinput = u k1 + (input - mean) k2 + k3 (k2 = k3 = 0 in eval); the apply kernel writes dinput.
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def chunk_span(k, P, rows_per_chunk):
    """Positions in chunk ``k`` of a sample's map, as float32."""
    return tl.minimum(rows_per_chunk, P - k * rows_per_chunk).to(tl.float32)


@triton.jit
def _lerp(start, end, weight):
    """``torch.lerp``'s two-branch form (exact at weight 0 and 1): the running statistics' step. One expression, no
    early return: Triton 3.6 fails to compile a helper that returns from both sides of a branch on a runtime
    value."""
    return tl.where(weight < 0.5, start + weight * (end - start), end - (end - start) * (1.0 - weight))


@triton.jit
def chunk_mean_m2(x_base, P, C, rows_per_chunk, stride_xp, stride_xc, cols, BLOCK_P: tl.constexpr,
                  BLOCK_C: tl.constexpr, EVEN_C: tl.constexpr):  # fmt: skip
    """(mean, M2) per channel of the program's chunk of positions, accumulated about the chunk's first row (a shift
    from the data itself: a mean far from zero costs no precision)."""
    offsets = tl.arange(0, BLOCK_P)
    row_begin, full_end, row_end = chunk_rows(P, rows_per_chunk, BLOCK_P)
    shift_ptr = x_base + row_begin * stride_xp + cols * stride_xc
    if EVEN_C:
        shift = tl.load(shift_ptr).to(tl.float32)
    else:
        shift = tl.load(shift_ptr, mask=cols < C, other=0.0).to(tl.float32)
    acc_s = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc_q = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for start in range(row_begin, full_end, BLOCK_P):
        rows = start + offsets
        d = load_tile(tile_pointers(x_base, rows, cols, stride_xp, stride_xc), rows, row_end, cols, C, False, EVEN_C)
        d -= shift[None, :]
        acc_s += d
        acc_q += d * d
    if full_end < row_end:
        rows = full_end + offsets
        d = load_tile(tile_pointers(x_base, rows, cols, stride_xp, stride_xc), rows, row_end, cols, C, True, EVEN_C)
        d = tl.where((rows < row_end)[:, None], d - shift[None, :], 0.0)
        acc_s += d
        acc_q += d * d
    span = (row_end - row_begin).to(tl.float32)
    s = tl.sum(acc_s, axis=0)
    return shift + s / span, tl.maximum(tl.sum(acc_q, axis=0) - s * s / span, 0.0)


@triton.jit
def batch_mean_var(partial_ptr, parts, chunks, P, rows_per_chunk, count, cols, C, BLOCK_P: tl.constexpr,
                   BLOCK_C: tl.constexpr):  # fmt: skip
    """The batch's mean and biased variance of the channels ``cols`` from the ``parts`` = N x chunks partial rows
    (mean, M2) of :func:`chunk_mean_m2` (rows of 2 C values): Chan et al.'s pairwise formula in two passes, the
    mean, then M2 = sum M2_i + n_i (mean_i - mean)^2, in a fixed order."""
    rows = tl.arange(0, BLOCK_P)
    col_mask = (cols < C)[None, :]
    weighted = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for r0 in range(0, parts, BLOCK_P):
        r = r0 + rows
        mask = (r < parts)[:, None] & col_mask
        means = tl.load(partial_ptr + r[:, None].to(tl.int64) * 2 * C + cols[None, :], mask=mask, other=0.0,
                        cache_modifier=".cg")  # fmt: skip
        weighted += means * chunk_span(r % chunks, P, rows_per_chunk)[:, None]
    mean = tl.sum(weighted, axis=0) / count
    m2 = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for r0 in range(0, parts, BLOCK_P):
        r = r0 + rows
        mask = (r < parts)[:, None] & col_mask
        row_ptr = partial_ptr + r[:, None].to(tl.int64) * 2 * C + cols[None, :]
        means = tl.load(row_ptr, mask=mask, other=0.0, cache_modifier=".cg")
        dev = tl.where(mask, means - mean[None, :], 0.0)
        m2 += tl.load(row_ptr + C, mask=mask, other=0.0, cache_modifier=".cg")
        m2 += dev * dev * chunk_span(r % chunks, P, rows_per_chunk)[:, None]
    return mean, tl.sum(m2, axis=0) / count


@triton.jit
def chunk_statistics_ticket(x_ptr, partial_ptr, counter_ptr, P, C, rows_per_chunk, stride_xb, stride_xp, stride_xc,
                            cols, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, EVEN_C: tl.constexpr):  # fmt: skip
    """The statistics kernels' first half: the (mean, M2) of the program's chunk (programs (k, j, b): chunk k of
    sample b, channel block j) stored as partial[b chunks + k, 0 / 1, :], then the channel block's ticket, taken
    after every thread's partials (acq_rel). Returns the ticket: the caller that draws N x chunks - 1 (the last of
    the N x chunks programs) finishes the statistics (:func:`batch_mean_var`) and resets the counter to 0."""
    b = tl.program_id(2)
    x_base = x_ptr + b.to(tl.int64) * stride_xb
    chunk_mean, chunk_m2 = chunk_mean_m2(x_base, P, C, rows_per_chunk, stride_xp, stride_xc, cols, BLOCK_P, BLOCK_C,
                                         EVEN_C)  # fmt: skip
    partial = partial_ptr + (b.to(tl.int64) * tl.num_programs(0) + tl.program_id(0)) * 2 * C
    store_row(partial, chunk_mean, cols, C, EVEN_C)
    store_row(partial + C, chunk_m2, cols, C, EVEN_C)
    tl.debug_barrier()  # every thread's partials come before the ticket (release)
    return tl.atomic_add(counter_ptr + tl.program_id(1), 1, sem="acq_rel", scope="gpu")


@triton.jit
def running_statistics_step(running_mean_ptr, running_var_ptr, new_mean_ptr, new_var_ptr, mean, var, count, momentum,
                            cols, C, EVEN_C: tl.constexpr):  # fmt: skip
    """The running statistics' step towards the batch's ``mean`` and biased ``var`` over ``count`` values (the
    variance made unbiased, as ``F.batch_norm`` does), written to new_mean / new_var."""
    running_mean = load_row(running_mean_ptr, cols, C, EVEN_C)
    running_var = load_row(running_var_ptr, cols, C, EVEN_C)
    unbiased = var * (count / (count - 1.0))
    store_row(new_mean_ptr, _lerp(running_mean, mean, momentum), cols, C, EVEN_C)
    store_row(new_var_ptr, _lerp(running_var, unbiased, momentum), cols, C, EVEN_C)


@triton.jit
def chunk_grad_sums(x_base, dy_base, mean, P, C, rows_per_chunk, stride_xp, stride_xc, stride_dp, stride_dc, cols,
                    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, EVEN_C: tl.constexpr):  # fmt: skip
    """(sum of dy, sum of dy (x - mean)) per channel over the program's chunk of positions."""
    offsets = tl.arange(0, BLOCK_P)
    row_begin, full_end, row_end = chunk_rows(P, rows_per_chunk, BLOCK_P)
    acc_d = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc_p = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for start in range(row_begin, full_end, BLOCK_P):
        rows = start + offsets
        x = load_tile(tile_pointers(x_base, rows, cols, stride_xp, stride_xc), rows, row_end, cols, C, False, EVEN_C)
        dy = load_tile(tile_pointers(dy_base, rows, cols, stride_dp, stride_dc), rows, row_end, cols, C, False,
                       EVEN_C)  # fmt: skip
        acc_d += dy
        acc_p += dy * (x - mean[None, :])
    if full_end < row_end:  # masked rows load dy = 0 and add nothing
        rows = full_end + offsets
        x = load_tile(tile_pointers(x_base, rows, cols, stride_xp, stride_xc), rows, row_end, cols, C, True, EVEN_C)
        dy = load_tile(tile_pointers(dy_base, rows, cols, stride_dp, stride_dc), rows, row_end, cols, C, True,
                       EVEN_C)  # fmt: skip
        acc_d += dy
        acc_p += dy * (x - mean[None, :])
    return tl.sum(acc_d, axis=0), tl.sum(acc_p, axis=0)


@triton.jit
def _bn_add_sums_kernel(
    x_ptr,
    partial_ptr,
    stats_ptr,
    counter_ptr,
    running_mean_ptr,
    running_var_ptr,
    new_mean_ptr,
    new_var_ptr,
    N,
    P,
    C,
    rows_per_chunk,
    count,
    stride_xb,
    stride_xp,
    stride_xc,
    momentum,
    eps,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
    UPDATE_RUNNING: tl.constexpr,
):
    """Mean and M2 of the program's chunk per channel (partial[b chunks + k, 0 / 1, :]); the channel block's last
    program: the batch's mean and 1 / sqrt(var + eps) (stats[0 / 1, :]) and the running statistics' step, written
    to new_mean / new_var (the running statistics themselves, or rows of stats for the registered op)."""
    chunks = tl.num_programs(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ticket = chunk_statistics_ticket(x_ptr, partial_ptr, counter_ptr, P, C, rows_per_chunk, stride_xb, stride_xp,
                                     stride_xc, cols, BLOCK_P, BLOCK_C, EVEN_C)  # fmt: skip
    if ticket == chunks * N - 1:
        mean, var = batch_mean_var(partial_ptr, N * chunks, chunks, P, rows_per_chunk, count, cols, C, BLOCK_P,
                                   BLOCK_C)  # fmt: skip
        store_row(stats_ptr, mean, cols, C, EVEN_C)
        store_row(stats_ptr + C, tl.div_rn(1.0, tl.sqrt_rn(var + eps)), cols, C, EVEN_C)
        if UPDATE_RUNNING:
            running_statistics_step(running_mean_ptr, running_var_ptr, new_mean_ptr, new_var_ptr, mean, var, count,
                                    momentum, cols, C, EVEN_C)  # fmt: skip
        tl.atomic_xchg(counter_ptr + tl.program_id(1), 0)  # ready for the next launch


@triton.jit
def _normalisation(stats_ptr, running_mean_ptr, running_var_ptr, cols, C, eps, EVEN_C: tl.constexpr,
                   BATCH_STATS: tl.constexpr):  # fmt: skip
    """(mean, 1 / sqrt(var + eps)) of the channels ``cols``: the batch's (stats) or the running statistics'."""
    if BATCH_STATS:
        mean = load_row(stats_ptr, cols, C, EVEN_C)
        rstd = load_row(stats_ptr + C, cols, C, EVEN_C)
    else:
        mean = load_row(running_mean_ptr, cols, C, EVEN_C)
        rstd = tl.div_rn(1.0, tl.sqrt_rn(load_row(running_var_ptr, cols, C, EVEN_C) + eps))
    return mean, rstd


@triton.jit
def _affine(weight_ptr, bias_ptr, scale_ptr, cols, C, BLOCK_C: tl.constexpr, EVEN_C: tl.constexpr,
            AFFINE: tl.constexpr, HAS_SCALE: tl.constexpr):  # fmt: skip
    """(weight, bias, scale) of the channels ``cols``: 1, 0 and 1 where absent."""
    weight = tl.full((BLOCK_C,), 1.0, tl.float32)
    bias = tl.zeros((BLOCK_C,), dtype=tl.float32)
    scale = tl.full((BLOCK_C,), 1.0, tl.float32)
    if AFFINE:
        weight = load_row(weight_ptr, cols, C, EVEN_C)
        bias = load_row(bias_ptr, cols, C, EVEN_C)
    if HAS_SCALE:
        scale = load_row(scale_ptr, cols, C, EVEN_C)
    return weight, bias, scale


@triton.jit
def _bn_add_apply_kernel(
    x_ptr,
    res_ptr,
    out_ptr,
    stats_ptr,
    running_mean_ptr,
    running_var_ptr,
    weight_ptr,
    bias_ptr,
    scale_ptr,
    sample_scale_ptr,
    P,
    C,
    rows_per_chunk,
    stride_xb,
    stride_xp,
    stride_xc,
    stride_rb,
    stride_rp,
    stride_rc,
    stride_ob,
    stride_op,
    stride_oc,
    eps,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
    BATCH_STATS: tl.constexpr,
    AFFINE: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SAMPLE_SCALE: tl.constexpr,
):
    """out = residual + (input - mean) a + c over the program's chunk; without batch statistics, programs (0, j, 0) also
    write the running statistics' mean and 1 / sqrt(var + eps) to stats (for the backward)."""
    b = tl.program_id(2)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offsets = tl.arange(0, BLOCK_P)
    mean, rstd = _normalisation(stats_ptr, running_mean_ptr, running_var_ptr, cols, C, eps, EVEN_C, BATCH_STATS)
    if not BATCH_STATS:
        if (tl.program_id(0) == 0) & (b == 0):
            store_row(stats_ptr, mean, cols, C, EVEN_C)
            store_row(stats_ptr + C, rstd, cols, C, EVEN_C)
    weight, bias, scale = _affine(weight_ptr, bias_ptr, scale_ptr, cols, C, BLOCK_C, EVEN_C, AFFINE, HAS_SCALE)
    a = weight * scale * rstd  # out = residual + (input - mean) a + c: the mean subtracted first, as the reference
    c = bias * scale
    if HAS_SAMPLE_SCALE:
        sample_scale = tl.load(sample_scale_ptr + b).to(tl.float32)
        a *= sample_scale
        c *= sample_scale
    a = a[None, :]
    c = c[None, :]
    mean = mean[None, :]
    x_base = x_ptr + b.to(tl.int64) * stride_xb
    res_base = res_ptr + b.to(tl.int64) * stride_rb
    out_base = out_ptr + b.to(tl.int64) * stride_ob
    row_begin, full_end, row_end = chunk_rows(P, rows_per_chunk, BLOCK_P)
    for start in range(row_begin, full_end, BLOCK_P):
        rows = start + offsets
        x = load_tile(tile_pointers(x_base, rows, cols, stride_xp, stride_xc), rows, row_end, cols, C, False, EVEN_C)
        res = load_tile(tile_pointers(res_base, rows, cols, stride_rp, stride_rc), rows, row_end, cols, C, False,
                        EVEN_C)  # fmt: skip
        out_ptrs = tile_pointers(out_base, rows, cols, stride_op, stride_oc)
        store_tile(out_ptrs, res + ((x - mean) * a + c), rows, row_end, cols, C, False, EVEN_C)
    if full_end < row_end:
        rows = full_end + offsets
        x = load_tile(tile_pointers(x_base, rows, cols, stride_xp, stride_xc), rows, row_end, cols, C, True, EVEN_C)
        res = load_tile(tile_pointers(res_base, rows, cols, stride_rp, stride_rc), rows, row_end, cols, C, True,
                        EVEN_C)  # fmt: skip
        out_ptrs = tile_pointers(out_base, rows, cols, stride_op, stride_oc)
        store_tile(out_ptrs, res + ((x - mean) * a + c), rows, row_end, cols, C, True, EVEN_C)


@triton.jit
def _bn_add_grad_sums_kernel(
    x_ptr,
    dy_ptr,
    partial_ptr,
    stats_ptr,
    grads_ptr,
    coef_ptr,
    counter_ptr,
    weight_ptr,
    bias_ptr,
    scale_ptr,
    sample_scale_ptr,
    N,
    P,
    C,
    rows_per_chunk,
    count,
    stride_xb,
    stride_xp,
    stride_xc,
    stride_db,
    stride_dp,
    stride_dc,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
    BATCH_STATS: tl.constexpr,
    AFFINE: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SAMPLE_SCALE: tl.constexpr,
):
    """Sums of u = sample_scale dy and of u x_hat over the program's chunk (partial[b chunks + k, 0 / 1, :]); the
    channel block's last program: d weight, d bias, d scale (grads[0 / 1 / 2, :]) and the input gradient's
    coefficients k1, k2, k3 (coef[0 / 1 / 2, :])."""
    b = tl.program_id(2)
    chunks = tl.num_programs(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mean = load_row(stats_ptr, cols, C, EVEN_C)
    rstd = load_row(stats_ptr + C, cols, C, EVEN_C)
    x_base = x_ptr + b.to(tl.int64) * stride_xb
    dy_base = dy_ptr + b.to(tl.int64) * stride_db
    s1, s2 = chunk_grad_sums(x_base, dy_base, mean, P, C, rows_per_chunk, stride_xp, stride_xc, stride_dp, stride_dc,
                             cols, BLOCK_P, BLOCK_C, EVEN_C)  # fmt: skip
    s2 *= rstd
    if HAS_SAMPLE_SCALE:
        sample_scale = tl.load(sample_scale_ptr + b).to(tl.float32)
        s1 *= sample_scale
        s2 *= sample_scale
    partial = partial_ptr + (b.to(tl.int64) * chunks + tl.program_id(0)) * 2 * C
    store_row(partial, s1, cols, C, EVEN_C)
    store_row(partial + C, s2, cols, C, EVEN_C)
    tl.debug_barrier()  # every thread's partials come before the ticket (release)
    ticket = tl.atomic_add(counter_ptr + tl.program_id(1), 1, sem="acq_rel", scope="gpu")
    if ticket == chunks * N - 1:
        parts = N * chunks
        rows = tl.arange(0, BLOCK_P)
        col_mask = (cols < C)[None, :]
        sum_d = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        sum_p = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
        for r0 in range(0, parts, BLOCK_P):
            r = r0 + rows
            mask = (r < parts)[:, None] & col_mask
            row_ptr = partial_ptr + r[:, None].to(tl.int64) * 2 * C + cols[None, :]
            sum_d += tl.load(row_ptr, mask=mask, other=0.0, cache_modifier=".cg")
            sum_p += tl.load(row_ptr + C, mask=mask, other=0.0, cache_modifier=".cg")
        s1 = tl.sum(sum_d, axis=0)
        s2 = tl.sum(sum_p, axis=0)
        weight, bias, scale = _affine(weight_ptr, bias_ptr, scale_ptr, cols, C, BLOCK_C, EVEN_C, AFFINE, HAS_SCALE)
        store_row(grads_ptr, scale * s2, cols, C, EVEN_C)
        store_row(grads_ptr + C, scale * s1, cols, C, EVEN_C)
        store_row(grads_ptr + 2 * C, weight * s2 + bias * s1, cols, C, EVEN_C)
        k1 = weight * scale * rstd
        store_row(coef_ptr, k1, cols, C, EVEN_C)
        if BATCH_STATS:
            store_row(coef_ptr + C, -k1 * rstd * s2 / count, cols, C, EVEN_C)
            store_row(coef_ptr + 2 * C, -k1 * s1 / count, cols, C, EVEN_C)
        else:
            store_row(coef_ptr + C, tl.zeros((BLOCK_C,), dtype=tl.float32), cols, C, EVEN_C)
            store_row(coef_ptr + 2 * C, tl.zeros((BLOCK_C,), dtype=tl.float32), cols, C, EVEN_C)
        tl.atomic_xchg(counter_ptr + tl.program_id(1), 0)  # ready for the next launch


@triton.jit
def grad_apply_tiles(x_base, dy_base, dx_base, mean, k1, k2, k3, P, C, rows_per_chunk, stride_xp, stride_xc,
                     stride_dp, stride_dc, stride_gp, stride_gc, cols, BLOCK_P: tl.constexpr,
                     EVEN_C: tl.constexpr):  # fmt: skip
    """dx = dy k1 + (x - mean) k2 + k3 over the program's chunk of positions (the coefficients [1, BLOCK_C] rows)."""
    offsets = tl.arange(0, BLOCK_P)
    row_begin, full_end, row_end = chunk_rows(P, rows_per_chunk, BLOCK_P)
    for start in range(row_begin, full_end, BLOCK_P):
        rows = start + offsets
        x = load_tile(tile_pointers(x_base, rows, cols, stride_xp, stride_xc), rows, row_end, cols, C, False, EVEN_C)
        dy = load_tile(tile_pointers(dy_base, rows, cols, stride_dp, stride_dc), rows, row_end, cols, C, False,
                       EVEN_C)  # fmt: skip
        dx_ptrs = tile_pointers(dx_base, rows, cols, stride_gp, stride_gc)
        store_tile(dx_ptrs, dy * k1 + ((x - mean) * k2 + k3), rows, row_end, cols, C, False, EVEN_C)
    if full_end < row_end:
        rows = full_end + offsets
        x = load_tile(tile_pointers(x_base, rows, cols, stride_xp, stride_xc), rows, row_end, cols, C, True, EVEN_C)
        dy = load_tile(tile_pointers(dy_base, rows, cols, stride_dp, stride_dc), rows, row_end, cols, C, True,
                       EVEN_C)  # fmt: skip
        dx_ptrs = tile_pointers(dx_base, rows, cols, stride_gp, stride_gc)
        store_tile(dx_ptrs, dy * k1 + ((x - mean) * k2 + k3), rows, row_end, cols, C, True, EVEN_C)


@triton.jit
def _bn_add_grad_apply_kernel(
    x_ptr,
    dy_ptr,
    dx_ptr,
    stats_ptr,
    coef_ptr,
    sample_scale_ptr,
    P,
    C,
    rows_per_chunk,
    stride_xb,
    stride_xp,
    stride_xc,
    stride_db,
    stride_dp,
    stride_dc,
    stride_gb,
    stride_gp,
    stride_gc,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
    HAS_SAMPLE_SCALE: tl.constexpr,
):
    """dinput = sample_scale dy k1 + (input - mean) k2 + k3 over the program's chunk."""
    b = tl.program_id(2)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mean = load_row(stats_ptr, cols, C, EVEN_C)[None, :]
    k1 = load_row(coef_ptr, cols, C, EVEN_C)
    if HAS_SAMPLE_SCALE:
        k1 *= tl.load(sample_scale_ptr + b).to(tl.float32)
    k1 = k1[None, :]
    k2 = load_row(coef_ptr + C, cols, C, EVEN_C)[None, :]
    k3 = load_row(coef_ptr + 2 * C, cols, C, EVEN_C)[None, :]
    b64 = b.to(tl.int64)
    grad_apply_tiles(x_ptr + b64 * stride_xb, dy_ptr + b64 * stride_db, dx_ptr + b64 * stride_gb, mean, k1, k2, k3, P,
                     C, rows_per_chunk, stride_xp, stride_xc, stride_dp, stride_dc, stride_gp, stride_gc, cols, BLOCK_P,
                     EVEN_C)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# 3. Launchers
# ----------------------------------------------------------------------------------------------------------------


def _check_triton_inputs(input, residual, running_mean, running_var, weight, bias, training, momentum, eps, scale,
                         sample_scale) -> torch.dtype:  # fmt: skip
    """Check the inputs as the Triton kernels take them; the result's dtype."""
    check_batch_norm_add_inputs(
        input, residual, running_mean, running_var, weight, bias, training, momentum, eps, scale, sample_scale
    )
    check_triton_dtypes("the Triton batch-norm + add kernels take", {"input": input, "residual": residual})
    out_dtype = result_dtype(input, residual, scale)
    if out_dtype not in TRITON_DTYPES:
        raise TypeError(
            f"the Triton batch-norm + add kernels write {[str(d) for d in TRITON_DTYPES]}, got {out_dtype} (the "
            "promotion of residual, input and scale); use backend='torch'"
        )
    if input.shape[0] > MAX_BATCH:
        raise ValueError(
            f"the Triton batch-norm + add kernels take at most {MAX_BATCH} samples a call, got {input.shape[0]}; "
            "split the batch or use backend='torch'"
        )
    check_triton_device(input.device)
    return out_dtype


def _vector(t: Tensor | None, like: Tensor) -> Tensor:
    """``t`` with contiguous values (any shape: the kernels read C values from its pointer); a pointer the kernel
    does not read (``like``) where ``t`` is None."""
    if t is None:
        return like
    return t if t.is_contiguous() else t.reshape(-1).contiguous()


def batch_norm_add_forward(
    input: Tensor,
    residual: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    scale: Tensor | None = None,
    sample_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Triton forward: (out, stats): ``out`` of the shape and layout of ``residual`` (its strides where its H and W
    merge, else contiguous) in :func:`result_dtype`; ``stats`` float32 [2, C], the mean and 1 / sqrt(var + eps)
    that normalised (for the backward). In training with running statistics, they take their step in place. Two
    launches in training, one otherwise. Validates its inputs."""
    out, stats, _steps = _forward(
        input, residual, running_mean, running_var, weight, bias, training, momentum, eps, scale, sample_scale, True
    )
    return out, stats


def _output_like(t: Tensor, dtype: torch.dtype) -> Tensor:
    """An empty tensor of ``t``'s shape in ``dtype``: in ``t``'s layout where its positions merge, else contiguous
    (as :func:`merged_positions` copies such a ``t``); the fake implementations give the same strides."""
    return (
        torch.empty_like(t, dtype=dtype)
        if positions_merge(t, 1)
        else torch.empty(t.shape, dtype=dtype, device=t.device)
    )


def _forward(
    input, residual, running_mean, running_var, weight, bias, training, momentum, eps, scale, sample_scale, in_place
) -> tuple[Tensor, Tensor, Tensor]:
    """(out, stats, steps): the forward, the running statistics' step written in place (``in_place``) or, for the
    registered op (which may not write to its inputs), to ``steps`` [2, C] (new running mean and variance, float32;
    [0, C] when there is no step to take)."""
    out_dtype = _check_triton_inputs(
        input, residual, running_mean, running_var, weight, bias, training, momentum, eps, scale, sample_scale
    )
    batch, channels, height, width = input.shape
    positions = height * width
    update = training and running_mean is not None and input.numel() > 0
    out = _output_like(residual, out_dtype)
    x, x_strides = merged_positions(input, 1)
    res, res_strides = merged_positions(residual, 1)
    _, out_strides = merged_positions(out, 1)
    steps = torch.empty(2 if update and not in_place else 0, channels, dtype=torch.float32, device=input.device)
    if input.numel() == 0:
        return out, torch.zeros(2, channels, dtype=torch.float32, device=input.device), steps
    (block_p, block_c, even_c), chunks, rows = geometry(batch, positions, channels, input.device)
    partials = 2 * channels * batch * chunks if training else 0
    workspace = torch.empty(2 * channels + partials, dtype=torch.float32, device=input.device)
    stats = workspace[: 2 * channels].view(2, channels)
    running_mean_arg, running_var_arg = _vector(running_mean, stats), _vector(running_var, stats)
    new_mean, new_var = (running_mean_arg, running_var_arg) if in_place or not update else (steps[0], steps[1])
    grid = (chunks, cdiv(channels, block_c), batch)
    with device_guard(input.device):
        if training:
            launchable(_bn_add_sums_kernel)[grid](
                x, workspace[2 * channels :], stats, ticket_counters(input.device, grid[1]), running_mean_arg,
                running_var_arg, new_mean, new_var, batch, positions, channels, rows, float(batch * positions),
                *x_strides, float(momentum), float(eps),
                BLOCK_P=block_p, BLOCK_C=block_c, EVEN_C=even_c, UPDATE_RUNNING=update,
            )  # fmt: skip
        launchable(_bn_add_apply_kernel)[grid](
            x, res, out, stats, running_mean_arg, running_var_arg, _vector(weight, stats), _vector(bias, stats),
            _vector(scale, stats), _vector(sample_scale, stats), positions, channels, rows, *x_strides, *res_strides,
            *out_strides, float(eps),
            BLOCK_P=block_p, BLOCK_C=block_c, EVEN_C=even_c, BATCH_STATS=training, AFFINE=weight is not None,
            HAS_SCALE=scale is not None, HAS_SAMPLE_SCALE=sample_scale is not None,
        )  # fmt: skip
    if update and in_place:
        running_step_taken(running_mean, running_var, running_mean_arg, running_var_arg)
    return out, stats, steps


def running_step_taken(running_mean: Tensor, running_var: Tensor, written_mean: Tensor, written_var: Tensor) -> None:
    """After a kernel wrote the running statistics' step in place into ``written_mean`` / ``written_var``
    (:func:`_vector` of the buffers): copied into the buffers where those were contiguous copies, else the buffers'
    version counters moved, as an in-place op would move them (caches keyed by version)."""
    for running, written in ((running_mean, written_mean), (running_var, written_var)):
        if written.data_ptr() != running.data_ptr():
            running.copy_(written.view(running.shape))
        else:
            torch.autograd.graph.increment_version(running)


def _parameter_gradient(grad: Tensor, parameter: Tensor | None) -> Tensor | None:
    return None if parameter is None else grad.to(parameter.dtype).view(parameter.shape)


def batch_norm_add_backward(
    grad_output: Tensor,
    input: Tensor,
    stats: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    scale: Tensor | None,
    sample_scale: Tensor | None,
    training: bool,
) -> tuple[Tensor, Tensor]:
    """Triton backward: (d input, grads): d input in the dtype and layout of ``input``; ``grads`` float32 [3, C],
    the gradients of weight, bias and scale (summed in float32 in a fixed order; rows of absent parameters hold
    what they would be). The residual's gradient is ``grad_output`` itself. Two launches."""
    if grad_output.shape != input.shape or grad_output.device != input.device or not grad_output.is_floating_point():
        raise ValueError(
            f"grad_output must be a floating-point tensor of the shape of input {list(input.shape)} on "
            f"{input.device}, got {grad_output.dtype} {list(grad_output.shape)} on {grad_output.device}"
        )
    channels = input.shape[1]
    if stats.shape != (2, channels) or stats.dtype != torch.float32 or stats.device != input.device:
        raise ValueError(
            f"stats must be the forward's float32 [2, {channels}] on {input.device}, got {stats.dtype} "
            f"{list(stats.shape)} on {stats.device}"
        )
    for name, t in (("weight", weight), ("bias", bias), ("scale", scale)):
        _check_vector(name, t, channels, input.device)
    if sample_scale is not None:
        _check_vector("sample_scale", sample_scale, input.shape[0], input.device, "N")
    check_triton_dtypes("the Triton batch-norm + add kernels take", {"input": input, "grad_output": grad_output})
    check_triton_device(input.device)
    return _launch_backward(grad_output, input, stats.contiguous(), weight, bias, scale, sample_scale, training)


def _launch_backward(grad_output, input, stats, weight, bias, scale, sample_scale, training) -> tuple[Tensor, Tensor]:
    """:func:`batch_norm_add_backward` without checking its inputs (for the eager autograd Function, whose forward
    checked them and made ``stats``)."""
    batch, channels, height, width = input.shape
    positions = height * width
    x, x_strides = merged_positions(input, 1)
    dy, dy_strides = merged_positions(grad_output, 1)
    dx = torch.empty_like(x)
    _, dx_strides = merged_positions(dx, 1)
    if input.numel() == 0:
        return dx, torch.zeros(3, channels, dtype=torch.float32, device=input.device)
    (block_p, block_c, even_c), chunks, rows = geometry(batch, positions, channels, input.device)
    grid = (chunks, cdiv(channels, block_c), batch)
    workspace = torch.empty(channels * (6 + 2 * batch * chunks), dtype=torch.float32, device=input.device)
    grads = workspace[: 3 * channels].view(3, channels)
    coef = workspace[3 * channels : 6 * channels]
    sample_scale_arg = _vector(sample_scale, stats)
    flags = dict(BLOCK_P=block_p, BLOCK_C=block_c, EVEN_C=even_c)
    with device_guard(input.device):
        launchable(_bn_add_grad_sums_kernel)[grid](
            x, dy, workspace[6 * channels :], stats, grads, coef, ticket_counters(input.device, grid[1]),
            _vector(weight, stats), _vector(bias, stats), _vector(scale, stats), sample_scale_arg, batch, positions,
            channels, rows, float(batch * positions), *x_strides, *dy_strides,
            **flags, BATCH_STATS=training, AFFINE=weight is not None, HAS_SCALE=scale is not None,
            HAS_SAMPLE_SCALE=sample_scale is not None,
        )  # fmt: skip
        launchable(_bn_add_grad_apply_kernel)[grid](
            x, dy, dx, stats, coef, sample_scale_arg, positions, channels, rows, *x_strides, *dy_strides, *dx_strides,
            **flags, HAS_SAMPLE_SCALE=sample_scale is not None,
        )  # fmt: skip
    return dx, grads


# ----------------------------------------------------------------------------------------------------------------
# 4. The registered op
# ----------------------------------------------------------------------------------------------------------------


@triton_op("zoo::batch_norm_add")
def _batch_norm_add_op(
    input: Tensor,
    residual: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    scale: Tensor | None,
    sample_scale: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    return _forward(
        input, residual, running_mean, running_var, weight, bias, training, momentum, eps, scale, sample_scale, False
    )


@_batch_norm_add_op.register_fake
def _(input, residual, running_mean, running_var, weight, bias, training, momentum, eps, scale, sample_scale):
    check_batch_norm_add_inputs(
        input, residual, running_mean, running_var, weight, bias, training, momentum, eps, scale, sample_scale
    )
    out = _output_like(residual, result_dtype(input, residual, scale))
    channels = input.shape[1]
    update = training and running_mean is not None and input.numel() > 0
    return (
        out,
        input.new_empty((2, channels), dtype=torch.float32),
        input.new_empty((2 if update else 0, channels), dtype=torch.float32),
    )


@triton_op("zoo::batch_norm_add_backward")
def _batch_norm_add_backward_op(
    grad_output: Tensor,
    input: Tensor,
    stats: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    scale: Tensor | None,
    sample_scale: Tensor | None,
    training: bool,
) -> tuple[Tensor, Tensor]:
    return batch_norm_add_backward(grad_output, input, stats, weight, bias, scale, sample_scale, training)


@_batch_norm_add_backward_op.register_fake
def _(grad_output, input, stats, weight, bias, scale, sample_scale, training):
    return _output_like(input, input.dtype), input.new_empty((3, input.shape[1]), dtype=torch.float32)


def _gradients(grad_output: Tensor, dx: Tensor, grads: Tensor, weight, bias, scale) -> tuple:
    """The autograd Function's and the registered op's gradients, in the forward's argument order."""
    d_weight, d_bias, d_scale = (_parameter_gradient(g, p) for g, p in zip(grads, (weight, bias, scale), strict=True))
    # the residual's: the output's gradient itself (autograd casts it to the residual's dtype where they differ)
    return dx, grad_output, None, None, d_weight, d_bias, None, None, None, d_scale, None


def _save(ctx, inputs, stats: Tensor) -> None:
    input, _residual, _rm, _rv, weight, bias, training, _momentum, _eps, scale, sample_scale = inputs
    ctx.training = training
    ctx.save_for_backward(input, stats, weight, bias, scale, sample_scale)


def _setup_context(ctx, inputs, output) -> None:
    _out, stats, steps = output
    _save(ctx, inputs, stats)
    ctx.mark_non_differentiable(stats, steps)


def _backward(ctx, grad_output: Tensor, _grad_stats, _grad_steps):
    input, stats, weight, bias, scale, sample_scale = ctx.saved_tensors  # (unpacked once: checkpointing allows no more)
    dx, grads = torch.ops.zoo.batch_norm_add_backward(
        grad_output, input, stats, weight, bias, scale, sample_scale, ctx.training
    )
    return _gradients(grad_output, dx, grads, weight, bias, scale)


_batch_norm_add_op.register_autograd(_backward, setup_context=_setup_context)


class _BatchNormAddFunction(torch.autograd.Function):
    """Eager autograd of the Triton path: the launchers called directly (no custom-op dispatch)."""

    @staticmethod
    def forward(ctx, *inputs):
        out, stats = batch_norm_add_forward(*inputs)
        _save(ctx, inputs, stats)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        input, stats, weight, bias, scale, sample_scale = ctx.saved_tensors  # (unpacked once)
        dx, grads = _launch_backward(grad_output, input, stats, weight, bias, scale, sample_scale, ctx.training)
        return _gradients(grad_output, dx, grads, weight, bias, scale)


def _forward_only(*inputs) -> Tensor:
    return batch_norm_add_forward(*inputs)[0]


def _registered(*inputs) -> Tensor:
    """The registered op, which returns the running statistics' step (a custom op with an autograd formula may not
    write to its inputs): copied into them here, graph ops under torch.compile."""
    out, _stats, steps = torch.ops.zoo.batch_norm_add(*inputs)
    _input, _residual, running_mean, running_var, *_ = inputs
    copy_running_steps(steps, running_mean, running_var)
    return out


def copy_running_steps(steps: Tensor, running_mean: Tensor | None, running_var: Tensor | None) -> None:
    """The registered ops' running-statistics step ([2, C]: new mean and variance; [0, C]: none) copied into the
    buffers (this op's and zoo/kernels/batch_norm_se.py's)."""
    if steps.shape[0]:
        with torch.no_grad():
            running_mean.copy_(steps[0].view(running_mean.shape))
            running_var.copy_(steps[1].view(running_var.shape))


def batch_norm_add(
    input: Tensor,
    residual: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    scale: Tensor | None = None,
    sample_scale: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """``residual + sample_scale[n] * scale[c] * F.batch_norm(input, running_mean, running_var, weight, bias,
    training, momentum, eps)`` in two launches each way (see the module docstring).

    Args:
        input: ``[N, C, H, W]`` float16/bfloat16/float32 (float64 on the reference backend), any strides (a layout
            whose H and W do not merge into one stride is copied first).
        residual: like ``input`` (any of those dtypes, its own strides); the result takes its layout.
        running_mean, running_var: C values each, or both None (then ``training`` must be True); updated in place
            when ``training`` is True, as ``F.batch_norm`` does.
        weight, bias: the batch norm's affine parameters (C values each), or both None.
        training: normalise with the batch's statistics (True) or the running ones.
        momentum: the running statistics' step towards the batch's (a number in [0, 1]).
        eps: added to the variance.
        scale: a per-channel factor (C values: a layer scale), or None.
        sample_scale: a per-sample factor (N values: stochastic depth's mask over the keep probability), or None;
            it takes no gradient.
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see :mod:`zoo.kernels._backend`); on CPU tensors every
            backend but ``"triton"`` runs the reference.

    Returns:
        A tensor of the shape of ``input`` in the promotion of ``residual``'s, ``input``'s and ``scale``'s dtypes,
        differentiable in ``input``, ``residual``, ``weight``, ``bias`` and ``scale``.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    args = (input, residual, running_mean, running_var, weight, bias, training, momentum, eps, scale, sample_scale)
    if resolve_backend(backend, input, TRITON_DTYPES) == "triton":  # the launchers validate their inputs
        return dispatch_triton(*args, op=_registered, function=_BatchNormAddFunction, launcher=_forward_only)
    return batch_norm_add_reference(*args)


# ----------------------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (zoo/kernels/_aot.py; tests/kernels/test_compile_targets.py)
# ----------------------------------------------------------------------------------------------------------------

# UniRepLKNet-T at 224 px, batch 128: (map side, channels C) per stage
BN_ADD_STAGES = ((56, 80), (28, 160), (14, 320), (7, 640))
_BENCHMARK_BATCH = 128


def stage_launch(batch: int, side: int, channels: int) -> tuple:
    """(case, elements a program, the formula in words, (BLOCK_P, BLOCK_C, EVEN_C), chunks, rows per chunk, full tiles
    a program) of a launch over a [batch, channels, side, side] map on an H200's grid: the AOT specs' shapes (this
    op's and zoo/kernels/batch_norm_se.py's)."""
    positions = side * side
    block_p, block_c, even_c = blocks(channels, positions)
    rows = positions_per_chunk(positions, batch * cdiv(channels, block_c), block_p, H200_SMS)
    chunks = cdiv(positions, rows)
    programs = chunks * cdiv(channels, block_c) * batch
    spans = [min(rows, positions - k * rows) for k in range(chunks)]
    full_tiles = sum(span // block_p for span in spans) / chunks
    tail = sum(span % block_p > 0 for span in spans) / chunks
    formula = (
        f"{batch} x {channels} x {positions} elements / {programs} programs ({chunks} chunks of {rows} positions "
        f"x {cdiv(channels, block_c)} channel blocks x {batch} samples), tiles of {block_p} x {block_c}: "
        f"{full_tiles:g} full a program, {tail:g} partial (its code counted once)"
    )
    units = batch * positions * channels / programs
    return f"B{batch}x{channels}x{side}x{side}", units, formula, (block_p, block_c, even_c), chunks, rows, full_tiles


def aot_specs() -> list:
    """Compile and loop-report specs: the four kernels at UniRepLKNet-T's four stages (B128, 224 px) as the block
    calls them under bf16 autocast in training (bf16 input and input gradient, float32 residual, output and output
    gradient, float32 parameters, a sample scale: stochastic depth); at stage 3 also the eval forward (running
    statistics) without a sample scale. Useful work: an element of the input. Stage 1 is compiled in the tests too
    (``ci``)."""
    from zoo.kernels._aot import Work, launch_spec

    specs = []
    batch = _BENCHMARK_BATCH
    for stage, (side, channels) in enumerate(BN_ADD_STAGES, start=1):
        positions = side * side
        case, units, formula, (block_p, block_c, even_c), chunks, rows, full_tiles = stage_launch(batch, side, channels)
        ci = stage == 1
        # the channel block's last program (1 in chunks x samples) combines the N x chunks partials
        finish = cdiv(batch * chunks, block_p) / (chunks * batch)
        work = Work(case, "element", units, (full_tiles,), formula)
        statistics = Work(case, "element", units, ((full_tiles, finish, finish),), formula)
        finishing = Work(case, "element", units, ((full_tiles, finish),), formula)
        common = dict(
            x_ptr="*bf16",
            stats_ptr="*fp32",
            P=positions,
            C=channels,
            rows_per_chunk=rows,
            stride_xb=positions * channels,
            stride_xp=channels,
            stride_xc=1,
            BLOCK_P=block_p,
            BLOCK_C=block_c,
            EVEN_C=even_c,
        )
        params = dict(weight_ptr="*fp32", bias_ptr="*fp32", scale_ptr="*fp32", sample_scale_ptr="*fp32")
        flags = dict(AFFINE=True, HAS_SCALE=True)
        apply = dict(
            common,
            **params,
            **flags,
            res_ptr="*fp32",
            out_ptr="*fp32",
            running_mean_ptr="*fp32",
            running_var_ptr="*fp32",
            stride_rb=positions * channels,
            stride_rp=channels,
            stride_rc=1,
            stride_ob=positions * channels,
            stride_op=channels,
            stride_oc=1,
            eps=1e-5,
        )
        grads = dict(common, dy_ptr="*fp32", stride_db=positions * channels, stride_dp=channels, stride_dc=1)
        label = f"bf16,C{channels}"
        specs += [
            launch_spec(
                f"_bn_add_sums_kernel[{label}]@{case}",
                _bn_add_sums_kernel,
                dict(
                    common,
                    partial_ptr="*fp32",
                    counter_ptr="*i32",
                    running_mean_ptr="*fp32",
                    running_var_ptr="*fp32",
                    new_mean_ptr="*fp32",
                    new_var_ptr="*fp32",
                    N=batch,
                    count=float(batch * positions),
                    momentum=0.1,
                    eps=1e-5,
                    UPDATE_RUNNING=True,
                ),
                work=statistics,
                ci=ci,
            ),
            launch_spec(
                f"_bn_add_apply_kernel[{label}]@{case}",
                _bn_add_apply_kernel,
                dict(apply, BATCH_STATS=True, HAS_SAMPLE_SCALE=True),
                work=work,
                ci=ci,
            ),
            launch_spec(
                f"_bn_add_grad_sums_kernel[{label}]@{case}",
                _bn_add_grad_sums_kernel,
                dict(
                    grads,
                    **params,
                    **flags,
                    partial_ptr="*fp32",
                    grads_ptr="*fp32",
                    coef_ptr="*fp32",
                    counter_ptr="*i32",
                    N=batch,
                    count=float(batch * positions),
                    BATCH_STATS=True,
                    HAS_SAMPLE_SCALE=True,
                ),
                work=finishing,
                ci=ci,
            ),
            launch_spec(
                f"_bn_add_grad_apply_kernel[{label}]@{case}",
                _bn_add_grad_apply_kernel,
                dict(
                    grads,
                    dx_ptr="*bf16",
                    coef_ptr="*fp32",
                    sample_scale_ptr="*fp32",
                    stride_gb=positions * channels,
                    stride_gp=channels,
                    stride_gc=1,
                    HAS_SAMPLE_SCALE=True,
                ),
                work=work,
                ci=ci,
            ),
        ]
        if stage == 3:
            specs.append(
                launch_spec(
                    f"_bn_add_apply_kernel[{label},eval]@{case}",
                    _bn_add_apply_kernel,
                    dict(apply, BATCH_STATS=False, HAS_SAMPLE_SCALE=False),
                    work=work,
                )
            )
    return specs
