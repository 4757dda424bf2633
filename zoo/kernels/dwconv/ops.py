"""The depthwise convolution's Triton entry points and registered ops.

``dwconv2d_forward`` / ``dwconv2d_backward`` validate their inputs, allocate the outputs in the memory format of
``x`` and choose the kernels per call (:func:`_path`): the tensor-core implicit GEMM (``_igemm``) for kernels of 13
and more at stride 1 without dilation (all three passes); the register-blocked direct kernel (``_direct``) for the
forward and input gradient of k x k, 1 x k and k x 1 kernels with k <= 11 at stride 1 (any dilation); the generic
kernel (``_generic``) for the rest (any kernel size, stride, dilation, layout); the weight gradient by ``_wgrad``
wherever ``_igemm`` does not take it. ``zoo::dwconv2d`` and ``zoo::inception_dwconv2d`` are
registered with ``torch.library`` (fake tensors, autograd) for ``torch.compile``; eager calls go through
:class:`torch.autograd.Function` s that call the same launchers with fewer dispatches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from zoo.kernels._backend import (
    TRITON_DTYPES,
    check_float_tensor,
    check_triton_device,
    device_guard,
    dispatch_triton,
    once_differentiable,
    requested_backend,
    resolve_backend,
    triton_op,
)
from zoo.kernels.dwconv import _direct, _generic, _igemm, _wgrad
from zoo.kernels.dwconv._checks import (
    check_dwconv2d_inputs,
    check_inception_inputs,
    output_size,
    pair,
    same_padding,
)
from zoo.kernels.dwconv._common import check_grad_output, check_triton_dtype, empty_like_format, layout_of
from zoo.kernels.dwconv._cpu import dwconv2d_cpu
from zoo.kernels.dwconv._inception import (
    inception_dwconv2d_backward,
    inception_dwconv2d_forward,
    launch_inception_backward,
)
from zoo.kernels.dwconv.reference import dwconv2d_reference, inception_dwconv2d_reference


def _output_shape(x: Tensor, kernel, stride, dilation) -> tuple[int, int, int, int]:
    n, channels, h, w = x.shape
    return (
        n,
        channels,
        output_size(h, kernel[0], stride[0], dilation[0]),
        output_size(w, kernel[1], stride[1], dilation[1]),
    )


def _path(x: Tensor, kernel, stride, dilation):
    """The module whose kernels compute this convolution's forward and input gradient: ``_igemm``, ``_direct`` or
    ``_generic`` (the first that supports it)."""
    layout = layout_of(x)
    if _igemm.supports(kernel, stride, dilation, layout, x.dtype):
        return _igemm
    if _direct.supports(kernel, stride, dilation, layout):
        return _direct
    return _generic


def dwconv2d_forward(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
) -> Tensor:
    """Triton forward of :func:`dwconv2d`; the output has the dtype and memory format of ``x``."""
    kernel, stride, dilation = _check_triton_inputs(x, weight, bias, stride, dilation)
    return _launch_forward(x, weight, bias, kernel, stride, dilation)


def _check_triton_inputs(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: int | Sequence[int], dilation: int | Sequence[int]
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """:func:`check_dwconv2d_inputs` and the Triton kernels' dtypes and device; ((kh, kw), stride, dilation)."""
    kernel, stride, dilation = check_dwconv2d_inputs(x, weight, bias, stride, dilation)
    check_triton_dtype(x=x, weight=weight, bias=bias)
    check_triton_device(x.device)
    return kernel, stride, dilation


