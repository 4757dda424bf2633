"""zoo::dwconv2d and zoo::inception_dwconv2d: the Triton kernels (interpreter on CPU, compiled on GPU) against
the PyTorch references, in float64 as the ground truth."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import zoo.kernels._backend as backend_module
from tests.helpers import DEVICE, assert_close, assert_relative_error, in_layout
from zoo.kernels.dwconv import (
    dwconv2d,
    dwconv2d_backward,
    dwconv2d_forward,
    dwconv2d_grads,
    dwconv2d_reference,
    inception_dwconv2d,
    inception_dwconv2d_reference,
    ops,
)
from zoo.kernels.dwconv._checks import same_padding, tap_dilation
from zoo.kernels.dwconv._common import needs_int64

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LAYOUTS = ["nchw", "channels_last", "strided"]

# (x shape, kernel (kh, kw), stride, dilation): none of the sizes is a multiple of the interpreter's tiles
# (16 positions x 4 channels, 4 taps x 8 positions); square, band and rectangular kernels; stride 2 on odd maps;
# dilation; kernels larger than the map (zeros outside keep their meaning).
CONV_CASES = [
    ((2, 5, 7, 9), (3, 3), 1, 1),
    ((1, 6, 5, 6), (5, 3), 2, 1),
    ((2, 3, 9, 8), (3, 5), 1, 2),
    ((1, 4, 3, 4), (7, 7), 1, 1),
    ((1, 7, 6, 5), (1, 11), (2, 1), 1),
    ((2, 3, 11, 4), (13, 1), 1, (2, 1)),
]


def _grads(fn, inputs, dy):
    """fn(*leaves) and the gradient of <fn, dy> with respect to each tensor input (None where the input is None)."""
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in inputs]
    y = fn(*leaves)
    y.backward(dy)
    return y.detach(), [None if t is None else t.grad for t in leaves]


def _check(y, grads, y64, grads64, dtype):
    assert_close(y, y64, dtype, scale=float(y64.abs().max().clamp_min(1.0)))
    assert_close(grads[0], grads64[0], dtype, scale=float(grads64[0].abs().max().clamp_min(1.0)))
    bound = 1e-5 if dtype == torch.float32 else 1e-2  # reductions of dtype products, summed in fp32
    for g, g64 in zip(grads[1:], grads64[1:], strict=True):
        assert (g is None) == (g64 is None)
        if g is not None:  # sums of O(1) products (randn inputs): a bias gradient over a few positions can cancel
            assert_relative_error(g, g64, bound, floor=1.0)


# ---------------------------------------------------------------------------------------------------- dwconv2d


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,kernel,stride,dilation", CONV_CASES, ids=str)
def test_dwconv2d_matches_float64_reference(shape, kernel, stride, dilation, dtype, layout):
    torch.manual_seed(0)
    x = in_layout(torch.randn(shape, device=DEVICE).to(dtype), layout)
    weight = torch.randn(shape[1], 1, *kernel, device=DEVICE).to(dtype)
    bias = torch.randn(shape[1], device=DEVICE).to(dtype)
    y64 = dwconv2d_reference(x.double(), weight.double(), bias.double(), stride, dilation)
    dy = torch.randn(y64.shape, device=DEVICE).to(dtype)

    def conv(backend):
        return lambda x, w, b: dwconv2d(x, w, b, stride, dilation, backend=backend)

    y, grads = _grads(conv("triton"), (x, weight, bias), dy)
    y64, grads64 = _grads(conv("torch"), (x.double(), weight.double(), bias.double()), dy.double())
    assert y.dtype == dtype and y.shape == y64.shape
    assert all(g.dtype == dtype for g in grads)
    if layout != "strided":  # the output and dx keep the memory format of x
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        assert y.is_contiguous(memory_format=fmt) and grads[0].is_contiguous(memory_format=fmt)
    _check(y, grads, y64, grads64, dtype)


@pytest.mark.parametrize(
    "kernel,stride,path",
    [((13, 13), 1, "_igemm"), ((3, 3), 1, "_direct"), ((3, 5), 2, "_generic")],
    ids=["igemm", "direct", "generic"],
)
def test_dwconv2d_non_contiguous_weight_and_bias_on_every_path(kernel, stride, path):
    """Weight and bias as strided views (every other element of a larger tensor) through each kernel family."""
    torch.manual_seed(2)
    x = torch.randn(1, 3, 6, 7, device=DEVICE)
    assert ops._path(x, kernel, (stride, stride), (1, 1)).__name__.endswith(path)
    wide_weight = torch.randn(3, 1, kernel[0], 2 * kernel[1], device=DEVICE)
    wide_bias = torch.randn(6, device=DEVICE)

    def conv(backend):
        def run(x, wide_weight, wide_bias):  # the views are taken here: _grads' leaves are contiguous copies
            weight, bias = wide_weight[..., ::2], wide_bias[::2]
            assert not weight.is_contiguous() and not bias.is_contiguous()
            return dwconv2d(x, weight, bias, stride, backend=backend)

        return run

    dy = torch.randn(dwconv2d_reference(x, wide_weight[..., ::2], None, stride).shape, device=DEVICE)
    y, grads = _grads(conv("triton"), (x, wide_weight, wide_bias), dy)
    y64, grads64 = _grads(conv("torch"), (x.double(), wide_weight.double(), wide_bias.double()), dy.double())
    _check(y, grads, y64, grads64, torch.float32)


def test_dwconv2d_large_kernel_on_a_small_map():
    """K = 31 (the largest kernel of the issue) on a 4 x 5 map: every tap but the centre ones reads padding."""
    torch.manual_seed(1)
    x = torch.randn(1, 3, 4, 5, device=DEVICE)
    weight, bias = torch.randn(3, 1, 31, 31, device=DEVICE), torch.randn(3, device=DEVICE)
    dy = torch.randn(1, 3, 4, 5, device=DEVICE)
    y, grads = _grads(lambda *a: dwconv2d(*a, backend="triton"), (x, weight, bias), dy)
    y64, grads64 = _grads(
        lambda *a: dwconv2d(*a, backend="torch"), (x.double(), weight.double(), bias.double()), dy.double()
    )
    _check(y, grads, y64, grads64, torch.float32)
    assert torch.count_nonzero(grads[1][:, :, :12]) == 0  # taps that never meet the map get zero gradient


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_dwconv2d_equals_nn_conv2d_without_bias(backend):
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(6, 6, (5, 3), stride=2, padding=(2, 1), groups=6, bias=False).to(DEVICE)
    x = torch.randn(2, 6, 9, 7, device=DEVICE)
    y = dwconv2d(x, conv.weight, None, stride=2, backend=backend)
    assert_close(y, conv(x), torch.float32)
    y.sum().backward()
    assert conv.weight.grad is not None


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dwconv2d_grads_are_the_autograd_gradients(backend, dtype):
    """``dwconv2d_grads`` (the three gradients without autograd, zoo/layers/dilated_reparam.py) against autograd
    through the float64 reference: dx in the dtype and layout of x, the weight and bias gradients reduced in
    float32 and returned in the weight's dtype on both backends; the gradients not asked for are None."""
    x = in_layout(torch.randn(2, 5, 7, 6), "channels_last").to(DEVICE, dtype)
    weight = torch.randn(5, 1, 5, 5, device=DEVICE)
    dy = torch.randn(2, 5, 7, 6, device=DEVICE).to(dtype)
    _, grads64 = _grads(
        lambda x, w, b: dwconv2d_reference(x, w, b, dilation=2),
        (x.double(), weight.double(), weight[:, 0, 0, 0].double()),
        dy.double(),
    )
    dx, dw, db = dwconv2d_grads(dy, x, weight, dilation=2, backend=backend)
    assert dx.dtype == dtype and dx.is_contiguous(memory_format=torch.channels_last)
    assert dw.dtype == db.dtype == torch.float32
    _check(torch.zeros(1), [dx, dw, db], torch.zeros(1), grads64, dtype)
    only_dx = dwconv2d_grads(dy, x, weight, dilation=2, backend=backend, weight_grad=False)
    only_dw = dwconv2d_grads(dy, x, weight, dilation=2, backend=backend, input_grad=False)
    assert only_dx[1] is None and only_dx[2] is None and only_dw[0] is None
    torch.testing.assert_close(only_dx[0], dx)
    torch.testing.assert_close(only_dw[1], dw)
    torch.testing.assert_close(only_dw[2], db)
    # traced by torch.compile (the registered backward on the Triton backend; its traced kernels need a GPU, so
    # on the interpreter the graph runs on aot_eager)
    compiler = "aot_eager" if backend == "triton" and DEVICE.type == "cpu" else "inductor"
    traced = torch.compile(
        lambda dy, x, weight: dwconv2d_grads(dy, x, weight, dilation=2, backend=backend),
        fullgraph=True,
        backend=compiler,
    )
    for value, expected in zip(traced(dy, x, weight), (dx, dw, db), strict=True):
        assert_close(value, expected, value.dtype, scale=float(expected.abs().max().clamp_min(1.0)))


