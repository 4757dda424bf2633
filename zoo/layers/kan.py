"""``KAN``: the group-rational MLP that replaces the ViT MLP in KAT (GR-KAN)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from zoo.kernels._backend import TRITON_DTYPES, resolve_backend
from zoo.kernels.norm_rational import layer_norm_group_rational
from zoo.layers.rational import GroupRational


class KAN(nn.Module):
    """act1 -> drop1 -> fc1 -> act2 -> drop2 -> norm -> fc2, with group-rational activations.

    ``act1`` acts on the input (``in_features`` channels) from the identity init, ``act2`` on the hidden
    features from ``act_init`` (swish in the released KAT models). Attribute names follow the official
    checkpoints (``fc1``, ``act1``, ``act2``, ``fc2``); the signature follows ``timm.layers.Mlp``, so
    ``partial(KAN, act_init=...)`` is a ``mlp_layer`` for timm's transformer blocks (their ``act_layer`` is not
    used: the activations are the group-rational units).

    Args:
        in_features: input channels (divisible by ``num_groups``).
        hidden_features: hidden channels (divisible by ``num_groups``); default ``in_features``.
        out_features: output channels; default ``in_features``.
        num_groups: channel groups of both rational activations.
        act_init: init of ``act2``: ``"swish"``, ``"gelu"`` or ``"identity"``.
        norm_layer: optional norm on the hidden features before ``fc2`` (none in KAT).
        bias: bias in ``fc1`` and ``fc2``.
        drop: dropout after each activation.
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` for the rational activations.
        act_layer: accepted for timm's ``mlp_layer`` interface and ignored.
        device, dtype: factory arguments for the linear layers (the rational coefficients stay float32).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        num_groups: int = 8,
        act_init: str = "swish",
        norm_layer: Callable[[int], nn.Module] | None = None,
        bias: bool = True,
        drop: float = 0.0,
        backend: str = "auto",
        act_layer: object = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        del act_layer  # timm's blocks pass their activation; KAN's activations are group-rational
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        for name, size in (("in_features", in_features), ("hidden_features", hidden_features)):
            if size % num_groups:
                raise ValueError(f"{name} ({size}) must be divisible by num_groups ({num_groups})")
        factory = dict(device=device, dtype=dtype)
        self.act1 = GroupRational(num_groups, init="identity", backend=backend).to(device=device)
        self.drop1 = nn.Dropout(drop)
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias, **factory)
        self.act2 = GroupRational(num_groups, init=act_init, backend=backend).to(device=device)
        self.drop2 = nn.Dropout(drop)
        self.norm = norm_layer(hidden_features) if norm_layer is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias, **factory)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop1(self.act1(x, out_dtype=_linear_input_dtype(x)))
        return self._after_act1(x)

    def forward_normed(self, x: Tensor, norm: nn.Module) -> Tensor:
        """``self(norm(x))``; a LayerNorm and ``act1`` run as one Triton op where ``act1`` runs Triton
        (:func:`zoo.kernels.norm_rational.layer_norm_group_rational`: the normalised activation never reaches memory,
        one launch instead of two each way). KAT's blocks call this for ``mlp(norm2(x))``."""
        if not _fusable(x, norm, self.act1):
            return self(norm(x))
        y = layer_norm_group_rational(
            x,
            norm.weight,
            norm.bias,
            self.act1.weight_numerator,
            self.act1.weight_denominator,
            norm.eps,
            _linear_input_dtype(x),
            backend=self.act1.backend,
        )
        return self._after_act1(self.drop1(y))

    def _after_act1(self, x: Tensor) -> Tensor:
        x = self.drop2(self.act2(self.fc1(x)))
        return self.fc2(self.norm(x))


def _fusable(x: Tensor, norm: nn.Module, act: GroupRational) -> bool:
    """Whether ``act(norm(x))`` can run as the fused Triton op: ``act`` would run Triton on ``x`` (CUDA, or the
    interpreter when asked for) and ``norm`` is an affine LayerNorm over the last dimension (timm's included)."""
    if isinstance(x, torch.fx.Proxy) or not isinstance(norm, nn.LayerNorm):
        return False
    if norm.weight is None or norm.bias is None or tuple(norm.normalized_shape) != (x.shape[-1],):
        return False
    return resolve_backend(act.backend, x, TRITON_DTYPES) == "triton"


def _linear_input_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype a linear layer computes ``x`` in: autocast's where it is on for ``x``'s device, else None (keep
    ``x``'s). KAN's act1 writes it itself (its float32 result rounded once, as fc1's cast would), which saves a
    pass over the activation and one over its gradient. None while FX traces (a proxy has no device)."""
    if isinstance(x, torch.fx.Proxy):
        return None
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
