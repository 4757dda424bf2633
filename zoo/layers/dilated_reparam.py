"""The Dilated Reparam Block as one K x K convolution, in training as in eval (docs/design.md §12).

The block (:class:`zoo.layers.unireplknet.DilatedReparamBlock`) sums B branches, ``out = sum_b BN_b(conv_b(x))``:
the K x K depthwise convolution (branch 0) and depthwise convolutions of k_b x k_b taps at dilation r_b, all with
"same" padding. Every BN is per-channel affine, so with a_b = gamma_b / s_b (s_b the branch's standard deviation:
the batch's in training, the running one in eval) the block is one convolution,

    out = conv_K(x, W) + c,    W = sum_b a_b E_b(w_b),    c = sum_b (beta_b - a_b mu_b),

where E_b places a branch's taps on the K x K grid (tap (i, j) at P - p_b + r_b (i, j), P = (K - 1) / 2,
p_b = r_b (k_b - 1) / 2). In eval this is what ``reparameterize`` computes once; here it runs per call and stays
differentiable. In training mu_b and s_b are the statistics of the branch outputs y_b = conv_b(x), so the branches
still run, but only for their statistics: their outputs are not normalised, scaled and summed (the training form's
45 passes over a C x H x W tensor become 21), and the backward (:class:`_MergedTraining`) needs no BatchNorm
backward and no per-branch output gradient:

* g = d out; the merged convolution's input gradient conv_K^T(g; W) and weight-gradient correlation
  C(o) = sum_p g_p x_(p + o) over the K x K grid (one call: ``dwconv2d_grads``) give d beta_b = sum g, and
  sum g y_b = sum_t w_b,t C(E_b t), hence m_b = mean(g z_b) and d gamma_b = N m_b (N = batch x H x W);
* BN's output gradient dy_b = a_b (g - mean g - z_b m_b) is, per channel, a_b g + k1_b y'_b + k0_b: its g part is
  already in the merged gradients; its y'_b part is one transposed convolution of the stored y'_b with the
  weight k1_b w_b and one weight-gradient correlation corr(x, y'_b) per branch; its constant part needs only the
  batch-summed input: the correlation of a map of ones with sum_n x, and the transposed convolution of a map of
  ones, both box sums of C x H x W or C x K x K values (float64 prefix sums).

y'_b = conv_b(x) - mu_b is stored centred: the conv's bias is -mu_b (rounded to the dtype of x, as the conv applies
it; delta_b = mu_b minus the applied value enters k0_b and the variance), and mu_b is computed before the branch
runs from the batch-summed input (mu_b = sum_t w_b,t S(E_b t) / N, S the correlation of the ones with sum_n x).
The variance is then mean(y'^2) - delta^2 in float32, without E[y^2] - mu^2's cancellation, and k1_b y'_b does not
cancel against k0_b in low precision. The g part does cancel against the constant part where g has a large mean
per channel: the input gradient's low-precision rounding is relative to the size of g (in UniRepLKNet a BN follows
the block, so g arrives centred; with mean(g) three times its spread, bf16's error grew from 1.2% to 4.4%).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch._subclasses.functional_tensor import FunctionalTensorMode
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

from zoo.kernels._backend import once_differentiable
from zoo.kernels.dwconv import dwconv2d, dwconv2d_grads

__all__ = [
    "MERGE_BRANCHES",
    "BranchLayout",
    "branch_layout",
    "branch_tap_positions",
    "check_merge_branches",
    "merge_branch_weights",
    "merged_training_forward",
    "update_running_stats",
]

MERGE_BRANCHES = ("eval", "always", "never")  # when the block merges its branches (DilatedReparamBlock)


def check_merge_branches(value: str) -> None:
    """Raise ValueError unless ``value`` is one of :data:`MERGE_BRANCHES` (naming the closest)."""
    if value not in MERGE_BRANCHES:
        close = difflib.get_close_matches(str(value), MERGE_BRANCHES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"merge_branches must be one of {', '.join(map(repr, MERGE_BRANCHES))}, got {value!r}{hint}")


def branch_tap_positions(kernel_size: int, branches: Sequence[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Where each branch's taps lie on the K x K grid, flattened (row K + column), branch by branch, each branch's
    taps in row-major order; and the branch of every tap. ``branches``: (k_b, r_b) per branch."""
    centre = (kernel_size - 1) // 2
    positions: list[int] = []
    owners: list[int] = []
    for b, (k, r) in enumerate(branches):
        start = centre - r * (k - 1) // 2
        if start < 0 or k % 2 == 0:
            raise ValueError(f"branch {b}: {k} x {k} taps at dilation {r} do not fit a centred {kernel_size} grid")
        for i in range(k):
            for j in range(k):
                positions.append((start + r * i) * kernel_size + start + r * j)
                owners.append(b)
    return positions, owners