def test_dwconv2d_empty_batch():
    x = torch.randn(0, 4, 5, 5, device=DEVICE, requires_grad=True)
    weight = torch.randn(4, 1, 3, 3, device=DEVICE, requires_grad=True)
    bias = torch.randn(4, device=DEVICE, requires_grad=True)
    y = dwconv2d(x, weight, bias, backend="triton")
    assert y.shape == (0, 4, 5, 5)
    y.sum().backward()
    assert torch.count_nonzero(weight.grad) == 0 and torch.count_nonzero(bias.grad) == 0


def test_64_bit_offsets_only_where_an_offset_reaches_2_to_the_31():
    """needs_int64 answers from the strides' reach, not the storage: meta tensors, nothing allocated."""
    assert not needs_int64(torch.empty(3, 5), torch.empty(0, 7))
    assert needs_int64(torch.empty(3, 5), torch.empty(2, 2**30 + 1, device="meta"))  # reach 2^31 + 1
    assert not needs_int64(torch.empty(2, 2**30 - 1, device="meta"))  # reach 2^31 - 3
    huge = torch.empty(2**32, device="meta")
    assert not needs_int64(huge[2**31 : 2**31 + 10])  # a small view of a large storage: reach 9
    assert needs_int64(huge.as_strided((2, 3), (2**31, 1)))
    assert not needs_int64(torch.empty(1).expand(2**31, 4))  # stride 0: every element is the same one


