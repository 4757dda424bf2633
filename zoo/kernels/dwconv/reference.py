"""The plain-PyTorch references: what the Triton kernels compute (the test oracle; the CPU path)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.kernels.dwconv._checks import check_dwconv2d_inputs, check_inception_inputs, same_padding

__all__ = ["dwconv2d_reference", "inception_dwconv2d_reference"]


def dwconv2d_reference(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    """Depthwise convolution with zero "same" padding: ``F.conv2d(..., groups=C)`` in the dtype of ``x``.

    Args:
        x: ``[N, C, H, W]``, any memory format.
        weight: ``[C, 1, kh, kw]`` with odd kh, kw; bias: ``[C]`` or None.
        stride: 1 or 2 (per axis); dilation: >= 1 (per axis).
    """
    kernel, stride, dilation = check_dwconv2d_inputs(x, weight, bias, stride, dilation)
    bias = None if bias is None else bias.to(x.dtype)
    padding = same_padding(kernel, dilation)
    return F.conv2d(x, weight.to(x.dtype), bias, stride, padding, dilation, groups=x.shape[1])


def inception_dwconv2d_reference(
    x: Tensor,
    weight_hw: Tensor,
    bias_hw: Tensor | None,
    weight_w: Tensor,
    bias_w: Tensor | None,
    weight_h: Tensor,
    bias_h: Tensor | None,
) -> Tensor:
    """InceptionNeXt's mixer as the paper writes it: split, three depthwise convolutions, concatenate."""
    gc, _, _ = check_inception_inputs(x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h)
    x_id, x_hw, x_w, x_h = torch.split(x, (x.shape[1] - 3 * gc, gc, gc, gc), dim=1)
    return torch.cat(
        (
            x_id,
            dwconv2d_reference(x_hw, weight_hw, bias_hw),
            dwconv2d_reference(x_w, weight_w, bias_w),
            dwconv2d_reference(x_h, weight_h, bias_h),
        ),
        dim=1,
    )


# ----------------------------------------------------------------------------------------------------------------
# 2. Triton kernels
#
# A tile is BLOCK_P positions (flattened over n, row, column: small maps fill a tile) x BLOCK_C channels. The same
# tile routine computes the forward ("gather": output position o reads the input at o s - p + k d) and the input
# gradient ("scatter" read backwards: input position i reads the output gradient at (i + p - k d) / s where that is
# an integer in range), looping over the taps; the shifted loads hit L1/L2.
# ----------------------------------------------------------------------------------------------------------------
