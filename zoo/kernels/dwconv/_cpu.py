"""The depthwise convolution on the CPU: what ``backend="auto"`` runs on CPU tensors.

It stays on PyTorch's convolution (oneDNN); what changes is the formulation handed to it, chosen by measurement on a
2-core AVX-512 EPYC (torch 2.14, oneDNN 3.12, float32, one thread, minimum of 11 interleaved runs;
``python scripts/benchmark_cpu.py ops`` repeats the comparison):

* **dwconv2d**, channels_last input, 13 x 13 kernel, stride 1, no dilation (UniRepLKNet's deployed large kernels:
  the block's NHWC MLP hands the next block a channels_last map): oneDNN's channels_last depthwise convolution is
  slow at exactly 13 x 13 (about 100 ps per multiply-add at batch 8, 320 channels, 14 x 14, against 28 at 9 x 9 and
  36 at 15 x 15), so the kernel is zero-padded to 15 x 15 (padding 7: the same sums plus zeros) and runs there:
  batch 8, 160 ch at 28 x 28: 9.1 vs 21.5 ms; 320 ch at 14 x 14: 4.4 vs 8.6 ms; 640 ch at 7 x 7: 0.57 vs 1.20 ms.
  Going through an NCHW copy instead (NCHW is fast at 13 x 13) costs two layout copies and was slower than the
  padded kernel at every size. Only where no gradient is needed: in a
  training step oneDNN's backward at 15 x 15 is up to 3x slower at 28 x 28 than at 13 x 13. Every other case (NCHW,
  where 13 x 13 is already the fastest; kernels up to 11 and dilated kernels, where channels_last is fast; float64;
  gradients) runs the reference ``F.conv2d`` unchanged;
* **inception_dwconv2d** keeps its split / conv / cat reference on CPU tensors: no formulation measured faster.
  Without an ``out=`` for the convolution, every formulation writes each branch's result once and copies it (or the
  identity channels) into the output once more, the same bytes as the concatenation: writing the results into
  slices of a preallocated output, overwriting slices of ``x.clone()``, or convolving one contiguous copy of the
  branch channels all came within +-7% of split / cat at InceptionNeXt-T's sizes (batch 1 and 8, NCHW, medians of
  21-25 interleaved runs), mostly slower; ``python scripts/benchmark_cpu.py ops --ops inception`` times the first
  against the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.kernels.dwconv._checks import check_dwconv2d_inputs
from zoo.kernels.dwconv.reference import dwconv2d_reference

__all__ = ["MIN_POSITIONS", "PADDED_KERNELS", "dwconv2d_cpu", "padded_kernel"]

# square kernel side -> the side it runs at in channels_last without gradients (zero-padded; measured, see above)
PADDED_KERNELS = {13: 15}
# ... on maps of at least this many positions (N H W): below, the padding's fixed cost is not won back (batch 1 at
# 7 x 7: 0.29 vs 0.27 ms)
MIN_POSITIONS = 128


def padded_kernel(x: Tensor, weight: Tensor, stride: tuple[int, int], dilation: tuple[int, int]) -> int | None:
    """The kernel side the CPU path zero-pads ``weight`` to for this call, or None to run the reference as it is:
    a float32 channels_last (not also NCHW-contiguous) ``x`` of at least :data:`MIN_POSITIONS` positions, a square
    kernel listed in :data:`PADDED_KERNELS`, stride 1 and no dilation."""
    side = PADDED_KERNELS.get(weight.shape[-1]) if weight.dim() == 4 else None
    if (
        side is None
        or weight.shape[-2] != weight.shape[-1]
        or stride != (1, 1)
        or dilation != (1, 1)
        or x.dtype != torch.float32
        or x.dim() != 4
        or x.shape[0] * x.shape[2] * x.shape[3] < MIN_POSITIONS
        or x.is_contiguous()
        or not x.is_contiguous(memory_format=torch.channels_last)
    ):
        return None
    return side


def dwconv2d_cpu(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    """Depthwise convolution with "same" padding on CPU tensors (the module docstring says which formulation runs);
    the same values, dtype and memory format as :func:`zoo.kernels.dwconv.reference.dwconv2d_reference`."""
    # the cheap tests first: most calls go straight to the reference (which validates its inputs)
    if weight.dim() == 4 and weight.shape[-1] in PADDED_KERNELS and x.dtype == torch.float32:
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
        if not needs_grad:
            kernel, stride, dilation = check_dwconv2d_inputs(x, weight, bias, stride, dilation)
            side = padded_kernel(x, weight, stride, dilation)
            if side is not None:
                ring = (side - kernel[0]) // 2
                weight = F.pad(weight.to(x.dtype), (ring, ring, ring, ring))
                bias = None if bias is None else bias.to(x.dtype)
                return F.conv2d(x, weight, bias, 1, side // 2, 1, x.shape[1])
    return dwconv2d_reference(x, weight, bias, stride, dilation)