# ------------------------------------------------------------------------------------------ inception mixer

# (x shape, gc, square kernel, band): timm's tiny-style split (identity 7 of 13 channels), the atto split
# (ratio 0.25, band 9), no identity channels at all (C = 3 gc), band 5 on a map narrower than the band.
MIXER_CASES = [
    ((2, 13, 6, 7), 2, 3, 11),
    ((1, 16, 5, 9), 4, 3, 9),
    ((2, 9, 7, 6), 3, 3, 5),
    ((1, 10, 3, 4), 1, 5, 7),
]


def _mixer_inputs(shape, gc, square, band, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    params = [
        torch.randn(gc, 1, square, square, generator=gen),
        torch.randn(gc, generator=gen),
        torch.randn(gc, 1, 1, band, generator=gen),
        torch.randn(gc, generator=gen),
        torch.randn(gc, 1, band, 1, generator=gen),
        torch.randn(gc, generator=gen),
    ]
    return x.to(DEVICE, dtype), [p.to(DEVICE, dtype) for p in params]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,gc,square,band", MIXER_CASES, ids=str)
def test_inception_mixer_matches_float64_reference(shape, gc, square, band, dtype, layout):
    x, params = _mixer_inputs(shape, gc, square, band, dtype)
    x = in_layout(x, layout)
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(7)).to(DEVICE, dtype)
    y, grads = _grads(lambda *a: inception_dwconv2d(*a, backend="triton"), (x, *params), dy)
    y64, grads64 = _grads(
        lambda *a: inception_dwconv2d(*a, backend="torch"), (x.double(), *(p.double() for p in params)), dy.double()
    )
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    _check(y, grads, y64, grads64, dtype)
    identity = shape[1] - 3 * gc
    assert torch.equal(y[:, :identity], x[:, :identity])  # the identity slice is copied bit for bit
    assert torch.equal(grads[0][:, :identity], dy[:, :identity])


def test_inception_mixer_equals_the_branches_of_timm():
    """The reference is timm's InceptionDWConv2d: split, three nn.Conv2d, cat."""
    from timm.models.inception_next import InceptionDWConv2d

    torch.manual_seed(3)
    module = InceptionDWConv2d(24, band_kernel_size=9, branch_ratio=0.25).to(DEVICE)
    x = torch.randn(2, 24, 7, 8, device=DEVICE)
    args = [
        module.dwconv_hw.weight,
        module.dwconv_hw.bias,
        module.dwconv_w.weight,
        module.dwconv_w.bias,
        module.dwconv_h.weight,
        module.dwconv_h.bias,
    ]
    expected = module(x)
    torch.testing.assert_close(inception_dwconv2d_reference(x, *args), expected, rtol=0, atol=0)
    assert_close(inception_dwconv2d(x, *args, backend="triton"), expected, torch.float32)


