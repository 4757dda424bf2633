"""UniRepLKNet's layers (Ding et al., CVPR 2024): the Dilated Reparam Block and the UniRepLKNet block.

Parameter names, shapes and the sub-module layout follow the official ``unireplknet.py`` (AILab-CVC/UniRepLKNet),
so the released checkpoints load strictly, in both of their forms:

* training form: a large kernel is ``lk_origin`` (K x K depthwise, no bias) + ``origin_bn`` plus dilated depthwise
  branches ``dil_conv_k{k}_{r}`` + ``dil_bn_k{k}_{r}``; the block keeps its BN after the depthwise conv, GRN's
  ``beta``, the BN after the second Linear and the layer scale ``gamma``;
* deployed form (after :meth:`reparameterize`, or built with ``deploy=True``): one K x K depthwise kernel with bias
  per block, GRN without ``beta``, the second Linear with a bias; no batch norm, no layer scale.

Every depthwise convolution runs through :func:`zoo.kernels.dwconv.dwconv2d` (dilation included), so on a GPU the
branches run on the Triton kernel. ``reparameterize()`` is idempotent: ``timm.utils.reparameterize_model`` calls it
on a block and then again on the block's children.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

from zoo.kernels import _cpu_compile
from zoo.kernels._backend import TRITON_DTYPES, requested_backend, resolve_backend
from zoo.kernels._sample_tiles import MAX_BATCH
from zoo.kernels.batch_norm_add import batch_norm_add
from zoo.kernels.batch_norm_se import batch_norm_se
from zoo.kernels.dwconv import autocast_input, dwconv2d
from zoo.kernels.gelu_grn import gelu_grn, gelu_grn_reference
from zoo.layers._fused_modules import hooked, sample_keep_scale, scaled_residual
from zoo.layers.batch_norm_fold import batch_norm_affine, fold_after
from zoo.layers.dilated_reparam import (
    BranchLayout,
    branch_layout,
    check_merge_branches,
    merge_branch_weights,
    merged_training_forward,
    update_running_stats,
)

__all__ = [
    "DILATED_BRANCHES",
    "DepthwiseConv2d",
    "DilatedReparamBlock",
    "GRN",
    "NCHWtoNHWC",
    "NHWCtoNCHW",
    "SEBlock",
    "UniRepLKNetBlock",
    "dilate_kernel",
    "fuse_bn",
]

# "0": the blocks run nn.GELU then GRN as modules where their backend runs Triton, instead of the fused op (read at
# every call; a switch for telling a fault of the op from the rest of the Triton path on a GPU)
GELU_GRN_ENV_VAR = "ZOO_GELU_GRN"
# "0": the blocks run the last BatchNorm, the layer scale, stochastic depth and the residual add as modules where
# their backend runs Triton, instead of the fused op (zoo/kernels/batch_norm_add.py; read at every call)
BATCH_NORM_ADD_ENV_VAR = "ZOO_BATCH_NORM_ADD"
# "0": the blocks run the BatchNorm after the depthwise convolution and the SE block as modules where their backend
# runs Triton, instead of the fused op (zoo/kernels/batch_norm_se.py; read at every call)
BATCH_NORM_SE_ENV_VAR = "ZOO_BATCH_NORM_SE"

# kernel size K: (branch kernel sizes, branch dilations); every branch covers r (k - 1) + 1 <= K
DILATED_BRANCHES: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    17: ((5, 9, 3, 3, 3), (1, 2, 4, 5, 7)),
    15: ((5, 7, 3, 3, 3), (1, 2, 3, 5, 7)),
    13: ((5, 7, 3, 3, 3), (1, 2, 3, 4, 5)),
    11: ((5, 5, 3, 3, 3), (1, 2, 3, 4, 5)),
    9: ((5, 5, 3, 3), (1, 2, 3, 4)),
    7: ((5, 3, 3), (1, 2, 3)),
    5: ((3, 3), (1, 2)),
}


def fuse_bn(weight: Tensor, bias: Tensor | None, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """The weight and bias of ``bn(conv(x))`` as one convolution (eval-mode statistics); weight ``[C_out, ...]``."""
    scale, shift = batch_norm_affine(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    return fold_after(weight, bias, scale, shift)


def dilate_kernel(weight: Tensor, dilation: int) -> Tensor:
    """The dense kernel equal to ``weight`` ``[C, 1, k, k]`` applied with ``dilation`` r: zeros between the taps,
    size r (k - 1) + 1."""
    if dilation == 1:
        return weight
    c, g, kh, kw = weight.shape
    dense = weight.new_zeros(c, g, dilation * (kh - 1) + 1, dilation * (kw - 1) + 1)
    dense[:, :, ::dilation, ::dilation] = weight
    return dense


def _check_channels(module: str, x: Tensor, channels: int) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(
            f"{module} expects input [N, C, H, W] (NCHW or channels_last) with C = {channels}, got shape "
            f"{list(x.shape)}"
        )


class DepthwiseConv2d(nn.Conv2d):
    """A depthwise ``nn.Conv2d`` (parameters ``weight`` [C, 1, k, k] and optional ``bias`` [C], zero "same"
    padding) whose forward pass is :func:`zoo.kernels.dwconv.dwconv2d` on the chosen backend.

    Args:
        channels: input = output channels C.
        kernel_size: odd kernel side k.
        bias: with a bias.
        dilation: dilation r (padding r (k - 1) / 2 keeps the size).
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see :mod:`zoo.kernels._backend`).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        bias: bool = False,
        dilation: int = 1,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd positive int ('same' padding), got {kernel_size!r}")
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            channels,
            channels,
            kernel_size,
            padding=padding,
            dilation=dilation,
            groups=channels,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        _check_channels("DepthwiseConv2d", x, self.in_channels)
        return dwconv2d(x, self.weight, self.bias, dilation=self.dilation, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"


class DilatedReparamBlock(nn.Module):
    """Dilated Reparam Block: a K x K depthwise conv plus parallel dilated depthwise convs, each followed by BN.

    Training form (keys as the official checkpoints): ``lk_origin.weight`` [C, 1, K, K] (no bias), ``origin_bn.*``,
    and for each branch (k, r) of :data:`DILATED_BRANCHES` ``dil_conv_k{k}_{r}.weight`` [C, 1, k, k] and
    ``dil_bn_k{k}_{r}.*``. The output is ``origin_bn(conv_K(x)) + sum_(k, r) dil_bn_k_r(conv_k,r(x))``, every conv
    with zero "same" padding. :meth:`reparameterize` folds each BN into its conv, dilates every branch kernel (zeros
    between taps, size r (k - 1) + 1), zero-pads it to K x K and adds it: the deployed form is ``lk_origin.weight``
    [C, 1, K, K] + ``lk_origin.bias`` [C], one convolution equal to the training form in eval mode.

    Args:
        channels: C.
        kernel_size: K, one of 5, 7, 9, 11, 13, 15, 17.
        deploy: build the deployed form directly.
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` for every depthwise convolution.
        merge_branches: when the training form runs as one merged convolution (:meth:`forward_merged`, the same
            values up to rounding): ``"eval"`` (the default): with the BNs' running statistics only (one launch
            instead of every branch's convolution, BN and sum); ``"always"``, also with the batch's statistics in
            training (21 passes over the activations instead of 45 forward, about 48 instead of 63 backward, but
            about twice the small host-side ops: for compiled or CUDA-graph training; its low-precision input
            gradient assumes an output gradient centred per channel, as when a BN follows, as in UniRepLKNet);
            ``"never"``: branch by branch (:meth:`forward_branches`).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        deploy: bool = False,
        backend: str = "auto",
        merge_branches: str = "eval",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_merge_branches(merge_branches)
        if kernel_size not in DILATED_BRANCHES:
            raise ValueError(
                f"DilatedReparamBlock supports kernel_size in {sorted(DILATED_BRANCHES)}, got {kernel_size!r}"
            )
        factory = dict(device=device, dtype=dtype)
        self.channels = channels
        self.kernel_size = kernel_size
        self.kernel_sizes, self.dilates = DILATED_BRANCHES[kernel_size]
        self.backend = backend
        self.deploy = deploy
        self.merge_branches = merge_branches
        self.lk_origin = DepthwiseConv2d(channels, kernel_size, bias=deploy, backend=backend, **factory)
        if not deploy:
            self.origin_bn = nn.BatchNorm2d(channels, **factory)
            for k, r in zip(self.kernel_sizes, self.dilates, strict=True):
                conv = DepthwiseConv2d(channels, k, dilation=r, backend=backend, **factory)
                self.add_module(f"dil_conv_k{k}_{r}", conv)
                self.add_module(f"dil_bn_k{k}_{r}", nn.BatchNorm2d(channels, **factory))

    def branches(self) -> list[tuple[int, int, DepthwiseConv2d, nn.BatchNorm2d]]:
        """(k, r, conv, bn) of every dilated branch (empty once deployed)."""
        if self.deploy:
            return []
        return [
            (k, r, getattr(self, f"dil_conv_k{k}_{r}"), getattr(self, f"dil_bn_k{k}_{r}"))
            for k, r in zip(self.kernel_sizes, self.dilates, strict=True)
        ]

    def forward(self, x: Tensor) -> Tensor:
        """The block's output; in the training form, as one merged convolution (:meth:`forward_merged`) where
        ``merge_branches`` asks for it and the BNs allow it, else branch by branch (:meth:`forward_branches`)."""
        _check_channels("DilatedReparamBlock", x, self.channels)
        if self.deploy:
            return dwconv2d(x, self.lk_origin.weight, self.lk_origin.bias, backend=self.backend)
        if self._merges(x):
            return self.forward_merged(x)
        return self.forward_branches(x)

    def forward_branches(self, x: Tensor) -> Tensor:
        """The training form as the paper writes it (the reference): every branch's convolution and BN, summed.
        Where the backend runs Triton, each dilated branch's BN and its add into the sum are one
        :func:`batch_norm_add` (two passes instead of BN's three and the add's; ``ZOO_BATCH_NORM_ADD=0`` runs
        the modules)."""
        out = self.origin_bn(dwconv2d(x, self.lk_origin.weight, self.lk_origin.bias, backend=self.backend))
        fused = (
            not isinstance(x, torch.fx.Proxy)
            and _fusable_batch(x.shape[0], x.shape[2], x.shape[3])
            and resolve_backend(self.backend, x, TRITON_DTYPES) == "triton"
            and _batch_norm_ops_on()
        )
        for _, r, conv, bn in self.branches():
            y = dwconv2d(x, conv.weight, dilation=r, backend=self.backend)
            out = _batch_norm_add(bn, y, out, self.backend) if fused and _fusable_norm(bn) else out + bn(y)
        return out

    def _norms(self) -> list[nn.BatchNorm2d]:
        return [self.origin_bn] + [bn for *_, bn in self.branches()]

    def _branch_parameters(self) -> tuple[list[nn.BatchNorm2d], list[Tensor], Tensor, Tensor]:
        """The BNs, the conv weights (branch 0 the K x K one) and the BNs' gamma and beta stacked ``[B, C]``."""
        norms = self._norms()
        weights = [self.lk_origin.weight] + [conv.weight for _, _, conv, _ in self.branches()]
        return norms, weights, torch.stack([bn.weight for bn in norms]), torch.stack([bn.bias for bn in norms])

    def _batch_statistics(self) -> bool:
        """Whether the BNs normalise with the batch's statistics (``origin_bn``'s mode; :meth:`_mergeable` checks
        that every BN agrees)."""
        return self.origin_bn.training or self.origin_bn.running_mean is None

    def _merges(self, x: Tensor) -> bool:
        """Whether this call runs :meth:`forward_merged`: as ``merge_branches`` asks, where the BNs allow it."""
        if self.merge_branches == "never" or (self.merge_branches == "eval" and self._batch_statistics()):
            return False
        return self._mergeable(x)

    def _mergeable(self, x: Tensor) -> bool:
        """Whether :meth:`forward_merged` computes what the branches would: plain affine ``nn.BatchNorm2d`` s (not
        SyncBatchNorm, whose statistics span processes) with one eps, all normalising with the batch's statistics
        or all with their running ones, and more than one value per channel (else BN's own error is raised)."""
        norms = self._norms()
        if any(type(bn) is not nn.BatchNorm2d or not bn.affine or bn.eps != norms[0].eps for bn in norms):
            return False
        batch_stats = {bn.training or bn.running_mean is None for bn in norms}
        return len(batch_stats) == 1 and (False in batch_stats or x.shape[0] * x.shape[2] * x.shape[3] > 1)

    def _layout(self, device: torch.device) -> BranchLayout:
        branches = [(self.kernel_size, 1), *zip(self.kernel_sizes, self.dilates, strict=True)]
        return branch_layout(self.kernel_size, branches, device)

    def forward_merged(self, x: Tensor) -> Tensor:
        """The training form as one K x K convolution (zoo/layers/dilated_reparam.py): with the batch's
        statistics (each branch's convolution then runs only for its mean and variance, and the running
        statistics are updated as each BN would), or with the running ones (the kernel :meth:`reparameterize`
        would deploy, built per call and differentiable)."""
        norms, weights, gamma, beta = self._branch_parameters()
        layout = self._layout(x.device)
        if self._batch_statistics():
            x = autocast_input(x)
            dilations = [1, *self.dilates]
            out, mean, var = merged_training_forward(
                x, weights, dilations, gamma, beta, norms[0].eps, layout, self.backend
            )
            update_running_stats(norms, mean, var, x.shape[0] * x.shape[2] * x.shape[3])
            return out  # the lk_origin bias of a hand-made mix of forms cancels in origin_bn
        weight, bias = self._eval_kernel(weights, norms, gamma, beta, layout)
        return dwconv2d(x, weight, bias, backend=self.backend)

    def _eval_kernel(self, weights, norms, gamma, beta, layout: BranchLayout) -> tuple[Tensor, Tensor]:
        """The merged kernel and bias of the eval form (running statistics), differentiable, in float32 (float64
        for float64 parameters)."""
        acc = torch.float64 if gamma.dtype == torch.float64 else torch.float32
        running_mean = torch.stack([bn.running_mean for bn in norms]).to(acc)
        running_var = torch.stack([bn.running_var for bn in norms]).to(acc)
        scale = gamma.to(acc) / (running_var + norms[0].eps).sqrt()
        weight = merge_branch_weights(weights, scale, layout)
        bias = (beta.to(acc) - scale * running_mean).sum(0)
        if self.lk_origin.bias is not None:
            bias = bias + scale[0] * self.lk_origin.bias.to(acc)
        return weight, bias

    @torch.no_grad()
    def merged_kernel(self) -> tuple[Tensor, Tensor]:
        """The deployed (weight [C, 1, K, K], bias [C]) equal to this block in eval mode, in the weights' dtype."""
        if self.deploy:
            return self.lk_origin.weight.detach(), self.lk_origin.bias.detach()
        norms, weights, gamma, beta = self._branch_parameters()
        weight, bias = self._eval_kernel(weights, norms, gamma, beta, self._layout(weights[0].device))
        dtype = self.lk_origin.weight.dtype
        return weight.to(dtype), bias.to(dtype)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Merge every branch and BN into ``lk_origin`` (weight + bias); a no-op once deployed."""
        if self.deploy:
            return
        weight, bias = self.merged_kernel()
        old = self.lk_origin
        merged = DepthwiseConv2d(
            self.channels,
            self.kernel_size,
            bias=True,
            backend=self.backend,
            device=old.weight.device,
            dtype=old.weight.dtype,
        )
        merged.weight.copy_(weight)
        merged.bias.copy_(bias)
        self.lk_origin = merged
        del self.origin_bn
        for k, r in zip(self.kernel_sizes, self.dilates, strict=True):
            delattr(self, f"dil_conv_k{k}_{r}")
            delattr(self, f"dil_bn_k{k}_{r}")
        self.deploy = True

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, branches={list(self.kernel_sizes)}/"
            f"{list(self.dilates)}, deploy={self.deploy}, backend={self.backend!r}, "
            f"merge_branches={self.merge_branches!r}"
        )


class SEBlock(nn.Module):
    """Squeeze-and-excitation on NCHW: global average pool -> 1x1 conv ``down`` -> ReLU -> 1x1 conv ``up`` ->
    sigmoid, times the input."""

    def __init__(self, channels: int, internal: int, device=None, dtype=None) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, internal, 1, bias=True, device=device, dtype=dtype)
        self.up = nn.Conv2d(internal, channels, 1, bias=True, device=device, dtype=dtype)
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        # the 1x1 convolutions of a 1x1 map as matrix products on [N, C] (the same weights): a convolution call
        # costs about 0.1 ms on the CPU for this tiny product, 54 of them per UniRepLKNet-T forward
        s = x.mean((2, 3))
        s = F.relu(F.linear(s, self.down.weight.flatten(1), self.down.bias))
        s = F.linear(s, self.up.weight.flatten(1), self.up.bias)
        return x * torch.sigmoid(s)[:, :, None, None]


class GRN(nn.Module):
    """Global response normalisation on NHWC (ConvNeXt V2): ``(gamma * Nx + 1) * x + beta`` with
    ``Gx = ||x||_2`` over (H, W) and ``Nx = Gx / (mean_C Gx + 1e-6)``. ``gamma`` and ``beta`` have the official shape
    [1, 1, 1, C] and start at zero; ``use_bias=False`` (the deployed form) has no ``beta``."""

    def __init__(self, dim: int, use_bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        self.use_bias = use_bias
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim, device=device, dtype=dtype))
        if use_bias:
            self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
            # torch.norm over the two outer dims of NHWC is 2-20x slower on the CPU than squaring and summing
            # (measured at UniRepLKNet-T's sizes, 2 threads); half-precision squares could overflow, so other
            # dtypes, and every GPU tensor (where the extra pass would cost), keep torch.norm
            gx = (x * x).sum(dim=(1, 2), keepdim=True).sqrt()
        else:
            gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        out = (self.gamma * nx + 1) * x
        return out + self.beta if self.use_bias else out


def _gelu_grn(h: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    return gelu_grn_reference(h, gamma, beta)


def _gelu_grn_deployed(h: Tensor, gamma: Tensor) -> Tensor:
    return gelu_grn_reference(h, gamma)


_DROP_PATHS = (nn.Identity, DropPath)


def _fusable_norm(bn: nn.Module) -> bool:
    """Whether :func:`batch_norm_add` computes what ``bn`` does: a plain ``nn.BatchNorm2d`` (not SyncBatchNorm, whose
    statistics span processes, nor a subclass) with both or neither affine parameters, a positive eps and, while
    training, a momentum in [0, 1] (or None), without hooks."""
    if type(bn) is not nn.BatchNorm2d or (bn.weight is None) != (bn.bias is None) or not bn.eps > 0:
        return False
    if bn.training and bn.momentum is not None and not 0.0 <= bn.momentum <= 1.0:
        return False
    return not hooked(bn)


def _fusable_batch(batch: int, height: int, width: int) -> bool:
    """Whether a batch of this size runs on :func:`batch_norm_add`'s kernels: more than one value per channel (else
    the modules raise BN's error) and at most ``MAX_BATCH`` samples (the grid's limit)."""
    return batch * height * width > 1 and batch <= MAX_BATCH


def _batch_norm_ops_on(env_var: str = BATCH_NORM_ADD_ENV_VAR) -> bool:
    """The switch ``env_var`` (``ZOO_BATCH_NORM_ADD``, ``ZOO_BATCH_NORM_SE``) is not "0" (read at every call)."""
    return os.environ.get(env_var, "1").strip() != "0"


def _norm_arguments(bn: nn.BatchNorm2d) -> tuple:
    """``(running_mean, running_var, weight, bias, training, momentum, eps)`` of a call that does what ``bn`` does,
    with ``nn.BatchNorm2d``'s own bookkeeping done here: ``num_batches_tracked`` + 1 in training, momentum None as a
    cumulative average, the running statistics used in eval and not tracked when ``track_running_stats`` is
    False."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    tracked = not bn.training or bn.track_running_stats
    return (
        bn.running_mean if tracked else None,
        bn.running_var if tracked else None,
        bn.weight,
        bn.bias,
        bn.training or bn.running_mean is None,
        momentum,
        bn.eps,
    )


