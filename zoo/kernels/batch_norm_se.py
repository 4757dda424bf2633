"""Batch norm then squeeze-and-excitation, in two launches forward and three backward (besides the SE layers'): the
middle of UniRepLKNet's block (``SE(BN(dwconv(x)))``).

For ``input`` of shape [N, C, H, W]:

    z = BN(input) = (input - mean) / sqrt(var + eps) * weight + bias
    pool[n, c] = mean over (H, W) of z[n, c]
    gate = sigmoid(up(relu(down(pool))))            (down: C -> R, up: R -> C, the SE block's 1 x 1 convolutions)
    out[n, c, h, w] = gate[n, c] z[n, c, h, w]

with ``mean`` and the biased ``var`` over (N, H, W) in training (the running statistics stepped as ``F.batch_norm``
steps them), the running ones otherwise. The pool is a function of per-sample means that the batch statistics'
kernel has anyway: ``pool = (sample_mean - mean) / sqrt(var + eps) * weight + bias``; so the op reads the input once
for the statistics and once to write the output, where the modules make about six passes (BN's statistics and
normalisation, the pool, the product). Backward: the sums of dy and dy (input - mean) per sample and channel, then
one pass writing the input gradient. The SE block's layers ([N, C] x [C, R] products, tiny) stay ATen ops between the
kernels: 3 forward, 10 backward (docs/design.md §24). Computed in float32; the result in ``input``'s dtype.

Layout of this file (the kernel contract, docs/design.md §2): the reference, the Triton kernels, the launchers, the
registered op.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.kernels._backend import (
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
    chunk_rows,
    geometry,
    load_row,
    load_tile,
    merged_positions,
    store_row,
    store_tile,
    tile_pointers,
)
from zoo.kernels.batch_norm_add import (
    _affine,
    _check_vector,
    _output_like,
    _vector,
    batch_mean_var,
    batch_norm_in,
    check_batch_norm_inputs,
    chunk_grad_sums,
    chunk_span,
    chunk_statistics_ticket,
    copy_running_steps,
    grad_apply_tiles,
    running_statistics_step,
    running_step_taken,
)

__all__ = ["batch_norm_se", "batch_norm_se_reference", "batch_norm_se_forward", "batch_norm_se_backward"]


def check_batch_norm_se_inputs(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    down_weight: Tensor,
    down_bias: Tensor | None,
    up_weight: Tensor,
    up_bias: Tensor | None,
) -> None:
    """Raise ``TypeError``/``ValueError`` naming what was expected when the inputs do not fit the op."""
    check_batch_norm_inputs(input, running_mean, running_var, weight, bias, training, momentum, eps)
    channels = input.shape[1]
    if input.shape[2] * input.shape[3] == 0 or channels == 0:
        raise ValueError(
            f"batch_norm_se needs channels and a non-empty map (the SE block averages over it), got input shape "
            f"{list(input.shape)}"
        )
    for name, t in (("down_weight", down_weight), ("up_weight", up_weight)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got {getattr(t, 'dtype', type(t))}")
        if t.device != input.device:
            raise ValueError(f"{name} must be on the device of input ({input.device}), got {t.device}")
    hidden = down_weight.shape[0] if down_weight.dim() == 2 else -1
    if down_weight.dim() != 2 or down_weight.shape[1] != channels or hidden == 0:
        raise ValueError(f"down_weight must be [R, C] with R >= 1 and C = {channels}, got {list(down_weight.shape)}")
    if tuple(up_weight.shape) != (channels, hidden):
        raise ValueError(f"up_weight must be [C, R] = [{channels}, {hidden}], got {list(up_weight.shape)}")
    _check_vector("down_bias", down_bias, hidden, input.device, "R")
    _check_vector("up_bias", up_bias, channels, input.device)


# ----------------------------------------------------------------------------------------------------------------
# 1. Reference
# ----------------------------------------------------------------------------------------------------------------


def batch_norm_se_reference(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    down_weight: Tensor,
    down_bias: Tensor | None,
    up_weight: Tensor,
    up_bias: Tensor | None,
) -> Tensor:
    """Plain PyTorch: ``z * sigmoid(up(relu(down(mean_HW z))))`` with ``z = F.batch_norm(input, ...)``, in float32
    (float64 for float64 inputs), rounded once to ``input``'s dtype. Defines the op's meaning; differentiable through
    autograd in ``input``, the batch norm's and the SE block's parameters; updates the running statistics in training
    as ``F.batch_norm`` does."""
    check_batch_norm_se_inputs(
        input, running_mean, running_var, weight, bias, training, momentum, eps, down_weight, down_bias, up_weight,
        up_bias,
    )  # fmt: skip
    compute = torch.promote_types(input.dtype, torch.float32)
    with torch.autocast(input.device.type, enabled=False):
        z = batch_norm_in(compute, input, running_mean, running_var, weight, bias, training, momentum, eps)
        hidden = F.relu(F.linear(z.mean((2, 3)), down_weight.to(compute), _to(down_bias, compute)))
        gate = torch.sigmoid(F.linear(hidden, up_weight.to(compute), _to(up_bias, compute)))
        out = z * gate[:, :, None, None]
    return out.to(input.dtype)


def _to(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)


# ----------------------------------------------------------------------------------------------------------------
# 2. Triton kernels
#
# The grid and tiles of zoo/kernels/_sample_tiles.py and the partial sums of zoo/kernels/batch_norm_add.py: each
# program (chunk, channel block, sample) writes the sums of its chunk, takes a ticket on its channel block's
# counter, and the block's last program combines the N x chunks partials in a fixed order - per channel for the
# batch statistics, per (sample, channel) for what the SE block needs (steps of BLOCK_S samples, the chunks summed
# in order). Deterministic; no atomics but the tickets.
#
# Forward: the sums kernel writes stats = (mean, 1 / sqrt(var + eps)) (the batch's, or the running statistics'),
# the running statistics' step, and per sample xbar = (sample mean - mean) / sqrt(var + eps) and the pool
# xbar weight + bias (sample_stats[0 / 1]); the SE block's layers run in cuBLAS on the pool; the apply kernel writes
# out = (input - mean) a + c with a = gate weight rstd, c = gate bias (gate = sigmoid(logit), per sample and channel).
# Backward: the sums kernel writes per (sample, channel) the gate's logit gradient
# dlogit = (weight rstd S_px + bias S_d) gate (1 - gate) (S_d: sum of dy, S_px: sum of dy (input - mean)) and per
# channel sum_n gate S_d, sum_n gate rstd S_px and sum_n dlogit (the up layer's bias gradient); the SE block's
# backward runs in cuBLAS (giving dpool); the apply kernel writes
# dinput = dy k1 + (input - mean) k2 + k3 with k1 = gate weight rstd, k2 = -weight rstd^2 d_weight / M,
# k3 = weight rstd (dpool / HW - d_bias / M) (M = N H W; in eval k2 = 0 and k3 = weight rstd dpool / HW).
# ----------------------------------------------------------------------------------------------------------------


@triton.jit
def _sample_sums(partial_ptr, samples, N, chunks, P, rows_per_chunk, cols, C, SPAN_WEIGHTED: tl.constexpr,
                 BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    """Per (sample, channel) of ``samples`` x ``cols``, the sums over a sample's chunks of the partial rows' first
    and second halves (rows of 2 C values, row b chunks + k); the first weighted by the chunk's positions where
    ``SPAN_WEIGHTED`` (partial means to a sample's sum). Zero where masked."""
    mask = (samples < N)[:, None] & (cols < C)[None, :]
    first = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
    second = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.float32)
    for k in range(0, chunks):
        row_ptr = partial_ptr + (samples.to(tl.int64) * chunks + k)[:, None] * 2 * C + cols[None, :]
        values = tl.load(row_ptr, mask=mask, other=0.0, cache_modifier=".cg")
        if SPAN_WEIGHTED:
            values *= chunk_span(k, P, rows_per_chunk)
        first += values
        second += tl.load(row_ptr + C, mask=mask, other=0.0, cache_modifier=".cg")
    return first, second, mask


