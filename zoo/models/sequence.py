"""Sequence models: a stack of S4D or long-convolution layers between a linear encoder and decoder (state-spaces/s4
``example.py``).

``SequenceModel`` takes images [B, C, H, W] (read as pixel sequences [B, H*W, C], row by row), sequences
[B, L, d_in], or token ids [B, L] (with ``vocab_size``). Layout and key names follow state-spaces' example
backbone: ``encoder``, ``s4_layers.{i}`` (:class:`zoo.layers.S4D`, or :class:`zoo.layers.LongConv` with
``layer="longconv"``: the example's name for the layer stack either way), ``norms.{i}``, ``decoder``; each layer is
``x = x + dropout(layer(norm(x)))`` (pre-norm) or ``x = norm(x + dropout(layer(x)))`` (post-norm, the example's
default). ``forward_features`` is unpooled ([B, L, d_model]); ``forward_head`` pools (mean or last position) and
decodes, or, with ``global_pool=""``, decodes every position ([B, L, num_classes]; ``l_output=M`` keeps the last M,
as state-spaces' sequence decoder does for the copying task).

Variable-length batches: ``forward(x, lengths)`` with ``lengths`` [B] (valid positions, padding at the end). Every
layer zeroes the padded positions of its input before its convolution (a bidirectional layer never reads padding
as signal), the residual stream is zeroed there after each block, mean pooling averages the valid positions only
and ``"last"`` pooling takes position ``lengths - 1``. So the outputs at valid positions do not depend on the
padding's content or amount (in training mode, BatchNorm's batch statistics do count padded positions, as in
state-spaces; LayerNorm is per position).

Registered sizes (docs/semantics.md §4.6): ``s4d_t`` (d_model 128, 4 layers, d_state 64: the example's sCIFAR model,
88-89% top-1) and ``s4d_s`` (d_model 256, 6 layers: the LRA size); ``longconv_t`` and ``longconv_s``, the same sizes
with long convolutions (2 channels, l_max 1024 by default).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import register_notrace_function
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from zoo.layers._padding import check_lengths
from zoo.layers.longconv import LongConv
from zoo.layers.s4d import S4D
from zoo.models._registry import register_model

__all__ = ["SequenceModel", "to_sequence"]

_POOLS = ("mean", "last", "")
LAYERS = ("s4d", "longconv")
_POOL_ALIASES = {"avg": "mean", "mean": "mean", "last": "last", "": "", "none": "", None: ""}


def _pool_name(global_pool: str | None) -> str:
    if global_pool not in _POOL_ALIASES:
        raise ValueError(
            f"global_pool must be 'mean' (or 'avg'), 'last' or '' (per-position outputs), got {global_pool!r}"
        )
    return _POOL_ALIASES[global_pool]


class _ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a [B, D, L] tensor (keys ``weight``, ``bias``: the example's LayerNorm)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(-1, -2)).transpose(-1, -2)


def _channel_norm(dim: int, kind: str) -> nn.Module:
    if kind == "layer":
        return _ChannelLayerNorm(dim)
    if kind == "batch":
        return nn.BatchNorm1d(dim)
    raise ValueError(f"norm must be 'layer' or 'batch', got {kind!r}")


@register_notrace_function  # a leaf for torch.fx: it branches on shapes
def to_sequence(x: Tensor, in_chans: int, vocab_size: int | None) -> Tensor:
    """Check the input and bring images [B, C, H, W] to pixel sequences [B, H*W, C] (row-major)."""
    if vocab_size is not None:
        if x.ndim != 2 or x.is_floating_point() or x.is_complex():
            raise ValueError(
                f"with vocab_size={vocab_size} the model expects integer token ids [B, L], got "
                f"{x.dtype} {tuple(x.shape)}"
            )
        return x
    if x.ndim == 4:
        if x.shape[1] != in_chans:
            raise ValueError(f"expected images [B, {in_chans}, H, W], got {tuple(x.shape)}")
        return x.flatten(2).transpose(1, 2)
    if x.ndim != 3 or x.shape[-1] != in_chans:
        raise ValueError(
            f"expected images [B, {in_chans}, H, W] or sequences [B, L, {in_chans}] (token ids [B, L] "
            f"need vocab_size), got {tuple(x.shape)}"
        )
    return x


@register_notrace_function  # a leaf for torch.fx: it validates and branches on None
def padding_mask(x: Tensor, lengths: Tensor | None) -> Tensor | None:
    """The [B, 1, L] float mask of the valid positions of ``x`` [B, L, D] (None without ``lengths``)."""
    if lengths is None:
        return None
    check_lengths(lengths, x.shape[0], "SequenceModel")
    L = x.shape[1]
    if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > L):
        raise ValueError(
            f"lengths must be in [1, L = {L}] (the padded length of the batch), got "
            f"{int(lengths.min())}..{int(lengths.max())}"
        )
    valid = torch.arange(L, device=x.device) < lengths.to(x.device)[:, None]
    return valid[:, None, :].to(x.dtype)


@register_notrace_function
def apply_mask(x: Tensor, mask: Tensor | None) -> Tensor:
    """``x`` [B, D, L] zeroed at the padded positions (``x`` itself without a mask)."""
    return x if mask is None else x * mask.to(x.dtype)


@register_notrace_function
def pool_sequence(x: Tensor, mode: str, lengths: Tensor | None) -> Tensor:
    """Pool [B, L, D] to [B, D]: the mean or the last position, over the valid positions when ``lengths`` is given."""
    if mode == "mean":
        if lengths is None:
            return x.mean(dim=1)
        valid = torch.arange(x.shape[1], device=x.device) < lengths.to(x.device)[:, None]
        return (x * valid[..., None].to(x.dtype)).sum(dim=1) / lengths.to(x.device, x.dtype)[:, None]
    if lengths is None:
        return x[:, -1]
    index = (lengths.to(x.device).long() - 1).clamp(min=0)
    return x[torch.arange(x.shape[0], device=x.device), index]


class SequenceModel(nn.Module):
    """Encoder -> n_layers x (S4D or long-conv residual block) -> pooling -> decoder.

    Args:
        num_classes: decoder outputs (0: no decoder, ``forward`` returns the pooled features).
        in_chans: input features per position (image channels, or d_in of a [B, L, d_in] sequence).
        d_model: channels of the layers.
        n_layers: number of residual blocks.
        layer: ``"s4d"`` (:class:`zoo.layers.S4D`) or ``"longconv"`` (:class:`zoo.layers.LongConv`).
        d_state: state size N of each S4D layer.
        dropout: dropout inside each layer and after each block (channel dropout, as the example's ``Dropout1d``).
        prenorm: pre-norm blocks (no final norm, as the example); False: post-norm (the example's default).
        norm: ``"layer"`` or ``"batch"``.
        global_pool: ``"mean"``, ``"last"`` or ``""`` (a prediction per position).
        l_output: with ``global_pool=""``, keep only the last ``l_output`` positions (None: all).
        vocab_size: token inputs: an ``nn.Embedding(vocab_size, d_model)`` encoder (inputs [B, L] integer ids).
        bidirectional: a causal and an anti-causal kernel in every layer.
        init, dt_min, dt_max, ssm_lr: S4D arguments (``ssm_lr`` is its ``lr``).
        l_max, channels, lam, smooth_window, kernel_dropout, kernel_lr: LongConv arguments (``l_max``: the kernel
            length, default 1024).
        drop_rate: dropout before the decoder.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` for the layers' kernels.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        d_model: int = 128,
        n_layers: int = 4,
        layer: str = "s4d",
        d_state: int = 64,
        dropout: float = 0.1,
        prenorm: bool = False,
        norm: str = "layer",
        global_pool: str = "mean",
        l_output: int | None = None,
        vocab_size: int | None = None,
        init: str = "lin",
        bidirectional: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        ssm_lr: float | None = 0.001,
        l_max: int = 1024,
        channels: int = 2,
        lam: float = 0.003,
        smooth_window: int | None = 7,
        kernel_dropout: float = 0.1,
        kernel_lr: float | None = 1e-3,
        drop_rate: float = 0.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if int(n_layers) < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers!r}")
        if l_output is not None and int(l_output) < 1:
            raise ValueError(f"l_output must be a positive int or None, got {l_output!r}")
        if layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")
        self.num_classes = int(num_classes)
        self.in_chans = int(in_chans)
        self.d_model = self.num_features = self.head_hidden_size = int(d_model)
        self.global_pool = _pool_name(global_pool)
        self.l_output = None if l_output is None else int(l_output)
        self.vocab_size = None if vocab_size is None else int(vocab_size)
        self.prenorm = bool(prenorm)
        self.layer = layer
        self.grad_checkpointing = False

        self.encoder = nn.Embedding(self.vocab_size, d_model) if vocab_size else nn.Linear(in_chans, d_model)
        if layer == "s4d":

            def make() -> nn.Module:
                return S4D(
                    d_model,
                    d_state,
                    dropout=dropout,
                    transposed=True,
                    init=init,
                    bidirectional=bidirectional,
                    dt_min=dt_min,
                    dt_max=dt_max,
                    lr=ssm_lr,
                    backend=backend,
                )
        else:

            def make() -> nn.Module:
                return LongConv(
                    d_model,
                    l_max,
                    channels=channels,
                    bidirectional=bidirectional,
                    lam=lam,
                    smooth_window=smooth_window,
                    kernel_dropout=kernel_dropout,
                    kernel_lr=kernel_lr,
                    transposed=True,
                    dropout=dropout,
                    backend=backend,
                )

        self.s4_layers = nn.ModuleList(make() for _ in range(n_layers))
        self.norms = nn.ModuleList(_channel_norm(d_model, norm) for _ in range(n_layers))
        self.dropouts = nn.ModuleList(nn.Dropout1d(dropout) if dropout > 0 else nn.Identity() for _ in range(n_layers))
        self.head_drop = nn.Dropout(drop_rate)
        self.decoder = nn.Linear(d_model, num_classes) if num_classes > 0 else nn.Identity()

    # ------------------------------------------------------------------------------------------- timm contract

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The SSM parameters and long-conv kernels (they also carry ``_optim`` with weight decay 0)."""
        return {
            name
            for name, _ in self.named_parameters()
            if name.rsplit(".", 1)[-1] in ("log_dt", "log_A_real", "A_imag", "kernel")
        }

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"stem": r"^encoder", "blocks": r"^(?:s4_layers|norms|dropouts)\.(\d+)"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = bool(enable)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.decoder

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh decoder for ``num_classes`` outputs (0: none); ``global_pool`` changes the pooling too."""
        self.num_classes = int(num_classes)
        if global_pool is not None:
            self.global_pool = _pool_name(global_pool)
        self.decoder = nn.Linear(self.d_model, num_classes) if num_classes > 0 else nn.Identity()

    # ------------------------------------------------------------------------------------------------ forward

    def _embed(self, x: Tensor) -> Tensor:
        """Inputs to [B, L, d_model]."""
        return self.encoder(to_sequence(x, self.in_chans, self.vocab_size))

    def _block(self, index: int, x: Tensor, lengths: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        layer, norm, dropout = self.s4_layers[index], self.norms[index], self.dropouts[index]
        z = norm(x) if self.prenorm else x
        x = x + dropout(layer(z, lengths))
        return apply_mask(x if self.prenorm else norm(x), mask)

    def forward_features(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Unpooled features [B, L, d_model]; with ``lengths`` [B], zero at the padded positions."""
        x = self._embed(x)
        mask = padding_mask(x, lengths)
        x = apply_mask(x.transpose(1, 2), mask)  # [B, d_model, L]
        for index in range(len(self.s4_layers)):
            if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
                x = checkpoint(self._block, index, x, lengths, mask, use_reentrant=False)
            else:
                x = self._block(index, x, lengths, mask)
        return x.transpose(1, 2)

    def forward_head(self, x: Tensor, pre_logits: bool = False, lengths: Tensor | None = None) -> Tensor:
        """Pool [B, L, d_model] (mean / last position over the valid ones, or keep positions) and decode."""
        if self.global_pool in ("mean", "last"):
            x = pool_sequence(x, self.global_pool, lengths)
        elif self.l_output is not None:
            x = x[:, -self.l_output :]
        x = self.head_drop(x)
        return x if pre_logits else self.decoder(x)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """x: images, sequences or token ids (see the module docstring); lengths: None or [B] valid lengths."""
        return self.forward_head(self.forward_features(x, lengths), lengths=lengths)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "fixed_input_size": False,
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
        "first_conv": "encoder",
        "classifier": "decoder",
        "paper_ids": "arXiv:2206.11893",
        "origin_url": "https://github.com/state-spaces/s4",
        **kwargs,
    }


_LONGCONV = dict(paper_ids="arXiv:2302.06646", origin_url="https://github.com/HazyResearch/safari")
default_cfgs = generate_default_cfgs(
    {"s4d_t": _cfg(), "s4d_s": _cfg(), "longconv_t": _cfg(**_LONGCONV), "longconv_s": _cfg(**_LONGCONV)}
)  # no released weights


def _create_sequence_model(variant: str, pretrained: bool = False, **kwargs: Any) -> SequenceModel:
    if kwargs.get("features_only"):
        raise RuntimeError(f"{variant} has no feature pyramid: features_only is not supported")
    return build_model_with_cfg(SequenceModel, variant, pretrained, **kwargs)


@register_model
def s4d_t(pretrained: bool = False, **kwargs: Any) -> SequenceModel:
    """S4D-T: d_model 128, 4 post-norm layers, d_state 64 (state-spaces' example model for sCIFAR)."""
    return _create_sequence_model("s4d_t", pretrained, **dict(dict(d_model=128, n_layers=4, d_state=64), **kwargs))


@register_model
def s4d_s(pretrained: bool = False, **kwargs: Any) -> SequenceModel:
    """S4D-S: d_model 256, 6 layers, d_state 64 (the LRA size)."""
    return _create_sequence_model("s4d_s", pretrained, **dict(dict(d_model=256, n_layers=6, d_state=64), **kwargs))


@register_model
def longconv_t(pretrained: bool = False, **kwargs: Any) -> SequenceModel:
    """Long conv T: d_model 128, 4 post-norm layers of long convolutions (2 channels, l_max 1024)."""
    return _create_sequence_model(
        "longconv_t", pretrained, **dict(dict(d_model=128, n_layers=4, layer="longconv", l_max=1024), **kwargs)
    )


@register_model
def longconv_s(pretrained: bool = False, **kwargs: Any) -> SequenceModel:
    """Long conv S: d_model 256, 6 layers of long convolutions (2 channels, l_max 1024)."""
    return _create_sequence_model(
        "longconv_s", pretrained, **dict(dict(d_model=256, n_layers=6, layer="longconv", l_max=1024), **kwargs)
    )