def _batch_norm_add(
    bn: nn.BatchNorm2d,
    input: Tensor,
    residual: Tensor,
    backend: str,
    scale: Tensor | None = None,
    sample_scale: Tensor | None = None,
) -> Tensor:
    """``residual + sample_scale * scale * bn(input)`` as :func:`batch_norm_add` (``bn``'s bookkeeping:
    :func:`_norm_arguments`)."""
    return batch_norm_add(
        input, residual, *_norm_arguments(bn), scale=scale, sample_scale=sample_scale, backend=backend
    )


class NCHWtoNHWC(nn.Module):
    """``[N, C, H, W] -> [N, H, W, C]`` (a view)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1)


class NHWCtoNCHW(nn.Module):
    """``[N, H, W, C] -> [N, C, H, W]`` (a view)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2)


class UniRepLKNetBlock(nn.Module):
    """UniRepLKNet block: ``x + DropPath(gamma * BN(Linear_2(GRN(GELU(Linear_1(SE(BN(dwconv(x)))))))))``.

    ``dwconv`` is a :class:`DilatedReparamBlock` for K >= 7 and a plain :class:`DepthwiseConv2d` for K in (3, 5);
    Linear_1 (C -> ffn_factor C) and Linear_2 (no bias) act on NHWC. Keys (training form): ``dwconv.*``,
    ``norm.*``, ``se.down.*``, ``se.up.*``, ``pwconv1.1.*``, ``act.1.gamma``, ``act.1.beta``,
    ``pwconv2.0.weight``, ``pwconv2.2.*``, ``gamma``. Deployed form: ``dwconv.lk_origin.{weight,bias}`` or
    ``dwconv.{weight,bias}``, ``se.*``, ``pwconv1.1.*``, ``act.1.gamma``, ``pwconv2.0.{weight,bias}``.

    Args:
        dim: channels C.
        kernel_size: 3, 5 (plain depthwise) or 7..17 (odd; Dilated Reparam Block).
        drop_path: stochastic-depth probability.
        layer_scale_init_value: initial ``gamma`` (None or <= 0: no layer scale).
        deploy: build the deployed form.
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` for the depthwise convolutions.
        ffn_factor: hidden width of the MLP, in units of C.
        merge_branches: when a Dilated Reparam Block runs as one merged convolution (``"eval"``, ``"always"``,
            ``"never"``: :class:`DilatedReparamBlock`).
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        deploy: bool = False,
        backend: str = "auto",
        ffn_factor: int = 4,
        merge_branches: str = "eval",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.dim = dim
        self.kernel_size = kernel_size
        self.backend = backend
        if kernel_size >= 7:
            self.dwconv: nn.Module = DilatedReparamBlock(
                dim, kernel_size, deploy=deploy, backend=backend, merge_branches=merge_branches, **factory
            )
        elif kernel_size in (3, 5):
            self.dwconv = DepthwiseConv2d(dim, kernel_size, bias=deploy, backend=backend, **factory)
        else:
            raise ValueError(f"UniRepLKNetBlock kernel_size must be 3, 5 or one of 7..17 (odd), got {kernel_size!r}")
        self.norm: nn.Module = nn.Identity() if deploy else nn.BatchNorm2d(dim, **factory)
        self.se = SEBlock(dim, dim // 4, **factory)
        ffn_dim = int(ffn_factor * dim)
        self.pwconv1 = nn.Sequential(NCHWtoNHWC(), nn.Linear(dim, ffn_dim, **factory))
        self.act = nn.Sequential(nn.GELU(), GRN(ffn_dim, use_bias=not deploy, **factory))
        if deploy:
            self.pwconv2 = nn.Sequential(nn.Linear(ffn_dim, dim, **factory), NHWCtoNCHW())
        else:
            self.pwconv2 = nn.Sequential(
                nn.Linear(ffn_dim, dim, bias=False, **factory), NHWCtoNCHW(), nn.BatchNorm2d(dim, **factory)
            )
        if not deploy and layer_scale_init_value is not None and layer_scale_init_value > 0:
            self.gamma: nn.Parameter | None = nn.Parameter(layer_scale_init_value * torch.ones(dim, **factory))
        else:
            self.gamma = None
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    @property
    def deployed(self) -> bool:
        """True once the block is in its inference form (no batch norm, no GRN beta, no layer scale)."""
        return len(self.pwconv2) == 2 and isinstance(self.norm, nn.Identity)

    def _activation(self, h: Tensor) -> Tensor:
        """``self.act(h)``, as one fused op where the modules are the standard pair (exact ``nn.GELU``, then
        :class:`GRN`):

        * where the block's backend runs Triton on ``h`` (CUDA tensors; the interpreter when asked for):
          :func:`zoo.kernels.gelu_grn.gelu_grn`, two launches each way instead of the modules' 11 and 22 ATen
          ops, its result in the dtype the second Linear computes in (autocast's, or the modules' own result dtype
          without autocast); ``ZOO_GELU_GRN=0`` in the environment runs the modules instead;
        * on the CPU, in inference (no gradient wanted) with ``backend="auto"``: the op's reference compiled into
          fused loops (zoo/kernels/_cpu_compile.py): UniRepLKNet-T's CPU inference at batch 8 takes about 7% less
          time (scripts/benchmark_cpu.py).
        """
        gelu, grn = self.act
        if (
            isinstance(h, torch.fx.Proxy)  # FX symbolic tracing records the modules
            or type(gelu) is not nn.GELU
            or gelu.approximate != "none"
            or type(grn) is not GRN
            or hooked(self.act, gelu, grn)
        ):
            return self.act(h)
        beta = grn.beta if grn.use_bias else None
        if resolve_backend(self.backend, h, TRITON_DTYPES) == "triton":
            if os.environ.get(GELU_GRN_ENV_VAR, "1").strip() == "0":
                return self.act(h)
            device_type = h.device.type
            if torch.is_autocast_enabled(device_type):
                out_dtype = torch.get_autocast_dtype(device_type)
            else:
                out_dtype = torch.promote_types(h.dtype, grn.gamma.dtype)
            return gelu_grn(h, grn.gamma, beta, out_dtype=out_dtype, backend=self.backend)
        fused_on_cpu = (
            h.device.type == "cpu"
            and h.dtype in (torch.float32, torch.float64)
            and not (torch.is_grad_enabled() and (h.requires_grad or grn.gamma.requires_grad))
            and requested_backend(self.backend) == "auto"
            and not _cpu_compile.tracing()
        )
        if not fused_on_cpu:
            return self.act(h)
        if beta is not None:
            return _cpu_compile.run("gelu_grn", _gelu_grn, h, grn.gamma, beta)
        return _cpu_compile.run("gelu_grn_deployed", _gelu_grn_deployed, h, grn.gamma)

    def _fused_tail(self, h: Tensor, x: Tensor) -> bool:
        """Whether :meth:`forward` runs ``x + drop_path(gamma * BN(Linear_2(h)))`` as :func:`batch_norm_add`: where
        the block's backend runs Triton on ``h``, for the training form's standard modules (a BN that
        :func:`_fusable_norm` accepts; timm's ``DropPath`` or none) without hooks, in the dtypes the kernels take,
        unless ``ZOO_BATCH_NORM_ADD=0``. Otherwise (FX tracing included) the modules run."""
        if isinstance(h, torch.fx.Proxy) or len(self.pwconv2) != 3:
            return False
        linear, permute, bn = self.pwconv2
        if type(linear) is not nn.Linear or type(permute) is not NHWCtoNCHW or not _fusable_norm(bn):
            return False
        if type(self.drop_path) not in _DROP_PATHS or not _fusable_batch(x.shape[0], h.shape[1], h.shape[2]):
            return False
        dtypes = [x.dtype, linear.weight.dtype] + ([] if self.gamma is None else [self.gamma.dtype])
        if any(dtype not in TRITON_DTYPES for dtype in dtypes) or hooked(self.pwconv2, self.drop_path):
            return False
        return resolve_backend(self.backend, h, TRITON_DTYPES) == "triton" and _batch_norm_ops_on()

    def _tail(self, h: Tensor, x: Tensor) -> Tensor:
        """``x + drop_path(gamma * BN(Linear_2(h)))`` as one op (two launches each way, instead of BN's, the
        scale's, the drop path's and the add's), with ``DropPath``'s per-sample mask (drawn as timm draws it, in the
        branch's dtype)."""
        linear, permute, bn = self.pwconv2
        y = permute(linear(h))
        branch_dtype = y.dtype if self.gamma is None else torch.promote_types(y.dtype, self.gamma.dtype)
        sample_scale = sample_keep_scale(self.drop_path, x.shape[0], branch_dtype, x.device)
        return _batch_norm_add(bn, y, x, self.backend, self.gamma, sample_scale)

    def _fused_norm_se(self, y: Tensor) -> bool:
        """Whether :meth:`forward` runs ``se(norm(y))`` as :func:`batch_norm_se`: where the block's backend runs
        Triton on ``y``, for the training form's standard modules (a BN that :func:`_fusable_norm` accepts, the
        :class:`SEBlock`) without hooks, in the dtypes the kernels take, unless ``ZOO_BATCH_NORM_SE=0``. Otherwise
        (FX tracing, the deployed form included) the modules run."""
        se = self.se
        if isinstance(y, torch.fx.Proxy) or not _fusable_norm(self.norm) or type(se) is not SEBlock:
            return False
        if type(se.down) is not nn.Conv2d or type(se.up) is not nn.Conv2d or hooked(se, se.down, se.up):
            return False
        if se.down.out_channels == 0:  # (a block narrower than 4 channels: the op takes an SE width R >= 1)
            return False
        if not _fusable_batch(y.shape[0], y.shape[2], y.shape[3]):
            return False
        dtypes = [y.dtype] + [p.dtype for p in se.parameters()]
        if any(dtype not in TRITON_DTYPES for dtype in dtypes):
            return False
        return resolve_backend(self.backend, y, TRITON_DTYPES) == "triton" and _batch_norm_ops_on(BATCH_NORM_SE_ENV_VAR)

    def _norm_se(self, y: Tensor) -> Tensor:
        """``se(norm(y))`` as one op (two launches each way and the SE block's small layers, instead of BN's, the
        pool's and the product's passes)."""
        se = self.se
        return batch_norm_se(
            y, *_norm_arguments(self.norm), se.down.weight.flatten(1), se.down.bias, se.up.weight.flatten(1),
            se.up.bias, backend=self.backend,
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x)
        y = self._norm_se(y) if self._fused_norm_se(y) else self.se(self.norm(y))
        h = self._activation(self.pwconv1(y))
        if self._fused_tail(h, x):
            return self._tail(h, x)
        y = self.pwconv2(h)
        if self.gamma is not None:
            return scaled_residual(x, self.gamma.view(1, -1, 1, 1), y, self.drop_path)
        return x + self.drop_path(y)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Switch to the inference form, equal in eval mode; a no-op once done.

        Merges the dilated branches, folds the BN after the depthwise conv into it (which gains a bias), folds GRN
        ``beta`` through the second Linear into a bias, then the last BN and ``gamma`` into that Linear.
        """
        if isinstance(self.dwconv, DilatedReparamBlock):
            self.dwconv.reparameterize()
        if isinstance(self.norm, nn.BatchNorm2d):
            if isinstance(self.dwconv, DilatedReparamBlock):
                conv = self.dwconv.lk_origin
            else:
                conv = self.dwconv
            weight, bias = fuse_bn(conv.weight, conv.bias, self.norm)
            fused = DepthwiseConv2d(
                conv.in_channels,
                conv.kernel_size[0],
                bias=True,
                backend=self.backend,
                device=weight.device,
                dtype=weight.dtype,
            )
            fused.weight.copy_(weight)
            fused.bias.copy_(bias)
            if isinstance(self.dwconv, DilatedReparamBlock):
                self.dwconv.lk_origin = fused
            else:
                self.dwconv = fused
            self.norm = nn.Identity()
        if len(self.pwconv2) == 3:
            linear, bn = self.pwconv2[0], self.pwconv2[2]
            grn = self.act[1]
            bias = torch.zeros(linear.out_features, device=linear.weight.device, dtype=linear.weight.dtype)
            if linear.bias is not None:
                bias = bias + linear.bias
            if grn.use_bias:  # Linear((..) + beta) = Linear(..) + W beta
                bias = bias + linear.weight @ grn.beta.reshape(-1)
                del grn.beta
                grn.use_bias = False
            weight, bias = fuse_bn(linear.weight, bias, bn)
            if self.gamma is not None:
                weight, bias = weight * self.gamma.reshape(-1, 1), bias * self.gamma
                self.gamma = None
            fused = nn.Linear(linear.in_features, linear.out_features, device=weight.device, dtype=weight.dtype)
            fused.weight.copy_(weight)
            fused.bias.copy_(bias)
            self.pwconv2 = nn.Sequential(fused, NHWCtoNCHW())
        elif self.gamma is not None:  # (only for a hand-made mix of forms) the layer scale into the Linear
            linear = self.pwconv2[0]
            linear.weight.mul_(self.gamma.reshape(-1, 1))
            if linear.bias is not None:
                linear.bias.mul_(self.gamma)
            self.gamma = None

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernel_size={self.kernel_size}, deployed={self.deployed}"