class BranchLayout(NamedTuple):
    """Index tensors of one branch table on one device (:func:`branch_layout`). Every sum over taps is a gather
    into a padded ``[C, B, .]`` tensor (a tap index, or T for a zero) and a sum along one axis: no scatter, so the
    results do not depend on the order of atomic adds (the backward of a gather with distinct indices has none)."""

    kernel_size: int
    counts: tuple[int, ...]  # taps per branch (T in all)
    positions: Tensor  # [T]: each tap's flat position on the K x K grid
    grid_gather: Tensor  # [B K K]: the tap of branch b at grid position g, or T
    segment_gather: Tensor  # [B most]: branch b's taps, padded with T


_LAYOUTS: dict[tuple, BranchLayout] = {}


def _cacheable() -> bool:
    """Whether index tensors built now may be cached for later calls: not while ``torch.compile`` traces or fake
    (or functional) tensors are being made, whose tensors a later real call cannot use."""
    if torch.compiler.is_compiling():
        return False
    return not any(isinstance(m, (FakeTensorMode, FunctionalTensorMode)) for m in _get_current_dispatch_mode_stack())


def _cached(store: dict, key: tuple, build: Callable[[], Any]) -> Any:
    """``store[key]``, built by ``build()`` (outside inference mode: the tensors serve later autograd calls too)
    when missing; built every time, and not stored, where :func:`_cacheable` says no. Index tensors built once
    per key: a call then copies nothing to the device, and a captured CUDA graph's replays read the same tensors."""
    cache = _cacheable()
    hit = store.get(key) if cache else None
    if hit is None:
        with torch.inference_mode(False):
            hit = build()
        if cache:
            store[key] = hit
    return hit


def branch_layout(kernel_size: int, branches: Sequence[tuple[int, int]], device: torch.device) -> BranchLayout:
    """The :class:`BranchLayout` of ``branches`` ((k_b, r_b), branch 0 the K x K one) on ``device``, cached per
    layout and device (:func:`_cached`)."""
    branches = tuple(branches)
    return _cached(
        _LAYOUTS, (kernel_size, branches, torch.device(device)), lambda: _build_layout(kernel_size, branches, device)
    )


def _build_layout(kernel_size: int, branches: Sequence[tuple[int, int]], device: torch.device) -> BranchLayout:
    positions, owners = branch_tap_positions(kernel_size, branches)
    taps, grid = len(positions), kernel_size * kernel_size
    counts = tuple(k * k for k, _ in branches)
    grid_gather = [taps] * (len(branches) * grid)
    for t, (position, b) in enumerate(zip(positions, owners, strict=True)):
        grid_gather[b * grid + position] = t
    most = max(counts)
    segment_gather = [taps] * (len(branches) * most)
    start = 0
    for b, count in enumerate(counts):
        segment_gather[b * most : b * most + count] = range(start, start + count)
        start += count
    return BranchLayout(
        kernel_size,
        counts,
        torch.tensor(positions, device=device),
        torch.tensor(grid_gather, device=device),
        torch.tensor(segment_gather, device=device),
    )