def test_inception_mixer_keeps_slices_apart():
    """The kernels read whole aligned groups of 8 channels across slice boundaries: a non-finite value in one
    slice must not reach another (only the slices' own channels are stored)."""
    x, params = _mixer_inputs((1, 30, 5, 6), 3, 3, 5, torch.float32, seed=5)  # identity 21, branches at 21/24/27
    x[:, 20] = float("inf")  # last identity channel, in the same 8-channel group as the first branch's
    x[:, 25] = float("nan")  # inside the second branch
    y = inception_dwconv2d(x, *params, backend="triton")
    expected = inception_dwconv2d_reference(x.double(), *(p.double() for p in params))
    assert torch.equal(torch.isfinite(y), torch.isfinite(expected))
    finite = torch.isfinite(expected)
    assert_close(y[finite], expected[finite], torch.float32, scale=float(expected[finite].abs().max()))


def test_inception_mixer_without_biases():
    x, params = _mixer_inputs((1, 13, 5, 6), 2, 3, 11, torch.float32, seed=4)
    params[1] = params[3] = params[5] = None
    dy = torch.randn(1, 13, 5, 6, device=DEVICE)
    y, grads = _grads(lambda *a: inception_dwconv2d(*a, backend="triton"), (x, *params), dy)
    y64, grads64 = _grads(
        lambda *a: inception_dwconv2d(*a, backend="torch"),
        (x.double(), *(None if p is None else p.double() for p in params)),
        dy.double(),
    )
    _check(y, grads, y64, grads64, torch.float32)


# ------------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    x = torch.randn(1, 4, 5, 5, device=DEVICE)
    w = torch.randn(4, 1, 3, 3, device=DEVICE)
    for backend in ("torch", "triton"):
        with pytest.raises(ValueError, match=r"odd kernel sizes, got 4 x 3"):
            dwconv2d(x, torch.randn(4, 1, 4, 3, device=DEVICE), backend=backend)
        with pytest.raises(ValueError, match=r"weight must have shape \[4, 1, kh, kw\].*got \[5, 1, 3, 3\]"):
            dwconv2d(x, torch.randn(5, 1, 3, 3, device=DEVICE), backend=backend)
        with pytest.raises(ValueError, match=r"4-D tensor \[N, C, H, W\].*got shape \[4, 5, 5\]"):
            dwconv2d(x[0], w, backend=backend)
        with pytest.raises(ValueError, match=r"bias must have shape \[4\], got \[3\]"):
            dwconv2d(x, w, torch.randn(3, device=DEVICE), backend=backend)
        with pytest.raises(ValueError, match="stride must be 1 or 2"):
            dwconv2d(x, w, stride=3, backend=backend)
        with pytest.raises(ValueError, match="dilation must be >= 1"):
            dwconv2d(x, w, dilation=0, backend=backend)
        with pytest.raises(TypeError, match="x must have a floating-point dtype"):
            dwconv2d(x.long(), w, backend=backend)
    x13, params = _mixer_inputs((1, 13, 5, 6), 2, 3, 11, torch.float32)
    bad_band = list(params)
    bad_band[4] = torch.randn(2, 1, 9, 1, device=DEVICE)
    with pytest.raises(ValueError, match=r"weight_h must have shape \[2, 1, 11, 1\], got \[2, 1, 9, 1\]"):
        inception_dwconv2d(x13, *bad_band, backend="triton")
    even = list(params)
    even[0] = torch.randn(2, 1, 4, 4, device=DEVICE)
    with pytest.raises(ValueError, match="odd kernel sizes"):
        inception_dwconv2d(x13, *even, backend="torch")
    with pytest.raises(ValueError, match=r"3 x gc = 6 of them"):
        inception_dwconv2d(x13[:, :5], *params, backend="triton")
    partial_bias = list(params)
    partial_bias[3] = None
    with pytest.raises(ValueError, match="all be tensors or all be None"):
        inception_dwconv2d(x13, *partial_bias, backend="triton")
    with pytest.raises(TypeError, match="use backend='torch'"):
        dwconv2d(x.double(), w.double(), backend="triton")


