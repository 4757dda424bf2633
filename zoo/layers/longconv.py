"""``LongConv``: a directly learned, regularised long convolution (Fu, Epstein, Nguyen, Thomas, Zhang, Dao, Rudra
& Ré, "Simple Hardware-Efficient Long Convolutions for Sequence Modeling", ICML 2023; HazyResearch/safari
``src/models/sequence/long_conv.py`` and ``long_conv_kernel.py``).

Parameters are named as in safari's layer:

- ``kernel.kernel`` [C, H, L] (causal) or [C, H, 2L] (bidirectional: safari's ``causal=False`` kernel), C =
  ``channels``, L = ``l_max``; init randn * 0.002. It carries ``_optim = {"lr": kernel_lr, "weight_decay": 0.0}``;
- ``D`` [C, H]: the skip term of each channel;
- ``output_linear.0.weight`` [2H, C*H] / ``output_linear.0.bias`` [2H]: the position-wise linear map (safari's
  transposed ``LinearActivation`` with ``postact="glu"``), then GLU over the features (``output_linear.1``).

Channels (safari's "heads"): each of the C kernels convolves every one of the H input features, so the
convolution gives C*H features (index c*H + h), which the output linear mixes back to H (then GLU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.kernels.fftconv import fftconv
from zoo.layers._padding import channels_first

__all__ = ["LongConv", "LongConvKernel", "squash"]

# safari's long-conv recipes train the kernel at its own lr without weight decay: layer.learning_rate 0.001 in
# configs/experiment/cifar/long-conv-cifar.yaml and lra/long-conv-lra-cifar.yaml (0.0005 for ListOps,
# lra/long-conv-lra-listops.yaml); its LongConvKernel registers the kernel with weight decay 0.
KERNEL_LR = 1e-3


def squash(k: Tensor, lam: float) -> Tensor:
    """The soft-threshold ("squash") of the long-conv paper: sign(k) max(|k| - lam, 0)."""
    return torch.sign(k) * F.relu(k.abs() - lam)


class LongConvKernel(nn.Module):
    """The learned kernel (key ``kernel``) and its regularisation, in this order (docs/semantics.md §4.5): average-pool
    smoothing over the length axis (window ``smooth_window``, stride 1, zero padding counted, as safari's
    ``nn.AvgPool1d``), the squash sign(k) max(|k| - lam, 0), then dropout on the kernel's entries.

    Args:
        channels: C, the number of kernels per feature.
        d_model: H.
        length: the stored kernel length (L, or 2L for a bidirectional layer).
        lam: the squash threshold.
        smooth_window: odd window of the smoothing; None or 1: no smoothing.
        kernel_dropout: dropout probability on the kernel's entries (training only).
        lr: the kernel's learning rate (its ``_optim``); None keeps the optimiser's (weight decay stays 0).
    """

    def __init__(
        self,
        channels: int,
        d_model: int,
        length: int,
        lam: float = 0.003,
        smooth_window: int | None = 7,
        kernel_dropout: float = 0.1,
        lr: float | None = KERNEL_LR,
    ) -> None:
        super().__init__()
        if smooth_window is not None and (int(smooth_window) < 1 or int(smooth_window) % 2 == 0):
            raise ValueError(
                f"smooth_window must be an odd positive int (or None: no smoothing), got {smooth_window!r}"
            )
        if lam < 0:
            raise ValueError(f"lam (the squash threshold) must be >= 0, got {lam!r}")
        if not 0.0 <= kernel_dropout < 1.0:
            raise ValueError(f"kernel_dropout must be in [0, 1), got {kernel_dropout!r}")
        self.kernel = nn.Parameter(torch.randn(channels, d_model, length) * 0.002)
        optim: dict[str, float] = {"weight_decay": 0.0}
        if lr is not None:
            optim["lr"] = float(lr)
        self.kernel._optim = optim
        self.lam = float(lam)
        self.smooth_window = None if smooth_window in (None, 1) else int(smooth_window)
        self.drop = nn.Dropout(kernel_dropout) if kernel_dropout > 0.0 else nn.Identity()

    def extra_repr(self) -> str:
        return f"lam={self.lam}, smooth_window={self.smooth_window}"

    def forward(self) -> Tensor:
        """The regularised kernel [C, H, length] (float32)."""
        k = self.kernel.float()
        if self.smooth_window is not None:
            w = self.smooth_window
            k = F.avg_pool1d(k, kernel_size=w, stride=1, padding=w // 2, count_include_pad=True)
        return self.drop(squash(k, self.lam))


class LongConv(nn.Module):
    """The long-convolution layer: y = GLU(Linear(dropout(GELU(K * u + D u)))), K the regularised learned kernel.

    Input and output are [B, H, L] when ``transposed`` (safari's default), else [B, L, H]. The convolution runs
    through :func:`zoo.kernels.fftconv.fftconv` (FFT of size 2L, D skip and GELU fused) on the C*H channels (input
    feature h feeds channels h, H + h, ...). Inputs longer than ``l_max`` see a kernel of ``l_max`` taps; shorter
    ones its first L taps. Bidirectional: the stored kernel has 2 l_max taps; taps 0..l_max-1 are the causal
    kernel, taps 2 l_max - 1 - m (the second half read backwards) the anti-causal kernel of lag m + 1 (S4's
    convention, and what an FFT of size 2L does with safari's ``causal=False`` kernel).

    ``lengths`` (optional, [B] integers): a batch padded at the end; positions l >= lengths[b] of the input are
    zeroed before the convolution, so that padding is never read as signal (by the anti-causal kernel). Outputs
    at padded positions are not meaningful.

    Args:
        d_model: H, the features.
        l_max: L, the kernel length (the longest input length it is learned for).
        channels: C, kernels per feature (safari's ``channels``).
        bidirectional: add an anti-causal kernel.
        lam: squash threshold; smooth_window: odd smoothing window (None: none); kernel_dropout: dropout on the
            kernel's entries (see :class:`LongConvKernel`).
        kernel_lr: learning rate of the kernel (its ``_optim``, weight decay 0); None: the optimiser's.
        transposed: input layout [B, H, L] (True) or [B, L, H] (False).
        dropout: channel dropout after the GELU (one mask per sequence, as S4D's).
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` for the convolution.
    """

    def __init__(
        self,
        d_model: int,
        l_max: int,
        channels: int = 2,
        bidirectional: bool = False,
        lam: float = 0.003,
        smooth_window: int | None = 7,
        kernel_dropout: float = 0.1,
        kernel_lr: float | None = KERNEL_LR,
        transposed: bool = True,
        dropout: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("l_max", l_max), ("channels", channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.h = d_model
        self.l_max = l_max
        self.channels = channels
        self.d_output = self.h
        self.bidirectional = bool(bidirectional)
        self.transposed = bool(transposed)
        self.backend = backend

        self.D = nn.Parameter(torch.randn(channels, self.h))
        length = 2 * l_max if self.bidirectional else l_max
        self.kernel = LongConvKernel(channels, self.h, length, lam, smooth_window, kernel_dropout, kernel_lr)
        self.dropout = nn.Dropout1d(dropout) if dropout > 0.0 else nn.Identity()
        self.output_linear = nn.Sequential(nn.Linear(channels * self.h, 2 * self.h), nn.GLU(dim=-1))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.h}, l_max={self.l_max}, channels={self.channels}, transposed={self.transposed}, "
            f"bidirectional={self.bidirectional}, backend={self.backend!r}"
        )

    def conv_kernel(self, L: int) -> Tensor:
        """The kernel the convolution of a length-L input uses, in :func:`zoo.kernels.fftconv.fftconv`'s layout:
        [C*H, L'] (causal) or [2, C*H, L'] (bidirectional), L' = min(L, l_max)."""
        k = self.kernel()  # [C, H, l_max] or [C, H, 2 l_max]
        taps = min(L, self.l_max)
        if not self.bidirectional:
            return k[..., :taps].reshape(self.channels * self.h, taps)
        causal = k[..., :taps]
        anti = k[..., self.l_max :].flip(-1)[..., :taps]
        return torch.stack([causal, anti]).reshape(2, self.channels * self.h, taps)

    def forward(self, u: Tensor, lengths: Tensor | None = None) -> Tensor:
        """u: [B, H, L] (transposed) or [B, L, H]; lengths: None or [B] valid lengths; returns u's layout."""
        u = channels_first(u, self.h, self.transposed, lengths, "LongConv")
        L = u.shape[-1]
        if self.channels > 1:
            u = u.repeat(1, self.channels, 1)  # [B, C*H, L], channel c*H + h reads feature h
        y = fftconv(
            u.contiguous(),
            self.conv_kernel(L),
            self.D.reshape(-1),
            bidirectional=self.bidirectional,
            activation="gelu",
            backend=self.backend,
        )
        y = self.output_linear(self.dropout(y).transpose(-1, -2))  # [B, L, H]
        return y.transpose(-1, -2) if self.transposed else y