def _launch_forward(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """:func:`dwconv2d_forward` on validated inputs (the pairs :func:`_check_triton_inputs` returns)."""
    y = empty_like_format(x, _output_shape(x, kernel, stride, dilation))
    if y.numel():
        bias = None if bias is None else bias.contiguous()  # every path reads the bias as b_ptr + c
        with device_guard(x.device):
            path = _path(x, kernel, stride, dilation)
            if path is _generic:  # reads the weight in place, any strides
                _generic.generic_conv(x, weight, bias, y, kernel, stride, dilation, transposed=False)
            else:
                path.forward(x, weight.contiguous(), bias, y, stride, dilation)
    return y


def dwconv2d_backward(
    grad_output: Tensor,
    x: Tensor,
    weight: Tensor,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    *,
    input_grad: bool = True,
    weight_grad: bool = True,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Triton backward of :func:`dwconv2d`: (dx, d weight, d bias).

    dx has the dtype and memory format of ``x``; the weight and bias gradients are reduced in float32 and
    returned in the dtype of ``weight`` (the bias gradient is computed whether or not there is a bias).
    ``input_grad`` / ``weight_grad`` False: that launch is skipped and its gradients are None."""
    kernel, stride, dilation = _check_triton_inputs(x, weight, None, stride, dilation)
    check_grad_output(grad_output, _output_shape(x, kernel, stride, dilation), x)
    return _launch_backward(grad_output, x, weight, kernel, stride, dilation, input_grad, weight_grad)


def _launch_backward(
    grad_output: Tensor,
    x: Tensor,
    weight: Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    input_grad: bool = True,
    weight_grad: bool = True,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """:func:`dwconv2d_backward` on validated inputs: also for the eager autograd Function, whose forward validated
    them (autograd passes a gradient of the output's shape, dtype and device; host time counts). ``input_grad`` /
    ``weight_grad`` False: that launch is skipped and its gradients are None (dx; d weight and d bias)."""
    dx = empty_like_format(x, x.shape) if input_grad else None
    dw = db = None
    if grad_output.numel() == 0:
        if weight_grad:
            dw, db = torch.zeros_like(weight), weight.new_zeros(x.shape[1])
        return None if dx is None else dx.zero_(), dw, db
    weight = weight.contiguous()  # the specialised kernels index [C, 1, kh, kw] directly (a no-op for parameters)
    with device_guard(x.device):
        path = _path(x, kernel, stride, dilation)
        if dx is not None and path is _generic:
            _generic.generic_conv(grad_output, weight, None, dx, kernel, stride, dilation, transposed=True)
        elif dx is not None:
            path.input_grad(grad_output, weight, dx, stride, dilation)
        if weight_grad:
            launch = _igemm.weight_grad if path is _igemm else _wgrad.weight_grad
            dw, db = launch(x, grad_output, weight, stride, dilation)
    return dx, dw, db


def dwconv2d_grads(
    grad_output: Tensor,
    x: Tensor,
    weight: Tensor,
    dilation: int | Sequence[int] = 1,
    backend: str = "auto",
    *,
    input_grad: bool = True,
    weight_grad: bool = True,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The gradients of ``dwconv2d(x, weight, bias, stride=1, dilation=dilation)`` for the output gradient
    ``grad_output``, without autograd, on the chosen backend: for backward passes built from several
    convolutions' gradients (zoo/layers/dilated_reparam.py).

    Returns:
        ``(dx, d weight, d bias)``: dx in the dtype and memory format of ``x``, the others reduced in float32 and
        returned in the dtype of ``weight``; ``input_grad=False`` gives None for dx, ``weight_grad=False`` None for
        the other two (their launches are skipped; under ``torch.compile`` the registered backward computes all
        three). ``grad_output`` is cast to the dtype of ``x``.
    """
    grad_output = grad_output.to(x.dtype)
    if resolve_backend(requested_backend(backend), x, TRITON_DTYPES) == "triton":
        if torch.compiler.is_compiling():
            dx, dw, db = torch.ops.zoo.dwconv2d_backward(
                grad_output, x, weight, [1, 1], list(pair(dilation, "dilation"))
            )
        else:
            return dwconv2d_backward(
                grad_output, x, weight, 1, dilation, input_grad=input_grad, weight_grad=weight_grad
            )
    else:
        kernel, stride, dilation = check_dwconv2d_inputs(x, weight, None, 1, dilation)
        geometry = (list(stride), list(same_padding(kernel, dilation)), list(dilation), False, [0, 0], x.shape[1])
        dx = dw = db = None
        if input_grad:
            dx = torch.ops.aten.convolution_backward(
                grad_output, x, weight.to(x.dtype), None, *geometry, [True, False, False]
            )[0]
        if weight_grad:  # reduced in float32 (ATen's 2-byte weight gradient is rounded to 2 bytes), as the kernels
            acc = torch.promote_types(x.dtype, torch.float32)
            _, dw, db = torch.ops.aten.convolution_backward(
                grad_output.to(acc), x.to(acc), weight.to(acc), [x.shape[1]], *geometry, [False, True, True]
            )
            dw, db = dw.to(weight.dtype), db.to(weight.dtype)
    return dx, dw, db


# ----------------------------------------------------------------------------------------------------------------
# The registered ops
# ----------------------------------------------------------------------------------------------------------------


@triton_op("zoo::dwconv2d")
def _dwconv2d_op(x: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], dilation: list[int]) -> Tensor:
    return dwconv2d_forward(x, weight, bias, stride, dilation)


@_dwconv2d_op.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None, stride: list[int], dilation: list[int]) -> Tensor:
    kernel, stride, dilation = check_dwconv2d_inputs(x, weight, bias, stride, dilation)
    return empty_like_format(x, _output_shape(x, kernel, stride, dilation))


@triton_op("zoo::dwconv2d_backward")
def _dwconv2d_backward_op(
    grad_output: Tensor, x: Tensor, weight: Tensor, stride: list[int], dilation: list[int]
) -> tuple[Tensor, Tensor, Tensor]:
    return dwconv2d_backward(grad_output, x, weight, stride, dilation)


@_dwconv2d_backward_op.register_fake
def _(grad_output: Tensor, x: Tensor, weight: Tensor, stride: list[int], dilation: list[int]):
    return empty_like_format(x, x.shape), torch.empty_like(weight), weight.new_empty(weight.shape[0])


def _dwconv2d_setup_context(ctx, inputs, output) -> None:
    x, weight, bias, stride, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias, ctx.stride, ctx.dilation = bias is not None, stride, dilation


def _dwconv2d_autograd_backward(ctx, grad_output: Tensor):
    x, weight = ctx.saved_tensors
    dx, dw, db = torch.ops.zoo.dwconv2d_backward(grad_output, x, weight, ctx.stride, ctx.dilation)
    return dx, dw, db if ctx.has_bias else None, None, None


_dwconv2d_op.register_autograd(_dwconv2d_autograd_backward, setup_context=_dwconv2d_setup_context)


@triton_op("zoo::inception_dwconv2d")
def _inception_op(
    x: Tensor,
    weight_hw: Tensor,
    bias_hw: Tensor | None,
    weight_w: Tensor,
    bias_w: Tensor | None,
    weight_h: Tensor,
    bias_h: Tensor | None,
) -> Tensor:
    return inception_dwconv2d_forward(x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h)


@_inception_op.register_fake
def _(x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h) -> Tensor:
    check_inception_inputs(x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h)
    return empty_like_format(x, x.shape)


@triton_op("zoo::inception_dwconv2d_backward")
def _inception_backward_op(
    grad_output: Tensor, x: Tensor, weight_hw: Tensor, weight_w: Tensor, weight_h: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return inception_dwconv2d_backward(grad_output, x, weight_hw, weight_w, weight_h)


@_inception_backward_op.register_fake
def _(grad_output, x, weight_hw, weight_w, weight_h):
    grads = []
    for weight in (weight_hw, weight_w, weight_h):
        grads += [torch.empty_like(weight), weight.new_empty(weight.shape[0])]
    return (empty_like_format(x, x.shape), *grads)


def _inception_setup_context(ctx, inputs, output) -> None:
    x, weight_hw, bias_hw, weight_w, _bias_w, weight_h, _bias_h = inputs
    ctx.save_for_backward(x, weight_hw, weight_w, weight_h)
    ctx.has_bias = bias_hw is not None


def _inception_autograd_backward(ctx, grad_output: Tensor):
    grads = torch.ops.zoo.inception_dwconv2d_backward(grad_output, *ctx.saved_tensors)
    dx, dw_hw, db_hw, dw_w, db_w, dw_h, db_h = grads
    if not ctx.has_bias:
        db_hw = db_w = db_h = None
    return dx, dw_hw, db_hw, dw_w, db_w, dw_h, db_h


_inception_op.register_autograd(_inception_autograd_backward, setup_context=_inception_setup_context)


class _DwConv2dFunction(torch.autograd.Function):
    """Eager autograd of the Triton path: the launchers are called directly (fewer dispatches per call);
    ``torch.compile`` traces the registered op ``zoo::dwconv2d``; both run the same launchers."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, dilation):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.geometry = _check_triton_inputs(x, weight, bias, stride, dilation)  # (kernel, stride, dilation)
        return _launch_forward(x, weight, bias, *ctx.geometry)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        dx, dw, db = _launch_backward(grad_output, x, weight, *ctx.geometry)
        return dx, dw, db if ctx.has_bias else None, None, None


class _InceptionFunction(torch.autograd.Function):
    """Eager autograd of the fused mixer (see :class:`_DwConv2dFunction`)."""

    @staticmethod
    def forward(ctx, x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h):
        ctx.save_for_backward(x, weight_hw, weight_w, weight_h)
        ctx.has_bias = bias_hw is not None
        return inception_dwconv2d_forward(x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        dx, dw_hw, db_hw, dw_w, db_w, dw_h, db_h = launch_inception_backward(grad_output, *ctx.saved_tensors)
        if not ctx.has_bias:
            db_hw = db_w = db_h = None
        return dx, dw_hw, db_hw, dw_w, db_w, dw_h, db_h


def autocast_input(x: Tensor) -> Tensor:
    """Under autocast, the activation goes to the autocast dtype (as for ``F.conv2d``); the weights stay in their
    dtype (the kernels read them and accumulate in float32), so their gradients keep it too."""
    device_type = x.device.type
    if device_type in ("cuda", "cpu") and x.is_floating_point() and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        if x.dtype != dtype and x.dtype != torch.float64:
            return x.to(dtype)
    return x


def dwconv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
    backend: str = "auto",
) -> Tensor:
    """Depthwise 2-D convolution with zero "same" padding (see the module docstring).

    Args:
        x: ``[N, C, H, W]`` float16/bfloat16/float32 (float64 on the reference backend), NCHW or channels_last or
            any strides; the output has the memory format of ``x``.
        weight: ``[C, 1, kh, kw]``, odd kh and kw (square or band kernels); bias: ``[C]`` or None.
        stride: 1 or 2 per axis; dilation: >= 1 per axis.
        backend: ``"auto"``, ``"triton"`` or ``"torch"`` (see :mod:`zoo.kernels._backend`); ``"auto"`` on CPU
            tensors runs :func:`zoo.kernels.dwconv._cpu.dwconv2d_cpu` (the same convolution, in the fastest
            measured formulation).

    Returns:
        ``[N, C, H_out, W_out]`` in the dtype of ``x`` (the autocast dtype under autocast); differentiable in x,
        weight and bias.
    """
    check_float_tensor("x", x)
    x = autocast_input(x)
    # the CPU path's test first, on the requested name: most CPU calls run the reference convolution anyway, and
    # the dispatch's own cost (about 1 us) is a few percent of a small one
    choice = requested_backend(backend)
    if choice == "auto" and x.device.type == "cpu" and not torch.compiler.is_compiling():
        return dwconv2d_cpu(x, weight, bias, stride, dilation)  # zoo/kernels/dwconv/_cpu.py
    if resolve_backend(choice, x, TRITON_DTYPES) == "triton":  # the launchers validate their inputs
        stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
        return dispatch_triton(
            x,
            weight,
            bias,
            list(stride),
            list(dilation),
            op=torch.ops.zoo.dwconv2d,
            function=_DwConv2dFunction,
            launcher=dwconv2d_forward,
        )
    return dwconv2d_reference(x, weight, bias, stride, dilation)


def inception_dwconv2d(
    x: Tensor,
    weight_hw: Tensor,
    bias_hw: Tensor | None,
    weight_w: Tensor,
    bias_w: Tensor | None,
    weight_h: Tensor,
    bias_h: Tensor | None,
    backend: str = "auto",
) -> Tensor:
    """InceptionNeXt's token mixer: identity on the first C - 3 gc channels, then a square, a 1 x band and a
    band x 1 depthwise convolution on gc channels each (gc = ``weight_hw.shape[0]``), with "same" padding.

    Args:
        x: ``[N, C, H, W]``, NCHW or channels_last (the output keeps the memory format).
        weight_hw ``[gc, 1, k, k]``, weight_w ``[gc, 1, 1, band]``, weight_h ``[gc, 1, band, 1]``; odd k and band.
        bias_hw, bias_w, bias_h: ``[gc]`` each, or all None.
        backend: ``"triton"`` runs one fused kernel (one more for each of the input and weight gradients);
            ``"torch"`` the split / conv / cat reference (also what ``"auto"`` runs on CPU tensors: see
            :mod:`zoo.kernels.dwconv._cpu` for the formulations measured against it).
    """
    check_float_tensor("x", x)
    x = autocast_input(x)
    args = (x, weight_hw, bias_hw, weight_w, bias_w, weight_h, bias_h)
    if resolve_backend(backend, x, TRITON_DTYPES) == "triton":  # the launchers validate their inputs
        return dispatch_triton(
            *args, op=torch.ops.zoo.inception_dwconv2d, function=_InceptionFunction, launcher=inception_dwconv2d_forward
        )
    return inception_dwconv2d_reference(*args)


# ----------------------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (zoo/kernels/_aot.py; tests/kernels/test_compile_targets.py)
# ----------------------------------------------------------------------------------------------------------------