def test_bad_gradients_raise_clear_errors():
    x = torch.randn(1, 4, 5, 5, device=DEVICE)
    w = torch.randn(4, 1, 3, 3, device=DEVICE)
    with pytest.raises(ValueError, match=r"grad_output must have the output's shape \[1, 4, 3, 3\]"):
        dwconv2d_backward(torch.randn(1, 4, 5, 5, device=DEVICE), x, w, stride=2)
    with pytest.raises(ValueError, match="device"):
        dwconv2d_forward(x, w.to("meta"))


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.setattr(backend_module, "INTERPRETER", False)
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 1, 3, 3)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        dwconv2d(x, w, backend="triton")


# ------------------------------------------------------------------------------------------- registration


def test_opcheck_dwconv2d():
    torch.manual_seed(5)
    x = torch.randn(2, 5, 6, 7, device=DEVICE).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(5, 1, 3, 5, device=DEVICE, requires_grad=True)
    b = torch.randn(5, device=DEVICE, requires_grad=True)
    torch.library.opcheck(torch.ops.zoo.dwconv2d.default, (x, w, b, [2, 1], [1, 2]))
    torch.library.opcheck(torch.ops.zoo.dwconv2d.default, (x, w, None, [1, 1], [1, 1]))
    dy = torch.randn(2, 5, 3, 7, device=DEVICE)
    torch.library.opcheck(torch.ops.zoo.dwconv2d_backward.default, (dy, x.detach(), w.detach(), [2, 1], [1, 2]))


def test_opcheck_inception_mixer():
    x, params = _mixer_inputs((1, 13, 5, 6), 2, 3, 5, torch.float32, seed=6)
    leaves = [t.requires_grad_() for t in (x, *params)]
    torch.library.opcheck(torch.ops.zoo.inception_dwconv2d.default, tuple(leaves))
    dy = torch.randn(1, 13, 5, 6, device=DEVICE)
    torch.library.opcheck(
        torch.ops.zoo.inception_dwconv2d_backward.default,
        (dy, x.detach(), params[0].detach(), params[2].detach(), params[4].detach()),
    )


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_torch_compile_fullgraph(backend):
    x, params = _mixer_inputs((1, 13, 5, 6), 2, 3, 5, torch.float32, seed=7)
    conv_w = torch.randn(13, 1, 3, 3, device=DEVICE)
    dy = torch.randn(1, 13, 3, 3, device=DEVICE)

    def fn(x, conv_w, *params):
        mixed = inception_dwconv2d(x * 2.0, *params, backend=backend)
        return dwconv2d(mixed, conv_w, None, stride=2, backend=backend) + 1.0

    leaves_eager = [t.detach().clone().requires_grad_() for t in (x, conv_w, *params)]
    leaves_compiled = [t.detach().clone().requires_grad_() for t in (x, conv_w, *params)]
    expected = fn(*leaves_eager)
    expected.backward(dy)
    y = torch.compile(fn, fullgraph=True)(*leaves_compiled)
    y.backward(dy)
    assert_close(y, expected, torch.float32)
    for eager, compiled in zip(leaves_eager, leaves_compiled, strict=True):
        assert_relative_error(compiled.grad, eager.grad, 1e-5)


def _autocast_backends_agree(op, inputs) -> torch.Tensor:
    """``op(*inputs, backend=...)`` under bf16 autocast on both backends, float32 ``inputs``: the output is bf16,
    every input's gradient float32, and the backends agree. Returns the Triton output."""
    results = {}
    for backend in ("torch", "triton"):
        leaves = [t.clone().requires_grad_() for t in inputs]
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            y = op(*leaves, backend=backend)
        assert y.dtype == torch.bfloat16
        y.float().sum().backward()
        assert all(t.grad.dtype == torch.float32 for t in leaves)
        results[backend] = (y, *(t.grad for t in leaves))
    y_t, *grads_t = results["triton"]
    y_r, *grads_r = results["torch"]
    assert_close(y_t, y_r, torch.bfloat16, scale=float(y_r.abs().max()))
    for g_t, g_r in zip(grads_t, grads_r, strict=True):
        assert_relative_error(g_t, g_r, 2e-2)
    return y_t


