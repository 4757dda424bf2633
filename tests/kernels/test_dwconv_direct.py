"""zoo.kernels.dwconv._direct: the register-blocked constexpr-K kernels (forward and input gradient, stride 1)
against the float64 reference and its autograd, on every kernel shape, both layouts and strided inputs."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import DEVICE, assert_close, in_layout
from zoo.kernels.dwconv import _direct
from zoo.kernels.dwconv.reference import dwconv2d_reference

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16

# (x shape, kernel, dilation, dtype, layout, bias). The interpreter's tile is 5 rows x 2 column groups of 2
# columns x 8 channels: no map size is a multiple of it, channel counts 3, 5, 6 leave a partial channel block,
# and the maps with C = 8 and W >= 4 + 2 (k - 1) have programs whose window lies inside the map (the unmasked
# loop; the row loop makes several trips at 5 rows). Maps smaller than the kernel, dilations up to 7 (past the map),
# 1 x k and k x 1 bands, fp32 / bf16 / fp16, channels_last, NCHW and a strided view with no unit stride. 3 x 3,
# 5 x 5 and 7 x 7 maps at most WHOLE_ROW_MAX wide take one whole-row strip (FW, no column masks; C = 5 and 3 leave a
# partial channel block, the masked loop; 7 x 7 on a map 5 wide has a strip narrower than the kernel); the maps 18
# and 19 wide take the general strips.
CASES = [
    ((1, 8, 6, 19), (3, 3), (1, 1), BF16, "channels_last", True),
    ((1, 3, 5, 18), (5, 5), (1, 1), F32, "nchw", True),
    ((1, 5, 7, 9), (3, 3), (1, 1), F32, "channels_last", True),
    ((1, 8, 8, 9), (3, 3), (1, 1), BF16, "channels_last", True),
    ((1, 6, 7, 6), (3, 3), (1, 1), BF16, "nchw", False),
    ((1, 8, 9, 11), (5, 5), (1, 1), F16, "channels_last", True),
    ((1, 3, 8, 9), (5, 5), (2, 2), BF16, "strided", True),
    ((1, 8, 7, 11), (7, 7), (1, 1), BF16, "channels_last", False),
    ((1, 8, 6, 19), (7, 7), (1, 1), F32, "channels_last", True),
    ((1, 3, 4, 5), (7, 7), (1, 1), F32, "nchw", True),
    ((1, 3, 7, 10), (9, 9), (1, 1), F32, "channels_last", True),
    ((1, 2, 5, 4), (11, 11), (1, 1), BF16, "channels_last", True),
    ((1, 8, 6, 17), (1, 11), (1, 1), BF16, "channels_last", True),
    ((1, 4, 6, 13), (1, 3), (1, 1), F32, "nchw", True),
    ((1, 3, 13, 5), (11, 1), (1, 1), F16, "nchw", True),
    ((1, 3, 9, 11), (3, 3), (4, 5), F32, "channels_last", True),
    ((1, 4, 9, 8), (3, 3), (7, 3), BF16, "nchw", False),
    ((1, 3, 9, 7), (1, 5), (1, 2), F32, "strided", True),
    ((1, 5, 9, 7), (7, 7), (2, 1), BF16, "channels_last", True),
]


def _output_like(x: torch.Tensor) -> torch.Tensor:
    """An output in the memory format of x (contiguous for the strided view), filled with NaN: every element the
    kernel fails to write shows."""
    fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and x.stride(1) == 1 else None
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt or torch.contiguous_format)
    return out.fill_(float("nan"))


@pytest.mark.parametrize("shape,kernel,dilation,dtype,layout,with_bias", CASES, ids=str)
def test_forward_and_input_gradient_match_float64_reference(shape, kernel, dilation, dtype, layout, with_bias):
    assert _direct.supports(kernel, (1, 1), dilation, "channels_last" if layout == "channels_last" else "nchw")
    torch.manual_seed(0)
    x = in_layout(torch.randn(shape, device=DEVICE).to(dtype), layout)
    weight = torch.randn(shape[1], 1, *kernel, device=DEVICE)  # fp32 weights, as under AMP
    bias = torch.randn(shape[1], device=DEVICE) if with_bias else None
    dy = in_layout(torch.randn(shape, device=DEVICE).to(dtype), layout)

    y = _output_like(x)
    _direct.forward(x, weight, bias, y, (1, 1), dilation)
    x64 = x.double().requires_grad_(True)
    y64 = dwconv2d_reference(x64, weight.double(), None if bias is None else bias.double(), 1, dilation)
    assert_close(y, y64.detach(), dtype, scale=float(y64.detach().abs().max().clamp_min(1.0)))

    dx = _output_like(dy)
    _direct.input_grad(dy, weight, dx, (1, 1), dilation)
    (dx64,) = torch.autograd.grad(y64, x64, dy.double())
    assert_close(dx, dx64, dtype, scale=float(dx64.abs().max().clamp_min(1.0)))


@pytest.mark.parametrize("k", (3, 5, 7))
def test_square_kernels_on_maps_with_interior_programs(k):
    """Channels_last maps wide enough for unmasked programs (a full block of 8 channels, a column window inside
    the map) and several trips of the row loop, in fp32 where the comparison is tight (9 x 9 and 11 x 11 are in
    CASES on small maps: the interpreter's cost grows with k^2 x the map)."""
    torch.manual_seed(k)
    shape = (1, 8, k + 8, k + 6)
    x = in_layout(torch.randn(shape, device=DEVICE), "channels_last")
    weight = torch.randn(8, 1, k, k, device=DEVICE)
    bias = torch.randn(8, device=DEVICE)
    y = _output_like(x)
    _direct.forward(x, weight, bias, y, (1, 1), (1, 1))
    y64 = dwconv2d_reference(x.double(), weight.double(), bias.double())
    assert_close(y, y64, F32, scale=float(y64.abs().max()))


def test_input_gradient_flips_the_kernel():
    """dx equals the forward with the kernel flipped on both axes (no bias), for a kernel with no symmetry."""
    torch.manual_seed(3)
    dy = torch.randn(1, 4, 9, 8, device=DEVICE)
    weight = torch.randn(4, 1, 5, 5, device=DEVICE)
    dx, flipped = _output_like(dy), _output_like(dy)
    _direct.input_grad(dy, weight, dx, (1, 1), (1, 1))
    _direct.forward(dy, weight.flip(2, 3).contiguous(), None, flipped, (1, 1), (1, 1))
    torch.testing.assert_close(dx, flipped, rtol=1e-6, atol=1e-6)


def test_supports():
    for k in _direct.KERNEL_SIZES:
        for kernel in ((k, k), (1, k), (k, 1)):
            assert _direct.supports(kernel, (1, 1), (1, 1), "channels_last")
            assert _direct.supports(kernel, (1, 1), (3, 2), "nchw")
            assert not _direct.supports(kernel, (2, 2), (1, 1), "channels_last")
            assert not _direct.supports(kernel, (1, 2), (1, 1), "nchw")
    for kernel in ((13, 13), (3, 5), (1, 1), (5, 1 + 12), (2, 2)):
        assert not _direct.supports(kernel, (1, 1), (1, 1), "channels_last")


def test_stride_2_is_refused():
    x = torch.randn(1, 4, 6, 6, device=DEVICE)
    weight = torch.randn(4, 1, 3, 3, device=DEVICE)
    with pytest.raises(ValueError, match="stride 1"):
        _direct.forward(x, weight, None, torch.empty(1, 4, 3, 3, device=DEVICE), (2, 2), (1, 1))
    with pytest.raises(ValueError, match="stride 1"):
        _direct.input_grad(x, weight, torch.empty_like(x), (2, 1), (1, 1))


def test_empty_batch_launches_nothing():
    x = torch.randn(0, 4, 5, 5, device=DEVICE)
    y = torch.empty_like(x)
    _direct.forward(x, torch.randn(4, 1, 3, 3, device=DEVICE), None, y, (1, 1), (1, 1))
    assert y.shape == x.shape


def test_narrow_maps_take_the_whole_row_strip():
    """3 x 3, 5 x 5 and 7 x 7 kernels on maps up to WHOLE_ROW_MAX wide at column dilation 1 compile for the map's width;
    everything else takes the general strips."""
    assert _direct.whole_row((3, 3), 14, 1) == 14
    assert _direct.whole_row((5, 5), 7, 1) == 7
    assert _direct.whole_row((3, 3), _direct.WHOLE_ROW_MAX + 1, 1) == 0
    assert _direct.whole_row((3, 3), 14, 2) == 0
    assert _direct.whole_row((7, 7), 14, 1) == 14
    assert _direct.whole_row((9, 9), 14, 1) == 0
    assert _direct.whole_row((1, 3), 14, 1) == 0


def test_every_compiled_shape_has_aot_specs():
    """The coverage specs name each kernel shape in both layouts: bf16 in both directions, fp32 and fp16, and the
    strided 64-bit variant (no compiling here: tests/kernels/test_compile_targets.py and the CLI compile them)."""
    names = [spec.name for spec in _direct.aot_specs()]
    for kh, kw in _direct.SHAPES:
        for layout in ("channels_last", "nchw"):
            prefix = f"K{kh}x{kw},"
            wanted = [
                ("bf16", ",fwd]"),
                ("bf16", ",bwd]"),
                ("fp32", ",fwd]"),
                ("fp16", ",fwd]"),
                ("bf16", ",bwd,strided]"),
            ]
            for dtype, tail in wanted:
                assert any(
                    n.startswith(f"_direct_kernel[{dtype},{layout},{prefix}") and n.endswith(tail) for n in names
                ), (dtype, layout, kh, kw, tail)
    specs = _direct.aot_specs()
    assert {s.constexprs["INT64"] for s in specs} == {False, True}
    assert any(spec.ci for spec in specs)
