"""Neighborhood attention on the CPU (docs/semantics.md §5) as blocked dense attention: what ``backend="auto"`` runs
on CPU tensors (the reference, ``backend="torch"``, gathers every key and value once per window slot).

Per spatial axis (length n, kernel size k, dilation d, causal flag), the queries of one dilation group are cut into
blocks of t consecutive group coordinates (the last block of a group is padded with copies of its last query). The
windows of a block's queries lie in a box of L = min(t + k - 1, n_g) consecutive group coordinates of the same group:
window starts grow by at most one from one query to the next and every window lies inside its group, so the union
of the windows starts at the first query's window and is at most t + k - 1 long; the box starts there, moved back
when it would pass the group's end (a short group pads its box with copies of its last key, never a key). The
blocks of the whole map are the products of the axes' blocks: Q = prod(t) queries against L = prod(L_a) keys.

Every block is one dense attention problem, run through ``scaled_dot_product_attention``: its additive mask holds
-inf outside each query's window and the relative position bias inside (gathered from ``rpb`` by a cached index,
so its gradient flows back to ``rpb``). Two regimes, one code path:

* **dense**: t = n_g on every axis (the map, or each dilation group, fits in one window: every level of NAT on
  small images, the last levels at 224 px, DiNAT's dilated layers): one block per dilation group, the queries and
  keys are the map itself (no gather at all without dilation), and with no bias and every pair in the window (a map
  exactly one window wide) no mask either;
* **blocked**: small t on large axes: the keys and values are gathered once per block box, about (t + k - 1) / t
  copies per axis (about 3 for 8 x 8 blocks at k = 7), never the K = prod(k) copies of the reference.

The index tables (gathers, mask, bias index, inverse permutation) depend only on (shape, kernel size, dilation,
causal flags, block sizes, device) and are cached. Arithmetic in float32 (float64 for float64 inputs), output in the
dtype of q, as the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DENSE_LIMIT", "BLOCK_MIN", "block_sizes", "na_blocked"]

# An axis whose dilation groups hold at most DENSE_LIMIT x kernel_size tokens is one block (dense along it); longer
# axes are cut into blocks of max(BLOCK_MIN, kernel_size + 1) group coordinates. Chosen by measurement on a 2-core
# CPU (`python scripts/benchmark_na_cpu.py sweep`, k = 7): dense wins up to 3 windows (21 x 21), blocks of 6-10 win
# from 4 windows on (28 x 28: 2x faster than dense; 56 x 56: 10x), blocks of 4 or 16 lose to 8.
DENSE_LIMIT = 3.0
BLOCK_MIN = 8


def block_sizes(spatial: Sequence[int], kernel_size: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    """The block length (in group coordinates) per axis: the whole group (dense) when the longest dilation group is
    at most ``DENSE_LIMIT`` windows long, else ``max(BLOCK_MIN, kernel_size + 1)``."""
    sizes = []
    for n, k, d in zip(spatial, kernel_size, dilation, strict=True):
        longest = -(-n // d)
        sizes.append(longest if longest <= DENSE_LIMIT * k else min(longest, max(BLOCK_MIN, k + 1)))
    return tuple(sizes)


@dataclass(frozen=True)
class _AxisPlan:
    """One axis's blocks: query [nb, t] and key-box [nb, L] absolute indices, the window test [nb, t, L], the bias
    offset (key - query) / d + k - 1 [nb, t, L] (clamped into 0 .. 2k - 2 where not in the window), and where every
    token's own row lies in the flattened [nb * t] query list [n]."""

    queries: Tensor
    keys: Tensor
    mask: Tensor
    bias: Tensor
    inverse: Tensor


