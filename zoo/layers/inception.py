"""``InceptionDWConv2d``: InceptionNeXt's token mixer (identity / square / 1 x band / band x 1 depthwise branches)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from zoo.kernels.dwconv import inception_dwconv2d


def _check_kernel_size(name: str, size: int) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1 or size % 2 == 0:
        raise ValueError(f"{name} must be an odd positive int (centred 'same' padding), got {size!r}")


class InceptionDWConv2d(nn.Module):
    """Inception depthwise convolution, the token mixer of InceptionNeXt (Yu et al., CVPR 2024), fused.

    The C input channels are split, in this order, into ``C - 3 * gc`` channels passed through unchanged and
    three branches of ``gc = int(C * branch_ratio)`` channels: ``dwconv_hw`` (k x k, k = ``square_kernel_size``),
    ``dwconv_w`` (1 x b) and ``dwconv_h`` (b x 1), b = ``band_kernel_size``; every branch is a depthwise
    convolution with bias, stride 1 and zero "same" padding; the outputs are concatenated back in the same
    order. The three branches are ``nn.Conv2d`` modules with timm's (and the official code's) shapes, so the
    state-dict keys equal those of ``timm.models.inception_next.InceptionDWConv2d``
    (``dwconv_hw.weight`` [gc, 1, k, k], ``dwconv_w.weight`` [gc, 1, 1, b], ``dwconv_h.weight`` [gc, 1, b, 1] and
    their biases [gc]). The forward pass is one call of :func:`zoo.kernels.dwconv.inception_dwconv2d`: on the Triton
    backend a single fused kernel (no split and concatenation copies).

    Args:
        in_chans: input (and output) channels C.
        square_kernel_size: side of the square branch (odd).
        band_kernel_size: length of the two band branches (odd).
        branch_ratio: fraction of the channels given to each convolution branch (at most 1/3).
        dilation: only 1: the fused op has no dilation (timm's ``MetaNeXtBlock`` passes it by keyword; it is
            larger than 1 only for ``output_stride`` < 32).
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see :mod:`zoo.kernels._backend`).
        device, dtype: factory arguments for the convolution parameters.

    Input: ``[N, C, H, W]`` (contiguous NCHW or channels_last); output: the same shape and dtype.
    """

    def __init__(
        self,
        in_chans: int,
        square_kernel_size: int = 3,
        band_kernel_size: int = 11,
        branch_ratio: float = 0.125,
        dilation: int = 1,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if dilation != 1:
            raise ValueError(
                f"InceptionDWConv2d supports only dilation=1 (the fused op has no dilation), got "
                f"dilation={dilation!r}; InceptionNeXt models get dilation > 1 only with output_stride < 32"
            )
        if not isinstance(in_chans, int) or isinstance(in_chans, bool) or in_chans < 1:
            raise ValueError(f"in_chans must be a positive int, got {in_chans!r}")
        _check_kernel_size("square_kernel_size", square_kernel_size)
        _check_kernel_size("band_kernel_size", band_kernel_size)
        gc = int(in_chans * branch_ratio)  # channels of each convolution branch (timm's rounding)
        if gc < 1 or 3 * gc > in_chans:
            raise ValueError(
                f"branch_ratio={branch_ratio!r} gives {gc} channels per branch for in_chans={in_chans}; "
                "need 1 <= int(in_chans * branch_ratio) <= in_chans / 3"
            )
        factory = dict(device=device, dtype=dtype)
        self.in_chans = in_chans
        self.square_kernel_size = square_kernel_size
        self.band_kernel_size = band_kernel_size
        self.branch_ratio = branch_ratio
        self.backend = backend
        self.split_indexes = (in_chans - 3 * gc, gc, gc, gc)  # identity, hw, w, h (timm's attribute)
        square_pad, band_pad = square_kernel_size // 2, band_kernel_size // 2
        self.dwconv_hw = nn.Conv2d(gc, gc, square_kernel_size, padding=square_pad, groups=gc, **factory)
        self.dwconv_w = nn.Conv2d(gc, gc, (1, band_kernel_size), padding=(0, band_pad), groups=gc, **factory)
        self.dwconv_h = nn.Conv2d(gc, gc, (band_kernel_size, 1), padding=(band_pad, 0), groups=gc, **factory)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"InceptionDWConv2d expects input [N, C, H, W] (NCHW or channels_last) with C = in_chans = "
                f"{self.in_chans}, got shape {list(x.shape)}"
            )
        return inception_dwconv2d(
            x,
            self.dwconv_hw.weight,
            self.dwconv_hw.bias,
            self.dwconv_w.weight,
            self.dwconv_w.bias,
            self.dwconv_h.weight,
            self.dwconv_h.bias,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"in_chans={self.in_chans}, split={self.split_indexes}, square_kernel_size={self.square_kernel_size}, "
            f"band_kernel_size={self.band_kernel_size}, backend={self.backend!r}"
        )
