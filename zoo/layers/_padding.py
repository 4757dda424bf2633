"""Padding of variable-length batches: sequences padded at the end, their valid lengths in a [B] tensor."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["channels_first", "check_lengths", "zero_padding"]


def check_lengths(lengths: Tensor | None, batch: int, who: str) -> None:
    """Raise ``ValueError`` unless ``lengths`` is None or an integer tensor of shape [B] = [``batch``].

    The values are not checked here (that would synchronise with the GPU in every layer): a length <= 0 masks the
    whole sequence, one >= L none of it."""
    if lengths is None:
        return
    if not isinstance(lengths, Tensor) or lengths.ndim != 1 or lengths.shape[0] != batch:
        shape = tuple(lengths.shape) if isinstance(lengths, Tensor) else type(lengths).__name__
        raise ValueError(
            f"{who} expects lengths as an integer tensor [B] = [{batch}] (valid positions per "
            f"sequence, padding at the end), got {shape}"
        )
    if lengths.is_floating_point() or lengths.is_complex():
        raise ValueError(f"{who} expects integer lengths [B], got {lengths.dtype}")


def zero_padding(u: Tensor, lengths: Tensor | None) -> Tensor:
    """``u`` [B, H, L] with the positions l >= lengths[b] set to zero (``u`` itself when ``lengths`` is None)."""
    if lengths is None:
        return u
    valid = torch.arange(u.shape[-1], device=u.device) < lengths.to(u.device)[:, None, None]
    return u * valid.to(u.dtype)


def channels_first(u: Tensor, d_model: int, transposed: bool, lengths: Tensor | None, who: str) -> Tensor:
    """A sequence layer's input as [B, H, L] with its padding zeroed: checks the layout (``[B, H, L]`` when
    ``transposed``, else ``[B, L, H]``), H = ``d_model``, L >= 1 and ``lengths``, naming ``who`` in the errors."""
    layout = "[B, H, L]" if transposed else "[B, L, H]"
    if u.ndim != 3:
        raise ValueError(f"{who} expects a 3-D input {layout} (transposed={transposed}), got shape {tuple(u.shape)}")
    if not transposed:
        u = u.transpose(-1, -2)
    if u.shape[1] != d_model:
        shape = tuple(u.shape if transposed else u.transpose(-1, -2).shape)
        raise ValueError(
            f"{who} expects {layout} with H = d_model = {d_model} (transposed={transposed}), got shape {shape}"
        )
    if u.shape[-1] == 0:
        raise ValueError(f"{who} got an empty sequence (L = 0)")
    check_lengths(lengths, u.shape[0], who)
    return zero_padding(u, lengths)