def _axis_plan(n: int, k: int, d: int, causal: bool, t: int) -> _AxisPlan:
    longest = -(-n // d)
    t = min(t, longest)
    box = min(t + k - 1, longest)
    queries, keys, masks, biases, real = [], [], [], [], []
    for g in range(d):
        n_g = len(range(g, n, d))
        for first in range(0, n_g, t):
            qc = torch.arange(first, first + t)
            real.append(qc < n_g)
            qc = qc.clamp_max(n_g - 1)
            if causal:
                lo, hi = qc - k + 1, qc
            else:
                lo = (qc - k // 2).clamp(0, n_g - k)
                hi = lo + k - 1
            start = min(max(int(lo[0]), 0), max(n_g - box, 0))
            kc = torch.arange(start, start + box)
            in_group = kc < n_g
            kc = kc.clamp_max(n_g - 1)
            mask = (kc[None, :] >= lo[:, None]) & (kc[None, :] <= hi[:, None]) & in_group[None, :]
            if not torch.equal(mask.sum(1), hi - lo.clamp_min(0) + 1):  # every window key lies in the box
                raise AssertionError(f"a window leaves its block's key box (n={n}, k={k}, d={d}, t={t})")
            queries.append(qc * d + g)
            keys.append(kc * d + g)
            masks.append(mask)
            biases.append((kc[None, :] - qc[:, None] + k - 1).clamp(0, 2 * k - 2))
    queries, real = torch.stack(queries), torch.stack(real)
    inverse = torch.empty(n, dtype=torch.long)
    inverse[queries[real]] = torch.arange(real.numel()).view_as(real)[real]
    return _AxisPlan(queries, torch.stack(keys), torch.stack(masks), torch.stack(biases), inverse)


@dataclass(frozen=True)
class _Plan:
    """The whole map's blocks (products of the axes' blocks): ``blocks`` x ``queries`` against ``keys``.

    ``q_index`` [blocks * queries] and ``kv_index`` [blocks * keys] are flat (row-major) spatial indices, None when
    the gather is the identity; ``inverse`` [N] maps each token to its row among the blocks' queries (None: the
    identity); ``mask`` [blocks, queries, keys] is the window test (None when every pair is in it); ``bias_index``
    [blocks * queries * keys] indexes ``rpb[h].flatten()``."""

    blocks: int
    queries: int
    keys: int
    q_index: Tensor | None
    kv_index: Tensor | None
    inverse: Tensor | None
    mask: Tensor | None
    bias_index: Tensor


def _place(t: Tensor, axis: int, dims: int, parts: int) -> Tensor:
    """View a per-axis table [a, b(, c)] at positions axis, dims + axis (, 2 dims + axis) of a parts x dims-D
    tensor of ones elsewhere, for broadcasting over the axes."""
    shape = [1] * (parts * dims)
    for part in range(parts):
        shape[part * dims + axis] = t.shape[part]
    return t.reshape(shape)


def _identity_or(index: Tensor, length: int) -> Tensor | None:
    """None when ``index`` is ``arange(length)`` (a gather that changes nothing), else ``index``."""
    return None if torch.equal(index, torch.arange(length)) else index


def _build_plan(spatial, kernel_size, dilation, is_causal, blocks) -> _Plan:
    dims = len(spatial)
    axes = [
        _axis_plan(n, k, d, c, t)
        for n, k, d, c, t in zip(spatial, kernel_size, dilation, is_causal, blocks, strict=True)
    ]
    q_flat = kv_flat = bias = 0
    mask = True
    for a, plan in enumerate(axes):
        stride = math.prod(spatial[a + 1 :])
        q_flat = q_flat + _place(plan.queries, a, dims, 2) * stride
        kv_flat = kv_flat + _place(plan.keys, a, dims, 2) * stride
        mask = mask & _place(plan.mask, a, dims, 3)
        bias = bias + _place(plan.bias, a, dims, 3) * math.prod(2 * k - 1 for k in kernel_size[a + 1 :])
    nb = [p.queries.shape[0] for p in axes]
    t = [p.queries.shape[1] for p in axes]
    box = [p.keys.shape[1] for p in axes]
    n_blocks, n_queries, n_keys = math.prod(nb), math.prod(t), math.prod(box)
    # each token's row: (its block, row-major over the axes) * queries + (its place in the block, row-major)
    row_block = row_query = 0
    for a, plan in enumerate(axes):
        shape = [1] * dims
        shape[a] = spatial[a]
        row_block = row_block * nb[a] + (plan.inverse // t[a]).view(shape)
        row_query = row_query * t[a] + (plan.inverse % t[a]).view(shape)
    inverse = (row_block * n_queries + row_query).flatten()
    mask = mask.expand(*nb, *t, *box).reshape(n_blocks, n_queries, n_keys)
    return _Plan(
        blocks=n_blocks,
        queries=n_queries,
        keys=n_keys,
        q_index=_identity_or(q_flat.flatten(), math.prod(spatial)),
        kv_index=_identity_or(kv_flat.flatten(), math.prod(spatial)),
        inverse=_identity_or(inverse, n_blocks * n_queries),
        mask=None if bool(mask.all()) else mask,
        bias_index=bias.expand(*nb, *t, *box).flatten(),
    )


_PLANS: dict[tuple, _Plan] = {}


@torch.compiler.assume_constant_result  # torch.compile runs it while tracing and keeps the tables as constants
def _plan(spatial: tuple, kernel_size: tuple, dilation: tuple, is_causal: tuple, blocks: tuple, device: str) -> _Plan:
    """The cached tables of one problem (built on the CPU, moved to ``device`` once). Built outside inference mode
    even when the first call runs in it: an inference tensor cannot be saved for a later training call's backward."""
    key = (spatial, kernel_size, dilation, is_causal, blocks, device)
    plan = _PLANS.get(key)
    if plan is None:
        with torch.inference_mode(False):
            cpu = _build_plan(*key[:5])
            plan = _Plan(
                **{name: value.to(device) if isinstance(value, Tensor) else value for name, value in vars(cpu).items()}
            )
        _PLANS[key] = plan
    return plan


def na_blocked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel_size: Sequence[int],
    dilation: Sequence[int],
    is_causal: Sequence[bool],
    rpb: Tensor | None,
    scale: float,
    blocks: Sequence[int] | None = None,
) -> Tensor:
    """Neighborhood attention as blocked dense attention (see the module docstring) on validated inputs:
    ``kernel_size``, ``dilation``, ``is_causal`` one per spatial axis and ``scale`` a float (as returned by
    :func:`zoo.kernels.neighborhood.check_na_inputs`); ``blocks``: block length per axis in group coordinates
    (default :func:`block_sizes`; a length >= the longest dilation group makes that axis dense).

    Returns ``[B, *spatial, heads, head_dim]`` in the dtype of q; differentiable in q, k, v and rpb."""
    B, heads, head_dim = q.shape[0], q.shape[-2], q.shape[-1]
    # len(range(n)): a plain int also while torch.compile traces with dynamic shapes (it specialises the graph on
    # the map's shape, which the cached tables need; int(n) would stay symbolic)
    spatial = tuple(len(range(n)) for n in q.shape[1:-2])
    tokens = math.prod(spatial)
    if blocks is None:
        blocks = block_sizes(spatial, kernel_size, dilation)
    elif len(blocks) != len(spatial) or not all(isinstance(t, int) and t >= 1 for t in blocks):
        raise ValueError(f"blocks must be one int >= 1 per spatial axis ({len(spatial)}), got {blocks!r}")
    plan = _plan(spatial, tuple(kernel_size), tuple(dilation), tuple(is_causal), tuple(blocks), str(q.device))
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    rows = heads * plan.blocks

    def blocked(t: Tensor, index: Tensor | None, length: int) -> Tensor:
        # [B, heads, N, head_dim], contiguous: the gather from contiguous rows is about 4x faster than from the
        # strided view, and batched matrix products on strided operands copy per matrix
        t = t.reshape(B, tokens, heads, head_dim).transpose(1, 2).to(dtype).contiguous()
        if index is not None:
            t = t.index_select(2, index)
        return t.reshape(B, rows, length, head_dim)

    qb = blocked(q, plan.q_index, plan.queries)
    kb, vb = blocked(k, plan.kv_index, plan.keys), blocked(v, plan.kv_index, plan.keys)
    attn_mask = None
    if rpb is not None:
        attn_mask = rpb.to(dtype).flatten(1).index_select(1, plan.bias_index)
        attn_mask = attn_mask.view(heads, plan.blocks, plan.queries, plan.keys)
    if plan.mask is not None:
        if attn_mask is None:
            attn_mask = torch.zeros((), dtype=dtype, device=q.device).expand(heads, *plan.mask.shape)
        attn_mask = attn_mask.masked_fill(~plan.mask, float("-inf"))
    if attn_mask is not None:  # 4-D, [1, heads * blocks, queries, keys]: the fused CPU kernel's broadcast mask
        attn_mask = attn_mask.reshape(1, rows, plan.queries, plan.keys)
    with torch.autocast(q.device.type, enabled=False):  # float32 arithmetic even under autocast
        if attn_mask is not None and attn_mask.requires_grad:
            # the bias needs its gradient: SDPA would take its generic path (with a check for fully masked rows that
            # costs as much as the softmax); no row is fully masked here
            logits = torch.matmul(qb, kb.transpose(-1, -2)).mul_(scale) + attn_mask
            out = torch.matmul(logits.softmax(-1), vb)
        else:
            out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=attn_mask, scale=scale)
    out = out.view(B, heads, plan.blocks * plan.queries, head_dim)
    if plan.inverse is not None:
        out = out.index_select(2, plan.inverse)
    return out.transpose(1, 2).reshape(q.shape).to(q.dtype)