def test_autocast_runs_in_the_autocast_dtype_with_fp32_weights():
    """Under autocast the activation goes to bf16 (as F.conv2d's would); the fp32 weights are read as they are
    (accumulation in fp32) and get fp32 gradients; both backends agree."""
    torch.manual_seed(8)
    x = torch.randn(2, 6, 7, 5, device=DEVICE)
    w = torch.randn(6, 1, 5, 5, device=DEVICE)
    b = torch.randn(6, device=DEVICE)
    _autocast_backends_agree(dwconv2d, (x, w, b))


def test_inception_mixer_under_autocast_runs_in_the_autocast_dtype_with_fp32_weights():
    """As dwconv2d: the activation goes to bf16, the identity channels too (bit for bit); the fp32 weights and biases
    are read as they are and get fp32 gradients, x a float32 one; both backends agree."""
    x, params = _mixer_inputs((2, 11, 6, 7), 2, 3, 5, torch.float32, seed=9)
    y = _autocast_backends_agree(inception_dwconv2d, (x, *params))
    assert torch.equal(y[:, :5], x[:, :5].bfloat16())  # C - 3 gc = 5 identity channels


@pytest.mark.parametrize("kernel,dilation,taken", [((7, 1), (2, 3), (2, 1)), ((1, 5), (4, 2), (1, 2))], ids=str)
def test_band_dilation_along_its_one_tap_axis_changes_nothing(kernel, dilation, taken):
    """A k x 1 (1 x k) kernel dilated along its one-tap axis computes what F.conv2d computes with that dilation; the
    launchers drop it (``tap_dilation``), so the call takes that axis's undilated kernels."""
    assert tap_dilation(kernel, dilation) == taken
    torch.manual_seed(5)
    x = torch.randn(2, 3, 9, 10, device=DEVICE)
    weight, bias = torch.randn(3, 1, *kernel, device=DEVICE), torch.randn(3, device=DEVICE)
    dy = torch.randn(2, 3, 9, 10, device=DEVICE)
    y, grads = _grads(lambda *a: dwconv2d(*a, 1, dilation, backend="triton"), (x, weight, bias), dy)
    padding = same_padding(kernel, dilation)
    y64, grads64 = _grads(
        lambda x, w, b: F.conv2d(x, w, b, 1, padding, dilation, groups=3),
        (x.double(), weight.double(), bias.double()),
        dy.double(),
    )
    _check(y, grads, y64, grads64, torch.float32)


def test_reference_matches_conv2d_semantics_in_float64():
    """The reference is F.conv2d with 'same' padding d (k - 1) / 2, in the input's dtype."""
    x = torch.randn(1, 3, 8, 6, dtype=torch.float64, device=DEVICE)
    w = torch.randn(3, 1, 5, 3, dtype=torch.float64, device=DEVICE)
    expected = F.conv2d(x, w, None, 1, (4, 1), (2, 1), groups=3)
    torch.testing.assert_close(dwconv2d_reference(x, w, None, 1, (2, 1)), expected)


# ------------------------------------------------------------------------------------------------ GPU only


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", [3, 7, 13, 31])
def test_gpu_model_sizes_match_reference(kernel, dtype):
    torch.manual_seed(9)
    x = torch.randn(8, 96, 28, 28, device="cuda").to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(96, 1, kernel, kernel, device="cuda").to(dtype)
    b = torch.randn(96, device="cuda").to(dtype)
    dy = torch.randn(8, 96, 28, 28, device="cuda").to(dtype)
    y, grads = _grads(lambda *a: dwconv2d(*a, backend="triton"), (x, w, b), dy)
    y64, grads64 = _grads(lambda *a: dwconv2d(*a, backend="torch"), (x.double(), w.double(), b.double()), dy.double())
    _check(y, grads, y64, grads64, dtype)


@pytest.mark.gpu
def test_gpu_mixer_is_deterministic():
    x, params = _mixer_inputs((16, 96, 56, 56), 12, 3, 11, torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(x)
    first = _grads(lambda *a: inception_dwconv2d(*a, backend="triton"), (x, *params), dy)
    second = _grads(lambda *a: inception_dwconv2d(*a, backend="triton"), (x, *params), dy)
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(u, v) for u, v in zip(first[1], second[1], strict=True))
