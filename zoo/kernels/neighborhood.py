"""Neighborhood attention (NAT / DiNAT; docs/semantics.md §5): each query attends to a window of keys around it.

For q, k, v laid out ``[B, *spatial, heads, head_dim]`` (1, 2 or 3 spatial axes; NATTEN's modern layout), per
spatial axis of length n with kernel size k (odd, >= 3), dilation d and a causal flag:

* token i belongs to dilation group g = i mod d, with group coordinate i' = i div d; the group holds
  n_g = ceil((n - g) / d) tokens;
* its keys are the group coordinates start .. start + k - 1 with start = clamp(i' - k // 2, 0, n_g - k) (the window
  shifts inward at the borders: always k keys, no padding); causal: max(i' - k + 1, 0) .. i';
* a key's absolute index is coordinate * d + g; the neighbourhood of a query is the product of its axes' windows.

    out[q] = sum_{j in N(q)} softmax_j(scale <q, k_j> + rpb[h, (j - q) / d + k - 1 per axis]) v_j

with an optional relative position bias ``rpb`` [heads, 2 k0 - 1 (, 2 k1 - 1 (, 2 k2 - 1))] (not with causal).

The Triton kernels are fused (FlashAttention-style online softmax over each query's neighbourhood; the attention
matrix is never materialised, except that the backward with a bias stores the float32 logit gradients of the
batch, [groups, heads, prod(kernel_size), N] (at most 256 MiB unless one item alone is larger: each of the
``groups`` entries sums several items where the batch does not fit), to sum them per relative offset). A program owns a box of one dilation group (group coordinates) and walks only the boxes that
its windows reach (key boxes covering the union of a query box's windows; the query boxes whose windows reach a
key box). Kernel sizes, causal flags, head_dim and the boxes are compile-time constants; the per-pair work is kept
to a minimum: the window mask is separable (per axis, one unsigned range check of key minus window start, from a
per-query and a per-key vector), the bias index is one subtraction (per-key minus per-query index into a padded,
pre-scaled copy of rpb that every walked offset lands in, so the gather needs no mask), loads are clamped into
the map instead of masked, and in 2-D / 3-D bf16 / fp16 with head_dim <= 32 and an even head count a forward
program serves two heads with one mask and index.
The backward recomputes the probabilities from the saved log-sum-exp in two launches: one kernel per query box
walks its keys (delta, dq, and the logit gradients), then one per key box walks the queries that can see it (dk,
dv), and with a bias that launch's extra programs sum the logit gradients per relative offset into drpb.

Layout of this file (the kernel contract, docs/design.md §2): input checks, the reference, the Triton kernels, the
launchers, the registered op and the public functions ``na1d``, ``na2d``, ``na3d``. ``backend="auto"`` on CPU tensors
runs the blocked dense path of zoo/kernels/neighborhood_cpu.py.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.kernels._backend import (
    INTERPRETER,
    TRITON_DTYPES,
    cdiv,
    check_float_tensor,
    check_triton_device,
    check_triton_dtypes,
    derived_from_weight,
    device_guard,
    dispatch_triton,
    launchable,
    next_power_of_2,
    once_differentiable,
    requested_backend,
    resolve_backend,
    ticket_counters,
    tl,
    tracing_kernels,
    triton,
    triton_op,
)
from zoo.kernels.neighborhood_cpu import na_blocked

HEAD_DIM_RANGE = (16, 128)

__all__ = [
    "na1d",
    "na2d",
    "na3d",
    "na_backward",
    "na_forward",
    "na_reference",
    "neighborhood_attention",
    "neighborhood_table",
]


# ----------------------------------------------------------------------------------------------------------------
# Input checks (shared by the reference and the launchers)
# ----------------------------------------------------------------------------------------------------------------


def _per_axis(value, dims: int, name: str, kind: type) -> tuple:
    """One value for every axis, or one per axis: a tuple of ``dims`` values of ``kind``."""
    values = tuple(value) if isinstance(value, Sequence) else (value,) * dims
    if len(values) != dims or not all(
        isinstance(x, kind) and (kind is bool or not isinstance(x, bool)) for x in values
    ):
        raise ValueError(f"{name} must be one {kind.__name__} or {dims} of them (one per spatial axis), got {value!r}")
    return values


def check_na_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size,
    dilation,
    is_causal,
    rpb: Tensor | None,
    scale: float | None,
    dims: int | None = None,
) -> tuple[tuple, tuple, tuple, float]:
    """Validate the inputs of a neighborhood attention call; raise naming the expected values.

    Returns ``(kernel_size, dilation, is_causal, scale)`` as per-axis tuples and a float."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float_tensor(name, t)
    if dims is None:
        dims = q.dim() - 3
    if dims not in (1, 2, 3) or q.dim() != dims + 3:
        layout = "[B, " + ", ".join(f"X{i}" for i in range(dims if dims in (1, 2, 3) else 1)) + ", heads, head_dim]"
        raise ValueError(f"q must be laid out {layout} ({dims}-D neighborhood attention), got shape {list(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k and v must have the same shape [B, *spatial, heads, head_dim], got q "
            f"{list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}"
        )
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must have the same dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    spatial = tuple(q.shape[1 : 1 + dims])
    ks = _per_axis(kernel_size, dims, "kernel_size", int)
    ds = _per_axis(dilation, dims, "dilation", int)
    cs = _per_axis(is_causal, dims, "is_causal", bool)
    for axis, (n, kk, dd) in enumerate(zip(spatial, ks, ds, strict=True)):
        if kk < 3 or kk % 2 == 0:
            raise ValueError(
                f"kernel_size must be odd and >= 3 on every axis, got {kk} on axis {axis} (kernel_size={kernel_size!r})"
            )
        if dd < 1:
            raise ValueError(f"dilation must be >= 1 on every axis, got {dd} on axis {axis}")
        if kk * dd > n:
            raise ValueError(
                f"kernel_size * dilation must be <= the axis length: axis {axis} has {n} tokens, "
                f"kernel_size {kk} x dilation {dd} = {kk * dd}"
            )
    heads = q.shape[-2]
    if rpb is not None:
        if any(cs):
            raise ValueError("a relative position bias (rpb) cannot be used with causal attention")
        check_float_tensor("rpb", rpb)
        expected = (heads, *(2 * kk - 1 for kk in ks))
        if tuple(rpb.shape) != expected:
            raise ValueError(f"rpb must have shape [heads, 2 k - 1 per axis] = {list(expected)}, got {list(rpb.shape)}")
        if rpb.device != q.device:
            raise ValueError(f"rpb must be on the device of q ({q.device}), got {rpb.device}")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    elif not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number or None (head_dim ** -0.5), got {scale!r}")
    return ks, ds, cs, float(scale)


# ----------------------------------------------------------------------------------------------------------------
# 1. Reference
# ----------------------------------------------------------------------------------------------------------------


