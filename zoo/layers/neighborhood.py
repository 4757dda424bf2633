"""Neighborhood attention layers (NAT, Hassani et al., CVPR 2023; DiNAT, Hassani & Shi, 2022): multi-head
self-attention of every token over a window of its neighbours (docs/semantics.md §5), on ``[B, *spatial, dim]``
inputs (channels last), through :func:`zoo.kernels.neighborhood.neighborhood_attention`.

Parameters as in the released NAT / DiNAT checkpoints: ``qkv`` (Linear(dim, 3 dim)), ``rpb`` (relative position
bias [heads, 2 k - 1 per axis]) and ``proj`` (Linear(dim, dim)).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.kernels.neighborhood import neighborhood_attention

__all__ = ["NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D", "NeighborhoodAttention"]


def _per_axis(value, dims: int, name: str) -> tuple:
    values = tuple(value) if isinstance(value, Sequence) else (value,) * dims
    if len(values) != dims:
        raise ValueError(f"{name} must be one value or {dims} (one per spatial axis), got {value!r}")
    return values


class NeighborhoodAttention(nn.Module):
    """Neighborhood attention over ``dims`` spatial axes; use the 1-D/2-D/3-D subclasses.

    ``forward(x)`` takes ``[B, *spatial, dim]`` and returns the same shape. An axis shorter than kernel_size x
    dilation is padded with zeros at its end (before ``qkv``: the padding tokens are keys like the others) and the
    output cropped back, as the released NAT / DiNAT models did with NATTEN <= 0.14.

    Args:
        dim: channels (divisible by ``num_heads``).
        num_heads: attention heads.
        kernel_size: odd window size >= 3 (one value, or one per axis).
        dilation: window dilation (one or per axis).
        is_causal: causal windows (one or per axis); no relative position bias then.
        qkv_bias: bias of the ``qkv`` projection.
        qk_scale: logit scale (default head_dim ** -0.5).
        rel_pos_bias: learn the relative position bias ``rpb`` (trunc-normal init, std 0.02).
        attn_drop: dropout on the attention probabilities (runs the reference path in training: the fused kernels
            never form the probabilities; see :func:`zoo.kernels.neighborhood.neighborhood_attention`).
        proj_drop: dropout after ``proj``.
        backend: ``"auto"``, ``"triton"`` or ``"torch"``.
    """

    dims: int = 0

    def __init__(
        self,
        dim: int,
        num_heads: int,
        kernel_size,
        dilation=1,
        is_causal=False,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        rel_pos_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.kernel_size = _per_axis(kernel_size, self.dims, "kernel_size")
        self.dilation = _per_axis(dilation, self.dims, "dilation")
        self.is_causal = _per_axis(is_causal, self.dims, "is_causal")
        if any(k < 3 or k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"kernel_size must be odd and >= 3 on every axis, got {kernel_size!r}")
        if rel_pos_bias and any(self.is_causal):
            raise ValueError("rel_pos_bias cannot be used with causal attention: pass rel_pos_bias=False")
        self.scale = qk_scale if qk_scale is not None else self.head_dim**-0.5
        self.backend = backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        if rel_pos_bias:
            self.rpb = nn.Parameter(torch.zeros(num_heads, *(2 * k - 1 for k in self.kernel_size)))
            nn.init.trunc_normal_(self.rpb, std=0.02, a=-2.0, b=2.0)
        else:
            self.register_parameter("rpb", None)
        self.attn_drop = float(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, kernel_size={self.kernel_size}, "
            f"dilation={self.dilation}, is_causal={self.is_causal}, rel_pos_bias={self.rpb is not None}, "
            f"backend={self.backend!r}"
        )

    def forward(self, x: Tensor) -> Tensor:
        layout = "[B, " + ", ".join(f"X{i}" for i in range(self.dims)) + f", dim={self.dim}]"
        if x.dim() != self.dims + 2 or x.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__} expects {layout} (channels last), got shape {list(x.shape)}")
        spatial = x.shape[1:-1]
        windows = [k * d for k, d in zip(self.kernel_size, self.dilation, strict=True)]
        pads = [max(w - n, 0) for w, n in zip(windows, spatial, strict=True)]
        if any(pads):
            # a map smaller than the window is zero-padded; zero tokens project to the bias alone, so the projection
            # runs on the real tokens and its output is padded (F.pad lists the last axis first: channels, none,
            # then the spatial axes in reverse)
            qkv = F.pad(F.linear(x, self.qkv.weight), [0, 0] + [p for pad in reversed(pads) for p in (0, pad)])
            if self.qkv.bias is not None:
                qkv = qkv + self.qkv.bias
        else:
            qkv = self.qkv(x)
        qkv = qkv.unflatten(-1, (3, self.num_heads, self.head_dim))
        q, k, v = qkv.unbind(-3)  # [B, *spatial, heads, head_dim] views of the fused projection
        out = neighborhood_attention(
            q,
            k,
            v,
            self.kernel_size,
            self.dilation,
            self.is_causal,
            self.rpb,
            self.scale,
            backend=self.backend,
            dropout_p=self.attn_drop if self.training else 0.0,
        )
        out = out.flatten(-2)
        if any(pads):
            out = out[(slice(None), *(slice(0, n) for n in spatial))]
        return self.proj_drop(self.proj(out))


class NeighborhoodAttention1D(NeighborhoodAttention):
    """Neighborhood attention on ``[B, L, dim]`` (see :class:`NeighborhoodAttention`)."""

    dims = 1


class NeighborhoodAttention2D(NeighborhoodAttention):
    """Neighborhood attention on ``[B, H, W, dim]`` (see :class:`NeighborhoodAttention`); NAT and DiNAT's layer."""

    dims = 2


class NeighborhoodAttention3D(NeighborhoodAttention):
    """Neighborhood attention on ``[B, T, H, W, dim]`` (see :class:`NeighborhoodAttention`)."""

    dims = 3