def _flat_weights(weights: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
    """The branches' weights ``[C, 1, k_b, k_b]`` side by side: ``[C, T]``, T the number of taps of all branches."""
    return torch.cat([w.reshape(w.shape[0], -1) for w in weights], 1).to(dtype)


def _per_tap(values: Tensor, counts: Sequence[int]) -> Tensor:
    """A per-branch, per-channel ``[B, C]`` value for every tap: ``[C, T]``."""
    return torch.cat([values[b, :, None].expand(-1, count) for b, count in enumerate(counts)], 1)


def _gather_planes(values: Tensor, index: Tensor, planes: int) -> Tensor:
    """``values`` ``[C, T]`` gathered by ``index`` (T: zero) into ``[C, planes, len(index) / planes]``."""
    padded = F.pad(values, (0, 1))
    return padded.index_select(1, index).view(values.shape[0], planes, -1)


def _merge(flat: Tensor, scales: Tensor, layout: BranchLayout) -> Tensor:
    """sum_b scales[b] E_b(w_b) from the flattened weights ``flat`` ``[C, T]``: ``[C, 1, K, K]``."""
    k = layout.kernel_size
    planes = _gather_planes(flat * _per_tap(scales, layout.counts), layout.grid_gather, len(layout.counts))
    return planes.sum(1).view(flat.shape[0], 1, k, k)


def _segment_sum(values: Tensor, layout: BranchLayout) -> Tensor:
    """Per-branch sums over the taps of ``values`` ``[C, T]``: ``[B, C]``."""
    return _gather_planes(values, layout.segment_gather, len(layout.counts)).sum(2).t()


def merge_branch_weights(weights: Sequence[Tensor], scales: Tensor, layout: BranchLayout) -> Tensor:
    """The K x K kernel ``sum_b scales[b, c] E_b(weights[b])`` in the dtype of ``scales`` ``[B, C]``,
    differentiable: the branches' weights ``[C, 1, k_b, k_b]`` scaled per channel, dilated and centred on the grid
    (:func:`branch_layout`)."""
    return _merge(_flat_weights(weights, scales.dtype), scales, layout)


def _box_corners(rows: Sequence[tuple[int, int]], cols: Sequence[tuple[int, int]], width: int) -> list[int]:
    """Flat indices, on a (. + 1) x (``width`` + 1) prefix-sum grid, of the four corners of every rectangle
    rows[a] x cols[b] ([start, end) ranges; rectangles row-major): all the (end, end) corners, then (start, end),
    (end, start), (start, start)."""
    stride = width + 1
    pairs = [(r, c) for r in rows for c in cols]
    return [
        ri * stride + ci
        for pick in ((1, 1), (0, 1), (1, 0), (0, 0))
        for r, c in pairs
        for ri, ci in [(r[pick[0]], c[pick[1]])]
    ]


class _Boxes(NamedTuple):
    """Prefix-sum corners of the two box sums of one (K, H, W) on one device, and their signs."""

    window: Tensor  # [4 K K]: per grid offset o, the map positions q with q - o on the map (on the H x W map)
    transposed: Tensor  # [4 H W]: per map position q, the taps t with q - t + P on the map (on the K x K grid)
    signs: Tensor  # [4, 1]: + - - +


_BOXES: dict[tuple, _Boxes] = {}


def _boxes(kernel_size: int, height: int, width: int, device: torch.device) -> _Boxes:
    """:class:`_Boxes`, cached per (K, H, W, device) (:func:`_cached`)."""
    key = (kernel_size, height, width, torch.device(device))
    return _cached(_BOXES, key, lambda: _build_boxes(kernel_size, height, width, device))


def _build_boxes(kernel_size: int, height: int, width: int, device: torch.device) -> _Boxes:
    centre = (kernel_size - 1) // 2

    def clamp(v: int, size: int) -> int:
        return min(max(v, 0), size)

    offsets = range(-centre, centre + 1)
    window = _box_corners(
        [(clamp(o, height), clamp(height + min(o, 0), height)) for o in offsets],
        [(clamp(o, width), clamp(width + min(o, 0), width)) for o in offsets],
        width,
    )
    transposed = _box_corners(
        [(clamp(q + centre - height + 1, kernel_size), clamp(q + centre + 1, kernel_size)) for q in range(height)],
        [(clamp(q + centre - width + 1, kernel_size), clamp(q + centre + 1, kernel_size)) for q in range(width)],
        kernel_size,
    )
    return _Boxes(
        torch.tensor(window, device=device),
        torch.tensor(transposed, device=device),
        torch.tensor([[1.0], [-1.0], [-1.0], [1.0]], dtype=torch.float64, device=device),
    )


def _box_sums(values: Tensor, corners: Tensor, signs: Tensor) -> Tensor:
    """Sums of ``values`` ``[C, h, w]`` over rectangles given by their prefix-sum ``corners`` (:func:`_box_corners`):
    ``[C, M]`` in float64, from 2-D prefix sums (exact for these sizes, unlike a convolution, which cuDNN may run in
    TF32, and without atomics)."""
    c = values.shape[0]
    prefix = F.pad(values.double().cumsum(1).cumsum(2), (1, 0, 1, 0)).view(c, -1)
    return (prefix.index_select(1, corners).view(c, 4, -1) * signs).sum(1)


class _MergedTraining(torch.autograd.Function):
    """The training form's forward and backward as described in the module docstring.

    Inputs: x (in the compute dtype), gamma and beta stacked ``[B, C]``, eps, the dilation of every branch, the
    :class:`BranchLayout`, the backend, and the branch weights. Outputs: the block's output and the batch
    statistics (mean and biased variance ``[B, C]``, float32), not differentiable. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, eps, dilations, layout, backend, *weights):
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        count = x.shape[0] * x.shape[2] * x.shape[3]
        x_sum = x.sum(0, dtype=acc)
        boxes = _boxes(layout.kernel_size, x.shape[2], x.shape[3], x.device)
        window_sums = _box_sums(x_sum, boxes.window, boxes.signs)  # correlation of a map of ones with x_sum
        sums_per_tap = window_sums.index_select(1, layout.positions).to(acc)  # S(E_b t), [C, T]
        flat = _flat_weights(weights, acc)
        mean = _segment_sum(flat * sums_per_tap, layout) / count  # [B, C]
        bias = -mean.to(x.dtype)  # the conv applies its bias in the dtype of x
        delta = mean + bias.to(acc)
        centred, squares = [], []
        for b, (weight, dilation) in enumerate(zip(weights, dilations, strict=True)):
            # bias[b].clone(): a tensor of its own, not a view (torch 2.11's Inductor cannot lower a convolution
            # whose bias is a view: NotImplementedError in View.freeze_layout)
            y = dwconv2d(x, weight, bias[b].clone(), dilation=dilation, backend=backend)
            centred.append(y)
            squares.append(torch.linalg.vector_norm(y, 2, dim=(0, 2, 3), dtype=acc))
        var = (torch.stack(squares).square_() / count - delta * delta).clamp_min_(0)
        invstd = (var + eps).rsqrt_()
        scale = gamma.to(acc) * invstd
        merged = _merge(flat, scale, layout)
        shift = (beta.to(acc) - scale * mean).sum(0)
        out = dwconv2d(x, merged, shift, backend=backend)
        ctx.save_for_backward(x, merged, flat, sums_per_tap, scale, invstd, mean, delta, *centred)
        shapes, dtypes = [w.shape for w in weights], [w.dtype for w in weights]
        ctx.layout = (layout, dilations, backend, count, gamma.dtype, beta.dtype, shapes, dtypes)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        x, merged, flat, sums_per_tap, scale, invstd, mean, delta, *centred = ctx.saved_tensors
        layout, dilations, backend, count, gamma_dtype, beta_dtype, weight_shapes, weight_dtypes = ctx.layout
        channels, branches = x.shape[1], len(centred)
        dx, corr, grad_sum = dwconv2d_grads(grad_out, x, merged, backend=backend)
        grad_mean = grad_sum / count
        corr_per_tap = corr.view(channels, -1).index_select(1, layout.positions)  # C(E_b t), [C, T]
        grad_y = _segment_sum(flat * corr_per_tap, layout)  # sum g y_b (y_b without its bias)
        m = (grad_y / count - mean * grad_mean) * invstd  # mean(g z_b)
        k1 = -scale * m * invstd
        k0 = -scale * grad_mean - k1 * delta
        flat_k1 = flat * _per_tap(k1, layout.counts)
        y_corrs, start = [], 0
        for y, dilation, shape in zip(centred, dilations, weight_shapes, strict=True):
            size = shape[-2] * shape[-1]
            weight = flat_k1[:, start : start + size].reshape(shape)
            dx_b, y_corr, _ = dwconv2d_grads(y, x, weight, dilation, backend)
            dx.add_(dx_b)
            y_corrs.append(y_corr.view(channels, size))
            start += size
        constant = _merge(flat, k0, layout).view(channels, layout.kernel_size, layout.kernel_size)
        boxes = _boxes(layout.kernel_size, x.shape[2], x.shape[3], x.device)
        transposed_ones = _box_sums(constant, boxes.transposed, boxes.signs).to(flat.dtype)  # conv^T of ones
        dx.add_(transposed_ones.view(1, channels, *x.shape[2:]))
        grad_flat = corr_per_tap * _per_tap(scale, layout.counts)
        grad_flat.addcmul_(torch.cat(y_corrs, 1), _per_tap(k1, layout.counts))
        grad_flat.addcmul_(sums_per_tap, _per_tap(k0, layout.counts))
        grad_weights, start = [], 0
        for shape, dtype in zip(weight_shapes, weight_dtypes, strict=True):
            size = shape[-2] * shape[-1]
            grad_weights.append(grad_flat[:, start : start + size].reshape(shape).to(dtype))
            start += size
        grad_gamma = (m * count).to(gamma_dtype)
        grad_beta = grad_sum.expand(branches, channels).to(beta_dtype, copy=True)
        return dx, grad_gamma, grad_beta, None, None, None, None, *grad_weights


def merged_training_forward(
    x: Tensor,
    weights: Sequence[Tensor],
    dilations: Sequence[int],
    gamma: Tensor,
    beta: Tensor,
    eps: float,
    layout: BranchLayout,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """The block's training-mode output ``sum_b BN_b(conv_b(x))`` (batch statistics) as one merged convolution.

    Args:
        x: ``[N, C, H, W]`` in the dtype the convolutions run in (the autocast dtype under autocast).
        weights: the branches' depthwise weights ``[C, 1, k_b, k_b]``, branch 0 the K x K one.
        dilations: r_b per branch.
        gamma, beta: the BNs' affine parameters stacked ``[B, C]``; eps: their (common) eps.
        layout: :func:`branch_layout` of the branches on the device of x.
        backend: of every depthwise convolution (see :func:`zoo.kernels.dwconv.dwconv2d`).

    Returns:
        The output (dtype and memory format of x), and the batch's per-branch mean and biased variance ``[B, C]``
        (float32; float64 for float64 x), for the running statistics. Differentiable once in x, the weights, gamma
        and beta (a second differentiation raises).
    """
    return _MergedTraining.apply(x, gamma, beta, eps, tuple(dilations), layout, backend, *weights)


def update_running_stats(norms: Sequence[nn.BatchNorm2d], mean: Tensor, var: Tensor, count: int) -> None:
    """What a training-mode call of each ``norms[b]`` does to its running statistics, given the batch's mean and
    biased variance ``[B, C]`` over ``count`` values per channel: ``num_batches_tracked`` + 1, then the running mean
    and the running (unbiased) variance move towards the batch's by the momentum (1 / ``num_batches_tracked``
    for momentum None). BNs not in training mode, not tracking, or without running statistics are left alone."""
    updating = [
        (b, bn) for b, bn in enumerate(norms) if bn.training and bn.track_running_stats and bn.running_mean is not None
    ]
    if not updating:
        return
    with torch.no_grad():
        tracked = [bn.num_batches_tracked for _, bn in updating if bn.num_batches_tracked is not None]
        if tracked:
            torch._foreach_add_(tracked, 1)
        unbiased = var * (count / (count - 1))
        running_means = [bn.running_mean for _, bn in updating]
        running_vars = [bn.running_var for _, bn in updating]
        momenta = {bn.momentum for _, bn in updating}
        dtypes = {t.dtype for t in running_means + running_vars}
        if len(momenta) == 1 and None not in momenta and len(dtypes) == 1:  # the usual case: two launches
            (dtype,), (factor,) = dtypes, momenta
            batch_means = mean.to(dtype).unbind(0)
            batch_vars = unbiased.to(dtype).unbind(0)
            torch._foreach_lerp_(running_means, [batch_means[b] for b, _ in updating], factor)
            torch._foreach_lerp_(running_vars, [batch_vars[b] for b, _ in updating], factor)
            return
        for b, bn in updating:
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            bn.running_mean.lerp_(mean[b].to(bn.running_mean.dtype), factor)
            bn.running_var.lerp_(unbiased[b].to(bn.running_var.dtype), factor)