@triton.jit
def _gate(logit_ptr, b, cols, C, EVEN_C: tl.constexpr):
    """sigmoid of the logits of sample ``b``, channels ``cols`` ([N, C] rows)."""
    return tl.sigmoid(load_row(logit_ptr + b.to(tl.int64) * C, cols, C, EVEN_C))


@triton.jit
def _bn_se_sums_kernel(
    x_ptr,
    partial_ptr,
    stats_ptr,
    sample_stats_ptr,
    counter_ptr,
    running_mean_ptr,
    running_var_ptr,
    new_mean_ptr,
    new_var_ptr,
    weight_ptr,
    bias_ptr,
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
    BATCH_STATS: tl.constexpr,
    UPDATE_RUNNING: tl.constexpr,
    AFFINE: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Mean and M2 of the program's chunk per channel (partial[b chunks + k, 0 / 1, :]); the channel block's last
    program: stats[0 / 1, :] = the mean and 1 / sqrt(var + eps) that normalise (the batch's, or the running
    statistics' without BATCH_STATS), the running statistics' step (new_mean / new_var), and per sample
    sample_stats[0, n, :] = the pool (the BN output's mean over the map), sample_stats[1, n, :] = xbar (the
    normalised input's mean)."""
    chunks = tl.num_programs(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ticket = chunk_statistics_ticket(x_ptr, partial_ptr, counter_ptr, P, C, rows_per_chunk, stride_xb, stride_xp,
                                     stride_xc, cols, BLOCK_P, BLOCK_C, EVEN_C)  # fmt: skip
    if ticket == chunks * N - 1:
        if BATCH_STATS:
            mean, var = batch_mean_var(partial_ptr, N * chunks, chunks, P, rows_per_chunk, count, cols, C, BLOCK_P,
                                       BLOCK_C)  # fmt: skip
            rstd = tl.div_rn(1.0, tl.sqrt_rn(var + eps))
            if UPDATE_RUNNING:
                running_statistics_step(running_mean_ptr, running_var_ptr, new_mean_ptr, new_var_ptr, mean, var,
                                        count, momentum, cols, C, EVEN_C)  # fmt: skip
        else:
            mean = load_row(running_mean_ptr, cols, C, EVEN_C)
            rstd = tl.div_rn(1.0, tl.sqrt_rn(load_row(running_var_ptr, cols, C, EVEN_C) + eps))
        store_row(stats_ptr, mean, cols, C, EVEN_C)
        store_row(stats_ptr + C, rstd, cols, C, EVEN_C)
        weight, bias, _unit = _affine(weight_ptr, bias_ptr, weight_ptr, cols, C, BLOCK_C, EVEN_C, AFFINE, False)
        for n0 in range(0, N, BLOCK_S):
            samples = n0 + tl.arange(0, BLOCK_S)
            sums, _second, mask = _sample_sums(partial_ptr, samples, N, chunks, P, rows_per_chunk, cols, C, True,
                                               BLOCK_S, BLOCK_C)  # fmt: skip
            xbar = (sums / P - mean[None, :]) * rstd[None, :]
            rows = samples.to(tl.int64)[:, None]
            tl.store(sample_stats_ptr + rows * C + cols[None, :], xbar * weight[None, :] + bias[None, :], mask=mask)
            tl.store(sample_stats_ptr + (rows + N) * C + cols[None, :], xbar, mask=mask)  # (64-bit: N C may not fit)
        tl.atomic_xchg(counter_ptr + tl.program_id(1), 0)  # ready for the next launch


@triton.jit
def _bn_se_apply_kernel(
    x_ptr,
    out_ptr,
    stats_ptr,
    logit_ptr,
    weight_ptr,
    bias_ptr,
    P,
    C,
    rows_per_chunk,
    stride_xb,
    stride_xp,
    stride_xc,
    stride_ob,
    stride_op,
    stride_oc,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
    AFFINE: tl.constexpr,
):
    """out = (input - mean) a + c over the program's chunk, a = gate weight rstd and c = gate bias of its sample."""
    b = tl.program_id(2)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offsets = tl.arange(0, BLOCK_P)
    mean = load_row(stats_ptr, cols, C, EVEN_C)[None, :]
    rstd = load_row(stats_ptr + C, cols, C, EVEN_C)
    weight, bias, _unit = _affine(weight_ptr, bias_ptr, weight_ptr, cols, C, BLOCK_C, EVEN_C, AFFINE, False)
    gate = _gate(logit_ptr, b, cols, C, EVEN_C)
    a = (gate * weight * rstd)[None, :]  # the mean subtracted first, as the reference
    c = (gate * bias)[None, :]
    x_base = x_ptr + b.to(tl.int64) * stride_xb
    out_base = out_ptr + b.to(tl.int64) * stride_ob
    row_begin, full_end, row_end = chunk_rows(P, rows_per_chunk, BLOCK_P)
    for start in range(row_begin, full_end, BLOCK_P):
        rows = start + offsets
        x = load_tile(tile_pointers(x_base, rows, cols, stride_xp, stride_xc), rows, row_end, cols, C, False, EVEN_C)
        out_ptrs = tile_pointers(out_base, rows, cols, stride_op, stride_oc)
        store_tile(out_ptrs, (x - mean) * a + c, rows, row_end, cols, C, False, EVEN_C)
    if full_end < row_end:
        rows = full_end + offsets
        x = load_tile(tile_pointers(x_base, rows, cols, stride_xp, stride_xc), rows, row_end, cols, C, True, EVEN_C)
        out_ptrs = tile_pointers(out_base, rows, cols, stride_op, stride_oc)
        store_tile(out_ptrs, (x - mean) * a + c, rows, row_end, cols, C, True, EVEN_C)


@triton.jit
def _bn_se_grad_sums_kernel(
    x_ptr,
    dy_ptr,
    partial_ptr,
    stats_ptr,
    logit_ptr,
    dlogit_ptr,
    sums_ptr,
    counter_ptr,
    weight_ptr,
    bias_ptr,
    N,
    P,
    C,
    rows_per_chunk,
    stride_xb,
    stride_xp,
    stride_xc,
    stride_db,
    stride_dp,
    stride_dc,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
    AFFINE: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Sums of dy and of dy (input - mean) over the program's chunk (partial[b chunks + k, 0 / 1, :]); the channel
    block's last program: per sample the gate's logit gradient (dlogit[n, :]) and per channel sums[0 / 1 / 2, :] =
    sum_n dlogit (the up layer's bias gradient: first, so that the backward returns a view at offset 0), sum_n gate
    S_d, sum_n gate rstd S_px."""
    b = tl.program_id(2)
    chunks = tl.num_programs(0)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mean = load_row(stats_ptr, cols, C, EVEN_C)
    rstd = load_row(stats_ptr + C, cols, C, EVEN_C)
    x_base = x_ptr + b.to(tl.int64) * stride_xb
    dy_base = dy_ptr + b.to(tl.int64) * stride_db
    s_d, s_px = chunk_grad_sums(x_base, dy_base, mean, P, C, rows_per_chunk, stride_xp, stride_xc, stride_dp,
                                stride_dc, cols, BLOCK_P, BLOCK_C, EVEN_C)  # fmt: skip
    partial = partial_ptr + (b.to(tl.int64) * chunks + tl.program_id(0)) * 2 * C
    store_row(partial, s_d, cols, C, EVEN_C)
    store_row(partial + C, s_px, cols, C, EVEN_C)
    tl.debug_barrier()  # every thread's partials come before the ticket (release)
    ticket = tl.atomic_add(counter_ptr + tl.program_id(1), 1, sem="acq_rel", scope="gpu")
    if ticket == chunks * N - 1:
        weight, bias, _unit = _affine(weight_ptr, bias_ptr, weight_ptr, cols, C, BLOCK_C, EVEN_C, AFFINE, False)
        gate_d = tl.zeros((BLOCK_C,), dtype=tl.float32)  # (reduced each step: more tiles would cost registers)
        gate_x = tl.zeros((BLOCK_C,), dtype=tl.float32)
        dlogits = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_S):
            samples = n0 + tl.arange(0, BLOCK_S)
            sum_d, sum_px, mask = _sample_sums(partial_ptr, samples, N, chunks, P, rows_per_chunk, cols, C, False,
                                               BLOCK_S, BLOCK_C)  # fmt: skip
            sum_x = sum_px * rstd[None, :]  # the sum of dy x_hat
            row_offsets = samples.to(tl.int64)[:, None] * C + cols[None, :]
            logit = tl.load(logit_ptr + row_offsets, mask=mask, other=0.0)
            gate = tl.sigmoid(logit)
            dlogit = (weight[None, :] * sum_x + bias[None, :] * sum_d) * gate * (1.0 - gate)
            tl.store(dlogit_ptr + row_offsets, dlogit, mask=mask)
            gate_d += tl.sum(gate * sum_d, axis=0)  # (masked: the sums are zero)
            gate_x += tl.sum(gate * sum_x, axis=0)
            dlogits += tl.sum(dlogit, axis=0)
        store_row(sums_ptr, dlogits, cols, C, EVEN_C)
        store_row(sums_ptr + C, gate_d, cols, C, EVEN_C)
        store_row(sums_ptr + 2 * C, gate_x, cols, C, EVEN_C)
        tl.atomic_xchg(counter_ptr + tl.program_id(1), 0)  # ready for the next launch


@triton.jit
def _bn_se_grad_apply_kernel(
    x_ptr,
    dy_ptr,
    dx_ptr,
    stats_ptr,
    logit_ptr,
    dpool_ptr,
    grads_ptr,
    weight_ptr,
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
    stride_gb,
    stride_gp,
    stride_gc,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
    EVEN_C: tl.constexpr,
    AFFINE: tl.constexpr,
    BATCH_STATS: tl.constexpr,
):
    """dinput = dy k1 + (input - mean) k2 + k3 over the program's chunk (k1, k3 of its sample; grads[0 / 1, :]: the
    batch norm's d weight and d bias)."""
    b = tl.program_id(2)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mean = load_row(stats_ptr, cols, C, EVEN_C)[None, :]
    rstd = load_row(stats_ptr + C, cols, C, EVEN_C)
    scale = rstd  # weight rstd
    if AFFINE:
        scale = rstd * load_row(weight_ptr, cols, C, EVEN_C)
    k1 = (_gate(logit_ptr, b, cols, C, EVEN_C) * scale)[None, :]
    dpool = load_row(dpool_ptr + b.to(tl.int64) * C, cols, C, EVEN_C) / P
    if BATCH_STATS:
        k2 = -scale * rstd * load_row(grads_ptr, cols, C, EVEN_C) / count
        k3 = scale * (dpool - load_row(grads_ptr + C, cols, C, EVEN_C) / count)
    else:
        k2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
        k3 = scale * dpool
    k2 = k2[None, :]
    k3 = k3[None, :]
    b64 = b.to(tl.int64)
    grad_apply_tiles(x_ptr + b64 * stride_xb, dy_ptr + b64 * stride_db, dx_ptr + b64 * stride_gb, mean, k1, k2, k3, P,
                     C, rows_per_chunk, stride_xp, stride_xc, stride_dp, stride_dc, stride_gp, stride_gc, cols, BLOCK_P,
                     EVEN_C)  # fmt: skip


@triton.jit
def _bn_se_norm_grads_kernel(dpool_ptr, xbar_ptr, sums_ptr, grads_ptr, N, C, BLOCK_N: tl.constexpr,
                             BLOCK_C: tl.constexpr):  # fmt: skip
    """The batch norm's d weight and d bias (grads[0 / 1, :]) from the pool's gradient dpool and the samples' xbar
    ([N, C] float32, contiguous): sums[2] + sum_n dpool xbar and sums[1] + sum_n dpool, in a fixed order."""
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < C
    rows = tl.arange(0, BLOCK_N)
    acc_w = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + rows
        mask = (n < N)[:, None] & col_mask[None, :]
        offsets = n[:, None].to(tl.int64) * C + cols[None, :]
        dpool = tl.load(dpool_ptr + offsets, mask=mask, other=0.0)
        acc_w += dpool * tl.load(xbar_ptr + offsets, mask=mask, other=0.0)
        acc_b += dpool
    d_weight = tl.sum(acc_w, axis=0) + tl.load(sums_ptr + 2 * C + cols, mask=col_mask, other=0.0)
    d_bias = tl.sum(acc_b, axis=0) + tl.load(sums_ptr + C + cols, mask=col_mask, other=0.0)
    tl.store(grads_ptr + cols, d_weight, mask=col_mask)
    tl.store(grads_ptr + C + cols, d_bias, mask=col_mask)


# ----------------------------------------------------------------------------------------------------------------
# 3. Launchers
# ----------------------------------------------------------------------------------------------------------------


# the d weight / d bias kernel's tile of [samples, channels] (a few programs of a few steps: N <= MAX_BATCH)
_NORM_GRADS_BLOCK_N, _NORM_GRADS_BLOCK_C = 32, 64


def sample_rows(block_p: int) -> int:
    """BLOCK_S, the samples a step of the last programs' walk over the samples takes: a quarter of a tile's rows
    (a whole tile's 64-bit row pointers and sums cost about 60 registers more in every program of the launch: fewer
    warps per SM for the streaming loops)."""
    return max(1, block_p // 4)


def _check_triton_inputs(*inputs) -> None:
    """Check the inputs (the op's arguments in order) as the Triton kernels take them."""
    check_batch_norm_se_inputs(*inputs)
    input = inputs[0]
    check_triton_dtypes("the Triton batch-norm + SE kernels take", {"input": input})
    se_dtypes = {t.dtype for t in inputs[8:] if t is not None}
    if not se_dtypes <= set(TRITON_DTYPES):
        raise TypeError(
            f"the Triton batch-norm + SE kernels take SE parameters in {[str(d) for d in TRITON_DTYPES]} (computed "
            f"in float32), got {sorted(str(d) for d in se_dtypes)}; use backend='torch'"
        )
    if input.shape[0] > MAX_BATCH:
        raise ValueError(
            f"the Triton batch-norm + SE kernels take at most {MAX_BATCH} samples a call, got {input.shape[0]}; "
            "split the batch or use backend='torch'"
        )
    check_triton_device(input.device)


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """A context with autocast off on ``device_type`` (the SE layers in float32): a null context where it is off
    already, as in most backward passes (entering ``torch.autocast`` costs about 5 us of host time)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _excite(pool: Tensor, down_weight, down_bias, up_weight, up_bias) -> tuple[Tensor, Tensor]:
    """(hidden, logit): the SE block's layers on the pool [N, C], float32 (cuBLAS; autocast off)."""
    with _autocast_off(pool.device.type):
        hidden = F.linear(pool, down_weight.float(), _to(down_bias, torch.float32)).relu_()
        logit = F.linear(hidden, up_weight.float(), _to(up_bias, torch.float32))
    return hidden, logit


def batch_norm_se_forward(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    down_weight: Tensor,
    down_bias: Tensor | None,
    up_weight: Tensor,
    up_bias: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Triton forward: (out, stats, sample_stats, hidden, logit): ``out`` of the shape and dtype of ``input`` (its
    layout where its H and W merge, else contiguous); float32 ``stats`` [2, C] (the mean and 1 / sqrt(var + eps) that
    normalised), ``sample_stats`` [2, N, C] (the pool and xbar), ``hidden`` [N, R] and ``logit`` [N, C] (the SE
    block's), all for the backward. In training with running statistics, they take their step in place. Two launches
    and the SE block's three small ops. Validates its inputs."""
    return _forward(
        input, running_mean, running_var, weight, bias, training, momentum, eps, down_weight, down_bias, up_weight,
        up_bias, True,
    )[:5]  # fmt: skip


def _forward(
    input, running_mean, running_var, weight, bias, training, momentum, eps, down_weight, down_bias, up_weight,
    up_bias, in_place,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """(out, stats, sample_stats, hidden, logit, steps): the forward, the running statistics' step written in place
    (``in_place``) or, for the registered op (which may not write to its inputs), to ``steps`` [2, C] ([0, C] when
    there is no step to take)."""
    _check_triton_inputs(
        input, running_mean, running_var, weight, bias, training, momentum, eps, down_weight, down_bias, up_weight,
        up_bias,
    )  # fmt: skip
    batch, channels, height, width = input.shape
    positions = height * width
    update = training and running_mean is not None and batch > 0
    out = _output_like(input, input.dtype)
    x, x_strides = merged_positions(input, 1)
    _, out_strides = merged_positions(out, 1)
    # (separate buffers: the registered op's outputs may not alias each other)
    stats = torch.empty(2, channels, dtype=torch.float32, device=input.device)
    sample_stats = torch.empty(2, batch, channels, dtype=torch.float32, device=input.device)
    steps = torch.empty(2 if update and not in_place else 0, channels, dtype=torch.float32, device=input.device)
    if batch == 0:
        hidden, logit = _excite(sample_stats[0], down_weight, down_bias, up_weight, up_bias)
        return out, stats.zero_(), sample_stats, hidden, logit, steps
    (block_p, block_c, even_c), chunks, rows = geometry(batch, positions, channels, input.device)
    partials = torch.empty(2 * channels * batch * chunks, dtype=torch.float32, device=input.device)
    running_mean_arg, running_var_arg = _vector(running_mean, stats), _vector(running_var, stats)
    new_mean, new_var = (running_mean_arg, running_var_arg) if in_place or not update else (steps[0], steps[1])
    weight_arg, bias_arg = _vector(weight, stats), _vector(bias, stats)
    grid = (chunks, cdiv(channels, block_c), batch)
    flags = dict(BLOCK_P=block_p, BLOCK_C=block_c, EVEN_C=even_c, AFFINE=weight is not None)
    with device_guard(input.device):
        launchable(_bn_se_sums_kernel)[grid](
            x, partials, stats, sample_stats, ticket_counters(input.device, grid[1]),
            running_mean_arg, running_var_arg, new_mean, new_var, weight_arg, bias_arg, batch, positions, channels,
            rows, float(batch * positions), *x_strides, float(momentum), float(eps),
            **flags, BATCH_STATS=training, UPDATE_RUNNING=update, BLOCK_S=sample_rows(block_p),
        )  # fmt: skip
        hidden, logit = _excite(sample_stats[0], down_weight, down_bias, up_weight, up_bias)
        launchable(_bn_se_apply_kernel)[grid](
            x, out, stats, logit, weight_arg, bias_arg, positions, channels, rows, *x_strides, *out_strides, **flags,
        )  # fmt: skip
    if update and in_place:
        running_step_taken(running_mean, running_var, running_mean_arg, running_var_arg)
    return out, stats, sample_stats, hidden, logit, steps


def batch_norm_se_backward(
    grad_output: Tensor,
    input: Tensor,
    stats: Tensor,
    sample_stats: Tensor,
    hidden: Tensor,
    logit: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    down_weight: Tensor,
    up_weight: Tensor,
    training: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Triton backward from the forward's saved tensors: (d input, d norm [2, C] (the batch norm's d weight and d
    bias), d down_weight, d down_bias, d up_weight, d up_bias): d input in the dtype and layout of ``input``, the rest
    float32 (rows of absent parameters hold what they would be). Two launches and the SE block's backward in
    cuBLAS."""
    if grad_output.shape != input.shape or grad_output.device != input.device or not grad_output.is_floating_point():
        raise ValueError(
            f"grad_output must be a floating-point tensor of the shape of input {list(input.shape)} on "
            f"{input.device}, got {grad_output.dtype} {list(grad_output.shape)} on {grad_output.device}"
        )
    batch, channels = input.shape[:2]
    hidden_size = down_weight.shape[0] if down_weight.dim() == 2 else -1
    expected = (
        ("stats", stats, (2, channels)),
        ("sample_stats", sample_stats, (2, batch, channels)),
        ("hidden", hidden, (batch, hidden_size)),
        ("logit", logit, (batch, channels)),
    )
    for name, t, shape in expected:
        if tuple(t.shape) != shape or t.dtype != torch.float32 or t.device != input.device:
            raise ValueError(
                f"{name} must be the forward's float32 {list(shape)} on {input.device}, got {t.dtype} "
                f"{list(t.shape)} on {t.device}"
            )
    for name, t in (("weight", weight), ("bias", bias)):
        _check_vector(name, t, channels, input.device)
    if tuple(up_weight.shape) != (channels, hidden_size):
        raise ValueError(f"up_weight must be [{channels}, R] and down_weight [R, {channels}], got "
                         f"{list(up_weight.shape)} and {list(down_weight.shape)}")  # fmt: skip
    check_triton_dtypes("the Triton batch-norm + SE kernels take", {"input": input, "grad_output": grad_output})
    check_triton_device(input.device)
    return _launch_backward(
        grad_output, input, stats.contiguous(), sample_stats.contiguous(), hidden.contiguous(), logit.contiguous(),
        weight, bias, down_weight, up_weight, training,
    )  # fmt: skip


def _launch_backward(
    grad_output, input, stats, sample_stats, hidden, logit, weight, bias, down_weight, up_weight, training
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`batch_norm_se_backward` without checking its inputs (for the eager autograd Function, whose forward
    checked them and made the saved tensors)."""
    batch, channels, height, width = input.shape
    positions = height * width
    x, x_strides = merged_positions(input, 1)
    dy, dy_strides = merged_positions(grad_output, 1)
    dx = torch.empty_like(x)
    _, dx_strides = merged_positions(dx, 1)
    # (separate buffers: the registered op's outputs may not alias each other)
    sums = torch.empty(3, channels, dtype=torch.float32, device=input.device)
    norm_grads = torch.empty(2, channels, dtype=torch.float32, device=input.device)
    dlogit = torch.empty(batch, channels, dtype=torch.float32, device=input.device)
    if batch:
        (block_p, block_c, even_c), chunks, rows = geometry(batch, positions, channels, input.device)
        grid = (chunks, cdiv(channels, block_c), batch)
        weight_arg, bias_arg = _vector(weight, stats), _vector(bias, stats)
        flags = dict(BLOCK_P=block_p, BLOCK_C=block_c, EVEN_C=even_c, AFFINE=weight is not None)
        partials = torch.empty(2 * channels * batch * chunks, dtype=torch.float32, device=input.device)
    else:
        sums.zero_()
    with device_guard(input.device), _autocast_off(input.device.type):
        if batch:
            launchable(_bn_se_grad_sums_kernel)[grid](
                x, dy, partials, stats, logit, dlogit, sums, ticket_counters(input.device, grid[1]), weight_arg,
                bias_arg, batch, positions, channels, rows, *x_strides, *dy_strides, **flags,
                BLOCK_S=sample_rows(block_p),
            )  # fmt: skip
        # the SE block's backward: up = dlogit -> hidden, relu, down -> pool
        down_weight32, up_weight32 = down_weight.float(), up_weight.float()
        d_up_weight = dlogit.t().mm(hidden)
        d_hidden = torch.ops.aten.threshold_backward(dlogit.mm(up_weight32), hidden, 0.0)
        d_down_weight = d_hidden.t().mm(sample_stats[0])
        d_down_bias = d_hidden.sum(0)
        d_pool = d_hidden.mm(down_weight32)
        # the batch norm's: d weight = sum_n gate S_x + sum_n dpool xbar, d bias = sum_n gate S_d + sum_n dpool
        launchable(_bn_se_norm_grads_kernel)[(cdiv(channels, _NORM_GRADS_BLOCK_C),)](
            d_pool, sample_stats[1], sums, norm_grads, batch, channels, BLOCK_N=_NORM_GRADS_BLOCK_N,
            BLOCK_C=_NORM_GRADS_BLOCK_C,
        )  # fmt: skip
        if batch:
            launchable(_bn_se_grad_apply_kernel)[grid](
                x, dy, dx, stats, logit, d_pool, norm_grads, weight_arg, positions, channels, rows,
                float(batch * positions), *x_strides, *dy_strides, *dx_strides, **flags, BATCH_STATS=training,
            )  # fmt: skip
    return dx, norm_grads, d_down_weight, d_down_bias, d_up_weight, sums[0]


# ----------------------------------------------------------------------------------------------------------------
# 4. The registered op
# ----------------------------------------------------------------------------------------------------------------


@triton_op("zoo::batch_norm_se")
def _batch_norm_se_op(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    down_weight: Tensor,
    down_bias: Tensor | None,
    up_weight: Tensor,
    up_bias: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _forward(
        input, running_mean, running_var, weight, bias, training, momentum, eps, down_weight, down_bias, up_weight,
        up_bias, False,
    )  # fmt: skip


@_batch_norm_se_op.register_fake
def _(input, running_mean, running_var, weight, bias, training, momentum, eps, down_weight, down_bias, up_weight,
      up_bias):  # fmt: skip
    check_batch_norm_se_inputs(
        input, running_mean, running_var, weight, bias, training, momentum, eps, down_weight, down_bias, up_weight,
        up_bias,
    )  # fmt: skip
    batch, channels = input.shape[:2]
    update = training and running_mean is not None and batch > 0

    def f32(*shape):
        return input.new_empty(shape, dtype=torch.float32)

    hidden = down_weight.shape[0]
    steps = f32(2 if update else 0, channels)
    return _output_like(input, input.dtype), f32(2, channels), f32(2, batch, channels), f32(batch, hidden), \
        f32(batch, channels), steps  # fmt: skip


@triton_op("zoo::batch_norm_se_backward")
def _batch_norm_se_backward_op(
    grad_output: Tensor,
    input: Tensor,
    stats: Tensor,
    sample_stats: Tensor,
    hidden: Tensor,
    logit: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    down_weight: Tensor,
    up_weight: Tensor,
    training: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return batch_norm_se_backward(
        grad_output, input, stats, sample_stats, hidden, logit, weight, bias, down_weight, up_weight, training
    )


@_batch_norm_se_backward_op.register_fake
def _(grad_output, input, stats, sample_stats, hidden, logit, weight, bias, down_weight, up_weight, training):
    channels = input.shape[1]
    hidden_size = down_weight.shape[0]

    def f32(*shape):
        return input.new_empty(shape, dtype=torch.float32)

    return _output_like(input, input.dtype), f32(2, channels), f32(hidden_size, channels), f32(hidden_size), \
        f32(channels, hidden_size), f32(channels)  # fmt: skip


def _parameters_meta(inputs: tuple) -> tuple:
    """(shape, dtype) of each parameter of the forward's arguments (weight, bias, down_weight, down_bias, up_weight,
    up_bias; None where absent): what their gradients must be."""
    _input, _rm, _rv, weight, bias, _training, _momentum, _eps, down_weight, down_bias, up_weight, up_bias = inputs
    parameters = (weight, bias, down_weight, down_bias, up_weight, up_bias)
    return tuple(None if p is None else (p.shape, p.dtype) for p in parameters)


def _gradients(ctx, dx: Tensor, norm_grads: Tensor, *se_grads: Tensor) -> tuple:
    """The autograd Function's and the registered op's gradients, in the forward's argument order."""
    grads = [
        None if meta is None else grad.to(meta[1]).view(meta[0])
        for grad, meta in zip((norm_grads[0], norm_grads[1], *se_grads), ctx.parameters_meta, strict=True)
    ]
    d_weight, d_bias, *d_se = grads
    return (dx, None, None, d_weight, d_bias, None, None, None, *d_se)


def _save(ctx, inputs, saved: tuple) -> None:
    input, _rm, _rv, weight, bias, training, _momentum, _eps, down_weight, _db, up_weight, _ub = inputs
    ctx.training = training
    ctx.parameters_meta = _parameters_meta(inputs)
    ctx.save_for_backward(input, *saved, weight, bias, down_weight, up_weight)


def _setup_context(ctx, inputs, output) -> None:
    _out, stats, sample_stats, hidden, logit, steps = output
    _save(ctx, inputs, (stats, sample_stats, hidden, logit))
    ctx.mark_non_differentiable(stats, sample_stats, hidden, logit, steps)


def _backward(ctx, grad_output: Tensor, *_grads_of_saved):
    # the saved tensors unpacked once: non-reentrant checkpointing allows no more
    input, stats, sample_stats, hidden, logit, weight, bias, down_weight, up_weight = ctx.saved_tensors
    grads = torch.ops.zoo.batch_norm_se_backward(
        grad_output, input, stats, sample_stats, hidden, logit, weight, bias, down_weight, up_weight, ctx.training
    )
    return _gradients(ctx, *grads)


_batch_norm_se_op.register_autograd(_backward, setup_context=_setup_context)


class _BatchNormSEFunction(torch.autograd.Function):
    """Eager autograd of the Triton path: the launchers called directly (no custom-op dispatch)."""

    @staticmethod
    def forward(ctx, *inputs):
        out, *saved = batch_norm_se_forward(*inputs)
        _save(ctx, inputs, tuple(saved))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        input, stats, sample_stats, hidden, logit, weight, bias, down_weight, up_weight = ctx.saved_tensors  # (once)
        grads = _launch_backward(
            grad_output, input, stats, sample_stats, hidden, logit, weight, bias, down_weight, up_weight, ctx.training
        )
        return _gradients(ctx, *grads)


def _forward_only(*inputs) -> Tensor:
    return batch_norm_se_forward(*inputs)[0]


def _registered(*inputs) -> Tensor:
    """The registered op, which returns the running statistics' step (a custom op with an autograd formula may not
    write to its inputs): copied into them here, graph ops under torch.compile."""
    out, _stats, _sample_stats, _hidden, _logit, steps = torch.ops.zoo.batch_norm_se(*inputs)
    _input, running_mean, running_var, *_ = inputs
    copy_running_steps(steps, running_mean, running_var)
    return out


def batch_norm_se(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    down_weight: Tensor,
    down_bias: Tensor | None,
    up_weight: Tensor,
    up_bias: Tensor | None,
    backend: str = "auto",
) -> Tensor:
    """``SE(F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps))`` in two
    launches forward and three backward besides the SE layers' (see the module docstring), SE being
    squeeze-and-excitation: ``z * sigmoid(up(relu(down(pool(z)))))``.

    Args:
        input: ``[N, C, H, W]`` float16/bfloat16/float32 (float64 on the reference backend), any strides (a layout
            whose H and W do not merge into one stride is copied first); H W >= 1.
        running_mean, running_var: C values each, or both None (then ``training`` must be True); updated in place
            when ``training`` is True, as ``F.batch_norm`` does.
        weight, bias: the batch norm's affine parameters (C values each), or both None.
        training: normalise with the batch's statistics (True) or the running ones.
        momentum: the running statistics' step towards the batch's (a number in [0, 1]).
        eps: added to the variance.
        down_weight, down_bias: the SE block's first layer, ``[R, C]`` and R values (or None): its 1 x 1
            convolution's weight flattened (``conv.weight.flatten(1)``).
        up_weight, up_bias: its second layer, ``[C, R]`` and C values (or None).
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see :mod:`zoo.kernels._backend`); on CPU tensors every
            backend but ``"triton"`` runs the reference.

    Returns:
        A tensor of the shape and dtype of ``input``, differentiable in ``input``, ``weight``, ``bias`` and the SE
        block's parameters. The SE block runs in float32 on every backend (under autocast too).
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    args = (input, running_mean, running_var, weight, bias, training, momentum, eps, down_weight, down_bias,
            up_weight, up_bias)  # fmt: skip
    if resolve_backend(backend, input, TRITON_DTYPES) == "triton":  # the launchers validate their inputs
        return dispatch_triton(*args, op=_registered, function=_BatchNormSEFunction, launcher=_forward_only)
    return batch_norm_se_reference(*args)


# ----------------------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (zoo/kernels/_aot.py; tests/kernels/test_compile_targets.py)
# ----------------------------------------------------------------------------------------------------------------

_BENCHMARK_BATCH = 128


def aot_specs() -> list:
    """Compile and loop-report specs: the five kernels at UniRepLKNet-T's four stages (B128, 224 px) as the block
    calls them under bf16 autocast in training (bf16 input, output and gradients; float32 parameters); at stage 3
    also the eval forward (running statistics). Useful work: an element of the input. Stage 1 is compiled in the
    tests too (``ci``)."""
    from zoo.kernels._aot import Work, launch_spec
    from zoo.kernels.batch_norm_add import BN_ADD_STAGES, stage_launch

    specs = []
    batch = _BENCHMARK_BATCH
    for stage, (side, channels) in enumerate(BN_ADD_STAGES, start=1):
        positions = side * side
        case, units, formula, (block_p, block_c, even_c), chunks, rows, full_tiles = stage_launch(batch, side, channels)
        ci = stage == 1
        # the channel block's last program (1 in chunks x samples) combines the N x chunks partials: two passes for
        # the batch statistics and one over the samples' tiles (chunks iterations each)
        finish = cdiv(batch * chunks, block_p) / (chunks * batch)
        per_sample = cdiv(batch, sample_rows(block_p)) / (chunks * batch)
        work = Work(case, "element", units, (full_tiles,), formula)
        statistics = Work(case, "element", units, ((full_tiles, finish, finish, per_sample), chunks), formula)
        eval_statistics = Work(case, "element", units, ((full_tiles, per_sample), chunks), formula)
        grad_sums = Work(case, "element", units, ((full_tiles, per_sample), chunks), formula)
        common = dict(
            x_ptr="*bf16",
            stats_ptr="*fp32",
            weight_ptr="*fp32",
            P=positions,
            C=channels,
            rows_per_chunk=rows,
            stride_xb=positions * channels,
            stride_xp=channels,
            stride_xc=1,
            BLOCK_P=block_p,
            BLOCK_C=block_c,
            EVEN_C=even_c,
            AFFINE=True,
        )
        sums = dict(
            common,
            partial_ptr="*fp32",
            sample_stats_ptr="*fp32",
            counter_ptr="*i32",
            running_mean_ptr="*fp32",
            running_var_ptr="*fp32",
            new_mean_ptr="*fp32",
            new_var_ptr="*fp32",
            bias_ptr="*fp32",
            N=batch,
            count=float(batch * positions),
            momentum=0.1,
            eps=1e-5,
            BLOCK_S=sample_rows(block_p),
        )
        grads = dict(common, dy_ptr="*bf16", stride_db=positions * channels, stride_dp=channels, stride_dc=1)
        label = f"bf16,C{channels}"
        specs += [
            launch_spec(
                f"_bn_se_sums_kernel[{label}]@{case}",
                _bn_se_sums_kernel,
                dict(sums, BATCH_STATS=True, UPDATE_RUNNING=True),
                work=statistics,
                ci=ci,
            ),
            launch_spec(
                f"_bn_se_apply_kernel[{label}]@{case}",
                _bn_se_apply_kernel,
                dict(
                    common,
                    out_ptr="*bf16",
                    logit_ptr="*fp32",
                    bias_ptr="*fp32",
                    stride_ob=positions * channels,
                    stride_op=channels,
                    stride_oc=1,
                ),
                work=work,
                ci=ci,
            ),
            launch_spec(
                f"_bn_se_grad_sums_kernel[{label}]@{case}",
                _bn_se_grad_sums_kernel,
                dict(
                    grads,
                    partial_ptr="*fp32",
                    logit_ptr="*fp32",
                    dlogit_ptr="*fp32",
                    sums_ptr="*fp32",
                    counter_ptr="*i32",
                    bias_ptr="*fp32",
                    N=batch,
                    BLOCK_S=sample_rows(block_p),
                ),
                work=grad_sums,
                ci=ci,
            ),
            launch_spec(
                f"_bn_se_grad_apply_kernel[{label}]@{case}",
                _bn_se_grad_apply_kernel,
                dict(
                    grads,
                    dx_ptr="*bf16",
                    logit_ptr="*fp32",
                    dpool_ptr="*fp32",
                    grads_ptr="*fp32",
                    count=float(batch * positions),
                    stride_gb=positions * channels,
                    stride_gp=channels,
                    stride_gc=1,
                    BATCH_STATS=True,
                ),
                work=work,
                ci=ci,
            ),
            launch_spec(
                f"_bn_se_norm_grads_kernel[C{channels}]@{case}",
                _bn_se_norm_grads_kernel,
                dict(
                    dpool_ptr="*fp32",
                    xbar_ptr="*fp32",
                    sums_ptr="*fp32",
                    grads_ptr="*fp32",
                    N=batch,
                    C=channels,
                    BLOCK_N=_NORM_GRADS_BLOCK_N,
                    BLOCK_C=_NORM_GRADS_BLOCK_C,
                ),
                work=Work(
                    case,
                    "pool gradient",
                    batch * channels / cdiv(channels, _NORM_GRADS_BLOCK_C),
                    (cdiv(batch, _NORM_GRADS_BLOCK_N),),
                    f"pool gradients = N C = {batch * channels}; programs = C / {_NORM_GRADS_BLOCK_C} rounded up",
                ),
                ci=ci,
            ),
        ]
        if stage == 3:
            specs.append(
                launch_spec(
                    f"_bn_se_sums_kernel[{label},eval]@{case}",
                    _bn_se_sums_kernel,
                    dict(sums, BATCH_STATS=False, UPDATE_RUNNING=False),
                    work=eval_statistics,
                )
            )
    return specs
