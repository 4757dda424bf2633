"""Folding an eval-mode batch norm into the convolution or linear layer beside it: the deployed forms' arithmetic.

In eval mode a batch norm is a per-channel affine map, ``BN(x) = x * scale + shift`` with ``scale = weight /
sqrt(running_var + eps)`` and ``shift = bias - running_mean * scale`` (:func:`batch_norm_affine`). A layer
``y = W x + b`` (a convolution or a linear layer; W ``[C_out, C_in, ...]``) next to it absorbs it exactly:

* the norm after the layer, ``BN(W x + b)``: W' = scale[o] W[o], b' = scale b + shift (:func:`fold_after`);
* the norm before the layer, ``W BN(x) + b``: W' = W[:, i] scale[i], b' = b + sum over i and the taps of
  W[o, i, ...] shift[i] (:func:`fold_before`). Exact only where every tap of the layer reads the norm's output:
  a convolution without zero padding (padded taps would read 0, not ``shift``).

Used by UniRepLKNet's and InceptionNeXt's ``reparameterize`` (zoo/models/unireplknet.py,
zoo/models/inceptionnext.py).
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["batch_norm_affine", "fold_after", "fold_before"]


def batch_norm_affine(
    running_mean: Tensor, running_var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor]:
    """(scale, shift) ``[C]`` of an eval-mode batch norm, ``BN(x) = x * scale + shift`` per channel, in the dtype
    of ``running_var`` (a norm without affine terms: weight 1, bias 0)."""
    scale = (running_var + eps).rsqrt()
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def fold_after(weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """(W', b') of ``x -> (W x + b) * scale + shift``: the per-channel affine map of a norm after the layer
    (``scale``, ``shift`` ``[C_out]``); ``bias`` None is 0."""
    folded_bias = shift if bias is None else bias * scale + shift
    return weight * scale.reshape(-1, *([1] * (weight.dim() - 1))), folded_bias


def fold_before(weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor) -> tuple[Tensor, Tensor]:
    """(W', b') of ``x -> W (x * scale + shift) + b``: the per-channel affine map of a norm before the layer
    (``scale``, ``shift`` ``[C_in]``; W ``[C_out, C_in, ...]``, not grouped); ``bias`` None is 0. Exact for a
    convolution only without zero padding (module docstring)."""
    if weight.shape[1] != scale.numel():
        raise ValueError(
            f"fold_before needs an ungrouped layer with one input channel per norm channel: weight {list(weight.shape)}"
            f", {scale.numel()} norm channels"
        )
    per_input = (1, -1, *([1] * (weight.dim() - 2)))
    shifted = (weight * shift.reshape(per_input)).flatten(1).sum(1)
    folded_bias = shifted if bias is None else bias + shifted
    return weight * scale.reshape(per_input), folded_bias