def _axis_windows(n: int, k: int, d: int, causal: bool, device) -> tuple[Tensor, Tensor, Tensor]:
    """Per axis: the absolute key index [n, k], whether it is a key [n, k] (causal windows near the start are
    shorter) and the rpb index (j - i) / d + k - 1 [n, k] of each window slot."""
    i = torch.arange(n, device=device)
    group, coord = i % d, i // d
    n_group = (n - group + d - 1) // d
    if causal:
        start = coord - k + 1
    else:
        start = torch.minimum((coord - k // 2).clamp_min(0), n_group - k)
    key_coord = start[:, None] + torch.arange(k, device=device)
    valid = key_coord >= 0
    key = key_coord.clamp_min(0) * d + group[:, None]
    return key, valid, key_coord - coord[:, None] + k - 1


def neighborhood_table(
    spatial: Sequence[int], kernel_size: Sequence[int], dilation: Sequence[int], is_causal: Sequence[bool], device=None
) -> tuple[Tensor, Tensor, Tensor]:
    """The neighbourhoods of every query, over the flattened (row-major) spatial positions: key indices
    [N, K], validity [N, K] and flat indices into ``rpb[h].flatten()`` [N, K], K = prod(kernel_size)."""
    key, valid, bias = None, None, None
    for n, k, d, c in zip(spatial, kernel_size, dilation, is_causal, strict=True):
        a_key, a_valid, a_bias = _axis_windows(n, k, d, c, device)
        if key is None:
            key, valid, bias = a_key, a_valid, a_bias
            continue
        # combine with the axes so far: queries (N, n) -> N * n, slots (K, k) -> K * k
        key = (key[:, None, :, None] * n + a_key[None, :, None, :]).flatten(2).flatten(0, 1)
        valid = (valid[:, None, :, None] & a_valid[None, :, None, :]).flatten(2).flatten(0, 1)
        bias = (bias[:, None, :, None] * (2 * k - 1) + a_bias[None, :, None, :]).flatten(2).flatten(0, 1)
    return key, valid, bias


def na_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size,
    dilation=1,
    is_causal=False,
    rpb: Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Neighborhood attention in plain PyTorch (see the module docstring): gathers each query's keys and values
    ([B, N, K, heads, head_dim]: memory grows with the window) and applies a masked softmax; ``dropout_p`` drops
    attention probabilities (as ``F.dropout``, training only: pass 0 in eval).

    Computes in float32 (float64 for float64 inputs); returns the dtype of q."""
    ks, ds, cs, scale = check_na_inputs(q, k, v, kernel_size, dilation, is_causal, rpb, scale)
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    B, heads, head_dim = q.shape[0], q.shape[-2], q.shape[-1]
    spatial = q.shape[1:-2]
    key, valid, bias = neighborhood_table(spatial, ks, ds, cs, q.device)
    qf, kf, vf = (t.reshape(B, -1, heads, head_dim).to(dtype) for t in (q, k, v))
    logits = torch.einsum("bnhd,bnkhd->bnhk", qf * scale, kf[:, key])
    if rpb is not None:
        logits = logits + rpb.to(dtype).flatten(1)[:, bias].permute(1, 0, 2)
    logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
    probs = logits.softmax(-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, dropout_p)
    out = torch.einsum("bnhk,bnkhd->bnhd", probs, vf[:, key])
    return out.reshape(q.shape).to(q.dtype)


# ----------------------------------------------------------------------------------------------------------------
# 2. Triton kernels
#
# Every kernel sees three spatial axes (a 1-D or 2-D problem has leading axes of length 1, kernel 1, dilation 1).
# A tile is a box of TILE0 x TILE1 x TILE2 group coordinates of one dilation group, flattened row-major; the
# program ids are (batch * heads, tile over groups and boxes). Logits are carried in base 2 (scaled by log2 e).
# ----------------------------------------------------------------------------------------------------------------

LOG2E = 1.4426950408889634


@triton.jit
def _window_start(c, n_group, k, CAUSAL: tl.constexpr):
    """First group coordinate of the window of the query at group coordinate c (negative for a short causal one)."""
    if CAUSAL:
        start = c - k + 1
    else:
        start = tl.minimum(tl.maximum(c - k // 2, 0), n_group - k)
    return start


@triton.jit
def _first_query(c, k, CAUSAL: tl.constexpr):
    """The first query coordinate whose window holds key coordinate c (queries' windows are monotone in c)."""
    if CAUSAL:
        first = c
    else:
        first = tl.where(c <= k - 1, 0, c - k + 1 + k // 2)
    return first


@triton.jit
def _last_query(c, n_group, k, CAUSAL: tl.constexpr):
    """The last query coordinate whose window holds key coordinate c."""
    if CAUSAL:
        last = tl.minimum(c + k - 1, n_group - 1)
    else:
        last = tl.where(c >= n_group - k, n_group - 1, c + k // 2)
    return last


@triton.jit
def _split_tile(pid, d0, d1, d2, tiles0, tiles1, tiles2):
    """(group, box index) per axis of a program id over prod(d_a * tiles_a)."""
    i2 = pid % (d2 * tiles2)
    rest = pid // (d2 * tiles2)
    i1 = rest % (d1 * tiles1)
    i0 = rest // (d1 * tiles1)
    return i0 % d0, i0 // d0, i1 % d1, i1 // d1, i2 % d2, i2 // d2


@triton.jit
def _offsets(c0, c1, c2, g0, g1, g2, d0, d1, d2, s0, s1, s2):
    """Memory offsets (int64) of group coordinates c_a of groups g_a for spatial strides s_a."""
    return (c0 * d0 + g0).to(tl.int64) * s0 + (c1 * d1 + g1).to(tl.int64) * s1 + (c2 * d2 + g2).to(tl.int64) * s2


@triton.jit
def _flat_index(c0, c1, c2, g0, g1, g2, d0, d1, d2, n1, n2):
    """Row-major flat spatial index of group coordinates c_a of groups g_a."""
    return ((c0 * d0 + g0) * n1 + (c1 * d1 + g1)) * n2 + (c2 * d2 + g2)


@triton.jit
def _dot(a, b, EXACT_DOT: tl.constexpr):
    """a @ b accumulated in float32: on the operands' tensor cores, or (EXACT_DOT: float32 inputs, and every dtype
    under the interpreter, whose bf16 dot is wrong) in full float32 precision, not TF32."""
    if EXACT_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _axis_coords(first, STEP: tl.constexpr, T: tl.constexpr, N: tl.constexpr):
    """Group coordinates along one axis of the N-element row-major box whose axis has T entries, STEP elements
    apart (a [N] vector), from ``first``."""
    return first + (tl.arange(0, N) // STEP) % T


@triton.jit
def _window_ok(kc, ws, K: tl.constexpr):
    """[queries, keys] on one axis: key coordinate kc inside the window [ws, ws + K) of each query (one unsigned
    range check: kc - ws in [0, K))."""
    return (kc[None, :] - ws[:, None]).to(tl.uint32, bitcast=True) < K


@triton.jit
def _pair_ok(kc0, kc1, kc2, ws0, ws1, ws2, K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr):
    """The neighbourhood mask [queries, keys]: separable, one range check per used axis (an axis of kernel 1 is
    a padding axis of a 1-D or 2-D problem and is skipped)."""
    ok = _window_ok(kc2, ws2, K2)
    if K1 > 1:
        ok = ok & _window_ok(kc1, ws1, K1)
    if K0 > 1:
        ok = ok & _window_ok(kc0, ws0, K0)
    return ok


def _bias_extent(tq: int, k: int, tk: int) -> int:
    """Length of one axis of the padded bias table of a kernel with query boxes of ``tq`` and key boxes of ``tk``
    coordinates: every key-minus-query offset a pair of walked boxes can form lies in [-R, R], R = tq + tk + k
    (1 for a padding axis), so the bias gather needs no mask. The launchers call it as :func:`bias_extent`; the
    kernels call ``_bias_extent``, the same function as a constexpr function."""
    return 1 if k == 1 else 2 * (tq + tk + k) + 1


# The host's (the constexpr wrapper costs microseconds per call).
bias_extent = _bias_extent
# A compile-time constant in the kernels (a ``@triton.jit`` helper returns a tensor on Triton 3.6), bound under the
# function's own name: Inductor before torch 2.14 writes a kernel's constexpr functions into its source under their
# ``__name__``, so any other name is undefined there (torch 2.11: NameError '_bias_extent').
_bias_extent = triton.constexpr_function(_bias_extent)


@triton.jit
def _bias_coord(
    c0,
    c1,
    c2,
    TQ0: tl.constexpr,
    TQ1: tl.constexpr,
    TQ2: tl.constexpr,
    K0: tl.constexpr,
    K1: tl.constexpr,
    K2: tl.constexpr,
    TK0: tl.constexpr,
    TK1: tl.constexpr,
    TK2: tl.constexpr,
):
    """sum_a c_a W_a with W_a the row-major strides of the padded bias table: the table index of a (query, key)
    pair is this of the key minus this of the query plus ``_bias_origin`` (separable: a per-key and a per-query
    vector, one subtraction per pair)."""
    W1: tl.constexpr = _bias_extent(TQ2, K2, TK2)
    W0: tl.constexpr = _bias_extent(TQ1, K1, TK1) * W1
    return c0 * W0 + c1 * W1 + c2


@triton.jit
def _bias_origin(
    TQ0: tl.constexpr,
    TQ1: tl.constexpr,
    TQ2: tl.constexpr,
    K0: tl.constexpr,
    K1: tl.constexpr,
    K2: tl.constexpr,
    TK0: tl.constexpr,
    TK1: tl.constexpr,
    TK2: tl.constexpr,
):
    """The table index of the offset (0, 0, 0): R_a = (extent_a - 1) / 2 per axis."""
    return _bias_coord(
        (_bias_extent(TQ0, K0, TK0) - 1) // 2,
        (_bias_extent(TQ1, K1, TK1) - 1) // 2,
        (_bias_extent(TQ2, K2, TK2) - 1) // 2,
        TQ0,
        TQ1,
        TQ2,
        K0,
        K1,
        K2,
        TK0,
        TK1,
        TK2,
    )


@triton.jit
def _gather_bias(rows, cols, ASM: tl.constexpr):
    """[queries, keys] float32 entries at ``rows[q] + cols[k]`` (rows: per-query pointers into the bias table,
    cols: per-key int32 indices). On a GPU one wide multiply-add and one read-only load per pair (inline PTX: the
    address arithmetic stays one instruction and the load is not pipelined through shared memory); under the
    interpreter a plain gather."""
    if ASM:
        addr = rows.to(tl.int64)[:, None] + (cols.to(tl.int64) * 4)[None, :]
        x = tl.inline_asm_elementwise(
            "ld.global.nc.f32 $0, [$1];", "=f,l", [addr], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        x = tl.load(rows[:, None] + cols[None, :])
    return x


@triton.jit
def _store_logits(rows, cols, x, mask, ASM: tl.constexpr):
    """Store x [queries, keys] (float32) at ``rows[q] + cols[k]`` where ``mask``: on a GPU inline PTX in the layout
    the values are in (no trip through shared memory to a store layout), one wide multiply-add, a predicate and a
    store per pair."""
    if ASM:
        addr = rows.to(tl.int64)[:, None] + (cols.to(tl.int64) * 4)[None, :]
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p st.global.f32 [$1], $2; mov.u32 $0, 0; }",
            "=r,l,f,r",
            [addr, x, mask.to(tl.int32)],
            dtype=tl.int32,
            is_pure=False,
            pack=1,
        )
    else:
        tl.store(rows[:, None] + cols[None, :], x, mask=mask)


@triton.jit
def _scatter_logits(rows, cols, x, mask, accumulate, ACCUMULATE: tl.constexpr, ASM: tl.constexpr):
    """``_store_logits``, or with ACCUMULATE added to the values there where ``accumulate`` (a scalar: the
    program wrote them for an earlier batch item; each (query, slot) belongs to one program and one thread, so
    the read-add-write needs no atomic): on a GPU a second predicate, a predicated load and an add per pair
    more."""
    if not ACCUMULATE:
        _store_logits(rows, cols, x, mask, ASM)
    elif ASM:
        addr = rows.to(tl.int64)[:, None] + (cols.to(tl.int64) * 4)[None, :]
        tl.inline_asm_elementwise(
            "{ .reg .pred p, a; .reg .f32 t; setp.ne.b32 p, $3, 0; setp.ne.b32 a, $4, 0; "
            "mov.f32 t, 0f00000000; @a ld.global.f32 t, [$1]; add.f32 t, t, $2; @p st.global.f32 [$1], t; "
            "mov.u32 $0, 0; }",
            "=r,l,f,r,r",
            [addr, x, mask.to(tl.int32), (mask & accumulate).to(tl.int32)],
            dtype=tl.int32,
            is_pure=False,
            pack=1,
        )
    else:
        ptrs = rows[:, None] + cols[None, :]
        prior = tl.load(ptrs, mask=mask & accumulate, other=0.0)
        tl.store(ptrs, x + prior, mask=mask)


@triton.jit
def _axis_slot(i, r, n, d, K: tl.constexpr):
    """Along one axis: the window slot of the key at rpb index ``r`` (0 .. 2K - 2; offset r - (K - 1)) from the
    query at absolute coordinate ``i`` of an axis of n tokens and dilation d (outside [0, K): no such key in its
    window). The key's group coordinate is c + r - (K - 1), its slot that minus the window start."""
    if K == 1:
        slot = r + 0 * i
    else:
        c = i // d
        n_group = (n - i % d + d - 1) // d
        slot = r - (K - 1) + c - _window_start(c, n_group, K, False)
    return slot


@triton.jit
def _axis_range(r, n, d, K: tl.constexpr):
    """[lo, hi): along one axis, the absolute coordinates of the queries whose window holds a key at rpb index r
    (a query's class u = c - start(c) runs 0 .. K - 1 over the axis: u < K // 2 on the first (K // 2) d
    coordinates, d each, K // 2 inside, u > K // 2 on the last ones; the key's slot is r - (K - 1) + u, so the
    classes with a slot in [0, K) are one run of them, one run of coordinates)."""
    H: tl.constexpr = K // 2
    u_lo = tl.maximum(K - 1 - r, 0)
    u_hi = tl.minimum(2 * K - 2 - r, K - 1)
    lo = tl.where(u_lo <= H, u_lo * d, n - (K - u_lo) * d)
    hi = tl.where(u_hi < H, (u_hi + 1) * d, tl.where(u_hi == H, n - H * d, n - (K - 1 - u_hi) * d))
    return lo, hi


@triton.jit
def _bias_grad(
    w,
    dlogit_ptr,
    drpb_ptr,
    partial_ptr,
    counter_ptr,
    heads,
    groups,
    chunks,
    chunk_trips,
    n0,
    n1,
    n2,
    d0,
    d1,
    d2,
    K0: tl.constexpr,
    K1: tl.constexpr,
    K2: tl.constexpr,
    BLOCK: tl.constexpr,
    GROUPS: tl.constexpr,
    FIN_BLOCK: tl.constexpr,
):
    """Chunk w % chunks of drpb[h, r], hr = w // chunks = h R + r (R = prod(2 K_a - 1); none past heads R): the
    sum over the batch groups and over the queries whose window holds offset r (a box, ``_axis_range``) of the
    logit gradient at that offset's window slot, from dlogit [groups, heads, prod(K), N] (float32, queries
    contiguous: a block of queries with one slot is one coalesced load; each entry belongs to one offset). The
    trips over (box row, block of BLOCK queries, step of GROUPS groups) are split into chunks of ``chunk_trips``;
    each chunk writes its partial sum and takes a ticket (one acq_rel atomic); the last adds the partials in chunk
    order (deterministic), stores drpb[h, r] in its dtype and resets the counter."""
    R1: tl.constexpr = 2 * K1 - 1
    R2: tl.constexpr = 2 * K2 - 1
    R: tl.constexpr = (2 * K0 - 1) * R1 * R2
    KK: tl.constexpr = K0 * K1 * K2
    hr = w // chunks
    if hr < heads * R:
        h = hr // R
        r = hr % R
        r0, r1, r2 = r // (R1 * R2), (r // R2) % R1, r % R2
        lo0, hi0 = _axis_range(r0, n0, d0, K0)
        lo1, hi1 = _axis_range(r1, n1, d1, K1)
        lo2, hi2 = _axis_range(r2, n2, d2, K2)
        width = hi2 - lo2
        inner = (hi1 - lo1) * width
        blocks = tl.cdiv(inner, BLOCK)
        steps = tl.cdiv(groups, GROUPS)
        N = n0 * n1 * n2
        first = (w % chunks) * chunk_trips
        last = tl.minimum(first + chunk_trips, (hi0 - lo0) * blocks * steps)
        acc = tl.zeros([GROUPS, BLOCK], dtype=tl.float32)
        for t in range(first, last):
            i0 = lo0 + t // (blocks * steps)
            j = ((t // steps) % blocks) * BLOCK + tl.arange(0, BLOCK)
            g = (t % steps) * GROUPS + tl.arange(0, GROUPS)
            i1 = lo1 + j // width
            i2 = lo2 + j % width
            slot = (_axis_slot(i0, r0, n0, d0, K0) * K1 + _axis_slot(i1, r1, n1, d1, K1)) * K2
            slot += _axis_slot(i2, r2, n2, d2, K2)
            ptrs = dlogit_ptr + ((g * heads + h).to(tl.int64) * (KK * N))[:, None]
            ptrs += (slot.to(tl.int64) * N + (i0 * n1 + i1) * n2 + i2)[None, :]
            acc += tl.load(ptrs, mask=(g < groups)[:, None] & (j < inner)[None, :], other=0.0)
        tl.store(partial_ptr + w, tl.sum(tl.sum(acc, axis=1), axis=0))
        tl.debug_barrier()  # the partial is written before the ticket is taken
        ticket = tl.atomic_add(counter_ptr + hr, 1, sem="acq_rel", scope="gpu")
        if ticket == chunks - 1:  # the last chunk of this offset: every partial is visible
            c = tl.arange(0, FIN_BLOCK)
            total = tl.zeros([FIN_BLOCK], dtype=tl.float32)
            for start in range(0, chunks, FIN_BLOCK):
                mask = start + c < chunks
                total += tl.load(partial_ptr + hr * chunks + start + c, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(drpb_ptr + hr, tl.sum(total, axis=0).to(drpb_ptr.dtype.element_ty))
            tl.store(counter_ptr + hr, 0)  # ready for the next launch


@triton.jit
def _clamped_offsets(c0, c1, c2, g0, g1, g2, ng0, ng1, ng2, d0, d1, d2, s0, s1, s2):
    """Memory offsets (int64) of group coordinates c_a clamped into their groups: loads need no mask (the clamped
    rows are masked out of every window by their true coordinates)."""
    c0 = tl.minimum(c0, ng0 - 1)
    c1 = tl.minimum(c1, ng1 - 1)
    c2 = tl.minimum(c2, ng2 - 1)
    return _offsets(c0, c1, c2, g0, g1, g2, d0, d1, d2, s0, s1, s2)


@triton.jit
def _load_rows(base, off, dd, s_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, TRANSPOSED: tl.constexpr):
    """[rows, BLOCK_D] (or its transpose) at row offsets ``off``: no mask unless head_dim is not a power of two."""
    if TRANSPOSED:
        ptrs = base + off[None, :] + dd[:, None] * s_d
        if HEAD_DIM == BLOCK_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=(dd < HEAD_DIM)[:, None], other=0.0)
    else:
        ptrs = base + off[:, None] + dd[None, :] * s_d
        if HEAD_DIM == BLOCK_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=(dd < HEAD_DIM)[None, :], other=0.0)
    return x


@triton.jit
def _region(f, ng, K: tl.constexpr, CAUSAL: tl.constexpr, TQ: tl.constexpr, BY_QUERY: tl.constexpr):
    """The walked region [lo, hi) along one axis for the box of TQ coordinates from f: by query, the union of the
    box's windows (keys); by key, the queries whose windows hold a key of the box."""
    last = tl.minimum(f + TQ, ng) - 1
    if BY_QUERY:
        lo = tl.maximum(_window_start(f, ng, K, CAUSAL), 0)
        hi = _window_start(last, ng, K, CAUSAL) + K
    else:
        lo = _first_query(f, K, CAUSAL)
        hi = _last_query(last, ng, K, CAUSAL) + 1
    return lo, hi


@triton.jit
def _na_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    rpb_ptr,
    out_ptr,
    lse_ptr,
    heads,
    scale2,
    n0,
    n1,
    n2,
    d0,
    d1,
    d2,
    tiles0,
    tiles1,
    tiles2,
    s_b,
    s_0,
    s_1,
    s_2,
    s_h,
    s_d,
    sk_b,
    sk_0,
    sk_1,
    sk_2,
    sk_h,
    sk_d,
    sv_b,
    sv_0,
    sv_1,
    sv_2,
    sv_h,
    sv_d,
    so_b,
    so_0,
    so_1,
    so_2,
    so_h,
    K0: tl.constexpr,
    K1: tl.constexpr,
    K2: tl.constexpr,
    HAS_RPB: tl.constexpr,
    CAUSAL0: tl.constexpr,
    CAUSAL1: tl.constexpr,
    CAUSAL2: tl.constexpr,
    TQ0: tl.constexpr,
    TQ1: tl.constexpr,
    TQ2: tl.constexpr,
    TK0: tl.constexpr,
    TK1: tl.constexpr,
    TK2: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HPP: tl.constexpr,
    EXACT_DOT: tl.constexpr,
    ASM: tl.constexpr,
):
    """Forward of one query box and HPP heads: out (dtype of q, out's strides) and the base-2 log-sum-exp lse
    [B, heads, N] (float32), by an online softmax over the key boxes that cover the union of the box's windows.
    The mask and the bias index are computed once per key box for all HPP heads, from per-query and per-key
    vectors (separable per axis); the bias is rpb_ptr's padded table (``_bias_table``), pre-scaled by log2 e."""
    TQN: tl.constexpr = TQ0 * TQ1 * TQ2
    TKN: tl.constexpr = TK0 * TK1 * TK2
    RPB_HEAD: tl.constexpr = _bias_extent(TQ0, K0, TK0) * _bias_extent(TQ1, K1, TK1) * _bias_extent(TQ2, K2, TK2)
    g0, t0, g1, t1, g2, t2 = _split_tile(tl.program_id(1), d0, d1, d2, tiles0, tiles1, tiles2)
    hg = tl.program_id(0)
    b = (hg // (heads // HPP)).to(tl.int64)
    h0 = ((hg % (heads // HPP)) * HPP).to(tl.int64)
    ng0, ng1, ng2 = (n0 - g0 + d0 - 1) // d0, (n1 - g1 + d1 - 1) // d1, (n2 - g2 + d2 - 1) // d2
    f0, f1, f2 = t0 * TQ0, t1 * TQ1, t2 * TQ2
    qc0 = _axis_coords(f0, TQ1 * TQ2, TQ0, TQN)
    qc1 = _axis_coords(f1, TQ2, TQ1, TQN)
    qc2 = _axis_coords(f2, 1, TQ2, TQN)
    q_ok = (qc0 < ng0) & (qc1 < ng1) & (qc2 < ng2)
    ws0 = _window_start(qc0, ng0, K0, CAUSAL0)
    ws1 = _window_start(qc1, ng1, K1, CAUSAL1)
    ws2 = _window_start(qc2, ng2, K2, CAUSAL2)
    lo0, hi0 = _region(f0, ng0, K0, CAUSAL0, TQ0, True)
    lo1, hi1 = _region(f1, ng1, K1, CAUSAL1, TQ1, True)
    lo2, hi2 = _region(f2, ng2, K2, CAUSAL2, TQ2, True)
    nk1, nk2 = tl.cdiv(hi1 - lo1, TK1), tl.cdiv(hi2 - lo2, TK2)
    empty = (f0 >= ng0) | (f1 >= ng1) | (f2 >= ng2)
    n_tiles = tl.where(empty, 0, tl.cdiv(hi0 - lo0, TK0) * nk1 * nk2)
    bias_q = _bias_origin(TQ0, TQ1, TQ2, K0, K1, K2, TK0, TK1, TK2) - _bias_coord(
        qc0, qc1, qc2, TQ0, TQ1, TQ2, K0, K1, K2, TK0, TK1, TK2
    )

    dd = tl.arange(0, BLOCK_D)
    q_rows = _clamped_offsets(qc0, qc1, qc2, g0, g1, g2, ng0, ng1, ng2, d0, d1, d2, s_0, s_1, s_2)
    q_base = q_ptr + b * s_b + h0 * s_h
    k_base = k_ptr + b * sk_b + h0 * sk_h
    v_base = v_ptr + b * sv_b + h0 * sv_h
    rpb_base = rpb_ptr + h0 * RPB_HEAD
    qs = ()
    ms = ()
    sums = ()
    accs = ()
    for i in tl.static_range(HPP):
        qs = qs + (_load_rows(q_base + i * s_h, q_rows, dd, s_d, HEAD_DIM, BLOCK_D, False),)
        ms = ms + (tl.full([TQN], -1.0e30, dtype=tl.float32),)
        sums = sums + (tl.zeros([TQN], dtype=tl.float32),)
        accs = accs + (tl.zeros([TQN, BLOCK_D], dtype=tl.float32),)
    for t in range(0, n_tiles):
        kc0 = _axis_coords(lo0 + (t // (nk1 * nk2)) * TK0, TK1 * TK2, TK0, TKN)
        kc1 = _axis_coords(lo1 + ((t // nk2) % nk1) * TK1, TK2, TK1, TKN)
        kc2 = _axis_coords(lo2 + (t % nk2) * TK2, 1, TK2, TKN)
        k_rows = _clamped_offsets(kc0, kc1, kc2, g0, g1, g2, ng0, ng1, ng2, d0, d1, d2, sk_0, sk_1, sk_2)
        v_rows = _clamped_offsets(kc0, kc1, kc2, g0, g1, g2, ng0, ng1, ng2, d0, d1, d2, sv_0, sv_1, sv_2)
        ok = _pair_ok(kc0, kc1, kc2, ws0, ws1, ws2, K0, K1, K2)
        if HAS_RPB:
            bias_k = _bias_coord(kc0, kc1, kc2, TQ0, TQ1, TQ2, K0, K1, K2, TK0, TK1, TK2)
        new_ms = ()
        new_sums = ()
        new_accs = ()
        for i in tl.static_range(HPP):
            kt = _load_rows(k_base + i * sk_h, k_rows, dd, sk_d, HEAD_DIM, BLOCK_D, True)
            vv = _load_rows(v_base + i * sv_h, v_rows, dd, sv_d, HEAD_DIM, BLOCK_D, False)
            s = _dot(qs[i], kt, EXACT_DOT)
            if HAS_RPB:
                s = s * scale2 + _gather_bias(rpb_base + i * RPB_HEAD + bias_q, bias_k, ASM)
            else:
                s = s * scale2
            s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(ms[i], tl.max(s, axis=1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(ms[i] - m_new)
            new_sums = new_sums + (sums[i] * alpha + tl.sum(p, axis=1),)
            new_accs = new_accs + (accs[i] * alpha[:, None] + _dot(p.to(vv.dtype), vv, EXACT_DOT),)
            new_ms = new_ms + (m_new,)
        ms = new_ms
        sums = new_sums
        accs = new_accs
    o_rows = _offsets(qc0, qc1, qc2, g0, g1, g2, d0, d1, d2, so_0, so_1, so_2)
    n_flat = _flat_index(qc0, qc1, qc2, g0, g1, g2, d0, d1, d2, n1, n2)
    store_ok = q_ok[:, None] & (dd < HEAD_DIM)[None, :]
    for i in tl.static_range(HPP):
        l_safe = tl.where(q_ok, sums[i], 1.0)
        out = accs[i] / l_safe[:, None]
        o_ptrs = out_ptr + b * so_b + (h0 + i) * so_h + o_rows[:, None] + dd[None, :]
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=store_ok)
        lse_row = (b * heads + h0 + i) * (n0 * n1 * n2)
        tl.store(lse_ptr + lse_row + n_flat, ms[i] + tl.log2(l_safe), mask=q_ok)


@triton.jit
def _na_bwd_kv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    rpb_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    dk_ptr,
    dv_ptr,
    dlogit_ptr,
    drpb_ptr,
    partial_ptr,
    counter_ptr,
    heads,
    batch_heads,
    groups,
    chunks,
    chunk_trips,
    scale,
    n0,
    n1,
    n2,
    d0,
    d1,
    d2,
    tiles0,
    tiles1,
    tiles2,
    s_b,
    s_0,
    s_1,
    s_2,
    s_h,
    s_d,
    sk_b,
    sk_0,
    sk_1,
    sk_2,
    sk_h,
    sk_d,
    sv_b,
    sv_0,
    sv_1,
    sv_2,
    sv_h,
    sv_d,
    sdo_b,
    sdo_0,
    sdo_1,
    sdo_2,
    sdo_h,
    sdo_d,
    sg_b,
    sg_0,
    sg_1,
    sg_2,
    sg_h,
    K0: tl.constexpr,
    K1: tl.constexpr,
    K2: tl.constexpr,
    HAS_RPB: tl.constexpr,
    CAUSAL0: tl.constexpr,
    CAUSAL1: tl.constexpr,
    CAUSAL2: tl.constexpr,
    TQ0: tl.constexpr,
    TQ1: tl.constexpr,
    TQ2: tl.constexpr,
    TK0: tl.constexpr,
    TK1: tl.constexpr,
    TK2: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    EXACT_DOT: tl.constexpr,
    ASM: tl.constexpr,
    BIAS_BLOCK: tl.constexpr,
    BIAS_GROUPS: tl.constexpr,
    BIAS_FIN_BLOCK: tl.constexpr,
):
    """Backward for one key box: dv = sum_q p dO and dk = scale sum_q ds q over the query boxes whose windows
    can hold its keys (dk and dv share the strides sg_*; unit head_dim stride). The mask and the bias index are
    separable per axis, as in the forward; loads are clamped into the map instead of masked.

    With a bias, the programs past the batch x heads rows of the grid (``batch_heads``) compute drpb instead, a
    chunk of one offset of one head each (``_bias_grad``), from the logit gradients the dq kernel wrote before
    this launch."""
    if tl.program_id(0) >= batch_heads:
        if HAS_RPB:
            w = (tl.program_id(0) - batch_heads) * tl.num_programs(1) + tl.program_id(1)
            _bias_grad(
                w, dlogit_ptr, drpb_ptr, partial_ptr, counter_ptr, heads, groups, chunks, chunk_trips, n0, n1, n2,
                d0, d1, d2, K0, K1, K2, BIAS_BLOCK, BIAS_GROUPS, BIAS_FIN_BLOCK,
            )  # fmt: skip
        return
    TQN: tl.constexpr = TQ0 * TQ1 * TQ2
    TKN: tl.constexpr = TK0 * TK1 * TK2
    RPB_HEAD: tl.constexpr = _bias_extent(TQ0, K0, TK0) * _bias_extent(TQ1, K1, TK1) * _bias_extent(TQ2, K2, TK2)
    g0, t0, g1, t1, g2, t2 = _split_tile(tl.program_id(1), d0, d1, d2, tiles0, tiles1, tiles2)
    bh = tl.program_id(0)
    b = (bh // heads).to(tl.int64)
    h = (bh % heads).to(tl.int64)
    ng0, ng1, ng2 = (n0 - g0 + d0 - 1) // d0, (n1 - g1 + d1 - 1) // d1, (n2 - g2 + d2 - 1) // d2
    f0, f1, f2 = t0 * TK0, t1 * TK1, t2 * TK2
    kc0 = _axis_coords(f0, TK1 * TK2, TK0, TKN)
    kc1 = _axis_coords(f1, TK2, TK1, TKN)
    kc2 = _axis_coords(f2, 1, TK2, TKN)
    k_ok = (kc0 < ng0) & (kc1 < ng1) & (kc2 < ng2)
    lo0, hi0 = _region(f0, ng0, K0, CAUSAL0, TK0, False)
    lo1, hi1 = _region(f1, ng1, K1, CAUSAL1, TK1, False)
    lo2, hi2 = _region(f2, ng2, K2, CAUSAL2, TK2, False)
    nq1, nq2 = tl.cdiv(hi1 - lo1, TQ1), tl.cdiv(hi2 - lo2, TQ2)
    empty = (f0 >= ng0) | (f1 >= ng1) | (f2 >= ng2)
    n_tiles = tl.where(empty, 0, tl.cdiv(hi0 - lo0, TQ0) * nq1 * nq2)

    dd = tl.arange(0, BLOCK_D)
    k_rows = _clamped_offsets(kc0, kc1, kc2, g0, g1, g2, ng0, ng1, ng2, d0, d1, d2, sk_0, sk_1, sk_2)
    v_rows = _clamped_offsets(kc0, kc1, kc2, g0, g1, g2, ng0, ng1, ng2, d0, d1, d2, sv_0, sv_1, sv_2)
    kt = _load_rows(k_ptr + b * sk_b + h * sk_h, k_rows, dd, sk_d, HEAD_DIM, BLOCK_D, True)
    vt = _load_rows(v_ptr + b * sv_b + h * sv_h, v_rows, dd, sv_d, HEAD_DIM, BLOCK_D, True)
    bias_k = _bias_coord(kc0, kc1, kc2, TQ0, TQ1, TQ2, K0, K1, K2, TK0, TK1, TK2)
    bias_base = rpb_ptr + h * RPB_HEAD + _bias_origin(TQ0, TQ1, TQ2, K0, K1, K2, TK0, TK1, TK2)
    q_base = q_ptr + b * s_b + h * s_h
    do_base = do_ptr + b * sdo_b + h * sdo_h
    row = bh.to(tl.int64) * (n0 * n1 * n2)
    dk = tl.zeros([TKN, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([TKN, BLOCK_D], dtype=tl.float32)
    scale2 = scale * 1.4426950408889634
    for t in range(0, n_tiles):
        qc0 = _axis_coords(lo0 + (t // (nq1 * nq2)) * TQ0, TQ1 * TQ2, TQ0, TQN)
        qc1 = _axis_coords(lo1 + ((t // nq2) % nq1) * TQ1, TQ2, TQ1, TQN)
        qc2 = _axis_coords(lo2 + (t % nq2) * TQ2, 1, TQ2, TQN)
        ws0 = _window_start(qc0, ng0, K0, CAUSAL0)
        ws1 = _window_start(qc1, ng1, K1, CAUSAL1)
        ws2 = _window_start(qc2, ng2, K2, CAUSAL2)
        q_ok = (qc0 < ng0) & (qc1 < ng1) & (qc2 < ng2)
        q_rows = _clamped_offsets(qc0, qc1, qc2, g0, g1, g2, ng0, ng1, ng2, d0, d1, d2, s_0, s_1, s_2)
        do_rows = _clamped_offsets(qc0, qc1, qc2, g0, g1, g2, ng0, ng1, ng2, d0, d1, d2, sdo_0, sdo_1, sdo_2)
        q = _load_rows(q_base, q_rows, dd, s_d, HEAD_DIM, BLOCK_D, False)
        do = _load_rows(do_base, do_rows, dd, sdo_d, HEAD_DIM, BLOCK_D, False)
        n_flat = _flat_index(
            tl.minimum(qc0, ng0 - 1), tl.minimum(qc1, ng1 - 1), tl.minimum(qc2, ng2 - 1), g0, g1, g2, d0, d1, d2, n1, n2
        )
        lse = tl.load(lse_ptr + row + n_flat)
        delta = tl.load(delta_ptr + row + n_flat)
        # queries outside the map (clamped rows) and keys outside it: out of every window
        ok = _pair_ok(kc0, kc1, kc2, ws0, ws1, ws2, K0, K1, K2) & q_ok[:, None]
        s = _dot(q, kt, EXACT_DOT)
        if HAS_RPB:
            bias_q = bias_base - _bias_coord(qc0, qc1, qc2, TQ0, TQ1, TQ2, K0, K1, K2, TK0, TK1, TK2)
            s = s * scale2 + _gather_bias(bias_q, bias_k, ASM)
        else:
            s = s * scale2
        p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
        dv += _dot(tl.trans(p).to(do.dtype), do, EXACT_DOT)
        ds = p * (_dot(do, vt, EXACT_DOT) - delta[:, None])
        dk += _dot(tl.trans(ds).to(q.dtype), q, EXACT_DOT)
    g_off = b * sg_b + h * sg_h + _offsets(kc0, kc1, kc2, g0, g1, g2, d0, d1, d2, sg_0, sg_1, sg_2)
    kv_mask = k_ok[:, None] & (dd < HEAD_DIM)[None, :]
    tl.store(dk_ptr + g_off[:, None] + dd[None, :], (dk * scale).to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptr + g_off[:, None] + dd[None, :], dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)


@triton.jit
def _na_bwd_q_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    rpb_ptr,
    do_ptr,
    out_ptr,
    lse_ptr,
    delta_ptr,
    dq_ptr,
    dlogit_ptr,
    heads,
    batch,
    groups,
    scale,
    n0,
    n1,
    n2,
    d0,
    d1,
    d2,
    tiles0,
    tiles1,
    tiles2,
    s_b,
    s_0,
    s_1,
    s_2,
    s_h,
    s_d,
    sk_b,
    sk_0,
    sk_1,
    sk_2,
    sk_h,
    sk_d,
    sv_b,
    sv_0,
    sv_1,
    sv_2,
    sv_h,
    sv_d,
    sdo_b,
    sdo_0,
    sdo_1,
    sdo_2,
    sdo_h,
    sdo_d,
    so_b,
    so_0,
    so_1,
    so_2,
    so_h,
    so_d,
    sg_b,
    sg_0,
    sg_1,
    sg_2,
    sg_h,
    K0: tl.constexpr,
    K1: tl.constexpr,
    K2: tl.constexpr,
    HAS_RPB: tl.constexpr,
    CAUSAL0: tl.constexpr,
    CAUSAL1: tl.constexpr,
    CAUSAL2: tl.constexpr,
    TQ0: tl.constexpr,
    TQ1: tl.constexpr,
    TQ2: tl.constexpr,
    TK0: tl.constexpr,
    TK1: tl.constexpr,
    TK2: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    EXACT_DOT: tl.constexpr,
    ASM: tl.constexpr,
    SCATTER_ASM: tl.constexpr,
    ACCUMULATE: tl.constexpr,
):
    """Backward for one query box of one head, for the batch items g, g + groups, ... of its group g: delta =
    rowsum(dO * O) of its queries (stored to ``delta_ptr`` for the dk/dv kernel, launched after this one), then
    dq = scale sum_k ds k over the key boxes of its windows; with a bias, the logit gradients ds also go to dlogit
    [groups, heads, prod(K), N] (float32) at each (key's window slot, query) (a separable index: per-key plus
    per-query), for the rpb gradient that the dk/dv launch's extra programs sum per relative offset
    (``_bias_grad``). With groups = batch (the buffer holds the batch; always without a bias) a program has one
    item; else (ACCUMULATE) the program sums its items' gradients in place. Inline PTX scatters them, or
    ``tl.load``/``tl.store`` where SCATTER_ASM is off: the interpreter and the variant a torch.compile graph
    launches."""
    TQN: tl.constexpr = TQ0 * TQ1 * TQ2
    TKN: tl.constexpr = TK0 * TK1 * TK2
    KK: tl.constexpr = K0 * K1 * K2
    RPB_HEAD: tl.constexpr = _bias_extent(TQ0, K0, TK0) * _bias_extent(TQ1, K1, TK1) * _bias_extent(TQ2, K2, TK2)
    g0, t0, g1, t1, g2, t2 = _split_tile(tl.program_id(1), d0, d1, d2, tiles0, tiles1, tiles2)
    gh = tl.program_id(0)
    group = gh // heads
    h = (gh % heads).to(tl.int64)
    ng0, ng1, ng2 = (n0 - g0 + d0 - 1) // d0, (n1 - g1 + d1 - 1) // d1, (n2 - g2 + d2 - 1) // d2
    f0, f1, f2 = t0 * TQ0, t1 * TQ1, t2 * TQ2
    qc0 = _axis_coords(f0, TQ1 * TQ2, TQ0, TQN)
    qc1 = _axis_coords(f1, TQ2, TQ1, TQN)
    qc2 = _axis_coords(f2, 1, TQ2, TQN)
    q_ok = (qc0 < ng0) & (qc1 < ng1) & (qc2 < ng2)
    ws0 = _window_start(qc0, ng0, K0, CAUSAL0)
    ws1 = _window_start(qc1, ng1, K1, CAUSAL1)
    ws2 = _window_start(qc2, ng2, K2, CAUSAL2)
    lo0, hi0 = _region(f0, ng0, K0, CAUSAL0, TQ0, True)
    lo1, hi1 = _region(f1, ng1, K1, CAUSAL1, TQ1, True)
    lo2, hi2 = _region(f2, ng2, K2, CAUSAL2, TQ2, True)
    nk1, nk2 = tl.cdiv(hi1 - lo1, TK1), tl.cdiv(hi2 - lo2, TK2)
    empty = (f0 >= ng0) | (f1 >= ng1) | (f2 >= ng2)
    n_tiles = tl.where(empty, 0, tl.cdiv(hi0 - lo0, TK0) * nk1 * nk2)

    dd = tl.arange(0, BLOCK_D)
    N = n0 * n1 * n2
    n_flat = _flat_index(
        tl.minimum(qc0, ng0 - 1), tl.minimum(qc1, ng1 - 1), tl.minimum(qc2, ng2 - 1), g0, g1, g2, d0, d1, d2, n1, n2
    )
    bias_q = (
        rpb_ptr
        + h * RPB_HEAD
        + _bias_origin(TQ0, TQ1, TQ2, K0, K1, K2, TK0, TK1, TK2)
        - _bias_coord(qc0, qc1, qc2, TQ0, TQ1, TQ2, K0, K1, K2, TK0, TK1, TK2)
    )
    # dlogit's index of (query, key): (slot) N + query, slot = sum_a (kc_a - ws_a) S_a with S the row-major
    # strides of [K0, K1, K2]: per-query rows minus the window start's slot, per-key columns
    slot_q = dlogit_ptr + gh.to(tl.int64) * (KK * N) + n_flat - ((ws0 * K1 + ws1) * K2 + ws2) * N
    scale2 = scale * 1.4426950408889634
    if ACCUMULATE:
        items = tl.cdiv(batch - group, groups)
    else:
        items = 1  # groups = batch: one item, no loop in the compiled code
    for step in range(0, items):
        b = group.to(tl.int64) + step * groups
        row = (b * heads + h) * N
        # the row offsets here, not before the loop: they would stay live through the walk (spills on sm_80)
        do_rows = _clamped_offsets(qc0, qc1, qc2, g0, g1, g2, ng0, ng1, ng2, d0, d1, d2, sdo_0, sdo_1, sdo_2)
        o_rows = _clamped_offsets(qc0, qc1, qc2, g0, g1, g2, ng0, ng1, ng2, d0, d1, d2, so_0, so_1, so_2)
        q_rows = _clamped_offsets(qc0, qc1, qc2, g0, g1, g2, ng0, ng1, ng2, d0, d1, d2, s_0, s_1, s_2)
        do = _load_rows(do_ptr + b * sdo_b + h * sdo_h, do_rows, dd, sdo_d, HEAD_DIM, BLOCK_D, False)
        o = _load_rows(out_ptr + b * so_b + h * so_h, o_rows, dd, so_d, HEAD_DIM, BLOCK_D, False)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
        tl.store(delta_ptr + row + n_flat, delta, mask=q_ok)
        q = _load_rows(q_ptr + b * s_b + h * s_h, q_rows, dd, s_d, HEAD_DIM, BLOCK_D, False)
        lse = tl.load(lse_ptr + row + n_flat)
        k_base = k_ptr + b * sk_b + h * sk_h
        v_base = v_ptr + b * sv_b + h * sv_h
        dq = tl.zeros([TQN, BLOCK_D], dtype=tl.float32)
        for t in range(0, n_tiles):
            kc0 = _axis_coords(lo0 + (t // (nk1 * nk2)) * TK0, TK1 * TK2, TK0, TKN)
            kc1 = _axis_coords(lo1 + ((t // nk2) % nk1) * TK1, TK2, TK1, TKN)
            kc2 = _axis_coords(lo2 + (t % nk2) * TK2, 1, TK2, TKN)
            k_rows = _clamped_offsets(kc0, kc1, kc2, g0, g1, g2, ng0, ng1, ng2, d0, d1, d2, sk_0, sk_1, sk_2)
            v_rows = _clamped_offsets(kc0, kc1, kc2, g0, g1, g2, ng0, ng1, ng2, d0, d1, d2, sv_0, sv_1, sv_2)
            kt = _load_rows(k_base, k_rows, dd, sk_d, HEAD_DIM, BLOCK_D, True)
            vt = _load_rows(v_base, v_rows, dd, sv_d, HEAD_DIM, BLOCK_D, True)
            ok = _pair_ok(kc0, kc1, kc2, ws0, ws1, ws2, K0, K1, K2)
            s = _dot(q, kt, EXACT_DOT)
            if HAS_RPB:
                bias_k = _bias_coord(kc0, kc1, kc2, TQ0, TQ1, TQ2, K0, K1, K2, TK0, TK1, TK2)
                s = s * scale2 + _gather_bias(bias_q, bias_k, ASM)
            else:
                s = s * scale2
            p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
            ds = p * (_dot(do, vt, EXACT_DOT) - delta[:, None])
            dq += _dot(ds.to(kt.dtype), tl.trans(kt), EXACT_DOT)
            if HAS_RPB:
                slot_k = ((kc0 * K1 + kc1) * K2 + kc2) * N
                _scatter_logits(slot_q, slot_k, ds, ok & q_ok[:, None], step > 0, ACCUMULATE, SCATTER_ASM)
        g_off = b * sg_b + h * sg_h + _offsets(qc0, qc1, qc2, g0, g1, g2, d0, d1, d2, sg_0, sg_1, sg_2)
        q_mask = q_ok[:, None] & (dd < HEAD_DIM)[None, :]
        tl.store(dq_ptr + g_off[:, None] + dd[None, :], (dq * scale).to(dq_ptr.dtype.element_ty), mask=q_mask)


# The backward's buffer of logit gradients (with a bias): 256 MiB at most; when the batch does not fit, each dq
# program sums the items of its group of the batch in place
DLOGIT_BYTES = 1 << 28
MAX_BIAS_LOGITS = 1 << 31  # logits per head and item with a bias: the dq kernel's slot offsets are 32-bit
BIAS_CHUNK_TRIPS = 2 if INTERPRETER else 16  # load trips per program of the bias gradient (several chunks in tests)


# ----------------------------------------------------------------------------------------------------------------
# 3. Launchers
# ----------------------------------------------------------------------------------------------------------------


def _check_triton_inputs(q, k, v, kernel_size, dilation, is_causal, rpb, scale):
    checked = check_na_inputs(q, k, v, kernel_size, dilation, is_causal, rpb, scale)
    _check_triton_support(q)
    return checked


def _check_triton_support(q: Tensor) -> None:
    """What the kernels take beyond :func:`check_na_inputs` (which checked that k and v match q)."""
    check_triton_dtypes("the Triton neighborhood attention takes", {"q, k, v": q})
    lo, hi = HEAD_DIM_RANGE
    if not lo <= q.shape[-1] <= hi:
        raise ValueError(
            f"the Triton neighborhood attention takes head_dim in [{lo}, {hi}], got {q.shape[-1]} "
            f"(q {list(q.shape)}); use backend='torch' for other head sizes"
        )
    check_triton_device(q.device)


def _three(values: Sequence, fill) -> tuple:
    """Per-axis values padded to three axes with leading ``fill``."""
    return (fill,) * (3 - len(values)) + tuple(values)


def _strides(t: Tensor, with_last: bool = True) -> tuple[int, ...]:
    """(batch, three spatial, heads[, head_dim]) strides of a [B, *spatial, heads, head_dim] tensor."""
    st = t.stride()
    strides = (st[0], *_three(st[1:-2], 0), st[-2])
    return (*strides, st[-1]) if with_last else strides


def _problem(q: Tensor, ks, ds, cs) -> dict:
    """Sizes and flags shared by the three kernels."""
    dims = q.dim() - 3
    return dict(
        spatial=_three(q.shape[1 : 1 + dims], 1),
        kernel=_three(ks, 1),
        dilation=_three(ds, 1),
        causal=_three(cs, False),
        dims=dims,
        head_dim=q.shape[-1],
        block_d=max(16, next_power_of_2(q.shape[-1])),
        fp32=q.dtype == torch.float32,
    )


def _grid(problem: dict, box: tuple[int, int, int], rows: int) -> tuple[tuple[int, int], tuple[int, int, int]]:
    """(grid, boxes per dilation group and axis) for boxes of ``box`` group coordinates. Axis 0 (up to 2^31 - 1
    programs) holds the batch x heads rows: the programs that run together read neighbouring heads of one tile;
    axis 1 (up to 65535) the boxes."""
    tiles = tuple(cdiv(cdiv(n, d), t) for n, d, t in zip(problem["spatial"], problem["dilation"], box, strict=True))
    boxes = math.prod(d * t for d, t in zip(problem["dilation"], tiles, strict=True))
    if boxes > 65535:
        raise ValueError(
            f"{problem['spatial']} tokens make {boxes} query or key boxes, more than a grid axis takes "
            f"(65535); use backend='torch'"
        )
    return (rows, boxes), tiles


def _np2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _cover(tq: tuple, ks: tuple, cap: int) -> tuple[int, int, int]:
    """A key box for a query box: per axis the union of the box's windows (tq + k - 1, a power of two up), cut
    down from the leading axis by halves until it holds at most ``cap`` keys (the box then steps along it)."""
    tk = [_np2(t + k - 1) if k > 1 else 1 for t, k in zip(tq, ks, strict=True)]
    axis = 0
    while math.prod(tk) > cap:
        while tk[axis] == 1:
            axis += 1
        tk[axis] //= 2
    return tuple(tk)


# A program's own box (three axes; leading axes of length 1): the query box of the forward and of the dq kernel,
# the key box of the dk/dv kernel; the walked boxes cover the reach of the own box's windows (``_cover``) up to a
# number of tokens. GPU, bf16/fp16: 64 own tokens (a wgmma warpgroup tile over 4 warps) and walked boxes of 64
# (32 in the backward for head_dim > 32, with 32-token own boxes for head_dim > 64); two heads per forward
# program for 2-D/3-D head_dim <= 32; float32 (CUDA-core dots): 32 x 32. The pipeline depths are the choices without spills on sm_80 and sm_90 (the AOT
# reports). Interpreter: small boxes so that the test sizes span several boxes and their borders.
_OWN_GPU = {1: (1, 1, 64), 2: (1, 8, 8), 3: (4, 4, 4)}
_OWN_GPU_SMALL = {1: (1, 1, 32), 2: (1, 4, 8), 3: (2, 4, 4)}
_OWN_INTERPRETER = {1: (1, 1, 8), 2: (1, 2, 4), 3: (2, 2, 2)}


def _launch_config(problem: dict, heads: int, has_rpb: bool, kernel) -> dict:
    """Every constexpr of a launch of ``kernel`` with num_warps and num_stages: the kernel sizes, causal flags,
    head_dim, the query box TQ* and key box TK* (the own box and the walked boxes that cover its windows' reach),
    heads per program HPP (forward only: 2 when head_dim <= 32 and the heads pair up, so that the mask and the
    bias index serve both). The launchers cache it in their plans (:func:`_forward_plan`, :func:`_backward_plan`)."""
    dims, ks = problem["dims"], problem["kernel"]
    forward = kernel is _na_fwd_kernel
    hpp, stages = 1, 3
    if INTERPRETER:
        own, cap, warps = _OWN_INTERPRETER[dims], 16, 1
        hpp = 2 if forward and heads % 2 == 0 else 1
    elif problem["fp32"]:
        own, cap, warps, stages = _OWN_GPU_SMALL[dims], 32, 4, (1 if forward else 3)
    elif forward:
        own, cap, warps = _OWN_GPU[dims], 64, 4
        hpp = 2 if dims > 1 and problem["block_d"] <= 32 and heads % 2 == 0 else 1
        stages = 3 if hpp == 1 and dims > 1 and problem["block_d"] <= 32 else 2
    else:
        own = _OWN_GPU_SMALL[dims] if problem["block_d"] > 64 else _OWN_GPU[dims]
        cap, warps, stages = (64 if problem["block_d"] <= 32 else 32), 4, (3 if dims == 3 else 2)
        # with a bias, fewer stages where more spill on sm_80 (the bias gradient's programs share the dk/dv
        # kernel; the dq kernel computes delta)
        if kernel is _na_bwd_kv_kernel and has_rpb and 32 < problem["block_d"] <= 64:
            stages = 1
        if kernel is _na_bwd_q_kernel and has_rpb and dims == 3:
            stages = 1
    other = _cover(own, ks, cap)
    tq, tk = (other, own) if kernel is _na_bwd_kv_kernel else (own, other)
    config = dict(
        K0=ks[0],
        K1=ks[1],
        K2=ks[2],
        HAS_RPB=has_rpb,
        CAUSAL0=problem["causal"][0],
        CAUSAL1=problem["causal"][1],
        CAUSAL2=problem["causal"][2],
        TQ0=tq[0],
        TQ1=tq[1],
        TQ2=tq[2],
        TK0=tk[0],
        TK1=tk[1],
        TK2=tk[2],
        HEAD_DIM=problem["head_dim"],
        BLOCK_D=problem["block_d"],
        EXACT_DOT=INTERPRETER or problem["fp32"],
        ASM=not INTERPRETER,
        num_warps=warps,
        num_stages=stages,
    )
    if forward:
        config["HPP"] = hpp
    if kernel is _na_bwd_kv_kernel:
        # the bias gradient's programs load [BIAS_GROUPS batch groups, BIAS_BLOCK queries] at a time and add
        # BIAS_FIN_BLOCK chunks' partials at a time
        config.update(BIAS_BLOCK=64 * warps, BIAS_GROUPS=8, BIAS_FIN_BLOCK=16)
        if INTERPRETER:  # several blocks, steps and chunks on the tests' small inputs
            config.update(BIAS_BLOCK=16, BIAS_GROUPS=2, BIAS_FIN_BLOCK=2)
    if kernel is _na_bwd_q_kernel:
        # the logit scatter's inline PTX is a store that torch.compile's analysis of a traced kernel cannot see
        # (it would then assume that the kernel writes to every input, and copy them first): tl.store there
        config["SCATTER_ASM"] = not INTERPRETER and not tracing_kernels()
        config["ACCUMULATE"] = False  # the launcher's choice (batch groups)
    return config


def _boxes(config: dict, kernel) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(own box, walked box) of a launch configuration."""
    tq, tk = (tuple(config[f"{p}{a}"] for a in range(3)) for p in ("TQ", "TK"))
    return (tk, tq) if kernel is _na_bwd_kv_kernel else (tq, tk)


def _bias_table(rpb: Tensor | None, like: Tensor, constexprs: dict) -> Tensor:
    """The bias as a kernel reads it: float32 [heads, E0, E1, E2], pre-scaled by log2 e, zeros around rpb, with
    E_a = ``_bias_extent`` of the kernel's boxes and the offset 0 (rpb's index k_a - 1) at (E_a - 1) / 2: every
    (query, key) offset of the walked box pairs lands inside, so the gather needs no mask. ``like`` stands in
    without a bias. Cached per version of rpb (:func:`derived_from_weight`): built once per weight update, not per
    call."""
    if rpb is None:
        return like
    pad = []
    for axis in (2, 1, 0):  # F.pad lists the last axis first
        tq, kk, tk = constexprs[f"TQ{axis}"], constexprs[f"K{axis}"], constexprs[f"TK{axis}"]
        extent = bias_extent(tq, kk, tk)
        before = (extent - 1) // 2 - (kk - 1)
        pad += [before, extent - before - (2 * kk - 1)]

    def build() -> Tensor:
        table = rpb.float().reshape(rpb.shape[0], *_three(rpb.shape[1:], 1)) * LOG2E
        return F.pad(table, pad).contiguous()

    return derived_from_weight(rpb, ("na_bias_table", tuple(pad)), build)


def na_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size,
    dilation=1,
    is_causal=False,
    rpb: Tensor | None = None,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Triton forward: (out [B, *spatial, heads, head_dim] contiguous in the dtype of q, lse [B, heads, N] float32:
    the base-2 log-sum-exp of each query's logits, kept for the backward)."""
    ks, ds, cs, scale = _check_triton_inputs(q, k, v, kernel_size, dilation, is_causal, rpb, scale)
    return _launch_forward(q, k, v, ks, ds, cs, rpb, scale)


def _launch_forward(q: Tensor, k: Tensor, v: Tensor, ks, ds, cs, rpb: Tensor | None, scale: float):
    """:func:`na_forward` on checked inputs (``ks``, ``ds``, ``cs``: per-axis tuples; ``scale`` a float)."""
    B, heads = q.shape[0], q.shape[-2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((B, heads, math.prod(q.shape[1:-2])), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    problem = _problem(q, ks, ds, cs)
    constexprs, grid, tiles = _forward_plan(tuple(problem.items()), B, heads, rpb is not None, tracing_kernels())
    with device_guard(q.device):
        launchable(_na_fwd_kernel)[grid](
            q,
            k,
            v,
            _bias_table(rpb, q, constexprs),
            out,
            lse,
            heads,
            scale * LOG2E,
            *problem["spatial"],
            *problem["dilation"],
            *tiles,
            *_strides(q),
            *_strides(k),
            *_strides(v),
            *_strides(out, with_last=False),
            **constexprs,
        )
    return out, lse


def na_backward(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    kernel_size,
    dilation=1,
    is_causal=False,
    rpb: Tensor | None = None,
    scale: float | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Triton backward: (dq, dk, dv, drpb) in the dtypes of the inputs (drpb an empty tensor without rpb), from
    the forward's ``out`` and ``lse``. Two launches: dq (and delta, and the logit gradients that give drpb) from
    one kernel over query tiles, then dk and dv from one over key tiles, whose extra programs (with a bias) sum the
    logit gradients per relative offset. No atomics on data (one ticket per program of the bias gradient, whose
    last chunk adds the partial sums in a fixed order: deterministic)."""
    ks, ds, cs, scale = _check_triton_inputs(q, k, v, kernel_size, dilation, is_causal, rpb, scale)
    check_float_tensor("grad_out", grad_out)
    if grad_out.shape != q.shape or out.shape != q.shape or grad_out.device != q.device:
        raise ValueError(
            f"grad_out and out must have the shape of q {list(q.shape)} on {q.device}, got "
            f"{list(grad_out.shape)} and {list(out.shape)}"
        )
    B, heads = q.shape[0], q.shape[-2]
    N = math.prod(q.shape[1:-2])
    if lse.shape != (B, heads, N) or lse.dtype != torch.float32:
        raise ValueError(
            f"lse must be the forward's float32 [B, heads, N] = {[B, heads, N]}, got {lse.dtype} {list(lse.shape)}"
        )
    return _launch_backward(grad_out, q, k, v, out, lse, ks, ds, cs, rpb, scale)


def _launch_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, ks, ds, cs, rpb, scale
):
    """:func:`na_backward` on checked inputs: for the eager autograd Function, whose forward checked them (autograd
    passes a gradient of the output's shape and device)."""
    B, heads = q.shape[0], q.shape[-2]
    N = math.prod(q.shape[1:-2])
    grad_out, lse = grad_out.to(q.dtype), lse.contiguous()  # the dots pair dO with v in one dtype
    dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    if q.numel() == 0:
        return dq, dk, dv, (torch.zeros_like(rpb) if rpb is not None else q.new_empty(0))
    problem = _problem(q, ks, ds, cs)
    window = math.prod(ks)
    if rpb is not None and window * N >= MAX_BIAS_LOGITS:
        raise ValueError(
            f"a relative position bias with {N} tokens and a window of {window} needs 64-bit offsets for its "
            f"gradient ({window * N} logits per head); use backend='torch'"
        )
    groups = B if rpb is None else _batch_groups(B, heads, N, window)
    plan = _backward_plan(tuple(problem.items()), B, heads, rpb is not None, groups, tracing_kernels())
    q_config, kv_config, q_grid, q_tiles, kv_grid, kv_tiles, chunks, offsets = plan
    delta = torch.empty((B, heads, N), dtype=torch.float32, device=q.device)  # written by the dq kernel
    dlogit, drpb, partial, counters = lse, q, lse, lse  # without a bias: unused
    if rpb is not None:
        # the logit gradients of the batch (or summed over each group of it, where the batch does not fit), from
        # the dq kernel; the dk/dv launch's extra programs (rows past batch x heads) sum them per relative offset
        # into drpb, in chunks per (head, offset) joined by a ticket
        dlogit = torch.empty((groups, heads, window, N), dtype=torch.float32, device=q.device)
        drpb = torch.empty(rpb.shape, dtype=rpb.dtype, device=q.device)
        partial = torch.empty(offsets * chunks, dtype=torch.float32, device=q.device)
        counters = ticket_counters(q.device, offsets)
    common = (*problem["spatial"], *problem["dilation"])
    inputs = (*_strides(q), *_strides(k), *_strides(v), *_strides(grad_out))
    with device_guard(q.device):
        launchable(_na_bwd_q_kernel)[(groups * heads, q_grid[1])](
            q,
            k,
            v,
            _bias_table(rpb, q, q_config),
            grad_out,
            out,
            lse,
            delta,
            dq,
            dlogit,
            heads,
            B,
            groups,
            scale,
            *common,
            *q_tiles,
            *inputs,
            *_strides(out),
            *_strides(dq, with_last=False),
            **q_config,
        )
        launchable(_na_bwd_kv_kernel)[kv_grid](
            q,
            k,
            v,
            _bias_table(rpb, q, kv_config),
            grad_out,
            lse,
            delta,
            dk,
            dv,
            dlogit,
            drpb,
            partial,
            counters,
            heads,
            B * heads,
            groups,
            chunks,
            BIAS_CHUNK_TRIPS,
            scale,
            *common,
            *kv_tiles,
            *inputs,
            *_strides(dq, with_last=False),  # dk, dv have dq's layout
            **kv_config,
        )
    return dq, dk, dv, (drpb if rpb is not None else q.new_empty(0))


@functools.lru_cache(maxsize=256)
def _forward_plan(problem_items: tuple, batch: int, heads: int, has_rpb: bool, tracing: bool) -> tuple:
    """(constexprs, grid, tiles) of a forward launch, from its sizes (:func:`_problem`'s items) and whether a traced
    graph will launch it (:func:`tracing_kernels`); cached, for the launcher's host time per call. Read-only."""
    problem = dict(problem_items)
    constexprs = _launch_config(problem, heads, has_rpb, _na_fwd_kernel)
    grid, tiles = _grid(problem, _boxes(constexprs, _na_fwd_kernel)[0], batch * heads // constexprs["HPP"])
    return constexprs, grid, tiles


@functools.lru_cache(maxsize=256)
def _backward_plan(problem_items: tuple, batch: int, heads: int, has_rpb: bool, groups: int, tracing: bool) -> tuple:
    """What a backward launch decides from its sizes, its batch groups (:func:`_batch_groups`) and whether a traced
    graph will launch it, cached (read-only): the dq and the dk/dv kernels' configurations, grids and tiles, and
    with a bias the chunks per (head, offset) and the number of such pairs, whose programs extend the dk/dv grid."""
    problem = dict(problem_items)
    q_config = _launch_config(problem, heads, has_rpb, _na_bwd_q_kernel)
    kv_config = _launch_config(problem, heads, has_rpb, _na_bwd_kv_kernel)
    q_grid, q_tiles = _grid(problem, _boxes(q_config, _na_bwd_q_kernel)[0], batch * heads)
    kv_grid, kv_tiles = _grid(problem, _boxes(kv_config, _na_bwd_kv_kernel)[0], batch * heads)
    chunks, offsets = 1, 0
    if has_rpb:
        q_config["ACCUMULATE"] = groups < batch
        offsets = heads * math.prod(2 * kk - 1 for kk in problem["kernel"])
        chunks = _bias_chunks(problem, groups, kv_config)
        kv_grid = (kv_grid[0] + cdiv(offsets * chunks, kv_grid[1]), kv_grid[1])
    return q_config, kv_config, q_grid, q_tiles, kv_grid, kv_tiles, chunks, offsets


def _bias_chunks(problem: dict, groups: int, kv_config: dict) -> int:
    """Chunks per (head, offset) of the bias gradient's programs: the largest box of queries (offset 0: the map)
    over ``groups`` batch groups, in trips of [BIAS_GROUPS, BIAS_BLOCK] loads (``_bias_grad``), BIAS_CHUNK_TRIPS
    trips per chunk."""
    n0, n1, n2 = problem["spatial"]
    trips = n0 * cdiv(n1 * n2, kv_config["BIAS_BLOCK"]) * cdiv(groups, kv_config["BIAS_GROUPS"])
    return cdiv(trips, BIAS_CHUNK_TRIPS)


def _bias_trips(problem: dict, groups: int, kv_config: dict) -> int:
    """Load trips of the bias gradient's programs of one head, over all offsets (the loop report's count; mirrors
    ``_axis_range``: the queries of offset r along an axis of n tokens, dilation d and kernel k are the classes
    u = k - 1 - r .. 2 k - 2 - r in [0, k): d coordinates each, n - 2 (k // 2) d for u = k // 2)."""

    def extent(r: int, n: int, d: int, k: int) -> int:
        return sum(
            n - 2 * (k // 2) * d if u == k // 2 else d for u in range(max(k - 1 - r, 0), min(2 * k - 2 - r, k - 1) + 1)
        )

    steps = cdiv(groups, kv_config["BIAS_GROUPS"])
    trips = 0
    for r0, r1, r2 in itertools.product(*(range(2 * k - 1) for k in problem["kernel"])):
        e0, e1, e2 = (
            extent(r, n, d, k)
            for r, n, d, k in zip((r0, r1, r2), problem["spatial"], problem["dilation"], problem["kernel"], strict=True)
        )
        trips += e0 * cdiv(e1 * e2, kv_config["BIAS_BLOCK"]) * steps
    return trips


def _batch_groups(batch: int, heads: int, tokens: int, window: int) -> int:
    """The batch items whose float32 logit gradients [heads, window, tokens] the backward's buffer holds: the
    batch, or as many as DLOGIT_BYTES takes (at least one)."""
    return max(1, min(batch, DLOGIT_BYTES // (heads * tokens * window * 4)))


# ----------------------------------------------------------------------------------------------------------------
# 4. The registered ops and the public functions
# ----------------------------------------------------------------------------------------------------------------


@triton_op("zoo::neighborhood_attention")
def _na_op(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rpb: Tensor | None,
    kernel_size: list[int],
    dilation: list[int],
    is_causal: list[bool],
    scale: float,
) -> tuple[Tensor, Tensor]:
    return na_forward(q, k, v, kernel_size, dilation, is_causal, rpb, scale)


@_na_op.register_fake
def _(q, k, v, rpb, kernel_size, dilation, is_causal, scale):
    check_na_inputs(q, k, v, kernel_size, dilation, is_causal, rpb, scale)
    lse = q.new_empty((q.shape[0], q.shape[-2], math.prod(q.shape[1:-2])), dtype=torch.float32)
    return q.new_empty(q.shape), lse


@triton_op("zoo::neighborhood_attention_backward")
def _na_backward_op(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    rpb: Tensor | None,
    kernel_size: list[int],
    dilation: list[int],
    is_causal: list[bool],
    scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return na_backward(grad_out, q, k, v, out, lse, kernel_size, dilation, is_causal, rpb, scale)


@_na_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, rpb, kernel_size, dilation, is_causal, scale):
    drpb = q.new_empty(0) if rpb is None else rpb.new_empty(rpb.shape)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), drpb


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, rpb, kernel_size, dilation, is_causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, rpb, out, lse)
    ctx.args = (kernel_size, dilation, is_causal, scale)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out: Tensor, grad_lse: Tensor | None):
    q, k, v, rpb, out, lse = ctx.saved_tensors
    dq, dk, dv, drpb = torch.ops.zoo.neighborhood_attention_backward(grad_out, q, k, v, out, lse, rpb, *ctx.args)
    return dq, dk, dv, (None if rpb is None else drpb), None, None, None, None


_na_op.register_autograd(_backward, setup_context=_setup_context)


def _na_traced(q, k, v, rpb, kernel_size, dilation, is_causal, scale) -> Tensor:
    """The output of ``zoo::neighborhood_attention`` (for :func:`dispatch_triton`; the log-sum-exp stays inside
    the traced graph for the backward)."""
    return torch.ops.zoo.neighborhood_attention(q, k, v, rpb, kernel_size, dilation, is_causal, scale)[0]


def _na_inference(q, k, v, rpb, kernel_size, dilation, is_causal, scale) -> Tensor:
    """:func:`na_forward` in the argument order of ``zoo::neighborhood_attention``, without the log-sum-exp (no
    backward will need it; for :func:`dispatch_triton`), on the arguments :func:`neighborhood_attention` checked."""
    _check_triton_support(q)
    return _launch_forward(q, k, v, tuple(kernel_size), tuple(dilation), tuple(is_causal), rpb, scale)[0]


class _NAFunction(torch.autograd.Function):
    """Eager autograd of the Triton path: the launchers are called directly (fewer dispatches per call), on the
    arguments :func:`neighborhood_attention` checked (not checked again); ``torch.compile`` traces the registered
    op ``zoo::neighborhood_attention``; both run the same launchers."""

    @staticmethod
    def forward(ctx, q, k, v, rpb, kernel_size, dilation, is_causal, scale):
        # the arguments are check_na_inputs' (neighborhood_attention checked them): per-axis lists, a float scale
        _check_triton_support(q)
        ctx.checked = (tuple(kernel_size), tuple(dilation), tuple(is_causal), scale)
        out, lse = _launch_forward(q, k, v, *ctx.checked[:3], rpb, scale)
        ctx.save_for_backward(q, k, v, rpb, out, lse)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, rpb, out, lse = ctx.saved_tensors
        dq, dk, dv, drpb = _launch_backward(grad_out, q, k, v, out, lse, *ctx.checked[:3], rpb, ctx.checked[3])
        return dq, dk, dv, (None if rpb is None else drpb), None, None, None, None


def neighborhood_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size,
    dilation=1,
    is_causal=False,
    rpb: Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
    dropout_p: float = 0.0,
) -> Tensor:
    """Neighborhood attention over 1, 2 or 3 spatial axes (the rank of q; see the module docstring).

    Args:
        q, k, v: ``[B, *spatial, heads, head_dim]`` float32/bfloat16/float16 (float64 on the reference backend),
            any strides; head_dim 16-128 on Triton.
        kernel_size: odd, >= 3; one int or one per axis. dilation: >= 1, one or per axis; kernel_size x dilation
            must fit each axis. is_causal: one bool or one per axis.
        rpb: relative position bias ``[heads, 2 k0 - 1(, 2 k1 - 1(, 2 k2 - 1))]`` or None (not with causal).
        scale: logit scale (default head_dim ** -0.5).
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see :mod:`zoo.kernels._backend`). On CPU tensors
            ``"auto"`` runs the blocked dense path of :mod:`zoo.kernels.neighborhood_cpu` (same results, without the
            reference's copy of the keys and values per window slot); ``"torch"`` is always the gather reference.
        dropout_p: attention dropout (pass 0 in eval). It needs the probabilities, which the fused kernels never
            form: with ``dropout_p > 0`` ``"auto"`` runs the reference, and ``"triton"`` is an error.

    Returns:
        ``[B, *spatial, heads, head_dim]`` in the dtype of q; differentiable in q, k, v and rpb.
    """
    check_float_tensor("q", q)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")
    if dropout_p > 0.0:
        if requested_backend(backend) == "triton":
            raise ValueError(
                "the fused Triton neighborhood attention has no attention dropout (it never forms the "
                "probabilities): use dropout_p=0 or backend='torch'"
            )
        return na_reference(q, k, v, kernel_size, dilation, is_causal, rpb, scale, dropout_p)
    if resolve_backend(backend, q, TRITON_DTYPES) != "triton":
        if q.device.type == "cpu" and requested_backend(backend) == "auto":  # the fast CPU path
            ks, ds, cs, scale = check_na_inputs(q, k, v, kernel_size, dilation, is_causal, rpb, scale)
            return na_blocked(q, k, v, ks, ds, cs, rpb, scale)
        return na_reference(q, k, v, kernel_size, dilation, is_causal, rpb, scale)
    ks, ds, cs, scale = check_na_inputs(q, k, v, kernel_size, dilation, is_causal, rpb, scale)
    return dispatch_triton(
        q,
        k,
        v,
        rpb,
        list(ks),
        list(ds),
        list(cs),
        scale,
        op=_na_traced,
        function=_NAFunction,
        launcher=_na_inference,
    )


def _na_of_rank(dims: int):
    def na(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        kernel_size,
        dilation=1,
        is_causal=False,
        rpb: Tensor | None = None,
        scale: float | None = None,
        backend: str = "auto",
        dropout_p: float = 0.0,
    ) -> Tensor:
        check_float_tensor("q", q)
        if q.dim() != dims + 3:
            axes = ", ".join(f"X{i}" for i in range(dims))
            raise ValueError(
                f"na{dims}d takes q, k, v laid out [B, {axes}, heads, head_dim] ({dims + 3}-D), got q "
                f"of shape {list(q.shape)}"
            )
        return neighborhood_attention(q, k, v, kernel_size, dilation, is_causal, rpb, scale, backend, dropout_p)

    na.__name__ = na.__qualname__ = f"na{dims}d"
    axes = ", ".join(f"X{i}" for i in range(dims))
    na.__doc__ = (
        f"{dims}-D neighborhood attention on ``[B, {axes}, heads, head_dim]`` tensors: "
        ":func:`neighborhood_attention` with a rank check."
    )
    return na


na1d = _na_of_rank(1)
na2d = _na_of_rank(2)
na3d = _na_of_rank(3)


# ----------------------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (zoo/kernels/_aot.py; tests/kernels/test_compile_targets.py)
# ----------------------------------------------------------------------------------------------------------------


AOT_KERNEL = {1: 7, 2: 7, 3: 3}  # the kernel sizes of the compile specs (constexprs of the kernels)


def aot_specs() -> list:
    """Compile specs (zoo/kernels/_aot.py): the forward and both backward kernels at the GPU tiles of 1-, 2- and 3-D
    problems, for q, k, v in bf16, fp16 and fp32 with a bias, bf16 causal without one, and the 2-D kernels at
    head_dim 64 and 128; contiguous [B, *spatial, heads, head_dim] tensors (unit head_dim stride, the other
    strides multiples of 16), float32 bias (and its gradient), log-sum-exp and buffers."""
    from zoo.kernels._aot import KernelSpec

    fp32_buffers = {"rpb_ptr", "lse_ptr", "delta_ptr", "dlogit_ptr", "drpb_ptr"}
    variants = [(dims, dtype, True, False, 32, 2) for dims in (1, 2, 3) for dtype in ("bf16", "fp16", "fp32")]
    variants += [(dims, "bf16", False, True, 32, 2) for dims in (1, 2, 3)]
    variants += [(2, "bf16", True, False, 64, 2), (2, "bf16", True, False, 128, 2), (2, "bf16", True, False, 48, 2)]
    variants += [(2, "bf16", True, False, 32, 3)]  # an odd number of heads: one head per forward program
    specs = []
    for kernel in (_na_fwd_kernel, _na_bwd_kv_kernel, _na_bwd_q_kernel):
        for dims, dtype, has_rpb, causal, head_dim, heads in variants:
            torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
            ks = (AOT_KERNEL[dims],) * dims
            q = torch.empty((1, *(32,) * dims, heads, head_dim), dtype=torch_dtype, device="meta")
            constexprs = _launch_config(_problem(q, ks, (1,) * dims, (causal,) * dims), heads, has_rpb, kernel)
            num_warps = constexprs.pop("num_warps")
            num_stages = constexprs.pop("num_stages")
            signature = {}
            for name in kernel.arg_names:
                if name in constexprs:
                    continue
                if name.endswith("_ptr"):
                    signature[name] = "*fp32:16" if name in fp32_buffers else f"*{dtype}:16"
                elif name.startswith("scale"):
                    signature[name] = "fp32"
                elif name.endswith("_d"):
                    signature[name] = "i32:1"
                elif name.startswith(("s", "head_dim")):
                    signature[name] = "i32:16"
                else:
                    signature[name] = "i32"
            label = f"{dims}d,{dtype},D{head_dim}," + ("causal" if causal else "rpb" if has_rpb else "plain")
            label += ",H3" if heads % 2 else ""
            specs.append(
                KernelSpec(
                    name=f"{kernel.__name__}[{label}]",
                    fn=kernel,
                    signature=signature,
                    constexprs=constexprs,
                    num_warps=num_warps,
                    num_stages=num_stages,
                    uses_dot=dtype != "fp32",
                )
            )
    traced = next(s for s in specs if s.name == "_na_bwd_q_kernel[2d,bf16,D32,rpb]")
    specs.append(
        dataclasses.replace(
            traced,
            name="_na_bwd_q_kernel[2d,bf16,D32,rpb,traced]",
            constexprs={**traced.constexprs, "SCATTER_ASM": False},
        )
    )  # the variant a torch.compile graph launches (_launch_config)
    specs.append(
        dataclasses.replace(
            traced,
            name="_na_bwd_q_kernel[2d,bf16,D32,rpb,accumulate]",
            constexprs={**traced.constexprs, "ACCUMULATE": True},
        )
    )  # a batch whose logit gradients do not fit the buffer (_batch_groups)
    return specs + benchmark_specs()


# The benchmarked shapes (scripts/benchmark.py: neighborhood_cases and the long 1-D case), bf16:
# (B, spatial, heads, head_dim, kernel, bias, passes)
NA_BENCHMARKS = tuple(
    (64, (56, 56), heads, 32, 7, bias, ("fwd", "bwd")) for heads in (2, 4) for bias in (True, False)
) + ((1, (32768,), 8, 64, 2049, False, ("fwd",)),)


def _tile_walks(n: int, k: int, d: int, causal: bool, own: int, other: int, by_query: bool) -> tuple[int, float]:
    """One axis of the launch: (boxes of ``own`` group coordinates over the dilation groups, mean number of
    ``other``-sized boxes each walks). By query (forward, dq): the key boxes that cover the union of the box's
    windows; by key (dk, dv): the query boxes whose windows reach the key box. Mirrors ``_region``."""
    walks = []
    for g in range(d):
        n_group = -(-(n - g) // d)
        for first in range(0, n_group, own):
            last = min(first + own, n_group) - 1
            if by_query:
                start = [c - k + 1 if causal else min(max(c - k // 2, 0), n_group - k) for c in (first, last)]
                lo, hi = max(start[0], 0), start[1] + k
            elif causal:
                lo, hi = first, min(last + k - 1, n_group - 1) + 1
            else:
                lo = 0 if first <= k - 1 else first - k + 1 + k // 2
                hi = (n_group - 1 if last >= n_group - k else last + k // 2) + 1
            walks.append(-(-(hi - lo) // other))
    return len(walks), sum(walks) / len(walks)


def benchmark_specs() -> list:
    """Loop-report specs (zoo/kernels/_aot.py --loops): the forward and both backward kernels at the
    benchmarked shapes, with and without the bias, with the arguments the launchers pass (so the JIT's
    specialisations: the unused leading axes' sizes 1 are constants, their strides 0 multiples of 16) and the
    useful work of a program: the (query, key) pairs inside the windows, prod(kernel) per query, per program
    of the grid; the loop over the walked boxes runs the mean number of boxes per program. (The benchmark runs
    the 2-D cases with the bias; ``-plain`` names them without.)"""
    from zoo.kernels._aot import Work, launch_spec

    specs = []
    for B, spatial, heads, head_dim, kernel, bias, passes in NA_BENCHMARKS:
        dims = len(spatial)
        ks, ds, cs = (kernel,) * dims, (1,) * dims, (False,) * dims
        extent = f"L{spatial[0]}" if dims == 1 else "x".join(map(str, spatial))  # scripts/benchmark.py's names
        case = f"B{B}x{extent}xH{heads}xD{head_dim}xK{kernel}" + ("" if bias or dims == 1 else "-plain")
        q = torch.empty((B, *spatial, heads, head_dim), dtype=torch.bfloat16, device="meta")
        problem = _problem(q, ks, ds, cs)
        pairs = B * heads * math.prod(spatial) * kernel**dims
        sizes = dict(
            zip(("n0", "n1", "n2"), problem["spatial"], strict=True),
            **dict(zip(("d0", "d1", "d2"), problem["dilation"], strict=True)),
        )
        strides = {}
        for prefix in ("s", "sk", "sv", "sdo", "so", "sg"):
            names = [f"{prefix}_{axis}" for axis in ("b", "0", "1", "2", "h", "d")]
            strides.update(zip(names, _strides(q), strict=True))
        kinds = [(_na_fwd_kernel, True)]
        if "bwd" in passes:
            kinds += [(_na_bwd_kv_kernel, False), (_na_bwd_q_kernel, True)]
        for fn, by_query in kinds:
            constexprs = _launch_config(problem, heads, bias, fn)
            own, other = _boxes(constexprs, fn)
            hpp = constexprs.get("HPP", 1)
            axes = [
                _tile_walks(n, k, d, c, o, t, by_query)
                for n, k, d, c, o, t in zip(
                    problem["spatial"],
                    problem["kernel"],
                    problem["dilation"],
                    problem["causal"],
                    own,
                    other,
                    strict=True,
                )
            ]
            (rows, boxes), tiles = _grid(problem, own, B * heads // hpp)
            walk = math.prod(mean for _, mean in axes)
            walks = f"{' x '.join(f'{mean:g}' for _, mean in axes)} = {walk:g}"
            K = math.prod(problem["kernel"])
            groups = _batch_groups(B, heads, math.prod(spatial), K) if bias else B
            values = {"heads": heads, "batch": B, "batch_heads": B * heads, "groups": groups, "chunks": 1}
            if fn is _na_bwd_q_kernel and groups < B:  # a loop over the batch items of a group around the walk
                rows = groups * heads
                constexprs["ACCUMULATE"] = True
                trips = (B / groups, walk)
                loops = f"{B / groups:g} batch items of {walks} key boxes of {math.prod(other)}"
            elif fn is _na_bwd_kv_kernel and bias:  # extra programs after the key boxes: the bias gradient
                offsets = heads * math.prod(2 * k - 1 for k in problem["kernel"])
                chunks = _bias_chunks(problem, groups, constexprs)
                extra = cdiv(offsets * chunks, boxes)
                loads = heads * _bias_trips(problem, groups, constexprs)
                finals = cdiv(chunks, constexprs["BIAS_FIN_BLOCK"])
                everyone = (rows + extra) * boxes
                trips = ((walk * rows / (rows + extra), loads / everyone, offsets * finals / everyone),)
                loops = (
                    f"{rows} x {boxes} programs walk {walks} query boxes of {math.prod(other)}; {extra} x {boxes} "
                    f"more sum the bias gradients of {offsets} (head, offset) pairs over {groups} batch items in "
                    f"{chunks} chunks, {loads} loads of [{constexprs['BIAS_GROUPS']}, {constexprs['BIAS_BLOCK']}] "
                    f"in all, and the last chunk of each adds the partials in {finals} loads"
                )
                values["chunks"] = chunks
                rows += extra
            else:
                trips = (walk,)
                loops = f"loop over the {'key' if by_query else 'query'} boxes of {math.prod(other)}: {walks}"
            programs = rows * boxes
            num_warps = constexprs.pop("num_warps")
            num_stages = constexprs.pop("num_stages")
            pointers = dict.fromkeys(
                ("q_ptr", "k_ptr", "v_ptr", "out_ptr", "do_ptr", "dk_ptr", "dv_ptr", "dq_ptr"), "*bf16"
            )
            pointers.update(
                rpb_ptr="*fp32" if bias else "*bf16",
                lse_ptr="*fp32",
                delta_ptr="*fp32",
                dlogit_ptr="*fp32",
                drpb_ptr="*fp32" if bias else "*bf16",
                partial_ptr="*fp32" if bias else "*bf16",
                counter_ptr="*i32" if bias else "*bf16",
            )
            values.update(
                **pointers,
                **sizes,
                **strides,
                **dict(zip(("tiles0", "tiles1", "tiles2"), tiles, strict=True)),
                scale=head_dim**-0.5,
                scale2=head_dim**-0.5 * LOG2E,
                chunk_trips=BIAS_CHUNK_TRIPS,
                **constexprs,
            )
            names = {p.name for p in fn.params}
            work = Work(
                case,
                "pair",
                pairs / programs,
                trips,
                f"pairs = B heads N prod(kernel) = {B} x {heads} x {math.prod(spatial)} x {kernel}^{dims} = {pairs}; "
                f"programs = {rows} x {boxes} boxes of {math.prod(own)} = {programs}; {loops} per program",
            )
            label = f"{dims}d,bf16,D{head_dim}," + ("rpb" if bias else "plain")
            specs.append(
                launch_spec(
                    f"{fn.__name__}[{label}]@{case}",
                    fn,
                    {name: value for name, value in values.items() if name in names},
                    num_warps=num_warps,
                    num_stages=num_stages,
                    uses_dot=True,
                    work=work,
                )
            )
    return specs
