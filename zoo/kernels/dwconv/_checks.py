"""Input checks of the depthwise convolution and the InceptionNeXt mixer (shared by the references and the
launchers), and the size arithmetic of "same" padding."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from zoo.kernels._backend import check_float_tensor


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def _check_weight(name: str, weight: Tensor, channels: int, shape: tuple[int, int] | None = None) -> tuple[int, int]:
    """Check a depthwise weight ``[channels, 1, kh, kw]`` with odd kernel sizes; return (kh, kw)."""
    check_float_tensor(name, weight)
    expected = f"[{channels}, 1, kh, kw]" if shape is None else f"[{channels}, 1, {shape[0]}, {shape[1]}]"
    if weight.dim() != 4 or weight.shape[0] != channels or weight.shape[1] != 1:
        raise ValueError(
            f"{name} must have shape {expected} (depthwise: one filter per channel), got {list(weight.shape)}"
        )
    kh, kw = weight.shape[2], weight.shape[3]
    if shape is not None and (kh, kw) != shape:
        raise ValueError(f"{name} must have shape {expected}, got {list(weight.shape)}")
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(
            f"{name}: 'same' padding needs odd kernel sizes, got {kh} x {kw} (weight {list(weight.shape)})"
        )
    return kh, kw


def _check_bias(name: str, bias: Tensor | None, channels: int) -> None:
    if bias is None:
        return
    check_float_tensor(name, bias)
    if bias.shape != (channels,):
        raise ValueError(f"{name} must have shape [{channels}], got {list(bias.shape)}")


def _check_same_device(x: Tensor, **others: Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} must be on the device of x ({x.device}), got {t.device}")


def check_dwconv2d_inputs(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: int | Sequence[int], dilation: int | Sequence[int]
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Validate the inputs of :func:`dwconv2d`; return ((kh, kw), stride, dilation) as pairs, the dilation as
    :func:`tap_dilation` gives it."""
    check_float_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor [N, C, H, W] (any memory format), got shape {list(x.shape)}")
    channels = x.shape[1]
    kernel = _check_weight("weight", weight, channels)
    _check_bias("bias", bias, channels)
    _check_same_device(x, weight=weight, bias=bias)
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    if any(s not in (1, 2) for s in stride):
        raise ValueError(f"stride must be 1 or 2 per axis, got {stride}")
    if any(d < 1 for d in dilation):
        raise ValueError(f"dilation must be >= 1 per axis, got {dilation}")
    return kernel, stride, tap_dilation(kernel, dilation)


def tap_dilation(kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """The dilation with 1 along an axis of one tap (k x 1 and 1 x k kernels), where it changes nothing (no
    padding, the same output): such a call takes the kernels of an undilated axis (unmasked column tiles)."""
    return tuple(1 if k == 1 else d for k, d in zip(kernel, dilation, strict=True))


def same_padding(kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """Zero padding per axis that keeps the size at stride 1: d (k - 1) / 2 (k odd)."""
    return dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2


def output_size(size: int, kernel: int, stride: int, dilation: int) -> int:
    padding = dilation * (kernel - 1) // 2
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def check_inception_inputs(
    x: Tensor,
    weight_hw: Tensor,
    bias_hw: Tensor | None,
    weight_w: Tensor,
    bias_w: Tensor | None,
    weight_h: Tensor,
    bias_h: Tensor | None,
) -> tuple[int, int, int]:
    """Validate the inputs of :func:`inception_dwconv2d`; return (branch channels gc, square size, band size)."""
    check_float_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor [N, C, H, W] (any memory format), got shape {list(x.shape)}")
    check_float_tensor("weight_hw", weight_hw)
    if weight_hw.dim() != 4:
        raise ValueError(f"weight_hw must have shape [gc, 1, k, k], got {list(weight_hw.shape)}")
    gc = weight_hw.shape[0]
    square, _ = _check_weight("weight_hw", weight_hw, gc)
    if weight_hw.shape[3] != square:
        raise ValueError(f"weight_hw must be square [gc, 1, k, k], got {list(weight_hw.shape)}")
    check_float_tensor("weight_w", weight_w)
    band = weight_w.shape[3] if weight_w.dim() == 4 else -1
    _check_weight("weight_w", weight_w, gc, (1, band))
    _check_weight("weight_h", weight_h, gc, (band, 1))
    biases = {"bias_hw": bias_hw, "bias_w": bias_w, "bias_h": bias_h}
    for name, bias in biases.items():
        _check_bias(name, bias, gc)
    if len({b is None for b in biases.values()}) > 1:
        raise ValueError("bias_hw, bias_w and bias_h must all be tensors or all be None")
    if 3 * gc > x.shape[1] or gc == 0:
        raise ValueError(
            f"x has {x.shape[1]} channels (shape {list(x.shape)}); the three branches take 3 x gc = {3 * gc} of them "
            f"(gc = weight_hw.shape[0]): need 0 < 3 gc <= C"
        )
    _check_same_device(x, weight_hw=weight_hw, weight_w=weight_w, weight_h=weight_h, **biases)
    return gc, square, band


# ----------------------------------------------------------------------------------------------------------------
# 1. References
# ----------------------------------------------------------------------------------------------------------------
